#!/bin/sh
# teardown.sh CGROUP_ROOT ROUTE_PROTO: stop the cluster on this host and remove what it left
# in the kernel (processes, mounts, network devices, nftables tables, routes, cgroups).
# Files and packages are removed by the role's tasks afterwards. Prints "changed" when it
# found anything to do.
set -u
root="$1"
proto="$2"
changed=""
note() { changed=1; echo "$*"; }

# Reverse start order; the kubelet first so it restarts nothing.
for unit in rhizeption-pod-routes kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
	if systemctl is-active --quiet "$unit" || systemctl is-enabled --quiet "$unit" 2>/dev/null; then
		systemctl disable --now "$unit" >/dev/null 2>&1 && note "stopped $unit"
	fi
done

# Pod containers: kill and delete them through containerd, so their shims exit too.
if command -v ctr >/dev/null && systemctl is-active --quiet containerd; then
	for id in $(ctr -n k8s.io tasks list -q 2>/dev/null); do
		ctr -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1
	done
	sleep 1
	for id in $(ctr -n k8s.io tasks list -q 2>/dev/null); do
		ctr -n k8s.io tasks delete --force "$id" >/dev/null 2>&1 && note "deleted task $id"
	done
	for id in $(ctr -n k8s.io containers list -q 2>/dev/null); do
		ctr -n k8s.io containers delete "$id" >/dev/null 2>&1 && note "deleted container $id"
	done
fi
if systemctl is-active --quiet containerd || systemctl is-enabled --quiet containerd 2>/dev/null; then
	systemctl disable --now containerd >/dev/null 2>&1 && note "stopped containerd"
fi

# Whatever is left in the kubelet's cgroups (it was all Pods), then the cgroups.
if [ -x /usr/local/lib/rhizeption/cgroup-root ]; then
	/usr/local/lib/rhizeption/cgroup-root remove "$root" && note "removed cgroups $root"
fi

# Mounts under the kubelet's and containerd's folders (deepest first), and Pod netns.
for _ in 1 2 3; do
	mounts="$(awk '{print $5}' /proc/self/mountinfo | grep -E '^(/var/lib/kubelet|/run/containerd|/var/lib/containerd/|/run/netns/cni-|/var/run/netns/cni-)' | sort -r)"
	[ -n "$mounts" ] || break
	for m in $mounts; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	done
	note "unmounted $(echo "$mounts" | wc -l) mounts"
done
rm -f /run/netns/cni-* 2>/dev/null

# Network devices, nftables tables, routes.
if ip link show cni0 >/dev/null 2>&1; then
	ip link delete cni0 && note "deleted cni0"
fi
for dev in $(ip -o link show type veth | awk -F': ' '{print $2}' | sed 's/@.*//'); do
	case "$(cat "/sys/class/net/$dev/master/uevent" 2>/dev/null)" in *INTERFACE=cni0*) ip link delete "$dev" && note "deleted $dev" ;; esac
done
for family in ip ip6; do
	if nft list table "$family" kube-proxy >/dev/null 2>&1; then
		nft delete table "$family" kube-proxy && note "deleted nft table $family kube-proxy"
	fi
done
if [ -n "$(ip route show proto "$proto")" ]; then
	ip route flush proto "$proto" && note "flushed routes proto $proto"
fi
[ -n "$changed" ] && echo changed
exit 0

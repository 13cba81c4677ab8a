"""Day 2, after the checks of test_default: a worker leaves (drained, its Node deleted, the
host torn down) and comes back with a plain re-run; then state=absent leaves both hosts as
clean as before the role, and a second absent run changes nothing.

Runs last (file order): it takes the cluster down.
"""

from __future__ import annotations

import time

import yaml
from scenario import IMAGE, NODES, converge, get, kubectl, nothing_changed, on_host

# What a host keeps while any part of the cluster is left on it (the script prints it).
# The kubelets' cgroup roots, /rhizeption/<cluster>/<node>, in one hierarchy.
CGROUPS = "/sys/fs/cgroup/memory/rhizeption/molecule-host-cluster"
LEFTOVERS = r"""
# process names are cut at 15 characters: containerd-shim, kube-controller
pgrep -a -x 'kubelet|kube-proxy|containerd|containerd-shim|etcd|coredns' | sed 's/^/process /'
pgrep -a -x 'kube-apiserver|kube-controller|kube-scheduler' | sed 's/^/process /'
awk '{print $5}' /proc/self/mountinfo |
  grep -E '^(/var/lib/kubelet|/run/containerd|/var/lib/containerd/|/run/netns/cni-)' | sed 's/^/mount /'
ip -o link show cni0 2>/dev/null | sed 's/^/device /'
nft list tables | grep -w kube-proxy | sed 's/^/nft /'
ip route show proto 211 | sed 's/^/route /'
for f in /etc/kubernetes /var/lib/kubelet /var/lib/etcd /etc/cni/net.d/10-rhizeption.conflist \
         /usr/local/bin/kubelet /etc/systemd/system/kubelet.service; do
  [ -e "$f" ] && echo "file $f"
done
true
"""


def wait_until(what: str, check, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(2)


def node_names() -> list[str]:
    return sorted(n["metadata"]["name"] for n in get("nodes")["items"])


def ready(node: str) -> bool:
    conditions = get("node", node)["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_a_worker_leaves_drained_and_comes_back(tmp_path):
    ns = "day2"
    kubectl("create", "namespace", ns)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "sleeper"}},
            "template": {
                "metadata": {"labels": {"app": "sleeper"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "hc-w1"},
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "c",
                            "image": IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"],
                        }
                    ],
                },
            },
        },
    }
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(deployment))
    kubectl("-n", ns, "rollout", "status", "deployment/sleeper", "--timeout=120s", timeout=150)
    # Free the Pods to go anywhere once their node is drained.
    kubectl(
        "-n",
        ns,
        "patch",
        "deployment",
        "sleeper",
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/spec/template/spec/nodeSelector"}]',
    )
    kubectl("-n", ns, "rollout", "status", "deployment/sleeper", "--timeout=120s", timeout=150)

    rc, out = converge(tmp_path, {"host_cluster_remove_workers": ["hc-w1"]})
    assert rc == 0, out
    assert node_names() == ["hc-cp"]
    kubectl("-n", ns, "rollout", "status", "deployment/sleeper", "--timeout=120s", timeout=150)
    pods = get("-n", ns, "pods", "-l", "app=sleeper")["items"]
    assert {p["spec"]["nodeName"] for p in pods if p["status"]["phase"] == "Running"} == {"hc-cp"}
    assert on_host("hc-w1", LEFTOVERS) == ""
    assert on_host("hc-cp", "pgrep -x kubelet >/dev/null && echo running").strip() == "running"
    # The hosts share this machine's cgroup tree: hc-w1's root is gone, hc-cp's parents stay.
    assert on_host("hc-w1", f"ls -d {CGROUPS}/hc-w1 2>/dev/null; true") == ""
    assert on_host("hc-w1", f"ls -d {CGROUPS}/hc-cp").strip() == f"{CGROUPS}/hc-cp"

    rc, out = converge(tmp_path, {})
    assert rc == 0, out
    wait_until("hc-w1 back and Ready", lambda: node_names() == NODES and ready("hc-w1"))
    kubectl("delete", "namespace", ns, "--wait=true", timeout=180)


def test_absent_leaves_both_hosts_clean_and_is_idempotent(tmp_path):
    rc, out = converge(tmp_path, {"host_cluster_state": "absent"})
    assert rc == 0, out
    for node in NODES:
        assert on_host(node, LEFTOVERS) == "", node
    # The last node out removed the cgroup parents its kubelet's root was made under.
    assert on_host("hc-cp", "ls -d /sys/fs/cgroup/*/rhizeption 2>/dev/null; true") == ""
    rc, out = converge(tmp_path, {"host_cluster_state": "absent"})
    assert rc == 0, out
    nothing_changed(out)

"""Hosted nodes: HnMachine apply -> Node Ready in the tenant (median of 5), and the resident
memory of a hosted node's processes (containerd, kubelet, kube-proxy, shims), idle and with 10
Pods. The baseline, measured side by side, is the same node image run by Podman as the rig's
real node: the cost of running the node as a Pod of a host cluster instead.

Then the node's two snapshotters side by side (machineTemplate.snapshotter): overlayfs on the
emptyDir volume (kind's way) and native (Rhizeption's way), alternating, SNAPSHOT_ROUNDS each:
apply -> Node Ready, 10 Pods created -> all running, and the disk /var/lib/containerd takes.

The tenant is a rig control plane that listens where the host cluster's Pods reach it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import kubernetes
from riglib import toolchain
from riglib.controlplane import SERVICE_CIDR, ControlPlane
from riglib.node import HostCluster, image_archive

from ansible_collections.rhizeption.core.plugins.module_utils import hncluster  # isort: skip
from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube  # isort: skip

from . import common, host_cluster

ROUNDS = 5
PODS = 10
SNAPSHOT_ROUNDS = 3
SNAPSHOTTERS = ("overlayfs", "native")
NAMESPACE = "bench-hosted"


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue  # ended meanwhile
    return total / 1024


def node_pids(marker: str) -> list[int]:
    """The node processes whose cgroup path contains MARKER (a Pod uid, a container id)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            if comm in common.NODE_PROCESSES and marker in (proc / "cgroup").read_text():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def spec(hc: HostCluster, tenant: ControlPlane, **template: str) -> dict:
    return {
        "replicas": 1,
        "controlPlaneEndpoint": {"host": hc.node.gateway, "port": int(tenant.server.rsplit(":", 1)[1])},
        "network": {"podCIDR": "10.240.0.0/16", "serviceCIDR": SERVICE_CIDR},
        "machineTemplate": {
            "image": f"localhost/rhizeption/node:{toolchain.versions()['KUBERNETES_VERSION']}",
            "imagePullPolicy": "Never",
            **template,
        },
    }


def busybox_pod(name: str, node: str) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "sleep",
                    "image": "localhost/rhizeption/busybox:bookworm",
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                }
            ],
        },
    }


def run() -> dict:
    with common.host_cluster_and_tenant("rhizeption-bench-") as (hc, tenant, _tmp):
        result = measure(hc, tenant)
    # The baseline side by side, once the rig is down: a kubelet node the host_cluster role
    # installs on a systemd host.
    role_node = host_cluster.worker_baseline()
    hosted_ready = result["apply_to_node_ready"]["median"]
    rss = result["rss_mib"]
    result["role_node_baseline"] = role_node
    result["hosted_to_role_node_ratio"] = {
        "apply_to_node_ready": hosted_ready / role_node["converge_to_node_ready_s"],
        "rss idle": rss["hosted idle"] / role_node["rss_mib"]["idle"],
        f"rss with {PODS} Pods": rss[f"hosted with {PODS} Pods"] / role_node["rss_mib"][f"with {PODS} Pods"],
    }
    return result


def measure(hc: HostCluster, tenant: ControlPlane) -> dict:
    hc.load_images([image_archive("node")])
    hc.kubectl("apply", "--server-side", "-f", str(toolchain.HACK_DIR.parent / "roles/crds/files/crds.yaml"))
    hc.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    hc.kubectl("create", "namespace", NAMESPACE)
    host = Kube(kubernetes.config.new_client_from_config(str(hc.kubeconfig)))
    tclient = kubernetes.config.new_client_from_config(str(tenant.kubeconfig))
    tenant_kube = Kube(tclient)
    tcore = kubernetes.client.CoreV1Api(tclient)
    hcore = kubernetes.client.CoreV1Api(host.api)
    desired = hncluster.render_cluster("bench", NAMESPACE, spec(hc, tenant))

    ready_s = []
    for _round in range(ROUNDS):
        start = time.monotonic()
        hncluster.ensure_present(host, desired, wait=True, timeout=300, tenant=tenant_kube)
        ready_s.append(time.monotonic() - start)
        if _round < ROUNDS - 1:
            hncluster.ensure_absent(host, NAMESPACE, "bench", timeout=300, tenant=tenant_kube)

    # Memory: the hosted node (processes in its Pod's cgroups) and the rig's node (same image,
    # run by Podman), idle, then with PODS Pods each.
    uid = hcore.read_namespaced_pod("bench-0", NAMESPACE).metadata.uid
    rig_container = hc.node.container
    rig_id = subprocess.run(
        ["podman", "inspect", "--format", "{{.Id}}", rig_container],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    hosted = f"pod{uid}"  # the cgroupfs driver names a Pod's cgroup pod<uid>
    memory = {"hosted idle": rss_mib(node_pids(hosted))}
    memory["rig node idle (baseline)"] = rss_mib(node_pids(rig_id))
    for i in range(PODS):
        tcore.create_namespaced_pod("default", busybox_pod(f"load-{i}", "bench-0"))
    hc.kubectl("create", "namespace", "bench-load")
    for i in range(PODS):
        hcore.create_namespaced_pod("bench-load", busybox_pod(f"load-{i}", hc.node.name))
    for kubeconfig, ns in ((tenant.kubeconfig, "default"), (hc.kubeconfig, "bench-load")):
        wait = ["-n", ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=180s"]
        subprocess.run([str(toolchain.binary("kubectl")), f"--kubeconfig={kubeconfig}", *wait], check=True)
    memory[f"hosted with {PODS} Pods"] = rss_mib(node_pids(hosted))
    memory[f"rig node with {PODS} Pods (baseline)"] = rss_mib(node_pids(rig_id))
    hncluster.ensure_absent(host, NAMESPACE, "bench", timeout=300, tenant=tenant_kube)
    keys = ("apply_to_node_ready_s", "pods_running_s", "disk_mib")
    snapshotters: dict[str, dict[str, list[float]]] = {s: {k: [] for k in keys} for s in SNAPSHOTTERS}
    for _round in range(SNAPSHOT_ROUNDS):
        for snapshotter in SNAPSHOTTERS:
            figures = snapshotter_round(hc, tenant, host, tenant_kube, tcore, snapshotter=snapshotter)
            for key, value in figures.items():
                snapshotters[snapshotter][key].append(value)
    tclient.close()
    host.api.close()
    return {
        "unit": "seconds and MiB",
        "rounds": ROUNDS,
        "apply_to_node_ready": common.summary(ready_s) | {"samples_s": ready_s, "goal_s": 20},
        "rss_mib": memory,
        "hosted_to_rig_rss_ratio": {
            "idle": memory["hosted idle"] / max(memory["rig node idle (baseline)"], 1e-9),
            f"with {PODS} Pods": memory[f"hosted with {PODS} Pods"]
            / max(memory[f"rig node with {PODS} Pods (baseline)"], 1e-9),
        },
        "snapshotters": {
            name: {key: common.summary(samples) | {"samples": samples} for key, samples in figures.items()}
            for name, figures in snapshotters.items()
        },
    }


def snapshotter_round(
    hc: HostCluster,
    tenant: ControlPlane,
    host: Kube,
    tenant_kube: Kube,
    tcore: kubernetes.client.CoreV1Api,
    *,
    snapshotter: str,
) -> dict:
    """One node with SNAPSHOTTER: apply -> Node Ready; PODS Pods created at once -> the last one
    running (by watch); then the disk its containerd takes (images imported at start, the
    Pods' snapshots)."""
    name = f"snap-{snapshotter[:3]}"
    node = f"{name}-0"
    desired = hncluster.render_cluster(name, NAMESPACE, spec(hc, tenant, snapshotter=snapshotter))
    start = time.monotonic()
    hncluster.ensure_present(host, desired, wait=True, timeout=300, tenant=tenant_kube)
    ready_s = time.monotonic() - start
    tcore.create_namespace({"metadata": {"name": name}})
    version = tcore.list_namespaced_pod(name).metadata.resource_version
    start = time.monotonic()
    for i in range(PODS):
        tcore.create_namespaced_pod(name, busybox_pod(f"load-{i}", node))
    running: set[str] = set()
    for event in kubernetes.watch.Watch().stream(
        tcore.list_namespaced_pod, name, resource_version=version, timeout_seconds=300
    ):
        statuses = event["object"].status.container_statuses or []
        if statuses and all(c.state.running for c in statuses):
            running.add(event["object"].metadata.name)
        if len(running) == PODS:
            break
    pods_s = time.monotonic() - start
    if len(running) < PODS:
        raise RuntimeError(f"{snapshotter}: only {len(running)} of {PODS} Pods running after 300 s")
    du = hc.kubectl("-n", NAMESPACE, "exec", node, "-c", "node", "--", "du", "-sxm", "/var/lib/containerd")
    tcore.delete_namespace(name)
    hncluster.ensure_absent(host, NAMESPACE, name, timeout=300, tenant=tenant_kube)
    return {"apply_to_node_ready_s": ready_s, "pods_running_s": pods_s, "disk_mib": float(du.split()[0])}


def report(result: dict) -> str:
    ready = result["apply_to_node_ready"]
    rows = [["hosted node", "value"]]
    rows.append(["apply -> Node Ready, median s (goal 20)", f"{ready['median']:.1f}"])
    rows.append(["apply -> Node Ready, min..max s", f"{ready['min']:.1f}..{ready['max']:.1f}"])
    for name, mib in result["rss_mib"].items():
        rows.append([f"RSS {name}, MiB", f"{mib:.0f}"])
    for name, ratio in result["hosted_to_rig_rss_ratio"].items():
        rows.append([f"RSS hosted / rig node, {name}", f"{ratio:.2f}"])
    role = result.get("role_node_baseline")
    if role:
        rows.append(["role node: converge -> Node Ready, s", f"{role['converge_to_node_ready_s']:.0f}"])
        rows.append(["role node: no-op converge, s", f"{role['noop_converge_s']:.0f}"])
        for name, mib in role["rss_mib"].items():
            rows.append([f"role node: RSS {name}, MiB", f"{mib:.0f}"])
        for name, ratio in result["hosted_to_role_node_ratio"].items():
            rows.append([f"hosted / role node, {name}", f"{ratio:.2f}"])
    for name, figures in result.get("snapshotters", {}).items():
        ready, pods, disk = (figures[k] for k in ("apply_to_node_ready_s", "pods_running_s", "disk_mib"))
        rows.append([f"{name}: apply -> Node Ready, median s", f"{ready['median']:.1f}"])
        rows.append([f"{name}: {PODS} Pods -> all running, median s", f"{pods['median']:.1f}"])
        rows.append([f"{name}: /var/lib/containerd, median MiB", f"{disk['median']:.0f}"])
    return common.table(rows)

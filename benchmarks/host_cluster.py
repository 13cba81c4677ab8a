"""A host cluster from the host_cluster role, on the molecule scenario's two test hosts.

- converge: a fresh 2-node cluster, against a second (no-op) converge as the baseline;
- Pod startup latency of 30 Pods, the way Kubernetes' Pod-startup SLO defines it: from the
  create call to all containers running as a watch reports it, images already present;
  the baseline is the create-to-watch-event latency of 30 ConfigMaps on the same API server;
- resident memory of kube-apiserver and of each kubelet after the Pods started;
- resident memory of the worker's node processes (containerd, shims, kubelet, kube-proxy)
  idle and with 10 Pods: the role-installed baseline the hosted_node benchmark's figures
  are read against (issue #9).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kubernetes import client, config, watch

from . import common

SCENARIO = "host_cluster"
HOSTS = {"hc-cp": "rhizeption-molecule-host-cluster-hc-cp", "hc-w1": "rhizeption-molecule-host-cluster-hc-w1"}
PODS = 30
IMAGE = "localhost/rhizeption/busybox:bookworm"
REPO = Path(__file__).resolve().parent.parent
MOLECULE = str(Path(sys.executable).parent / "molecule")


def molecule(*args: str) -> float:
    start = time.monotonic()
    subprocess.run([MOLECULE, *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mb(container: str, process: str) -> float:
    """MiB of RSS of the processes named PROCESS in CONTAINER (0 when none runs: ps then
    exits 1 with nothing printed)."""
    out = subprocess.run(
        ["podman", "exec", container, "ps", "-o", "rss=", "-C", process],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return sum(int(v) for v in out.split()) / 1024


def node_rss(container: str) -> float:
    """MiB of RSS of the node processes in CONTAINER, as hosted_node counts them."""
    return sum(rss_mb(container, name) for name in common.NODE_PROCESSES)


def worker_rss_with_pods(kubeconfig: Path, node: str, pods: int = 10) -> float:
    """The worker's node processes' RSS with PODS Pods running on it."""
    api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    ns = f"bench-rss-{uuid.uuid4().hex[:6]}"
    api.create_namespace({"metadata": {"name": ns}})
    try:
        for i in range(pods):
            ctr = {"name": "c", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}
            spec = {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [ctr]}
            api.create_namespaced_pod(ns, {"metadata": {"name": f"rss-{i}"}, "spec": spec})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if sum(p.status.phase == "Running" for p in api.list_namespaced_pod(ns).items) == pods:
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"{pods} Pods not running on {node} after 180 s")
        time.sleep(10)  # as hosted_node: a few kubelet sync loops
        return node_rss(HOSTS[node])
    finally:
        api.delete_namespace(ns)


def watch_latencies(kubeconfig: Path) -> dict[str, list[float]]:
    api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    api.create_namespace({"metadata": {"name": ns}})
    created: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def observe(kind: str, lister, ready, version: str) -> None:
        # A watch the server ends early is resumed from the last resourceVersion it gave.
        while not done.is_set():
            for event in watch.Watch().stream(lister, ns, resource_version=version, timeout_seconds=60):
                obj = event["object"]
                version = obj.metadata.resource_version
                # Only what this run created: the namespace's kube-root-ca.crt is not a sample.
                if obj.metadata.name in created and obj.metadata.name not in seen and ready(obj):
                    seen[obj.metadata.name] = time.monotonic()
                if len(seen) == len(created) == PODS * 2 or done.is_set():
                    return

    def listed(lister) -> str:
        return lister(ns).metadata.resource_version

    def running(pod) -> bool:
        statuses = pod.status.container_statuses or []
        return bool(statuses) and all(s.state.running for s in statuses)

    try:
        observers = [
            threading.Thread(
                target=observe,
                args=(
                    "cm",
                    api.list_namespaced_config_map,
                    lambda o: True,
                    listed(api.list_namespaced_config_map),
                ),
                daemon=True,
            ),
            threading.Thread(
                target=observe,
                args=("pod", api.list_namespaced_pod, running, listed(api.list_namespaced_pod)),
                daemon=True,
            ),
        ]
        for t in observers:
            t.start()
        time.sleep(1)  # both watches connected: an event replayed late would read as latency
        for i in range(PODS):
            name = f"cm-{i}"
            created[name] = time.monotonic()
            api.create_namespaced_config_map(ns, {"metadata": {"name": name}, "data": {"k": "v"}})
        for i in range(PODS):
            name = f"pod-{i}"
            created[name] = time.monotonic()
            api.create_namespaced_pod(
                ns,
                {
                    "metadata": {"name": name},
                    "spec": {
                        "terminationGracePeriodSeconds": 0,
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
            )
        deadline = time.monotonic() + 300
        while len(seen) < PODS * 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        done.set()
        missing = sorted(set(created) - set(seen))
        if missing:
            states = {
                n: [c.state.to_dict() for c in api.read_namespaced_pod(n, ns).status.container_statuses or []]
                for n in missing
                if n.startswith("pod")
            }
            raise RuntimeError(f"not seen running after 300 s: {', '.join(missing)}: {states}")
    finally:
        done.set()
        api.delete_namespace(ns)
        # Gone before anything else is measured: its Pods' shims would count as the worker's.
        deadline = time.monotonic() + 180
        while ns in {n.metadata.name for n in api.list_namespace().items} and time.monotonic() < deadline:
            time.sleep(1)
    return {kind: [seen[n] - created[n] for n in created if n.startswith(kind)] for kind in ("cm", "pod")}


def worker_baseline() -> dict:
    """The role-installed kubelet node that the hosted_node benchmark compares a hosted node
    with (issue #9), on a fresh scenario: its node processes' RSS idle and with 10 Pods, and
    how long the converge that adds it back takes until its Node is Ready, beside the no-op
    converge (what any run of the role costs)."""
    with tempfile.TemporaryDirectory(prefix="rhizeption-bench-hc-") as tmp:
        kubeconfig = Path(tmp) / "admin.kubeconfig"
        extra = ["--", "-e", f"host_cluster_admin_kubeconfig={kubeconfig}"]
        molecule("destroy", "-s", SCENARIO)
        try:
            molecule("create", "-s", SCENARIO)
            molecule("converge", "-s", SCENARIO, *extra)
            noop_s = molecule("converge", "-s", SCENARIO, *extra)
            time.sleep(10)
            idle = node_rss(HOSTS["hc-w1"])
            ten = worker_rss_with_pods(kubeconfig, "hc-w1")
            remove = json.dumps({"host_cluster_remove_workers": ["hc-w1"]})
            molecule("converge", "-s", SCENARIO, *extra, "-e", remove)
            start = time.monotonic()
            molecule("converge", "-s", SCENARIO, *extra)
            common.wait_node_ready(kubeconfig, "hc-w1")
            join_s = time.monotonic() - start
        finally:
            molecule("destroy", "-s", SCENARIO)
    return {
        "converge_to_node_ready_s": join_s,
        "noop_converge_s": noop_s,
        "rss_mib": {"idle": idle, "with 10 Pods": ten},
    }


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="rhizeption-bench-hc-") as tmp:
        kubeconfig = Path(tmp) / "admin.kubeconfig"
        extra = ["--", "-e", f"host_cluster_admin_kubeconfig={kubeconfig}"]
        molecule("destroy", "-s", SCENARIO)
        try:
            create_s = molecule("create", "-s", SCENARIO)
            converge_s = molecule("converge", "-s", SCENARIO, *extra)
            noop_s = molecule("converge", "-s", SCENARIO, *extra)
            time.sleep(10)
            worker_idle = node_rss(HOSTS["hc-w1"])
            lat = watch_latencies(kubeconfig)
            rss = {"kube-apiserver@hc-cp": rss_mb(HOSTS["hc-cp"], "kube-apiserver")}
            rss |= {f"kubelet@{h}": rss_mb(c, "kubelet") for h, c in HOSTS.items()}
            worker_ten = worker_rss_with_pods(kubeconfig, "hc-w1")
        finally:
            molecule("destroy", "-s", SCENARIO)
    pod, cm = lat["pod"], lat["cm"]
    return {
        "unit": "seconds",
        "create_hosts_s": create_s,
        "converge": {"fresh_s": converge_s, "noop_baseline_s": noop_s, "ratio": converge_s / noop_s},
        "pod_startup": {
            "pods": PODS,
            "p50_s": percentile(pod, 0.5),
            "p99_s": percentile(pod, 0.99),
            "max_s": max(pod),
            "baseline_configmap_p50_s": statistics.median(cm),
            "ratio_p50": percentile(pod, 0.5) / statistics.median(cm),
            "samples_s": pod,
        },
        "rss_mb": rss,
        "worker_node_processes_rss_mib": {"idle": worker_idle, "ten_pods": worker_ten},
    }


def report(result: dict) -> str:
    c, p = result["converge"], result["pod_startup"]
    rows = [["host_cluster", "value", "baseline", "x baseline"]]
    rows.append(
        [
            "converge, fresh 2 nodes (s)",
            f"{c['fresh_s']:.0f}",
            f"{c['noop_baseline_s']:.0f} (no-op)",
            f"{c['ratio']:.1f}",
        ]
    )
    rows.append(
        [
            f"pod startup p50 / p99, {p['pods']} Pods (s)",
            f"{p['p50_s']:.2f} / {p['p99_s']:.2f}",
            f"{p['baseline_configmap_p50_s']:.3f} (ConfigMap)",
            f"{p['ratio_p50']:.0f}",
        ]
    )
    for name, mb in result["rss_mb"].items():
        rows.append([f"RSS {name} (MB)", f"{mb:.0f}", "", ""])
    w = result["worker_node_processes_rss_mib"]
    rows.append(
        ["RSS hc-w1 node processes idle / 10 Pods (MiB)", f"{w['idle']:.0f} / {w['ten_pods']:.0f}", "", ""]
    )
    return common.table(rows)

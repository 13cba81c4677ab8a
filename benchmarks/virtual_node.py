"""Host-backed virtual nodes (issue #10): tenant Pod startup through the agent against the
same Pods created directly in the host cluster, and the agent's memory.

- startup: PODS (100) Pods created at once in the tenant, bound by its scheduler to the
  resources node, and as many to the mirror of the rig's host node (the same agent serves
  both, as an agent of promoteResources.nodes and .resources does); each one's latency is
  from just before its create call to the tenant watch event that shows all its containers
  running (which the agent writes back from the host Pod). The baseline, in the same run, is
  the same Pods created at once in a host namespace and watched there. All run real
  containers on the rig's one real node, ROUNDS rounds of each side, each round starting with
  another side; before each round the node has torn down every container of
  the one before (a Pod deleted with no grace leaves the API at once, its containers later).
  The ratio of p99s is the figure (issue goal: at most 1.3).
- memory: the agent's resident set with its Node registered and no Pod, and with MANY (500)
  tenant Pods. The rig's node holds 110 Pods, so most of the 500 host Pods stay Pending in
  the host: the agent still tracks, translates and watches every one of them.

VIRTUAL_NODE_BENCH_PODS and VIRTUAL_NODE_BENCH_MANY make a quick run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import kubernetes
import urllib3
from riglib.controlplane import ControlPlane
from riglib.node import HostCluster

from . import common
from .pet_agent import percentile, rss_mib

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
from petagent import wait_for  # noqa: E402
from virtualagent import NODE, TENANT, TENANT_LABEL, running_virtual_agent  # noqa: E402

PODS = int(os.environ.get("VIRTUAL_NODE_BENCH_PODS", "100"))
MANY = int(os.environ.get("VIRTUAL_NODE_BENCH_MANY", "500"))
IMAGE = "localhost/rhizeption/busybox:bookworm"
GOAL_RATIO = 1.3
ROUNDS = 2


def sleeper(name: str, node: str = "") -> dict:
    """A Pod that sleeps; NODE: the tenant Node it must go to (by its hostname label)."""
    ctr = {"name": "c", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}
    spec: dict = {"terminationGracePeriodSeconds": 0, "containers": [ctr]}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"metadata": {"name": name}, "spec": spec}


def startup(
    core: kubernetes.client.CoreV1Api, namespace: str, count: int, prefix: str, node: str = ""
) -> list[float]:
    """Create COUNT Pods at once in NAMESPACE (on tenant Node NODE); each one's create -> all
    containers running, by one watch started before the first create."""
    created: dict[str, float] = {}
    seen: dict[str, float] = {}
    version = core.list_namespaced_pod(namespace).metadata.resource_version
    done = threading.Event()

    def observe() -> None:
        nonlocal version
        while not done.is_set():
            try:
                for event in kubernetes.watch.Watch().stream(
                    core.list_namespaced_pod, namespace, resource_version=version, timeout_seconds=60
                ):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    statuses = pod.status.container_statuses or []
                    name = pod.metadata.name
                    if (
                        name in created
                        and name not in seen
                        and statuses
                        and all(s.state.running for s in statuses)
                    ):
                        seen[name] = time.monotonic()
                    if len(seen) == count or done.is_set():
                        return
            except urllib3.exceptions.ProtocolError as e:  # a stream cut under load: watch again
                print(f"virtual_node bench: {namespace} watch cut ({e}); watching again", file=sys.stderr)

    watcher = threading.Thread(target=observe, daemon=True)
    watcher.start()
    time.sleep(1)  # the watch is connected
    for i in range(count):
        name = f"{prefix}-{i}"
        created[name] = time.monotonic()
        core.create_namespaced_pod(namespace, sleeper(name, node))
    deadline = time.monotonic() + 600
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    done.set()
    if len(seen) < count:
        raise RuntimeError(f"{namespace}: {count - len(seen)} of {count} Pods not running after 600 s")
    return [seen[n] - created[n] for n in created]


def node_containers(hc: HostCluster) -> int:
    """How many containers the rig's node runs (its containerd's tasks)."""
    out = subprocess.run(
        ["podman", "exec", hc.node.container, "ctr", "-n", "k8s.io", "tasks", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(out.split())


def settle(hc: HostCluster, baseline: int) -> None:
    wait_for(
        f"the node back to {baseline} containers",
        lambda: node_containers(hc) <= baseline,
        timeout=300,
        interval=1,
    )


def delete_all(
    core: kubernetes.client.CoreV1Api, namespace: str, host: kubernetes.client.CoreV1Api, host_ns: str
):
    """Every Pod of NAMESPACE deleted, and the host's copies (HOST_NS) gone, before the next step."""
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    wait_for(
        f"no Pod left in {host_ns}",
        lambda: (
            not host.list_namespaced_pod(host_ns, label_selector=f"{TENANT_LABEL}={TENANT}").items
            and not core.list_namespaced_pod(namespace).items
        ),
        timeout=600,
        interval=1,
    )


def run() -> dict:
    with common.host_cluster_and_tenant("rhizeption-bench-virtual-") as (hc, tenant, tmp):
        host_api = kubernetes.config.new_client_from_config(str(hc.kubeconfig))
        tenant_api = kubernetes.config.new_client_from_config(str(tenant.kubeconfig))
        try:
            return measure(hc, host_api, tenant, tenant_api, tmp)
        finally:
            host_api.close()
            tenant_api.close()


def measure(hc: HostCluster, host_api, tenant: ControlPlane, tenant_api, tmp: Path) -> dict:
    host = kubernetes.client.CoreV1Api(host_api)
    tcore = kubernetes.client.CoreV1Api(tenant_api)
    (tmp / "agent").mkdir()
    resources = {"cpu": "64", "memory": "256Gi"}  # room for every Pod: the host's limits are the test
    with running_virtual_agent(
        hc, host_api, tenant, tmp / "agent", resources, nodes=(hc.node_name,), max_pods=MANY + 50
    ) as va:
        for node in (NODE, hc.node_name):
            common.wait_node_ready(tenant.kubeconfig, node, timeout=120)
        tcore.create_namespace({"metadata": {"name": "bench"}})
        wait_for(
            "the default ServiceAccount", lambda: tcore.list_namespaced_service_account("bench").items, 60
        )
        direct_ns = f"{va.pods_ns}-direct"
        host.create_namespace({"metadata": {"name": direct_ns}})
        wait_for(
            "the host's default ServiceAccount", lambda: host.list_namespaced_service_account(direct_ns).items
        )
        time.sleep(5)
        rss_idle = rss_mib(va.agent.proc.pid)

        idle_containers = node_containers(hc)
        agent_s: list[float] = []
        mirror_s: list[float] = []
        host_s: list[float] = []
        sides = ("agent", "mirror", "host")
        for rnd in range(ROUNDS):
            for side in sides[rnd % 3 :] + sides[: rnd % 3]:  # each round starts with another side
                settle(hc, idle_containers)
                if side in ("agent", "mirror"):
                    node = NODE if side == "agent" else hc.node_name
                    (agent_s if side == "agent" else mirror_s).extend(
                        startup(tcore, "bench", PODS, f"{side[0]}{rnd}", node)
                    )
                    delete_all(tcore, "bench", host, va.pods_ns)
                else:
                    host_s += startup(host, direct_ns, PODS, f"h{rnd}")
                    host.delete_collection_namespaced_pod(direct_ns, grace_period_seconds=0)
                    wait_for(
                        f"{direct_ns} empty", lambda: not host.list_namespaced_pod(direct_ns).items, 300, 1
                    )
                print(f"virtual_node bench: round {rnd + 1}, {side}: {PODS} Pods ran", file=sys.stderr)
        settle(hc, idle_containers)

        for i in range(MANY):
            tcore.create_namespaced_pod("bench", sleeper(f"m-{i}", NODE))
        wait_for(
            f"{MANY} host Pods made",
            lambda: (
                len(host.list_namespaced_pod(va.pods_ns, label_selector=f"{TENANT_LABEL}={TENANT}").items)
                == MANY
            ),
            timeout=900,
            interval=2,
            agent=va.agent,
        )
        time.sleep(20)  # a few resyncs of every Pod's worker
        rss_many = rss_mib(va.agent.proc.pid)
        running = sum(
            p.status.phase == "Running"
            for p in host.list_namespaced_pod(va.pods_ns, label_selector=f"{TENANT_LABEL}={TENANT}").items
        )
        delete_all(tcore, "bench", host, va.pods_ns)
        host.delete_namespace(direct_ns)
    p99_agent, p99_mirror, p99_host = (
        percentile(agent_s, 99),
        percentile(mirror_s, 99),
        percentile(host_s, 99),
    )
    return {
        "unit": "seconds and MiB",
        "pods": PODS,
        "rounds": ROUNDS,
        "startup_s": {
            "tenant_through_agent": common.summary(agent_s)
            | {"p50": percentile(agent_s, 50), "p99": p99_agent, "samples": agent_s},
            "tenant_through_mirror": common.summary(mirror_s)
            | {"p50": percentile(mirror_s, 50), "p99": p99_mirror, "samples": mirror_s},
            "host_direct_baseline": common.summary(host_s)
            | {"p50": percentile(host_s, 50), "p99": p99_host, "samples": host_s},
            "ratio_p99": p99_agent / p99_host,
            "ratio_p99_mirror": p99_mirror / p99_host,
            "goal_ratio_p99": GOAL_RATIO,
        },
        "agent_rss_mib": {
            "no_pods": rss_idle,
            f"{MANY}_pods": rss_many,
            f"of_{MANY}_running_in_host": running,
        },
    }


def report(result: dict) -> str:
    s = result["startup_s"]
    h = s["host_direct_baseline"]
    rss = result["agent_rss_mib"]
    rows = [["virtual node", "value", "host direct", "ratio"]]
    for label, key, ratio in (
        ("resources node", "tenant_through_agent", "ratio_p99"),
        ("mirror node", "tenant_through_mirror", "ratio_p99_mirror"),
    ):
        a = s[key]
        rows.append(
            [
                f"{label}: {result['pods']} Pods at once x {result['rounds']}, p50 / p99 s",
                f"{a['p50']:.2f} / {a['p99']:.2f}",
                f"{h['p50']:.2f} / {h['p99']:.2f}",
                f"{s[ratio]:.2f} (goal {s['goal_ratio_p99']})",
            ]
        )
    for name, value in rss.items():
        rows.append([f"agent RSS, {name}" if "running" not in name else name, f"{value:.0f}", "", ""])
    return common.table(rows)

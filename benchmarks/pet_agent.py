"""The pet node agent: Pod startup latency and its memory, against Podman itself.

- startup latency: N Pods (30) bound to the agent's Node are created one after another;
  each one's latency is from just before its create call to the watch event that shows
  all its containers running (the Kubernetes SLO: p99 at most 5 s). The baseline, measured
  in the same run and interleaved with it, is the same N pods made directly through
  Podman's API (a pod with its infra container, then the container, started), N at once
  from N threads: what the runtime costs with no Kubernetes at all. The ratio of p99s is
  the agent's overhead.
- steady state: the same, with the N Pods created one every STEADY_INTERVAL seconds (1 s) on
  both sides. Kubernetes states its pod startup SLO for a cluster in steady state (churn of
  at most 20 Pod changes per second, cluster-wide: sig-scalability/slos/slos.md), and calls
  "as fast as possible" a burst, with a throughput SLO of its own. One Pod a second on one
  node is a harsher steady state than any node of a real cluster sees at 20/s; the burst above
  is what a 30-replica Deployment on this single node does.
- memory: the agent's resident set idle (its Node registered, no Pod) and with 10 Pods
  running (target: under 100 MiB).

PET_AGENT_BENCH_PODS=10 makes a quick run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import kubernetes
import podman
from riglib.controlplane import ControlPlane

from . import common

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
from petagent import (  # noqa: E402
    HOST_IMAGE,
    PAUSE_IMAGE,
    TEST_LABEL,
    pet_pod,
    podman_service,
    remove_labelled,
    running_agent,
    wait_for,
)

PODS = int(os.environ.get("PET_AGENT_BENCH_PODS", "30"))
ROUNDS = 2  # each side twice, alternating who goes first
NAMESPACE = "bench"
SLO_P99 = 5.0
STEADY_INTERVAL = float(os.environ.get("PET_AGENT_BENCH_STEADY_INTERVAL", "1.0"))


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pace(first: float, interval: float, i: int) -> None:
    """Sleep until the I-th of a series started at FIRST, one every INTERVAL seconds, is due."""
    if interval:
        time.sleep(max(0.0, first + interval * i - time.monotonic()))


def agent_round(
    core: kubernetes.client.CoreV1Api, agent, round_no: int | str, interval: float = 0.0
) -> list[float]:
    """Latencies of PODS Pods through the agent, observed by watch; one created every
    INTERVAL seconds (0: one after another, as fast as the API server takes them)."""
    created: dict[str, float] = {}
    running: dict[str, float] = {}
    done = threading.Event()
    names = {f"r{round_no}-p{i}" for i in range(PODS)}
    version = core.list_namespaced_pod(NAMESPACE).metadata.resource_version

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for event in w.stream(
            core.list_namespaced_pod, NAMESPACE, resource_version=version, timeout_seconds=300
        ):
            pod = event["object"]
            name = pod.metadata.name
            statuses = pod.status.container_statuses or []
            if name in names and name not in running and statuses and all(s.state.running for s in statuses):
                running[name] = time.monotonic()
                if len(running) == len(names):
                    w.stop()
                    break
        done.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.5)  # the watch is open before the first create
    first = time.monotonic()
    for i, name in enumerate(sorted(names)):
        ctr = {"name": "c", "image": HOST_IMAGE, "command": ["sleep", "3600"]}
        body = pet_pod(
            agent, name, [ctr], automountServiceAccountToken=False, terminationGracePeriodSeconds=1
        )
        pace(first, interval, i)
        created[name] = time.monotonic()
        core.create_namespaced_pod(NAMESPACE, body)
    if not done.wait(300):
        raise RuntimeError(f"only {len(running)} of {len(names)} Pods ran; see {agent.logs[-1]}")
    for name in names:
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=1)
    wait_for("the round's Pods gone", lambda: not core.list_namespaced_pod(NAMESPACE).items, 120, agent=agent)
    return [running[n] - created[n] for n in names]


def podman_round(url: str, run_id: str, round_no: int | str, interval: float = 0.0) -> list[float]:
    """Latencies of PODS pods made straight through Podman's API, each from its own thread:
    all at once, or one started every INTERVAL seconds."""
    client = podman.PodmanClient(base_url=url)
    labels = {TEST_LABEL: run_id}
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.monotonic()
        pod = client.pods.create(
            f"bench-{run_id}-r{round_no}-{i}", labels=labels, infra_image=PAUSE_IMAGE, share_parent=False
        )
        pod.start()
        ctr = client.containers.create(HOST_IMAGE, ["sleep", "3600"], pod=pod.id, labels=labels)
        ctr.start()
        with lock:
            latencies.append(time.monotonic() - start)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(PODS)]
    first = time.monotonic()
    for i, t in enumerate(threads):
        pace(first, interval, i)
        t.start()
    for t in threads:
        t.join()
    remove_labelled(url, run_id)
    client.close()
    return latencies


def run() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="rhizeption-bench-agent-"))
    cp = ControlPlane(tmp / "rig", ("etcd", "kube-apiserver"), die_with_parent=True)
    try:
        cp.up()
        api = kubernetes.config.new_client_from_config(str(cp.kubeconfig))
        core = kubernetes.client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        # No controller-manager in this rig: the ServiceAccount it would make, made here.
        core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "default"}})
        (tmp / "agent").mkdir()
        (tmp / "podman").mkdir()
        agent_samples: list[float] = []
        podman_samples: list[float] = []
        with (
            running_agent(cp, tmp / "agent", server={"enabled": False}) as agent,
            podman_service(tmp / "podman") as baseline_url,
        ):
            wait_for("the Node", lambda: _node_ready(core, agent.node_name), 60, agent=agent)
            time.sleep(5)
            rss_idle = rss_mib(agent.proc.pid)
            for rnd in range(ROUNDS):
                order = ("agent", "podman") if rnd % 2 == 0 else ("podman", "agent")
                for side in order:
                    if side == "agent":
                        agent_samples += agent_round(core, agent, rnd)
                    else:
                        podman_samples += podman_round(baseline_url, f"{agent.run_id}b", rnd)
                print(f"pet_agent bench: round {rnd + 1} of {ROUNDS} done", file=sys.stderr)
            steady_agent = agent_round(core, agent, "s", STEADY_INTERVAL)
            steady_podman = podman_round(baseline_url, f"{agent.run_id}b", "s", STEADY_INTERVAL)
            print("pet_agent bench: steady round done", file=sys.stderr)
            # Memory with 10 Pods running.
            for i in range(10):
                ctr = {"name": "c", "image": HOST_IMAGE, "command": ["sleep", "3600"]}
                core.create_namespaced_pod(
                    NAMESPACE, pet_pod(agent, f"m{i}", [ctr], automountServiceAccountToken=False)
                )
            wait_for(
                "10 Pods running",
                lambda: (
                    sum(p.status.phase == "Running" for p in core.list_namespaced_pod(NAMESPACE).items) == 10
                ),
                120,
                agent=agent,
            )
            time.sleep(10)  # a few resyncs and status loops
            rss_ten = rss_mib(agent.proc.pid)
        api.close()
        result = {
            "unit": "seconds",
            "pods": PODS,
            "rounds": ROUNDS,
            "startup_s": {
                "agent": common.summary(agent_samples)
                | {"p50": percentile(agent_samples, 50), "p99": percentile(agent_samples, 99)},
                "podman": common.summary(podman_samples)
                | {"p50": percentile(podman_samples, 50), "p99": percentile(podman_samples, 99)},
            },
            "steady_s": {
                "interval": STEADY_INTERVAL,
                "agent": common.summary(steady_agent)
                | {"p50": percentile(steady_agent, 50), "p99": percentile(steady_agent, 99)},
                "podman": common.summary(steady_podman)
                | {"p50": percentile(steady_podman, 50), "p99": percentile(steady_podman, 99)},
            },
            "slo_p99_s": SLO_P99,
            "rss_mib": {"idle": round(rss_idle, 1), "ten_pods": round(rss_ten, 1), "target": 100},
            "notes": (
                "startup: create call to the watch event with every container running; the "
                "baseline is the same pods through Podman's API directly, all at once. "
                f"stdev agent {statistics.pstdev(agent_samples):.2f} s."
            ),
        }
        result["startup_s"]["ratio_p99_agent_to_podman"] = (
            result["startup_s"]["agent"]["p99"] / result["startup_s"]["podman"]["p99"]
        )
        shutil.rmtree(tmp, ignore_errors=True)
        return result
    finally:
        cp.down()


def _node_ready(core, name):
    try:
        node = core.read_node(name)
    except kubernetes.client.ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def report(result: dict) -> str:
    s, st = result["startup_s"], result["steady_s"]
    rows = [
        ["pet agent", "p50 s", "p99 s", "SLO p99 s", "agent / podman p99"],
        [
            f"burst: {result['pods']} Pods x {result['rounds']}",
            f"{s['agent']['p50']:.2f}",
            f"{s['agent']['p99']:.2f}",
            f"{result['slo_p99_s']:.1f}",
            f"{s['ratio_p99_agent_to_podman']:.2f}",
        ],
        ["podman direct", f"{s['podman']['p50']:.2f}", f"{s['podman']['p99']:.2f}", "", ""],
        [
            f"steady: 1 Pod / {st['interval']:g} s",
            f"{st['agent']['p50']:.2f}",
            f"{st['agent']['p99']:.2f}",
            f"{result['slo_p99_s']:.1f}",
            f"{st['agent']['p99'] / st['podman']['p99']:.2f}",
        ],
        ["steady, podman direct", f"{st['podman']['p50']:.2f}", f"{st['podman']['p99']:.2f}", "", ""],
        [
            "agent RSS MiB",
            f"idle {result['rss_mib']['idle']}",
            f"10 Pods {result['rss_mib']['ten_pods']}",
            f"target < {result['rss_mib']['target']}",
            "",
        ],
    ]
    return common.table(rows)

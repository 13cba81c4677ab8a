"""The pet node's Service proxy against kube-proxy in nftables mode, side by side.

Both watch the same kube-apiserver (a minimal rig of our own), each in its own network
namespace (the API server reaches them through a loopback relay), with the same Services:
one EndpointSlice per Service with two endpoints, plus a `probe` Service whose one
endpoint is a real server inside each proxy's namespace.

"Live" is measured on the data path, the same way for both: a prober in the namespace
connects to the probe's ClusterIP every few milliseconds and reports when the answer
changes (connected / refused), so nothing polls nft while a proxy works.

- full sync: from starting the proxy to the probe Service answering, with N = 1,000 and
  5,000 Services (one nft transaction each for both proxies, so the probe answers when all
  Services are in).
- change to live: the probe's EndpointSlice alternates between no endpoint (refused) and
  its endpoint (connected); the time from the API write to the prober seeing the new
  answer. Changes are 2 s apart, above kube-proxy's default 1 s minimum sync period.

The proxies take turns (the other one stopped), alternating which goes first, so both
see the same machine. Timings are noisy here: the ratio (ours / kube-proxy) measured in one
run is the figure. SERVICE_PROXY_BENCH_SIZES=200,500 makes a quick run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes
from riglib import toolchain
from riglib.controlplane import MINIMAL, ControlPlane

from . import common

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
from netlab import COLLECTIONS, Lab, lab_leftovers  # noqa: E402

SIZES = [int(n) for n in os.environ.get("SERVICE_PROXY_BENCH_SIZES", "1000,5000").split(",")]
ROUNDS = 4  # turns per proxy, alternating who goes first
TOGGLES = 4  # change-to-live samples per turn
NAMESPACE = "bench"


class Runner:
    """One proxy in its namespace: ours or kube-proxy."""

    def __init__(self, name: str, lab: Lab, ns: str, kubeconfig: Path, logdir: Path) -> None:
        self.name, self.lab, self.ns, self.kubeconfig, self.logdir = name, lab, ns, kubeconfig, logdir
        self.proc: subprocess.Popen | None = None
        self.table, self.map = (
            ("rhizeption-proxy", "service-addrs") if name == "ours" else ("kube-proxy", "service-ips")
        )

    def argv(self) -> list[str]:
        if self.name == "ours":
            return [
                "env",
                f"PYTHONPATH={COLLECTIONS}",
                sys.executable,
                "-m",
                "ansible_collections.rhizeption.core.plugins.module_utils.service_proxy_daemon",
                "--kubeconfig",
                str(self.kubeconfig),
                "--cluster-cidr",
                "10.244.0.0/16",
                "--log-level",
                "WARNING",
            ]
        return [
            str(toolchain.binary("kube-proxy")),
            "--proxy-mode=nftables",
            f"--kubeconfig={self.kubeconfig}",
            "--hostname-override=bench-node",
            "--cluster-cidr=10.244.0.0/16",
            # leave the host-wide conntrack settings alone: it shares the kernel with us
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            # its own namespace has its own loopback: the default ports cannot clash
            "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256",
            "--v=1",
        ]

    def start(self) -> float:
        self.stop()
        self.lab.run(
            self.ns, "nft", "-f", "-", input=f"add table ip {self.table}\ndelete table ip {self.table}\n"
        )
        log = open(self.logdir / f"{self.name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        started = time.monotonic()
        self.proc = self.lab.popen(self.ns, *self.argv(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


def service_body(i: int) -> dict:
    return {
        "metadata": {"name": f"svc-{i}"},
        "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]},
    }


def slice_body(i: int, addrs: list[str]) -> dict:
    return {
        "metadata": {"name": f"svc-{i}-1", "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addrs],
    }


def endpoints_of(i: int) -> list[str]:
    return [f"10.244.{(i // 250) % 200}.{i % 250 + 1}", f"10.244.{200 + (i // 250) % 50}.{i % 250 + 1}"]


def populate(api: kubernetes.client.ApiClient, have: int, want: int) -> None:
    core = kubernetes.client.CoreV1Api(api)
    disc = kubernetes.client.DiscoveryV1Api(api)

    def create(i: int) -> None:
        core.create_namespaced_service(NAMESPACE, service_body(i))
        disc.create_namespaced_endpoint_slice(NAMESPACE, slice_body(i, endpoints_of(i)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(have, want)))


PROBE_IP = "10.244.251.1"  # the probe's endpoint, a local address in each namespace

# Accepts and closes: an endpoint that answers.
SERVER = r"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(512)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""

# For each line "open" or "closed" on stdin: connect until the answer is that, print when.
# Only a refusal (the reject rule) counts as closed: a connect that times out under load
# says nothing and is tried again.
PROBER = r"""
import socket, sys, time
ip = sys.argv[1]
def answer():
    s = socket.socket()
    s.settimeout(0.05)  # before any rule the SYN goes nowhere: this bounds the wait
    try:
        s.connect((ip, 80))
        return "open"
    except ConnectionRefusedError:
        return "closed"
    except OSError:
        return None
    finally:
        s.close()
for line in sys.stdin:
    want = line.strip()
    while answer() != want:
        time.sleep(0.002)
    print(time.monotonic(), flush=True)
"""


class Probe:
    def __init__(self, lab: Lab, ns: str, cluster_ip: str) -> None:
        # the endpoint on loopback; a veth pair (no dummy driver here) carries the route
        # that a connection to a ClusterIP is looked up by before any DNAT
        lab.run(ns, "ip", "addr", "add", f"{PROBE_IP}/32", "dev", "lo")
        lab.run(ns, "ip", "link", "add", "ep0", "type", "veth", "peer", "name", "ep1")
        lab.run(ns, "ip", "link", "set", "ep0", "up")
        lab.run(ns, "ip", "link", "set", "ep1", "up")
        lab.run(ns, "ip", "route", "add", "10.96.0.0/16", "dev", "ep0")
        server = lab.python(ns, SERVER, stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        self.proc = lab.python(
            ns, PROBER, cluster_ip, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def when(self, state: str) -> float:
        self.proc.stdin.write(state + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the prober ended")
        return float(line)


def set_probe(api: kubernetes.client.ApiClient, endpoints: list[str]) -> float:
    body = {
        "metadata": {"name": "probe-1", "labels": {"kubernetes.io/service-name": "probe"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in endpoints],
    }
    disc = kubernetes.client.DiscoveryV1Api(api)
    t0 = time.monotonic()
    try:
        disc.replace_namespaced_endpoint_slice("probe-1", NAMESPACE, body)
    except kubernetes.client.ApiException as e:
        if e.status != 404:
            raise
        disc.create_namespaced_endpoint_slice(NAMESPACE, body)
    return t0


def one_turn(api, runner: Runner, probe: Probe, full: list[float], live: list[float]) -> None:
    """Start RUNNER: one full-sync sample, then TOGGLES change-to-live samples."""
    started = runner.start()
    full.append(probe.when("open") - started)
    for i in range(TOGGLES):
        time.sleep(2)
        state = "closed" if i % 2 == 0 else "open"
        t0 = set_probe(api, [] if state == "closed" else [PROBE_IP])
        live.append(probe.when(state) - t0)
    if TOGGLES % 2:
        set_probe(api, [PROBE_IP])
    runner.stop()


def run() -> dict:
    lab = Lab()
    tmp = Path(tempfile.mkdtemp(prefix="rhizeption-bench-proxy-"))
    cp = ControlPlane(tmp / "rig", MINIMAL, die_with_parent=True)
    runners: list[Runner] = []
    results: dict = {"unit": "seconds", "sizes": {}}
    try:
        cp.up()
        api = kubernetes.config.new_client_from_config(str(cp.kubeconfig))
        core = kubernetes.client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        # kube-proxy waits 30 s for its Node, and takes its IP from it
        core.create_node({"metadata": {"name": "bench-node"}})
        core.patch_node_status(
            "bench-node", {"status": {"addresses": [{"type": "InternalIP", "address": "10.244.255.254"}]}}
        )
        probe_ip = core.create_namespaced_service(
            NAMESPACE,
            {
                "metadata": {"name": "probe"},
                "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]},
            },
        ).spec.cluster_ip
        set_probe(api, [PROBE_IP])
        port = int(cp.server.rsplit(":", 1)[1])
        probes: dict[str, Probe] = {}
        for name in ("ours", "kube-proxy"):
            ns = lab.ns("bp" if name == "ours" else "bk")
            lab.relay_loopback(ns, port)
            runners.append(Runner(name, lab, ns, cp.kubeconfig, tmp))
            probes[name] = Probe(lab, ns, probe_ip)
        have = 0
        for n in SIZES:
            populate(api, have, n)
            have = n
            full: dict[str, list[float]] = {r.name: [] for r in runners}
            live: dict[str, list[float]] = {r.name: [] for r in runners}
            for rnd in range(ROUNDS):
                for r in runners if rnd % 2 == 0 else list(reversed(runners)):
                    one_turn(api, r, probes[r.name], full[r.name], live[r.name])
            size = {
                "full_sync_s": {name: common.summary(s) | {"samples": s} for name, s in full.items()},
                "change_to_live_s": {name: common.summary(s) | {"samples": s} for name, s in live.items()},
            }
            for what in ("full_sync_s", "change_to_live_s"):
                size[what]["ratio_ours_to_kube_proxy"] = (
                    size[what]["ours"]["median"] / size[what]["kube-proxy"]["median"]
                )
            results["sizes"][str(n + 1)] = size  # the probe is one more Service
            print(f"service_proxy bench: {n + 1} Services done", file=sys.stderr)
        api.close()
        results["notes"] = (
            "ours builds its table in one nft transaction on start, then applies deltas (it "
            "still renders every Service in Python per sync); kube-proxy (nftables mode, v1.34 "
            "defaults: 1 s min sync period) updates incrementally. "
            "Full sync includes process start (Python and its imports for ours)."
        )
        shutil.rmtree(tmp, ignore_errors=True)  # the logs are kept only when something failed
        return results
    finally:
        for r in runners:
            r.stop()
        lab.close()
        cp.down()
        left = lab_leftovers(lab.suffix)
        if left:
            print(f"service_proxy bench: left behind: {left}", file=sys.stderr)


def report(result: dict) -> str:
    rows = [["service proxy", "Services", "ours median s", "kube-proxy median s", "ours / kube-proxy"]]
    for n, size in result["sizes"].items():
        for what, label in (("full_sync_s", "full sync"), ("change_to_live_s", "slice change to live")):
            f = size[what]
            rows.append(
                [
                    label,
                    n,
                    f"{f['ours']['median']:.3f}",
                    f"{f['kube-proxy']['median']:.3f}",
                    f"{f['ratio_ours_to_kube_proxy']:.2f}",
                ]
            )
    return common.table(rows)

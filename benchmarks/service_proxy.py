"""The pet node's Service proxy against kube-proxy in nftables mode, side by side.

Both watch the same kube-apiserver (a minimal rig of our own), each in its own network
namespace (the API server reaches them through a loopback relay), with the same Services:
one EndpointSlice per Service with two endpoints.

- full sync: from starting the proxy to every Service being in its verdict map
  (`service-addrs` here, `service-ips` for kube-proxy), N = 1,000 and 5,000 Services.
  Each proxy runs alone for this, the two take turns round by round.
- change to live: both run; one EndpointSlice gets a new endpoint address, and the time
  from the API write to a chain naming that address appearing in each proxy's table is
  taken (both are polled the same way, `nft list chains`). Changes are 2 s apart, above
  kube-proxy's default 1 s minimum sync period, so each change is the first after a quiet
  spell for both. Done at each N.

Timings are noisy here: the ratio (ours / kube-proxy) measured in one run is the figure.
SERVICE_PROXY_BENCH_SIZES=200,500 makes a quick run.
"""

from __future__ import annotations

import json
import os
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
FULL_ROUNDS = 3
CHANGES = 10
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

    def mapped(self) -> int:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited (rc {self.proc.returncode}); see {self.logdir}/{self.name}.log"
            )
        out = self.lab.run(self.ns, "nft", "-j", "list", "map", "ip", self.table, self.map, check=False)
        if not out:
            return 0
        for item in json.loads(out)["nftables"]:
            if "map" in item:
                return len(item["map"].get("elem") or [])
        return 0

    def chains(self) -> str:
        # (nft lists chains per family, not per table; each namespace has one proxy)
        return self.lab.run(self.ns, "nft", "list", "chains", "ip", check=False)


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


def wait_for(check, timeout: float, interval: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(interval)
    return None


def full_sync(runner: Runner, n: int) -> float:
    started = runner.start()
    done = wait_for(lambda: runner.mapped() >= n, 300, 0.1)
    if done is None:
        raise RuntimeError(f"{runner.name} did not map {n} Services in 300 s; see {runner.logdir}")
    return done - started


def change_latency(
    api: kubernetes.client.ApiClient, runners: list[Runner], n: int, k: int
) -> dict[str, float]:
    """Give Service k a new endpoint address; seconds until each proxy has a chain for it."""
    target = k % n
    fresh = f"10.244.251.{k % 250 + 1}"
    disc = kubernetes.client.DiscoveryV1Api(api)
    t0 = time.monotonic()
    disc.replace_namespaced_endpoint_slice(
        f"svc-{target}-1", NAMESPACE, slice_body(target, [endpoints_of(target)[0], fresh])
    )
    needle = f"__{fresh}/8080"
    seen: dict[str, float] = {}
    deadline = t0 + 60
    while len(seen) < len(runners) and time.monotonic() < deadline:
        for r in runners:
            if r.name not in seen and needle in r.chains():
                seen[r.name] = time.monotonic() - t0
        time.sleep(0.01)
    if len(seen) < len(runners):
        raise RuntimeError(f"a change did not show up in 60 s: {seen}")
    # put it back, so the next change is again one endpoint replaced
    disc.replace_namespaced_endpoint_slice(
        f"svc-{target}-1", NAMESPACE, slice_body(target, endpoints_of(target))
    )
    return seen


def run() -> dict:
    lab = Lab()
    tmp = Path(tempfile.mkdtemp(prefix="rhizeption-bench-proxy-"))
    cp = ControlPlane(tmp / "rig", MINIMAL, die_with_parent=True)
    runners: list[Runner] = []
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
        port = int(cp.server.rsplit(":", 1)[1])
        for name in ("ours", "kube-proxy"):
            ns = lab.ns("bp" if name == "ours" else "bk")
            lab.relay_loopback(ns, port)
            runners.append(Runner(name, lab, ns, cp.kubeconfig, tmp))
        results: dict = {"sizes": {}}
        have = 0
        for n in SIZES:
            populate(api, have, n)
            have = n
            full: dict[str, list[float]] = {r.name: [] for r in runners}
            for rnd in range(FULL_ROUNDS):
                order = runners if rnd % 2 == 0 else list(reversed(runners))
                for r in order:
                    full[r.name].append(full_sync(r, n))
                    r.stop()
            for r in runners:
                r.start()
            for r in runners:
                if wait_for(lambda r=r, n=n: r.mapped() >= n, 300, 0.2) is None:
                    raise RuntimeError(f"{r.name} never synced {n} Services")
            time.sleep(2)
            latency: dict[str, list[float]] = {r.name: [] for r in runners}
            for k in range(CHANGES):
                for name, seconds in change_latency(api, runners, n, k).items():
                    latency[name].append(seconds)
                time.sleep(2)
            for r in runners:
                r.stop()
            size = {
                "full_sync_s": {name: common.summary(s) | {"samples": s} for name, s in full.items()},
                "change_to_live_s": {name: common.summary(s) | {"samples": s} for name, s in latency.items()},
            }
            for what in ("full_sync_s", "change_to_live_s"):
                size[what]["ratio_ours_to_kube_proxy"] = (
                    size[what]["ours"]["median"] / size[what]["kube-proxy"]["median"]
                )
            results["sizes"][str(n)] = size
        api.close()
        results["unit"] = "seconds"
        results["notes"] = (
            "ours rebuilds its whole table per sync (one nft transaction); kube-proxy "
            "(nftables mode, v1.34 defaults: 1 s min sync period) updates incrementally"
        )
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

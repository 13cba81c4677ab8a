"""The Service proxy on a pet node, end to end: a real kube-apiserver (our own minimal rig,
so these tests may restart it), real wireguard-go, real nftables, real connections.

    ep1, ep2 (echo servers, "Pods" of the cluster side) -- bridge -- gateway (the hub)
        == WireGuard ==  pet A (the proxy daemon, the clients)

The proxy runs in pet A's namespace and reaches the API server through a loopback relay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from netlab import COLLECTIONS, Lab, Topology, lab_leftovers
from riglib.controlplane import MINIMAL, ControlPlane

TABLE = "rhizeption-proxy"
EP1, EP2 = "10.244.0.10", "10.244.0.11"
N = 200

ECHO_SERVER = r"""
import socketserver, sys, threading
ident = sys.argv[1].encode()
class TCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(ident + b"\n")
        while data := self.request.recv(4096):
            self.request.sendall(data)
class Name(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(ident + b" " + data, self.client_address)
udp = socketserver.ThreadingUDPServer(("0.0.0.0", 5353), Name)
threading.Thread(target=udp.serve_forever, daemon=True).start()
tcp = TCP(("0.0.0.0", 8080), Echo)
print("ready", flush=True)
tcp.serve_forever()
"""

CLIENT = r"""
import collections, json, socket, sys
mode, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
counts = collections.Counter()
for _ in range(n):
    try:
        if mode == "tcp":
            with socket.create_connection((ip, port), timeout=5) as s:
                counts[s.makefile("rb").readline().decode().strip()] += 1
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.connect((ip, port))
                s.send(b"hi")
                counts[s.recv(100).decode().split()[0]] += 1
    except OSError as e:
        counts["error:" + type(e).__name__] += 1
print(json.dumps(counts))
"""

# One long connection: each line on stdin is sent, each echoed line printed.
HOLD = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = s.makefile("rwb")
print(f.readline().decode().strip(), flush=True)
for line in sys.stdin:
    f.write(line.encode()); f.flush()
    print(f.readline().decode().strip(), flush=True)
"""


class Proxy:
    """The daemon, started inside pet A's namespace."""

    def __init__(self, lab: Lab, ns: str, kubeconfig: Path, wg_if: str, logdir: Path) -> None:
        self.lab, self.ns, self.kubeconfig, self.wg_if, self.logdir = lab, ns, kubeconfig, wg_if, logdir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.logdir / f"proxy-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        out = open(self.log, "wb")  # noqa: SIM115 (the child keeps it)
        self.proc = self.lab.popen(
            self.ns,
            "env",
            f"PYTHONPATH={COLLECTIONS}",
            sys.executable,
            "-m",
            "ansible_collections.rhizeption.core.plugins.module_utils.service_proxy_daemon",
            "--kubeconfig",
            str(self.kubeconfig),
            "--cluster-cidr",
            "10.244.0.0/16",
            "--masquerade-interface",
            self.wg_if,
            "--watch-timeout",
            "20",
            "--log-level",
            "DEBUG",
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)

    def synced(self) -> int:
        return self.log.read_text().count(" synced ")


class Env:
    def __init__(self, lab: Lab, topo: Topology, cp: ControlPlane, proxy: Proxy, pet: str, api) -> None:
        self.lab, self.topo, self.cp, self.proxy, self.pet, self.api = lab, topo, cp, proxy, pet, api
        self.core = kubernetes.client.CoreV1Api(api)
        self.discovery = kubernetes.client.DiscoveryV1Api(api)

    def table(self) -> str:
        return self.lab.run(self.pet, "nft", "list", "table", "ip", TABLE, check=False)

    def wait_table(self, predicate, what: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.table()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the proxy's table never showed {what}:\n{text}\n{self.proxy.log.read_text()[-3000:]}"
                )
            time.sleep(0.1)

    def clients(self, mode: str, ip: str, port: int, n: int = N) -> dict[str, int]:
        out = self.lab.run(self.pet, sys.executable, "-c", CLIENT, mode, ip, str(port), str(n))
        return json.loads(out)

    def service(self, name: str, node_port: bool = False) -> dict:
        body = {
            "metadata": {"name": name},
            "spec": {
                "type": "NodePort" if node_port else "ClusterIP",
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353},
                ],
            },
        }
        return self.api.sanitize_for_serialization(self.core.create_namespaced_service("default", body))

    def endpoints(self, service: str, addrs: list[str]) -> None:
        body = {
            "metadata": {"name": f"{service}-1", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 8080},
                {"name": "dns", "protocol": "UDP", "port": 5353},
            ],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addrs],
        }
        try:
            self.discovery.replace_namespaced_endpoint_slice(f"{service}-1", "default", body)
        except kubernetes.client.ApiException as e:
            if e.status != 404:
                raise
            self.discovery.create_namespaced_endpoint_slice("default", body)


def restart_apiserver(cp: ControlPlane) -> None:
    """Stop kube-apiserver and start it again on the same port, certificates and etcd."""
    cp.restart("kube-apiserver")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("svc")
    lab = Lab()
    cp = ControlPlane(tmp / "rig", MINIMAL, die_with_parent=True)
    api = None
    try:
        cp.up()
        topo = Topology(lab, tmp)
        bridge = lab.bridge(topo.gw_ns, "10.244.0.1/24")
        pods = [
            lab.pod(f"ep{i}", topo.gw_ns, bridge, f"{ip}/24", "10.244.0.1") for i, ip in ((1, EP1), (2, EP2))
        ]
        pet = topo.add_pet("a", 1)
        for h in (topo.gw, pet):
            lab.track_wg(h.ns, h.ifname)
            topo.keypair(h)
        topo.apply(topo.gw, topo.hub_args())
        topo.apply(pet, topo.pet_args(pet))
        for i, ns in enumerate(pods, 1):
            server = lab.python(ns, ECHO_SERVER, f"ep{i}", stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
        port = int(cp.server.rsplit(":", 1)[1])
        lab.relay_loopback(pet.ns, port)
        # Something of someone else's in the pet's ruleset, which the proxy must never touch.
        lab.run(
            pet.ns,
            "nft",
            "-f",
            "-",
            input="table ip nat {\n chain postrouting {\n  type nat hook postrouting priority 100;\n }\n}\n",
        )
        api = kubernetes.config.new_client_from_config(str(cp.kubeconfig))
        proxy = Proxy(lab, pet.ns, cp.kubeconfig, pet.ifname, tmp)
        proxy.start()
        yield Env(lab, topo, cp, proxy, pet.ns, api)
    finally:
        if api is not None:
            api.close()
        lab.close()
        cp.down()
        assert lab_leftovers(lab.suffix) == []


def cluster_ip(env: Env, name: str) -> str:
    return env.core.read_namespaced_service(name, "default").spec.cluster_ip


def test_connections_to_the_cluster_ip_are_spread_over_both_endpoints(env: Env) -> None:
    env.service("echo", node_port=True)
    env.endpoints("echo", [EP1, EP2])
    ip = cluster_ip(env, "echo")
    env.wait_table(lambda t: f"__{EP2}/8080" in t and f"__{EP2}/5353" in t, "both endpoints")
    for mode, port in (("tcp", 80), ("udp", 53)):
        counts = env.clients(mode, ip, port)
        assert set(counts) == {"ep1", "ep2"}, counts
        assert sum(counts.values()) == N
        assert min(counts.values()) >= N // 4, f"{mode}: {counts}"


def test_a_node_port_reaches_the_endpoints_from_another_host(env: Env) -> None:
    svc = env.core.read_namespaced_service("echo", "default")
    node_port = next(p.node_port for p in svc.spec.ports if p.name == "http")
    pet_underlay = env.topo.pets["a"].underlay_ip
    out = env.lab.run(env.topo.gw_ns, sys.executable, "-c", CLIENT, "tcp", pet_underlay, str(node_port), "20")
    counts = json.loads(out)
    assert sum(counts.get(k, 0) for k in ("ep1", "ep2")) == 20, counts


def test_scaling_to_one_endpoint_moves_all_traffic_there(env: Env) -> None:
    env.endpoints("echo", [EP2])
    env.wait_table(lambda t: f"__{EP1}/8080" not in t and f"__{EP2}/8080" in t, "only ep2")
    ip = cluster_ip(env, "echo")
    assert env.clients("tcp", ip, 80) == {"ep2": N}
    assert env.clients("udp", ip, 53) == {"ep2": N}


def test_zero_endpoints_reject_at_once(env: Env) -> None:
    env.endpoints("echo", [])
    ip = cluster_ip(env, "echo")
    env.wait_table(lambda t: f"{ip} . tcp . 80" in t and "svc-default/echo" not in t, "the reject set")
    # Refused (an ICMP port-unreachable from the reject rule), not timed out after 5 s.
    assert env.clients("tcp", ip, 80, 10) == {"error:ConnectionRefusedError": 10}
    # A local UDP sender sees the reject as EPERM on send (its packet was dropped in
    # output); a Pod behind the node would get the ICMP error as ECONNREFUSED.
    udp = env.clients("udp", ip, 53, 10)
    assert sum(udp.values()) == 10
    assert set(udp) <= {"error:ConnectionRefusedError", "error:PermissionError"}, udp


def test_deleting_a_service_removes_its_rules_and_nothing_else(env: Env) -> None:
    env.endpoints("echo", [EP1, EP2])
    env.service("other")
    env.endpoints("other", [EP1])
    env.wait_table(
        lambda t: "svc-default/other/tcp/80" in t and "svc-default/echo/tcp/80" in t, "both services"
    )
    nat_before = env.lab.run(env.pet, "nft", "list", "table", "ip", "nat")
    env.core.delete_namespaced_service("echo", "default")
    table = env.wait_table(lambda t: "default/echo/" not in t, "echo gone")
    assert "svc-default/other/tcp/80" in table
    assert cluster_ip(env, "other") in table
    assert env.lab.run(env.pet, "nft", "list", "table", "ip", "nat") == nat_before
    assert env.clients("tcp", cluster_ip(env, "other"), 80, 10) == {"ep1": 10}


def test_a_restart_of_the_proxy_keeps_established_connections_and_rebuilds(env: Env) -> None:
    ip = cluster_ip(env, "other")
    hold = env.lab.python(env.pet, HOLD, ip, "80", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def say(word: str) -> str:
        hold.stdin.write(word + "\n")
        hold.stdin.flush()
        return hold.stdout.readline().strip()

    assert hold.stdout.readline().strip() == "ep1"
    assert say("before") == "before"
    env.proxy.stop()
    assert "svc-default/other/tcp/80" in env.table()  # the rules outlive the process
    env.endpoints("other", [EP2])  # while no proxy runs
    env.proxy.start()
    env.wait_table(
        lambda t: f"other/tcp/80__{EP2}/8080" in t and f"other/tcp/80__{EP1}/8080" not in t, "the rebuild"
    )
    # conntrack still maps the old connection to ep1, although ep1 left the Service
    assert say("after") == "after"
    hold.stdin.close()
    hold.wait(10)
    assert env.clients("tcp", ip, 80, 10) == {"ep2": 10}


def test_the_proxy_relists_after_an_api_server_restart_and_leaves_nothing_stale(env: Env) -> None:
    env.service("third")
    env.endpoints("third", [EP1])
    env.wait_table(lambda t: "svc-default/third/tcp/80" in t, "third")
    listed = env.proxy.log.read_text().count(" listed ")
    # Frozen, the proxy cannot see anything happen; its watches die with the API server.
    os.killpg(env.proxy.proc.pid, signal.SIGSTOP)
    try:
        restart_apiserver(env.cp)
        env.core.delete_namespaced_service("third", "default")
        env.endpoints("other", [EP1, EP2])
        env.service("fourth")
        env.endpoints("fourth", [EP2])
    finally:
        os.killpg(env.proxy.proc.pid, signal.SIGCONT)
    table = env.wait_table(
        lambda t: (
            "default/third/" not in t and "svc-default/fourth/tcp/80" in t and f"other/tcp/80__{EP1}" in t
        ),
        "the state after the restart",
    )
    # It got there by listing again (both resources), not by an old watch that survived.
    deadline = time.monotonic() + 10
    while env.proxy.log.read_text().count(" listed ") < listed + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert env.proxy.log.read_text().count(" listed ") >= listed + 2
    assert cluster_ip(env, "fourth") in table
    assert set(env.clients("tcp", cluster_ip(env, "other"), 80)) == {"ep1", "ep2"}
    assert env.clients("tcp", cluster_ip(env, "fourth"), 80, 10) == {"ep2": 10}


def normalized(lab: Lab, ns: str) -> dict:
    """Our table as data: chains with their rules in order, sets and maps with their
    elements sorted (a hash set lists in the order of its random seed), no handles."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "handle"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    out: dict = {}
    for item in json.loads(lab.run(ns, "nft", "-j", "list", "table", "ip", TABLE))["nftables"]:
        kind, body = next(iter(item.items()))
        if kind == "rule":
            out.setdefault(("rules", body["chain"]), []).append(
                json.dumps(strip(body["expr"]), sort_keys=True)
            )
        elif kind in ("set", "map"):
            body = strip(body)
            body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body.get("elem") or [])
            out[(kind, body["name"])] = body
        elif kind == "chain":
            out[("chain", body["name"])] = strip(body)
    return out


def test_the_table_the_daemon_changed_step_by_step_equals_a_fresh_build(env: Env) -> None:
    """Since its start the daemon applied each change as a delta; a full render of the same
    Services applied from scratch must give the very same table."""
    from ansible_collections.rhizeption.core.plugins.module_utils import service_proxy as core

    env.wait_table(lambda t: True, "")
    assert " (changes, " in env.proxy.log.read_text()  # deltas were used
    services, _version = core.list_objects(env.api, core.SERVICES_PATH)
    slices, _version = core.list_objects(env.api, core.ENDPOINT_SLICES_PATH)
    script, _skipped = core.render(
        services,
        slices,
        core.ProxyConfig(cluster_cidr="10.244.0.0/16", masquerade_interfaces=[env.topo.pets["a"].ifname]),
    )
    scratch = env.lab.ns("scratch")
    env.lab.run(scratch, "nft", "-f", "-", input=script)
    assert normalized(env.lab, env.pet) == normalized(env.lab, scratch)


def test_the_module_syncs_once_and_is_idempotent(env: Env) -> None:
    """The one-shot module, the same core, in the same namespace: with the daemon stopped
    it finds the table the daemon built equal to its own render."""
    env.proxy.stop()
    args = {
        "kubeconfig": str(env.cp.kubeconfig),
        "cluster_cidr": "10.244.0.0/16",
        "masquerade_interfaces": [env.topo.pets["a"].ifname],
        "script_path": str(env.proxy.logdir / "module.nft"),
    }
    first = env.lab.module(env.pet, "service_proxy", args)
    assert not first.get("failed"), first
    assert first["changed"] is False, "the daemon's table should match the module's render"
    env.service("fifth")
    env.endpoints("fifth", [EP1])
    preview = env.lab.module(env.pet, "service_proxy", args, check_mode=True, diff=True)
    assert preview["changed"] is True
    assert "svc-default/fifth/tcp/80" in preview["diff"]["after"]
    assert "fifth" not in env.table()
    applied = env.lab.module(env.pet, "service_proxy", args)
    assert applied["changed"] is True
    assert "svc-default/fifth/tcp/80" in env.table()
    assert env.lab.module(env.pet, "service_proxy", args)["changed"] is False
    gone = env.lab.module(env.pet, "service_proxy", {**args, "state": "absent"})
    assert gone["changed"] is True
    assert env.table() == ""
    assert "postrouting" in env.lab.run(env.pet, "nft", "list", "table", "ip", "nat")

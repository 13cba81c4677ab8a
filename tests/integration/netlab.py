"""Network namespaces as hosts for the pet-network tests, and their cleanup.

Every name carries a per-run suffix, so a test run never touches another run's (or a
person's) namespaces, wireguard-go daemons or UAPI sockets. `Lab.close` undoes all of it,
in an order that leaves nothing behind: WireGuard links first (wireguard-go exits when its
link goes; a TUN device left in a namespace being deleted would be moved to the host),
then the processes the lab started, then the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".collections"
WG_RUN = Path("/var/run/wireguard")
PORT = 51820  # the hub's WireGuard port


def sh(*argv: str, check: bool = True, input: str | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def wireguard_go_pids(ifname: str) -> list[int]:
    """Pids of wireguard-go processes serving IFNAME (exact argv match)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 2 and argv[0].endswith(b"wireguard-go") and ifname.encode() in argv[1:]:
            pids.append(int(entry.name))
    return pids


class Lab:
    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.wg_links: list[tuple[str, str]] = []  # (namespace, ifname)
        self.procs: list[subprocess.Popen] = []
        self.relays: list[str] = []

    # -- building ------------------------------------------------------------------
    def ns(self, role: str) -> str:
        name = f"rzp-{role}-{self.suffix}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        return name

    def ifname(self, role: str) -> str:
        name = f"wg{role}{self.suffix}"
        assert len(name) <= 15
        return name

    def track_wg(self, namespace: str, ifname: str) -> None:
        self.wg_links.append((namespace, ifname))

    def veth(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> tuple[str, str]:
        a, b = f"va{secrets.token_hex(3)}", f"vb{secrets.token_hex(3)}"
        sh("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
            if addr:
                self.run(ns, "ip", "addr", "add", addr, "dev", dev)
            self.run(ns, "ip", "link", "set", dev, "up")
        return a, b

    def bridge(self, namespace: str, addr: str) -> str:
        name = f"br{secrets.token_hex(3)}"
        self.run(namespace, "ip", "link", "add", name, "type", "bridge")
        self.run(namespace, "ip", "addr", "add", addr, "dev", name)
        self.run(namespace, "ip", "link", "set", name, "up")
        return name

    def pod(self, role: str, bridge_ns: str, bridge: str, addr: str, gateway: str) -> str:
        """A namespace plugged into BRIDGE like a Pod: one address, a default route."""
        ns = self.ns(role)
        host_end, _pod_end = self.veth(bridge_ns, "", ns, addr)
        self.run(bridge_ns, "ip", "link", "set", host_end, "master", bridge)
        self.run(ns, "ip", "route", "add", "default", "via", gateway)
        return ns

    def relay_loopback(self, namespace: str, port: int) -> None:
        """Make 127.0.0.1:PORT of the host answer on 127.0.0.1:PORT inside NAMESPACE too,
        through a unix socket: the API server stays on loopback, no address is exposed."""
        sock = f"/tmp/rzp-relay-{self.suffix}-{secrets.token_hex(3)}.sock"
        self.relays.append(sock)
        host = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:127.0.0.1:{port}"],
            start_new_session=True,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(host)
        deadline = time.monotonic() + 10
        while not Path(sock).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.popen(
            namespace,
            "socat",
            f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
            f"UNIX-CONNECT:{sock}",
            stderr=subprocess.DEVNULL,
        )
        while time.monotonic() < deadline:
            if f":{port} " in self.run(namespace, "ss", "-Htln"):
                return
            time.sleep(0.02)
        raise RuntimeError(f"relay of port {port} into {namespace} did not come up")

    def run(self, namespace: str, *argv: str, check: bool = True, input: str | None = None) -> str:
        return sh("ip", "netns", "exec", namespace, *argv, check=check, input=input)

    def popen(self, namespace: str, *argv: str, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", namespace, *argv], start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def python(self, namespace: str, code: str, *args: str, **kw) -> subprocess.Popen:
        return self.popen(namespace, sys.executable, "-c", code, *args, **kw)

    def module(
        self, namespace: str, module: str, args: dict, *, check_mode: bool = False, diff: bool = False
    ) -> dict:
        """Run one of our modules, the real file, inside NAMESPACE (as Ansible would on a host)."""
        payload = dict(args)
        payload["_ansible_check_mode"] = check_mode
        payload["_ansible_diff"] = diff
        path = Path(f"/tmp/rzp-args-{self.suffix}-{secrets.token_hex(3)}.json")
        path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
        try:
            proc = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    namespace,
                    sys.executable,
                    "-m",
                    f"ansible_collections.rhizeption.core.plugins.modules.{module}",
                    str(path),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": f"{COLLECTIONS}:{os.environ.get('PYTHONPATH', '')}"},
                timeout=120,
                check=False,
            )
        finally:
            path.unlink(missing_ok=True)
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"{module} printed no JSON (rc {proc.returncode}): {proc.stdout} {proc.stderr}"
            ) from None

    # -- cleanup -------------------------------------------------------------------
    def close(self) -> None:
        for namespace, ifname in self.wg_links:
            sh("ip", "-n", namespace, "link", "del", ifname, check=False)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        for _namespace, ifname in self.wg_links:
            for pid in wireguard_go_pids(ifname):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while wireguard_go_pids(ifname) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in wireguard_go_pids(ifname):
                os.kill(pid, signal.SIGKILL)
            (WG_RUN / f"{ifname}.sock").unlink(missing_ok=True)
        for sock in self.relays:
            Path(sock).unlink(missing_ok=True)
        for namespace in reversed(self.namespaces):
            sh("ip", "netns", "del", namespace, check=False)
        # A TUN device still open when its namespace went would have moved to the host.
        for _namespace, ifname in self.wg_links:
            if Path(f"/sys/class/net/{ifname}").exists():
                sh("ip", "link", "del", ifname, check=False)


def lab_leftovers(suffix: str) -> list[str]:
    """What of a lab with SUFFIX is still there (for the tests' own teardown checks)."""
    left = [n for n in sh("ip", "netns", "list").split() if n.endswith(suffix)]
    left += [p.name for p in WG_RUN.glob(f"*{suffix}.sock")] if WG_RUN.exists() else []
    left += [p.name for p in Path("/sys/class/net").iterdir() if p.name.endswith(suffix)]
    return left


# -- a hub and its pets, configured with rhizeption.core.wireguard ------------------------


@dataclass
class Host:
    ns: str
    ifname: str
    tunnel_ip: str
    underlay_ip: str
    pod_subnet: str
    key_path: str
    public_key: str = ""
    extra: dict = field(default_factory=dict)


class Topology:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.gw_ns = lab.ns("gw")
        lab.run(self.gw_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.gw = Host(self.gw_ns, lab.ifname("h"), "10.244.255.1", "", "10.244.0.0/24", str(tmp / "gw.key"))
        self.pets: dict[str, Host] = {}

    def add_pet(self, letter: str, index: int) -> Host:
        ns = self.lab.ns(f"pet{letter}")
        # a pet forwards for its Pods and its NodePorts, like the role sets up
        self.lab.run(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # one /30 per pet on its own veth: the pets share no underlay with each other
        base = 4 * index
        self.lab.veth(self.gw_ns, f"10.244.250.{base + 1}/30", ns, f"10.244.250.{base + 2}/30")
        pet = Host(
            ns,
            self.lab.ifname(letter),
            f"10.244.255.{index + 1}",
            f"10.244.250.{base + 2}",
            f"10.244.{index}.0/24",
            str(self.tmp / f"pet{letter}.key"),
        )
        pet.extra["gw_underlay"] = f"10.244.250.{base + 1}"
        self.pets[letter] = pet
        return pet

    def keypair(self, host: Host) -> str:
        out = self.lab.module(
            host.ns, "wireguard", {"name": host.ifname, "state": "keypair", "private_key_path": host.key_path}
        )
        assert not out.get("failed"), out
        host.public_key = out["public_key"]
        return host.public_key

    def hub_args(self) -> dict:
        return {
            "name": self.gw.ifname,
            "addresses": [f"{self.gw.tunnel_ip}/24"],
            "listen_port": PORT,
            "private_key_path": self.gw.key_path,
            "config_path": str(self.tmp / f"{self.gw.ifname}.conf"),
            "peers": [
                {"public_key": p.public_key, "allowed_ips": [f"{p.tunnel_ip}/32", p.pod_subnet]}
                for p in self.pets.values()
            ],
        }

    def pet_args(self, pet: Host) -> dict:
        return {
            "name": pet.ifname,
            "addresses": [f"{pet.tunnel_ip}/24"],
            "private_key_path": pet.key_path,
            "config_path": str(self.tmp / f"{pet.ifname}.conf"),
            "peers": [
                {
                    "public_key": self.gw.public_key,
                    "endpoint": f"{pet.extra['gw_underlay']}:{PORT}",
                    "allowed_ips": ["10.244.0.0/24", "10.244.255.0/24", "10.96.0.0/16"]
                    + [p.pod_subnet for p in self.pets.values() if p is not pet],
                    "persistent_keepalive": 5,
                }
            ],
        }

    def apply(self, host: Host, args: dict, **kw) -> dict:
        out = self.lab.module(host.ns, "wireguard", args, **kw)
        assert not out.get("failed"), out
        return out

    def handshakes(self, host: Host) -> dict[str, int]:
        out = self.lab.run(host.ns, "wg", "show", host.ifname, "latest-handshakes")
        return {k: int(v) for k, v in (line.split("\t") for line in out.splitlines())}


def ping(lab: Lab, ns: str, dst: str, count: int = 3) -> bool:
    return (
        subprocess.run(
            ["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", dst],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


def reachable_within(ns: str, dst: str, seconds: int) -> bool:
    """One reply within SECONDS (ping sends once a second until then)."""
    return (
        subprocess.run(
            ["ip", "netns", "exec", ns, "ping", "-c", "1", "-w", str(seconds), dst],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )

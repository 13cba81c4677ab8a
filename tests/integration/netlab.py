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
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".collections"
WG_RUN = Path("/var/run/wireguard")


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

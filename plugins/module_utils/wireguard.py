"""One WireGuard interface and its peers, reconciled in place.

The reconcile is "syncconf-style": the live interface is read (`wg show IF dump`,
`ip -j addr`), compared with what is wanted, and only the differences are applied with
`wg set` and `ip`. A peer change never recreates the interface, so the sessions of the
other peers (their handshakes and keys) survive it.

The private key is generated on the host that uses it, written 0600, read only to
derive the public key and handed to `wg` as a file path: it never leaves the host, never
appears in a return value, a diff or a log line.

The kernel implementation is used where `ip link add ... type wireguard` works;
elsewhere `wireguard-go` (userspace) runs the interface. wireguard-go keeps its control
socket in /var/run/wireguard/IF.sock, shared by every network namespace, so interface
names must be unique on the machine when it is used.

Importable without Ansible: the module passes a Runner; tests call `reconcile` directly.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

IFNAME_RE = re.compile(r"^[A-Za-z0-9_=+.-]{1,15}$")
DEFAULT_MTU = 1420
MANAGED_MARK = "# Managed by rhizeption.core.wireguard"

# run(argv, stdin) -> (rc, stdout, stderr)
# (a runtime alias: Optional, not `X | None`, so module_utils still import on Python 3.8)
Runner = Callable[[List[str], Optional[str]], Tuple[int, str, str]]  # noqa: UP045


class WireGuardError(Exception):
    """A problem with the input (names the option) or with applying it."""


def subprocess_runner(argv: List[str], data: str | None = None) -> Tuple[int, str, str]:
    proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


# -- validation ---------------------------------------------------------------------


def validate_key(value: str, option: str) -> str:
    """A WireGuard key is 32 bytes in base64 (44 characters ending in '=')."""
    text = (value or "").strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32 or len(text) != 44:
        # The value is not echoed: it may be key material put in the wrong option.
        raise WireGuardError(f"{option}: not a WireGuard key (44 characters of base64 encoding 32 bytes)")
    return text


def validate_network(value: str, option: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError as exc:
        raise WireGuardError(f"{option}: {value!r} is not an IP network ({exc})") from None


def validate_interface_address(value: str, option: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(str(value).strip())
    except ValueError as exc:
        raise WireGuardError(f"{option}: {value!r} is not an address with a prefix ({exc})") from None


def check_overlaps(peers: List[Peer]) -> None:
    """WireGuard routes by allowed IPs: a network claimed by two peers would silently
    move to whichever was set last, so overlapping claims are refused."""
    claimed: List[Tuple[Any, str]] = []
    for i, peer in enumerate(peers):
        for net in peer.allowed_ips:
            for other, where in claimed:
                if other.version == net.version and other.overlaps(net):
                    raise WireGuardError(
                        f"peers[{i}].allowed_ips: {net} overlaps {other} of {where}"
                        " (each address may belong to one peer only)"
                    )
        for net in peer.allowed_ips:
            claimed.append((net, f"peers[{i}].allowed_ips"))


@dataclass
class Peer:
    public_key: str
    allowed_ips: List[Any] = field(default_factory=list)
    endpoint: str | None = None
    persistent_keepalive: int = 0

    def allowed_text(self) -> str:
        return ",".join(str(n) for n in self.allowed_ips)


@dataclass
class Spec:
    name: str
    state: str = "present"
    addresses: List[Any] = field(default_factory=list)
    listen_port: int | None = None
    mtu: int = DEFAULT_MTU
    peers: List[Peer] = field(default_factory=list)
    private_key_path: str = ""
    rotate_key: bool = False
    implementation: str = "auto"
    userspace_command: str = "wireguard-go"
    config_path: str = ""
    routes: bool = True


def build_spec(params: Dict[str, Any]) -> Spec:
    """Validate module-style parameters; every error names its option."""
    name = params["name"]
    if not IFNAME_RE.match(name or ""):
        raise WireGuardError(f"name: {name!r} is not a valid interface name (1 to 15 characters)")
    peers = []
    seen: Dict[str, int] = {}
    for i, raw in enumerate(params.get("peers") or []):
        key = validate_key(raw.get("public_key", ""), f"peers[{i}].public_key")
        if key in seen:
            raise WireGuardError(f"peers[{i}].public_key: the same key as peers[{seen[key]}]")
        seen[key] = i
        nets = [validate_network(n, f"peers[{i}].allowed_ips") for n in (raw.get("allowed_ips") or [])]
        endpoint = raw.get("endpoint") or None
        if endpoint is not None and not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$", endpoint):
            raise WireGuardError(f"peers[{i}].endpoint: {endpoint!r} is not HOST:PORT")
        keepalive = int(raw.get("persistent_keepalive") or 0)
        if not 0 <= keepalive <= 65535:
            raise WireGuardError(f"peers[{i}].persistent_keepalive: must be 0 to 65535")
        peers.append(Peer(key, sorted(nets, key=str), endpoint, keepalive))
    check_overlaps(peers)
    port = params.get("listen_port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise WireGuardError(f"listen_port: {port} is not a port (1 to 65535)")
    return Spec(
        name=name,
        state=params.get("state") or "present",
        addresses=[
            validate_interface_address(a, f"addresses[{i}]")
            for i, a in enumerate(params.get("addresses") or [])
        ],
        listen_port=int(port) if port is not None else None,
        mtu=int(params.get("mtu") or DEFAULT_MTU),
        peers=peers,
        private_key_path=params.get("private_key_path") or f"/etc/wireguard/{name}.key",
        rotate_key=bool(params.get("rotate_key")),
        implementation=params.get("implementation") or "auto",
        userspace_command=params.get("userspace_command") or "wireguard-go",
        config_path=params.get("config_path") if params.get("config_path") is not None else "",
        routes=params.get("routes", True) is not False,
    )


# -- reading the live state -----------------------------------------------------------


@dataclass
class Live:
    exists: bool = False
    up: bool = False
    mtu: int | None = None
    public_key: str | None = None
    listen_port: int | None = None
    addresses: List[Any] = field(default_factory=list)
    peers: Dict[str, Peer] = field(default_factory=dict)
    routes: List[Any] = field(default_factory=list)


def _run(run: Runner, argv: List[str], data: str | None = None) -> str:
    rc, out, err = run(argv, data)
    if rc != 0:
        raise WireGuardError(f"{' '.join(argv)} failed (rc {rc}): {err.strip() or out.strip()}")
    return out


def read_live(name: str, run: Runner) -> Live:
    rc, out, _err = run(["ip", "-j", "link", "show", "dev", name], None)
    if rc != 0:
        return Live()
    link = json.loads(out or "[]")[0]
    live = Live(exists=True, up="UP" in link.get("flags", []), mtu=link.get("mtu"))
    dump = _run(run, ["wg", "show", name, "dump"])
    for n, line in enumerate(dump.splitlines()):
        cols = line.split("\t")
        if n == 0:
            # cols[0] is the private key: dropped here, never stored.
            live.public_key = cols[1] if cols[1] != "(none)" else None
            live.listen_port = int(cols[2]) if cols[2] not in ("0", "(none)") else None
            continue
        nets = [] if cols[3] == "(none)" else [ipaddress.ip_network(a) for a in cols[3].split(",")]
        live.peers[cols[0]] = Peer(
            cols[0],
            sorted(nets, key=str),
            None if cols[2] == "(none)" else cols[2],
            0 if cols[7] == "off" else int(cols[7]),
        )
    addrs = json.loads(_run(run, ["ip", "-j", "addr", "show", "dev", name]) or "[]")
    for a in addrs[0].get("addr_info", []) if addrs else []:
        live.addresses.append(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}"))
    for family in ("-4", "-6"):
        routes = json.loads(
            _run(run, ["ip", "-j", family, "route", "show", "dev", name, "proto", "static"]) or "[]"
        )
        for r in routes:
            dst = r.get("dst")
            if dst and dst != "default":
                live.routes.append(
                    ipaddress.ip_network(dst if "/" in dst else f"{dst}/{32 if family == '-4' else 128}")
                )
    return live


# -- keys ---------------------------------------------------------------------------------


def public_key_of(path: str, run: Runner) -> str:
    with open(path) as f:
        private = f.read().strip()
    return _run(run, ["wg", "pubkey"], private + "\n").strip()


def write_private_key(path: str, run: Runner) -> None:
    """A fresh key, written 0600 next to its final place and renamed over it."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = _run(run, ["wg", "genkey"]).strip()
    fd, tmp = tempfile.mkstemp(prefix=".wgkey-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- the desired outcome --------------------------------------------------------------


def wanted_routes(spec: Spec) -> List[Any]:
    """Routes for the peers' allowed IPs that the interface's own prefixes do not cover."""
    if not spec.routes:
        return []
    own = [a.network for a in spec.addresses]
    nets = {n for p in spec.peers for n in p.allowed_ips}
    return sorted(
        (n for n in nets if not any(o.version == n.version and n.subnet_of(o) for o in own)),
        key=str,
    )


def render_config(spec: Spec, live: Live | None = None) -> str:
    """wg-quick style text of SPEC (or of LIVE), without the private key: PostUp hands
    wg the key file, so this file may be shown in a diff. wg-quick@NAME.service reads it
    after a reboot and falls back to wireguard-go where the kernel has no WireGuard."""
    if live is not None:
        addresses, port, mtu, peers = (
            sorted(live.addresses, key=str),
            live.listen_port,
            live.mtu,
            [live.peers[k] for k in sorted(live.peers)],
        )
    else:
        addresses, port, mtu, peers = (
            sorted(spec.addresses, key=str),
            spec.listen_port,
            spec.mtu,
            sorted(spec.peers, key=lambda p: p.public_key),
        )
    lines = [MANAGED_MARK, "[Interface]"]
    if addresses:
        lines.append("Address = " + ", ".join(str(a) for a in addresses))
    if port:
        lines.append(f"ListenPort = {port}")
    if mtu:
        lines.append(f"MTU = {mtu}")
    if live is None:
        lines.append(f"PostUp = wg set %i private-key {spec.private_key_path}")
    for p in peers:
        lines += ["", "[Peer]", f"PublicKey = {p.public_key}"]
        if p.allowed_ips:
            lines.append("AllowedIPs = " + p.allowed_text())
        if p.endpoint:
            lines.append(f"Endpoint = {p.endpoint}")
        if p.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {p.persistent_keepalive}")
    return "\n".join(lines) + "\n"


@dataclass
class Result:
    changed: bool = False
    public_key: str | None = None
    implementation: str | None = None
    actions: List[str] = field(default_factory=list)
    before: str = ""
    after: str = ""

    def as_dict(self, spec: Spec) -> Dict[str, Any]:
        return {
            "changed": self.changed,
            "interface": spec.name,
            "public_key": self.public_key,
            "implementation": self.implementation,
            "actions": self.actions,
            "peers": [
                {
                    "public_key": p.public_key,
                    "allowed_ips": [str(n) for n in p.allowed_ips],
                    "endpoint": p.endpoint,
                }
                for p in spec.peers
            ],
            "diff": {"before": self.before, "after": self.after},
        }


def _kernel_has_wireguard(name: str, run: Runner) -> bool:
    rc, _out, _err = run(["ip", "link", "add", "dev", name, "type", "wireguard"], None)
    return rc == 0


def _create(spec: Spec, run: Runner) -> str:
    if spec.implementation in ("auto", "kernel") and _kernel_has_wireguard(spec.name, run):
        return "kernel"
    if spec.implementation == "kernel":
        raise WireGuardError("implementation: kernel was asked for, but the kernel has no WireGuard")
    # wireguard-go creates the TUN device and its control socket before it forks into the
    # background, so both exist when this command returns.
    _run(run, [spec.userspace_command, spec.name])
    return "userspace"


def implementation_of(name: str) -> str:
    return "userspace" if os.path.exists(f"/var/run/wireguard/{name}.sock") else "kernel"


def _ensure_key(spec: Spec, run: Runner, res: Result, check_mode: bool) -> None:
    """The key is generated here on first use (or when rotation is asked for), never shown."""
    path = spec.private_key_path
    exists = os.path.exists(path)
    if not exists or spec.rotate_key:
        res.actions.append(f"{'rotate' if exists else 'generate'} private key {path}")
        if not check_mode:
            write_private_key(path, run)
    elif (os.stat(path).st_mode & 0o777) != 0o600:
        res.actions.append(f"chmod 0600 {path}")
        if not check_mode:
            os.chmod(path, 0o600)
    if os.path.exists(path):
        res.public_key = public_key_of(path, run)


def _write_config(spec: Spec, res: Result, check_mode: bool) -> None:
    current = ""
    if os.path.exists(spec.config_path):
        with open(spec.config_path) as f:
            current = f.read()
    if current == res.after:
        return
    res.actions.append(f"write {spec.config_path}")
    if check_mode:
        return
    directory = os.path.dirname(spec.config_path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".wgconf-", dir=directory)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(res.after)
    os.replace(tmp, spec.config_path)


def _sync_wireguard(spec: Spec, live: Live, run: Runner, res: Result, check_mode: bool) -> None:
    """One `wg set` with only what differs: peers not named are left alone, so their
    sessions keep their keys and counters."""
    wg_set: List[str] = []
    key_changed = bool(res.public_key) and live.public_key != res.public_key
    if key_changed:
        wg_set += ["private-key", spec.private_key_path]
        res.actions.append("set private key")
    if spec.listen_port and spec.listen_port != live.listen_port:
        wg_set += ["listen-port", str(spec.listen_port)]
        res.actions.append(f"set listen port {spec.listen_port}")
    wanted = {p.public_key: p for p in spec.peers}
    for key in sorted(set(live.peers) - set(wanted)):
        wg_set += ["peer", key, "remove"]
        res.actions.append(f"remove peer {key}")
    for key, peer in sorted(wanted.items()):
        have = live.peers.get(key)
        args: List[str] = []
        if have is None or have.allowed_ips != peer.allowed_ips:
            args += ["allowed-ips", peer.allowed_text()]
        if peer.endpoint and (have is None or have.endpoint != peer.endpoint):
            # A roaming peer's endpoint is learnt from its packets: only a configured one is set.
            args += ["endpoint", peer.endpoint]
        if have is None or have.persistent_keepalive != peer.persistent_keepalive:
            args += ["persistent-keepalive", str(peer.persistent_keepalive or "off")]
        if args:
            wg_set += ["peer", key, *args]
            res.actions.append(f"{'add' if have is None else 'update'} peer {key}")
        if key_changed and have is not None and peer.endpoint and peer.persistent_keepalive:
            # A new private key ends every session, and a peer that does not know our endpoint
            # (a hub behind which we roam) cannot start the next one: we must. Turning the
            # keepalive on from off sends one at once (kernel and wireguard-go alike), which
            # starts the handshake now instead of when the keepalive timer next fires.
            wg_set += ["peer", key, "persistent-keepalive", "off"]
            wg_set += ["peer", key, "persistent-keepalive", str(peer.persistent_keepalive)]
    if wg_set and not check_mode:
        _run(run, ["wg", "set", spec.name, *wg_set])


def _sync_link(spec: Spec, live: Live, run: Runner, res: Result, check_mode: bool) -> None:
    """Addresses, MTU, up, and the routes of the peers' allowed IPs."""
    steps: List[Tuple[str, List[str]]] = []
    for addr in sorted(set(spec.addresses) - set(live.addresses), key=str):
        steps.append((f"add address {addr}", ["ip", "addr", "add", str(addr), "dev", spec.name]))
    for addr in sorted(set(live.addresses) - set(spec.addresses), key=str):
        if not (addr.version == 6 and addr.ip.is_link_local):
            steps.append((f"remove address {addr}", ["ip", "addr", "del", str(addr), "dev", spec.name]))
    if live.mtu != spec.mtu:
        steps.append((f"set mtu {spec.mtu}", ["ip", "link", "set", "dev", spec.name, "mtu", str(spec.mtu)]))
    if not live.up:
        steps.append((f"set {spec.name} up", ["ip", "link", "set", "dev", spec.name, "up"]))
    routes = wanted_routes(spec)
    for net in sorted(set(routes) - set(live.routes), key=str):
        steps.append(
            (f"add route {net}", ["ip", "route", "replace", str(net), "dev", spec.name, "proto", "static"])
        )
    for net in sorted(set(live.routes) - set(routes), key=str):
        steps.append(
            (f"remove route {net}", ["ip", "route", "del", str(net), "dev", spec.name, "proto", "static"])
        )
    for action, argv in steps:
        res.actions.append(action)
        if not check_mode:
            _run(run, argv)


def _remove(spec: Spec, live: Live, run: Runner, res: Result, check_mode: bool) -> None:
    if live.exists:
        res.actions.append(f"delete interface {spec.name}")
        if not check_mode:
            # For wireguard-go, deleting the link ends the daemon.
            _run(run, ["ip", "link", "del", "dev", spec.name])
    if spec.config_path and os.path.exists(spec.config_path):
        res.actions.append(f"remove {spec.config_path}")
        if not check_mode:
            os.unlink(spec.config_path)


def reconcile(spec: Spec, run: Runner = subprocess_runner, check_mode: bool = False) -> Result:
    res = Result()
    live = read_live(spec.name, run)
    res.before = render_config(spec, live) if live.exists else ""
    if spec.state == "absent":
        _remove(spec, live, run, res, check_mode)
    elif spec.state == "keypair":
        _ensure_key(spec, run, res, check_mode)
        res.before = ""
    else:
        _ensure_key(spec, run, res, check_mode)
        res.after = render_config(spec)
        if spec.config_path:
            _write_config(spec, res, check_mode)
        if not live.exists:
            res.actions.append(f"create interface {spec.name}")
            if check_mode:
                res.implementation = "kernel" if spec.implementation == "kernel" else None
                res.changed = True
                return res
            res.implementation = _create(spec, run)
            live = read_live(spec.name, run)
        else:
            res.implementation = implementation_of(spec.name)
        _sync_wireguard(spec, live, run, res, check_mode)
        _sync_link(spec, live, run, res, check_mode)
    res.changed = bool(res.actions)
    return res

"""ClusterIP and NodePort Services of a pet node, served with nftables.

Why our own: a pet node joins a control plane without kube-proxy (it runs its Pods with
Podman and reaches the cluster over WireGuard), and no packaged proxy serves Services
there from nftables alone. kube-proxy's nftables mode wants a full node set-up (its own
sysctls, conntrack tuning, health and metrics servers, iptables leftovers clean-up); this
proxy needs only `nft` and the kubernetes client, and writes ONE table of its own.

Three steps, one copy of the knowledge:

- `render(services, slices, config)` is pure: Service and EndpointSlice objects (the API's
  JSON form) in, one nftables script out, plus a line for each Service port it had to skip.
- `apply(script)` runs it with `nft -f`: the script re-creates our table in one
  transaction, so either all of it is live or (on an error) the previous ruleset stays.
  Only our table is named; other tables (podman's netavark writes `ip nat`) are never
  touched. `render_delta(old, new)` is the same knowledge applied to a change: only the
  Service ports that differ, also in one transaction.
- `Watcher` lists and watches Services and EndpointSlices, re-lists when a watch ends or
  fails (410 Gone, API-server restart), and after a short debounce applies the delta from
  what it applied last (a full rebuild on start or when a delta fails).
  `service_proxy_daemon.py` runs it; the `service_proxy` module does one sync.

Layout of the table (family ip):

- `nat-prerouting` / `nat-output` (dstnat) jump to `services`, which looks the packet's
  `daddr . l4proto . dport` up in the verdict map `service-addrs` (ClusterIPs), and, for
  packets to a local address, `l4proto . dport` in `service-nodeports`.
- One chain per Service port (`svc-NS/NAME/PROTO/PORT`) picks an endpoint for each new
  connection with `numgen random|inc mod N vmap`, and one chain per endpoint
  (`ep-...__IP/PORT`) DNATs to it. NAT rules only see a connection's first packet, so the
  choice is per connection; later packets follow conntrack.
- Masquerade: an endpoint talking to its own Service (hairpin), NodePort traffic (its
  replies must come back through this node), and DNATed traffic from outside the cluster's
  Pod CIDR leaving through the tunnel are marked and masqueraded in `nat-postrouting`.
- A Service port without endpoints is in `no-endpoint-addrs` / `no-endpoint-nodeports`;
  filter chains reject new connections to it at once instead of letting them time out.
- `fingerprint` carries the script's hash in its comment: a sync whose render did not
  change finds it equal and writes nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import random
import re
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

try:
    from ansible_collections.rhizeption.core.plugins.module_utils.kube import (
        HAS_KUBERNETES as HAS_K8S,  # render and apply work without it
    )
    from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube, KubeError
except ImportError:  # copied next to kube.py on a pet node
    from kube import HAS_KUBERNETES as HAS_K8S  # type: ignore[no-redef]
    from kube import Kube, KubeError  # type: ignore[no-redef]

LOG = logging.getLogger("rhizeption.service_proxy")

DEFAULT_TABLE = "rhizeption-proxy"
MASQ_MARK = 0x00100000  # a bit of our own: kube-proxy and netavark use others
PROTOCOLS = ("TCP", "UDP")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# nft identifiers: a letter first, then letters, digits and / \ - _ .
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
ELEMENTS_PER_LINE = 500

Obj = Dict[str, Any]


class ProxyError(Exception):
    pass


@dataclass
class ProxyConfig:
    table: str = DEFAULT_TABLE
    # The cluster's Pod CIDR: DNATed traffic from elsewhere that leaves through one of
    # masquerade_interfaces (the tunnel) is masqueraded, so replies find their way back.
    cluster_cidr: str | None = None
    masquerade_interfaces: List[str] = field(default_factory=list)
    balance: str = "random"  # or "round-robin"
    nodeports: bool = True

    def validate(self) -> None:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$", self.table):
            raise ProxyError(f"table: {self.table!r} is not a usable nftables table name")
        if self.balance not in ("random", "round-robin"):
            raise ProxyError(f"balance: {self.balance!r} is not random or round-robin")
        if self.cluster_cidr:
            try:
                ipaddress.IPv4Network(self.cluster_cidr, strict=False)
            except ValueError:
                raise ProxyError(f"cluster_cidr: {self.cluster_cidr!r} is not an IPv4 network") from None
        for name in self.masquerade_interfaces:
            if not re.match(r"^[A-Za-z0-9_=+.-]{1,15}$", name):
                raise ProxyError(f"masquerade_interfaces: {name!r} is not an interface name")


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int


@dataclass
class ServicePort:
    namespace: str
    name: str
    protocol: str  # tcp or udp
    port: int
    cluster_ips: List[str]
    node_port: int | None
    endpoints: List[Endpoint]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}/{self.protocol}/{self.port}"

    @property
    def chain(self) -> str:
        return f"svc-{self.key}"

    @property
    def external_chain(self) -> str:
        return f"ext-{self.key}"

    def endpoint_chain(self, ep: Endpoint) -> str:
        return f"ep-{self.key}__{ep.ip}/{ep.port}"


# -- from API objects to service ports ------------------------------------------------


def _port(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= 65535 else None


def _ipv4(value: Any) -> str | None:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        return None


def _slice_endpoints(slices: Iterable[Obj], port_name: str, protocol: str) -> List[Endpoint]:
    """Ready endpoints for one Service port; when none is ready, the serving ones that are
    terminating (so connections drain instead of being refused)."""
    ready, serving = set(), set()
    for s in slices:
        if s.get("addressType", "IPv4") != "IPv4":
            continue
        number = None
        for p in s.get("ports") or []:
            if (p.get("name") or "") == port_name and (p.get("protocol") or "TCP") == protocol:
                number = _port(p.get("port"))
        if number is None:
            continue
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            for addr in (ep.get("addresses") or [])[:1]:  # the API says: use the first
                ip = _ipv4(addr)
                if ip is None:
                    continue
                if cond.get("ready") is not False:  # unset means ready
                    ready.add(Endpoint(ip, number))
                elif cond.get("serving") and cond.get("terminating"):
                    serving.add(Endpoint(ip, number))
    chosen = ready or serving
    return sorted(chosen, key=lambda e: (ipaddress.IPv4Address(e.ip), e.port))


def service_ports(services: Iterable[Obj], slices: Iterable[Obj]) -> Tuple[List[ServicePort], List[str]]:
    """The Service ports this node serves, and a line for each one skipped."""
    by_service: Dict[Tuple[str, str], List[Obj]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner:
            by_service.setdefault((meta.get("namespace") or "", owner), []).append(s)
    out: List[ServicePort] = []
    skipped: List[str] = []
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ns, name = meta.get("namespace") or "", meta.get("name") or ""
        what = f"Service {ns}/{name}"
        if not (NAME_RE.match(ns) and NAME_RE.match(name)):
            skipped.append(f"{what}: namespace or name is not a DNS label")
            continue
        stype = spec.get("type") or "ClusterIP"
        if stype == "ExternalName":
            continue
        ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"]
        cluster_ips = [v for v in (_ipv4(ip) for ip in ips) if v]
        if not cluster_ips:
            if ips and not any(":" in ip for ip in ips):
                skipped.append(f"{what}: clusterIP {ips[0]!r} is not an IPv4 address")
            continue  # headless, or IPv6 only: nothing to proxy
        for i, p in enumerate(spec.get("ports") or []):
            protocol = p.get("protocol") or "TCP"
            port = _port(p.get("port"))
            if protocol not in PROTOCOLS:
                skipped.append(f"{what} ports[{i}]: protocol {protocol!r} is not served (TCP and UDP are)")
                continue
            if port is None:
                skipped.append(f"{what} ports[{i}]: port {p.get('port')!r} is out of range (1-65535)")
                continue
            node_port = None
            if stype in ("NodePort", "LoadBalancer") and p.get("nodePort") is not None:
                node_port = _port(p.get("nodePort"))
                if node_port is None:
                    skipped.append(f"{what} ports[{i}]: nodePort {p.get('nodePort')!r} is out of range")
                    continue
            endpoints = _slice_endpoints(by_service.get((ns, name), []), p.get("name") or "", protocol)
            out.append(ServicePort(ns, name, protocol.lower(), port, cluster_ips, node_port, endpoints))
    out.sort(key=lambda sp: (sp.namespace, sp.name, sp.protocol, sp.port))
    return _without_clashes(out, skipped), skipped


def _without_clashes(out: List[ServicePort], skipped: List[str]) -> List[ServicePort]:
    # Two Services cannot own one address and port, nor one node port: the first wins.
    seen_addr: Dict[Tuple[str, str, int], str] = {}
    seen_node: Dict[Tuple[str, int], str] = {}
    unique: List[ServicePort] = []
    for sp in out:
        clash = [
            seen_addr[k] for k in ((ip, sp.protocol, sp.port) for ip in sp.cluster_ips) if k in seen_addr
        ]
        if sp.node_port and (sp.protocol, sp.node_port) in seen_node:
            clash.append(seen_node[(sp.protocol, sp.node_port)])
        if clash:
            skipped.append(f"Service {sp.namespace}/{sp.name} {sp.protocol}/{sp.port}: taken by {clash[0]}")
            continue
        for ip in sp.cluster_ips:
            seen_addr[(ip, sp.protocol, sp.port)] = f"{sp.namespace}/{sp.name}"
        if sp.node_port:
            seen_node[(sp.protocol, sp.node_port)] = f"{sp.namespace}/{sp.name}"
        unique.append(sp)
    return unique


# -- rendering ------------------------------------------------------------------------------


def _elements(lines: List[str], table: str, name: str, items: List[str]) -> None:
    for i in range(0, len(items), ELEMENTS_PER_LINE):
        lines.append(f"add element ip {table} {name} {{ {', '.join(items[i : i + ELEMENTS_PER_LINE])} }}")


def render(
    services: Iterable[Obj], slices: Iterable[Obj], config: ProxyConfig | None = None
) -> Tuple[str, List[str]]:
    """The nftables script that makes our table serve SERVICES, and the skipped lines.

    The script first creates the table (so that deleting it cannot fail), deletes it, and
    builds it anew: `nft -f` runs the whole file as one transaction."""
    ports, skipped = service_ports(services, slices)
    return render_ports(ports, config), skipped


class _Parts:
    """The chains, rules and elements that service ports need, chain by chain."""

    def __init__(self) -> None:
        self.chains: List[str] = []
        self.rules: Dict[str, List[str]] = {}
        self.addr_elems: List[str] = []
        self.node_elems: List[str] = []
        self.no_ep_addrs: List[str] = []
        self.no_ep_nodes: List[str] = []

    def add(self, sp: ServicePort, config: ProxyConfig) -> None:
        t = config.table

        def chain(name: str, *texts: str) -> None:
            self.chains.append(name)
            self.rules[name] = [f"add rule ip {t} {name} {text}" for text in texts]

        if not sp.endpoints:
            self.no_ep_addrs += [f"{ip} . {sp.protocol} . {sp.port}" for ip in sp.cluster_ips]
            if sp.node_port and config.nodeports:
                self.no_ep_nodes.append(f"{sp.protocol} . {sp.node_port}")
            return
        pick = "random" if config.balance == "random" else "inc"
        branches = ", ".join(f"{i} : goto {sp.endpoint_chain(ep)}" for i, ep in enumerate(sp.endpoints))
        chain(sp.chain, f"numgen {pick} mod {len(sp.endpoints)} vmap {{ {branches} }}")
        for ep in sp.endpoints:
            chain(
                sp.endpoint_chain(ep),
                f"ip saddr {ep.ip} jump mark-for-masquerade",  # hairpin
                f"meta l4proto {sp.protocol} dnat to {ep.ip}:{ep.port}",
            )
        self.addr_elems += [f"{ip} . {sp.protocol} . {sp.port} : goto {sp.chain}" for ip in sp.cluster_ips]
        if sp.node_port and config.nodeports:
            chain(sp.external_chain, "jump mark-for-masquerade", f"goto {sp.chain}")
            self.node_elems.append(f"{sp.protocol} . {sp.node_port} : goto {sp.external_chain}")

    def elements(self) -> Dict[str, set]:
        return {
            "service-addrs": set(self.addr_elems),
            "service-nodeports": set(self.node_elems),
            "no-endpoint-addrs": set(self.no_ep_addrs),
            "no-endpoint-nodeports": set(self.no_ep_nodes),
        }


def render_delta(
    old: List[ServicePort], new: List[ServicePort], fingerprint: str, config: ProxyConfig
) -> str | None:
    """A script that turns the table rendered from OLD into the one rendered from NEW,
    touching only the Service ports that changed: a change costs in proportion to its size,
    not to the number of Services. None when only a full rebuild is safe."""
    t = config.table
    before = {sp.key: sp for sp in old}
    after = {sp.key: sp for sp in new}
    gone, come = _Parts(), _Parts()
    for key in sorted(set(before) | set(after)):
        o, n = before.get(key), after.get(key)
        if o == n:
            continue
        if o is not None:
            gone.add(o, config)
        if n is not None:
            come.add(n, config)
    gone_elems, come_elems = gone.elements(), come.elements()
    lines = ["# rendered by rhizeption.core service_proxy: the changed Services only"]
    for name in gone_elems:
        dropped = gone_elems[name] - come_elems[name]
        added = come_elems[name] - gone_elems[name]
        keys_dropped = {e.split(" : ")[0] for e in dropped}
        if keys_dropped & {e.split(" : ")[0] for e in added}:
            return None  # one key moving to another Service: rebuild rather than order it
        gone_elems[name], come_elems[name] = dropped, added
    # A chain's name says what it holds (an endpoint's address and port, a Service's key), so
    # a chain in both is kept; only the Service chains, whose endpoint lists change, are
    # rewritten in place.
    kept = set(gone.chains) & set(come.chains)
    rewritten = [
        c for c in come.chains if c in kept and c.startswith("svc-") and gone.rules[c] != come.rules[c]
    ]
    deleted = [c for c in gone.chains if c not in kept]
    added_chains = [c for c in come.chains if c not in kept]
    lines += [f"flush chain ip {t} {c}" for c in deleted + rewritten]
    for name, elems in gone_elems.items():
        keys = sorted(e.split(" : ")[0] for e in elems)
        for i in range(0, len(keys), ELEMENTS_PER_LINE):
            lines.append(f"delete element ip {t} {name} {{ {', '.join(keys[i : i + ELEMENTS_PER_LINE])} }}")
    lines += [f"delete chain ip {t} {c}" for c in deleted]
    lines += [f"add chain ip {t} {c}" for c in added_chains]
    lines += [r for c in added_chains + rewritten for r in come.rules[c]]
    for name, elems in come_elems.items():
        _elements(lines, t, name, sorted(elems))
    lines += [
        f"delete chain ip {t} fingerprint",
        f'add chain ip {t} fingerprint {{ comment "sha256:{fingerprint}" ; }}',
    ]
    return "\n".join(lines) + "\n"


def render_ports(ports: List[ServicePort], config: ProxyConfig | None = None) -> str:
    """The script for service ports already sorted out by `service_ports`."""
    config = config or ProxyConfig()
    config.validate()
    t = config.table
    mark = f"0x{MASQ_MARK:08x}"
    parts = _Parts()
    for sp in ports:
        parts.add(sp, config)
    chains, rules = parts.chains, [r for c in parts.chains for r in parts.rules[c]]
    addr_elems, node_elems = parts.addr_elems, parts.node_elems
    no_ep_addrs, no_ep_nodes = parts.no_ep_addrs, parts.no_ep_nodes

    lines = [
        "# rendered by rhizeption.core service_proxy: this table only, rebuilt in one transaction",
        f"add table ip {t}",
        f"delete table ip {t}",
        f'add table ip {t} {{ comment "Services of this pet node (rhizeption.core service_proxy)" ; }}',
        # base chains: before kube-proxy's and netavark's (-100 is dstnat, 100 srcnat)
        f"add chain ip {t} nat-prerouting {{ type nat hook prerouting priority -100 ; policy accept ; }}",
        f"add chain ip {t} nat-output {{ type nat hook output priority -100 ; policy accept ; }}",
        f"add chain ip {t} nat-postrouting {{ type nat hook postrouting priority 100 ; policy accept ; }}",
        f"add chain ip {t} filter-input {{ type filter hook input priority -110 ; policy accept ; }}",
        f"add chain ip {t} filter-forward {{ type filter hook forward priority -110 ; policy accept ; }}",
        f"add chain ip {t} filter-output {{ type filter hook output priority -110 ; policy accept ; }}",
        f"add chain ip {t} services",
        f"add chain ip {t} mark-for-masquerade",
        f"add chain ip {t} masquerading",
        *(f"add chain ip {t} {c}" for c in chains),
        f"add map ip {t} service-addrs {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}",
        f"add map ip {t} service-nodeports {{ type inet_proto . inet_service : verdict ; }}",
        f"add set ip {t} no-endpoint-addrs {{ type ipv4_addr . inet_proto . inet_service ; }}",
        f"add set ip {t} no-endpoint-nodeports {{ type inet_proto . inet_service ; }}",
        f"add rule ip {t} nat-prerouting jump services",
        f"add rule ip {t} nat-output jump services",
        f"add rule ip {t} nat-postrouting jump masquerading",
        f"add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-addrs",
    ]
    if config.nodeports:
        lines.append(
            f"add rule ip {t} services fib daddr type local ip daddr != 127.0.0.0/8"
            " meta l4proto . th dport vmap @service-nodeports"
        )
    reject = "ct state new ip daddr . meta l4proto . th dport @no-endpoint-addrs reject"
    lines += [
        f"add rule ip {t} filter-output {reject}",
        f"add rule ip {t} filter-forward {reject}",
        f"add rule ip {t} filter-input ct state new fib daddr type local"
        " meta l4proto . th dport @no-endpoint-nodeports reject",
        f"add rule ip {t} mark-for-masquerade meta mark set meta mark | {mark}",
    ]
    if config.cluster_cidr and config.masquerade_interfaces:
        ifaces = ", ".join(f'"{i}"' for i in config.masquerade_interfaces)
        lines.append(
            f"add rule ip {t} masquerading ct status dnat oifname {{ {ifaces} }}"
            f" ip saddr != {config.cluster_cidr} masquerade"
        )
    lines += [
        f"add rule ip {t} masquerading meta mark & {mark} == 0 return",
        f"add rule ip {t} masquerading meta mark set meta mark & 0x{~MASQ_MARK & 0xFFFFFFFF:08x}",
        f"add rule ip {t} masquerading masquerade fully-random",
        *rules,
    ]
    _elements(lines, t, "service-addrs", addr_elems)
    _elements(lines, t, "service-nodeports", node_elems)
    _elements(lines, t, "no-endpoint-addrs", no_ep_addrs)
    _elements(lines, t, "no-endpoint-nodeports", no_ep_nodes)
    body = "\n".join(lines) + "\n"
    digest = hashlib.sha256(body.encode()).hexdigest()[:32]
    body += f'add chain ip {t} fingerprint {{ comment "sha256:{digest}" ; }}\n'
    return body


def fingerprint_of(script: str) -> str | None:
    m = re.search(r'fingerprint \{ comment "sha256:([0-9a-f]+)"', script)
    return m.group(1) if m else None


def delete_script(table: str = DEFAULT_TABLE) -> str:
    return f"add table ip {table}\ndelete table ip {table}\n"


# -- applying -------------------------------------------------------------------------------

Runner = Callable[[List[str], Optional[str]], Tuple[int, str, str]]  # noqa: UP045


def subprocess_runner(argv: List[str], data: str | None = None) -> Tuple[int, str, str]:
    proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def live_fingerprint(
    table: str = DEFAULT_TABLE, nft: str = "nft", run: Runner = subprocess_runner
) -> str | None:
    """The hash of the script that built the live table, or None when there is none."""
    rc, out, _err = run([nft, "list", "chain", "ip", table, "fingerprint"], None)
    if rc != 0:
        return None
    m = re.search(r'comment "sha256:([0-9a-f]+)"', out)
    return m.group(1) if m else None


def apply(script: str, nft: str = "nft", run: Runner = subprocess_runner, check: bool = False) -> None:
    """Run SCRIPT as one nft transaction (`check`: only validate it). On an error nothing
    of it is applied and ProxyError carries nft's message."""
    argv = [nft, "-c", "-f", "-"] if check else [nft, "-f", "-"]
    rc, out, err = run(argv, script)
    if rc != 0:
        raise ProxyError(f"nft rejected the ruleset (rc {rc}): {(err or out).strip()[:2000]}")


def sync(
    services: Iterable[Obj],
    slices: Iterable[Obj],
    config: ProxyConfig,
    *,
    nft: str = "nft",
    run: Runner = subprocess_runner,
    check: bool = False,
) -> Dict[str, Any]:
    """Render and apply when the live table differs; the module's and the daemon's step."""
    script, skipped = render(services, slices, config)
    for line in skipped:
        LOG.warning("skipped %s", line)
    wanted = fingerprint_of(script)
    changed = live_fingerprint(config.table, nft, run) != wanted
    if changed:
        apply(script, nft, run, check=check)
    return {"changed": changed, "script": script, "skipped": skipped, "fingerprint": wanted}


def udp_flows(ports: List[ServicePort]) -> set:
    """(service address, port, endpoint address, endpoint port) of every UDP path."""
    flows = set()
    for sp in ports:
        if sp.protocol != "udp":
            continue
        for ep in sp.endpoints:
            flows.update((ip, sp.port, ep.ip, ep.port) for ip in sp.cluster_ips)
            if sp.node_port:
                flows.add((None, sp.node_port, ep.ip, ep.port))
    return flows


def forget_udp_flows(flows: Iterable[Tuple[Any, int, str, int]], run: Runner = subprocess_runner) -> None:
    """UDP has no connection end: a client that keeps its source port would keep reaching
    a removed endpoint through its conntrack entry. Delete those entries, as kube-proxy does."""
    for service_ip, port, ep_ip, ep_port in sorted(flows, key=str):
        argv = ["conntrack", "-D", "-p", "udp"]
        if service_ip:
            argv += ["--orig-dst", service_ip]
        argv += ["--orig-port-dst", str(port), "--reply-src", ep_ip, "--reply-port-src", str(ep_port)]
        try:
            rc, _out, err = run(argv, None)
        except OSError as exc:  # no conntrack tool: entries age out (30 s) instead
            LOG.warning("cannot forget UDP flows: %s", exc)
            return
        if rc not in (0, 1):  # 1: there was nothing to delete
            LOG.warning("conntrack %s: %s", " ".join(argv[3:]), err.strip())


# -- reading the API ----------------------------------------------------------------------------

SERVICES_PATH = "/api/v1/services"
ENDPOINT_SLICES_PATH = "/apis/discovery.k8s.io/v1/endpointslices"


def list_objects(api_client: Any, path: str) -> Tuple[List[Obj], str]:
    """Every object at PATH (all namespaces, in pages) and the list's resourceVersion."""
    return Kube(api_client).list(path)


# -- watching the API ---------------------------------------------------------------------------


@dataclass
class _Resource:
    kind: str
    path: str
    objects: Dict[str, Obj] = field(default_factory=dict)
    listed: bool = False


class Watcher:
    """List+watch Services and EndpointSlices; sync after each change, debounced.

    Each resource has a thread that lists (replacing what it knew), then watches from the
    list's resourceVersion. When the watch ends (its timeout, 410 Gone, a broken connection
    or an API-server restart) it lists again, so nothing missed while away stays stale.
    The main loop renders from both stores once both were listed (a full rebuild on
    start), then after every change, waiting `debounce` seconds to gather a burst."""

    def __init__(
        self,
        api_client: Any,
        config: ProxyConfig,
        *,
        nft: str = "nft",
        debounce: float = 0.05,
        watch_timeout: int = 300,
        run: Runner = subprocess_runner,
    ) -> None:
        if not HAS_K8S:
            raise ProxyError("the kubernetes Python client is needed to watch the API")
        config.validate()
        self.api = api_client
        self.config = config
        self.nft = nft
        self.debounce = debounce
        self.watch_timeout = watch_timeout
        self.run = run
        self.resources = [
            _Resource("Service", SERVICES_PATH),
            _Resource("EndpointSlice", ENDPOINT_SLICES_PATH),
        ]
        self.lock = threading.Lock()
        self.dirty = threading.Event()
        self.stop = threading.Event()
        self.syncs = 0
        self.last_fingerprint: str | None = None
        self.udp_flows: set | None = None  # None until the first sync: nothing to forget yet
        self.last_ports: List[ServicePort] | None = None  # what the live table was rendered from

    # one resource -------------------------------------------------------------------------
    def _list(self, res: _Resource) -> str:
        items, rv = list_objects(self.api, res.path)
        objects = {f"{o['metadata'].get('namespace')}/{o['metadata']['name']}": o for o in items}
        with self.lock:
            res.objects = objects
            res.listed = True
        self.dirty.set()
        LOG.info("listed %d %ss", len(objects), res.kind)
        return rv

    def _watch(self, res: _Resource, rv: str) -> None:
        # Spread the watches' ends so both resources do not re-list at the same moment.
        timeout = int(self.watch_timeout * random.uniform(0.8, 1.0)) or 1
        try:
            for kind, obj in Kube(self.api).watch(res.path, rv, timeout_seconds=timeout):
                if self.stop.is_set():
                    return
                if kind == "BOOKMARK":
                    continue
                meta = obj.get("metadata") or {}
                key = f"{meta.get('namespace')}/{meta.get('name')}"
                with self.lock:
                    if kind == "DELETED":
                        res.objects.pop(key, None)
                    else:
                        res.objects[key] = obj
                self.dirty.set()
        except KubeError as e:
            LOG.info("%s watch ended: %s", res.kind, e)  # 410 Gone and friends: list again

    def _follow(self, res: _Resource) -> None:
        backoff = 0.2
        while not self.stop.is_set():
            try:
                rv = self._list(res)
                backoff = 0.2
                self._watch(res, rv)
            except Exception as exc:  # the API is away: try again, backing off
                if self.stop.is_set():
                    return
                LOG.warning("%s list/watch failed, retrying in %.1f s: %s", res.kind, backoff, exc)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    # the sync loop --------------------------------------------------------------------------
    def sync_once(self) -> bool:
        with self.lock:
            services = list(self.resources[0].objects.values())
            slices = list(self.resources[1].objects.values())
        ports, skipped = service_ports(services, slices)
        script = render_ports(ports, self.config)
        wanted = fingerprint_of(script)
        if wanted == self.last_fingerprint:
            return False
        for line in skipped:
            LOG.warning("skipped %s", line)
        delta = None
        if self.last_ports is not None:
            delta = render_delta(self.last_ports, ports, wanted, self.config)
        try:
            if delta is None:
                raise ProxyError("no delta")
            apply(delta, self.nft, self.run)
            how = "changes"
        except ProxyError as exc:
            if self.stop.is_set():
                raise  # stopping (nft may have got our SIGTERM too): no rebuild now
            # The first sync, or the table is not what we left (someone changed it): rebuild.
            if delta is not None:
                LOG.warning("applying the changes failed, rebuilding the table: %s", exc)
            self.last_ports = None
            if live_fingerprint(self.config.table, self.nft, self.run) != wanted:
                apply(script, self.nft, self.run)
            how = "full"
        self.last_ports = ports
        flows = udp_flows(ports)
        if self.udp_flows is not None and self.udp_flows - flows:
            forget_udp_flows(self.udp_flows - flows, self.run)
        self.udp_flows = flows
        self.last_fingerprint = wanted
        self.syncs += 1
        LOG.info("synced %d services, %d endpoint slices (%s, %s)", len(services), len(slices), how, wanted)
        return True

    def run_forever(self) -> None:
        threads = [
            threading.Thread(target=self._follow, args=(r,), name=f"watch-{r.kind}", daemon=True)
            for r in self.resources
        ]
        for th in threads:
            th.start()
        backoff = 0.2
        while not self.stop.is_set():
            if not self.dirty.wait(1.0):
                continue
            if not all(r.listed for r in self.resources):
                self.stop.wait(0.01)  # the first sync waits for both lists: a full rebuild
                continue
            self.stop.wait(self.debounce)
            self.dirty.clear()
            try:
                self.sync_once()
                backoff = 0.2
            except ProxyError as exc:
                # The previous ruleset stays live; try again later.
                LOG.error("sync failed, keeping the previous rules: %s", exc)
                self.dirty.set()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        LOG.info("stopping; the rules stay in place")

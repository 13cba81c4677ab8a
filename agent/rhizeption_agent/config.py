"""The agent's configuration file: YAML, validated at start so that a malformed file
stops the agent with one message naming the field and what it wants."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NODE_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


class ConfigError(ValueError):
    """A configuration problem; the message names the field and the fix."""


@dataclass
class ServerConfig:
    """The :10250 API (logs, exec, stats)."""

    enabled: bool = True
    address: str = "0.0.0.0"
    port: int = 10250
    cert_file: str = ""  # serving certificate; empty: a self-signed one in state_dir
    key_file: str = ""
    client_ca_file: str = ""  # client certificates from this CA are authenticated
    # Ask for a kubernetes.io/kubelet-serving certificate (someone must approve the CSR);
    # until it is signed the agent serves with a self-signed one.
    request_serving_certificate: bool = False


BACKENDS = ("podman", "hostcluster")
# The Pod Security levels (backends/hostcluster/podsecurity.py checks Pods against them). Here,
# in the core, because a pet node installs the core and the Podman backend only.
POD_SECURITY_LEVELS = ("privileged", "baseline", "restricted")
DEFAULT_POD_SECURITY = "baseline"


@dataclass
class HostClusterConfig:
    """The host-cluster backend (virtual nodes, docs/virtual-nodes.md): the node's Pods run as
    Pods of a host cluster, in one namespace of it, with the agent's Role there."""

    # The agent's credentials in the host cluster. Empty: the Pod's ServiceAccount (the agent
    # runs as a Pod of the host cluster; kubeapi.connect_in_cluster).
    kubeconfig: str = ""
    tenant: str = ""  # the TenantControlPlane's name (labels every host object)
    namespace: str = ""  # the host namespace of the tenant's Pods
    resources: dict[str, str] = field(default_factory=dict)  # the resources node's cpu and memory
    nodes: list[str] = field(default_factory=list)  # host nodes promoted whole: a mirror Node each
    pod_security: str = DEFAULT_POD_SECURITY  # what that namespace enforces
    cluster_domain: str = "cluster.local"  # the tenant's
    dns_ip: str = ""  # the nameserver of tenant names, when one runs
    dns_hosts_file: str = ""  # the tenant's Service names for that nameserver, which the agent writes
    api_server_ip: str = ""  # the tenant API server's address as its Pods reach it
    api_server_port: int = 443
    resources_priority_class: str = ""  # marks the resources node's host Pods for the quota


@dataclass
class AgentConfig:
    node_name: str
    kubeconfig: str  # the node's own credentials; written by the TLS bootstrap when missing
    bootstrap_kubeconfig: str = ""  # a bootstrap token's kubeconfig: TLS bootstrap when set
    podman_url: str = "unix:///run/podman/podman.sock"
    state_dir: str = "/var/lib/rhizeption-agent"
    internal_ip: str = ""  # the Node's InternalIP (the WireGuard address on a pet node)
    hostname_address: bool = True  # report a Hostname address (off when it does not resolve)
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    max_pods: int = 110
    reserved: dict[str, str] = field(default_factory=dict)  # subtracted from capacity
    lease_duration_seconds: int = 40
    lease_renew_seconds: float = 10.0
    status_report_seconds: float = 300.0  # NodeStatus at least this often, and on change
    status_check_seconds: float = 10.0  # how often conditions are measured
    pod_resync_seconds: float = 1.0  # each Pod's worker looks at its containers this often
    volume_resync_seconds: float = 5.0  # ConfigMap/Secret volumes are refreshed this often
    infra_image: str = "localhost/rhizeption/pause:3.10.1"
    extra_labels: dict[str, str] = field(default_factory=dict)  # put on every Podman object
    backend: str = "podman"  # who runs the Pods: Podman here, or a host cluster (host_cluster)
    server: ServerConfig = field(default_factory=ServerConfig)
    host_cluster: HostClusterConfig = field(default_factory=HostClusterConfig)


_FIELDS = set(AgentConfig.__dataclass_fields__)
_SERVER_FIELDS = set(ServerConfig.__dataclass_fields__)
_HOST_CLUSTER_FIELDS = set(HostClusterConfig.__dataclass_fields__)


def _fail(name: str, problem: str) -> None:
    raise ConfigError(f"config field {name!r}: {problem}")


def _check_type(name: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _fail(name, f"must be {what}, got {type(value).__name__} {value!r}")


def parse(data: Any, source: str = "config") -> AgentConfig:
    """An AgentConfig from the decoded YAML document DATA; ConfigError names the bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        _fail(unknown[0], f"unknown setting; known settings are {', '.join(sorted(_FIELDS))}")
    for required in ("node_name", "kubeconfig"):
        if not data.get(required):
            _fail(required, "is required")
    values = dict(data)
    sections = {}
    for section, known in (("server", _SERVER_FIELDS), ("host_cluster", _HOST_CLUSTER_FIELDS)):
        sections[section] = values.pop(section, None) or {}
        _check_type(section, sections[section], dict, "a mapping")
        bad = sorted(set(sections[section]) - known)
        if bad:
            _fail(f"{section}.{bad[0]}", f"unknown setting; known are {', '.join(sorted(known))}")
    server, host_cluster = sections["server"], sections["host_cluster"]
    defaults = AgentConfig(node_name="x", kubeconfig="x")
    for name, value in values.items():
        default = getattr(defaults, name)
        kind: type | tuple[type, ...] = (int, float) if isinstance(default, float) else type(default)
        _check_type(name, value, kind, f"a {kind.__name__ if isinstance(kind, type) else 'number'}")
    for section, cls, given in (
        ("server", ServerConfig, server),
        ("host_cluster", HostClusterConfig, host_cluster),
    ):
        for name, value in given.items():
            _check_type(f"{section}.{name}", value, type(getattr(cls(), name)), "of the default's type")
    cfg = AgentConfig(**values, server=ServerConfig(**server), host_cluster=HostClusterConfig(**host_cluster))
    if not NODE_NAME_RE.match(cfg.node_name):
        _fail("node_name", "must be a DNS subdomain: lower-case letters, digits, '-' and '.'")
    if cfg.internal_ip:
        try:
            ipaddress.ip_address(cfg.internal_ip)
        except ValueError:
            _fail("internal_ip", f"{cfg.internal_ip!r} is not an IP address")
    for i, taint in enumerate(cfg.taints):
        if not isinstance(taint, dict) or not taint.get("key") or taint.get("effect") not in TAINT_EFFECTS:
            _fail(f"taints[{i}]", f"needs a key and an effect among {', '.join(TAINT_EFFECTS)}")
    for key, value in {**cfg.labels, **cfg.extra_labels}.items():
        if not isinstance(value, str):
            _fail(f"labels.{key}", "label values must be strings (quote numbers and booleans)")
    for res, qty in cfg.reserved.items():
        if res not in ("cpu", "memory", "ephemeral-storage", "pods") or not QUANTITY_RE.match(str(qty)):
            _fail(f"reserved.{res}", "wants cpu, memory, ephemeral-storage or pods with a quantity")
    if not 1 <= cfg.server.port <= 65535:
        _fail("server.port", "must be a TCP port, 1 to 65535")
    if cfg.lease_renew_seconds >= cfg.lease_duration_seconds:
        _fail("lease_renew_seconds", "must be shorter than lease_duration_seconds")
    if cfg.max_pods < 1:
        _fail("max_pods", "must be at least 1")
    if cfg.backend not in BACKENDS:
        _fail("backend", f"must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    if cfg.backend == "hostcluster":
        _check_host_cluster(cfg.host_cluster, cfg.node_name)
    return cfg


def _check_host_cluster(hc: HostClusterConfig, node_name: str) -> None:
    for required in ("tenant", "namespace"):  # not kubeconfig: empty is the ServiceAccount
        if not getattr(hc, required):
            _fail(f"host_cluster.{required}", "is required with backend hostcluster")
    if not hc.resources and not hc.nodes:
        _fail(
            "host_cluster",
            "promotes nothing: set resources (cpu and memory), nodes (host node names), or both",
        )
    if hc.resources and (
        sorted(hc.resources) != ["cpu", "memory"]
        or not all(QUANTITY_RE.match(str(q)) for q in hc.resources.values())
    ):
        _fail(
            "host_cluster.resources", "wants cpu and memory, each a quantity (the cpu and memory handed over)"
        )
    _check_type("host_cluster.nodes", hc.nodes, list, "a list of host node names")
    for name in hc.nodes:
        if not isinstance(name, str) or not NODE_NAME_RE.match(name):
            _fail("host_cluster.nodes", f"{name!r} is not a Node name (a DNS subdomain)")
    if hc.resources and node_name in hc.nodes:
        _fail(
            "host_cluster.nodes",
            f"names {node_name!r}, which node_name gives the resources node: rename the resources node",
        )
    if hc.pod_security not in POD_SECURITY_LEVELS:
        _fail("host_cluster.pod_security", f"must be one of {', '.join(POD_SECURITY_LEVELS)}")
    for name in ("dns_ip", "api_server_ip"):
        if getattr(hc, name):
            try:
                ipaddress.ip_address(getattr(hc, name))
            except ValueError:
                _fail(f"host_cluster.{name}", f"{getattr(hc, name)!r} is not an IP address")


def load(path: str | Path) -> AgentConfig:
    """Read and validate the YAML file at PATH."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    return parse(data, str(path))

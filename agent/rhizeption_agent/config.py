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
    server: ServerConfig = field(default_factory=ServerConfig)


_FIELDS = set(AgentConfig.__dataclass_fields__)
_SERVER_FIELDS = set(ServerConfig.__dataclass_fields__)


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
    server = values.pop("server", None) or {}
    _check_type("server", server, dict, "a mapping")
    bad = sorted(set(server) - _SERVER_FIELDS)
    if bad:
        _fail(f"server.{bad[0]}", f"unknown setting; known are {', '.join(sorted(_SERVER_FIELDS))}")
    defaults = AgentConfig(node_name="x", kubeconfig="x")
    for name, value in values.items():
        default = getattr(defaults, name)
        kind: type | tuple[type, ...] = (int, float) if isinstance(default, float) else type(default)
        _check_type(name, value, kind, f"a {kind.__name__ if isinstance(kind, type) else 'number'}")
    cfg = AgentConfig(**values, server=ServerConfig(**server))
    for name, value in server.items():
        _check_type(f"server.{name}", value, type(getattr(ServerConfig(), name)), "of the default's type")
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
    return cfg


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

"""The Node object: what the agent measures on the host and reports, and its Lease.

Capacity and conditions are measured, not configured: cpu from the scheduler's view of
this process, memory from /proc/meminfo, ephemeral storage from the state folder's file
system, PIDs from /proc. Reservations in the config are subtracted for allocatable.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import __version__, podspec
from .config import AgentConfig
from .provider import NodeFacts

Obj = dict[str, Any]
KUBELET_VERSION = f"v1.34.0-rhizeption.{__version__}"  # a version kubectl and the API server parse
MEMORY_PRESSURE_BYTES = 100 * 1024**2  # the kubelet's default hard eviction threshold
DISK_PRESSURE_FRACTION = 0.10
PID_PRESSURE_FRACTION = 0.90


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """Fields of /proc/meminfo in bytes."""
    out = {}
    for line in Path(path).read_text().splitlines():
        key, _sep, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


@dataclass
class Measured:
    cpu: int
    memory: int
    memory_available: int
    storage: int
    storage_free: int
    pids: int
    pid_max: int


def measure(state_dir: str) -> Measured:
    mem = meminfo()
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    st = os.statvfs(state_dir)
    pids = sum(1 for p in os.listdir("/proc") if p.isdigit())
    return Measured(
        cpu=len(os.sched_getaffinity(0)),
        memory=mem.get("MemTotal", 0),
        memory_available=mem.get("MemAvailable", 0),
        storage=st.f_blocks * st.f_frsize,
        storage_free=st.f_bavail * st.f_frsize,
        pids=pids,
        pid_max=int(_read("/proc/sys/kernel/pid_max", "32768")),
    )


def capacity(m: Measured, max_pods: int) -> dict[str, str]:
    return {
        "cpu": str(m.cpu),
        "memory": f"{m.memory // 1024}Ki",
        "ephemeral-storage": f"{m.storage // 1024}Ki",
        "pods": str(max_pods),
    }


def allocatable(cap: dict[str, str], reserved: dict[str, str]) -> dict[str, str]:
    out = dict(cap)
    for res, qty in reserved.items():
        left = max(podspec.quantity(cap[res]) - podspec.quantity(qty), 0)
        if res == "cpu":
            out[res] = f"{int(left * 1000)}m"
        elif res == "pods":
            out[res] = str(int(left))
        else:
            out[res] = f"{int(left) // 1024}Ki"
    return out


def conditions(m: Measured, runtime_ok: bool, runtime_message: str) -> list[tuple[str, bool, str, str]]:
    """(type, status, reason, message) of each Node condition, measured now."""
    mem = m.memory_available < MEMORY_PRESSURE_BYTES
    disk = m.storage and m.storage_free / m.storage < DISK_PRESSURE_FRACTION
    pid = m.pids > m.pid_max * PID_PRESSURE_FRACTION
    return [
        (
            "MemoryPressure",
            mem,
            "KubeletHasInsufficientMemory" if mem else "KubeletHasSufficientMemory",
            f"{m.memory_available // 1024**2} MiB available",
        ),
        (
            "DiskPressure",
            bool(disk),
            "KubeletHasDiskPressure" if disk else "KubeletHasNoDiskPressure",
            f"{m.storage_free // 1024**2} MiB free of {m.storage // 1024**2} MiB",
        ),
        (
            "PIDPressure",
            pid,
            "KubeletHasInsufficientPID" if pid else "KubeletHasSufficientPID",
            f"{m.pids} of {m.pid_max} process ids in use",
        ),
        (
            "Ready",
            runtime_ok,
            "KubeletReady" if runtime_ok else "KubeletNotReady",
            "rhizeption agent is posting ready status"
            if runtime_ok
            else f"container runtime is down: {runtime_message}",
        ),
    ]


def addresses(cfg: AgentConfig) -> list[Obj]:
    ip = cfg.internal_ip or default_ip()
    out = [{"type": "InternalIP", "address": ip}]
    if cfg.hostname_address:
        out.append({"type": "Hostname", "address": socket.gethostname()})
    return out


def default_ip() -> str:
    """The address this host uses for its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def node_object(cfg: AgentConfig) -> Obj:
    """The Node as the agent registers it (status follows with status())."""
    labels = {
        "kubernetes.io/hostname": cfg.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(
            platform.machine(), platform.machine()
        ),
        "node.rhizeption.io/agent": "true",
        **cfg.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": labels},
        "spec": {"taints": [dict(t) for t in cfg.taints]} if cfg.taints else {},
    }


class NodeSource(Protocol):
    """The Nodes the agent registers, with the status it posts for each: the machine the agent
    runs on (MachineNode, pet nodes: one Node), or what a backend describes (the virtual Nodes
    of a host cluster: a mirror per promoted host node and the resources node)."""

    def nodes(self, facts: NodeFacts, previous: Mapping[str, Obj]) -> list[Obj]:
        """Each Node as it should be now: metadata (name, labels), spec and status. FACTS: the
        provider's; PREVIOUS: the status last posted, by Node name (transition times)."""


class MachineNode:
    """The Node of the machine the agent runs on, measured."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg

    def nodes(self, facts: NodeFacts, previous: Mapping[str, Obj]) -> list[Obj]:
        st = status(
            self.cfg, facts.runtime_version, facts.healthy, facts.message, previous.get(self.cfg.node_name)
        )
        return [{**node_object(self.cfg), "status": st}]


def status(
    cfg: AgentConfig, runtime_version: str, runtime_ok: bool, runtime_message: str, previous: Obj | None
) -> Obj:
    """NodeStatus as measured now; transition times kept from PREVIOUS where nothing changed."""
    m = measure(cfg.state_dir)
    cap = capacity(m, cfg.max_pods)
    old = {c["type"]: c for c in (previous or {}).get("conditions") or []}
    now = now_rfc3339()
    conds = []
    for ctype, value, reason, message in conditions(m, runtime_ok, runtime_message):
        text = "True" if value else "False"
        before = old.get(ctype)
        conds.append(
            {
                "type": ctype,
                "status": text,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": before["lastTransitionTime"]
                if before and before.get("status") == text
                else now,
            }
        )
    return {
        "capacity": cap,
        "allocatable": allocatable(cap, cfg.reserved),
        "conditions": conds,
        "addresses": addresses(cfg),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.server.port}},
        "nodeInfo": {
            "machineID": _read("/etc/machine-id"),
            "systemUUID": _read("/sys/class/dmi/id/product_uuid") or _read("/etc/machine-id"),
            "bootID": _read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": platform.release(),
            "osImage": os_image(),
            "containerRuntimeVersion": runtime_version,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": node_object(cfg)["metadata"]["labels"]["kubernetes.io/arch"],
        },
    }


def significant(st: Obj) -> Obj:
    """STATUS without what changes at every measurement (heartbeats, free bytes): what
    decides whether a NodeStatus must be posted before the periodic one."""
    return {
        **st,
        "conditions": [
            {k: v for k, v in c.items() if k not in ("lastHeartbeatTime", "message")}
            for c in st.get("conditions", [])
        ],
    }

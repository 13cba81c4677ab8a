"""The tenant's virtual Nodes, from the TenantControlPlane's ``promoteResources``.

- each host node in ``nodes`` gets a **mirror**: a tenant Node of the same name whose
  capacity is the host node's allocatable, with its topology labels, its own taints (not
  the node-lifecycle ones, which the tenant's controller-manager sets from the conditions),
  its cordon, and its Ready/pressure conditions; its Pods run pinned to that host node;
- ``resources`` gets **one** Node (``RESOURCES_NODE``) whose capacity is the promoted cpu
  and memory; its Pods run wherever the host scheduler puts them, within the ResourceQuota
  of the host namespace, so the tenant's scheduler never places more than the host admits.

Every virtual Node's address is the agent's: the tenant API server reaches ``:10250``
there for logs, exec and port-forward, and the tenant Pods report it as ``status.hostIP``.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from typing import Any

from ...kubeapi import Kube, KubeError
from ...node import now_rfc3339
from ...provider import NodeFacts
from .pods import Placement

Obj = dict[str, Any]

RESOURCES_NODE = "host-resources"
VIRTUAL_LABEL = "node.rhizeption.io/virtual"  # "true": the agent's; it never takes over other Nodes
HOST_NODE_LABEL = "node.rhizeption.io/host-node"  # a mirror's host node
KIND_LABEL = "node.rhizeption.io/virtual-kind"  # mirror or resources
# Host node labels that describe the machine and keep their meaning in the tenant.
MIRRORED_LABELS = (
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "node.kubernetes.io/instance-type",
)
# Taints the node lifecycle controller manages: the tenant's sets them from this Node's conditions.
LIFECYCLE_TAINT_PREFIX = "node.kubernetes.io/"
MIRRORED_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
DEFAULT_MAX_PODS = 110
UNREACHABLE = "the agent cannot reach the host cluster's API server"
# The kubelet's names for the Node conditions it reports when all is well.
HEALTHY = {
    "MemoryPressure": ("False", "KubeletHasSufficientMemory"),
    "DiskPressure": ("False", "KubeletHasNoDiskPressure"),
    "PIDPressure": ("False", "KubeletHasSufficientPID"),
}


def node_names(promote: Obj) -> list[str]:
    """The tenant Node names that PROMOTE (a TenantControlPlane's promoteResources) makes."""
    out = list(dict.fromkeys(promote.get("nodes") or []))
    if promote.get("resources"):
        out.append(RESOURCES_NODE)
    return out


def _labels(name: str, kind: str, extra: Mapping[str, str]) -> dict[str, str]:
    return {
        **extra,
        "kubernetes.io/hostname": name,
        "type": "virtual-kubelet",  # the virtual-kubelet convention tools look for
        VIRTUAL_LABEL: "true",
        KIND_LABEL: kind,
    }


def _condition(ctype: str, status: str, reason: str, message: str, *, now: str, previous: Obj | None) -> Obj:
    before = {c["type"]: c for c in (previous or {}).get("conditions") or []}.get(ctype)
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": before["lastTransitionTime"]
        if before and before.get("status") == status
        else now,
    }


def _status(
    capacity: Mapping[str, str],
    conditions: list[Obj],
    *,
    address: str,
    port: int,
    node_info: Obj,
) -> Obj:
    return {
        "capacity": dict(capacity),
        "allocatable": dict(capacity),  # the agent reserves nothing: the host kubelet did
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": address}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": node_info,
    }


def mirror_node(
    name: str,
    host_node: Obj | None,
    *,
    address: str,
    port: int,
    kubelet_version: str,
    now: str,
    previous: Obj | None = None,
    healthy: bool = True,
    unreachable: str = UNREACHABLE,
) -> Obj:
    """The tenant Node mirroring host node NAME (HOST_NODE: that Node as the host shows it,
    None when the host has no such Node: then it is NotReady, naming the cause, with no
    capacity, so the tenant's scheduler places nothing on it). HEALTHY: the agent could read
    the host node; when it could not (UNREACHABLE says why), what it last saw is stale and
    Ready is Unknown."""
    if host_node is None:
        conditions = [
            _condition(
                "Ready",
                "False",
                "HostNodeNotFound",
                f"the host cluster has no Node {name!r}: check promoteResources.nodes",
                now=now,
                previous=previous,
            )
            if healthy
            else _condition(
                "Ready", "Unknown", "HostClusterUnreachable", unreachable, now=now, previous=previous
            )
        ]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": _labels(name, "mirror", {HOST_NODE_LABEL: name})},
            "spec": {},
            "status": _status(
                {"cpu": "0", "memory": "0", "pods": "0"},
                conditions,
                address=address,
                port=port,
                node_info={"kubeletVersion": kubelet_version, "operatingSystem": "linux"},
            ),
        }
    host_labels = host_node["metadata"].get("labels") or {}
    host_spec = host_node.get("spec") or {}
    host_status = host_node.get("status") or {}
    labels = {k: host_labels[k] for k in MIRRORED_LABELS if k in host_labels}
    labels[HOST_NODE_LABEL] = name
    taints = [
        copy.deepcopy(t)
        for t in host_spec.get("taints") or []
        if not t.get("key", "").startswith(LIFECYCLE_TAINT_PREFIX)
    ]
    spec: Obj = {"taints": taints}  # always set: a taint removed on the host goes in the tenant
    spec["unschedulable"] = bool(host_spec.get("unschedulable"))  # False too: an uncordon goes across
    host_conditions = {c["type"]: c for c in host_status.get("conditions") or []}
    if not healthy:
        host_conditions["Ready"] = {
            "status": "Unknown",
            "reason": "HostClusterUnreachable",
            "message": unreachable,
        }
    conditions = []
    for ctype in MIRRORED_CONDITIONS:
        cond = host_conditions.get(ctype)
        if cond is None:
            if ctype == "Ready":
                conditions.append(
                    _condition(
                        "Ready",
                        "Unknown",
                        "HostNodeStatusUnknown",
                        "the host node reports no Ready",
                        now=now,
                        previous=previous,
                    )
                )
            continue
        message = cond.get("message") or ""
        conditions.append(
            _condition(
                ctype,
                cond.get("status", "Unknown"),
                cond.get("reason") or "",
                f"host node {name}: {message}" if message else f"host node {name}",
                now=now,
                previous=previous,
            )
        )
    info = host_status.get("nodeInfo") or {}
    node_info = {
        k: info[k]
        for k in ("kernelVersion", "osImage", "containerRuntimeVersion", "operatingSystem", "architecture")
        if k in info
    }
    node_info["kubeletVersion"] = kubelet_version
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": _labels(name, "mirror", labels)},
        "spec": spec,
        "status": _status(
            host_status.get("allocatable") or {},
            conditions,
            address=address,
            port=port,
            node_info=node_info,
        ),
    }


def resources_node(
    resources: Mapping[str, str],
    *,
    address: str,
    port: int,
    kubelet_version: str,
    healthy: bool,
    message: str,
    now: str,
    arch: str = "amd64",
    max_pods: int = DEFAULT_MAX_PODS,
    previous: Obj | None = None,
    name: str = RESOURCES_NODE,
) -> Obj:
    """The tenant Node holding the promoted cpu and memory (RESOURCES, as in
    promoteResources.resources). HEALTHY: the agent reaches the host API server."""
    capacity = {k: str(v) for k, v in sorted(resources.items()) if k in ("cpu", "memory")}
    capacity["pods"] = str(max_pods)
    conditions = [
        _condition(ctype, status, reason, "", now=now, previous=previous)
        for ctype, (status, reason) in HEALTHY.items()
    ]
    conditions.append(
        _condition(
            "Ready",
            "True" if healthy else "False",
            "KubeletReady" if healthy else "HostClusterUnreachable",
            message
            or ("the host cluster runs this node's Pods" if healthy else "the host cluster does not answer"),
            now=now,
            previous=previous,
        )
    )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": _labels(name, "resources", {"kubernetes.io/os": "linux", "kubernetes.io/arch": arch}),
        },
        "spec": {},
        "status": _status(
            capacity,
            conditions,
            address=address,
            port=port,
            node_info={
                "kubeletVersion": kubelet_version,
                "operatingSystem": "linux",
                "architecture": arch,
                "containerRuntimeVersion": "rhizeption-host-cluster://",
            },
        ),
    }


def virtual_nodes(
    promote: Obj,
    host_nodes: Mapping[str, Obj | None],
    *,
    address: str,
    port: int,
    kubelet_version: str,
    healthy: bool,
    now: str,
    previous: Mapping[str, Obj] | None = None,
    message: str = "",
    arch: str = "amd64",
    max_pods: int = DEFAULT_MAX_PODS,
    resources_name: str = RESOURCES_NODE,
    unread: Mapping[str, str] | None = None,
) -> list[Obj]:
    """Every tenant Node of PROMOTE; HOST_NODES: the promoted host Nodes as the host shows them
    (a missing one, or None, yields a NotReady mirror naming it); HEALTHY: the host cluster
    answers (MESSAGE: why not); UNREAD: host nodes that could not be read this time, with why
    (their mirrors' Ready is Unknown); PREVIOUS: the status last posted, by Node name."""
    unread = unread or {}
    previous = previous or {}
    if promote.get("resources") and resources_name in (promote.get("nodes") or []):
        raise ValueError(
            f"promoteResources.nodes names {resources_name!r}, the name of the resources node;"
            " promote that host node under another tenant or rename the resources node"
        )
    out = [
        mirror_node(
            name,
            host_nodes.get(name),
            address=address,
            port=port,
            kubelet_version=kubelet_version,
            now=now,
            previous=previous.get(name),
            healthy=healthy and name not in unread,
            unreachable=unread.get(name) or message or UNREACHABLE,
        )
        for name in dict.fromkeys(promote.get("nodes") or [])
    ]
    if promote.get("resources"):
        out.append(
            resources_node(
                promote["resources"],
                address=address,
                port=port,
                kubelet_version=kubelet_version,
                healthy=healthy,
                message=message,
                now=now,
                arch=arch,
                max_pods=max_pods,
                previous=previous.get(resources_name),
                name=resources_name,
            )
        )
    return out


class VirtualNodeSource:
    """The core's NodeSource (node.py) for a virtual node's agent: a mirror of each host node
    in PROMOTE's ``nodes``, read from the host at every status check, and the resources node
    RESOURCES_NAME when PROMOTE has ``resources``. ADDRESS and PORT: where the tenant API
    server reaches the agent's :10250. It also says where each Node's Pods run (placement)."""

    def __init__(
        self,
        host: Kube,
        promote: Obj,
        *,
        address: str,
        port: int,
        kubelet_version: str,
        resources_name: str = RESOURCES_NODE,
        max_pods: int = DEFAULT_MAX_PODS,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.promote = copy.deepcopy(promote)
        self.address = address
        self.port = port
        self.kubelet_version = kubelet_version
        self.resources_name = resources_name
        self.max_pods = max_pods
        self.labels = dict(labels or {})
        self.host_nodes: dict[str, Obj | None] = {}  # the promoted host Nodes as last read
        self.lock = threading.Lock()
        # Refuse a promoted host node named like the resources node now, not at the first status.
        self._make({}, healthy=True, message="", previous={})

    def _read_host_nodes(self) -> dict[str, str]:
        """Read each promoted host Node (the ClusterRole lets the agent get these by name);
        answer the ones that could not be read, with why: their last read stands in."""
        unread = {}
        for name in dict.fromkeys(self.promote.get("nodes") or []):
            try:
                got = self.host.get(f"/api/v1/nodes/{name}")
            except KubeError as e:
                unread[name] = f"the agent cannot read host node {name}: {e}"
                continue
            with self.lock:
                self.host_nodes[name] = got
        return unread

    def _make(
        self,
        host_nodes: Mapping[str, Obj | None],
        *,
        healthy: bool,
        message: str,
        previous: Mapping[str, Obj],
        unread: Mapping[str, str] | None = None,
    ) -> list[Obj]:
        made = virtual_nodes(
            self.promote,
            host_nodes,
            address=self.address,
            port=self.port,
            kubelet_version=self.kubelet_version,
            healthy=healthy,
            now=now_rfc3339(),
            previous=previous,
            message=message,
            max_pods=self.max_pods,
            resources_name=self.resources_name,
            unread=unread,
        )
        for node in made:
            node["metadata"]["labels"] = {**self.labels, **node["metadata"]["labels"]}
        return made

    def nodes(self, facts: NodeFacts, previous: Mapping[str, Obj]) -> list[Obj]:
        """FACTS: the provider's (healthy while the host cluster answers)."""
        unread = self._read_host_nodes() if facts.healthy else {}
        with self.lock:
            host_nodes = dict(self.host_nodes)
        return self._make(
            host_nodes, healthy=facts.healthy, message=facts.message, previous=previous, unread=unread
        )

    def placement(self, node_name: str) -> Placement | None:
        """Where the Pods of tenant Node NODE_NAME run; None for a Node this agent does not serve.
        A mirror's Pods are pinned to its host node, and tolerate what the tenant Pod tolerates
        of that node's taints; should the host not have the node, the host Pod stays Pending
        with the host scheduler's reason."""
        if node_name == self.resources_name and self.promote.get("resources"):
            return Placement(node_name=node_name, node_address=self.address)
        if node_name not in (self.promote.get("nodes") or []):
            return None
        with self.lock:
            host_node = self.host_nodes.get(node_name) or {}
        taints = tuple((host_node.get("spec") or {}).get("taints") or ())
        return Placement(
            node_name=node_name, node_address=self.address, host_node=node_name, host_node_taints=taints
        )

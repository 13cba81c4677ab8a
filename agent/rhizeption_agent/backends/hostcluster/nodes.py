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
from collections.abc import Mapping
from typing import Any

from ...node import now_rfc3339
from ...provider import NodeFacts

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
) -> Obj:
    """The tenant Node mirroring host node NAME (HOST_NODE: that Node as the host shows it,
    None when the host has no such Node: then it is NotReady, naming the cause, with no
    capacity, so the tenant's scheduler places nothing on it). HEALTHY: the agent reaches
    the host API server; when it does not, what it last saw is stale and Ready is Unknown."""
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
    if host_spec.get("unschedulable"):
        spec["unschedulable"] = True
    host_conditions = {c["type"]: c for c in host_status.get("conditions") or []}
    if not healthy:
        host_conditions["Ready"] = {
            "status": "Unknown",
            "reason": "HostClusterUnreachable",
            "message": "the agent cannot reach the host cluster's API server",
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
    host_nodes: Mapping[str, Obj],
    *,
    address: str,
    port: int,
    kubelet_version: str,
    healthy: bool,
    now: str,
    previous: Mapping[str, Obj] | None = None,
    message: str = "",
    arch: str = "amd64",
) -> list[Obj]:
    """Every tenant Node of PROMOTE; HOST_NODES: the promoted host Nodes the host has
    (a missing one yields a NotReady mirror naming it); PREVIOUS: last posted, by name."""
    previous = previous or {}
    if promote.get("resources") and RESOURCES_NODE in (promote.get("nodes") or []):
        raise ValueError(
            f"promoteResources.nodes names {RESOURCES_NODE!r}, the name of the resources node;"
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
            previous=(previous.get(name) or {}).get("status"),
            healthy=healthy,
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
                previous=(previous.get(RESOURCES_NODE) or {}).get("status"),
            )
        )
    return out


class ResourcesNodeSource:
    """The core's NodeSource (node.py) for an agent that serves the resources node alone: its
    name, the promoted RESOURCES, and ADDRESS, where the tenant API server reaches :10250.
    (An agent of several Nodes, mirrors included, needs the core to serve more than one.)"""

    def __init__(
        self,
        name: str,
        resources: Mapping[str, str],
        *,
        address: str,
        port: int,
        kubelet_version: str,
        max_pods: int = DEFAULT_MAX_PODS,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.resources = dict(resources)
        self.address = address
        self.port = port
        self.kubelet_version = kubelet_version
        self.max_pods = max_pods
        self.labels = dict(labels or {})

    def _node(self, healthy: bool, message: str, previous: Obj | None) -> Obj:
        node = resources_node(
            self.resources,
            address=self.address,
            port=self.port,
            kubelet_version=self.kubelet_version,
            healthy=healthy,
            message=message,
            now=now_rfc3339(),
            max_pods=self.max_pods,
            previous=previous,
            name=self.name,
        )
        node["metadata"]["labels"] = {**self.labels, **node["metadata"]["labels"]}
        return node

    def node_object(self) -> Obj:
        node = self._node(True, "", None)
        del node["status"]
        return node

    def status(self, facts: NodeFacts, previous: Obj | None) -> Obj:
        """FACTS: the provider's (healthy while the host cluster answers)."""
        return self._node(facts.healthy, facts.message, previous)["status"]

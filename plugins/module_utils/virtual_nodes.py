# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Host-backed virtual nodes, the host cluster's side: what the deployer (the tenant control
plane role, when ``promoteResources`` is set) makes in the host for a tenant's virtual-node
agent. The agent itself (agent/rhizeption_agent/backends/hostcluster) translates the Pods;
this module holds what both sides must agree on and the deployer applies:

- the host namespace of the tenant's Pods, one per tenant: its Pod Security level is the
  host admin's choice (default ``baseline``) whatever the control plane's namespace runs
  (hosted-node Pods are privileged), and the agent's rights on Secrets there never reach
  the control plane's PKI;
- the agent's rights in that namespace: k3v's list (pods, services, endpoints, configmaps,
  secrets, persistentvolumeclaims) and what logs, exec, port-forward and status need, as one
  ClusterRole installed once and bound per tenant in its Pods namespace only;
- for the resources node, a quota of the promoted cpu and memory on the requests of its Pods
  (marked by a PriorityClass), so the host never runs more than the tenant was handed;
- for mirror nodes only, a ClusterRole that reads the promoted host Nodes, by name;
- in the tenant, the ClusterRole of an agent serving several Nodes (mirrors beside the
  resources node), which a kubelet's identity (system:node:NAME, one Node) cannot be.

Pure functions; docs/virtual-nodes.md says how the pieces fit.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Mapping, Sequence

from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import MANAGED_BY

Obj = Dict[str, Any]

POD_SECURITY_LEVELS = ("privileged", "baseline", "restricted")
DEFAULT_POD_SECURITY = "baseline"
AGENT_NAME = "rhizeption-virtual-node-agent"
TENANT_AGENT_IDENTITY = "rhizeption:virtual-node-agent"  # its user in the tenant (several Nodes)
# The host PriorityClass of the resources node's Pods: the Pods namespace's quota counts these
# only (a scope), not the Pods of mirror nodes, which their host nodes bound instead.
RESOURCES_PRIORITY_CLASS = "rhizeption-virtual-resources"
MAX_NAMESPACE = 63
# The label naming the tenant on every host object the agent makes (names.TENANT_LABEL in
# agent/rhizeption_agent/backends/hostcluster; a unit test keeps the two the same).
TENANT_POD_LABEL = "virtual.rhizeption.io/tenant"
_CRUD = ["get", "list", "watch", "create", "update", "patch", "delete"]

# Each rule says why it is there; nothing else is granted.
AGENT_ROLE_RULES: List[Obj] = [
    # The tenant's Pods as host Pods: create, follow (status comes with get/watch), delete.
    {"apiGroups": [""], "resources": ["pods"], "verbs": list(_CRUD)},
    # kubectl logs, exec and port-forward through the tenant API server reach the agent's
    # :10250, which forwards to the host. A WebSocket upgrade asks get, SPDY asks create.
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods/exec", "pods/portforward"], "verbs": ["get", "create"]},
    # Copies of the ConfigMaps and Secrets the Pods reference (and the Pods' token Secrets),
    # the Services synced for the tenant's Services, the Endpoints of selector-less ones, and
    # claims (k3v's list; the claim sync is not built yet).
    {
        "apiGroups": [""],
        "resources": ["configmaps", "secrets", "services", "endpoints", "persistentvolumeclaims"],
        "verbs": list(_CRUD),
    },
    # Why a host Pod does not start (FailedScheduling, FailedMount, image pulls), copied to
    # the tenant Pod's events; read only.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
]


def check_pod_security(level: str) -> str:
    if level not in POD_SECURITY_LEVELS:
        raise ValueError(f"pod security level {level!r} is not one of {', '.join(POD_SECURITY_LEVELS)}")
    return level


def pods_namespace(tenant_namespace: str, tenant: str) -> str:
    """The host namespace of tenant TENANT's Pods (TENANT_NAMESPACE: where its control plane
    runs): TENANT_NAMESPACE-TENANT-pods, shortened with a hash past 63 characters."""
    name = f"{tenant_namespace}-{tenant}-pods"
    if len(name) <= MAX_NAMESPACE:
        return name
    digest = hashlib.sha256(f"{tenant_namespace}\0{tenant}".encode()).hexdigest()[:10]
    return f"{name[: MAX_NAMESPACE - len(digest) - 6].rstrip('-')}-{digest}-pods"


def pod_security_labels(level: str = DEFAULT_POD_SECURITY) -> Dict[str, str]:
    """The namespace labels by which Pod Security admission enforces LEVEL (and warns and
    audits at it, so a refused create says why in the agent's log as well)."""
    check_pod_security(level)
    return {
        f"pod-security.kubernetes.io/{mode}{suffix}": value
        for mode in ("enforce", "warn", "audit")
        for suffix, value in (("", level), ("-version", "latest"))
    }


def pods_namespace_object(tenant_namespace: str, tenant: str, level: str = DEFAULT_POD_SECURITY) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": pods_namespace(tenant_namespace, tenant),
            "labels": {**MANAGED_BY, "hn.rhizeption.io/tenant": tenant, **pod_security_labels(level)},
        },
    }


def resources_priority_class() -> Obj:
    """The PriorityClass the agent gives the resources node's host Pods (one for every tenant):
    priority 0 as any Pod without a class, never preempting; it only marks what the quota counts."""
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": RESOURCES_PRIORITY_CLASS, "labels": dict(MANAGED_BY)},
        "value": 0,
        "globalDefault": False,
        "preemptionPolicy": "Never",
        "description": "Pods of a tenant's virtual resources node (rhizeption.core): counted by its quota",
    }


def pods_quota(tenant_namespace: str, tenant: str, resources: Mapping[str, str]) -> Obj | None:
    """promoteResources.resources (cpu, memory) in the Pods namespace: a ResourceQuota on the
    requests of the resources node's Pods (those of RESOURCES_PRIORITY_CLASS); None without
    promoted resources. No LimitRange: the agent writes an explicit 0 for what a container does
    not request, as the tenant's scheduler counted it (pods._say_no_request)."""
    if not resources:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": f"{tenant}-promoted",
            "namespace": pods_namespace(tenant_namespace, tenant),
            "labels": dict(MANAGED_BY),
        },
        "spec": {
            "hard": {f"requests.{r}": str(v) for r, v in sorted(resources.items())},
            "scopeSelector": {
                "matchExpressions": [
                    {"scopeName": "PriorityClass", "operator": "In", "values": [RESOURCES_PRIORITY_CLASS]}
                ]
            },
        },
    }


def agent_name(tenant: str) -> str:
    """The name of tenant TENANT's agent: its ServiceAccount, ConfigMap and Deployment beside the
    control plane (several tenants may share a namespace), and its RoleBinding in the Pods'."""
    return f"{tenant}-virtual-node-agent"


def agent_cluster_role() -> Obj:
    """AGENT_ROLE_RULES as a ClusterRole that the host admin installs once
    (roles/tenant_control_plane/files/virtual-node-agent-clusterrole.yaml). It grants nothing by
    itself: each tenant's RoleBinding (agent_role_binding) grants it in that tenant's Pods namespace
    only, so every agent holds one namespaced role. A ClusterRole, not a Role per namespace,
    because RBAC lets the deployer bind a named ClusterRole (``bind`` on it) but create a
    Role only with rights it holds itself, which would be every agent's rights everywhere."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": AGENT_NAME, "labels": dict(MANAGED_BY)},
        "rules": [dict(rule, verbs=list(rule["verbs"])) for rule in AGENT_ROLE_RULES],
    }


def agent_role_binding(namespace: str, service_account: str, service_account_namespace: str) -> Obj:
    """Grants agent_cluster_role in NAMESPACE (the tenant's Pods namespace) to the agent's
    SERVICE_ACCOUNT, which lives beside the control plane in SERVICE_ACCOUNT_NAMESPACE."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": AGENT_NAME, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT_NAME},
        "subjects": [
            {"kind": "ServiceAccount", "name": service_account, "namespace": service_account_namespace}
        ],
    }


def host_node_reader(tenant_namespace: str, tenant: str, nodes: Sequence[str]) -> Obj | None:
    """A ClusterRole reading only the promoted host NODES (a mirror's capacity, taints and
    Ready); None without promoted nodes. Nodes are cluster-scoped, so no Role can grant
    this; resourceNames keeps it to those Nodes (a list or watch must then select one by
    metadata.name, which the agent does)."""
    if not nodes:
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": f"{AGENT_NAME}-{pods_namespace(tenant_namespace, tenant)}",
            "labels": dict(MANAGED_BY),
        },
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["nodes"],
                "resourceNames": sorted(set(nodes)),
                "verbs": ["get", "list", "watch"],
            }
        ],
    }


def host_node_reader_binding(
    tenant_namespace: str, tenant: str, nodes: Sequence[str], service_account: str
) -> Obj | None:
    """Binds host_node_reader to the agent's SERVICE_ACCOUNT (in TENANT_NAMESPACE); None
    without promoted nodes."""
    reader = host_node_reader(tenant_namespace, tenant, nodes)
    if reader is None:
        return None
    name = reader["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": dict(MANAGED_BY)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": tenant_namespace}],
    }


# In the tenant: what a kubelet does for its Node, for every Node the agent serves. The Node
# authorizer grants this per Node to system:node:NAME; an agent of several Nodes needs it from
# RBAC, and gets it for every Node and Pod, which is why a one-Node agent keeps the kubelet's.
TENANT_AGENT_RULES: List[Obj] = [
    # Register the Nodes, keep their labels, taints and status.
    {
        "apiGroups": [""],
        "resources": ["nodes"],
        "verbs": ["get", "list", "watch", "create", "patch", "update"],
    },
    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch", "update"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    # The Pods bound to the Nodes: watch them, write their status, delete them once stopped.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch", "update"]},
    # What the Pods reference, copied to the host, and their service-account tokens.
    {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
    # The Service sync: every tenant Service gets a host copy (a kubelet reads them too).
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "update"]},
    # Who calls :10250 (the tenant API server for logs and exec) and may they: asked of the
    # tenant, as a kubelet with webhook authentication and authorization asks.
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
]


def tenant_agent_cluster_role() -> Obj:
    """The agent's ClusterRole in the tenant, when it serves several Nodes (TENANT_AGENT_RULES)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": TENANT_AGENT_IDENTITY, "labels": dict(MANAGED_BY)},
        "rules": [dict(rule, verbs=list(rule["verbs"])) for rule in TENANT_AGENT_RULES],
    }


def tenant_agent_cluster_role_binding() -> Obj:
    """Binds tenant_agent_cluster_role to the user TENANT_AGENT_IDENTITY (the agent's client
    certificate's common name, signed by the tenant's CA)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": TENANT_AGENT_IDENTITY, "labels": dict(MANAGED_BY)},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": TENANT_AGENT_IDENTITY,
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT_AGENT_IDENTITY}
        ],
    }


def allows(rules: Sequence[Obj], resource: str, verb: str, api_group: str = "") -> bool:
    """Whether RULES grant VERB on RESOURCE (a subresource as pods/log), as RBAC reads them."""
    for rule in rules:
        if api_group not in rule.get("apiGroups", []) and "*" not in rule.get("apiGroups", []):
            continue
        if resource not in rule.get("resources", []) and "*" not in rule.get("resources", []):
            continue
        if verb in rule.get("verbs", []) or "*" in rule.get("verbs", []):
            return True
    return False

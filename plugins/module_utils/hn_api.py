# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The hn.rhizeption.io API: resources, labels and the small helpers every kind shares.

The schemas themselves live in roles/crds/files/crds.yaml; this file holds what code
needs to find and link the objects.
"""

from __future__ import annotations

from typing import Any, Dict, List

from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube, Obj, Resource

GROUP = "hn.rhizeption.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

HNCLUSTER = Resource(API_VERSION, "HnCluster", "hnclusters")
HNMACHINE = Resource(API_VERSION, "HnMachine", "hnmachines")
TENANT_CONTROL_PLANE = Resource(API_VERSION, "TenantControlPlane", "tenantcontrolplanes")

# Labels that link a machine's objects to it and to its cluster.
CLUSTER_LABEL = f"{GROUP}/cluster"
MACHINE_LABEL = f"{GROUP}/machine"
MANAGED_BY = {"app.kubernetes.io/managed-by": "rhizeption.core"}
# Set on an HnMachine to have scale-down pick it first (as Cluster API's delete-machine).
DELETE_MACHINE_ANNOTATION = f"{GROUP}/delete-machine"
# Holds an HnMachine until its Pod is gone, so a machine never disappears before its node.
MACHINE_FINALIZER = f"{GROUP}/machine"

# The container of a machine's Pod that runs the node (kubectl exec lands there).
NODE_CONTAINER = "node"
MACHINE_PHASES = ("Pending", "Provisioning", "Running", "Ready", "Deleting", "Failed")
CLUSTER_PHASES = ("Pending", "Provisioning", "Ready", "Deleting", "Failed")


def cluster_selector(cluster_name: str) -> str:
    return f"{CLUSTER_LABEL}={cluster_name}"


def condition(
    previous: List[Obj], type_: str, status: bool, reason: str, message: str, *, now: str, generation: int
) -> Obj:
    """A metav1.Condition; lastTransitionTime moves only when the status does."""
    value = "True" if status else "False"
    old = next((c for c in previous or [] if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value else now
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def owner_reference(owner: Obj, controller: bool = True) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def meta(obj: Obj | None, *keys: str) -> Any:
    """obj["metadata"][keys...] or None, for objects that may not exist."""
    value: Any = (obj or {}).get("metadata") or {}
    for key in keys:
        value = (value or {}).get(key)
    return value


def status_of(obj: Obj | None) -> Dict[str, Any]:
    return (obj or {}).get("status") or {}


def apply_status(kube: Kube, resource: Resource, obj: Obj, status: Obj) -> Obj:
    """Write STATUS through OBJ's status subresource; skipped when nothing changed, so a
    steady object costs no write."""
    if status_of(obj) == status:
        return obj
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    body = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": {"name": name}}
    body["status"] = status
    return kube.apply(resource.path(ns, name, "status"), body, what=f"{resource.kind} {ns}/{name} status")

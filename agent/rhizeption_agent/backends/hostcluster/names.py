"""Names and labels of the objects the agent makes in the host cluster for a tenant.

Every tenant object (Pod, ConfigMap, Secret, Service) lands in one host namespace, so its
host name must be unique across the tenant's namespaces, across tenants sharing that host
namespace, and across kinds that share a name space in the host (a copied Secret and a
Pod's token Secret). The name is a readable part (tenant namespace and name) and a hash of
everything that identifies the object; it is a DNS-1123 label (at most 63 characters),
which every kind accepts, Services included.

A hash of 16 hex digits (64 bits) makes an accidental collision negligible, but a name of
at most 63 characters cannot be injective for inputs of up to 316: ``owner_of`` lets the
live code check, before it writes, that a host object it finds really is the copy of the
tenant object it means, and never take over another one.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

Obj = dict[str, Any]

PREFIX = "virtual.rhizeption.io"
# Labels (selectable) and annotations (values too long for a label) linking a host object
# to the tenant object it stands for.
TENANT_LABEL = f"{PREFIX}/tenant"  # the TenantControlPlane's name (at most 40 characters)
NAMESPACE_LABEL = f"{PREFIX}/namespace"  # the tenant namespace (a DNS label: fits a label value)
UID_LABEL = f"{PREFIX}/uid"
KIND_LABEL = f"{PREFIX}/kind"  # pod, configmap, secret, token, service
NAME_ANNOTATION = f"{PREFIX}/name"  # up to 253 characters: more than a label value holds
# What the downward API of a tenant Pod reads and the host Pod does not hold itself.
NODE_ANNOTATION = f"{PREFIX}/node"  # the virtual node: spec.nodeName in the tenant
HOST_IP_ANNOTATION = f"{PREFIX}/host-ip"  # the virtual node's address: status.hostIP in the tenant
SERVICE_ACCOUNT_ANNOTATION = f"{PREFIX}/service-account"
LABELS_ANNOTATION = f"{PREFIX}/labels"  # the tenant labels as a downward API file shows them
ANNOTATIONS_ANNOTATION = f"{PREFIX}/annotations"  # the same for the tenant annotations
# Tenant label keys move under this prefix on the host (see host_label_key).
TENANT_LABELS_PREFIX = f"labels.{PREFIX}"
# Tenant annotations that a downward API reference reads move under this prefix.
TENANT_ANNOTATIONS_PREFIX = f"annotations.{PREFIX}"

MAX_LABEL = 63
HASH_CHARS = 16
_NOT_LABEL_CHAR = re.compile(r"[^a-z0-9-]+")
_NOT_KEY_CHAR = re.compile(r"[^A-Za-z0-9._-]+")


def _digest(*parts: str, length: int = HASH_CHARS) -> str:
    # NUL never occurs in a Kubernetes name: ("a-b", "c") and ("a", "b-c") hash apart.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def host_name(tenant: str, namespace: str, name: str, kind: str = "pod") -> str:
    """The host name of tenant object NAMESPACE/NAME of KIND: readable, at most 63
    characters, a valid DNS-1123 label, and distinct for every (tenant, namespace, name,
    kind) up to a 64-bit hash collision."""
    digest = _digest(kind, tenant, namespace, name)
    readable = _NOT_LABEL_CHAR.sub("-", f"{namespace}-{name}".lower())
    readable = readable[: MAX_LABEL - HASH_CHARS - 1].strip("-")
    return f"{readable}-{digest}" if readable else digest


def token_secret_name(tenant: str, namespace: str, pod_name: str) -> str:
    """The host Secret holding the service-account tokens of tenant Pod NAMESPACE/POD_NAME."""
    return host_name(tenant, namespace, pod_name, kind="token")


def link_labels(tenant: str, namespace: str, kind: str, uid: str = "") -> dict[str, str]:
    labels = {TENANT_LABEL: tenant, NAMESPACE_LABEL: namespace, KIND_LABEL: kind}
    if uid:
        labels[UID_LABEL] = uid
    return labels


def owner_of(host_obj: Obj) -> tuple[str, str, str, str] | None:
    """(tenant, kind, namespace, name) of the tenant object HOST_OBJ stands for, or None
    when the agent did not make it (then it must never be changed or deleted)."""
    meta = host_obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    try:
        return (
            labels[TENANT_LABEL],
            labels[KIND_LABEL],
            labels[NAMESPACE_LABEL],
            annotations[NAME_ANNOTATION],
        )
    except KeyError:
        return None


def host_label_key(key: str) -> str:
    """The host label key that carries tenant label KEY.

    Tenant labels never keep their own keys on the host: a tenant Pod labelled like the
    tenant's own control-plane Pods (or any host workload) would otherwise join that
    workload's Service. The readable part helps a reader of the host; the hash of the
    exact key keeps two keys apart ("a/b" and "a_b" read alike)."""
    readable = _NOT_KEY_CHAR.sub("_", key.replace("/", "_"))[: MAX_LABEL - 13]
    return f"{TENANT_LABELS_PREFIX}/{readable}-{_digest(key, length=12)}"


def host_annotation_key(key: str) -> str:
    """The host annotation key that carries tenant annotation KEY (same rule as labels)."""
    readable = _NOT_KEY_CHAR.sub("_", key.replace("/", "_"))[: MAX_LABEL - 13]
    return f"{TENANT_ANNOTATIONS_PREFIX}/{readable}-{_digest(key, length=12)}"


def host_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """Tenant LABELS under their host keys (values are unchanged: they are valid label values)."""
    return {host_label_key(k): v for k, v in sorted((labels or {}).items())}


def host_selector(tenant: str, namespace: str, selector: dict[str, str]) -> dict[str, str]:
    """A tenant Service's selector as a host Service selector: only Pods of this tenant
    and namespace, with the translated keys (for the Service sync)."""
    return {**link_labels(tenant, namespace, "pod"), **host_labels(selector)}

# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""TenantControlPlane: a tenant's own etcd, kube-apiserver, controller-manager and scheduler,
run as workloads in the TenantControlPlane's namespace of the host cluster.

Everything here is pure (no cluster), in the order a reconcile runs it:

validate / validate_update   bad input is refused before anything is written, naming the
                             field path and what would be accepted;
sans / endpoint              every name the tenant's kube-apiserver is reached by;
render_pki                   the PKI as Secrets, generating only what is missing, about to
                             expire, signed by a CA that changed, or naming old SANs;
render                       the workloads, Services, PodDisruptionBudgets and NetworkPolicy;
derive_status                what the StatefulSet and Deployments show, as phase and
                             per-component conditions.

Then the apply/wait step, the one place that writes to the host cluster (the modules
tenant_control_plane and tenant_control_plane_info drive it):

ensure_present / ensure_absent   refuse bad input before any write, apply with server-side
                                 apply (a dry run in check mode), write status, wait with
                                 watches; delete everything the tenant owned;
wait_for_phase                   follow the Pods to a phase, ending Failed on a timeout;
admin_kubeconfig                 the admin kubeconfig from its Secret.

Images
------
``render`` takes ``images``, a dict component -> image, for ``etcd``, ``kube-apiserver``,
``kube-controller-manager`` and ``kube-scheduler``. Missing entries default to the images
``hack/`` builds locally from the binaries of the version: ``localhost/rhizeption/<component>:
<version>`` (etcd's tag is the etcd version that goes with the Kubernetes version, see
BUILT_VERSIONS). No registry is reachable here, so these never leave the machine and are
loaded into the host cluster's container runtime. With a registry, push the same four images
there and pass, for example::

    images = {c: f"registry.example.com/k8s/{c}:v1.34.4" for c in ("kube-apiserver", "kube-scheduler")}

Each container names its binary as its command, so any image that has ``etcd`` or
``kube-apiserver`` (and so on) on its PATH works, upstream ``registry.k8s.io`` images included.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import ipaddress
import json
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Dict, Iterable, List, Mapping, Sequence, Set, Tuple

from ansible_collections.rhizeption.core.plugins.module_utils import oneshot_pods, pki, virtual_nodes
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import (
    API_VERSION,
    GROUP,
    MANAGED_BY,
    TENANT_CONTROL_PLANE,
    apply_status,
    condition,
    meta,
    owner_reference,
    status_of,
)
from ansible_collections.rhizeption.core.plugins.module_utils.hnmachine import (
    now_rfc3339,
    stuck,
)
from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube, KubeError, Obj, Resource

# Every object a tenant control plane owns carries it, with the TenantControlPlane's name.
TENANT_LABEL = f"{GROUP}/tenant"
# With it, on what a tenant has outside its namespace (its virtual nodes'): the namespace.
TENANT_NAMESPACE_LABEL = f"{GROUP}/tenant-namespace"
# Rolled into Pod templates, so renewed certificates and kubeconfigs restart what reads them.
PKI_DIGEST_ANNOTATION = f"{GROUP}/pki-digest"

# The Kubernetes versions this collection builds, with the etcd version that goes with each:
# hack/versions.env (KUBERNETES_PREVIOUS_VERSION, KUBERNETES_VERSION, ETCD_VERSION). The
# previous minor keeps etcd 3.6, which it supports, so an upgrade never touches the datastore.
# The CRD's enum of spec.version is the same list; tests/unit/module_utils/
# test_tenant_control_plane.py keeps the three in step.
BUILT_VERSIONS: Dict[str, Dict[str, str]] = {
    "v1.33.13": {"etcd": "v3.6.16"},
    "v1.34.4": {"etcd": "v3.6.16"},
}

ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
COMPONENTS = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER)
ETCD_BACKUP = "etcd-backup"  # the helper Pods of a backup or restore, not a component
ETCD_CLEANUP = "etcd-cleanup"  # the helper Pod that removes a deleted tenant's keys from a shared etcd
# The agent of the tenant's virtual nodes (docs/virtual-nodes.md), deployed when promoteResources
# is set: its image is the `images` key, its labels' app.kubernetes.io/name.
VIRTUAL_NODE_AGENT = "virtual-node-agent"
# hack/build-images tags the agent's image with the collection's version (galaxy.yml); a unit
# test keeps the two in step.
AGENT_IMAGE_TAG = "0.1.0"
# The tenant DNS beside the agent (CoreDNS serving the names the agent writes): its images key,
# and the version hack/build-images builds (hack/versions.env COREDNS_VERSION; a unit test).
VIRTUAL_NODE_DNS = "virtual-node-dns"
COREDNS_VERSION = "v1.12.1"
DNS_PORT = 5353  # CoreDNS in the agent's Pod, non-root: its Service maps 53 to it
RESOURCES_NODE = "virtual-resources"  # the tenant's Node of promoteResources.resources
AGENT_PORT = 10250  # the agent's kubelet API, which the tenant's apiserver calls for logs and exec
AGENT_DIR = "/etc/rhizeption-agent"
AGENT_STATE = "/var/lib/rhizeption-agent"  # an emptyDir: the serving certificate, the DNS names
# On a tenant with a shared etcd: its keys there are removed before it is gone, and a
# delete that fails half-way leaves the tenant (in Deleting) for the next run to finish.
SHARED_KEYS_FINALIZER = "hn.rhizeption.io/shared-etcd-keys"
# spec.resources keys of each component.
RESOURCE_KEYS = {
    ETCD: "etcd",
    APISERVER: "apiServer",
    CONTROLLER_MANAGER: "controllerManager",
    SCHEDULER: "scheduler",
    VIRTUAL_NODE_AGENT: "virtualNodeAgent",
}
IMAGE_REPOSITORY = "localhost/rhizeption"

API_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_METRICS_PORT = 2381  # plain HTTP, health (/livez, /readyz) and metrics: for the kubelet's probes
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
NODE_PORT_RANGE = (30000, 32767)
MAX_REPLICAS = 5
# Service names (NAME-etcd-peers) and the labels of etcd members' DNS names must stay DNS
# labels (63), with room to spare for NAME-controller-manager; the CRD says the same.
MAX_NAME = 40
HOST_CLUSTER_DOMAIN = "cluster.local"
TENANT_CLUSTER_DOMAIN = "cluster.local"
DEFAULTS: Obj = {
    "replicas": 1,
    "datastore": {"type": "etcd"},
    "exposure": {"type": "ClusterIP"},
    "certificateValidity": "8760h",
    "serviceCIDR": "10.96.0.0/16",
    "podCIDR": "10.244.0.0/16",
}
ETCD_STORAGE = "1Gi"
MIN_VALIDITY = datetime.timedelta(hours=1)
# A CA lives ten years and is renewed in its last; leaves are renewed in the last third
# of their validity, so a yearly certificate is renewed four months ahead.
CA_RENEW_BEFORE = datetime.timedelta(days=365)
RENEW_FRACTION = 3
PKI_DIR = "/etc/kubernetes/pki"
KUBECONFIG_DIR = "/etc/kubernetes/kubeconfig"
# Non-root, and a group that may read the Secrets' files (mode 0440).
RUN_AS = 65532
SECRET_MODE = 0o440

PHASES = ("Pending", "Provisioning", "Initialized", "Ready", "Upgrading", "Deleting", "Failed")
CONDITION_TYPES = {
    ETCD: "DatastoreReady",
    APISERVER: "APIServerReady",
    CONTROLLER_MANAGER: "ControllerManagerReady",
    SCHEDULER: "SchedulerReady",
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DURATION = re.compile(r"^(?:[0-9]+[hms])+$")
_DURATION_PART = re.compile(r"([0-9]+)([hms])")
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_PREFIX = re.compile(r"^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$")
_ENDPOINT = re.compile(r"^https?://[^/\s]+$")


class TenantControlPlaneError(ValueError):
    """Bad input, with the field path it is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# -- the spec, with the CRD's defaults ------------------------------------------------------
def spec_of(tcp: Obj) -> Obj:
    """TCP's spec with the CRD's defaults filled in (an object read from the API server has
    them already; one built in a playbook may not)."""
    spec = copy.deepcopy(tcp.get("spec") or {})
    for key, value in DEFAULTS.items():
        if spec.get(key) is None:
            spec[key] = copy.deepcopy(value)
    spec["datastore"].setdefault("type", "etcd")
    spec["exposure"].setdefault("type", "ClusterIP")
    return spec


def parse_duration(text: str) -> datetime.timedelta:
    """A Go duration of hours, minutes and seconds ("8760h", "1h30m")."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration such as 8760h or 90m")
    units = {"h": 3600, "m": 60, "s": 1}
    return datetime.timedelta(seconds=sum(int(n) * units[u] for n, u in _DURATION_PART.findall(text)))


def certificate_validity(tcp: Obj) -> datetime.timedelta:
    return parse_duration(spec_of(tcp)["certificateValidity"])


def etcd_members(tcp: Obj) -> int:
    """A dedicated etcd has an odd number of members (an even one adds no fault tolerance):
    the control plane's replicas, rounded up to odd."""
    replicas = int(spec_of(tcp)["replicas"])
    return replicas if replicas % 2 else replicas + 1


def shared_prefix(tcp: Obj) -> str:
    shared = spec_of(tcp)["datastore"].get("shared") or {}
    return shared.get("prefix") or f"/rhizeption/{tcp['metadata']['namespace']}/{tcp['metadata']['name']}"


# -- validation ----------------------------------------------------------------------------
def validate(tcp: Obj, built_versions: Iterable[str] = tuple(BUILT_VERSIONS)) -> None:
    """Refuse what the API server would refuse, and what it cannot see (a version this
    collection did not build), naming the field and what would be accepted."""
    md = tcp.get("metadata") or {}
    name = md.get("name") or ""
    if not _DNS_LABEL.match(name) or len(name) > MAX_NAME:
        raise TenantControlPlaneError(
            "metadata.name",
            f"{name!r} must be a DNS label (lower case letters, digits, '-'), {MAX_NAME} characters at most",
        )
    if not md.get("namespace"):
        raise TenantControlPlaneError("metadata.namespace", "is required: the host namespace of the tenant")
    spec = spec_of(tcp)
    built = sorted(built_versions)
    if spec.get("version") not in built:
        raise TenantControlPlaneError(
            "spec.version",
            f"{spec.get('version')!r} is not built by this collection; accepted: {', '.join(built)}"
            " (hack/versions.env)",
        )
    replicas = spec["replicas"]
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= MAX_REPLICAS:
        raise TenantControlPlaneError(
            "spec.replicas", f"{replicas!r} must be an integer from 1 to {MAX_REPLICAS}"
        )
    _validate_datastore(spec["datastore"])
    _validate_exposure(spec["exposure"])
    networks = {}
    for key, example in (("serviceCIDR", "10.96.0.0/16"), ("podCIDR", "10.244.0.0/16")):
        try:
            networks[key] = ipaddress.ip_network(spec[key], strict=True)
        except (TypeError, ValueError):
            raise TenantControlPlaneError(
                f"spec.{key}", f"{spec[key]!r} is not a CIDR (network address/prefix) such as {example}"
            ) from None
    service, pods = networks["serviceCIDR"], networks["podCIDR"]
    if service.version == pods.version and service.overlaps(pods):  # type: ignore[arg-type]
        raise TenantControlPlaneError(
            "spec.podCIDR", f"{pods} overlaps spec.serviceCIDR {service}; pick ranges that do not overlap"
        )
    try:
        validity = parse_duration(spec["certificateValidity"])
    except ValueError as e:
        raise TenantControlPlaneError("spec.certificateValidity", str(e)) from None
    if validity < MIN_VALIDITY:
        raise TenantControlPlaneError(
            "spec.certificateValidity", f"{spec['certificateValidity']} is too short; at least 1h"
        )
    for key, resources in (spec.get("resources") or {}).items():
        for kind in ("requests", "limits"):
            for resource, value in ((resources or {}).get(kind) or {}).items():
                if not _QUANTITY.match(str(value)):
                    raise TenantControlPlaneError(
                        f"spec.resources.{key}.{kind}.{resource}",
                        f"{value!r} is not a quantity such as 500m, 2 or 4Gi",
                    )
    promote = spec.get("promoteResources") or {}
    if not isinstance(promote.get("virtualNodes", True), bool):
        raise TenantControlPlaneError("spec.promoteResources.virtualNodes", "must be true or false")
    level = promote.get("podSecurity", virtual_nodes.DEFAULT_POD_SECURITY)
    if level not in virtual_nodes.POD_SECURITY_LEVELS:
        raise TenantControlPlaneError(
            "spec.promoteResources.podSecurity",
            f"{level!r}; accepted: {', '.join(virtual_nodes.POD_SECURITY_LEVELS)}",
        )
    for i, node in enumerate(promote.get("nodes") or []):
        if not isinstance(node, str) or not _DNS_NAME.match(node) or node.startswith("*"):
            raise TenantControlPlaneError(f"spec.promoteResources.nodes[{i}]", f"{node!r} is not a Node name")
    for resource, value in (promote.get("resources") or {}).items():
        if resource not in ("cpu", "memory"):
            raise TenantControlPlaneError(
                f"spec.promoteResources.resources.{resource}", "only cpu and memory are promoted"
            )
        if not _QUANTITY.match(str(value)):
            raise TenantControlPlaneError(
                f"spec.promoteResources.resources.{resource}", f"{value!r} is not a quantity such as 4 or 8Gi"
            )


def _validate_datastore(datastore: Obj) -> None:
    kind = datastore.get("type")
    if kind not in ("etcd", "shared"):
        raise TenantControlPlaneError("spec.datastore.type", f"{kind!r}; accepted: etcd, shared")
    if kind == "etcd":
        if datastore.get("shared"):
            raise TenantControlPlaneError("spec.datastore.shared", "is only for type shared")
        storage = (datastore.get("etcd") or {}).get("storage", ETCD_STORAGE)
        if not _QUANTITY.match(str(storage)):
            raise TenantControlPlaneError(
                "spec.datastore.etcd.storage", f"{storage!r} is not a size such as 1Gi"
            )
        return
    if datastore.get("etcd"):
        raise TenantControlPlaneError("spec.datastore.etcd", "is only for type etcd")
    shared = datastore.get("shared") or {}
    endpoints = shared.get("endpoints") or []
    if not endpoints:
        raise TenantControlPlaneError(
            "spec.datastore.shared.endpoints", "a shared datastore needs its etcd's client URLs"
        )
    for i, url in enumerate(endpoints):
        if not isinstance(url, str) or not _ENDPOINT.match(url):
            raise TenantControlPlaneError(
                f"spec.datastore.shared.endpoints[{i}]", f"{url!r} is not a URL such as https://etcd:2379"
            )
    prefix = shared.get("prefix")
    if prefix is not None and (not _PREFIX.match(prefix) or "//" in prefix or len(prefix) > 128):
        raise TenantControlPlaneError(
            "spec.datastore.shared.prefix", f"{prefix!r} must be a key path such as /tenants/blue"
        )


def _validate_exposure(exposure: Obj) -> None:
    kind = exposure.get("type")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise TenantControlPlaneError(
            "spec.exposure.type", f"{kind!r}; accepted: ClusterIP, NodePort, LoadBalancer"
        )
    port = exposure.get("nodePort")
    if port is not None:
        if kind != "NodePort":
            raise TenantControlPlaneError("spec.exposure.nodePort", f"is only for type NodePort, not {kind}")
        low, high = NODE_PORT_RANGE
        if not isinstance(port, int) or isinstance(port, bool) or not low <= port <= high:
            raise TenantControlPlaneError(
                "spec.exposure.nodePort", f"{port!r} is out of range; accepted: {low}-{high}"
            )
    for i, san in enumerate(exposure.get("extraSANs") or []):
        if not _is_ip(san) and not (isinstance(san, str) and len(san) <= 253 and _DNS_NAME.match(san)):
            raise TenantControlPlaneError(
                f"spec.exposure.extraSANs[{i}]", f"{san!r} is neither an IP address nor a DNS name"
            )


def validate_update(old: Obj, new: Obj) -> None:
    """What an existing tenant may not change: its datastore's kind, its networks, the
    number of its etcd members (no member add/remove yet); and versions move forward, one
    minor at a time."""
    before, after = spec_of(old), spec_of(new)
    if before["datastore"]["type"] != after["datastore"]["type"]:
        raise TenantControlPlaneError(
            "spec.datastore.type", "is immutable; a tenant's data does not move between datastores"
        )
    for key in ("serviceCIDR", "podCIDR"):
        if before[key] != after[key]:
            raise TenantControlPlaneError(f"spec.{key}", f"is immutable; it stays {before[key]}")
    if after["datastore"]["type"] == "etcd" and etcd_members(old) != etcd_members(new):
        raise TenantControlPlaneError(
            "spec.replicas",
            f"would change the dedicated etcd from {etcd_members(old)} to {etcd_members(new)} members,"
            " which is not supported yet; keep replicas at "
            + ("1" if etcd_members(old) == 1 else f"{etcd_members(old) - 1} or {etcd_members(old)}"),
        )
    running = status_of(old).get("version") or before.get("version")
    wanted = after.get("version")
    if running and wanted and running != wanted:
        (r_major, r_minor), (w_major, w_minor) = _minor(running), _minor(wanted)
        if (w_major, w_minor) < (r_major, r_minor) or (
            (w_major, w_minor) == (r_major, r_minor) and _patch(wanted) < _patch(running)
        ):
            raise TenantControlPlaneError(
                "spec.version", f"{wanted} would downgrade the tenant from {running}; downgrades are refused"
            )
        if w_major != r_major or w_minor > r_minor + 1:
            raise TenantControlPlaneError(
                "spec.version",
                f"{wanted} skips a minor version from {running}; upgrade to v{r_major}.{r_minor + 1} first",
            )


def check_shared_prefix(tcp: Obj, others: Sequence[Obj]) -> None:
    """Two tenants on one etcd must not share or nest key prefixes: one would read and
    overwrite the other's objects."""
    if spec_of(tcp)["datastore"]["type"] != "shared":
        return
    mine = shared_prefix(tcp).rstrip("/") + "/"
    my_endpoints = set(spec_of(tcp)["datastore"]["shared"]["endpoints"])
    for other in others:
        if meta(other, "uid") and meta(other, "uid") == meta(tcp, "uid"):
            continue
        if (other["metadata"]["namespace"], other["metadata"]["name"]) == (
            tcp["metadata"]["namespace"],
            tcp["metadata"]["name"],
        ):
            continue
        ospec = spec_of(other)
        if ospec["datastore"]["type"] != "shared":
            continue
        if not my_endpoints & set(ospec["datastore"]["shared"].get("endpoints") or []):
            continue
        theirs = shared_prefix(other).rstrip("/") + "/"
        if mine.startswith(theirs) or theirs.startswith(mine):
            raise TenantControlPlaneError(
                "spec.datastore.shared.prefix",
                f"{mine.rstrip('/')} overlaps {theirs.rstrip('/')} of TenantControlPlane"
                f" {other['metadata']['namespace']}/{other['metadata']['name']} on the same etcd;"
                " give each tenant a prefix of its own",
            )


_QUANTITY_PARTS = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)([KMGTPE]i|[numkMGTPE])?$"
)
_QUANTITY_SUFFIX = {
    "": 1,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity(text: object) -> Decimal:
    """A Kubernetes quantity ("500m", "4Gi", "1e3") as a number; ValueError otherwise."""
    match = _QUANTITY_PARTS.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a quantity such as 500m, 2 or 4Gi")
    return Decimal(match.group(1)) * _QUANTITY_SUFFIX[match.group(2) or ""]


def check_promoted_resources(tcp: Obj, clusters: Sequence[Obj], neighbours: Sequence[Obj]) -> None:
    """promoteResources.resources becomes a ResourceQuota on the tenant's host namespace,
    which every Pod there counts against: refuse a quota smaller than one hosted node of the
    tenant's HnClusters (CLUSTERS: those whose controlPlaneRef names it), and a second tenant
    with promoted resources in the same namespace (NEIGHBOURS: the namespace's other tenants),
    whose quotas would count each other's Pods."""
    promoted = (spec_of(tcp).get("promoteResources") or {}).get("resources") or {}
    if not promoted:
        return
    ns, name = tcp["metadata"]["namespace"], tcp["metadata"]["name"]
    for other in neighbours:
        if meta(other, "name") != name and (spec_of(other).get("promoteResources") or {}).get("resources"):
            raise TenantControlPlaneError(
                "spec.promoteResources.resources",
                f"TenantControlPlane {ns}/{meta(other, 'name')} promotes resources in this namespace too, and"
                " a quota counts every Pod of its namespace; give each such tenant a namespace of its own",
            )
    for cluster in clusters:
        template = (cluster.get("spec") or {}).get("machineTemplate") or {}
        requests = (template.get("resources") or {}).get("requests") or {}
        for resource in ("cpu", "memory"):
            if (
                resource in promoted
                and resource in requests
                and quantity(promoted[resource]) < quantity(requests[resource])
            ):
                raise TenantControlPlaneError(
                    f"spec.promoteResources.resources.{resource}",
                    f"{promoted[resource]} is less than one hosted node of HnCluster"
                    f" {ns}/{meta(cluster, 'name')} ({requests[resource]});"
                    f" accepted: {requests[resource]} or more",
                )


def _minor(version: str) -> Tuple[int, int]:
    parts = version.lstrip("v").split(".")
    return int(parts[0]), int(parts[1])


def _patch(version: str) -> int:
    return int(version.lstrip("v").split(".")[2])


def _is_ip(text: object) -> bool:
    try:
        ipaddress.ip_address(text)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


# -- names and addresses -------------------------------------------------------------------
def service_name(tcp: Obj) -> str:
    """The kube-apiserver's Service has the TenantControlPlane's name: NAME.NAMESPACE.svc."""
    return tcp["metadata"]["name"]


def etcd_names(tcp: Obj) -> Tuple[str, str]:
    """(the etcd StatefulSet and client Service, its headless Service)."""
    name = tcp["metadata"]["name"]
    return f"{name}-etcd", f"{name}-etcd-peers"


def _svc_forms(name: str, namespace: str) -> List[str]:
    return [
        name,
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.{HOST_CLUSTER_DOMAIN}",
    ]


def _service_ports(service: Obj | None) -> List[Obj]:
    return ((service or {}).get("spec") or {}).get("ports") or []


def _lb_ingress(service: Obj | None) -> List[Obj]:
    return ((status_of(service).get("loadBalancer") or {}).get("ingress")) or []


def sans(
    tcp: Obj, service: Obj | None = None, node_addresses: Sequence[str] = ()
) -> Tuple[List[str], List[str]]:
    """(DNS names, IP addresses) of the kube-apiserver's serving certificate: the Service's
    names in the host cluster, the `kubernetes` Service's names and address inside the
    tenant, loopback (probes), the Service's cluster IP once known, the nodes' addresses
    with a NodePort, the load balancer's once it has them, and spec.exposure.extraSANs.
    Sorted and without duplicates, so the same inputs give the same list."""
    spec = spec_of(tcp)
    exposure = spec["exposure"]
    dns = set(_svc_forms(service_name(tcp), tcp["metadata"]["namespace"]))
    dns |= {"kubernetes", "kubernetes.default", "kubernetes.default.svc"}
    dns |= {f"kubernetes.default.svc.{TENANT_CLUSTER_DOMAIN}", "localhost"}
    ips = {"127.0.0.1", str(ipaddress.ip_network(spec["serviceCIDR"])[1])}
    svc_spec = (service or {}).get("spec") or {}
    for ip in [svc_spec.get("clusterIP"), *(svc_spec.get("clusterIPs") or [])]:
        if ip and _is_ip(ip):
            ips.add(ip)
    if exposure["type"] == "NodePort":
        ips |= {a for a in node_addresses if _is_ip(a)}
        dns |= {a for a in node_addresses if not _is_ip(a)}
    if exposure["type"] == "LoadBalancer":
        for ingress in _lb_ingress(service):
            if ingress.get("ip"):
                ips.add(ingress["ip"])
            if ingress.get("hostname"):
                dns.add(ingress["hostname"])
    for san in exposure.get("extraSANs") or []:
        (ips if _is_ip(san) else dns).add(san)
    ordered_ips = sorted({ipaddress.ip_address(ip) for ip in ips}, key=lambda a: (a.version, int(a)))
    return sorted(dns), [str(ip) for ip in ordered_ips]


def endpoint(tcp: Obj, service: Obj | None = None, node_addresses: Sequence[str] = ()) -> str:
    """The URL the tenant's kube-apiserver is reached at: the load balancer's or a node's
    address once known, else the Service's name, which works from inside the host cluster."""
    exposure = spec_of(tcp)["exposure"]["type"]
    if exposure == "LoadBalancer":
        for ingress in _lb_ingress(service):
            host = ingress.get("ip") or ingress.get("hostname")
            if host:
                return _url(host, API_PORT)
    if exposure == "NodePort" and node_addresses:
        port = next((p.get("nodePort") for p in _service_ports(service) if p.get("nodePort")), None)
        port = port or spec_of(tcp)["exposure"].get("nodePort")
        if port:
            return _url(node_addresses[0], int(port))
    return internal_endpoint(tcp)


def internal_endpoint(tcp: Obj) -> str:
    """Where the tenant's controller-manager and scheduler reach its kube-apiserver."""
    return f"https://{service_name(tcp)}.{tcp['metadata']['namespace']}.svc:{API_PORT}"


def _url(host: str, port: int) -> str:
    if _is_ip(host) and ipaddress.ip_address(host).version == 6:
        host = f"[{host}]"
    return f"https://{host}:{port}"


# -- PKI -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cert:
    """One certificate of the tenant's PKI; ``ca`` is None for a CA."""

    role: str
    common_name: str
    ca: str | None = None
    organizations: Tuple[str, ...] = ()
    dns: Tuple[str, ...] = ()
    ips: Tuple[str, ...] = ()
    server: bool = False
    client: bool = False


@dataclass(frozen=True)
class Kubeconfig:
    role: str
    user: str
    organizations: Tuple[str, ...]
    server: str


# Roles of the tenant's Secrets; the Secret of role R is named NAME-R.
SECRET_ROLES = (
    "ca",
    "apiserver",
    "apiserver-kubelet-client",
    "front-proxy-ca",
    "front-proxy-client",
    "sa",
    "etcd-ca",
    "etcd-server",
    "etcd-peer",
    "apiserver-etcd-client",
    "admin-kubeconfig",
    "controller-manager-kubeconfig",
    "scheduler-kubeconfig",
    "virtual-node-agent-kubeconfig",
)
ETCD_ROLES = ("etcd-ca", "etcd-server", "etcd-peer", "apiserver-etcd-client")


def secret_names(tcp: Obj) -> Dict[str, str]:
    """Role -> Secret name, for the roles this tenant needs (no etcd PKI with a shared etcd)."""
    name = tcp["metadata"]["name"]
    dedicated = spec_of(tcp)["datastore"]["type"] == "etcd"
    return {
        role: f"{name}-{role}"
        for role in SECRET_ROLES
        if (dedicated or role not in ETCD_ROLES)
        and (role != "virtual-node-agent-kubeconfig" or deploys_virtual_nodes(tcp))
    }


def deploys_virtual_nodes(tcp: Obj) -> bool:
    """Whether TCP's promoteResources go to virtual nodes (an agent deployed beside the control
    plane), rather than only bounding its hosted nodes (promoteResources.virtualNodes: false)."""
    promote = spec_of(tcp).get("promoteResources") or {}
    return bool(promote.get("nodes") or promote.get("resources")) and promote.get("virtualNodes", True)


def pods_namespace(tcp: Obj) -> str:
    """The host namespace where the virtual nodes run the tenant's Pods."""
    return virtual_nodes.pods_namespace(tcp["metadata"]["namespace"], tcp["metadata"]["name"])


def certificates(tcp: Obj, service: Obj | None = None, node_addresses: Sequence[str] = ()) -> List[Cert]:
    """The certificates of TCP, CAs before the leaves they sign."""
    name, namespace = tcp["metadata"]["name"], tcp["metadata"]["namespace"]
    dns, ips = sans(tcp, service, node_addresses)
    certs = [
        Cert("ca", f"{name}-ca"),
        Cert("apiserver", "kube-apiserver", "ca", dns=tuple(dns), ips=tuple(ips), server=True),
        Cert(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            "ca",
            organizations=("system:masters",),
            client=True,
        ),
        Cert("front-proxy-ca", f"{name}-front-proxy-ca"),
        Cert("front-proxy-client", "front-proxy-client", "front-proxy-ca", client=True),
    ]
    if spec_of(tcp)["datastore"]["type"] == "etcd":
        client_svc, peers = etcd_names(tcp)
        member_dns = (f"*.{peers}.{namespace}.svc", f"*.{peers}.{namespace}.svc.{HOST_CLUSTER_DOMAIN}")
        certs += [
            Cert("etcd-ca", f"{name}-etcd-ca"),
            Cert(
                "etcd-server",
                f"{name}-etcd",
                "etcd-ca",
                dns=tuple(sorted({*_svc_forms(client_svc, namespace), *member_dns, "localhost"})),
                ips=("127.0.0.1",),
                server=True,
                client=True,
            ),
            Cert("etcd-peer", f"{name}-etcd-peer", "etcd-ca", dns=member_dns, server=True, client=True),
            Cert("apiserver-etcd-client", "kube-apiserver-etcd-client", "etcd-ca", client=True),
        ]
    return certs


def kubeconfigs(tcp: Obj, service: Obj | None = None, node_addresses: Sequence[str] = ()) -> List[Kubeconfig]:
    inside = internal_endpoint(tcp)
    return [
        Kubeconfig(
            "admin-kubeconfig",
            "kubernetes-admin",
            ("system:masters",),
            endpoint(tcp, service, node_addresses),
        ),
        Kubeconfig("controller-manager-kubeconfig", "system:kube-controller-manager", (), inside),
        Kubeconfig("scheduler-kubeconfig", "system:kube-scheduler", (), inside),
    ] + (
        # One user for every Node the agent serves (virtual_nodes.tenant_agent_cluster_role).
        [Kubeconfig("virtual-node-agent-kubeconfig", virtual_nodes.TENANT_AGENT_IDENTITY, (), inside)]
        if deploys_virtual_nodes(tcp)
        else []
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(data: Mapping[str, str], key: str) -> bytes:
    return base64.b64decode(data[key])


def _load_pair(data: Mapping[str, str] | None) -> pki.KeyPair | None:
    try:
        return pki.load_keypair(_unb64(data or {}, "tls.crt"), _unb64(data or {}, "tls.key"))
    except (KeyError, TypeError, ValueError):
        return None


def _cert_is_current(
    want: Cert, pair: pki.KeyPair | None, issuer: pki.KeyPair | None, policy: _Renewal
) -> bool:
    """Whether PAIR may stay as WANT: same subject, not due for renewal, signed by the
    current ISSUER (a CA just regenerated means a new leaf), and, for a server, the same SANs."""
    if pair is None or not pki.subject_is(pair.cert, want.common_name, want.organizations):
        return False
    if issuer is None:
        return not pki.needs_renewal(pair.cert, policy.now, CA_RENEW_BEFORE)
    if want.ca in policy.regenerated or not pki.issued_by(pair.cert, issuer.cert):
        return False
    if pki.needs_renewal(pair.cert, policy.now, policy.renew_before):
        return False
    return not want.server or pki.sans_match(pair.cert, want.dns, want.ips)


@dataclass
class _Renewal:
    now: datetime.datetime
    validity: datetime.timedelta
    renew_before: datetime.timedelta
    regenerated: Set[str] = field(default_factory=set)


def render_pki(
    tcp: Obj,
    existing: Mapping[str, Mapping[str, str]],
    now: datetime.datetime,
    *,
    service: Obj | None = None,
    node_addresses: Sequence[str] = (),
) -> List[Obj]:
    """The tenant's PKI as Secrets (labelled and owned by TCP).

    EXISTING maps a Secret's name to its ``data`` as read from the API (base64 values).
    A certificate is generated only when its Secret is missing or unreadable, when it ends
    within the renew window (the last third of spec.certificateValidity; the last year of
    a CA's ten), when its CA was just regenerated, or when it names other SANs or another
    subject than it should. Everything else is returned byte for byte as it was, so a second
    run with the same inputs writes nothing. The service-account key is never rotated here:
    that would invalidate every token the tenant issued.
    """
    validate(tcp)
    names = secret_names(tcp)
    validity = certificate_validity(tcp)
    policy = _Renewal(now, validity, validity / RENEW_FRACTION)
    pairs: Dict[str, pki.KeyPair] = {}
    out: List[Obj] = []
    for want in certificates(tcp, service, node_addresses):
        name = names[want.role]
        data, pair = _certificate(want, existing.get(name), pairs.get(want.ca or ""), policy)
        pairs[want.role] = pair
        out.append(_secret(tcp, name, "kubernetes.io/tls", data))
    out.append(_secret(tcp, names["sa"], "Opaque", _service_account_key(existing.get(names["sa"]))))
    for want_kc in kubeconfigs(tcp, service, node_addresses):
        name = names[want_kc.role]
        data = _kubeconfig(tcp, want_kc, existing.get(name), pairs["ca"], policy)
        out.append(_secret(tcp, name, "Opaque", data))
    return out


def _certificate(
    want: Cert, data: Mapping[str, str] | None, issuer: pki.KeyPair | None, policy: _Renewal
) -> Tuple[Dict[str, str], pki.KeyPair]:
    """(the Secret's data, the key pair) of WANT: DATA as it is when still good, else new."""
    pair = _load_pair(data)
    if (
        data is not None
        and pair is not None
        and _cert_is_current(want, pair, issuer, policy)
        and (issuer is None or data.get("ca.crt") == _b64(issuer.cert_pem()))
    ):
        return dict(data), pair
    if issuer is None:
        pair = pki.new_ca(want.common_name, now=policy.now)
    else:
        pair = pki.issue(
            issuer,
            want.common_name,
            organizations=want.organizations,
            dns_names=want.dns,
            ip_addresses=want.ips,
            server=want.server,
            client=want.client,
            validity=policy.validity,
            now=policy.now,
        )
    policy.regenerated.add(want.role)
    body = {"tls.crt": _b64(pair.cert_pem()), "tls.key": _b64(pair.key_pem())}
    if issuer is not None:
        body["ca.crt"] = _b64(issuer.cert_pem())
    return body, pair


def _service_account_key(data: Mapping[str, str] | None) -> Dict[str, str]:
    try:
        pki.load_key(_unb64(data or {}, "sa.key"))
        return dict(data or {})
    except (KeyError, TypeError, ValueError):
        key = pki.new_key()
        return {"sa.key": _b64(pki.key_pem(key)), "sa.pub": _b64(pki.public_key_pem(key))}


def _kubeconfig(
    tcp: Obj, want: Kubeconfig, data: Mapping[str, str] | None, ca: pki.KeyPair, policy: _Renewal
) -> Dict[str, str]:
    """A kubeconfig Secret's data: kept while its client certificate is good and it names
    the right server; a changed server alone keeps the client certificate."""
    try:
        server, ca_cert, client = pki.read_kubeconfig(_unb64(data or {}, "kubeconfig"))
    except (KeyError, TypeError, ValueError):
        server, ca_cert, client = "", None, None
    client_ok = (
        client is not None
        and ca_cert == ca.cert
        and "ca" not in policy.regenerated
        and pki.issued_by(client.cert, ca.cert)
        and not pki.needs_renewal(client.cert, policy.now, policy.renew_before)
        and pki.subject_is(client.cert, want.user, want.organizations)
    )
    if client_ok and server == want.server:
        return dict(data or {})
    if not client_ok or client is None:
        client = pki.issue(
            ca,
            want.user,
            organizations=want.organizations,
            client=True,
            validity=policy.validity,
            now=policy.now,
        )
    document = pki.kubeconfig_yaml(want.server, ca.cert, want.user, client, cluster=tcp["metadata"]["name"])
    return {"kubeconfig": _b64(document)}


def _secret(tcp: Obj, name: str, type_: str, data: Dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(tcp, name, "pki"),
        "type": type_,
        "data": data,
    }


def _certificate_in(data: Mapping[str, str] | None) -> pki.x509.Certificate | None:
    """The certificate a PKI Secret's DATA holds: its tls.crt, or a kubeconfig's client
    certificate; None for the service-account key or what does not parse."""
    data = data or {}
    try:
        if "kubeconfig" in data:
            return pki.read_kubeconfig(_unb64(data, "kubeconfig"))[2].cert
        return pki.load_cert(_unb64(data, "tls.crt"))
    except (KeyError, TypeError, ValueError):
        return None


def _renew_before(tcp: Obj, role: str) -> datetime.timedelta:
    is_ca = any(c.role == role and c.ca is None for c in certificates(tcp))
    return CA_RENEW_BEFORE if is_ca else certificate_validity(tcp) / RENEW_FRACTION


def due_for_renewal(tcp: Obj, existing: Mapping[str, Mapping[str, str]], now: datetime.datetime) -> List[str]:
    """Names of the Secrets in EXISTING whose certificate (or kubeconfig's client certificate)
    is in its renew window at NOW: what render_pki renews because of age alone."""
    out = []
    for role, name in secret_names(tcp).items():
        cert = _certificate_in(existing.get(name))
        if cert is not None and pki.needs_renewal(cert, now, _renew_before(tcp, role)):
            out.append(name)
    return out


def next_renewal(tcp: Obj, secrets: Sequence[Obj]) -> datetime.datetime | None:
    """When the first of SECRETS (render_pki's output) enters its renew window: a run after
    that renews it, so a schedule that runs more often than a third of certificateValidity
    never lets one expire."""
    roles = {name: role for role, name in secret_names(tcp).items()}
    starts = []
    for secret in secrets:
        role = roles.get(secret["metadata"]["name"])
        cert = _certificate_in(secret.get("data"))
        if role and cert is not None:
            starts.append(pki.not_after(cert) - _renew_before(tcp, role))
    return min(starts, default=None)


def pki_digests(secrets: Sequence[Obj]) -> Dict[str, str]:
    """Secret name -> a short digest of its data, to roll a component's Pods when a Secret
    it mounts changes (kubeconfigs and the etcd certificates are read only at start)."""
    out = {}
    for secret in secrets:
        h = hashlib.sha256()
        for key in sorted(secret.get("data") or {}):
            h.update(key.encode() + b"\0" + secret["data"][key].encode() + b"\0")
        out[secret["metadata"]["name"]] = h.hexdigest()[:16]
    return out


# -- render ---------------------------------------------------------------------------------
def default_images(version: str) -> Dict[str, str]:
    """The locally built images of VERSION (see the module docstring)."""
    etcd_version = BUILT_VERSIONS.get(version, {}).get("etcd", "")
    return {
        ETCD: f"{IMAGE_REPOSITORY}/etcd:{etcd_version}",
        APISERVER: f"{IMAGE_REPOSITORY}/kube-apiserver:{version}",
        CONTROLLER_MANAGER: f"{IMAGE_REPOSITORY}/kube-controller-manager:{version}",
        SCHEDULER: f"{IMAGE_REPOSITORY}/kube-scheduler:{version}",
        VIRTUAL_NODE_AGENT: f"{IMAGE_REPOSITORY}/{VIRTUAL_NODE_AGENT}:{AGENT_IMAGE_TAG}",
        VIRTUAL_NODE_DNS: f"{IMAGE_REPOSITORY}/coredns:{COREDNS_VERSION}",
    }


def selector_labels(tcp: Obj, component: str) -> Dict[str, str]:
    return {TENANT_LABEL: tcp["metadata"]["name"], "app.kubernetes.io/name": component}


def labels(tcp: Obj, component: str) -> Dict[str, str]:
    role = {ETCD: "datastore", "pki": "pki", "quota": "quota", VIRTUAL_NODE_AGENT: "virtual-nodes"}.get(
        component, "control-plane"
    )
    version = spec_of(tcp)["version"]
    if component == ETCD:
        version = BUILT_VERSIONS.get(version, {}).get("etcd", version)
    return {
        **MANAGED_BY,
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": tcp["metadata"]["name"],
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/part-of": "rhizeption",
        "app.kubernetes.io/version": version,
        TENANT_LABEL: tcp["metadata"]["name"],
    }


def _metadata(tcp: Obj, name: str, component: str) -> Obj:
    if not meta(tcp, "uid"):
        raise TenantControlPlaneError(
            "metadata.uid", "the TenantControlPlane must exist (have a uid) before its objects are rendered"
        )
    return {
        "name": name,
        "namespace": tcp["metadata"]["namespace"],
        "labels": labels(tcp, component),
        "ownerReferences": [owner_reference(tcp, controller=True)],
    }


def _secret_volume(role: str, secret: str) -> Obj:
    return {"name": role, "secret": {"secretName": secret, "defaultMode": SECRET_MODE}}


def _mount(role: str, path: str) -> Obj:
    return {"name": role, "mountPath": path, "readOnly": True}


def _https_probe(path: str, port: int, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTPS"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


# Every container the tenant runs in the host: no privilege, no capability, a read-only root.
CONTAINER_SECURITY: Obj = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _container(tcp: Obj, component: str, *, image: str, args: List[str], mounts: List[Obj], port: int) -> Obj:
    container: Obj = {
        "name": component,
        "image": image,
        # Images built here are loaded into the runtime, never pulled; a registry's are pulled once.
        "imagePullPolicy": "IfNotPresent",
        "command": [component],
        "args": args,
        "ports": [
            {"name": "https" if component != ETCD else "client", "containerPort": port, "protocol": "TCP"}
        ],
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    resources = (spec_of(tcp).get("resources") or {}).get(RESOURCE_KEYS[component])
    if resources:
        container["resources"] = copy.deepcopy(resources)
    return container


def _pod_spec(tcp: Obj, component: str, container: Obj, volumes: List[Obj], replicas: int) -> Obj:
    spec: Obj = {
        "containers": [container],
        "volumes": volumes,
        # The control plane talks to its own API server with its own credentials, never to the host's.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    placement = spec_of(tcp).get("placement") or {}
    if placement.get("nodeSelector"):
        spec["nodeSelector"] = dict(placement["nodeSelector"])
    if placement.get("tolerations"):
        spec["tolerations"] = copy.deepcopy(placement["tolerations"])
    if replicas > 1:
        # Replicas on different host nodes where there are enough of them.
        spec["affinity"] = {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": selector_labels(tcp, component)},
                        },
                    }
                ]
            }
        }
    return spec


def _template(tcp: Obj, component: str, pod_spec: Obj, digest: str) -> Obj:
    metadata: Obj = {"labels": labels(tcp, component)}
    if digest:
        metadata["annotations"] = {PKI_DIGEST_ANNOTATION: digest}
    return {"metadata": metadata, "spec": pod_spec}


def _digest(digests: Mapping[str, str], secrets: Iterable[str]) -> str:
    parts = [digests[s] for s in sorted(secrets) if s in digests]
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16] if parts else ""


def _pdb(tcp: Obj, name: str, component: str, *, min_available: int | None = None) -> Obj:
    spec: Obj = {"selector": {"matchLabels": selector_labels(tcp, component)}}
    if min_available is not None:
        spec["minAvailable"] = min_available
    else:
        spec["maxUnavailable"] = 1
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(tcp, name, component),
        "spec": spec,
    }


def _deployment(tcp: Obj, component: str, *, name: str, pod_spec: Obj, digest: str) -> Obj:
    replicas = int(spec_of(tcp)["replicas"])
    # One at a time, never below the replicas asked for: a control plane stays up while it
    # rolls. A lone controller-manager or scheduler has no leader election, so the old one
    # goes before the new one starts rather than both acting at once.
    strategy: Obj = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    if replicas == 1 and component in (CONTROLLER_MANAGER, SCHEDULER):
        strategy = {"type": "Recreate"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(tcp, name, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(tcp, component)},
            "strategy": strategy,
            "template": _template(tcp, component, pod_spec, digest),
        },
    }


def render(
    tcp: Obj,
    images: Mapping[str, str] | None = None,
    pki_secret_names: Mapping[str, str] | None = None,
    *,
    pki_secrets: Sequence[Obj] = (),
    advertise_address: str | None = None,
    virtual_dns_ip: str | None = None,
) -> List[Obj]:
    """Every object of the tenant's control plane but its PKI Secrets, labelled and owned
    by TCP, in the order to apply them: the datastore, then the kube-apiserver, then the
    controller-manager and scheduler, then the PodDisruptionBudgets.

    IMAGES overrides default_images() per component; PKI_SECRET_NAMES maps roles to Secret
    names (secret_names() by default); PKI_SECRETS (render_pki's output) adds a digest to
    each Pod template so renewed credentials restart what reads them; ADVERTISE_ADDRESS is
    the address the tenant's `kubernetes` Service points at (the apiserver Service's
    cluster IP or load balancer address once known; the Pod's IP until then); VIRTUAL_DNS_IP
    is the virtual nodes' DNS Service's cluster IP once known (their Pods' nameserver).
    """
    validate(tcp)
    spec = spec_of(tcp)
    name = tcp["metadata"]["name"]
    image = {**default_images(spec["version"]), **(images or {})}
    secrets = {**secret_names(tcp), **(pki_secret_names or {})}
    digests = pki_digests(pki_secrets)
    # The LimitRange first: Pods created after it get its default requests.
    objects: List[Obj] = _render_promoted(tcp)
    if spec["datastore"]["type"] == "etcd":
        objects += _render_etcd(tcp, image[ETCD], secrets, digests)
    objects.append(_render_apiserver(tcp, image[APISERVER], secrets, digests, advertise_address))
    objects.append(_apiserver_service(tcp))
    objects.append(_render_controller(tcp, CONTROLLER_MANAGER, image[CONTROLLER_MANAGER], secrets, digests))
    objects.append(_render_controller(tcp, SCHEDULER, image[SCHEDULER], secrets, digests))
    if deploys_virtual_nodes(tcp):
        objects += _render_virtual_node_agent(
            tcp, image, secrets, digests, api_server_ip=advertise_address, dns_ip=virtual_dns_ip
        )
    if int(spec["replicas"]) > 1:
        objects += [
            _pdb(tcp, f"{name}-apiserver", APISERVER),
            _pdb(tcp, f"{name}-controller-manager", CONTROLLER_MANAGER, min_available=1),
            _pdb(tcp, f"{name}-scheduler", SCHEDULER, min_available=1),
        ]
    return objects


# Requests of a container that names none, in a namespace with promoted resources: a quota on
# requests refuses Pods without them, and every Pod there counts against it.
DEFAULT_REQUESTS = {"cpu": "100m", "memory": "128Mi"}


def quota_name(tcp: Obj) -> str:
    return f"{tcp['metadata']['name']}-promoted"


def _render_promoted(tcp: Obj) -> List[Obj]:
    """promoteResources.resources as a ResourceQuota on the namespace's Pod requests, and a
    LimitRange giving containers without requests DEFAULT_REQUESTS (so they are admitted).
    Not with virtual nodes: the resources are then the resources node's, bounded by the quota
    in the Pods' namespace (virtual_nodes.pods_quota), and counting them here as well would
    hand the tenant twice what it was given."""
    promoted = (spec_of(tcp).get("promoteResources") or {}).get("resources") or {}
    if not promoted or deploys_virtual_nodes(tcp):
        return []
    return [
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": _metadata(tcp, quota_name(tcp), "quota"),
            "spec": {"limits": [{"type": "Container", "defaultRequest": dict(DEFAULT_REQUESTS)}]},
        },
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": _metadata(tcp, quota_name(tcp), "quota"),
            "spec": {"hard": {f"requests.{r}": str(v) for r, v in sorted(promoted.items())}},
        },
    ]


def _secret_mounts(secrets: Mapping[str, str], roles: Sequence[str]) -> Tuple[List[Obj], List[Obj]]:
    """(volumes, read-only mounts at PKI_DIR/ROLE) of the Secrets of ROLES."""
    volumes = [_secret_volume(role, secrets[role]) for role in roles]
    mounts = [_mount(role, f"{PKI_DIR}/{role}") for role in roles]
    return volumes, mounts


def _datastore_flags(tcp: Obj, secrets: Dict[str, str]) -> Tuple[List[str], Tuple[str, ...]]:
    """(kube-apiserver's etcd flags, the roles of the Secrets they read)."""
    p = PKI_DIR
    datastore = spec_of(tcp)["datastore"]
    if datastore["type"] == "etcd":
        servers = f"https://{etcd_names(tcp)[0]}.{tcp['metadata']['namespace']}.svc:{ETCD_CLIENT_PORT}"
        return [
            f"--etcd-servers={servers}",
            f"--etcd-cafile={p}/apiserver-etcd-client/ca.crt",
            f"--etcd-certfile={p}/apiserver-etcd-client/tls.crt",
            f"--etcd-keyfile={p}/apiserver-etcd-client/tls.key",
        ], ("apiserver-etcd-client",)
    shared = datastore["shared"]
    # The prefix keeps this tenant's keys apart from every other tenant of that etcd.
    flags = [f"--etcd-servers={','.join(shared['endpoints'])}", f"--etcd-prefix={shared_prefix(tcp)}"]
    if not shared.get("clientSecretName"):
        return flags, ()
    secrets["datastore-client"] = shared["clientSecretName"]
    return [
        *flags,
        f"--etcd-cafile={p}/datastore-client/ca.crt",
        f"--etcd-certfile={p}/datastore-client/tls.crt",
        f"--etcd-keyfile={p}/datastore-client/tls.key",
    ], ("datastore-client",)


def _render_apiserver(
    tcp: Obj, image: str, secrets: Dict[str, str], digests: Mapping[str, str], advertise_address: str | None
) -> Obj:
    """The kube-apiserver Deployment; its flags follow the rig's known-good ones
    (hack/riglib/controlplane.py), with TLS to etcd and the front proxy added."""
    spec = spec_of(tcp)
    replicas = int(spec["replicas"])
    etcd_flags, etcd_roles = _datastore_flags(tcp, secrets)
    roles = ("ca", "apiserver", "apiserver-kubelet-client", "front-proxy-client", "sa", *etcd_roles)
    volumes, mounts = _secret_mounts(secrets, roles)
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    p = PKI_DIR
    args = [
        f"--advertise-address={advertise_address or '$(POD_IP)'}",
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        "--bind-address=0.0.0.0",
        f"--client-ca-file={p}/ca/tls.crt",
        "--enable-admission-plugins=NodeRestriction",
        "--enable-bootstrap-token-auth=true",
        *etcd_flags,
        f"--kubelet-client-certificate={p}/apiserver-kubelet-client/tls.crt",
        f"--kubelet-client-key={p}/apiserver-kubelet-client/tls.key",
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
        "--profiling=false",
        f"--proxy-client-cert-file={p}/front-proxy-client/tls.crt",
        f"--proxy-client-key-file={p}/front-proxy-client/tls.key",
        "--requestheader-allowed-names=front-proxy-client",
        f"--requestheader-client-ca-file={p}/front-proxy-client/ca.crt",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        f"--secure-port={API_PORT}",
        f"--service-account-issuer=https://kubernetes.default.svc.{TENANT_CLUSTER_DOMAIN}",
        f"--service-account-key-file={p}/sa/sa.pub",
        f"--service-account-signing-key-file={p}/sa/sa.key",
        f"--service-cluster-ip-range={spec['serviceCIDR']}",
        f"--tls-cert-file={p}/apiserver/tls.crt",
        f"--tls-private-key-file={p}/apiserver/tls.key",
    ]
    container = _container(tcp, APISERVER, image=image, args=args, mounts=mounts, port=API_PORT)
    container["env"] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    # Startup and readiness every second, as kubeadm's apiserver readiness: each step of a
    # tenant's start waits for the one before, and 5 s periods made up half of apply -> Ready.
    container["startupProbe"] = _https_probe("/livez", API_PORT, 1, 150)
    container["livenessProbe"] = _https_probe("/livez", API_PORT, 10, 6)
    container["readinessProbe"] = _https_probe("/readyz", API_PORT, 1, 3)
    return _deployment(
        tcp,
        APISERVER,
        name=f"{tcp['metadata']['name']}-apiserver",
        pod_spec=_pod_spec(tcp, APISERVER, container, volumes, replicas),
        digest=_digest(digests, (secrets[r] for r in roles)),
    )


def _render_controller(
    tcp: Obj, component: str, image: str, secrets: Mapping[str, str], digests: Mapping[str, str]
) -> Obj:
    """The controller-manager or scheduler Deployment: a kubeconfig from its Secret, and
    leader election when there is more than one replica."""
    spec = spec_of(tcp)
    replicas = int(spec["replicas"])
    short = component.replace("kube-", "")
    kubeconfig_role = f"{short}-kubeconfig"
    port = CONTROLLER_MANAGER_PORT if component == CONTROLLER_MANAGER else SCHEDULER_PORT
    roles: Tuple[str, ...] = ("ca", "sa") if component == CONTROLLER_MANAGER else ()
    volumes, mounts = _secret_mounts(secrets, roles)
    volumes += [_secret_volume("kubeconfig", secrets[kubeconfig_role]), {"name": "tmp", "emptyDir": {}}]
    mounts += [_mount("kubeconfig", KUBECONFIG_DIR), {"name": "tmp", "mountPath": "/tmp"}]
    kubeconfig = f"{KUBECONFIG_DIR}/kubeconfig"
    p = PKI_DIR
    args = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=0.0.0.0",
        f"--secure-port={port}",
        f"--leader-elect={'true' if replicas > 1 else 'false'}",
        "--profiling=false",
    ]
    if component == CONTROLLER_MANAGER:
        args += [
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={spec['podCIDR']}",
            f"--cluster-name={tcp['metadata']['name']}",
            f"--cluster-signing-cert-file={p}/ca/tls.crt",
            f"--cluster-signing-key-file={p}/ca/tls.key",
            "--controllers=*,bootstrapsigner,tokencleaner",
            f"--root-ca-file={p}/ca/tls.crt",
            f"--service-account-private-key-file={p}/sa/sa.key",
            f"--service-cluster-ip-range={spec['serviceCIDR']}",
            "--use-service-account-credentials=true",
        ]
    container = _container(tcp, component, image=image, args=args, mounts=mounts, port=port)
    container["livenessProbe"] = _https_probe("/healthz", port, 10, 6)
    container["readinessProbe"] = _https_probe("/healthz", port, 2, 3)
    return _deployment(
        tcp,
        component,
        name=f"{tcp['metadata']['name']}-{short}",
        pod_spec=_pod_spec(tcp, component, container, volumes, replicas),
        digest=_digest(digests, [secrets[kubeconfig_role], *(secrets[r] for r in roles)]),
    )


def _apiserver_service(tcp: Obj) -> Obj:
    exposure = spec_of(tcp)["exposure"]
    port: Obj = {"name": "https", "port": API_PORT, "targetPort": API_PORT, "protocol": "TCP"}
    if exposure["type"] == "NodePort" and exposure.get("nodePort"):
        port["nodePort"] = exposure["nodePort"]
    ports = [port]
    if deploys_virtual_nodes(tcp):
        # The tenant's Pods on virtual nodes reach it as `kubernetes` on 443, as in any cluster:
        # the host kubelet gives them KUBERNETES_PORT_443_TCP* variables, which only variables of
        # the same names (the agent's, for this port) replace. With a NodePort exposure the host
        # gives this port a node port too.
        ports.append({"name": "https-pods", "port": 443, "targetPort": API_PORT, "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(tcp, service_name(tcp), APISERVER),
        "spec": {"type": exposure["type"], "selector": selector_labels(tcp, APISERVER), "ports": ports},
    }


def virtual_nodes_served(tcp: Obj) -> List[str]:
    """The tenant's virtual Nodes: a mirror of each promoted host node, then the resources node."""
    promote = spec_of(tcp).get("promoteResources") or {}
    return [*(promote.get("nodes") or []), *([RESOURCES_NODE] if promote.get("resources") else [])]


def agent_config(tcp: Obj, api_server_ip: str | None, dns_ip: str | None = None) -> Obj:
    """The agent's configuration file (agent/rhizeption_agent/config.py): the tenant's Nodes, its
    Pods namespace in the host, where the tenant's Pods reach its API server (API_SERVER_IP,
    the apiserver Service's cluster IP) and their nameserver (DNS_IP, the DNS Service's), once
    known."""
    promote = spec_of(tcp)["promoteResources"]
    resources = dict(promote.get("resources") or {})
    host_cluster: Obj = {
        "kubeconfig": "",  # the Pod's ServiceAccount
        "tenant": tcp["metadata"]["name"],
        "namespace": pods_namespace(tcp),
        "resources": {k: str(v) for k, v in resources.items()},
        "nodes": list(promote.get("nodes") or []),
        "pod_security": promote.get("podSecurity", virtual_nodes.DEFAULT_POD_SECURITY),
        "cluster_domain": TENANT_CLUSTER_DOMAIN,
        "api_server_port": 443,
        "resources_priority_class": virtual_nodes.RESOURCES_PRIORITY_CLASS if resources else "",
        "dns_hosts_file": f"{AGENT_STATE}/dns/hosts",
    }
    if api_server_ip:
        host_cluster["api_server_ip"] = api_server_ip
    if dns_ip:
        host_cluster["dns_ip"] = dns_ip
    return {
        "node_name": RESOURCES_NODE,
        "kubeconfig": f"{AGENT_DIR}/tenant/kubeconfig",
        "backend": "hostcluster",
        "state_dir": AGENT_STATE,
        "hostname_address": False,  # the Pod's name resolves nowhere in the tenant
        "server": {"port": AGENT_PORT, "client_ca_file": f"{AGENT_DIR}/tenant-ca/ca.crt"},
        "host_cluster": host_cluster,
    }


def virtual_dns_service_name(tcp: Obj) -> str:
    return f"{tcp['metadata']['name']}-virtual-dns"


def corefile() -> str:
    """The tenant DNS: the tenant's domain from the hosts file the agent writes (re-read every
    2 s; a name it lacks is NXDOMAIN, never the host cluster's Service of that name), anything
    else from the resolvers of the agent's Pod."""
    return (
        f"{TENANT_CLUSTER_DOMAIN}:{DNS_PORT} {{\n"
        "    errors\n"
        f"    hosts {AGENT_STATE}/dns/hosts {{\n"
        "        reload 2s\n"
        "    }\n"
        "}\n"
        f".:{DNS_PORT} {{\n"
        "    errors\n"
        "    forward . /etc/resolv.conf\n"
        "    cache 30\n"
        "}\n"
    )


def _render_virtual_node_agent(
    tcp: Obj,
    images: Mapping[str, str],
    secrets: Mapping[str, str],
    digests: Mapping[str, str],
    *,
    api_server_ip: str | None,
    dns_ip: str | None,
) -> List[Obj]:
    """The agent of the tenant's virtual nodes beside its control plane: its ServiceAccount (its
    only right in the host is the RoleBinding in the Pods namespace, render_virtual_host_objects),
    its configuration, the Service of the tenant DNS, and a Deployment of one (two agents would
    fight over the same Nodes) with a CoreDNS container serving the names the agent writes
    (docs/virtual-nodes.md, "Services and DNS").

    The tenant's RBAC for the agent (virtual_nodes.tenant_agent_cluster_role) is applied by an
    init container with the tenant's admin kubeconfig: only a holder of a role's rights may
    create it, the module may not reach the tenant's API server, and the agent's own container
    never mounts that kubeconfig."""
    name = virtual_nodes.agent_name(tcp["metadata"]["name"])
    image = images[VIRTUAL_NODE_AGENT]
    config = json.dumps(agent_config(tcp, api_server_ip, dns_ip), indent=2, sort_keys=True)
    rbac = json.dumps(
        [virtual_nodes.tenant_agent_cluster_role(), virtual_nodes.tenant_agent_cluster_role_binding()],
        indent=2,
        sort_keys=True,
    )
    config_map: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(tcp, name, VIRTUAL_NODE_AGENT),
        "data": {"config.yaml": config, "tenant-rbac.json": rbac, "Corefile": corefile()},
    }
    dns_service: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(tcp, virtual_dns_service_name(tcp), VIRTUAL_NODE_AGENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(tcp, VIRTUAL_NODE_AGENT),
            "ports": [
                {"name": f"dns-{proto.lower()}", "port": 53, "targetPort": DNS_PORT, "protocol": proto}
                for proto in ("UDP", "TCP")
            ],
        },
    }
    account: Obj = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(tcp, name, VIRTUAL_NODE_AGENT),
    }
    volumes: List[Obj] = [
        {"name": "config", "configMap": {"name": name}},
        _secret_volume("tenant", secrets["virtual-node-agent-kubeconfig"]),
        # The tenant's CA certificate only (the apiserver Secret's ca.crt, not its key): the
        # agent's :10250 trusts the apiserver's client certificate by it.
        {
            "name": "tenant-ca",
            "secret": {
                "secretName": secrets["apiserver"],
                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                "defaultMode": SECRET_MODE,
            },
        },
        _secret_volume("admin", secrets["admin-kubeconfig"]),
        {"name": "state", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]

    init: Obj = {
        "name": "tenant-rbac",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "rhizeption_agent.apply"],
        "args": [
            f"--kubeconfig={AGENT_DIR}/admin/kubeconfig",
            f"--server={internal_endpoint(tcp)}",
            f"{AGENT_DIR}/config/tenant-rbac.json",
        ],
        "volumeMounts": [
            _mount("config", f"{AGENT_DIR}/config"),
            _mount("admin", f"{AGENT_DIR}/admin"),
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    agent: Obj = {
        "name": VIRTUAL_NODE_AGENT,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "rhizeption_agent"],
        "args": [f"--config={AGENT_DIR}/config/config.yaml"],
        "ports": [{"name": "kubelet", "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": AGENT_PORT}, "periodSeconds": 5},
        "volumeMounts": [
            _mount("config", f"{AGENT_DIR}/config"),
            _mount("tenant", f"{AGENT_DIR}/tenant"),
            _mount("tenant-ca", f"{AGENT_DIR}/tenant-ca"),
            {"name": "state", "mountPath": AGENT_STATE},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    resources = (spec_of(tcp).get("resources") or {}).get(RESOURCE_KEYS[VIRTUAL_NODE_AGENT])
    if resources:
        agent["resources"] = copy.deepcopy(resources)
    dns: Obj = {
        "name": "dns",
        "image": images[VIRTUAL_NODE_DNS],
        "imagePullPolicy": "IfNotPresent",
        "args": ["-conf", f"{AGENT_DIR}/config/Corefile"],
        "ports": [
            {"name": f"dns-{proto.lower()}", "containerPort": DNS_PORT, "protocol": proto}
            for proto in ("UDP", "TCP")
        ],
        # The names the agent writes, read only.
        "volumeMounts": [_mount("config", f"{AGENT_DIR}/config"), _mount("state", AGENT_STATE)],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    pod_spec = _pod_spec(tcp, VIRTUAL_NODE_AGENT, agent, volumes, 1)
    pod_spec["containers"].append(dns)
    # Its host credentials are the ServiceAccount's token, mounted and rotated by the kubelet.
    pod_spec.update(serviceAccountName=name, automountServiceAccountToken=True, initContainers=[init])
    pki_digest = _digest(
        digests, [secrets[r] for r in ("virtual-node-agent-kubeconfig", "apiserver", "admin-kubeconfig")]
    )
    # A changed configuration restarts the agent, as renewed credentials do.
    digest = hashlib.sha256(f"{pki_digest}{config}{rbac}{corefile()}".encode()).hexdigest()[:16]
    deployment: Obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(tcp, name, VIRTUAL_NODE_AGENT),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector_labels(tcp, VIRTUAL_NODE_AGENT)},
            "strategy": {"type": "Recreate"},
            "template": _template(tcp, VIRTUAL_NODE_AGENT, pod_spec, digest),
        },
    }
    return [account, config_map, dns_service, deployment]


def render_virtual_host_objects(tcp: Obj) -> List[Obj]:
    """What the virtual nodes need in the host outside the tenant's namespace, in the order to
    apply them: the Pods namespace at its Pod Security level, the RoleBinding there of the
    agent's ClusterRole, the quota of promoteResources.resources, and for mirror nodes the
    ClusterRole reading those host Nodes and its binding. None of them can be owned by the
    TenantControlPlane (an owner must be in the same namespace, or cluster-scoped): they carry
    its labels instead, and ensure_absent deletes them. The agent's ClusterRole and the
    PriorityClass the quota counts are the host admin's, installed once
    (roles/tenant_control_plane/files/virtual-node-agent-clusterrole.yaml and
    virtual-resources-priorityclass.yaml)."""
    if not deploys_virtual_nodes(tcp):
        return []
    ns, name = tcp["metadata"]["namespace"], tcp["metadata"]["name"]
    promote = spec_of(tcp)["promoteResources"]
    level = promote.get("podSecurity", virtual_nodes.DEFAULT_POD_SECURITY)
    mine = {TENANT_LABEL: name, TENANT_NAMESPACE_LABEL: ns}
    account = virtual_nodes.agent_name(name)
    objects = [
        virtual_nodes.pods_namespace_object(ns, name, level),
        virtual_nodes.agent_role_binding(pods_namespace(tcp), account, ns),
        virtual_nodes.pods_quota(ns, name, promote.get("resources") or {}),
        virtual_nodes.host_node_reader(ns, name, promote.get("nodes") or []),
        virtual_nodes.host_node_reader_binding(ns, name, promote.get("nodes") or [], account),
    ]
    out = []
    for obj in objects:
        if obj is not None:
            obj["metadata"]["labels"] = {**obj["metadata"]["labels"], **mine}
            out.append(obj)
    return out


def _render_etcd(tcp: Obj, image: str, secrets: Mapping[str, str], digests: Mapping[str, str]) -> List[Obj]:
    name, namespace = tcp["metadata"]["name"], tcp["metadata"]["namespace"]
    sts_name, peers = etcd_names(tcp)
    members = etcd_members(tcp)
    etcd_spec = spec_of(tcp)["datastore"].get("etcd") or {}
    selector = selector_labels(tcp, ETCD)

    def member_url(member: str, port: int) -> str:
        return f"https://{member}.{peers}.{namespace}.svc:{port}"

    initial_cluster = ",".join(
        f"{sts_name}-{i}={member_url(f'{sts_name}-{i}', ETCD_PEER_PORT)}" for i in range(members)
    )
    p = PKI_DIR
    args = [
        "--name=$(POD_NAME)",
        "--data-dir=/var/lib/etcd/data",
        f"--listen-client-urls=https://0.0.0.0:{ETCD_CLIENT_PORT}",
        f"--advertise-client-urls={member_url('$(POD_NAME)', ETCD_CLIENT_PORT)}",
        f"--listen-peer-urls=https://0.0.0.0:{ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls={member_url('$(POD_NAME)', ETCD_PEER_PORT)}",
        f"--initial-cluster={initial_cluster}",
        "--initial-cluster-state=new",
        # Unique per tenant: members of two tenants never join each other.
        f"--initial-cluster-token={namespace}-{name}",
        f"--listen-metrics-urls=http://0.0.0.0:{ETCD_METRICS_PORT}",
        "--client-cert-auth=true",
        f"--trusted-ca-file={p}/etcd-server/ca.crt",
        f"--cert-file={p}/etcd-server/tls.crt",
        f"--key-file={p}/etcd-server/tls.key",
        "--peer-client-cert-auth=true",
        # etcd checks a connecting peer's SANs against its address, a Pod IP that is unknown
        # when the certificate is made (it falls back to reverse DNS of that IP, which is not
        # to be relied on): peers are admitted by their CA and the peer certificate's CN.
        "--peer-skip-client-san-verification=true",
        f"--peer-cert-allowed-cn={name}-etcd-peer",
        f"--peer-trusted-ca-file={p}/etcd-peer/ca.crt",
        f"--peer-cert-file={p}/etcd-peer/tls.crt",
        f"--peer-key-file={p}/etcd-peer/tls.key",
        "--snapshot-count=10000",
        "--log-level=warn",
    ]
    roles = ("etcd-server", "etcd-peer")
    vols = [_secret_volume(role, secrets[role]) for role in roles]
    mounts = [_mount(role, f"{PKI_DIR}/{role}") for role in roles]
    mounts.append({"name": "data", "mountPath": "/var/lib/etcd"})
    container = _container(tcp, ETCD, image=image, args=args, mounts=mounts, port=ETCD_CLIENT_PORT)
    container["ports"].append({"name": "peer", "containerPort": ETCD_PEER_PORT, "protocol": "TCP"})
    container["env"] = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    http = {"port": ETCD_METRICS_PORT, "scheme": "HTTP"}
    # The apiserver reaches etcd through its Service, so etcd's readiness gates the next
    # step: probed every second while it starts (the same 300 s window), every 2 s after.
    container["startupProbe"] = {
        "httpGet": {"path": "/readyz", **http},
        "periodSeconds": 1,
        "failureThreshold": 300,
    }
    container["livenessProbe"] = {
        "httpGet": {"path": "/livez", **http},
        "periodSeconds": 10,
        "failureThreshold": 6,
    }
    container["readinessProbe"] = {
        "httpGet": {"path": "/readyz", **http},
        "periodSeconds": 2,
        "failureThreshold": 3,
    }
    claim_spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": etcd_spec.get("storage") or ETCD_STORAGE}},
    }
    if etcd_spec.get("storageClassName"):
        claim_spec["storageClassName"] = etcd_spec["storageClassName"]
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(tcp, sts_name, ETCD),
        "spec": {
            "replicas": members,
            "serviceName": peers,
            "selector": {"matchLabels": selector},
            # Members of a new cluster must start together to reach quorum.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "template": _template(
                tcp,
                ETCD,
                _pod_spec(tcp, ETCD, container, vols, members),
                _digest(digests, (secrets[r] for r in roles)),
            ),
            "volumeClaimTemplates": [
                {"metadata": {"name": "data", "labels": labels(tcp, ETCD)}, "spec": claim_spec}
            ],
            # Data outlives a scale-down, and is removed with the tenant (deleting it is the
            # delete step's job, which may be asked to keep the datastore).
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain", "whenDeleted": "Retain"},
        },
    }
    ports = [
        {"name": "client", "port": ETCD_CLIENT_PORT, "targetPort": ETCD_CLIENT_PORT, "protocol": "TCP"},
        {"name": "peer", "port": ETCD_PEER_PORT, "targetPort": ETCD_PEER_PORT, "protocol": "TCP"},
    ]
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(tcp, peers, ETCD),
        "spec": {
            "clusterIP": "None",
            # Members find each other before they are ready: that is how they become ready.
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": ports,
        },
    }
    client = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(tcp, sts_name, ETCD),
        "spec": {"type": "ClusterIP", "selector": selector, "ports": ports[:1]},
    }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(tcp, sts_name, ETCD),
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [
                # The tenant's own kube-apiserver, and no one else, reaches the client port.
                {
                    "from": [{"podSelector": {"matchLabels": selector_labels(tcp, APISERVER)}}],
                    "ports": [{"protocol": "TCP", "port": ETCD_CLIENT_PORT}],
                },
                # The one-shot Pods of a backup (tenant_backup.py) take their snapshot there.
                {
                    "from": [{"podSelector": {"matchLabels": selector_labels(tcp, ETCD_BACKUP)}}],
                    "ports": [{"protocol": "TCP", "port": ETCD_CLIENT_PORT}],
                },
                # Members talk to each other.
                {
                    "from": [{"podSelector": {"matchLabels": selector}}],
                    "ports": [
                        {"protocol": "TCP", "port": ETCD_CLIENT_PORT},
                        {"protocol": "TCP", "port": ETCD_PEER_PORT},
                    ],
                },
            ],
        },
    }
    objects = [headless, client, statefulset, policy]
    if members > 1:
        objects.append(_pdb(tcp, sts_name, ETCD))  # one member down at a time keeps quorum
    return objects


# -- status ---------------------------------------------------------------------------------
def _find(observed: Sequence[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in observed if o.get("kind") == kind and meta(o, "name") == name), None)


def _pod_trouble(observed: Sequence[Obj], tcp: Obj, component: str) -> str | None:
    """Why a Pod of COMPONENT cannot start, when waiting will not help (an image that is
    not there, a bad config): a StatefulSet never says so itself."""
    wanted = selector_labels(tcp, component)
    for pod in observed:
        if pod.get("kind") != "Pod" or not wanted.items() <= (meta(pod, "labels") or {}).items():
            continue
        for cs in status_of(pod).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if stuck(waiting):
                return f"Pod {meta(pod, 'name')}: {waiting['reason']}: {waiting.get('message') or ''}".strip()
    return None


def _workload_state(obj: Obj | None) -> Tuple[str, str]:
    """("Missing" | "Progressing" | "Ready" | "Failed", message) of a Deployment or StatefulSet."""
    if obj is None:
        return "Missing", "does not exist yet"
    spec, st = obj.get("spec") or {}, status_of(obj)
    wanted = int(spec.get("replicas", 1))
    for c in st.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("status") == "False":
            return "Failed", f"{c.get('reason')}: {c.get('message') or ''}".strip()
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    # Pods of the old template still there: mid-roll, the ready ones may all be old (a
    # surge Pod counts as updated before it is ready), as when renewed certificates roll it.
    old = max(int(st.get("replicas") or 0) - updated, 0)
    if obj.get("kind") == "Deployment":
        ready = min(ready, int(st.get("availableReplicas") or 0))
    current = (st.get("observedGeneration") or 0) >= (meta(obj, "generation") or 0)
    message = f"{ready} of {wanted} ready, {updated} updated" + (f", {old} old" if old else "")
    if current and ready >= wanted and updated >= wanted and not old:
        return "Ready", message
    return "Progressing", message


def derive_status(
    tcp: Obj,
    observed: Sequence[Obj],
    now: str,
    *,
    service: Obj | None = None,
    node_addresses: Sequence[str] = (),
) -> Obj:
    """TenantControlPlane status from the objects that exist (its StatefulSet and
    Deployments, and their Pods when given). Nothing is assumed: no workload means
    Pending, whatever happened before.

    Pending       no workload exists yet
    Provisioning  the datastore or the kube-apiserver is not ready
    Initialized   both are, the controller-manager or scheduler is not yet
    Ready         every component runs the wanted spec, all replicas ready
    Upgrading     Provisioning or Initialized while an older version ran before
    Deleting      the TenantControlPlane is being deleted
    Failed        a Deployment gave up progressing, or a component's Pod cannot start
                  (failureReason/failureMessage say which)
    """
    spec = spec_of(tcp)
    name = tcp["metadata"]["name"]
    previous = status_of(tcp)
    generation = meta(tcp, "generation") or 0
    workloads = {
        APISERVER: _find(observed, "Deployment", f"{name}-apiserver"),
        CONTROLLER_MANAGER: _find(observed, "Deployment", f"{name}-controller-manager"),
        SCHEDULER: _find(observed, "Deployment", f"{name}-scheduler"),
    }
    if spec["datastore"]["type"] == "etcd":
        workloads[ETCD] = _find(observed, "StatefulSet", etcd_names(tcp)[0])
    states = {c: _workload_state(w) for c, w in workloads.items()}
    for component in states:
        trouble = _pod_trouble(observed, tcp, component)
        if trouble:
            states[component] = ("Failed", trouble)
    ready = {c: state[0] == "Ready" for c, state in states.items()}
    failed = [(c, state[1]) for c, state in states.items() if state[0] == "Failed"]
    datastore_ready = ready.get(ETCD, True)

    status: Obj = {"observedGeneration": generation}
    if meta(tcp, "deletionTimestamp"):
        phase = "Deleting"
    elif failed:
        phase = "Failed"
        status["failureReason"] = f"{CONDITION_TYPES[failed[0][0]].replace('Ready', '')}Failed"
        status["failureMessage"] = "; ".join(f"{c}: {m}" for c, m in failed)
    elif all(w is None for w in workloads.values()):
        phase = "Pending"
    elif all(ready.values()):
        phase = "Ready"
    else:
        phase = "Initialized" if datastore_ready and ready[APISERVER] else "Provisioning"
        if previous.get("version") and previous["version"] != spec["version"]:
            phase = "Upgrading"
    status["phase"] = phase
    version = spec["version"] if phase == "Ready" else previous.get("version")
    if version:
        status["version"] = version
    status["endpoint"] = endpoint(tcp, service, node_addresses)
    status["adminKubeconfigSecret"] = secret_names(tcp)["admin-kubeconfig"]

    conditions = []
    for component in COMPONENTS:
        if component == ETCD and component not in states:
            conditions.append(
                condition(
                    previous.get("conditions") or [],
                    CONDITION_TYPES[ETCD],
                    True,
                    "SharedDatastore",
                    f"the shared etcd at {', '.join(spec['datastore']['shared']['endpoints'])}",
                    now=now,
                    generation=generation,
                )
            )
            continue
        state, message = states[component]
        conditions.append(
            condition(
                previous.get("conditions") or [],
                CONDITION_TYPES[component],
                state == "Ready",
                state,
                f"{component}: {message}",
                now=now,
                generation=generation,
            )
        )
    conditions.append(
        condition(
            previous.get("conditions") or [],
            "Ready",
            phase == "Ready",
            phase,
            "every component is ready"
            if phase == "Ready"
            else status.get("failureMessage", f"phase {phase}"),
            now=now,
            generation=generation,
        )
    )
    status["conditions"] = conditions
    return status


# -- apply / wait ---------------------------------------------------------------------------
# Everything above is pure; what follows talks to the host cluster through kube.py: it reads
# what exists, runs the render steps, applies their output with server-side apply (a dry run
# in check mode), writes the status it derives and waits with watches.
SECRET = Resource("v1", "Secret", "secrets")
SERVICE = Resource("v1", "Service", "services")
PVC = Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
NODE = Resource("v1", "Node", "nodes", namespaced=False)
STATEFULSET = Resource("apps/v1", "StatefulSet", "statefulsets")
DEPLOYMENT = Resource("apps/v1", "Deployment", "deployments")
PDB = Resource("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
NETWORK_POLICY = Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
RESOURCE_QUOTA = Resource("v1", "ResourceQuota", "resourcequotas")
LIMIT_RANGE = Resource("v1", "LimitRange", "limitranges")
_POD = Resource("v1", "Pod", "pods")
HNCLUSTER = Resource(API_VERSION, "HnCluster", "hnclusters")
SERVICE_ACCOUNT = Resource("v1", "ServiceAccount", "serviceaccounts")
CONFIG_MAP = Resource("v1", "ConfigMap", "configmaps")
NAMESPACE = Resource("v1", "Namespace", "namespaces", namespaced=False)
_RBAC = "rbac.authorization.k8s.io/v1"
ROLE_BINDING = Resource(_RBAC, "RoleBinding", "rolebindings")
CLUSTER_ROLE = Resource(_RBAC, "ClusterRole", "clusterroles", namespaced=False)
CLUSTER_ROLE_BINDING = Resource(_RBAC, "ClusterRoleBinding", "clusterrolebindings", namespaced=False)
PRIORITY_CLASS = Resource("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", namespaced=False)
RESOURCES = {
    r.kind: r
    for r in (
        SECRET,
        SERVICE,
        PVC,
        STATEFULSET,
        DEPLOYMENT,
        PDB,
        NETWORK_POLICY,
        RESOURCE_QUOTA,
        LIMIT_RANGE,
        SERVICE_ACCOUNT,
        CONFIG_MAP,
        NAMESPACE,
        ROLE_BINDING,
        CLUSTER_ROLE,
        CLUSTER_ROLE_BINDING,
    )
}
# How far a tenant has come; waiting for one phase is satisfied by any later one.
PROGRESS = {"Pending": 0, "Provisioning": 1, "Initialized": 2, "Ready": 3}
# A watch is re-listed at least this often: a workload's status lags its Pods' by a moment,
# and the last Pod event may come before the Deployment counts it ready.
RESYNC_SECONDS = 5.0
# Only to name the objects of a tenant that does not exist yet (check before writing).
_PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


@dataclass
class Outcome:
    changed: bool = False
    before: Obj | None = None
    after: Obj | None = None
    # "Kind name" of every object the run created or changed (or would, in check mode).
    created: List[str] = field(default_factory=list)
    updated: List[str] = field(default_factory=list)
    deleted: List[str] = field(default_factory=list)
    # "Secret name" of every certificate or kubeconfig the run renewed (would renew) because
    # it was in its renew window, and when the next one enters its window (RFC 3339, UTC).
    renewed: List[str] = field(default_factory=list)
    next_renewal: str | None = None


def desired(name: str, namespace: str, spec: Obj, labels: Mapping[str, str] | None = None) -> Obj:
    """The TenantControlPlane a task asks for."""
    md: Obj = {"name": name, "namespace": namespace}
    if labels:
        md["labels"] = dict(labels)
    return {
        "apiVersion": API_VERSION,
        "kind": "TenantControlPlane",
        "metadata": md,
        "spec": copy.deepcopy(spec),
    }


def reached(phase: str, wanted: str) -> bool:
    return phase == wanted or PROGRESS.get(phase, -1) >= PROGRESS.get(wanted, 99)


def _path(obj: Obj) -> str:
    return RESOURCES[obj["kind"]].path(obj["metadata"].get("namespace"), obj["metadata"]["name"])


def _content(obj: Obj | None) -> Obj | None:
    """What a write changes: the object without server bookkeeping or status."""
    if obj is None:
        return None
    out = {k: v for k, v in obj.items() if k not in ("status", "metadata")}
    md = obj.get("metadata") or {}
    out["metadata"] = {
        k: md.get(k) or None for k in ("labels", "annotations", "ownerReferences", "finalizers")
    }
    return out


def _owned(obj: Obj, uid: str) -> bool:
    return any(r.get("uid") == uid for r in meta(obj, "ownerReferences") or [])


def _children(tcp: Obj) -> List[Obj]:
    """Every object render and render_pki would write (Secrets without their data)."""
    objects = render(tcp)
    for secret in secret_names(tcp).values():
        objects.insert(
            0, {"kind": "Secret", "metadata": {"name": secret, "namespace": meta(tcp, "namespace")}}
        )
    return objects


def check_names_free(kube: Kube, tcp: Obj, existing: Obj | None) -> None:
    """Refuse, before anything is written, a tenant whose objects would take over objects
    of the same names that belong to something else (server-side apply would overwrite them)."""
    probe = copy.deepcopy(tcp)
    probe["metadata"]["uid"] = meta(existing, "uid") or _PLACEHOLDER_UID
    uid = meta(existing, "uid")
    for child in _children(probe):
        current = kube.get(_path(child))
        if current is not None and not (uid and _owned(current, uid)):
            ns, name = meta(tcp, "namespace"), meta(tcp, "name")
            raise TenantControlPlaneError(
                "metadata.name",
                f"{child['kind']} {ns}/{child['metadata']['name']} exists and does not belong to"
                f" TenantControlPlane {ns}/{name}; give the tenant another name"
                f" or remove that {child['kind']}",
            )


def node_addresses(kube: Kube) -> List[str]:
    """The host nodes' InternalIP addresses (then ExternalIP), for NodePort exposure."""
    items, _unused = kube.list(NODE.path())
    out: List[str] = []
    for kind in ("InternalIP", "ExternalIP"):
        for node in sorted(items, key=lambda n: n["metadata"]["name"]):
            out += [a["address"] for a in status_of(node).get("addresses") or [] if a.get("type") == kind]
    return out


def observe(kube: Kube, tcp: Obj) -> List[Obj]:
    """The tenant's StatefulSets, Deployments and Pods, with their kinds set (a List's items
    have none)."""
    ns, selector = meta(tcp, "namespace"), f"{TENANT_LABEL}={meta(tcp, 'name')}"
    observed: List[Obj] = []
    for resource in (STATEFULSET, DEPLOYMENT, _POD):
        items, _unused = kube.list(resource.path(ns), label_selector=selector)
        observed += [{**o, "kind": resource.kind} for o in items]
    return observed


def _exposure_inputs(kube: Kube, tcp: Obj) -> Tuple[Obj | None, List[str]]:
    """(the apiserver's Service, the node addresses): what the SANs and endpoint depend on."""
    service = kube.get(SERVICE.path(meta(tcp, "namespace"), service_name(tcp)))
    nodes = node_addresses(kube) if spec_of(tcp)["exposure"]["type"] == "NodePort" else []
    return service, nodes


def status_now(kube: Kube, tcp: Obj, *, now: str | None = None) -> Obj:
    """The status TCP's objects show now."""
    service, nodes = _exposure_inputs(kube, tcp)
    observed = observe(kube, tcp)
    status = derive_status(tcp, observed, now or now_rfc3339(), service=service, node_addresses=nodes)
    promote = spec_of(tcp).get("promoteResources") or {}
    if promote:
        promoted: Obj = {
            "nodes": list(promote.get("nodes") or []),
            "resources": dict(promote.get("resources") or {}),
        }
        if promote.get("resources"):
            quota = kube.get(RESOURCE_QUOTA.path(meta(tcp, "namespace"), quota_name(tcp)))
            used = status_of(quota).get("used") or {}
            promoted["used"] = {k.split(".", 1)[1]: v for k, v in used.items() if k.startswith("requests.")}
        status["promotedResources"] = promoted
    if deploys_virtual_nodes(tcp):
        status["virtualNodes"] = virtual_nodes_status(kube, tcp, observed)
    return status


def virtual_nodes_status(kube: Kube, tcp: Obj, observed: Sequence[Obj] | None = None) -> Obj:
    """The tenant's virtual Nodes as the host sees them: their names, the Pods namespace, how
    many tenant Pods run there, and the agent's state (phase, message), which serves them."""
    ns = pods_namespace(tcp)
    agent_name = virtual_nodes.agent_name(meta(tcp, "name"))
    # status_now has listed the tenant's Deployments already (observe): no second read.
    agent = (
        _find(observed, "Deployment", agent_name)
        if observed is not None
        else kube.get(DEPLOYMENT.path(meta(tcp, "namespace"), agent_name))
    )
    phase, message = _workload_state({**agent, "kind": "Deployment"} if agent else None)
    try:
        pods, _unused = kube.list(
            _POD.path(ns), label_selector=f"{virtual_nodes.TENANT_POD_LABEL}={meta(tcp, 'name')}"
        )
    except KubeError as e:
        if e.status != 404:
            raise
        pods = []
    return {
        "nodes": virtual_nodes_served(tcp),
        "podsNamespace": ns,
        "hostPods": len(pods),
        "agent": {"phase": phase, "message": message},
    }


def write_status(kube: Kube, tcp: Obj, status: Obj) -> Obj:
    return apply_status(kube, TENANT_CONTROL_PLANE, tcp, status)


def _apply(kube: Kube, obj: Obj, out: Outcome, dry_run: bool) -> Obj:
    """Apply OBJ and record whether that created or changed it."""
    before = kube.get(_path(obj))
    what = (
        f"{obj['kind']} {'/'.join(filter(None, (obj['metadata'].get('namespace'), obj['metadata']['name'])))}"
    )
    after = kube.apply(_path(obj), obj, dry_run=dry_run, what=what)
    label = f"{obj['kind']} {obj['metadata']['name']}"
    if before is None:
        out.created.append(label)
    elif _content(before) != _content(after):
        out.updated.append(label)
    return after


def reconcile_objects(
    kube: Kube,
    tcp: Obj,
    out: Outcome,
    *,
    images: Mapping[str, str] | None = None,
    dry_run: bool = False,
    now: datetime.datetime | None = None,
    timeout: float = 300,
) -> None:
    """Write TCP's objects: its Service first (the serving certificate names its cluster IP),
    then the PKI Secrets, then the workloads in render's order.

    During a version upgrade the controller-manager and scheduler are written only once the
    kube-apiserver has rolled to the new version (waiting up to TIMEOUT seconds): the version
    skew policy allows them to be older than the apiserver, never newer."""
    objects = render(tcp, images)
    service_obj = next(
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == service_name(tcp)
    )
    service = _apply(kube, service_obj, out, dry_run)
    _unused, nodes = _exposure_inputs(kube, tcp)
    ns, selector = meta(tcp, "namespace"), f"{TENANT_LABEL}={meta(tcp, 'name')}"
    items, _unused_rv = kube.list(SECRET.path(ns), label_selector=selector)
    existing = {s["metadata"]["name"]: s.get("data") or {} for s in items if _owned(s, meta(tcp, "uid"))}
    now = now or pki.utcnow()
    out.renewed = [f"Secret {name}" for name in due_for_renewal(tcp, existing, now)]
    secrets = render_pki(tcp, existing, now, service=service, node_addresses=nodes)
    due = next_renewal(tcp, secrets)
    out.next_renewal = due.astimezone(pki.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if due else None
    for secret in secrets:
        _apply(kube, secret, out, dry_run)
    cluster_ip = ((service or {}).get("spec") or {}).get("clusterIP")
    advertise = cluster_ip if cluster_ip and _is_ip(cluster_ip) else None
    dns_obj = next(
        (
            o
            for o in objects
            if o["kind"] == "Service" and o["metadata"]["name"] == virtual_dns_service_name(tcp)
        ),
        None,
    )
    dns_ip = None
    if dns_obj is not None:  # its cluster IP is the virtual nodes' Pods' nameserver
        dns_ip = ((_apply(kube, dns_obj, out, dry_run).get("spec") or {}).get("clusterIP")) or None
    apiserver: Obj = {}
    upgrading = upgrade_pending(tcp) and not dry_run
    for obj in render_virtual_host_objects(tcp):
        if obj["kind"] == "Namespace":
            _ensure_pods_namespace(kube, obj, out, dry_run)
        else:
            _apply(kube, obj, out, dry_run)
    for obj in render(tcp, images, pki_secrets=secrets, advertise_address=advertise, virtual_dns_ip=dns_ip):
        if obj["kind"] == "Service" and obj["metadata"]["name"] in (
            service_name(tcp),
            virtual_dns_service_name(tcp),
        ):
            continue
        component = obj["metadata"]["labels"].get("app.kubernetes.io/name")
        if obj["kind"] == "Deployment" and component == APISERVER:
            apiserver = obj
        elif upgrading and obj["kind"] == "Deployment" and component in (CONTROLLER_MANAGER, SCHEDULER):
            # Status says Upgrading while the run waits, not the Ready of the old version.
            write_status(kube, tcp, status_now(kube, tcp))
            _wait_rolled_out(kube, apiserver, spec_of(tcp)["version"], timeout)
            upgrading = False
        _apply(kube, obj, out, dry_run)
    _prune_virtual_nodes(kube, tcp, out, dry_run)


def _prune_virtual_nodes(kube: Kube, tcp: Obj, out: Outcome, dry_run: bool) -> None:
    """Delete what the tenant's virtual nodes had and its spec no longer asks for: all of it once
    promoteResources is gone (or virtualNodes is false), the node reader once nodes are. The
    garbage collector does not: the TenantControlPlane still owns what is in its namespace."""
    ns, name = meta(tcp, "namespace"), meta(tcp, "name")
    wanted = {(o["kind"], o["metadata"]["name"]) for o in render_virtual_host_objects(tcp)}
    gone = [
        o
        for o in _virtual_host_objects(kube, ns, name)
        if (o["kind"], meta(o, "name")) not in wanted and not meta(o, "deletionTimestamp")  # going already
    ]
    if not deploys_virtual_nodes(tcp):
        agent = virtual_nodes.agent_name(name)
        for resource, obj_name in (
            (DEPLOYMENT, agent),  # first: a running agent would make its host objects again
            (CONFIG_MAP, agent),
            (SERVICE, virtual_dns_service_name(tcp)),
            (SERVICE_ACCOUNT, agent),
            (SECRET, f"{name}-virtual-node-agent-kubeconfig"),
        ):
            found = kube.get(resource.path(ns, obj_name))
            if found is not None and _owned(found, meta(tcp, "uid")):
                gone.insert(0 if resource is DEPLOYMENT else len(gone), {**found, "kind": resource.kind})
    for obj in gone:
        kube.delete(
            _path(obj),
            uid=meta(obj, "uid"),
            dry_run=dry_run,
            what=f"delete {obj['kind']} {meta(obj, 'name')}",
        )
        out.deleted.append(f"{obj['kind']} {meta(obj, 'name')}")


def _ensure_pods_namespace(kube: Kube, want: Obj, out: Outcome, dry_run: bool) -> None:
    """Create the virtual nodes' Pods namespace when it is missing. One that exists is only
    read: the deployer holds no patch on namespaces (that would let it relabel any namespace's
    Pod Security level), so a changed level is refused with the fix."""
    name = want["metadata"]["name"]
    current = kube.get(NAMESPACE.path(None, name))
    if current is None:
        # A create (POST), not an apply: server-side apply is a patch, which RBAC asks of the
        # deployer even for a new object.
        query = [("fieldManager", kube.field_manager)] + ([("dryRun", "All")] if dry_run else [])
        kube.request("POST", NAMESPACE.path(), query=query, body=want, what=f"create Namespace {name}")
        out.created.append(f"Namespace {name}")
        return
    labels_now = meta(current, "labels") or {}
    if (
        labels_now.get(TENANT_LABEL) != want["metadata"]["labels"][TENANT_LABEL]
        or labels_now.get(TENANT_NAMESPACE_LABEL) != want["metadata"]["labels"][TENANT_NAMESPACE_LABEL]
    ):
        raise TenantControlPlaneError(
            "metadata.name",
            f"namespace {name} exists and is not this tenant's Pods namespace; give the tenant another"
            " name or remove that namespace",
        )
    enforce = "pod-security.kubernetes.io/enforce"
    if labels_now.get(enforce) != want["metadata"]["labels"][enforce]:
        raise TenantControlPlaneError(
            "spec.promoteResources.podSecurity",
            f"namespace {name} enforces {labels_now.get(enforce)!r}, not"
            f" {want['metadata']['labels'][enforce]!r}; a host admin changes it with"
            f" `kubectl label --overwrite namespace {name} {enforce}=LEVEL` (and warn, audit)",
        )


# The one-time objects of the host admin that virtual nodes need, by kind: their files.
ADMIN_FILE = {
    "ClusterRole": "virtual-node-agent-clusterrole.yaml",
    "PriorityClass": "virtual-resources-priorityclass.yaml",
}


def check_virtual_node_prerequisites(kube: Kube, tcp: Obj) -> None:
    """Refuse, before anything is written, virtual nodes that cannot work: the agent's
    ClusterRole and the quota's PriorityClass are the host admin's, installed once."""
    if not deploys_virtual_nodes(tcp):
        return
    needed = [(CLUSTER_ROLE, virtual_nodes.AGENT_NAME)]
    if (spec_of(tcp)["promoteResources"]).get("resources"):
        needed.append((PRIORITY_CLASS, virtual_nodes.RESOURCES_PRIORITY_CLASS))
    for resource, name in needed:
        if kube.get(resource.path(None, name)) is None:
            raise TenantControlPlaneError(
                "spec.promoteResources",
                f"the host cluster has no {resource.kind} {name}, which virtual nodes need: a cluster"
                f" admin applies roles/tenant_control_plane/files/{ADMIN_FILE[resource.kind]} once"
                " (or set promoteResources.virtualNodes: false)",
            )


def upgrade_pending(tcp: Obj) -> bool:
    """Whether TCP asks for another version than the one its control plane last ran Ready."""
    running = status_of(tcp).get("version")
    return bool(running) and running != spec_of(tcp)["version"]


def _wait_rolled_out(kube: Kube, deployment: Obj, version: str, timeout: float) -> None:
    """Watch DEPLOYMENT until it has rolled out completely (every replica updated and
    available, no old Pod left); a roll that fails or outlasts TIMEOUT raises."""
    ns, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]

    def state(objects: Dict[str, Obj]) -> Tuple[str, str]:
        found = objects.get(name)  # a List's items carry no kind, which _workload_state reads
        return _workload_state({**found, "kind": "Deployment"} if found else None)

    _unused, objects = kube.wait(
        DEPLOYMENT.path(ns),
        lambda objs: state(objs)[0] in ("Ready", "Failed"),
        timeout,
        field_selector=f"metadata.name={name}",
    )
    phase, message = state(objects)
    if phase != "Ready":
        raise TenantControlPlaneError(
            "spec.version",
            f"the kube-apiserver did not roll out {version} ({phase}: {message}) within {timeout:.0f} s;"
            " the controller-manager and scheduler stay on the old version until it does:"
            " look at the kube-apiserver Pods, then run again",
        )


def ensure_present(
    kube: Kube,
    want: Obj,
    *,
    images: Mapping[str, str] | None = None,
    check_mode: bool = False,
    wait_for: str | None = None,
    timeout: float = 300,
) -> Outcome:
    """Make the TenantControlPlane WANT exist with everything it owns, write its status,
    and with WAIT_FOR follow its Pods until it reaches that phase (or a later one).

    Bad input is refused before anything is written: what validate() and validate_update()
    refuse, a shared-etcd prefix another tenant uses, and names that other objects hold."""
    validate(want)
    ns, name = meta(want, "namespace"), meta(want, "name")
    path = TENANT_CONTROL_PLANE.path(ns, name)
    out = Outcome(before=kube.get(path))
    if meta(out.before, "deletionTimestamp"):
        raise TenantControlPlaneError(
            "metadata.name", f"TenantControlPlane {ns}/{name} is being deleted; wait until it is gone"
        )
    if out.before is not None:
        validate_update(out.before, want)
    if spec_of(want)["datastore"]["type"] == "shared":
        others, _unused = kube.list(TENANT_CONTROL_PLANE.path())
        check_shared_prefix(want, others)
        finalizers = want["metadata"].setdefault("finalizers", [])
        if SHARED_KEYS_FINALIZER not in finalizers:
            finalizers.append(SHARED_KEYS_FINALIZER)
    check_names_free(kube, want, out.before)
    check_virtual_node_prerequisites(kube, want)
    if (spec_of(want).get("promoteResources") or {}).get("resources") and not deploys_virtual_nodes(want):
        neighbours, _unused = kube.list(TENANT_CONTROL_PLANE.path(ns))
        clusters, _unused = kube.list(HNCLUSTER.path(ns))
        mine = [
            c
            for c in clusters
            if ((c.get("spec") or {}).get("controlPlaneRef") or {}).get("name") == name
            and ((c.get("spec") or {}).get("controlPlaneRef") or {}).get("namespace", ns) == ns
        ]
        check_promoted_resources(want, mine, neighbours)

    applied = kube.apply(path, want, dry_run=check_mode, what=f"TenantControlPlane {ns}/{name}")
    if out.before is None:
        out.created.append(f"TenantControlPlane {name}")
    elif _user_view(out.before) != _user_view(applied):
        out.updated.append(f"TenantControlPlane {name}")
    out.after = applied
    if check_mode and out.before is None:
        # Nothing of it exists yet: everything would be created.
        probe = copy.deepcopy(applied)
        probe["metadata"]["uid"] = _PLACEHOLDER_UID
        out.created += [
            f"{o['kind']} {o['metadata']['name']}"
            for o in [*_children(probe), *render_virtual_host_objects(probe)]
        ]
        out.changed = True
        return out
    try:
        reconcile_objects(kube, applied, out, images=images, dry_run=check_mode, timeout=timeout)
    except (KubeError, TenantControlPlaneError) as e:
        if not check_mode:
            write_status(kube, applied, _failed(status_now(kube, applied), "ApplyFailed", str(e)))
        raise
    out.changed = bool(out.created or out.updated or out.deleted)
    if check_mode:
        return out
    out.after = write_status(kube, applied, status_now(kube, applied))
    if wait_for:
        out.after = wait_for_phase(kube, out.after, wait_for, timeout)
    return out


def _failed(status: Obj, reason: str, message: str) -> Obj:
    return {**status, "phase": "Failed", "failureReason": reason, "failureMessage": message}


def wait_for_phase(kube: Kube, tcp: Obj, wanted: str, timeout: float) -> Obj:
    """Watch the tenant's Pods (listing again every RESYNC_SECONDS), writing status on every
    change, until it reaches WANTED or fails. A tenant that does not get there in TIMEOUT
    seconds is marked Failed with the components that were not ready, never waited on forever."""
    ns, name = meta(tcp, "namespace"), meta(tcp, "name")
    deadline = time.monotonic() + timeout
    current = {"tcp": tcp}

    def on_event(_pods: Dict[str, Obj]) -> None:
        current["tcp"] = write_status(kube, current["tcp"], status_now(kube, current["tcp"]))

    def done(_pods: Dict[str, Obj]) -> bool:
        phase = status_of(current["tcp"]).get("phase", "")
        return phase == "Failed" or reached(phase, wanted)

    ok = False
    while not ok and time.monotonic() < deadline:
        left = min(RESYNC_SECONDS, deadline - time.monotonic())
        ok, _unused = kube.wait(
            _POD.path(ns), done, left, label_selector=f"{TENANT_LABEL}={name}", on_event=on_event
        )
    st = status_of(current["tcp"])
    if st.get("phase") == "Failed" and wanted != "Failed":
        raise TenantControlPlaneError(
            "status.phase",
            f"TenantControlPlane {ns}/{name} failed: {st.get('failureReason')}: {st.get('failureMessage')}",
        )
    if not ok:
        waiting = [
            f"{c['type']}: {c.get('message')}"
            for c in st.get("conditions") or []
            if c.get("status") != "True" and c.get("type") != "Ready"
        ]
        not_ready = next(
            (
                c["type"].replace("Ready", "NotReady")
                for c in st.get("conditions") or []
                if c.get("status") != "True"
            ),
            "NotReady",
        )
        message = f"not {wanted} after {timeout:.0f} s: " + "; ".join(waiting)
        current["tcp"] = write_status(kube, current["tcp"], _failed(st, not_ready, message))
        raise TenantControlPlaneError("status.phase", f"TenantControlPlane {ns}/{name} is {message}")
    return current["tcp"]


def ensure_absent(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    keep_datastore: bool = False,
    images: Mapping[str, str] | None = None,
    check_mode: bool = False,
    timeout: float = 300,
) -> Outcome:
    """Delete a tenant and everything it owned: its objects go with it (foreground deletion:
    the TenantControlPlane is gone only once they are), then its etcd volumes, or with a
    shared etcd its keys there, unless KEEP_DATASTORE. A tenant that does not exist, with
    no volumes left, is no change."""
    path = TENANT_CONTROL_PLANE.path(namespace, name)
    tcp = kube.get(path)
    out = Outcome(before=tcp)
    claims = [] if keep_datastore else _claims(kube, namespace, name)
    outside = _virtual_host_objects(kube, namespace, name)
    if tcp is None and not claims and not outside:
        return out
    out.changed = True
    shared = tcp is not None and spec_of(tcp)["datastore"]["type"] == "shared"
    if tcp is not None:
        out.deleted.append(f"TenantControlPlane {name}")
    out.deleted += [f"PersistentVolumeClaim {meta(c, 'name')}" for c in claims]
    out.deleted += [f"{o['kind']} {meta(o, 'name')}" for o in outside]
    if check_mode:
        if shared and not keep_datastore:
            out.deleted.append(f"the keys under {shared_prefix(tcp)}/ in the shared etcd")
        return out
    if tcp is not None:
        if not meta(tcp, "deletionTimestamp"):
            kube.delete(
                path,
                uid=meta(tcp, "uid"),
                propagation="Foreground",
                what=f"delete TenantControlPlane {namespace}/{name}",
            )
        if SHARED_KEYS_FINALIZER in (meta(tcp, "finalizers") or []):
            _release_shared_keys(kube, tcp, out, keep=keep_datastore, images=images, timeout=timeout)
        _wait_gone(kube, TENANT_CONTROL_PLANE.path(namespace), name, timeout, "TenantControlPlane")
    # After the agent is gone with the tenant: it would otherwise make again what goes here.
    for obj in _virtual_host_objects(kube, namespace, name):
        kube.delete(_path(obj), uid=meta(obj, "uid"), what=f"delete {obj['kind']} {meta(obj, 'name')}")
    for obj in outside:
        if obj["kind"] == "Namespace":  # its Pods, copies and quota go with it
            _wait_gone(kube, NAMESPACE.path(), meta(obj, "name"), timeout, "Namespace")
    for claim in _claims(kube, namespace, name) if not keep_datastore else []:
        kube.delete(PVC.path(namespace, meta(claim, "name")), uid=meta(claim, "uid"))
    if not keep_datastore:
        ok, left = kube.wait(
            PVC.path(namespace), lambda objs: not objs, timeout, label_selector=f"{TENANT_LABEL}={name}"
        )
        if not ok:
            raise TenantControlPlaneError(
                "state",
                f"the etcd volumes {', '.join(sorted(left))} of {namespace}/{name}"
                f" are still there after {timeout:.0f} s",
            )
    return out


def _virtual_host_objects(kube: Kube, namespace: str, name: str) -> List[Obj]:
    """What render_virtual_host_objects made for tenant NAMESPACE/NAME outside its namespace
    (found by its labels, so a tenant already gone still gets them removed); the RoleBinding and
    quota in the Pods namespace go with it."""
    selector = f"{TENANT_LABEL}={name},{TENANT_NAMESPACE_LABEL}={namespace}"
    found: List[Obj] = []
    for resource in (NAMESPACE, CLUSTER_ROLE_BINDING, CLUSTER_ROLE):
        items, _unused = kube.list(resource.path(), label_selector=selector)
        found += [{**o, "kind": resource.kind} for o in items]
    return found


def _release_shared_keys(
    kube: Kube, tcp: Obj, out: Outcome, *, keep: bool, images: Mapping[str, str] | None, timeout: float
) -> None:
    """Once the tenant's own objects are gone (its apiserver writes no more), remove its
    keys from the shared etcd unless KEEP, then let the TenantControlPlane go."""
    ns, name = meta(tcp, "namespace"), meta(tcp, "name")
    ok, now = kube.wait(
        TENANT_CONTROL_PLANE.path(ns),
        lambda objs: meta(objs.get(name), "finalizers") == [SHARED_KEYS_FINALIZER],
        timeout,
        field_selector=f"metadata.name={name}",
    )
    if not ok:
        left = sorted(set(meta(now.get(name), "finalizers") or []) - {SHARED_KEYS_FINALIZER})
        raise TenantControlPlaneError(
            "state", f"the objects of {ns}/{name} are still there after {timeout:.0f} s (finalizers {left})"
        )
    if not keep:
        pod = shared_keys_cleanup_pod(tcp, {**default_images(spec_of(tcp)["version"]), **(images or {})})
        pod_name = meta(pod, "name")
        try:
            oneshot_pods.run(kube, pod, "Succeeded", timeout)
            removed = oneshot_pods.log(kube, ns, pod_name, ETCD_CLEANUP).strip()
        except oneshot_pods.OneShotError as e:
            raise TenantControlPlaneError(
                "state",
                f"the keys of {ns}/{name} under {shared_prefix(tcp)}/ in the shared etcd were not removed"
                f" ({e}); the TenantControlPlane stays in Deleting until a run removes them,"
                " or delete it with keep_datastore=true to leave them",
            ) from e
        finally:
            oneshot_pods.delete(kube, ns, pod_name, wait=False)
        out.deleted.append(f"{removed or 'the'} keys under {shared_prefix(tcp)}/ in the shared etcd")
    current = kube.get(TENANT_CONTROL_PLANE.path(ns, name))
    finalizers = meta(current, "finalizers") or []
    if SHARED_KEYS_FINALIZER in finalizers:
        index = finalizers.index(SHARED_KEYS_FINALIZER)
        kube.json_patch(
            TENANT_CONTROL_PLANE.path(ns, name),
            # test first: a finalizer list that changed meanwhile is not cut at the wrong place
            [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": SHARED_KEYS_FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
            what=f"release TenantControlPlane {ns}/{name}",
        )


def shared_keys_cleanup_pod(tcp: Obj, images: Mapping[str, str]) -> Obj:
    """A Pod that runs `etcdctl del --prefix` on the tenant's key prefix in the shared etcd,
    with the tenant's client certificate for it when it has one. etcdctl prints how many
    keys it removed. Not owned by the tenant: it outlives the tenant's own objects."""
    shared = spec_of(tcp)["datastore"]["shared"]
    ns, name = meta(tcp, "namespace"), meta(tcp, "name")
    command = ["etcdctl", f"--endpoints={','.join(shared['endpoints'])}", "--dial-timeout=10s"]
    mounts: List[Obj] = []
    volumes: List[Obj] = []
    if shared.get("clientSecretName"):
        certs = f"{PKI_DIR}/datastore-client"
        command += [f"--cacert={certs}/ca.crt", f"--cert={certs}/tls.crt", f"--key={certs}/tls.key"]
        mounts = [{"name": "datastore-client", "mountPath": certs, "readOnly": True}]
        volumes = [
            {
                "name": "datastore-client",
                "secret": {"secretName": shared["clientSecretName"], "defaultMode": SECRET_MODE},
            }
        ]
    # The trailing slash: /tenants/blue must not take /tenants/blue2's keys with it.
    command += ["del", "--prefix", shared_prefix(tcp).rstrip("/") + "/"]
    container = oneshot_pods.container(ETCD_CLEANUP, images[ETCD], command, mounts)
    spec = _pod_spec(tcp, ETCD_CLEANUP, container, volumes, 1)
    spec.update(restartPolicy="Never", activeDeadlineSeconds=int(oneshot_pods.TIMEOUT))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-{ETCD_CLEANUP}", "namespace": ns, "labels": labels(tcp, ETCD_CLEANUP)},
        "spec": spec,
    }


def _claims(kube: Kube, namespace: str, name: str) -> List[Obj]:
    items, _unused = kube.list(PVC.path(namespace), label_selector=f"{TENANT_LABEL}={name}")
    return items


def _wait_gone(kube: Kube, collection: str, name: str, timeout: float, what: str) -> None:
    ok, objects = kube.wait(
        collection, lambda objs: name not in objs, timeout, field_selector=f"metadata.name={name}"
    )
    if not ok:
        left = meta(objects.get(name), "finalizers") or []
        raise TenantControlPlaneError(
            "state",
            f"{what} {name} still exists after {timeout:.0f} s"
            + (f"; it waits for the finalizers {', '.join(left)}" if left else ""),
        )


def admin_kubeconfig(kube: Kube, tcp: Obj, server: str | None = None) -> bytes:
    """The tenant's admin kubeconfig (key material: never log it), with SERVER instead of
    the endpoint when given (an address this machine reaches the apiserver at)."""
    ns, secret = meta(tcp, "namespace"), secret_names(tcp)["admin-kubeconfig"]
    obj = kube.get(SECRET.path(ns, secret))
    try:
        data = base64.b64decode(obj["data"]["kubeconfig"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise TenantControlPlaneError(
            "admin_kubeconfig", f"Secret {ns}/{secret} has no kubeconfig yet; apply the tenant first"
        ) from None
    if not server:
        return data
    doc = json.loads(data)
    for cluster in doc.get("clusters") or []:
        cluster["cluster"]["server"] = server
    return json.dumps(doc, indent=2).encode()


def _user_view(tcp: Obj | None) -> Obj | None:
    """What a task sets on a TenantControlPlane: a change here is a change of the task."""
    if tcp is None:
        return None
    md = tcp["metadata"]
    return {
        "labels": md.get("labels") or {},
        "annotations": md.get("annotations") or {},
        "spec": tcp.get("spec") or {},
    }


def user_view(tcp: Obj | None) -> Obj | None:
    """For diff mode: the fields a task sets, plus the status it reports."""
    view = _user_view(tcp)
    if view is not None and tcp is not None:
        view = {"metadata": {"name": tcp["metadata"]["name"], **view}, "status": status_of(tcp)}
    return view


def newest_version() -> str:
    """The newest Kubernetes version this collection builds."""
    return max(BUILT_VERSIONS, key=lambda v: (*_minor(v), _patch(v)))

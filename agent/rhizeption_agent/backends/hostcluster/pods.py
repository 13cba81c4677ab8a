"""A tenant Pod as a host Pod, and the host Pod's status as the tenant Pod's status.

Pure functions: the live provider fetches and writes, these decide. The rules:

- the host Pod is the tenant Pod's containers, init containers, volumes, environment,
  probes, resources and security context, unchanged except for the names of what it
  references (ConfigMaps and Secrets become their host copies, see ``references``) and the
  downward API, which reads annotations the agent writes (the host Pod's own name,
  namespace, uid, node and labels are not the tenant's);
- the tenant's scheduling is done: the host Pod is pinned to the promoted host node of a
  mirror node, and free (the host scheduler's choice) for the resources node;
- no host credential reaches it: ``automountServiceAccountToken: false``, a host service
  account the deployer made without rights, and each ``serviceAccountToken`` projection
  replaced by a key of a Secret that the agent fills from the tenant's own TokenRequest;
- ``enableServiceLinks: false``: the host kubelet would hand the host namespace's Services
  to the Pod; the tenant's Service variables are written by ``service_links`` instead;
- what the host cannot honour is refused as a whole (``refusals``), never half translated:
  what the host namespace's Pod Security level forbids, and what this translation does not
  carry yet (persistent volumes, ephemeral containers, runtime classes, ...).
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import names, podsecurity

Obj = dict[str, Any]

REASON_POD_SECURITY = "HostPodSecurity"
REASON_UNSUPPORTED = "UnsupportedFeature"
REASON_HOST_UNSCHEDULABLE = "HostUnschedulable"
QUOTA_RESOURCES = ("cpu", "memory")  # what the Pods namespace's quota counts (requests)
HOST_MANAGED_CONDITIONS = (
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
    "DisruptionTarget",
)
DEFAULT_TOKEN_SECONDS = 3600

# Pod spec fields, by what the translation does with them. A field in none of these sets
# (a field newer than this code) refuses the Pod: better than running it without it.
PASSED_FIELDS = frozenset(
    {
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "activeDeadlineSeconds",
        "shareProcessNamespace",
        "securityContext",  # checked against the Pod Security level
        "hostNetwork",  # the same
        "hostPID",
        "hostIPC",
        "hostUsers",
        "os",
        "resources",
        "hostAliases",
    }
)
# Decided in the tenant already (its scheduler bound the Pod to the virtual node), or
# meaningless on the host (tenant priority classes, tenant readiness gates).
DROPPED_FIELDS = frozenset(
    {
        "nodeName",
        "nodeSelector",
        "affinity",
        "topologySpreadConstraints",
        "schedulerName",
        "schedulingGates",
        "priority",
        "priorityClassName",
        "preemptionPolicy",
        "overhead",
        "readinessGates",
        "subdomain",  # a tenant DNS name; the tenant DNS serves it (docs/virtual-nodes.md)
        "serviceAccount",
    }
)
TRANSLATED_FIELDS = frozenset(
    {
        "containers",
        "initContainers",
        "volumes",
        "imagePullSecrets",
        "serviceAccountName",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "dnsPolicy",
        "dnsConfig",
        "hostname",
        "tolerations",
    }
)
REFUSED_FIELDS = {
    "ephemeralContainers": "ephemeral containers are not carried to the host (kubectl debug)",
    "runtimeClassName": "the tenant's RuntimeClasses do not exist in the host cluster",
    "resourceClaims": "dynamic resource allocation is not carried to the host",
    "setHostnameAsFQDN": "the Pod's FQDN in the host is not its tenant FQDN",
    "hostnameOverride": "not carried to the host",
}
VOLUME_TYPES = ("emptyDir", "configMap", "secret", "downwardAPI", "projected", "hostPath")
PROJECTION_TYPES = ("configMap", "secret", "downwardAPI", "serviceAccountToken")

_LABEL_REF = re.compile(r"^metadata\.labels\['(.+)'\]$")
_ANNOTATION_REF = re.compile(r"^metadata\.annotations\['(.+)'\]$")


@dataclass(frozen=True)
class HostSettings:
    """Where and how one tenant's Pods run in the host cluster (the agent's configuration)."""

    tenant: str  # the TenantControlPlane's name
    namespace: str  # the host namespace of the tenant's Pods
    pod_security: str = podsecurity.DEFAULT_LEVEL  # what that namespace enforces
    service_account: str = "default"  # a host service account without rights, never mounted
    cluster_domain: str = "cluster.local"  # the tenant's
    dns_ip: str | None = None  # the nameserver answering tenant names (docs/virtual-nodes.md)
    dns_hosts_file: str | None = None  # where the Service sync writes the names dns_ip answers
    api_server_ip: str | None = None  # the tenant API server's host Service: kubernetes.default
    # 443, as the kubernetes Service of any cluster: the host kubelet always adds the host API
    # server's KUBERNETES_PORT_443_TCP* variables, which only variables of the same names replace.
    api_server_port: int = 443
    # The host PriorityClass of the resources node's Pods, which the Pods namespace's quota
    # counts (virtual_nodes.RESOURCES_PRIORITY_CLASS when deployed); None: no quota to count in.
    resources_priority_class: str | None = None


@dataclass(frozen=True)
class Placement:
    """The virtual node a tenant Pod is bound to, and where its Pods go in the host."""

    node_name: str  # the tenant Node
    node_address: str  # its InternalIP: the agent's address, the tenant Pod's status.hostIP
    host_node: str | None = None  # a mirror node's host node; None for the resources node
    host_node_taints: tuple[Obj, ...] = ()


@dataclass(frozen=True)
class Refusal:
    field: str  # a field path of the tenant Pod
    message: str
    reason: str  # REASON_POD_SECURITY or REASON_UNSUPPORTED

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class Refused(ValueError):
    def __init__(self, refusals: Sequence[Refusal]) -> None:
        super().__init__("; ".join(str(r) for r in refusals))
        self.refusals = list(refusals)


@dataclass(frozen=True)
class Reference:
    kind: str  # configmap or secret
    name: str  # the tenant object's name, in the Pod's namespace
    optional: bool  # the Pod starts without it (optional: true, or an image pull secret)


@dataclass(frozen=True)
class TokenRequest:
    """A TokenRequest the agent makes in the tenant for one serviceAccountToken projection."""

    key: str  # the key of the Pod's token Secret that holds the token
    service_account: str
    audience: str | None  # None: the tenant API server's own audience
    expiration_seconds: int


@dataclass(frozen=True)
class ServiceLink:
    """A tenant Service as the Pod's environment sees it: its name and the host address
    that reaches it (the host ClusterIP of its synced copy)."""

    name: str
    ip: str
    ports: tuple[tuple[str, int, str], ...] = field(default=())  # (name, port, protocol)


# -- refusals --------------------------------------------------------------------------------
def refusals(pod: Obj, settings: HostSettings) -> list[Refusal]:
    """Everything of POD the host cannot run as asked, each naming its field."""
    spec = pod.get("spec") or {}
    found = [
        Refusal(v.field, v.message, REASON_POD_SECURITY)
        for v in podsecurity.violations(pod, settings.pod_security)
    ]
    known = PASSED_FIELDS | DROPPED_FIELDS | TRANSLATED_FIELDS
    for name in sorted(spec):
        if name in REFUSED_FIELDS and spec[name]:
            found.append(Refusal(f"spec.{name}", REFUSED_FIELDS[name], REASON_UNSUPPORTED))
        elif name not in known and name not in REFUSED_FIELDS and spec[name] not in (None, False, [], {}, ""):
            found.append(Refusal(f"spec.{name}", "not translated to the host cluster", REASON_UNSUPPORTED))
    for i, vol in enumerate(spec.get("volumes") or []):
        for kind in vol:
            if kind == "name":
                continue
            if kind == "persistentVolumeClaim":
                found.append(
                    Refusal(
                        f"spec.volumes[{i}].persistentVolumeClaim",
                        "PersistentVolumeClaims are not synced to the host cluster yet",
                        REASON_UNSUPPORTED,
                    )
                )
            elif kind not in VOLUME_TYPES:
                found.append(
                    Refusal(
                        f"spec.volumes[{i}].{kind}",
                        f"volume type not carried to the host cluster (supported: {', '.join(VOLUME_TYPES)})",
                        REASON_UNSUPPORTED,
                    )
                )
        for j, source in enumerate((vol.get("projected") or {}).get("sources") or []):
            for kind in source:
                if kind not in PROJECTION_TYPES:
                    found.append(
                        Refusal(
                            f"spec.volumes[{i}].projected.sources[{j}].{kind}",
                            "projection not carried to the host cluster"
                            f" (supported: {', '.join(PROJECTION_TYPES)})",
                            REASON_UNSUPPORTED,
                        )
                    )
        for where, items in _downward_items(f"spec.volumes[{i}]", vol):
            for j, item in enumerate(items):
                path = (item.get("fieldRef") or {}).get("fieldPath")
                if path and _field_path(path, volume=True) is None:
                    found.append(
                        Refusal(
                            f"{where}.items[{j}].fieldRef.fieldPath",
                            f"{path!r} is not translated",
                            REASON_UNSUPPORTED,
                        )
                    )
    for base, ctr in _containers(spec):
        for j, env in enumerate(ctr.get("env") or []):
            path = ((env.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if path and _field_path(path, volume=False) is None:
                found.append(
                    Refusal(
                        f"{base}.env[{j}].valueFrom.fieldRef.fieldPath",
                        f"{path!r} is not translated",
                        REASON_UNSUPPORTED,
                    )
                )
    return found


def _containers(spec: Obj) -> Iterable[tuple[str, Obj]]:
    for group in ("initContainers", "containers"):
        for i, ctr in enumerate(spec.get(group) or []):
            yield f"spec.{group}[{i}]", ctr


def _downward_items(base: str, vol: Obj) -> Iterable[tuple[str, list[Obj]]]:
    """(field path, items) of each downward API list in volume VOL at field path BASE."""
    if "downwardAPI" in vol:
        yield f"{base}.downwardAPI", (vol["downwardAPI"] or {}).get("items") or []
    for j, source in enumerate((vol.get("projected") or {}).get("sources") or []):
        if "downwardAPI" in source:
            yield (
                f"{base}.projected.sources[{j}].downwardAPI",
                (source["downwardAPI"] or {}).get("items") or [],
            )


# -- the downward API ------------------------------------------------------------------------
def _field_path(path: str, *, volume: bool) -> str | None:
    """The host Pod field that holds what tenant fieldPath PATH reads; None when there is none."""
    simple = {
        "metadata.name": f"metadata.annotations['{names.NAME_ANNOTATION}']",
        "metadata.namespace": f"metadata.labels['{names.NAMESPACE_LABEL}']",
        "metadata.uid": f"metadata.labels['{names.UID_LABEL}']",
        "spec.nodeName": f"metadata.annotations['{names.NODE_ANNOTATION}']",
        "spec.serviceAccountName": f"metadata.annotations['{names.SERVICE_ACCOUNT_ANNOTATION}']",
        "status.hostIP": f"metadata.annotations['{names.HOST_IP_ANNOTATION}']",
        "status.hostIPs": f"metadata.annotations['{names.HOST_IP_ANNOTATION}']",
        # The host Pod's address is the tenant Pod's: it is the Pod that runs.
        "status.podIP": "status.podIP",
        "status.podIPs": "status.podIPs",
    }
    if volume:  # a whole map is a file, never an environment variable
        simple["metadata.labels"] = f"metadata.annotations['{names.LABELS_ANNOTATION}']"
        simple["metadata.annotations"] = f"metadata.annotations['{names.ANNOTATIONS_ANNOTATION}']"
    if path in simple:
        return simple[path]
    m = _LABEL_REF.match(path)
    if m:
        return f"metadata.labels['{names.host_label_key(m.group(1))}']"
    m = _ANNOTATION_REF.match(path)
    if m:
        return f"metadata.annotations['{names.host_annotation_key(m.group(1))}']"
    return None


def _downward_text(values: dict[str, str] | None) -> str:
    """A map as the kubelet writes it into a downward API file: key="value" lines, sorted."""
    return "".join(f"{k}={_quote(v)}\n" for k, v in sorted((values or {}).items()))


def _quote(value: str) -> str:
    # Go's strconv.Quote for the printable text labels and annotations hold.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _referenced_field_paths(spec: Obj) -> set[str]:
    paths: set[str] = set()
    for vol in spec.get("volumes") or []:
        for _where, items in _downward_items("", vol):
            paths.update((i.get("fieldRef") or {}).get("fieldPath", "") for i in items)
    for _base, ctr in _containers(spec):
        for env in ctr.get("env") or []:
            paths.add(((env.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", ""))
    paths.discard("")
    return paths


# -- names and metadata ----------------------------------------------------------------------
def host_pod_name(pod: Obj, settings: HostSettings) -> str:
    meta = pod["metadata"]
    return names.host_name(settings.tenant, meta["namespace"], meta["name"], "pod")


def host_pod_metadata(pod: Obj, settings: HostSettings, placement: Placement) -> Obj:
    """The host Pod's metadata: links to the tenant Pod, the tenant labels under host keys,
    and what the downward API reads. The live code applies it again when the tenant Pod's
    labels or annotations change (the kubelet then rewrites downward API files)."""
    meta = pod["metadata"]
    spec = pod.get("spec") or {}
    tenant_labels = meta.get("labels") or {}
    tenant_annotations = meta.get("annotations") or {}
    labels = {
        **names.link_labels(settings.tenant, meta["namespace"], "pod", meta.get("uid", "")),
        **names.host_labels(tenant_labels),
    }
    annotations = {
        names.NAME_ANNOTATION: meta["name"],
        names.NODE_ANNOTATION: placement.node_name,
        names.HOST_IP_ANNOTATION: placement.node_address,
        names.SERVICE_ACCOUNT_ANNOTATION: _service_account(spec),
        names.LABELS_ANNOTATION: _downward_text(tenant_labels),
    }
    # Tenant annotations can be large (last-applied-configuration): only the ones read.
    for path in sorted(_referenced_field_paths(spec)):
        if path == "metadata.annotations":
            annotations[names.ANNOTATIONS_ANNOTATION] = _downward_text(tenant_annotations)
        m = _ANNOTATION_REF.match(path)
        if m:
            annotations[names.host_annotation_key(m.group(1))] = tenant_annotations.get(m.group(1), "")
    return {
        "name": host_pod_name(pod, settings),
        "namespace": settings.namespace,
        "labels": labels,
        "annotations": annotations,
    }


def _service_account(spec: Obj) -> str:
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"


# -- the Pod -----------------------------------------------------------------------------------
def translate_pod(
    pod: Obj, settings: HostSettings, placement: Placement, services: Sequence[ServiceLink] = ()
) -> Obj:
    """The host Pod for tenant POD bound to PLACEMENT's virtual node. SERVICES: the tenant
    Services of the Pod's namespace (for its environment). Raises Refused with every
    field the host cannot honour."""
    problems = refusals(pod, settings)
    if problems:
        raise Refused(problems)
    meta = pod["metadata"]
    spec = pod.get("spec") or {}
    namespace = meta["namespace"]
    host_spec: Obj = {k: copy.deepcopy(v) for k, v in spec.items() if k in PASSED_FIELDS}
    host_spec.update(
        serviceAccountName=settings.service_account,
        automountServiceAccountToken=False,
        enableServiceLinks=False,
        hostname=spec.get("hostname") or _hostname(meta["name"]),
        volumes=[_volume(v, settings, pod) for v in spec.get("volumes") or []],
    )
    env = service_links(
        services if spec.get("enableServiceLinks", True) else (),
        kubernetes=_kubernetes_link(settings),
    )
    for group in ("initContainers", "containers"):
        if spec.get(group):
            host_spec[group] = [_container(c, settings, namespace, env) for c in spec[group]]
    if spec.get("imagePullSecrets"):
        host_spec["imagePullSecrets"] = [
            {"name": names.host_name(settings.tenant, namespace, s["name"], "secret")}
            for s in spec["imagePullSecrets"]
        ]
    _dns(host_spec, spec, settings, namespace)
    if settings.api_server_ip and not spec.get("hostNetwork"):
        # In-cluster clients that use the name rather than the environment.
        host_spec["hostAliases"] = [
            *host_spec.get("hostAliases", []),
            {
                "ip": settings.api_server_ip,
                "hostnames": [
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    f"kubernetes.default.svc.{settings.cluster_domain}",
                ],
            },
        ]
    if placement.host_node:
        # The scheduler still checks resources and taints, which nodeName would skip.
        host_spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": [placement.host_node]}
                            ]
                        }
                    ]
                }
            }
        }
    elif settings.resources_priority_class:
        host_spec["priorityClassName"] = settings.resources_priority_class
        for group in ("initContainers", "containers"):
            for ctr in host_spec.get(group) or []:
                _say_no_request(ctr)
    tolerations = host_tolerations(spec.get("tolerations") or [], placement.host_node_taints)
    if tolerations:
        host_spec["tolerations"] = tolerations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": host_pod_metadata(pod, settings, placement),
        "spec": host_spec,
    }


def _hostname(name: str) -> str:
    # The container's hostname is the tenant Pod's name, as on any node (a label: no dots).
    return name.replace(".", "-")[: names.MAX_LABEL].rstrip("-")


def _kubernetes_link(settings: HostSettings) -> ServiceLink | None:
    if not settings.api_server_ip:
        return None
    return ServiceLink("kubernetes", settings.api_server_ip, (("https", settings.api_server_port, "TCP"),))


def _dns(host_spec: Obj, spec: Obj, settings: HostSettings, namespace: str) -> None:
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if spec.get("dnsConfig"):
        host_spec["dnsConfig"] = copy.deepcopy(spec["dnsConfig"])
    if policy in ("Default", "None") or (policy == "ClusterFirst" and spec.get("hostNetwork")):
        host_spec["dnsPolicy"] = "Default" if policy == "ClusterFirst" else policy
        return
    if not settings.dns_ip:
        # No tenant DNS: the node's resolvers, never the host cluster's DNS (its names are not the tenant's).
        host_spec["dnsPolicy"] = "Default"
        return
    domain = settings.cluster_domain
    given = spec.get("dnsConfig") or {}
    options = copy.deepcopy(given.get("options") or [])
    if not any(o.get("name") == "ndots" for o in options):
        options.insert(0, {"name": "ndots", "value": "5"})  # the kubelet's ClusterFirst default
    host_spec["dnsPolicy"] = "None"
    host_spec["dnsConfig"] = {
        "nameservers": _unique([settings.dns_ip, *(given.get("nameservers") or [])]),
        "searches": _unique(
            [f"{namespace}.svc.{domain}", f"svc.{domain}", domain, *(given.get("searches") or [])]
        ),
        "options": options,
    }


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def host_tolerations(tolerations: Sequence[Obj], host_taints: Sequence[Obj]) -> list[Obj]:
    """The tenant Pod's tolerations that tolerate a taint of the promoted host node, and no
    others: a tenant must not get past the host's other taints (control-plane nodes, say)."""
    return [copy.deepcopy(t) for t in tolerations if any(tolerates(t, taint) for taint in host_taints)]


def tolerates(toleration: Obj, taint: Obj) -> bool:
    """Kubernetes' rule: does TOLERATION tolerate TAINT?"""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    if not toleration.get("key"):
        return operator == "Exists"
    if toleration["key"] != taint.get("key"):
        return False
    return operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or "")


def _say_no_request(ctr: Obj) -> None:
    """A container that requests no cpu or memory (nor limits it) says so with an explicit 0:
    the host quota admits only containers that name what it counts, and 0 is what the tenant's
    scheduler counted for them. (A LimitRange default would make each such container cost the
    host more than the tenant counted, and leave the host node full before the tenant's.)"""
    resources = ctr.setdefault("resources", {})
    for name in QUOTA_RESOURCES:
        if name not in (resources.get("requests") or {}) and name not in (resources.get("limits") or {}):
            resources.setdefault("requests", {})[name] = "0"


def _container(ctr: Obj, settings: HostSettings, namespace: str, links: list[Obj]) -> Obj:
    out = copy.deepcopy(ctr)
    own = {e["name"] for e in ctr.get("env") or []}
    env = [dict(e) for e in links if e["name"] not in own]  # the container's own value wins
    for var in out.get("env") or []:
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            source["fieldRef"]["fieldPath"] = _field_path(source["fieldRef"]["fieldPath"], volume=False)
        for key, kind in (("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")):
            if key in source:
                source[key]["name"] = names.host_name(settings.tenant, namespace, source[key]["name"], kind)
        env.append(var)
    if env:
        out["env"] = env
    for source in out.get("envFrom") or []:
        for key, kind in (("configMapRef", "configmap"), ("secretRef", "secret")):
            if key in source:
                source[key]["name"] = names.host_name(settings.tenant, namespace, source[key]["name"], kind)
    return out


def _volume(vol: Obj, settings: HostSettings, pod: Obj) -> Obj:
    namespace = pod["metadata"]["namespace"]
    out = copy.deepcopy(vol)
    if "configMap" in out:
        out["configMap"]["name"] = names.host_name(
            settings.tenant, namespace, out["configMap"]["name"], "configmap"
        )
    if "secret" in out:
        out["secret"]["secretName"] = names.host_name(
            settings.tenant, namespace, out["secret"]["secretName"], "secret"
        )
    if "downwardAPI" in out:
        _translate_items((out["downwardAPI"] or {}).get("items") or [])
    if "projected" in out:
        sources = []
        for j, source in enumerate((out["projected"] or {}).get("sources") or []):
            if "configMap" in source:
                source["configMap"]["name"] = names.host_name(
                    settings.tenant, namespace, source["configMap"]["name"], "configmap"
                )
            if "secret" in source:
                source["secret"]["name"] = names.host_name(
                    settings.tenant, namespace, source["secret"]["name"], "secret"
                )
            if "downwardAPI" in source:
                _translate_items((source["downwardAPI"] or {}).get("items") or [])
            if "serviceAccountToken" in source:
                # The tenant's token, from its TokenRequest, in the Pod's token Secret: the host
                # kubelet would ask the host API server for a host token.
                token = source["serviceAccountToken"]
                sources.append(
                    {
                        "secret": {
                            "name": names.token_secret_name(
                                settings.tenant, namespace, pod["metadata"]["name"]
                            ),
                            "items": [{"key": _token_key(vol["name"], j), "path": token["path"]}],
                        }
                    }
                )
                continue
            sources.append(source)
        out["projected"]["sources"] = sources
    return out


def _translate_items(items: list[Obj]) -> None:
    for item in items:
        if "fieldRef" in item:
            item["fieldRef"]["fieldPath"] = _field_path(item["fieldRef"]["fieldPath"], volume=True)


def _token_key(volume: str, source_index: int) -> str:
    return f"{volume}.{source_index}"


# -- what the agent copies or makes for a Pod -------------------------------------------------
def references(pod: Obj) -> list[Reference]:
    """The tenant ConfigMaps and Secrets POD reads (volumes, projections, env, envFrom,
    image pull secrets), each once; optional only when every use of it is optional."""
    found: dict[tuple[str, str], bool] = {}

    def add(kind: str, name: str | None, optional: bool | None) -> None:
        if name:
            found[(kind, name)] = found.get((kind, name), True) and bool(optional)

    spec = pod.get("spec") or {}
    for vol in spec.get("volumes") or []:
        if "configMap" in vol:
            add("configmap", vol["configMap"].get("name"), vol["configMap"].get("optional"))
        if "secret" in vol:
            add("secret", vol["secret"].get("secretName"), vol["secret"].get("optional"))
        for source in (vol.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                add("configmap", source["configMap"].get("name"), source["configMap"].get("optional"))
            if "secret" in source:
                add("secret", source["secret"].get("name"), source["secret"].get("optional"))
    for _base, ctr in _containers(spec):
        for var in ctr.get("env") or []:
            source = var.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                add(
                    "configmap",
                    source["configMapKeyRef"].get("name"),
                    source["configMapKeyRef"].get("optional"),
                )
            if "secretKeyRef" in source:
                add("secret", source["secretKeyRef"].get("name"), source["secretKeyRef"].get("optional"))
        for source in ctr.get("envFrom") or []:
            if "configMapRef" in source:
                add("configmap", source["configMapRef"].get("name"), source["configMapRef"].get("optional"))
            if "secretRef" in source:
                add("secret", source["secretRef"].get("name"), source["secretRef"].get("optional"))
    for secret in spec.get("imagePullSecrets") or []:
        add("secret", secret.get("name"), True)  # the kubelet pulls without a missing one
    return [Reference(kind, name, optional) for (kind, name), optional in sorted(found.items())]


def token_requests(pod: Obj) -> list[TokenRequest]:
    """One TokenRequest per serviceAccountToken projection of POD, bound to the tenant Pod."""
    spec = pod.get("spec") or {}
    out = []
    for vol in spec.get("volumes") or []:
        for j, source in enumerate((vol.get("projected") or {}).get("sources") or []):
            token = source.get("serviceAccountToken")
            if token is not None:
                out.append(
                    TokenRequest(
                        key=_token_key(vol["name"], j),
                        service_account=_service_account(spec),
                        audience=token.get("audience") or None,
                        expiration_seconds=int(token.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS),
                    )
                )
    return out


def token_secret(pod: Obj, settings: HostSettings, tokens: dict[str, str]) -> Obj:
    """The host Secret of POD's tokens (key -> token, from the tenant's TokenRequests)."""
    meta = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.token_secret_name(settings.tenant, meta["namespace"], meta["name"]),
            "namespace": settings.namespace,
            "labels": names.link_labels(settings.tenant, meta["namespace"], "token", meta.get("uid", "")),
            "annotations": {names.NAME_ANNOTATION: meta["name"]},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(tokens.items())},
    }


# Secret types the host validates as the tenant did; a service-account token Secret becomes
# Opaque: with its type (and the service-account annotation) the host's token controller
# would treat it as a host service account's.
KEPT_SECRET_TYPES = frozenset(
    {
        "Opaque",
        "kubernetes.io/tls",
        "kubernetes.io/dockerconfigjson",
        "kubernetes.io/dockercfg",
        "kubernetes.io/basic-auth",
        "kubernetes.io/ssh-auth",
    }
)


def host_copy(obj: Obj, settings: HostSettings) -> Obj:
    """The host copy of a tenant ConfigMap or Secret: its data under its host name; none of
    its labels or annotations (they mean something to the tenant's controllers only)."""
    kind = obj["kind"]
    meta = obj["metadata"]
    out: Obj = {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "name": names.host_name(settings.tenant, meta["namespace"], meta["name"], kind.lower()),
            "namespace": settings.namespace,
            "labels": names.link_labels(
                settings.tenant, meta["namespace"], kind.lower(), meta.get("uid", "")
            ),
            "annotations": {names.NAME_ANNOTATION: meta["name"]},
        },
    }
    for key in ("data", "binaryData", "immutable"):
        if key in obj:
            out[key] = copy.deepcopy(obj[key])
    if kind == "Secret":
        given = obj.get("type") or "Opaque"
        out["type"] = given if given in KEPT_SECRET_TYPES else "Opaque"
    return out


def service_links(services: Sequence[ServiceLink], kubernetes: ServiceLink | None = None) -> list[Obj]:
    """The environment variables the kubelet gives a Pod for the Services of its namespace
    (``FOO_SERVICE_HOST``, ``FOO_PORT_80_TCP``, ...), with the addresses that work from
    the host; KUBERNETES is the tenant API server, given whether or not service links are on."""
    env: dict[str, str] = {}
    for svc in sorted(services, key=lambda s: s.name):
        if svc.name != "kubernetes":
            env.update(_link_vars(svc))
    if kubernetes is not None:
        env.update(_link_vars(kubernetes))
    return [{"name": k, "value": v} for k, v in env.items()]


def _link_vars(svc: ServiceLink) -> dict[str, str]:
    prefix = svc.name.upper().replace("-", "_")
    out: dict[str, str] = {f"{prefix}_SERVICE_HOST": svc.ip}
    if not svc.ports:
        return out
    out[f"{prefix}_SERVICE_PORT"] = str(svc.ports[0][1])
    for name, port, _protocol in svc.ports:
        if name:
            out[f"{prefix}_SERVICE_PORT_{name.upper().replace('-', '_')}"] = str(port)
    host = f"[{svc.ip}]" if ":" in svc.ip else svc.ip
    for i, (_name, port, protocol) in enumerate(svc.ports):
        proto = (protocol or "TCP").upper()
        url = f"{proto.lower()}://{host}:{port}"
        if i == 0:
            out[f"{prefix}_PORT"] = url
        base = f"{prefix}_PORT_{port}_{proto}"
        out.update(
            {base: url, f"{base}_PROTO": proto.lower(), f"{base}_PORT": str(port), f"{base}_ADDR": svc.ip}
        )
    return out


# -- status, from the host back to the tenant -----------------------------------------------
def tenant_status(host_pod: Obj, tenant_pod: Obj, node_address: str, now: str) -> Obj:
    """The tenant Pod's status from its host Pod's: what runs is what the host shows.

    The address of the node is the virtual node's, not the host node's; PodScheduled is the
    tenant scheduler's (True: it bound the Pod); Ready also waits for the tenant Pod's own
    readiness gates, which the host Pod does not carry; ``reason`` and ``message`` are
    always present (None clears them in the merge patch the core writes)."""
    hs = host_pod.get("status") or {}
    old = tenant_pod.get("status") or {}
    host_conditions = {c["type"]: c for c in hs.get("conditions") or []}
    status: Obj = {
        "phase": hs.get("phase") or "Pending",
        "conditions": _conditions(host_conditions, tenant_pod, now),
        "hostIP": node_address,
        "hostIPs": [{"ip": node_address}],
        "startTime": hs.get("startTime") or old.get("startTime") or now,
        "containerStatuses": copy.deepcopy(hs.get("containerStatuses") or []),
        # Decided at creation in the tenant; the host's LimitRange may give it requests.
        "qosClass": old.get("qosClass") or hs.get("qosClass"),
        "reason": hs.get("reason"),
        "message": hs.get("message"),
    }
    if hs.get("initContainerStatuses"):
        status["initContainerStatuses"] = copy.deepcopy(hs["initContainerStatuses"])
    if hs.get("podIP"):
        status["podIP"] = hs["podIP"]
        status["podIPs"] = copy.deepcopy(hs.get("podIPs") or [{"ip": hs["podIP"]}])
    scheduled = host_conditions.get("PodScheduled")
    if scheduled and scheduled.get("status") == "False" and status["phase"] == "Pending":
        status["reason"] = REASON_HOST_UNSCHEDULABLE
        status["message"] = "the host cluster cannot place the Pod: " + (
            scheduled.get("message") or scheduled.get("reason") or "no reason given"
        )
    return status


def _conditions(host: dict[str, Obj], tenant_pod: Obj, now: str) -> list[Obj]:
    old = {c["type"]: c for c in (tenant_pod.get("status") or {}).get("conditions") or []}
    gates = [g["conditionType"] for g in (tenant_pod.get("spec") or {}).get("readinessGates") or []]
    gates_ok = all(old.get(g, {}).get("status") == "True" for g in gates)
    out = []
    for ctype in HOST_MANAGED_CONDITIONS:
        if ctype not in host:
            continue
        cond = copy.deepcopy(host[ctype])
        if ctype == "Ready" and cond.get("status") == "True" and not gates_ok:
            before = old.get("Ready") or {}
            cond = {
                "type": "Ready",
                "status": "False",
                "reason": "ReadinessGatesNotReady",
                "message": f"the Pod's readiness gates are not all True: {', '.join(gates)}",
                "lastProbeTime": None,
                "lastTransitionTime": before.get("lastTransitionTime")
                if before.get("status") == "False"
                else now,
            }
        out.append(cond)
    scheduled = old.get("PodScheduled") or {
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": now,
    }
    out.append(scheduled)
    for ctype, cond in old.items():
        if ctype not in HOST_MANAGED_CONDITIONS and ctype != "PodScheduled":
            out.append(cond)  # set by the tenant's own controllers (readiness gates, ...)
    return out


def refused_status(tenant_pod: Obj, problems: Sequence[Refusal], now: str) -> Obj:
    """The tenant Pod's status when the host cannot run it: Failed, the reason, every field."""
    reason = (
        REASON_POD_SECURITY if any(p.reason == REASON_POD_SECURITY for p in problems) else REASON_UNSUPPORTED
    )
    old = tenant_pod.get("status") or {}
    return {
        "phase": "Failed",
        "reason": reason,
        "message": "the host cluster cannot run this Pod: " + "; ".join(str(p) for p in problems),
        "startTime": old.get("startTime") or now,
    }

# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Hosted nodes: how an HnMachine's node Pod joins its tenant control plane, the Cluster API
way. The collection is the bootstrap provider: it writes, for each machine, the Secret named by
spec.bootstrap.dataSecretName, whose `value` the node image reads as BOOTSTRAP_DATA (JSON
{"files": {NAME: CONTENT}}, see hack/images/node/entrypoint):

- a kubelet bootstrap kubeconfig holding a bootstrap token of the tenant (kubeadm's TLS
  bootstrap: the kubelet asks for its client certificate with a CSR, which the tenant's
  controller-manager approves because the token's group may ask for node client certificates);
- the KubeletConfiguration (cgroupfs and cgroup v1 as on these machines, a cgroupRoot of the
  machine's own, the tenant's cluster DNS, providerID rhizeption://NAMESPACE/NAME);
- kube-proxy's configuration and a ServiceAccount token of the tenant for it.

render_* are pure; ensure_* apply them to the host cluster and the tenant.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import secrets
import string
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Dict, List, Tuple

from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import (
    CLUSTER_LABEL,
    MACHINE_LABEL,
    MANAGED_BY,
    owner_reference,
)
from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube, KubeError, Obj, Resource

SECRET = Resource("v1", "Secret", "secrets")
CONFIGMAP = Resource("v1", "ConfigMap", "configmaps")
SERVICE_ACCOUNT = Resource("v1", "ServiceAccount", "serviceaccounts")
NODE = Resource("v1", "Node", "nodes", namespaced=False)
CLUSTER_ROLE = Resource("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", namespaced=False)
CLUSTER_ROLE_BINDING = Resource(
    "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False
)

PROVIDER_ID_PREFIX = "rhizeption://"
# The Cluster API bootstrap sentinel: the node image writes it once the kubelet holds its
# credentials; checkStrategy exec makes it the node Pod's readiness.
BOOTSTRAP_SENTINEL = "/run/cluster-api/bootstrap-success.complete"
BOOTSTRAP_KEY = "value"
# kubeadm's defaults: a token lives a day; a new one is made an hour before the old one ends.
TOKEN_TTL = timedelta(hours=24)
TOKEN_RENEW_BEFORE = timedelta(hours=1)
# Tokens are made per HnCluster and carry this group; the tenant lets it ask for node client
# certificates, and lets nodes renew theirs.
BOOTSTRAP_GROUP = "system:bootstrappers:rhizeption"
TOKEN_CLUSTER_LABEL = "hn.rhizeption.io/hncluster"
KUBE_PROXY_SA = "rhizeption-kube-proxy"
KUBE_PROXY_TOKEN_SECRET = "rhizeption-kube-proxy-token"
CONF_DIR = "/etc/rhizeption/node"
TOKEN_CHARS = string.ascii_lowercase + string.digits


class BootstrapError(Exception):
    """A hosted node cannot be bootstrapped, with the field to fix."""


def provider_id(namespace: str, name: str) -> str:
    return f"{PROVIDER_ID_PREFIX}{namespace}/{name}"


def bootstrap_secret_name(machine_name: str) -> str:
    return f"{machine_name}-bootstrap"


def cgroup_root(namespace: str, name: str) -> str:
    """Node Pods share the host's cgroup hierarchy (MACHINE.md): each kubelet gets a root of its
    own, so no two manage the same `kubepods`."""
    return f"/rhizeption-hn/{namespace}/{name}"


def cluster_dns_ip(service_cidr: str) -> str:
    """The tenth address of the service CIDR, as kubeadm and the cluster_dns role use."""
    return str(ipaddress.ip_network(service_cidr, strict=False)[10])


# -- the tenant side -------------------------------------------------------------------------
def new_token() -> Tuple[str, str]:
    """A bootstrap token (id, secret): [a-z0-9]{6}.[a-z0-9]{16}."""
    return (
        "".join(secrets.choice(TOKEN_CHARS) for _unused in range(6)),
        "".join(secrets.choice(TOKEN_CHARS) for _unused in range(16)),
    )


def render_token_secret(token_id: str, token_secret: str, expiration: datetime, cluster_key: str) -> Obj:
    """The tenant's kube-system Secret that makes TOKEN a bootstrap token of BOOTSTRAP_GROUP."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"bootstrap-token-{token_id}",
            "namespace": "kube-system",
            "labels": {**MANAGED_BY, TOKEN_CLUSTER_LABEL: cluster_key},
        },
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": f"hosted nodes of HnCluster {cluster_key.replace('.', '/', 1)}",
            "token-id": token_id,
            "token-secret": token_secret,
            "expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": BOOTSTRAP_GROUP,
        },
    }


def token_of(secret: Obj, now: datetime) -> str | None:
    """The token a bootstrap-token Secret holds, or None when it ends within TOKEN_RENEW_BEFORE
    (an expired token is replaced, never reused)."""
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    try:
        expiration = datetime.strptime(data["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (KeyError, ValueError):
        return None
    if expiration - now <= TOKEN_RENEW_BEFORE:
        return None
    return f"{data.get('token-id')}.{data.get('token-secret')}"


def _binding(name: str, role: str, subjects: List[Obj]) -> Obj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": dict(MANAGED_BY)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    }


def render_tenant_access() -> List[Obj]:
    """What the tenant needs once, for all its hosted nodes: TLS bootstrap with automatic
    approval (kubeadm's three bindings), kube-proxy's ServiceAccount and token, and read access
    to Nodes for the nodes' route keeper (rhizeption_node_net.py)."""
    bootstrappers = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": BOOTSTRAP_GROUP}]
    nodes = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]
    csr_role = "system:certificates.k8s.io:certificatesigningrequests"
    return [
        _binding("rhizeption:node-bootstrapper", "system:node-bootstrapper", bootstrappers),
        _binding("rhizeption:node-autoapprove-bootstrap", f"{csr_role}:nodeclient", bootstrappers),
        _binding("rhizeption:node-autoapprove-certificate-rotation", f"{csr_role}:selfnodeclient", nodes),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "rhizeption:node-net", "labels": dict(MANAGED_BY)},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}],
        },
        _binding("rhizeption:node-net", "rhizeption:node-net", nodes),
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": KUBE_PROXY_SA, "namespace": "kube-system", "labels": dict(MANAGED_BY)},
        },
        _binding(
            "rhizeption:kube-proxy",
            "system:node-proxier",
            [{"kind": "ServiceAccount", "name": KUBE_PROXY_SA, "namespace": "kube-system"}],
        ),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                "name": KUBE_PROXY_TOKEN_SECRET,
                "namespace": "kube-system",
                "labels": dict(MANAGED_BY),
                "annotations": {"kubernetes.io/service-account.name": KUBE_PROXY_SA},
            },
        },
    ]


# -- the node's files ------------------------------------------------------------------------
def token_kubeconfig(server: str, ca_pem: str, user: str, token: str, *, cluster: str = "tenant") -> str:
    """A kubeconfig (JSON, which is valid YAML) that authenticates with a bearer TOKEN."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster,
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(ca_pem.encode()).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
            "current-context": cluster,
        },
        indent=2,
    )


def kubelet_config(
    *,
    cgroup_root: str,
    cluster_dns: str,
    cluster_domain: str,
    provider_id: str | None = None,
    taints: List[Obj] | None = None,
    rotate_certificates: bool = True,
) -> Obj:
    """The KubeletConfiguration of a node in a container on these machines (the node image
    reads it from CONF_DIR): hosted nodes and the rig's real node alike. ROTATE_CERTIFICATES:
    renew the client certificate through CSRs (off for a kubelet given a fixed one)."""
    config: Obj = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # MACHINE.md: cgroup v1 hybrid, no systemd cgroups, swap may be on.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        # The host's cgroup hierarchy is shared by every node on it: each keeps to a root of its own.
        "cgroupRoot": cgroup_root,
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "clusterDNS": [cluster_dns],
        "clusterDomain": cluster_domain,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": f"{CONF_DIR}/ca.crt"},
        },
        "authorization": {"mode": "Webhook"},
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "rotateCertificates": rotate_certificates,
        # The node's disk is the host's: the host evicts for disk, not this kubelet, and
        # preloaded images are never collected.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "imagefs.available": "0%"},
        "imageGCHighThresholdPercent": 100,
    }
    if provider_id:
        config["providerID"] = provider_id
    if taints:
        config["registerWithTaints"] = [
            {k: t[k] for k in ("key", "value", "effect") if t.get(k) is not None} for t in taints
        ]
    return config


def kube_proxy_config(*, cluster_cidr: str) -> Obj:
    """kube-proxy in nftables mode, with its kubeconfig in CONF_DIR."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clientConnection": {"kubeconfig": f"{CONF_DIR}/kube-proxy.kubeconfig"},
        "clusterCIDR": cluster_cidr,
        # The node's network namespace is not the initial one: conntrack sizing is the host's.
        "conntrack": {"maxPerCore": 0},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
    }


def render_bootstrap_files(
    machine: Obj,
    cluster: Obj,
    *,
    ca_pem: str,
    bootstrap_token: str,
    kube_proxy_token: str,
    labels: Dict[str, str] | None = None,
    taints: List[Obj] | None = None,
) -> Dict[str, str]:
    """The files of MACHINE's node (CONF_DIR in the node image)."""
    ns, name = machine["metadata"]["namespace"], machine["metadata"]["name"]
    spec = cluster["spec"]
    endpoint = spec.get("controlPlaneEndpoint") or {}
    if not endpoint.get("host"):
        raise BootstrapError(
            f"spec.controlPlaneEndpoint: HnCluster {ns}/{cluster['metadata']['name']} names no endpoint;"
            " give the host and port where its nodes reach the tenant's kube-apiserver"
        )
    server = f"https://{endpoint['host']}:{endpoint['port']}"
    network = spec.get("network") or {}
    kubelet = kubelet_config(
        cgroup_root=cgroup_root(ns, name),
        cluster_dns=cluster_dns_ip(network.get("serviceCIDR", "10.96.0.0/16")),
        cluster_domain=network.get("serviceDomain", "cluster.local"),
        provider_id=provider_id(ns, name),
        taints=taints,
    )
    proxy = kube_proxy_config(cluster_cidr=network.get("podCIDR", "10.244.0.0/16"))
    flags = []
    if labels:
        flags.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return {
        "ca.crt": ca_pem,
        "bootstrap-kubelet.kubeconfig": token_kubeconfig(
            server, ca_pem, "kubelet-bootstrap", bootstrap_token
        ),
        "kubelet.yaml": json.dumps(kubelet, indent=2),  # JSON is YAML
        "kubelet-flags": "\n".join(flags),
        "kube-proxy.kubeconfig": token_kubeconfig(server, ca_pem, KUBE_PROXY_SA, kube_proxy_token),
        "kube-proxy.yaml": json.dumps(proxy, indent=2),
    }


def render_bootstrap_secret(machine: Obj, files: Dict[str, str]) -> Obj:
    """The host-side Secret the node Pod reads as BOOTSTRAP_DATA; the machine owns it."""
    ns, name = machine["metadata"]["namespace"], machine["metadata"]["name"]
    cluster_name = machine["spec"]["clusterName"]
    value = json.dumps({"files": files}, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": bootstrap_secret_name(name),
            "namespace": ns,
            "labels": {**MANAGED_BY, CLUSTER_LABEL: cluster_name, MACHINE_LABEL: name},
            "ownerReferences": [owner_reference(machine, controller=True)],
        },
        "data": {BOOTSTRAP_KEY: base64.b64encode(value.encode()).decode()},
    }


# -- apply -------------------------------------------------------------------------------------
@dataclass
class TenantCredentials:
    """What every node of one HnCluster needs from its tenant; read once per run."""

    ca_pem: str
    bootstrap_token: str
    kube_proxy_token: str


def tenant_kube(kubeconfig: str) -> Kube:
    """A client of the tenant's API server from an admin kubeconfig file."""
    import kubernetes  # noqa: PLC0415 (kube.py: imported where a request is made)

    try:
        return Kube(kubernetes.config.new_client_from_config(kubeconfig))
    except (kubernetes.config.ConfigException, OSError) as e:
        raise BootstrapError(f"tenant_kubeconfig: cannot use {kubeconfig}: {e}") from None


NOTHING_WRITTEN = "nothing was written to the host cluster"
TENANT_FIX = (
    "start or repair the tenant control plane (its TenantControlPlane must be Ready), or name the"
    f" right one in tenant_kubeconfig, then run again; {NOTHING_WRITTEN}"
)
DELETE_WITHOUT_TENANT = (
    "start or repair the tenant control plane, then run again; to delete without draining the"
    " Nodes, leave tenant_kubeconfig out. Nothing was deleted"
)
# (connect, read) seconds for the readiness check: a tenant that drops packets fails fast.
TENANT_CHECK_TIMEOUT = (5.0, 15.0)


def check_tenant(tenant: Kube, *, fix: str = TENANT_FIX) -> None:
    """Raise BootstrapError, naming the tenant's API server and FIX, unless it answers /readyz
    with ok. Called before anything is written, so a tenant that is down leaves nothing
    half-made in the host cluster."""
    import urllib3  # noqa: PLC0415 (with the kubernetes client, imported where a request is made)

    where = f"tenant_kubeconfig: the tenant control plane at {tenant.host}"
    try:
        tenant.request(
            "GET", "/readyz", stream=True, timeout=TENANT_CHECK_TIMEOUT, what="/readyz"
        ).release_conn()
    except KubeError as e:
        if e.status == 0:  # the client's own failure (TLS): it never got an answer
            raise BootstrapError(f"{where} cannot be reached ({e.reason.splitlines()[-1]}): {fix}") from None
        # /readyz lists its checks, "[-]name failed: ..." for the failing ones.
        failing = [line[3:] for line in str(e).splitlines() if line.startswith("[-]")]
        detail = "; ".join(failing) or str(e).splitlines()[0]
        raise BootstrapError(f"{where} is not ready ({e.status}: {detail}): {fix}") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        # urllib3 wraps the cause (connection refused, timeout, TLS) in a MaxRetryError.
        cause = str(getattr(e, "reason", None) or e)
        # Only the why: "<HTTPSConnection object at 0x..>: why" or "HTTPSConnection(host=..): why".
        cause = re.sub(r"^(<[^>]*>|\w+\([^)]*\)): ", "", cause)
        raise BootstrapError(f"{where} cannot be reached ({cause}): {fix}") from None


def tenant_ca(tenant: Kube) -> str:
    """The tenant's cluster CA, as its controller-manager publishes it to every namespace."""
    cm = tenant.get(CONFIGMAP.path("kube-system", "kube-root-ca.crt"))
    if not cm or not (cm.get("data") or {}).get("ca.crt"):
        raise BootstrapError(
            f"tenant_kubeconfig: the tenant control plane at {tenant.host} has no"
            " kube-system/kube-root-ca.crt ConfigMap yet: is its controller-manager running?"
            f" Wait until it is Ready, then run again; {NOTHING_WRITTEN}"
        )
    return cm["data"]["ca.crt"]


RESOURCES = {r.kind: r for r in (CLUSTER_ROLE_BINDING, CLUSTER_ROLE, SERVICE_ACCOUNT, SECRET)}


def ensure_tenant_access(tenant: Kube, *, check_mode: bool = False) -> None:
    for obj in render_tenant_access():
        md = obj["metadata"]
        tenant.apply(
            RESOURCES[obj["kind"]].path(md.get("namespace"), md["name"]),
            obj,
            dry_run=check_mode,
            what=f"{obj['kind']} {md['name']} in the tenant",
        )


def ensure_token(tenant: Kube, cluster_key: str, now: datetime, *, check_mode: bool = False) -> str:
    """A bootstrap token of the HnCluster with at least TOKEN_RENEW_BEFORE left: the newest
    usable one, else a new one. Tokens near their end are deleted, never reused."""
    found, _unused = tenant.list(
        SECRET.path("kube-system"), label_selector=f"{TOKEN_CLUSTER_LABEL}={cluster_key}"
    )
    usable = []
    for secret in found:
        token = token_of(secret, now)
        if token:
            usable.append((secret["metadata"].get("creationTimestamp", ""), token))
        elif not check_mode:
            tenant.delete(SECRET.path("kube-system", secret["metadata"]["name"]))
    if usable:
        return max(usable)[1]
    token_id, token_secret = new_token()
    if not check_mode:
        tenant.request(
            "POST",
            SECRET.path("kube-system"),
            body=render_token_secret(token_id, token_secret, now + TOKEN_TTL, cluster_key),
            what="create a bootstrap token in the tenant",
        )
    return f"{token_id}.{token_secret}"


def kube_proxy_token(tenant: Kube, *, timeout: float = 30) -> str:
    """kube-proxy's ServiceAccount token, once the tenant's token controller has filled it in."""
    ok, objs = tenant.wait(
        SECRET.path("kube-system"),
        lambda objs: bool((objs.get(KUBE_PROXY_TOKEN_SECRET, {}).get("data") or {}).get("token")),
        timeout,
        field_selector=f"metadata.name={KUBE_PROXY_TOKEN_SECRET}",
    )
    if not ok:
        raise BootstrapError(
            f"tenant_kubeconfig: the token controller of the tenant control plane at {tenant.host} did"
            f" not fill kube-system/{KUBE_PROXY_TOKEN_SECRET} in {timeout:.0f} s: is its"
            f" controller-manager running? Wait until it is Ready, then run again; {NOTHING_WRITTEN}"
        )
    return base64.b64decode(objs[KUBE_PROXY_TOKEN_SECRET]["data"]["token"]).decode()


def tenant_credentials(
    tenant: Kube, cluster: Obj, *, check_mode: bool = False, now: datetime | None = None
) -> TenantCredentials:
    """Make the tenant ready for CLUSTER's nodes (bindings, token, kube-proxy's account) and
    read what their bootstrap data needs. In check mode nothing is written."""
    cluster_key = f"{cluster['metadata']['namespace']}.{cluster['metadata']['name']}"
    ensure_tenant_access(tenant, check_mode=check_mode)
    token = ensure_token(tenant, cluster_key, now or datetime.now(UTC), check_mode=check_mode)
    return TenantCredentials(
        ca_pem=tenant_ca(tenant),
        bootstrap_token=token,
        kube_proxy_token="" if check_mode else kube_proxy_token(tenant),
    )


def ensure_bootstrap_secret(
    host: Kube, cluster: Obj, machine: Obj, creds: TenantCredentials, *, check_mode: bool = False
) -> Tuple[str, str]:
    """MACHINE's bootstrap Secret in the host cluster, current: (its name, what was done:
    "created" when it was missing, "updated", or "" when it was current)."""
    template = cluster["spec"].get("machineTemplate") or {}
    files = render_bootstrap_files(
        machine,
        cluster,
        ca_pem=creds.ca_pem,
        bootstrap_token=creds.bootstrap_token,
        kube_proxy_token=creds.kube_proxy_token,
        labels=template.get("nodeLabels"),
        taints=template.get("nodeTaints"),
    )
    desired = render_bootstrap_secret(machine, files)
    ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    path = SECRET.path(ns, name)
    before = host.get(path)
    if before is not None and (before.get("data") or {}) == desired["data"]:
        return name, ""
    try:
        host.apply(path, desired, dry_run=check_mode, what=f"the bootstrap Secret {ns}/{name}")
    except KubeError as e:
        # Never the Secret's content in an error: it holds a token.
        raise BootstrapError(
            f"cannot write the bootstrap Secret {ns}/{name}: {e.status} {e.reason}"
        ) from None
    return name, "created" if before is None else "updated"


# -- the tenant's Nodes ------------------------------------------------------------------------
def _is_ready(node: Obj | None) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in ((node or {}).get("status") or {}).get("conditions") or []
    )


def wait_nodes_ready(tenant: Kube, names: List[str], timeout: float) -> Dict[str, Obj]:
    """Watch the tenant's Nodes until every one of NAMES is Ready; raise naming those that
    are not."""
    ok, nodes = tenant.wait(NODE.path(), lambda objs: all(_is_ready(objs.get(n)) for n in names), timeout)
    if not ok:
        missing = [n for n in names if n not in nodes]
        unready = [n for n in names if n in nodes and not _is_ready(nodes[n])]
        raise BootstrapError(
            f"after {timeout:.0f} s the tenant has no Node {', '.join(missing) or '-'}"
            f" and Nodes {', '.join(unready) or '-'} are not Ready: see the node Pods' logs"
            " (/var/log/rhizeption/kubelet.log in the node container)"
        )
    return {n: nodes[n] for n in names}


def _evictable(pod: Obj) -> bool:
    """What `kubectl drain` evicts: not DaemonSet Pods (they stay with their node), not mirror
    Pods, not Pods that have ended."""
    md = pod["metadata"]
    if "kubernetes.io/config.mirror" in (md.get("annotations") or {}):
        return False
    if any(r.get("kind") == "DaemonSet" for r in md.get("ownerReferences") or []):
        return False
    return ((pod.get("status") or {}).get("phase")) not in ("Succeeded", "Failed")


def drain(tenant: Kube, node_name: str, timeout: float) -> List[str]:
    """Cordon the tenant's Node and evict its Pods through the Eviction API (so
    PodDisruptionBudgets hold), then wait until they are gone. Returns the evicted Pods."""
    if tenant.get(NODE.path(None, node_name)) is None:
        return []
    tenant.json_patch(
        NODE.path(None, node_name),
        [{"op": "add", "path": "/spec/unschedulable", "value": True}],
        what=f"cordon Node {node_name} in the tenant",
    )
    pods_path = "/api/v1/pods"
    selector = f"spec.nodeName={node_name}"
    pods, _unused = tenant.list(pods_path, field_selector=selector)
    victims = {p["metadata"]["uid"]: p for p in pods if _evictable(p)}
    deadline = time.monotonic() + timeout
    pending = list(victims.values())
    while pending:
        retry = []
        for pod in pending:
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            body = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns},
            }
            try:
                tenant.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/eviction", body=body)
            except KubeError as e:
                if e.status == 429:  # a PodDisruptionBudget says not yet
                    retry.append(pod)
                elif e.status == 403 and "NamespaceTerminating" in e.causes:
                    pass  # its namespace is going and takes it along (as kubectl drain waits)
                elif e.status != 404:
                    raise
        if retry and time.monotonic() > deadline:
            raise BootstrapError(
                f"draining Node {node_name}: PodDisruptionBudgets still block evicting"
                f" {', '.join(p['metadata']['namespace'] + '/' + p['metadata']['name'] for p in retry)}"
            )
        pending = retry
        if pending:
            time.sleep(2)  # the budget frees up only as replacements become ready elsewhere
    ok, _unused = tenant.wait(
        pods_path,
        lambda objs: not any(p["metadata"]["uid"] in victims for p in objs.values()),
        max(deadline - time.monotonic(), 1),
        field_selector=selector,
    )
    if not ok:
        raise BootstrapError(f"draining Node {node_name}: its Pods did not go within {timeout:.0f} s")
    return sorted(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in victims.values())


def delete_node(tenant: Kube, node_name: str) -> bool:
    """Remove the tenant's Node object of a machine that is gone: True when there was one."""
    return (
        tenant.delete(NODE.path(None, node_name), what=f"delete Node {node_name} in the tenant") is not None
    )

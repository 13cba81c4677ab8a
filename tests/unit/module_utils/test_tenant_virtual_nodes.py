"""The virtual-node agent as the tenant_control_plane module deploys it (issue #10, item 6):
what it renders beside the control plane and outside its namespace, and the one-time objects
of the host admin. Pure functions; tests/integration/test_virtual_nodes_deployed.py runs them."""

from __future__ import annotations

import base64
import datetime
import json

import pytest
import yaml
from ansible_collections.rhizeption.core.plugins.module_utils import pki
from ansible_collections.rhizeption.core.plugins.module_utils import tenant_control_plane as tcpmod
from ansible_collections.rhizeption.core.plugins.module_utils import virtual_nodes as vn
from ansible_collections.rhizeption.core.plugins.module_utils.tenant_control_plane import (
    TenantControlPlaneError,
)
from rhizeption_agent import config as agent_config
from rhizeption_agent.backends.hostcluster import names

NOW = datetime.datetime(2026, 11, 24, 6, 0, tzinfo=datetime.UTC)
BOTH = {"resources": {"cpu": "1", "memory": "2Gi"}, "nodes": ["node-a"]}


def tcp(promote=None, **spec):
    promote = BOTH if promote is None else promote
    return {
        "apiVersion": "hn.rhizeption.io/v1alpha1",
        "kind": "TenantControlPlane",
        "metadata": {"name": "blue", "namespace": "tenants", "uid": "blue-uid", "generation": 1},
        "spec": {"version": "v1.34.4", "promoteResources": promote, **spec},
    }


def by_name(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def agent_objects(tenant, api_server_ip="10.96.0.20", dns_ip="10.96.0.53"):
    objects = by_name(tcpmod.render(tenant, advertise_address=api_server_ip, virtual_dns_ip=dns_ip))
    name = vn.agent_name("blue")
    return (
        objects[("ServiceAccount", name)],
        objects[("ConfigMap", name)],
        objects[("Deployment", name)],
    )


def test_promoted_resources_deploy_an_agent_owned_by_the_tenant():
    account, config_map, deployment = agent_objects(tcp())
    for obj in (account, config_map, deployment):
        assert obj["metadata"]["namespace"] == "tenants"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "blue-uid"
    spec = deployment["spec"]
    # One agent: two would register, lease and sync the same Nodes.
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "blue-virtual-node-agent"
    assert pod["automountServiceAccountToken"] is True
    assert pod["containers"][0]["image"] == "localhost/rhizeption/virtual-node-agent:0.1.0"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_without_promoted_resources_or_with_virtual_nodes_off_no_agent_is_deployed():
    for tenant in (tcp(promote={}), tcp(promote={**BOTH, "virtualNodes": False})):
        kinds = {o["kind"] for o in tcpmod.render(tenant)}
        assert not kinds & {"ServiceAccount", "ConfigMap"}, kinds
        assert tcpmod.render_virtual_host_objects(tenant) == []
        assert "virtual-node-agent-kubeconfig" not in tcpmod.secret_names(tenant)


def test_the_agent_config_is_one_the_agent_accepts():
    _account, config_map, _deployment = agent_objects(tcp())
    cfg = agent_config.parse(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert cfg.backend == "hostcluster"
    assert cfg.node_name == tcpmod.RESOURCES_NODE
    hc = cfg.host_cluster
    assert hc.kubeconfig == ""  # the Pod's ServiceAccount
    assert (hc.tenant, hc.namespace) == ("blue", "tenants-blue-pods")
    assert (hc.resources, hc.nodes) == ({"cpu": "1", "memory": "2Gi"}, ["node-a"])
    # 443, as `kubernetes` is in any cluster (the apiserver Service gets that port as well).
    assert (hc.api_server_ip, hc.api_server_port) == ("10.96.0.20", 443)
    assert (hc.dns_ip, hc.dns_hosts_file) == ("10.96.0.53", "/var/lib/rhizeption-agent/dns/hosts")
    assert hc.resources_priority_class == vn.RESOURCES_PRIORITY_CLASS
    assert hc.pod_security == "baseline"
    assert cfg.server.port == tcpmod.AGENT_PORT


def test_mirrors_alone_have_no_resources_node_and_no_priority_class():
    _account, config_map, _deployment = agent_objects(tcp(promote={"nodes": ["node-a"]}))
    cfg = agent_config.parse(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert (cfg.host_cluster.resources, cfg.host_cluster.resources_priority_class) == ({}, "")
    assert tcpmod.virtual_nodes_served(tcp(promote={"nodes": ["node-a"]})) == ["node-a"]
    assert tcpmod.virtual_nodes_served(tcp()) == ["node-a", tcpmod.RESOURCES_NODE]


def test_only_the_init_container_mounts_the_admin_kubeconfig():
    _account, config_map, deployment = agent_objects(tcp())
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (init,) = pod["initContainers"]
    agent, _dns = pod["containers"]
    assert "admin" in {m["name"] for m in init["volumeMounts"]}
    assert "admin" not in {m["name"] for m in agent["volumeMounts"]}
    assert volumes["admin"]["secret"]["secretName"] == "blue-admin-kubeconfig"
    assert volumes["tenant"]["secret"]["secretName"] == "blue-virtual-node-agent-kubeconfig"
    # The tenant's CA certificate, never its key.
    assert volumes["tenant-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    # The init container applies exactly the documented tenant RBAC, at the in-cluster address.
    rbac = json.loads(config_map["data"]["tenant-rbac.json"])
    assert rbac == [vn.tenant_agent_cluster_role(), vn.tenant_agent_cluster_role_binding()]
    assert "--server=https://blue.tenants.svc:6443" in init["args"]
    assert init["command"] == ["python3", "-m", "rhizeption_agent.apply"]


def test_a_changed_configuration_restarts_the_agent():
    def digest(tenant):
        deployment = agent_objects(tenant)[2]
        return deployment["spec"]["template"]["metadata"]["annotations"][tcpmod.PKI_DIGEST_ANNOTATION]

    assert digest(tcp()) == digest(tcp())
    assert digest(tcp()) != digest(tcp(promote={**BOTH, "resources": {"cpu": "2", "memory": "2Gi"}}))


def test_the_agent_gets_a_tenant_kubeconfig_of_its_own_user():
    tenant = tcp()
    secrets = by_name(tcpmod.render_pki(tenant, {}, NOW))
    data = secrets[("Secret", "blue-virtual-node-agent-kubeconfig")]["data"]
    server, _ca, client = pki.read_kubeconfig(base64.b64decode(data["kubeconfig"]))
    assert server == "https://blue.tenants.svc:6443"
    assert pki.subject_is(client.cert, vn.TENANT_AGENT_IDENTITY, ())


def test_the_host_objects_outside_the_namespace_carry_the_tenant():
    objects = tcpmod.render_virtual_host_objects(tcp(promote={**BOTH, "podSecurity": "restricted"}))
    kinds = [o["kind"] for o in objects]
    assert kinds == ["Namespace", "RoleBinding", "ResourceQuota", "ClusterRole", "ClusterRoleBinding"]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert (labels[tcpmod.TENANT_LABEL], labels[tcpmod.TENANT_NAMESPACE_LABEL]) == ("blue", "tenants")
        assert "ownerReferences" not in obj["metadata"]
    namespace, binding, quota, reader, reader_binding = objects
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert binding["roleRef"]["name"] == vn.AGENT_NAME and binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "blue-virtual-node-agent",
        "namespace": "tenants",
    }
    assert quota["spec"]["hard"] == {"requests.cpu": "1", "requests.memory": "2Gi"}
    assert reader["rules"][0]["resourceNames"] == ["node-a"]
    assert reader_binding["subjects"][0]["name"] == "blue-virtual-node-agent"


def test_virtual_nodes_take_the_quota_out_of_the_control_planes_namespace():
    kinds = {o["kind"] for o in tcpmod.render(tcp())}
    assert "ResourceQuota" not in kinds and "LimitRange" not in kinds


@pytest.mark.parametrize(
    ("promote", "field"),
    [
        ({**BOTH, "podSecurity": "lenient"}, "spec.promoteResources.podSecurity"),
        ({**BOTH, "virtualNodes": "yes"}, "spec.promoteResources.virtualNodes"),
    ],
)
def test_bad_virtual_node_settings_are_refused_naming_the_field(promote, field):
    with pytest.raises(TenantControlPlaneError) as e:
        tcpmod.validate(tcp(promote=promote))
    assert e.value.field == field


def test_the_admin_files_hold_the_agents_role_and_the_priority_class(repo):
    files = repo / "roles/tenant_control_plane/files"
    docs = [
        yaml.safe_load((files / f).read_text())
        for f in (tcpmod.ADMIN_FILE["ClusterRole"], tcpmod.ADMIN_FILE["PriorityClass"])
    ]
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert found[("ClusterRole", vn.AGENT_NAME)] == vn.agent_cluster_role()
    assert found[("PriorityClass", vn.RESOURCES_PRIORITY_CLASS)] == vn.resources_priority_class()


def test_the_agent_image_tag_is_the_collection_version(repo):
    galaxy = yaml.safe_load((repo / "galaxy.yml").read_text())
    assert galaxy["version"] == tcpmod.AGENT_IMAGE_TAG


def test_the_host_pod_label_is_the_agents():
    assert vn.TENANT_POD_LABEL == names.TENANT_LABEL


def test_the_apiserver_service_answers_the_tenants_pods_on_443():
    def ports(tenant):
        service = by_name(tcpmod.render(tenant))[("Service", "blue")]
        return [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]]

    assert ports(tcp()) == [(6443, 6443), (443, 6443)]
    assert ports(tcp(promote={})) == [(6443, 6443)]


def test_the_tenant_dns_runs_beside_the_agent_behind_a_service():
    objects = by_name(tcpmod.render(tcp()))
    service = objects[("Service", "blue-virtual-dns")]
    assert service["spec"]["selector"] == tcpmod.selector_labels(tcp(), tcpmod.VIRTUAL_NODE_AGENT)
    assert {(p["port"], p["targetPort"], p["protocol"]) for p in service["spec"]["ports"]} == {
        (53, tcpmod.DNS_PORT, "UDP"),
        (53, tcpmod.DNS_PORT, "TCP"),
    }
    pod = objects[("Deployment", "blue-virtual-node-agent")]["spec"]["template"]["spec"]
    dns = next(c for c in pod["containers"] if c["name"] == "dns")
    assert dns["image"] == f"localhost/rhizeption/coredns:{tcpmod.COREDNS_VERSION}"
    # It reads the names the agent writes, and cannot change them.
    state = next(m for m in dns["volumeMounts"] if m["name"] == "state")
    assert (state["mountPath"], state["readOnly"]) == ("/var/lib/rhizeption-agent", True)
    corefile = objects[("ConfigMap", "blue-virtual-node-agent")]["data"]["Corefile"]
    assert "hosts /var/lib/rhizeption-agent/dns/hosts" in corefile
    assert "fallthrough" not in corefile  # a tenant name it lacks never reaches the host's DNS
    assert corefile.startswith(f"cluster.local:{tcpmod.DNS_PORT} ")


def test_the_coredns_version_is_the_one_built(repo):
    versions = dict(
        line.split("=", 1) for line in (repo / "hack/versions.env").read_text().splitlines() if "=" in line
    )
    assert versions["COREDNS_VERSION"].strip() == tcpmod.COREDNS_VERSION


class Cluster:
    """Just enough of Kube for reconcile_objects: objects by path, lists by label selector."""

    field_manager = "test"

    def __init__(self):
        self.objects = {}

    def get(self, path):
        return self.objects.get(path)

    def list(self, path, label_selector=None, **_selectors):
        wanted = dict(term.split("=", 1) for term in (label_selector or "").split(",") if "=" in term)
        items = [
            o
            for p, o in self.objects.items()
            if p.rsplit("/", 1)[0] == path and wanted.items() <= (o["metadata"].get("labels") or {}).items()
        ]
        return items, "1"

    def apply(self, path, obj, *, dry_run=False, what=""):
        stored = {**obj, "metadata": {**obj["metadata"], "uid": f"uid-{obj['metadata']['name']}"}}
        if obj["kind"] == "Service":
            stored["spec"] = {**obj["spec"], "clusterIP": "10.96.0.10"}
        self.objects[path] = stored
        return stored

    def request(self, method, path, *, body=None, **_kw):
        assert method == "POST"
        return self.apply(f"{path}/{body['metadata']['name']}", body)

    def delete(self, path, *, uid=None, dry_run=False, what="", **_kw):
        namespace = path.removeprefix("/api/v1")  # /namespaces/NAME, when a namespace
        for inside in [p for p in self.objects if f"{namespace}/" in p]:  # its objects go with it
            del self.objects[inside]
        return self.objects.pop(path)

    def kinds(self):
        return {(o["kind"], o["metadata"]["name"]) for o in self.objects.values()}


def test_what_virtual_nodes_no_longer_need_is_deleted():
    cluster = Cluster()
    tcpmod.reconcile_objects(cluster, tcp(), tcpmod.Outcome(), now=NOW)
    reader = next(o for o in tcpmod.render_virtual_host_objects(tcp()) if o["kind"] == "ClusterRole")
    assert {("Namespace", "tenants-blue-pods"), ("Deployment", "blue-virtual-node-agent")} <= cluster.kinds()
    assert ("ClusterRole", reader["metadata"]["name"]) in cluster.kinds()

    # No promoted nodes any more: the node reader and its binding go, the rest stays.
    out = tcpmod.Outcome()
    tcpmod.reconcile_objects(cluster, tcp(promote={"resources": BOTH["resources"]}), out, now=NOW)
    name = reader["metadata"]["name"]
    assert sorted(out.deleted) == [f"ClusterRole {name}", f"ClusterRoleBinding {name}"]
    assert ("Deployment", "blue-virtual-node-agent") in cluster.kinds()

    # No promoteResources: the agent first, then everything else of the virtual nodes.
    out = tcpmod.Outcome()
    tcpmod.reconcile_objects(cluster, tcp(promote={}), out, now=NOW)
    assert out.deleted[0] == "Deployment blue-virtual-node-agent"
    assert set(out.deleted) == {
        "Deployment blue-virtual-node-agent",
        "ConfigMap blue-virtual-node-agent",
        "Service blue-virtual-dns",
        "ServiceAccount blue-virtual-node-agent",
        "Secret blue-virtual-node-agent-kubeconfig",
        "Namespace tenants-blue-pods",
    }
    left = {k for k in cluster.kinds() if "virtual" in k[1] or k[1].endswith("-pods")}
    assert left == set(), left

"""The host side of virtual nodes: the agent's one role (k3v's list plus logs, exec,
port-forward and events, nothing more), the Pods' namespace and its Pod Security level,
and the read-only access to promoted host Nodes."""

from __future__ import annotations

import re

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import virtual_nodes as vn
from rhizeption_agent.backends.hostcluster import pods

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")


def test_the_role_is_one_cluster_role_bound_in_the_pods_namespace_only():
    role = vn.agent_cluster_role()
    assert role["kind"] == "ClusterRole"
    assert role["metadata"] == {"name": vn.AGENT_NAME, "labels": vn.MANAGED_BY}
    binding = vn.agent_role_binding("tenants-blue-pods", "blue-virtual-node-agent", "tenants")
    # A RoleBinding grants a ClusterRole's rules in its own namespace only.
    assert binding["kind"] == "RoleBinding"
    assert binding["metadata"]["namespace"] == "tenants-blue-pods"


def test_the_agent_is_named_after_its_tenant():
    assert vn.agent_name("blue") == "blue-virtual-node-agent"


@pytest.mark.parametrize(
    "resource", ["pods", "services", "endpoints", "configmaps", "secrets", "persistentvolumeclaims"]
)
def test_the_role_grants_k3vs_list(resource):
    rules = vn.agent_cluster_role()["rules"]
    for verb in CRUD:
        assert vn.allows(rules, resource, verb), (resource, verb)


@pytest.mark.parametrize(
    ("resource", "verb"),
    [("pods/log", "get"), ("pods/exec", "create"), ("pods/exec", "get"), ("pods/portforward", "create")],
)
def test_the_role_grants_what_logs_exec_and_port_forward_need(resource, verb):
    assert vn.allows(vn.agent_cluster_role()["rules"], resource, verb)


@pytest.mark.parametrize(
    ("resource", "verb", "api_group"),
    [
        ("events", "create", ""),  # events are read from the host and written to the tenant
        ("pods/status", "patch", ""),  # the host kubelet writes host Pod status, never the agent
        ("pods/ephemeralcontainers", "patch", ""),
        ("pods/attach", "create", ""),
        ("pods/eviction", "create", ""),
        ("serviceaccounts/token", "create", ""),  # never a host token
        ("serviceaccounts", "get", ""),
        ("namespaces", "get", ""),
        ("nodes", "get", ""),
        ("resourcequotas", "update", ""),
        ("limitranges", "update", ""),
        ("secrets", "deletecollection", ""),
        ("pods", "deletecollection", ""),
        ("roles", "create", "rbac.authorization.k8s.io"),
        ("rolebindings", "create", "rbac.authorization.k8s.io"),
        ("deployments", "create", "apps"),
        ("tenantcontrolplanes", "get", "hn.rhizeption.io"),
    ],
)
def test_the_role_grants_nothing_more(resource, verb, api_group):
    assert not vn.allows(vn.agent_cluster_role()["rules"], resource, verb, api_group)


def test_the_role_has_no_wildcards():
    for rule in vn.agent_cluster_role()["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key]
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule


def test_the_role_covers_every_kind_the_agent_makes():
    """The translation makes Pods, ConfigMaps, Secrets (copies and tokens): the Role lets the
    agent create, change and delete each of them."""
    made = {"Pod": "pods", "ConfigMap": "configmaps", "Secret": "secrets"}
    settings = pods.HostSettings(tenant="blue", namespace="n")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "web"}}
    assert pods.host_copy(cm, settings)["kind"] in made
    token = pods.token_secret({"metadata": {"name": "p", "namespace": "web"}}, settings, {})
    assert token["kind"] in made
    for resource in made.values():
        for verb in ("create", "update", "patch", "delete", "watch"):
            assert vn.allows(vn.AGENT_ROLE_RULES, resource, verb)


def test_the_binding_names_the_agents_service_account():
    binding = vn.agent_role_binding("tenants-blue-pods", "blue-virtual-node-agent", "tenants")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": vn.AGENT_NAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "blue-virtual-node-agent", "namespace": "tenants"}
    ]


def test_promoted_nodes_are_readable_by_name_only():
    reader = vn.host_node_reader("tenants", "blue", ["node-b", "node-a", "node-b"])
    assert reader["kind"] == "ClusterRole"
    assert reader["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["nodes"],
            "resourceNames": ["node-a", "node-b"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert vn.host_node_reader("tenants", "blue", []) is None


def test_the_node_reader_is_bound_to_the_agents_service_account():
    binding = vn.host_node_reader_binding("tenants", "blue", ["node-a"], "blue-virtual-node-agent")
    assert (
        binding["roleRef"]["name"] == vn.host_node_reader("tenants", "blue", ["node-a"])["metadata"]["name"]
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "blue-virtual-node-agent", "namespace": "tenants"}
    ]
    assert vn.host_node_reader_binding("tenants", "blue", [], "blue-virtual-node-agent") is None


@pytest.mark.parametrize(
    "resource, verb, api_group",
    [
        ("nodes", "create", ""),
        ("nodes/status", "patch", ""),
        ("leases", "update", "coordination.k8s.io"),
        ("pods", "watch", ""),
        ("pods/status", "patch", ""),
        ("serviceaccounts/token", "create", ""),
        ("subjectaccessreviews", "create", "authorization.k8s.io"),
    ],
)
def test_the_tenant_cluster_role_grants_what_a_kubelet_does_for_its_nodes(resource, verb, api_group):
    assert vn.allows(vn.tenant_agent_cluster_role()["rules"], resource, verb, api_group)


@pytest.mark.parametrize(
    "resource, verb, api_group",
    [
        ("secrets", "list", ""),
        ("pods", "create", ""),
        ("nodes", "delete", ""),
        ("namespaces", "create", ""),
        ("deployments", "list", "apps"),
        ("clusterroles", "create", "rbac.authorization.k8s.io"),
        ("pods/exec", "create", ""),
    ],
)
def test_the_tenant_cluster_role_grants_nothing_a_kubelet_lacks(resource, verb, api_group):
    role = vn.tenant_agent_cluster_role()
    assert not vn.allows(role["rules"], resource, verb, api_group)
    assert "*" not in str(role["rules"])
    binding = vn.tenant_agent_cluster_role_binding()
    assert binding["subjects"][0]["name"] == vn.TENANT_AGENT_IDENTITY == binding["roleRef"]["name"]


def test_the_quota_holds_the_promoted_resources_for_the_resources_nodes_pods_only():
    quota = vn.pods_quota("tenants", "blue", {"cpu": "1", "memory": "2Gi"})
    assert quota["kind"] == "ResourceQuota"
    assert quota["metadata"]["namespace"] == vn.pods_namespace("tenants", "blue")
    assert quota["spec"]["hard"] == {"requests.cpu": "1", "requests.memory": "2Gi"}
    (scope,) = quota["spec"]["scopeSelector"]["matchExpressions"]
    assert scope == {"scopeName": "PriorityClass", "operator": "In", "values": [vn.RESOURCES_PRIORITY_CLASS]}
    assert vn.resources_priority_class()["metadata"]["name"] == vn.RESOURCES_PRIORITY_CLASS
    assert vn.resources_priority_class()["value"] == 0
    assert vn.pods_quota("tenants", "blue", {}) is None


def test_the_pods_namespace_is_per_tenant_and_a_dns_label():
    assert vn.pods_namespace("tenants", "blue") == "tenants-blue-pods"
    long_a = vn.pods_namespace("n" * 63, "b" * 40)
    long_b = vn.pods_namespace("n" * 63, "b" * 39 + "c")
    for name in (long_a, long_b):
        assert DNS_LABEL.match(name) and len(name) <= 63 and name.endswith("-pods")
    assert long_a != long_b


@pytest.mark.parametrize("level", ["privileged", "baseline", "restricted"])
def test_the_namespace_enforces_the_chosen_level(level):
    labels = vn.pods_namespace_object("tenants", "blue", level)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == level
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"
    assert labels["pod-security.kubernetes.io/warn"] == level


def test_baseline_is_the_default_and_an_unknown_level_is_refused():
    assert vn.pod_security_labels()["pod-security.kubernetes.io/enforce"] == "baseline"
    with pytest.raises(ValueError, match="'strict' is not one of privileged, baseline, restricted"):
        vn.pod_security_labels("strict")


def test_the_agent_and_the_deployer_know_the_same_levels():
    from rhizeption_agent.backends.hostcluster import podsecurity

    assert vn.POD_SECURITY_LEVELS == podsecurity.LEVELS
    assert vn.DEFAULT_POD_SECURITY == podsecurity.DEFAULT_LEVEL

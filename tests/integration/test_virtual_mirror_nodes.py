"""Mirror nodes (issue #10, promoteResources.nodes): a tenant of its own, to which the rig's real
host node is promoted whole, plus a host node the host does not have. One agent serves both
mirror Nodes; the tenant's Pods on the mirror run as host Pods pinned to that host node.

The agent serves several Nodes, so its tenant identity is its own user bound to the documented
ClusterRole (a kubelet's system:node:NAME is one Node's), and in the host, besides the Role in
the Pods namespace, a ClusterRole reading the promoted host nodes by name."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import kubernetes
import pytest
from hosted import web_container, web_deployment
from petagent import wait_for
from riglib.controlplane import ControlPlane
from riglib.node import HostCluster
from virtualagent import TENANT_LABEL, UID_LABEL, Virtual, virtual_node_agent

from ansible_collections.rhizeption.core.plugins.module_utils import virtual_nodes  # isort: skip

MISSING = "no-such-host-node"
TENANT_NAME = "blue"


@pytest.fixture(scope="module")
def mirrors(
    host_cluster: HostCluster, host_api_client, tenant: ControlPlane, tmp_path_factory
) -> Iterator[Virtual]:
    with virtual_node_agent(
        host_cluster,
        host_api_client,
        tenant,
        tmp_path_factory.mktemp("virtual-mirrors"),
        {},
        nodes=(host_cluster.node_name, MISSING),
        tenant_name=TENANT_NAME,
    ) as v:
        yield v


def ready_of(node) -> tuple[str, str, str]:
    """The Node's Ready (status, reason, message); empty before its first status."""
    cond = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
    return (cond.status, cond.reason, cond.message or "") if cond else ("", "", "")


def test_the_mirror_is_ready_with_the_host_nodes_allocatable(mirrors: Virtual) -> None:
    def mirror_ready():
        nodes = {n.metadata.name: n for n in mirrors.tcore.list_node().items}
        mirror = nodes.get(mirrors.host_node)
        return mirror if mirror and ready_of(mirror)[0] == "True" else None

    mirror = wait_for("the mirror Node Ready", mirror_ready, timeout=90, agent=mirrors.agent)
    host = mirrors.hcore.read_node(mirrors.host_node)
    for resource in ("cpu", "memory", "pods"):
        assert mirror.status.capacity[resource] == host.status.allocatable[resource]
    labels = mirror.metadata.labels
    assert labels["node.rhizeption.io/virtual-kind"] == "mirror"
    assert labels["node.rhizeption.io/host-node"] == mirrors.host_node
    assert labels["kubernetes.io/arch"] == host.metadata.labels["kubernetes.io/arch"]
    assert not mirror.spec.unschedulable


def test_a_promoted_node_the_host_lacks_is_not_ready_naming_it(mirrors: Virtual) -> None:
    missing = wait_for(
        "the missing host node's mirror with its status",
        lambda: next(
            (n for n in mirrors.tcore.list_node().items if n.metadata.name == MISSING and ready_of(n)[0]),
            None,
        ),
        timeout=60,
        agent=mirrors.agent,
    )
    status, reason, message = ready_of(missing)
    assert (status, reason) == ("False", "HostNodeNotFound")
    assert MISSING in message and "promoteResources.nodes" in message
    assert missing.status.allocatable["pods"] == "0"


def test_a_deployment_of_three_runs_pinned_to_the_host_node(mirrors: Virtual) -> None:
    mirrors.tcore.create_namespace({"metadata": {"name": "shop"}})
    apps = kubernetes.client.AppsV1Api(mirrors.tcore.api_client)
    apps.create_namespaced_deployment(
        "shop", web_deployment(3, web_container(), terminationGracePeriodSeconds=2)
    )
    rollout = mirrors.kubectl("-n", "shop", "rollout", "status", "deployment/web", "--timeout=180s")
    assert rollout.returncode == 0, rollout.stderr + mirrors.agent.log_tail()
    tenant_pods = mirrors.tcore.list_namespaced_pod("shop", label_selector="app=web").items
    assert {p.spec.node_name for p in tenant_pods} == {mirrors.host_node}, "never on the missing node"
    host = {p.metadata.labels[UID_LABEL]: p for p in mirrors.host_pods()}
    assert len(host) == 3
    for pod in tenant_pods:
        twin = host[pod.metadata.uid]
        assert twin.spec.node_name == mirrors.host_node and twin.status.phase == "Running"
        term = twin.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
        assert term.node_selector_terms[0].match_fields[0].values == [mirrors.host_node]
        assert pod.status.pod_ip == twin.status.pod_ip


def test_a_pod_bound_to_the_missing_node_waits_with_the_host_schedulers_reason(mirrors: Virtual) -> None:
    """Bound by name past the tenant's scheduler, to the mirror of a node the host lacks: its
    host Pod, pinned to that node, cannot be placed, and the tenant Pod says so."""
    pod = {
        "metadata": {"name": "nowhere"},
        "spec": {"nodeName": MISSING, "terminationGracePeriodSeconds": 1, "containers": [web_container()]},
    }
    mirrors.tcore.create_namespaced_pod("shop", pod)

    def waiting():
        p = mirrors.tcore.read_namespaced_pod("nowhere", "shop")
        return p if p.status.reason == "HostUnschedulable" else None

    got = wait_for("the Pod on the missing node HostUnschedulable", waiting, timeout=60, agent=mirrors.agent)
    assert got.status.phase == "Pending" and "NodeAffinity" in got.status.message, got.status.message
    mirrors.tcore.delete_namespaced_pod("nowhere", "shop", grace_period_seconds=0)


def test_logs_and_exec_reach_a_mirrors_pod_through_the_tenant_api_server(mirrors: Virtual) -> None:
    some = mirrors.tcore.list_namespaced_pod("shop", label_selector="app=web").items[0].metadata.name
    logs = mirrors.kubectl("-n", "shop", "logs", some)
    assert logs.returncode == 0 and logs.stdout.strip().startswith("serving "), (
        logs.stderr + mirrors.kubectl("get", "node", "-o", "yaml").stdout + mirrors.agent.log_tail()
    )
    out = mirrors.kubectl("-n", "shop", "exec", some, "--", "cat", "/tmp/index.html")
    assert out.returncode == 0 and out.stdout.strip() == some, out.stderr


def test_a_cordon_of_the_host_node_reaches_its_mirror_and_so_does_the_uncordon(mirrors: Virtual) -> None:
    def mirror_unschedulable(value: bool):
        return lambda: bool(mirrors.tcore.read_node(mirrors.host_node).spec.unschedulable) == value

    try:
        mirrors.hcore.patch_node(mirrors.host_node, {"spec": {"unschedulable": True}})
        wait_for("the mirror cordoned", mirror_unschedulable(True), timeout=60, agent=mirrors.agent)
    finally:
        mirrors.hcore.patch_node(mirrors.host_node, {"spec": {"unschedulable": False}})
    wait_for("the mirror uncordoned", mirror_unschedulable(False), timeout=60, agent=mirrors.agent)


def test_the_agent_can_do_nothing_beyond_its_documented_rights(mirrors: Virtual) -> None:
    """In the host: its promoted node by name, not the host's other Nodes; in the tenant: the
    ClusterRole of a node agent, not a tenant admin's rights."""
    host = kubernetes.config.new_client_from_config(str(mirrors.agent.workdir / "host.kubeconfig"))
    tenant = kubernetes.config.new_client_from_config(str(mirrors.agent.workdir / "node.kubeconfig"))
    try:
        hcore, tcore = kubernetes.client.CoreV1Api(host), kubernetes.client.CoreV1Api(tenant)
        assert hcore.read_node(mirrors.host_node).metadata.name == mirrors.host_node
        assert tcore.list_namespaced_pod("shop").items  # a node agent watches Pods
        for denied in (
            hcore.list_node,
            lambda: hcore.list_namespaced_pod("kube-system"),
            lambda: tcore.list_namespaced_secret("kube-system"),
            lambda: tcore.create_namespace({"metadata": {"name": "agent-escape"}}),
            lambda: kubernetes.client.AppsV1Api(tenant).list_namespaced_deployment("shop"),
        ):
            with pytest.raises(kubernetes.client.ApiException) as err:
                denied()
            assert err.value.status == 403
    finally:
        host.close()
        tenant.close()
    rules = virtual_nodes.tenant_agent_cluster_role()["rules"]
    assert not virtual_nodes.allows(rules, "secrets", "list")


def test_removing_the_tenants_pods_leaves_nothing_in_the_host(mirrors: Virtual) -> None:
    mirrors.tcore.delete_namespace("shop")

    def host_empty():
        selector = f"{TENANT_LABEL}={TENANT_NAME}"
        return not any(
            kind(mirrors.pods_ns, label_selector=selector).items
            for kind in (
                mirrors.hcore.list_namespaced_pod,
                mirrors.hcore.list_namespaced_secret,
                mirrors.hcore.list_namespaced_config_map,
            )
        )

    wait_for("no host Pod, Secret or ConfigMap of the tenant", host_empty, timeout=120, agent=mirrors.agent)
    with contextlib.suppress(kubernetes.client.ApiException):
        mirrors.tcore.delete_namespace("shop")

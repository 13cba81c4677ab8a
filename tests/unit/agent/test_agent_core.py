"""The agent's core serving several Nodes (a virtual node's agent: a mirror per promoted host
node and the resources node): each Node registered, its status and Lease kept, its Pods
watched, and nothing a Node not listed yet runs taken for an orphan. Against the in-memory
API server of the unit tests; tests/integration runs the core on real API servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from fake_api import FakeApi, eventually
from rhizeption_agent.agent import Agent
from rhizeption_agent.config import AgentConfig
from rhizeption_agent.provider import NodeFacts, PodView

Obj = dict[str, Any]
FACTS = NodeFacts("test://1", healthy=True)


class TwoNodes:
    """A node source of two Nodes; TAINTS: node-a's spec, changed by the tests."""

    def __init__(self) -> None:
        self.taints: list[Obj] = []

    def nodes(self, facts: NodeFacts, previous: Mapping[str, Obj]) -> list[Obj]:
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": ""}
        return [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"node.rhizeption.io/virtual": "true"}},
                "spec": {"taints": list(self.taints)} if name == "node-a" else {},
                "status": {"capacity": {"cpu": "1"}, "conditions": [ready]},
            }
            for name in ("node-a", "node-b")
        ]


class RecordingProvider:
    """Runs nothing; records which Pods it was asked to sync and to forget."""

    def __init__(self, running: list[PodView]) -> None:
        self.running = running
        self.synced: set[str] = set()
        self.forgotten: list[str] = []

    def facts(self) -> NodeFacts:
        return FACTS

    def running_pods(self) -> list[PodView]:
        return list(self.running)

    def sync(self, pod: Obj, emit: Callable) -> Obj:
        self.synced.add(pod["metadata"]["name"])
        return {"phase": "Running"}

    def forget(self, uid: str) -> None:
        self.forgotten.append(uid)

    def terminate(self, pod: Obj, grace_seconds: int, emit: Callable) -> None:
        pass

    def stop_containers(self, pod: Obj, grace_seconds: int, emit: Callable) -> None:
        pass


def pod(name: str, node: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Pending"},
    }


@pytest.fixture
def tenant() -> Iterator[FakeApi]:
    api = FakeApi("tenant")
    yield api
    api.close()


def start(tenant: FakeApi, provider: RecordingProvider, source: TwoNodes) -> Agent:
    cfg = AgentConfig(node_name="node-b", kubeconfig="unused", status_check_seconds=0.05)
    agent = Agent(cfg, tenant, provider, node_source=source)  # type: ignore[arg-type]
    agent.start()
    return agent


def test_every_node_is_registered_with_its_status_and_lease(tenant):
    agent = start(tenant, RecordingProvider([]), TwoNodes())
    try:
        nodes = eventually(lambda: len(tenant.at("/api/v1/nodes")) == 2 and tenant.at("/api/v1/nodes"))
        assert all(n["status"]["conditions"][0]["status"] == "True" for n in nodes.values())
        leases = eventually(
            lambda: (
                len(tenant.at("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")) == 2
                and tenant.at("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
            )
        )
        assert {lease["spec"]["holderIdentity"] for lease in leases.values()} == {"node-a", "node-b"}
        owners = {lease["metadata"]["ownerReferences"][0]["uid"] for lease in leases.values()}
        assert owners == {n["metadata"]["uid"] for n in nodes.values()}
    finally:
        agent.stop()


def test_each_nodes_pods_are_watched_and_a_pod_elsewhere_is_not(tenant):
    provider = RecordingProvider([])
    tenant.seed(pod("on-a", "node-a"))
    tenant.seed(pod("on-b", "node-b"))
    tenant.seed(pod("on-c", "node-c"))
    agent = start(tenant, provider, TwoNodes())
    try:
        eventually(lambda: provider.synced == {"on-a", "on-b"})
        tenant.seed(pod("later-a", "node-a"))
        eventually(lambda: "later-a" in provider.synced)
        assert eventually(
            lambda: tenant.get("/api/v1/namespaces/shop/pods/on-a")["status"]["phase"] == "Running"
        )
        assert "on-c" not in provider.synced
    finally:
        agent.stop()


def test_a_pod_of_a_node_not_listed_yet_is_not_taken_for_an_orphan(tenant):
    """node-a's list comes in first: node-b's running Pod must not be removed then; a Pod no
    Node has is removed once both lists are in."""
    tenant.seed(pod("on-b", "node-b"))
    provider = RecordingProvider([PodView("uid-on-b", "shop", "on-b"), PodView("uid-gone", "shop", "gone")])
    agent = Agent(AgentConfig(node_name="node-b", kubeconfig="unused"), tenant, provider, TwoNodes())  # type: ignore[arg-type]
    agent.node_names = ["node-a", "node-b"]
    try:
        agent._converge("node-a", [])
        assert provider.forgotten == [] and not agent.synced.is_set()
        agent._converge("node-b", [tenant.get("/api/v1/namespaces/shop/pods/on-b")])
        assert provider.forgotten == ["uid-gone"] and agent.synced.is_set()
    finally:
        agent.stop()


def test_a_changed_taint_of_a_node_is_patched_onto_it(tenant):
    source = TwoNodes()
    agent = start(tenant, RecordingProvider([]), source)
    try:
        eventually(lambda: tenant.get("/api/v1/nodes/node-a"))
        source.taints = [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
        eventually(lambda: tenant.get("/api/v1/nodes/node-a")["spec"].get("taints") == source.taints)
        assert tenant.get("/api/v1/nodes/node-b")["spec"] == {}
    finally:
        agent.stop()

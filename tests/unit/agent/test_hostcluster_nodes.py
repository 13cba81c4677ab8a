"""The tenant's virtual Nodes from promoteResources: mirrors of host nodes and the node of
the promoted cpu and memory."""

from __future__ import annotations

import pytest
from fake_api import FakeApi
from rhizeption_agent.backends.hostcluster import nodes
from rhizeption_agent.kubeapi import KubeError
from rhizeption_agent.provider import NodeFacts

NOW = "2026-11-23T10:00:00Z"
LATER = "2026-11-23T10:05:00Z"
AGENT = {"address": "10.42.0.9", "port": 10250, "kubelet_version": "v1.34.0-rhizeption.0.1.0"}


def host_node(ready="True", **spec):
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "node-a",
            "labels": {
                "kubernetes.io/hostname": "node-a",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": "lab-1",
                "node-role.kubernetes.io/control-plane": "",
                "example.com/rack": "r12",
            },
        },
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "providerID": "rhizeption://host/node-a",
            "taints": [
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
            ],
            **spec,
        },
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "allocatable": {"cpu": "7800m", "memory": "31Gi", "pods": "110", "ephemeral-storage": "90Gi"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure"},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID"},
                {
                    "type": "Ready",
                    "status": ready,
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready",
                },
            ],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.21"}],
            "nodeInfo": {
                "kernelVersion": "6.18.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.6.20",
                "kubeletVersion": "v1.34.4",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "machineID": "secret-ish",
            },
        },
    }


def test_a_mirror_has_the_host_nodes_allocatable_as_capacity():
    node = nodes.mirror_node("node-a", host_node(), now=NOW, **AGENT)
    assert node["status"]["capacity"] == host_node()["status"]["allocatable"]
    assert node["status"]["allocatable"] == node["status"]["capacity"]


def test_a_mirror_keeps_topology_labels_and_drops_host_roles():
    labels = nodes.mirror_node("node-a", host_node(), now=NOW, **AGENT)["metadata"]["labels"]
    assert labels["topology.kubernetes.io/zone"] == "lab-1"
    assert labels["kubernetes.io/arch"] == "amd64"
    assert labels["kubernetes.io/hostname"] == "node-a"
    assert labels[nodes.VIRTUAL_LABEL] == "true"
    assert labels[nodes.HOST_NODE_LABEL] == "node-a"
    assert labels["type"] == "virtual-kubelet"
    assert "node-role.kubernetes.io/control-plane" not in labels
    assert "example.com/rack" not in labels


def test_a_mirror_has_the_host_taints_but_not_the_lifecycle_ones():
    node = nodes.mirror_node("node-a", host_node(), now=NOW, **AGENT)
    assert node["spec"] == {
        "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}],
        "unschedulable": False,  # always said: an uncordon on the host reaches the tenant
    }
    assert "podCIDR" not in node["spec"] and "providerID" not in node["spec"]


def test_a_cordoned_host_node_gives_an_unschedulable_mirror():
    node = nodes.mirror_node("node-a", host_node(unschedulable=True), now=NOW, **AGENT)
    assert node["spec"]["unschedulable"] is True


@pytest.mark.parametrize("ready", ["True", "False", "Unknown"])
def test_a_mirrors_ready_is_the_host_nodes(ready):
    conditions = nodes.mirror_node("node-a", host_node(ready), now=NOW, **AGENT)["status"]["conditions"]
    by_type = {c["type"]: c for c in conditions}
    assert by_type["Ready"]["status"] == ready
    assert by_type["Ready"]["message"] == "host node node-a: kubelet is posting ready"
    assert [c["type"] for c in conditions] == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]


def test_a_mirror_is_reached_at_the_agent_not_at_the_host_node():
    status = nodes.mirror_node("node-a", host_node(), now=NOW, **AGENT)["status"]
    assert status["addresses"] == [{"type": "InternalIP", "address": "10.42.0.9"}]
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    assert status["nodeInfo"]["containerRuntimeVersion"] == "containerd://1.6.20"
    assert status["nodeInfo"]["kubeletVersion"] == AGENT["kubelet_version"]
    assert "machineID" not in status["nodeInfo"]
    assert "192.168.1.21" not in str(status)


def test_a_promoted_node_the_host_lacks_is_not_ready_naming_it():
    node = nodes.mirror_node("node-x", None, now=NOW, **AGENT)
    ready = node["status"]["conditions"][-1]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "HostNodeNotFound")
    assert "node-x" in ready["message"] and "promoteResources.nodes" in ready["message"]
    assert node["status"]["allocatable"]["pods"] == "0", "nothing is scheduled there"


def test_an_unreachable_host_makes_the_mirror_unknown():
    node = nodes.mirror_node("node-a", host_node(), now=NOW, healthy=False, **AGENT)
    ready = node["status"]["conditions"][-1]
    assert (ready["status"], ready["reason"]) == ("Unknown", "HostClusterUnreachable")


def test_transition_times_hold_while_a_condition_holds():
    first = nodes.mirror_node("node-a", host_node(), now=NOW, **AGENT)
    second = nodes.mirror_node("node-a", host_node(), now=LATER, previous=first["status"], **AGENT)
    ready = second["status"]["conditions"][-1]
    assert (ready["lastTransitionTime"], ready["lastHeartbeatTime"]) == (NOW, LATER)
    third = nodes.mirror_node("node-a", host_node("False"), now=LATER, previous=second["status"], **AGENT)
    assert third["status"]["conditions"][-1]["lastTransitionTime"] == LATER


def test_the_resources_node_holds_the_promoted_cpu_and_memory():
    node = nodes.resources_node({"cpu": "1", "memory": "2Gi"}, healthy=True, message="", now=NOW, **AGENT)
    assert node["metadata"]["name"] == nodes.RESOURCES_NODE
    assert node["status"]["capacity"] == {"cpu": "1", "memory": "2Gi", "pods": "110"}
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["metadata"]["labels"][nodes.KIND_LABEL] == "resources"
    assert node["spec"] == {}
    ready = node["status"]["conditions"][-1]
    assert (ready["type"], ready["status"]) == ("Ready", "True")


def test_the_resources_node_is_not_ready_when_the_host_does_not_answer():
    node = nodes.resources_node({"cpu": "1"}, healthy=False, message="connection refused", now=NOW, **AGENT)
    ready = node["status"]["conditions"][-1]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "HostClusterUnreachable",
        "connection refused",
    )


def test_promote_resources_gives_one_mirror_per_node_and_one_resources_node():
    promote = {"nodes": ["node-a", "node-b", "node-a"], "resources": {"cpu": "4", "memory": "8Gi"}}
    made = nodes.virtual_nodes(promote, {"node-a": host_node()}, healthy=True, now=NOW, **AGENT)
    assert [n["metadata"]["name"] for n in made] == ["node-a", "node-b", nodes.RESOURCES_NODE]
    assert nodes.node_names(promote) == ["node-a", "node-b", nodes.RESOURCES_NODE]
    by_name = {n["metadata"]["name"]: n["status"]["conditions"][-1]["reason"] for n in made}
    assert by_name == {
        "node-a": "KubeletReady",
        "node-b": "HostNodeNotFound",
        nodes.RESOURCES_NODE: "KubeletReady",
    }
    assert nodes.virtual_nodes({}, {}, healthy=True, now=NOW, **AGENT) == []


def test_a_promoted_host_node_named_like_the_resources_node_is_refused():
    promote = {"nodes": [nodes.RESOURCES_NODE], "resources": {"cpu": "1"}}
    with pytest.raises(ValueError, match=r"promoteResources\.nodes names 'host-resources'"):
        nodes.virtual_nodes(promote, {}, healthy=True, now=NOW, **AGENT)


class HostNodes(FakeApi):
    """The host API server as the node source reads it; REFUSED: nodes it answers 403 for."""

    def __init__(self, *nodes_: dict, refused: tuple[str, ...] = ()) -> None:
        super().__init__("host")
        self.refused = refused
        for node in nodes_:
            self._store("/api/v1/nodes", node, "ADDED")

    def get(self, path: str):
        if path.rsplit("/", 1)[1] in self.refused:
            raise KubeError(f"nodes {path.rsplit('/', 1)[1]!r} is forbidden", status=403)
        return super().get(path)


def source_of(host: FakeApi, promote: dict) -> nodes.VirtualNodeSource:
    return nodes.VirtualNodeSource(
        host,
        promote,
        address="192.0.2.7",
        port=10250,
        kubelet_version="v1.34.0",
        resources_name="green-resources",
        labels={"team": "green"},
    )


UP = NodeFacts("hostcluster://v1.34.4", healthy=True)
PROMOTE = {"nodes": ["node-a", "node-x"], "resources": {"cpu": "1", "memory": "2Gi"}}


def ready_of(made: list[dict]) -> dict[str, tuple[str, str]]:
    return {
        n["metadata"]["name"]: next(
            (c["status"], c["reason"]) for c in n["status"]["conditions"] if c["type"] == "Ready"
        )
        for n in made
    }


def test_the_source_mirrors_each_promoted_host_node_beside_the_resources_node():
    source = source_of(HostNodes(host_node()), PROMOTE)
    made = source.nodes(UP, {})
    assert ready_of(made) == {
        "node-a": ("True", "KubeletReady"),
        "node-x": ("False", "HostNodeNotFound"),
        "green-resources": ("True", "KubeletReady"),
    }
    by_name = {n["metadata"]["name"]: n for n in made}
    assert by_name["node-a"]["status"]["capacity"] == host_node()["status"]["allocatable"]
    assert by_name["green-resources"]["status"]["capacity"] == {"cpu": "1", "memory": "2Gi", "pods": "110"}
    assert all(n["metadata"]["labels"]["team"] == "green" for n in made)
    assert all(n["status"]["addresses"] == [{"type": "InternalIP", "address": "192.0.2.7"}] for n in made)


def test_the_source_pins_a_mirrors_pods_to_its_host_node_with_its_taints():
    source = source_of(HostNodes(host_node()), PROMOTE)
    source.nodes(UP, {})
    mirror = source.placement("node-a")
    assert (mirror.host_node, mirror.node_address) == ("node-a", "192.0.2.7")
    assert mirror.host_node_taints == tuple(host_node()["spec"]["taints"])
    assert source.placement("green-resources").host_node is None
    assert source.placement("node-x").host_node == "node-x", "the host scheduler says why it waits"
    assert source.placement("someone-else") is None


def test_a_host_node_the_agent_cannot_read_makes_its_mirror_unknown_naming_why():
    source = source_of(HostNodes(host_node(), refused=("node-a",)), PROMOTE)
    made = source.nodes(UP, {})
    assert ready_of(made)["node-a"] == ("Unknown", "HostClusterUnreachable")
    message = next(c["message"] for c in made[0]["status"]["conditions"] if c["type"] == "Ready")
    assert "node-a" in message and "forbidden" in message
    assert ready_of(made)["green-resources"] == ("True", "KubeletReady"), "the other Nodes keep serving"


def test_an_unreachable_host_cluster_makes_every_virtual_node_not_ready():
    source = source_of(HostNodes(host_node()), PROMOTE)
    before = source.nodes(UP, {})
    down = source.nodes(
        NodeFacts("hostcluster://unknown", healthy=False, message="host cluster: refused"),
        {n["metadata"]["name"]: n["status"] for n in before},
    )
    assert ready_of(down) == {
        "node-a": ("Unknown", "HostClusterUnreachable"),
        "node-x": ("Unknown", "HostClusterUnreachable"),
        "green-resources": ("False", "HostClusterUnreachable"),
    }
    assert down[0]["status"]["capacity"] == host_node()["status"]["allocatable"], "the last read stands"


def test_a_promoted_host_node_named_like_the_agents_resources_node_is_refused_at_start():
    with pytest.raises(ValueError, match="green-resources"):
        source_of(HostNodes(), {"nodes": ["green-resources"], "resources": {"cpu": "1", "memory": "1Gi"}})

"""The rig runs a real Kubernetes control plane: kubernetes.core's modules work against
it, watches deliver events, and the controller-manager, scheduler and kwok act."""

from __future__ import annotations

from pathlib import Path

import kubernetes
from kubernetes.client import ApiClient
from riglib import toolchain

PLAYBOOKS = Path(__file__).parent / "playbooks"


def test_the_api_server_is_the_pinned_kubernetes(api_client: ApiClient) -> None:
    version = kubernetes.client.VersionApi(api_client).get_code()
    assert version.git_version == toolchain.versions()["KUBERNETES_VERSION"]


def test_kubernetes_core_creates_and_reads_a_custom_resource_and_a_watch_sees_it(
    api_client: ApiClient, run_playbook
) -> None:
    crd_only = run_playbook(PLAYBOOKS / "crd_roundtrip.yml", "--tags", "crd")
    assert crd_only.rc == 0, crd_only.stderr
    assert crd_only.task_results("Create the Widget CRD")[0]["changed"] is True

    custom = kubernetes.client.CustomObjectsApi(api_client)
    listed = custom.list_namespaced_custom_object("test.rhizeption.io", "v1", "default", "widgets")
    assert listed["items"] == []
    since = listed["metadata"]["resourceVersion"]

    run = run_playbook(PLAYBOOKS / "crd_roundtrip.yml", extra_vars={"widget_name": "first", "widget_size": 3})
    assert run.rc == 0, run.stderr
    # The CRD was already there: kubernetes.core saw no difference to apply.
    assert run.task_results("Create the Widget CRD")[0]["changed"] is False
    read_back = run.task_results("Read the Widget back")[0]["resources"]
    assert [(w["metadata"]["name"], w["spec"]["size"]) for w in read_back] == [("first", 3)]

    events = kubernetes.watch.Watch().stream(
        custom.list_namespaced_custom_object,
        "test.rhizeption.io",
        "v1",
        "default",
        "widgets",
        resource_version=since,
        timeout_seconds=30,
    )
    first = next(events)
    assert first["type"] == "ADDED"
    assert first["object"]["metadata"]["name"] == "first"
    assert first["object"]["metadata"]["resourceVersion"] == read_back[0]["metadata"]["resourceVersion"]


def test_the_api_server_validates_against_the_crd_schema(api_client: ApiClient, run_playbook) -> None:
    assert run_playbook(PLAYBOOKS / "crd_roundtrip.yml", "--tags", "crd").rc == 0
    bad = run_playbook(PLAYBOOKS / "crd_roundtrip.yml", extra_vars={"widget_name": "bad", "widget_size": 0})
    assert bad.rc != 0
    failure = bad.task_results("Create a Widget")[0]
    assert failure["failed"] is True
    assert "spec.size" in failure["msg"] or "spec.size" in str(failure.get("error", ""))


def test_controllers_scheduler_and_kwok_run_a_deployment(api_client: ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    apps = kubernetes.client.AppsV1Api(api_client)
    node = {
        "metadata": {
            "name": "kwok-node-0",
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok"},
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
    }
    core.create_node(node)
    deployment = {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [
                        {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [{"name": "web", "image": "web:never-pulled"}],
                },
            },
        },
    }
    apps.create_namespaced_deployment("default", deployment)
    running: set[str] = set()
    # The Deployment controller makes a ReplicaSet, that one makes Pods, the scheduler
    # binds them to the kwok Node, and kwok reports them Running.
    for event in kubernetes.watch.Watch().stream(
        core.list_namespaced_pod, "default", label_selector="app=web", timeout_seconds=60
    ):
        pod = event["object"]
        if pod.status.phase == "Running":
            assert pod.spec.node_name == "kwok-node-0"
            running.add(pod.metadata.name)
        if len(running) == 2:
            break
    assert len(running) == 2, f"only {sorted(running)} reached Running"
    conditions = {c.type: c.status for c in core.read_node("kwok-node-0").status.conditions}
    assert conditions["Ready"] == "True"

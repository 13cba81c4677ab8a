"""hncluster, hnmachine and hnmachine_info against the rig's real kube-apiserver, with the
CRDs installed by the crds role and kwok standing in for host Nodes (Pods reach Running
without containers)."""

from __future__ import annotations

import subprocess
import threading

import kubernetes
import pytest
from conftest import KWOK_PLACEMENT, PLAYBOOKS
from riglib import toolchain

GROUP, VERSION = "hn.rhizeption.io", "v1alpha1"
IMAGE = "localhost/rhizeption/hosted-node:test"

pytestmark = pytest.mark.usefixtures("hn_crds", "kwok_node")


@pytest.fixture
def hn(run_playbook):
    """Run one module task; returns its result."""

    def run(module: str, *args: str, **task_vars):
        played = run_playbook(
            PLAYBOOKS / "hn_module.yml", *args, extra_vars={"module": module, "task": task_vars}
        )
        (result,) = played.task_results(f"Run {module}")
        return result

    return run


@pytest.fixture
def custom(api_client):
    return kubernetes.client.CustomObjectsApi(api_client)


def spec(**template):
    return {
        "controlPlaneEndpoint": {"host": "tenant-api.example", "port": 6443},
        "machineTemplate": {"image": IMAGE, "imagePullPolicy": "Never", **KWOK_PLACEMENT, **template},
    }


def machines(custom, namespace):
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "hnmachines")["items"]
    return {m["metadata"]["name"]: m for m in items}


def pods(core, namespace):
    return {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}


def test_crds_role_is_idempotent_and_printer_columns_show_machines(
    hn_crds, run_playbook, hn, namespace, control_plane
):
    assert hn_crds.changed > 0
    again = run_playbook(PLAYBOOKS / "crds.yml")
    assert again.rc == 0 and again.changed == 0

    result = hn("hncluster", name="cols", namespace=namespace, spec=spec(), replicas=1, wait=True)
    assert result["changed"] is True, result
    out = subprocess.run(
        [
            str(toolchain.binary("kubectl")),
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "get",
            "hnm",
            "-n",
            namespace,
            "-o",
            "wide",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "CLUSTER", "PHASE", "NODE", "POD-IP", "HOST", "REASON", "AGE"]
    assert row.split()[:3] == ["cols-0", "cols", "Running"]
    assert "hn-kwok-0" in row.split()
    out = subprocess.run(
        [
            str(toolchain.binary("kubectl")),
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "get",
            "hnc",
            "-n",
            namespace,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[0].split() == ["NAME", "REPLICAS", "READY", "PHASE", "ENDPOINT", "AGE"]
    assert out.splitlines()[1].split()[:5] == ["cols", "1", "1", "Ready", "tenant-api.example"]


def test_cluster_lifecycle_check_mode_create_idempotence_scale_delete(hn, namespace, custom, core):
    # Check mode: validated by the API server, nothing written.
    result = hn("hncluster", "--check", "--diff", name="blue", namespace=namespace, spec=spec(), replicas=2)
    assert result["changed"] is True
    assert result["created"] == ["blue-0", "blue-1"]
    assert result["diff"]["before"] == {} and result["diff"]["after"]["spec"]["replicas"] == 2
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "hnclusters")["items"] == []
    assert machines(custom, namespace) == {} and pods(core, namespace) == {}

    # Create, and wait until every machine is ready.
    result = hn("hncluster", name="blue", namespace=namespace, spec=spec(), replicas=2, wait=True)
    assert result["changed"] is True and result["created"] == ["blue-0", "blue-1"]
    assert [(m["name"], m["phase"], m["ready"]) for m in result["machines"]] == [
        ("blue-0", "Running", True),
        ("blue-1", "Running", True),
    ]
    cluster = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "hnclusters", "blue")
    assert cluster["status"]["readyReplicas"] == 2 and cluster["status"]["phase"] == "Ready"
    found = machines(custom, namespace)
    running = pods(core, namespace)
    assert sorted(running) == ["blue-0", "blue-1"]
    for name, pod in running.items():
        assert pod.metadata.labels["hn.rhizeption.io/cluster"] == "blue"
        assert pod.metadata.labels["hn.rhizeption.io/machine"] == name
        (owner,) = pod.metadata.owner_references
        assert (owner.kind, owner.uid) == ("HnMachine", found[name]["metadata"]["uid"])
        assert pod.spec.containers[0].security_context.privileged is True
        # Status comes from the Pod that exists, not from what was asked.
        assert found[name]["status"]["podIP"] == pod.status.pod_ip
        assert found[name]["status"]["hostNodeName"] == pod.spec.node_name == "hn-kwok-0"

    # The same task again: nothing to do.
    result = hn("hncluster", name="blue", namespace=namespace, spec=spec(), replicas=2, wait=True)
    assert result["changed"] is False, result
    assert result["created"] == [] and result["deleted"] == []

    # Scale up, then down: the newest go first among equally ready machines.
    result = hn("hncluster", name="blue", namespace=namespace, spec=spec(), replicas=3, wait=True)
    assert result["created"] == ["blue-2"]
    result = hn("hncluster", name="blue", namespace=namespace, spec=spec(), replicas=1)
    assert result["changed"] is True and result["deleted"] == ["blue-2", "blue-1"]
    assert sorted(machines(custom, namespace)) == ["blue-0"]
    assert sorted(pods(core, namespace)) == ["blue-0"]

    # Delete: machines and Pods first, then the cluster; a second delete is no change.
    result = hn("hncluster", name="blue", namespace=namespace, state="absent")
    assert result["changed"] is True and result["deleted"] == ["blue-0"]
    assert machines(custom, namespace) == {} and pods(core, namespace) == {}
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "hnclusters")["items"] == []
    result = hn("hncluster", name="blue", namespace=namespace, state="absent")
    assert result["changed"] is False


def test_machine_status_progresses_from_pending_to_running_as_its_pod_runs(
    hn, namespace, custom, core, api_client
):
    # A placement no Node matches yet: the Pod stays unschedulable.
    held = {
        "nodeSelector": {"hn.rhizeption.io/test-host": f"later-{namespace}"},
        "tolerations": KWOK_PLACEMENT["tolerations"],
    }
    hn("hncluster", name="grey", namespace=namespace, spec=spec(), replicas=0)
    phases: list[str] = []
    started = threading.Event()

    # Watched from a listed version, so every status write after it is seen in order.
    since = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "hnmachines")["metadata"][
        "resourceVersion"
    ]

    def record() -> None:
        stream = kubernetes.watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "hnmachines",
            resource_version=since,
            timeout_seconds=120,
        )
        started.set()
        for event in stream:
            phase = (event["object"].get("status") or {}).get("phase")
            if phase and (not phases or phases[-1] != phase):
                phases.append(phase)
            if phase == "Running":
                return

    watcher = threading.Thread(target=record, daemon=True)
    watcher.start()
    started.wait(10)
    result = hn("hnmachine", name="grey-a", namespace=namespace, cluster="grey", template=held)
    assert result["changed"] is True and result["pod_created"] is True
    assert result["phase"] == "Provisioning"
    # Waiting cannot succeed yet: the timeout names what holds the machine.
    result = hn(
        "hnmachine",
        name="grey-a",
        namespace=namespace,
        cluster="grey",
        template=held,
        wait=True,
        wait_timeout=5,
    )
    assert result.get("failed") is True
    assert "is Provisioning after 5 s, not Running" in result["msg"]
    assert "PodScheduled=False (Unschedulable" in result["msg"]
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "hnmachines", "grey-a")
    conditions = {c["type"]: c for c in stored["status"]["conditions"]}
    assert (conditions["PodScheduled"]["status"], conditions["PodScheduled"]["reason"]) == (
        "False",
        "Unschedulable",
    )

    # Give the kwok Node the label: the scheduler binds the Pod, kwok runs it.
    core.patch_node(
        "hn-kwok-0", {"metadata": {"labels": {"hn.rhizeption.io/test-host": f"later-{namespace}"}}}
    )
    try:
        result = hn(
            "hnmachine",
            name="grey-a",
            namespace=namespace,
            cluster="grey",
            template=held,
            wait=True,
            wait_for="Running",
        )
    finally:
        core.patch_node("hn-kwok-0", {"metadata": {"labels": {"hn.rhizeption.io/test-host": "kwok"}}})
    assert result["changed"] is False  # the machine was already as asked; only its status moved
    assert result["phase"] == "Running"
    watcher.join(30)
    assert phases == ["Pending", "Provisioning", "Running"]


def test_machine_delete_removes_its_pod_first_and_honours_other_finalizers(hn, namespace, custom, core):
    hn("hncluster", name="red", namespace=namespace, spec=spec(), replicas=0)
    result = hn("hnmachine", name="red-x", namespace=namespace, cluster="red", wait=True)
    assert result["phase"] == "Running"
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "hnmachines",
        "red-x",
        {"metadata": {"finalizers": ["hn.rhizeption.io/machine", "example.com/hold"]}},
    )

    result = hn("hnmachine", name="red-x", namespace=namespace, state="absent", wait_timeout=3)
    assert result.get("failed") is True
    assert "example.com/hold" in result["msg"]
    # The Pod is gone and our finalizer released; the machine waits for the other one.
    assert "red-x" not in pods(core, namespace)
    left = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "hnmachines", "red-x")
    assert left["metadata"]["finalizers"] == ["example.com/hold"]
    assert left["status"]["phase"] == "Deleting"

    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "hnmachines", "red-x", {"metadata": {"finalizers": None}}
    )
    result = hn("hnmachine", name="red-x", namespace=namespace, state="absent")
    assert result["changed"] is False  # gone already


def test_a_machine_whose_pod_cannot_be_created_leaves_nothing_behind(hn, namespace, custom, core):
    hn("hncluster", name="pink", namespace=namespace, spec=spec(), replicas=0)
    result = hn(
        "hnmachine",
        name="pink-0",
        namespace=namespace,
        cluster="pink",
        template={"priorityClassName": "no-such-class"},
    )
    assert result.get("failed") is True
    assert "no-such-class" in result["msg"]
    assert machines(custom, namespace) == {}
    assert pods(core, namespace) == {}


def test_node_pods_of_a_tenant_with_promoted_nodes_run_only_on_those_nodes(
    hn, namespace, custom, core, kwok_node
):
    # Two tenants: one was handed the kwok Node, the other a host node that does not exist.
    for tenant, nodes in (("given", [kwok_node]), ("elsewhere", ["no-such-host-node"])):
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "tenantcontrolplanes",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TenantControlPlane",
                "metadata": {"name": tenant},
                "spec": {"version": "v1.34.4", "promoteResources": {"nodes": nodes}},
            },
        )
        result = hn(
            "hncluster",
            name=f"{tenant}-nodes",
            namespace=namespace,
            spec={**spec(), "controlPlaneRef": {"name": tenant}},
            replicas=1,
            wait=tenant == "given",
        )
        assert result.get("failed") is not True, result.get("msg")
    placed = pods(core, namespace)
    for tenant, nodes in (("given", [kwok_node]), ("elsewhere", ["no-such-host-node"])):
        term = placed[f"{tenant}-nodes-0"].spec.affinity.node_affinity
        expr = term.required_during_scheduling_ignored_during_execution.node_selector_terms[0].match_fields[0]
        assert (expr.key, expr.operator, expr.values) == ("metadata.name", "In", nodes)
    assert placed["given-nodes-0"].spec.node_name == kwok_node
    assert machines(custom, namespace)["given-nodes-0"]["status"]["phase"] == "Running"
    # The kwok Node matches the template's selector, but it was not promoted to this tenant.
    for event in kubernetes.watch.Watch().stream(
        core.list_namespaced_pod,
        namespace,
        field_selector="metadata.name=elsewhere-nodes-0",
        timeout_seconds=30,
    ):
        held = event["object"]
        if [c.reason for c in held.status.conditions or [] if c.type == "PodScheduled"] == ["Unschedulable"]:
            break
    else:
        pytest.fail("the scheduler did not mark elsewhere-nodes-0 Unschedulable in 30 s")
    assert held.spec.node_name is None


def test_info_filters_by_cluster_labels_and_phase(hn, namespace):
    hn("hncluster", name="one", namespace=namespace, spec=spec(), replicas=2, wait=True)
    hn("hncluster", name="two", namespace=namespace, spec=spec(nodeSelector={"nowhere": "x"}), replicas=1)

    result = hn("hnmachine_info", namespace=namespace, cluster="one")
    assert [m["metadata"]["name"] for m in result["machines"]] == ["one-0", "one-1"]
    result = hn("hnmachine_info", namespace=namespace, phase=["Provisioning"])
    assert [m["metadata"]["name"] for m in result["machines"]] == ["two-0"]
    result = hn(
        "hnmachine_info",
        namespace=namespace,
        label_selectors=["hn.rhizeption.io/cluster in (one, two)"],
        name="one-1",
    )
    assert [m["metadata"]["name"] for m in result["machines"]] == ["one-1"]
    result = hn("hnmachine_info", cluster="one")  # all namespaces
    assert {m["metadata"]["namespace"] for m in result["machines"]} == {namespace}


def test_hnmachine_check_and_diff_mode(hn, namespace, custom, core):
    hn("hncluster", name="teal", namespace=namespace, spec=spec(), replicas=0)
    result = hn(
        "hnmachine",
        "--check",
        "--diff",
        name="teal-0",
        namespace=namespace,
        cluster="teal",
        labels={"a": "b"},
    )
    assert result["changed"] is True
    assert result["diff"]["before"] == {}
    assert result["diff"]["after"]["metadata"]["labels"]["a"] == "b"
    assert machines(custom, namespace) == {} and pods(core, namespace) == {}

    hn("hnmachine", name="teal-0", namespace=namespace, cluster="teal", labels={"a": "b"})
    result = hn(
        "hnmachine",
        "--check",
        "--diff",
        name="teal-0",
        namespace=namespace,
        cluster="teal",
        labels={"a": "c"},
    )
    assert result["changed"] is True
    assert result["diff"]["before"]["metadata"]["labels"]["a"] == "b"
    assert result["diff"]["after"]["metadata"]["labels"]["a"] == "c"
    assert machines(custom, namespace)["teal-0"]["metadata"]["labels"]["a"] == "b"
    result = hn("hnmachine", name="teal-0", namespace=namespace, cluster="teal", labels={"a": "b"})
    assert result["changed"] is False


@pytest.mark.parametrize(
    ("module", "task", "expected"),
    [
        ("hncluster", {"replicas": -1}, "replicas: must be 0 or more"),
        ("hncluster", {"spec": {"replicas": -1, "machineTemplate": {"image": IMAGE}}}, "spec.replicas"),
        (
            "hncluster",
            {"spec": {"machineTemplate": {"image": IMAGE, "resources": {"requests": {"cpu": "lots"}}}}},
            "spec.machineTemplate.resources.requests.cpu",
        ),
        (
            "hncluster",
            {
                "spec": {
                    "network": {"podCIDR": "10.0.0.0/8", "serviceCIDR": "10.96.0.0/16"},
                    "machineTemplate": {"image": IMAGE},
                }
            },
            "must not overlap",
        ),
        (
            "hncluster",
            {"spec": {"network": {"podCIDR": "10.0.0.0/33"}, "machineTemplate": {"image": IMAGE}}},
            "spec.network.podCIDR",
        ),
        ("hncluster", {"spec": {"machineTemplate": {}}}, "spec.machineTemplate.image"),
        ("hnmachine", {"cluster": "does-not-exist"}, "cluster: HnCluster"),
    ],
)
def test_bad_input_is_rejected_with_the_field_and_nothing_is_written(
    hn, namespace, custom, module, task, expected
):
    result = hn(
        module, name="bad", namespace=namespace, **({"spec": spec()} if module == "hncluster" else {}) | task
    )
    assert result.get("failed") is True
    assert expected in result["msg"], result["msg"]
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "hnclusters")["items"] == []
    assert machines(custom, namespace) == {}


def test_immutable_fields_are_refused_by_the_api_server(hn, namespace):
    hn(
        "hncluster",
        name="a",
        namespace=namespace,
        spec=spec() | {"network": {"podCIDR": "10.244.0.0/16"}},
        replicas=0,
    )
    hn("hncluster", name="b", namespace=namespace, spec=spec(), replicas=0)
    hn("hnmachine", name="m", namespace=namespace, cluster="a")
    result = hn("hnmachine", name="m", namespace=namespace, cluster="b")
    assert result.get("failed") is True
    assert "spec.clusterName" in result["msg"] and "immutable" in result["msg"]
    result = hn(
        "hncluster", name="a", namespace=namespace, spec=spec() | {"network": {"podCIDR": "10.250.0.0/16"}}
    )
    assert result.get("failed") is True
    assert "spec.network" in result["msg"] and "immutable" in result["msg"]


def test_crds_role_refuses_to_remove_the_crds_while_objects_exist(hn, run_playbook, namespace, custom):
    hn("hncluster", name="keep", namespace=namespace, spec=spec(), replicas=1)
    run = run_playbook(PLAYBOOKS / "crds.yml", extra_vars={"crds_state": "absent"})
    assert run.rc != 0
    (failure,) = run.failures
    assert "Refuse while objects of the CRDs exist" in failure
    assert "keep" in failure and "keep-0" in failure
    assert "rhizeption.core.hncluster with state=absent" in failure
    # Still served, objects intact.
    assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "hnclusters", "keep")

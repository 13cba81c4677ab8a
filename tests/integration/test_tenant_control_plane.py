"""tenant_control_plane and tenant_control_plane_info against the rig's real kube-apiserver,
with the CRDs installed by the crds role and kwok standing in for host Nodes: the control
plane's Pods are bound and reported Running and Ready without running containers. That is
enough for what the host cluster sees (apply, status, idempotence, check mode, bad input,
delete); tests on a host cluster with a real node run the Pods for real."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import kubernetes
import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import pki
from conftest import KWOK_PLACEMENT, PLAYBOOKS
from tenanthost import DEPLOYER_ROLE, install_host_objects, remove_host_objects

GROUP, VERSION, PLURAL = "hn.rhizeption.io", "v1alpha1", "tenantcontrolplanes"
TENANT_LABEL = "hn.rhizeption.io/tenant"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("hn_crds", "kwok_node")


OPERATOR = "rhizeption-operator"


@pytest.fixture(scope="module")
def operator_kubeconfig(control_plane, api_client, tmp_path_factory):
    """A kubeconfig of a user who has the documented ClusterRole and nothing else: the
    modules run with it, never as the host's cluster-admin."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    made = install_host_objects(api_client)
    binding = {
        "metadata": {"name": OPERATOR},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": DEPLOYER_ROLE,
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR}],
    }
    rbac.create_cluster_role_binding(binding)
    path = tmp_path_factory.mktemp("operator") / "operator.kubeconfig"
    pki.write_file(path, control_plane.client_kubeconfig(OPERATOR), private=True)
    try:
        yield path
    finally:
        rbac.delete_cluster_role_binding(OPERATOR)
        remove_host_objects(api_client, made)


@pytest.fixture
def tcp(run_playbook, operator_kubeconfig):
    """Run one module task as the operator; returns its result."""

    def run(*args: str, module: str = "tenant_control_plane", **task):
        played = run_playbook(
            PLAYBOOKS / "tenant_module.yml",
            *args,
            extra_vars={"module": module, "task": task, "kubeconfig": str(operator_kubeconfig)},
        )
        (result,) = played.task_results(f"Run {module}")
        return result

    return run


@pytest.fixture
def custom(api_client):
    return kubernetes.client.CustomObjectsApi(api_client)


@pytest.fixture
def etcd_volume(core):
    """A PersistentVolume bound ahead to a tenant's etcd claim (the rig has no provisioner);
    removed afterwards."""
    made: list[str] = []

    def make(namespace: str, tenant: str) -> str:
        name = f"{namespace}-{tenant}-etcd"[:63]
        core.create_persistent_volume(
            {
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": f"/tmp/{name}"},
                    "claimRef": {"namespace": namespace, "name": f"data-{tenant}-etcd-0"},
                },
            }
        )
        made.append(name)
        return name

    yield make
    for name in made:
        core.delete_persistent_volume(name)


def spec(**extra):
    return {"version": "v1.34.4", "placement": KWOK_PLACEMENT, **extra}


def owned_objects(api_client, namespace: str, tenant: str) -> dict[str, list[str]]:
    """Kind -> names of the objects labelled as the tenant's in NAMESPACE."""
    selector = f"{TENANT_LABEL}={tenant}"
    core = kubernetes.client.CoreV1Api(api_client)
    apps = kubernetes.client.AppsV1Api(api_client)
    net = kubernetes.client.NetworkingV1Api(api_client)
    found = {
        "Secret": core.list_namespaced_secret(namespace, label_selector=selector).items,
        "Service": core.list_namespaced_service(namespace, label_selector=selector).items,
        "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim(
            namespace, label_selector=selector
        ).items,
        "Pod": core.list_namespaced_pod(namespace, label_selector=selector).items,
        "StatefulSet": apps.list_namespaced_stateful_set(namespace, label_selector=selector).items,
        "Deployment": apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        "NetworkPolicy": net.list_namespaced_network_policy(namespace, label_selector=selector).items,
    }
    return {kind: sorted(o.metadata.name for o in items) for kind, items in found.items() if items}


def no_key_material(result: dict) -> None:
    text = json.dumps(result)
    assert "PRIVATE KEY" not in text
    assert base64.b64encode(b"-----BEGIN EC PRIVATE KEY").decode()[:20] not in text


def test_check_mode_apply_idempotence_and_delete(tcp, api_client, custom, namespace, etcd_volume, tmp_path):
    etcd_volume(namespace, "blue")
    # Check mode on a new tenant: reports everything it would create, writes nothing.
    checked = tcp("--check", name="blue", namespace=namespace, spec=spec())
    assert checked.get("failed") is not True, checked.get("msg")
    assert checked["changed"] is True
    assert "TenantControlPlane blue" in checked["created"] and "StatefulSet blue-etcd" in checked["created"]
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []
    assert owned_objects(api_client, namespace, "blue") == {}

    kubeconfig = tmp_path / "blue.kubeconfig"
    first = tcp(
        name="blue",
        namespace=namespace,
        spec=spec(),
        wait=True,
        wait_timeout=120,
        admin_kubeconfig_path=str(kubeconfig),
    )
    assert first.get("failed") is not True, first.get("msg")
    assert first["changed"] is True and first["phase"] == "Ready"
    assert first["endpoint"] == f"https://blue.{namespace}.svc:6443"
    no_key_material(first)
    objects = owned_objects(api_client, namespace, "blue")
    assert objects["StatefulSet"] == ["blue-etcd"]
    assert objects["Deployment"] == ["blue-apiserver", "blue-controller-manager", "blue-scheduler"]
    assert objects["Service"] == ["blue", "blue-etcd", "blue-etcd-peers"]
    assert len(objects["Secret"]) == 13
    assert objects["PersistentVolumeClaim"] == ["data-blue-etcd-0"]
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "blue")["status"]
    assert status["phase"] == "Ready" and status["version"] == "v1.34.4"
    assert status["adminKubeconfigSecret"] == "blue-admin-kubeconfig"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "DatastoreReady": "True",
        "APIServerReady": "True",
        "ControllerManagerReady": "True",
        "SchedulerReady": "True",
        "Ready": "True",
    }
    # The admin kubeconfig: private, and naming the tenant's endpoint.
    assert stat.S_IMODE(os.stat(kubeconfig).st_mode) == 0o600
    written = json.loads(kubeconfig.read_text())
    assert written["clusters"][0]["cluster"]["server"] == first["endpoint"]
    assert written["users"][0]["user"]["client-key-data"]

    # A second identical run changes nothing, nor does check mode now.
    again = tcp(
        name="blue",
        namespace=namespace,
        spec=spec(),
        wait=True,
        wait_timeout=120,
        admin_kubeconfig_path=str(kubeconfig),
    )
    assert again.get("failed") is not True, again.get("msg")
    assert (again["changed"], again["created"], again["updated"]) == (False, [], [])
    assert again.get("admin_kubeconfig_written") is False
    checked = tcp("--check", "--diff", name="blue", namespace=namespace, spec=spec())
    assert (checked["changed"], checked["created"], checked["updated"]) == (False, [], [])

    # A change: check mode names it and leaves it; the real run makes it.
    bigger = spec(resources={"apiServer": {"requests": {"cpu": "300m"}}})
    checked = tcp("--check", name="blue", namespace=namespace, spec=bigger)
    assert checked["changed"] is True
    assert "Deployment blue-apiserver" in checked["updated"], checked["updated"]
    deployment = kubernetes.client.AppsV1Api(api_client).read_namespaced_deployment(
        "blue-apiserver", namespace
    )
    assert deployment.spec.template.spec.containers[0].resources.requests is None

    listed = tcp(module="tenant_control_plane_info", namespace=namespace, phase=["Ready"])
    assert [t["metadata"]["name"] for t in listed["tenant_control_planes"]] == ["blue"]
    no_key_material(listed)

    # Delete: nothing of the tenant is left, volumes included.
    gone = tcp(name="blue", namespace=namespace, state="absent", wait_timeout=120)
    assert gone.get("failed") is not True, gone.get("msg")
    assert gone["changed"] is True
    assert "PersistentVolumeClaim data-blue-etcd-0" in gone["deleted"]
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []
    assert owned_objects(api_client, namespace, "blue") == {}
    assert tcp(name="blue", namespace=namespace, state="absent")["changed"] is False


@pytest.mark.parametrize(
    ("bad_spec", "field", "accepted"),
    [
        ({"version": "v1.99.0"}, "spec.version", "accepted: v1.33.13, v1.34.4"),
        (
            {"exposure": {"type": "NodePort", "nodePort": 80}},
            "spec.exposure.nodePort",
            "accepted: 30000-32767",
        ),
        ({"serviceCIDR": "10.96.0.0/12", "podCIDR": "10.100.0.0/16"}, "spec.podCIDR", "overlaps"),
        ({"podCIDR": "10.244.0.1/16"}, "spec.podCIDR", "is not a CIDR"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    tcp, api_client, custom, namespace, bad_spec, field, accepted
):
    result = tcp(name="bad", namespace=namespace, spec={**spec(), **bad_spec})
    assert result.get("failed") is True
    assert result["msg"].startswith(f"{field}:") and accepted in result["msg"], result["msg"]
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []
    assert owned_objects(api_client, namespace, "bad") == {}


def test_names_of_others_and_immutable_fields_are_refused(
    tcp, api_client, core, custom, namespace, etcd_volume
):
    # A Service of the tenant's name that someone else owns: not taken over.
    core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "taken"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "x"}}},
    )
    result = tcp(name="taken", namespace=namespace, spec=spec())
    assert result.get("failed") is True
    assert result["msg"].startswith("metadata.name: Service") and "does not belong" in result["msg"]
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []
    assert core.read_namespaced_service("taken", namespace).metadata.labels is None

    etcd_volume(namespace, "green")
    made = tcp(name="green", namespace=namespace, spec=spec(), wait=True, wait_timeout=120)
    assert made.get("failed") is not True, made.get("msg")
    before = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "green")
    changed = tcp(name="green", namespace=namespace, spec=spec(serviceCIDR="10.100.0.0/16"))
    assert changed.get("failed") is True
    assert changed["msg"] == "spec.serviceCIDR: is immutable; it stays 10.96.0.0/16"
    after = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "green")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert tcp(name="green", namespace=namespace, state="absent", wait_timeout=120)["changed"] is True


def test_a_tenant_whose_etcd_never_gets_ready_ends_failed(tcp, api_client, custom, namespace):
    # No volume for its etcd claim: the etcd Pod is never scheduled.
    result = tcp(name="stuck", namespace=namespace, spec=spec(), wait=True, wait_timeout=10)
    assert result.get("failed") is True
    assert "not Ready after 10 s" in result["msg"] and "DatastoreReady" in result["msg"], result["msg"]
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "stuck")["status"]
    assert status["phase"] == "Failed"
    assert status["failureReason"] == "DatastoreNotReady"
    assert "etcd" in status["failureMessage"]
    # Its delete cleans everything up, the pending claim too.
    gone = tcp(name="stuck", namespace=namespace, state="absent", wait_timeout=120)
    assert gone.get("failed") is not True, gone.get("msg")
    assert owned_objects(api_client, namespace, "stuck") == {}


def test_tenants_playbook_creates_the_tenants_of_the_inventory(
    run_playbook, api_client, custom, namespace, etcd_volume, tmp_path, operator_kubeconfig
):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        json.dumps({"controller": {"hosts": {"tenant-controller": {"ansible_connection": "local"}}}})
    )
    tenants = [
        {"name": n, "namespace": namespace, "spec": spec(), "wait_timeout": 120} for n in ("red", "teal")
    ]
    for t in tenants:
        etcd_volume(namespace, t["name"])
    # Installing the CRDs is the cluster admin's part (the hn_crds fixture did it); the
    # tenants are the operator's.
    vars_ = {
        "rhizeption_tenants": tenants,
        "rhizeption_kubeconfig": str(operator_kubeconfig),
        "rhizeption_install_crds": False,
    }
    run = run_playbook(REPO / "playbooks" / "tenants.yml", "-i", str(inventory), extra_vars=vars_)
    assert run.rc == 0, run.failures or run.stderr[-2000:]
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    assert sorted((t["metadata"]["name"], t["status"]["phase"]) for t in items) == [
        ("red", "Ready"),
        ("teal", "Ready"),
    ]
    again = run_playbook(REPO / "playbooks" / "tenants.yml", "-i", str(inventory), extra_vars=vars_)
    assert again.rc == 0 and again.changed == 0, again.failures
    removal = {**vars_, "rhizeption_tenants": [{**t, "state": "absent"} for t in tenants]}
    gone = run_playbook(REPO / "playbooks" / "tenants.yml", "-i", str(inventory), extra_vars=removal)
    assert gone.rc == 0, gone.failures
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []


def test_promoted_resources_are_a_quota_reported_in_status(
    tcp, api_client, core, custom, namespace, etcd_volume
):
    # An HnCluster of the tenant whose nodes ask for more than the quota: refused first.
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "hnclusters",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "HnCluster",
            "metadata": {"name": "quota-nodes"},
            "spec": {
                "replicas": 0,
                "controlPlaneRef": {"name": "quota"},
                "machineTemplate": {
                    "image": "localhost/rhizeption/node:v1.34.4",
                    "resources": {"requests": {"cpu": "3"}},
                },
            },
        },
    )
    # Resources that only bound hosted nodes (issue #8): no virtual nodes.
    small = spec(promoteResources={"resources": {"cpu": "2", "memory": "4Gi"}, "virtualNodes": False})
    refused = tcp(name="quota", namespace=namespace, spec=small)
    assert refused.get("failed") is True
    assert refused["msg"] == (
        "spec.promoteResources.resources.cpu: 2 is less than one hosted node of HnCluster"
        f" {namespace}/quota-nodes (3); accepted: 3 or more"
    )
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"] == []

    etcd_volume(namespace, "quota")
    enough = spec(promoteResources={"resources": {"cpu": "4", "memory": "4Gi"}, "virtualNodes": False})
    made = tcp(name="quota", namespace=namespace, spec=enough, wait=True, wait_timeout=120)
    assert made.get("failed") is not True, made.get("msg")
    quota = core.read_namespaced_resource_quota("quota-promoted", namespace)
    assert quota.spec.hard == {"requests.cpu": "4", "requests.memory": "4Gi"}
    # The control plane's four Pods got the default requests and count against it.
    pods = core.list_namespaced_pod(namespace, label_selector=f"{TENANT_LABEL}=quota").items
    assert len(pods) == 4
    assert all(p.spec.containers[0].resources.requests == {"cpu": "100m", "memory": "128Mi"} for p in pods)
    again = tcp(name="quota", namespace=namespace, spec=enough, wait=True, wait_timeout=120)
    assert again["changed"] is False, (again["created"], again["updated"])
    promoted = again["tenant_control_plane"]["status"]["promotedResources"]
    assert promoted["resources"] == {"cpu": "4", "memory": "4Gi"}
    assert promoted["used"] == {"cpu": "400m", "memory": "512Mi"}
    assert tcp(name="quota", namespace=namespace, state="absent", wait_timeout=120)["changed"] is True
    assert owned_objects(api_client, namespace, "quota") == {}

"""Integration fixtures: a real control plane from hack/riglib, and a way to run
playbooks against it with this checkout as rhizeption.core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hosted
import kubernetes
import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import pki
from riglib.controlplane import COMPONENTS, ControlPlane
from riglib.node import HostCluster, image_archive

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, controller-manager, scheduler and kwok for the whole session.
    Its processes die with pytest even if pytest is killed (PR_SET_PDEATHSIG)."""
    cp = ControlPlane(tmp_path_factory.mktemp("rig") / "session", COMPONENTS, die_with_parent=True)
    cp.up()
    try:
        yield cp
    finally:
        cp.down()


@pytest.fixture(scope="session")
def host_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostCluster]:
    """A small real host cluster for the session: a rig control plane (no kwok) with one real
    node, containerd + kubelet + kube-proxy in a privileged Podman container, and CoreDNS.
    Every local image archive but host and node is imported into the node, so Pods run them
    with imagePullPolicy Never. Pod IPs and NodePorts (on host_cluster.node.node_ip) are
    reachable from the tests, ClusterIPs too when host_cluster.service_routed."""
    hc = HostCluster(tmp_path_factory.mktemp("host-cluster") / "session", die_with_parent=True)
    hc.up()
    try:
        yield hc
    finally:
        hc.down()


@pytest.fixture(scope="session")
def host_api_client(host_cluster: HostCluster) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(str(host_cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(str(control_plane.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@dataclass
class PlaybookRun:
    rc: int
    output: dict
    stderr: str

    def task_results(self, task_name: str) -> list[dict]:
        """The per-host results of every run of the task named TASK_NAME."""
        return [
            host_result
            for play in self.output["plays"]
            for task in play["tasks"]
            if task["task"]["name"] == task_name
            for host_result in task["hosts"].values()
        ]

    @property
    def failures(self) -> list[str]:
        """'task: message' of every failed task, for assertion messages."""
        return [
            f"{task['task']['name']}: {result.get('msg')}"
            for play in self.output["plays"]
            for task in play["tasks"]
            for result in task["hosts"].values()
            if result.get("failed")
        ]

    @property
    def changed(self) -> int:
        return sum(s["changed"] for s in self.output["stats"].values())


@pytest.fixture(scope="session")
def run_playbook(control_plane: ControlPlane):
    """Run a playbook on localhost against the rig; returns its JSON result."""

    def run(playbook: Path, *args: str, extra_vars: dict | None = None) -> PlaybookRun:
        env = {
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        }
        evars = {
            "kubeconfig": str(control_plane.kubeconfig),
            "ansible_python_interpreter": sys.executable,
            **(extra_vars or {}),
        }
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                "-i",
                "localhost,",
                "-c",
                "local",
                "-e",
                json.dumps(evars),
                str(playbook),
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        try:
            output = json.loads(result.stdout)
        except json.JSONDecodeError:
            pytest.fail(
                f"ansible-playbook printed no JSON (rc {result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return PlaybookRun(result.returncode, output, result.stderr)

    return run


PLAYBOOKS = Path(__file__).parent / "playbooks"


@pytest.fixture(scope="session")
def hn_crds(run_playbook) -> PlaybookRun:
    """The hn.rhizeption.io CRDs, installed by the rhizeption.core.crds role; the result
    is that first run's. They stay for the session (every hn test shares them)."""
    run = run_playbook(PLAYBOOKS / "crds.yml")
    assert run.rc == 0, run.failures or run.stderr
    return run


# Not `type: kwok`: test_control_plane selects its own kwok Node by that label.
KWOK_NODE_LABELS = {"hn.rhizeption.io/test-host": "kwok"}


@pytest.fixture(scope="session")
def kwok_node(api_client: kubernetes.client.ApiClient) -> Iterator[str]:
    """A host-cluster Node simulated by kwok: Pods bound to it are reported Running
    without running containers. Pods reach it with KWOK_PLACEMENT."""
    core = kubernetes.client.CoreV1Api(api_client)
    name = "hn-kwok-0"
    core.create_node(
        {
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": KWOK_NODE_LABELS,
            },
            "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        }
    )
    try:
        for event in kubernetes.watch.Watch().stream(
            core.list_node, field_selector=f"metadata.name={name}", timeout_seconds=60
        ):
            conditions = {c.type: c.status for c in event["object"].status.conditions or []}
            if conditions.get("Ready") == "True":
                break
        else:
            pytest.fail(f"kwok did not make Node {name} Ready in 60 s")
        yield name
    finally:
        core.delete_node(name)


# What a machine template needs to land on the kwok Node.
KWOK_PLACEMENT = {
    "nodeSelector": {"hn.rhizeption.io/test-host": "kwok"},
    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
}


@pytest.fixture
def namespace(api_client: kubernetes.client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own, deleted afterwards whatever happened."""
    core = kubernetes.client.CoreV1Api(api_client)
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower()).strip("-")
    name = f"t-{base[:40].strip('-')}-{os.urandom(2).hex()}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        _release_machines(api_client, name)
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def core(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client)


@pytest.fixture
def ns(namespace: str, core: kubernetes.client.CoreV1Api) -> str:
    """The test's namespace once its default ServiceAccount exists (Pods need it)."""
    deadline = time.monotonic() + 30
    while not core.list_namespaced_service_account(namespace).items:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {namespace} after 30 s"
        time.sleep(0.2)
    return namespace


def _release_machines(api_client: kubernetes.client.ApiClient, namespace: str) -> None:
    hosted.release_machines(kubernetes.client.CustomObjectsApi(api_client), namespace)


# -- hosted nodes (test_hosted_nodes*.py): per test module, a tenant and a host namespace --------
@pytest.fixture(scope="module")
def tenant(host_cluster: HostCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A tenant control plane where the host cluster's Pods reach it (the node network's gateway)."""
    cp = ControlPlane(
        tmp_path_factory.mktemp("tenant") / "rig",
        ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"),
        address=host_cluster.node.gateway,
        cluster_cidr=hosted.TENANT_POD_CIDR,
        die_with_parent=True,
    )
    cp.up()
    try:
        yield cp
    finally:
        cp.down()


@pytest.fixture(scope="module")
def host_ns(host_cluster: HostCluster, host_api_client, run_playbook) -> Iterator[str]:
    """The hn CRDs and the node image in the host cluster, and a namespace for the HnClusters,
    deleted afterwards with whatever a failed test left in it."""
    host_cluster.load_images([image_archive("node")])
    run = run_playbook(PLAYBOOKS / "crds.yml", extra_vars={"kubeconfig": str(host_cluster.kubeconfig)})
    assert run.rc == 0, run.failures or run.stderr
    core = kubernetes.client.CoreV1Api(host_api_client)
    name = f"t-hosted-{os.urandom(2).hex()}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        hosted.release_machines(kubernetes.client.CustomObjectsApi(host_api_client), name)
        hosted.delete_namespace(host_cluster.kubeconfig, name)


@pytest.fixture(scope="module")
def flow(host_cluster, host_api_client, tenant, host_ns, run_playbook) -> Iterator[hosted.Flow]:
    tenant_client = kubernetes.config.new_client_from_config(str(tenant.kubeconfig))
    try:
        yield hosted.Flow(
            host_cluster,
            tenant,
            host_ns,
            run_playbook,
            kubernetes.client.CoreV1Api(tenant_client),
            kubernetes.client.CoreV1Api(host_api_client),
            kubernetes.client.CustomObjectsApi(host_api_client),
        )
    finally:
        tenant_client.close()


@pytest.fixture(scope="module")
def host(host_cluster, host_api_client, run_playbook, tmp_path_factory, tenants_namespace):
    """The host cluster with the CRDs, the operator's ClusterRole bound to a user of that
    name with a kubeconfig of its own, and the namespace TENANTS_NAMESPACE for the tenants
    (a module that uses `host` defines that fixture: each module gets a namespace of its
    own, as the last one's may still be terminating). tenanthost.py has the helpers."""
    from tenanthost import DEPLOYER_ROLE, OPERATOR, install_host_objects, remove_host_objects

    crds = run_playbook(PLAYBOOKS / "crds.yml", extra_vars={"kubeconfig": str(host_cluster.kubeconfig)})
    assert crds.rc == 0, crds.failures
    rbac = kubernetes.client.RbacAuthorizationV1Api(host_api_client)
    core = kubernetes.client.CoreV1Api(host_api_client)
    made = install_host_objects(host_api_client)
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": OPERATOR},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": DEPLOYER_ROLE,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR}],
        }
    )
    core.create_namespace({"metadata": {"name": tenants_namespace}})
    folder = tmp_path_factory.mktemp("tenants")
    operator = folder / "operator.kubeconfig"
    pki.write_file(operator, host_cluster.control_plane.client_kubeconfig(OPERATOR), private=True)
    try:
        yield {
            "cluster": host_cluster,
            "operator": operator,
            "folder": folder,
            "core": core,
            "namespace": tenants_namespace,
        }
    finally:
        core.delete_namespace(tenants_namespace)
        for pv in core.list_persistent_volume(label_selector="rhizeption-test=tenant").items:
            core.delete_persistent_volume(pv.metadata.name)
        rbac.delete_cluster_role_binding(OPERATOR)
        remove_host_objects(host_api_client, made)

"""Helpers for the tests whose tenants really run on the rig's host cluster
(test_tenant_control_plane_host.py, test_tenant_certificate_renewal.py): the `host`
fixture (in conftest.py) gives each test module the CRDs, the operator's ClusterRole and
a namespace of its own; these run the module as that operator and reach the tenants."""

from __future__ import annotations

import time
from pathlib import Path

import kubernetes
import yaml
from conftest import PLAYBOOKS

import benchmarks.tenant_control_plane

GROUP, VERSION, PLURAL = "hn.rhizeption.io", "v1alpha1", "tenantcontrolplanes"
TENANT_LABEL = "hn.rhizeption.io/tenant"
REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "roles" / "tenant_control_plane" / "files"
# What a cluster admin applies once: the deployer's ClusterRole, then the virtual nodes' two.
ADMIN_FILES = (
    "host-clusterrole.yaml",
    "virtual-node-agent-clusterrole.yaml",
    "virtual-resources-priorityclass.yaml",
)
OPERATOR = "rhizeption-host-operator"
DEPLOYER_ROLE = "rhizeption-tenant-control-planes"  # the file's first ClusterRole


def install_host_objects(api_client) -> list[tuple[str, str]]:
    """What a cluster admin installs once (ADMIN_FILES): the deployer's ClusterRole,
    the virtual-node agent's ClusterRole and its quota's PriorityClass. Returns (kind, name) of
    those this call made (one already there, as another module's, is left alone)."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    scheduling = kubernetes.client.SchedulingV1Api(api_client)
    create = {"ClusterRole": rbac.create_cluster_role, "PriorityClass": scheduling.create_priority_class}
    made = []
    for doc in (yaml.safe_load((FILES / f).read_text()) for f in ADMIN_FILES):
        try:
            create[doc["kind"]](doc)
        except kubernetes.client.ApiException as e:
            if e.status != 409:
                raise
            continue
        made.append((doc["kind"], doc["metadata"]["name"]))
    return made


def remove_host_objects(api_client, made: list[tuple[str, str]]) -> None:
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    scheduling = kubernetes.client.SchedulingV1Api(api_client)
    delete = {"ClusterRole": rbac.delete_cluster_role, "PriorityClass": scheduling.delete_priority_class}
    for kind, name in made:
        delete[kind](name)


def etcd_volume(host, tenant: str) -> None:
    """A volume on the node for TENANT's etcd (the rig has no provisioner)."""
    benchmarks.tenant_control_plane.etcd_volume(
        host["core"], host["cluster"].node.container, host["namespace"], tenant
    )


def apply(run_playbook, host, *args: str, **task):
    """One tenant_control_plane task, run as the operator; its result."""
    played = run_playbook(
        PLAYBOOKS / "tenant_module.yml",
        *args,
        extra_vars={"module": "tenant_control_plane", "task": task, "kubeconfig": str(host["operator"])},
    )
    (result,) = played.task_results("Run tenant_control_plane")
    return result


def ready_tenant(run_playbook, host, name: str, namespace: str, spec: dict) -> tuple[Path, dict]:
    """Tenant NAME of SPEC made Ready by the module, with its etcd volume: (its admin
    kubeconfig, the module's result)."""
    etcd_volume(host, name)
    kubeconfig = host["folder"] / f"{name}.kubeconfig"
    result = apply(
        run_playbook,
        host,
        name=name,
        namespace=namespace,
        spec=spec,
        wait=True,
        wait_timeout=300,
        admin_kubeconfig_path=str(kubeconfig),
    )
    assert result.get("failed") is not True, result.get("msg")
    assert result["phase"] == "Ready"
    return kubeconfig, result


def run_info(run_playbook, host, **task):
    """One tenant_control_plane_info task, run as the operator; its result."""
    played = run_playbook(
        PLAYBOOKS / "tenant_module.yml",
        extra_vars={"module": "tenant_control_plane_info", "task": task, "kubeconfig": str(host["operator"])},
    )
    (result,) = played.task_results("Run tenant_control_plane_info")
    return result


def tenant_client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(str(kubeconfig))


def retry(call, seconds: float = 60):
    """CALL, again while the tenant's apiserver comes back (connection refused, 503)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)

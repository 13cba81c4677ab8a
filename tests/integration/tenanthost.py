"""Helpers for the tests whose tenants really run on the rig's host cluster
(test_tenant_control_plane_host.py, test_tenant_certificate_renewal.py): the `host`
fixture (in conftest.py) gives each test module the CRDs, the operator's ClusterRole and
a namespace of its own; these run the module as that operator and reach the tenants."""

from __future__ import annotations

import time
from pathlib import Path

import kubernetes
from conftest import PLAYBOOKS

import benchmarks.tenant_control_plane

GROUP, VERSION, PLURAL = "hn.rhizeption.io", "v1alpha1", "tenantcontrolplanes"
TENANT_LABEL = "hn.rhizeption.io/tenant"
REPO = Path(__file__).resolve().parents[2]
CLUSTER_ROLE = REPO / "roles" / "tenant_control_plane" / "files" / "host-clusterrole.yaml"
OPERATOR = "rhizeption-host-operator"


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

"""HnCluster scale planning and status: pure functions, no cluster."""

from __future__ import annotations

import pytest
import test_hnmachine as hnm
import urllib3
from ansible_collections.rhizeption.core.plugins.module_utils import hncluster, hnmachine, hosted_node
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import DELETE_MACHINE_ANNOTATION

NOW = "2026-11-23T10:00:00Z"


def machine(
    name, phase="Running", ready=True, created="2026-11-23T09:00:00Z", annotations=None, deleting=False
):
    md = {"name": name, "creationTimestamp": created, "annotations": annotations or {}}
    if deleting:
        md["deletionTimestamp"] = NOW
    return {"metadata": md, "status": {"phase": phase, "ready": ready}}


def cluster(replicas=3, **md):
    return {
        "metadata": {"name": "blue", "namespace": "t", "generation": 2, **md},
        "spec": {"replicas": replicas},
    }


def test_scale_up_takes_the_lowest_free_indices():
    plan = hncluster.plan_scale("blue", 4, [machine("blue-1"), machine("blue-3")])
    assert plan.create == ["blue-0", "blue-2"] and plan.delete == []


def test_scale_up_does_not_reuse_the_name_of_a_machine_being_deleted():
    plan = hncluster.plan_scale("blue", 1, [machine("blue-0", deleting=True)])
    assert plan.create == ["blue-1"]


def test_no_change_at_the_desired_count():
    plan = hncluster.plan_scale("blue", 2, [machine("blue-0"), machine("blue-1")])
    assert plan.create == [] and plan.delete == []


def test_scale_down_takes_the_least_disruptive_first():
    machines = [
        machine("blue-0", "Running", True),
        machine("blue-1", "Running", False),
        machine("blue-2", "Failed", False),
        machine("blue-3", "Provisioning", False),
        machine("blue-4", "Running", True, annotations={DELETE_MACHINE_ANNOTATION: ""}),
        machine("blue-5", "Running", True),
    ]
    plan = hncluster.plan_scale("blue", 1, machines)
    assert plan.delete == ["blue-4", "blue-2", "blue-3", "blue-1", "blue-5"]


def test_scale_down_takes_the_newest_among_equals():
    machines = [
        machine("blue-0", created="2026-11-23T09:00:00Z"),
        machine("blue-1", created="2026-11-23T09:30:00Z"),
        machine("blue-10", created="2026-11-23T09:30:00Z"),
        machine("blue-2", created="2026-11-23T09:10:00Z"),
    ]
    # Same second: the higher index is the newer (blue-10 after blue-1).
    assert hncluster.plan_scale("blue", 2, machines).delete == ["blue-10", "blue-1"]


def test_machines_being_deleted_do_not_count():
    machines = [machine("blue-0"), machine("blue-1", deleting=True)]
    plan = hncluster.plan_scale("blue", 1, machines)
    assert plan.create == [] and plan.delete == []


def test_a_name_that_makes_hostnames_too_long_is_refused():
    hncluster.check_name("a" * 61, 10)  # a...-9: 63 characters
    with pytest.raises(hncluster.ClusterError, match=r"name: .* 63 characters"):
        hncluster.check_name("a" * 61, 11)


@pytest.mark.parametrize(
    ("machines", "replicas", "phase", "ready"),
    [
        ([], 2, "Pending", False),
        ([machine("blue-0"), machine("blue-1", "Provisioning", False)], 2, "Provisioning", False),
        ([machine("blue-0"), machine("blue-1")], 2, "Ready", True),
        ([machine("blue-0"), machine("blue-1", "Failed", False)], 2, "Failed", False),
        ([machine("blue-0"), machine("blue-1")], 1, "Provisioning", False),  # one more than wanted
        ([], 0, "Ready", True),
    ],
)
def test_cluster_status_from_its_machines(machines, replicas, phase, ready):
    status = hncluster.derive_status(cluster(replicas), machines, now=NOW)
    assert (status["phase"], status["ready"]) == (phase, ready)
    assert status["replicas"] == len(machines)
    assert status["selector"] == "hn.rhizeption.io/cluster=blue"
    (cond,) = status["conditions"]
    assert cond["type"] == "MachinesReady" and cond["status"] == ("True" if ready else "False")
    assert cond["observedGeneration"] == 2


def test_failed_machines_are_named_in_the_condition():
    status = hncluster.derive_status(
        cluster(2), [machine("blue-0"), machine("blue-1", "Failed", False)], now=NOW
    )
    assert status["conditions"][0]["message"] == "1 of 2 machines ready; failed: blue-1"


def test_a_cluster_being_deleted_says_so():
    status = hncluster.derive_status(cluster(2, deletionTimestamp=NOW), [machine("blue-0")], now=NOW)
    assert status["phase"] == "Deleting"


# -- bad input: what the wait and the tenant check do --------------------------------------
def test_wait_ready_gives_blocked_machines_the_grace_then_names_their_cause(monkeypatch):
    monkeypatch.setattr(hnmachine, "BLOCKED_GRACE", 7.0)
    cl = {"metadata": {"name": "blue", "namespace": "tenants"}, "spec": {"replicas": 1}}
    blocked = hnm.pod("Pending", scheduled=True, waiting=hnm.NEVER_PULL)
    stuck = [{"blue-0": blocked}]
    kube = hnm.ScriptedPods(stuck, stuck)
    monkeypatch.setattr(hncluster, "write_status", lambda *_args: None)
    with pytest.raises(hncluster.ClusterError, match=r'blue-0 \(ErrImageNeverPull: Container image "x"'):
        hncluster.wait_ready(kube, cl, [hnm.with_status(hnm.machine(), blocked)], timeout=300)
    assert kube.timeouts[0] == 7.0


class Unreachable:
    """A tenant whose API server does not answer."""

    host = "https://10.89.0.1:6443"

    def request(self, *_args, **_kwargs):
        raise urllib3.exceptions.MaxRetryError(None, "/readyz", OSError("[Errno 111] Connection refused"))


class HostRecorder:
    """A host cluster that records writes and has nothing in it."""

    def __init__(self):
        self.writes = []

    def get(self, _path):
        return None

    def list(self, *_args, **_kwargs):
        return [], "1"

    def apply(self, path, *_args, **_kwargs):
        self.writes.append(("apply", path))
        return {}

    def delete(self, path, **_kwargs):
        self.writes.append(("delete", path))


def test_an_unreachable_tenant_fails_before_anything_is_written_to_the_host():
    host = HostRecorder()
    desired = hncluster.render_cluster("blue", "tenants", {"replicas": 1, "machineTemplate": {"image": "x"}})
    with pytest.raises(
        hosted_node.BootstrapError, match=r"10\.89\.0\.1:6443 cannot be reached .*Connection refused"
    ):
        hncluster.ensure_present(host, desired, tenant=Unreachable())
    assert host.writes == []


def test_deleting_with_an_unreachable_tenant_deletes_nothing_and_says_how_to_go_on():
    host = HostRecorder()
    host.get = lambda _path: {"metadata": {"name": "blue", "namespace": "tenants", "uid": "u"}}
    with pytest.raises(hosted_node.BootstrapError, match="leave tenant_kubeconfig out"):
        hncluster.ensure_absent(host, "tenants", "blue", tenant=Unreachable())
    assert host.writes == []

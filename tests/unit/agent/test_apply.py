"""`python -m rhizeption_agent.apply`: the init container that writes the agent's RBAC into its
tenant. It waits out an API server that is starting and stops at a refusal."""

from __future__ import annotations

import json

import pytest
from rhizeption_agent import apply
from rhizeption_agent.kubeapi import KubeError

ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "rhizeption:virtual-node-agent"},
    "rules": [],
}
BINDING = {**ROLE, "kind": "ClusterRoleBinding"}


class Answers:
    """A Kube whose apply answers with the next of ANSWERS (an exception or None) each call."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.applied = []

    def apply(self, path, obj, *, dry_run=False, what=""):
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        self.applied.append(path)
        return obj


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(apply.time, "sleep", lambda _seconds: None)


def test_the_paths_of_cluster_scoped_rbac_objects():
    assert (
        apply.object_path(ROLE)
        == "/apis/rbac.authorization.k8s.io/v1/clusterroles/rhizeption:virtual-node-agent"
    )
    assert apply.object_path(BINDING).startswith("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/")


def test_an_api_server_that_is_starting_is_asked_again():
    kube = Answers(ConnectionRefusedError(111, "refused"), KubeError("503 not ready", status=503))
    apply.apply_all(kube, [ROLE, BINDING], deadline=float("inf"))
    assert [p.rsplit("/", 2)[1] for p in kube.applied] == ["clusterroles", "clusterrolebindings"]


def test_a_refusal_stops_at_once():
    kube = Answers(KubeError("403 forbidden", status=403))
    with pytest.raises(KubeError):
        apply.apply_all(kube, [ROLE], deadline=float("inf"))
    assert kube.applied == []


def test_past_the_deadline_the_last_error_is_raised():
    kube = Answers(*[KubeError("503", status=503)] * 3)
    with pytest.raises(KubeError):
        apply.apply_all(kube, [ROLE], deadline=0.0)


def test_main_exits_1_when_it_cannot_apply(tmp_path, monkeypatch):
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps([ROLE]))
    monkeypatch.setattr(apply, "_connect", lambda _kubeconfig, _server: Answers(KubeError("403", status=403)))
    assert apply.main(["--kubeconfig", "k", str(objects)]) == 1
    monkeypatch.setattr(apply, "_connect", lambda _kubeconfig, _server: Answers())
    assert apply.main(["--kubeconfig", "k", str(objects)]) == 0

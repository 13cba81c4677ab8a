"""The one-shot Pod layer: how a helper Pod's trouble is told, and when a wait ends."""

from __future__ import annotations

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import oneshot_pods as oneshot
from ansible_collections.rhizeption.core.plugins.module_utils.kube import KubeError


def pod(phase, init=(), main=()):
    return {
        "metadata": {"name": "p", "namespace": "ns"},
        "status": {"phase": phase, "initContainerStatuses": list(init), "containerStatuses": list(main)},
    }


def terminated(name, code, message=""):
    return {"name": name, "state": {"terminated": {"exitCode": code, "message": message}}}


def waiting(name, reason, message=""):
    return {"name": name, "state": {"waiting": {"reason": reason, "message": message}}}


def test_a_step_that_failed_is_named_with_its_exit_code_and_last_lines():
    p = pod("Failed", init=[terminated("snapshot", 1, "context deadline exceeded\n")])
    assert oneshot.trouble(p) == "snapshot exited 1: context deadline exceeded"


def test_an_image_that_cannot_start_is_trouble_but_starting_is_not():
    assert oneshot.trouble(pod("Pending", main=[waiting("hold", "ErrImageNeverPull", "not here")])) == (
        "hold: ErrImageNeverPull: not here"
    )
    assert oneshot.trouble(pod("Pending", main=[waiting("hold", "ContainerCreating")])) == ""
    assert oneshot.trouble(pod("Succeeded", main=[terminated("swap", 0)])) == ""


class FakeKube:
    """Records requests; its wait hands the watcher each of PODS in turn."""

    def __init__(self, *pods):
        self.pods, self.calls = list(pods), []

    def request(self, method, path, **kw):
        self.calls.append((method, path))
        if method == "DELETE":
            raise KubeError("not found", status=404)
        return {}

    def wait(self, path, done, timeout, **kw):
        for p in self.pods:
            if done({"p": p}):
                return True, {"p": p}
        return False, {}


def test_run_removes_a_leftover_creates_and_returns_once_the_pod_gets_there():
    kube = FakeKube(pod("Pending"), pod("Running", main=[{"name": "hold", "state": {"running": {}}}]))
    got = oneshot.run(kube, pod("Pending"), "Running")
    assert got["status"]["phase"] == "Running"
    assert kube.calls == [("DELETE", "/api/v1/namespaces/ns/pods/p"), ("POST", "/api/v1/namespaces/ns/pods")]


def test_run_stops_at_the_first_trouble_and_says_what_it_is():
    kube = FakeKube(
        pod("Pending", main=[waiting("hold", "CreateContainerConfigError", "secret x not found")])
    )
    with pytest.raises(oneshot.OneShotError) as err:
        oneshot.run(kube, pod("Pending"), "Succeeded")
    assert str(err.value) == "Pod ns/p: hold: CreateContainerConfigError: secret x not found"


def test_run_that_times_out_names_the_phase_it_was_left_in():
    with pytest.raises(oneshot.OneShotError, match="missing after 5 s"):
        oneshot.run(FakeKube(), pod("Pending"), "Succeeded", timeout=5)

"""Pure Pod-spec logic of the agent: what it refuses, env expansion, the downward API,
quantities, QoS, and the phase rules."""

from __future__ import annotations

import pytest
from rhizeption_agent import podspec
from rhizeption_agent.runtime import pod_phase


def pod(**spec):
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"b": "2", "a": "1"}},
        "spec": {"containers": [{"name": "c", "image": "i"}], **spec},
    }


def test_a_supported_pod_has_nothing_to_refuse():
    p = pod(
        volumes=[
            {"name": "v", "emptyDir": {}},
            {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
        ]
    )
    assert podspec.unsupported(p) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"hostPID": True}, "spec.hostPID"),
        (
            {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "x"}}]},
            "spec.volumes[0].persistentVolumeClaim",
        ),
        (
            {"containers": [{"name": "c", "image": "i", "lifecycle": {"preStop": {}}}]},
            "spec.containers[0].lifecycle",
        ),
        (
            {"initContainers": [{"name": "s", "image": "i", "restartPolicy": "Always"}]},
            "spec.initContainers[0].restartPolicy",
        ),
        (
            {"containers": [{"name": "c", "image": "i", "livenessProbe": {"grpc": {"port": 1}}}]},
            "spec.containers[0].livenessProbe.grpc",
        ),
        ({"securityContext": {"fsGroup": 2000}}, "spec.securityContext.fsGroup"),
        ({"os": {"name": "windows"}}, "spec.os.name"),
    ],
)
def test_unsupported_features_are_named_by_field(spec, field):
    assert field in [f for f, _why in podspec.unsupported(pod(**spec))]


def test_expansion_follows_kubernetes_rules():
    env = {"A": "x"}
    assert podspec.expand("$(A)-$(B)-$$(A)", env) == "x-$(B)-$(A)"


def test_downward_api_fields():
    p = pod(nodeName="pet-1")
    assert podspec.field_ref(p, "metadata.labels") == 'a="1"\nb="2"\n'
    assert podspec.field_ref(p, "metadata.labels['a']") == "1"
    assert podspec.field_ref(p, "spec.nodeName") == "pet-1"
    assert podspec.field_ref(p, "status.podIP", pod_ip="10.88.0.5") == "10.88.0.5"
    with pytest.raises(ValueError, match="not supported"):
        podspec.field_ref(p, "status.phase")


def test_resource_field_ref_rounds_up_and_falls_back_to_allocatable():
    p = pod(
        containers=[{"name": "c", "image": "i", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}}]
    )
    assert podspec.resource_ref(p, "c", {"resource": "limits.cpu"}, {}) == "1"
    assert podspec.resource_ref(p, "c", {"resource": "limits.cpu", "divisor": "1m"}, {}) == "250"
    assert podspec.resource_ref(p, "c", {"resource": "limits.memory", "divisor": "1Mi"}, {}) == "64"
    assert podspec.resource_ref(pod(), "c", {"resource": "limits.memory"}, {"memory": "1Ki"}) == "1024"


def test_quantities_and_qos():
    assert podspec.quantity("100m") * 1000 == 100
    assert podspec.quantity("1Gi") == 1024**3
    with pytest.raises(ValueError):
        podspec.quantity("1Gb")
    assert podspec.qos_class(pod()) == "BestEffort"
    same = {"cpu": "1", "memory": "1Gi"}
    guaranteed = pod(
        containers=[{"name": "c", "image": "i", "resources": {"limits": same, "requests": same}}]
    )
    assert podspec.qos_class(guaranteed) == "Guaranteed"
    burstable = pod(containers=[{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}])
    assert podspec.qos_class(burstable) == "Burstable"


def status(state, last=None):
    return {"state": state, "lastState": last or {}}


RUNNING = status({"running": {}})
WAITING = status({"waiting": {"reason": "ContainerCreating"}})
OK = status({"terminated": {"exitCode": 0}})
BAD = status({"terminated": {"exitCode": 1}})
BACKOFF = status({"waiting": {"reason": "CrashLoopBackOff"}}, {"terminated": {"exitCode": 1}})


@pytest.mark.parametrize(
    ("policy", "statuses", "init_done", "init_failed", "phase"),
    [
        ("Always", [RUNNING], True, False, "Running"),
        ("Always", [RUNNING, WAITING], True, False, "Pending"),
        ("Always", [WAITING], False, False, "Pending"),
        ("Never", [WAITING], False, True, "Failed"),
        ("Always", [BACKOFF], True, False, "Running"),
        ("Never", [OK, BAD], True, False, "Failed"),
        ("Never", [OK, OK], True, False, "Succeeded"),
        ("OnFailure", [BAD], True, False, "Running"),
        ("OnFailure", [OK], True, False, "Succeeded"),
    ],
)
def test_pod_phase(policy, statuses, init_done, init_failed, phase):
    assert pod_phase(policy, statuses, init_done=init_done, init_failed=init_failed) == phase

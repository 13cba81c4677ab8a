"""The Pod Security Standards as the agent checks them before a host Pod is created: each
violation names the tenant Pod's field, and a Pod that the level allows has none."""

from __future__ import annotations

import pytest
from rhizeption_agent.backends.hostcluster import podsecurity


def pod(containers=None, **spec):
    return {
        "metadata": {"name": "p", "namespace": "web"},
        "spec": {"containers": containers or [{"name": "c", "image": "i"}], **spec},
    }


def fields(p, level="baseline"):
    return [v.field for v in podsecurity.violations(p, level)]


RESTRICTED_CONTAINER = {
    "name": "c",
    "image": "i",
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def test_a_plain_pod_passes_baseline_but_not_restricted():
    assert fields(pod()) == []
    assert fields(pod(), "restricted") == [
        "spec.containers[0].securityContext.allowPrivilegeEscalation",
        "spec.containers[0].securityContext.runAsNonRoot",
        "spec.containers[0].securityContext.seccompProfile.type",
        "spec.containers[0].securityContext.capabilities.drop",
    ]


def test_a_hardened_pod_passes_restricted():
    assert fields(pod([RESTRICTED_CONTAINER], volumes=[{"name": "v", "emptyDir": {}}]), "restricted") == []


def test_pod_level_settings_count_for_every_container():
    ctr = {
        "name": "c",
        "image": "i",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    p = pod([ctr], securityContext={"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}})
    assert fields(p, "restricted") == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"hostNetwork": True}, "spec.hostNetwork"),
        ({"hostPID": True}, "spec.hostPID"),
        ({"hostIPC": True}, "spec.hostIPC"),
        ({"volumes": [{"name": "v", "hostPath": {"path": "/"}}]}, "spec.volumes[0].hostPath"),
        (
            {"containers": [{"name": "c", "image": "i", "securityContext": {"privileged": True}}]},
            "spec.containers[0].securityContext.privileged",
        ),
        (
            {"initContainers": [{"name": "i", "image": "i", "securityContext": {"privileged": True}}]},
            "spec.initContainers[0].securityContext.privileged",
        ),
        (
            {
                "containers": [
                    {"name": "c", "image": "i", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}
                ]
            },
            "spec.containers[0].securityContext.capabilities.add[0]",
        ),
        (
            {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 80}]}]},
            "spec.containers[0].ports[0].hostPort",
        ),
        (
            {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}},
            "spec.securityContext.sysctls[0].name",
        ),
        (
            {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
            "spec.securityContext.seccompProfile.type",
        ),
        (
            {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}},
            "spec.securityContext.seLinuxOptions.type",
        ),
        (
            {"containers": [{"name": "c", "image": "i", "securityContext": {"procMount": "Unmasked"}}]},
            "spec.containers[0].securityContext.procMount",
        ),
        (
            {
                "containers": [
                    {
                        "name": "c",
                        "image": "i",
                        "livenessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}},
                    }
                ]
            },
            "spec.containers[0].livenessProbe.httpGet.host",
        ),
        (
            {
                "containers": [
                    {
                        "name": "c",
                        "image": "i",
                        "lifecycle": {"preStop": {"tcpSocket": {"host": "169.254.169.254", "port": 80}}},
                    }
                ]
            },
            "spec.containers[0].lifecycle.preStop.tcpSocket.host",
        ),
    ],
)
def test_baseline_refusals_name_the_field(spec, field):
    p = pod(**spec)
    found = podsecurity.violations(p, "baseline")
    assert [v.field for v in found] == [field]
    assert "baseline" in found[0].message
    assert podsecurity.violations(p, "privileged") == [], "privileged allows everything"


def test_baseline_allows_its_capabilities_and_safe_sysctls():
    ctr = {
        "name": "c",
        "image": "i",
        "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"]}},
    }
    p = pod([ctr], securityContext={"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]})
    assert fields(p) == []


def test_restricted_refuses_volume_types_and_root():
    ctr = dict(
        RESTRICTED_CONTAINER, securityContext={**RESTRICTED_CONTAINER["securityContext"], "runAsUser": 0}
    )
    p = pod([ctr], volumes=[{"name": "v", "nfs": {"server": "s", "path": "/"}}])
    assert fields(p, "restricted") == ["spec.volumes[0].nfs", "spec.containers[0].securityContext.runAsUser"]


def test_an_apparmor_annotation_that_unconfines_is_refused():
    p = pod()
    p["metadata"]["annotations"] = {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}
    assert fields(p) == ["metadata.annotations['container.apparmor.security.beta.kubernetes.io/c']"]


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="'strict' is not one of privileged, baseline, restricted"):
        podsecurity.violations(pod(), "strict")

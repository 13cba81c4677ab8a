"""HostClusterProvider against two small in-memory API servers (the host's and the
tenant's): the create path, status back, what is copied, refusals, both ways of deleting,
adoption after a restart, and that a Pod is made once. The fake exists only here;
tests/integration will run the same code on real API servers."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fake_api import FakeApi, eventually
from rhizeption_agent.backends.hostcluster import names, pods
from rhizeption_agent.backends.hostcluster import provider as hostcluster_provider
from rhizeption_agent.backends.hostcluster.pods import HostSettings, Placement
from rhizeption_agent.backends.hostcluster.provider import HostClusterProvider
from rhizeption_agent.backends.hostcluster.streams import WebSocketExec
from rhizeption_agent.kubeapi import KubeError
from rhizeption_agent.provider import STDERR, STDOUT, LogRequest, ProviderError

Obj = dict[str, Any]
HOST_NS = "tenants-blue-pods"
SETTINGS = HostSettings(tenant="blue", namespace=HOST_NS, service_account="virtual-pods")
PLACEMENT = Placement(node_name="host-resources", node_address="10.42.0.9")
HOST_PODS = f"/api/v1/namespaces/{HOST_NS}/pods"


# -- fixtures -------------------------------------------------------------------------------------
def tenant_pod(name: str = "web-1", uid: str = "uid-1") -> Obj:
    """A Deployment's Pod as the tenant stores it: admission added the token volume."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": uid,
            "labels": {"app": "web"},
            "resourceVersion": "7",
        },
        "spec": {
            "nodeName": "host-resources",
            "serviceAccountName": "web",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "imagePullSecrets": [{"name": "registry"}],
            "containers": [
                {
                    "name": "web",
                    "image": "localhost/shop/web:1",
                    "env": [
                        {
                            "name": "MODE",
                            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}},
                        }
                    ],
                    "volumeMounts": [
                        {"name": "creds", "mountPath": "/creds"},
                        {
                            "name": "kube-api-access",
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        },
                    ],
                }
            ],
            "volumes": [
                {"name": "creds", "secret": {"secretName": "db"}},
                {
                    "name": "kube-api-access",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                        ]
                    },
                },
            ],
        },
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }


def configmap(name: str, data: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "shop"},
        "data": data,
    }


def secret(name: str, data: dict[str, str], type_: str = "Opaque") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": type_,
        "metadata": {"name": name, "namespace": "shop", "labels": {"team": "db"}},
        "data": data,
    }


class Events(list):
    def __call__(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        self.append((pod["metadata"]["name"], type_, reason, message))

    def reasons(self) -> list[str]:
        return [e[2] for e in self]


@pytest.fixture
def apis() -> Iterator[tuple[FakeApi, FakeApi]]:
    host, tenant = FakeApi("host"), FakeApi("tenant")
    for obj in (
        configmap("settings", {"mode": "prod"}),
        configmap("kube-root-ca.crt", {"ca.crt": "CA"}),
        configmap("unused", {"x": "1"}),
        secret("db", {"password": "c2VjcmV0"}),
        secret("unrelated", {"x": "MQ=="}),
    ):
        tenant.seed(obj)
    yield host, tenant
    host.close()
    tenant.close()


@pytest.fixture
def make(apis: tuple[FakeApi, FakeApi]) -> Iterator[Callable[..., HostClusterProvider]]:
    host, tenant = apis
    made: list[HostClusterProvider] = []

    def factory(**kw: Any) -> HostClusterProvider:
        provider = HostClusterProvider(
            host,  # type: ignore[arg-type]
            tenant,  # type: ignore[arg-type]
            SETTINGS,
            lambda node: PLACEMENT if node == "host-resources" else None,
            **kw,
        )
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        provider.stop()


def host_pod_path(pod: Obj) -> str:
    return f"{HOST_PODS}/{pods.host_pod_name(pod, SETTINGS)}"


def copy_name(kind: str, name: str) -> str:
    return names.host_name("blue", "shop", name, kind)


def running(host: FakeApi, pod: Obj, restarts: int = 0) -> None:
    """The host kubelet started the Pod."""
    host.set_status(
        host_pod_path(pod),
        {
            "phase": "Running",
            "hostIP": "192.168.1.20",
            "podIP": "10.244.1.7",
            "startTime": "2026-11-23T10:00:00Z",
            "qosClass": "Burstable",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-23T10:00:00Z"},
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-23T10:00:00Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-23T10:00:02Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-23T10:00:02Z"},
            ],
            "containerStatuses": [
                {
                    "name": "web",
                    "image": "localhost/shop/web:1",
                    "imageID": "sha256:abc",
                    "containerID": "containerd://c1",
                    "ready": True,
                    "started": True,
                    "restartCount": restarts,
                    "state": {"running": {"startedAt": "2026-11-23T10:00:01Z"}},
                }
            ],
        },
    )


def seen_running(provider: HostClusterProvider, pod: Obj) -> bool:
    host_pod = provider.pods.get(pod["metadata"]["uid"])
    return bool(host_pod and (host_pod.get("status") or {}).get("phase") == "Running")


# -- the create path ------------------------------------------------------------------------------
def test_sync_copies_references_gets_a_tenant_token_and_creates_the_host_pod(apis, make):
    host, tenant = apis
    provider, events, pod = make(), Events(), tenant_pod()

    status = provider.sync(pod, events)

    created = host.at(HOST_PODS)
    assert list(created) == [pods.host_pod_name(pod, SETTINGS)]
    host_pod = created[pods.host_pod_name(pod, SETTINGS)]
    want = pods.translate_pod(pod, SETTINGS, PLACEMENT)
    assert host_pod["spec"] == want["spec"]
    assert host_pod["metadata"]["labels"][names.UID_LABEL] == "uid-1"
    # The token is the tenant's, bound to the tenant Pod, in the Pod's token Secret.
    (_method, path, body) = next(b for b in tenant.bodies if b[1].endswith("/token"))
    assert path == "/api/v1/namespaces/shop/serviceaccounts/web/token"
    assert body["spec"]["boundObjectRef"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web-1",
        "uid": "uid-1",
    }
    assert body["spec"]["expirationSeconds"] == 3607
    token = host.at(f"/api/v1/namespaces/{HOST_NS}/secrets")[names.token_secret_name("blue", "shop", "web-1")]
    assert list(token["data"]) == ["kube-api-access.0"]
    assert base64.b64decode(token["data"]["kube-api-access.0"]).startswith(b"tenant-token-web-")
    assert status["phase"] == "Pending"
    assert status["hostIP"] == "10.42.0.9"
    assert events[0][:3] == ("web-1", "Normal", "HostPodCreated")


def test_only_the_referenced_configmaps_and_secrets_are_copied(apis, make):
    host, _tenant = apis
    make().sync(tenant_pod(), Events())

    configmaps = host.at(f"/api/v1/namespaces/{HOST_NS}/configmaps")
    secrets = host.at(f"/api/v1/namespaces/{HOST_NS}/secrets")
    assert set(configmaps) == {copy_name("configmap", "settings"), copy_name("configmap", "kube-root-ca.crt")}
    # db is copied; "registry" (an optional image pull secret) does not exist and is skipped.
    assert set(secrets) == {copy_name("secret", "db"), names.token_secret_name("blue", "shop", "web-1")}
    db = secrets[copy_name("secret", "db")]
    assert db["data"] == {"password": "c2VjcmV0"}
    assert "team" not in db["metadata"]["labels"]  # tenant labels are not copied


def test_a_second_sync_and_a_second_agent_make_no_second_host_pod_and_no_requests(apis, make):
    host, tenant = apis
    pod = tenant_pod()
    provider = make()
    provider.sync(pod, Events())
    before, tenant_before = list(host.calls), list(tenant.calls)

    provider.sync(pod, Events())
    provider.sync(pod, Events())

    # Steady state reads the watch's cache: no request at all.
    assert [c for c in host.calls[len(before) :] if c[0] != "WATCH"] == []
    assert tenant.calls == tenant_before
    other = make()  # another agent (or this one restarted) with the same Pod
    other.sync(pod, Events())
    assert host.count("POST", HOST_PODS) == 1
    assert len(host.at(HOST_PODS)) == 1


def test_a_lost_create_answer_is_adopted_after_the_conflict(apis, make):
    host, _tenant = apis
    pod = tenant_pod()
    make().sync(pod, Events())
    provider = make()
    # This agent has not seen it yet (its first list is older than the create).
    provider.pods.start = lambda: None  # type: ignore[method-assign]
    provider.pods.synced.set()

    status = provider.sync(pod, Events())

    assert host.count("POST", HOST_PODS) == 2  # the second one answered 409
    assert status["phase"] == "Pending"
    assert len(host.at(HOST_PODS)) == 1
    assert provider.pods.get("uid-1") is not None


def test_an_answer_older_than_a_delete_does_not_bring_the_host_pod_back(apis, make):
    host, _tenant = apis
    provider, pod = make(), tenant_pod()
    provider.sync(pod, Events())
    answer = host.get(host_pod_path(pod))  # a patch's answer, say, still on its way

    host.remove(host_pod_path(pod))
    eventually(lambda: provider.pods.get("uid-1") is None)
    provider.pods.put(answer)

    assert provider.pods.get("uid-1") is None


# -- status back ----------------------------------------------------------------------------------
def test_status_comes_back_from_the_host_pod_through_the_watch(apis, make):
    host, _tenant = apis
    woken: list[str] = []
    provider, pod = make(on_change=woken.append), tenant_pod()
    provider.sync(pod, Events())

    running(host, pod, restarts=2)
    eventually(lambda: seen_running(provider, pod))
    status = provider.sync(pod, Events())

    assert "uid-1" in woken  # the worker is woken, not left to its next resync
    assert status["phase"] == "Running"
    assert status["podIP"] == "10.244.1.7"
    assert status["hostIP"] == "10.42.0.9"  # the virtual node, never the host node
    assert status["qosClass"] == "BestEffort"  # the tenant's
    assert status["containerStatuses"][0]["restartCount"] == 2
    assert status["containerStatuses"][0]["state"] == {"running": {"startedAt": "2026-11-23T10:00:01Z"}}
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True"
    assert ready["PodScheduled"] == "True"


def test_tenant_label_and_image_changes_reach_the_running_host_pod(apis, make):
    host, _tenant = apis
    provider, pod = make(), tenant_pod()
    provider.sync(pod, Events())
    pod["metadata"]["labels"] = {"tier": "front"}
    pod["spec"]["containers"][0]["image"] = "localhost/shop/web:2"

    provider.sync(pod, Events())

    host_pod = host.at(HOST_PODS)[pods.host_pod_name(pod, SETTINGS)]
    labels = host_pod["metadata"]["labels"]
    assert labels[names.host_label_key("tier")] == "front"
    assert names.host_label_key("app") not in labels
    assert labels[names.UID_LABEL] == "uid-1"
    assert host_pod["spec"]["containers"][0]["image"] == "localhost/shop/web:2"


def test_copies_follow_the_tenant_objects_while_pods_use_them(apis, make):
    host, tenant = apis
    provider, pod = make(copy_resync_seconds=0), tenant_pod()
    provider.sync(pod, Events())
    copied = f"/api/v1/namespaces/{HOST_NS}/configmaps/{copy_name('configmap', 'settings')}"
    writes = host.count("APPLY", copied)

    provider.sync(pod, Events())  # read again, unchanged: not written again
    assert host.count("APPLY", copied) == writes
    tenant.seed(configmap("settings", {"mode": "canary"}))
    provider.sync(pod, Events())

    assert host.get(copied)["data"] == {"mode": "canary"}
    tenant.remove("/api/v1/namespaces/shop/configmaps/settings")
    provider.sync(pod, Events())  # gone in the tenant: the copy keeps its last data
    assert host.get(copied)["data"] == {"mode": "canary"}


def test_tokens_are_renewed_when_due(apis, make):
    host, tenant = apis
    provider, pod = make(), tenant_pod()
    provider.sync(pod, Events())
    provider.sync(pod, Events())
    assert tenant.count("POST", "/api/v1/namespaces/shop/serviceaccounts/web/token") == 1

    provider._renew_at["uid-1"] = time.time() - 1  # 80 % of its life has passed
    provider.sync(pod, Events())

    assert tenant.count("POST", "/api/v1/namespaces/shop/serviceaccounts/web/token") == 2
    token = f"/api/v1/namespaces/{HOST_NS}/secrets/{names.token_secret_name('blue', 'shop', 'web-1')}"
    assert host.count("APPLY", token) == 2

    # A renewal the tenant refuses: the Pod runs on, told once, asked again later, not every second.
    tenant.no_tokens_for.add("web")
    provider._renew_at["uid-1"] = time.time() - 1
    events = Events()
    status = provider.sync(pod, events)
    provider.sync(pod, events)
    assert tenant.count("POST", "/api/v1/namespaces/shop/serviceaccounts/web/token") == 3
    assert events.reasons() == ["FailedTokenRequest"]
    assert status.get("reason") != "FailedTokenRequest"  # the status is the host Pod's


# -- what does not start --------------------------------------------------------------------------
def test_pod_security_refusal_fails_the_pod_naming_the_field_and_makes_nothing(apis, make):
    host, tenant = apis
    pod = tenant_pod()
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    events = Events()
    provider = make()

    status = provider.sync(pod, events)
    provider.sync(pod, events)

    assert status["phase"] == "Failed"
    assert status["reason"] == pods.REASON_POD_SECURITY
    assert "spec.containers[0].securityContext.privileged" in status["message"]
    assert events.reasons() == [pods.REASON_POD_SECURITY]  # said once
    assert not [c for c in host.calls if c[0] not in ("LIST", "WATCH")]
    assert not [c for c in tenant.calls if c[1] != "/api/v1/services"], "only the Service sync reads"


def test_a_missing_reference_keeps_the_pod_pending_naming_it_until_it_exists(apis, make, monkeypatch):
    host, tenant = apis
    tenant.remove("/api/v1/namespaces/shop/secrets/db")
    provider, events, pod = make(), Events(), tenant_pod()

    status = provider.sync(pod, events)
    pod["status"] = status  # as the core posted it
    monkeypatch.setattr(hostcluster_provider, "_now", lambda: "2026-11-23T23:59:59Z")  # a second later
    again = provider.sync(pod, events)

    assert again == status  # nothing new: the core writes nothing
    assert status["phase"] == "Pending"
    assert status["reason"] == "MissingReference"
    assert 'secret "db" not found' in status["message"]
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "MissingReference"
    assert {"type": "Ready", "status": "False"}.items() <= status["conditions"][-1].items()
    assert events.reasons() == ["MissingReference"]
    assert host.at(HOST_PODS) == {}

    tenant.seed(secret("db", {"password": "c2VjcmV0"}))
    provider.sync(pod, events)
    assert len(host.at(HOST_PODS)) == 1


def test_a_host_refusal_and_a_missing_service_account_keep_the_pod_pending_saying_why(apis, make):
    host, tenant = apis
    provider, events = make(), Events()
    host.refuse_creates = KubeError(
        'create host pod: pods "x" is forbidden: exceeded quota: pods, requested: cpu=2', status=403
    )

    status = provider.sync(tenant_pod(), events)

    assert (status["phase"], status["reason"]) == ("Pending", "FailedCreateHostPod")
    assert "exceeded quota" in status["message"]
    tenant.no_tokens_for.add("web")
    status = provider.sync(tenant_pod("web-2", "uid-2"), events)
    assert (status["phase"], status["reason"]) == ("Pending", "FailedTokenRequest")
    assert "service account web" in status["message"]
    assert events.reasons() == ["FailedCreateHostPod", "FailedTokenRequest"]


def test_a_pod_waits_while_the_host_pod_of_its_name_is_an_earlier_pods(apis, make):
    host, _tenant = apis
    provider = make()
    provider.sync(tenant_pod(uid="old"), Events())
    eventually(lambda: provider.pods.get("old"))

    status = provider.sync(tenant_pod(uid="new"), Events())

    assert status["phase"] == "Pending"
    assert status["reason"] == "HostPodTerminating"
    assert host.count("POST", HOST_PODS) == 1


def test_a_pod_on_a_node_the_agent_does_not_serve_waits(apis, make):
    pod = tenant_pod()
    pod["spec"]["nodeName"] = "node-z"
    status = make().sync(pod, Events())
    assert status["phase"] == "Pending"
    assert status["reason"] == "UnknownVirtualNode"


# -- deleting, both ways --------------------------------------------------------------------------
def test_deleting_the_tenant_pod_deletes_its_host_pod_token_and_unused_copies(apis, make):
    host, _tenant = apis
    provider = make()
    first, second = tenant_pod("web-1", "uid-1"), tenant_pod("web-2", "uid-2")
    second["spec"]["volumes"] = second["spec"]["volumes"][1:]  # no db Secret
    second["spec"]["containers"][0]["volumeMounts"] = second["spec"]["containers"][0]["volumeMounts"][1:]
    for pod in (first, second):
        provider.sync(pod, Events())
    eventually(lambda: provider.pods.get("uid-2"))
    events = Events()

    provider.terminate(first, 30, events)

    assert events.reasons() == ["Killing"]
    delete = next(b for b in host.bodies if b[0] == "DELETE" and b[1] == host_pod_path(first))
    assert delete[2]["gracePeriodSeconds"] == 30
    assert list(host.at(HOST_PODS)) == [pods.host_pod_name(second, SETTINGS)]
    secrets = set(host.at(f"/api/v1/namespaces/{HOST_NS}/secrets"))
    # db was first's alone; settings and the CA are still the second Pod's.
    assert secrets == {names.token_secret_name("blue", "shop", "web-2")}
    assert set(host.at(f"/api/v1/namespaces/{HOST_NS}/configmaps")) == {
        copy_name("configmap", "settings"),
        copy_name("configmap", "kube-root-ca.crt"),
    }

    provider.forget("uid-1")  # the core, once the tenant Pod is gone: nothing left
    provider.terminate(second, 30, Events())
    for collection in ("pods", "secrets", "configmaps"):
        assert host.at(f"/api/v1/namespaces/{HOST_NS}/{collection}") == {}


def test_a_host_pod_deleted_by_someone_else_fails_the_tenant_pod(apis, make):
    host, _tenant = apis
    provider, pod, events = make(), tenant_pod(), Events()
    provider.sync(pod, events)
    running(host, pod)
    eventually(lambda: seen_running(provider, pod))
    pod["status"] = provider.sync(pod, events)

    host.remove(host_pod_path(pod))
    eventually(lambda: provider.pods.get("uid-1") is None)
    status = provider.sync(pod, events)

    assert status["phase"] == "Failed"  # its ReplicaSet makes a new one
    assert status["reason"] == "HostPodDeleted"
    assert status["containerStatuses"][0]["state"]["terminated"]["reason"] == "HostPodDeleted"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    assert host.count("POST", HOST_PODS) == 1  # not recreated behind the controller's back
    # An agent restarted since knows it from the tenant status alone.
    assert make().sync(pod, Events())["phase"] == "Failed"


def test_stop_containers_deletes_a_running_host_pod_and_keeps_an_ended_one(apis, make):
    host, _tenant = apis
    provider, pod = make(), tenant_pod()
    provider.sync(pod, Events())
    running(host, pod)
    eventually(lambda: seen_running(provider, pod))

    provider.stop_containers(pod, 5, Events())

    assert host.at(HOST_PODS) == {}
    ended = tenant_pod("job-1", "uid-9")
    provider.sync(ended, Events())
    host.set_status(host_pod_path(ended), {"phase": "Succeeded"})
    eventually(lambda: (provider.pods.get("uid-9") or {}).get("status"))
    provider.stop_containers(ended, 5, Events())
    assert list(host.at(HOST_PODS)) == [pods.host_pod_name(ended, SETTINGS)]  # kept for its logs


def test_host_events_of_a_host_pod_are_told_to_its_tenant_pod_in_its_names(apis, make):
    host, _tenant = apis
    told = Events()
    events_path = f"/api/v1/namespaces/{HOST_NS}/events"

    def host_event(name: str, reason: str, message: str, pod_name: str) -> None:
        host.seed(
            {
                "kind": "Event",
                "metadata": {"name": name, "namespace": HOST_NS},
                "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": HOST_NS},
                "type": "Warning" if reason != "Scheduled" else "Normal",
                "reason": reason,
                "message": message,
            }
        )

    pod = tenant_pod()
    host_name = pods.host_pod_name(pod, SETTINGS)
    host_event("old", "BackOff", "from before the agent started", host_name)
    provider = make(events=told)
    provider.sync(pod, Events())
    eventually(lambda: ("WATCH", events_path) in host.calls)

    host_event("e1", "Scheduled", f"Successfully assigned {HOST_NS}/{host_name} to node-b", host_name)
    host_event(
        "e2", "Failed", f'Failed to pull image "localhost/shop/web:1" for {HOST_NS}/{host_name}', host_name
    )
    host_event("e3", "Failed", "about a Pod of no tenant Pod", "someone-elses")
    host_event("e4", "BackOff", "Back-off pulling image", host_name)  # after e3 in the watch

    eventually(lambda: len(told) == 2)
    assert told == [
        ("web-1", "Warning", "Failed", 'Failed to pull image "localhost/shop/web:1" for shop/web-1'),
        ("web-1", "Warning", "BackOff", "Back-off pulling image"),
    ]


# -- adoption after a restart ---------------------------------------------------------------------
def test_a_restarted_agent_finds_its_host_pods_by_label_and_removes_stale_ones(apis, make):
    host, _tenant = apis
    first = make()
    kept, stale = tenant_pod("web-1", "uid-1"), tenant_pod("web-2", "uid-2")
    first.sync(kept, Events())
    first.sync(stale, Events())
    first.stop()
    # A host Pod of another tenant in the same namespace is never touched.
    host.seed(
        {
            "kind": "Pod",
            "metadata": {"name": "other", "namespace": HOST_NS, "labels": {names.TENANT_LABEL: "red"}},
        }
    )

    restarted = make()
    views = restarted.running_pods()

    assert sorted((v.uid, v.namespace, v.name) for v in views) == [
        ("uid-1", "shop", "web-1"),
        ("uid-2", "shop", "web-2"),
    ]
    restarted.sync(kept, Events())
    assert host.count("POST", HOST_PODS) == 2  # adopted, not made again
    restarted.forget("uid-2")  # the core: not in the tenant API any more
    delete = next(b for b in host.bodies if b[0] == "DELETE" and b[1] == host_pod_path(stale))
    assert delete[2]["gracePeriodSeconds"] == 0
    assert set(host.at(HOST_PODS)) == {pods.host_pod_name(kept, SETTINGS), "other"}
    assert names.token_secret_name("blue", "shop", "web-2") not in host.at(
        f"/api/v1/namespaces/{HOST_NS}/secrets"
    )


# -- reaching containers --------------------------------------------------------------------------
def test_logs_read_the_host_pods_log_with_follow_and_previous(apis, make):
    host, _tenant = apis
    provider, pod = make(), tenant_pod()
    provider.sync(pod, Events())

    assert b"".join(provider.logs(pod, LogRequest(container="web", follow=True, tail_lines=5))) == (
        b"line 1\nline 2\n"
    )
    assert host.queries[-1] == [("container", "web"), ("follow", "true"), ("tailLines", 5)]
    list(provider.logs(pod, LogRequest(container="web", follow=True, previous=True)))
    assert host.queries[-1] == [("container", "web"), ("previous", "true")]
    with pytest.raises(ProviderError, match="no host Pod"):
        provider.logs(tenant_pod("web-9", "uid-9"), LogRequest(container="web"))


class FakeWs:
    """A WebSocket exec stream (the kubernetes client's WSClient) that replays FRAMES,
    one per update, then closes as the server does when the command ends."""

    def __init__(self, frames: list[tuple[int, bytes]]) -> None:
        self.frames = list(frames)
        self.channels: dict[int, bytes] = {}
        self.open = True
        self.sent: list[tuple[int, Any]] = []

    def update(self, timeout: float = 0) -> None:
        if self.frames:
            channel, data = self.frames.pop(0)
            self.channels[channel] = self.channels.get(channel, b"") + data
        else:
            self.open = False

    def read_channel(self, channel: int, timeout: float = 0) -> bytes:
        return self.channels.pop(channel, b"")

    def is_open(self) -> bool:
        return self.open

    def write_stdin(self, data: bytes) -> None:
        self.sent.append((0, data))

    def write_channel(self, channel: int, data: Any) -> None:
        self.sent.append((channel, data))

    def close_channel(self, channel: int) -> None:
        self.sent.append((255, channel))

    def close(self) -> None:
        self.open = False


class FakeStreams:
    def __init__(self, ws: FakeWs | None = None, error: Exception | None = None) -> None:
        self.ws = ws
        self.error = error
        self.calls: list[tuple] = []

    def exec(self, namespace, name, container, command, *, stdin, tty):
        self.calls.append(("exec", namespace, name, container, command, stdin, tty))
        if self.error:
            raise self.error
        return self.ws

    def port_forward(self, namespace, name, port):
        self.calls.append(("port-forward", namespace, name, port))
        if self.error:
            raise self.error
        ours, theirs = socket.socketpair()
        theirs.close()
        return ours


def test_exec_bridges_to_the_host_pods_exec_stream(apis, make):
    host, _tenant = apis
    exit_3 = {"status": "Failure", "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
    ws = FakeWs([(1, b"out\n"), (2, b"err\n"), (3, json.dumps(exit_3).encode())])
    streams = FakeStreams(ws)
    provider, pod = make(streams=streams), tenant_pod()
    provider.sync(pod, Events())
    with pytest.raises(ProviderError, match="not running"):
        provider.exec(pod, "web", ["sh"], stdin=True, tty=False)
    running(host, pod)
    eventually(lambda: seen_running(provider, pod))

    session = provider.exec(pod, "web", ["sh", "-c", "exit 3"], stdin=True, tty=True, size=(80, 24))
    session.write(b"echo hi\n")
    session.close_stdin()
    out = []
    while (chunk := session.read()) is not None:
        out.append(chunk)

    assert streams.calls[-1] == (
        "exec",
        HOST_NS,
        pods.host_pod_name(pod, SETTINGS),
        "web",
        ["sh", "-c", "exit 3"],
        True,
        True,
    )
    assert ws.sent == [(4, '{"Width": 80, "Height": 24}'), (0, b"echo hi\n"), (255, 0)]
    assert out == [(STDOUT, b"out\n"), (STDERR, b"err\n")]
    assert session.exit_code() == 3


def test_exec_exit_codes_from_the_error_channel():
    ok = WebSocketExec(FakeWs([(3, b'{"status": "Success"}')]))
    assert ok.read() is None
    assert ok.exit_code() == 0
    dropped = WebSocketExec(FakeWs([]))
    assert dropped.read() is None
    assert dropped.exit_code() == 1  # no Status: the connection ended without one


def test_port_forward_connects_to_the_host_pod_and_says_why_it_cannot(apis, make):
    host, _tenant = apis
    streams = FakeStreams()
    provider, pod = make(streams=streams), tenant_pod()
    provider.sync(pod, Events())
    running(host, pod)
    eventually(lambda: seen_running(provider, pod))

    conn = provider.connect(pod, 8080)
    conn.close()

    assert streams.calls == [("port-forward", HOST_NS, pods.host_pod_name(pod, SETTINGS), 8080)]
    streams.error = KubeError("403 Forbidden: pods/portforward is forbidden", status=403)
    with pytest.raises(ProviderError, match="port-forward to the host Pod: 403 Forbidden"):
        provider.connect(pod, 8080)


def test_stats_say_they_are_not_supported_yet(make):
    with pytest.raises(ProviderError, match="not supported yet by the host-cluster backend"):
        make().stats()


def test_facts_name_the_host_version_and_health(make):
    facts = make().facts()
    assert facts.runtime_version == "hostcluster://v1.34.4"
    assert facts.healthy


def test_both_backends_implement_every_method_of_the_provider_contract():
    from rhizeption_agent.provider import Provider
    from rhizeption_agent.runtime import RuntimeProvider

    wanted = {name for name in vars(Provider) if not name.startswith("_")}
    assert "stop_containers" in wanted
    for backend in (HostClusterProvider, RuntimeProvider):
        assert wanted <= {name for name in dir(backend) if callable(getattr(backend, name))}, backend

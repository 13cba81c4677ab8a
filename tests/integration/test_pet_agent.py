"""The pet node agent against the rig's real kube-apiserver, running real Podman
containers: the Node, its Lease, a Pod with init containers, environment, downward API
and ConfigMap/Secret/emptyDir volumes, status, Events, and graceful deletion."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from petagent import (
    HOST_IMAGE,
    AgentProcess,
    pet_pod,
    pod_events,
    podman_containers,
    podman_exec,
    running_agent,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent(control_plane, tmp_path_factory) -> Iterator[AgentProcess]:
    """One agent (its own Podman service, its own Node) for this module's tests."""
    with running_agent(control_plane, tmp_path_factory.mktemp("pet-agent")) as proc:
        yield proc


def test_node_registers_with_measured_capacity_and_renews_its_lease(agent, core, api_client):
    # The node lifecycle controller taints a new Node not-ready until it has seen it Ready:
    # wait for that to pass, then only the agent's own taint is left.
    node = wait_for(
        "the Node, with only its own taint",
        lambda: (
            (n := _get_node(core, agent.node_name))
            and [(t.key, t.effect) for t in n.spec.taints or []] == [("rhizeption.io/pet", "NoSchedule")]
            and n
        ),
        60,
        agent=agent,
    )
    assert node.metadata.labels["node.rhizeption.io/kind"] == "pet"
    assert node.metadata.labels["kubernetes.io/hostname"] == agent.node_name
    assert node.status.capacity["cpu"] == str(len(os.sched_getaffinity(0)))
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    assert node.status.capacity["memory"] == f"{mem_kib}Ki"
    assert node.status.allocatable["cpu"] == f"{len(os.sched_getaffinity(0)) * 1000 - 100}m"
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions == {
        "Ready": "True",
        "MemoryPressure": "False",
        "DiskPressure": "False",
        "PIDPressure": "False",
    }
    assert {(a.type, a.address) for a in node.status.addresses} == {("InternalIP", "127.0.0.1")}
    assert node.status.node_info.container_runtime_version.startswith("podman://4.")

    coord = kubernetes.client.CoordinationV1Api(api_client)
    lease = wait_for("the Lease", lambda: _get_lease(coord, agent.node_name), 30, agent=agent)
    assert lease.spec.holder_identity == agent.node_name
    assert lease.metadata.owner_references[0].name == agent.node_name
    first = lease.spec.renew_time
    renewed = wait_for(
        "a renewed Lease",
        lambda: (le := _get_lease(coord, agent.node_name)) and le.spec.renew_time > first and le,
        25,
    )
    gap = (renewed.spec.renew_time - first).total_seconds()
    assert 5 <= gap <= 15, f"the Lease is renewed every 10 s, this time after {gap} s"


def _get_node(core, name):
    try:
        node = core.read_node(name)
    except kubernetes.client.ApiException:
        return None
    return node if node.status.conditions else None


def _get_lease(coord, name):
    try:
        return coord.read_namespaced_lease(name, "kube-node-lease")
    except kubernetes.client.ApiException:
        return None


def test_pod_runs_with_init_env_and_volumes_and_sees_updates(agent, core, ns):
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "settings"}, "data": {"greeting": "hello", "mode": "one"}}
    )
    core.create_namespaced_secret(
        ns, {"metadata": {"name": "creds"}, "data": {"password": base64.b64encode(b"s3cret").decode()}}
    )
    init = {
        "name": "prepare",
        "image": HOST_IMAGE,
        "command": ["sh", "-c", "echo prepared-by-init > /work/init.txt"],
        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
    }
    main = {
        "name": "app",
        "image": HOST_IMAGE,
        "command": ["sh", "-c", "echo started; exec sleep 3600"],
        "env": [
            {"name": "PLAIN", "value": "plain-value"},
            {"name": "EXPANDED", "value": "$(PLAIN)-expanded"},
            {"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        ],
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
        "volumeMounts": [
            {"name": "work", "mountPath": "/work"},
            {"name": "settings", "mountPath": "/etc/settings"},
            {"name": "creds", "mountPath": "/etc/creds"},
            {"name": "info", "mountPath": "/etc/podinfo"},
        ],
    }
    pod = pet_pod(
        agent,
        "app",
        [main],
        initContainers=[init],
        volumes=[
            {"name": "work", "emptyDir": {}},
            {"name": "settings", "configMap": {"name": "settings"}},
            {"name": "creds", "secret": {"secretName": "creds"}},
            {
                "name": "info",
                "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
            },
        ],
    )
    pod["metadata"]["labels"] = {"app": "demo"}
    created = core.create_namespaced_pod(ns, pod)
    uid = created.metadata.uid

    def ready():
        p = core.read_namespaced_pod("app", ns)
        conds = {c.type: c.status for c in p.status.conditions or []}
        return p if p.status.phase == "Running" and conds.get("Ready") == "True" else None

    running = wait_for("the Pod Running and Ready", ready, 90, agent=agent)
    assert running.status.pod_ip, "podIP is reported"
    assert running.status.host_ip == "127.0.0.1"
    (init_status,) = running.status.init_container_statuses
    assert init_status.state.terminated.exit_code == 0
    assert init_status.state.terminated.reason == "Completed"
    (app,) = running.status.container_statuses
    assert app.ready and app.started and app.restart_count == 0
    assert app.container_id.startswith("podman://")
    assert {c.type for c in running.status.conditions} >= {
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    }

    env = dict(
        line.split("=", 1) for line in podman_exec(agent, uid, "app", ["env"]).splitlines() if "=" in line
    )
    assert env["PLAIN"] == "plain-value"
    assert env["EXPANDED"] == "plain-value-expanded"
    assert env["MY_POD"] == "app"
    assert env["MY_NS"] == ns
    assert env["MY_IP"] == running.status.pod_ip
    assert env["PASSWORD"] == "s3cret"
    assert env["CM_greeting"] == "hello"
    assert podman_exec(agent, uid, "app", ["cat", "/work/init.txt"]).strip() == "prepared-by-init"
    assert podman_exec(agent, uid, "app", ["cat", "/etc/settings/greeting"]) == "hello"
    assert podman_exec(agent, uid, "app", ["cat", "/etc/creds/password"]) == "s3cret"
    assert podman_exec(agent, uid, "app", ["cat", "/etc/podinfo/labels"]).strip() == 'app="demo"'
    token = podman_exec(agent, uid, "app", ["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"])
    assert token.count(".") == 2, "a projected service-account token (a JWT) is mounted"

    # Updates of the ConfigMap and the Secret reach the running container.
    core.patch_namespaced_config_map("settings", ns, {"data": {"greeting": "hello again"}})
    core.patch_namespaced_secret("creds", ns, {"data": {"password": base64.b64encode(b"rotated").decode()}})
    wait_for(
        "the ConfigMap update in the container",
        lambda: podman_exec(agent, uid, "app", ["cat", "/etc/settings/greeting"]) == "hello again",
        30,
        agent=agent,
    )
    wait_for(
        "the Secret update in the container",
        lambda: podman_exec(agent, uid, "app", ["cat", "/etc/creds/password"]) == "rotated",
        30,
        agent=agent,
    )

    reasons = {r for r, _m in pod_events(core, ns, "app")}
    assert {"Pulled", "Created", "Started"} <= reasons, reasons


def test_deleting_a_pod_stops_its_containers_within_the_grace_period(agent, core, ns):
    # The container ignores nothing: SIGTERM ends `sleep` at once through the trap.
    main = {
        "name": "app",
        "image": HOST_IMAGE,
        "command": ["sh", "-c", "trap 'echo bye; exit 0' TERM; while true; do sleep 0.2; done"],
    }
    created = core.create_namespaced_pod(ns, pet_pod(agent, "stopper", [main]))
    uid = created.metadata.uid
    wait_for(
        "Running", lambda: core.read_namespaced_pod("stopper", ns).status.phase == "Running", 60, agent=agent
    )
    assert any(c.attrs["State"] == "running" for c in podman_containers(agent, uid))
    start = time.monotonic()
    core.delete_namespaced_pod("stopper", ns, grace_period_seconds=5)

    def gone():
        try:
            core.read_namespaced_pod("stopper", ns)
            return False
        except kubernetes.client.ApiException as e:
            return e.status == 404

    wait_for("the Pod gone", gone, 30, agent=agent)
    elapsed = time.monotonic() - start
    assert not podman_containers(agent, uid), "no container of the Pod is left in Podman"
    # Within its 5 s grace (and the agent's 1 s resync), not after a kill timeout.
    assert elapsed < 12, f"deletion took {elapsed:.1f} s"
    assert "Killing" in {r for r, _m in pod_events(core, ns, "stopper")}


def test_a_pod_with_an_unsupported_feature_fails_with_the_field_named(agent, core, ns):
    main = {
        "name": "app",
        "image": HOST_IMAGE,
        "command": ["sleep", "60"],
        "lifecycle": {"preStop": {"exec": {"command": ["true"]}}},
    }
    created = core.create_namespaced_pod(ns, pet_pod(agent, "unsupported", [main]))
    failed = wait_for(
        "the Pod Failed",
        lambda: (p := core.read_namespaced_pod("unsupported", ns)).status.phase == "Failed" and p,
        30,
        agent=agent,
    )
    assert "spec.containers[0].lifecycle" in failed.status.message
    assert failed.status.reason == "UnsupportedFeature"
    assert not podman_containers(agent, created.metadata.uid), "nothing of it was started"
    events = wait_for(
        "the UnsupportedFeature event",
        lambda: [m for r, m in pod_events(core, ns, "unsupported") if r == "UnsupportedFeature"],
        15,
    )
    assert "spec.containers[0].lifecycle" in events[0]

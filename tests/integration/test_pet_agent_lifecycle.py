"""The pet node agent's container lifecycle against the rig and real Podman: restart
policies with CrashLoopBackOff, probes driving Ready and restarts, missing images."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterator

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
    with running_agent(control_plane, tmp_path_factory.mktemp("pet-agent-life")) as proc:
        yield proc


def status_of(core, ns, name, container=None):
    pod = core.read_namespaced_pod(name, ns)
    if container is None:
        return pod
    return next((c for c in pod.status.container_statuses or [] if c.name == container), None)


def test_a_crashing_container_backs_off_with_growing_delays(agent, core, ns):
    crasher = {"name": "crash", "image": HOST_IMAGE, "command": ["sh", "-c", "echo crashing; exit 3"]}
    core.create_namespaced_pod(ns, pet_pod(agent, "crasher", [crasher]))
    starts: dict[int, datetime.datetime] = {}

    def record():
        cs = status_of(core, ns, "crasher", "crash")
        if cs is None:
            return None
        last = cs.last_state.terminated if cs.last_state else None
        if cs.state.running or cs.state.terminated:
            current = cs.state.running or cs.state.terminated
            starts.setdefault(cs.restart_count, current.started_at)
            # The run before this one: the only sight of it when it ended between two looks.
            if last is not None:
                starts.setdefault(cs.restart_count - 1, last.started_at)
        elif cs.state.waiting and last is not None:
            # In back-off, lastState is the run that just ended: the latest attempt.
            starts.setdefault(cs.restart_count, last.started_at)
        # Run 0 may never show in a status: it ended and its immediate restart ran before the
        # agent posted one (seen in full runs). Restarts 1 to 3 always show.
        return all(i in starts for i in (1, 2, 3)) and cs

    try:
        cs = wait_for("three restarts", record, 120, interval=0.3, agent=agent)
    except AssertionError as e:
        # What the test saw, should it time out.
        now = status_of(core, ns, "crasher", "crash")
        raise AssertionError(
            f"{e}\nstarts seen: {starts}\nstatus now: {now}\nevents: {pod_events(core, ns, 'crasher')}"
        ) from e
    pod = status_of(core, ns, "crasher")
    assert pod.status.phase == "Running", "restartPolicy Always keeps the Pod Running"
    assert cs.last_state.terminated.exit_code == 3
    assert cs.last_state.terminated.reason == "Error"
    waiting = wait_for(
        "CrashLoopBackOff",
        lambda: (
            (c := status_of(core, ns, "crasher", "crash")).state.waiting
            and c.state.waiting.reason == "CrashLoopBackOff"
            and c
        ),
        40,
        agent=agent,
    )
    assert "back-off" in waiting.state.waiting.message
    messages = [m for r, m in pod_events(core, ns, "crasher") if r == "BackOff"]
    assert any("back-off 10s" in m for m in messages), messages
    assert any("back-off 20s" in m for m in messages), messages
    # Gaps between runs grow: the first restart at once (counted from the Pod's creation, as
    # run 0 may not have been seen), then 10 s, then 20 s.
    created = pod.metadata.creation_timestamp
    times = [created, starts[1], starts[2], starts[3]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert gaps[0] < 5, (gaps, starts)
    assert 9 <= gaps[1] < 16, (gaps, starts)
    assert 19 <= gaps[2] < 27, (gaps, starts)
    # Podman keeps the current run and the one before (for logs --previous), not all.
    runs = [c for c in podman_containers(agent, pod.metadata.uid) if "rhizeption.io/container" in c.labels]
    assert len(runs) <= 2, [c.name for c in runs]


def test_restart_policies_never_and_on_failure_end_the_pod(agent, core, ns):
    fail = {"name": "fail", "image": HOST_IMAGE, "command": ["sh", "-c", "exit 2"]}
    core.create_namespaced_pod(ns, pet_pod(agent, "never", [fail], restartPolicy="Never"))
    ok = {"name": "ok", "image": HOST_IMAGE, "command": ["true"]}
    core.create_namespaced_pod(ns, pet_pod(agent, "onfailure", [ok], restartPolicy="OnFailure"))
    failed = wait_for(
        "Failed", lambda: (p := status_of(core, ns, "never")).status.phase == "Failed" and p, 60, agent=agent
    )
    assert failed.status.container_statuses[0].state.terminated.exit_code == 2
    assert failed.status.container_statuses[0].restart_count == 0
    done = wait_for(
        "Succeeded",
        lambda: (p := status_of(core, ns, "onfailure")).status.phase == "Succeeded" and p,
        60,
        agent=agent,
    )
    assert done.status.container_statuses[0].state.terminated.reason == "Completed"


def test_probes_drive_ready_and_restarts(agent, core, ns):
    web = {
        "name": "web",
        "image": HOST_IMAGE,
        "command": ["python3", "-m", "http.server", "8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "startupProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2},
    }
    gate = {
        "name": "gate",
        "image": HOST_IMAGE,
        "command": ["sleep", "3600"],
        "readinessProbe": {
            "exec": {"command": ["test", "-f", "/tmp/ready"]},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    created = core.create_namespaced_pod(ns, pet_pod(agent, "probed", [web, gate]))
    uid = created.metadata.uid
    wait_for(
        "web ready",
        lambda: (c := status_of(core, ns, "probed", "web")) and c.ready,
        60,
        agent=agent,
    )
    pod = status_of(core, ns, "probed")
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert pod.status.phase == "Running"
    assert conditions["Ready"] == "False", "the gate container's readiness probe fails"
    assert conditions["ContainersReady"] == "False"
    assert not status_of(core, ns, "probed", "gate").ready
    assert any(r == "Unhealthy" and "Readiness probe failed" in m for r, m in pod_events(core, ns, "probed"))

    podman_exec(agent, uid, "gate", ["touch", "/tmp/ready"])
    wait_for(
        "the Pod Ready",
        lambda: (
            {c.type: c.status for c in status_of(core, ns, "probed").status.conditions}["Ready"] == "True"
        ),
        30,
        agent=agent,
    )
    podman_exec(agent, uid, "gate", ["rm", "/tmp/ready"])
    wait_for(
        "the Pod unready again",
        lambda: (
            {c.type: c.status for c in status_of(core, ns, "probed").status.conditions}["Ready"] == "False"
        ),
        30,
        agent=agent,
    )
    assert status_of(core, ns, "probed", "web").restart_count == 0, (
        "a passing liveness probe restarts nothing"
    )


def test_a_failing_liveness_probe_restarts_the_container(agent, core, ns):
    sick = {
        "name": "sick",
        "image": HOST_IMAGE,
        "command": ["sleep", "3600"],
        "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2},
    }
    core.create_namespaced_pod(ns, pet_pod(agent, "sick", [sick], terminationGracePeriodSeconds=1))
    wait_for(
        "a restart",
        lambda: (c := status_of(core, ns, "sick", "sick")) and c.restart_count >= 1,
        60,
        agent=agent,
    )
    events = pod_events(core, ns, "sick")
    assert any(r == "Killing" and "failed liveness probe" in m for r, m in events), events
    assert any(r == "Unhealthy" and "Liveness probe failed" in m for r, m in events), events


def test_a_missing_image_gives_err_image_pull_then_back_off(agent, core, ns):
    ghost = {
        "name": "ghost",
        "image": "localhost/rhizeption/no-such-image:1",
        "imagePullPolicy": "IfNotPresent",
    }
    core.create_namespaced_pod(ns, pet_pod(agent, "ghost", [ghost]))
    seen = set()

    def reasons():
        cs = status_of(core, ns, "ghost", "ghost")
        if cs is not None and cs.state.waiting:
            seen.add(cs.state.waiting.reason)
        return {"ErrImagePull", "ImagePullBackOff"} <= seen

    wait_for("ErrImagePull and ImagePullBackOff", reasons, 60, interval=0.2, agent=agent)
    pod = status_of(core, ns, "ghost")
    assert pod.status.phase == "Pending"
    events = pod_events(core, ns, "ghost")
    assert any(r == "Pulling" for r, _m in events)
    assert any(r == "Failed" and "ErrImagePull" in m for r, m in events), events

"""Recovery of the pet node agent: killed and restarted, it adopts the containers it made
(no duplicates), removes those of Pods deleted meanwhile and starts Pods created
meanwhile; through an API server restart, its watch comes back and it converges."""

from __future__ import annotations

import signal

import kubernetes
import pytest
from petagent import HOST_IMAGE, pet_pod, podman_containers, running_agent, wait_for

pytestmark = pytest.mark.slow


SLEEPER = {"name": "app", "image": HOST_IMAGE, "command": ["sleep", "3600"]}


def runs(agent, uid: str) -> dict[str, str]:
    """Podman container id -> state, of the Pod's Kubernetes containers."""
    return {
        c.id: c.attrs["State"] for c in podman_containers(agent, uid) if "rhizeption.io/container" in c.labels
    }


def ready(core, ns, name) -> bool:
    try:
        pod = core.read_namespaced_pod(name, ns)
    except kubernetes.client.ApiException:
        return False
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    )


def gone(core, ns, name) -> bool:
    try:
        core.read_namespaced_pod(name, ns)
    except kubernetes.client.ApiException as e:
        return e.status == 404
    return False


def test_a_killed_agent_restarts_and_adopts_what_it_runs(control_plane, tmp_path, core, ns):
    with running_agent(control_plane, tmp_path) as agent:
        kept = core.create_namespaced_pod(ns, pet_pod(agent, "kept", [SLEEPER]))
        doomed = core.create_namespaced_pod(ns, pet_pod(agent, "doomed", [SLEEPER]))
        wait_for("both Ready", lambda: ready(core, ns, "kept") and ready(core, ns, "doomed"), 90, agent=agent)
        before = runs(agent, kept.metadata.uid)
        assert list(before.values()) == ["running"]
        status_before = core.read_namespaced_pod("kept", ns).status

        agent.stop(signal.SIGKILL)  # no goodbye: as if the host's agent crashed
        # Meanwhile: one Pod force-deleted (no agent to finish it), one created.
        core.delete_namespaced_pod("doomed", ns, grace_period_seconds=0)
        wait_for("doomed gone from the API", lambda: gone(core, ns, "doomed"), 30)
        assert runs(agent, doomed.metadata.uid), "its container still runs while the agent is down"
        core.create_namespaced_pod(ns, pet_pod(agent, "newcomer", [SLEEPER]))

        agent.start()
        wait_for("the newcomer Ready", lambda: ready(core, ns, "newcomer"), 90, agent=agent)
        wait_for(
            "the deleted Pod's containers removed",
            lambda: not podman_containers(agent, doomed.metadata.uid),
            30,
        )
        assert runs(agent, kept.metadata.uid) == before, (
            "the same container, still running: adopted, not rerun"
        )
        after = core.read_namespaced_pod("kept", ns).status
        assert ready(core, ns, "kept")
        assert after.container_statuses[0].container_id == status_before.container_statuses[0].container_id
        assert after.container_statuses[0].restart_count == 0
        assert after.start_time == status_before.start_time


def test_the_agent_lives_through_an_api_server_restart(control_plane, tmp_path, core, ns, api_client):
    with running_agent(control_plane, tmp_path) as agent:
        first = core.create_namespaced_pod(ns, pet_pod(agent, "first", [SLEEPER]))
        wait_for("first Ready", lambda: ready(core, ns, "first"), 90, agent=agent)
        before = runs(agent, first.metadata.uid)

        control_plane.restart("kube-apiserver")

        # The watch broke; a Pod created now is only seen through a new list and watch.
        core.create_namespaced_pod(ns, pet_pod(agent, "second", [SLEEPER]))
        wait_for("second Ready after the restart", lambda: ready(core, ns, "second"), 90, agent=agent)
        assert runs(agent, first.metadata.uid) == before, "no duplicate, no restart of the running Pod"
        # Deletion still works end to end.
        core.delete_namespaced_pod("first", ns, grace_period_seconds=2)
        wait_for("first deleted", lambda: gone(core, ns, "first"), 30, agent=agent)
        assert not podman_containers(agent, first.metadata.uid)
        coord = kubernetes.client.CoordinationV1Api(api_client)
        renew = coord.read_namespaced_lease(agent.node_name, "kube-node-lease").spec.renew_time
        wait_for(
            "the Lease renewed after the restart",
            lambda: coord.read_namespaced_lease(agent.node_name, "kube-node-lease").spec.renew_time > renew,
            25,
        )
        assert agent.alive()

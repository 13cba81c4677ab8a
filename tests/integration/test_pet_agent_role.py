"""The pet_node role on this host: files, modes, idempotence, check mode, a bad value
stopped by the agent's own validation; then the agent it installed (the collection's
code copied beside kube.py and pki.py, no Ansible on the path) registers its Node."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import kubernetes
import pytest
from petagent import PAUSE_IMAGE, free_port, node_kubeconfig, podman_service, wait_for

pytestmark = pytest.mark.slow
PLAYBOOKS = Path(__file__).parent / "playbooks"
WRITE_CONFIG = "Write the agent's configuration (validated by the agent itself)"


@pytest.fixture
def role_vars(control_plane, tmp_path):
    name = f"pet-role-{os.urandom(3).hex()}"
    return {
        "pet_node_name": name,
        "pet_node_kubeconfig_content": node_kubeconfig(
            control_plane.workdir, control_plane.server, name
        ).decode(),
        "pet_node_client_ca_content": (control_plane.workdir / "ca.crt").read_text(),
        "pet_node_request_serving_certificate": False,
        "pet_node_internal_ip": "127.0.0.1",
        "pet_node_server_address": "127.0.0.1",
        "pet_node_server_port": free_port(),
        "pet_node_infra_image": PAUSE_IMAGE,
        "pet_node_labels": {"node.rhizeption.io/kind": "pet"},
        # This host is the CI machine: no apt, no systemd, the test's own Python environment.
        "pet_node_install_packages": False,
        "pet_node_manage_services": False,
        "pet_node_install_venv": False,
        "pet_node_venv": sys.prefix,
        "pet_node_dir": str(tmp_path / "opt"),
        "pet_node_config_dir": str(tmp_path / "etc"),
        "pet_node_state_dir": str(tmp_path / "state"),
        "pet_node_podman_url": f"unix://{tmp_path}/podman.sock",
        "pet_node_podman_config_path": str(tmp_path / "containers.conf"),
    }


def test_the_role_installs_a_working_agent(run_playbook, role_vars, tmp_path, api_client):
    playbook = PLAYBOOKS / "pet_node.yml"
    first = run_playbook(playbook, extra_vars=role_vars)
    assert first.rc == 0, first.failures or first.stderr
    assert first.changed > 0
    etc = tmp_path / "etc"
    assert oct((etc / "node.kubeconfig").stat().st_mode & 0o777) == "0o600"
    assert oct((etc / "config.yaml").stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "opt" / "lib" / "rhizeption_agent" / "agent.py").is_file()
    assert (tmp_path / "opt" / "lib" / "kube.py").is_file()
    assert 'runtime = "runc"' in (tmp_path / "containers.conf").read_text()

    again = run_playbook(playbook, extra_vars=role_vars)
    assert again.rc == 0, again.failures
    assert again.changed == 0, "a second run changes nothing"

    before = (etc / "config.yaml").read_text()
    checked = run_playbook(
        playbook, "--check", "--diff", extra_vars={**role_vars, "pet_node_labels": {"zone": "b"}}
    )
    assert checked.rc == 0, checked.failures
    assert checked.changed > 0, "check mode reports the change"
    assert (etc / "config.yaml").read_text() == before, "and makes none"

    bad = run_playbook(playbook, extra_vars={**role_vars, "pet_node_max_pods": 0})
    assert bad.rc != 0
    (result,) = bad.task_results(f"rhizeption.core.pet_node : {WRITE_CONFIG}")
    assert "max_pods" in result.get("stderr", ""), result
    assert (etc / "config.yaml").read_text() == before, "a rejected config does not replace the good one"

    # The installed agent, started as its systemd unit would start it.
    with podman_service(tmp_path):
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path / "opt" / "lib")}
        with open(tmp_path / "agent.log", "wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "rhizeption_agent", "--config", str(etc / "config.yaml")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        core = kubernetes.client.CoreV1Api(api_client)
        try:
            node = wait_for(
                "the Node of the installed agent",
                lambda: _ready_node(core, role_vars["pet_node_name"]),
                60,
            )
            assert node.metadata.labels["node.rhizeption.io/kind"] == "pet"
        finally:
            agent.terminate()
            agent.wait(15)
            with contextlib.suppress(kubernetes.client.ApiException):
                core.delete_node(role_vars["pet_node_name"])
        log_text = (tmp_path / "agent.log").read_text()
        assert "Traceback" not in log_text, log_text[-3000:]


def _ready_node(core, name):
    try:
        node = core.read_node(name)
    except kubernetes.client.ApiException:
        return None
    ready = [c for c in node.status.conditions or [] if c.type == "Ready" and c.status == "True"]
    return node if ready else None

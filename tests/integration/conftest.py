"""Integration fixtures: a real control plane from hack/riglib, and a way to run
playbooks against it with this checkout as rhizeption.core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest
from riglib.controlplane import COMPONENTS, ControlPlane

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, controller-manager, scheduler and kwok for the whole session.
    Its processes die with pytest even if pytest is killed (PR_SET_PDEATHSIG)."""
    cp = ControlPlane(tmp_path_factory.mktemp("rig") / "session", COMPONENTS, die_with_parent=True)
    cp.up()
    try:
        yield cp
    finally:
        cp.down()


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(str(control_plane.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@dataclass
class PlaybookRun:
    rc: int
    output: dict
    stderr: str

    def task_results(self, task_name: str) -> list[dict]:
        """The per-host results of every run of the task named TASK_NAME."""
        return [
            host_result
            for play in self.output["plays"]
            for task in play["tasks"]
            if task["task"]["name"] == task_name
            for host_result in task["hosts"].values()
        ]

    @property
    def changed(self) -> int:
        return sum(s["changed"] for s in self.output["stats"].values())


@pytest.fixture(scope="session")
def run_playbook(control_plane: ControlPlane):
    """Run a playbook on localhost against the rig; returns its JSON result."""

    def run(playbook: Path, *args: str, extra_vars: dict | None = None) -> PlaybookRun:
        env = {
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        }
        evars = {
            "kubeconfig": str(control_plane.kubeconfig),
            "ansible_python_interpreter": sys.executable,
            **(extra_vars or {}),
        }
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                "-i",
                "localhost,",
                "-c",
                "local",
                "-e",
                json.dumps(evars),
                str(playbook),
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        try:
            output = json.loads(result.stdout)
        except json.JSONDecodeError:
            pytest.fail(
                f"ansible-playbook printed no JSON (rc {result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return PlaybookRun(result.returncode, output, result.stderr)

    return run

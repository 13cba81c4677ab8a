"""The rig leaves nothing behind: not after `down`, not after a failing test, not
after the test run is killed outright."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from riglib.controlplane import MINIMAL, ControlPlane, Process, RigError, State, _alive
from riglib.toolchain import MissingBinary

REPO = Path(__file__).resolve().parents[2]
RIG = REPO / "hack" / "rig"


def assert_gone(state: State, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(p) for p in state.processes):
        time.sleep(0.1)
    left = [f"{p.component} (pid {p.pid})" for p in state.processes if _alive(p)]
    assert not left, f"left running: {', '.join(left)}"
    mounts = Path("/proc/mounts").read_text()
    assert state.workdir not in mounts


def test_up_then_down_leaves_no_process_and_no_folder(tmp_path) -> None:
    cp = ControlPlane(tmp_path / "rig", MINIMAL)
    state = cp.up()
    assert [p.component for p in state.processes] == list(MINIMAL)
    assert all(cp.alive().values())
    assert cp.down() == []  # everything stopped on SIGTERM
    assert_gone(state)
    assert not (tmp_path / "rig").exists()


def test_restart_keeps_the_port_the_data_and_the_stop_order(tmp_path) -> None:
    import kubernetes

    cp = ControlPlane(tmp_path / "rig", MINIMAL, die_with_parent=True)
    cp.up()
    try:
        server = cp.server
        client = kubernetes.config.new_client_from_config(str(cp.kubeconfig))
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespaced_config_map("default", {"metadata": {"name": "kept"}, "data": {"a": "1"}})
        before = {p.component: p.pid for p in cp.state.processes}
        for component in ("kube-apiserver", "etcd", "kube-apiserver"):
            cp.restart(component)
        after = {p.component: p.pid for p in cp.state.processes}
        assert [p.component for p in cp.state.processes] == list(MINIMAL)
        assert all(after[c] != before[c] for c in MINIMAL) and all(cp.alive().values())
        assert cp.server == server
        assert core.read_namespaced_config_map("kept", "default").data == {"a": "1"}
        with pytest.raises(RigError, match="kwok is not part of this rig"):
            cp.restart("kwok")
        client.close()
    finally:
        state = cp.state
        cp.down()
    assert_gone(state)


def test_the_command_line_prints_the_kubeconfig_and_cleans_up(tmp_path) -> None:
    env = {**os.environ, "RHIZEPTION_RIG_DIR": str(tmp_path)}
    up = subprocess.run(
        [RIG, "up", "--name", "cli", "--minimal"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    kubeconfig = Path(up.stdout.strip())
    assert kubeconfig == tmp_path / "cli" / "admin.kubeconfig"
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert "ready in" in up.stderr
    state = State.load(tmp_path / "cli")

    status = subprocess.run([RIG, "status"], env=env, capture_output=True, text=True, check=True)
    assert status.stdout.startswith("cli\thttps://127.0.0.1:")
    assert "etcd=up" in status.stdout and "kube-apiserver=up" in status.stdout

    again = subprocess.run([RIG, "up", "--name", "cli"], env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 1
    assert "already lives" in again.stderr

    down = subprocess.run(
        [RIG, "down", "--name", "cli"], env=env, capture_output=True, text=True, check=False
    )
    assert down.returncode == 0, down.stderr
    assert_gone(state)
    assert not (tmp_path / "cli").exists()
    # A second `down` has nothing to do and says so without failing.
    assert subprocess.run([RIG, "down", "--name", "cli"], env=env, check=False).returncode == 0


INNER_TEST = textwrap.dedent("""\
    import json, os
    from pathlib import Path
    import pytest
    from riglib.controlplane import MINIMAL, ControlPlane

    @pytest.fixture
    def rig(tmp_path):
        cp = ControlPlane(Path(os.environ["INNER_RIG_DIR"]), MINIMAL, die_with_parent=True)
        with cp:
            yield cp

    def test_fails_while_the_rig_runs(rig):
        Path(os.environ["INNER_RIG_DIR"] + ".pids").write_text(json.dumps(
            [[p.component, p.pid, p.start_time] for p in rig.state.processes]))
        assert False, "this test fails on purpose"
""")


def _inner_state(path: Path) -> State:
    procs = json.loads(path.read_text())
    return State(
        workdir=str(path.with_suffix("")),
        components=list(MINIMAL),
        processes=[Process(c, pid, st, "") for c, pid, st in procs],
    )


def test_a_failing_test_still_stops_its_rig(tmp_path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    rig_dir = tmp_path / "inner"
    env = {**os.environ, "INNER_RIG_DIR": str(rig_dir), "PYTHONPATH": str(REPO / "hack")}
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert inner.returncode == 1, inner.stdout  # the inner test did fail
    assert "this test fails on purpose" in inner.stdout
    assert_gone(_inner_state(Path(f"{rig_dir}.pids")))
    assert not rig_dir.exists()


def test_a_killed_test_run_takes_its_rig_with_it(tmp_path) -> None:
    rig_dir = tmp_path / "killed"
    script = textwrap.dedent(f"""\
        import json, sys, time
        from pathlib import Path
        from riglib.controlplane import MINIMAL, ControlPlane
        cp = ControlPlane(Path({str(rig_dir)!r}), MINIMAL, die_with_parent=True)
        cp.up()
        Path({str(rig_dir)!r} + ".pids").write_text(json.dumps(
            [[p.component, p.pid, p.start_time] for p in cp.state.processes]))
        print("up", flush=True)
        time.sleep(300)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "hack")}
    holder = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
        state = _inner_state(Path(f"{rig_dir}.pids"))
        assert all(_alive(p) for p in state.processes)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert_gone(state)
    finally:
        if holder.poll() is None:
            holder.kill()
        # The folder stays when nothing ran `down`; the processes are what must not.
        ControlPlane(rig_dir).down()


def test_a_missing_binary_names_the_bootstrap_step(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RHIZEPTION_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingBinary, match=r"run `hack/bootstrap etcd`"):
        ControlPlane(tmp_path / "rig", MINIMAL).up()
    assert not (tmp_path / "rig").exists()


def test_a_component_that_fails_to_start_stops_the_ones_before_it(tmp_path, monkeypatch) -> None:
    real_args = ControlPlane._args

    def broken_apiserver(self, component):
        args = real_args(self, component)
        return [*args, "--no-such-flag"] if component == "kube-apiserver" else args

    monkeypatch.setattr(ControlPlane, "_args", broken_apiserver)
    cp = ControlPlane(tmp_path / "rig", MINIMAL)
    with pytest.raises(RigError, match="kube-apiserver exited during start") as err:
        cp.up()
    assert "unknown flag: --no-such-flag" in str(err.value)  # the log's tail is in the error
    state = State.load(tmp_path / "rig")  # kept, with its logs, for a person to read
    assert_gone(state)

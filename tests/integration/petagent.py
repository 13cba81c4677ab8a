"""Helpers for the pet node agent's integration tests: a Podman service of the tests'
own, a node identity from the rig's CA, and the agent as a real process.

Every Podman object the agent makes in a test carries the label ``rhizeption.io/test-run``
with a value of that run's own, so cleanup removes exactly those and nothing of another
test or agent on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import podman
import yaml
from ansible_collections.rhizeption.core.plugins.module_utils.pki import load_keypair
from riglib import controlplane, pki, toolchain

REPO = Path(__file__).resolve().parents[2]
HOST_IMAGE = "localhost/rhizeption/host:bookworm"
PAUSE_IMAGE = "localhost/rhizeption/pause:3.10.1"
TEST_LABEL = "rhizeption.io/test-run"


def free_port() -> int:
    """A port to listen on, from below the ephemeral range (riglib.controlplane.LISTEN_PORTS)."""
    return controlplane.free_port()


@contextlib.contextmanager
def podman_service(workdir: Path) -> Iterator[str]:
    """`podman system service` on a socket of its own; stopped (by pid) afterwards."""
    sock = workdir / "podman.sock"
    url = f"unix://{sock}"
    log = open(workdir / "podman-service.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", url],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        client = podman.PodmanClient(base_url=url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.version()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        f"podman service did not start; see {workdir}/podman-service.log"
                    ) from None
                time.sleep(0.1)
        client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def remove_labelled(url: str, run_id: str) -> list[str]:
    """Remove every Podman pod and container labelled with RUN_ID; their names."""
    client = podman.PodmanClient(base_url=url)
    removed = []
    flt = [f"label={TEST_LABEL}={run_id}"]
    try:
        # Killed first: a removal with force gives each container 10 s to stop.
        for pod in client.pods.list(filters=flt):
            removed.append(pod.name)
            with contextlib.suppress(Exception):
                pod.kill()
            with contextlib.suppress(Exception):
                pod.remove(force=True)
        for ctr in client.containers.list(all=True, filters=flt):
            removed.append(ctr.name)
            with contextlib.suppress(Exception):
                ctr.kill()
            with contextlib.suppress(Exception):
                ctr.remove(force=True)
    finally:
        client.close()
    return removed


def user_kubeconfig(rig_dir: Path, server: str, user: str, groups: tuple[str, ...] = ()) -> bytes:
    """A kubeconfig for USER in GROUPS, a client certificate signed by the rig's CA."""
    ca = load_keypair((rig_dir / "ca.crt").read_bytes(), (rig_dir / "ca.key").read_bytes())
    client = pki.issue(ca, user, organizations=groups, client=True)
    return pki.kubeconfig_yaml(server, ca.cert, user, client, cluster="rig")


def node_kubeconfig(rig_dir: Path, server: str, node_name: str) -> bytes:
    """A kubeconfig for system:node:NODE_NAME (group system:nodes), signed by the rig's CA:
    the identity a kubelet has after its TLS bootstrap."""
    return user_kubeconfig(rig_dir, server, f"system:node:{node_name}", ("system:nodes",))


@dataclass
class AgentProcess:
    """The agent as a process of this test, with its config and log."""

    workdir: Path
    config: dict
    node_name: str
    run_id: str
    podman_url: str
    proc: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.yaml"

    def start(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        log_path = self.workdir / f"agent-{len(self.logs)}.log"
        self.logs.append(log_path)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "agent"), str(REPO / ".collections")]),
        }
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rhizeption_agent",
                    "--config",
                    str(self.config_path),
                    "--log-level",
                    "DEBUG",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        """The agent's own last lines: urllib3's DEBUG line per request would fill the tail
        of a failure with list calls and hide what the agent decided."""
        if not self.logs:
            return ""
        text = self.logs[-1].read_text(errors="replace").splitlines()
        return "\n".join([line for line in text if "urllib3.connectionpool" not in line][-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def port_forward(kubeconfig: Path, namespace: str, pod: str, port: int) -> Iterator[int]:
    """`kubectl port-forward` of POD's PORT through the API server, to a free local port
    (yielded) for as long as the block runs."""
    local = free_port()
    forward = subprocess.Popen(
        [
            str(toolchain.binary("kubectl")),
            f"--kubeconfig={kubeconfig}",
            "port-forward",
            "-n",
            namespace,
            f"pod/{pod}",
            f"{local}:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()
        assert "Forwarding from" in line, line + (forward.stderr.read() if forward.poll() is not None else "")
        yield local
    finally:
        forward.terminate()
        forward.wait(10)


def wait_for(
    what: str,
    check: Callable[[], object],
    timeout: float = 60,
    interval: float = 0.2,
    agent: AgentProcess | None = None,
) -> object:
    """Poll CHECK until it returns something true; fail with WHAT and the agent's log."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    tail = agent.log_tail() if agent else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})\n{tail}")


def pod_events(core: kubernetes.client.CoreV1Api, namespace: str, pod: str) -> list[tuple[str, str]]:
    evs = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items
    return [(e.reason, e.message) for e in evs]


def dump(obj: object) -> str:
    return json.dumps(kubernetes.client.ApiClient().sanitize_for_serialization(obj), indent=1)[:4000]


@contextlib.contextmanager
def running_agent(control_plane, workdir: Path, **config: object) -> Iterator[AgentProcess]:
    """An agent with its own Podman service and Node on the rig; CONFIG overrides settings.
    Afterwards: the agent stopped, its Podman objects removed, its Node deleted."""
    run_id = os.urandom(4).hex()
    node_name = f"pet-{run_id}"
    kubeconfig = workdir / "node.kubeconfig"
    kubeconfig.write_bytes(node_kubeconfig(control_plane.workdir, control_plane.server, node_name))
    kubeconfig.chmod(0o600)
    with podman_service(workdir) as url:
        proc = AgentProcess(
            workdir=workdir,
            node_name=node_name,
            run_id=run_id,
            podman_url=url,
            config={
                "node_name": node_name,
                "kubeconfig": str(kubeconfig),
                "podman_url": url,
                "state_dir": str(workdir / "state"),
                "internal_ip": "127.0.0.1",
                "hostname_address": False,
                "labels": {"node.rhizeption.io/kind": "pet"},
                "taints": [{"key": "rhizeption.io/pet", "value": "true", "effect": "NoSchedule"}],
                "reserved": {"cpu": "100m", "memory": "128Mi"},
                "infra_image": PAUSE_IMAGE,
                "extra_labels": {TEST_LABEL: run_id},
                "server": {"enabled": False},
                **config,
            },
        )
        proc.start()
        try:
            yield proc
        finally:
            proc.stop()
            remove_labelled(url, run_id)
            admin = kubernetes.config.new_client_from_config(str(control_plane.kubeconfig))
            with contextlib.suppress(kubernetes.client.ApiException):
                kubernetes.client.CoreV1Api(admin).delete_node(node_name)
            admin.close()
            volumes = workdir / "state" / "pods"
            if volumes.exists():
                # tmpfs emptyDirs a failed test may leave mounted
                for mount in Path("/proc/self/mounts").read_text().splitlines():
                    target = mount.split()[1]
                    if target.startswith(str(volumes)):
                        subprocess.run(["umount", "-l", target], check=False)


def pet_pod(agent: AgentProcess, name: str, containers: list[dict], **spec: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": agent.node_name,
            "tolerations": [{"key": "rhizeption.io/pet", "operator": "Exists"}],
            "terminationGracePeriodSeconds": 5,
            "containers": containers,
            **spec,
        },
    }


def podman_containers(agent: AgentProcess, pod_uid: str) -> list:
    client = podman.PodmanClient(base_url=agent.podman_url)
    try:
        return client.containers.list(all=True, filters=[f"label=rhizeption.io/pod-uid={pod_uid}"])
    finally:
        client.close()


def podman_exec(agent: AgentProcess, pod_uid: str, container: str, cmd: list[str]) -> str:
    ctr = next(
        c
        for c in podman_containers(agent, pod_uid)
        if c.labels.get("rhizeption.io/container") == container and c.attrs["State"] == "running"
    )
    code, out = ctr.exec_run(cmd, demux=True)
    assert code == 0, out
    return (out[0] or b"").decode()

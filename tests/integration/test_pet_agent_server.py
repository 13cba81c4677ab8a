"""The pet node agent's port-10250 API through the rig's kube-apiserver: `kubectl logs`
(with --previous and -f), `kubectl exec` (with stdin, with a terminal, output as it
comes), `kubectl port-forward` and stats/summary, and its authentication and
authorization (TokenReview, SubjectAccessReview, client certificates from the cluster CA)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import select
import signal
import ssl
import struct
import subprocess
import termios
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import kubernetes
import pytest
from petagent import HOST_IMAGE, AgentProcess, free_port, pet_pod, port_forward, running_agent, wait_for
from rhizeption_agent.node import default_ip as host_address
from riglib import toolchain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent(control_plane, tmp_path_factory) -> Iterator[AgentProcess]:
    # The API server proxies (nodes/proxy) to no loopback address: the agent serves on the
    # host's own address, as on a real node.
    host_ip = host_address()
    server = {
        "enabled": True,
        "address": host_ip,
        "port": free_port(),
        "client_ca_file": str(control_plane.workdir / "ca.crt"),
    }
    with running_agent(
        control_plane, tmp_path_factory.mktemp("pet-agent-api"), server=server, internal_ip=host_ip
    ) as proc:
        yield proc


@pytest.fixture
def kubectl(control_plane):
    def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(toolchain.binary("kubectl")), f"--kubeconfig={control_plane.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
            check=False,
        )
        assert not check or done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done

    return run


COUNTER = (
    "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; "
    "echo attempt-$n; i=0; while [ $i -lt 6 ]; do echo tick-$n-$i; i=$((i+1)); sleep 0.5; done; exit 1"
)


def test_kubectl_logs_previous_and_follow(agent, core, ns, kubectl):
    ctr = {
        "name": "talker",
        "image": HOST_IMAGE,
        "command": ["sh", "-c", COUNTER],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    core.create_namespaced_pod(
        ns, pet_pod(agent, "talker", [ctr], volumes=[{"name": "data", "emptyDir": {}}])
    )
    wait_for(
        "the first run's output",
        lambda: "attempt-1" in kubectl("logs", "-n", ns, "talker", check=False).stdout,
        60,
        agent=agent,
    )
    wait_for(
        "a restart",
        lambda: (
            (s := core.read_namespaced_pod("talker", ns).status.container_statuses)
            and s[0].restart_count >= 1
            and s[0].state.running
        ),
        60,
        agent=agent,
    )
    current = kubectl("logs", "-n", ns, "talker").stdout
    previous = kubectl("logs", "-n", ns, "talker", "--previous").stdout
    assert previous.splitlines()[0] == "attempt-1"
    assert "tick-1-5" in previous, "the previous run's log is complete"
    assert current.splitlines()[0].startswith("attempt-") and current.splitlines()[0] != "attempt-1"
    assert "tick-1-" not in current

    tail = kubectl("logs", "-n", ns, "talker", "--previous", "--tail=2").stdout.splitlines()
    assert tail == ["tick-1-4", "tick-1-5"]


def test_kubectl_logs_follow_streams(agent, core, ns, control_plane):
    ctr = {
        "name": "ticker",
        "image": HOST_IMAGE,
        "command": ["sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.3; done"],
    }
    core.create_namespaced_pod(ns, pet_pod(agent, "ticker", [ctr]))
    wait_for(
        "Running", lambda: core.read_namespaced_pod("ticker", ns).status.phase == "Running", 60, agent=agent
    )
    proc = subprocess.Popen(
        [
            str(toolchain.binary("kubectl")),
            f"--kubeconfig={control_plane.kubeconfig}",
            "logs",
            "-f",
            "-n",
            ns,
            "ticker",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.strip())
            if len(seen) >= 12:
                break
        assert seen[:3] == ["line-0", "line-1", "line-2"]
        assert seen[11] == "line-11", "lines keep coming while the container writes them"
    finally:
        proc.kill()
        proc.wait()


def test_stats_summary_through_the_api_server(agent, core, ns, kubectl):
    ctr = {"name": "idle", "image": HOST_IMAGE, "command": ["sleep", "3600"]}
    core.create_namespaced_pod(ns, pet_pod(agent, "idle", [ctr]))
    wait_for(
        "Running", lambda: core.read_namespaced_pod("idle", ns).status.phase == "Running", 60, agent=agent
    )
    raw = kubectl("get", "--raw", f"/api/v1/nodes/{agent.node_name}/proxy/stats/summary").stdout
    summary = json.loads(raw)
    assert summary["node"]["nodeName"] == agent.node_name
    assert summary["node"]["memory"]["availableBytes"] > 0
    mine = [
        p
        for p in summary["pods"]
        if p["podRef"] == {"name": "idle", "namespace": ns, "uid": p["podRef"]["uid"]}
    ]
    assert mine, summary["pods"]
    assert mine[0]["containers"][0]["name"] == "idle"
    assert mine[0]["containers"][0]["memory"]["workingSetBytes"] > 0


def test_the_api_refuses_unauthenticated_and_unauthorized_clients(agent, core, ns, control_plane):
    port = agent.config["server"]["port"]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the agent's own serving certificate (kubelet-serving CSRs: not yet)

    def get(path: str, token: str | None = None) -> int:
        req = urllib.request.Request(f"https://{agent.config['internal_ip']}:{port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    wait_for("the API up", lambda: get("/healthz") == 200, 30, agent=agent)
    assert get("/stats/summary") == 401
    assert get("/stats/summary", token="not-a-token") == 401
    # A real service-account token (TokenReview says yes) without RBAC on nodes/stats.
    core.create_namespaced_service_account(ns, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", ns, {"spec": {"expirationSeconds": 600}}
    ).status.token
    assert get("/stats/summary", token=token) == 403
    # Granted nodes/stats, the same token gets through.
    rbac = kubernetes.client.RbacAuthorizationV1Api(core.api_client)
    name = f"{ns}-stats"
    rbac.create_cluster_role(
        {
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["nodes/stats"], "verbs": ["get"]}],
        }
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": ns}],
        }
    )
    try:
        # The agent caches the earlier denial for a minute, as the kubelet's authorizer does.
        wait_for("the grant to count", lambda: get("/stats/summary", token=token) == 200, 75, interval=2)
        assert get("/containerLogs/x/y/z", token=token) == 403, "nodes/stats does not open nodes/proxy"
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


def test_kubectl_exec_and_port_forward(agent, core, ns, kubectl, control_plane):
    web = {
        "name": "web",
        "image": HOST_IMAGE,
        "command": [
            "sh",
            "-c",
            "mkdir -p /srv && echo served-by-the-pod > /srv/index.html"
            " && cd /srv && exec python3 -m http.server 8080",
        ],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }
    core.create_namespaced_pod(ns, pet_pod(agent, "web", [web]))
    wait_for(
        "web Ready",
        lambda: any(
            c.type == "Ready" and c.status == "True"
            for c in core.read_namespaced_pod("web", ns).status.conditions or []
        ),
        60,
        agent=agent,
    )
    assert kubectl("exec", "-n", ns, "web", "--", "cat", "/etc/hostname").stdout.strip() == "web"
    failed = kubectl("exec", "-n", ns, "web", "--", "sh", "-c", "echo out; exit 3", check=False)
    assert failed.returncode == 3, (failed.returncode, failed.stderr)
    assert failed.stdout.strip() == "out"

    with port_forward(control_plane.kubeconfig, ns, "web", 8080) as local:
        for _attempt in range(3):  # two connections in a row through the same tunnel, and a third
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=10) as resp:
                assert resp.read().decode().strip() == "served-by-the-pod"


def shell_pod(agent: AgentProcess, core: kubernetes.client.CoreV1Api, ns: str) -> str:
    """A Running Pod with one container that idles: what the exec tests run commands in."""
    ctr = {"name": "shell", "image": HOST_IMAGE, "command": ["sleep", "3600"]}
    core.create_namespaced_pod(ns, pet_pod(agent, "shell", [ctr]))
    wait_for(
        "shell Running",
        lambda: core.read_namespaced_pod("shell", ns).status.phase == "Running",
        60,
        agent=agent,
    )
    return "shell"


def read_until(fd: int, buf: bytearray, needle: bytes | None, timeout: float = 60) -> bool:
    """Read FD into BUF until NEEDLE is in it (True) or, with NEEDLE None, until the end
    (True); False when TIMEOUT passes first. A pty's end reads as EIO."""
    deadline = time.monotonic() + timeout
    while needle is None or needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False
        try:
            chunk = os.read(fd, 4096)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            chunk = b""
        if not chunk:
            return needle is None
        buf += chunk
    return True


def test_kubectl_exec_with_stdin(agent, core, ns, kubectl):
    pod = shell_pod(agent, core, ns)
    script = "cat; echo oops >&2; exit 3"
    done = kubectl("exec", "-i", "-n", ns, pod, "--", "sh", "-c", script, input="hello\n", check=False)
    assert done.returncode == 3, (done.returncode, done.stderr, agent.log_tail())
    assert done.stdout == "hello\n", "stdin reached the command, and its end too (cat returned)"
    assert "oops" in done.stderr, "stderr comes on a stream of its own"


def test_kubectl_exec_with_a_terminal(agent, core, ns, control_plane):
    pod = shell_pod(agent, core, ns)
    terminal, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    proc = subprocess.Popen(
        [
            str(toolchain.binary("kubectl")),
            f"--kubeconfig={control_plane.kubeconfig}",
            *("exec", "-it", "-n", ns, pod, "--", "sh"),
        ],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)  # kubectl holds the only other end: its exit ends our reads
    screen = bytearray()
    try:
        assert read_until(terminal, screen, b"# "), f"no shell prompt: {bytes(screen)!r}"
        os.write(terminal, b"tty; stty size\r")
        assert read_until(terminal, screen, b"33 101"), f"not the client's size: {bytes(screen)!r}"
        # The window grows: kubectl sends the new size on the resize stream when told.
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc.send_signal(signal.SIGWINCH)  # the kernel's would go to a controlling terminal's group
        deadline = time.monotonic() + 60
        while not read_until(terminal, screen, b"40 120", timeout=1):  # it arrives a moment later
            assert time.monotonic() < deadline, f"the resize did not arrive: {bytes(screen)!r}"
            os.write(terminal, b"stty size\r")
        os.write(terminal, b"exit 7\r")
        assert read_until(terminal, screen, None), f"the session did not end: {bytes(screen)!r}"
        assert proc.wait(30) == 7, bytes(screen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(terminal)
    text = screen.decode(errors="replace")
    assert re.search(r"^/dev/pts/\d+\r?$", text, re.MULTILINE), text
    assert re.search(r"^33 101\r?$", text, re.MULTILINE), "the command started at the client's size"
    assert re.search(r"^40 120\r?$", text, re.MULTILINE), text


def test_kubectl_exec_output_streams_as_it_comes(agent, core, ns, kubectl, control_plane):
    pod = shell_pod(agent, core, ns)
    # The command waits for a file only the test makes once "first" has arrived: output
    # held back until the end would never arrive.
    gated = "echo first; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo second"
    proc = subprocess.Popen(
        [
            str(toolchain.binary("kubectl")),
            f"--kubeconfig={control_plane.kubeconfig}",
            *("exec", "-n", ns, pod, "--", "sh", "-c", gated),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        out = bytearray()
        assert read_until(proc.stdout.fileno(), out, b"first\n"), (bytes(out), agent.log_tail())
        assert proc.poll() is None, "first arrived while the command still runs"
        assert b"second" not in out
        kubectl("exec", "-n", ns, pod, "--", "touch", "/tmp/go")
        assert read_until(proc.stdout.fileno(), out, None), bytes(out)
        assert out == b"first\nsecond\n"
        assert proc.wait(30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.communicate()


def test_kubectl_attach_is_refused_with_a_reason(agent, core, ns, kubectl):
    pod = shell_pod(agent, core, ns)
    attach = kubectl("attach", "-n", ns, pod, check=False)
    assert attach.returncode != 0
    assert "attach is not supported by the rhizeption node agent" in attach.stderr, attach.stderr

"""The pet node agent's port-10250 API through the rig's kube-apiserver: `kubectl logs`
(with --previous and -f), `kubectl exec`, `kubectl port-forward` and stats/summary, and
its authentication and authorization
(TokenReview, SubjectAccessReview, client certificates from the cluster CA)."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import kubernetes
import pytest
from petagent import HOST_IMAGE, AgentProcess, free_port, pet_pod, running_agent, wait_for
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
def core(api_client) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client)


@pytest.fixture
def ns(namespace, core) -> str:
    wait_for("default ServiceAccount", lambda: core.list_namespaced_service_account(namespace).items, 30)
    return namespace


@pytest.fixture
def kubectl(control_plane):
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(toolchain.binary("kubectl")), f"--kubeconfig={control_plane.kubeconfig}", *args],
            capture_output=True,
            text=True,
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

    local = free_port()
    forward = subprocess.Popen(
        [
            str(toolchain.binary("kubectl")),
            f"--kubeconfig={control_plane.kubeconfig}",
            "port-forward",
            "-n",
            ns,
            "pod/web",
            f"{local}:8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()
        assert "Forwarding from" in line, line + (forward.stderr.read() if forward.poll() is not None else "")
        for _attempt in range(3):  # two connections in a row through the same tunnel, and a third
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=10) as resp:
                assert resp.read().decode().strip() == "served-by-the-pod"
    finally:
        forward.terminate()
        forward.wait(10)

"""The rig's real host cluster (riglib.node.HostCluster): a kubelet that runs real containers,
reachable the ways later layers need (Pod IPs, Services by DNS name, NodePorts, logs, exec)."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from hosted import web_container
from riglib import toolchain
from riglib.node import HostCluster

BUSYBOX = "localhost/rhizeption/busybox:bookworm"


def wait_pod(core: kubernetes.client.CoreV1Api, namespace: str, name: str, *, until: str) -> dict:
    """Watch the Pod until it is Ready (until="Ready") or has ended (until="Succeeded")."""
    for event in kubernetes.watch.Watch().stream(
        core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}", timeout_seconds=90
    ):
        pod = event["object"]
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if (until == "Ready" and ready) or pod.status.phase == until:
            return pod
        if pod.status.phase == "Failed":
            pytest.fail(f"pod {name} failed: {pod.status}")
    pytest.fail(f"pod {name} not {until} within 90 s")


@pytest.fixture(scope="module")
def web(host_cluster: HostCluster, host_api_client) -> Iterator[dict]:
    """A busybox httpd Pod answering with its own name, behind a NodePort Service."""
    core = kubernetes.client.CoreV1Api(host_api_client)
    ns = f"t-rig-node-{os.urandom(2).hex()}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        core.create_namespaced_pod(
            ns,
            {
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"containers": [web_container()]},
            },
        )
        service = core.create_namespaced_service(
            ns,
            {
                "metadata": {"name": "web"},
                "spec": {
                    "type": "NodePort",
                    "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": 8080}],
                },
            },
        )
        pod = wait_pod(core, ns, "web", until="Ready")
        yield {"namespace": ns, "pod_ip": pod.status.pod_ip, "service": service}
    finally:
        core.delete_namespace(ns, propagation_policy="Background")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode().strip()


def test_the_node_is_ready_and_runs_the_pinned_kubelet(host_cluster: HostCluster, host_api_client) -> None:
    node = kubernetes.client.CoreV1Api(host_api_client).read_node(host_cluster.node.name)
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True", conditions
    assert node.status.node_info.kubelet_version == toolchain.versions()["KUBERNETES_VERSION"]
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == host_cluster.node.node_ip


def test_a_pod_runs_a_real_container_reachable_at_its_ip(web) -> None:
    assert get(f"http://{web['pod_ip']}:8080/") == "web"


def test_logs_and_exec_reach_the_kubelet_through_the_api_server(
    host_cluster: HostCluster, host_api_client, web
) -> None:
    core = kubernetes.client.CoreV1Api(host_api_client)
    assert core.read_namespaced_pod_log("web", web["namespace"]).strip() == "serving web"
    out = host_cluster.kubectl("-n", web["namespace"], "exec", "web", "--", "cat", "/etc/hostname")
    assert out.strip() == "web"


def test_a_service_answers_by_dns_name_from_a_pod(host_cluster: HostCluster, host_api_client, web) -> None:
    core = kubernetes.client.CoreV1Api(host_api_client)
    ns = web["namespace"]
    core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "client"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "client",
                        "image": BUSYBOX,
                        "imagePullPolicy": "Never",
                        "command": ["wget", "-qO-", f"http://web.{ns}.svc.cluster.local/"],
                    }
                ],
            },
        },
    )
    wait_pod(core, ns, "client", until="Succeeded")
    assert core.read_namespaced_pod_log("client", ns).strip() == "web"


def test_node_ports_and_cluster_ips_answer_from_the_host(host_cluster: HostCluster, web) -> None:
    spec = web["service"].spec
    assert get(f"http://{host_cluster.node.node_ip}:{spec.ports[0].node_port}/") == "web"
    if not host_cluster.service_routed:
        pytest.xfail("another rig on this host routes the Service CIDR")
    assert get(f"http://{spec.cluster_ip}/") == "web"


def test_down_leaves_nothing_on_the_host(tmp_path) -> None:
    """A second host cluster, brought up and down: its container, network, routes and the
    cgroups of its Pods are gone afterwards."""
    hc = HostCluster(tmp_path / "rig", images=[], node_name="rig-node-2", die_with_parent=True)
    hc.up()
    node = hc.node
    hc.down()
    containers = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert node.container not in containers
    networks = subprocess.run(
        ["podman", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert node.network not in networks
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert f"via {node.node_ip}" not in routes
    assert not any((h / node.cgroup_root.lstrip("/")).exists() for h in Path("/sys/fs/cgroup").iterdir())
    assert not (tmp_path / "rig").exists()

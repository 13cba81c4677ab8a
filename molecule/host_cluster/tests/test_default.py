"""Verify the host cluster that converge made: real nodes, real Pods, real Services.

Host checks go through testinfra's `host` (each test host in turn); cluster checks use the
admin kubeconfig that the role wrote on the controller and the pinned kubectl.
"""

from __future__ import annotations

import time
import uuid

import pytest
import yaml
from scenario import IMAGE, KUBECONFIG, NODES, VERSIONS, get, kubectl

CONTROL_PLANE_UNITS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]


# -- each host ------------------------------------------------------------------------------
def test_services_run(host):
    units = ["containerd", "kubelet", "kube-proxy", "rhizeption-pod-routes"]
    if host.backend.get_hostname() == "hc-cp":
        units += CONTROL_PLANE_UNITS
    for unit in units:
        service = host.service(unit)
        assert service.is_running or unit == "rhizeption-pod-routes", unit
        assert service.is_enabled, unit


def test_private_keys_are_0600(host):
    for path in host.run("find /etc/kubernetes -name '*.key' -o -name '*.kubeconfig'").stdout.split():
        assert host.file(path).mode == 0o600, path


def test_kubelet_has_its_own_cgroup_root(host):
    name = host.backend.get_hostname()
    kubepods = host.file(f"/sys/fs/cgroup/memory/rhizeption/molecule-host-cluster/{name}/kubepods")
    assert kubepods.is_directory


# -- the cluster ----------------------------------------------------------------------------
def test_admin_kubeconfig_is_private():
    assert KUBECONFIG.stat().st_mode & 0o777 == 0o600


def test_both_nodes_are_ready_with_the_pinned_version():
    nodes = {n["metadata"]["name"]: n for n in get("nodes")["items"]}
    assert sorted(nodes) == NODES
    for node in nodes.values():
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", node["metadata"]["name"]
        assert node["status"]["nodeInfo"]["kubeletVersion"] == VERSIONS["KUBERNETES_VERSION"]
        assert node["spec"]["podCIDR"]


@pytest.fixture(scope="module")
def workload():
    """A 2-replica web Deployment spread over both nodes, its Service, one client per node."""
    ns = f"verify-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    web = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": {"app": "web"}},
                        }
                    ],
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "httpd",
                            "image": IMAGE,
                            "imagePullPolicy": "Never",
                            "env": [
                                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                            ],
                            "command": [
                                "sh",
                                "-c",
                                'mkdir -p /www && echo "$POD" > /www/index.html'
                                ' && echo "serving $POD" && exec httpd -f -p 8080 -h /www',
                            ],
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    clients = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"client-{node}", "namespace": ns},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "c", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}
                ],
            },
        }
        for node in NODES
    ]
    docs = {"apiVersion": "v1", "kind": "List", "items": [web, service, *clients]}
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(docs))
    kubectl("-n", ns, "rollout", "status", "deployment/web", "--timeout=120s", timeout=150)
    kubectl("-n", ns, "wait", "--for=condition=Ready", "pod", *[c["metadata"]["name"] for c in clients])
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false")


def web_pods(ns: str) -> list[dict]:
    return [
        p
        for p in get("-n", ns, "pods", "-l", "app=web")["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def test_replicas_run_on_both_nodes(workload):
    assert sorted(p["spec"]["nodeName"] for p in web_pods(workload)) == NODES


@pytest.mark.parametrize("node", NODES)
@pytest.mark.parametrize("name", ["web", "web.{ns}.svc.cluster.local", None])
def test_service_reaches_both_replicas_from_each_node(workload, node, name):
    # Debian's static busybox wget crashes in glibc's static NSS (exit 139), even for an
    # address: resolve with busybox's own nslookup, then speak HTTP with nc.
    cluster_ip = get("-n", workload, "service", "web")["spec"]["clusterIP"]
    if name:
        # busybox nslookup asks every search domain and exits 1 when the last one is NXDOMAIN,
        # even after an answer: judge by the answer.
        out = kubectl(
            "-n", workload, "exec", f"client-{node}", "--", "nslookup", name.format(ns=workload), check=False
        )
        assert f"Name:\tweb.{workload}.svc.cluster.local\nAddress: {cluster_ip}" in out, out
    answers = set()
    for _attempt in range(40):
        out = kubectl(
            "-n",
            workload,
            "exec",
            f"client-{node}",
            "--",
            "sh",
            "-c",
            f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {cluster_ip} 80",
        )
        answers.add(out.strip().splitlines()[-1])
        if len(answers) == 2:
            break
    assert answers == {p["metadata"]["name"] for p in web_pods(workload)}


def test_logs_and_exec(workload):
    pod = web_pods(workload)[0]["metadata"]["name"]
    assert f"serving {pod}" in kubectl("-n", workload, "logs", pod)
    assert kubectl("-n", workload, "exec", pod, "--", "cat", "/www/index.html").strip() == pod


def test_a_deleted_pod_is_recreated(workload):
    before = {p["metadata"]["name"] for p in web_pods(workload)}
    victim = sorted(before)[0]
    kubectl("-n", workload, "delete", "pod", victim, "--wait=true")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = {p["metadata"]["name"] for p in web_pods(workload)}
        ready = kubectl("-n", workload, "get", "deployment", "web", "-o", "jsonpath={.status.readyReplicas}")
        if len(now) == 2 and victim not in now and ready == "2":
            break
        time.sleep(1)
    assert len(now) == 2 and victim not in now and (now & before) == before - {victim}
    assert ready == "2"

"""Virtual nodes as the tenant_control_plane module deploys them (issue #10, item 6): two tenants
at once on the rig's real host cluster, driven as the operator holding only the documented
ClusterRole. "mirror" is handed the rig's host node whole (promoteResources.nodes), "quota" one
cpu and 2Gi (promoteResources.resources). Each gets the agent's Deployment beside its control
plane, from the image hack/build-images made, and its Pods run as host Pods in its own
namespace. Removing the tenants leaves nothing of them in the host."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator

import kubernetes
import pytest
from hosted import kubectl, web_deployment
from petagent import port_forward, wait_for
from tenanthost import TENANT_LABEL, apply, ready_tenant, run_info, tenant_client

from ansible_collections.rhizeption.core.plugins.module_utils import virtual_nodes  # isort: skip

NAMESPACE = "tenants-virtual"
RESOURCES = {"cpu": "1", "memory": "2Gi"}
RESOURCES_NODE = "virtual-resources"
POD_TENANT_LABEL = virtual_nodes.TENANT_POD_LABEL


@pytest.fixture(scope="module")
def tenants_namespace() -> str:
    return NAMESPACE


def promote_of(host, name: str) -> dict:
    return {"nodes": [host["cluster"].node_name]} if name == "mirror" else {"resources": RESOURCES}


def spec_of(host, name: str) -> dict:
    return {
        "version": "v1.34.4",
        "exposure": {"type": "NodePort"},
        "promoteResources": promote_of(host, name),
    }


@pytest.fixture(scope="module")
def tenants(host, run_playbook) -> Iterator[dict]:
    """Both tenants Ready, with their admin kubeconfigs and the module's first result."""
    out = {}
    try:
        for name in ("mirror", "quota"):
            kubeconfig, result = ready_tenant(run_playbook, host, name, NAMESPACE, spec_of(host, name))
            out[name] = {"kubeconfig": kubeconfig, "result": result, "client": tenant_client(kubeconfig)}
        yield out
    finally:
        for name in ("mirror", "quota"):
            apply(run_playbook, host, name=name, namespace=NAMESPACE, state="absent", wait_timeout=180)
        for tenant in out.values():
            tenant["client"].close()


def agent_log(host, name: str) -> str:
    """The agent's last lines, for a failure's message."""
    pods = (
        host["core"]
        .list_namespaced_pod(
            NAMESPACE, label_selector=f"{TENANT_LABEL}={name},app.kubernetes.io/name=virtual-node-agent"
        )
        .items
    )
    try:
        return "\n".join(
            host["core"].read_namespaced_pod_log(
                p.metadata.name, NAMESPACE, container="virtual-node-agent", tail_lines=40
            )
            for p in pods
        )
    except kubernetes.client.ApiException as e:
        return f"(no log: {e.reason})"


def ready(node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def test_each_tenant_sees_its_virtual_nodes_ready(tenants, host) -> None:
    rig_node = host["cluster"].node_name
    for name, wanted in (("mirror", rig_node), ("quota", RESOURCES_NODE)):
        core = kubernetes.client.CoreV1Api(tenants[name]["client"])

        def node_ready(core=core, wanted=wanted):
            node = next((n for n in core.list_node().items if n.metadata.name == wanted), None)
            return node if node is not None and ready(node) else None

        try:
            node = wait_for(f"{wanted} Ready in {name}", node_ready, timeout=180, interval=1)
        except AssertionError as e:
            raise AssertionError(f"{e}\nagent log:\n{agent_log(host, name)}") from None
        assert [n.metadata.name for n in core.list_node().items] == [wanted]
        if name == "quota":
            assert (node.status.capacity["cpu"], node.status.capacity["memory"]) == ("1", "2Gi")
        else:
            allocatable = host["core"].read_node(rig_node).status.allocatable
            assert node.status.capacity["cpu"] == allocatable["cpu"]
        # The agent's Pod is its address: the tenant's apiserver reaches :10250 there.
        (agent_pod,) = (
            host["core"]
            .list_namespaced_pod(
                NAMESPACE, label_selector=f"{TENANT_LABEL}={name},app.kubernetes.io/name=virtual-node-agent"
            )
            .items
        )
        assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == [
            agent_pod.status.pod_ip
        ]


def host_pods(host, name: str) -> list:
    return (
        host["core"]
        .list_namespaced_pod(
            virtual_nodes.pods_namespace(NAMESPACE, name), label_selector=f"{POD_TENANT_LABEL}={name}"
        )
        .items
    )


def test_a_deployment_of_three_runs_as_host_pods_in_each_tenant(tenants, host) -> None:
    for tenant in tenants.values():
        core = kubernetes.client.CoreV1Api(tenant["client"])
        core.create_namespace({"metadata": {"name": "team"}})
        kubernetes.client.AppsV1Api(tenant["client"]).create_namespaced_deployment("team", web_deployment(3))
    for name, tenant in tenants.items():
        core = kubernetes.client.CoreV1Api(tenant["client"])

        def all_running(core=core):
            pods = core.list_namespaced_pod("team", label_selector="app=web").items
            return pods if len(pods) == 3 and all(p.status.phase == "Running" for p in pods) else None

        try:
            wait_for(f"3 web Pods Running in {name}", all_running, timeout=180, interval=1)
        except AssertionError as e:
            raise AssertionError(f"{e}\nagent log:\n{agent_log(host, name)}") from None
        running = [p for p in host_pods(host, name) if p.status.phase == "Running"]
        assert len(running) == 3, [p.metadata.name for p in host_pods(host, name)]
        if name == "mirror":  # pinned to the promoted host node
            assert {p.spec.node_name for p in running} == {host["cluster"].node_name}
        else:  # counted by the quota of the promoted resources
            assert {p.spec.priority_class_name for p in running} == {virtual_nodes.RESOURCES_PRIORITY_CLASS}


def run_kubectl(tenant, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*kubectl(tenant["kubeconfig"]), *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_logs_exec_and_port_forward_reach_the_host_pods_through_each_tenants_api(tenants) -> None:
    for name, tenant in tenants.items():
        pods = kubernetes.client.CoreV1Api(tenant["client"]).list_namespaced_pod(
            "team", label_selector="app=web"
        )
        pod = pods.items[0].metadata.name
        logs = run_kubectl(tenant, "-n", "team", "logs", pod)
        assert logs.returncode == 0 and "serving" in logs.stdout, (name, logs.stderr)
        executed = run_kubectl(tenant, "-n", "team", "exec", pod, "--", "cat", "/tmp/index.html")
        assert executed.returncode == 0 and executed.stdout.strip() == pod, (name, executed.stderr)
        with (
            port_forward(tenant["kubeconfig"], "team", pod, 8080) as local,
            urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=10) as resp,
        ):
            assert resp.read().decode().strip() == pod, name


def test_a_service_answers_by_its_name_between_tenant_pods(tenants, host) -> None:
    for name, tenant in tenants.items():
        core = kubernetes.client.CoreV1Api(tenant["client"])
        core.create_namespaced_service(
            "team",
            {
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        )
        pods = [p.metadata.name for p in core.list_namespaced_pod("team", label_selector="app=web").items]

        def answer(pod=pods[0], tenant=tenant):
            # The short name, through the search path of the Pod's namespace and the tenant DNS.
            got = run_kubectl(
                tenant,
                "-n",
                "team",
                "exec",
                pod,
                "--",
                "sh",
                "-c",
                r'printf "GET / HTTP/1.0\r\n\r\n" | nc web 80',
            )
            return got.stdout if got.returncode == 0 and "200 OK" in got.stdout else None

        try:
            body = wait_for(f"web answering by name in {name}", answer, timeout=60, interval=1)
        except AssertionError as e:
            raise AssertionError(f"{e}\nagent log:\n{agent_log(host, name)}") from None
        assert body.strip().splitlines()[-1] in pods  # a web Pod's hostname
        # kubernetes.default is the tenant's API server (its Service in the host), not the host's.
        looked_up = run_kubectl(
            tenant, "-n", "team", "exec", pods[0], "--", "nslookup", "kubernetes.default.svc.cluster.local"
        )
        tenant_api = host["core"].read_namespaced_service(name, NAMESPACE).spec.cluster_ip
        assert f"Address: {tenant_api}" in looked_up.stdout, (looked_up.stdout, looked_up.stderr)
        # A name the tenant lacks is not looked up in the host cluster.
        missing = run_kubectl(tenant, "-n", "team", "exec", pods[0], "--", "nslookup", "kube-dns.kube-system")
        assert missing.returncode != 0, missing.stdout


def test_info_reports_the_virtual_nodes(tenants, host, run_playbook) -> None:
    found = {
        t["metadata"]["name"]: t["status"]["virtualNodes"]
        for t in run_info(run_playbook, host, namespace=NAMESPACE)["tenant_control_planes"]
    }
    assert found["mirror"]["nodes"] == [host["cluster"].node_name]
    assert found["quota"]["nodes"] == [RESOURCES_NODE]
    for name, seen in found.items():
        assert seen["podsNamespace"] == virtual_nodes.pods_namespace(NAMESPACE, name)
        assert seen["hostPods"] == 3, (name, seen)
        assert seen["agent"]["phase"] == "Ready", (name, seen)


def test_a_second_apply_changes_nothing(tenants, host, run_playbook) -> None:
    for name in tenants:
        again = apply(run_playbook, host, name=name, namespace=NAMESPACE, spec=spec_of(host, name), wait=True)
        assert again.get("failed") is not True, again.get("msg")
        assert again["changed"] is False, (name, again["created"], again["updated"])


def test_dropping_promote_resources_removes_the_virtual_nodes_but_keeps_the_tenant(
    tenants, host, run_playbook
):
    spec = {k: v for k, v in spec_of(host, "mirror").items() if k != "promoteResources"}
    dropped = apply(run_playbook, host, name="mirror", namespace=NAMESPACE, spec=spec, wait=True)
    assert dropped.get("failed") is not True, dropped.get("msg")
    pods_ns = virtual_nodes.pods_namespace(NAMESPACE, "mirror")
    assert dropped["deleted"][0] == "Deployment mirror-virtual-node-agent", dropped["deleted"]
    assert f"Namespace {pods_ns}" in dropped["deleted"], dropped["deleted"]
    assert dropped["phase"] == "Ready"
    selector = f"{TENANT_LABEL}=mirror,app.kubernetes.io/name=virtual-node-agent"
    assert host["core"].list_namespaced_config_map(NAMESPACE, label_selector=selector).items == []
    rbac = kubernetes.client.RbacAuthorizationV1Api(host["core"].api_client)
    assert rbac.list_cluster_role(label_selector=f"{TENANT_LABEL}=mirror").items == []
    again = apply(run_playbook, host, name="mirror", namespace=NAMESPACE, spec=spec, wait=True)
    assert (again["changed"], again["deleted"]) == (False, [])


def test_removing_the_tenants_leaves_nothing_of_them_in_the_host(tenants, host, run_playbook) -> None:
    rbac = kubernetes.client.RbacAuthorizationV1Api(host["core"].api_client)
    for name in tenants:
        gone = apply(run_playbook, host, name=name, namespace=NAMESPACE, state="absent", wait_timeout=180)
        assert gone.get("failed") is not True, gone.get("msg")
        assert f"Namespace {virtual_nodes.pods_namespace(NAMESPACE, name)}" in gone["deleted"], gone[
            "deleted"
        ]
    selector = f"{TENANT_LABEL} in (mirror,quota)"
    assert [n.metadata.name for n in host["core"].list_namespace(label_selector=selector).items] == []
    assert (
        host["core"].list_pod_for_all_namespaces(label_selector=f"{POD_TENANT_LABEL} in (mirror,quota)").items
        == []
    )
    assert host["core"].list_namespaced_pod(NAMESPACE, label_selector=selector).items == []
    assert host["core"].list_namespaced_config_map(NAMESPACE, label_selector=selector).items == []
    assert host["core"].list_namespaced_service_account(NAMESPACE, label_selector=selector).items == []
    assert rbac.list_cluster_role(label_selector=selector).items == []
    assert rbac.list_cluster_role_binding(label_selector=selector).items == []

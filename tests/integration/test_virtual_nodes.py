"""Host-backed virtual nodes, first real run (issue #10): the node agent with the host-cluster
backend serves one virtual Node (the resources node) of a rig tenant, and the tenant's Pods run
as Pods of the rig's real host cluster.

The agent is a process of this test, with the identity a kubelet has in the tenant
(system:node:NAME) and, in the host, only the documented Role in the tenant's Pods namespace
(a token of its ServiceAccount). Its deployment by the tenant_control_plane role is not built
yet (docs/virtual-nodes.md)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import kubernetes
import pytest
from hosted import BUSYBOX, web_container, web_deployment
from petagent import port_forward, wait_for
from riglib.controlplane import ControlPlane
from riglib.node import HostCluster
from virtualagent import NODE, TENANT, TENANT_LABEL, UID_LABEL, Virtual, virtual_node_agent


@pytest.fixture(scope="module")
def virtual(
    host_cluster: HostCluster, host_api_client, tenant: ControlPlane, tmp_path_factory
) -> Iterator[Virtual]:
    workdir = tmp_path_factory.mktemp("virtual-node")
    with virtual_node_agent(
        host_cluster, host_api_client, tenant, workdir, {"cpu": "1", "memory": "2Gi"}
    ) as v:
        yield v


def node_ready(v: Virtual):
    node = next((n for n in v.tcore.list_node().items if n.metadata.name == NODE), None)
    if node and any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
        return node
    return None


def test_the_virtual_node_is_ready_with_the_promoted_capacity(virtual: Virtual) -> None:
    node = wait_for("the virtual Node Ready", lambda: node_ready(virtual), timeout=90, agent=virtual.agent)
    assert node.status.capacity["cpu"] == "1" and node.status.capacity["memory"] == "2Gi"
    assert node.metadata.labels["node.rhizeption.io/virtual"] == "true"


def test_a_deployment_of_three_runs_as_host_pods_with_status_back(virtual: Virtual) -> None:
    virtual.tcore.create_namespace({"metadata": {"name": "shop"}})
    apps = kubernetes.client.AppsV1Api(virtual.tcore.api_client)
    apps.create_namespaced_deployment(
        "shop",
        web_deployment(
            3,
            {**web_container(), "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}},
            terminationGracePeriodSeconds=2,
        ),
    )
    rollout = virtual.kubectl("-n", "shop", "rollout", "status", "deployment/web", "--timeout=180s")
    assert rollout.returncode == 0, rollout.stderr + virtual.agent.log_tail()
    tenant_pods = virtual.tcore.list_namespaced_pod("shop", label_selector="app=web").items
    assert len(tenant_pods) == 3 and {p.spec.node_name for p in tenant_pods} == {NODE}
    host = virtual.host_pods()
    assert len(host) == 3
    by_uid = {p.metadata.labels[UID_LABEL]: p for p in host}
    for pod in tenant_pods:
        mirror = by_uid[pod.metadata.uid]
        assert pod.status.phase == "Running" and mirror.status.phase == "Running"
        assert pod.status.pod_ip == mirror.status.pod_ip  # the host Pod's address, told back
        assert mirror.spec.node_name == virtual.host_node


def test_logs_and_exec_reach_the_host_pods_through_the_tenant_api_server(virtual: Virtual) -> None:
    some = virtual.tcore.list_namespaced_pod("shop", label_selector="app=web").items[0].metadata.name
    logs = virtual.kubectl("-n", "shop", "logs", some)
    assert logs.returncode == 0 and logs.stdout.strip().startswith("serving "), logs.stderr
    out = virtual.kubectl("-n", "shop", "exec", some, "--", "cat", "/tmp/index.html")
    assert out.returncode == 0 and out.stdout.strip(), out.stderr


def test_port_forward_reaches_a_host_pod_through_the_tenant_api_server(virtual: Virtual) -> None:
    some = virtual.tcore.list_namespaced_pod("shop", label_selector="app=web").items[0].metadata.name
    with port_forward(virtual.tenant.kubeconfig, "shop", some, 8080) as local:
        for _attempt in range(2):  # two connections through the same tunnel
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=10) as resp:
                assert resp.read().decode().strip() == some


def one_pod(name: str, **container: object) -> dict:
    ctr = {
        "name": "c",
        "image": BUSYBOX,
        "imagePullPolicy": "Never",
        "command": ["sleep", "600"],
        **container,
    }
    return {"metadata": {"name": name}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [ctr]}}


def test_a_pod_asking_more_than_the_promoted_cpu_stays_pending_in_the_tenant(virtual: Virtual) -> None:
    """The tenant's scheduler sees the resources node's capacity (cpu 1): the host never
    sees the Pod."""
    virtual.tcore.create_namespaced_pod("shop", one_pod("big", resources={"requests": {"cpu": "2"}}))

    def unschedulable():
        pod = virtual.tcore.read_namespaced_pod("big", "shop")
        cond = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        return pod if cond and cond.status == "False" and cond.reason == "Unschedulable" else None

    pod = wait_for("the big Pod Unschedulable", unschedulable, timeout=60, agent=virtual.agent)
    assert pod.spec.node_name is None and "Insufficient cpu" in next(
        c.message for c in pod.status.conditions if c.type == "PodScheduled"
    )
    assert pod.metadata.uid not in {p.metadata.labels[UID_LABEL] for p in virtual.host_pods()}
    virtual.tcore.delete_namespaced_pod("big", "shop", grace_period_seconds=0)


def test_the_host_quota_counts_the_resources_nodes_pods_and_refuses_past_it(virtual: Virtual) -> None:
    """The Pods namespace's quota holds the promoted cpu (1): it counts the 3 web Pods (100m
    each), and a Pod bound to the node by name, past the tenant's scheduler, asking 900m more
    waits in the tenant naming the quota; the host never runs it."""
    quotas = virtual.hcore.list_namespaced_resource_quota(virtual.pods_ns).items
    assert [q.spec.hard["requests.cpu"] for q in quotas] == ["1"]

    def counted():
        used = virtual.hcore.read_namespaced_resource_quota(
            quotas[0].metadata.name, virtual.pods_ns
        ).status.used
        return used if used and used.get("requests.cpu") == "300m" else None

    wait_for("the quota counting the 3 web Pods", counted, timeout=60, agent=virtual.agent)
    pod = one_pod("past-quota", resources={"requests": {"cpu": "900m"}})
    pod["spec"]["nodeName"] = NODE
    virtual.tcore.create_namespaced_pod("shop", pod)

    def refused():
        p = virtual.tcore.read_namespaced_pod("past-quota", "shop")
        states = [c.state.waiting for c in p.status.container_statuses or [] if c.state.waiting]
        return next((w for w in states if w.reason == "FailedCreateHostPod"), None)

    waiting = wait_for(
        "past-quota waiting with FailedCreateHostPod", refused, timeout=60, agent=virtual.agent
    )
    assert "exceeded quota" in waiting.message, waiting.message
    uid = virtual.tcore.read_namespaced_pod("past-quota", "shop").metadata.uid
    assert uid not in {p.metadata.labels[UID_LABEL] for p in virtual.host_pods()}
    virtual.tcore.delete_namespaced_pod("past-quota", "shop", grace_period_seconds=0)


def test_a_service_reaches_its_pods_from_a_tenant_pod_and_a_node_port_from_outside(
    virtual: Virtual, host_cluster: HostCluster
) -> None:
    """Each tenant Service gets a host copy selecting the host Pods of its tenant Pods: a tenant
    Pod reaches it through its service-link variables (the host ClusterIP), and a NodePort
    Service answers on the host node. By name it needs the tenant DNS, not built yet."""
    ports = [{"name": "http", "port": 80, "targetPort": 8080}]
    for name, kind in (("web", "ClusterIP"), ("web-np", "NodePort")):
        virtual.tcore.create_namespaced_service(
            "shop",
            {"metadata": {"name": name}, "spec": {"type": kind, "selector": {"app": "web"}, "ports": ports}},
        )

    def host_copy(name: str):
        def check():
            for svc in virtual.hcore.list_namespaced_service(virtual.pods_ns).items:
                if (svc.metadata.annotations or {}).get("virtual.rhizeption.io/name") == name:
                    return svc
            return None

        return check

    web = wait_for("the host copy of Service web", host_copy("web"), timeout=60, agent=virtual.agent)
    node_port = wait_for("the host copy of web-np", host_copy("web-np"), timeout=60, agent=virtual.agent)
    tenant_np = virtual.tcore.read_namespaced_service("web-np", "shop").spec.ports[0].node_port
    assert node_port.spec.ports[0].node_port == tenant_np, "the tenant's node port, free in the host"
    virtual.tcore.create_namespaced_pod("shop", one_pod("client"))
    wait_for(
        "the client Running",
        lambda: virtual.tcore.read_namespaced_pod("client", "shop").status.phase == "Running",
        timeout=90,
        agent=virtual.agent,
    )
    names = {
        p.metadata.name for p in virtual.tcore.list_namespaced_pod("shop", label_selector="app=web").items
    }
    env = virtual.kubectl("-n", "shop", "exec", "client", "--", "sh", "-c", "echo $WEB_SERVICE_HOST")
    assert env.stdout.strip() == web.spec.cluster_ip, env.stderr
    got = virtual.kubectl(
        "-n",
        "shop",
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        # Debian's static busybox wget crashes (see test_hosted_nodes.run_client): nc.
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n'"
        " | nc -w 5 $WEB_SERVICE_HOST $WEB_SERVICE_PORT | tail -n 1",
    )
    assert got.returncode == 0 and got.stdout.strip() in names, got.stderr
    url = f"http://{host_cluster.node.node_ip}:{tenant_np}/index.html"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read().decode().strip() in names
    virtual.tcore.delete_namespaced_pod("client", "shop", grace_period_seconds=0)
    virtual.tcore.delete_namespaced_service("web-np", "shop")
    wait_for(
        "the host copy of web-np gone", lambda: not host_copy("web-np")(), timeout=60, agent=virtual.agent
    )


def test_a_missing_secret_or_image_is_named_in_the_tenant_and_other_pods_keep_running(
    virtual: Virtual,
) -> None:
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nowhere", "key": "x"}}}]
    virtual.tcore.create_namespaced_pod("shop", one_pod("needs-secret", env=env))
    virtual.tcore.create_namespaced_pod("shop", one_pod("needs-image", image="localhost/rhizeption/absent:1"))

    def waiting_reason(name: str, reason: str):
        def check():
            pod = virtual.tcore.read_namespaced_pod(name, "shop")
            states = [c.state.waiting for c in pod.status.container_statuses or [] if c.state.waiting]
            return pod if pod.status.phase == "Pending" and any(w.reason == reason for w in states) else None

        return check

    for name, reason, named in (
        ("needs-secret", "MissingReference", "nowhere"),
        ("needs-image", "ErrImageNeverPull", "localhost/rhizeption/absent:1"),
    ):
        pod = wait_for(f"{name} waiting with {reason}", waiting_reason(name, reason), 90, agent=virtual.agent)
        message = next(c.state.waiting.message for c in pod.status.container_statuses)
        assert named in message, message
    events = {(e.reason, e.involved_object.name) for e in virtual.tcore.list_namespaced_event("shop").items}
    assert ("MissingReference", "needs-secret") in events, events
    running = virtual.tcore.list_namespaced_pod("shop", label_selector="app=web").items
    assert len(running) == 3 and all(p.status.phase == "Running" for p in running)
    for name in ("needs-secret", "needs-image"):
        virtual.tcore.delete_namespaced_pod(name, "shop", grace_period_seconds=0)


def test_a_privileged_pod_is_refused_with_the_reason(virtual: Virtual) -> None:
    pod = {
        "metadata": {"name": "root"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "600"],
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    virtual.tcore.create_namespaced_pod("shop", pod)

    def failed():
        p = virtual.tcore.read_namespaced_pod("root", "shop")
        return p if p.status.phase == "Failed" else None

    refused = wait_for("the privileged Pod Failed", failed, timeout=60, agent=virtual.agent)
    assert refused.status.reason == "HostPodSecurity"
    assert "privileged" in refused.status.message
    assert not [p for p in virtual.host_pods() if p.metadata.labels[UID_LABEL] == refused.metadata.uid]
    virtual.tcore.delete_namespaced_pod("root", "shop", grace_period_seconds=0)


def test_deleting_either_side_converges(virtual: Virtual) -> None:
    tenant_pods = virtual.tcore.list_namespaced_pod("shop", label_selector="app=web").items
    # The tenant Pod goes: its host Pod goes with it.
    gone = tenant_pods[0]
    virtual.tcore.delete_namespaced_pod(gone.metadata.name, "shop")
    wait_for(
        "the host Pod of the deleted tenant Pod gone",
        lambda: gone.metadata.uid not in {p.metadata.labels[UID_LABEL] for p in virtual.host_pods()},
        timeout=60,
        agent=virtual.agent,
    )
    # The host Pod goes: the tenant Pod fails and its ReplicaSet makes a new one, which runs.
    victim = next(p for p in virtual.host_pods() if p.metadata.labels[UID_LABEL] != gone.metadata.uid)
    virtual.hcore.delete_namespaced_pod(victim.metadata.name, virtual.pods_ns)
    rollout = virtual.kubectl("-n", "shop", "rollout", "status", "deployment/web", "--timeout=180s")
    assert rollout.returncode == 0, rollout.stderr + virtual.agent.log_tail()

    def three_running():
        pods = [
            p
            for p in virtual.tcore.list_namespaced_pod("shop", label_selector="app=web").items
            if p.status.phase == "Running"
        ]
        return len(pods) == 3 and len([p for p in virtual.host_pods() if p.status.phase == "Running"]) == 3

    wait_for("three tenant Pods running as three host Pods", three_running, timeout=120, agent=virtual.agent)


def test_the_agent_can_do_nothing_beyond_its_role(virtual: Virtual) -> None:
    """Its host credentials: the Pods namespace's objects, nothing of the host's own."""
    host = kubernetes.config.new_client_from_config(str(virtual.agent.workdir / "host.kubeconfig"))
    core = kubernetes.client.CoreV1Api(host)
    try:
        assert core.list_namespaced_pod(virtual.pods_ns).items  # what the Role grants
        for denied in (
            lambda: core.list_namespaced_secret("kube-system"),
            lambda: core.list_namespaced_pod(virtual.agent_ns),
            core.list_node,
            lambda: core.create_namespace({"metadata": {"name": "agent-escape"}}),
        ):
            with pytest.raises(kubernetes.client.ApiException) as err:
                denied()
            assert err.value.status == 403
    finally:
        host.close()


def test_removing_the_tenants_pods_leaves_nothing_in_the_host(virtual: Virtual) -> None:
    """The agent deletes a host Pod, waits until it is gone, then its token Secret and the
    copies no other Pod reads: those go a moment after the last host Pod."""
    virtual.tcore.delete_namespace("shop")
    selector = f"{TENANT_LABEL}={TENANT}"

    def left() -> list[str]:
        objects = virtual.host_pods()
        objects += virtual.hcore.list_namespaced_secret(virtual.pods_ns, label_selector=selector).items
        objects += virtual.hcore.list_namespaced_config_map(virtual.pods_ns, label_selector=selector).items
        objects += virtual.hcore.list_namespaced_service(virtual.pods_ns, label_selector=selector).items
        return [f"{o.kind or type(o).__name__}/{o.metadata.name}" for o in objects]

    wait_for(
        "no host Pod, Secret, ConfigMap or Service of the tenant left",
        lambda: not left(),
        120,
        agent=virtual.agent,
    )
    assert left() == []

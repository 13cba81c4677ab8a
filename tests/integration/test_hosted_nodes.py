"""Hosted nodes for real: an HnCluster's machines are Pods of a real host cluster (the rig's
real node) that run containerd and a kubelet, bootstrap with a token of their tenant, and join
it as Ready Nodes that run the tenant's Pods.

The tenant here is a rig control plane that listens where the host cluster's Pods reach it
(the node network's gateway): the TenantControlPlane layer is tested on its own; this test is
about the nodes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes
from hosted import (
    BUSYBOX,
    GROUP,
    NODE_IMAGE,
    PLAYBOOKS,
    SERVICE_CIDR,
    VERSION,
    Flow,
    cluster_spec,
    kubectl,
    node_ctr,
    ready,
    tenant_nodes,
    web_deployment,
)
from riglib import toolchain
from riglib.controlplane import ControlPlane
from riglib.node import HostCluster

from ansible_collections.rhizeption.core.plugins.module_utils.hosted_node import cluster_dns_ip  # isort: skip


# The node image under a second name in the host node's containerd: a new image to roll to.
ROLLED_IMAGE = f"{NODE_IMAGE}-rolled"


def rolled_out(tenant: ControlPlane) -> None:
    wait = [*kubectl(tenant.kubeconfig), "-n", "web", "rollout", "status", "deployment/web", "--timeout=180s"]
    rollout = subprocess.run(wait, capture_output=True, text=True, check=False)
    assert rollout.returncode == 0, rollout.stderr


def run_client(tcore, node: str, hosts: list[str]) -> list[str]:
    """What a busybox Pod on NODE gets over HTTP from port 8080 of each host, in order. Debian's
    static busybox wget crashes (glibc's resolver in a static binary), so names are resolved
    with nslookup and the request is sent with nc. A name is asked again for up to 10 s: the
    node's kube-proxy may not yet have the DNS Service's endpoints when the Pod starts."""
    name = f"client-{node}"
    answer = "awk '/^Name:/ {n=1} n && /^Address/ {a=$NF} END {print a}'"  # not the server's Address
    script = (
        f"for t in {' '.join(hosts)}; do"
        " case $t in *[a-z]*) for i in 1 2 3 4 5 6 7 8 9 10; do"
        f' a=$(nslookup $t 2>/dev/null | {answer}); [ -n "$a" ] && break; sleep 1; done;;'
        " *) a=$t;; esac;"
        " printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 $a 8080 | tail -n 1 | grep . || echo FAILED-$t;"
        " done"
    )
    container = {"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sh", "-c", script]}
    tcore.create_namespaced_pod(
        "web",
        {
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "restartPolicy": "Never",
                "containers": [container],
            },
        },
    )
    for event in kubernetes.watch.Watch().stream(
        tcore.list_namespaced_pod, "web", field_selector=f"metadata.name={name}", timeout_seconds=120
    ):
        if event["object"].status.phase in ("Succeeded", "Failed"):
            break
    return tcore.read_namespaced_pod_log(name, "web").split()


def through_inventory(
    host_cluster: HostCluster, namespace: str, tmp_path, module: str, *args: str
) -> subprocess.CompletedProcess:
    """`ansible all -m MODULE ARGS -o` on the hnmachines inventory of NAMESPACE."""
    inventory = tmp_path / "hosted.hnmachines.yml"
    inventory.write_text(
        json.dumps(
            {
                "plugin": "rhizeption.core.hnmachines",
                "kubeconfig": str(host_cluster.kubeconfig),
                "namespaces": [namespace],
            }
        )
    )
    env = {
        **os.environ,
        "PATH": f"{toolchain.binary('kubectl').parent}:{os.environ['PATH']}",
        "ANSIBLE_INVENTORY_ENABLED": "rhizeption.core.hnmachines",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
    }
    ansible = Path(sys.executable).parent / "ansible"
    return subprocess.run(
        [str(ansible), "-i", str(inventory), "all", "-m", module, *args, "-o"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def spread_web(replicas: int) -> dict:
    """The web Deployment spread over the nodes."""
    return web_deployment(
        replicas,
        topologySpreadConstraints=[
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "web"}},
            }
        ],
    )


def test_two_machines_join_the_tenant_as_ready_nodes(flow: Flow) -> None:
    spec = cluster_spec(flow.host_cluster, flow.tenant, 2)
    result = flow.hncluster(spec=spec)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] and result["created"] == ["blue-0", "blue-1"]
    nodes = tenant_nodes(flow.tcore)
    assert set(nodes) == {"blue-0", "blue-1"} and all(ready(n) for n in nodes.values())
    ns = flow.namespace
    assert nodes["blue-0"].spec.provider_id == f"rhizeption://{ns}/blue-0"
    assert nodes["blue-0"].metadata.labels["tier"] == "hosted"
    machine = flow.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "hnmachines", "blue-0")
    assert machine["spec"]["providerID"] == f"rhizeption://{ns}/blue-0"
    status = machine["status"]
    assert (status["phase"], status["ready"], status["nodeName"]) == ("Ready", True, "blue-0")
    assert {c["type"]: c["status"] for c in status["conditions"]}["ContainerProvisioned"] == "True"
    pod = flow.hcore.read_namespaced_pod("blue-0", ns)
    addresses = {a["type"]: a["address"] for a in status["addresses"]}
    assert addresses == {"InternalIP": pod.status.pod_ip, "Hostname": pod.spec.node_name}
    # The bootstrap token is in the Secret, never in what the module says.
    secret = flow.hcore.read_namespaced_secret("blue-0-bootstrap", ns)
    files = json.loads(base64.b64decode(secret.data["value"]))["files"]
    token = json.loads(files["bootstrap-kubelet.kubeconfig"])["users"][0]["user"]["token"]
    assert token.split(".")[1] not in json.dumps(result)


def test_a_second_identical_run_changes_nothing(flow: Flow) -> None:
    again = flow.hncluster(spec=cluster_spec(flow.host_cluster, flow.tenant, 2))
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False


def test_tenant_pods_spread_over_the_nodes_and_exec_reaches_them(flow: Flow) -> None:
    flow.tcore.create_namespace({"metadata": {"name": "web"}})
    kubernetes.client.AppsV1Api(flow.tcore.api_client).create_namespaced_deployment("web", spread_web(4))
    rolled_out(flow.tenant)
    pods = flow.tcore.list_namespaced_pod("web").items
    assert {p.spec.node_name for p in pods} == {"blue-0", "blue-1"}
    some = pods[0].metadata.name
    out = subprocess.run(
        [*kubectl(flow.tenant.kubeconfig), "-n", "web", "exec", some, "--", "cat", "/tmp/index.html"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip() == some, out.stderr
    logs = subprocess.run(
        [*kubectl(flow.tenant.kubeconfig), "-n", "web", "logs", some],
        capture_output=True,
        text=True,
        check=False,
    )
    assert logs.returncode == 0 and logs.stdout.strip() == f"serving {some}", logs.stderr


def test_dns_services_and_pod_traffic_work_across_nodes(flow: Flow) -> None:
    """Tenant DNS from the cluster_dns role (CoreDNS is preloaded in the node image); a client
    on each node reaches the Service by name and a Pod on the other node by its IP."""
    dns = flow.run_playbook(
        PLAYBOOKS / "cluster_dns.yml",
        extra_vars={
            "kubeconfig": str(flow.tenant.kubeconfig),
            "cluster_dns_ip": cluster_dns_ip(SERVICE_CIDR),
        },
    )
    assert dns.rc == 0, dns.failures or dns.stderr
    flow.tcore.create_namespaced_service(
        "web", {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]}}
    )
    pods = flow.tcore.list_namespaced_pod("web", label_selector="app=web").items
    by_node = {p.spec.node_name: p for p in pods}
    for node, other in (("blue-0", "blue-1"), ("blue-1", "blue-0")):
        answers = run_client(flow.tcore, node, ["web.web.svc.cluster.local", by_node[other].status.pod_ip])
        assert answers[0] in {p.metadata.name for p in pods}, answers
        assert answers[1] == by_node[other].metadata.name, answers


def test_the_inventory_reaches_every_node_with_the_kubectl_connection(flow: Flow, tmp_path) -> None:
    hc, ns = flow.host_cluster, flow.namespace
    ping = through_inventory(hc, ns, tmp_path, "ansible.builtin.ping")
    assert ping.returncode == 0 and ping.stdout.count("SUCCESS") == 2, ping.stdout + ping.stderr
    facts = through_inventory(hc, ns, tmp_path, "ansible.builtin.setup", "-a", "filter=ansible_hostname")
    assert facts.returncode == 0, facts.stdout + facts.stderr
    for machine in ("blue-0", "blue-1"):  # each node's own facts: its container's hostname
        assert f'"ansible_hostname": "{machine}"' in facts.stdout, facts.stdout
    command = through_inventory(hc, ns, tmp_path, "ansible.builtin.command", "-a", "ctr --version")
    assert command.returncode == 0, command.stdout + command.stderr
    assert command.stdout.count("ctr github.com/containerd/containerd") == 2, command.stdout


def test_a_deleted_node_pod_comes_back_as_the_same_node(flow: Flow) -> None:
    """The host loses a node's Pod; the next run (there is no controller: AWX schedules or the
    user runs it) makes it again, and the node rejoins under its name with its Pods."""
    ns = flow.namespace
    old_uid = flow.hcore.read_namespaced_pod("blue-1", ns).metadata.uid
    flow.hcore.delete_namespaced_pod("blue-1", ns)
    for event in kubernetes.watch.Watch().stream(
        flow.hcore.list_namespaced_pod, ns, field_selector="metadata.name=blue-1", timeout_seconds=120
    ):
        if event["type"] == "DELETED":
            break
    again = flow.hncluster(spec=cluster_spec(flow.host_cluster, flow.tenant, 2))
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is True
    assert flow.hcore.read_namespaced_pod("blue-1", ns).metadata.uid != old_uid
    nodes = tenant_nodes(flow.tcore)
    assert set(nodes) == {"blue-0", "blue-1"} and all(ready(n) for n in nodes.values())
    rolled_out(flow.tenant)
    web = flow.tcore.list_namespaced_pod("web", label_selector="app=web").items
    assert {p.spec.node_name for p in web} == {"blue-0", "blue-1"}


def test_a_new_template_rolls_the_nodes_one_at_a_time(flow: Flow) -> None:
    """A new image needs new Pods: check mode names the machines, the run replaces them in
    order, each drained and its Node Ready again before the next goes, and no Pod is lost."""
    tagged = node_ctr(flow, "images", "tag", NODE_IMAGE, ROLLED_IMAGE)
    assert tagged.returncode == 0, tagged.stderr
    ns = flow.namespace
    spec = cluster_spec(flow.host_cluster, flow.tenant, 2, image=ROLLED_IMAGE)
    old = {n: flow.hcore.read_namespaced_pod(n, ns).metadata.uid for n in ("blue-0", "blue-1")}

    check = flow.hncluster("--check", spec=spec)
    assert not check.get("failed"), check.get("msg")
    assert check["changed"] and check["replaced"] == ["blue-0", "blue-1"]
    assert {n: flow.hcore.read_namespaced_pod(n, ns).metadata.uid for n in old} == old

    rolled = flow.hncluster(spec=spec)
    assert not rolled.get("failed"), rolled.get("msg")
    assert rolled["changed"] and rolled["replaced"] == ["blue-0", "blue-1"]
    pods = {n: flow.hcore.read_namespaced_pod(n, ns) for n in old}
    assert all(p.metadata.uid != old[n] for n, p in pods.items())
    assert {p.spec.containers[0].image for p in pods.values()} == {ROLLED_IMAGE}
    nodes = tenant_nodes(flow.tcore)
    assert set(nodes) == {"blue-0", "blue-1"} and all(ready(n) for n in nodes.values())
    # One at a time: blue-1's new Pod came after blue-0 was back as a Ready Node.
    back = next(c.last_transition_time for c in nodes["blue-0"].status.conditions if c.type == "Ready")
    assert pods["blue-1"].metadata.creation_timestamp >= back
    assert nodes["blue-1"].metadata.labels["tier"] == "hosted"
    rolled_out(flow.tenant)
    web = flow.tcore.list_namespaced_pod("web", label_selector="app=web").items
    assert len(web) == 4 and all(p.status.phase == "Running" for p in web)

    again = flow.hncluster(spec=spec)
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False and again["replaced"] == []


def test_scale_up_to_three_then_down_to_one_drains(flow: Flow) -> None:
    up = flow.hncluster(spec=cluster_spec(flow.host_cluster, flow.tenant, 3, image=ROLLED_IMAGE))
    assert not up.get("failed"), up.get("msg")
    assert up["created"] == ["blue-2"]
    nodes = tenant_nodes(flow.tcore)
    assert set(nodes) == {"blue-0", "blue-1", "blue-2"} and all(ready(n) for n in nodes.values())

    down = flow.hncluster(spec=cluster_spec(flow.host_cluster, flow.tenant, 1, image=ROLLED_IMAGE))
    assert not down.get("failed"), down.get("msg")
    assert sorted(down["deleted"]) == ["blue-1", "blue-2"]
    assert set(tenant_nodes(flow.tcore)) == {"blue-0"}
    rolled_out(flow.tenant)
    web = flow.tcore.list_namespaced_pod("web", label_selector="app=web").items
    assert {p.spec.node_name for p in web} == {"blue-0"}
    assert len(web) == 4


def test_deleting_the_hncluster_leaves_nothing_in_host_or_tenant(flow: Flow) -> None:
    gone = flow.hncluster(state="absent")
    assert not gone.get("failed"), gone.get("msg")
    assert tenant_nodes(flow.tcore) == {}
    ns = flow.namespace
    assert flow.hcore.list_namespaced_pod(ns).items == []
    assert [
        s.metadata.name for s in flow.hcore.list_namespaced_secret(ns).items if "bootstrap" in s.metadata.name
    ] == []
    # Each node removed the cgroups its Pods had in the host's hierarchy on its way out.
    left = [str(h) for h in Path("/sys/fs/cgroup").iterdir() if (h / "rhizeption-hn" / ns).exists()]
    assert left == []

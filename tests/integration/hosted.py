"""What the hosted-node tests share (test_hosted_nodes*.py; their fixtures are in conftest.py):
the tenant's networks, the node image, and an HnCluster run through a playbook as users run it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import kubernetes
from riglib import toolchain
from riglib.controlplane import SERVICE_CIDR, ControlPlane
from riglib.node import HostCluster

GROUP, VERSION = "hn.rhizeption.io", "v1alpha1"
TENANT_POD_CIDR = "10.240.0.0/16"
NODE_IMAGE = f"localhost/rhizeption/node:{toolchain.versions()['KUBERNETES_VERSION']}"
BUSYBOX = "localhost/rhizeption/busybox:bookworm"
PLAYBOOKS = Path(__file__).parent / "playbooks"


def web_container() -> dict:
    """busybox httpd on 8080 answering with the Pod's name (its hostname), ready once it listens."""
    return {
        "name": "web",
        "image": BUSYBOX,
        "imagePullPolicy": "Never",
        "command": [
            "sh",
            "-c",
            "hostname > /tmp/index.html; echo serving $(hostname); exec httpd -f -p 8080 -h /tmp",
        ],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }


def web_deployment(replicas: int, container: dict | None = None, **pod_spec: object) -> dict:
    """A Deployment "web" of REPLICAS web_container() Pods (or CONTAINER), with POD_SPEC added."""
    return {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {**pod_spec, "containers": [container or web_container()]},
            },
        },
    }


def kubectl(kubeconfig) -> list[str]:
    return [str(toolchain.binary("kubectl")), f"--kubeconfig={kubeconfig}"]


def hncluster(run_playbook, host_cluster, tenant, namespace, *args, **task):
    """One rhizeption.core.hncluster task (its result); tenant_kubeconfig=None leaves it out."""
    task = {
        "name": "blue",
        "namespace": namespace,
        "tenant_kubeconfig": str(tenant.kubeconfig),
        "wait": True,
        "wait_timeout": 300,
        **task,
    }
    if task["tenant_kubeconfig"] is None:
        del task["tenant_kubeconfig"]
    played = run_playbook(
        PLAYBOOKS / "hn_module.yml",
        *args,
        extra_vars={"module": "hncluster", "task": task, "kubeconfig": str(host_cluster.kubeconfig)},
    )
    (result,) = played.task_results("Run hncluster")
    return result


def cluster_spec(
    host_cluster: HostCluster, tenant: ControlPlane, replicas: int, image: str = NODE_IMAGE
) -> dict:
    port = tenant.server.rsplit(":", 1)[1]
    return {
        "replicas": replicas,
        "controlPlaneEndpoint": {"host": host_cluster.node.gateway, "port": int(port)},
        "network": {"podCIDR": TENANT_POD_CIDR, "serviceCIDR": SERVICE_CIDR},
        "machineTemplate": {
            "image": image,
            "imagePullPolicy": "Never",
            "nodeLabels": {"tier": "hosted"},
        },
    }


def tenant_nodes(core) -> dict:
    return {n.metadata.name: n for n in core.list_node().items}


def ready(node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


@dataclass
class Flow:
    """What the tests of one module share, in order: its HnClusters and their tenant."""

    host_cluster: HostCluster
    tenant: ControlPlane
    namespace: str
    run_playbook: object
    tcore: kubernetes.client.CoreV1Api
    hcore: kubernetes.client.CoreV1Api
    custom: kubernetes.client.CustomObjectsApi

    def hncluster(self, *args, **task):
        return hncluster(self.run_playbook, self.host_cluster, self.tenant, self.namespace, *args, **task)

    def machine(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "hnmachines", name)


def node_ctr(flow: Flow, *args: str) -> subprocess.CompletedProcess:
    """ctr in the host node's containerd (the rig's node container)."""
    return subprocess.run(
        ["podman", "exec", flow.host_cluster.node.container, "ctr", "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def release_machines(custom: kubernetes.client.CustomObjectsApi, namespace: str) -> None:
    """Drop the finalizers of HnMachines a failed test left, or their namespace would wait
    for them forever (no controller runs to release them)."""
    try:
        machines = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "hnmachines")
    except kubernetes.client.ApiException:
        return  # no CRDs, or no namespace
    for m in machines["items"]:
        if m["metadata"].get("finalizers"):
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "hnmachines",
                m["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )


def delete_namespace(kubeconfig, namespace: str) -> None:
    subprocess.run(
        [*kubectl(kubeconfig), "delete", "namespace", namespace, "--wait=true", "--timeout=120s"],
        check=False,
        capture_output=True,
    )

"""The node agent as a virtual node of a rig tenant, its Pods run by a real host cluster:
what test_virtual_nodes.py and the virtual_node benchmark share.

In the host: a namespace where the agent's ServiceAccount lives (the tenant control plane's,
were the agent deployed by its role), the tenant's Pods namespace with its Pod Security level,
the agent's documented Role there, and a token of the ServiceAccount as its only credential.
In the tenant: the identity a kubelet has (system:node:NAME)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
from petagent import AgentProcess, free_port, node_kubeconfig
from rhizeption_agent.node import default_ip
from riglib.controlplane import ControlPlane
from riglib.node import HostCluster

from ansible_collections.rhizeption.core.plugins.module_utils import virtual_nodes  # isort: skip
from ansible_collections.rhizeption.core.plugins.module_utils.hosted_node import token_kubeconfig  # isort: skip

NODE = "host-resources"
TENANT = "green"
TENANT_LABEL = "virtual.rhizeption.io/tenant"
UID_LABEL = "virtual.rhizeption.io/uid"


def host_kubeconfig(host_cluster: HostCluster, token: str) -> str:
    ca = (host_cluster.control_plane.workdir / "ca.crt").read_text()
    return token_kubeconfig(host_cluster.server, ca, "agent", token, cluster="host")


@dataclass
class VirtualAgent:
    agent: AgentProcess
    pods_ns: str  # the tenant's Pods in the host
    agent_ns: str  # where the agent's ServiceAccount lives


@contextlib.contextmanager
def running_virtual_agent(
    host_cluster: HostCluster,
    host_api: kubernetes.client.ApiClient,
    tenant: ControlPlane,
    workdir: Path,
    resources: dict[str, str],
    **config: object,
) -> Iterator[VirtualAgent]:
    """The agent serving the resources node NODE with RESOURCES; CONFIG overrides settings.
    Afterwards: the agent stopped, both host namespaces and the tenant Node deleted."""
    hcore = kubernetes.client.CoreV1Api(host_api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(host_api)
    suffix = os.urandom(2).hex()
    agent_ns = f"t-virtual-{suffix}"
    pods_ns = virtual_nodes.pods_namespace(agent_ns, TENANT)
    agent = None
    try:
        hcore.create_namespace({"metadata": {"name": agent_ns}})
        hcore.create_namespace(virtual_nodes.pods_namespace_object(agent_ns, TENANT))
        hcore.create_namespaced_service_account(agent_ns, {"metadata": {"name": virtual_nodes.AGENT_NAME}})
        rbac.create_namespaced_role(pods_ns, virtual_nodes.agent_role(pods_ns))
        rbac.create_namespaced_role_binding(
            pods_ns, virtual_nodes.agent_role_binding(pods_ns, virtual_nodes.AGENT_NAME, agent_ns)
        )
        token = hcore.create_namespaced_service_account_token(
            virtual_nodes.AGENT_NAME, agent_ns, {"spec": {"expirationSeconds": 3600}}
        ).status.token
        (workdir / "host.kubeconfig").write_text(host_kubeconfig(host_cluster, token))
        (workdir / "node.kubeconfig").write_bytes(node_kubeconfig(tenant.workdir, tenant.server, NODE))
        for f in ("host.kubeconfig", "node.kubeconfig"):
            (workdir / f).chmod(0o600)
        # The tenant API server proxies logs and exec to no loopback address: the agent serves
        # on this machine's own address, which the Node reports.
        address = default_ip()
        agent = AgentProcess(
            workdir=workdir,
            node_name=NODE,
            run_id=suffix,
            podman_url="",
            config={
                "backend": "hostcluster",
                "node_name": NODE,
                "kubeconfig": str(workdir / "node.kubeconfig"),
                "state_dir": str(workdir / "state"),
                "internal_ip": address,
                "hostname_address": False,
                "server": {
                    "enabled": True,
                    "address": address,
                    "port": free_port(),
                    "client_ca_file": str(tenant.workdir / "ca.crt"),
                },
                "host_cluster": {
                    "kubeconfig": str(workdir / "host.kubeconfig"),
                    "tenant": TENANT,
                    "namespace": pods_ns,
                    "resources": resources,
                    "api_server_ip": host_cluster.node.gateway,
                    "api_server_port": int(tenant.server.rsplit(":", 1)[1]),
                },
                **config,
            },
        )
        agent.start()
        yield VirtualAgent(agent, pods_ns, agent_ns)
    finally:
        if agent is not None:
            agent.stop()
        for ns in (pods_ns, agent_ns):
            with contextlib.suppress(kubernetes.client.ApiException):
                hcore.delete_namespace(ns, grace_period_seconds=0)
        tclient = kubernetes.config.new_client_from_config(str(tenant.kubeconfig))
        with contextlib.suppress(kubernetes.client.ApiException):
            kubernetes.client.CoreV1Api(tclient).delete_node(NODE)
        tclient.close()

"""The node agent as a virtual node of a rig tenant, its Pods run by a real host cluster:
what test_virtual_nodes.py and the virtual_node benchmark share.

In the host: a namespace where the agent's ServiceAccount lives (the tenant control plane's,
were the agent deployed by its role), the tenant's Pods namespace with its Pod Security level,
the agent's documented Role there, and a token of the ServiceAccount as its only credential.
In the tenant: the identity a kubelet has (system:node:NAME) for an agent of the resources node
alone; for an agent of mirror nodes too, its own user bound to the documented ClusterRole, and
in the host the ClusterRole reading the promoted host nodes by name."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
from hosted import kubectl
from petagent import AgentProcess, free_port, node_kubeconfig, user_kubeconfig
from rhizeption_agent.node import default_ip
from riglib.controlplane import ControlPlane
from riglib.node import HostCluster
from tenanthost import install_host_objects, remove_host_objects

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
    tenant_name: str  # the TenantControlPlane's name: labels its host objects


def _tenant_identity(tenant: ControlPlane, tcore_api: kubernetes.client.ApiClient, several: bool) -> bytes:
    """The agent's kubeconfig in the tenant: a kubelet's for the resources node alone, its own
    user with the documented ClusterRole when it serves several Nodes."""
    if not several:
        return node_kubeconfig(tenant.workdir, tenant.server, NODE)
    rbac = kubernetes.client.RbacAuthorizationV1Api(tcore_api)
    rbac.create_cluster_role(virtual_nodes.tenant_agent_cluster_role())
    rbac.create_cluster_role_binding(virtual_nodes.tenant_agent_cluster_role_binding())
    return user_kubeconfig(tenant.workdir, tenant.server, virtual_nodes.TENANT_AGENT_IDENTITY)


@contextlib.contextmanager
def running_virtual_agent(
    host_cluster: HostCluster,
    host_api: kubernetes.client.ApiClient,
    tenant: ControlPlane,
    workdir: Path,
    resources: dict[str, str],
    nodes: tuple[str, ...] = (),
    tenant_name: str = TENANT,
    **config: object,
) -> Iterator[VirtualAgent]:
    """The agent serving the resources node NODE with RESOURCES (none: no resources node), their
    quota in the Pods namespace, and a mirror of each host node in NODES; CONFIG overrides
    settings. Afterwards: the agent stopped, both host namespaces, the agent's cluster-scoped
    objects and the tenant's Nodes deleted."""
    hcore = kubernetes.client.CoreV1Api(host_api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(host_api)
    tclient = kubernetes.config.new_client_from_config(str(tenant.kubeconfig))
    suffix = os.urandom(2).hex()
    agent_ns = f"t-virtual-{suffix}"
    pods_ns = virtual_nodes.pods_namespace(agent_ns, tenant_name)
    reader = virtual_nodes.host_node_reader(agent_ns, tenant_name, nodes)
    account = virtual_nodes.agent_name(tenant_name)
    agent = None
    made = []
    try:
        made = install_host_objects(host_api)
        hcore.create_namespace({"metadata": {"name": agent_ns}})
        hcore.create_namespace(virtual_nodes.pods_namespace_object(agent_ns, tenant_name))
        hcore.create_namespaced_service_account(agent_ns, {"metadata": {"name": account}})
        rbac.create_namespaced_role_binding(
            pods_ns, virtual_nodes.agent_role_binding(pods_ns, account, agent_ns)
        )
        quota = virtual_nodes.pods_quota(agent_ns, tenant_name, resources)
        if quota is not None:
            hcore.create_namespaced_resource_quota(pods_ns, quota)
        if reader is not None:
            rbac.create_cluster_role(reader)
            rbac.create_cluster_role_binding(
                virtual_nodes.host_node_reader_binding(agent_ns, tenant_name, nodes, account)
            )
        token = hcore.create_namespaced_service_account_token(
            account, agent_ns, {"spec": {"expirationSeconds": 3600}}
        ).status.token
        (workdir / "host.kubeconfig").write_text(host_kubeconfig(host_cluster, token))
        (workdir / "node.kubeconfig").write_bytes(_tenant_identity(tenant, tclient, several=bool(nodes)))
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
                    "tenant": tenant_name,
                    "namespace": pods_ns,
                    "resources": resources,
                    "nodes": list(nodes),
                    "api_server_ip": host_cluster.node.gateway,
                    "api_server_port": int(tenant.server.rsplit(":", 1)[1]),
                    "resources_priority_class": virtual_nodes.RESOURCES_PRIORITY_CLASS if resources else "",
                },
                **config,
            },
        )
        agent.start()
        yield VirtualAgent(agent, pods_ns, agent_ns, tenant_name)
    finally:
        if agent is not None:
            agent.stop()
        for ns in (pods_ns, agent_ns):
            with contextlib.suppress(kubernetes.client.ApiException):
                hcore.delete_namespace(ns, grace_period_seconds=0)
        remove_host_objects(host_api, made)
        if reader is not None:
            name = reader["metadata"]["name"]
            with contextlib.suppress(kubernetes.client.ApiException):
                rbac.delete_cluster_role_binding(name)
            with contextlib.suppress(kubernetes.client.ApiException):
                rbac.delete_cluster_role(name)
        tcore = kubernetes.client.CoreV1Api(tclient)
        for node in tcore.list_node(label_selector="node.rhizeption.io/virtual=true").items:
            with contextlib.suppress(kubernetes.client.ApiException):
                tcore.delete_node(node.metadata.name)
        tclient.close()


class Virtual:
    """What the tests share: the agent, both clusters' APIs, the host namespaces and the rig's
    one host node."""

    def __init__(self, running: VirtualAgent, tenant: ControlPlane, tcore, hcore, host_node: str):
        self.agent, self.tenant, self.tcore, self.hcore = running.agent, tenant, tcore, hcore
        self.pods_ns, self.agent_ns, self.tenant_name = running.pods_ns, running.agent_ns, running.tenant_name
        self.host_node = host_node

    def host_pods(self) -> list:
        return self.hcore.list_namespaced_pod(
            self.pods_ns, label_selector=f"{TENANT_LABEL}={self.tenant_name}"
        ).items

    def kubectl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*kubectl(self.tenant.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@contextlib.contextmanager
def virtual_node_agent(
    host_cluster: HostCluster,
    host_api: kubernetes.client.ApiClient,
    tenant: ControlPlane,
    workdir: Path,
    resources: dict[str, str],
    **options: object,
) -> Iterator[Virtual]:
    """running_virtual_agent (same arguments), with both clusters' APIs at hand."""
    tclient = kubernetes.config.new_client_from_config(str(tenant.kubeconfig))
    try:
        with running_virtual_agent(host_cluster, host_api, tenant, workdir, resources, **options) as running:
            yield Virtual(
                running,
                tenant,
                kubernetes.client.CoreV1Api(tclient),
                kubernetes.client.CoreV1Api(host_api),
                host_cluster.node_name,
            )
    finally:
        tclient.close()

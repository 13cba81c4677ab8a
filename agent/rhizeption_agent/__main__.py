"""``python -m rhizeption_agent --config /etc/rhizeption-agent/config.yaml``"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .config import AgentConfig, ConfigError, load


def build(cfg: AgentConfig):
    from . import identity  # noqa: PLC0415
    from .kubeapi import connect  # noqa: PLC0415
    from .node import addresses  # noqa: PLC0415

    if cfg.bootstrap_kubeconfig and not identity.client_kubeconfig_valid(Path(cfg.kubeconfig)):
        identity.bootstrap_client(cfg.bootstrap_kubeconfig, Path(cfg.kubeconfig), cfg.node_name)
    kube = connect(cfg.kubeconfig)
    host_ip = addresses(cfg)[0]["address"]
    agent = (
        _host_cluster_agent(cfg, kube, host_ip)
        if cfg.backend == "hostcluster"
        else _podman_agent(cfg, kube, host_ip)
    )
    if cfg.server.enabled:
        _serve(agent, cfg, kube, host_ip)
    return agent


def _podman_agent(cfg: AgentConfig, kube, host_ip: str):
    """A pet node: Pods run by the local Podman."""
    from .agent import Agent  # noqa: PLC0415
    from .backends.podman import PodmanRuntime  # noqa: PLC0415
    from .node import allocatable, capacity, measure  # noqa: PLC0415
    from .runtime import RuntimeProvider  # noqa: PLC0415
    from .volumes import Volumes  # noqa: PLC0415

    provider = RuntimeProvider(
        PodmanRuntime(cfg.podman_url),
        Volumes(kube, cfg.state_dir, host_ip),
        kube,
        node_name=cfg.node_name,
        infra_image=cfg.infra_image,
        host_ip=host_ip,
        extra_labels=cfg.extra_labels,
        allocatable=allocatable(capacity(measure(cfg.state_dir), cfg.max_pods), cfg.reserved),
    )
    provider.volume_resync = cfg.volume_resync_seconds
    return Agent(cfg, kube, provider)


def _host_cluster_agent(cfg: AgentConfig, kube, host_ip: str):
    """A virtual node's agent (docs/virtual-nodes.md): its Pods run as Pods of the host cluster.
    It serves a mirror Node per promoted host node, and the resources node (named node_name)
    when resources are promoted; every one's address is the agent's."""
    from .agent import Agent  # noqa: PLC0415
    from .backends.hostcluster.nodes import VirtualNodeSource  # noqa: PLC0415
    from .backends.hostcluster.pods import HostSettings  # noqa: PLC0415
    from .backends.hostcluster.provider import HostClusterProvider  # noqa: PLC0415
    from .node import KUBELET_VERSION  # noqa: PLC0415

    hc = cfg.host_cluster
    settings = HostSettings(
        tenant=hc.tenant,
        namespace=hc.namespace,
        pod_security=hc.pod_security,
        cluster_domain=hc.cluster_domain,
        dns_ip=hc.dns_ip or None,
        dns_hosts_file=hc.dns_hosts_file or None,
        api_server_ip=hc.api_server_ip or None,
        api_server_port=hc.api_server_port,
        resources_priority_class=hc.resources_priority_class or None,
    )
    host = connect_host(hc.kubeconfig)
    source = VirtualNodeSource(
        host,
        {"nodes": hc.nodes, "resources": hc.resources},
        address=host_ip,
        port=cfg.server.port,
        kubelet_version=KUBELET_VERSION,
        resources_name=cfg.node_name,
        max_pods=cfg.max_pods,
        labels=cfg.labels,
    )
    provider = HostClusterProvider(host, kube, settings, source.placement)
    agent = Agent(cfg, kube, provider, node_source=source)
    provider.bind(agent.wake, agent.events)
    return agent


def connect_host(kubeconfig: str):
    """The host cluster: as the kubeconfig file's user, or, when there is none (the agent is a
    Pod of the host cluster), as the Pod's ServiceAccount."""
    from .kubeapi import connect, connect_in_cluster  # noqa: PLC0415

    return connect(kubeconfig) if kubeconfig else connect_in_cluster()


def _serve(agent, cfg: AgentConfig, kube, host_ip: str) -> None:
    """The :10250 API (logs, exec, port-forward, stats) on the agent's address."""
    from . import identity  # noqa: PLC0415
    from .node import addresses  # noqa: PLC0415
    from .server import NodeServer, self_signed  # noqa: PLC0415

    cert, key = cfg.server.cert_file, cfg.server.key_file
    if not cert:
        cert, key = self_signed(cfg.state_dir, cfg.node_name, [host_ip])
    agent.server = NodeServer(
        kube,
        agent.provider,
        agent.pods,
        node_name=cfg.node_name,
        address=cfg.server.address,
        port=cfg.server.port,
        cert_file=cert,
        key_file=key,
        client_ca_file=cfg.server.client_ca_file,
    )
    if cfg.server.request_serving_certificate:
        server = agent.server

        def serving() -> None:
            names = [a["address"] for a in addresses(cfg) if a["type"] == "Hostname"]
            got = identity.serving_certificate(
                kube,
                cfg.state_dir,
                cfg.node_name,
                ips=[host_ip],
                dns=[cfg.node_name, *names],
                timeout=3600,
            )
            if got:
                server.use_certificate(*got)

        threading.Thread(target=serving, name="serving-csr", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rhizeption-agent", description="rhizeption node agent " + __version__
    )
    parser.add_argument("--config", required=True, help="the agent's YAML configuration file")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"rhizeption-agent: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"rhizeption-agent: {args.config} is valid")
        return 0
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    agent = build(cfg)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("rhizeption_agent").info("signal %d: stopping (Pods keep running)", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    done.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pet node's Service proxy as a long-running process.

    python3 -m ansible_collections.rhizeption.core.plugins.module_utils.service_proxy_daemon \\
        --kubeconfig /etc/rhizeption/proxy.kubeconfig --cluster-cidr 10.244.0.0/16 \\
        --masquerade-interface wg-pets

On a pet node the role copies this file, service_proxy.py and kube.py (the collection's
JSON client, which lists and watches) side by side into one folder
and runs `python3 -m service_proxy_daemon` there (a systemd unit): both import paths work,
and the knowledge stays in service_proxy.py alone.

SIGTERM and SIGINT stop it; the rules stay, so established and new connections keep
working until the next start rebuilds the table from a fresh list.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import List, Optional

try:
    import kubernetes
except ImportError:
    kubernetes = None

try:
    from ansible_collections.rhizeption.core.plugins.module_utils.service_proxy import (
        HAS_K8S,
        ProxyConfig,
        ProxyError,
        Watcher,
    )
except ImportError:  # copied next to service_proxy.py on a pet node
    from service_proxy import HAS_K8S, ProxyConfig, ProxyError, Watcher  # type: ignore[no-redef]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:  # noqa: UP045
    p = argparse.ArgumentParser(prog="service_proxy_daemon", description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument(
        "--kubeconfig", help="kubeconfig to reach the API server (default: in-cluster or ~/.kube/config)"
    )
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--table", default=ProxyConfig.table, help="our nftables table (family ip)")
    p.add_argument("--cluster-cidr", help="the cluster's Pod CIDR (for masquerading into the tunnel)")
    p.add_argument(
        "--masquerade-interface",
        action="append",
        default=[],
        help="masquerade DNATed traffic from outside the cluster CIDR leaving here (repeatable)",
    )
    p.add_argument("--balance", choices=("random", "round-robin"), default="random")
    p.add_argument("--no-nodeports", action="store_true", help="serve ClusterIPs only")
    p.add_argument("--debounce", type=float, default=0.05, help="seconds to gather a burst of changes")
    p.add_argument("--watch-timeout", type=int, default=300, help="seconds before a watch is re-listed")
    p.add_argument("--nft", default="nft", help="the nft command")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:  # noqa: UP045
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not HAS_K8S:
        logging.error("the kubernetes Python client is not installed")
        return 2
    try:
        client = kubernetes.config.new_client_from_config(args.kubeconfig, context=args.context)
    except kubernetes.config.ConfigException as exc:
        logging.error("no kubeconfig to reach the API server: %s", exc)
        return 2
    config = ProxyConfig(
        table=args.table,
        cluster_cidr=args.cluster_cidr,
        masquerade_interfaces=args.masquerade_interface,
        balance=args.balance,
        nodeports=not args.no_nodeports,
    )
    try:
        watcher = Watcher(
            client, config, nft=args.nft, debounce=args.debounce, watch_timeout=args.watch_timeout
        )
    except ProxyError as exc:
        logging.error("%s", exc)
        return 2

    def stop(_sig: int, _frame: object) -> None:
        watcher.stop.set()
        watcher.dirty.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.info("serving Services in nftables table ip %s", config.table)
    watcher.run_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

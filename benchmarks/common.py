"""What every benchmark shares: the results folder and the table."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes
from riglib.controlplane import ControlPlane
from riglib.node import HostCluster

RESULTS = Path(__file__).resolve().parent.parent / "results" / "bench"
# What a node runs, whoever installed it: the processes whose memory is compared.
NODE_PROCESSES = ("containerd", "containerd-shim", "containerd-shim-runc-v2", "kubelet", "kube-proxy")


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def write(name: str, figures: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **figures,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@contextlib.contextmanager
def host_cluster_and_tenant(prefix: str) -> Iterator[tuple[HostCluster, ControlPlane, Path]]:
    """The rig's host cluster (one real node) and a tenant control plane where the host
    cluster's Pods reach it (the node network's gateway), in a temporary folder; all gone after."""
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        HostCluster(Path(tmp) / "host", die_with_parent=True) as hc,
        ControlPlane(
            Path(tmp) / "tenant",
            HostCluster.COMPONENTS,
            address=hc.node.gateway,
            cluster_cidr="10.240.0.0/16",
            die_with_parent=True,
        ) as tenant,
    ):
        yield hc, tenant, Path(tmp)


def wait_node_ready(kubeconfig: Path, node: str, timeout: int = 300) -> None:
    """Watch the Node NODE of the cluster of KUBECONFIG until it is Ready."""
    api = kubernetes.config.new_client_from_config(str(kubeconfig))
    try:
        for event in kubernetes.watch.Watch().stream(
            kubernetes.client.CoreV1Api(api).list_node,
            field_selector=f"metadata.name={node}",
            timeout_seconds=timeout,
        ):
            conditions = event["object"].status.conditions or []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                return
    finally:
        api.close()
    raise RuntimeError(f"Node {node} not Ready after {timeout} s")

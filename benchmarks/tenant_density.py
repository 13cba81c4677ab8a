"""How many tenant control planes one machine holds, and how fast they come, on the rig's
real node (issue #8; Kamaji's published figure is 100 tenants on a shared etcd Ready in
about 7.5 minutes, one every 4.5 s, on a real cluster).

- row: ROW tenants (20) on one shared etcd applied one after another without waiting,
  then the time until every one of them is Ready; the rate is tenants per that time.
- density: then more tenants one at a time, each waited on, until MAX (30) or the first
  that is not Ready in time; then every tenant is looked at again (its Pods, as the module
  derives the phase) to count how many are Ready at once, with the memory they hold.
- the same density with a dedicated etcd each (DEDICATED_MAX, 10 by default: each needs a
  volume and its own etcd), after the shared ones are gone.

The baseline is the first tenant of the row on its own (apply -> Ready, nothing else
running): the row's per-tenant time is reported as a ratio to it. TENANT_DENSITY_ROW,
TENANT_DENSITY_MAX and TENANT_DENSITY_DEDICATED_MAX change the counts.
"""

from __future__ import annotations

import os
import sys
import time

import kubernetes
from ansible_collections.rhizeption.core.plugins.module_utils import tenant_control_plane as tcp_core
from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube
from riglib.node import HostCluster

from . import common
from .tenant_control_plane import etcd_volume, pod_rss, tenant_host

ROW = int(os.environ.get("TENANT_DENSITY_ROW", "20"))
MAX = int(os.environ.get("TENANT_DENSITY_MAX", "30"))
DEDICATED_MAX = int(os.environ.get("TENANT_DENSITY_DEDICATED_MAX", "10"))
NAMESPACE = "bench-density"
SHARED_ETCD = "shared-etcd"
READY_TIMEOUT = 600.0


def shared_etcd(core: kubernetes.client.CoreV1Api, namespace: str) -> str:
    """An etcd of the host cluster for tenants to share (one member, plain HTTP, data in an
    emptyDir): a Pod and its Service. Returns its client URL once it answers."""
    url = f"http://{SHARED_ETCD}.{namespace}.svc:2379"
    labels = {"rhizeption-test": SHARED_ETCD}
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": SHARED_ETCD},
            "spec": {"selector": labels, "ports": [{"name": "client", "port": 2379}]},
        },
    )
    peer = "http://127.0.0.1:2380"
    container = {
        "name": "etcd",
        "image": tcp_core.default_images(tcp_core.newest_version())[tcp_core.ETCD],
        "imagePullPolicy": "Never",
        "command": [
            "etcd",
            "--name=shared",
            "--data-dir=/var/lib/etcd/data",
            "--listen-client-urls=http://0.0.0.0:2379",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=shared={peer}",
        ],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 2379}, "periodSeconds": 1},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/etcd"}],
    }
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": SHARED_ETCD, "labels": labels},
            "spec": {
                "containers": [container],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "securityContext": {"runAsUser": tcp_core.RUN_AS, "fsGroup": tcp_core.RUN_AS},
                "terminationGracePeriodSeconds": 1,
            },
        },
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(SHARED_ETCD, namespace)
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            return url
        time.sleep(0.5)
    raise RuntimeError(f"the shared etcd {namespace}/{SHARED_ETCD} was not ready in 120 s")


def remove_shared_etcd(core: kubernetes.client.CoreV1Api, namespace: str) -> None:
    core.delete_namespaced_pod(SHARED_ETCD, namespace, grace_period_seconds=0)
    core.delete_namespaced_service(SHARED_ETCD, namespace)


def _spec(url: str | None) -> dict:
    spec: dict = {"version": tcp_core.newest_version()}
    if url:
        spec["datastore"] = {"type": "shared", "shared": {"endpoints": [url]}}
    return spec


def _phases(kube: Kube, names: list[str]) -> dict[str, str]:
    """Each tenant's phase as its Pods show it now (what the module would write)."""
    out = {}
    for name in names:
        tcp = kube.get(tcp_core.TENANT_CONTROL_PLANE.path(NAMESPACE, name))
        out[name] = tcp_core.status_now(kube, tcp)["phase"] if tcp else "missing"
    return out


def _wait_all_ready(kube: Kube, names: list[str], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if all(p == "Ready" for p in _phases(kube, names).values()):
            return time.monotonic() - start
        time.sleep(1)
    raise RuntimeError(f"not all of {len(names)} tenants Ready after {timeout:.0f} s: {_phases(kube, names)}")


def _memory_mib(hc: HostCluster, core: kubernetes.client.CoreV1Api, names: list[str]) -> float:
    uids = [
        p.metadata.uid
        for name in names
        for p in core.list_namespaced_pod(NAMESPACE, label_selector=f"{tcp_core.TENANT_LABEL}={name}").items
    ]
    return pod_rss(hc.node.cgroup_root, uids) / 2**20


def _fill(hc, kube, core, have: list[str], *, prefix: str, start: int, limit: int, url: str | None) -> str:
    """Add tenants one at a time, each waited on, until LIMIT; the reason it stopped."""
    for i in range(start, limit):
        name = f"{prefix}{i}"
        if url is None:
            etcd_volume(core, hc.node.container, NAMESPACE, name)
        try:
            tcp_core.ensure_present(
                kube, tcp_core.desired(name, NAMESPACE, _spec(url)), wait_for="Ready", timeout=300
            )
        except tcp_core.TenantControlPlaneError as e:
            have.append(name)
            return f"tenant {i + 1} was not Ready: {e}"
        have.append(name)
        print(f"tenant_density: {name} Ready ({len(have)})", file=sys.stderr)
    return f"stopped at the limit of {limit}"


def _density(hc, kube, core, names: list[str], stopped: str) -> dict:
    time.sleep(10)  # the controllers settle
    phases = _phases(kube, names)
    ready = [n for n, p in phases.items() if p == "Ready"]
    memory = _memory_mib(hc, core, names)
    return {
        "tenants": len(names),
        "ready_at_once": len(ready),
        "stopped": stopped,
        "rss_all_mib": round(memory, 1),
        "rss_per_tenant_mib": round(memory / max(1, len(names)), 1),
    }


def _remove(kube, core, names: list[str]) -> None:
    for name in names:
        # The shared etcd and the volumes go with the bench: no need to clean their data.
        tcp_core.ensure_absent(kube, NAMESPACE, name, keep_datastore=True, timeout=300)
    for pv in core.list_persistent_volume(label_selector="rhizeption-test=tenant").items:
        if pv.metadata.name.startswith(NAMESPACE):
            core.delete_persistent_volume(pv.metadata.name)


def run() -> dict:
    with tenant_host(NAMESPACE) as (hc, kube, core, _tmp):
        url = shared_etcd(core, NAMESPACE)

        # The baseline: one tenant alone.
        start = time.monotonic()
        tcp_core.ensure_present(
            kube, tcp_core.desired("s0", NAMESPACE, _spec(url)), wait_for="Ready", timeout=300
        )
        alone = time.monotonic() - start
        shared = ["s0"]

        # The row: the others applied back to back, then waited on together.
        start = time.monotonic()
        for i in range(1, ROW):
            tcp_core.ensure_present(kube, tcp_core.desired(f"s{i}", NAMESPACE, _spec(url)))
            shared.append(f"s{i}")
        applied = time.monotonic() - start
        _wait_all_ready(kube, shared[1:], READY_TIMEOUT)
        row = time.monotonic() - start
        print(f"tenant_density: row of {ROW - 1} Ready in {row:.0f} s", file=sys.stderr)

        stopped = _fill(hc, kube, core, shared, prefix="s", start=ROW, limit=MAX, url=url)
        shared_density = _density(hc, kube, core, shared, stopped)
        _remove(kube, core, shared)
        remove_shared_etcd(core, NAMESPACE)

        dedicated: list[str] = []
        stopped = _fill(hc, kube, core, dedicated, prefix="d", start=0, limit=DEDICATED_MAX, url=None)
        dedicated_density = _density(hc, kube, core, dedicated, stopped)
        _remove(kube, core, dedicated)
    in_row = ROW - 1
    return {
        "unit": "seconds",
        "baseline_one_tenant_alone_s": alone,
        "row": {
            "tenants": in_row,
            "applied_s": applied,
            "all_ready_s": row,
            "seconds_per_tenant": row / in_row,
            "ratio_to_one_alone": (row / in_row) / alone,
            "kamaji_published_seconds_per_tenant": 4.5,
        },
        "density": {"shared_etcd": shared_density, "dedicated_etcd": dedicated_density},
    }


def report(result: dict) -> str:
    r = result["row"]
    rows = [
        ["tenant density", "figure", "note"],
        ["one tenant alone (baseline)", f"{result['baseline_one_tenant_alone_s']:.1f} s", "apply -> Ready"],
        [
            f"row of {r['tenants']} on a shared etcd",
            f"{r['all_ready_s']:.0f} s",
            f"{r['seconds_per_tenant']:.1f} s per tenant"
            f" ({r['ratio_to_one_alone']:.2f} x alone; Kamaji 4.5 s)",
        ],
    ]
    for kind, d in result["density"].items():
        rows.append(
            [
                f"Ready at once, {kind.replace('_', ' ')}",
                f"{d['ready_at_once']} of {d['tenants']}",
                f"{d['rss_per_tenant_mib']:.0f} MiB each; {d['stopped']}",
            ]
        )
    return common.table(rows)

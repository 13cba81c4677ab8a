"""Tenant control planes on the rig's real node: apply -> the tenant's /readyz answers ok,
and the memory (RSS) of the tenant's containers. The baseline, measured in the same rounds,
is the rig's own etcd + kube-apiserver started as plain processes on this machine: the same
binaries without Pods, images, PKI Secrets or scheduling.

Not measured yet (see docs/tenant-control-planes.md): density with dedicated and shared etcd,
and 20 tenants in a row."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import kubernetes
from ansible_collections.rhizeption.core.plugins.module_utils import tenant_control_plane as tcp_core
from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube
from riglib.controlplane import MINIMAL, ControlPlane
from riglib.node import HostCluster

from . import common

ROUNDS = 5
NAMESPACE = "bench-tenants"
# etcd runs as this user; a hostPath volume is not chowned for it.
ETCD_UID = 65532


def etcd_volume(core: kubernetes.client.CoreV1Api, node_container: str, namespace: str, tenant: str) -> str:
    """A hostPath PersistentVolume on the rig's node, owned by etcd's user, bound ahead to the
    tenant's etcd claim (the rig has no provisioner). Returns its name."""
    path = f"/var/lib/rhizeption-test/{namespace}-{tenant}-etcd"
    subprocess.run(
        ["podman", "exec", node_container, "install", "-d", "-o", str(ETCD_UID), "-g", str(ETCD_UID), path],
        check=True,
        timeout=30,
    )
    name = f"{namespace}-{tenant}-etcd"[:63]
    core.create_persistent_volume(
        {
            "metadata": {"name": name, "labels": {"rhizeption-test": "tenant"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": path},
                "claimRef": {"namespace": namespace, "name": f"data-{tenant}-etcd-0"},
            },
        }
    )
    return name


def pod_rss(cgroup_root: str, uids: list[str]) -> int:
    """Bytes of RSS of the Pods UIDS: the sum of their cgroups' rss (cgroup v1 memory.stat)."""
    total = 0
    base = Path("/sys/fs/cgroup/memory") / cgroup_root.lstrip("/")
    for uid in uids:
        for stat in base.glob(f"kubepods*/**/pod{uid}/memory.stat"):
            fields = dict(line.split() for line in stat.read_text().splitlines())
            total += int(fields.get("total_rss", fields.get("rss", 0)))
            break
    return total


def time_baseline(root: Path) -> float:
    cp = ControlPlane(root / f"baseline-{time.monotonic_ns()}", MINIMAL)
    start = time.monotonic()
    cp.up()
    elapsed = time.monotonic() - start
    cp.down()
    return elapsed


def time_tenant(
    hc: HostCluster, kube: Kube, core: kubernetes.client.CoreV1Api, name: str
) -> tuple[float, int]:
    """Seconds from the apply to an ok from the tenant's /readyz, and its Pods' RSS then."""
    volume = etcd_volume(core, hc.node.container, NAMESPACE, name)
    want = tcp_core.desired(name, NAMESPACE, {"version": tcp_core.newest_version()})
    start = time.monotonic()
    out = tcp_core.ensure_present(kube, want, wait_for="Ready", timeout=300)
    # The apiserver's own answer, through its Pod IP (routed to this machine).
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"{tcp_core.TENANT_LABEL}={name}").items
    apiserver = next(p for p in pods if p.metadata.labels["app.kubernetes.io/name"] == tcp_core.APISERVER)
    while True:
        probe = subprocess.run(
            [
                "curl",
                "-sk",
                "--max-time",
                "2",
                f"https://{apiserver.status.pod_ip}:{tcp_core.API_PORT}/readyz",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout == "ok":
            break
        if time.monotonic() - start > 300:
            raise RuntimeError(f"tenant {name}: /readyz said {probe.stdout!r} after 300 s")
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    time.sleep(5)  # let the controllers settle before reading memory
    rss = pod_rss(hc.node.cgroup_root, [p.metadata.uid for p in pods])
    tcp_core.ensure_absent(kube, NAMESPACE, name, timeout=300)
    core.delete_persistent_volume(volume)
    assert out.after is not None
    return elapsed, rss


@contextlib.contextmanager
def tenant_host(namespace: str) -> Iterator[tuple[HostCluster, Kube, kubernetes.client.CoreV1Api, Path]]:
    """The rig's host cluster with the CRDs and NAMESPACE for tenants: (host cluster, Kube,
    CoreV1Api, a scratch folder), all gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="rhizeption-bench-") as tmp:
        hc = HostCluster(Path(tmp) / "host", die_with_parent=True)
        hc.up()
        client = kubernetes.config.new_client_from_config(str(hc.kubeconfig))
        try:
            core = kubernetes.client.CoreV1Api(client)
            core.create_namespace({"metadata": {"name": namespace}})
            crds = hc.kubectl("apply", "--server-side", "-f", str(CRDS))
            assert "tenantcontrolplanes" in crds
            hc.kubectl("wait", "--for=condition=Established", "crd/tenantcontrolplanes.hn.rhizeption.io")
            yield hc, Kube(client), core, Path(tmp)
        finally:
            client.close()
            hc.down()


def run() -> dict:
    baseline: list[float] = []
    tenant: list[float] = []
    rss: list[float] = []
    with tenant_host(NAMESPACE) as (hc, kube, core, tmp):
        for i in range(ROUNDS):
            baseline.append(time_baseline(tmp))
            seconds, memory = time_tenant(hc, kube, core, f"bench-{i}")
            tenant.append(seconds)
            rss.append(memory / 2**20)
    figures = {
        "rig etcd + kube-apiserver processes (baseline)": common.summary(baseline) | {"samples_s": baseline},
        "tenant apply -> /readyz ok": common.summary(tenant) | {"samples_s": tenant},
    }
    base = figures["rig etcd + kube-apiserver processes (baseline)"]["median"]
    for f in figures.values():
        f["ratio_to_baseline"] = f["median"] / base
    return {
        "unit": "seconds",
        "rounds": ROUNDS,
        "variants": figures,
        "rss_per_tenant_mib": common.summary(rss) | {"samples": rss},
    }


CRDS = Path(__file__).resolve().parent.parent / "roles" / "crds" / "files" / "crds.yaml"


def report(result: dict) -> str:
    rows = [["tenant control plane", "median", "min", "max", "x baseline"]]
    for name, f in result["variants"].items():
        rows.append(
            [
                name,
                f"{f['median']:.1f} s",
                f"{f['min']:.1f} s",
                f"{f['max']:.1f} s",
                f"{f['ratio_to_baseline']:.1f}",
            ]
        )
    r = result["rss_per_tenant_mib"]
    rows.append(
        [
            "RSS of one tenant's containers",
            f"{r['median']:.0f} MiB",
            f"{r['min']:.0f} MiB",
            f"{r['max']:.0f} MiB",
            "",
        ]
    )
    return common.table(rows)

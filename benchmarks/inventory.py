"""The hnmachines inventory with 10,000 HnMachines, against the naive way of listing them.

On a rig of its own (etcd + kube-apiserver), with the CRDs installed and 10,000 HnMachines
(and their status) written by a few threads, each round runs, interleaved:

- ``ansible-inventory --list`` with the plugin, no cache (what a user or AWX runs);
- the same listing done the naive way, in Python: kubernetes.core's dynamic client,
  ``resource.get()`` (ResourceInstance objects for every item), then the same host list;
- the plugin's own way outside Ansible: raw JSON pages through kube.py, then the same
  host list (the fair baseline for the naive way: same work, no ansible-inventory);
- ``ansible-inventory --list`` and ``--graph`` from a warm cache (no API request at all),
  which shows what ansible-inventory itself costs.

Every variant is a fresh process timed from the outside, so imports count everywhere.
Run one listing by hand with ``python -m benchmarks.inventory naive|raw KUBECONFIG``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import common

REPO = Path(__file__).resolve().parent.parent
# Smaller runs for trying the benchmark out: BENCH_INVENTORY_MACHINES=200 BENCH_INVENTORY_ROUNDS=1
MACHINES = int(os.environ.get("BENCH_INVENTORY_MACHINES", "10000"))
NAMESPACES = 20
CLUSTERS_PER_NAMESPACE = 5
ROUNDS = int(os.environ.get("BENCH_INVENTORY_ROUNDS", "5"))
WRITERS = 8
VARIANTS = (
    "ansible-inventory --list",
    "naive: dynamic client + ResourceInstance",
    "raw JSON pages (the plugin's way, no Ansible)",
    "ansible-inventory --list, warm cache",
    "ansible-inventory --graph, warm cache",
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K8S_AUTH_", "ANSIBLE_"))}
    env.pop("KUBECONFIG", None)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(REPO / ".collections")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / ".collections"), str(REPO / "hack"), str(REPO)])
    return env


# -- the rig and its 10,000 machines ------------------------------------------------------
def _kube(kubeconfig: Path):
    import kubernetes  # noqa: PLC0415 - only the parent process needs a client
    from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube  # noqa: PLC0415

    return Kube(kubernetes.config.new_client_from_config(str(kubeconfig)))


def _without_cel(obj):
    if isinstance(obj, dict):
        return {k: _without_cel(v) for k, v in obj.items() if k != "x-kubernetes-validations"}
    if isinstance(obj, list):
        return [_without_cel(v) for v in obj]
    return obj


def install_crds(kube) -> str:
    """The CRDs of roles/crds, as written; if the API server refuses them, without their
    CEL rules (which listing does not use), and says so in the results."""
    import yaml  # noqa: PLC0415
    from ansible_collections.rhizeption.core.plugins.module_utils.kube import KubeError  # noqa: PLC0415

    crds = yaml.safe_load((REPO / "roles/crds/files/crds.yaml").read_text())["items"]
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    how = "as written"
    for crd in crds:
        try:
            kube.request("POST", path, body=crd)
        except KubeError as e:
            if e.status != 422:
                raise
            how = f"without CEL rules: the API server refused them ({str(e)[:200]}...)"
            kube.request("POST", path, body=_without_cel(crd))
    deadline = time.monotonic() + 60
    for crd in crds:
        while True:
            obj = kube.get(f"{path}/{crd['metadata']['name']}") or {}
            conditions = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {crd['metadata']['name']} not Established after 60 s")
            time.sleep(0.1)
    return how


def machine(i: int) -> tuple[dict, dict | None]:
    namespace = f"bench-{i % NAMESPACES}"
    cluster = f"c{(i // NAMESPACES) % CLUSTERS_PER_NAMESPACE}"
    name = f"{cluster}-{i:05d}"
    obj = {
        "apiVersion": "hn.rhizeption.io/v1alpha1",
        "kind": "HnMachine",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"hn.rhizeption.io/cluster": cluster, "topology.kubernetes.io/zone": f"z{i % 3}"},
        },
        "spec": {"clusterName": cluster, "providerID": f"hn://{namespace}/{name}"},
    }
    if i % 10 == 9:
        return obj, None  # one in ten has no status yet: Pending, not ready
    ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
    ready = i % 10 < 7
    status = {
        "ready": ready,
        "phase": "Ready" if ready else "Provisioning",
        "podName": name,
        "podIP": ip,
        "hostIP": "192.0.2.1",
        "hostNodeName": f"host-{i % 7}",
        "nodeName": name if ready else None,
        "addresses": [{"type": "InternalIP", "address": ip}],
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "NodeReady" if ready else "Provisioning",
                "message": "",
                "lastTransitionTime": "2026-11-23T10:00:00Z",
            }
        ],
    }
    return obj, {k: v for k, v in status.items() if v is not None}


def create_machines(kube) -> float:
    start = time.monotonic()
    for n in range(NAMESPACES):
        kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": f"bench-{n}"}})

    def write(i: int) -> None:
        obj, status = machine(i)
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        base = f"/apis/hn.rhizeption.io/v1alpha1/namespaces/{ns}/hnmachines"
        kube.request("POST", base, body=obj)
        if status:
            kube.request(
                "PATCH",
                f"{base}/{name}/status",
                body={"status": status},
                content_type="application/merge-patch+json",
            )

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(write, range(MACHINES), chunksize=50))
    return time.monotonic() - start


# -- one listing of each kind (run in a fresh process) --------------------------------------
def list_naive(kubeconfig: str) -> int:
    """kubernetes.core's dynamic client, as most inventories and k8s_info do it."""
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.client import get_api_client  # noqa: PLC0415
    from ansible_collections.rhizeption.core.plugins.module_utils.inventory_hnmachines import (  # noqa: PLC0415
        Settings,
        hosts_from,
    )

    client = get_api_client(kubeconfig=kubeconfig)
    resource = client.resources.get(api_version="hn.rhizeption.io/v1alpha1", kind="HnMachine")
    result = resource.get()  # a ResourceInstance, every item wrapped as ResourceField objects
    items = [item.to_dict() for item in result.items]
    return len(hosts_from(items, Settings()).hosts)


def list_raw(kubeconfig: str) -> int:
    from ansible_collections.rhizeption.core.plugins.module_utils.inventory_hnmachines import (  # noqa: PLC0415
        Settings,
        hosts_from,
    )
    from ansible_collections.rhizeption.core.plugins.module_utils.inventory_hnmachines_api import (  # noqa: PLC0415
        list_machines,
    )
    from ansible_collections.rhizeption.core.plugins.module_utils.kube import (  # noqa: PLC0415
        Kube,
        api_client_from,
    )

    kube = Kube(api_client_from(kubeconfig=kubeconfig))
    items = list_machines(kube, None, {"label_selector": None, "field_selector": None, "page_size": 500})
    return len(hosts_from(items, Settings()).hosts)


# -- the rounds ----------------------------------------------------------------------------
def _timed(cmd: list[str], expect_hosts: int | None = None) -> float:
    start = time.monotonic()
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False, cwd=REPO)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    if expect_hosts is not None and "--graph" not in cmd:
        out = json.loads(result.stdout)
        hosts = out if isinstance(out, int) else len(out["_meta"]["hostvars"])
        if hosts != expect_hosts:
            raise RuntimeError(f"{' '.join(cmd)} listed {hosts} hosts, not {expect_hosts}")
    return elapsed


def run() -> dict:
    from riglib.controlplane import MINIMAL, ControlPlane  # noqa: PLC0415

    inventory_cli = str(Path(sys.executable).parent / "ansible-inventory")
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="rhizeption-bench-inv-") as tmp:
        root = Path(tmp)
        with ControlPlane(root / "rig", MINIMAL, die_with_parent=True) as cp:
            kube = _kube(cp.kubeconfig)
            crds = install_crds(kube)
            create_s = create_machines(kube)
            plain = root / "bench.hnmachines.yml"
            plain.write_text(f"plugin: rhizeption.core.hnmachines\nkubeconfig: {cp.kubeconfig}\n")
            cached = root / "cached.hnmachines.yml"
            cached.write_text(
                f"plugin: rhizeption.core.hnmachines\nkubeconfig: {cp.kubeconfig}\ncache: true\n"
                f"cache_plugin: ansible.builtin.jsonfile\ncache_connection: {root / 'cache'}\n"
                "cache_timeout: 86400\n"
            )
            _timed([inventory_cli, "-i", str(cached), "--graph"])  # warms the cache
            commands = {
                VARIANTS[0]: [inventory_cli, "-i", str(plain), "--list"],
                VARIANTS[1]: [sys.executable, "-m", "benchmarks.inventory", "naive", str(cp.kubeconfig)],
                VARIANTS[2]: [sys.executable, "-m", "benchmarks.inventory", "raw", str(cp.kubeconfig)],
                VARIANTS[3]: [inventory_cli, "-i", str(cached), "--list"],
                VARIANTS[4]: [inventory_cli, "-i", str(cached), "--graph"],
            }
            for _round in range(ROUNDS):
                for name, cmd in commands.items():
                    samples[name].append(_timed(cmd, expect_hosts=MACHINES))
    figures = {name: common.summary(s) | {"samples_s": s} for name, s in samples.items()}
    naive = figures[VARIANTS[1]]["median"]
    for f in figures.values():
        f["ratio_to_naive"] = f["median"] / naive
    return {
        "unit": "seconds",
        "machines": MACHINES,
        "rounds": ROUNDS,
        "create_machines_s": create_s,
        "crds": crds,
        "variants": figures,
    }


def report(result: dict) -> str:
    rows = [[f"{result['machines']} HnMachines", "median s", "min s", "max s", "x naive"]]
    for name, f in result["variants"].items():
        rows.append(
            [name, f"{f['median']:.2f}", f"{f['min']:.2f}", f"{f['max']:.2f}", f"{f['ratio_to_naive']:.2f}"]
        )
    return common.table(rows) + f"\n(creating the machines took {result['create_machines_s']:.0f} s)"


if __name__ == "__main__":
    kind, config = sys.argv[1], sys.argv[2]
    count = {"naive": list_naive, "raw": list_raw}[kind](config)
    print(count)

"""Tenant control planes whose Pods really run: the rig's host cluster (one real node with
containerd and kubelet, CoreDNS) runs etcd, kube-apiserver, controller-manager and
scheduler of two tenants from the images hack/build-images made. The tenants are driven by
the tenant_control_plane module as an operator holding only the documented ClusterRole."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import kubernetes
import pytest
import yaml
from ansible_collections.rhizeption.core.plugins.module_utils import pki
from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube
from conftest import PLAYBOOKS
from petagent import free_port
from riglib import toolchain
from tenanthost import GROUP, PLURAL, TENANT_LABEL, VERSION, apply, ready_tenant, retry, tenant_client

import benchmarks.tenant_density

NAMESPACE = "tenants-real"


@pytest.fixture(scope="module")
def tenants_namespace() -> str:
    return NAMESPACE


@pytest.fixture(scope="module")
def tenants(host, run_playbook):
    """Two tenants, blue and green, Ready, with their admin kubeconfigs."""
    out = {}
    for name in ("blue", "green"):
        spec = {"version": "v1.34.4", "exposure": {"type": "NodePort"}}
        kubeconfig, result = ready_tenant(run_playbook, host, name, NAMESPACE, spec)
        out[name] = {"kubeconfig": kubeconfig, "endpoint": result["endpoint"], "result": result}
    yield out
    for name in out:
        apply(run_playbook, host, name=name, namespace=NAMESPACE, state="absent", wait_timeout=180)


def test_two_tenants_are_ready_and_serve_their_own_api(tenants, host):
    for name, tenant in tenants.items():
        assert tenant["endpoint"].startswith(f"https://{host['cluster'].node.node_ip}:")
        client = tenant_client(tenant["kubeconfig"])
        try:
            # kube.py's request works with both generations of the kubernetes client.
            assert Kube(client).request("GET", "/readyz", stream=True).data == b"ok", name
            core = kubernetes.client.CoreV1Api(client)
            apps = kubernetes.client.AppsV1Api(client)
            ext = kubernetes.client.ApiextensionsV1Api(client)
            core.create_namespace({"metadata": {"name": f"team-{name}"}})
            apps.create_namespaced_deployment(
                f"team-{name}",
                {
                    "metadata": {"name": "web"},
                    "spec": {
                        "replicas": 2,
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
                        },
                    },
                },
            )
            ext.create_custom_resource_definition(
                {
                    "metadata": {"name": f"widgets.{name}.example.com"},
                    "spec": {
                        "group": f"{name}.example.com",
                        "names": {"kind": "Widget", "plural": "widgets"},
                        "scope": "Namespaced",
                        "versions": [
                            {
                                "name": "v1",
                                "served": True,
                                "storage": True,
                                "schema": {
                                    "openAPIV3Schema": {
                                        "type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    }
                                },
                            }
                        ],
                    },
                }
            )
        finally:
            client.close()


def test_a_kwok_node_in_the_tenant_gets_the_deployments_pods(tenants, tmp_path):
    kubeconfig = tenants["blue"]["kubeconfig"]
    config = tmp_path / "kwok.yaml"
    config.write_text("apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\n")
    log = (tmp_path / "kwok.log").open("w")
    kwok = subprocess.Popen(
        [
            str(toolchain.binary("kwok")),
            f"--kubeconfig={kubeconfig}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{free_port()}",
            f"--config={config}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = tenant_client(kubeconfig)
    try:
        core = kubernetes.client.CoreV1Api(client)
        core.create_node({"metadata": {"name": "kwok-0", "annotations": {"kwok.x-k8s.io/node": "fake"}}})
        deadline = time.monotonic() + 120
        bound: list[str] = []
        while time.monotonic() < deadline:
            pods = core.list_namespaced_pod("team-blue", label_selector="app=web").items
            bound = [p.spec.node_name for p in pods if p.spec.node_name]
            if len(bound) == 2:
                break
            time.sleep(1)
        assert bound == ["kwok-0", "kwok-0"], (tmp_path / "kwok.log").read_text()[-2000:]
    finally:
        client.close()
        kwok.send_signal(signal.SIGTERM)
        kwok.wait(timeout=30)
        log.close()


def test_tenants_are_isolated_from_each_other_and_from_the_host(tenants, host):
    blue, green = (tenant_client(tenants[n]["kubeconfig"]) for n in ("blue", "green"))
    try:
        blue_ns = {n.metadata.name for n in kubernetes.client.CoreV1Api(blue).list_namespace().items}
        green_ns = {n.metadata.name for n in kubernetes.client.CoreV1Api(green).list_namespace().items}
        assert "team-blue" in blue_ns and "team-green" not in blue_ns
        assert "team-green" in green_ns and "team-blue" not in green_ns
        crds = {
            c.metadata.name
            for c in kubernetes.client.ApiextensionsV1Api(green).list_custom_resource_definition().items
        }
        assert "widgets.green.example.com" in crds and "widgets.blue.example.com" not in crds
    finally:
        blue.close()
        green.close()
    # The tenant's admin credentials, pointed at the host cluster's API server: refused.
    doc = json.loads(tenants["blue"]["kubeconfig"].read_text())
    host_doc = yaml.safe_load(Path(host["cluster"].kubeconfig).read_text())
    doc["clusters"][0]["cluster"] = host_doc["clusters"][0]["cluster"]
    crossed = host["folder"] / "crossed.kubeconfig"
    pki.write_file(crossed, json.dumps(doc).encode(), private=True)
    client = tenant_client(crossed)
    try:
        with pytest.raises(kubernetes.client.ApiException) as refused:
            kubernetes.client.CoreV1Api(client).list_namespace()
        assert refused.value.status == 401
    finally:
        client.close()


def test_the_tenant_comes_back_after_losing_its_apiserver_then_its_etcd(tenants, host, run_playbook):
    core = host["core"]
    for component in ("kube-apiserver", "etcd"):
        pods = core.list_namespaced_pod(
            NAMESPACE, label_selector=f"{TENANT_LABEL}=blue,app.kubernetes.io/name={component}"
        ).items
        assert pods, component
        for pod in pods:
            core.delete_namespaced_pod(pod.metadata.name, NAMESPACE, grace_period_seconds=0)
        back = apply(
            run_playbook,
            host,
            name="blue",
            namespace=NAMESPACE,
            spec={"version": "v1.34.4", "exposure": {"type": "NodePort"}},
            wait=True,
            wait_timeout=300,
        )
        assert back.get("failed") is not True, back.get("msg")
        assert back["phase"] == "Ready" and back["changed"] is False
        client = tenant_client(tenants["blue"]["kubeconfig"])
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    names = {
                        n.metadata.name for n in kubernetes.client.CoreV1Api(client).list_namespace().items
                    }
                    break
                except Exception:  # the apiserver is coming back: connection refused, 503
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            assert "team-blue" in names, component
        finally:
            client.close()


def backup_task(run_playbook, host, *args: str, **task):
    played = run_playbook(
        PLAYBOOKS / "tenant_module.yml",
        *args,
        extra_vars={
            "module": "tenant_control_plane_backup",
            "task": {"name": "blue", "namespace": NAMESPACE, **task},
            "kubeconfig": str(host["operator"]),
        },
    )
    (result,) = played.task_results("Run tenant_control_plane_backup")
    return result


def _pod_uids(core, tenant: str) -> dict:
    pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"{TENANT_LABEL}={tenant}").items
    return {p.metadata.name: p.metadata.uid for p in pods}


def test_backup_then_restore_brings_back_a_deleted_object(tenants, host, run_playbook, tmp_path):
    path = tmp_path / "backups" / "blue.db"
    client = tenant_client(tenants["blue"]["kubeconfig"])
    core = kubernetes.client.CoreV1Api(client)
    timings = {}
    try:
        retry(
            lambda: core.create_namespaced_config_map(
                "default", {"metadata": {"name": "keep-me"}, "data": {"a": "1"}}
            )
        )

        would = backup_task(run_playbook, host, "--check", mode="backup", path=str(path))
        assert would.get("failed") is not True, would.get("msg")
        assert would["changed"] is True and not path.exists()

        started = time.monotonic()
        made = backup_task(run_playbook, host, mode="backup", path=str(path))
        timings["backup"] = time.monotonic() - started
        assert made.get("failed") is not True, made.get("msg")
        assert made["changed"] is True and made["size"] == path.stat().st_size
        assert path.stat().st_mode & 0o777 == 0o600
        written = path.read_bytes()
        assert hashlib.sha256(written).hexdigest() == made["sha256"]

        # A second run to the same path keeps the snapshot there (force takes a new one).
        again = backup_task(run_playbook, host, mode="backup", path=str(path))
        assert again.get("failed") is not True, again.get("msg")
        assert again["changed"] is False and path.read_bytes() == written

        # Missing or corrupt files fail naming the file, before anything is stopped.
        before = _pod_uids(host["core"], "blue")
        corrupt = tmp_path / "corrupt.db"
        corrupt.write_bytes(written[:-4096])
        for bad in (tmp_path / "missing.db", corrupt):
            refused = backup_task(run_playbook, host, mode="restore", path=str(bad))
            assert refused.get("failed") is True and str(bad) in refused["msg"], refused.get("msg")
        assert _pod_uids(host["core"], "blue") == before

        core.delete_namespaced_config_map("keep-me", "default")
        started = time.monotonic()
        restored = backup_task(run_playbook, host, mode="restore", path=str(path))
        timings["restore"] = time.monotonic() - started
        assert restored.get("failed") is not True, restored.get("msg")
        assert restored["changed"] is True

        back = retry(lambda: core.read_namespaced_config_map("keep-me", "default"))
        assert back.data == {"a": "1"}

        ready = apply(
            run_playbook,
            host,
            name="blue",
            namespace=NAMESPACE,
            spec={"version": "v1.34.4", "exposure": {"type": "NodePort"}},
            wait=True,
            wait_timeout=120,
        )
        assert ready.get("failed") is not True, ready.get("msg")
        assert ready["phase"] == "Ready" and ready["changed"] is False
        print(f"backup {timings['backup']:.1f} s, restore {timings['restore']:.1f} s, {len(written)} bytes")
    finally:
        # Gone already, or the tenant is down: the fixture deletes the tenant anyway.
        with contextlib.suppress(Exception):
            core.delete_namespaced_config_map("keep-me", "default")
        client.close()


def test_a_restore_that_fails_leaves_the_tenant_on_its_data(tenants, host, run_playbook, tmp_path):
    path = tmp_path / "blue.db"
    client = tenant_client(tenants["blue"]["kubeconfig"])
    core = kubernetes.client.CoreV1Api(client)
    try:
        retry(
            lambda: core.create_namespaced_config_map(
                "default", {"metadata": {"name": "kept"}, "data": {"a": "1"}}
            )
        )
        made = backup_task(run_playbook, host, mode="backup", path=str(path))
        assert made.get("failed") is not True, made.get("msg")
        # force: a new snapshot to the same path.
        forced = backup_task(run_playbook, host, mode="backup", path=str(path), force=True)
        assert forced.get("failed") is not True, forced.get("msg")
        assert forced["changed"] is True and forced["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

        # It fails once the tenant is stopped (an etcdutl image without etcdutl): the error
        # names the Pod and the cause, and the tenant is back on its data, change included.
        core.patch_namespaced_config_map("kept", "default", {"data": {"a": "2"}})
        broken = backup_task(
            run_playbook,
            host,
            mode="restore",
            path=str(path),
            images={"etcdutl": "localhost/rhizeption/etcd:v3.6.16"},
        )
        assert broken.get("failed") is True, broken
        assert "blue-etcd-restore" in broken["msg"] and "old data" in broken["msg"], broken["msg"]
        kept = retry(lambda: core.read_namespaced_config_map("kept", "default"))
        assert kept.data == {"a": "2"}
        assert (
            not host["core"]
            .list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/name=etcd-backup")
            .items
        )
    finally:
        with contextlib.suppress(Exception):
            core.delete_namespaced_config_map("kept", "default")
        client.close()


def test_delete_leaves_nothing_of_the_tenant(tenants, host, run_playbook):
    gone = apply(run_playbook, host, name="green", namespace=NAMESPACE, state="absent", wait_timeout=180)
    assert gone.get("failed") is not True, gone.get("msg")
    core = host["core"]
    apps = kubernetes.client.AppsV1Api(core.api_client)
    selector = f"{TENANT_LABEL}=green"
    left = [
        *core.list_namespaced_secret(NAMESPACE, label_selector=selector).items,
        *core.list_namespaced_service(NAMESPACE, label_selector=selector).items,
        *core.list_namespaced_pod(NAMESPACE, label_selector=selector).items,
        *core.list_namespaced_persistent_volume_claim(NAMESPACE, label_selector=selector).items,
        *apps.list_namespaced_deployment(NAMESPACE, label_selector=selector).items,
        *apps.list_namespaced_stateful_set(NAMESPACE, label_selector=selector).items,
    ]
    assert [o.metadata.name for o in left] == []
    del tenants["green"]
    assert os.path.exists(host["folder"])


SHARED_ETCD = benchmarks.tenant_density.SHARED_ETCD


@pytest.fixture
def shared_etcd(host):
    """An etcd of the host cluster that tenants share: plain HTTP, one member, in the
    tenants' namespace (the host admin makes it; the operator only points tenants at it)."""
    url = benchmarks.tenant_density.shared_etcd(host["core"], NAMESPACE)
    try:
        yield url
    finally:
        benchmarks.tenant_density.remove_shared_etcd(host["core"], NAMESPACE)


def etcdctl(host, *args: str) -> str:
    from kubernetes.stream import stream

    return stream(
        host["core"].connect_get_namespaced_pod_exec,
        SHARED_ETCD,
        NAMESPACE,
        command=["etcdctl", "--endpoints=http://127.0.0.1:2379", *args],
        stderr=True,
        stdout=True,
        stdin=False,
        tty=False,
    )


def test_a_tenant_on_a_shared_etcd_leaves_no_key_there_when_deleted(
    host, run_playbook, shared_etcd, tmp_path
):
    """Its keys go with it, and only its keys: not those of a tenant whose prefix merely
    starts the same, not anyone else's."""
    prefix = f"/rhizeption/{NAMESPACE}/amber"
    etcdctl(host, "put", f"{prefix}2/registry/a-neighbour", "stays")
    etcdctl(host, "put", "/someone-else", "stays")
    kubeconfig = tmp_path / "amber.kubeconfig"
    made = apply(
        run_playbook,
        host,
        name="amber",
        namespace=NAMESPACE,
        spec={
            "version": "v1.34.4",
            "exposure": {"type": "NodePort"},  # reached from this host, as the other tenants
            "datastore": {"type": "shared", "shared": {"endpoints": [shared_etcd]}},
        },
        wait=True,
        wait_timeout=300,
        admin_kubeconfig_path=str(kubeconfig),
    )
    try:
        assert made.get("failed") is not True, made.get("msg")
        assert made["phase"] == "Ready"
        custom = kubernetes.client.CustomObjectsApi(host["core"].api_client)
        tcp = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "amber")
        assert "hn.rhizeption.io/shared-etcd-keys" in tcp["metadata"]["finalizers"]
        tenant = kubernetes.client.CoreV1Api(tenant_client(kubeconfig))
        retry(lambda: tenant.create_namespace({"metadata": {"name": "amber-app"}}))
        keys = etcdctl(host, "get", "--prefix", "--keys-only", f"{prefix}/").split()
        assert f"{prefix}/namespaces/amber-app" in keys

        would = apply(run_playbook, host, "--check", name="amber", namespace=NAMESPACE, state="absent")
        assert f"the keys under {prefix}/ in the shared etcd" in would["deleted"]
        # None removed (the tenant's controllers go on adding theirs meanwhile).
        assert set(keys) <= set(etcdctl(host, "get", "--prefix", "--keys-only", f"{prefix}/").split())
    finally:
        gone = apply(run_playbook, host, name="amber", namespace=NAMESPACE, state="absent", wait_timeout=180)
    assert gone.get("failed") is not True, gone.get("msg")
    removed = [d for d in gone["deleted"] if d.endswith(f"keys under {prefix}/ in the shared etcd")]
    assert len(removed) == 1 and int(removed[0].split()[0]) >= len(keys), gone["deleted"]
    assert etcdctl(host, "get", "--prefix", "--keys-only", f"{prefix}/").split() == []
    assert etcdctl(host, "get", "--print-value-only", f"{prefix}2/registry/a-neighbour").strip() == "stays"
    assert etcdctl(host, "get", "--print-value-only", "/someone-else").strip() == "stays"
    pods = host["core"].list_namespaced_pod(NAMESPACE, label_selector=f"{TENANT_LABEL}=amber").items
    assert [p.metadata.name for p in pods] == []
    again = apply(run_playbook, host, name="amber", namespace=NAMESPACE, state="absent")
    assert again["changed"] is False

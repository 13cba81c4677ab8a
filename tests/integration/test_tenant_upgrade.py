"""A tenant control plane upgraded one minor version on the rig's host cluster: from the
previous minor hack/bootstrap builds (KUBERNETES_PREVIOUS_VERSION) to the pinned one, as the
documented operator. The upgrade must roll the kube-apiserver before the controller-manager
and scheduler, keep the tenant's data and datastore, and refuse the way back."""

from __future__ import annotations

import threading
import time

import kubernetes
import pytest
from riglib import toolchain
from riglib.node import previous_control_plane_archives
from tenanthost import GROUP, PLURAL, TENANT_LABEL, VERSION, apply, etcd_volume, retry, tenant_client

NAMESPACE = "tenants-upgrade"
TENANT = "rose"
OLD = toolchain.versions()["KUBERNETES_PREVIOUS_VERSION"]
NEW = toolchain.versions()["KUBERNETES_VERSION"]
CONTROLLERS = ("kube-controller-manager", "kube-scheduler")


@pytest.fixture(scope="module")
def tenants_namespace() -> str:
    return NAMESPACE


class DeploymentLog:
    """Every state the tenant's Deployments pass through, in order, from a watch, and the
    TenantControlPlane's phase read at each."""

    def __init__(self, apps: kubernetes.client.AppsV1Api) -> None:
        self.apps = apps
        self.custom = kubernetes.client.CustomObjectsApi(apps.api_client)
        self.seen: list[tuple[str, str, bool]] = []  # (component, image tag, rolled out)
        self.phases: list[str] = []
        self.done = threading.Event()
        listed = apps.list_namespaced_deployment(NAMESPACE, label_selector=f"{TENANT_LABEL}={TENANT}")
        self.thread = threading.Thread(target=self._follow, args=(listed.metadata.resource_version,))
        self.thread.start()

    def _follow(self, since: str) -> None:
        # Short watches, resumed from the last version, so stop() ends the thread in time.
        while not self.done.is_set():
            watch = kubernetes.watch.Watch()
            for event in watch.stream(
                self.apps.list_namespaced_deployment,
                NAMESPACE,
                label_selector=f"{TENANT_LABEL}={TENANT}",
                resource_version=since,
                timeout_seconds=2,
            ):
                d = event["object"]
                st, wanted = d.status, d.spec.replicas
                rolled = (
                    (st.observed_generation or 0) >= d.metadata.generation
                    and (st.updated_replicas or 0) == wanted
                    and (st.available_replicas or 0) == wanted
                    and (st.replicas or 0) == wanted
                )
                tag = d.spec.template.spec.containers[0].image.rsplit(":", 1)[1]
                self.seen.append((d.metadata.labels["app.kubernetes.io/name"], tag, rolled))
                since = d.metadata.resource_version
                tcp = self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, TENANT)
                self.phases.append((tcp.get("status") or {}).get("phase", ""))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the Deployment watch did not stop"

    def first(self, component: str, tag: str) -> int:
        return next(i for i, (c, t, _r) in enumerate(self.seen) if c == component and t == tag)


def _served_version(kubeconfig) -> str:
    client = tenant_client(kubeconfig)
    try:
        return retry(lambda: kubernetes.client.VersionApi(client).get_code().git_version)
    finally:
        client.close()


def _kept_config_map(kubeconfig, *, create: bool = False) -> dict:
    """The ConfigMap default/kept in the tenant (made first with CREATE): its data."""
    client = tenant_client(kubeconfig)
    try:
        core = kubernetes.client.CoreV1Api(client)
        if create:
            body = {"metadata": {"name": "kept"}, "data": {"a": "1"}}
            retry(lambda: core.create_namespaced_config_map("default", body))
        return retry(lambda: core.read_namespaced_config_map("kept", "default")).data
    finally:
        client.close()


def _generations(apps: kubernetes.client.AppsV1Api) -> dict[str, int]:
    """The generation of every Deployment and StatefulSet of the tenant: what a write bumps."""
    selector = f"{TENANT_LABEL}={TENANT}"
    workloads = [
        *apps.list_namespaced_deployment(NAMESPACE, label_selector=selector).items,
        *apps.list_namespaced_stateful_set(NAMESPACE, label_selector=selector).items,
    ]
    return {w.metadata.labels["app.kubernetes.io/name"]: w.metadata.generation for w in workloads}


def test_a_tenant_upgrades_one_minor_apiserver_first_and_keeps_its_data(host, run_playbook):
    assert OLD.split(".")[:2] != NEW.split(".")[:2], "the two builds must be different minors"
    host["cluster"].load_images(previous_control_plane_archives())
    apps = kubernetes.client.AppsV1Api(host["core"].api_client)
    kubeconfig = host["folder"] / f"{TENANT}.kubeconfig"
    task = dict(name=TENANT, namespace=NAMESPACE, wait=True, wait_timeout=300)
    old_spec, new_spec = ({"exposure": {"type": "NodePort"}, "version": v} for v in (OLD, NEW))
    etcd_volume(host, TENANT)
    try:
        made = apply(run_playbook, host, spec=old_spec, admin_kubeconfig_path=str(kubeconfig), **task)
        assert made.get("failed") is not True, made.get("msg")
        assert (made["phase"], made["tenant_control_plane"]["status"]["version"]) == ("Ready", OLD)
        assert _served_version(kubeconfig) == OLD
        assert _kept_config_map(kubeconfig, create=True) == {"a": "1"}
        before = _generations(apps)

        log = DeploymentLog(apps)
        started = time.monotonic()
        try:
            upgraded = apply(run_playbook, host, spec=new_spec, **task)
        finally:
            log.stop()
        print(f"\nupgrade {OLD} -> {NEW}: Ready in {time.monotonic() - started:.1f} s")
        assert upgraded.get("failed") is not True, upgraded.get("msg")
        assert upgraded["changed"] is True
        assert (upgraded["phase"], upgraded["tenant_control_plane"]["status"]["version"]) == ("Ready", NEW)
        assert _served_version(kubeconfig) == NEW

        # Version skew: each controller's new template appears only after the kube-apiserver
        # had rolled out the new version completely.
        apiserver_rolled = next(
            i for i, (c, t, r) in enumerate(log.seen) if c == "kube-apiserver" and t == NEW and r
        )
        for component in CONTROLLERS:
            assert log.first(component, NEW) > apiserver_rolled, log.seen
        # While the run waited for the apiserver, before it wrote the controllers, the tenant
        # said it was upgrading (not the Ready of the old version).
        waited = log.phases[: min(log.first(c, NEW) for c in CONTROLLERS)]
        assert "Upgrading" in waited, (log.phases, log.seen)
        # The datastore was not touched, and the tenant's objects are all there.
        assert _generations(apps)["etcd"] == before["etcd"]
        assert _kept_config_map(kubeconfig) == {"a": "1"}

        again = apply(run_playbook, host, spec=new_spec, **task)
        assert again["changed"] is False, again

        # The way back is refused before anything is written.
        upgraded_generations = _generations(apps)
        back = apply(run_playbook, host, spec=old_spec, **task)
        assert back.get("failed") is True
        assert "spec.version" in back["msg"] and "downgrade" in back["msg"], back["msg"]
        assert _generations(apps) == upgraded_generations
    finally:
        apply(run_playbook, host, name=TENANT, namespace=NAMESPACE, state="absent", wait_timeout=180)

"""Hosted nodes given bad input, for real (issue #9): a machine whose bootstrap Secret is missing
or whose image is not on the host node ends Failed with a condition that names the cause, and
comes back once the cause is fixed; a tenant control plane that cannot take nodes fails the run
naming the tenant and the fix, with nothing half-made in the host cluster; a bootstrap token that
expired is replaced, never reused.

The host cluster is the rig's real node (real kubelet + containerd); the tenant a rig control
plane where its Pods reach it (fixtures in conftest.py)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
from collections.abc import Iterator

import kubernetes
import pytest
import yaml
from hosted import (
    BUSYBOX,
    GROUP,
    NODE_IMAGE,
    VERSION,
    Flow,
    cluster_spec,
    kubectl,
    node_ctr,
    ready,
    tenant_nodes,
)
from riglib.controlplane import ControlPlane

from ansible_collections.rhizeption.core.plugins.module_utils import hnmachine  # isort: skip
from ansible_collections.rhizeption.core.plugins.module_utils.hosted_node import TOKEN_CLUSTER_LABEL  # isort: skip
from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube  # isort: skip


@pytest.fixture
def clusters(flow: Flow) -> Iterator[list[str]]:
    """Names of the HnClusters a test makes: deleted after it, whatever happened (without
    draining when the tenant cannot be used)."""
    names: list[str] = []
    yield names
    for name in names:
        if flow.hncluster(name=name, state="absent").get("failed"):
            gone = flow.hncluster(name=name, state="absent", tenant_kubeconfig=None)
            assert not gone.get("failed"), gone.get("msg")


def conditions(status: dict) -> dict:
    return {c["type"]: c for c in status.get("conditions") or []}


def wait_node_container(flow: Flow, pod: str, reason: str, timeout: int = 120) -> dict:
    """The node container's state once it waits with REASON (the host's kubelet says so)."""

    def waiting(p) -> str | None:
        for cs in p.status.container_statuses or []:
            if cs.name == "node" and cs.state.waiting:
                return cs.state.waiting.reason
        return None

    if waiting(flow.hcore.read_namespaced_pod(pod, flow.namespace)) == reason:
        return {}
    seen = []
    for event in kubernetes.watch.Watch().stream(
        flow.hcore.list_namespaced_pod,
        flow.namespace,
        field_selector=f"metadata.name={pod}",
        timeout_seconds=timeout,
    ):
        seen.append(waiting(event["object"]))
        if seen[-1] == reason:
            return event["object"]
    pytest.fail(f"the node container of {pod} never waited with {reason} in {timeout} s: {seen}")


def runs_a_pod(flow: Flow, node: str) -> None:
    """A tenant Pod bound to NODE runs to completion: the node works, not only says Ready."""
    name = f"probe-{node}-{os.urandom(2).hex()}"
    container = {"name": "c", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["true"]}
    flow.tcore.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [container],
            },
        },
    )
    try:
        phase = None
        for event in kubernetes.watch.Watch().stream(
            flow.tcore.list_namespaced_pod,
            "default",
            field_selector=f"metadata.name={name}",
            timeout_seconds=120,
        ):
            phase = event["object"].status.phase
            if phase in ("Succeeded", "Failed"):
                break
        assert phase == "Succeeded", f"a Pod on {node} ended {phase}"
    finally:
        flow.tcore.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def nothing_of(flow: Flow, name: str) -> list[str]:
    """What exists in the host namespace of the HnCluster NAME: should be nothing."""
    ns = flow.namespace
    left = []
    try:
        flow.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "hnclusters", name)
        left.append(f"HnCluster {name}")
    except kubernetes.client.ApiException as e:
        assert e.status == 404
    selector = f"hn.rhizeption.io/cluster={name}"
    machines = flow.custom.list_namespaced_custom_object(
        GROUP, VERSION, ns, "hnmachines", label_selector=selector
    )
    left += [f"HnMachine {m['metadata']['name']}" for m in machines["items"]]
    left += [
        f"Pod {p.metadata.name}" for p in flow.hcore.list_namespaced_pod(ns, label_selector=selector).items
    ]
    left += [
        f"Secret {s.metadata.name}"
        for s in flow.hcore.list_namespaced_secret(ns, label_selector=selector).items
    ]
    return left


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- (c) a tenant that cannot take nodes -------------------------------------------------------
def test_an_unreachable_tenant_fails_naming_it_and_the_fix_and_writes_nothing(flow: Flow, tmp_path) -> None:
    config = yaml.safe_load(flow.tenant.kubeconfig.read_text())
    dead = f"https://{flow.host_cluster.node.gateway}:{free_port()}"  # nothing listens there
    config["clusters"][0]["cluster"]["server"] = dead
    kubeconfig = tmp_path / "tenant-down.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))

    result = flow.hncluster(
        name="down", spec=cluster_spec(flow.host_cluster, flow.tenant, 1), tenant_kubeconfig=str(kubeconfig)
    )
    assert result.get("failed")
    msg = result["msg"]
    assert f"tenant_kubeconfig: the tenant control plane at {dead} cannot be reached" in msg, msg
    assert "Connection refused" in msg and "start or repair the tenant control plane" in msg, msg
    assert "Traceback" not in msg and "MaxRetryError" not in msg, msg
    assert nothing_of(flow, "down") == []


def test_a_tenant_not_ready_yet_fails_naming_it_and_writes_nothing(flow: Flow, tmp_path) -> None:
    """A tenant whose API server answers but whose controller-manager does not run yet (a
    TenantControlPlane not Ready): its nodes could not get their certificates approved."""
    half = ControlPlane(
        tmp_path / "half",
        ("etcd", "kube-apiserver"),
        address=flow.host_cluster.node.gateway,
        die_with_parent=True,
    )
    half.up()
    server = half.server
    try:
        result = flow.hncluster(
            name="early",
            spec=cluster_spec(flow.host_cluster, half, 1),
            tenant_kubeconfig=str(half.kubeconfig),
        )
    finally:
        half.down()
    assert result.get("failed")
    msg = result["msg"]
    assert f"the tenant control plane at {server} has no kube-system/kube-root-ca.crt" in msg, msg
    assert "controller-manager" in msg and "nothing was written to the host cluster" in msg, msg
    assert nothing_of(flow, "early") == []


# -- (b) an image the host node does not have --------------------------------------------------
def test_a_missing_image_fails_naming_it_and_the_node_joins_once_it_is_there(flow: Flow, clusters) -> None:
    clusters.append("img")
    missing = f"localhost/rhizeption/node:missing-{os.urandom(3).hex()}"
    spec = cluster_spec(flow.host_cluster, flow.tenant, 1, image=missing)

    first = flow.hncluster(name="img", spec=spec)
    assert first.get("failed")
    assert "img-0 (ErrImageNeverPull: " in first["msg"] and missing in first["msg"], first["msg"]
    status = flow.machine("img-0")["status"]
    assert (status["phase"], status["failureReason"]) == ("Failed", "ErrImageNeverPull")
    assert missing in status["failureMessage"]
    provisioned = conditions(status)["ContainerProvisioned"]
    assert (provisioned["status"], provisioned["reason"]) == ("False", "ErrImageNeverPull")
    assert missing in provisioned["message"]
    cluster = flow.custom.get_namespaced_custom_object(GROUP, VERSION, flow.namespace, "hnclusters", "img")
    machines_ready = conditions(cluster["status"])["MachinesReady"]
    assert cluster["status"]["phase"] == "Failed" and "failed: img-0" in machines_ready["message"]

    # The fix: the image is on the host node now. The same Pod starts on the kubelet's next
    # try and the node joins by itself, before any run; the next run writes what it finds.
    tagged = node_ctr(flow, "images", "tag", NODE_IMAGE, missing)
    assert tagged.returncode == 0, tagged.stderr
    try:
        for event in kubernetes.watch.Watch().stream(flow.tcore.list_node, timeout_seconds=180):
            if event["object"].metadata.name == "img-0" and ready(event["object"]):
                break
        assert ready(tenant_nodes(flow.tcore)["img-0"]), "img-0 did not join by itself"
        assert flow.machine("img-0")["status"]["phase"] == "Failed"  # no run yet: the last view
        again = flow.hncluster(name="img", spec=spec)
        assert not again.get("failed"), again.get("msg")
        status = flow.machine("img-0")["status"]
        assert status["phase"] == "Ready" and "failureReason" not in status
        assert conditions(status)["ContainerProvisioned"]["status"] == "True"
        assert ready(tenant_nodes(flow.tcore)["img-0"])
        runs_a_pod(flow, "img-0")
    finally:
        node_ctr(flow, "images", "rm", missing)


# -- (a) a bootstrap Secret that is gone ---------------------------------------------------------
def test_a_missing_bootstrap_secret_is_named_and_the_next_run_brings_the_node_back(
    flow: Flow, clusters
) -> None:
    clusters.append("sec")
    ns = flow.namespace
    spec = cluster_spec(flow.host_cluster, flow.tenant, 1)
    first = flow.hncluster(name="sec", spec=spec)
    assert not first.get("failed"), first.get("msg")
    old_uid = flow.hcore.read_namespaced_pod("sec-0", ns).metadata.uid

    # Someone deletes the Secret; the running node does not notice until its container starts
    # again (a crash, a host reboot): here its entrypoint is told to stop.
    flow.hcore.delete_namespaced_secret("sec-0-bootstrap", ns)
    # (The exec session may end with the container: its exit code says nothing.)
    subprocess.run(
        [
            *kubectl(flow.host_cluster.kubeconfig),
            "-n",
            ns,
            "exec",
            "sec-0",
            "-c",
            "node",
            "--",
            "sh",
            "-c",
            "kill 1",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    wait_node_container(flow, "sec-0", "CreateContainerConfigError")
    # The status every module run writes (the core a controller would call too), from the Pod now.
    status = hnmachine.refresh_status(Kube(flow.hcore.api_client), flow.machine("sec-0"))["status"]
    assert (status["phase"], status["failureReason"]) == ("Failed", "CreateContainerConfigError")
    assert 'secret "sec-0-bootstrap" not found' in status["failureMessage"]
    provisioned = conditions(status)["ContainerProvisioned"]
    assert (provisioned["status"], provisioned["reason"]) == ("False", "CreateContainerConfigError")
    assert "sec-0-bootstrap" in provisioned["message"]

    # The fix is the next run: it writes the Secret again and, the node container being down,
    # gives the machine a new Pod rather than wait for the kubelet's crash back-off.
    again = flow.hncluster(name="sec", spec=spec)
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is True
    assert flow.hcore.read_namespaced_secret("sec-0-bootstrap", ns).data["value"]
    assert flow.hcore.read_namespaced_pod("sec-0", ns).metadata.uid != old_uid
    status = flow.machine("sec-0")["status"]
    assert status["phase"] == "Ready" and "failureReason" not in status
    assert ready(tenant_nodes(flow.tcore)["sec-0"])
    runs_a_pod(flow, "sec-0")


# -- (d) a bootstrap token that expired --------------------------------------------------------
def token_secrets(flow: Flow, cluster: str) -> dict[str, str]:
    """The tenant's bootstrap tokens of the HnCluster: {Secret name: token id}."""
    found = flow.tcore.list_namespaced_secret(
        "kube-system", label_selector=f"{TOKEN_CLUSTER_LABEL}={flow.namespace}.{cluster}"
    ).items
    return {s.metadata.name: base64.b64decode(s.data["token-id"]).decode() for s in found}


def machine_token(flow: Flow, machine: str) -> str:
    secret = flow.hcore.read_namespaced_secret(f"{machine}-bootstrap", flow.namespace)
    files = json.loads(base64.b64decode(secret.data["value"]))["files"]
    return json.loads(files["bootstrap-kubelet.kubeconfig"])["users"][0]["user"]["token"]


def test_an_expired_bootstrap_token_is_replaced_and_never_reused(flow: Flow, clusters) -> None:
    clusters.append("tok")
    first = flow.hncluster(name="tok", spec=cluster_spec(flow.host_cluster, flow.tenant, 1))
    assert not first.get("failed"), first.get("msg")
    ((old_secret, old_id),) = token_secrets(flow, "tok").items()
    assert machine_token(flow, "tok-0").startswith(f"{old_id}.")

    flow.tcore.patch_namespaced_secret(
        old_secret, "kube-system", {"stringData": {"expiration": "2020-01-01T00:00:00Z"}}
    )
    # One more machine: it must join with a token that works.
    again = flow.hncluster(name="tok", spec=cluster_spec(flow.host_cluster, flow.tenant, 2))
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is True and again["created"] == ["tok-1"]
    ((new_secret, new_id),) = token_secrets(flow, "tok").items()
    assert new_id != old_id and new_secret != old_secret
    for machine in ("tok-0", "tok-1"):
        token = machine_token(flow, machine)
        assert token.startswith(f"{new_id}.") and old_id not in token
    nodes = tenant_nodes(flow.tcore)
    assert ready(nodes["tok-0"]) and ready(nodes["tok-1"])
    runs_a_pod(flow, "tok-1")

"""HnMachine render and status derivation: pure functions, no cluster."""

from __future__ import annotations

import copy

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import hnmachine
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import (
    CLUSTER_LABEL,
    MACHINE_FINALIZER,
    MACHINE_LABEL,
)

NOW = "2026-11-23T10:00:00Z"
LATER = "2026-11-23T10:05:00Z"


def cluster(**template):
    return {
        "apiVersion": "hn.rhizeption.io/v1alpha1",
        "kind": "HnCluster",
        "metadata": {"name": "blue", "namespace": "tenants", "uid": "cluster-uid"},
        "spec": {
            "replicas": 2,
            "controlPlaneEndpoint": {"host": "blue-api.tenants.svc", "port": 6443},
            "network": {
                "podCIDR": "10.244.0.0/16",
                "serviceCIDR": "10.96.0.0/16",
                "serviceDomain": "cluster.local",
            },
            "machineTemplate": {
                "image": "localhost/rhizeption/hosted-node:v1.34.4",
                "nodeLabels": {"tier": "edge", "zone": "a"},
                "nodeSelector": {"type": "kwok"},
                **template,
            },
        },
    }


def machine(name="blue-0", template=None, **meta):
    m = hnmachine.render_machine(name, "tenants", cluster(), template=template)
    m["metadata"].update({"uid": f"{name}-uid", "generation": 1, **meta})
    return m


def pod(
    phase="Pending", scheduled=None, ready=None, waiting=None, terminated=None, ip=None, node=None, **meta
):
    conditions = []
    if scheduled is not None:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "True" if scheduled else "False",
                "reason": None if scheduled else "Unschedulable",
                "message": None if scheduled else "0/3 nodes are available",
            }
        )
    if ready is not None:
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})
    statuses = []
    if waiting or terminated:
        state = {"waiting": waiting} if waiting else {"terminated": terminated}
        statuses.append({"name": "node", "state": state})
    status = {"phase": phase, "conditions": conditions, "containerStatuses": statuses}
    if ip:
        status.update(podIP=ip, hostIP="192.0.2.10")
    return {
        "metadata": {"name": "blue-0", "namespace": "tenants", **meta},
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }


# -- render ------------------------------------------------------------------------------
def test_machine_carries_cluster_label_finalizer_and_owner():
    m = hnmachine.render_machine(
        "blue-0", "tenants", cluster(), labels={"team": "a"}, provider_id="hn://tenants/blue-0"
    )
    assert m["spec"] == {"clusterName": "blue", "providerID": "hn://tenants/blue-0"}
    assert m["metadata"]["labels"][CLUSTER_LABEL] == "blue"
    assert m["metadata"]["labels"]["team"] == "a"
    assert m["metadata"]["finalizers"] == [MACHINE_FINALIZER]
    (owner,) = m["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "HnCluster",
        "blue",
        "cluster-uid",
        True,
    )


def test_machine_template_merges_maps_and_replaces_the_rest():
    m = machine(
        template={
            "image": "other:1",
            "nodeLabels": {"zone": "b", "gpu": "yes"},
            "tolerations": [{"operator": "Exists"}],
        }
    )
    t = hnmachine.effective_template(cluster(), m)
    assert t["image"] == "other:1"
    assert t["nodeLabels"] == {"tier": "edge", "zone": "b", "gpu": "yes"}
    assert t["nodeSelector"] == {"type": "kwok"}
    assert t["tolerations"] == [{"operator": "Exists"}]


def test_effective_template_does_not_change_the_cluster():
    c = cluster()
    before = copy.deepcopy(c)
    hnmachine.effective_template(c, machine(template={"nodeLabels": {"zone": "b"}}))
    assert c == before


def test_pod_is_privileged_owned_labelled_and_keeps_node_state_in_its_own_volumes():
    m = machine(
        template={"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}, "imagePullPolicy": "Never"}
    )
    p = hnmachine.render_pod(m, cluster())
    assert p["metadata"]["name"] == "blue-0" and p["metadata"]["namespace"] == "tenants"
    labels = p["metadata"]["labels"]
    assert labels[CLUSTER_LABEL] == "blue" and labels[MACHINE_LABEL] == "blue-0"
    (owner,) = p["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["blockOwnerDeletion"]) == ("HnMachine", "blue-0-uid", True)
    spec = p["spec"]
    assert spec["hostname"] == "blue-0"
    assert spec["automountServiceAccountToken"] is False
    assert spec["nodeSelector"] == {"type": "kwok"}
    (c,) = spec["containers"]
    assert c["name"] == hnmachine.NODE_CONTAINER
    assert c["securityContext"] == {"privileged": True}
    assert c["imagePullPolicy"] == "Never"
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}
    mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in ("/var/lib/containerd", "/var/lib/kubelet", "/run"):
        assert "emptyDir" in volumes[mounts[path]], path
    assert volumes[mounts["/sys/fs/cgroup"]]["hostPath"]["path"] == "/sys/fs/cgroup"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NODE_NAME"] == "blue-0"
    assert env["HN_CONTROL_PLANE_ENDPOINT"] == "blue-api.tenants.svc:6443"
    assert env["HN_NODE_LABELS"] == "tier=edge,zone=a"
    assert env["HN_POD_CIDR"] == "10.244.0.0/16"


def test_pod_reads_its_bootstrap_secret_and_is_ready_only_after_the_sentinel():
    m = machine()
    m["spec"]["bootstrap"] = {"dataSecretName": "blue-0-bootstrap"}
    (c,) = hnmachine.render_pod(m, cluster())["spec"]["containers"]
    (data,) = [e for e in c["env"] if e["name"] == "BOOTSTRAP_DATA"]
    assert data["valueFrom"] == {"secretKeyRef": {"name": "blue-0-bootstrap", "key": "value"}}
    assert c["readinessProbe"]["exec"]["command"] == [
        "test",
        "-f",
        "/run/cluster-api/bootstrap-success.complete",
    ]
    m["spec"]["bootstrapCheckSpec"] = {"checkStrategy": "none"}
    (c,) = hnmachine.render_pod(m, cluster())["spec"]["containers"]
    assert "readinessProbe" not in c


def test_pod_tells_the_node_its_snapshotter_and_leaves_the_choice_to_it_otherwise():
    def snapshotter(c):
        env = hnmachine.render_pod(machine(), c)["spec"]["containers"][0]["env"]
        return {e["name"]: e.get("value") for e in env}["HN_SNAPSHOTTER"]

    assert snapshotter(cluster(snapshotter="native")) == "native"
    assert snapshotter(cluster()) == ""


def test_pod_leaves_out_what_the_template_does_not_set():
    p = hnmachine.render_pod(machine(), cluster())
    (c,) = p["spec"]["containers"]
    assert "resources" not in c and "imagePullPolicy" not in c
    assert "readinessProbe" not in c  # no bootstrap data: nothing to wait for
    assert "BOOTSTRAP_DATA" not in {e["name"] for e in c["env"]}
    assert "tolerations" not in p["spec"]
    assert "affinity" not in p["spec"]  # no promoted nodes: any node the selector allows


def test_pod_of_a_tenant_with_promoted_nodes_runs_only_on_them():
    p = hnmachine.render_pod(machine(), cluster(), ["host-2", "host-1"])
    terms = p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["host-1", "host-2"]}]}
        ]
    }
    assert p["spec"]["nodeSelector"] == {"type": "kwok"}  # the template's selector still applies


class _Tenants:
    """Kube.get over a few TenantControlPlanes, by path."""

    def __init__(self, **by_path):
        self.by_path, self.asked = by_path, []

    def get(self, path):
        self.asked.append(path)
        return self.by_path.get(path)


def test_promoted_nodes_come_from_the_tenant_the_cluster_names():
    tcp_path = "/apis/hn.rhizeption.io/v1alpha1/namespaces/{}/tenantcontrolplanes/{}"
    kube = _Tenants(**{tcp_path.format("tenants", "blue"): {"spec": {"promoteResources": {"nodes": ["h1"]}}}})
    c = cluster()
    assert hnmachine.promoted_nodes(kube, c) == []  # no controlPlaneRef: nothing asked
    assert kube.asked == []
    c["spec"]["controlPlaneRef"] = {"name": "blue"}
    assert hnmachine.promoted_nodes(kube, c) == ["h1"]
    c["spec"]["controlPlaneRef"] = {"name": "blue", "namespace": "elsewhere"}
    assert hnmachine.promoted_nodes(kube, c) == []  # no such tenant there
    assert kube.asked[-1] == tcp_path.format("elsewhere", "blue")


# -- status ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("the_pod", "phase", "ready"),
    [
        (None, "Pending", False),
        (pod("Pending", scheduled=False), "Provisioning", False),
        (pod("Pending", scheduled=True, waiting={"reason": "ContainerCreating"}), "Provisioning", False),
        (pod("Pending", scheduled=True, waiting={"reason": "ImagePullBackOff"}), "Provisioning", False),
        (pod("Running", scheduled=True, ready=False, ip="10.0.0.5"), "Running", False),
        (pod("Running", scheduled=True, ready=True, ip="10.0.0.5", node="host-1"), "Running", True),
        (pod("Failed"), "Failed", False),
        (
            pod(
                "Pending",
                scheduled=True,
                waiting={"reason": "ErrImageNeverPull", "message": "image not present"},
            ),
            "Failed",
            False,
        ),
    ],
)
def test_phase_follows_the_pod(the_pod, phase, ready):
    status = hnmachine.derive_status(machine(), the_pod, now=NOW)
    assert (status["phase"], status["ready"]) == (phase, ready)
    if phase == "Failed":
        assert status["failureReason"] and status["failureMessage"]
    else:
        assert "failureReason" not in status


def test_running_pod_reports_its_addresses_and_host():
    status = hnmachine.derive_status(
        machine(), pod("Running", scheduled=True, ready=True, ip="10.0.0.5", node="host-1"), now=NOW
    )
    assert status["podName"] == "blue-0"
    assert status["podIP"] == "10.0.0.5"
    assert status["hostNodeName"] == "host-1"
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "10.0.0.5"},
        {"type": "Hostname", "address": "host-1"},  # where the machine runs (Cluster API)
    ]
    assert "nodeName" not in status  # the tenant Node is not known yet


def test_ready_needs_the_tenant_node_ready():
    running = pod("Running", scheduled=True, ready=True, ip="10.0.0.5")
    node = {"metadata": {"name": "blue-0"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    status = hnmachine.derive_status(machine(), running, node=node, now=NOW)
    assert (status["phase"], status["nodeName"]) == ("Ready", "blue-0")
    node["status"]["conditions"][0]["status"] = "False"
    assert hnmachine.derive_status(machine(), running, node=node, now=NOW)["phase"] == "Running"


def test_a_node_ready_from_before_its_pod_was_made_again_is_not_ready_yet():
    """A node Pod made again keeps its Node name: until the new kubelet reports, the Node's
    Ready is the old kubelet's, from before the new Pod."""
    running = pod("Running", scheduled=True, ready=True, ip="10.0.0.5")
    running["metadata"]["creationTimestamp"] = "2026-11-24T03:00:10Z"
    ready = {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-11-24T03:00:02Z"}
    node = {"metadata": {"name": "blue-0"}, "status": {"conditions": [ready]}}
    assert hnmachine.derive_status(machine(), running, node=node, now=NOW)["phase"] == "Running"
    ready["lastHeartbeatTime"] = "2026-11-24T03:00:14Z"  # the new kubelet's first status
    assert hnmachine.derive_status(machine(), running, node=node, now=NOW)["phase"] == "Ready"


def test_deleting_wins_over_everything():
    m = machine(deletionTimestamp=NOW)
    assert hnmachine.derive_status(m, pod("Running", ready=True), now=NOW)["phase"] == "Deleting"


def test_a_pod_being_deleted_under_a_live_machine_is_a_failure():
    status = hnmachine.derive_status(machine(), pod("Running", deletionTimestamp=NOW), now=NOW)
    assert (status["phase"], status["failureReason"]) == ("Failed", "PodDeleted")


def test_condition_transition_time_moves_only_with_its_status():
    m = machine()
    first = hnmachine.derive_status(m, pod("Pending", scheduled=True), now=NOW)
    m["status"] = first
    same = hnmachine.derive_status(m, pod("Pending", scheduled=True), now=LATER)
    assert same == first  # nothing changed: no write needed
    m["status"] = same
    moved = hnmachine.derive_status(m, pod("Running", scheduled=True, ready=True), now=LATER)
    by_type = {c["type"]: c for c in moved["conditions"]}
    assert by_type["PodScheduled"]["lastTransitionTime"] == NOW
    assert by_type["PodReady"]["lastTransitionTime"] == LATER


@pytest.mark.parametrize(
    ("phase", "wanted", "ok"),
    [
        ("Running", "Running", True),
        ("Ready", "Running", True),
        ("Provisioning", "Running", False),
        ("Running", "Provisioning", True),
        ("Failed", "Running", False),
        ("Deleting", "Provisioning", False),
    ],
)
def test_reached(phase, wanted, ok):
    assert hnmachine.reached(phase, wanted) is ok


# -- waits: a machine blocked on a cause someone may just have fixed ---------------------------
NEVER_PULL = {"reason": "ErrImageNeverPull", "message": 'Container image "x" is not present'}


class ScriptedPods:
    """kube.wait and kube.apply for the wait functions: each wait sees the next list of Pod
    snapshots (one dict of Pods by name per event) and says which grace it was asked about."""

    def __init__(self, *waits):
        self.waits = list(waits)
        self.timeouts = []

    def wait(self, _path, done, timeout, *, on_event=None, **_selectors):
        self.timeouts.append(timeout)
        snapshots = self.waits.pop(0) if self.waits else [{}]
        for pods in snapshots:
            if on_event:
                on_event(pods)
            if done(pods):
                return True, pods
        return False, snapshots[-1]

    def apply(self, _path, body, **_kwargs):
        return {**body, "metadata": {**body["metadata"], "namespace": "tenants"}}


def with_status(m, the_pod):
    return {**m, "status": hnmachine.derive_status(m, the_pod, now=NOW)}


def test_a_missing_image_or_secret_is_a_failure_that_names_it_and_clears_with_the_pod():
    blocked_pod = pod("Pending", scheduled=True, waiting=NEVER_PULL)
    status = hnmachine.derive_status(machine(), blocked_pod, now=NOW)
    assert (status["phase"], status["failureReason"]) == ("Failed", "ErrImageNeverPull")
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["ContainerProvisioned"]["reason"] == "ErrImageNeverPull"
    assert "is not present" in by_type["ContainerProvisioned"]["message"]
    assert hnmachine.blocked({"status": status})
    # The same machine once its Pod runs: nothing of the failure is left.
    m = {**machine(), "status": status}
    later = hnmachine.derive_status(m, pod("Running", scheduled=True, ready=True), now=LATER)
    assert later["phase"] == "Running" and "failureReason" not in later
    assert not hnmachine.blocked({"status": later})


def test_a_secret_the_kubelet_has_not_synced_yet_is_a_wait_not_a_failure():
    """Seen on a busy host right after the bootstrap Secret was written: the kubelet's next
    try starts the container, so the machine is Provisioning, not Failed."""
    unsynced = {
        "reason": "CreateContainerConfigError",
        "message": "failed to sync secret cache: timed out waiting for the condition",
    }
    status = hnmachine.derive_status(machine(), pod("Pending", scheduled=True, waiting=unsynced), now=NOW)
    assert status["phase"] == "Provisioning" and "failureReason" not in status
    missing = {**unsynced, "message": 'secret "blue-0-bootstrap" not found'}
    status = hnmachine.derive_status(machine(), pod("Pending", scheduled=True, waiting=missing), now=NOW)
    assert (status["phase"], status["failureReason"]) == ("Failed", "CreateContainerConfigError")


def test_a_pod_that_ended_is_failed_but_not_blocked():
    assert not hnmachine.blocked({"status": hnmachine.derive_status(machine(), pod("Failed"), now=NOW)})


def test_a_wait_gives_a_machine_blocked_before_it_the_kubelets_retry(monkeypatch):
    """The run that restores the Secret (or the image) must not fail on what the Pod said a
    moment before: the kubelet starts the container on its next try."""
    monkeypatch.setattr(hnmachine, "BLOCKED_GRACE", 7.0)
    m = with_status(machine(), pod("Pending", scheduled=True, waiting=NEVER_PULL))
    kube = ScriptedPods(
        [
            {"blue-0": pod("Pending", scheduled=True, waiting=NEVER_PULL)},
            {"blue-0": pod("Running", ready=True)},
        ]
    )
    after = hnmachine.wait_for_phase(kube, m, "Running", timeout=300)
    assert after["status"]["phase"] == "Running"
    assert kube.timeouts == [7.0]  # the grace, and no second wait


def test_a_machine_still_blocked_after_the_grace_fails_naming_the_cause(monkeypatch):
    monkeypatch.setattr(hnmachine, "BLOCKED_GRACE", 7.0)
    m = with_status(machine(), pod("Pending", scheduled=True, waiting=NEVER_PULL))
    still = [{"blue-0": pod("Pending", scheduled=True, waiting=NEVER_PULL)}]
    kube = ScriptedPods(still, still)
    with pytest.raises(hnmachine.MachineError, match='ErrImageNeverPull: Container image "x" is not present'):
        hnmachine.wait_for_phase(kube, m, "Running", timeout=300)
    assert kube.timeouts[0] == 7.0 and len(kube.timeouts) == 2


def test_a_machine_that_becomes_blocked_during_the_wait_fails_at_once():
    m = with_status(machine(), pod("Pending", scheduled=True))
    kube = ScriptedPods([{"blue-0": pod("Pending", scheduled=True, waiting=NEVER_PULL)}])
    with pytest.raises(hnmachine.MachineError, match="ErrImageNeverPull"):
        hnmachine.wait_for_phase(kube, m, "Running", timeout=300)
    assert kube.timeouts == [pytest.approx(300)]


class PodStore:
    """kube.get/delete/request/wait on one node Pod, recording what was done to it."""

    def __init__(self, the_pod):
        self.pod = the_pod
        self.done = []

    def get(self, _path):
        return self.pod

    def delete(self, _path, uid=None, **_kwargs):
        self.done.append(("delete", uid))
        self.pod = None

    def wait(self, _path, done, _timeout, **_kwargs):
        return done({}), {}

    def request(self, method, _path, body=None, **_kwargs):
        self.done.append((method, body["metadata"]["name"]))
        self.pod = body
        return body


def owned_pod(m, **kwargs):
    p = pod(**kwargs)
    p["metadata"]["uid"] = "pod-uid"
    p["metadata"]["ownerReferences"] = [{"uid": m["metadata"]["uid"]}]
    return p


def test_a_stopped_node_pod_is_replaced_only_when_asked():
    m = machine()
    config_error = {"reason": "CreateContainerConfigError", "message": 'secret "blue-0-bootstrap" not found'}
    kube = PodStore(owned_pod(m, phase="Running", waiting=config_error))
    _unused, created = hnmachine.ensure_pod(kube, m, cluster(), 30)
    assert (created, kube.done) == (False, [])
    _unused, created = hnmachine.ensure_pod(kube, m, cluster(), 30, replace_stopped=True)
    assert created and kube.done == [("delete", "pod-uid"), ("POST", "blue-0")]


def test_a_running_node_pod_is_never_replaced():
    m = machine()
    running = owned_pod(m, phase="Running")
    running["status"]["containerStatuses"] = [{"name": "node", "state": {"running": {}}}]
    kube = PodStore(running)
    assert hnmachine.ensure_pod(kube, m, cluster(), 30, replace_stopped=True) == (running, False)
    assert kube.done == []


def test_the_pod_carries_the_hash_of_its_spec_which_labels_do_not_change():
    def hash_of(m, c):
        return hnmachine.render_pod(m, c)["metadata"]["annotations"][hnmachine.POD_TEMPLATE_HASH]

    base = hash_of(machine(), cluster())
    assert base == hash_of(machine(), cluster())
    assert base == hash_of(machine(), cluster(podLabels={"team": "a"}))
    assert base != hash_of(machine(), cluster(image="localhost/rhizeption/hosted-node:v1.34.5"))
    assert base != hash_of(machine(template={"nodeLabels": {"zone": "b"}}), cluster())


def live(p, **meta):
    """P as the API server keeps it: with defaults the template never set."""
    p = copy.deepcopy(p)
    p["spec"]["dnsPolicy"] = "ClusterFirst"
    p["metadata"].update({"uid": "pod-uid", **meta})
    return p


def test_drift_replaces_for_a_new_spec_and_patches_for_new_labels_only():
    now = hnmachine.render_pod(machine(), cluster())
    assert hnmachine.pod_drift(live(now), now) == ""  # defaults filled in by the server are no drift
    older = live(hnmachine.render_pod(machine(), cluster(image="localhost/rhizeption/node:old")))
    assert hnmachine.pod_drift(older, now) == "replace"
    relabelled = hnmachine.render_pod(machine(), cluster(podLabels={"team": "a"}))
    assert hnmachine.pod_drift(live(now), relabelled) == "patch"
    unhashed = live(now)
    del unhashed["metadata"]["annotations"]
    assert hnmachine.pod_drift(unhashed, now) == "patch"  # made before the hash: adopted, not rolled


class Rollout(PodStore):
    """PodStore that also records label patches and waits, for update_pod."""

    def request(self, method, path, body=None, **kwargs):
        if method == "PATCH":
            self.done.append(("PATCH", body["metadata"]["labels"].get("team")))
            return body
        return super().request(method, path, body=body, **kwargs)

    def list(self, _path, **_kwargs):
        return [], "1"  # no promoted nodes (the TenantControlPlane lookup)


def test_a_new_image_replaces_the_pod_draining_and_removing_its_node_first(monkeypatch):
    m = machine()
    kube = Rollout(live(hnmachine.render_pod(m, cluster(image="localhost/rhizeption/node:old"))))
    for step in ("drain", "delete_node", "wait_nodes_ready"):
        monkeypatch.setattr(
            hnmachine.hosted_node, step, lambda _t, name, *_a, step=step: kube.done.append((step, name))
        )
    drift, said = hnmachine.update_pod(kube, m, cluster(), kube.pod, 30, tenant=object())
    assert drift == "replace" and "image localhost/rhizeption/node:old -> " in said
    assert kube.done == [
        ("drain", "blue-0"),
        ("delete", "pod-uid"),
        ("delete_node", "blue-0"),
        ("POST", "blue-0"),
        ("wait_nodes_ready", ["blue-0"]),
    ]


def test_check_mode_says_what_would_be_done_and_does_nothing():
    m = machine()
    kube = Rollout(live(hnmachine.render_pod(m, cluster(image="localhost/rhizeption/node:old"))))
    drift, said = hnmachine.update_pod(kube, m, cluster(), kube.pod, 30, check_mode=True)
    assert (drift, kube.done) == ("replace", [])
    assert said.startswith("would replace the node Pod tenants/blue-0 (image ")
    kube = Rollout(live(hnmachine.render_pod(m, cluster())))
    assert hnmachine.update_pod(kube, m, cluster(podLabels={"team": "a"}), kube.pod, 30)[0] == "patch"
    assert kube.done == [("PATCH", "a")]


def test_applying_a_machine_hncluster_made_keeps_its_join_fields():
    """The hnmachine module does not know a machine's providerID and bootstrap Secret; with
    one field manager for both modules, leaving them out of the apply would remove them."""
    from ansible_collections.rhizeption.core.plugins.module_utils import hnmachine as hm

    cluster = {
        "metadata": {"name": "blue", "namespace": "ns", "uid": "u1"},
        "apiVersion": "x",
        "kind": "HnCluster",
    }
    before = hm.render_machine(
        "blue-0", "ns", cluster, provider_id="rhizeption://ns/blue-0", bootstrap_secret="blue-0-bootstrap"
    )
    applied = []

    class Kube:
        def get(self, path):
            return before if "hnmachines" in path else None

        def apply(self, path, body, **kw):
            applied.append(body)
            return body

    desired = hm.render_machine("blue-0", "ns", cluster, template={"image": "n:1"})
    hm.ensure_present(Kube(), desired, cluster, check_mode=True)
    (body,) = applied
    assert body["spec"]["providerID"] == "rhizeption://ns/blue-0"
    assert body["spec"]["bootstrap"] == {"dataSecretName": "blue-0-bootstrap"}
    assert body["spec"]["template"] == {"image": "n:1"}
    assert "providerID" not in desired["spec"]  # the caller's object is left as it was

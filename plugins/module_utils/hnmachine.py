# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""HnMachine: one hosted node, realised as a privileged Pod of the host cluster.

render_*   pure: spec in, Kubernetes objects out (unit-tested without a cluster);
status     pure: what exists (the Pod, later the tenant Node) in, HnMachine status out;
ensure_*   apply/wait: server-side apply, watches, status through the status subresource.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ansible_collections.rhizeption.core.plugins.module_utils import hosted_node
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import (
    API_VERSION,
    CLUSTER_LABEL,
    HNCLUSTER,
    HNMACHINE,
    MACHINE_FINALIZER,
    MACHINE_LABEL,
    MANAGED_BY,
    NODE_CONTAINER,
    TENANT_CONTROL_PLANE,
    apply_status,
    condition,
    meta,
    owner_reference,
    status_of,
)
from ansible_collections.rhizeption.core.plugins.module_utils.hosted_node import (
    BOOTSTRAP_KEY,
    BOOTSTRAP_SENTINEL,
)
from ansible_collections.rhizeption.core.plugins.module_utils.kube import POD, Kube, KubeError, Obj

# Maps merged key by key when a machine overrides its cluster's template; every other
# field of the machine's template replaces the cluster's.
MERGED_TEMPLATE_MAPS = ("nodeLabels", "podLabels", "nodeSelector")
# Container states that will not get better by waiting alone: the machine is Failed until
# someone fixes the cause (a missing image or Secret), then the host's kubelet starts it.
TERMINAL_WAITING_REASONS = ("ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError")
# The kubelet also says CreateContainerConfigError while the watch of a Secret it has just begun
# to read has not synced ("failed to sync secret cache: timed out waiting for the condition"),
# as on a busy host right after the bootstrap Secret is written: that passes by itself.
PASSING_CONFIG_ERRORS = ("failed to sync ",)
# The host's kubelet tries a container it could not create again every 10-15 s (its pod
# workers' back-off, kubelet.go backOffPeriod + jitter). A wait gives a machine that was already
# blocked when the wait began this long to show whether its cause was fixed just before, so the
# run that restores a Secret or an image does not fail on what the Pod said a moment earlier.
BLOCKED_GRACE = 20.0
# How far a machine has come; a wait for one phase is satisfied by any later one.
PROGRESS = {"Pending": 0, "Provisioning": 1, "Running": 2, "Ready": 3}
# The hash of a node Pod's rendered spec, kept on the Pod. The API server fills in defaults, so
# a live Pod cannot be compared with what was rendered for it; its hash can.
POD_TEMPLATE_HASH = "hn.rhizeption.io/pod-template-hash"


def promoted_nodes(kube: Kube, cluster: Obj) -> List[str]:
    """The host nodes handed to the cluster's tenant (spec.promoteResources.nodes of the
    TenantControlPlane its controlPlaneRef names), where its node Pods must run. Empty when
    no node was promoted or the tenant is not a TenantControlPlane of this host cluster."""
    ref = (cluster.get("spec") or {}).get("controlPlaneRef") or {}
    if not ref.get("name"):
        return []
    namespace = ref.get("namespace") or cluster["metadata"]["namespace"]
    tenant = kube.get(TENANT_CONTROL_PLANE.path(namespace, ref["name"])) or {}
    return list(((tenant.get("spec") or {}).get("promoteResources") or {}).get("nodes") or [])


class MachineError(Exception):
    """Bad input or a failed step, with the field path when there is one."""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- render --------------------------------------------------------------------------
def render_machine(
    name: str,
    namespace: str,
    cluster: Obj,
    *,
    template: Obj | None = None,
    labels: Dict[str, str] | None = None,
    provider_id: str | None = None,
    bootstrap_secret: str | None = None,
) -> Obj:
    """The HnMachine as this field manager wants it (server-side apply input)."""
    spec: Obj = {"clusterName": cluster["metadata"]["name"]}
    if template:
        spec["template"] = template
    if provider_id:
        spec["providerID"] = provider_id
    if bootstrap_secret:
        spec["bootstrap"] = {"dataSecretName": bootstrap_secret}
    return {
        "apiVersion": API_VERSION,
        "kind": "HnMachine",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**(labels or {}), **MANAGED_BY, CLUSTER_LABEL: cluster["metadata"]["name"]},
            "finalizers": [MACHINE_FINALIZER],
            # The cluster owns its machines: deleting it collects them (each still held
            # by its finalizer until its Pod is gone).
            "ownerReferences": [owner_reference(cluster, controller=True)],
        },
        "spec": spec,
    }


def effective_template(cluster: Obj, machine: Obj) -> Obj:
    """The cluster's machineTemplate with the machine's spec.template over it."""
    result = copy.deepcopy(cluster["spec"]["machineTemplate"])
    for key, value in ((machine.get("spec") or {}).get("template") or {}).items():
        if key in MERGED_TEMPLATE_MAPS:
            result[key] = {**(result.get(key) or {}), **value}
        else:
            result[key] = copy.deepcopy(value)
    return result


def render_pod(machine: Obj, cluster: Obj, promoted_nodes: Sequence[str] = ()) -> Obj:
    """The node Pod of MACHINE: a privileged container running containerd and a kubelet
    (the image's job), with the state a node keeps on fresh volumes of its own.
    PROMOTED_NODES (promoted_nodes()): the host nodes it may run on; none: any."""
    name = machine["metadata"]["name"]
    namespace = machine["metadata"]["namespace"]
    cluster_name = cluster["metadata"]["name"]
    template = effective_template(cluster, machine)
    cluster_spec = cluster["spec"]
    network = cluster_spec.get("network") or {}
    endpoint = cluster_spec.get("controlPlaneEndpoint") or {}

    env = [
        {"name": "HN_NODE_NAME", "value": name},
        {"name": "HN_CLUSTER", "value": cluster_name},
        {"name": "HN_POD_CIDR", "value": network.get("podCIDR", "")},
        {"name": "HN_SERVICE_CIDR", "value": network.get("serviceCIDR", "")},
        {"name": "HN_SERVICE_DOMAIN", "value": network.get("serviceDomain", "")},
        {"name": "HN_KUBELET_VERSION", "value": template.get("kubeletVersion", "")},
        {"name": "HN_SNAPSHOTTER", "value": template.get("snapshotter", "")},
        {
            "name": "HN_NODE_LABELS",
            "value": ",".join(f"{k}={v}" for k, v in sorted((template.get("nodeLabels") or {}).items())),
        },
        {
            "name": "HN_NODE_TAINTS",
            "value": ",".join(
                f"{t['key']}={t.get('value', '')}:{t['effect']}" for t in template.get("nodeTaints") or []
            ),
        },
    ]
    if endpoint:
        env.append({"name": "HN_CONTROL_PLANE_ENDPOINT", "value": f"{endpoint['host']}:{endpoint['port']}"})
    env.append({"name": "NODE_NAME", "value": name})
    machine_spec = machine.get("spec") or {}
    bootstrap_secret = (machine_spec.get("bootstrap") or {}).get("dataSecretName")
    if bootstrap_secret:
        # The Cluster API way: the node image reads its bootstrap data from this variable.
        env.append(
            {
                "name": "BOOTSTRAP_DATA",
                "valueFrom": {"secretKeyRef": {"name": bootstrap_secret, "key": BOOTSTRAP_KEY}},
            }
        )
    # A node's runtime and kubelet state lives in the Pod and goes with it (on volumes: overlayfs
    # cannot stack on the container's overlay root); /run and /tmp are tmpfs as on a real host.
    state_dirs = {
        "containerd": "/var/lib/containerd",
        "kubelet": "/var/lib/kubelet",
        "logs": "/var/log",
    }
    volumes: List[Obj] = [{"name": v, "emptyDir": {}} for v in state_dirs]
    volumes += [
        {"name": "run", "emptyDir": {"medium": "Memory"}},
        {"name": "tmp", "emptyDir": {"medium": "Memory"}},
        # The host's cgroup hierarchy, read-write: the only way the node's containerd can run
        # containers inside a container on these machines (MACHINE.md); its kubelet keeps to a
        # cgroupRoot of the machine's own (hosted_node.cgroup_root).
        {"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}},
    ]
    mounts: List[Obj] = [{"name": v, "mountPath": p} for v, p in state_dirs.items()]
    mounts += [
        {"name": "run", "mountPath": "/run"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cgroup", "mountPath": "/sys/fs/cgroup"},
    ]
    container: Obj = {
        "name": NODE_CONTAINER,
        "image": template["image"],
        "env": env,
        # containerd, runc and kubelet manage mounts, cgroups, namespaces and nftables.
        "securityContext": {"privileged": True},
        "volumeMounts": mounts,
    }
    check = (machine_spec.get("bootstrapCheckSpec") or {}).get("checkStrategy", "exec")
    if bootstrap_secret and check == "exec":
        container["readinessProbe"] = {
            "exec": {"command": ["test", "-f", BOOTSTRAP_SENTINEL]},
            "periodSeconds": 2,
            "failureThreshold": 1,
        }
    if template.get("imagePullPolicy"):
        container["imagePullPolicy"] = template["imagePullPolicy"]
    if template.get("resources"):
        container["resources"] = copy.deepcopy(template["resources"])

    spec: Obj = {
        "hostname": name,
        "containers": [container],
        "volumes": volumes,
        # A node is restarted in place, never rescheduled: the Pod is the machine.
        "restartPolicy": "Always",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 30,
    }
    for key in ("nodeSelector", "tolerations", "priorityClassName"):
        if template.get(key):
            spec[key] = copy.deepcopy(template[key])
    if promoted_nodes:
        # Required, not preferred: the tenant was handed these nodes' capacity, no other. By
        # the Node's name (as the DaemonSet controller pins Pods), not the hostname label,
        # which may differ from it and which a simulated node may lack.
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": sorted(promoted_nodes)}
                            ]
                        }
                    ]
                }
            }
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {POD_TEMPLATE_HASH: template_hash(spec)},
            "labels": {
                **(template.get("podLabels") or {}),
                **MANAGED_BY,
                "app.kubernetes.io/name": "hosted-node",
                CLUSTER_LABEL: cluster_name,
                MACHINE_LABEL: name,
            },
            "ownerReferences": [owner_reference(machine, controller=True)],
        },
        "spec": spec,
    }


def template_hash(pod_spec: Obj) -> str:
    text = json.dumps(pod_spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pod_drift(pod: Obj, desired: Obj) -> str:
    """What it takes to bring the live node POD to DESIRED (render_pod): "replace" when its
    spec changed (Kubernetes keeps most of a Pod's spec immutable, so a new image, command,
    env, mount, security context or resources needs a new Pod), "patch" when only its labels
    did or it was made before the hash was kept, "" when nothing."""
    have = (meta(pod, "annotations") or {}).get(POD_TEMPLATE_HASH)
    if have is not None and have != desired["metadata"]["annotations"][POD_TEMPLATE_HASH]:
        return "replace"
    labels = meta(pod, "labels") or {}
    if have is None or any(labels.get(k) != v for k, v in desired["metadata"]["labels"].items()):
        return "patch"
    return ""


def _drift_text(pod: Obj, desired: Obj) -> str:
    images = [
        next((c.get("image") for c in p["spec"]["containers"] if c["name"] == NODE_CONTAINER), None)
        for p in (pod, desired)
    ]
    return f"image {images[0]} -> {images[1]}" if images[0] != images[1] else "its template changed"


# -- status --------------------------------------------------------------------------
def stuck(waiting: Obj | None) -> bool:
    """Whether a container's waiting state will not get better by waiting alone."""
    reason = (waiting or {}).get("reason")
    if reason not in TERMINAL_WAITING_REASONS:
        return False
    message = (waiting or {}).get("message") or ""
    return not (reason == "CreateContainerConfigError" and message.startswith(PASSING_CONFIG_ERRORS))


def _pod_condition(pod: Obj, type_: str) -> Obj | None:
    return next((c for c in status_of(pod).get("conditions") or [] if c.get("type") == type_), None)


def _container_trouble(pod: Obj) -> Obj | None:
    """The node container's waiting or terminated state when it is not running."""
    for cs in status_of(pod).get("containerStatuses") or []:
        if cs.get("name") != NODE_CONTAINER:
            continue
        state = cs.get("state") or {}
        return state.get("waiting") or state.get("terminated")
    return None


def derive_status(machine: Obj, pod: Obj | None, node: Obj | None = None, now: str = "") -> Obj:
    """HnMachine status from what exists: its Pod and, once known, its tenant Node.
    Nothing is assumed: no Pod means Pending, whatever happened before."""
    now = now or now_rfc3339()
    previous = status_of(machine).get("conditions") or []
    generation = meta(machine, "generation") or 0
    name = machine["metadata"]["name"]
    status: Obj = {"observedGeneration": generation, "ready": False}
    failure = None  # (reason, message)

    pod_status = status_of(pod)
    scheduled = _pod_condition(pod, "PodScheduled") if pod else None
    pod_ready = _pod_condition(pod, "Ready") if pod else None
    if pod:
        status["podName"] = pod["metadata"]["name"]
        for src, dst in (("podIP", "podIP"), ("hostIP", "hostIP")):
            if pod_status.get(src):
                status[dst] = pod_status[src]
        if pod["spec"].get("nodeName"):
            status["hostNodeName"] = pod["spec"]["nodeName"]
        # Cluster API's meaning: where the machine is reached; the host node runs it.
        addresses = []
        if pod_status.get("podIP"):
            addresses.append({"type": "InternalIP", "address": pod_status["podIP"]})
        if pod["spec"].get("nodeName"):
            addresses.append({"type": "Hostname", "address": pod["spec"]["nodeName"]})
        status["addresses"] = addresses

    trouble = _container_trouble(pod) if pod else None
    if meta(machine, "deletionTimestamp"):
        phase = "Deleting"
    elif pod is None:
        phase = "Pending"
    elif meta(pod, "deletionTimestamp"):
        phase, failure = "Failed", ("PodDeleted", f"the node Pod {name} is being deleted")
    elif pod_status.get("phase") in ("Failed", "Succeeded"):
        reason = pod_status.get("reason") or "PodExited"
        phase, failure = (
            "Failed",
            (reason, pod_status.get("message") or f"the node Pod ended ({pod_status['phase']})"),
        )
    elif trouble and stuck(trouble):
        phase, failure = "Failed", (trouble["reason"], trouble.get("message") or trouble["reason"])
    elif pod_status.get("phase") == "Running":
        phase = "Running"
        status["ready"] = bool(pod_ready and pod_ready.get("status") == "True")
        node_ready = _node_ready(node, since=meta(pod, "creationTimestamp") or "")
        if node_ready and status["ready"]:
            phase = "Ready"
    else:
        phase = "Provisioning"
    if node:
        status["nodeName"] = node["metadata"]["name"]
    status["phase"] = phase
    if failure:
        status["failureReason"], status["failureMessage"] = failure

    conditions = [
        condition(
            previous,
            "PodScheduled",
            bool(scheduled and scheduled.get("status") == "True"),
            (scheduled or {}).get("reason")
            or ("Scheduled" if scheduled else "NotScheduledYet" if pod else "NoPod"),
            (scheduled or {}).get("message") or ("" if pod else "the node Pod does not exist"),
            now=now,
            generation=generation,
        ),
        condition(
            previous,
            "ContainerProvisioned",
            _container_running(pod),
            "Running" if _container_running(pod) else (trouble or {}).get("reason") or "NotRunning",
            (trouble or {}).get("message") or "",
            now=now,
            generation=generation,
        ),
        condition(
            previous,
            "PodReady",
            status["ready"],
            (trouble or {}).get("reason") or ("Ready" if status["ready"] else "NotReady"),
            (trouble or {}).get("message") or (pod_ready or {}).get("message") or "",
            now=now,
            generation=generation,
        ),
    ]
    status["conditions"] = conditions
    return status


def _container_running(pod: Obj | None) -> bool:
    """Cluster API's ContainerProvisioned: the node container has started and runs."""
    return any(
        cs.get("name") == NODE_CONTAINER and "running" in (cs.get("state") or {})
        for cs in status_of(pod).get("containerStatuses") or []
    )


def _node_ready(node: Obj | None, since: str = "") -> bool:
    """The Node is Ready as its kubelet last said, SINCE then (RFC 3339, the node Pod's
    creation): a node Pod made again keeps its Node name, and until the node controller
    notices the old kubelet is gone (40 s), the Node still reads Ready from before."""
    for c in status_of(node).get("conditions") or []:
        if c.get("type") == "Ready":
            heartbeat = c.get("lastHeartbeatTime") or ""
            return c.get("status") == "True" and (not heartbeat or heartbeat >= since)
    return False


def blocked(machine: Obj) -> bool:
    """Failed on a cause the host's kubelet retries (TERMINAL_WAITING_REASONS): fixing the
    cause is enough, the machine recovers with the same Pod."""
    st = status_of(machine)
    return st.get("phase") == "Failed" and st.get("failureReason") in TERMINAL_WAITING_REASONS


def settled(machine: Obj, suspect: bool, grace_over: bool) -> bool:
    """Whether a wait may stop at MACHINE's Failed phase: at once, unless the machine was
    blocked when the wait began (SUSPECT) and the kubelet's retry may still clear it."""
    return status_of(machine).get("phase") == "Failed" and (grace_over or not (suspect and blocked(machine)))


def failure_text(machine: Obj) -> str:
    st = status_of(machine)
    return f"{st.get('failureReason')}: {st.get('failureMessage')}"


def reached(phase: str, wanted: str) -> bool:
    return phase == wanted or PROGRESS.get(phase, -1) >= PROGRESS.get(wanted, 99)


# -- apply / wait ----------------------------------------------------------------------
@dataclass
class Outcome:
    changed: bool = False
    before: Obj | None = None
    after: Obj | None = None
    pod_created: bool = False
    pod_replaced: bool = False
    messages: List[str] = field(default_factory=list)


def read_cluster(kube: Kube, namespace: str, name: str) -> Obj:
    cluster = kube.get(HNCLUSTER.path(namespace, name))
    if cluster is None:
        raise MachineError(
            f"cluster: HnCluster {namespace}/{name} does not exist; create it first"
            " (rhizeption.core.hncluster) or name an existing one"
        )
    return cluster


def write_status(kube: Kube, machine: Obj, status: Obj) -> Obj:
    return apply_status(kube, HNMACHINE, machine, status)


def refresh_status(kube: Kube, machine: Obj) -> Obj:
    """Read the machine's Pod and write the status it implies."""
    ns, name = machine["metadata"]["namespace"], machine["metadata"]["name"]
    pod = kube.get(POD.path(ns, name))
    return write_status(kube, machine, derive_status(machine, pod))


def ensure_present(
    kube: Kube,
    desired: Obj,
    cluster: Obj,
    *,
    check_mode: bool = False,
    wait_for: str | None = None,
    timeout: float = 300,
    creds: hosted_node.TenantCredentials | None = None,
) -> Outcome:
    """Make the HnMachine DESIRED exist with its Pod, and write its status. With WAIT_FOR,
    follow the Pod until the machine reaches that phase (or a later one). With CREDS (its
    tenant's), the machine's bootstrap Secret is written before its Pod."""
    ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    path = HNMACHINE.path(ns, name)
    out = Outcome(before=kube.get(path))
    if meta(out.before, "deletionTimestamp"):
        raise MachineError(f"HnMachine {ns}/{name} is being deleted; wait for it to go, then create it again")
    desired = _keep_join_fields(desired, out.before)
    applied = kube.apply(path, desired, dry_run=check_mode, what=f"HnMachine {ns}/{name}")
    out.changed = _user_view(out.before) != _user_view(applied)
    out.after = applied
    if check_mode:
        pod = kube.get(POD.path(ns, name)) if out.before else None
        if pod is None:
            out.changed = True
            out.messages.append(f"would create the node Pod {ns}/{name}")
        else:
            drift, said = update_pod(kube, applied, cluster, pod, timeout, check_mode=True)
            out.changed = out.changed or bool(drift)
            out.pod_replaced = drift == "replace"
            out.messages += [said] if said else []
        return out

    if not status_of(applied):
        # A new machine says so before it has a Pod: it is Pending.
        applied = write_status(kube, applied, derive_status(applied, None))
    if creds is not None:
        _unused, written = hosted_node.ensure_bootstrap_secret(kube, cluster, applied, creds)
        out.changed = out.changed or bool(written)
    pod, out.pod_created = ensure_pod(kube, applied, cluster, timeout, created_machine=out.before is None)
    if not out.pod_created:
        drift, said = update_pod(kube, applied, cluster, pod, timeout)
        if drift:
            out.messages.append(said)
            out.pod_replaced = drift == "replace"
            pod = kube.get(POD.path(ns, name))
    out.changed = out.changed or out.pod_created or bool(out.messages)
    out.after = write_status(kube, applied, derive_status(applied, pod))
    if wait_for:
        out.after = wait_for_phase(kube, out.after, wait_for, timeout)
    return out


def _keep_join_fields(desired: Obj, before: Obj | None) -> Obj:
    """DESIRED with the existing machine's providerID and bootstrap when it leaves them out.
    hncluster sets them on the machines it makes, and the hnmachine module applies with the
    same field manager: a field left out of that apply would be removed, and the node could
    no longer join. Both fields are immutable once set, so keeping them is the only change."""
    kept = {k: v for k, v in ((before or {}).get("spec") or {}).items() if k in ("providerID", "bootstrap")}
    missing = {k: v for k, v in kept.items() if k not in desired["spec"]}
    if not missing:
        return desired
    return {**desired, "spec": {**desired["spec"], **missing}}


def ensure_pod(
    kube: Kube,
    machine: Obj,
    cluster: Obj,
    timeout: float,
    *,
    created_machine: bool = False,
    replace_stopped: bool = False,
) -> Tuple[Obj, bool]:
    """The machine's node Pod, created when missing: (pod, created). An existing Pod is
    left as it is (update_pod brings it to a new template).
    REPLACE_STOPPED: a Pod whose node container does not run is replaced by a new one."""
    ns, name = machine["metadata"]["namespace"], machine["metadata"]["name"]
    pod = kube.get(POD.path(ns, name))
    if pod is not None and not meta(pod, "deletionTimestamp"):
        if not _owned_by(pod, machine):
            raise MachineError(
                f"Pod {ns}/{name} exists but does not belong to HnMachine {ns}/{name};"
                " remove that Pod or give the machine another name"
            )
        if not (replace_stopped and not _container_running(pod)):
            return pod, False
        # Nothing runs in it to lose, and the kubelet would start its container again only
        # after its crash back-off (up to 5 min); a new Pod starts now.
        kube.delete(POD.path(ns, name), uid=pod["metadata"]["uid"], what=f"replace the node Pod {ns}/{name}")
    if pod is not None:
        _wait_gone(kube, POD.path(ns), name, timeout)
    return _create_pod(
        kube, machine, render_pod(machine, cluster, promoted_nodes(kube, cluster)), created_machine
    ), True


def _create_pod(kube: Kube, machine: Obj, body: Obj, created_machine: bool = False) -> Obj:
    """POST the node Pod BODY; when the API server refuses it, nothing is left half-made: a
    machine made by this run (CREATED_MACHINE) is taken back, another one says Failed."""
    ns, name = machine["metadata"]["namespace"], machine["metadata"]["name"]
    try:
        return kube.request("POST", POD.path(ns), body=body, what=f"create the node Pod {ns}/{name}")
    except KubeError as e:
        if created_machine:
            # Nothing half-made: a machine that never got its Pod is taken back.
            _remove_finalizer(kube, machine)
            kube.delete(HNMACHINE.path(ns, name), uid=machine["metadata"]["uid"])
        else:
            failed = {
                **derive_status(machine, None),
                "phase": "Failed",
                "failureReason": "PodCreateFailed",
                "failureMessage": str(e),
            }
            write_status(kube, machine, failed)
        raise MachineError(str(e)) from e


def update_pod(
    kube: Kube,
    machine: Obj,
    cluster: Obj,
    pod: Obj,
    timeout: float,
    *,
    tenant: Kube | None = None,
    check_mode: bool = False,
) -> Tuple[str, str]:
    """Bring the machine's node POD up to its template: (pod_drift's answer, what was done or
    in CHECK_MODE would be), ("", "") when it is up to date. New labels are patched in. Any other change
    needs a new Pod, and a new Pod is a new node: with its TENANT, the Node is drained first
    and its object deleted once the old Pod is gone, so the kubelet registers again with the
    new labels and taints. The run then waits until the machine runs again (with TENANT:
    until its Node is Ready), so a cluster rolls one node at a time."""
    ns, name = machine["metadata"]["namespace"], machine["metadata"]["name"]
    desired = render_pod(machine, cluster, promoted_nodes(kube, cluster))
    drift = pod_drift(pod, desired)
    if not drift or meta(pod, "deletionTimestamp"):
        return "", ""
    if drift == "patch":
        if not check_mode:
            kube.request(
                "PATCH",
                POD.path(ns, name),
                body={"metadata": {k: desired["metadata"][k] for k in ("labels", "annotations")}},
                content_type="application/merge-patch+json",
                what=f"label the node Pod {ns}/{name}",
            )
        return drift, f"{'would patch' if check_mode else 'patched'} the labels of the node Pod {ns}/{name}"
    said = f"the node Pod {ns}/{name} ({_drift_text(pod, desired)})"
    if check_mode:
        return drift, f"would replace {said}"
    if tenant is not None:
        hosted_node.drain(tenant, name, timeout)
    kube.delete(POD.path(ns, name), uid=pod["metadata"]["uid"], what=f"replace {said}")
    _wait_gone(kube, POD.path(ns), name, timeout)
    if tenant is not None:
        hosted_node.delete_node(tenant, name)
    _create_pod(kube, machine, desired)
    if tenant is not None:
        hosted_node.wait_nodes_ready(tenant, [name], timeout)
    else:
        wait_for_phase(kube, machine, "Running", timeout)
    return drift, f"replaced {said}"


def wait_past_blocked(
    kube: Kube,
    pods_path: str,
    done: Callable[[bool], bool],
    timeout: float,
    suspects: bool,
    **watch: Any,
) -> bool:
    """kube.wait on node Pods, where DONE(grace_over) may stop at a blocked machine only when
    GRACE_OVER. With SUSPECTS (machines blocked before the wait), first up to BLOCKED_GRACE
    with grace_over False, then the rest of TIMEOUT with True."""
    deadline = time.monotonic() + timeout
    if suspects:
        ok, _unused = kube.wait(pods_path, lambda _pods: done(False), min(BLOCKED_GRACE, timeout), **watch)
        if ok:
            return True
    # At 0 s left this still lists once and asks DONE: a machine still blocked is a failure now.
    ok, _unused = kube.wait(pods_path, lambda _pods: done(True), max(deadline - time.monotonic(), 0), **watch)
    return ok


def wait_for_phase(kube: Kube, machine: Obj, wanted: str, timeout: float) -> Obj:
    """Watch the machine's Pod, writing status on every change, until the machine reaches
    WANTED (or later) or fails (one blocked before the wait gets BLOCKED_GRACE first)."""
    ns, name = machine["metadata"]["namespace"], machine["metadata"]["name"]
    current = {"machine": machine}
    suspect = blocked(machine)

    def on_event(pods: Dict[str, Obj]) -> None:
        current["machine"] = write_status(
            kube, current["machine"], derive_status(current["machine"], pods.get(name))
        )

    def done(grace_over: bool) -> bool:
        phase = status_of(current["machine"]).get("phase", "")
        return reached(phase, wanted) or settled(current["machine"], suspect, grace_over)

    ok = wait_past_blocked(
        kube, POD.path(ns), done, timeout, suspect, field_selector=f"metadata.name={name}", on_event=on_event
    )
    st = status_of(current["machine"])
    if st.get("phase") == "Failed" and wanted != "Failed":
        raise MachineError(f"HnMachine {ns}/{name} failed: {failure_text(current['machine'])}")
    if not ok:
        reasons = "; ".join(
            f"{c['type']}={c['status']} ({c.get('reason')}: {c.get('message')})"
            for c in st.get("conditions") or []
        )
        raise MachineError(
            f"HnMachine {ns}/{name} is {st.get('phase')} after {timeout:.0f} s, not {wanted}: {reasons}"
        )
    return current["machine"]


def ensure_absent(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    check_mode: bool = False,
    timeout: float = 300,
    tenant: Kube | None = None,
) -> Outcome:
    """Delete an HnMachine in order: mark it Deleting, (with its TENANT: drain its Node there),
    delete its Pod and wait until the Pod is gone, (delete the tenant's Node object), release
    our finalizer, then wait until the machine is gone (other finalizers are honoured). A
    machine that does not exist is no change."""
    path = HNMACHINE.path(namespace, name)
    machine = kube.get(path)
    out = Outcome(before=machine)
    if machine is None:
        return out
    out.changed = True
    if check_mode:
        return out
    if not meta(machine, "deletionTimestamp"):
        machine = (
            kube.delete(path, uid=machine["metadata"]["uid"], what=f"delete HnMachine {namespace}/{name}")
            or machine
        )
    if MACHINE_FINALIZER in (meta(machine, "finalizers") or []):
        pod = kube.get(POD.path(namespace, name))
        machine = write_status(kube, machine, derive_status(machine, pod))
        if tenant is not None:
            out.messages += [f"evicted {p}" for p in hosted_node.drain(tenant, name, timeout)]
        if pod is not None and _owned_by(pod, machine):
            kube.delete(
                POD.path(namespace, name),
                uid=pod["metadata"]["uid"],
                what=f"delete the node Pod {namespace}/{name}",
            )
            _wait_gone(kube, POD.path(namespace), name, timeout)
        if tenant is not None:
            hosted_node.delete_node(tenant, name)
        _remove_finalizer(kube, machine)
    _wait_gone(kube, HNMACHINE.path(namespace), name, timeout, what="HnMachine")
    return out


def _owned_by(pod: Obj, machine: Obj) -> bool:
    return any(r.get("uid") == machine["metadata"]["uid"] for r in meta(pod, "ownerReferences") or [])


def _remove_finalizer(kube: Kube, machine: Obj) -> None:
    """Drop our finalizer only, with a test op so a concurrent change is not overwritten."""
    ns, name = machine["metadata"]["namespace"], machine["metadata"]["name"]
    path = HNMACHINE.path(ns, name)
    for _attempt in range(5):
        current = kube.get(path)
        finalizers = meta(current, "finalizers") or []
        if current is None or MACHINE_FINALIZER not in finalizers:
            return
        ops = [
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {
                "op": "replace",
                "path": "/metadata/finalizers",
                "value": [f for f in finalizers if f != MACHINE_FINALIZER],
            },
        ]
        try:
            kube.json_patch(path, ops, what=f"release the finalizer of HnMachine {ns}/{name}")
            return
        except KubeError as e:
            if e.status == 404:
                return
            if e.status not in (409, 422):  # 422: the test op lost a race; read again
                raise
    raise MachineError(f"could not release the finalizer of HnMachine {ns}/{name}: it keeps changing")


def _wait_gone(kube: Kube, collection: str, name: str, timeout: float, what: str = "Pod") -> None:
    ok, objects = kube.wait(
        collection, lambda objs: name not in objs, timeout, field_selector=f"metadata.name={name}"
    )
    if not ok:
        left = meta(objects.get(name), "finalizers") or []
        raise MachineError(
            f"{what} {name} still exists after {timeout:.0f} s"
            + (f"; it waits for the finalizers {', '.join(left)}" if left else "")
        )


def _user_view(machine: Obj | None) -> Obj | None:
    """What a user asks for of a machine: a change here is a change of the task."""
    if machine is None:
        return None
    md = machine["metadata"]
    return {
        "labels": md.get("labels") or {},
        "annotations": md.get("annotations") or {},
        "finalizers": md.get("finalizers") or [],
        "spec": machine.get("spec") or {},
    }


def user_view(machine: Obj | None) -> Obj | None:
    """For diff mode: the fields a task sets, plus the status it reports."""
    view = _user_view(machine)
    if view is not None and machine is not None:
        view = {"metadata": {"name": machine["metadata"]["name"], **view}, "status": status_of(machine)}
    return view

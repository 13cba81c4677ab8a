# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""HnCluster: a group of HnMachines built from one machine template.

render_* / plan_scale / derive_status are pure; ensure_* apply them to a cluster and
drive each machine through the HnMachine core (hnmachine.py), never around it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List

from ansible_collections.rhizeption.core.plugins.module_utils import hnmachine, hosted_node
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import (
    API_VERSION,
    CLUSTER_LABEL,
    DELETE_MACHINE_ANNOTATION,
    HNCLUSTER,
    HNMACHINE,
    MANAGED_BY,
    apply_status,
    cluster_selector,
    condition,
    meta,
    status_of,
)
from ansible_collections.rhizeption.core.plugins.module_utils.kube import POD, Kube, Obj

# A machine's name is its node's hostname: one DNS label.
MAX_NAME = 63


class ClusterError(Exception):
    pass


# -- render --------------------------------------------------------------------------
def render_cluster(name: str, namespace: str, spec: Obj, labels: Dict[str, str] | None = None) -> Obj:
    """The HnCluster as this field manager wants it (server-side apply input)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "HnCluster",
        "metadata": {"name": name, "namespace": namespace, "labels": {**(labels or {}), **MANAGED_BY}},
        "spec": spec,
    }


def machine_name(cluster_name: str, index: int) -> str:
    return f"{cluster_name}-{index}"


def check_name(cluster_name: str, replicas: int) -> None:
    longest = machine_name(cluster_name, max(replicas - 1, 0))
    if len(longest) > MAX_NAME:
        raise ClusterError(
            f"name: {cluster_name!r} is too long: its machines are named {longest!r}, which must"
            f" fit in {MAX_NAME} characters (a hostname); shorten the cluster name"
        )


# -- scale -----------------------------------------------------------------------------
@dataclass
class ScalePlan:
    create: List[str] = field(default_factory=list)
    delete: List[str] = field(default_factory=list)


def disruption_rank(machine: Obj) -> int:
    """Lower goes first on scale-down: machines asked to go, or broken, or not yet
    serving, before a ready node that runs workloads."""
    st = status_of(machine)
    if DELETE_MACHINE_ANNOTATION in (meta(machine, "annotations") or {}) or meta(
        machine, "deletionTimestamp"
    ):
        return 0
    phase = st.get("phase")
    if phase == "Failed":
        return 1
    if phase in (None, "Pending", "Provisioning"):
        return 2
    if not st.get("ready"):
        return 3
    return 4


def plan_scale(cluster_name: str, replicas: int, machines: List[Obj]) -> ScalePlan:
    """Which machines to create and which to delete to reach REPLICAS. New machines take
    the lowest free indices; deletion takes the least disruptive first, newest first
    among equals."""
    live = [m for m in machines if not meta(m, "deletionTimestamp")]
    plan = ScalePlan()
    if len(live) < replicas:
        taken = {m["metadata"]["name"] for m in machines}
        index = 0
        while len(live) + len(plan.create) < replicas:
            name = machine_name(cluster_name, index)
            if name not in taken:
                plan.create.append(name)
            index += 1
    elif len(live) > replicas:
        # Two stable sorts: newest first, then by rank.
        by_age = sorted(
            live,
            key=lambda m: (meta(m, "creationTimestamp") or "", _index(m["metadata"]["name"])),
            reverse=True,
        )
        ordered = sorted(by_age, key=disruption_rank)
        plan.delete = [m["metadata"]["name"] for m in ordered[: len(live) - replicas]]
    return plan


def _index(name: str) -> int:
    match = re.search(r"-(\d+)$", name)
    return int(match.group(1)) if match else -1


# -- status ------------------------------------------------------------------------------
def derive_status(cluster: Obj, machines: List[Obj], now: str = "") -> Obj:
    now = now or hnmachine.now_rfc3339()
    desired = int(cluster["spec"].get("replicas", 1))
    live = [m for m in machines if not meta(m, "deletionTimestamp")]
    ready = [m for m in live if status_of(m).get("ready")]
    failed = sorted(m["metadata"]["name"] for m in live if status_of(m).get("phase") == "Failed")
    all_ready = len(ready) == desired and len(live) == desired
    if meta(cluster, "deletionTimestamp"):
        phase = "Deleting"
    elif failed:
        phase = "Failed"
    elif all_ready:
        phase = "Ready"
    elif not live:
        phase = "Pending"
    else:
        phase = "Provisioning"
    message = f"{len(ready)} of {desired} machines ready"
    if failed:
        message += f"; failed: {', '.join(failed)}"
    generation = meta(cluster, "generation") or 0
    return {
        "ready": all_ready,
        "phase": phase,
        "replicas": len(live),
        "readyReplicas": len(ready),
        "selector": cluster_selector(cluster["metadata"]["name"]),
        "observedGeneration": generation,
        "conditions": [
            condition(
                status_of(cluster).get("conditions") or [],
                "MachinesReady",
                all_ready,
                "AllReady" if all_ready else ("MachinesFailed" if failed else "Waiting"),
                message,
                now=now,
                generation=generation,
            )
        ],
    }


# -- apply / wait ----------------------------------------------------------------------
@dataclass
class Outcome:
    changed: bool = False
    before: Obj | None = None
    after: Obj | None = None
    plan: ScalePlan = field(default_factory=ScalePlan)
    machines: List[Obj] = field(default_factory=list)
    # Machines whose node Pod was (in check mode: would be) replaced for a new template.
    replaced: List[str] = field(default_factory=list)


def list_machines(kube: Kube, namespace: str, cluster_name: str) -> List[Obj]:
    items, _unused = kube.list(HNMACHINE.path(namespace), label_selector=cluster_selector(cluster_name))
    return sorted(items, key=lambda m: (_index(m["metadata"]["name"]), m["metadata"]["name"]))


def write_status(kube: Kube, cluster: Obj, machines: List[Obj]) -> Obj:
    return apply_status(kube, HNCLUSTER, cluster, derive_status(cluster, machines))


def ensure_present(
    kube: Kube,
    desired: Obj,
    *,
    check_mode: bool = False,
    wait: bool = False,
    timeout: float = 300,
    tenant: Kube | None = None,
) -> Outcome:
    """Apply the cluster, scale its machines to spec.replicas, heal machines whose Pod is
    gone, and write status. With WAIT, follow the Pods until every machine is ready.
    With its TENANT's API, the machines get bootstrap data and join the tenant as Nodes
    (WAIT then also waits for the Nodes to be Ready), and scale-down drains them first."""
    ns, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    path = HNCLUSTER.path(ns, name)
    out = Outcome(before=kube.get(path))
    if meta(out.before, "deletionTimestamp"):
        raise ClusterError(f"HnCluster {ns}/{name} is being deleted; wait for it to go, then create it again")
    # The tenant first: when it cannot take nodes, nothing is written to the host cluster (no
    # HnCluster without machines, no machine without bootstrap data).
    creds = None
    if tenant is not None:
        hosted_node.check_tenant(tenant)
        creds = hosted_node.tenant_credentials(tenant, desired, check_mode=check_mode)
    cluster = kube.apply(path, desired, dry_run=check_mode, what=f"HnCluster {ns}/{name}")
    replicas = int(cluster["spec"].get("replicas", 1))
    check_name(name, replicas)
    out.changed = _user_view(out.before) != _user_view(cluster)
    machines = list_machines(kube, ns, name) if out.before else []
    out.plan = plan_scale(name, replicas, machines)
    out.changed = out.changed or bool(out.plan.create or out.plan.delete)
    out.after = cluster
    if check_mode:
        out.machines = machines
        for machine in machines:
            if machine["metadata"]["name"] not in out.plan.delete:
                _keep_current(kube, cluster, machine, out, timeout, check_mode=True)
        return out

    for machine_name_ in out.plan.delete:
        hnmachine.ensure_absent(kube, ns, machine_name_, timeout=timeout, tenant=tenant)
    for machine_name_ in out.plan.create:
        machine = hnmachine.render_machine(
            machine_name_,
            ns,
            cluster,
            provider_id=hosted_node.provider_id(ns, machine_name_) if tenant else None,
            bootstrap_secret=hosted_node.bootstrap_secret_name(machine_name_) if tenant else None,
        )
        hnmachine.ensure_present(kube, machine, cluster, timeout=timeout, creds=creds)
    machines = [
        _keep_current(kube, cluster, m, out, timeout, creds=creds, tenant=tenant)
        for m in list_machines(kube, ns, name)
    ]
    if wait:
        machines = wait_ready(kube, cluster, machines, timeout)
        if tenant is not None:
            nodes = hosted_node.wait_nodes_ready(tenant, [m["metadata"]["name"] for m in machines], timeout)
            machines = [_with_node(kube, m, nodes.get(m["metadata"]["name"])) for m in machines]
    out.machines = machines
    out.after = write_status(kube, cluster, machines)
    return out


def _keep_current(
    kube: Kube,
    cluster: Obj,
    machine: Obj,
    out: Outcome,
    timeout: float,
    *,
    creds: hosted_node.TenantCredentials | None = None,
    tenant: Kube | None = None,
    check_mode: bool = False,
) -> Obj:
    """A machine that was already there: keep its bootstrap data current (a token that ends is
    replaced), recreate a lost Pod, roll a Pod made from an older template, refresh status.
    Records what it changed in OUT."""
    if meta(machine, "deletionTimestamp"):
        return machine
    ns, mname = machine["metadata"]["namespace"], machine["metadata"]["name"]
    if check_mode:
        pod = kube.get(POD.path(ns, mname))
        if pod is not None:
            drift, _unused = hnmachine.update_pod(kube, machine, cluster, pod, timeout, check_mode=True)
            out.changed = out.changed or bool(drift)
            out.replaced += [mname] if drift == "replace" else []
        return machine
    written = ""
    if creds is not None and (machine["spec"].get("bootstrap") or {}).get("dataSecretName"):
        _unused, written = hosted_node.ensure_bootstrap_secret(kube, cluster, machine, creds)
        out.changed = out.changed or bool(written)
    # A node container that is down while its bootstrap Secret was missing could not start
    # (CreateContainerConfigError): with the Secret back, it gets a new Pod.
    pod, created = hnmachine.ensure_pod(kube, machine, cluster, timeout, replace_stopped=written == "created")
    out.changed = out.changed or created
    if not created:
        # A new template reaches running machines here, one at a time.
        drift, _unused = hnmachine.update_pod(kube, machine, cluster, pod, timeout, tenant=tenant)
        if drift:
            out.changed = True
            out.replaced += [mname] if drift == "replace" else []
            pod = kube.get(POD.path(ns, mname))
    return hnmachine.write_status(kube, machine, hnmachine.derive_status(machine, pod))


def _with_node(kube: Kube, machine: Obj, node: Obj | None) -> Obj:
    """The machine's status once its tenant Node is known."""
    ns, name = machine["metadata"]["namespace"], machine["metadata"]["name"]
    pod = kube.get(POD.path(ns, name))
    return hnmachine.write_status(kube, machine, hnmachine.derive_status(machine, pod, node))


def wait_ready(kube: Kube, cluster: Obj, machines: List[Obj], timeout: float) -> List[Obj]:
    """Watch the cluster's Pods, writing each machine's status as its Pod changes, until
    every machine is ready; fail early when one fails."""
    ns, name = cluster["metadata"]["namespace"], cluster["metadata"]["name"]
    by_name = {m["metadata"]["name"]: m for m in machines}
    # Blocked before the wait: this run may just have fixed the cause (rewritten the Secret).
    suspects = {n for n, m in by_name.items() if hnmachine.blocked(m)}

    def on_event(pods: Dict[str, Obj]) -> None:
        for mname, machine in by_name.items():
            by_name[mname] = hnmachine.write_status(
                kube, machine, hnmachine.derive_status(machine, pods.get(mname))
            )

    def done(grace_over: bool) -> bool:
        return all(
            status_of(m).get("ready") or hnmachine.settled(m, n in suspects, grace_over)
            for n, m in by_name.items()
        )

    ok = hnmachine.wait_past_blocked(
        kube,
        POD.path(ns),
        done,
        timeout,
        bool(suspects),
        label_selector=f"{CLUSTER_LABEL}={name}",
        on_event=on_event,
    )
    machines = list(by_name.values())
    failed = [
        f"{m['metadata']['name']} ({hnmachine.failure_text(m)})"
        for m in machines
        if status_of(m).get("phase") == "Failed"
    ]
    if failed:
        write_status(kube, cluster, machines)
        raise ClusterError(f"HnCluster {ns}/{name}: machines failed: {', '.join(failed)}")
    if not ok:
        waiting = [
            f"{m['metadata']['name']} is {status_of(m).get('phase')}"
            for m in machines
            if not status_of(m).get("ready")
        ]
        write_status(kube, cluster, machines)
        raise ClusterError(f"HnCluster {ns}/{name} not ready after {timeout:.0f} s: {'; '.join(waiting)}")
    return machines


def ensure_absent(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    check_mode: bool = False,
    timeout: float = 300,
    tenant: Kube | None = None,
) -> Outcome:
    """Delete the machines (each in its own order: Pod, finalizer, machine), least
    disruptive first, then the cluster. A cluster that does not exist is no change."""
    path = HNCLUSTER.path(namespace, name)
    cluster = kube.get(path)
    out = Outcome(before=cluster)
    if cluster is None:
        return out
    out.changed = True
    if tenant is not None:
        # Draining needs the tenant: find out before the first machine is marked Deleting.
        hosted_node.check_tenant(tenant, fix=hosted_node.DELETE_WITHOUT_TENANT)
    machines = list_machines(kube, namespace, name)
    out.plan = plan_scale(name, 0, machines)
    if check_mode:
        return out
    for machine_name_ in out.plan.delete:
        hnmachine.ensure_absent(kube, namespace, machine_name_, timeout=timeout, tenant=tenant)
    kube.delete(path, uid=cluster["metadata"]["uid"], what=f"delete HnCluster {namespace}/{name}")
    ok, _unused = kube.wait(
        HNCLUSTER.path(namespace),
        lambda objs: name not in objs,
        timeout,
        field_selector=f"metadata.name={name}",
    )
    if not ok:
        raise ClusterError(f"HnCluster {namespace}/{name} still exists after {timeout:.0f} s")
    return out


def _user_view(cluster: Obj | None) -> Obj | None:
    if cluster is None:
        return None
    return {"labels": meta(cluster, "labels") or {}, "spec": cluster.get("spec") or {}}


def user_view(cluster: Obj | None) -> Obj | None:
    """For diff mode: what a task sets, plus the status it reports."""
    view = _user_view(cluster)
    if view is not None and cluster is not None:
        view = {
            "metadata": {"name": cluster["metadata"]["name"], "labels": view["labels"]},
            "spec": view["spec"],
            "status": status_of(cluster),
        }
    return view

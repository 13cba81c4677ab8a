"""The host-cluster Provider: a tenant's Pods run as Pods of the host cluster.

The core (agent.py) hands each tenant Pod bound to a virtual node to ``sync`` about once a
second; the pure modules decide (``pods``: refusals, references, tokens, the host Pod, the
status back; ``names``: host names and ownership), and this file only reads and writes
the two API servers:

- host Pods are known from ONE list-and-watch of the tenant's host Pods (``watches.HostPods``),
  so a resync costs no request; a change wakes the Pod's worker (``on_change``);
- a host Pod is made once: the ConfigMaps and Secrets it references are copied first, its
  service-account tokens come from the tenant's TokenRequest API, and the create is by a
  name derived from the tenant Pod, so a second sync, a second agent or a restart can never
  make a second host Pod (a 409 is checked with ``names.owner_of``);
- deleting the tenant Pod deletes the host Pod with the tenant's grace period, its token
  Secret and the copies no other Pod uses; a host Pod deleted by someone else fails the
  tenant Pod (its ReplicaSet makes a new one), as docs/virtual-nodes.md decides;
- logs, exec and port-forward go to the host Pod through the host API server (``pods/log``,
  and the WebSocket streams of ``pods/exec`` and ``pods/portforward``: ``streams``); the
  host's Events about a host Pod are told to its tenant Pod (``watches.HostEvents``).

Both API servers are reached through the collection's JSON client (kubeapi.Kube, on the
``kubernetes`` client's ApiClient): the same layer as the rest of the agent.
"""

from __future__ import annotations

import datetime
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ...kubeapi import Kube, KubeError
from ...provider import EventSink, ExecSession, LogRequest, NodeFacts, PodView, ProviderError
from . import names, pods
from .pods import HostSettings, Placement, Reference
from .services import HostsFile, ServiceSync
from .streams import HostStreams, KubernetesStreams, WebSocketExec
from .watches import HostEvents, HostPods, uid_of

LOG = logging.getLogger("rhizeption_agent.hostcluster")
Obj = dict[str, Any]

TERMINAL = ("Succeeded", "Failed")
REASON_HOST_POD_DELETED = "HostPodDeleted"
REASON_MISSING_REFERENCE = "MissingReference"
REASON_NAME_TAKEN = "HostNameTaken"
REASON_PREVIOUS_POD = "HostPodTerminating"  # a Pod of the same name (StatefulSet) is still there
REASON_TOKEN = "FailedTokenRequest"
REASON_NOT_VIRTUAL = "UnknownVirtualNode"
REASON_FAILED_CREATE = "FailedCreateHostPod"
REASON_FAILED_UPDATE = "FailedUpdateHostPod"
COPY_KINDS = {"configmap": "configmaps", "secret": "secrets"}
# Host label and annotation keys the agent writes on a host Pod (what _update may remove).
OWN_KEY_PREFIXES = (
    f"{names.PREFIX}/",
    f"{names.TENANT_LABELS_PREFIX}/",
    f"{names.TENANT_ANNOTATIONS_PREFIX}/",
)
TOKEN_RENEW_FRACTION = 0.8  # as the kubelet: a token is renewed at 80 % of its life
TOKEN_RETRY_SECONDS = 10.0  # a renewal the tenant refused is asked again after this
# How often the tenant object behind a copy is read again while Pods use it: one GET per
# object and minute, whichever the number of Pods sharing it (the kubelet's own ConfigMap
# and Secret caches take about as long).
COPY_RESYNC_SECONDS = 60.0
# A worker waits this long for the first list of host Pods before it answers "nothing new".
SYNCED_WAIT_SECONDS = 5.0
# terminate waits for the host Pod to go this long past the grace period (image pulls,
# a slow host kubelet), then the core deletes the tenant Pod and forget finishes the job.
GONE_MARGIN_SECONDS = 15.0
NOT_SUPPORTED = "not supported yet by the host-cluster backend"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Wait(Exception):
    """The tenant Pod cannot start yet (REASON, MESSAGE); it stays Pending and is retried."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class HostClusterProvider:
    """The Provider (provider.py) that runs a tenant's Pods as Pods of the host cluster.

    HOST: the host API server, with the agent's Role in SETTINGS.namespace; TENANT: the
    tenant API server (Pods' references, TokenRequests). PLACEMENT gives the virtual node a
    Pod is bound to (its spec.nodeName), or None when this agent does not serve that node."""

    def __init__(
        self,
        host: Kube,
        tenant: Kube,
        settings: HostSettings,
        placement: Callable[[str], Placement | None],
        *,
        on_change: Callable[[str], None] | None = None,
        synced_wait: float = SYNCED_WAIT_SECONDS,
        copy_resync_seconds: float = COPY_RESYNC_SECONDS,
        streams: HostStreams | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.host = host
        self.tenant = tenant
        self.settings = settings
        self.placement = placement
        self.synced_wait = synced_wait
        self.copy_resync_seconds = copy_resync_seconds
        self.streams = streams  # made from the host's configuration at the first exec
        self.pods = HostPods(host, settings.namespace, settings.tenant, on_change)
        hosts = (
            HostsFile(settings.dns_hosts_file, settings.cluster_domain, settings.api_server_ip)
            if settings.dns_hosts_file
            else None
        )
        self.services = ServiceSync(host, tenant, settings.tenant, settings.namespace, hosts)
        # The core's EventSink (agent.events): host Events go to the tenant Pods through it.
        self.host_events = (
            HostEvents(host, settings.namespace, self.pods, events) if events is not None else None
        )
        self._host_version = ""
        # Copies each live tenant Pod needs, by host name, registered before they are
        # written: the garbage collection of copies never deletes one a create is about to use.
        self._needs: dict[str, set[str]] = {}
        self._needs_lock = threading.Lock()
        self._checked_at: dict[str, float] = {}  # copy: when its tenant object was last read
        self._copied: dict[str, str] = {}  # copy: the tenant object's resourceVersion it holds
        self._seen: set[str] = set()  # tenant Pods whose host Pod this agent has seen
        self._released: set[str] = set()  # terminated here: forget has nothing left to do
        self._renew_at: dict[str, float] = {}  # wall-clock time to renew a Pod's tokens
        self._told: dict[str, tuple[str, str]] = {}  # the last Warning per Pod: not repeated

    def bind(self, on_change: Callable[[str], None], events: EventSink) -> None:
        """Tell the agent that runs this provider (made after it): ON_CHANGE wakes a Pod's
        worker, EVENTS takes the host's Events about the Pods. Before the watches start."""
        self.pods.on_change = on_change
        self.host_events = HostEvents(self.host, self.settings.namespace, self.pods, events)
        self.services.emit = events

    def start(self) -> None:
        """Start the watches (also done by the first call that needs them)."""
        self.pods.start()
        self.services.start()
        if self.host_events is not None:
            self.host_events.start()

    def stop(self) -> None:
        self.pods.stop()
        self.services.stop()
        if self.host_events is not None:
            self.host_events.stop()

    # -- paths ---------------------------------------------------------------------------
    def _host_path(self, plural: str, name: str = "", sub: str = "") -> str:
        path = f"/api/v1/namespaces/{self.settings.namespace}/{plural}"
        return "/".join(p for p in (path, name, sub) if p)

    # -- the node ------------------------------------------------------------------------
    def facts(self) -> NodeFacts:
        if not self._host_version:
            try:
                info = self.host.request("GET", "/version", what="host cluster version")
                self._host_version = info.get("gitVersion", "")
            except Exception as e:
                return NodeFacts("hostcluster://unknown", healthy=False, message=f"host cluster: {e}")
        version = f"hostcluster://{self._host_version or 'unknown'}"
        self.start()
        if self.pods.error:
            return NodeFacts(version, healthy=False, message=f"host cluster: {self.pods.error}")
        return NodeFacts(version, healthy=True)

    def running_pods(self) -> list[PodView]:
        self.start()
        if not self.pods.wait_synced(self.synced_wait):
            raise ProviderError(f"the host Pods are not listed yet: {self.pods.error or 'waiting'}")
        return [
            PodView(
                uid=uid,
                namespace=p["metadata"]["labels"].get(names.NAMESPACE_LABEL, ""),
                name=(p["metadata"].get("annotations") or {}).get(names.NAME_ANNOTATION, ""),
                extra={"hostPod": p["metadata"]["name"]},
            )
            for uid, p in self.pods.all().items()
        ]

    # -- one step of one Pod -------------------------------------------------------------
    def sync(self, pod: Obj, emit: EventSink) -> Obj:
        uid = pod["metadata"]["uid"]
        self.start()
        if not self.pods.wait_synced(self.synced_wait):
            return pod.get("status") or {}  # nothing known yet: nothing new to report
        placement = self.placement(pod["spec"].get("nodeName", ""))
        if placement is None:
            return self._waiting(
                pod,
                "",
                REASON_NOT_VIRTUAL,
                f"node {pod['spec'].get('nodeName')} is not a virtual node of this agent",
                emit,
            )
        host_pod = self.pods.get(uid)
        if host_pod is None:
            problems = pods.refusals(pod, self.settings)
            if problems:  # nothing is made in the host for a Pod it cannot run
                status = pods.refused_status(pod, problems, _now())
                self._tell(pod, emit, status["reason"], status["message"])
                return status
            if self._ran(pod):
                return self._deleted_status(pod, placement, emit)
            try:
                host_pod = self._create(pod, placement, emit)
            except _Wait as w:
                return self._waiting(pod, placement.node_address, w.reason, w.message, emit)
            except KubeError as e:  # a host quota, a denied write: the tenant sees why
                return self._waiting(pod, placement.node_address, REASON_FAILED_CREATE, str(e), emit)
            self._told.pop(uid, None)  # a cause that comes back is told again
        else:
            self._seen.add(uid)
            try:
                host_pod = self._update(pod, host_pod, placement)
            except KubeError as e:  # it runs on as it is; said once
                self._tell(pod, emit, REASON_FAILED_UPDATE, str(e))
                return pods.tenant_status(host_pod, pod, placement.node_address, _now())
            self._renew_tokens(pod, emit)
            self._refresh_copies(pod, emit)
        return pods.tenant_status(host_pod, pod, placement.node_address, _now())

    def _ran(self, pod: Obj) -> bool:
        """Whether POD's host Pod existed: this agent saw it, or the tenant status shows a
        container the host made (an agent restarted since still knows)."""
        status = pod.get("status") or {}
        return (
            pod["metadata"]["uid"] in self._seen
            or bool(status.get("podIP"))
            or any(cs.get("containerID") for cs in status.get("containerStatuses") or [])
        )

    def _create(self, pod: Obj, placement: Placement, emit: EventSink) -> Obj:
        meta = pod["metadata"]
        uid = meta["uid"]
        name = pods.host_pod_name(pod, self.settings)
        other = self.pods.named(name)
        if other is not None:  # the same name, another uid: a StatefulSet's Pod being replaced
            raise _Wait(
                REASON_PREVIOUS_POD,
                f"the host Pod {name} of an earlier Pod {meta['namespace']}/{meta['name']} is still there",
            )
        refs = pods.references(pod)
        with self._needs_lock:
            self._needs[uid] = {self._copy_name(meta["namespace"], r) for r in refs}
        for ref in refs:
            self._copy(meta["namespace"], ref)
        self._write_tokens(pod)
        body = pods.translate_pod(pod, self.settings, placement, self.services.links(meta["namespace"]))
        try:
            created = self.host.request(
                "POST", self._host_path("pods"), body=body, what=f"create host pod {name}"
            )
        except KubeError as e:
            if e.status != 409:
                raise
            created = self._existing(pod, name)
        else:
            emit(pod, "Normal", "HostPodCreated", f"host Pod {self.settings.namespace}/{name} created")
        self.pods.put(created)
        self._seen.add(uid)
        return created

    def _existing(self, pod: Obj, name: str) -> Obj:
        """After a 409: the host Pod of this very tenant Pod (made by an earlier attempt whose
        answer was lost), or a _Wait; never someone else's object."""
        found = self.host.get(self._host_path("pods", name))
        if found is None:
            raise _Wait(REASON_PREVIOUS_POD, f"the host Pod {name} is being replaced")
        meta = pod["metadata"]
        if names.owner_of(found) != (self.settings.tenant, "pod", meta["namespace"], meta["name"]):
            raise _Wait(REASON_NAME_TAKEN, f"the host Pod name {name} is taken by an object of another owner")
        if uid_of(found) != meta["uid"]:
            raise _Wait(
                REASON_PREVIOUS_POD,
                f"the host Pod {name} of an earlier Pod {meta['namespace']}/{meta['name']} is still there",
            )
        return found

    def _update(self, pod: Obj, host_pod: Obj, placement: Placement) -> Obj:
        """Carry what a running Pod may change in the tenant: labels and annotations (the
        downward API and Service selectors read them) and container images."""
        want = pods.host_pod_metadata(pod, self.settings, placement)
        have = host_pod["metadata"]
        patch: Obj = {}
        for key in ("labels", "annotations"):
            current = have.get(key) or {}
            delta: dict[str, str | None] = {k: v for k, v in want[key].items() if current.get(k) != v}
            # Keys of ours the tenant Pod no longer has; keys others set stay.
            delta.update({k: None for k in current if k.startswith(OWN_KEY_PREFIXES) and k not in want[key]})
            if delta:
                patch.setdefault("metadata", {})[key] = delta
        images = {group: _new_images(pod, host_pod, group) for group in ("containers", "initContainers")}
        if any(images.values()):
            patch["spec"] = {group: changed for group, changed in images.items() if changed}
        if not patch:
            return host_pod
        patched = self.host.request(
            "PATCH",
            self._host_path("pods", have["name"]),
            body=patch,
            content_type="application/strategic-merge-patch+json",
            what=f"update host pod {have['name']}",
        )
        self.pods.put(patched)
        return patched

    # -- references and tokens -----------------------------------------------------------
    def _copy_name(self, namespace: str, ref: Reference) -> str:
        return f"{ref.kind}/{names.host_name(self.settings.tenant, namespace, ref.name, ref.kind)}"

    def _copy(self, namespace: str, ref: Reference) -> None:
        plural = COPY_KINDS[ref.kind]
        key = self._copy_name(namespace, ref)
        self._checked_at[key] = time.monotonic()
        obj = self.tenant.get(f"/api/v1/namespaces/{namespace}/{plural}/{ref.name}")
        if obj is None:
            if ref.optional:
                return  # the host Pod says optional too: its kubelet starts without it
            raise _Wait(
                REASON_MISSING_REFERENCE,
                f'{ref.kind} "{ref.name}" not found in namespace {namespace}: the Pod waits for it',
            )
        version = obj["metadata"].get("resourceVersion")
        if version and self._copied.get(key) == version:
            return  # this version is in the host already
        obj.setdefault("kind", "ConfigMap" if ref.kind == "configmap" else "Secret")
        self._put_owned(plural, pods.host_copy(obj, self.settings), (ref.kind, namespace, ref.name))
        self._copied[key] = version or ""

    def _refresh_copies(self, pod: Obj, emit: EventSink) -> None:
        """Carry changes of the tenant objects a running Pod reads to their copies, each
        object looked at every ``copy_resync_seconds`` whichever Pods share it (the host
        kubelet then updates the mounted files, as a kubelet does in its own time)."""
        namespace = pod["metadata"]["namespace"]
        now = time.monotonic()
        for ref in pods.references(pod):
            if now - self._checked_at.get(self._copy_name(namespace, ref), 0.0) < self.copy_resync_seconds:
                continue
            try:
                self._copy(namespace, ref)
            except _Wait:
                pass  # deleted in the tenant: the copy keeps its last data, as a kubelet's volume does
            except KubeError as e:
                self._tell(pod, emit, "FailedCopy", f"{ref.kind} {ref.name}: {e}")

    def _put_owned(self, plural: str, want: Obj, owner: tuple[str, str, str]) -> None:
        """Create or update host object WANT unless a host object of that name is not ours."""
        name = want["metadata"]["name"]
        path = self._host_path(plural, name)
        current = self.host.get(path)
        if current is not None:
            if names.owner_of(current) != (self.settings.tenant, *owner):
                raise _Wait(REASON_NAME_TAKEN, f"the host {plural} name {name} is taken by another owner")
            fields = ("data", "binaryData", "type", "immutable")
            if (
                all(current.get(f) == want.get(f) for f in fields)
                and (current["metadata"].get("labels") or {}).items() >= want["metadata"]["labels"].items()
            ):
                return  # the same: no write
        self.host.apply(path, want, what=f"copy to host {plural} {name}")

    def _write_tokens(self, pod: Obj) -> None:
        """Ask the tenant for each token the Pod projects and write them to its token Secret."""
        requests = pods.token_requests(pod)
        if not requests:
            return
        meta = pod["metadata"]
        tokens: dict[str, str] = {}
        renew_at = float("inf")
        for req in requests:
            path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{req.service_account}/token"
            body = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": [req.audience] if req.audience else [],  # []: the API server's own
                    "expirationSeconds": req.expiration_seconds,
                    # Bound to the tenant Pod: the tenant invalidates it when the Pod goes.
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            }
            try:
                answer = self.tenant.request("POST", path, body=body, what="token request")
            except KubeError as e:
                raise _Wait(
                    REASON_TOKEN, f"service account {req.service_account}: no token from the tenant: {e}"
                ) from e
            tokens[req.key] = answer["status"]["token"]
            renew_at = min(renew_at, _renew_time(answer, req.expiration_seconds))
        secret = pods.token_secret(pod, self.settings, tokens)
        self._put_owned("secrets", secret, ("token", meta["namespace"], meta["name"]))
        self._renew_at[meta["uid"]] = renew_at

    def _renew_tokens(self, pod: Obj, emit: EventSink) -> None:
        # Unknown after a restart: renewed at once, the age of the old ones is not kept.
        if time.time() < self._renew_at.get(pod["metadata"]["uid"], 0):
            return
        try:
            self._write_tokens(pod)
            return
        except _Wait as w:
            reason, message = w.reason, w.message
        except KubeError as e:  # writing the token Secret
            reason, message = REASON_TOKEN, str(e)
        # The Pod runs on with the tokens it has; said once, asked again a little later.
        self._renew_at[pod["metadata"]["uid"]] = time.time() + TOKEN_RETRY_SECONDS
        self._tell(pod, emit, reason, message)

    # -- statuses of a Pod that does not run (yet) ---------------------------------------
    def _tell(self, pod: Obj, emit: EventSink, reason: str, message: str) -> None:
        """A Warning about POD, once per distinct cause (a worker syncs every second)."""
        uid = pod["metadata"]["uid"]
        if self._told.get(uid) != (reason, message):
            self._told[uid] = (reason, message)
            emit(pod, "Warning", reason, message)

    def _waiting(self, pod: Obj, node_address: str, reason: str, message: str, emit: EventSink) -> Obj:
        """Pending with REASON: on the Pod, its Ready condition and each container, as the
        kubelet shows a container it cannot create yet."""
        self._tell(pod, emit, reason, message)
        old = pod.get("status") or {}
        now = _now()
        before = {c.get("type"): c for c in old.get("conditions") or []}
        kept = [c for t, c in before.items() if t not in ("Ready", "ContainersReady")]

        def not_ready(ctype: str) -> Obj:
            # The time of the change to False, not of this sync: the same status every second
            # is not written again.
            since = before.get(ctype) or {}
            when = since.get("lastTransitionTime") if since.get("status") == "False" else None
            return {
                "type": ctype,
                "status": "False",
                "reason": reason,
                "message": message,
                "lastProbeTime": None,
                "lastTransitionTime": when or now,
            }

        status: Obj = {
            "phase": "Pending",
            "reason": reason,
            "message": message,
            "startTime": old.get("startTime") or now,
            "conditions": [*kept, not_ready("ContainersReady"), not_ready("Ready")],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
                for c in pod["spec"].get("containers") or []
            ],
        }
        if node_address:
            status["hostIP"] = node_address
            status["hostIPs"] = [{"ip": node_address}]
        return status

    def _deleted_status(self, pod: Obj, placement: Placement, emit: EventSink) -> Obj:
        """Failed: the host Pod is gone and this agent did not delete it. Recreating it would
        run a Pod twice for a while if the host only lost it from view; its controller makes
        a new one instead."""
        message = "the host Pod was deleted in the host cluster, not by the node agent"
        self._tell(pod, emit, REASON_HOST_POD_DELETED, message)
        old = pod.get("status") or {}
        now = _now()
        gone = {"terminated": {"exitCode": 137, "reason": REASON_HOST_POD_DELETED, "finishedAt": now}}
        statuses = {
            key: [{**cs, "ready": False, "started": False, "state": gone} for cs in old.get(key) or []]
            for key in ("containerStatuses", "initContainerStatuses")
        }
        conditions = [
            {**c, "status": "False", "reason": REASON_HOST_POD_DELETED, "lastTransitionTime": now}
            if c.get("type") in ("Ready", "ContainersReady") and c.get("status") == "True"
            else c
            for c in old.get("conditions") or []
        ]
        return {
            **{k: v for k, v in old.items() if k not in statuses},
            **{k: v for k, v in statuses.items() if v},
            "phase": "Failed",
            "reason": REASON_HOST_POD_DELETED,
            "message": message,
            "conditions": conditions,
            "hostIP": placement.node_address,
        }

    # -- ending --------------------------------------------------------------------------
    def terminate(self, pod: Obj, grace_seconds: int, emit: EventSink) -> None:
        uid = pod["metadata"]["uid"]
        host_pod = self.pods.get(uid)
        if host_pod is not None:
            emit(pod, "Normal", "Killing", f"Stopping host Pod {host_pod['metadata']['name']}")
            self._delete_host_pod(host_pod, grace_seconds)
            # The tenant Pod goes once its containers have stopped, as with any kubelet.
            if not self.pods.wait_gone(uid, grace_seconds + GONE_MARGIN_SECONDS):
                LOG.warning("host pod %s still there after its grace period", host_pod["metadata"]["name"])
        self._release(uid, pod["metadata"]["namespace"], pod["metadata"]["name"], host_pod)
        self._released.add(uid)

    def stop_containers(self, pod: Obj, grace_seconds: int, emit: EventSink) -> None:
        """A host Pod cannot stop its containers and stay: it is deleted when it still runs
        (the tenant Pod ended before it, after an agent restart say); an ended one stays for
        its logs until the tenant Pod is deleted."""
        host_pod = self.pods.get(pod["metadata"]["uid"])
        if host_pod is None or (host_pod.get("status") or {}).get("phase") in TERMINAL:
            return
        if not host_pod["metadata"].get("deletionTimestamp"):
            emit(pod, "Normal", "Killing", f"Stopping host Pod {host_pod['metadata']['name']}")
            self._delete_host_pod(host_pod, grace_seconds)

    def forget(self, uid: str) -> None:
        host_pod = self.pods.get(uid)
        if host_pod is not None:
            self._delete_host_pod(host_pod, 0)
        elif uid in self._released:
            self._released.discard(uid)
            return  # terminate released everything already
        self._released.discard(uid)
        namespace = ((host_pod or {}).get("metadata", {}).get("labels") or {}).get(names.NAMESPACE_LABEL, "")
        name = ((host_pod or {}).get("metadata", {}).get("annotations") or {}).get(names.NAME_ANNOTATION, "")
        self._release(uid, namespace, name, host_pod)

    def _delete_host_pod(self, host_pod: Obj, grace_seconds: int) -> None:
        meta = host_pod["metadata"]
        try:
            self.host.request(
                "DELETE",
                self._host_path("pods", meta["name"]),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": max(0, grace_seconds),
                    "preconditions": {"uid": meta["uid"]},  # never a newer Pod of that name
                },
                what=f"delete host pod {meta['name']}",
            )
        except KubeError as e:
            if e.status not in (404, 409):
                raise

    def _release(self, uid: str, namespace: str, name: str, host_pod: Obj | None) -> None:
        """Delete what tenant Pod UID held in the host besides its Pod: its token Secret and
        the copies no other Pod needs."""
        self._seen.discard(uid)
        self._renew_at.pop(uid, None)
        self._told.pop(uid, None)
        if name:
            token = names.token_secret_name(self.settings.tenant, namespace, name)
            self._delete_owned("secrets", token, "token", uid)
        else:  # forgotten without its names: find its token Secret by its labels
            labels = names.link_labels(self.settings.tenant, namespace, "token", uid)
            labels.pop(names.NAMESPACE_LABEL)
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            items, _version = self.host.list(self._host_path("secrets"), label_selector=selector)
            for item in items:
                self._delete_owned("secrets", item["metadata"]["name"], "token", uid)
        with self._needs_lock:
            candidates = self._needs.pop(uid, set())
            if host_pod is not None:
                candidates |= _copies_of(host_pod)
            # Held while deleting: a create registers its needs before it copies, so it
            # either sees its copy deleted before it writes it, or keeps it from deletion.
            needed = set().union(*self._needs.values()) if self._needs else set()
            for other_uid, other in self.pods.all().items():
                if other_uid != uid:
                    needed |= _copies_of(other)
            for copy_name in sorted(candidates - needed):
                kind, host_name = copy_name.split("/", 1)
                self._delete_owned(COPY_KINDS[kind], host_name, kind, "")
                self._copied.pop(copy_name, None)
                self._checked_at.pop(copy_name, None)

    def _delete_owned(self, plural: str, name: str, kind: str, uid: str) -> None:
        """Delete host object NAME if the agent made it for this tenant as KIND (and for
        tenant Pod UID, when given): a token Secret's name outlives its Pod's uid."""
        current = self.host.get(self._host_path(plural, name))
        if current is None:
            return
        owner = names.owner_of(current)
        if owner is None or owner[0] != self.settings.tenant or owner[1] != kind:
            return
        if uid and uid_of(current) != uid:
            return
        try:
            self.host.request(
                "DELETE",
                self._host_path(plural, name),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "preconditions": {"uid": current["metadata"]["uid"]},
                },
                what=f"delete host {plural} {name}",
            )
        except KubeError as e:
            if e.status not in (404, 409):
                raise

    # -- reaching containers -------------------------------------------------------------
    def logs(self, pod: Obj, request: LogRequest) -> Iterator[bytes]:
        host_pod = self.pods.get(pod["metadata"]["uid"])
        if host_pod is None:
            raise ProviderError(f"pod {pod['metadata']['name']} has no host Pod")
        query: list[tuple[str, Any]] = [("container", request.container)]
        if request.follow and not request.previous:
            query.append(("follow", "true"))
        if request.previous:
            query.append(("previous", "true"))
        if request.tail_lines is not None:
            query.append(("tailLines", request.tail_lines))
        if request.timestamps:
            query.append(("timestamps", "true"))
        if request.since_seconds is not None:
            query.append(("sinceSeconds", request.since_seconds))
        try:
            resp = self.host.request(
                "GET",
                self._host_path("pods", host_pod["metadata"]["name"], "log"),
                query=query,
                stream=True,
                # A followed log may stay quiet for as long as the container does.
                timeout=(10.0, None) if request.follow else (10.0, 60.0),
                what=f"logs of {pod['metadata']['name']}",
            )
        except KubeError as e:
            raise ProviderError(str(e)) from e
        return _chunks(resp)

    def exec(
        self,
        pod: Obj,
        container: str,
        command: list[str],
        *,
        stdin: bool,
        tty: bool,
        size: tuple[int, int] | None = None,
    ) -> ExecSession:
        host_pod = self._running_host_pod(pod)
        try:
            ws = self._host_streams().exec(
                self.settings.namespace,
                host_pod["metadata"]["name"],
                container,
                command,
                stdin=stdin,
                tty=tty,
            )
        except Exception as e:  # the client raises ApiException(status=0) for a refused upgrade
            raise ProviderError(f"exec in the host Pod: {getattr(e, 'reason', None) or e}") from e
        session = WebSocketExec(ws)
        if tty and size:
            session.resize(*size)
        return session

    def connect(self, pod: Obj, port: int) -> socket.socket:
        host_pod = self._running_host_pod(pod)
        try:
            return self._host_streams().port_forward(
                self.settings.namespace, host_pod["metadata"]["name"], port
            )
        except Exception as e:
            raise ProviderError(f"port-forward to the host Pod: {getattr(e, 'reason', None) or e}") from e

    def _running_host_pod(self, pod: Obj) -> Obj:
        host_pod = self.pods.get(pod["metadata"]["uid"])
        if host_pod is None:
            raise ProviderError(f"pod {pod['metadata']['name']} has no host Pod")
        if (host_pod.get("status") or {}).get("phase") != "Running":
            raise ProviderError(f"pod {pod['metadata']['name']} is not running")
        return host_pod

    def _host_streams(self) -> HostStreams:
        if self.streams is None:
            self.streams = KubernetesStreams(self.host.api.configuration)
        return self.streams

    def stats(self) -> Obj:
        raise ProviderError(f"stats (the host kubelet's summary): {NOT_SUPPORTED}")


def _renew_time(answer: Obj, asked_seconds: int) -> float:
    """When a token from TokenRequest ANSWER is due for renewal (wall clock)."""
    now = time.time()
    expires = (answer.get("status") or {}).get("expirationTimestamp")
    try:
        life = datetime.datetime.fromisoformat(expires).timestamp() - now if expires else asked_seconds
    except ValueError:
        life = asked_seconds
    return now + TOKEN_RENEW_FRACTION * max(0.0, life)


def _new_images(pod: Obj, host_pod: Obj, group: str) -> list[Obj]:
    """The containers of GROUP whose image the tenant changed, as a strategic merge patch
    (containers merge by name)."""
    running = {c["name"]: c.get("image") for c in host_pod["spec"].get(group) or []}
    return [
        {"name": c["name"], "image": c["image"]}
        for c in pod["spec"].get(group) or []
        if c.get("image") and c["name"] in running and running[c["name"]] != c["image"]
    ]


def _copies_of(host_pod: Obj) -> set[str]:
    """The host ConfigMaps and Secrets HOST_POD reads, as "kind/name" (its token Secret too:
    ``_delete_owned`` leaves that one alone, its kind label is "token")."""
    return {f"{r.kind}/{r.name}" for r in pods.references(host_pod)}


def _chunks(resp: Any) -> Iterator[bytes]:
    """The body of a streamed response as it arrives."""
    try:
        yield from resp.stream(amt=None, decode_content=False)
    finally:
        resp.release_conn()

"""The host's objects the host-cluster provider watches: the tenant's host Pods (a cache
that every resync reads instead of the API server) and the Events about them.

One list and then one watch per kind, started over with a list when the watch breaks, as
any informer does; nothing here writes to the host.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ...kubeapi import Kube
from ...provider import EventSink
from . import names

LOG = logging.getLogger("rhizeption_agent.hostcluster")
Obj = dict[str, Any]

WATCH_SECONDS = 300
RETRY_SECONDS = 1.0
# How long a Pod put in by the agent outranks a list that began earlier (a list takes
# seconds at most; one that takes longer is followed by a watch that brings the Pod anyway).
PUT_KEPT_SECONDS = 60.0


def _version(obj: Obj) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:  # opaque by contract; numeric on every API server in use
        return 0


def uid_of(host_pod: Obj) -> str:
    return (host_pod["metadata"].get("labels") or {}).get(names.UID_LABEL, "")


class HostPods:
    """The tenant's host Pods by tenant Pod UID, kept by one list and watch on the tenant
    label (a resync of 500 Pods a second reads memory, not the host API server).

    A Pod the agent just created or patched is put in at once (``put``): a list that began
    before the create and ends after it would otherwise hide it, and the Pod would look
    deleted. A deleted Pod leaves its last version behind, so that the answer to a request
    made before the delete cannot bring it back."""

    def __init__(
        self, kube: Kube, namespace: str, tenant: str, on_change: Callable[[str], None] | None = None
    ) -> None:
        self.kube = kube
        self.path = f"/api/v1/namespaces/{namespace}/pods"
        self.selector = f"{names.TENANT_LABEL}={tenant},{names.KIND_LABEL}=pod"
        self.on_change = on_change
        self.synced = threading.Event()
        self.error = ""  # why the last list or watch failed; "" while the host answers
        self._pods: dict[str, Obj] = {}
        self._put_at: dict[str, float] = {}
        self._gone: dict[str, tuple[int, float]] = {}  # uid: (version of its DELETED, when)
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="host-pods", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def wait_synced(self, timeout: float) -> bool:
        self.start()
        return self.synced.wait(timeout)

    # -- reads ---------------------------------------------------------------------------
    def get(self, uid: str) -> Obj | None:
        with self._changed:
            return self._pods.get(uid)

    def all(self) -> dict[str, Obj]:
        with self._changed:
            return dict(self._pods)

    def named(self, name: str) -> Obj | None:
        """The host Pod called NAME, whichever tenant Pod it stands for."""
        with self._changed:
            return next((p for p in self._pods.values() if p["metadata"]["name"] == name), None)

    def wait_gone(self, uid: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: uid not in self._pods, timeout)

    # -- writes (from this agent's own requests, and from the watch) ---------------------
    def put(self, host_pod: Obj) -> None:
        uid = uid_of(host_pod)
        with self._changed:
            old = self._pods.get(uid)
            gone = self._gone.get(uid)
            if gone is not None and gone[0] >= _version(host_pod):
                return
            if old is None or _version(old) <= _version(host_pod):
                now = time.monotonic()
                self._pods[uid] = host_pod
                self._put_at = {u: at for u, at in self._put_at.items() if now - at < PUT_KEPT_SECONDS}
                self._put_at[uid] = now
                self._changed.notify_all()

    def _apply(self, kind: str, host_pod: Obj) -> None:
        uid = uid_of(host_pod)
        if not uid:
            return
        with self._changed:
            if kind == "DELETED":
                now = time.monotonic()
                self._pods.pop(uid, None)
                self._gone = {u: g for u, g in self._gone.items() if now - g[1] < PUT_KEPT_SECONDS}
                self._gone[uid] = (_version(host_pod), now)
            else:
                old = self._pods.get(uid)
                if old is not None and _version(old) > _version(host_pod):
                    return
                self._pods[uid] = host_pod
            self._changed.notify_all()
        if self.on_change is not None:
            self.on_change(uid)

    def relist(self) -> str:
        began = time.monotonic()
        items, version = self.kube.list(self.path, label_selector=self.selector)
        listed = {uid_of(p): p for p in items if uid_of(p)}
        with self._changed:
            for uid, at in self._put_at.items():
                if at > began and uid in self._pods and uid not in listed:
                    listed[uid] = self._pods[uid]  # created after the list was read
            changed = {u for u in set(listed) | set(self._pods) if listed.get(u) is not self._pods.get(u)}
            self._pods = listed
            self._changed.notify_all()
        self.error = ""
        self.synced.set()
        if self.on_change is not None:
            for uid in changed:
                self.on_change(uid)
        return version

    def _run(self) -> None:
        def failed(error: str) -> None:
            self.error = error
            LOG.warning("host pod watch ended (%s); listing again", error)

        _list_and_watch(
            self.kube,
            self.path,
            selectors={"label_selector": self.selector},
            start=self.relist,
            handle=self._apply,
            stopping=self._stopping,
            failed=failed,
        )


def _list_and_watch(
    kube: Kube,
    path: str,
    *,
    selectors: dict[str, str],
    start: Callable[[], str],
    handle: Callable[[str, Obj], None],
    stopping: threading.Event,
    failed: Callable[[str], None],
) -> None:
    """START (a list; it returns the version to watch from), then HANDLE each change the
    watch brings, until STOPPING; a broken watch (410 Gone, an API server restart, a
    network error) is said to FAILED and starts over with a list."""
    while not stopping.is_set():
        try:
            version = start()
            while not stopping.is_set():
                for kind, obj in kube.watch(path, version, timeout_seconds=WATCH_SECONDS, **selectors):
                    version = obj["metadata"].get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        handle(kind, obj)
                    if stopping.is_set():
                        return
        except Exception as e:
            if stopping.is_set():
                return
            failed(f"{type(e).__name__}: {e}")
        stopping.wait(RETRY_SECONDS)


class HostEvents:
    """The host's Events about the tenant's host Pods, told to their tenant Pods: why a
    host Pod does not start or restarts (image pulls, mounts, probes, the host scheduler),
    as ``kubectl describe pod`` shows a kubelet's. Only Events newer than the agent's
    start: the tenant has the older ones already, or never needed them."""

    # The host scheduler's placement names a host node; the tenant's scheduler told its own.
    SKIPPED_REASONS = frozenset({"Scheduled"})

    def __init__(self, kube: Kube, namespace: str, host_pods: HostPods, emit: EventSink) -> None:
        self.kube = kube
        self.namespace = namespace
        self.path = f"/api/v1/namespaces/{namespace}/events"
        self.selector = "involvedObject.kind=Pod"
        self.host_pods = host_pods
        self.emit = emit
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="host-events", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _now_version(self) -> str:
        # One item is enough: the list's version is where the watch starts, its items are old.
        page = next(self.kube.list_pages(self.path, field_selector=self.selector, page_size=1))
        return str((page.get("metadata") or {}).get("resourceVersion", ""))

    def handle(self, kind: str, event: Obj) -> None:
        if kind == "DELETED" or event.get("reason") in self.SKIPPED_REASONS:
            return
        host_name = (event.get("involvedObject") or {}).get("name", "")
        host_pod = self.host_pods.named(host_name)
        if host_pod is None:
            return  # not a Pod of this tenant's, or gone already
        meta = host_pod["metadata"]
        namespace = meta["labels"].get(names.NAMESPACE_LABEL, "")
        name = (meta.get("annotations") or {}).get(names.NAME_ANNOTATION, "")
        tenant_pod = {"metadata": {"namespace": namespace, "name": name, "uid": uid_of(host_pod)}}
        # The tenant knows its Pod by its own names, not the host's.
        message = (event.get("message") or "").replace(host_name, name).replace(self.namespace, namespace)
        self.emit(tenant_pod, event.get("type") or "Normal", event.get("reason") or "", message)

    def _run(self) -> None:
        _list_and_watch(
            self.kube,
            self.path,
            selectors={"field_selector": self.selector},
            start=self._now_version,
            handle=self.handle,
            stopping=self._stopping,
            failed=lambda error: LOG.warning("host event watch ended (%s); starting again", error),
        )

"""Events about Pods, written by a background thread so that a Pod's worker never waits
on them. Repeats of the same event are folded into one with a count, as the kubelet's
recorder does."""

from __future__ import annotations

import datetime
import logging
import os
import queue
import threading
from typing import Any

from .kubeapi import Kube, KubeError

LOG = logging.getLogger("rhizeption_agent.events")
Obj = dict[str, Any]
COMPONENT = "kubelet"  # what `kubectl describe` shows as the source; tools filter on it


class EventRecorder:
    def __init__(self, kube: Kube, node_name: str) -> None:
        self.kube = kube
        self.node_name = node_name
        self._queue: queue.Queue[tuple[Obj, str, str, str] | None] = queue.Queue(maxsize=10_000)
        self._seen: dict[tuple[str, str, str, str], tuple[str, int]] = {}
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def __call__(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        LOG.info(
            "%s/%s: %s %s", pod["metadata"].get("namespace"), pod["metadata"].get("name"), reason, message
        )
        try:
            self._queue.put_nowait((pod, type_, reason, message))
        except queue.Full:
            LOG.warning("event queue full: dropped %s %s", reason, message)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._write(*item)
            except KubeError as e:
                LOG.warning("writing an event: %s", e)
            except Exception:
                LOG.exception("writing an event")

    def _write(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        ns = meta["namespace"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        key = (meta["uid"], type_, reason, message)
        seen = self._seen.get(key)
        if seen is not None:
            name, count = seen
            try:
                self.kube.request(
                    "PATCH",
                    f"/api/v1/namespaces/{ns}/events/{name}",
                    body={"count": count + 1, "lastTimestamp": now},
                    content_type="application/merge-patch+json",
                )
                self._seen[key] = (name, count + 1)
                return
            except KubeError as e:
                if e.status != 404:
                    raise
        name = f"{meta['name']}.{os.urandom(8).hex()}"
        self.kube.request(
            "POST",
            f"/api/v1/namespaces/{ns}/events",
            body={
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "namespace": ns,
                    "uid": meta["uid"],
                    "resourceVersion": meta.get("resourceVersion", ""),
                },
                "reason": reason,
                "message": message[:1024],
                "type": type_,
                "source": {"component": COMPONENT, "host": self.node_name},
                "reportingComponent": COMPONENT,
                "reportingInstance": self.node_name,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )
        if len(self._seen) > 5000:
            self._seen.clear()
        self._seen[key] = (name, 1)

"""The core of the node agent: its Nodes, their Leases, the Pods bound to them, their status.

A pet node's agent serves one Node, the machine it runs on; a virtual node's agent serves the
Nodes its node source describes (a mirror per promoted host node, the resources node). Threads,
each with one job:
- ``lease``: renews each Node's Lease in kube-node-lease every ``lease_renew_seconds``;
- ``node-status``: asks the node source every ``status_check_seconds`` and posts a Node's
  status when something significant changed, and at least every ``status_report_seconds``;
  changed labels, taints or cordon (a mirror's host node's) are patched onto the Node;
- ``pods-NODE``, one per Node: lists the Pods with spec.nodeName = NODE, then watches from the
  list's resourceVersion; when the watch breaks (410, an API server restart, a network error)
  it lists again, which is also when Pods the agent runs but the API no longer has are removed;
- one worker per Pod: asks the Provider for one step and the Pod's status, and writes the
  status when it changed. A worker wakes on every change of its Pod, and every
  ``pod_resync_seconds`` to look at containers and probes.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from typing import Any

from . import node
from .config import AgentConfig
from .events import EventRecorder
from .kubeapi import Kube, KubeError
from .provider import Provider

LOG = logging.getLogger("rhizeption_agent")
Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")
RETRY_SECONDS = 1.0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PodWorker:
    def __init__(self, agent: Agent, uid: str) -> None:
        self.agent = agent
        self.uid = uid
        self.wake = threading.Event()
        self.posted: Obj | None = None
        self.thread = threading.Thread(target=self._run, name=f"pod-{uid[:8]}", daemon=True)

    def _run(self) -> None:
        while not self.agent.stopping.is_set():
            try:
                if not self._step():
                    return
            except Exception:
                LOG.exception("pod %s: sync failed; retrying", self.uid)
            self.wake.wait(self.agent.cfg.pod_resync_seconds)
            self.wake.clear()

    def _step(self) -> bool:
        """One pass; False when the worker is done (its Pod is gone)."""
        agent = self.agent
        pod = agent.pods.get(self.uid)
        if pod is None:
            agent.provider.forget(self.uid)
            agent.workers.pop(self.uid, None)
            return False
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            agent.provider.terminate(pod, int(grace), agent.events)
            try:
                agent.kube.request(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    body={
                        "kind": "DeleteOptions",
                        "apiVersion": "v1",
                        "gracePeriodSeconds": 0,
                        "preconditions": {"uid": self.uid},
                    },
                    what=f"delete pod {meta['namespace']}/{meta['name']}",
                )
            except KubeError as e:
                if e.status not in (404, 409):
                    raise
            return True  # the watch's DELETED ends the worker
        phase = (pod.get("status") or {}).get("phase")
        if phase in TERMINAL and self.posted is not None and self.posted.get("phase") == phase:
            return True  # finished: nothing runs, nothing to report until it is deleted
        if phase in TERMINAL and self.posted is None:
            # Ended before this agent (re)started: a finished Pod never runs again.
            agent.provider.stop_containers(pod, 0, agent.events)
            self.posted = pod.get("status")
            return True
        status = agent.provider.sync(pod, agent.events)
        if status.get("phase") in TERMINAL:
            agent.provider.stop_containers(
                pod, int(pod["spec"].get("terminationGracePeriodSeconds", 30)), agent.events
            )
        self._post(pod, status)
        return True

    def _post(self, pod: Obj, status: Obj) -> None:
        current = self.posted if self.posted is not None else pod.get("status") or {}
        if _same(current, status):
            self.posted = status
            return
        meta = pod["metadata"]
        body = {"metadata": {"uid": meta["uid"]}, "status": status}
        try:
            answer = self.agent.kube.request(
                "PATCH",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                body=body,
                content_type="application/merge-patch+json",
                what=f"status of pod {meta['namespace']}/{meta['name']}",
            )
        except KubeError as e:
            if e.status in (404, 409):
                return  # deleted (or replaced) meanwhile: the watch tells the rest
            raise
        self.posted = status
        self.agent.update_pod(answer, notify=False)


def _same(a: Obj, b: Obj) -> bool:
    keys = set(b)
    return json.dumps({k: a.get(k) for k in keys}, sort_keys=True) == json.dumps(b, sort_keys=True)


class Agent:
    def __init__(
        self, cfg: AgentConfig, kube: Kube, provider: Provider, node_source: node.NodeSource | None = None
    ) -> None:
        self.cfg = cfg
        self.kube = kube
        self.provider = provider
        self.node_source = node_source or node.MachineNode(cfg)
        self.events = EventRecorder(kube, cfg.node_name)
        self.stopping = threading.Event()
        self.pods: dict[str, Obj] = {}
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.node_names: list[str] = []  # fixed at register(): the node source's Nodes
        self.node_status: dict[str, Obj] = {}  # by Node name: the status last posted
        self.node_spec: dict[str, Obj] = {}  # by Node name: labels and spec last written
        self.listed: set[str] = set()  # the Nodes whose Pods have been listed once
        self.synced = threading.Event()  # the first list of every Node's Pods is in
        self.threads: list[threading.Thread] = []
        self.server: Any = None  # server.NodeServer, when the config enables it

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self.server is not None:
            self.server.start()
        self.register()
        loops = [("lease", self._lease_loop, ()), ("node-status", self._status_loop, ())]
        loops += [(f"pods-{name}", self._pods_loop, (name,)) for name in self.node_names]
        for name, target, args in loops:
            t = threading.Thread(target=target, args=args, name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        """Stop the agent's loops; the Pods keep running (a restarted agent adopts them)."""
        self.stopping.set()
        for w in list(self.workers.values()):
            w.wake.set()
        if self.server is not None:
            self.server.stop()
        self.events.close()

    # -- the Nodes ---------------------------------------------------------------------
    def register(self) -> None:
        """Create each Node, or bring an existing one's labels and taints to the source's."""
        while not self.stopping.is_set():
            try:
                wanted = self.node_source.nodes(self.provider.facts(), self.node_status)
                self.node_names = [n["metadata"]["name"] for n in wanted]
                for want in wanted:
                    self._register_one(want)
                self.post_status(force=True)
                LOG.info("nodes registered: %s", ", ".join(self.node_names))
                return
            except KubeError as e:
                LOG.warning("registering nodes: %s; retrying", e)
                self.stopping.wait(RETRY_SECONDS * 2)

    def _register_one(self, want: Obj) -> None:
        name = want["metadata"]["name"]
        if self.kube.get(f"/api/v1/nodes/{name}") is None:
            body = {k: v for k, v in want.items() if k != "status"}
            self.kube.request("POST", "/api/v1/nodes", body=body, what=f"register node {name}")
            self.node_spec[name] = _node_spec(want)
        else:
            self._patch_spec(want)

    def _patch_spec(self, want: Obj) -> None:
        """Labels (merged) and, when the source sets any, spec (taints, cordon) of the Node."""
        name = want["metadata"]["name"]
        patch: Obj = {"metadata": {"labels": want["metadata"]["labels"]}}
        if want.get("spec"):
            patch["spec"] = want["spec"]
        self.kube.request(
            "PATCH",
            f"/api/v1/nodes/{name}",
            body=patch,
            content_type="application/merge-patch+json",
            what=f"labels and taints of node {name}",
        )
        self.node_spec[name] = _node_spec(want)

    def post_status(self, force: bool = False) -> bool:
        """Post each Node's status that changed (every one when FORCE); True if any was."""
        posted = False
        for want in self.node_source.nodes(self.provider.facts(), self.node_status):
            name = want["metadata"]["name"]
            if _node_spec(want) != self.node_spec.get(name):
                self._patch_spec(want)
            st = want["status"]
            before = self.node_status.get(name)
            if not force and before is not None and node.significant(st) == node.significant(before):
                continue
            self.kube.request(
                "PATCH",
                f"/api/v1/nodes/{name}/status",
                body={"status": st},
                content_type="application/merge-patch+json",
                what=f"status of node {name}",
            )
            self.node_status[name] = st
            posted = True
        return posted

    def _status_loop(self) -> None:
        last = time.monotonic()
        while not self.stopping.wait(self.cfg.status_check_seconds):
            try:
                due = time.monotonic() - last >= self.cfg.status_report_seconds
                if self.post_status(force=due) or due:
                    last = time.monotonic()
            except KubeError as e:
                LOG.warning("node status: %s", e)
            except Exception:
                LOG.exception("node status")

    def _lease_loop(self) -> None:
        while not self.stopping.is_set():
            wait = self.cfg.lease_renew_seconds
            for name in self.node_names:
                try:
                    self.renew_lease(name)
                except KubeError as e:
                    LOG.warning("lease of node %s: %s", name, e)
                    wait = RETRY_SECONDS
                except Exception:
                    LOG.exception("lease of node %s", name)
                    wait = RETRY_SECONDS
            self.stopping.wait(wait)

    def renew_lease(self, name: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        lease = self.kube.get(path)
        spec = {
            "holderIdentity": name,
            "leaseDurationSeconds": self.cfg.lease_duration_seconds,
            "renewTime": _now(),
        }
        if lease is None:
            owner = self.kube.get(f"/api/v1/nodes/{name}")
            meta: Obj = {"name": name, "namespace": "kube-node-lease"}
            if owner:
                meta["ownerReferences"] = [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": name,
                        "uid": owner["metadata"]["uid"],
                    }
                ]
            self.kube.request(
                "POST",
                path.rsplit("/", 1)[0],
                body={
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": meta,
                    "spec": spec,
                },
                what=f"create lease of node {name}",
            )
            return
        lease["spec"].update(spec)
        self.kube.request("PUT", path, body=lease, what=f"renew lease of node {name}")

    # -- Pods ----------------------------------------------------------------------------
    def update_pod(self, pod: Obj, notify: bool = True) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            old = self.pods.get(uid)
            if old is not None and int(old["metadata"].get("resourceVersion") or 0) > int(
                pod["metadata"].get("resourceVersion") or 0
            ):
                return  # a status answer older than what the watch already gave
            self.pods[uid] = pod
            worker = self.workers.get(uid)
            if worker is None:
                worker = PodWorker(self, uid)
                self.workers[uid] = worker
                worker.thread.start()
        if notify:
            worker.wake.set()

    def wake(self, uid: str) -> None:
        """Run the worker of Pod UID now: a provider that watches its Pods (the host-cluster
        one) calls this on a change, so status goes back without waiting for the resync."""
        worker = self.workers.get(uid)
        if worker is not None:
            worker.wake.set()

    def remove_pod(self, uid: str) -> None:
        with self.lock:
            self.pods.pop(uid, None)
            worker = self.workers.get(uid)
        if worker is not None:
            worker.wake.set()
        else:
            self.provider.forget(uid)

    def _pods_loop(self, node_name: str) -> None:
        path = "/api/v1/pods"
        selector = f"spec.nodeName={node_name}"
        while not self.stopping.is_set():
            try:
                items, version = self.kube.list(path, field_selector=selector)
                self._converge(node_name, items)
                while not self.stopping.is_set():
                    for kind, obj in self.kube.watch(
                        path, version, field_selector=selector, timeout_seconds=300
                    ):
                        version = obj["metadata"].get("resourceVersion", version)
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            self.remove_pod(obj["metadata"]["uid"])
                        else:
                            self.update_pod(obj)
                        if self.stopping.is_set():
                            return
            except KubeError as e:
                LOG.warning("pod watch of node %s ended (%s); listing again", node_name, e)
            except Exception as e:  # connection resets while the API server restarts
                LOG.warning(
                    "pod watch of node %s broke (%s: %s); listing again", node_name, type(e).__name__, e
                )
            self.stopping.wait(RETRY_SECONDS)

    def _converge(self, node_name: str, items: list[Obj]) -> None:
        """After a list of NODE_NAME's Pods: start workers for new Pods, and remove what runs
        for Pods of that Node the API server no longer has. What the provider runs for no
        known Pod is removed only once every Node's Pods are listed: before that, a Pod of a
        Node not listed yet would look unknown."""
        listed = {p["metadata"]["uid"] for p in items}
        for pod in items:
            self.update_pod(pod)
        with self.lock:
            gone = [
                uid
                for uid, pod in self.pods.items()
                if pod["spec"].get("nodeName") == node_name and uid not in listed
            ]
            self.listed.add(node_name)
            everyone_listed = self.listed.issuperset(self.node_names)
        for uid in gone:
            self.remove_pod(uid)
        if not everyone_listed:
            return
        self.synced.set()
        try:
            running = self.provider.running_pods()
        except Exception as e:
            LOG.warning("listing the provider's pods: %s", e)
            return
        for view in running:
            if view.uid not in self.pods and view.uid not in self.workers:
                LOG.info("removing pod %s/%s: not in the API any more", view.namespace, view.name)
                self.provider.forget(view.uid)


def _node_spec(node_obj: Obj) -> Obj:
    """What of a Node the agent writes outside its status: labels and spec."""
    return {"labels": node_obj["metadata"].get("labels") or {}, "spec": node_obj.get("spec") or {}}

# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pods that do one job in the host cluster for the collection, and go.

A tenant's etcd is reached only from inside the host cluster (its Service, its
NetworkPolicy), so work on its data runs there: a snapshot, a restore, removing a tenant's
keys from a shared etcd. The caller builds the Pod; this module creates it, waits for it,
talks to it (exec, log) and deletes it. kubernetes.core has k8s_exec and k8s_log as
modules, not as functions a module_utils can call, hence this small layer over Kube.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube, KubeError, Resource

Obj = Dict[str, Any]

POD = Resource("v1", "Pod", "pods")
TIMEOUT = 180.0
EXEC_CHUNK = 1 << 20
# Reasons a container waits with before it has run: anything else is a problem to report.
_STARTING = (None, "PodInitializing", "ContainerCreating")


class OneShotError(Exception):
    """A one-shot Pod that failed or could not be talked to: (what, why)."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")
        self.what, self.why = what, why


def container(name: str, image: str, command: List[str], mounts: List[Obj]) -> Obj:
    """A one-shot step: no privilege, a read-only root, and its last log lines as its
    termination message, so a failed step's output ends up in the error (trouble())."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def trouble(pod: Obj) -> str:
    """What went wrong with POD, from its containers' statuses ('' when nothing did)."""
    st = pod.get("status") or {}
    for c in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
        state = c.get("state") or {}
        done = state.get("terminated")
        if done and done.get("exitCode"):
            return f"{c['name']} exited {done['exitCode']}: {(done.get('message') or '').strip()[-800:]}"
        waiting = state.get("waiting")
        if waiting and waiting.get("reason") not in _STARTING:
            return f"{c['name']}: {waiting.get('reason')}: {waiting.get('message', '')}"
    if st.get("phase") == "Failed":
        return f"failed: {st.get('reason', '')} {st.get('message', '')}".strip()
    return ""


def run(kube: Kube, pod: Obj, until: str, timeout: float = TIMEOUT) -> Obj:
    """Create POD (after removing a leftover of a crashed run) and wait until it is UNTIL
    (Running or Succeeded). Raises with its containers' trouble when it fails first."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    delete(kube, ns, name)
    kube.request("POST", POD.path(ns), body=pod, what=f"create Pod {ns}/{name}")
    seen: Dict[str, Obj] = {}

    def done(pods: Dict[str, Obj]) -> bool:
        p = pods.get(name)
        if p is None:
            return False
        seen["pod"] = p
        phase = (p.get("status") or {}).get("phase")
        return phase in (until, "Failed") or bool(trouble(p) and phase != "Succeeded")

    ok, _pods = kube.wait(POD.path(ns), done, timeout, field_selector=f"metadata.name={name}")
    now = seen.get("pod") or {}
    phase = (now.get("status") or {}).get("phase", "missing")
    if not ok or phase != until:
        raise OneShotError(f"Pod {ns}/{name}", trouble(now) or f"{phase} after {timeout:.0f} s")
    return now


def delete(kube: Kube, namespace: str, name: str, wait: bool = True) -> None:
    """Delete the Pod now, and with WAIT until it is gone. No grace period: these Pods keep
    nothing that needs one, and `sleep` as PID 1 ignores SIGTERM."""
    try:
        kube.request(
            "DELETE",
            POD.path(namespace, name),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
            what=f"delete Pod {namespace}/{name}",
        )
    except KubeError as e:
        if e.status != 404:
            raise
        return
    if wait:
        kube.wait(
            POD.path(namespace), lambda pods: name not in pods, 120, field_selector=f"metadata.name={name}"
        )


def log(kube: Kube, namespace: str, name: str, container: str) -> str:
    """The container's log (what a finished step printed)."""
    resp = kube.request(
        "GET",
        POD.path(namespace, name) + "/log",
        query=[("container", container)],
        stream=True,
        what=f"log of Pod {namespace}/{name}",
    )
    return resp.data.decode("utf-8", "replace")


def exec_out(
    kube: Kube,
    namespace: str,
    pod: str,
    command: List[str],
    *,
    container: str,
    stdin: bytes | None = None,
    timeout: float = TIMEOUT,
) -> str:
    """Run COMMAND in the container and return its stdout; raise with its stderr when it
    exits non-zero or still runs after TIMEOUT seconds. STDIN (ASCII) is sent first."""
    from kubernetes import client as k8s  # noqa: PLC0415 (imported where needed, see kube.py)
    from kubernetes.stream import stream  # noqa: PLC0415

    resp = stream(
        k8s.CoreV1Api(kube.api).connect_get_namespaced_pod_exec,
        pod,
        namespace,
        container=container,
        command=command,
        stdin=stdin is not None,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    out: List[str] = []
    err: List[str] = []
    try:
        if stdin is not None:
            for i in range(0, len(stdin), EXEC_CHUNK):
                resp.write_stdin(stdin[i : i + EXEC_CHUNK].decode("ascii"))
        deadline = time.monotonic() + timeout
        while resp.is_open() and time.monotonic() < deadline:
            resp.update(timeout=1)
            # timeout 0: without it a read with nothing buffered blocks until the next frame.
            out.append(resp.read_stdout(timeout=0) or "")
            err.append(resp.read_stderr(timeout=0) or "")
        if resp.is_open():
            raise OneShotError(
                f"Pod {namespace}/{pod}", f"{' '.join(command)} still ran after {timeout:.0f} s"
            )
        # The last frames can still be buffered when the channel closes.
        out.append(resp.read_stdout(timeout=0) or "")
        err.append(resp.read_stderr(timeout=0) or "")
        code = resp.returncode
    finally:
        resp.close()
    if code != 0:
        raise OneShotError(
            f"Pod {namespace}/{pod}", f"{' '.join(command)} exited {code}: {''.join(err).strip()[-800:]}"
        )
    return "".join(out)

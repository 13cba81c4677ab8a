"""The Provider for a container runtime on this host (Podman on pet nodes).

The kubelet's Pod logic lives here, once, for any runtime that implements
``ContainerRuntime``: init containers in order, then containers; the restart policy with
CrashLoopBackOff (no wait for the first restart, then 10 s doubling to 300 s, forgotten
after 10 minutes up); ErrImagePull/ImagePullBackOff; startup, liveness and readiness
probes; volumes and environment; and the Pod status computed from what the runtime shows.

Each Kubernetes container run is a runtime container labelled with the Pod's uid, the
container's name and its attempt number; a restart is a new container (attempt + 1) and
the previous one is kept for ``logs --previous``. The labels are the whole truth: an agent
that restarts finds its Pods from them, so nothing runs twice and nothing is lost.
"""

from __future__ import annotations

import base64
import datetime
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import podspec, probes
from .provider import EventSink, ExecSession, LogRequest, NodeFacts, PodView, ProviderError
from .volumes import PodVolumes, VolumeError, Volumes

LOG = logging.getLogger("rhizeption_agent.runtime")
Obj = dict[str, Any]

LABEL_NODE = "rhizeption.io/node"
LABEL_UID = "rhizeption.io/pod-uid"
LABEL_NAMESPACE = "rhizeption.io/pod-namespace"
LABEL_NAME = "rhizeption.io/pod-name"
LABEL_CONTAINER = "rhizeption.io/container"
LABEL_ATTEMPT = "rhizeption.io/attempt"
LABEL_INIT = "rhizeption.io/init"

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET = 600.0  # a container up this long starts its back-off afresh
SNAPSHOT_TTL = 0.5
IMAGE_ERROR_SHOWN = 2.0  # seconds ErrImagePull shows before ImagePullBackOff


class RuntimeError_(Exception):
    """The runtime refused or failed a request."""


class ImageError(RuntimeError_):
    """An image that is not present and cannot be pulled."""


@dataclass
class RtContainer:
    id: str
    labels: dict[str, str]
    state: str  # created | running | exited
    exit_code: int = 0
    oom_killed: bool = False
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    image: str = ""
    image_id: str = ""

    @property
    def name(self) -> str:
        return self.labels.get(LABEL_CONTAINER, "")

    @property
    def attempt(self) -> int:
        return int(self.labels.get(LABEL_ATTEMPT, "0"))

    @property
    def init(self) -> bool:
        return self.labels.get(LABEL_INIT) == "true"


@dataclass
class RtPod:
    id: str
    name: str
    labels: dict[str, str]
    infra_id: str = ""
    containers: list[RtContainer] = field(default_factory=list)


@dataclass
class SandboxSpec:
    name: str
    hostname: str
    labels: dict[str, str]
    infra_image: str
    network: str = ""
    host_network: bool = False
    share_pid: bool = False
    port_mappings: list[tuple[int, int, str, str]] = field(default_factory=list)
    dns_servers: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    host_aliases: list[str] = field(default_factory=list)


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass
class ContainerSpec:
    name: str
    image: str
    labels: dict[str, str]
    entrypoint: list[str] | None = None
    args: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    privileged: bool = False
    read_only_root: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    memory_limit: int = 0
    cpu_quota: int = 0  # microseconds per 100 ms period
    tty: bool = False
    stdin: bool = False


class ContainerRuntime(Protocol):
    def version(self) -> str: ...

    def list_pods(self, labels: dict[str, str]) -> list[RtPod]: ...

    def pod_ip(self, pod: RtPod) -> str: ...

    def image_present(self, image: str) -> bool: ...

    def pull(self, image: str) -> str: ...

    def create_pod(self, spec: SandboxSpec) -> RtPod: ...

    def remove_pod(self, pod_id: str) -> None: ...

    def create_container(self, pod: RtPod, spec: ContainerSpec) -> str: ...

    def start(self, container_id: str) -> None: ...

    def stop(self, container_id: str, timeout: int) -> None: ...

    def remove(self, container_id: str) -> None: ...

    def exec_start(
        self,
        container_id: str,
        command: list[str],
        *,
        stdin: bool,
        tty: bool,
        size: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> ExecSession:
        """COMMAND started in the container, its output streamed, its terminal (with TTY)
        of SIZE (width, height); with TIMEOUT, a ``read`` later than that many seconds
        after the start raises TimeoutError."""

    def logs(
        self, container_id: str, *, follow: bool, tail: int | None, timestamps: bool, since: int | None
    ) -> Iterator[bytes]: ...

    def stats(self, container_ids: list[str]) -> dict[str, dict[str, Any]]: ...


class ConfigError(Exception):
    """A container whose configuration cannot be made (CreateContainerConfigError)."""


@dataclass
class ProbeState:
    container_id: str
    started: bool
    ready: bool
    due: dict[str, float] = field(default_factory=dict)
    fails: dict[str, int] = field(default_factory=dict)
    successes: dict[str, int] = field(default_factory=dict)


@dataclass
class PodRun:
    """What the provider remembers about one Pod between syncs."""

    volumes: PodVolumes | None = None
    volumes_at: float = 0.0
    ip: str = ""
    crashes: dict[str, int] = field(default_factory=dict)
    restart_at: dict[str, tuple[str, float, float]] = field(
        default_factory=dict
    )  # name -> (cid, when, delay)
    waiting: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (reason, message)
    image_retry: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (when, delay)
    start_errors: dict[str, str] = field(default_factory=dict)  # container id -> message
    probes: dict[str, ProbeState] = field(default_factory=dict)
    pulled: set[str] = field(default_factory=set)
    notified: dict[str, float] = field(default_factory=dict)  # what was told once per back-off
    rejected: bool = False
    started_at: str = ""


def _rfc3339(when: datetime.datetime | None) -> str | None:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pull_policy(ctr: Obj) -> str:
    if ctr.get("imagePullPolicy"):
        return ctr["imagePullPolicy"]
    image = ctr["image"].split("@")[0]
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def run_to_end(
    runtime: ContainerRuntime, container_id: str, command: list[str], timeout: float
) -> tuple[int, bytes]:
    """(exit code, stdout and stderr) of COMMAND (exec probes): the same streaming exec as
    ``kubectl exec``; a command that fails to start or outlives TIMEOUT gives -1."""
    try:
        session = runtime.exec_start(container_id, command, stdin=False, tty=False, timeout=timeout)
    except RuntimeError_ as e:
        return -1, str(e).encode()
    out = b""
    try:
        while (chunk := session.read()) is not None:
            out += chunk[1]
        return session.exit_code(), out
    except TimeoutError:
        return -1, out + f"command timed out after {timeout:g}s".encode()
    except (RuntimeError_, OSError) as e:
        return -1, out + str(e).encode()
    finally:
        session.close()


def pod_phase(policy: str, statuses: list[Obj], *, init_done: bool, init_failed: bool) -> str:
    """The Pod phase from its containers' statuses, by the kubelet's rules: a container
    waiting to restart counts as stopped, one that never ran as waiting."""
    counts = {"running": 0, "waiting": 0, "stopped": 0, "succeeded": 0, "failed": 0}
    for cs in statuses:
        ended = cs["state"].get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if "running" in cs["state"]:
            counts["running"] += 1
        elif ended:
            counts["stopped"] += 1
            counts["succeeded" if ended["exitCode"] == 0 else "failed"] += 1
        else:
            counts["waiting"] += 1
    if init_failed:
        return "Failed"
    if not init_done or counts["waiting"]:
        return "Pending"
    if counts["running"]:
        return "Running"
    if not counts["stopped"]:
        return "Pending"
    if policy == "Always" or (counts["failed"] and policy == "OnFailure"):
        return "Running"
    return "Failed" if counts["failed"] else "Succeeded"


class PodSnapshot:
    """This node's runtime pods by Pod UID, listed at most every SNAPSHOT_TTL seconds for
    the workers' resyncs (one list for all Pods instead of one per Pod and second).

    No lock is held across a runtime call: under load a full list takes seconds, and a
    worker that has just started a container must not queue behind it (that wait was most
    of the agent's start-up overhead). What keeps a stale list from hiding a worker's own
    action: a Pod listed on its own (``one(uid, fresh=True)``, after every action) or
    forgotten is newer than a full list that began before, and that list keeps the newer entry.
    """

    def __init__(self, list_pods: Callable[[dict[str, str]], list[RtPod]], labels: dict[str, str]) -> None:
        self._list = list_pods
        self._labels = labels
        self._lock = threading.Lock()  # guards the fields below; never held across a call
        self._refreshing = threading.Lock()  # one full list at a time
        self._pods: dict[str, RtPod] = {}
        self._listed_at: float | None = None
        self._own_at: dict[str, float] = {}  # when a Pod was last listed on its own or forgotten

    def all(self, fresh: bool = False) -> dict[str, RtPod]:
        with self._lock:
            listed_at = self._listed_at
            if not fresh and listed_at is not None and time.monotonic() - listed_at <= SNAPSHOT_TTL:
                return dict(self._pods)
        # A resync may make do with the last list while another thread lists (what that
        # finds is no newer than what the workers recorded themselves); a first list and
        # a fresh one wait for their own.
        if not self._refreshing.acquire(blocking=fresh or listed_at is None):
            with self._lock:
                return dict(self._pods)
        try:
            began = time.monotonic()
            listed = {p.labels[LABEL_UID]: p for p in self._list(self._labels) if LABEL_UID in p.labels}
            with self._lock:
                for uid, at in list(self._own_at.items()):
                    if at > began:
                        if uid in self._pods:
                            listed[uid] = self._pods[uid]
                        else:
                            listed.pop(uid, None)
                    elif began - at > 60:
                        del self._own_at[uid]
                self._pods, self._listed_at = listed, began
                return dict(listed)
        finally:
            self._refreshing.release()

    def one(self, uid: str, fresh: bool = False) -> RtPod | None:
        if not fresh:
            return self.all().get(uid)
        began = time.monotonic()
        found = self._list({**self._labels, LABEL_UID: uid})
        with self._lock:
            if self._own_at.get(uid, began) <= began:
                self._own_at[uid] = began
                if found:
                    self._pods[uid] = found[0]
                else:
                    self._pods.pop(uid, None)
        return found[0] if found else None

    def forget(self, uid: str) -> None:
        with self._lock:
            self._own_at[uid] = time.monotonic()
            self._pods.pop(uid, None)


class RuntimeProvider:
    """The Provider (provider.py) that runs Pods on a ContainerRuntime."""

    def __init__(
        self,
        runtime: ContainerRuntime,
        volumes: Volumes,
        kube: Any,
        *,
        node_name: str,
        infra_image: str,
        network: str = "",
        host_ip: str = "",
        extra_labels: dict[str, str] | None = None,
        allocatable: dict[str, str] | None = None,
    ) -> None:
        self.runtime = runtime
        self.volumes = volumes
        self.kube = kube
        self.node_name = node_name
        self.infra_image = infra_image
        self.network = network
        self.host_ip = host_ip
        self.labels = {LABEL_NODE: node_name, **(extra_labels or {})}
        self.allocatable = allocatable or {}
        self.volume_resync = 5.0
        self._runs: dict[str, PodRun] = {}
        self._snapshot = PodSnapshot(runtime.list_pods, self.labels)

    # -- the node ------------------------------------------------------------------
    def facts(self) -> NodeFacts:
        try:
            return NodeFacts(runtime_version=self.runtime.version(), healthy=True)
        except RuntimeError_ as e:
            return NodeFacts(runtime_version="podman://unknown", healthy=False, message=str(e))

    def running_pods(self) -> list[PodView]:
        return [
            PodView(
                uid=p.labels[LABEL_UID],
                namespace=p.labels.get(LABEL_NAMESPACE, ""),
                name=p.labels.get(LABEL_NAME, ""),
            )
            for p in self._pods(fresh=True).values()
        ]

    def _pods(self, fresh: bool = False) -> dict[str, RtPod]:
        return self._snapshot.all(fresh)

    def _pod(self, uid: str, fresh: bool = False) -> RtPod | None:
        return self._snapshot.one(uid, fresh)

    # -- one step of one Pod -----------------------------------------------------------
    def sync(self, pod: Obj, emit: EventSink) -> Obj:
        uid = pod["metadata"]["uid"]
        run = self._runs.setdefault(uid, PodRun())
        if not run.started_at:
            run.started_at = (pod.get("status") or {}).get("startTime") or _now()
        bad = podspec.unsupported(pod)
        if bad:
            message = "; ".join(f"{f}: {why}" for f, why in bad)
            if not run.rejected:
                emit(pod, "Warning", "UnsupportedFeature", f"Pod rejected by the node agent: {message}")
                run.rejected = True
            return self._rejected_status(
                pod, "UnsupportedFeature", f"Pod rejected by the node agent: {message}"
            )
        rtpod = self._pod(uid)
        if rtpod is None or run.volumes is None:
            try:
                run.volumes = self.volumes.setup(pod, run.ip)
                run.volumes_at = time.monotonic()
            except (VolumeError, Exception) as e:  # a KubeError from a read too
                if not isinstance(e, VolumeError) and "KubeError" not in type(e).__name__:
                    raise
                emit(pod, "Warning", "FailedMount", str(e))
                return self._status(pod, run, None, waiting_reason=("ContainerCreating", str(e)))
        if rtpod is None:
            try:
                rtpod = self.runtime.create_pod(self._sandbox_spec(pod))
            except RuntimeError_ as e:
                emit(pod, "Warning", "FailedCreatePodSandBox", str(e))
                return self._status(pod, run, None, waiting_reason=("ContainerCreating", str(e)))
            run.ip = self.runtime.pod_ip(rtpod)
        elif not run.ip:
            run.ip = self.runtime.pod_ip(rtpod)
        if time.monotonic() - run.volumes_at > self.volume_resync:
            self.volumes.refresh(pod, run.volumes, run.ip)
            run.volumes_at = time.monotonic()
        if self._act(pod, run, rtpod, emit):
            rtpod = self._pod(uid, fresh=True) or rtpod
        return self._status(pod, run, rtpod)

    def _groups(self, rtpod: RtPod) -> dict[tuple[bool, str], list[RtContainer]]:
        groups: dict[tuple[bool, str], list[RtContainer]] = {}
        for c in rtpod.containers:
            groups.setdefault((c.init, c.name), []).append(c)
        for runs in groups.values():
            runs.sort(key=lambda c: c.attempt)
        return groups

    def _exited(self, run: PodRun, c: RtContainer) -> bool:
        return c.state == "exited" or (c.state == "created" and c.id in run.start_errors)

    def _act(self, pod: Obj, run: PodRun, rtpod: RtPod, emit: EventSink) -> bool:
        """Start, restart or kill containers as the spec and probes say; True when
        something changed."""
        spec = pod["spec"]
        policy = spec.get("restartPolicy") or "Always"
        groups = self._groups(rtpod)
        acted = False
        for ctr in spec.get("initContainers") or []:
            runs = groups.get((True, ctr["name"]), [])
            latest = runs[-1] if runs else None
            if latest is None:
                return self._start(pod, run, rtpod, ctr, attempt=0, init=True, emit=emit) or acted
            if latest.state == "running" or (latest.state == "created" and latest.id not in run.start_errors):
                return acted  # wait for it
            code = self._exit_code(run, latest)
            if code == 0:
                continue
            if policy == "Never":
                return acted  # the Pod has failed
            return self._restart(pod, run, rtpod, ctr, latest=latest, init=True, emit=emit) or acted
        for ctr in spec.get("containers") or []:
            runs = groups.get((False, ctr["name"]), [])
            latest = runs[-1] if runs else None
            if latest is None:
                acted = self._start(pod, run, rtpod, ctr, attempt=0, init=False, emit=emit) or acted
            elif latest.state == "running":
                acted = self._probe(pod, run, ctr, c=latest, emit=emit) or acted
            elif self._exited(run, latest):
                code = self._exit_code(run, latest)
                if policy == "Always" or (policy == "OnFailure" and code != 0):
                    acted = self._restart(pod, run, rtpod, ctr, latest=latest, init=False, emit=emit) or acted
        return acted

    def _exit_code(self, run: PodRun, c: RtContainer) -> int:
        return 128 if c.id in run.start_errors and c.state != "exited" else c.exit_code

    def _restart(
        self,
        pod: Obj,
        run: PodRun,
        rtpod: RtPod,
        ctr: Obj,
        *,
        latest: RtContainer,
        init: bool,
        emit: EventSink,
    ) -> bool:
        """Restart a container that ended, after its back-off."""
        name = ctr["name"]
        pending = run.restart_at.get(name)
        if pending is None or pending[0] != latest.id:
            crashes = run.crashes.get(name, latest.attempt)
            up = (
                (latest.finished_at - latest.started_at) if latest.started_at and latest.finished_at else None
            )
            if up is not None and up.total_seconds() >= BACKOFF_RESET:
                crashes = 0
            delay = 0.0 if crashes == 0 else min(BACKOFF_INITIAL * 2 ** (crashes - 1), BACKOFF_MAX)
            finished = latest.finished_at.timestamp() if latest.finished_at else time.time()
            run.crashes[name] = crashes + 1
            pending = (latest.id, max(finished + delay, time.time() if delay == 0 else 0), delay)
            run.restart_at[name] = pending
            if delay:
                message = (
                    f"back-off {int(delay)}s restarting failed container={name} pod={pod['metadata']['name']}"
                )
                emit(pod, "Warning", "BackOff", message)
        _cid, when, delay = pending
        if time.time() < when:
            message = (
                f"back-off {int(delay)}s restarting failed container={name} pod={pod['metadata']['name']}"
            )
            run.waiting[name] = ("CrashLoopBackOff", message)
            return False
        return self._start(pod, run, rtpod, ctr, attempt=latest.attempt + 1, init=init, emit=emit)

    def _start(
        self, pod: Obj, run: PodRun, rtpod: RtPod, ctr: Obj, *, attempt: int, init: bool, emit: EventSink
    ) -> bool:
        name = ctr["name"]
        image = ctr["image"]
        retry = run.image_retry.get(name)
        if retry and time.monotonic() < retry[0]:
            # ErrImagePull stays until the next sync after the failure, as with the kubelet.
            if time.monotonic() - (retry[0] - retry[1]) >= IMAGE_ERROR_SHOWN:
                run.waiting[name] = ("ImagePullBackOff", f'Back-off pulling image "{image}"')
                if run.notified.get(f"image/{name}") != retry[0]:
                    run.notified[f"image/{name}"] = retry[0]
                    emit(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"')
            return False
        if not self._image(pod, run, ctr, emit):
            return False
        try:
            spec = self._container_spec(pod, run, ctr, attempt, init)
        except ConfigError as e:
            run.waiting[name] = ("CreateContainerConfigError", str(e))
            emit(pod, "Warning", "Failed", f"Error: {e}")
            return False
        try:
            cid = self.runtime.create_container(rtpod, spec)
        except RuntimeError_ as e:
            run.waiting[name] = ("CreateContainerError", str(e))
            emit(pod, "Warning", "Failed", f"Error: {e}")
            return False
        emit(pod, "Normal", "Created", f"Created container {name}")
        run.waiting.pop(name, None)
        try:
            self.runtime.start(cid)
            emit(pod, "Normal", "Started", f"Started container {name}")
        except RuntimeError_ as e:
            run.start_errors[cid] = str(e)
            emit(pod, "Warning", "Failed", f"Error: {e}")
        # Keep the run before this one (logs --previous); older ones go.
        for old in rtpod.containers:
            if old.name == name and old.init == init and old.attempt < attempt - 1:
                try:
                    self.runtime.remove(old.id)
                except RuntimeError_ as e:
                    LOG.warning("removing old container %s: %s", old.id[:12], e)
        return True

    def _image(self, pod: Obj, run: PodRun, ctr: Obj, emit: EventSink) -> bool:
        """The container's image is present (pulled if the policy says so)."""
        name, image = ctr["name"], ctr["image"]
        policy = _pull_policy(ctr)
        present = self.runtime.image_present(image)
        if policy == "Never" and not present:
            run.waiting[name] = (
                "ErrImageNeverPull",
                f'Container image "{image}" is not present with pull policy of Never',
            )
            emit(pod, "Warning", "ErrImageNeverPull", run.waiting[name][1])
            return False
        if present and policy != "Always":
            if image not in run.pulled:
                emit(pod, "Normal", "Pulled", f'Container image "{image}" already present on machine')
                run.pulled.add(image)
            return True
        emit(pod, "Normal", "Pulling", f'Pulling image "{image}"')
        try:
            self.runtime.pull(image)
        except ImageError as e:
            _when, delay = run.image_retry.get(name, (0.0, 0.0))
            delay = min(max(delay * 2, BACKOFF_INITIAL), BACKOFF_MAX)
            run.image_retry[name] = (time.monotonic() + delay, delay)
            message = f'Failed to pull image "{image}": {e}'
            run.waiting[name] = ("ErrImagePull", message)
            emit(pod, "Warning", "Failed", message)
            emit(pod, "Warning", "Failed", "Error: ErrImagePull")
            return False
        run.image_retry.pop(name, None)
        run.pulled.add(image)
        emit(pod, "Normal", "Pulled", f'Successfully pulled image "{image}"')
        return True

    # -- probes ----------------------------------------------------------------------
    def _probe(self, pod: Obj, run: PodRun, ctr: Obj, *, c: RtContainer, emit: EventSink) -> bool:
        name = ctr["name"]
        st = run.probes.get(name)
        now = time.monotonic()
        if st is None or st.container_id != c.id:
            up = (datetime.datetime.now(datetime.UTC) - c.started_at).total_seconds() if c.started_at else 0.0
            st = ProbeState(
                container_id=c.id,
                started=not ctr.get("startupProbe"),
                ready=not ctr.get("readinessProbe"),
            )
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if ctr.get(kind):
                    st.due[kind] = now + max(0.0, float(ctr[kind].get("initialDelaySeconds") or 0) - up)
            run.probes[name] = st
        kinds = ["startupProbe"] if not st.started else ["livenessProbe", "readinessProbe"]
        for kind in kinds:
            probe = ctr.get(kind)
            if not probe or now < st.due.get(kind, 0):
                continue
            st.due[kind] = now + float(probe.get("periodSeconds") or 10)
            ok, message = probes.run(
                probe, ctr, run.ip, lambda cmd, timeout, cid=c.id: run_to_end(self.runtime, cid, cmd, timeout)
            )
            label = {"startupProbe": "Startup", "livenessProbe": "Liveness", "readinessProbe": "Readiness"}[
                kind
            ]
            if ok:
                st.fails[kind] = 0
                st.successes[kind] = st.successes.get(kind, 0) + 1
                if kind == "startupProbe":
                    st.started = True
                    st.due["livenessProbe"] = now + float(
                        (ctr.get("livenessProbe") or {}).get("initialDelaySeconds") or 0
                    )
                    st.due["readinessProbe"] = now + float(
                        (ctr.get("readinessProbe") or {}).get("initialDelaySeconds") or 0
                    )
                if kind == "readinessProbe" and st.successes[kind] >= int(probe.get("successThreshold") or 1):
                    st.ready = True
                continue
            st.successes[kind] = 0
            st.fails[kind] = st.fails.get(kind, 0) + 1
            emit(pod, "Warning", "Unhealthy", f"{label} probe failed: {message}")
            if st.fails[kind] < int(probe.get("failureThreshold") or 3):
                continue
            if kind == "readinessProbe":
                st.ready = False
                continue
            grace = probe.get("terminationGracePeriodSeconds") or pod["spec"].get(
                "terminationGracePeriodSeconds", 30
            )
            what = "startup" if kind == "startupProbe" else "liveness"
            emit(pod, "Normal", "Killing", f"Container {name} failed {what} probe, will be restarted")
            self.runtime.stop(c.id, int(grace))
            return True
        return False

    # -- building a container ----------------------------------------------------------
    def _sandbox_spec(self, pod: Obj) -> SandboxSpec:
        meta, spec = pod["metadata"], pod["spec"]
        dns = spec.get("dnsConfig") or {}
        ports = []
        for ctr in spec.get("containers") or []:
            for p in ctr.get("ports") or []:
                if p.get("hostPort"):
                    ports.append(
                        (
                            int(p["containerPort"]),
                            int(p["hostPort"]),
                            p.get("protocol", "TCP"),
                            p.get("hostIP", ""),
                        )
                    )
        return SandboxSpec(
            name=f"k8s_{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}",
            hostname=(spec.get("hostname") or meta["name"])[:63],
            labels={
                **self.labels,
                LABEL_UID: meta["uid"],
                LABEL_NAMESPACE: meta["namespace"],
                LABEL_NAME: meta["name"],
            },
            infra_image=self.infra_image,
            network=self.network,
            host_network=bool(spec.get("hostNetwork")),
            share_pid=bool(spec.get("shareProcessNamespace")),
            port_mappings=ports,
            dns_servers=list(dns.get("nameservers") or []),
            dns_search=list(dns.get("searches") or []),
            dns_options=[
                o["name"] + (f":{o['value']}" if o.get("value") else "") for o in dns.get("options") or []
            ],
            host_aliases=[
                f"{h}:{a['ip']}" for a in spec.get("hostAliases") or [] for h in a.get("hostnames") or []
            ],
        )

    def _container_spec(self, pod: Obj, run: PodRun, ctr: Obj, attempt: int, init: bool) -> ContainerSpec:
        meta, spec = pod["metadata"], pod["spec"]
        env = self._env(pod, run, ctr)
        sc = ctr.get("securityContext") or {}
        psc = spec.get("securityContext") or {}
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        gid = sc.get("runAsGroup", psc.get("runAsGroup"))
        user = "" if uid is None else f"{uid}" + (f":{gid}" if gid is not None else "")
        mounts = []
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        assert run.volumes is not None
        for vm in ctr.get("volumeMounts") or []:
            source = run.volumes.paths.get(vm["name"])
            if source is None:
                raise ConfigError(f"volumeMount {vm['name']!r} names no volume of the Pod")
            vol = volumes[vm["name"]]
            if vm.get("subPath"):
                sub = f"{source}/{vm['subPath']}"
                if "emptyDir" in vol or "hostPath" in vol:
                    import os  # noqa: PLC0415

                    os.makedirs(sub, exist_ok=True)
                source = sub
            read_only = bool(vm.get("readOnly")) or any(
                k in vol for k in ("configMap", "secret", "downwardAPI", "projected")
            )
            mounts.append(Mount(source, vm["mountPath"], read_only))
        limits = (ctr.get("resources") or {}).get("limits") or {}
        caps = sc.get("capabilities") or {}
        return ContainerSpec(
            name=f"k8s_{ctr['name']}_{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}_{attempt}",
            image=ctr["image"],
            labels={
                **self.labels,
                LABEL_UID: meta["uid"],
                LABEL_NAMESPACE: meta["namespace"],
                LABEL_NAME: meta["name"],
                LABEL_CONTAINER: ctr["name"],
                LABEL_ATTEMPT: str(attempt),
                LABEL_INIT: "true" if init else "false",
            },
            entrypoint=[podspec.expand(a, env) for a in ctr["command"]] if ctr.get("command") else None,
            args=[podspec.expand(a, env) for a in ctr["args"]] if ctr.get("args") else None,
            env=env,
            mounts=mounts,
            workdir=ctr.get("workingDir", ""),
            user=user,
            privileged=bool(sc.get("privileged")),
            read_only_root=bool(sc.get("readOnlyRootFilesystem")),
            cap_add=list(caps.get("add") or []),
            cap_drop=list(caps.get("drop") or []),
            memory_limit=int(podspec.quantity(limits["memory"])) if "memory" in limits else 0,
            cpu_quota=int(podspec.quantity(limits["cpu"]) * 100_000) if "cpu" in limits else 0,
            tty=bool(ctr.get("tty")),
            stdin=bool(ctr.get("stdin")),
        )

    def _env(self, pod: Obj, run: PodRun, ctr: Obj) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        cache: dict[str, Obj | None] = {}

        def source(kind: str, name: str) -> Obj | None:
            key = f"{kind}/{name}"
            if key not in cache:
                cache[key] = self.kube.get(f"/api/v1/namespaces/{ns}/{kind}/{name}")
            return cache[key]

        def data(kind: str, obj: Obj) -> dict[str, str]:
            raw = obj.get("data") or {}
            if kind == "secrets":
                return {k: base64.b64decode(v).decode(errors="replace") for k, v in raw.items()}
            return dict(raw)

        env: dict[str, str] = {}
        for ref in ctr.get("envFrom") or []:
            kind, r = (
                ("configmaps", ref["configMapRef"])
                if "configMapRef" in ref
                else ("secrets", ref["secretRef"])
            )
            obj = source(kind, r["name"])
            if obj is None:
                if r.get("optional"):
                    continue
                raise ConfigError(f'{kind[:-1].replace("configmap", "configmap")} "{r["name"]}" not found')
            for k, v in data(kind, obj).items():
                env[ref.get("prefix", "") + k] = v
        for var in ctr.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = podspec.expand(var.get("value", ""), env)
                continue
            vf = var["valueFrom"]
            if "fieldRef" in vf:
                env[var["name"]] = podspec.field_ref(pod, vf["fieldRef"]["fieldPath"], self.host_ip, run.ip)
            elif "resourceFieldRef" in vf:
                env[var["name"]] = podspec.resource_ref(
                    pod, ctr["name"], vf["resourceFieldRef"], self.allocatable
                )
            else:
                kind, r = (
                    ("configmaps", vf["configMapKeyRef"])
                    if "configMapKeyRef" in vf
                    else ("secrets", vf["secretKeyRef"])
                )
                obj = source(kind, r["name"])
                values = data(kind, obj) if obj else {}
                if r["key"] not in values:
                    if r.get("optional"):
                        continue
                    what = "configmap" if kind == "configmaps" else "secret"
                    raise ConfigError(
                        f'{what} "{r["name"]}" not found'
                        if obj is None
                        else f"couldn't find key {r['key']} in {what} {ns}/{r['name']}"
                    )
                env[var["name"]] = values[r["key"]]
        return env

    # -- status ------------------------------------------------------------------------
    def _rejected_status(self, pod: Obj, reason: str, message: str) -> Obj:
        status = dict(pod.get("status") or {})
        status.update(phase="Failed", reason=reason, message=message)
        status.setdefault("startTime", _now())
        return status

    def _status(
        self, pod: Obj, run: PodRun, rtpod: RtPod | None, waiting_reason: tuple[str, str] | None = None
    ) -> Obj:
        spec = pod["spec"]
        policy = spec.get("restartPolicy") or "Always"
        groups = self._groups(rtpod) if rtpod else {}
        init_done = True
        init_failed = False
        init_statuses = []
        for ctr in spec.get("initContainers") or []:
            runs = groups.get((True, ctr["name"]), [])
            cs = self._container_status(
                run, ctr, runs, init=True, default_wait=waiting_reason or ("PodInitializing", "")
            )
            init_statuses.append(cs)
            latest = runs[-1] if runs else None
            if latest is None or not self._exited(run, latest) or self._exit_code(run, latest) != 0:
                if latest is not None and self._exited(run, latest) and policy == "Never":
                    init_failed = True
                init_done = False
        statuses = []
        for ctr in spec.get("containers") or []:
            runs = groups.get((False, ctr["name"]), [])
            default = waiting_reason or (
                ("PodInitializing", "") if not init_done else ("ContainerCreating", "")
            )
            statuses.append(self._container_status(run, ctr, runs, init=False, default_wait=default))
        phase = pod_phase(policy, statuses, init_done=init_done, init_failed=init_failed)
        conditions = self._conditions(
            pod, statuses, phase=phase, init_done=init_done, sandbox=rtpod is not None
        )
        status: Obj = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}] if self.host_ip else [],
            "startTime": run.started_at,
            "containerStatuses": statuses,
            "qosClass": (pod.get("status") or {}).get("qosClass") or podspec.qos_class(pod),
        }
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        ip = self.host_ip if spec.get("hostNetwork") else run.ip
        if ip:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        return status

    def _conditions(
        self, pod: Obj, statuses: list[Obj], *, phase: str, init_done: bool, sandbox: bool
    ) -> list[Obj]:
        """The Pod's conditions; a transition time changes only when its status does."""
        spec = pod["spec"]
        containers_ready = bool(statuses) and all(cs["ready"] for cs in statuses)
        gates = [g["conditionType"] for g in spec.get("readinessGates") or []]
        old_conditions = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
        gates_ok = all(old_conditions.get(g, {}).get("status") == "True" for g in gates)
        wanted = {
            "PodReadyToStartContainers": sandbox,
            "Initialized": init_done,
            "ContainersReady": containers_ready and phase == "Running",
            "Ready": containers_ready and gates_ok and phase == "Running",
            "PodScheduled": True,
        }
        conditions = []
        for ctype, value in wanted.items():
            text = "True" if value else "False"
            old = old_conditions.get(ctype)
            cond: Obj = {
                "type": ctype,
                "status": text,
                "lastProbeTime": None,
                "lastTransitionTime": old["lastTransitionTime"]
                if old and old.get("status") == text
                else _now(),
            }
            if not value and ctype in ("ContainersReady", "Ready"):
                unready = [cs["name"] for cs in statuses if not cs["ready"]]
                cond["reason"] = (
                    "ContainersNotReady"
                    if unready
                    else "PodCompleted"
                    if phase != "Running"
                    else "ReadinessGatesNotReady"
                )
                if unready:
                    cond["message"] = f"containers with unready status: [{' '.join(unready)}]"
            if not value and ctype == "Initialized":
                cond["reason"] = "ContainersNotInitialized"
            conditions.append(cond)
        for ctype, old in old_conditions.items():
            if ctype not in wanted:
                conditions.append(old)  # readiness gates and others set by other writers
        return conditions

    def _terminated(self, run: PodRun, c: RtContainer) -> Obj:
        code = self._exit_code(run, c)
        reason = "OOMKilled" if c.oom_killed else "Completed" if code == 0 else "Error"
        if c.id in run.start_errors and c.state != "exited":
            reason = "StartError"
        term: Obj = {
            "exitCode": code,
            "reason": reason,
            "startedAt": _rfc3339(c.started_at),
            "finishedAt": _rfc3339(c.finished_at),
            "containerID": f"podman://{c.id}",
        }
        if c.id in run.start_errors:
            term["message"] = run.start_errors[c.id][:1000]
        return term

    def _container_status(
        self, run: PodRun, ctr: Obj, runs: list[RtContainer], *, init: bool, default_wait: tuple[str, str]
    ) -> Obj:
        name = ctr["name"]
        latest = runs[-1] if runs else None
        previous = runs[-2] if len(runs) > 1 else None
        state: Obj
        last: Obj = {}
        ready = False
        started = False
        waiting = run.waiting.get(name)
        if latest is not None and latest.state == "running":
            st = run.probes.get(name)
            started = st.started if st and st.container_id == latest.id else not ctr.get("startupProbe")
            probe_ready = st.ready if st and st.container_id == latest.id else not ctr.get("readinessProbe")
            ready = started and probe_ready and not init
            state = {"running": {"startedAt": _rfc3339(latest.started_at)}}
            if previous is not None:
                last = {"terminated": self._terminated(run, previous)}
        elif latest is not None and self._exited(run, latest):
            pending = run.restart_at.get(name)
            if waiting and waiting[0] == "CrashLoopBackOff" and pending and pending[0] == latest.id:
                state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
                last = {"terminated": self._terminated(run, latest)}
            else:
                state = {"terminated": self._terminated(run, latest)}
                if previous is not None:
                    last = {"terminated": self._terminated(run, previous)}
                ready = False
        elif waiting:
            state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
            if latest is not None:
                last = {"terminated": self._terminated(run, latest)} if self._exited(run, latest) else {}
        else:
            reason, message = default_wait
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        cs: Obj = {
            "name": name,
            "image": ctr["image"],
            "imageID": (latest.image_id if latest else ""),
            "ready": ready,
            "started": started,
            "restartCount": latest.attempt if latest else 0,
            "state": state,
            "lastState": last,
        }
        if latest is not None:
            cs["containerID"] = f"podman://{latest.id}"
        return cs

    # -- ending ------------------------------------------------------------------------
    def terminate(self, pod: Obj, grace_seconds: int, emit: EventSink) -> None:
        uid = pod["metadata"]["uid"]
        rtpod = self._pod(uid, fresh=True)
        if rtpod is not None:
            running = [c for c in rtpod.containers if c.state == "running"]
            threads = []
            for c in running:
                emit(pod, "Normal", "Killing", f"Stopping container {c.name}")
                t = threading.Thread(target=self._stop_quietly, args=(c.id, grace_seconds), daemon=True)
                t.start()
                threads.append(t)
            for t in threads:
                t.join(grace_seconds + 15)
            self.runtime.remove_pod(rtpod.id)
        self.volumes.teardown(uid)
        self._runs.pop(uid, None)
        self._snapshot.forget(uid)

    def _stop_quietly(self, cid: str, grace: int) -> None:
        try:
            self.runtime.stop(cid, grace)
        except RuntimeError_ as e:
            LOG.warning("stopping %s: %s", cid[:12], e)

    def stop_containers(self, pod: Obj, grace_seconds: int, emit: EventSink) -> None:
        """A Pod that reached Succeeded or Failed: its sandbox stays until it is deleted."""
        rtpod = self._pod(pod["metadata"]["uid"])
        for c in rtpod.containers if rtpod else []:
            if c.state == "running":
                emit(pod, "Normal", "Killing", f"Stopping container {c.name}")
                self._stop_quietly(c.id, grace_seconds)

    def forget(self, uid: str) -> None:
        rtpod = self._pod(uid, fresh=True)
        if rtpod is not None:
            for c in rtpod.containers:
                self._stop_quietly(c.id, 0)
            self.runtime.remove_pod(rtpod.id)
        self.volumes.teardown(uid)
        self._runs.pop(uid, None)
        self._snapshot.forget(uid)

    # -- reaching containers -------------------------------------------------------------
    def _find(self, pod: Obj, container: str, previous: bool = False) -> RtContainer:
        rtpod = self._pod(pod["metadata"]["uid"], fresh=True)
        if rtpod is None:
            raise ProviderError(f"pod {pod['metadata']['name']} has no containers on this node")
        runs = sorted(
            (c for c in rtpod.containers if c.name == container), key=lambda c: (not c.init, c.attempt)
        )
        if not runs:
            raise ProviderError(f"container {container} is not valid for pod {pod['metadata']['name']}")
        if previous:
            if len(runs) < 2:
                raise ProviderError(
                    f'previous terminated container "{container}" in pod'
                    f' "{pod["metadata"]["name"]}" not found'
                )
            return runs[-2]
        return runs[-1]

    def logs(self, pod: Obj, request: LogRequest) -> Iterator[bytes]:
        c = self._find(pod, request.container, request.previous)
        since = int(time.time()) - request.since_seconds if request.since_seconds else None
        return self.runtime.logs(
            c.id,
            follow=request.follow and not request.previous,
            tail=request.tail_lines,
            timestamps=request.timestamps,
            since=since,
        )

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
        c = self._find(pod, container)
        if c.state != "running":
            raise ProviderError(f"container {container} is not running")
        try:
            return self.runtime.exec_start(c.id, command, stdin=stdin, tty=tty, size=size)
        except RuntimeError_ as e:
            raise ProviderError(str(e)) from e

    def connect(self, pod: Obj, port: int) -> socket.socket:
        rtpod = self._pod(pod["metadata"]["uid"], fresh=True)
        if rtpod is None:
            raise ProviderError(f"pod {pod['metadata']['name']} has no sandbox on this node")
        ip = self.host_ip if pod["spec"].get("hostNetwork") else self.runtime.pod_ip(rtpod)
        conn = socket.create_connection((ip or "127.0.0.1", port), timeout=10)
        conn.settimeout(None)  # a forwarded connection may stay idle as long as its ends like
        return conn

    def container_id(self, pod: Obj, container: str) -> str:
        return self._find(pod, container).id

    def stats(self) -> Obj:
        pods = self._pods(fresh=True)
        running = [c.id for p in pods.values() for c in p.containers if c.state == "running"]
        raw = self.runtime.stats(running)
        out = []
        for p in pods.values():
            ctrs = []
            for c in p.containers:
                s = raw.get(c.id)
                if s is None:
                    continue
                ctrs.append(
                    {
                        "name": c.name,
                        "startTime": _rfc3339(c.started_at),
                        "cpu": {
                            "time": _now(),
                            "usageNanoCores": int(float(s.get("CPU", 0)) * 1e7),
                            "usageCoreNanoSeconds": int(s.get("CPUNano", 0)),
                        },
                        "memory": {
                            "time": _now(),
                            "usageBytes": int(s.get("MemUsage", 0)),
                            "workingSetBytes": int(s.get("MemUsage", 0)),
                        },
                    }
                )
            out.append(
                {
                    "podRef": {
                        "name": p.labels.get(LABEL_NAME),
                        "namespace": p.labels.get(LABEL_NAMESPACE),
                        "uid": p.labels.get(LABEL_UID),
                    },
                    "startTime": None,
                    "containers": ctrs,
                    "cpu": {"usageNanoCores": sum(c["cpu"]["usageNanoCores"] for c in ctrs)},
                    "memory": {"workingSetBytes": sum(c["memory"]["workingSetBytes"] for c in ctrs)},
                }
            )
        return {"pods": out}

"""Podman as the container runtime of a pet node, through its REST API (the ``podman``
bindings, which speak to Podman 4.3 as well as 5).

A Kubernetes Pod is a Podman pod: its infra container holds the network, IPC and UTS
namespaces, and each Kubernetes container (every restart a new one, as the kubelet does,
so `logs --previous` has something to read) joins it. Every object carries the agent's
labels; they are how the agent finds its own after a restart, and nothing else.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import podman
from podman import errors as podman_errors

from ..provider import STDERR, STDOUT
from ..runtime import (
    ContainerSpec,
    ImageError,
    RtContainer,
    RtPod,
    RuntimeError_,
    SandboxSpec,
)

LOG = logging.getLogger("rhizeption_agent.podman")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _ts(value: Any) -> datetime.datetime | None:
    """A Podman list time (unix seconds, 0 or negative when unset) as a datetime."""
    if not value or int(value) <= 0:
        return None
    return datetime.datetime.fromtimestamp(int(value), tz=datetime.UTC)


def _iso(value: str | None) -> datetime.datetime | None:
    """A Podman inspect time (RFC 3339 with nanoseconds); None for the zero time."""
    if not value or value.startswith("0001-"):
        return None
    head, _sep, tail = value.partition(".")
    zone = tail.lstrip("0123456789") if tail else value[19:]
    frac = tail[: len(tail) - len(zone)][:6] if tail else ""
    text = head + (f".{frac}" if frac else "") + (zone.replace("Z", "+00:00") or "+00:00")
    return datetime.datetime.fromisoformat(text)


class PodmanRuntime:
    """The ContainerRuntime of runtime.py on one Podman service."""

    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url
        self.client = podman.PodmanClient(base_url=base_url, timeout=timeout)
        self._exited: dict[str, tuple[int, bool, datetime.datetime | None]] = {}
        self._lock = threading.Lock()

    # -- the node ------------------------------------------------------------------
    def version(self) -> str:
        try:
            return "podman://" + self.client.version()["Version"]
        except (podman_errors.APIError, OSError) as e:
            raise RuntimeError_(f"Podman at {self.base_url} does not answer: {e}") from e

    # -- reading -------------------------------------------------------------------
    def list_pods(self, labels: dict[str, str]) -> list[RtPod]:
        """Every Podman pod with LABELS, with its containers (one call for each kind)."""
        flt = [f"label={k}={v}" for k, v in labels.items()]
        try:
            pods = self.client.pods.list(filters=flt)
            containers = self.client.containers.list(all=True, filters=flt)
        except (podman_errors.APIError, OSError) as e:
            raise RuntimeError_(f"listing Podman pods: {e}") from e
        by_pod: dict[str, RtPod] = {}
        for p in pods:
            attrs = p.attrs
            by_pod[attrs["Id"]] = RtPod(
                id=attrs["Id"],
                name=attrs.get("Name", ""),
                labels=attrs.get("Labels") or {},
                infra_id=attrs.get("InfraId", ""),
                containers=[],
            )
        for c in containers:
            attrs = c.attrs
            pod = by_pod.get(attrs.get("Pod", ""))
            if pod is None or attrs.get("IsInfra") or attrs["Id"] == pod.infra_id:
                continue
            pod.containers.append(self._container(attrs))
        return list(by_pod.values())

    def _container(self, attrs: dict[str, Any]) -> RtContainer:
        state = attrs.get("State", "")
        cid = attrs["Id"]
        exit_code = int(attrs.get("ExitCode") or 0)
        oom = False
        finished = _ts(attrs.get("ExitedAt"))
        if state in ("exited", "stopped"):
            state = "exited"
            # The list has no OOM flag and second-resolution times: inspect once, then cache
            # (an exited container does not change).
            with self._lock:
                known = self._exited.get(cid)
            if known is None:
                try:
                    st = self.client.containers.get(cid).attrs["State"]
                    known = (
                        int(st.get("ExitCode") or 0),
                        bool(st.get("OOMKilled")),
                        _iso(st.get("FinishedAt")),
                    )
                except (podman_errors.APIError, podman_errors.NotFound, OSError):
                    known = (exit_code, False, finished)
                with self._lock:
                    self._exited[cid] = known
            exit_code, oom, finished = known[0], known[1], known[2] or finished
        elif state not in ("running", "created", "configured"):
            state = "running" if state in ("paused", "stopping") else "created"
        return RtContainer(
            id=cid,
            labels=attrs.get("Labels") or {},
            state="created" if state == "configured" else state,
            exit_code=exit_code,
            oom_killed=oom,
            started_at=_ts(attrs.get("StartedAt")),
            finished_at=finished,
            image=attrs.get("Image", ""),
            image_id=attrs.get("ImageID", ""),
        )

    def pod_ip(self, pod: RtPod) -> str:
        if not pod.infra_id:
            return ""
        try:
            net = self.client.containers.get(pod.infra_id).attrs.get("NetworkSettings") or {}
        except (podman_errors.APIError, podman_errors.NotFound, OSError):
            return ""
        if net.get("IPAddress"):
            return net["IPAddress"]
        for network in (net.get("Networks") or {}).values():
            if network.get("IPAddress"):
                return network["IPAddress"]
        return ""

    # -- images --------------------------------------------------------------------
    def image_present(self, image: str) -> bool:
        try:
            return bool(self.client.images.exists(image))
        except (podman_errors.APIError, OSError):
            return False

    def pull(self, image: str) -> str:
        """Pull IMAGE; ImageError with Podman's own reason when it cannot be had."""
        error = ""
        try:
            for line in self.client.images.pull(image, stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    error = str(line["error"]).strip()
        except (podman_errors.APIError, podman_errors.ImageNotFound, OSError) as e:
            error = str(e).strip() or f"cannot pull {image}"
        if error or not self.image_present(image):
            raise ImageError(error or f"{image} is not present after the pull")
        return image

    # -- writing -------------------------------------------------------------------
    def create_pod(self, spec: SandboxSpec) -> RtPod:
        body: dict[str, Any] = {
            "labels": spec.labels,
            "hostname": spec.hostname,
            "infra_image": spec.infra_image,
            # The pod's own cgroup would need every v1 controller, and net_cls is not
            # mounted on these hosts (MACHINE.md); each container gets its own cgroup.
            "share_parent": False,
        }
        if spec.host_network:
            body["netns"] = {"nsmode": "host"}
        elif spec.network:
            body["Networks"] = {spec.network: {}}
        if spec.share_pid:
            body["shared_namespaces"] = ["ipc", "net", "uts", "pid"]
        if spec.port_mappings:
            body["portmappings"] = [
                {"container_port": p, "host_port": h, "protocol": proto.lower(), "host_ip": ip}
                for p, h, proto, ip in spec.port_mappings
            ]
        if spec.dns_servers:
            body["dns_server"] = spec.dns_servers
        if spec.dns_search:
            body["dns_search"] = spec.dns_search
        if spec.dns_options:
            body["dns_option"] = spec.dns_options
        if spec.host_aliases:
            body["hostadd"] = spec.host_aliases
        try:
            pod = self.client.pods.create(spec.name, **body)
            pod.start()
            attrs = pod.attrs
        except (podman_errors.APIError, OSError) as e:
            raise RuntimeError_(f"creating Podman pod {spec.name}: {e}") from e
        return RtPod(
            id=attrs["Id"], name=spec.name, labels=spec.labels, infra_id=attrs.get("InfraContainerID", "")
        )

    def remove_pod(self, pod_id: str) -> None:
        """Remove the pod; what still runs in it (its infra container, a container whose
        stop failed) is killed first, or Podman would give each 10 s."""
        try:
            self.client.api.post(f"/pods/{pod_id}/kill", params={"signal": "SIGKILL"}, timeout=60)
            self.client.pods.remove(pod_id, force=True)
        except podman_errors.NotFound:
            pass
        except (podman_errors.APIError, OSError) as e:
            raise RuntimeError_(f"removing Podman pod {pod_id}: {e}") from e

    def create_container(self, pod: RtPod, spec: ContainerSpec) -> str:
        kwargs: dict[str, Any] = {
            "name": spec.name,
            "pod": pod.id,
            "labels": spec.labels,
            "environment": spec.env,
            "mounts": [
                {"type": "bind", "source": m.source, "target": m.target, "read_only": m.read_only}
                for m in spec.mounts
            ],
            "tty": spec.tty,
            "stdin_open": spec.stdin,
            "privileged": spec.privileged,
            "read_only": spec.read_only_root,
        }
        if spec.entrypoint is not None:
            kwargs["entrypoint"] = spec.entrypoint
        if spec.args is not None:
            kwargs["command"] = spec.args
        elif spec.entrypoint is not None:
            kwargs["command"] = []
        if spec.workdir:
            kwargs["working_dir"] = spec.workdir
        if spec.user:
            kwargs["user"] = spec.user
        if spec.cap_add:
            kwargs["cap_add"] = spec.cap_add
        if spec.cap_drop:
            kwargs["cap_drop"] = spec.cap_drop
        if spec.memory_limit:
            kwargs["mem_limit"] = spec.memory_limit
        if spec.cpu_quota:
            kwargs["cpu_period"] = 100_000
            kwargs["cpu_quota"] = spec.cpu_quota
        try:
            return self.client.containers.create(spec.image, **kwargs).id
        except podman_errors.ImageNotFound as e:
            raise ImageError(str(e)) from e
        except (podman_errors.APIError, OSError) as e:
            raise RuntimeError_(f"creating container {spec.name}: {e}") from e

    def start(self, container_id: str) -> None:
        try:
            self.client.containers.get(container_id).start()
        except (podman_errors.APIError, OSError) as e:
            raise RuntimeError_(f"starting container {container_id[:12]}: {e}") from e

    def stop(self, container_id: str, timeout: int) -> None:
        """SIGTERM, then SIGKILL after TIMEOUT seconds. The request waits for Podman: the
        bindings' own stop() gives up after 1.5 x TIMEOUT, too soon on a busy host."""
        try:
            resp = self.client.api.post(
                f"/containers/{container_id}/stop",
                params={"timeout": max(0, timeout), "ignore": True},
                timeout=max(0, timeout) + 60,
            )
        except OSError as e:
            raise RuntimeError_(f"stopping container {container_id[:12]}: {e}") from e
        if resp.status_code not in (204, 304, 404):
            raise RuntimeError_(
                f"stopping container {container_id[:12]}: {resp.status_code} {resp.text.strip()}"
            )

    def remove(self, container_id: str) -> None:
        try:
            self.client.containers.remove(container_id, force=True)
        except podman_errors.NotFound:
            pass
        except (podman_errors.APIError, OSError) as e:
            raise RuntimeError_(f"removing container {container_id[:12]}: {e}") from e
        with self._lock:
            self._exited.pop(container_id, None)

    # -- reaching a container ------------------------------------------------------
    def exec_start(
        self,
        container_id: str,
        command: list[str],
        *,
        stdin: bool,
        tty: bool,
        size: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> PodmanExec:
        """Create an exec session and start it on a hijacked connection (see PodmanExec)."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        config = {
            "Cmd": command,
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": tty,
        }
        try:
            resp = self.client.api.post(f"/containers/{container_id}/exec", data=json.dumps(config))
            resp.raise_for_status()
            exec_id = resp.json()["Id"]
        except (podman_errors.APIError, OSError, ValueError, KeyError) as e:
            raise RuntimeError_(f"exec in {container_id[:12]}: {e}") from e
        start: dict[str, Any] = {"Detach": False, "Tty": tty}
        if tty and size:
            start["w"], start["h"] = size  # the command starts at the client's terminal size
        path = f"{self.client.api.path_prefix}exec/{exec_id}/start"
        sock, early = _hijack(self.base_url, path, start, deadline)
        return PodmanExec(self.client, exec_id, sock, early, tty=tty, deadline=deadline)

    def logs(
        self,
        container_id: str,
        *,
        follow: bool,
        tail: int | None,
        timestamps: bool,
        since: int | None,
    ) -> Iterator[bytes]:
        try:
            ctr = self.client.containers.get(container_id)
            kwargs: dict[str, Any] = {"timestamps": timestamps, "stream": True, "follow": follow}
            if tail is not None:
                kwargs["tail"] = tail
            if since is not None:
                kwargs["since"] = since
            yield from ctr.logs(**kwargs)
        except (podman_errors.APIError, OSError) as e:
            raise RuntimeError_(f"logs of {container_id[:12]}: {e}") from e

    def stats(self, container_ids: list[str]) -> dict[str, dict[str, Any]]:
        """CPU and memory use of running containers, by id."""
        if not container_ids:
            return {}
        try:
            resp = self.client.api.get(
                "/containers/stats", params={"containers": container_ids, "stream": False}
            )
            resp.raise_for_status()
            data = resp.json()
        except (podman_errors.APIError, OSError, ValueError) as e:
            LOG.debug("stats: %s", e)
            return {}
        return {s["ContainerID"]: s for s in data.get("Stats") or []}

    def close(self) -> None:
        self.client.close()


# -- exec on a hijacked connection ------------------------------------------------------
# The podman bindings (5.8) have no way to write to an exec's stdin: exec_run ignores its
# ``socket`` argument, ``attach_socket`` raises NotImplementedError, and ``stream=True``
# only reads. Podman's API upgrades the exec start request to a raw two-way stream, as
# Docker's does, so that request is written here by hand; the rest (create, resize,
# inspect) goes through the bindings.


def _connect(base_url: str, deadline: float | None) -> socket.socket:
    url = urlsplit(base_url)
    timeout = None if deadline is None else max(0.1, deadline - time.monotonic())
    if url.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(url.netloc + url.path)
        except OSError:
            sock.close()
            raise
        return sock
    if url.scheme in ("tcp", "http"):
        return socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=timeout)
    raise RuntimeError_(f"exec needs Podman on a unix:// or tcp:// URL, not {base_url}")


def _hijack(
    base_url: str, path: str, body: dict[str, Any], deadline: float | None
) -> tuple[socket.socket, bytes]:
    """POST BODY to PATH asking for an upgrade; the connection, now a raw stream, and the
    stream's bytes that came with the response head."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: podman\r\nContent-Type: application/json\r\n"
        f"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    try:
        sock = _connect(base_url, deadline)
    except OSError as e:
        raise RuntimeError_(f"connecting to Podman at {base_url}: {e}") from e
    try:
        sock.sendall(head + data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk or len(buf) > 65536:
                raise RuntimeError_(f"Podman answered {path} with no response head")
            buf += chunk
        response, _sep, rest = buf.partition(b"\r\n\r\n")
        lines = response.decode("latin-1").split("\r\n")
        code = int(lines[0].split()[1])
        if code not in (101, 200):  # 200: a Podman that hijacks without announcing the upgrade
            headers = {k.strip().lower(): v.strip() for k, _s, v in (h.partition(":") for h in lines[1:])}
            want = int(headers.get("content-length") or 0)
            while len(rest) < want and (chunk := sock.recv(65536)):
                rest += chunk
            try:
                message = json.loads(rest)["message"]
            except (ValueError, KeyError, TypeError):
                message = rest.decode(errors="replace").strip()
            raise RuntimeError_(f"starting exec: {message} (HTTP {code})")
    except (OSError, ValueError, IndexError) as e:
        sock.close()
        raise RuntimeError_(f"starting exec: {e}") from e
    except RuntimeError_:
        sock.close()
        raise
    return sock, rest


class PodmanExec:
    """An exec session on its hijacked connection: what is written goes to the command's
    stdin; what is read is its output, raw with a terminal, else in frames of an 8-byte
    header (stream 1 or 2, three zero bytes, the payload's size big-endian) and payload."""

    def __init__(
        self,
        client: podman.PodmanClient,
        exec_id: str,
        sock: socket.socket,
        early: bytes,
        *,
        tty: bool,
        deadline: float | None,
    ) -> None:
        self.client = client
        self.id = exec_id
        self.sock = sock
        self.tty = tty
        self.deadline = deadline
        self._buf = early
        self._closed = False

    def _recv(self) -> bytes:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"exec {self.id[:12]} outlived its timeout")
            self.sock.settimeout(left)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:
            if self._closed:  # closed under a blocked read: that is the end
                return b""
            raise

    def _exactly(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            chunk = self._recv()
            if not chunk:
                if self._buf:
                    raise RuntimeError_(f"exec {self.id[:12]}: the stream ended inside a frame")
                return None
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read(self) -> tuple[int, bytes] | None:
        if self.tty:
            data, self._buf = self._buf or self._recv(), b""
            return (STDOUT, data) if data else None
        while True:
            header = self._exactly(8)
            if header is None:
                return None
            size = int.from_bytes(header[4:8], "big")
            payload = self._exactly(size) if size else b""
            if payload is None:
                raise RuntimeError_(f"exec {self.id[:12]}: the stream ended inside a frame")
            if payload:  # stream 3 is Podman's own error text: shown as stderr
                return (STDOUT if header[0] == 1 else STDERR), payload

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def resize(self, width: int, height: int) -> None:
        try:
            resp = self.client.api.post(f"/exec/{self.id}/resize", params={"h": height, "w": width})
            resp.raise_for_status()
        except (podman_errors.APIError, OSError) as e:
            LOG.debug("resizing exec %s: %s", self.id[:12], e)  # a session that just ended

    def exit_code(self) -> int:
        # The stream ends as the command exits; Podman records the code a moment later.
        for _attempt in range(50):
            try:
                resp = self.client.api.get(f"/exec/{self.id}/json")
                resp.raise_for_status()
                info = resp.json()
            except (podman_errors.APIError, OSError, ValueError) as e:
                raise RuntimeError_(f"inspecting exec {self.id[:12]}: {e}") from e
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else -1
            time.sleep(0.1)
        raise RuntimeError_(f"exec {self.id[:12]} still runs after its output ended")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

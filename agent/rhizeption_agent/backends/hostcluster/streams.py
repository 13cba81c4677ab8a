"""exec and port-forward on host Pods: the WebSocket streams of the host API server's
``pods/exec`` and ``pods/portforward``, through the ``kubernetes`` client's ``stream`` module,
as the core's ExecSession and a socket."""

from __future__ import annotations

import json
import socket
from typing import Any, Protocol, cast

from ...provider import STDERR, STDOUT

# The channels of the Kubernetes WebSocket stream protocols (v4/v5.channel.k8s.io).
STDIN_CHANNEL, STDOUT_CHANNEL, STDERR_CHANNEL, ERROR_CHANNEL, RESIZE_CHANNEL = range(5)
READ_WAIT_SECONDS = 1.0  # how long one wait for output lasts; close() is seen after it


class HostStreams(Protocol):
    """exec and port-forward on a host Pod (what ``kubectl exec`` and ``port-forward`` reach)."""

    def exec(
        self, namespace: str, name: str, container: str, command: list[str], *, stdin: bool, tty: bool
    ) -> Any:
        """A connected stream of the WebSocket channel protocol (``kubernetes`` WSClient)."""

    def port_forward(self, namespace: str, name: str, port: int) -> socket.socket: ...


class KubernetesStreams:
    """HostStreams with the ``kubernetes`` client's WebSocket code.

    Each call gets an ApiClient of its own: ``kubernetes.stream`` swaps its client's
    ``call_api`` for the length of the call, which would send the requests other threads
    make on a shared client (the watch, the syncs) over WebSocket too."""

    def __init__(self, configuration: Any) -> None:
        self.configuration = configuration

    def _core(self) -> Any:
        import kubernetes  # noqa: PLC0415 (only a running agent needs it)

        return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(self.configuration))

    def exec(
        self, namespace: str, name: str, container: str, command: list[str], *, stdin: bool, tty: bool
    ) -> Any:
        from kubernetes.stream import stream  # noqa: PLC0415

        core = self._core()
        return stream(
            core.connect_get_namespaced_pod_exec,
            name,
            namespace,
            container=container,
            command=command,
            stdin=stdin,
            stdout=True,
            stderr=not tty,  # a terminal carries both
            tty=tty,
            binary=True,
            _preload_content=False,
        )

    def port_forward(self, namespace: str, name: str, port: int) -> socket.socket:
        from kubernetes.stream import portforward  # noqa: PLC0415

        core = self._core()
        forward = portforward(core.connect_get_namespaced_pod_portforward, name, namespace, ports=str(port))
        # One end of a socket pair; the client's thread pumps the other end to the WebSocket
        # until this end is closed.
        return cast(socket.socket, forward.socket(port))


class WebSocketExec:
    """ExecSession (provider.py) on a WebSocket exec stream of the host API server."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._closed = False

    def read(self) -> tuple[int, bytes] | None:
        while not self._closed:
            try:
                for channel, which in ((STDOUT_CHANNEL, STDOUT), (STDERR_CHANNEL, STDERR)):
                    data = self.ws.read_channel(channel)
                    if data:
                        return which, data if isinstance(data, bytes) else data.encode()
                if not self.ws.is_open():
                    return None
                self.ws.update(timeout=READ_WAIT_SECONDS)
            except Exception:
                if self._closed or not self.ws.is_open():
                    return None  # closed under the read by another thread
                raise
        return None

    def write(self, data: bytes) -> None:
        self.ws.write_stdin(data)

    def close_stdin(self) -> None:
        self.ws.close_channel(STDIN_CHANNEL)  # v5 only: v4 cannot say end of input

    def resize(self, width: int, height: int) -> None:
        self.ws.write_channel(RESIZE_CHANNEL, json.dumps({"Width": width, "Height": height}))

    def exit_code(self) -> int:
        """From the error channel's Status: Success, or the exit code in its causes."""
        raw = self.ws.read_channel(ERROR_CHANNEL)
        try:
            status = json.loads(raw or "{}")
        except ValueError:
            return 1
        if status.get("status") == "Success":
            return 0
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                return int(cause.get("message") or 1)
        return 1  # no code (the connection dropped, the container is gone): a failure

    def close(self) -> None:
        self._closed = True
        self.ws.close()

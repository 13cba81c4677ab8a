"""What the core asks of a backend: the virtual-kubelet provider contract, narrowed to
what this agent uses.

The core (agent.py) owns the Node, the Lease, the Pod watch, Pod status writes, Events and
the :10250 API; a Provider owns how a Pod runs. ``RuntimeProvider`` (runtime.py) runs Pods
on a local container runtime such as Podman; ``HostClusterProvider``
(backends/hostcluster/provider.py) runs them as Pods of a host cluster.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

Obj = dict[str, Any]


class EventSink(Protocol):
    def __call__(self, pod: Obj, type_: str, reason: str, message: str) -> None: ...


@dataclass
class NodeFacts:
    """What the provider knows about the node it runs Pods on."""

    runtime_version: str  # nodeInfo.containerRuntimeVersion, e.g. podman://4.3.1
    healthy: bool
    message: str = ""


@dataclass
class LogRequest:
    container: str
    follow: bool = False
    previous: bool = False
    tail_lines: int | None = None
    timestamps: bool = False
    since_seconds: int | None = None


STDOUT, STDERR = 1, 2


class ExecSession(Protocol):
    """A command running in a container with its streams attached (``kubectl exec``).

    ``read`` is called by one thread while others ``write``, ``close_stdin`` and ``resize``:
    an interactive session pumps both ways at once."""

    def read(self) -> tuple[int, bytes] | None:
        """The next output as the command writes it: (STDOUT or STDERR, bytes; all of it is
        STDOUT with a terminal); None once the command's output has ended."""

    def write(self, data: bytes) -> None:
        """To the command's stdin."""

    def close_stdin(self) -> None:
        """End of input: the command reads EOF."""

    def resize(self, width: int, height: int) -> None:
        """The terminal's new size (sessions with a terminal)."""

    def exit_code(self) -> int:
        """The command's exit code, once ``read`` has returned None."""

    def close(self) -> None:
        """Drop the connection (also from another thread: a blocked ``read`` returns)."""


@dataclass
class PodView:
    """A Pod the provider is running, as found on the node (for adoption at start)."""

    uid: str
    namespace: str
    name: str
    extra: Obj = field(default_factory=dict)


class ProviderError(Exception):
    """A request the provider cannot serve (unknown Pod or container, say)."""


class Provider(Protocol):
    def facts(self) -> NodeFacts: ...

    def running_pods(self) -> list[PodView]:
        """Every Pod this agent runs on the node, found by its own labels."""

    def sync(self, pod: Obj, emit: EventSink) -> Obj:
        """Bring the Pod's containers towards its spec (one step, never blocking long)
        and return the Pod's status as it now is."""

    def terminate(self, pod: Obj, grace_seconds: int, emit: EventSink) -> None:
        """Stop the Pod's containers within GRACE_SECONDS and release everything it held."""

    def stop_containers(self, pod: Obj, grace_seconds: int, emit: EventSink) -> None:
        """Stop what still runs of a Pod that reached Succeeded or Failed, within
        GRACE_SECONDS; what it holds stays (logs keep working) until ``terminate``."""

    def forget(self, uid: str) -> None:
        """Remove a Pod whose API object is gone (no grace left to give)."""

    def logs(self, pod: Obj, request: LogRequest) -> Iterator[bytes]: ...

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
        """Start COMMAND in the Pod's CONTAINER with stdin attached if asked and a terminal
        if TTY, of SIZE (width, height) when known; the caller pumps the session and closes it."""

    def connect(self, pod: Obj, port: int) -> socket.socket:
        """A TCP connection to PORT in the Pod's network (port-forward)."""

    def stats(self) -> Obj:
        """The stats/summary document's pods section and node totals."""

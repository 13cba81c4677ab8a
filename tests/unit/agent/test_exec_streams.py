"""The parts of `kubectl exec` that need no Podman: the resize stream's messages, the
error stream's Status, and Podman's multiplexed exec stream read from a socket pair
(tests/integration/test_pet_agent_server.py runs the whole path on real Podman)."""

from __future__ import annotations

import socket
import threading

import pytest
from rhizeption_agent.backends.podman import PodmanExec
from rhizeption_agent.server import exit_status, initial_size, terminal_sizes
from rhizeption_agent.spdy import Stream


def test_terminal_sizes_takes_whole_messages_and_keeps_the_rest():
    sizes, rest = terminal_sizes('{"Width":101,"Height":33}\n{"Width":80,')
    assert sizes == [(101, 33)]
    assert rest == '{"Width":80,'
    sizes, rest = terminal_sizes(rest + '"Height":24}\n')
    assert (sizes, rest) == ([(80, 24)], "")
    assert terminal_sizes('{"Width":1,"Height":2}{"Width":3,"Height":4}') == ([(1, 2), (3, 4)], "")


def test_terminal_sizes_drops_what_can_never_parse():
    assert terminal_sizes("x" * 5000) == ([], "")


def test_the_first_size_is_taken_before_the_command_starts():
    stream = Stream(1, {"streamtype": "resize"})
    for chunk in (b'{"Width":101,', b'"Height":33}\n{"Wid'):
        stream.data.put(chunk)
    assert initial_size(stream, 5) == ((101, 33), '{"Wid')
    assert initial_size(stream, 0.05) == (None, ""), "a client that sends no size is not waited for long"
    stream.data.put(None)
    assert initial_size(stream, 5) == (None, "")
    assert stream.data.get_nowait() is None, "the end of the stream is left for the resize pump"


def test_exit_status_carries_the_exit_code():
    assert exit_status(0)["status"] == "Success"
    failed = exit_status(3)
    assert failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def frame(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


@pytest.fixture
def pair():
    ours, podman = socket.socketpair()
    yield ours, podman
    ours.close()
    podman.close()


def test_podman_exec_reads_frames_split_anywhere(pair):
    ours, podman = pair
    wire = frame(1, b"first\n") + frame(2, b"oops\n") + frame(1, b"") + frame(1, b"x" * 70000)
    # The response head's recv brought the first bytes along; the rest comes in odd pieces.
    session = PodmanExec(None, "e" * 64, ours, wire[:3], tty=False, deadline=None)  # type: ignore[arg-type]

    def send() -> None:
        rest = wire[3:]
        for i in range(0, len(rest), 7001):
            podman.sendall(rest[i : i + 7001])
        podman.shutdown(socket.SHUT_WR)

    threading.Thread(target=send, daemon=True).start()
    got = []
    while (out := session.read()) is not None:
        got.append(out)
    assert got[:2] == [(1, b"first\n"), (2, b"oops\n")]
    assert b"".join(d for k, d in got[2:] if k == 1) == b"x" * 70000


def test_podman_exec_writes_stdin_and_half_closes(pair):
    ours, podman = pair
    session = PodmanExec(None, "e" * 64, ours, b"", tty=True, deadline=None)  # type: ignore[arg-type]
    session.write(b"hello\n")
    session.close_stdin()
    assert podman.recv(100) == b"hello\n"
    assert podman.recv(100) == b"", "the command reads EOF"
    podman.sendall(b"raw tty bytes")
    assert session.read() == (1, b"raw tty bytes")


def test_close_unblocks_a_read(pair):
    ours, _podman = pair
    session = PodmanExec(None, "e" * 64, ours, b"", tty=False, deadline=None)  # type: ignore[arg-type]
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(session.read()))
    reader.start()
    session.close()
    reader.join(5)
    assert not reader.is_alive()
    assert result == [None]


def test_a_deadline_ends_a_silent_session(pair):
    ours, _podman = pair
    session = PodmanExec(None, "e" * 64, ours, b"", tty=False, deadline=0.0)  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        session.read()

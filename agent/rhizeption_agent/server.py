"""The node's API on port 10250 (the kubelet's port): what the API server proxies to for
``kubectl logs``, ``exec`` and ``port-forward``, and the stats the metrics pipeline reads.

TLS always. A client is authenticated by a certificate from the cluster CA (the API
server's kubelet client certificate) or by a bearer token checked with a TokenReview, and
authorized with a SubjectAccessReview on the ``nodes/<subresource>`` the kubelet uses:
``nodes/log`` for /logs, ``nodes/stats`` for /stats, ``nodes/proxy`` for the rest.
Reviews are cached for a short while, as the kubelet's webhook authenticator does.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import queue
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import spdy
from .kubeapi import Kube, KubeError
from .provider import STDERR, ExecSession, LogRequest, Provider, ProviderError

LOG = logging.getLogger("rhizeption_agent.server")
Obj = dict[str, Any]
CACHE_SECONDS = 60.0
# What the API server may ask for on a streaming upgrade; v4 carries the exit code.
STREAM_PROTOCOLS = (
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "portforward.k8s.io",
)
EXEC_PARAMS = {"stdin": "input", "stdout": "output", "stderr": "error", "tty": "tty"}
RESIZE_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io")  # those with a resize stream


class Unauthorized(Exception):
    pass


class NodeServer:
    def __init__(
        self,
        kube: Kube,
        provider: Provider,
        pods: dict[str, Obj],
        *,
        node_name: str,
        address: str,
        port: int,
        cert_file: str,
        key_file: str,
        client_ca_file: str,
    ) -> None:
        self.kube = kube
        self.provider = provider
        self.pods = pods
        self.node_name = node_name
        self._reviews: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self.ctx = ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert_file, key_file)
        if client_ca_file:
            ctx.load_verify_locations(client_ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL  # tokens are accepted too
        self.httpd = ThreadingHTTPServer((address, port), _handler(self))
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="server", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def use_certificate(self, cert_file: str, key_file: str) -> None:
        """Serve new connections with this certificate (a signed kubelet-serving one)."""
        self.ctx.load_cert_chain(cert_file, key_file)
        LOG.info("serving with %s", cert_file)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- authentication and authorization --------------------------------------------
    def _cached(self, key: tuple[Any, ...]) -> Any:
        with self._lock:
            hit = self._reviews.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        return None

    def _remember(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            if len(self._reviews) > 1000:
                self._reviews.clear()
            self._reviews[key] = (time.monotonic() + CACHE_SECONDS, value)

    def authenticate(self, peer_cert: dict | None, authorization: str) -> tuple[str, list[str], Obj]:
        """(user, groups, extra) of the client."""
        if peer_cert:
            subject = {k: v for rdn in peer_cert.get("subject", ()) for k, v in rdn}
            orgs = [v for rdn in peer_cert.get("subject", ()) for k, v in rdn if k == "organizationName"]
            return subject.get("commonName", ""), orgs, {}
        if authorization.startswith("Bearer "):
            token = authorization[7:].strip()
            key = ("token", token)
            cached = self._cached(key)
            if cached is None:
                review = self.kube.request(
                    "POST",
                    "/apis/authentication.k8s.io/v1/tokenreviews",
                    body={
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "spec": {"token": token},
                    },
                    what="token review",
                )
                cached = review.get("status") or {}
                self._remember(key, cached)
            if cached.get("authenticated"):
                user = cached.get("user") or {}
                return user.get("username", ""), list(user.get("groups") or []), dict(user.get("extra") or {})
        raise Unauthorized("no client certificate from the cluster CA and no valid bearer token")

    def authorize(self, user: str, groups: list[str], extra: Obj, verb: str, subresource: str) -> bool:
        key = ("sar", user, tuple(groups), verb, subresource)
        cached = self._cached(key)
        if cached is not None:
            return bool(cached)
        review = self.kube.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": user,
                    "groups": groups,
                    "extra": extra,
                    "resourceAttributes": {
                        "verb": verb,
                        "resource": "nodes",
                        "subresource": subresource,
                        "name": self.node_name,
                    },
                },
            },
            what="subject access review",
        )
        allowed = bool((review.get("status") or {}).get("allowed"))
        self._remember(key, allowed)
        return allowed

    def find_pod(self, namespace: str, name: str) -> Obj | None:
        for pod in list(self.pods.values()):
            meta = pod["metadata"]
            if meta["namespace"] == namespace and meta["name"] == name:
                return pod
        return None


def _handler(server: NodeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "rhizeption-agent"

        def log_message(self, format: str, *args: Any) -> None:
            LOG.debug("%s " + format, self.client_address[0], *args)

        def _error(self, code: int, message: str) -> None:
            if code >= 500:  # the agent's own trouble (the tenant refusing its reviews, say): say it
                LOG.warning("%s %s: %s %s", self.command, self.path.split("?", 1)[0], code, message)
            body = json.dumps(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
            ).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: Obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/") if p]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if parts == ["healthz"]:
                body = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(body)
                return
            subresource = {"stats": "stats", "logs": "log", "metrics": "metrics"}.get(
                parts[0] if parts else "", "proxy"
            )
            try:
                user, groups, extra = server.authenticate(
                    self.connection.getpeercert(), self.headers.get("Authorization", "")
                )
            except Unauthorized as e:
                self._error(401, str(e))
                return
            except KubeError as e:
                self._error(503, f"authentication unavailable: {e}")
                return
            verb = "create" if self.command == "POST" else "get"
            try:
                allowed = server.authorize(user, groups, extra, verb, subresource)
            except KubeError as e:
                self._error(503, f"authorization unavailable: {e}")
                return
            if not allowed:
                self._error(
                    403,
                    f"Forbidden (user={user}, verb={verb}, resource=nodes, subresource={subresource})",
                )
                return
            if parts[:1] == ["containerLogs"] and len(parts) == 4:
                self._logs(parts[1], parts[2], parts[3], query)
            elif parts == ["stats", "summary"]:
                self._stats()
            elif parts[:1] == ["exec"] and len(parts) in (4, 5):
                self._exec(parts[1], parts[2], parts[-1], parse_qs(url.query))
            elif parts[:1] == ["portForward"] and len(parts) in (3, 4):
                self._port_forward(parts[1], parts[2])
            elif parts[:1] == ["attach"]:
                # Podman closes a container's stdin when an attach ends, as if every
                # container had stdinOnce: a later attach could not write to it. Refused
                # rather than half right.
                self._error(
                    400,
                    "attach is not supported by the rhizeption node agent: use kubectl logs -f"
                    " for a container's output, kubectl exec -it for a shell",
                )
            elif parts == ["pods"]:
                self._json({"kind": "PodList", "apiVersion": "v1", "items": list(server.pods.values())})
            else:
                self._error(404, f"{url.path} is not served by the rhizeption node agent")

        def _logs(self, namespace: str, name: str, container: str, query: dict[str, str]) -> None:
            pod = server.find_pod(namespace, name)
            if pod is None:
                self._error(404, f'pod "{name}" not found on node {server.node_name}')
                return
            request = LogRequest(
                container=container,
                follow=query.get("follow") in ("true", "1"),
                previous=query.get("previous") in ("true", "1"),
                tail_lines=int(query["tailLines"]) if query.get("tailLines") else None,
                timestamps=query.get("timestamps") in ("true", "1"),
                since_seconds=int(query["sinceSeconds"]) if query.get("sinceSeconds") else None,
            )
            try:
                chunks = iter(server.provider.logs(pod, request))
                first = next(chunks, b"")
            except ProviderError as e:
                self._error(400, str(e))
                return
            except Exception as e:
                self._error(500, f"reading logs: {e}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for chunk in _chain(first, chunks):
                    if chunk:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self.close_connection = True

        def _upgrade(self) -> tuple[spdy.Session, str] | None:
            """Switch this connection to SPDY/3.1 with a stream protocol both sides know;
            the session and that protocol ("" when the client offered none)."""
            if "spdy/3.1" not in (self.headers.get("Upgrade") or "").lower():
                self._error(400, "this endpoint needs a SPDY/3.1 upgrade")
                return None
            offered = [
                p.strip()
                for h in self.headers.get_all("X-Stream-Protocol-Version") or []
                for p in h.split(",")
            ]
            chosen = next((p for p in STREAM_PROTOCOLS if p in offered), None)
            if offered and chosen is None:
                self._error(403, f"none of the stream protocols {offered} is supported")
                return None
            self.send_response(101, "Switching Protocols")
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "SPDY/3.1")
            if chosen:
                self.send_header("X-Stream-Protocol-Version", chosen)
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            return spdy.Session(self.connection, lambda _stream: None), chosen or ""

        def _exec(self, namespace: str, name: str, container: str, query: dict[str, list[str]]) -> None:
            pod = server.find_pod(namespace, name)
            if pod is None:
                self._error(404, f'pod "{name}" not found on node {server.node_name}')
                return
            command = query.get("command") or []
            if not command:
                self._error(400, "exec needs a command")
                return
            # The API server's names for the streams wanted: input, output, error (stderr), tty.
            flag = {
                stream: (query.get(param) or ["0"])[-1] in ("1", "true")
                for stream, param in EXEC_PARAMS.items()
            }
            # A terminal carries stdout and stderr as one: the kubelet drops stderr with a tty.
            flag["stderr"] = flag["stderr"] and not flag["tty"]
            upgraded = self._upgrade()
            if upgraded is None:
                return
            session, protocol = upgraded
            wanted = {"error"} | {k for k in ("stdin", "stdout", "stderr") if flag[k]}
            if flag["tty"] and protocol in RESIZE_PROTOCOLS:
                wanted.add("resize")
            streams: dict[str, spdy.Stream] = {}
            ready = threading.Event()

            def on_stream(stream: spdy.Stream) -> None:
                streams[stream.headers.get("streamtype", "")] = stream
                if wanted <= set(streams):
                    ready.set()

            session.on_stream = on_stream
            reader = threading.Thread(target=session.run, name="spdy-exec", daemon=True)
            reader.start()
            if not ready.wait(15):
                session.goaway()
                return
            size, pending = initial_size(streams["resize"], 2.0) if "resize" in streams else (None, "")
            try:
                proc = server.provider.exec(
                    pod, container, command, stdin=flag["stdin"], tty=flag["tty"], size=size
                )
            except ProviderError as e:
                status: Obj = {
                    "metadata": {},
                    "status": "Failure",
                    "message": str(e),
                    "reason": "InternalError",
                }
            else:
                status = run_exec(session, streams, proc, pending)
            with contextlib.suppress(OSError, ssl.SSLError):
                for kind in ("stdout", "stderr"):
                    if kind in streams:
                        session.close(streams[kind])
                session.write(streams["error"], json.dumps(status).encode(), fin=True)
            reader.join(5)
            session.goaway()

        def _port_forward(self, namespace: str, name: str) -> None:
            pod = server.find_pod(namespace, name)
            if pod is None:
                self._error(404, f'pod "{name}" not found on node {server.node_name}')
                return
            upgraded = self._upgrade()
            if upgraded is None:
                return
            session = upgraded[0]
            pairs: dict[str, dict[str, spdy.Stream]] = {}

            def on_stream(stream: spdy.Stream) -> None:
                rid = stream.headers.get("requestid", "")
                pair = pairs.setdefault(rid, {})
                pair[stream.headers.get("streamtype", "")] = stream
                if "data" in pair and "error" in pair:
                    threading.Thread(target=forward, args=(pair,), daemon=True).start()

            def forward(pair: dict[str, spdy.Stream]) -> None:
                data, error = pair["data"], pair["error"]
                port = int(data.headers.get("port") or 0)
                try:
                    conn = server.provider.connect(pod, port)
                except (OSError, ProviderError) as e:
                    session.write(
                        error, f"error forwarding port {port} to pod {name}: {e}".encode(), fin=True
                    )
                    session.close(data)
                    return

                def upstream() -> None:
                    while (chunk := data.data.get()) is not None:
                        try:
                            conn.sendall(chunk)
                        except OSError:
                            break
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_WR)

                up = threading.Thread(target=upstream, daemon=True)
                up.start()
                try:
                    while chunk := conn.recv(32768):
                        session.write(data, chunk)
                except OSError:
                    pass
                finally:
                    conn.close()
                    with contextlib.suppress(OSError):
                        session.close(data)
                        session.close(error)

            session.on_stream = on_stream
            session.run()

        def _stats(self) -> None:
            from . import node  # noqa: PLC0415

            try:
                summary = server.provider.stats()
            except Exception as e:
                self._error(500, f"stats: {e}")
                return
            mem = node.meminfo()
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._json(
                {
                    "node": {
                        "nodeName": server.node_name,
                        "startTime": now,
                        "memory": {
                            "time": now,
                            "availableBytes": mem.get("MemAvailable", 0),
                            "usageBytes": mem.get("MemTotal", 0) - mem.get("MemAvailable", 0),
                            "workingSetBytes": mem.get("MemTotal", 0) - mem.get("MemAvailable", 0),
                        },
                    },
                    **summary,
                }
            )

    return Handler


def exit_status(code: int) -> Obj:
    """The error stream's Status for a command that ended with CODE (v4.channel.k8s.io)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def terminal_sizes(text: str) -> tuple[list[tuple[int, int]], str]:
    """The (width, height) of each whole ``{"Width":W,"Height":H}`` in TEXT, what the
    resize stream carries, and the unfinished rest to wait for more with."""
    sizes = []
    decoder = json.JSONDecoder()
    while text := text.lstrip():
        try:
            obj, end = decoder.raw_decode(text)
        except json.JSONDecodeError:
            # Unfinished (more to come), unless it cannot be: then it is dropped.
            return sizes, text if len(text) < 4096 else ""
        text = text[end:]
        if isinstance(obj, dict):
            with contextlib.suppress(TypeError, ValueError):
                sizes.append((int(obj.get("Width") or 0), int(obj.get("Height") or 0)))
    return sizes, ""


def initial_size(stream: spdy.Stream, wait: float) -> tuple[tuple[int, int] | None, str]:
    """The terminal size the client sends first on STREAM (kubectl does at once), waited
    for at most WAIT seconds, so the command starts at that size; and what came after it."""
    pending = ""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = stream.data.get(timeout=left)
        except queue.Empty:
            break
        if chunk is None:
            stream.data.put(None)  # the resize pump ends on it
            break
        sizes, pending = terminal_sizes(pending + chunk.decode(errors="replace"))
        if sizes:
            return sizes[-1], pending
    return None, pending


def run_exec(
    session: spdy.Session, streams: dict[str, spdy.Stream], proc: ExecSession, pending: str = ""
) -> Obj:
    """Pump PROC between its SPDY streams: stdin and resize (PENDING: the start of a resize
    message already read) in threads of their own, output here as it comes, until the
    command ends; the error stream's Status."""

    def stdin(stream: spdy.Stream) -> None:
        try:
            while (chunk := stream.data.get()) is not None:
                proc.write(chunk)
        except OSError:
            return  # the command is gone
        proc.close_stdin()  # the client's FIN: the command reads EOF

    def resize(stream: spdy.Stream, rest: str = pending) -> None:
        while (chunk := stream.data.get()) is not None:
            sizes, rest = terminal_sizes(rest + chunk.decode(errors="replace"))
            for width, height in sizes:
                proc.resize(width, height)

    def client_gone() -> None:
        # The connection closed under a command that writes nothing: unblock its read.
        session.done.wait()
        proc.close()

    threading.Thread(target=client_gone, name="exec-watch", daemon=True).start()
    for kind, pump in (("stdin", stdin), ("resize", resize)):
        if kind in streams:
            threading.Thread(target=pump, args=(streams[kind],), name=f"exec-{kind}", daemon=True).start()
    try:
        while (out := proc.read()) is not None:
            target = streams.get("stderr" if out[0] == STDERR else "stdout")
            if target is not None:
                session.write(target, out[1])
        if session.done.is_set():  # the client left; the command may well run on
            return {"metadata": {}, "status": "Failure", "message": "the client went away"}
        return exit_status(proc.exit_code())
    except Exception as e:  # Podman failed or the client left: either way the session ends
        LOG.debug("exec: %s", e, exc_info=True)
        return {"metadata": {}, "status": "Failure", "message": f"exec: {e}", "reason": "InternalError"}
    finally:
        proc.close()


def _chain(first: bytes, rest: Any) -> Any:
    yield first
    yield from rest


def self_signed(state_dir: str, node_name: str, ips: list[str]) -> tuple[str, str]:
    """A serving certificate of the agent's own (until kubelet-serving CSRs are built):
    the API server does not check it unless run with --kubelet-certificate-authority."""
    try:
        from ansible_collections.rhizeption.core.plugins.module_utils import pki  # noqa: PLC0415
    except ImportError:
        import pki  # type: ignore[no-redef]  # noqa: PLC0415
    folder = Path(state_dir) / "pki"
    cert, key = folder / "serving.crt", folder / "serving.key"
    if cert.exists() and key.exists():
        return str(cert), str(key)
    folder.mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca(f"{node_name}-ca")
    pair = pki.issue(
        ca, f"system:node:{node_name}", server=True, dns_names=(node_name,), ip_addresses=tuple(ips)
    )
    pki.write_file(cert, pair.cert_pem() + ca.cert_pem())
    pki.write_file(key, pair.key_pem(), private=True)
    return str(cert), str(key)

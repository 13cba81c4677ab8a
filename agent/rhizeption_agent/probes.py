"""Startup, liveness and readiness probes: exec, HTTP GET and TCP, as the kubelet runs them."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable
from typing import Any

from . import podspec

Obj = dict[str, Any]
ExecFn = Callable[[list[str], float], tuple[int, bytes]]


def run(probe: Obj, container: Obj, pod_ip: str, exec_fn: ExecFn) -> tuple[bool, str]:
    """(success, message) of one run of PROBE against CONTAINER."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    if "exec" in probe:
        code, out = exec_fn(list(probe["exec"].get("command") or []), timeout)
        return code == 0, out.decode(errors="replace").strip()[:500] or f"exit code {code}"
    if "httpGet" in probe:
        hg = probe["httpGet"]
        host = hg.get("host") or pod_ip or "127.0.0.1"
        port = podspec.probe_port(container, hg["port"])
        cls = http.client.HTTPSConnection if hg.get("scheme") == "HTTPS" else http.client.HTTPConnection
        kwargs: dict[str, Any] = {"timeout": timeout}
        if cls is http.client.HTTPSConnection:
            import ssl  # noqa: PLC0415

            kwargs["context"] = ssl._create_unverified_context()  # the kubelet does not verify probes either
        conn = cls(host, port, **kwargs)
        try:
            headers = {h["name"]: h["value"] for h in hg.get("httpHeaders") or []}
            headers.setdefault("User-Agent", "kube-probe/1.34")
            conn.request("GET", hg.get("path") or "/", headers=headers)
            resp = conn.getresponse()
            resp.read(10_000)
            ok = 200 <= resp.status < 400
            return ok, f"HTTP probe failed with statuscode: {resp.status}" if not ok else "ok"
        except (OSError, http.client.HTTPException) as e:
            return False, f'Get "http://{host}:{port}{hg.get("path") or "/"}": {e}'
        finally:
            conn.close()
    if "tcpSocket" in probe:
        ts = probe["tcpSocket"]
        host = ts.get("host") or pod_ip or "127.0.0.1"
        port = podspec.probe_port(container, ts["port"])
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True, "ok"
        except OSError as e:
            return False, f"dial tcp {host}:{port}: {e}"
    return False, "probe has no handler (exec, httpGet or tcpSocket)"

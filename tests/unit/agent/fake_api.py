"""An in-memory API server for the agent's unit tests (the Kube methods the agent uses):
objects by path with resourceVersions, watches that replay the events after a version, label
and spec.nodeName selectors, and a record of every call; and ``eventually``, to wait for what
the agent's threads do. A fake exists only in unit tests;
tests/integration runs the same code against real API servers."""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rhizeption_agent.kubeapi import KubeError

Obj = dict[str, Any]


def _matches(obj: Obj, selector: str | None, field_selector: str | None = None) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in (selector or "").split(","):
        if term:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
    for term in (field_selector or "").split(","):
        key, _sep, value = term.partition("=")
        if key == "spec.nodeName" and (obj.get("spec") or {}).get("nodeName") != value:
            return False  # the Pods of one Node; other field selectors are not filtered
    return True


def _merge(into: Obj, patch: Obj) -> None:
    """A merge patch; lists of containers merge by name, as a strategic merge patch does."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif key in ("containers", "initContainers") and isinstance(value, list):
            by_name = {c["name"]: c for c in into.get(key) or []}
            for c in value:
                by_name.setdefault(c["name"], {}).update(c)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """CHECK's first true answer within TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def _within(collection: str, path: str) -> bool:
    """Is COLLECTION (where an object is stored) listed by PATH? /api/v1/pods lists every
    namespace's Pods."""
    if collection == path:
        return True
    kind = path.removeprefix("/api/v1/")
    return (
        "/" not in kind and collection.startswith("/api/v1/namespaces/") and collection.endswith(f"/{kind}")
    )


class FakeStream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.released = False

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from self.chunks

    def release_conn(self) -> None:
        self.released = True


class FakeApi:
    """Objects by path with resourceVersions, watches that replay the events after a
    version, and a record of every call (the Kube methods the provider uses)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.objects: dict[str, Obj] = {}
        self.events: list[tuple[int, str, str, Obj]] = []  # (version, type, collection, object)
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, str, Any]] = []
        self.queries: list[list[tuple[str, Any]]] = []
        self.version = itertools.count(100)
        self.uids = itertools.count(1)
        self.cond = threading.Condition()
        self.closed = False
        self.no_tokens_for: set[str] = set()
        self.refuse_creates: KubeError | None = None  # what a POST answers (a quota, say)

    # helpers of the tests
    def seed(self, obj: Obj) -> Obj:
        path = f"/api/v1/namespaces/{obj['metadata']['namespace']}/{obj['kind'].lower()}s"
        return self._store(path, copy.deepcopy(obj), "ADDED")

    def at(self, collection: str) -> dict[str, Obj]:
        with self.cond:
            return {
                p.rsplit("/", 1)[1]: copy.deepcopy(o)
                for p, o in self.objects.items()
                if _within(p.rsplit("/", 1)[0], collection)
            }

    def set_status(self, path: str, status: Obj) -> None:
        with self.cond:
            obj = copy.deepcopy(self.objects[path])
        obj["status"] = status
        self._store(path.rsplit("/", 1)[0], obj, "MODIFIED")

    def remove(self, path: str) -> None:
        """Someone else deletes PATH."""
        self._remove(path)

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p in self.calls if m == method and p.startswith(prefix))

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    # storage
    def _store(self, collection: str, obj: Obj, kind: str) -> Obj:
        with self.cond:
            meta = obj["metadata"]
            path = f"{collection}/{meta['name']}"
            old = self.objects.get(path)
            meta["uid"] = (
                old["metadata"]["uid"] if old else meta.get("uid") or f"{self.name}-{next(self.uids)}"
            )
            version = next(self.version)
            meta["resourceVersion"] = str(version)
            self.objects[path] = obj
            self.events.append((version, kind, collection, copy.deepcopy(obj)))
            self.cond.notify_all()
            return copy.deepcopy(obj)

    def _remove(self, path: str) -> Obj:
        with self.cond:
            obj = self.objects.pop(path)
            version = next(self.version)
            obj["metadata"]["resourceVersion"] = str(version)
            self.events.append((version, "DELETED", path.rsplit("/", 1)[0], copy.deepcopy(obj)))
            self.cond.notify_all()
            return obj

    # the Kube interface
    def get(self, path: str) -> Obj | None:
        self.calls.append(("GET", path))
        with self.cond:
            obj = self.objects.get(path)
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, path: str, label_selector: str | None = None, field_selector: str | None = None, **_: Any
    ) -> tuple[list[Obj], str]:
        self.calls.append(("LIST", path))
        with self.cond:
            items = [o for o in self.at(path).values() if _matches(o, label_selector, field_selector)]
            return items, str(max([v for v, *_rest in self.events], default=1))

    def list_pages(self, path: str, page_size: int = 500, **selectors: Any) -> Iterator[Obj]:
        items, version = self.list(path, **selectors)
        yield {"metadata": {"resourceVersion": version}, "items": items[:page_size]}

    def watch(
        self,
        path: str,
        version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        **_: Any,
    ) -> Iterator[tuple[str, Obj]]:
        self.calls.append(("WATCH", path))
        after = int(version)
        while True:
            with self.cond:
                if self.closed:
                    raise KubeError("the fake API server is closed")
                fresh = [
                    e
                    for e in self.events
                    if e[0] > after and _within(e[2], path) and _matches(e[3], label_selector, field_selector)
                ]
                if not fresh and not self.cond.wait(0.2):
                    return  # the server's timeout: the client watches again from its version
            for ver, kind, _collection, obj in fresh:
                after = ver
                yield kind, copy.deepcopy(obj)

    def apply(self, path: str, obj: Obj, **_: Any) -> Obj:
        self.calls.append(("APPLY", path))
        self.bodies.append(("APPLY", path, copy.deepcopy(obj)))
        return self._store(path.rsplit("/", 1)[0], copy.deepcopy(obj), "MODIFIED")

    def request(
        self, method: str, path: str, *, body: Any = None, query: Any = None, stream: bool = False, **_: Any
    ) -> Any:
        self.calls.append((method, path))
        self.bodies.append((method, path, copy.deepcopy(body)))
        if path == "/version":
            return {"gitVersion": "v1.34.4"}
        if method == "POST" and path.endswith("/token"):
            account = path.split("/")[-2]
            if account in self.no_tokens_for:
                raise KubeError(f'serviceaccounts "{account}" not found', status=404)
            return {"status": {"token": f"tenant-token-{account}-{next(self.uids)}"}}
        if path.endswith("/log"):
            self.queries.append(query)
            if path.rsplit("/", 1)[0] not in self.objects:
                raise KubeError("pod not found", status=404)
            return FakeStream([b"line 1\n", b"line 2\n"])
        if path.endswith("/status") and method == "PATCH":
            path = path.removesuffix("/status")  # the subresource: a merge of {"status": ...}
        with self.cond:
            current = copy.deepcopy(self.objects.get(path))
        if method == "POST":
            if self.refuse_creates is not None:
                raise self.refuse_creates
            if f"{path}/{body['metadata']['name']}" in self.objects:
                raise KubeError("already exists", status=409, reason="AlreadyExists")
            return self._store(path, copy.deepcopy(body), "ADDED")
        if current is None:
            raise KubeError("not found", status=404, reason="NotFound")
        if method == "GET":
            return current
        if method == "PATCH":
            _merge(current, body)
            return self._store(path.rsplit("/", 1)[0], current, "MODIFIED")
        if method == "PUT":
            return self._store(path.rsplit("/", 1)[0], copy.deepcopy(body), "MODIFIED")
        if method == "DELETE":
            wanted = ((body or {}).get("preconditions") or {}).get("uid")
            if wanted and wanted != current["metadata"]["uid"]:
                raise KubeError("precondition failed", status=409, reason="Conflict")
            return self._remove(path)
        raise AssertionError(f"unexpected {method} {path}")

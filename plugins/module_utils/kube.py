# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Kubernetes API access shared by rhizeption.core's modules and inventory plugin.

The connection comes from kubernetes.core's own client code (``get_api_client``), so every
authentication option, the ``K8S_AUTH_*`` environment variables (AWX's Kubernetes
credential) and in-cluster configuration behave exactly as in kubernetes.core.

Requests then go through that connection's ``ApiClient`` as plain JSON, which is why this
file exists at all: we know the path of every resource we touch, so API discovery is not
needed, and building a typed model (or a dynamic ResourceInstance) for each of 10,000 items
costs far more than the request itself. Server-side apply, the status subresource, dry-run
and watches are all plain HTTP calls on those paths.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Tuple
from urllib.parse import quote

# The client (and kubernetes.core's, which imports it) is imported where a request is
# made: what only reads the names of this file and hn_api.py, such as the inventory on a
# cache hit, does not pay its import (about 0.6 s). The module or plugin that needs it
# reports its absence.
HAS_KUBERNETES = importlib.util.find_spec("kubernetes") is not None
KUBERNETES_IMPORT_ERROR = None if HAS_KUBERNETES else "No module named 'kubernetes'"

FIELD_MANAGER = "rhizeption.core"
PAGE_SIZE = 500
# (connect, read) seconds for one request: an endpoint that drops packets fails the task
# instead of hanging it. Watches set their own read timeout, past their server-side end.
REQUEST_TIMEOUT = (10.0, 60.0)
# A server-side watch ends after this many seconds at most; the caller's deadline rules.
WATCH_CHUNK_SECONDS = 60

Obj = Dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


POD = Resource("v1", "Pod", "pods")
NAMESPACE = Resource("v1", "Namespace", "namespaces", namespaced=False)
CRD = Resource(
    "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False
)


class KubeError(Exception):
    """An API error with the server's own message and the field paths it names."""

    def __init__(
        self,
        message: str,
        status: int = 0,
        reason: str = "",
        fields: List[str] | None = None,
        causes: List[str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.fields = fields or []
        self.causes = causes or []  # the reasons of the Status's causes, e.g. NamespaceTerminating

    @classmethod
    def from_api_exception(cls, exc: Any, what: str) -> KubeError:
        status = getattr(exc, "status", 0) or 0
        reason = getattr(exc, "reason", "") or ""
        text = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
        message = f"{status} {reason}: {text.strip()}"
        fields: List[str] = []
        causes: List[str] = []
        try:
            body = json.loads(text)
            message = body.get("message") or message
            reason = body.get("reason") or reason
            listed = (body.get("details") or {}).get("causes") or []
            fields = [c["field"] for c in listed if c.get("field")]
            causes = [c["reason"] for c in listed if c.get("reason")]
        except (TypeError, ValueError, AttributeError):
            if status == 404:
                # Not a Status object: the path itself is not served.
                message = "the API server does not serve this resource; is its CRD installed?"
        return cls(f"{what}: {message}", status=status, reason=reason, fields=fields, causes=causes)


def api_client_from(module: Any = None, **auth: Any) -> Any:
    """The ApiClient of kubernetes.core's connection for an AnsibleK8SModule or auth options."""
    try:
        from ansible_collections.kubernetes.core.plugins.module_utils.k8s.client import (  # noqa: PLC0415
            get_api_client,
        )
    except ImportError as e:  # the Service proxy on a pet node runs without kubernetes.core
        raise KubeError("the kubernetes.core collection is required to connect with its options") from e
    # get_api_client returns K8SClient -> K8SDynamicClient -> kubernetes ApiClient.
    return get_api_client(module=module, **auth).client.client


class Kube:
    """JSON requests on one ApiClient."""

    def __init__(self, api_client: Any, field_manager: str = FIELD_MANAGER) -> None:
        self.api = api_client
        self.field_manager = field_manager

    @property
    def host(self) -> str:
        return self.api.configuration.host

    def request(
        self,
        method: str,
        path: str,
        *,
        query: List[Tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        stream: bool = False,
        timeout: float | Tuple[float, float] = REQUEST_TIMEOUT,
        what: str = "",
    ) -> Any:
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415 (see HAS_KUBERNETES)

        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            if hasattr(self.api, "param_serialize"):
                # kubernetes >= 35 (the regenerated client): call_api only sends what
                # param_serialize built, and answers errors without raising.
                method_, url, headers_, body_, post = self.api.param_serialize(
                    method,
                    path,
                    query_params=query or [],
                    header_params=headers,
                    body=body,
                    auth_settings=["BearerToken"],
                )
                answer = self.api.call_api(
                    method_,
                    url,
                    header_params=headers_,
                    body=body_,
                    post_params=post,
                    _request_timeout=timeout,
                )
                if not 200 <= answer.status <= 299:
                    answer.read()
                    self.api.response_deserialize(answer, {})  # raises the ApiException
                resp = answer.response  # the urllib3 response, as _preload_content=False gives
            else:
                resp = self.api.call_api(
                    path,
                    method,
                    query_params=query or [],
                    header_params=headers,
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=timeout,
                )[0]
        except ApiException as e:
            raise KubeError.from_api_exception(e, what or f"{method} {path}") from e
        if stream:
            return resp
        return json.loads(resp.data) if resp.data else {}

    # -- reads -------------------------------------------------------------------
    def get(self, path: str) -> Obj | None:
        """The object at PATH, or None when it does not exist."""
        try:
            return self.request("GET", path)
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def list_pages(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Obj]:
        """Every page of a list (the raw List objects), following `continue` tokens."""
        token = None
        while True:
            query: List[Tuple[str, Any]] = [("limit", page_size)]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if token:
                query.append(("continue", token))
            page = self.request("GET", path, query=query)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def list(self, path: str, **selectors: Any) -> Tuple[List[Obj], str]:
        """All items under PATH and the list's resourceVersion (to watch from)."""
        items: List[Obj] = []
        version = ""
        for page in self.list_pages(path, **selectors):
            items.extend(page.get("items") or [])
            version = (page.get("metadata") or {}).get("resourceVersion", version)
        return items, version

    # -- writes ------------------------------------------------------------------
    def apply(self, path: str, obj: Obj, *, dry_run: bool = False, what: str = "") -> Obj:
        """Server-side apply OBJ at PATH (an object's path, or its /status). Forced: this
        field manager is the one source of truth for the fields it sets."""
        query: List[Tuple[str, Any]] = [("fieldManager", self.field_manager), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request(
            "PATCH",
            path,
            query=query,
            # Serialised here: older clients send only str bodies for YAML content types.
            body=json.dumps(obj),
            content_type="application/apply-patch+yaml",
            what=what or f"apply {obj.get('kind', '')} {path}",
        )

    def json_patch(self, path: str, ops: List[Obj], *, dry_run: bool = False, what: str = "") -> Obj:
        query = [("dryRun", "All")] if dry_run else []
        return self.request(
            "PATCH", path, query=query, body=ops, content_type="application/json-patch+json", what=what
        )

    def delete(
        self,
        path: str,
        *,
        uid: str | None = None,
        propagation: str = "Background",
        dry_run: bool = False,
        what: str = "",
    ) -> Obj | None:
        """Delete PATH; None when it was already gone. UID guards against deleting a
        newer object that took the same name."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        if dry_run:
            body["dryRun"] = ["All"]
        try:
            return self.request("DELETE", path, body=body, what=what or f"delete {path}")
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    # -- watches -----------------------------------------------------------------
    def watch(
        self,
        path: str,
        resource_version: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = WATCH_CHUNK_SECONDS,
    ) -> Iterator[Tuple[str, Obj]]:
        """(type, object) events after RESOURCE_VERSION until the server ends the watch.
        Raises KubeError(status=410) when that version is too old to watch from."""
        query: List[Tuple[str, Any]] = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", max(1, int(timeout_seconds))),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        from kubernetes.watch.watch import iter_resp_lines  # noqa: PLC0415 (see HAS_KUBERNETES)

        resp = self.request("GET", path, query=query, stream=True, timeout=timeout_seconds + 10)
        try:
            for line in iter_resp_lines(resp):
                event = json.loads(line)
                if event["type"] == "ERROR":
                    status = event["object"]
                    raise KubeError(status.get("message", "watch error"), status=status.get("code", 0))
                yield event["type"], event["object"]
        finally:
            resp.release_conn()

    def wait(
        self,
        path: str,
        done: Callable[[Dict[str, Obj]], bool],
        timeout: float,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_event: Callable[[Dict[str, Obj]], None] | None = None,
    ) -> Tuple[bool, Dict[str, Obj]]:
        """List and watch the objects under PATH, by name, until DONE(objects) is true or
        TIMEOUT seconds pass. Returns (done, objects). ON_EVENT sees every change."""
        deadline = time.monotonic() + timeout
        while True:
            items, version = self.list(path, label_selector=label_selector, field_selector=field_selector)
            objects = {o["metadata"]["name"]: o for o in items}
            if on_event:
                on_event(objects)
            if done(objects):
                return True, objects
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False, objects
                    for kind, obj in self.watch(
                        path,
                        version,
                        label_selector=label_selector,
                        field_selector=field_selector,
                        timeout_seconds=int(min(left, WATCH_CHUNK_SECONDS)) or 1,
                    ):
                        version = obj["metadata"].get("resourceVersion", version)
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            objects.pop(obj["metadata"]["name"], None)
                        else:
                            objects[obj["metadata"]["name"]] = obj
                        if on_event:
                            on_event(objects)
                        if done(objects):
                            return True, objects
                        if time.monotonic() >= deadline:
                            return False, objects
            except KubeError as e:
                if e.status != 410:
                    raise
                # Our version was compacted away: list again and carry on.

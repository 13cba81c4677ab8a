"""The Service sync (docs/virtual-nodes.md, "Services and DNS"): each tenant Service becomes a
host Service in the Pods namespace whose selector picks the host Pods of the tenant Pods the
tenant Service selects, so the host's kube-proxy and EndpointSlices do the rest.

- ClusterIP Services (headless ones too) keep their ports; the host gives its own ClusterIP,
  which the tenant Pods reach through their service-link variables (``ServiceLink``) and, once
  the tenant DNS runs, by name;
- NodePort and LoadBalancer Services become host NodePort Services asking for the tenant's node
  port; when the host has that port taken, it gives another, and an Event on the tenant Service
  says which (the tenant Service is left as it is: the agent does not write tenant Services);
- ExternalName Services and Services without a selector are not synced (their Endpoints are
  not copied yet).

One list and watch of the tenant's Services, a write only when the host copy differs, and the
host copies no tenant Service wants deleted after each list (the host's copies are listed once
per list of the tenant's, not read one by one).

The tenant DNS: with a hosts file (``HostsFile``), every synced Service's name in the tenant
(NAME.NAMESPACE.svc.DOMAIN) is written there with its host ClusterIP, and
kubernetes.default.svc.DOMAIN with the tenant API server's. The CoreDNS beside the agent serves
that file (its ``hosts`` plugin re-reads it) for the tenant's domain, and nothing else of it: a
name it lacks is NXDOMAIN, never the host cluster's Service of the same name.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from ...kubeapi import Kube, KubeError
from ...provider import EventSink
from . import names
from .pods import ServiceLink

LOG = logging.getLogger("rhizeption_agent.hostcluster")
Obj = dict[str, Any]
RETRY_SECONDS = 1.0
SYNCED_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
# What the agent owns of a host Service's spec: compared to decide whether to write.
OWNED = ("type", "selector", "ports", "sessionAffinity", "publishNotReadyAddresses")


def host_service(svc: Obj, tenant: str, host_namespace: str) -> Obj | None:
    """The host copy of tenant Service SVC, or None when it is not synced (see above)."""
    meta, spec = svc["metadata"], svc.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    if kind not in SYNCED_TYPES or not spec.get("selector"):
        return None
    node_port = kind != "ClusterIP"
    ports = []
    for p in spec.get("ports") or []:
        # The API server's defaults, said here so that a stored copy compares equal.
        port = {"protocol": "TCP", "targetPort": p["port"]}
        port.update({k: p[k] for k in ("name", "protocol", "port", "targetPort") if k in p})
        if node_port and p.get("nodePort"):
            port["nodePort"] = p["nodePort"]
        ports.append(port)
    host_spec: Obj = {
        "type": "NodePort" if node_port else "ClusterIP",
        "selector": names.host_selector(tenant, meta["namespace"], spec["selector"]),
        "ports": ports,
        "sessionAffinity": spec.get("sessionAffinity") or "None",
        "publishNotReadyAddresses": bool(spec.get("publishNotReadyAddresses")),
    }
    if spec.get("clusterIP") == "None":
        host_spec["clusterIP"] = "None"  # headless: the host's EndpointSlices list the Pods
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.host_name(tenant, meta["namespace"], meta["name"], "service"),
            "namespace": host_namespace,
            "labels": names.link_labels(tenant, meta["namespace"], "service", meta.get("uid", "")),
            "annotations": {names.NAME_ANNOTATION: meta["name"]},
        },
        "spec": host_spec,
    }


def _owned(spec: Obj) -> Obj:
    """What the agent sets of a host Service's SPEC; node ports aside (the host may give others)."""
    out = {k: spec.get(k) for k in OWNED}
    out["publishNotReadyAddresses"] = bool(spec.get("publishNotReadyAddresses"))  # unset: False
    out["ports"] = [{k: v for k, v in p.items() if k != "nodePort"} for p in spec.get("ports") or []]
    return out


class HostsFile:
    """The tenant's Service names with their host ClusterIPs, as a hosts file (PATH) that CoreDNS's
    ``hosts`` plugin serves; rewritten whole, and only when it changes."""

    def __init__(self, path: str | Path, domain: str, api_server_ip: str | None = None) -> None:
        self.path = Path(path)
        self.domain = domain
        self.api_server_ip = api_server_ip
        self._written: str | None = None

    def render(self, links: dict[tuple[str, str], ServiceLink]) -> str:
        lines = [f"{link.ip} {name}.{ns}.svc.{self.domain}" for (ns, name), link in sorted(links.items())]
        if self.api_server_ip:
            lines.insert(0, f"{self.api_server_ip} kubernetes.default.svc.{self.domain}")
        return "".join(f"{line}\n" for line in lines)

    def write(self, links: dict[tuple[str, str], ServiceLink]) -> None:
        text = self.render(links)
        if text == self._written:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(text)
        os.replace(partial, self.path)  # CoreDNS never reads half a file
        self._written = text


class ServiceSync:
    """Keeps the host copies of one tenant's Services (HOST: the host API server, with the
    agent's Role in NAMESPACE; TENANT: the tenant's). EMIT tells the tenant about a Service;
    HOSTS, when given, gets every synced Service's name (the tenant DNS)."""

    def __init__(
        self, host: Kube, tenant: Kube, tenant_name: str, namespace: str, hosts: HostsFile | None = None
    ) -> None:
        self.host = host
        self.hosts = hosts
        self.tenant = tenant
        self.tenant_name = tenant_name
        self.namespace = namespace
        self.path = f"/api/v1/namespaces/{namespace}/services"  # the host copies
        self.emit: EventSink | None = None
        self.synced = threading.Event()
        self._links: dict[tuple[str, str], ServiceLink] = {}  # (namespace, name): how Pods reach it
        self._made: set[tuple[str, str]] = set()  # tenant Services with a host copy
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="services", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def links(self, namespace: str) -> list[ServiceLink]:
        """The synced Services of tenant NAMESPACE as its Pods' environment names them."""
        with self._lock:
            return [link for (ns, _name), link in self._links.items() if ns == namespace]

    # -- the loop ----------------------------------------------------------------------
    def _run(self) -> None:
        path = "/api/v1/services"
        while not self._stopping.is_set():
            try:
                items, version = self.tenant.list(path)
                copies = self._host_copies()
                for svc in items:
                    key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
                    self._reconcile(svc, copies.pop(key, None), listed=True)
                for key in copies:  # no tenant Service wants these (gone while the agent was away)
                    self._delete(*key)
                self._write_hosts()
                self.synced.set()
                while not self._stopping.is_set():
                    for kind, svc in self.tenant.watch(path, version, timeout_seconds=300):
                        version = svc["metadata"].get("resourceVersion", version)
                        if kind == "BOOKMARK":
                            continue
                        key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
                        if kind == "DELETED":
                            if key in self._made:
                                self._delete(*key)
                        else:
                            self._reconcile(svc)
                        self._write_hosts()
            except Exception as e:  # the tenant or the host restarting: list again
                LOG.warning("service sync: %s: %s; listing again", type(e).__name__, e)
            self._stopping.wait(RETRY_SECONDS)

    def _reconcile(self, svc: Obj, current: Obj | None = None, listed: bool = False) -> None:
        """Bring SVC's host copy to what it should be (none, for a Service not synced); CURRENT:
        that copy as LISTED, or read here."""
        meta = svc["metadata"]
        key = (meta["namespace"], meta["name"])
        want = host_service(svc, self.tenant_name, self.namespace)
        if want is None:
            if key in self._made or current is not None:  # its type or selector changed
                self._delete(*key)
            return
        path = f"{self.path}/{want['metadata']['name']}"
        try:
            if not listed:
                current = self.host.get(path)
            if current is None:
                current = self._create(svc, want)
            elif _owned(current["spec"]) != _owned(want["spec"]):
                # A merge patch replaces the port list: keep the node ports the host gave.
                given = {(p["port"], p["protocol"]): p.get("nodePort") for p in current["spec"]["ports"]}
                for port in want["spec"]["ports"]:
                    if given.get((port["port"], port["protocol"])):
                        port["nodePort"] = given[(port["port"], port["protocol"])]
                patch = {"metadata": {"labels": want["metadata"]["labels"]}, "spec": want["spec"]}
                current = self.host.request(
                    "PATCH",
                    path,
                    body=patch,
                    content_type="application/merge-patch+json",
                    what=f"host service {want['metadata']['name']}",
                )
        except KubeError as e:
            LOG.warning("service %s/%s: %s", *key, e)
            self._tell(svc, "Warning", "FailedSyncHostService", f"the host refused its copy: {e}")
            return
        self._remember(key, current)

    def _create(self, svc: Obj, want: Obj) -> Obj:
        name = want["metadata"]["name"]
        try:
            return self.host.request("POST", self.path, body=want, what=f"create host service {name}")
        except KubeError as e:
            asked = [p["nodePort"] for p in want["spec"]["ports"] if p.get("nodePort")]
            if e.status != 422 or not asked:
                raise
        # The host has the tenant's node port taken (or outside its range): let it choose.
        for port in want["spec"]["ports"]:
            port.pop("nodePort", None)
        made = self.host.request("POST", self.path, body=want, what=f"create host service {name}")
        given = ", ".join(str(p.get("nodePort")) for p in made["spec"]["ports"])
        self._tell(
            svc,
            "Warning",
            "HostNodePort",
            f"the host cluster had node port {', '.join(map(str, asked))} taken: it answers on {given}",
        )
        return made

    def _remember(self, key: tuple[str, str], host_svc: Obj) -> None:
        spec = host_svc.get("spec") or {}
        ip = spec.get("clusterIP") or ""
        ports = tuple(
            (p.get("name") or "", int(p["port"]), p.get("protocol") or "TCP") for p in spec.get("ports") or []
        )
        with self._lock:
            self._made.add(key)
            if ip and ip != "None":
                self._links[key] = ServiceLink(name=key[1], ip=ip, ports=ports)
            else:
                self._links.pop(key, None)

    def _delete(self, namespace: str, name: str) -> None:
        with self._lock:
            self._links.pop((namespace, name), None)
            self._made.discard((namespace, name))
        host_name = names.host_name(self.tenant_name, namespace, name, "service")
        try:
            self.host.request("DELETE", f"{self.path}/{host_name}", what=f"delete host service {host_name}")
        except KubeError as e:
            if e.status != 404:
                raise

    def _host_copies(self) -> dict[tuple[str, str], Obj]:
        """The host copies this agent made, by (tenant namespace, tenant name)."""
        selector = f"{names.TENANT_LABEL}={self.tenant_name},{names.KIND_LABEL}=service"
        items, _version = self.host.list(self.path, label_selector=selector)
        copies = {}
        for host_svc in items:
            owner = names.owner_of(host_svc)
            if owner is not None:
                copies[(owner[2], owner[3])] = host_svc
        return copies

    def _write_hosts(self) -> None:
        if self.hosts is not None:
            with self._lock:
                links = dict(self._links)
            self.hosts.write(links)

    def _tell(self, svc: Obj, type_: str, reason: str, message: str) -> None:
        if self.emit is not None:
            self.emit(svc, type_, reason, message)

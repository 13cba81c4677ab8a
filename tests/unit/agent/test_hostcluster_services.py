"""The Service sync: a tenant Service's host copy (selector, ports, node ports), and the sync
against the in-memory API servers (create, no write when nothing changed, a taken node port,
deletion both ways, the service links the Pods get)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fake_api import FakeApi, eventually
from rhizeption_agent.backends.hostcluster import names, services
from rhizeption_agent.kubeapi import KubeError

HOST_NS = "tenants-blue-pods"
HOST_SERVICES = f"/api/v1/namespaces/{HOST_NS}/services"


def tenant_service(
    name: str = "web", kind: str = "ClusterIP", node_port: int | None = None, **spec: Any
) -> dict:
    port: dict[str, Any] = {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
    if node_port:
        port["nodePort"] = node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}"},
        "spec": {"type": kind, "selector": {"app": "web"}, "ports": [port], "clusterIP": "10.96.0.9", **spec},
    }


# -- the host copy ------------------------------------------------------------------------------
def test_the_host_copy_selects_the_host_pods_of_the_tenant_pods_selected():
    copy_ = services.host_service(tenant_service(), "blue", HOST_NS)
    assert copy_["metadata"]["name"] == names.host_name("blue", "shop", "web", "service")
    assert copy_["spec"]["selector"] == names.host_selector("blue", "shop", {"app": "web"})
    assert copy_["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    assert copy_["spec"]["type"] == "ClusterIP" and "clusterIP" not in copy_["spec"], "the host gives its own"
    assert names.owner_of(copy_) == ("blue", "service", "shop", "web")


def test_a_node_port_service_asks_the_host_for_the_tenants_node_port():
    for kind in ("NodePort", "LoadBalancer"):
        copy_ = services.host_service(tenant_service(kind=kind, node_port=30080), "blue", HOST_NS)
        assert copy_["spec"]["type"] == "NodePort" and copy_["spec"]["ports"][0]["nodePort"] == 30080


def test_defaults_are_said_so_an_unchanged_copy_compares_equal():
    svc = tenant_service()
    svc["spec"]["ports"] = [{"port": 80}]
    assert services.host_service(svc, "blue", HOST_NS)["spec"]["ports"] == [
        {"port": 80, "targetPort": 80, "protocol": "TCP"}
    ]


def test_headless_services_stay_headless_and_external_names_or_selectorless_ones_are_not_synced():
    assert (
        services.host_service(tenant_service(clusterIP="None"), "blue", HOST_NS)["spec"]["clusterIP"]
        == "None"
    )
    assert services.host_service(tenant_service(kind="ExternalName"), "blue", HOST_NS) is None
    assert services.host_service(tenant_service(selector=None), "blue", HOST_NS) is None


# -- the sync ------------------------------------------------------------------------------------
class Host(FakeApi):
    """The host API server giving ClusterIPs, with node ports TAKEN."""

    def __init__(self, taken: tuple[int, ...] = ()) -> None:
        super().__init__("host")
        self.taken = taken
        self.ips = iter(f"10.43.0.{i}" for i in range(10, 250))
        self.next_port = iter(range(31000, 32000))

    def request(self, method: str, path: str, *, body: Any = None, **kw: Any) -> Any:
        if method == "POST" and path == HOST_SERVICES:
            body = copy.deepcopy(body)
            for port in body["spec"]["ports"]:
                if port.get("nodePort") in self.taken:
                    self.calls.append((method, path))
                    raise KubeError("provided port is already allocated", status=422)
                if body["spec"]["type"] == "NodePort" and not port.get("nodePort"):
                    port["nodePort"] = next(self.next_port)
            body["spec"].setdefault("clusterIP", next(self.ips))
        return super().request(method, path, body=body, **kw)


@pytest.fixture
def running() -> Iterator[Callable[..., tuple[Host, FakeApi, services.ServiceSync, list]]]:
    made: list[tuple[Host, FakeApi, services.ServiceSync]] = []

    def start(*tenant_services: dict, host: Host | None = None, hosts: services.HostsFile | None = None):
        host = host or Host()
        tenant = FakeApi("tenant")
        for svc in tenant_services:
            tenant.seed(svc)
        sync = services.ServiceSync(host, tenant, "blue", HOST_NS, hosts)
        told: list = []
        sync.emit = lambda obj, type_, reason, message: told.append(
            (obj["metadata"]["name"], reason, message)
        )
        sync.start()
        made.append((host, tenant, sync))
        return host, tenant, sync, told

    yield start
    for host, tenant, sync in made:
        sync.stop()
        host.close()
        tenant.close()


def test_a_tenant_service_gets_one_host_copy_and_its_pods_get_its_host_address(running):
    host, tenant, sync, _told = running(tenant_service())
    eventually(sync.synced.is_set)
    (made,) = host.at(HOST_SERVICES).values()
    link = eventually(lambda: sync.links("shop"))
    assert link == [
        services.ServiceLink(name="web", ip=made["spec"]["clusterIP"], ports=(("http", 80, "TCP"),))
    ]
    assert sync.links("other") == []
    tenant.seed({**tenant_service(), "metadata": {**tenant_service()["metadata"], "labels": {"x": "1"}}})
    time.sleep(0.3)  # the watch sees the change, and nothing the agent owns changed
    assert host.count("POST", HOST_SERVICES) == 1 and host.count("PATCH", HOST_SERVICES) == 0


def test_a_changed_port_is_written_to_the_host_copy_keeping_its_node_port(running):
    host, tenant, sync, _told = running(tenant_service(kind="NodePort", node_port=30080))
    eventually(sync.synced.is_set)
    changed = tenant_service(kind="NodePort", node_port=30080)
    changed["spec"]["ports"][0]["targetPort"] = 9090
    tenant.seed(changed)
    copy_ = eventually(
        lambda: next(
            (s for s in host.at(HOST_SERVICES).values() if s["spec"]["ports"][0]["targetPort"] == 9090), None
        )
    )
    assert copy_["spec"]["ports"][0]["nodePort"] == 30080


def test_a_node_port_the_host_has_taken_is_replaced_and_the_tenant_told(running):
    host, _tenant, sync, told = running(
        tenant_service(kind="NodePort", node_port=30080), host=Host(taken=(30080,))
    )
    eventually(sync.synced.is_set)
    (made,) = host.at(HOST_SERVICES).values()
    assert made["spec"]["ports"][0]["nodePort"] == 31000
    assert told == [
        ("web", "HostNodePort", "the host cluster had node port 30080 taken: it answers on 31000")
    ]


def test_deleting_the_tenant_service_deletes_its_copy_and_a_copy_left_from_before_goes_at_the_list(running):
    host = Host()
    stale = services.host_service(tenant_service("old"), "blue", HOST_NS)
    host._store(HOST_SERVICES, stale, "ADDED")
    host._store(HOST_SERVICES, {"metadata": {"name": "not-ours"}, "spec": {}}, "ADDED")
    host, tenant, sync, _told = running(tenant_service(), host=host)
    eventually(sync.synced.is_set)
    assert set(host.at(HOST_SERVICES)) == {"not-ours", names.host_name("blue", "shop", "web", "service")}
    tenant.remove("/api/v1/namespaces/shop/services/web")
    eventually(lambda: set(host.at(HOST_SERVICES)) == {"not-ours"})
    assert sync.links("shop") == []


def test_a_service_that_is_not_synced_costs_no_host_write_and_a_copy_it_no_longer_wants_goes(running):
    kubernetes = tenant_service("kubernetes", selector=None)  # every tenant has one, without selector
    host, tenant, sync, _told = running(kubernetes, tenant_service())
    eventually(sync.synced.is_set)
    assert host.count("DELETE", HOST_SERVICES) == 0 and host.count("POST", HOST_SERVICES) == 1
    tenant.seed(tenant_service(selector=None))  # web loses its selector: its copy goes
    eventually(lambda: host.at(HOST_SERVICES) == {})
    assert sync.links("shop") == []


# -- the tenant DNS ------------------------------------------------------------------------------
def test_the_hosts_file_names_each_synced_service_at_its_host_address(running, tmp_path):
    path = tmp_path / "dns" / "hosts"
    hosts = services.HostsFile(path, "cluster.local", api_server_ip="10.43.0.1")
    headless = tenant_service("db", clusterIP="None")
    host, tenant, sync, _told = running(tenant_service(), headless, hosts=hosts)
    eventually(sync.synced.is_set)
    web_ip = next(
        s["spec"]["clusterIP"] for s in host.at(HOST_SERVICES).values() if s["spec"]["clusterIP"] != "None"
    )
    assert path.read_text() == (
        f"10.43.0.1 kubernetes.default.svc.cluster.local\n{web_ip} web.shop.svc.cluster.local\n"
    )
    tenant.remove("/api/v1/namespaces/shop/services/web")
    eventually(lambda: "web.shop" not in path.read_text())
    assert path.read_text() == "10.43.0.1 kubernetes.default.svc.cluster.local\n"
    assert not list(path.parent.glob(".*partial"))


def test_the_hosts_file_is_written_only_when_it_changes(tmp_path):
    path = tmp_path / "hosts"
    hosts = services.HostsFile(path, "tenant.example")
    link = services.ServiceLink(name="web", ip="10.43.0.5", ports=(("http", 80, "TCP"),))
    hosts.write({("shop", "web"): link})
    assert path.read_text() == "10.43.0.5 web.shop.svc.tenant.example\n"
    path.write_text("changed by hand\n")
    hosts.write({("shop", "web"): link})  # the same names: no write
    assert path.read_text() == "changed by hand\n"

"""The Service proxy's render step: API objects in, one nftables script out. No kernel."""

from __future__ import annotations

import re

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils.service_proxy import (
    MASQ_MARK,
    ProxyConfig,
    ProxyError,
    fingerprint_of,
    render,
    render_delta,
    service_ports,
)


def svc(name, ip="10.96.0.10", ports=None, ns="default", stype="ClusterIP"):
    return {
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "type": stype,
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": ports if ports is not None else [{"name": "http", "protocol": "TCP", "port": 80}],
        },
    }


def eps(service, addrs, ports=None, ns="default", name=None, ready=True):
    return {
        "metadata": {
            "namespace": ns,
            "name": name or f"{service}-abc",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": ports if ports is not None else [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addrs],
    }


def rules_of(script: str, chain: str) -> list[str]:
    prefix = f"add rule ip rhizeption-proxy {chain} "
    return [line[len(prefix) :] for line in script.splitlines() if line.startswith(prefix)]


def elements_of(script: str, name: str) -> list[str]:
    out = []
    for line in script.splitlines():
        m = re.match(rf"add element ip rhizeption-proxy {re.escape(name)} {{ (.*) }}$", line)
        if m:
            out += m.group(1).split(", ")
    return out


def test_the_script_rebuilds_our_table_and_names_no_other():
    script, skipped = render([svc("web")], [eps("web", ["10.244.0.10"])])
    assert skipped == []
    lines = script.splitlines()
    assert lines[1:3] == ["add table ip rhizeption-proxy", "delete table ip rhizeption-proxy"]
    tables = {m.group(1) for m in re.finditer(r"^(?:add|delete) \w+ ip (\S+)", script, re.M)}
    assert tables == {"rhizeption-proxy"}
    assert "flush ruleset" not in script


def test_a_cluster_ip_goes_through_the_verdict_map_to_a_chain_per_service_and_endpoint():
    script, _skipped = render([svc("web")], [eps("web", ["10.244.0.11", "10.244.0.10"])])
    assert rules_of(script, "services")[0] == "ip daddr . meta l4proto . th dport vmap @service-addrs"
    assert elements_of(script, "service-addrs") == ["10.96.0.10 . tcp . 80 : goto svc-default/web/tcp/80"]
    assert rules_of(script, "svc-default/web/tcp/80") == [
        "numgen random mod 2 vmap { 0 : goto ep-default/web/tcp/80__10.244.0.10/8080,"
        " 1 : goto ep-default/web/tcp/80__10.244.0.11/8080 }"
    ]
    assert rules_of(script, "ep-default/web/tcp/80__10.244.0.10/8080") == [
        "ip saddr 10.244.0.10 jump mark-for-masquerade",
        "meta l4proto tcp dnat to 10.244.0.10:8080",
    ]
    for hook in ("nat-prerouting", "nat-output"):
        assert rules_of(script, hook) == ["jump services"]


def test_round_robin_uses_an_incrementing_counter():
    script, _skipped = render([svc("web")], [eps("web", ["10.244.0.10"])], ProxyConfig(balance="round-robin"))
    assert rules_of(script, "svc-default/web/tcp/80")[0].startswith("numgen inc mod 1 vmap")


def test_udp_and_named_ports_match_the_slice_ports_by_name_and_protocol():
    service = svc(
        "dns",
        ports=[
            {"name": "dns", "protocol": "UDP", "port": 53},
            {"name": "dns-tcp", "protocol": "TCP", "port": 53},
        ],
    )
    slice_ = eps(
        "dns",
        ["10.244.0.20"],
        ports=[
            {"name": "dns", "protocol": "UDP", "port": 5353},
            {"name": "dns-tcp", "protocol": "TCP", "port": 5354},
        ],
    )
    script, _skipped = render([service], [slice_])
    assert (
        rules_of(script, "ep-default/dns/udp/53__10.244.0.20/5353")[-1]
        == "meta l4proto udp dnat to 10.244.0.20:5353"
    )
    assert (
        rules_of(script, "ep-default/dns/tcp/53__10.244.0.20/5354")[-1]
        == "meta l4proto tcp dnat to 10.244.0.20:5354"
    )


def test_only_ready_endpoints_are_used_and_duplicates_across_slices_count_once():
    slices = [
        eps("web", ["10.244.0.10", "10.244.0.12"], name="a"),
        eps("web", ["10.244.0.10"], name="b"),
        eps("web", ["10.244.0.13"], name="c", ready=False),
    ]
    (port,), _skipped = service_ports([svc("web")], slices)
    assert [e.ip for e in port.endpoints] == ["10.244.0.10", "10.244.0.12"]


def test_terminating_but_serving_endpoints_are_used_when_none_is_ready():
    slice_ = eps("web", ["10.244.0.10"])
    slice_["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
    (port,), _skipped = service_ports([svc("web")], [slice_])
    assert [e.ip for e in port.endpoints] == ["10.244.0.10"]


def test_a_service_without_endpoints_is_rejected_not_mapped():
    script, _skipped = render(
        [
            svc(
                "web",
                stype="NodePort",
                ports=[{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}],
            )
        ],
        [],
    )
    assert elements_of(script, "service-addrs") == []
    assert elements_of(script, "no-endpoint-addrs") == ["10.96.0.10 . tcp . 80"]
    assert elements_of(script, "no-endpoint-nodeports") == ["tcp . 30080"]
    reject = "ct state new ip daddr . meta l4proto . th dport @no-endpoint-addrs reject"
    assert rules_of(script, "filter-output") == [reject]
    assert rules_of(script, "filter-forward") == [reject]
    assert "svc-default/web" not in script


def test_a_node_port_is_marked_for_masquerade_and_shares_the_service_chain():
    service = svc(
        "web", stype="NodePort", ports=[{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}]
    )
    script, _skipped = render([service], [eps("web", ["10.244.0.10"])])
    assert elements_of(script, "service-nodeports") == ["tcp . 30080 : goto ext-default/web/tcp/80"]
    assert rules_of(script, "ext-default/web/tcp/80") == [
        "jump mark-for-masquerade",
        "goto svc-default/web/tcp/80",
    ]
    assert any(
        "fib daddr type local" in r and "@service-nodeports" in r for r in rules_of(script, "services")
    )
    no_nodeports, _skipped = render([service], [eps("web", ["10.244.0.10"])], ProxyConfig(nodeports=False))
    assert "ext-default" not in no_nodeports


def test_masquerade_for_hairpin_and_traffic_into_the_tunnel():
    config = ProxyConfig(cluster_cidr="10.244.0.0/16", masquerade_interfaces=["wg-pets"])
    script, _skipped = render([svc("web")], [eps("web", ["10.244.0.10"])], config)
    mark = f"0x{MASQ_MARK:08x}"
    assert rules_of(script, "mark-for-masquerade") == [f"meta mark set meta mark | {mark}"]
    assert rules_of(script, "masquerading") == [
        'ct status dnat oifname { "wg-pets" } ip saddr != 10.244.0.0/16 masquerade',
        f"meta mark & {mark} == 0 return",
        f"meta mark set meta mark & 0x{~MASQ_MARK & 0xFFFFFFFF:08x}",
        "masquerade fully-random",
    ]
    plain, _skipped = render([svc("web")], [eps("web", ["10.244.0.10"])])
    assert "oifname" not in plain


@pytest.mark.parametrize(
    ("port", "why"),
    [
        ({"name": "http", "protocol": "TCP", "port": 0}, "port 0 is out of range"),
        ({"name": "http", "protocol": "TCP", "port": 70000}, "port 70000 is out of range"),
        ({"name": "http", "protocol": "SCTP", "port": 80}, "protocol 'SCTP' is not served"),
        ({"name": "http", "protocol": "ICMP", "port": 80}, "protocol 'ICMP' is not served"),
        ({"name": "http", "protocol": "TCP", "port": "80"}, "port '80' is out of range"),
    ],
)
def test_a_bad_port_is_skipped_with_a_line_and_the_rest_still_rendered(port, why):
    services = [svc("bad", ip="10.96.0.20", ports=[port]), svc("web")]
    script, skipped = render(services, [eps("web", ["10.244.0.10"])])
    assert len(skipped) == 1
    assert skipped[0].startswith("Service default/bad ports[0]: ") and why in skipped[0]
    assert "default/bad" not in script
    assert elements_of(script, "service-addrs") == ["10.96.0.10 . tcp . 80 : goto svc-default/web/tcp/80"]


def test_bad_addresses_and_names_are_skipped_headless_and_external_names_ignored():
    services = [
        svc("badip", ip="10.96.0.300"),
        svc("headless", ip="None"),
        {
            "metadata": {"namespace": "default", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "x.org"},
        },
        svc("Bad_Name", ip="10.96.0.21"),
        svc("web"),
    ]
    slices = [eps("web", ["10.244.0.10", "not-an-ip"])]
    _script, skipped = render(services, slices)
    assert skipped == [
        "Service default/badip: clusterIP '10.96.0.300' is not an IPv4 address",
        "Service default/Bad_Name: namespace or name is not a DNS label",
    ]
    (port,), _skipped = service_ports(services, slices)
    assert [e.ip for e in port.endpoints] == ["10.244.0.10"]


def test_two_services_claiming_one_address_and_port_keep_the_first():
    script, skipped = render([svc("b"), svc("a")], [eps("a", ["10.244.0.10"]), eps("b", ["10.244.0.11"])])
    assert skipped == ["Service default/b tcp/80: taken by default/a"]
    assert elements_of(script, "service-addrs") == ["10.96.0.10 . tcp . 80 : goto svc-default/a/tcp/80"]


def test_render_is_deterministic_and_the_fingerprint_follows_the_content():
    services = [svc(f"s{i}", ip=f"10.96.1.{i}") for i in range(5)]
    slices = [eps(f"s{i}", [f"10.244.0.{i + 10}"]) for i in range(5)]
    one, _skipped = render(services, slices)
    two, _skipped = render(list(reversed(services)), list(reversed(slices)))
    assert one == two
    three, _skipped = render(services, [*slices[:-1], eps("s4", ["10.244.0.99"])])
    assert fingerprint_of(one) != fingerprint_of(three)


def test_many_elements_are_split_over_several_lines():
    services = [svc(f"s{i}", ip=f"10.96.{i // 250}.{i % 250 + 1}") for i in range(1200)]
    script, _skipped = render(services, [eps(f"s{i}", ["10.244.0.10"]) for i in range(1200)])
    assert len(elements_of(script, "service-addrs")) == 1200
    assert (
        sum(1 for line in script.splitlines() if "add element ip rhizeption-proxy service-addrs" in line) == 3
    )


@pytest.mark.parametrize(
    ("config", "option"),
    [
        (ProxyConfig(table="bad table"), "table"),
        (ProxyConfig(balance="fastest"), "balance"),
        (ProxyConfig(cluster_cidr="10.244.0.0/33"), "cluster_cidr"),
        (ProxyConfig(masquerade_interfaces=["a" * 16]), "masquerade_interfaces"),
    ],
)
def test_a_bad_config_names_its_option(config, option):
    with pytest.raises(ProxyError, match=f"^{option}: "):
        render([], [], config)


def delta(old_services, old_slices, new_services, new_slices, config=None):
    config = config or ProxyConfig()
    old, _skipped = service_ports(old_services, old_slices)
    new, _skipped = service_ports(new_services, new_slices)
    return render_delta(old, new, "f" * 32, config)


def test_a_delta_rewrites_only_the_changed_service_and_its_endpoints():
    script = delta(
        [svc("web"), svc("db", ip="10.96.0.20")],
        [eps("web", ["10.244.0.10", "10.244.0.11"]), eps("db", ["10.244.0.30"])],
        [svc("web"), svc("db", ip="10.96.0.20")],
        [eps("web", ["10.244.0.11", "10.244.0.12"]), eps("db", ["10.244.0.30"])],
    )
    lines = script.splitlines()[1:]
    t = "ip rhizeption-proxy"
    assert lines == [
        f"flush chain {t} ep-default/web/tcp/80__10.244.0.10/8080",
        f"flush chain {t} svc-default/web/tcp/80",
        f"delete chain {t} ep-default/web/tcp/80__10.244.0.10/8080",
        f"add chain {t} ep-default/web/tcp/80__10.244.0.12/8080",
        f"add rule {t} ep-default/web/tcp/80__10.244.0.12/8080 ip saddr 10.244.0.12 jump mark-for-masquerade",
        f"add rule {t} ep-default/web/tcp/80__10.244.0.12/8080 meta l4proto tcp dnat to 10.244.0.12:8080",
        f"add rule {t} svc-default/web/tcp/80 numgen random mod 2 vmap"
        " { 0 : goto ep-default/web/tcp/80__10.244.0.11/8080,"
        " 1 : goto ep-default/web/tcp/80__10.244.0.12/8080 }",
        f"delete chain {t} fingerprint",
        f'add chain {t} fingerprint {{ comment "sha256:{"f" * 32}" ; }}',
    ]
    assert "db" not in script


def test_a_delta_for_a_service_losing_its_endpoints_moves_it_to_the_reject_set():
    script = delta([svc("web")], [eps("web", ["10.244.0.10"])], [svc("web")], [])
    assert "delete element ip rhizeption-proxy service-addrs { 10.96.0.10 . tcp . 80 }" in script
    assert "add element ip rhizeption-proxy no-endpoint-addrs { 10.96.0.10 . tcp . 80 }" in script
    assert "delete chain ip rhizeption-proxy svc-default/web/tcp/80" in script
    # references go before what they point to: flush, then elements, then chains
    order = [line.split(" ip ")[0] for line in script.splitlines()[1:]]
    assert order.index("delete element") < order.index("delete chain")
    assert order.index("flush chain") < order.index("delete element")


def test_a_delta_for_a_deleted_service_removes_everything_it_had():
    nodeport = svc(
        "web", stype="NodePort", ports=[{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}]
    )
    script = delta([nodeport], [eps("web", ["10.244.0.10"])], [], [])
    for chain in (
        "svc-default/web/tcp/80",
        "ext-default/web/tcp/80",
        "ep-default/web/tcp/80__10.244.0.10/8080",
    ):
        assert f"delete chain ip rhizeption-proxy {chain}" in script
    assert "delete element ip rhizeption-proxy service-nodeports { tcp . 30080 }" in script
    assert "add " not in script.replace("add chain ip rhizeption-proxy fingerprint", "")


def test_no_change_gives_only_the_new_fingerprint_and_an_address_moving_gives_none():
    same = delta([svc("web")], [eps("web", ["10.244.0.10"])], [svc("web")], [eps("web", ["10.244.0.10"])])
    assert [line.split(" ip ")[0] for line in same.splitlines()[1:]] == ["delete chain", "add chain"]
    moved = delta([svc("a")], [eps("a", ["10.244.0.10"])], [svc("b")], [eps("b", ["10.244.0.10"])])
    assert moved is None

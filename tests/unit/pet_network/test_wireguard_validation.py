"""rhizeption.core.wireguard's input checks and rendering: no interface is touched."""

from __future__ import annotations

import base64

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils.wireguard import (
    WireGuardError,
    build_spec,
    render_config,
    validate_key,
    wanted_routes,
)

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()


def params(**kw):
    base = {"name": "wg-pets", "addresses": ["10.244.255.1/24"], "listen_port": 51820, "peers": []}
    return {**base, **kw}


@pytest.mark.parametrize(
    "bad",
    ["", "short", KEY_A[:-1], KEY_A + "A", base64.b64encode(bytes(31)).decode() + "AA", "!" * 44],
)
def test_a_malformed_key_names_the_option_and_does_not_echo_it(bad):
    with pytest.raises(WireGuardError) as err:
        validate_key(bad, "peers[2].public_key")
    assert str(err.value).startswith("peers[2].public_key: not a WireGuard key")
    if bad:
        assert bad not in str(err.value)


def test_a_good_key_passes():
    assert validate_key(f" {KEY_A}\n", "x") == KEY_A


def test_overlapping_allowed_ips_of_two_peers_are_refused():
    p = params(
        peers=[
            {"public_key": KEY_A, "allowed_ips": ["10.244.1.0/24"]},
            {"public_key": KEY_B, "allowed_ips": ["10.244.2.0/24", "10.244.1.128/25"]},
        ]
    )
    with pytest.raises(
        WireGuardError,
        match=r"^peers\[1\]\.allowed_ips: 10.244.1.128/25 overlaps 10.244.1.0/24 of peers\[0\]",
    ):
        build_spec(p)


def test_disjoint_subnets_and_other_families_pass():
    spec = build_spec(
        params(
            peers=[
                {"public_key": KEY_A, "allowed_ips": ["10.244.1.0/24", "fd00::/64"]},
                {"public_key": KEY_B, "allowed_ips": ["10.244.2.0/24"]},
            ]
        )
    )
    assert [str(n) for n in spec.peers[0].allowed_ips] == ["10.244.1.0/24", "fd00::/64"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "a-name-longer-than-15"}, r"^name: "),
        ({"listen_port": 70000}, r"^listen_port: "),
        ({"addresses": ["10.244.255.300/24"]}, r"^addresses\[0\]: "),
        ({"peers": [{"public_key": KEY_A, "allowed_ips": ["10.244.1.0/33"]}]}, r"^peers\[0\]\.allowed_ips: "),
        ({"peers": [{"public_key": KEY_A, "endpoint": "no-port"}]}, r"^peers\[0\]\.endpoint: "),
        ({"peers": [{"public_key": KEY_A}, {"public_key": KEY_A}]}, r"^peers\[1\]\.public_key: the same key"),
    ],
)
def test_bad_input_names_its_option(change, message):
    with pytest.raises(WireGuardError, match=message):
        build_spec(params(**change))


def test_routes_cover_the_peers_subnets_outside_the_interface_prefix():
    spec = build_spec(
        params(peers=[{"public_key": KEY_A, "allowed_ips": ["10.244.255.2/32", "10.244.1.0/24"]}])
    )
    assert [str(n) for n in wanted_routes(spec)] == ["10.244.1.0/24"]
    assert wanted_routes(build_spec(params(peers=spec_peers(), routes=False))) == []


def spec_peers():
    return [{"public_key": KEY_A, "allowed_ips": ["10.244.1.0/24"]}]


def test_the_config_for_reboots_carries_a_key_path_not_a_key():
    spec = build_spec(
        params(peers=[{"public_key": KEY_A, "allowed_ips": ["10.244.1.0/24"], "endpoint": "gw:51820"}])
    )
    text = render_config(spec)
    assert "PrivateKey" not in text
    assert "PostUp = wg set %i private-key /etc/wireguard/wg-pets.key" in text
    assert f"[Peer]\nPublicKey = {KEY_A}\nAllowedIPs = 10.244.1.0/24\nEndpoint = gw:51820" in text


def _sync_argv(spec, live):
    from ansible_collections.rhizeption.core.plugins.module_utils.wireguard import Result, _sync_wireguard

    calls = []
    res = Result(public_key=KEY_B)
    _sync_wireguard(spec, live, lambda argv, data=None: calls.append(argv) or (0, "", ""), res, False)
    return calls


def test_a_new_private_key_restarts_the_session_with_a_keepalive_at_once():
    """The hub cannot start the new session (it learns our endpoint from us): the pet must."""
    from ansible_collections.rhizeption.core.plugins.module_utils.wireguard import Live, Peer

    hub = {
        "public_key": KEY_A,
        "allowed_ips": ["10.244.255.0/24"],
        "endpoint": "gw:51820",
        "persistent_keepalive": 25,
    }
    spec = build_spec(params(listen_port=None, peers=[hub]))
    same_peer = Peer(KEY_A, list(spec.peers[0].allowed_ips), "gw:51820", 25)
    old_key = base64.b64encode(bytes(range(2, 34))).decode()
    (argv,) = _sync_argv(spec, Live(exists=True, public_key=old_key, peers={KEY_A: same_peer}))
    assert argv[argv.index("private-key") + 1] == spec.private_key_path
    tail = argv[-8:]
    assert tail == ["peer", KEY_A, "persistent-keepalive", "off", "peer", KEY_A, "persistent-keepalive", "25"]


def test_an_unchanged_key_leaves_the_sessions_alone():
    from ansible_collections.rhizeption.core.plugins.module_utils.wireguard import Live, Peer

    hub = {
        "public_key": KEY_A,
        "allowed_ips": ["10.244.255.0/24"],
        "endpoint": "gw:51820",
        "persistent_keepalive": 25,
    }
    spec = build_spec(params(listen_port=None, peers=[hub]))
    same_peer = Peer(KEY_A, list(spec.peers[0].allowed_ips), "gw:51820", 25)
    assert _sync_argv(spec, Live(exists=True, public_key=KEY_B, peers={KEY_A: same_peer})) == []

"""rhizeption.core.wireguard on real wireguard-go, with network namespaces as hosts.

gateway (the hub) is joined to pet A and pet B by veth pairs; the pets reach each other
only through the hub's tunnel. Peer changes and key rotation must leave the other
sessions up: checked with a ping that runs across the change and with the hub's
`wg show ... latest-handshakes`.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import PORT, Lab, Topology, lab_leftovers, ping, reachable_within, wireguard_go_pids


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    lab = Lab()
    try:
        t = Topology(lab, tmp_path_factory.mktemp("wg"))
        a, b = t.add_pet("a", 1), t.add_pet("b", 2)
        for h in (t.gw, a, b):
            lab.track_wg(h.ns, h.ifname)
            t.keypair(h)
        yield t
    finally:
        lab.close()
        assert lab_leftovers(lab.suffix) == []


def test_tunnels_come_up_and_pet_a_reaches_pet_b_through_the_hub(topo: Topology) -> None:
    a, b = topo.pets["a"], topo.pets["b"]
    hub = topo.apply(topo.gw, topo.hub_args())
    assert hub["changed"] is True
    assert hub["implementation"] == "userspace"  # MACHINE.md: no kernel module here
    assert hub["public_key"] == topo.gw.public_key
    for pet in (a, b):
        topo.apply(pet, topo.pet_args(pet))
    assert ping(topo.lab, a.ns, b.tunnel_ip)
    # The pets have no underlay route to each other: the reply came through the hub.
    assert "10.244.250" not in topo.lab.run(a.ns, "ip", "route", "get", b.tunnel_ip)
    assert set(topo.handshakes(topo.gw)) == {a.public_key, b.public_key}
    assert all(ts > 0 for ts in topo.handshakes(topo.gw).values())


def test_a_second_run_changes_nothing_and_check_mode_writes_nothing(topo: Topology) -> None:
    for host, args in [(topo.gw, topo.hub_args())] + [(p, topo.pet_args(p)) for p in topo.pets.values()]:
        again = topo.apply(host, args)
        assert again["changed"] is False, again["actions"]
    args = topo.hub_args()
    args["listen_port"] = PORT + 1
    preview = topo.apply(topo.gw, args, check_mode=True, diff=True)
    assert preview["changed"] is True
    assert f"ListenPort = {PORT + 1}" in preview["diff"]["after"]
    assert f"ListenPort = {PORT}" in preview["diff"]["before"]
    assert f"listening port: {PORT}" in topo.lab.run(topo.gw.ns, "wg", "show", topo.gw.ifname)


def test_the_private_key_stays_on_the_host_with_mode_0600(topo: Topology) -> None:
    key = Path(topo.gw.key_path)
    assert key.stat().st_mode & 0o777 == 0o600
    private = key.read_text().strip()
    out = topo.lab.module(topo.gw.ns, "wireguard", topo.hub_args(), diff=True)
    assert private not in repr(out)
    conf = Path(topo.hub_args()["config_path"])
    assert conf.stat().st_mode & 0o777 == 0o600
    assert private not in conf.read_text()
    assert f"PostUp = wg set %i private-key {key}" in conf.read_text()


def _continuous_ping(topo: Topology, ns: str, dst: str) -> subprocess.Popen:
    return topo.lab.popen(
        ns, "ping", "-i", "0.05", "-W", "1", dst, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _stop_ping(proc: subprocess.Popen) -> tuple[int, list[int]]:
    """(how many pings were answered, the sequence numbers missing among them). A ping sent
    just before the stop has no answer yet, and is no loss: only a gap before the last answer
    is (ping's own 'packets transmitted' counts that last one)."""
    proc.send_signal(2)
    out, _err = proc.communicate(timeout=10)
    answered = {int(n) for n in re.findall(r"icmp_seq=(\d+)", out)}
    assert answered, out
    return len(answered), [n for n in range(1, max(answered)) if n not in answered]


def test_a_new_peer_leaves_the_other_sessions_up(topo: Topology) -> None:
    a, b = topo.pets["a"], topo.pets["b"]
    assert ping(topo.lab, a.ns, b.tunnel_ip)
    before = topo.handshakes(topo.gw)
    pinger = _continuous_ping(topo, a.ns, b.tunnel_ip)
    try:
        c = topo.add_pet("c", 3)
        topo.lab.track_wg(c.ns, c.ifname)
        topo.keypair(c)
        added = topo.apply(topo.gw, topo.hub_args())
        assert added["actions"] == [
            f"write {topo.hub_args()['config_path']}",
            f"add peer {c.public_key}",
            f"add route {c.pod_subnet}",
        ]
        topo.apply(c, topo.pet_args(c))
        assert ping(topo.lab, c.ns, a.tunnel_ip)
        # The old session carries pings after the change too, not only before it.
        assert ping(topo.lab, a.ns, b.tunnel_ip, count=10)
    finally:
        answered, lost = _stop_ping(pinger)
    # The pinger ran from before the change until after it: none of its pings was lost.
    assert lost == [], f"pings {lost} of {answered + len(lost)} lost while a peer was added"
    after = topo.handshakes(topo.gw)
    # The existing sessions were not re-keyed: their last handshakes are the same.
    assert after[a.public_key] == before[a.public_key]
    assert after[b.public_key] == before[b.public_key]


def test_rotating_one_pets_key_leaves_the_other_sessions_up(topo: Topology) -> None:
    a, b = topo.pets["a"], topo.pets["b"]
    old_b = b.public_key
    before = topo.handshakes(topo.gw)
    pinger = _continuous_ping(topo, a.ns, topo.gw.tunnel_ip)
    try:
        args = topo.pet_args(b)
        rotated = topo.apply(b, {**args, "rotate_key": True})
        assert rotated["public_key"] != old_b
        b.public_key = rotated["public_key"]
        hub = topo.apply(topo.gw, topo.hub_args())
        assert f"remove peer {old_b}" in hub["actions"]
        assert f"add peer {b.public_key}" in hub["actions"]
        # B's handshake with its new key is retried every 5 s until the hub knows the key.
        assert reachable_within(a.ns, b.tunnel_ip, 20)
    finally:
        answered, lost = _stop_ping(pinger)
    assert lost == [], f"pings {lost} of {answered + len(lost)} from pet A lost during B's rotation"
    after = topo.handshakes(topo.gw)
    assert after[a.public_key] == before[a.public_key]
    assert old_b not in after


def test_a_pet_with_a_new_key_starts_its_session_at_once(topo: Topology) -> None:
    """The role's order: the hub learns B's new key first, then B takes it. The hub cannot
    start B's new session (it learns B's endpoint from B), so B must, at once: not when its
    keepalive timer next fires, which a packet just sent has pushed 25 s away."""
    b = topo.pets["b"]
    slow = topo.pet_args(b)
    slow["peers"][0]["persistent_keepalive"] = 25
    topo.apply(b, slow)
    try:
        assert ping(topo.lab, b.ns, topo.gw.tunnel_ip, count=1)  # re-arms B's 25 s timer
        new_key = topo.lab.module(
            b.ns,
            "wireguard",
            {"name": b.ifname, "state": "keypair", "private_key_path": b.key_path, "rotate_key": True},
        )["public_key"]
        b.public_key = new_key
        topo.apply(topo.gw, topo.hub_args())
        took = topo.apply(b, slow)
        assert "set private key" in took["actions"]
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not topo.handshakes(topo.gw).get(new_key):
            time.sleep(0.1)
        assert topo.handshakes(topo.gw).get(new_key), "B waited for its keepalive timer to start the session"
    finally:
        topo.apply(b, topo.pet_args(b))


def test_bad_keys_and_overlapping_subnets_are_refused_naming_the_option(topo: Topology) -> None:
    args = topo.hub_args()
    args["peers"][0]["public_key"] = "not-a-key"
    out = topo.lab.module(topo.gw.ns, "wireguard", args)
    assert out["failed"] is True
    assert out["msg"].startswith("peers[0].public_key: not a WireGuard key")
    args = topo.hub_args()
    args["peers"][1]["allowed_ips"].append("10.244.1.128/25")  # inside pet A's Pod subnet
    out = topo.lab.module(topo.gw.ns, "wireguard", args)
    assert out["failed"] is True
    assert out["msg"].startswith("peers[1].allowed_ips: 10.244.1.128/25 overlaps 10.244.1.0/24")
    # Nothing was applied: the hub still has its peers as before.
    assert topo.apply(topo.gw, topo.hub_args())["changed"] is False


def test_absent_removes_the_interface_and_ends_wireguard_go(topo: Topology) -> None:
    c = topo.pets.get("c") or topo.add_pet("c", 3)
    if not c.public_key:
        topo.lab.track_wg(c.ns, c.ifname)
        topo.keypair(c)
        topo.apply(c, topo.pet_args(c))
    assert wireguard_go_pids(c.ifname)
    gone = topo.apply(
        c, {"name": c.ifname, "state": "absent", "config_path": str(topo.tmp / f"{c.ifname}.conf")}
    )
    assert gone["changed"] is True
    assert (
        subprocess.run(
            ["ip", "-n", c.ns, "link", "show", c.ifname], capture_output=True, check=False
        ).returncode
        != 0
    )
    deadline = time.monotonic() + 5
    while wireguard_go_pids(c.ifname) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wireguard_go_pids(c.ifname) == []
    assert topo.apply(c, {"name": c.ifname, "state": "absent"})["changed"] is False

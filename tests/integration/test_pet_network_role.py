"""The pet_node_network role on network namespaces standing for a hub and its pets.

Each namespace is an inventory host: Ansible's local connection with a Python that runs
inside the namespace. wireguard-go, real keys, peers computed from the inventory.
systemd is not PID 1 here, so the role's services are off (pet_node_network_manage_services).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import COLLECTIONS, REPO, Lab, lab_leftovers, reachable_within

PLAYBOOK = """
- name: Pet node networking
  hosts: all
  gather_facts: false
  roles:
    - role: rhizeption.core.pet_node_network
"""


class RoleLab:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.gw = lab.ns("rgw")
        lab.run(self.gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # one underlay for all: the hub has a single endpoint address
        self.bridge = lab.bridge(self.gw, "10.244.250.1/24")
        self.hosts: dict[str, dict] = {}
        self._add("gw", self.gw, "10.244.255.1", group="pet_gateways")
        (tmp / "playbook.yml").write_text(PLAYBOOK)

    def _add(self, name: str, ns: str, address: str, group: str, pod_subnet: str = "") -> None:
        ifname = self.lab.ifname(name[-1] if name != "gw" else "h")
        self.lab.track_wg(ns, ifname)
        home = self.tmp / name
        home.mkdir()
        python = home / "python"
        python.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {sys.executable} "$@"\n')
        python.chmod(0o755)
        self.hosts[name] = {
            "group": group,
            "ns": ns,
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": str(python),
                "pet_node_network_interface": ifname,
                "pet_node_network_node_address": address,
                "pet_node_network_key_path": str(home / "wg.key"),
                "pet_node_network_config_path": str(home / "wg.conf"),
                "pet_node_network_sysctl_file": str(home / "sysctl.conf"),
                "pet_node_network_proxy_dir": str(home / "proxy"),
                "pet_node_network_install_packages": False,
                "pet_node_network_manage_services": False,
                **({"pet_node_network_pod_subnet": pod_subnet} if pod_subnet else {}),
                **({"pet_node_network_endpoint": "10.244.250.1:51820"} if name == "gw" else {}),
            },
        }

    def add_pet(self, letter: str, index: int) -> None:
        ns = self.lab.pod(f"rp{letter}", self.gw, self.bridge, f"10.244.250.{index + 1}/24", "10.244.250.1")
        self._add(f"pet{letter}", ns, f"10.244.255.{index + 1}", "pet_nodes", f"10.244.{index}.0/24")

    def inventory(self) -> Path:
        groups: dict[str, dict] = {"pet_gateways": {"hosts": {}}, "pet_nodes": {"hosts": {}}}
        for name, h in self.hosts.items():
            groups[h["group"]]["hosts"][name] = h["vars"]
        path = self.tmp / "inventory.json"
        path.write_text(json.dumps({"all": {"children": groups}}))
        return path

    def play(self, *args: str) -> dict:
        env = {
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "0",
        }
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                "-i",
                str(self.inventory()),
                str(self.tmp / "playbook.yml"),
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            check=False,
        )
        try:
            out = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"no JSON from ansible-playbook: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            ) from None
        failed = {h: s for h, s in out["stats"].items() if s["failures"] or s["unreachable"]}
        assert not failed, json.dumps(out["plays"][-1]["tasks"][-1], indent=1)[-4000:]
        return out

    def ifname(self, host: str) -> str:
        return self.hosts[host]["vars"]["pet_node_network_interface"]


def changed(out: dict) -> int:
    return sum(s["changed"] for s in out["stats"].values())


@pytest.fixture(scope="module")
def role(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleLab]:
    lab = Lab()
    try:
        r = RoleLab(lab, tmp_path_factory.mktemp("role"))
        r.add_pet("a", 1)
        r.add_pet("b", 2)
        yield r
    finally:
        lab.close()
        assert lab_leftovers(lab.suffix) == []


def test_the_role_builds_the_tunnels_from_the_inventory(role: RoleLab) -> None:
    first = role.play()
    assert changed(first) > 0
    assert reachable_within(role.hosts["peta"]["ns"], "10.244.255.3", 15)
    hub = role.lab.run(role.gw, "wg", "show", role.ifname("gw"), "allowed-ips")
    assert "10.244.255.2/32" in hub and "10.244.1.0/24" in hub
    assert "10.244.255.3/32" in hub and "10.244.2.0/24" in hub
    # the proxy's code is the collection's module_utils, copied as is
    copied = Path(role.hosts["peta"]["vars"]["pet_node_network_proxy_dir"]) / "service_proxy.py"
    assert copied.read_text() == (REPO / "plugins/module_utils/service_proxy.py").read_text()


def test_a_second_run_and_check_mode_change_nothing(role: RoleLab) -> None:
    assert changed(role.play()) == 0
    assert changed(role.play("--check", "--diff")) == 0


def test_a_new_pet_in_the_inventory_joins_without_touching_the_others(role: RoleLab) -> None:
    before = role.lab.run(role.gw, "wg", "show", role.ifname("gw"), "latest-handshakes")
    role.add_pet("c", 3)
    preview = role.play("--check")
    # The new pet's key does not exist yet (the run would make it: that is the change the
    # hub reports), so in check mode nothing fails and the hub's interface keeps its peers.
    hub_task = [
        t["hosts"]["gw"]
        for t in preview["plays"][0]["tasks"]
        if t["task"]["name"].endswith("The hub, with every pet as a peer") and "gw" in t["hosts"]
    ]
    assert hub_task and hub_task[0]["changed"] is False, hub_task
    role.play()
    assert reachable_within(role.hosts["petc"]["ns"], "10.244.255.2", 15)
    after = dict(
        line.split("\t")
        for line in role.lab.run(role.gw, "wg", "show", role.ifname("gw"), "latest-handshakes").splitlines()
    )
    for key, stamp in (line.split("\t") for line in before.splitlines()):
        assert after[key] == stamp, "an existing pet's session was renewed"


def test_rotating_a_pets_key_with_limit_keeps_the_other_pets(role: RoleLab) -> None:
    """--limit petb,gw: the hub still knows pet A and pet C (their keys are read on them),
    so it keeps them; only B's session starts over with its new key."""
    hub = role.ifname("gw")
    before = dict(
        line.split("\t")
        for line in role.lab.run(role.gw, "wg", "show", hub, "latest-handshakes").splitlines()
    )
    old_b = role.lab.run(role.hosts["petb"]["ns"], "wg", "show", role.ifname("petb"), "public-key").strip()
    role.play("--limit", "petb,gw", "-e", json.dumps({"pet_node_network_rotate_hosts": ["petb"]}))
    new_b = role.lab.run(role.hosts["petb"]["ns"], "wg", "show", role.ifname("petb"), "public-key").strip()
    assert new_b != old_b
    after = dict(
        line.split("\t")
        for line in role.lab.run(role.gw, "wg", "show", hub, "latest-handshakes").splitlines()
    )
    assert old_b not in after and new_b in after
    for key, stamp in before.items():
        if key != old_b:
            assert after[key] == stamp, "another pet's session was touched"
    # B starts its new session at once: the hub cannot (it learns B's endpoint from B), and
    # waiting for B's 25 s keepalive timer left A unable to reach B for up to 25 s.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not handshake_of(role, new_b):
        time.sleep(0.2)
    assert handshake_of(role, new_b), "B did not start a session with its new key within 5 s"
    assert reachable_within(role.hosts["peta"]["ns"], "10.244.255.3", 5)


def handshake_of(role: RoleLab, key: str) -> int:
    out = role.lab.run(role.gw, "wg", "show", role.ifname("gw"), "latest-handshakes")
    return int(dict(line.split("\t") for line in out.splitlines()).get(key, 0))

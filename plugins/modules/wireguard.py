#!/usr/bin/python
# Copyright: rhizeption.core developers
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: wireguard
short_description: Manage one WireGuard interface and its peers in place
description:
  - Creates a WireGuard interface, its addresses, routes and peers, and changes only what
    differs from the live state with C(wg set) and C(ip), the way C(wg syncconf) does.
    Adding, changing or removing a peer never recreates the interface, so the sessions of
    the other peers stay up.
  - Generates the private key on the managed host (mode 0600) the first time, or when
    O(rotate_key) is set. The private key is never returned, shown in a diff or logged;
    only the public key is returned.
  - Uses the kernel implementation where the kernel has WireGuard, and C(wireguard-go)
    where it has not. wireguard-go keeps its control socket in C(/var/run/wireguard),
    shared by all network namespaces, so interface names must be unique on the machine.
  - Writes a wg-quick style configuration (without the private key; C(PostUp) hands the
    key file to C(wg)) so that C(wg-quick@NAME.service) brings the same interface back
    after a reboot.
version_added: 0.1.0
author:
  - rhizeption.core developers (@rhizeption)
options:
  name:
    description: Interface name, 1 to 15 characters.
    type: str
    required: true
  state:
    description:
      - V(present) creates or updates the interface.
      - V(absent) deletes the interface and the configuration file; the key file stays,
        so the host keeps its public key if the interface comes back.
      - V(keypair) only makes sure the private key exists and returns the public key,
        so that a play can learn every host's public key before configuring peers.
    type: str
    choices: [present, absent, keypair]
    default: present
  addresses:
    description: Addresses of the interface with their prefix, for example V(10.244.255.2/24).
    type: list
    elements: str
    default: []
  listen_port:
    description: UDP port to listen on. Without it the port is chosen by WireGuard.
    type: int
  mtu:
    description: MTU of the interface.
    type: int
    default: 1420
  peers:
    description:
      - The complete list of peers. Peers that are live on the interface but not listed
        here are removed.
      - Allowed IPs of different peers must not overlap.
    type: list
    elements: dict
    default: []
    suboptions:
      public_key:
        description: The peer's public key (base64, 44 characters).
        type: str
        required: true
      allowed_ips:
        description: Networks routed to this peer and accepted from it.
        type: list
        elements: str
        default: []
      endpoint:
        description: V(HOST:PORT) where the peer listens. Leave out for peers that connect in.
        type: str
      persistent_keepalive:
        description: Seconds between keepalives (0 is off). Peers behind NAT need one.
        type: int
        default: 0
  private_key_path:
    description: Where the private key lives on the managed host. Defaults to C(/etc/wireguard/NAME.key).
    type: path
  rotate_key:
    description:
      - Replace the private key with a fresh one. Only this interface's sessions
        re-handshake; the peers must be given the new public key.
      - When the interface takes a new private key, it sends a keepalive at once to every
        peer with an O(peers[].endpoint) and O(peers[].persistent_keepalive), so a pet
        starts its new session with the hub now rather than when its keepalive timer fires.
      - Not idempotent by nature; set it for one run.
    type: bool
    default: false
  implementation:
    description: V(auto) tries the kernel first and falls back to C(wireguard-go).
    type: str
    choices: [auto, kernel, userspace]
    default: auto
  userspace_command:
    description: The userspace implementation to run where the kernel has no WireGuard.
    type: str
    default: wireguard-go
  config_path:
    description:
      - Where to write the wg-quick style configuration for reboots.
        Defaults to C(/etc/wireguard/NAME.conf); an empty string writes none.
    type: path
  routes:
    description:
      - Add routes through the interface for the peers' allowed IPs that its own addresses
        do not cover.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Returns what changed (or would change, in check mode) as a diff.
    support: full
notes:
  - Needs C(wg) (wireguard-tools) and C(ip) (iproute2) on the managed host, and
    C(wireguard-go) where the kernel has no WireGuard.
"""

EXAMPLES = r"""
- name: Learn this host's public key (generates the private key on first run)
  rhizeption.core.wireguard:
    name: wg-pets
    state: keypair
  register: wg_key

- name: The hub, with two pets
  rhizeption.core.wireguard:
    name: wg-pets
    addresses: [10.244.255.1/24]
    listen_port: 51820
    peers:
      - public_key: "{{ hostvars['pet-a'].wg_key.public_key }}"
        allowed_ips: [10.244.255.2/32, 10.244.1.0/24]
      - public_key: "{{ hostvars['pet-b'].wg_key.public_key }}"
        allowed_ips: [10.244.255.3/32, 10.244.2.0/24]

- name: A pet, talking to the hub
  rhizeption.core.wireguard:
    name: wg-pets
    addresses: [10.244.255.2/24]
    peers:
      - public_key: "{{ hostvars['gateway'].wg_key.public_key }}"
        endpoint: gateway.example.org:51820
        allowed_ips: [10.244.0.0/16, 10.96.0.0/16]
        persistent_keepalive: 25
"""

RETURN = r"""
public_key:
  description: The interface's public key. Absent in check mode before the key exists.
  returned: when state is present or keypair
  type: str
  sample: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
interface:
  description: The interface name.
  returned: always
  type: str
implementation:
  description: V(kernel) or V(userspace) (wireguard-go).
  returned: when state is present
  type: str
actions:
  description: What was changed (or would be, in check mode), one line each; no key material.
  returned: always
  type: list
  elements: str
  sample: ["add peer xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="]
peers:
  description: The peers as configured (public keys and allowed IPs only).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils.wireguard import (  # noqa: E402
    WireGuardError,
    build_spec,
    reconcile,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent", "keypair"]),
            addresses=dict(type="list", elements="str", default=[]),
            listen_port=dict(type="int"),
            mtu=dict(type="int", default=1420),
            peers=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    public_key=dict(type="str", required=True, no_log=False),
                    allowed_ips=dict(type="list", elements="str", default=[]),
                    endpoint=dict(type="str"),
                    persistent_keepalive=dict(type="int", default=0),
                ),
            ),
            private_key_path=dict(type="path", no_log=False),
            rotate_key=dict(type="bool", default=False, no_log=False),
            implementation=dict(type="str", default="auto", choices=["auto", "kernel", "userspace"]),
            userspace_command=dict(type="str", default="wireguard-go"),
            config_path=dict(type="path"),
            routes=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = dict(module.params)
    if params["config_path"] is None:
        params["config_path"] = f"/etc/wireguard/{params['name']}.conf"

    def run(argv: list[str], data: str | None = None) -> tuple[int, str, str]:
        rc, out, err = module.run_command(argv, data=data, binary_data=data is not None)
        return rc, out, err

    try:
        spec = build_spec(params)
        result = reconcile(spec, run, check_mode=module.check_mode)
    except WireGuardError as exc:
        module.fail_json(msg=str(exc))
    out = result.as_dict(spec)
    diff = out.pop("diff")
    if module._diff:
        out["diff"] = {
            "before": diff["before"],
            "after": diff["after"],
            "before_header": f"{spec.name} (live)",
            "after_header": f"{spec.name} (wanted)",
        }
    module.exit_json(**out)


if __name__ == "__main__":
    main()

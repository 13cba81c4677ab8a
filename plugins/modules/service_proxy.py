#!/usr/bin/python
# Copyright: rhizeption.core developers
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_proxy
short_description: Serve a control plane's Services on a pet node with one nftables table
description:
  - Reads every Service and EndpointSlice of the control plane (or takes them from
    O(services) and O(endpoint_slices)), renders the nftables rules that serve their
    ClusterIPs and NodePorts on this host, and applies them in one C(nft -f) transaction
    that re-creates only the table named by O(table). Other tables are never touched.
  - This is one sync. The long-running proxy (list+watch, the same rendering code) is
    C(service_proxy_daemon.py) from this collection's module_utils; the
    C(rhizeption.core.pet_node_network) role installs it as a systemd service.
  - Nothing is written when the live table was built from the same rules (its
    fingerprint matches). In check mode the rules are rendered, validated with
    C(nft -c) and shown as a diff.
  - Service ports with a bad port, node port or protocol (only TCP and UDP are served)
    are skipped and listed in RV(skipped); the rest is still applied.
version_added: 0.1.0
author:
  - rhizeption.core developers (@rhizeption)
options:
  state:
    description: V(present) serves the Services; V(absent) deletes our table.
    type: str
    choices: [present, absent]
    default: present
  kubeconfig:
    description: Path of a kubeconfig for the control plane.
    type: path
  context:
    description: The kubeconfig context to use.
    type: str
  services:
    description:
      - Service objects (as the API returns them) to serve instead of reading the API.
        Given together with O(endpoint_slices).
    type: list
    elements: dict
  endpoint_slices:
    description: EndpointSlice objects to use with O(services).
    type: list
    elements: dict
  table:
    description: Name of our nftables table (family C(ip)).
    type: str
    default: rhizeption-proxy
  cluster_cidr:
    description:
      - The cluster's Pod CIDR. Connections to a Service from outside it that leave
        through one of O(masquerade_interfaces) are masqueraded.
    type: str
  masquerade_interfaces:
    description: Interfaces towards the cluster, usually the WireGuard tunnel.
    type: list
    elements: str
    default: []
  balance:
    description: How each new connection picks one of a Service's ready endpoints.
    type: str
    choices: [random, round-robin]
    default: random
  nodeports:
    description: Serve NodePorts on this host's addresses too.
    type: bool
    default: true
  script_path:
    description:
      - Where the applied ruleset is kept, for the diff of the next run. An empty
        string keeps none.
    type: path
    default: /var/lib/rhizeption/service-proxy.nft
  nft_command:
    description: The nft command.
    type: str
    default: nft
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Returns what changed (or would change, in check mode) as a diff.
    support: full
requirements:
  - kubernetes (the Python client), unless O(services) is given
  - nft (nftables) on the managed host
"""

EXAMPLES = r"""
- name: Serve the tenant's Services on this pet node, once
  rhizeption.core.service_proxy:
    kubeconfig: /etc/rhizeption/pet.kubeconfig
    cluster_cidr: 10.244.0.0/16
    masquerade_interfaces: [wg-pets]

- name: Remove the proxy's rules
  rhizeption.core.service_proxy:
    state: absent
"""

RETURN = r"""
fingerprint:
  description: Hash of the rendered ruleset, also kept in the table's C(fingerprint) chain.
  returned: when state is present
  type: str
services:
  description: How many Services and EndpointSlices were read.
  returned: when state is present
  type: dict
  sample: {services: 12, endpoint_slices: 14}
skipped:
  description: One line for each Service port that was skipped, and why.
  returned: when state is present
  type: list
  elements: str
  sample: ["Service default/bad ports[0]: protocol 'SCTP' is not served (TCP and UDP are)"]
"""

import os  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils.service_proxy import (  # noqa: E402
    ENDPOINT_SLICES_PATH,
    HAS_K8S,
    SERVICES_PATH,
    ProxyConfig,
    ProxyError,
    apply,
    delete_script,
    fingerprint_of,
    list_objects,
    live_fingerprint,
    render,
)

try:
    import kubernetes
except ImportError:  # HAS_K8S says so; the module fails with missing_required_lib when it needs it
    kubernetes = None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _keep(path: str, script: str) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".service-proxy-", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(script)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "absent"]),
            kubeconfig=dict(type="path"),
            context=dict(type="str"),
            services=dict(type="list", elements="dict"),
            endpoint_slices=dict(type="list", elements="dict"),
            table=dict(type="str", default="rhizeption-proxy"),
            cluster_cidr=dict(type="str"),
            masquerade_interfaces=dict(type="list", elements="str", default=[]),
            balance=dict(type="str", default="random", choices=["random", "round-robin"]),
            nodeports=dict(type="bool", default=True),
            script_path=dict(type="path", default="/var/lib/rhizeption/service-proxy.nft"),
            nft_command=dict(type="str", default="nft"),
        ),
        required_together=[("services", "endpoint_slices")],
        supports_check_mode=True,
    )
    p = module.params
    nft = p["nft_command"]

    def run(argv: list[str], data: str | None = None) -> tuple[int, str, str]:
        return module.run_command(argv, data=data, binary_data=True)

    config = ProxyConfig(
        table=p["table"],
        cluster_cidr=p["cluster_cidr"],
        masquerade_interfaces=p["masquerade_interfaces"],
        balance=p["balance"],
        nodeports=p["nodeports"],
    )
    try:
        config.validate()
        live = live_fingerprint(config.table, nft, run)
        kept = _read(p["script_path"]) if p["script_path"] else ""
        before = (
            kept
            if kept and fingerprint_of(kept) == live
            else ("" if live is None else f"# table ip {config.table}\n")
        )
        if p["state"] == "absent":
            if live is not None and not module.check_mode:
                apply(delete_script(config.table), nft, run)
                if p["script_path"] and os.path.exists(p["script_path"]):
                    os.unlink(p["script_path"])
            result = {"changed": live is not None}
            if module._diff:
                result["diff"] = {"before": before, "after": ""}
            module.exit_json(**result)

        if p["services"] is not None:
            services, slices = p["services"], p["endpoint_slices"]
        else:
            if not HAS_K8S:
                module.fail_json(msg=missing_required_lib("kubernetes"))
            client = kubernetes.config.new_client_from_config(p["kubeconfig"], context=p["context"])
            try:
                services, _version = list_objects(client, SERVICES_PATH)
                slices, _version = list_objects(client, ENDPOINT_SLICES_PATH)
            finally:
                client.close()
        script, skipped = render(services, slices, config)
        wanted = fingerprint_of(script)
        changed = live != wanted
        if changed:
            # check mode validates the whole transaction without committing it
            apply(script, nft, run, check=module.check_mode)
            if not module.check_mode and p["script_path"]:
                _keep(p["script_path"], script)
    except (ProxyError, OSError) as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # the API: connection, authentication, kubeconfig
        module.fail_json(msg=f"reading Services and EndpointSlices failed: {exc}")
    result = {
        "changed": changed,
        "fingerprint": wanted,
        "skipped": skipped,
        "services": {"services": len(services), "endpoint_slices": len(slices)},
    }
    if module._diff:
        result["diff"] = {
            "before": before,
            "after": script,
            "before_header": f"table ip {config.table} (live)",
            "after_header": f"table ip {config.table} (rendered)",
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()

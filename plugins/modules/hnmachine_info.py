#!/usr/bin/python
# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: hnmachine_info
short_description: List hosted nodes (HnMachines), filtered by cluster, labels and phase
version_added: 0.1.0
description:
  - Lists C(HnMachine)s of the C(hn.rhizeption.io/v1alpha1) API in one namespace or in all of them, in pages,
    as the API server returns them (spec and status).
  - Filters on the cluster and labels are done by the API server; the phase filter is applied to the result.
author:
  - rhizeption.core developers (@rhizeption)
options:
  namespace:
    description: Namespace to list; all namespaces when omitted.
    type: str
  name:
    description: Only the machine of this name.
    type: str
  cluster:
    description: Only machines of this HnCluster.
    type: str
  label_selectors:
    description: Label selectors the machines must match, for example C(tier=edge) or C(env in (prod, stage)).
    type: list
    elements: str
    default: []
  phase:
    description: Only machines in one of these phases.
    type: list
    elements: str
    choices: [Pending, Provisioning, Running, Ready, Deleting, Failed]
    default: []
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
  - rhizeption.core.hn_module
attributes:
  check_mode:
    support: full
    details: The module only reads.
  diff_mode:
    support: none
seealso:
  - module: rhizeption.core.hnmachine
  - plugin: rhizeption.core.hnmachines
    plugin_type: inventory
"""

EXAMPLES = r"""
- name: The failed machines of cluster blue
  rhizeption.core.hnmachine_info:
    namespace: tenants
    cluster: blue
    phase: [Failed]
  register: failed

- name: Say why each failed
  ansible.builtin.debug:
    msg: "{{ item.metadata.name }}: {{ item.status.failureReason }}: {{ item.status.failureMessage }}"
  loop: "{{ failed.machines }}"
"""

RETURN = r"""
machines:
  description: The matching HnMachines, sorted by namespace and name.
  returned: always
  type: list
  elements: dict
  sample:
    - metadata: {name: blue-0, namespace: tenants, labels: {hn.rhizeption.io/cluster: blue}}
      spec: {clusterName: blue}
      status: {phase: Running, ready: true, podIP: 10.244.1.7}
"""

from ansible_collections.rhizeption.core.plugins.module_utils import hn_module  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import (  # noqa: E402
    HNMACHINE,
    cluster_selector,
    status_of,
)


def main() -> None:
    mod = hn_module.module(
        dict(
            namespace=dict(type="str"),
            name=dict(type="str"),
            cluster=dict(type="str"),
            label_selectors=dict(type="list", elements="str", default=[]),
            phase=dict(
                type="list",
                elements="str",
                default=[],
                choices=["Pending", "Provisioning", "Running", "Ready", "Deleting", "Failed"],
            ),
        ),
    )
    p = mod.params

    def body(kube):
        selectors = list(p["label_selectors"])
        if p["cluster"]:
            selectors.append(cluster_selector(p["cluster"]))
        items, _unused = kube.list(
            HNMACHINE.path(p["namespace"]),
            label_selector=",".join(selectors) or None,
            field_selector=f"metadata.name={p['name']}" if p["name"] else None,
        )
        if p["phase"]:
            items = [m for m in items if status_of(m).get("phase", "Pending") in p["phase"]]
        items.sort(key=lambda m: (m["metadata"]["namespace"], m["metadata"]["name"]))
        return {"changed": False, "machines": items}

    hn_module.run(mod, body)


if __name__ == "__main__":
    main()

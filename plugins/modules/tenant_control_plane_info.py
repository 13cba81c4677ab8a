#!/usr/bin/python
# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: tenant_control_plane_info
short_description: List tenant control planes (TenantControlPlanes), filtered by labels and phase
version_added: 0.1.0
description:
  - Lists C(TenantControlPlane)s of the C(hn.rhizeption.io/v1alpha1) API in one namespace or in all of
    them, as the API server returns them (spec and status). Status names the admin kubeconfig's Secret,
    never key material.
  - The label filter is applied by the API server; the phase filter is applied to the result.
  - A tenant with virtual nodes (C(promoteResources)) reports them in C(status.virtualNodes), read from the
    host cluster when the module runs. It gives their Node names, the host namespace of their Pods, how
    many Pods run there, and the state of the agent that serves them.
author:
  - rhizeption.core developers (@rhizeption)
options:
  namespace:
    description: Namespace to list; all namespaces when omitted.
    type: str
  name:
    description: Only the tenant of this name.
    type: str
  label_selectors:
    description: Label selectors the tenants must match, for example C(team=blue).
    type: list
    elements: str
    default: []
  phase:
    description: Only tenants in one of these phases.
    type: list
    elements: str
    choices: [Pending, Provisioning, Initialized, Ready, Upgrading, Deleting, Failed]
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
  - module: rhizeption.core.tenant_control_plane
"""

EXAMPLES = r"""
- name: The tenants that are not Ready
  rhizeption.core.tenant_control_plane_info:
    namespace: tenants
    phase: [Pending, Provisioning, Initialized, Failed]
  register: unready

- name: Say why
  ansible.builtin.debug:
    msg: "{{ item.metadata.name }}: {{ item.status.phase }} {{ item.status.failureMessage | default('') }}"
  loop: "{{ unready.tenant_control_planes }}"
"""

RETURN = r"""
tenant_control_planes:
  description: The matching TenantControlPlanes, sorted by namespace and name.
  returned: always
  type: list
  elements: dict
  sample:
    - metadata: {name: blue, namespace: tenants}
      spec: {version: v1.34.4}
      status:
        phase: Ready
        endpoint: https://blue.tenants.svc:6443
        adminKubeconfigSecret: blue-admin-kubeconfig
        virtualNodes:
          nodes: [node-a, virtual-resources]
          podsNamespace: tenants-blue-pods
          hostPods: 3
          agent: {phase: Ready, message: 1 of 1 ready, 1 updated}
"""

from ansible_collections.rhizeption.core.plugins.module_utils import hn_module  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import status_of  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils.tenant_control_plane import (  # noqa: E402
    PHASES,
    TENANT_CONTROL_PLANE,
    deploys_virtual_nodes,
    virtual_nodes_status,
)


def main() -> None:
    mod = hn_module.module(
        dict(
            namespace=dict(type="str"),
            name=dict(type="str"),
            label_selectors=dict(type="list", elements="str", default=[]),
            phase=dict(type="list", elements="str", default=[], choices=list(PHASES)),
        ),
    )
    p = mod.params

    def body(kube):
        items, _unused = kube.list(
            TENANT_CONTROL_PLANE.path(p["namespace"]),
            label_selector=",".join(p["label_selectors"]) or None,
            field_selector=f"metadata.name={p['name']}" if p["name"] else None,
        )
        if p["phase"]:
            items = [t for t in items if status_of(t).get("phase", "Pending") in p["phase"]]
        items.sort(key=lambda t: (t["metadata"]["namespace"], t["metadata"]["name"]))
        for tcp in items:
            # As the host sees them now, not as the last apply wrote them.
            if deploys_virtual_nodes(tcp):
                tcp.setdefault("status", {})["virtualNodes"] = virtual_nodes_status(kube, tcp)
        return {"changed": False, "tenant_control_planes": items}

    hn_module.run(mod, body)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: hnmachine
short_description: Manage one hosted node (an HnMachine and its node Pod)
version_added: 0.1.0
description:
  - Creates, updates or deletes an C(HnMachine) of the C(hn.rhizeption.io/v1alpha1) API, and its node Pod
    in the host cluster, a privileged Pod that runs containerd and a kubelet and joins the tenant control
    plane of the machine's C(HnCluster).
  - The machine is written with server-side apply (field manager C(rhizeption.core)). Its status is
    derived from what exists (the node Pod's phase and conditions) and written through the status
    subresource; it is never assumed.
  - Deleting is ordered. The machine is marked deleting, its Pod is deleted and waited for, then the
    C(hn.rhizeption.io/machine) finalizer is released; other finalizers are waited for. Deleting a machine
    that does not exist is no change.
  - A new machine whose Pod cannot be created is deleted again, so nothing is left half-made.
  - Check mode sends the machine to the API server as a dry run, so it validates and reports the exact
    change without writing. Diff mode shows the machine before and after.
author:
  - rhizeption.core developers (@rhizeption)
options:
  name:
    description: Name of the HnMachine, and of its node Pod and Node. A DNS label.
    type: str
    required: true
  namespace:
    description: Namespace of the HnMachine and its HnCluster.
    type: str
    required: true
  state:
    description: Whether the machine should exist.
    type: str
    choices: [present, absent]
    default: present
  cluster:
    description:
      - Name of the HnCluster (same namespace) the machine belongs to. Required when O(state=present).
      - Cannot change once the machine exists.
    type: str
  template:
    description:
      - Overrides of the cluster's C(spec.machineTemplate), with the CRD's field names (camelCase), for
        example C(image), C(resources), C(nodeLabels), C(nodeSelector), C(tolerations).
      - Maps (C(nodeLabels), C(podLabels), C(nodeSelector)) merge key by key with the cluster's; other
        fields replace it.
      - A change reaches the running node Pod. New Pod labels are patched in; any other change replaces
        the Pod, and the task waits until the new one runs. This module does not drain the machine's Node
        in its tenant first; M(rhizeption.core.hncluster) with
        O(rhizeption.core.hncluster#module:tenant_kubeconfig) does.
    type: dict
  labels:
    description: Labels of the HnMachine.
    type: dict
  provider_id:
    description: The C(spec.providerID) of the tenant Node. Set once; it cannot change.
    type: str
  wait:
    description:
      - Wait until the machine reaches O(wait_for) (or a later phase), following its Pod with a watch.
    type: bool
    default: false
  wait_for:
    description:
      - The phase to wait for. V(Provisioning) means the node Pod exists, V(Running) that it runs, V(Ready)
        that the Node of the tenant cluster is ready.
    type: str
    choices: [Provisioning, Running, Ready]
    default: Running
  wait_timeout:
    description: Seconds to wait, for O(wait) and for deletion.
    type: int
    default: 300
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
  - rhizeption.core.hn_module
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
seealso:
  - module: rhizeption.core.hncluster
  - module: rhizeption.core.hnmachine_info
"""

EXAMPLES = r"""
- name: One more hosted node in cluster blue, on bigger resources
  rhizeption.core.hnmachine:
    kubeconfig: ~/.kube/host-cluster
    namespace: tenants
    name: blue-big-0
    cluster: blue
    template:
      resources:
        requests: {cpu: "2", memory: 4Gi}
      nodeLabels:
        node.kubernetes.io/instance-type: big
    wait: true
    wait_for: Running

- name: Remove it (its Pod goes first)
  rhizeption.core.hnmachine:
    namespace: tenants
    name: blue-big-0
    state: absent
"""

RETURN = r"""
machine:
  description: The HnMachine as the API server returned it last (in check mode, as it would be).
  returned: when O(state=present)
  type: dict
  sample:
    metadata: {name: blue-0, namespace: tenants}
    spec: {clusterName: blue}
    status: {phase: Running, ready: true, podName: blue-0, podIP: 10.244.1.7}
phase:
  description: The machine's phase after the task.
  returned: when O(state=present)
  type: str
  sample: Running
pod_created:
  description: Whether the task created the machine's node Pod.
  returned: always
  type: bool
pod_replaced:
  description:
    - Whether the task replaced (in check mode, would replace) the node Pod because its template changed.
  returned: always
  type: bool
"""

from ansible_collections.rhizeption.core.plugins.module_utils import hn_module, hnmachine  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import status_of  # noqa: E402


def main() -> None:
    mod = hn_module.module(
        dict(
            name=dict(type="str", required=True),
            namespace=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            cluster=dict(type="str"),
            template=dict(type="dict"),
            labels=dict(type="dict"),
            provider_id=dict(type="str"),
            wait=dict(type="bool", default=False),
            wait_for=dict(type="str", choices=["Provisioning", "Running", "Ready"], default="Running"),
            wait_timeout=dict(type="int", default=hn_module.WAIT_TIMEOUT),
        ),
        required_if=[("state", "present", ["cluster"])],
    )
    p = mod.params

    def body(kube):
        if p["state"] == "absent":
            out = hnmachine.ensure_absent(
                kube, p["namespace"], p["name"], check_mode=mod.check_mode, timeout=p["wait_timeout"]
            )
            result = {"changed": out.changed, "pod_created": False, "pod_replaced": False}
            if mod._diff:
                result["diff"] = {"before": hnmachine.user_view(out.before) or {}, "after": {}}
            return result
        cluster = hnmachine.read_cluster(kube, p["namespace"], p["cluster"])
        desired = hnmachine.render_machine(
            p["name"],
            p["namespace"],
            cluster,
            template=p["template"],
            labels=p["labels"],
            provider_id=p["provider_id"],
        )
        out = hnmachine.ensure_present(
            kube,
            desired,
            cluster,
            check_mode=mod.check_mode,
            wait_for=p["wait_for"] if p["wait"] else None,
            timeout=p["wait_timeout"],
        )
        result = {
            "changed": out.changed,
            "machine": out.after,
            "phase": status_of(out.after).get("phase", "Pending"),
            "pod_created": out.pod_created,
            "pod_replaced": out.pod_replaced,
        }
        if out.messages:
            result["msg"] = "; ".join(out.messages)
        if mod._diff:
            result["diff"] = {
                "before": hnmachine.user_view(out.before) or {},
                "after": hnmachine.user_view(out.after) or {},
            }
        return result

    hn_module.run(mod, body, hnmachine.MachineError)


if __name__ == "__main__":
    main()

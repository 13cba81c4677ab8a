#!/usr/bin/python
# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: hncluster
short_description: Manage a cluster of hosted nodes (an HnCluster and its HnMachines)
version_added: 0.1.0
description:
  - Creates, updates, scales or deletes an C(HnCluster) of the C(hn.rhizeption.io/v1alpha1) API, a group of
    hosted nodes (C(HnMachine)s, each a privileged Pod of the host cluster running containerd and a kubelet)
    built from one machine template that join one tenant control plane.
  - Scaling up creates machines named C(<name>-<index>) at the lowest free indices. Scaling down deletes the
    least disruptive machines first. That means machines annotated C(hn.rhizeption.io/delete-machine), then
    failed ones, then those not yet running, then running but not ready ones, and only then ready ones. Among
    equals the newest go first.
  - Every machine is handled by the same core as M(rhizeption.core.hnmachine). A machine whose Pod is gone
    gets a new one. The cluster's status (replicas, readyReplicas, phase, conditions) is derived from its
    machines and written through the status subresource.
  - A change of C(machineTemplate) reaches the running machines. New Pod labels are patched in. Any other
    change (image, resources, node labels and taints, tolerations, node selector) needs a new Pod, so the
    machines are replaced one at a time. With O(tenant_kubeconfig) each machine's Node is drained first
    and deleted once the old Pod is gone, and the next machine waits until the new Node is Ready.
  - O(state=absent) deletes the machines one by one, each with its Pod first, then the cluster. Deleting a
    cluster that does not exist is no change.
  - Check mode sends the cluster to the API server as a dry run and reports which machines would be created,
    deleted or replaced, without writing. Diff mode shows the cluster before and after.
author:
  - rhizeption.core developers (@rhizeption)
options:
  name:
    description: Name of the HnCluster; its machines are named C(<name>-<index>).
    type: str
    required: true
  namespace:
    description: Namespace of the HnCluster and its machines.
    type: str
    required: true
  state:
    description: Whether the cluster should exist.
    type: str
    choices: [present, absent]
    default: present
  spec:
    description:
      - The cluster's C(spec), with the CRD's field names (camelCase). C(machineTemplate.image) is required.
        The other fields are C(controlPlaneEndpoint) (C(host), C(port)), C(controlPlaneRef) (C(name),
        C(namespace)), C(network) (C(podCIDR), C(serviceCIDR), C(serviceDomain); immutable) and C(replicas).
      - See C(docs/crd-reference.md) for every field. The API server validates it and names the field of
        any error.
      - When the TenantControlPlane that C(controlPlaneRef) names sets C(promoteResources.nodes), new node
        Pods run only on those host nodes.
      - Required when O(state=present).
    type: dict
  replicas:
    description: How many machines the cluster has. Overrides C(spec.replicas).
    type: int
  labels:
    description: Labels of the HnCluster.
    type: dict
  wait:
    description:
      - Wait until every machine is ready, following their Pods with a watch; fail early when one fails,
        naming its reason and message.
      - A machine already failed on a missing image or bootstrap Secret when the wait begins gets 20 s first,
        one retry of the host's kubelet, so the run after the fix does not fail on the Pod's earlier state.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait, for O(wait) and for each deletion.
    type: int
    default: 300
  tenant_kubeconfig:
    description:
      - Path of an admin kubeconfig of the tenant control plane the hosted nodes join, as
        M(rhizeption.core.tenant_control_plane) writes it.
      - With it the collection is the machines' bootstrap provider. It grants the tenant TLS bootstrap with
        automatic approval of node client certificates, keeps one bootstrap token per cluster (a token near
        its end is replaced, never reused), and writes each machine's bootstrap Secret before its Pod. The
        machines get C(spec.bootstrap.dataSecretName) and C(spec.providerID) C(rhizeption://NAMESPACE/NAME).
        O(wait) also waits for their Nodes in the tenant to be Ready. Scaling down cordons and drains a
        machine's Node, through the Eviction API, before its Pod goes, then deletes the Node.
      - The tenant is asked first (C(/readyz)). When it cannot be reached or is not ready, the task fails
        naming it, before anything is written to the host cluster (or, with O(state=absent), deleted).
      - A machine whose bootstrap Secret was missing and whose node container is down gets the Secret again
        and a new Pod.
      - Without it the machines run their node image with no bootstrap data, so no kubelet joins anything.
    type: path
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
  - rhizeption.core.hn_module
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - Replacing a machine's Pod restarts its node from empty state, as a new node would start. With
    O(tenant_kubeconfig), the tenant's Pods move to other nodes before it goes, as on scale-down.
seealso:
  - module: rhizeption.core.hnmachine
  - module: rhizeption.core.hnmachine_info
"""

EXAMPLES = r"""
- name: Three hosted nodes for the blue tenant
  rhizeption.core.hncluster:
    kubeconfig: ~/.kube/host-cluster
    namespace: tenants
    name: blue
    replicas: 3
    spec:
      controlPlaneRef: {name: blue}
      controlPlaneEndpoint: {host: blue-apiserver.tenants.svc, port: 6443}
      network: {podCIDR: 10.240.0.0/16, serviceCIDR: 10.112.0.0/16}
      machineTemplate:
        image: localhost/rhizeption/node:v1.34.4
        imagePullPolicy: Never
        kubeletVersion: v1.34.4
        resources:
          requests: {cpu: 500m, memory: 1Gi}
    tenant_kubeconfig: ~/.kube/tenant-blue
    wait: true

- name: Scale it down to one (failed and unready machines go first; each is drained in the tenant first)
  rhizeption.core.hncluster:
    namespace: tenants
    name: blue
    replicas: 1
    spec:
      machineTemplate:
        image: localhost/rhizeption/node:v1.34.4
    tenant_kubeconfig: ~/.kube/tenant-blue

- name: Remove the cluster and all its machines (and their Nodes from the tenant)
  rhizeption.core.hncluster:
    namespace: tenants
    name: blue
    state: absent
    tenant_kubeconfig: ~/.kube/tenant-blue
"""

RETURN = r"""
cluster:
  description: The HnCluster as the API server returned it last (in check mode, as it would be).
  returned: when O(state=present)
  type: dict
created:
  description: The machines the task created (in check mode, would create).
  returned: always
  type: list
  elements: str
  sample: [blue-2]
deleted:
  description: The machines the task deleted (in check mode, would delete), in the order it deleted them.
  returned: always
  type: list
  elements: str
replaced:
  description:
    - The machines whose node Pod the task replaced (in check mode, would replace) because the machine
      template changed, in the order it replaced them.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [blue-0, blue-1]
machines:
  description: Name, phase and readiness of each machine of the cluster after the task.
  returned: when O(state=present)
  type: list
  elements: dict
  sample: [{name: blue-0, phase: Running, ready: true}]
"""

from ansible_collections.rhizeption.core.plugins.module_utils import hn_module, hncluster, hosted_node  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import status_of  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils.hnmachine import MachineError  # noqa: E402


def main() -> None:
    mod = hn_module.module(
        dict(
            name=dict(type="str", required=True),
            namespace=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            spec=dict(type="dict"),
            replicas=dict(type="int"),
            labels=dict(type="dict"),
            wait=dict(type="bool", default=False),
            wait_timeout=dict(type="int", default=hn_module.WAIT_TIMEOUT),
            tenant_kubeconfig=dict(type="path"),
        ),
        required_if=[("state", "present", ["spec"])],
    )
    p = mod.params
    if p["replicas"] is not None and p["replicas"] < 0:
        mod.fail_json(msg=f"replicas: must be 0 or more, got {p['replicas']}")

    def body(kube):
        tenant = hosted_node.tenant_kube(p["tenant_kubeconfig"]) if p["tenant_kubeconfig"] else None
        if p["state"] == "absent":
            out = hncluster.ensure_absent(
                kube,
                p["namespace"],
                p["name"],
                check_mode=mod.check_mode,
                timeout=p["wait_timeout"],
                tenant=tenant,
            )
            result = {"changed": out.changed, "created": [], "deleted": out.plan.delete}
            if mod._diff:
                result["diff"] = {"before": hncluster.user_view(out.before) or {}, "after": {}}
            return result
        spec = dict(p["spec"])
        if p["replicas"] is not None:
            spec["replicas"] = p["replicas"]
        desired = hncluster.render_cluster(p["name"], p["namespace"], spec, labels=p["labels"])
        out = hncluster.ensure_present(
            kube, desired, check_mode=mod.check_mode, wait=p["wait"], timeout=p["wait_timeout"], tenant=tenant
        )
        result = {
            "changed": out.changed,
            "cluster": out.after,
            "created": out.plan.create,
            "deleted": out.plan.delete,
            "replaced": out.replaced,
            "machines": [
                {
                    "name": m["metadata"]["name"],
                    "phase": status_of(m).get("phase", "Pending"),
                    "ready": bool(status_of(m).get("ready")),
                }
                for m in out.machines
            ],
        }
        if mod._diff:
            result["diff"] = {
                "before": hncluster.user_view(out.before) or {},
                "after": hncluster.user_view(out.after) or {},
            }
        return result

    hn_module.run(mod, body, hncluster.ClusterError, MachineError, hosted_node.BootstrapError)


if __name__ == "__main__":
    main()

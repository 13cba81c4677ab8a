#!/usr/bin/python
# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: tenant_control_plane
short_description: Manage a tenant control plane (a TenantControlPlane and the Pods that run it)
version_added: 0.1.0
description:
  - Creates, updates or deletes a C(TenantControlPlane) of the C(hn.rhizeption.io/v1alpha1) API and
    everything it owns in the host cluster. The tenant gets a dedicated etcd (or a prefix of a shared one),
    a kube-apiserver, a kube-controller-manager and a kube-scheduler, run as a StatefulSet and Deployments
    in O(namespace). It also gets its own PKI in Secrets, Services for its exposure, PodDisruptionBudgets
    and a NetworkPolicy that lets only its apiserver reach its etcd.
  - Bad input is refused before anything is written, with the field path and what would be accepted. This
    covers a version this collection did not build, malformed or overlapping CIDRs, a NodePort out of
    range, a change of an immutable field, and names that objects of someone else already hold.
  - Every object is written with server-side apply (field manager C(rhizeption.core)). Certificates are
    generated only when missing, in the last third of their validity, or naming other SANs, so a second run
    changes nothing. The status is derived from what exists and written through the status subresource.
  - Renewal needs no option. Every run renews the certificates and kubeconfigs in the last third of their
    validity, and only those, and rolls the Pods that read them. Run the task on a schedule to renew before
    expiry; C(renewed) and C(next_renewal) report what was renewed and when the next one is due.
  - Check mode sends every object to the API server as a dry run. It validates them and reports what would be
    created or changed, without writing. Diff mode shows the TenantControlPlane before and after. Key material
    is never returned or shown.
  - With C(promoteResources) the tenant also gets virtual nodes (C(docs/virtual-nodes.md)). An agent is
    deployed beside its control plane (a Deployment of one, its ServiceAccount and configuration) and gives
    the tenant a mirror Node per promoted host node and a Node C(virtual-resources) of the promoted cpu and
    memory. The tenant's Pods on them run as Pods of the host cluster, in the namespace
    C(<namespace>-<name>-pods), whose Pod Security level is C(promoteResources.podSecurity). There the agent
    has one RoleBinding of the ClusterRole C(rhizeption-virtual-node-agent); a quota holds the promoted cpu
    and memory. A cluster admin applies that ClusterRole
    (C(roles/tenant_control_plane/files/virtual-node-agent-clusterrole.yaml)) and the PriorityClass the quota
    counts (C(virtual-resources-priorityclass.yaml) beside it) once first, with the deployer's own rights
    (C(host-clusterrole.yaml)).
    With C(promoteResources.virtualNodes=false) the promoted resources only bound the tenant's hosted nodes.
  - Deleting removes the TenantControlPlane and waits until everything it owned is gone. The virtual nodes'
    Pods namespace goes as well, with every tenant Pod in it, and so does the ClusterRole that reads the
    promoted host nodes. Its etcd volumes, or its keys in a shared etcd, go too unless
    O(keep_datastore=true).
author:
  - rhizeption.core developers (@rhizeption)
options:
  name:
    description:
      - Name of the TenantControlPlane, and prefix of its objects' names. A DNS label of 40 characters at
        most.
    type: str
    required: true
  namespace:
    description: Namespace of the host cluster where the tenant's control plane runs.
    type: str
    required: true
  state:
    description: Whether the tenant should exist.
    type: str
    choices: [present, absent]
    default: present
  spec:
    description:
      - The TenantControlPlane's C(spec), with the CRD's field names (camelCase).
        C(docs/crd-reference.md) lists every field. The main ones are C(version), C(replicas),
        C(datastore), C(exposure), C(resources), C(certificateValidity), C(serviceCIDR), C(podCIDR) and
        C(promoteResources).
      - C(version) defaults to the newest version the collection builds (v1.34.4; v1.33.13 is built too).
        A new C(version) upgrades the tenant, the kube-apiserver first.
      - C(datastore.type), C(serviceCIDR) and C(podCIDR) cannot change once the tenant exists. C(version) only
        moves forward, one minor version at a time.
    type: dict
    default: {}
  labels:
    description: Labels of the TenantControlPlane.
    type: dict
  images:
    description:
      - Images of the components, by component (C(etcd), C(kube-apiserver), C(kube-controller-manager),
        C(kube-scheduler), C(virtual-node-agent)), for example from a registry of your own. With
        O(state=absent) the C(etcd) image runs the removal of a shared etcd's keys.
      - A component not named here runs the image C(hack/build-images) builds on this machine,
        C(localhost/rhizeption/<component>:<version>), which the host cluster's runtime must hold already. The
        agent's tag is the collection's version (C(localhost/rhizeption/virtual-node-agent:0.1.0)).
    type: dict
  wait:
    description: Wait until the tenant reaches O(wait_for) (or a later phase), following its Pods.
    type: bool
    default: false
  wait_for:
    description:
      - The phase to wait for. V(Provisioning) means its workloads exist, V(Initialized) that its etcd and
        kube-apiserver are ready, V(Ready) that every component is.
      - A tenant that does not get there within O(wait_timeout) is marked C(Failed) with the components that
        were not ready, and the task fails.
    type: str
    choices: [Provisioning, Initialized, Ready]
    default: Ready
  wait_timeout:
    description:
      - Seconds to wait, for O(wait) and for deletion.
      - Also how long a version upgrade waits for the new kube-apiserver to roll out before it
        writes the controller-manager and scheduler, with or without O(wait).
    type: int
    default: 300
  admin_kubeconfig_path:
    description:
      - Write the tenant's admin kubeconfig to this file, mode 0600. Written only when its content changes.
      - The file holds a private key; it is never shown in the task's result or diff.
    type: path
  admin_kubeconfig_server:
    description:
      - The server URL to write in O(admin_kubeconfig_path) instead of the tenant's C(status.endpoint).
        Use it when this machine reaches the apiserver another way, for example at the Service's cluster
        IP. The serving certificate names the cluster IP, the Service's DNS names and the
        C(exposure.extraSANs) of O(spec).
    type: str
  keep_datastore:
    description:
      - With O(state=absent), keep the etcd volumes (PersistentVolumeClaims), or with a shared etcd the
        tenant's keys under its prefix there, so a tenant of the same name finds its data again.
      - Without it, a tenant on a shared etcd has its keys removed by a one-shot Pod that runs C(etcdctl del
        --prefix) with the tenant's client certificate for that etcd. Until that has succeeded the
        TenantControlPlane stays (in deletion, held by the finalizer C(hn.rhizeption.io/shared-etcd-keys)),
        so a failed delete is finished by the next run.
    type: bool
    default: false
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
  - rhizeption.core.hn_module
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
seealso:
  - module: rhizeption.core.tenant_control_plane_info
  - module: rhizeption.core.hncluster
"""

EXAMPLES = r"""
- name: A tenant control plane for team blue, with its admin kubeconfig
  rhizeption.core.tenant_control_plane:
    kubeconfig: ~/.kube/host-cluster
    namespace: tenants
    name: blue
    spec:
      version: v1.34.4
      exposure: {type: NodePort, nodePort: 30443}
      promoteResources:
        resources: {cpu: "8", memory: 16Gi}
    wait: true
    admin_kubeconfig_path: ~/.kube/blue

- name: The same, with the images of a registry
  rhizeption.core.tenant_control_plane:
    namespace: tenants
    name: blue
    spec:
      version: v1.34.4
    images:
      etcd: registry.example.com/k8s/etcd:v3.6.16
      kube-apiserver: registry.example.com/k8s/kube-apiserver:v1.34.4
      kube-controller-manager: registry.example.com/k8s/kube-controller-manager:v1.34.4
      kube-scheduler: registry.example.com/k8s/kube-scheduler:v1.34.4

- name: Remove the tenant and everything it owned
  rhizeption.core.tenant_control_plane:
    namespace: tenants
    name: blue
    state: absent
"""

RETURN = r"""
tenant_control_plane:
  description: The TenantControlPlane as the API server returned it last (in check mode, as it would be).
  returned: when O(state=present)
  type: dict
  sample:
    metadata: {name: blue, namespace: tenants}
    spec: {version: v1.34.4, replicas: 1, datastore: {type: etcd}}
    status:
      phase: Ready
      version: v1.34.4
      endpoint: https://blue.tenants.svc:6443
      adminKubeconfigSecret: blue-admin-kubeconfig
phase:
  description: The tenant's phase after the task.
  returned: when O(state=present)
  type: str
  sample: Ready
endpoint:
  description: The URL of the tenant's kube-apiserver.
  returned: when O(state=present)
  type: str
  sample: https://blue.tenants.svc:6443
created:
  description: The objects the task created (in check mode, would create), as C(Kind name).
  returned: always
  type: list
  elements: str
  sample: [TenantControlPlane blue, Secret blue-ca, StatefulSet blue-etcd]
updated:
  description: The objects the task changed (in check mode, would change), as C(Kind name).
  returned: always
  type: list
  elements: str
deleted:
  description:
    - What the task deleted (in check mode, would delete), as C(Kind name).
    - With O(state=present), what the tenant's virtual nodes had and its spec no longer asks for (the agent
      and its Pods namespace once C(promoteResources) is gone, the node reader once C(promoteResources.nodes)
      is).
  returned: always
  type: list
  elements: str
renewed:
  description:
    - The Secrets whose certificate, or kubeconfig's client certificate, the task renewed because it was in
      the last third of C(certificateValidity) (a CA, in the last year of its ten), as C(Secret name). In
      check mode, those it would renew. Each is also in C(updated), with the Deployments or StatefulSet
      whose Pods roll to read it.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [Secret blue-apiserver, Secret blue-admin-kubeconfig]
next_renewal:
  description:
    - When the first of the tenant's certificates enters its renew window (RFC 3339, UTC). A run after that
      time renews it; a schedule that runs more often than a third of C(certificateValidity) never lets a
      certificate expire. Null in check mode for a tenant that does not exist yet.
  returned: when O(state=present)
  type: str
  sample: "2027-07-23T16:40:00Z"
admin_kubeconfig_written:
  description: Whether the task wrote O(admin_kubeconfig_path) (in check mode, would write it).
  returned: when O(admin_kubeconfig_path) is set
  type: bool
"""

import os  # noqa: E402
import tempfile  # noqa: E402

from ansible_collections.rhizeption.core.plugins.module_utils import hn_module  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils import tenant_control_plane as tcp_core  # noqa: E402
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import status_of  # noqa: E402


def _write_private(path: str, data: bytes, check_mode: bool) -> bool:
    """Write DATA to PATH with mode 0600 unless it is there already; whether it (would have) changed."""
    try:
        with open(path, "rb") as f:
            same = f.read() == data
        if same and (os.stat(path).st_mode & 0o777) == 0o600:
            return False
    except FileNotFoundError:
        pass
    if check_mode:
        return True
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Created 0600 by mkstemp, then renamed over: never readable by others, never half-written.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kubeconfig-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def main() -> None:
    mod = hn_module.module(
        dict(
            name=dict(type="str", required=True),
            namespace=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            spec=dict(type="dict", default={}),
            labels=dict(type="dict"),
            images=dict(type="dict"),
            wait=dict(type="bool", default=False),
            wait_for=dict(type="str", choices=["Provisioning", "Initialized", "Ready"], default="Ready"),
            wait_timeout=dict(type="int", default=hn_module.WAIT_TIMEOUT),
            admin_kubeconfig_path=dict(type="path"),
            admin_kubeconfig_server=dict(type="str"),
            keep_datastore=dict(type="bool", default=False),
        ),
    )
    p = mod.params

    def body(kube):
        if p["state"] == "absent":
            out = tcp_core.ensure_absent(
                kube,
                p["namespace"],
                p["name"],
                keep_datastore=p["keep_datastore"],
                images=p["images"],
                check_mode=mod.check_mode,
                timeout=p["wait_timeout"],
            )
            result = {"changed": out.changed, "created": [], "updated": [], "deleted": out.deleted}
            if mod._diff:
                result["diff"] = {"before": tcp_core.user_view(out.before) or {}, "after": {}}
            return result
        spec = dict(p["spec"])
        spec.setdefault("version", tcp_core.newest_version())
        want = tcp_core.desired(p["name"], p["namespace"], spec, labels=p["labels"])
        out = tcp_core.ensure_present(
            kube,
            want,
            images=p["images"],
            check_mode=mod.check_mode,
            wait_for=p["wait_for"] if p["wait"] else None,
            timeout=p["wait_timeout"],
        )
        st = status_of(out.after)
        result = {
            "changed": out.changed,
            "tenant_control_plane": out.after,
            "phase": st.get("phase", "Pending"),
            "endpoint": st.get("endpoint", ""),
            "created": out.created,
            "updated": out.updated,
            "deleted": out.deleted,  # what virtual nodes no longer need
            "renewed": out.renewed,
            "next_renewal": out.next_renewal,
        }
        if p["admin_kubeconfig_path"]:
            if mod.check_mode and out.before is None:
                written = True  # the tenant, and so its kubeconfig, would be new
            else:
                data = tcp_core.admin_kubeconfig(kube, out.after, p["admin_kubeconfig_server"])
                written = _write_private(p["admin_kubeconfig_path"], data, mod.check_mode)
            result["admin_kubeconfig_written"] = written
            result["changed"] = result["changed"] or written
        if mod._diff:
            result["diff"] = {
                "before": tcp_core.user_view(out.before) or {},
                "after": tcp_core.user_view(out.after) or {},
            }
        return result

    hn_module.run(mod, body, tcp_core.TenantControlPlaneError)


if __name__ == "__main__":
    main()

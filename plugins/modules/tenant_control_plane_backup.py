#!/usr/bin/python
# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: tenant_control_plane_backup
short_description: Back up a tenant control plane's etcd to a snapshot file, or restore one into it
version_added: 0.1.0
description:
  - With O(mode=backup), takes an etcd snapshot of the tenant's dedicated etcd and writes it to O(path) on
    the controller, mode 0600 (the snapshot holds the tenant's Secrets). The snapshot is taken by a one-shot
    Pod in the tenant's namespace with C(etcdctl snapshot save) and the apiserver's etcd client certificate,
    streamed out through exec, and checked (the sha256 etcd appends, and the bbolt database it covers) before
    it is written. The file is replaced atomically, so an older backup stays until the new one is complete.
  - A backup is idempotent the way a file task is. When O(path) holds a valid snapshot already, it is kept
    and the task reports C(changed=false), unless O(force=true), which takes a new snapshot every run (what a
    scheduled backup wants). A file at O(path) that is not a snapshot is refused, never overwritten,
    even with O(force=true).
  - With O(mode=restore), replaces the tenant's etcd data by the snapshot at O(path). The file is checked
    first, so a missing or corrupt file fails before anything is stopped. Then the tenant's kube-apiserver,
    controller-manager and scheduler and its etcd are scaled to 0, the snapshot is restored with
    C(etcdutl snapshot restore) into a fresh directory on etcd's volume and swapped in with renames, and the
    tenant is started again and waited on until it is C(Ready). Revisions are bumped and compacted, as
    Kubernetes advises, so clients watching the tenant relist. A restore always reports C(changed=true).
  - If a restore fails after the tenant was stopped, the helper Pods are removed, the tenant is started again
    on its old data, and the task fails with the cause. If the run itself is interrupted (the controller
    dies), the tenant may stay scaled to 0; a run of M(rhizeption.core.tenant_control_plane) applies its
    replicas again.
  - Only a dedicated etcd (C(spec.datastore.type=etcd)) can be backed up; a restore needs a single member
    (C(spec.replicas=1)). A shared etcd holds other tenants' keys as well and is refused.
author:
  - rhizeption.core developers (@rhizeption)
options:
  name:
    description: Name of the TenantControlPlane.
    type: str
    required: true
  namespace:
    description: Namespace of the host cluster where the tenant's control plane runs.
    type: str
    required: true
  mode:
    description: Whether to write a snapshot to O(path) or to restore the one there.
    type: str
    choices: [backup, restore]
    required: true
  path:
    description: The snapshot file on the controller.
    type: path
    required: true
  force:
    description:
      - With O(mode=backup), take a new snapshot even when O(path) holds a valid one already.
    type: bool
    default: false
  images:
    description:
      - Images of the helper Pods, by role. C(etcd) needs C(etcdctl) (the tenant's etcd image has it),
        C(etcdutl) needs C(etcdutl), C(helper) needs a shell with C(sleep), C(base64), C(head) and
        C(sha256sum) (busybox).
      - Defaults are the images C(hack/build-images) builds, C(localhost/rhizeption/etcd:<etcd version>),
        C(localhost/rhizeption/etcdutl:<etcd version>) and C(localhost/rhizeption/busybox:bookworm).
    type: dict
  wait_timeout:
    description: Seconds a restore waits for the tenant to be C(Ready) again.
    type: int
    default: 300
extends_documentation_fragment:
  - kubernetes.core.k8s_auth_options
  - rhizeption.core.hn_module
attributes:
  check_mode:
    support: full
    details: Reports whether a snapshot would be written or restored; writes, stops and creates nothing.
  diff_mode:
    support: none
seealso:
  - module: rhizeption.core.tenant_control_plane
"""

EXAMPLES = r"""
- name: Back up tenant blue's etcd (kept if the file holds a snapshot already)
  rhizeption.core.tenant_control_plane_backup:
    kubeconfig: ~/.kube/host-cluster
    namespace: tenants
    name: blue
    mode: backup
    path: /var/backups/tenants/blue.db

- name: A nightly backup, a new snapshot every run
  rhizeption.core.tenant_control_plane_backup:
    namespace: tenants
    name: blue
    mode: backup
    path: "/var/backups/tenants/blue-{{ now(utc=true, fmt='%Y%m%d') }}.db"
    force: true

- name: Restore tenant blue from that snapshot
  rhizeption.core.tenant_control_plane_backup:
    namespace: tenants
    name: blue
    mode: restore
    path: /var/backups/tenants/blue.db
"""

RETURN = r"""
path:
  description: The snapshot file.
  returned: always
  type: str
  sample: /var/backups/tenants/blue.db
sha256:
  description: The sha256 of the snapshot file (empty in check mode when no file exists yet).
  returned: always
  type: str
  sample: 4f1c0b9a3e5d2c7b8a9f0e1d2c3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f3
size:
  description: The size of the snapshot file in bytes (0 in check mode when no file exists yet).
  returned: always
  type: int
  sample: 2523168
message:
  description: What the task did, or would do in check mode.
  returned: always
  type: str
  sample: wrote a new snapshot
"""

from ansible_collections.rhizeption.core.plugins.module_utils import hn_module, oneshot_pods, tenant_backup  # noqa: E402


def main() -> None:
    mod = hn_module.module(
        dict(
            name=dict(type="str", required=True),
            namespace=dict(type="str", required=True),
            mode=dict(type="str", choices=["backup", "restore"], required=True),
            path=dict(type="path", required=True),
            force=dict(type="bool", default=False),
            images=dict(type="dict"),
            wait_timeout=dict(type="int", default=hn_module.WAIT_TIMEOUT),
        ),
    )
    p = mod.params

    def body(kube):
        if p["mode"] == "backup":
            out = tenant_backup.backup(
                kube,
                p["namespace"],
                p["name"],
                p["path"],
                images=p["images"],
                force=p["force"],
                check_mode=mod.check_mode,
            )
        else:
            out = tenant_backup.restore(
                kube,
                p["namespace"],
                p["name"],
                p["path"],
                images=p["images"],
                check_mode=mod.check_mode,
                timeout=p["wait_timeout"],
            )
        return {
            "changed": out.changed,
            "path": out.path,
            "sha256": out.sha256,
            "size": out.size,
            "message": out.message,
        }

    hn_module.run(mod, body, tenant_backup.BackupError, oneshot_pods.OneShotError)


if __name__ == "__main__":
    main()

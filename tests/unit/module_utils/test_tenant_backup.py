"""The pure parts of tenant etcd backup and restore: the snapshot check, what can be backed
up or restored, and the helper Pods."""

from __future__ import annotations

import hashlib
import struct

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import tenant_backup as backup
from ansible_collections.rhizeption.core.plugins.module_utils import tenant_control_plane as tcpmod

TENANT_LABEL = tcpmod.TENANT_LABEL


def tcp(name="blue", namespace="tenants", **spec):
    return {
        "apiVersion": "hn.rhizeption.io/v1alpha1",
        "kind": "TenantControlPlane",
        "metadata": {"name": name, "namespace": namespace, "uid": f"{name}-uid"},
        "spec": {"version": "v1.34.4", **spec},
    }


def snapshot(pages: int = 4) -> bytes:
    """What etcd streams: a bbolt file (meta pages carry the magic after a 16-byte page
    header) followed by the sha256 of it."""
    page = bytearray(4096)
    struct.pack_into("<I", page, 16, backup.BBOLT_MAGIC)
    body = bytes(page) * pages
    return body + hashlib.sha256(body).digest()


def test_a_whole_snapshot_passes_and_gives_its_hash():
    data = snapshot()
    assert backup.check_snapshot(data, "blue.db") == data[-32:].hex()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda d: d[:-100], "is not an etcd snapshot"),  # truncated: no longer pages + hash
        (lambda d: d[:-32], "is not an etcd snapshot"),  # the hash cut off
        (lambda d: d[:5000] + b"x" + d[5001:], "corrupt or truncated"),  # a flipped byte
        (lambda d: b"", "is not an etcd snapshot"),
    ],
)
def test_a_damaged_snapshot_is_refused_naming_the_file(damage, says):
    with pytest.raises(backup.BackupError, match=says) as refused:
        backup.check_snapshot(damage(snapshot()), "/backups/blue.db")
    assert str(refused.value).startswith("/backups/blue.db: ")


def test_a_hashed_file_that_is_not_bbolt_is_refused():
    body = bytes(8192)
    with pytest.raises(backup.BackupError, match="no bbolt database"):
        backup.check_snapshot(body + hashlib.sha256(body).digest(), "x.db")


def test_read_snapshot_names_a_missing_file(tmp_path):
    with pytest.raises(backup.BackupError, match=r"missing\.db: cannot be read"):
        backup.read_snapshot(str(tmp_path / "missing.db"))


def test_write_private_is_0600_and_replaces(tmp_path):
    path = tmp_path / "sub" / "blue.db"
    backup.write_private(str(path), b"one")
    backup.write_private(str(path), b"two")
    assert path.read_bytes() == b"two"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["blue.db"]  # no temporary left


def test_a_shared_datastore_is_refused_naming_the_field():
    shared = tcp(datastore={"type": "shared", "shared": {"endpoints": ["https://etcd:2379"], "prefix": "/t"}})
    with pytest.raises(backup.BackupError, match=r"^spec\.datastore\.type: is 'shared'"):
        backup.check_backupable(shared)
    with pytest.raises(backup.BackupError, match=r"^spec\.datastore\.type"):
        backup.check_restorable(shared)


def test_restore_needs_a_single_member():
    backup.check_restorable(tcp())
    backup.check_backupable(tcp(replicas=3))
    with pytest.raises(backup.BackupError, match=r"^spec\.replicas: gives 3 etcd members"):
        backup.check_restorable(tcp(replicas=3))


def test_the_backup_pod_snapshots_with_the_apiservers_etcd_client_certificate():
    secrets = tcpmod.secret_names(tcp())
    pod = backup.backup_pod(tcp(), backup.default_images("v1.34.4"), secrets)
    assert pod["metadata"]["name"] == "blue-etcd-backup"
    # the labels etcd's NetworkPolicy admits
    assert pod["metadata"]["labels"][TENANT_LABEL] == "blue"
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "etcd-backup"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "blue-uid"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    (save,) = spec["initContainers"]
    assert save["image"] == "localhost/rhizeption/etcd:v3.6.16"
    assert save["command"][0] == "etcdctl"
    assert "--endpoints=https://blue-etcd.tenants.svc:2379" in save["command"]
    assert save["command"][-3:] == ["snapshot", "save", "/backup/snapshot.db"]
    client = next(v for v in spec["volumes"] if v["name"] == "etcd-client")
    assert client["secret"]["secretName"] == secrets["apiserver-etcd-client"]
    (hold,) = spec["containers"]
    assert hold["image"] == backup.HELPER_IMAGE and hold["command"][0] == "sleep"


def test_the_restore_pods_mount_member_0s_volume_and_keep_the_old_data_until_the_swap():
    images = backup.default_images("v1.34.4")
    receive = backup.receive_pod(tcp(), images)
    restore = backup.restore_pod(tcp(), images)
    for pod in (receive, restore):
        assert pod["spec"]["volumes"] == [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-blue-etcd-0"}}
        ]
    (etcdutl,) = restore["spec"]["initContainers"]
    assert etcdutl["image"] == "localhost/rhizeption/etcdutl:v3.6.16"
    cmd = etcdutl["command"]
    peer = "https://blue-etcd-0.blue-etcd-peers.tenants.svc:2380"
    # the member's identity as etcd's StatefulSet gives it (render of _render_etcd)
    assert "--name=blue-etcd-0" in cmd and f"--initial-cluster=blue-etcd-0={peer}" in cmd
    assert "--initial-cluster-token=tenants-blue" in cmd and f"--initial-advertise-peer-urls={peer}" in cmd
    assert "--data-dir=/var/lib/etcd/restore/data" in cmd and "--mark-compacted" in cmd
    etcd_args = next(o for o in tcpmod.render(tcp()) if o["kind"] == "StatefulSet")["spec"]["template"][
        "spec"
    ]["containers"][0]["args"]
    assert (
        "--data-dir=/var/lib/etcd/data" in etcd_args and "--initial-cluster-token=tenants-blue" in etcd_args
    )
    (swap,) = restore["spec"]["containers"]
    script = swap["command"][-1]
    assert (
        script.index("mv data data.old")
        < script.index("mv restore/data data")
        < script.index("rm -rf data.old restore")
    )


class _NoCluster:
    """A Kube that answers only the read of the tenant: a backup that keeps the file, or
    refuses it, must not create anything."""

    def get(self, path):
        assert path.endswith("/tenantcontrolplanes/blue"), path
        return tcp()


def test_an_existing_snapshot_is_kept_and_another_file_refused_even_with_force(tmp_path):
    path = tmp_path / "blue.db"
    path.write_bytes(snapshot())
    kept = backup.backup(_NoCluster(), "tenants", "blue", str(path))
    assert kept.changed is False and kept.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_bytes(b"my notes")
    for force in (False, True):
        with pytest.raises(backup.BackupError, match=r"blue\.db: is not an etcd snapshot"):
            backup.backup(_NoCluster(), "tenants", "blue", str(path), force=force)
    assert path.read_bytes() == b"my notes"


def test_check_mode_restore_checks_the_file_and_stops_nothing(tmp_path):
    path = tmp_path / "blue.db"
    path.write_bytes(snapshot())
    would = backup.restore(_NoCluster(), "tenants", "blue", str(path), check_mode=True)
    assert would.changed is True and would.message == "would restore the snapshot"

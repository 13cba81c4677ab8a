# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Backup of a tenant's dedicated etcd to a snapshot file, and restore of one into it.

Backup: a one-shot Pod in the tenant's namespace whose init container (the etcd image, which
ships etcdctl) runs ``etcdctl snapshot save`` against the tenant's etcd with the apiserver's
etcd client certificate, into an emptyDir; its main container (a busybox image) keeps the
file there until it is streamed out through exec, base64-encoded (the exec channel is text).
The file is checked here (etcd appends a sha256 of the snapshot, and the snapshot is a bbolt
file) and only then written, 0600 and atomically, to the controller.

Restore: the file is checked before anything is stopped. Then the tenant's apiserver,
controller-manager and scheduler are scaled to 0 and its etcd StatefulSet too; a Pod on the
etcd volume receives the file (exec, stdin), a second one runs ``etcdutl snapshot restore``
into a fresh directory and swaps it in with renames, keeping the old data until the new one
is in place. etcd and the Deployments are scaled back and the tenant waited on until Ready.
On any failure the helper Pods go, the tenant is brought back on whatever data the volume
holds (its old data unless the final swap itself succeeded), and the error names the cause.

Only a dedicated etcd of one member is handled: a shared etcd holds other tenants' keys, and a
restore of several members has to rebuild the membership of each (not built yet).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

from ansible_collections.rhizeption.core.plugins.module_utils import oneshot_pods as oneshot
from ansible_collections.rhizeption.core.plugins.module_utils import tenant_control_plane as core
from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import owner_reference
from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube, KubeError

Obj = Dict[str, Any]

BACKUP = core.ETCD_BACKUP  # the name label of the helper Pods, which etcd's NetworkPolicy admits
HASH_SIZE = hashlib.sha256().digest_size
BBOLT_MAGIC = 0xED0CDAED  # bbolt's meta page magic; a bbolt page header is 16 bytes
MIN_SNAPSHOT = 2 * 4096 + HASH_SIZE  # two meta pages, at the smallest page size
HELPER_IMAGE = "localhost/rhizeption/busybox:bookworm"
# Kubernetes' own advice for restoring its etcd: revisions move on past any a client has seen,
# and everything older is compacted, so watchers relist instead of missing changes.
BUMP_REVISION = 1_000_000_000
WORK = "/backup"
DATA = "/var/lib/etcd"  # the etcd volume's mount, as in etcd's Pod; the data dir is DATA/data
EXEC_TRIES = 3


class BackupError(core.TenantControlPlaneError):
    """A backup or restore that cannot go ahead, or went wrong: (what, why)."""


def default_images(version: str) -> Dict[str, str]:
    etcd_version = core.BUILT_VERSIONS.get(version, {}).get("etcd", "")
    return {
        "etcd": core.default_images(version)[core.ETCD],
        "etcdutl": f"{core.IMAGE_REPOSITORY}/etcdutl:{etcd_version}",
        "helper": HELPER_IMAGE,
    }


# -- the snapshot file (pure) ----------------------------------------------------------------
def check_snapshot(data: bytes, where: str) -> str:
    """Whether DATA is a whole etcd snapshot: the sha256 etcd appends to what it streams
    matches, and what it covers is a bbolt file. Returns that sha256 (hex); raises
    BackupError naming WHERE otherwise."""
    if len(data) < MIN_SNAPSHOT or (len(data) - HASH_SIZE) % 512:
        raise BackupError(
            where, f"is not an etcd snapshot: {len(data)} bytes, not a database plus its 32-byte sha256"
        )
    body, digest = data[:-HASH_SIZE], data[-HASH_SIZE:]
    if hashlib.sha256(body).digest() != digest:
        raise BackupError(where, "is corrupt or truncated: its sha256 does not match the one etcd appended")
    if struct.unpack_from("<I", body, 16)[0] != BBOLT_MAGIC:
        raise BackupError(where, "is not an etcd snapshot: no bbolt database in it")
    return digest.hex()


def read_snapshot(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BackupError(path, f"cannot be read: {e.strerror}") from e
    check_snapshot(data, path)
    return data


def write_private(path: str, data: bytes) -> None:
    """Write DATA to PATH, 0600 from the start and renamed over: never readable by others,
    never half-written, and an older backup stays until the new one is complete."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".etcd-snapshot-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# -- what can be backed up (pure) ------------------------------------------------------------
def check_backupable(tcp: Obj) -> None:
    spec = core.spec_of(tcp)
    if spec["datastore"]["type"] != "etcd":
        raise BackupError(
            "spec.datastore.type",
            f"is {spec['datastore']['type']!r}: backup and restore need a dedicated etcd (type etcd);"
            " a shared etcd holds other tenants' keys too, back it up as a whole",
        )


def check_restorable(tcp: Obj) -> None:
    check_backupable(tcp)
    if core.etcd_members(tcp) != 1:
        raise BackupError(
            "spec.replicas",
            f"gives {core.etcd_members(tcp)} etcd members: restore handles a single-member etcd"
            " (spec.replicas 1) only",
        )


# -- the helper Pods (pure) ------------------------------------------------------------------
def _names(tcp: Obj) -> Dict[str, str]:
    name = tcp["metadata"]["name"]
    sts, peers = core.etcd_names(tcp)
    return {
        "backup": f"{name}-etcd-backup",
        "receive": f"{name}-etcd-receive",
        "restore": f"{name}-etcd-restore",
        "sts": sts,
        "peers": peers,
        "claim": f"data-{sts}-0",  # the StatefulSet's volumeClaimTemplate "data", member 0
    }


def _pod(tcp: Obj, name: str, spec: Obj) -> Obj:
    base = core._pod_spec(tcp, BACKUP, {}, [], 1)
    base.pop("containers")
    base.pop("volumes")
    base.update(restartPolicy="Never", activeDeadlineSeconds=int(oneshot.TIMEOUT) * 5, **spec)
    labels = core.labels(tcp, core.ETCD)
    labels["app.kubernetes.io/name"] = BACKUP
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": tcp["metadata"]["namespace"],
            "labels": labels,
            # Owned by the tenant: deleting it removes a helper a crash may have left.
            "ownerReferences": [owner_reference(tcp, controller=False)],
        },
        "spec": base,
    }


def backup_pod(tcp: Obj, images: Mapping[str, str], secrets: Mapping[str, str]) -> Obj:
    n = _names(tcp)
    ns = tcp["metadata"]["namespace"]
    pki = f"{core.PKI_DIR}/etcd-client"
    work = {"name": "work", "mountPath": WORK}
    save = oneshot.container(
        "snapshot",
        images["etcd"],
        [
            "etcdctl",
            f"--endpoints=https://{n['sts']}.{ns}.svc:{core.ETCD_CLIENT_PORT}",
            f"--cacert={pki}/ca.crt",
            f"--cert={pki}/tls.crt",
            f"--key={pki}/tls.key",
            "--dial-timeout=10s",
            "--command-timeout=120s",
            "snapshot",
            "save",
            f"{WORK}/snapshot.db",
        ],
        [work, {"name": "etcd-client", "mountPath": pki, "readOnly": True}],
    )
    # Holds the file for the exec that streams it out; the Pod is deleted right after.
    hold = oneshot.container("hold", images["helper"], ["sleep", str(int(oneshot.TIMEOUT) * 5)], [work])
    return _pod(
        tcp,
        n["backup"],
        {
            "initContainers": [save],
            "containers": [hold],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {
                    "name": "etcd-client",
                    "secret": {
                        "secretName": secrets["apiserver-etcd-client"],
                        "defaultMode": core.SECRET_MODE,
                    },
                },
            ],
        },
    )


def _data_volume(tcp: Obj) -> List[Obj]:
    return [{"name": "data", "persistentVolumeClaim": {"claimName": _names(tcp)["claim"]}}]


def receive_pod(tcp: Obj, images: Mapping[str, str]) -> Obj:
    """Mounts the stopped etcd's volume; the snapshot is written into it through exec."""
    mounts = [{"name": "data", "mountPath": DATA}]
    hold = oneshot.container("hold", images["helper"], ["sleep", str(int(oneshot.TIMEOUT) * 5)], mounts)
    return _pod(tcp, _names(tcp)["receive"], {"containers": [hold], "volumes": _data_volume(tcp)})


def restore_pod(tcp: Obj, images: Mapping[str, str]) -> Obj:
    """etcdutl restores into DATA/restore/data with the member's name, peer URL and the
    cluster token etcd's StatefulSet uses; then renames swap it in for DATA/data. The old
    data is renamed away only once the new one is complete, and is put back if the swap
    fails half-way."""
    n = _names(tcp)
    ns, name = tcp["metadata"]["namespace"], tcp["metadata"]["name"]
    member = f"{n['sts']}-0"
    peer = f"https://{member}.{n['peers']}.{ns}.svc:{core.ETCD_PEER_PORT}"
    mounts = [{"name": "data", "mountPath": DATA}]
    restore = oneshot.container(
        "restore",
        images["etcdutl"],
        [
            "etcdutl",
            "snapshot",
            "restore",
            f"{DATA}/restore/snapshot.db",
            f"--data-dir={DATA}/restore/data",
            f"--name={member}",
            f"--initial-cluster={member}={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster-token={ns}-{name}",
            f"--bump-revision={BUMP_REVISION}",
            "--mark-compacted",
        ],
        mounts,
    )
    # Runs after etcdutl succeeded only (an init container that fails stops the Pod).
    swap = oneshot.container(
        "swap",
        images["helper"],
        [
            "sh",
            "-ec",
            f"cd {DATA}; rm -rf data.old; "
            "if [ -d data ]; then mv data data.old; fi; "
            "if ! mv restore/data data; then rm -rf data; mv data.old data; exit 1; fi; "
            "rm -rf data.old restore; sync",
        ],
        mounts,
    )
    return _pod(
        tcp,
        n["restore"],
        {"initContainers": [restore], "containers": [swap], "volumes": _data_volume(tcp)},
    )


# -- against the host cluster ----------------------------------------------------------------
@dataclass
class Result:
    changed: bool
    path: str
    sha256: str = ""
    size: int = 0
    message: str = ""


def _tenant(kube: Kube, namespace: str, name: str) -> Obj:
    tcp = kube.get(core.TENANT_CONTROL_PLANE.path(namespace, name))
    if tcp is None:
        raise BackupError("name", f"TenantControlPlane {namespace}/{name} does not exist")
    return tcp


def _images(tcp: Obj, images: Mapping[str, str] | None) -> Dict[str, str]:
    out = default_images(core.spec_of(tcp)["version"])
    out.update({k: v for k, v in (images or {}).items() if v})
    return out


def _read_out(kube: Kube, namespace: str, pod: str, what: str) -> bytes:
    """The snapshot in POD, checked. An exec's output was seen cut short on the rig (once
    in about ten backups; the check caught it): read again, at most EXEC_TRIES times."""
    problem = BackupError(f"Pod {namespace}/{pod}", "was not read")
    for _attempt in range(EXEC_TRIES):
        text = oneshot.exec_out(kube, namespace, pod, ["base64", f"{WORK}/snapshot.db"], container="hold")
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
            check_snapshot(data, what)
        except ValueError as e:  # binascii.Error and BackupError are ValueErrors
            problem = BackupError(f"Pod {namespace}/{pod}", f"sent a damaged snapshot ({e})")
            continue
        return data
    raise problem


def backup(
    kube: Kube,
    namespace: str,
    name: str,
    path: str,
    *,
    images: Mapping[str, str] | None = None,
    force: bool = False,
    check_mode: bool = False,
) -> Result:
    """Snapshot the tenant's etcd into PATH. An existing snapshot at PATH is kept (changed
    false) unless FORCE; an existing file that is not a snapshot is refused, FORCE or not:
    a mistyped path must not overwrite something else."""
    tcp = _tenant(kube, namespace, name)
    check_backupable(tcp)
    if os.path.exists(path):
        data = read_snapshot(path)  # raises when PATH holds something else
        if not force:
            return Result(
                False, path, hashlib.sha256(data).hexdigest(), len(data), "kept the existing snapshot"
            )
    if check_mode:
        return Result(True, path, message="would write a new snapshot")
    pod = backup_pod(tcp, _images(tcp, images), core.secret_names(tcp))
    pod_name = pod["metadata"]["name"]
    try:
        oneshot.run(kube, pod, "Running")
        data = _read_out(kube, namespace, pod_name, f"the snapshot of {namespace}/{name}")
    finally:
        oneshot.delete(kube, namespace, pod_name, wait=False)
    write_private(path, data)
    return Result(True, path, hashlib.sha256(data).hexdigest(), len(data), "wrote a new snapshot")


def _send(kube: Kube, namespace: str, pod: str, data: bytes, digest: str) -> None:
    """Write DATA into POD's DATA/restore/snapshot.db and compare its sha256, trying again
    (at most EXEC_TRIES times) if it arrived damaged."""
    encoded = base64.b64encode(data)
    target = f"{DATA}/restore/snapshot.db"
    for _attempt in range(EXEC_TRIES):
        # head -c reads exactly the bytes sent: no end-of-stdin is needed over exec.
        script = (
            f"rm -rf {DATA}/restore; mkdir -p {DATA}/restore; head -c {len(encoded)} | base64 -d > {target}"
        )
        oneshot.exec_out(kube, namespace, pod, ["sh", "-ec", script], container="hold", stdin=encoded)
        sent = oneshot.exec_out(kube, namespace, pod, ["sha256sum", target], container="hold").split()
        if sent and sent[0] == digest:
            return
    raise BackupError(
        f"Pod {namespace}/{pod}", f"the snapshot arrived damaged {EXEC_TRIES} times (sha256 differs)"
    )


def _scale(kube: Kube, resource: core.Resource, namespace: str, name: str, replicas: int) -> None:
    kube.json_patch(
        resource.path(namespace, name),
        [{"op": "replace", "path": "/spec/replicas", "value": replicas}],
        what=f"scale {resource.kind} {namespace}/{name} to {replicas}",
    )


def _components(tcp: Obj) -> str:
    """The label selector of the control plane's own objects (others may carry the tenant's label)."""
    names = ",".join(core.COMPONENTS)
    return f"{core.TENANT_LABEL}={tcp['metadata']['name']},app.kubernetes.io/name in ({names})"


def _stop(kube: Kube, tcp: Obj, before: Dict[str, int]) -> None:
    """Scale the tenant's Deployments, then etcd, to 0 and wait until their Pods are gone.
    BEFORE gets the replicas to scale back to as each is scaled, so a stop that fails
    half-way is undone too."""
    ns, name = tcp["metadata"]["namespace"], tcp["metadata"]["name"]
    deployments, _version = kube.list(core.DEPLOYMENT.path(ns), label_selector=_components(tcp))
    for obj in deployments:
        before[obj["metadata"]["name"]] = int((obj.get("spec") or {}).get("replicas", 1))
        _scale(kube, core.DEPLOYMENT, ns, obj["metadata"]["name"], 0)
    sts = core.etcd_names(tcp)[0]
    before[sts] = core.etcd_members(tcp)
    _scale(kube, core.STATEFULSET, ns, sts, 0)
    stopped, left = kube.wait(
        oneshot.POD.path(ns), lambda pods: not pods, oneshot.TIMEOUT, label_selector=_components(tcp)
    )
    if not stopped:
        raise BackupError(f"TenantControlPlane {ns}/{name}", f"Pods still running after stop: {sorted(left)}")


def _start(kube: Kube, tcp: Obj, replicas: Mapping[str, int], timeout: float) -> Obj:
    """etcd first, then the Deployments, then wait for the tenant to be Ready."""
    ns = tcp["metadata"]["namespace"]
    sts = core.etcd_names(tcp)[0]
    _scale(kube, core.STATEFULSET, ns, sts, core.etcd_members(tcp))
    for deployment, count in replicas.items():
        if deployment != sts:
            _scale(kube, core.DEPLOYMENT, ns, deployment, count)
    return core.wait_for_phase(kube, tcp, "Ready", timeout)


def restore(
    kube: Kube,
    namespace: str,
    name: str,
    path: str,
    *,
    images: Mapping[str, str] | None = None,
    check_mode: bool = False,
    timeout: float = 300.0,
) -> Result:
    """Replace the tenant's etcd data by the snapshot at PATH; see the module docstring."""
    data = read_snapshot(path)  # a missing or corrupt file stops here, before anything else
    digest = hashlib.sha256(data).hexdigest()
    tcp = _tenant(kube, namespace, name)
    check_restorable(tcp)
    if check_mode:
        return Result(True, path, digest, len(data), "would restore the snapshot")
    imgs = _images(tcp, images)
    n = _names(tcp)
    replicas: Dict[str, int] = {}
    try:
        _stop(kube, tcp, replicas)
        receive = receive_pod(tcp, imgs)
        try:
            oneshot.run(kube, receive, "Running")
            _send(kube, namespace, n["receive"], data, digest)
        finally:
            oneshot.delete(kube, namespace, n["receive"])
        try:
            oneshot.run(kube, restore_pod(tcp, imgs), "Succeeded")
        finally:
            oneshot.delete(kube, namespace, n["restore"])
    except (KubeError, BackupError, oneshot.OneShotError) as e:
        try:
            _start(kube, tcp, replicas, timeout)
        except (KubeError, core.TenantControlPlaneError) as again:
            raise BackupError(
                f"restore of {namespace}/{name} from {path}",
                f"{e}; and the tenant did not come back: {again}",
            ) from e
        raise BackupError(
            f"restore of {namespace}/{name} from {path}",
            f"{e}; the tenant runs on its old data again",
        ) from e
    _start(kube, tcp, replicas, timeout)
    return Result(True, path, digest, len(data), "restored the snapshot")


__all__ = [
    "BackupError",
    "Result",
    "backup",
    "backup_pod",
    "check_backupable",
    "check_restorable",
    "check_snapshot",
    "receive_pod",
    "restore",
    "restore_pod",
]

"""A Pod's volumes as host directories that the runtime bind-mounts into containers.

ConfigMap, Secret, downward API and projected volumes are written the kubelet's way: the
files live in a timestamped folder, ``..data`` is a symlink to it, and each visible name
is a symlink through ``..data``. An update writes a new folder and swaps ``..data`` in
one rename, so a container that has the directory mounted sees the new content at once
and never a half-written mix.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import podspec

LOG = logging.getLogger("rhizeption_agent.volumes")
Obj = dict[str, Any]
TOKEN_SECONDS = 3607  # what the kubelet asks for when a Pod does not say
DEFAULT_MODE = 0o644


class VolumeError(Exception):
    """A volume that cannot be made (a missing ConfigMap, say); the message says which."""


class Reader(Protocol):
    def get(self, path: str) -> Obj | None: ...

    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


@dataclass
class PodVolumes:
    root: Path
    paths: dict[str, str] = field(default_factory=dict)  # volume name -> host path
    tmpfs: list[str] = field(default_factory=list)
    token_expiry: dict[str, float] = field(default_factory=dict)  # per token file, monotonic
    tokens: dict[str, dict[str, tuple[bytes, int]]] = field(default_factory=dict)


class Volumes:
    def __init__(self, kube: Reader, state_dir: str, host_ip: str = "") -> None:
        self.kube = kube
        self.base = Path(state_dir) / "pods"
        self.host_ip = host_ip

    def root(self, uid: str) -> Path:
        return self.base / uid / "volumes"

    def setup(self, pod: Obj, pod_ip: str = "") -> PodVolumes:
        """Make every volume of POD; VolumeError names the first that cannot be made."""
        uid = pod["metadata"]["uid"]
        state = PodVolumes(self.root(uid))
        state.root.mkdir(parents=True, exist_ok=True)
        for vol in pod["spec"].get("volumes") or []:
            state.paths[vol["name"]] = self._make(pod, vol, state, pod_ip, first=True)
        return state

    def refresh(self, pod: Obj, state: PodVolumes, pod_ip: str = "") -> None:
        """Rewrite the volumes whose sources may change (ConfigMap, Secret, downward API,
        service-account tokens); an unchanged source writes nothing."""
        for vol in pod["spec"].get("volumes") or []:
            if any(k in vol for k in ("configMap", "secret", "downwardAPI", "projected")):
                try:
                    self._make(pod, vol, state, pod_ip, first=False)
                except VolumeError as e:
                    LOG.warning("pod %s: %s", pod["metadata"]["name"], e)

    def teardown(self, uid: str) -> None:
        root = self.root(uid)
        if not root.exists():
            return
        for sub in root.iterdir():
            if os.path.ismount(sub):
                subprocess.run(["umount", "-l", str(sub)], check=False, capture_output=True)
        shutil.rmtree(self.base / uid, ignore_errors=True)

    # -- one volume ------------------------------------------------------------------
    def _make(self, pod: Obj, vol: Obj, state: PodVolumes, pod_ip: str, *, first: bool) -> str:
        name = vol["name"]
        path = state.root / name
        ns = pod["metadata"]["namespace"]
        if "hostPath" in vol:
            return self._host_path(vol["hostPath"], name)
        if "emptyDir" in vol:
            if first:
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o777)
                if (vol["emptyDir"] or {}).get("medium") == "Memory" and not os.path.ismount(path):
                    size = (vol["emptyDir"] or {}).get("sizeLimit")
                    opts = "mode=1777" + (f",size={int(podspec.quantity(size))}" if size else "")
                    done = subprocess.run(
                        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    if done.returncode:
                        raise VolumeError(f"volume {name}: tmpfs mount failed: {done.stderr.strip()}")
                    state.tmpfs.append(str(path))
            return str(path)
        files: dict[str, tuple[bytes, int]] = {}
        if "configMap" in vol or "secret" in vol:
            files = self._object_files(ns, vol, name)
        elif "downwardAPI" in vol:
            files = self._downward(pod, vol["downwardAPI"], pod_ip)
        elif "projected" in vol:
            proj = vol["projected"] or {}
            mode = proj.get("defaultMode", DEFAULT_MODE)
            for src in proj.get("sources") or []:
                if "serviceAccountToken" in src:
                    files.update(self._token(pod, src["serviceAccountToken"], state, name, mode))
                elif "downwardAPI" in src:
                    files.update(self._downward(pod, {**src["downwardAPI"], "defaultMode": mode}, pod_ip))
                else:
                    kind = "configMap" if "configMap" in src else "secret"
                    files.update(self._object_files(ns, {kind: {**src[kind], "defaultMode": mode}}, name))
        if files or first:
            write_atomic(path, files)
        return str(path)

    def _host_path(self, hp: Obj, name: str) -> str:
        path = Path(hp["path"])
        kind = hp.get("type") or ""
        if kind == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "FileOrCreate" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        elif kind == "Directory" and not path.is_dir():
            raise VolumeError(f"volume {name}: hostPath {path} is not a directory")
        elif kind == "File" and not path.is_file():
            raise VolumeError(f"volume {name}: hostPath {path} is not a file")
        return str(path)

    def _object_files(self, ns: str, vol: Obj, name: str) -> dict[str, tuple[bytes, int]]:
        kind = "configMap" if "configMap" in vol else "secret"
        src = vol[kind] or {}
        obj_name = src.get("name") if kind == "configMap" else src.get("secretName") or src.get("name")
        plural = "configmaps" if kind == "configMap" else "secrets"
        obj = self.kube.get(f"/api/v1/namespaces/{ns}/{plural}/{obj_name}")
        if obj is None:
            if src.get("optional"):
                return {}
            raise VolumeError(f'volume {name}: {kind} "{obj_name}" not found')
        data: dict[str, bytes] = {}
        if kind == "configMap":
            data.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        mode = src.get("defaultMode", DEFAULT_MODE)
        items = src.get("items")
        if not items:
            return {k: (v, mode) for k, v in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise VolumeError(f'volume {name}: key {item["key"]!r} not in {kind} "{obj_name}"')
            files[item["path"]] = (data[item["key"]], item.get("mode", mode))
        return files

    def _downward(self, pod: Obj, src: Obj, pod_ip: str) -> dict[str, tuple[bytes, int]]:
        mode = src.get("defaultMode", DEFAULT_MODE)
        files = {}
        for item in src.get("items") or []:
            if "fieldRef" in item:
                value = podspec.field_ref(pod, item["fieldRef"]["fieldPath"], self.host_ip, pod_ip)
            else:
                ref = item["resourceFieldRef"]
                value = podspec.resource_ref(pod, ref.get("containerName", ""), ref, {})
            files[item["path"]] = (value.encode(), item.get("mode", mode))
        return files

    def _token(
        self, pod: Obj, src: Obj, state: PodVolumes, name: str, mode: int
    ) -> dict[str, tuple[bytes, int]]:
        """A bound service-account token from TokenRequest, renewed at 80 % of its life."""
        key = f"{name}/{src.get('path', 'token')}"
        if key in state.tokens and time.monotonic() < state.token_expiry.get(key, 0):
            return state.tokens[key]  # still fresh
        seconds = int(src.get("expirationSeconds") or TOKEN_SECONDS)
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        if src.get("audience"):
            body["spec"]["audiences"] = [src["audience"]]
        answer = self.kube.request(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
            body=body,
            what=f"token for service account {sa}",
        )
        state.token_expiry[key] = time.monotonic() + seconds * 0.8
        token = answer["status"]["token"].encode()
        state.tokens[key] = {src.get("path", "token"): (token, mode)}
        return state.tokens[key]


def write_atomic(target: Path, files: dict[str, tuple[bytes, int]]) -> bool:
    """Make TARGET hold exactly FILES (relative path -> (content, mode)); True when it
    changed. The swap is one rename of the ``..data`` symlink."""
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / "..data"
    current = target / os.readlink(data_link) if data_link.is_symlink() else None
    if current is not None and _same(current, files):
        return False
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    folder = target / stamp
    folder.mkdir()
    for rel, (content, mode) in files.items():
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
        dest.chmod(mode)
    tmp_link = target / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    tmp_link.symlink_to(stamp)
    tmp_link.rename(data_link)
    for rel in {r.split("/", 1)[0] for r in files}:
        link = target / rel
        if not link.is_symlink():
            link.symlink_to(f"..data/{rel}")
    for entry in target.iterdir():
        if entry.name.startswith("..") and entry.name not in ("..data", stamp):
            shutil.rmtree(entry, ignore_errors=True)
        elif not entry.name.startswith("..") and entry.name not in {r.split("/", 1)[0] for r in files}:
            entry.unlink()
    return True


def _same(folder: Path, files: dict[str, tuple[bytes, int]]) -> bool:
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    if present != set(files):
        return False
    return all((folder / rel).read_bytes() == content for rel, (content, _mode) in files.items())

"""Where hack/bootstrap put the pinned binaries (the bash side is hack/lib.sh)."""

from __future__ import annotations

import os
from pathlib import Path

HACK_DIR = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    if os.environ.get("RHIZEPTION_CACHE"):
        return Path(os.environ["RHIZEPTION_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "rhizeption"


def versions(path: Path = HACK_DIR / "versions.env") -> dict[str, str]:
    """Parse the KEY=VALUE pins of hack/versions.env."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _sep, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


# binary name -> (cache folder, version pin)
_BINARIES = {
    "etcd": ("etcd", "ETCD_VERSION"),
    "etcdctl": ("etcd", "ETCD_VERSION"),
    "kwok": ("kwok", "KWOK_VERSION"),
    "coredns": ("coredns", "COREDNS_VERSION"),
    **{
        name: ("kubernetes", "KUBERNETES_VERSION")
        for name in (
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
            "kubectl",
        )
    },
}


class MissingBinary(RuntimeError):
    pass


def binary(name: str) -> Path:
    """The path of a pinned binary; raises MissingBinary naming the bootstrap step to run."""
    folder, pin = _BINARIES[name]
    entry = cache_dir() / folder / versions()[pin]
    path = entry / "bin" / name
    if not (entry / ".complete").is_file() or not path.is_file():
        raise MissingBinary(f"{name} is not built: run `hack/bootstrap {folder}` (looked in {path})")
    return path

"""The collection builds into a clean tarball that installs and that ansible-doc reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*cmd: str, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_build_install_and_document(tmp_path) -> None:
    # Build outputs and caches exist in the checkout while tests run; none may be packed.
    (REPO / "tests" / "output").mkdir(exist_ok=True)
    run(
        str(BIN / "ansible-galaxy"),
        "collection",
        "build",
        "--force",
        "--output-path",
        str(tmp_path),
        cwd=REPO,
    )
    tarball = tmp_path / "rhizeption-core-0.1.0.tar.gz"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    unwanted = (".venv", ".collections", "results", "tests/output", ".git", "hack/go")
    packed_junk = [n for n in names if n.startswith(unwanted) or "__pycache__" in n or n.endswith(".pyc")]
    assert packed_junk == []
    assert {"meta/runtime.yml", "README.md", "playbooks/site.yml"} <= set(names)
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["version"]) == ("rhizeption", "core", "0.1.0")
    assert set(info["dependencies"]) == {
        "kubernetes.core",
        "containers.podman",
        "community.crypto",
        "ansible.posix",
    }

    dest = tmp_path / "installed"
    run(
        str(BIN / "ansible-galaxy"),
        "collection",
        "install",
        "--force",
        "--no-deps",
        "-p",
        str(dest),
        str(tarball),
    )
    assert (dest / "ansible_collections" / "rhizeption" / "core" / "MANIFEST.json").is_file()
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(dest)}
    listed = run(str(BIN / "ansible-doc"), "-l", "rhizeption.core", "--json", env=env)
    assert isinstance(json.loads(listed.stdout), dict)

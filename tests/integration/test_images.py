"""The locally built images work: the pause container runs and stops cleanly, and
the systemd host image boots to `running` in both ways the role tests start hosts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from riglib import toolchain
from riglib.node import PREVIOUS_ARCHIVES

REPO = Path(__file__).resolve().parents[2]


def pause_image() -> str:
    out = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/rhizeption/pause"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(out) == 1, f"expected one pause image, found {out}"
    return out[0]


def test_pause_runs_and_reports_its_source_version() -> None:
    ref = pause_image()
    version = subprocess.run(
        ["podman", "run", "--rm", ref, "-v"], capture_output=True, text=True, check=True, timeout=60
    )
    assert version.stdout.strip() == f"pause.c {ref.rsplit(':', 1)[1]}-rhizeption"


def test_every_image_has_an_archive_for_containerd() -> None:
    """Each image in Podman's store has the archive of the same build (named by its cache
    key), and no archive is left without its image: containerd and `podman load` read these.
    The previous Kubernetes minor's control plane is archived in its own folder."""
    listed = subprocess.run(
        [
            "podman",
            "images",
            "--format",
            '{{.Repository}} {{.Tag}} {{index .Labels "io.rhizeption.cache-key"}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    previous = toolchain.versions()["KUBERNETES_PREVIOUS_VERSION"]
    expected = sorted(
        (f"{PREVIOUS_ARCHIVES}/" if tag == previous else "") + f"{repo.rsplit('/', 1)[1]}-{key}.oci.tar"
        for repo, tag, key in (line.split(" ", 2) for line in listed)
        if repo.startswith("localhost/rhizeption/")
    )
    folder = toolchain.cache_dir() / "images"
    archives = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.oci.tar"))
    assert archives == expected
    names = {a.rsplit("-", 1)[0] for a in archives}
    assert {"pause", "host", "node", f"{PREVIOUS_ARCHIVES}/kube-apiserver"} <= names


def test_host_image_boots_systemd_plain_and_nested() -> None:
    result = subprocess.run(
        [str(REPO / "hack" / "check-host-image"), "localhost/rhizeption/host:bookworm"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "plain: systemd running" in result.stdout
    assert "nested: systemd running" in result.stdout
    leftover = subprocess.run(
        ["podman", "ps", "-aq", "--filter", "label=io.rhizeption.check-host-image=1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert leftover.strip() == ""

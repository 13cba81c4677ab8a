"""hack/bootstrap's contract: one clear line on failure, nothing half-written in the
cache, and a second run that trusts what the first one completed. A fake `go` on
PATH stands in for the 10-minute Kubernetes build."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from riglib import toolchain

REPO = Path(__file__).resolve().parents[3]
BOOTSTRAP = REPO / "hack" / "bootstrap"

FAKE_GO = textwrap.dedent("""\
    #!/usr/bin/env bash
    # Records each build; builds fake binaries into -o DIR, or fails when told to.
    if [[ "$1" == env ]]; then echo "${FAKE_GO_VERSION:-go1.26.0}"; exit 0; fi
    echo "$*" >> "$FAKE_GO_CALLS"
    [[ -z "${FAKE_GO_FAIL:-}" ]] || { echo "compile error: $FAKE_GO_FAIL" >&2; exit 1; }
    out=""; prev=""
    for a in "$@"; do [[ "$prev" == "-o" ]] && out="$a"; prev="$a"; done
    for a in "$@"; do
        case "$a" in k8s.io/*/cmd/*)
            printf '#!/bin/sh\\necho "%s fake"\\n' "${a##*/}" > "$out/${a##*/}"; chmod +x "$out/${a##*/}";;
        esac
    done
""")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    (fake_bin / "go").write_text(FAKE_GO)
    (fake_bin / "go").chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "RHIZEPTION_CACHE": str(tmp_path / "cache"),
        "FAKE_GO_CALLS": str(tmp_path / "go-calls"),
    }


def bootstrap(env: dict[str, str], *steps: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BOOTSTRAP), *steps], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def kubernetes_entry(env: dict[str, str]) -> Path:
    return Path(env["RHIZEPTION_CACHE"]) / "kubernetes" / toolchain.versions()["KUBERNETES_VERSION"]


def test_a_failed_build_says_which_step_and_log_and_leaves_no_entry(env) -> None:
    env["FAKE_GO_FAIL"] = "boom"
    result = bootstrap(env, "kubernetes")
    assert result.returncode == 1
    log = Path(env["RHIZEPTION_CACHE"]) / "logs" / "kubernetes.log"
    assert f'bootstrap: step "kubernetes" failed; see {log}' in result.stderr.splitlines()[0]
    assert "compile error: boom" in log.read_text()
    entry = kubernetes_entry(env)
    assert not entry.exists()
    assert not (entry.parent / f"{entry.name}.partial" / ".complete").exists()


def test_a_half_written_entry_is_rebuilt_not_trusted(env) -> None:
    entry = kubernetes_entry(env)
    (entry / "bin").mkdir(parents=True)  # as if a run died before marking it complete
    assert bootstrap(env, "kubernetes").returncode == 0
    assert (entry / ".complete").is_file()
    assert (entry / "bin" / "kube-apiserver").is_file()
    assert len(Path(env["FAKE_GO_CALLS"]).read_text().splitlines()) == 1


def test_a_second_run_uses_the_cache(env) -> None:
    first = bootstrap(env, "kubernetes")
    assert first.returncode == 0, first.stderr
    assert "built Kubernetes" in first.stdout
    second = bootstrap(env, "kubernetes")
    assert second.returncode == 0, second.stderr
    assert "kubernetes: cached in" in second.stdout
    assert len(Path(env["FAKE_GO_CALLS"]).read_text().splitlines()) == 1


def test_an_unknown_step_is_refused_before_anything_runs(env) -> None:
    result = bootstrap(env, "kubernetes", "kubernets")
    assert result.returncode == 2
    assert 'unknown step "kubernets"' in result.stderr
    assert not Path(env["FAKE_GO_CALLS"]).exists()


def test_a_go_too_old_is_named_before_building(env) -> None:
    env["FAKE_GO_VERSION"] = "go1.22.3"
    result = bootstrap(env, "etcd")
    assert result.returncode == 1
    assert 'step "etcd" failed' in result.stderr
    assert "go1.22.3 is too old: Go 1.24 or newer is needed" in result.stderr
    assert not Path(env["FAKE_GO_CALLS"]).exists()

"""What the verify tests share: kubectl with the admin kubeconfig that converge wrote, the
hosts' containers, and playbooks/host_cluster.yml run against the scenario's hosts as a
user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("RHIZEPTION_CACHE") or Path.home() / ".cache/rhizeption")
VERSIONS = dict(
    line.split("=", 1)
    for line in (REPO / "hack/versions.env").read_text().splitlines()
    if line and not line.startswith("#")
)
KUBECTL = CACHE / "kubernetes" / VERSIONS["KUBERNETES_VERSION"] / "bin/kubectl"
KUBECONFIG = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "")) / "admin.kubeconfig"
NODES = ["hc-cp", "hc-w1"]
IMAGE = "localhost/rhizeption/busybox:bookworm"


def kubectl(*args: str, stdin: str | None = None, timeout: int = 120, check: bool = True) -> str:
    proc = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(KUBECONFIG), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0 or not check, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def get(*args: str) -> dict:
    return json.loads(kubectl("get", "--output", "json", *args))


# The scenario's host containers (create.yml names them).
CONTAINER_PREFIX = "rhizeption-molecule-host-cluster-"


def on_host(node: str, script: str) -> str:
    """Run SCRIPT with sh on the scenario host NODE; its stdout."""
    return subprocess.run(
        ["podman", "exec", CONTAINER_PREFIX + node, "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def converge(tmp_path: Path, extra_vars: dict, hosts: dict | None = None) -> tuple[int, str]:
    inventories = ["-i", os.environ["MOLECULE_INVENTORY_FILE"]]
    if hosts:
        extra = tmp_path / "extra-hosts.json"
        extra.write_text(json.dumps(hosts))
        inventories += ["-i", str(extra)]
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            *inventories,
            str(REPO / "playbooks/host_cluster.yml"),
            "-e",
            json.dumps(extra_vars),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        # molecule sets ANSIBLE_FORCE_COLOR, which beats NOCOLOR: turn it off too.
        env=os.environ
        | {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_DISPLAY_OK_HOSTS": "false"},
    )
    # The callback prints results as JSON: unescape the quotes of the messages. Ansible wraps
    # long messages at the terminal width: one space for every run of whitespace.
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr).replace('\\"', '"')
    return proc.returncode, re.sub(r"\s+", " ", out)


def nothing_changed(out: str) -> None:
    recap = re.findall(r"(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", out)
    assert recap, out
    assert all(changed == "0" for _host, changed in recap), recap

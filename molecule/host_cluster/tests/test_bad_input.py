"""Bad input stops the play in preflight, on every host, with one message per problem that
names the host (or artifact) and the fix, and changes nothing on any host.

Runs playbooks/host_cluster.yml against the scenario's hosts (molecule's inventory) plus
an extra worker without systemd (this controller, whose PID 1 is not systemd).
An unreachable worker is not covered: any_errors_fatal stops the play with Ansible's own
UNREACHABLE message before the role's preflight message (docs/host-clusters.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
EXTRA_HOSTS = {
    "host_cluster_workers": {
        "hosts": {
            "hc-nosystemd": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        }
    }
}


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
        env=os.environ | {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_DISPLAY_OK_HOSTS": "false"},
    )
    # The callback prints results as JSON: unescape the quotes of the messages.
    return proc.returncode, (proc.stdout + proc.stderr).replace('\\"', '"')


def nothing_changed(out: str) -> None:
    recap = re.findall(r"(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", out)
    assert recap, out
    assert all(changed == "0" for _host, changed in recap), recap


def test_no_systemd_and_overlapping_networks(tmp_path):
    rc, out = converge(
        tmp_path,
        {"host_cluster_pod_cidr": "10.96.0.0/12", "host_cluster_service_cidr": "10.96.0.0/16"},
        EXTRA_HOSTS,
    )
    assert rc != 0
    messages = [line for line in out.splitlines() if "host_cluster preflight" in line]
    assert messages, out
    assert 'hc-nosystemd: the service manager is "process_api", not systemd' in out
    assert "boot the host with systemd as PID 1" in out
    assert "host_cluster_pod_cidr 10.96.0.0/12 and host_cluster_service_cidr 10.96.0.0/16 overlap" in out
    assert "hc-cp:" not in " ".join(messages) and "hc-w1:" not in " ".join(messages)
    assert "Install the Debian packages" not in out
    nothing_changed(out)


@pytest.mark.parametrize(
    ("extra_vars", "expected"),
    [
        (
            {"host_cluster_etcd_bin_dir": "/nonexistent"},
            "artifact etcd: /nonexistent/etcd is missing on the controller: run hack/bootstrap",
        ),
        (
            {"host_cluster_artifact_checksums": {"kubelet": "sha256:" + "0" * 64}},
            "expected "
            + "0" * 64
            + ": replace the file (hack/bootstrap rebuilds it) or correct the checksum",
        ),
    ],
    ids=["missing-artifact", "checksum-mismatch"],
)
def test_bad_artifacts(tmp_path, extra_vars, expected):
    rc, out = converge(tmp_path, extra_vars)
    assert rc != 0
    assert expected in re.sub(r"\s+", " ", out), out
    assert "Install the Debian packages" not in out
    nothing_changed(out)

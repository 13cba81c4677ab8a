"""Bad input stops the play in preflight, on every host, with one message per problem that
names the host (or artifact) and the fix, and changes nothing on any host.

Runs playbooks/host_cluster.yml against the scenario's hosts (molecule's inventory) plus
an extra worker without systemd (this controller, whose PID 1 is not systemd), or a worker
nothing answers on (ssh to a closed port of this machine).
"""

from __future__ import annotations

import re
import sys

import pytest
from scenario import converge, nothing_changed

EXTRA_HOSTS = {
    "host_cluster_workers": {
        "hosts": {
            "hc-nosystemd": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        }
    }
}


def test_no_systemd_and_overlapping_networks(tmp_path):
    rc, out = converge(
        tmp_path,
        {"host_cluster_pod_cidr": "10.96.0.0/12", "host_cluster_service_cidr": "10.96.0.0/16"},
        EXTRA_HOSTS,
    )
    assert rc != 0
    messages = re.findall(r"Action failed: (host_cluster preflight:.*?) Origin:", out)
    assert messages, out
    assert 'hc-nosystemd: the service manager is "process_api", not systemd' in out
    assert "boot the host with systemd as PID 1" in out
    assert "host_cluster_pod_cidr 10.96.0.0/12 and host_cluster_service_cidr 10.96.0.0/16 overlap" in out
    assert "hc-cp:" not in " ".join(messages) and "hc-w1:" not in " ".join(messages)
    assert "Install the Debian packages" not in out
    nothing_changed(out)


def test_an_unreachable_worker(tmp_path):
    gone = {"ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_connection": "ssh"}
    rc, out = converge(tmp_path, {}, {"host_cluster_workers": {"hosts": {"hc-gone": gone}}})
    assert rc != 0
    messages = re.findall(r"Action failed: (host_cluster preflight:.*?) Origin:", out)
    assert len(messages) == 1, out
    assert "hc-gone: unreachable (" in messages[0]
    assert "make it reachable or take it out of the groups" in messages[0]
    assert "hc-cp:" not in messages[0] and "hc-w1:" not in messages[0]
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
    assert expected in out, out
    assert "Install the Debian packages" not in out
    nothing_changed(out)

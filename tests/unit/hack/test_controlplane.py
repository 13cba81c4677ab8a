"""The rig's pieces that need no running process."""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path

import pytest
from cryptography import x509
from riglib import controlplane, pki


@pytest.mark.parametrize(
    "components",
    [
        ("kube-apiserver",),  # no etcd
        ("etcd", "kube-scheduler"),  # a component without its apiserver
        ("etcd", "kube-apiserver", "kube-proxy"),  # not a rig component
    ],
)
def test_components_are_checked(tmp_path, components) -> None:
    with pytest.raises(controlplane.RigError, match=r"must be among .* and include etcd"):
        controlplane.ControlPlane(tmp_path, components)


def test_etcd_alone_is_a_valid_rig(tmp_path) -> None:
    assert controlplane.ControlPlane(tmp_path, ("etcd",)).components == ("etcd",)


def test_components_start_in_dependency_order_whatever_the_order_asked(tmp_path) -> None:
    cp = controlplane.ControlPlane(tmp_path, ("kwok", "kube-apiserver", "etcd"))
    assert cp.components == ("etcd", "kube-apiserver", "kwok")


def test_kubeconfig_inlines_the_ca_and_the_client_identity() -> None:
    ca = pki.new_ca("ca")
    client = pki.issue(ca, "kubernetes-admin", organizations=("system:masters",), client=True)
    doc = json.loads(controlplane.kubeconfig_yaml("https://127.0.0.1:6443", ca, "admin", client))
    assert doc["current-context"] == "rig"
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    ca_cert = x509.load_pem_x509_certificate(base64.b64decode(cluster["certificate-authority-data"]))
    assert ca_cert == ca.cert
    user_cert = x509.load_pem_x509_certificate(
        base64.b64decode(doc["users"][0]["user"]["client-certificate-data"])
    )
    user_cert.verify_directly_issued_by(ca.cert)


def test_a_recycled_pid_is_not_taken_for_our_process() -> None:
    me = controlplane._proc_start_time(os.getpid())
    assert me is not None
    assert controlplane._alive(controlplane.Process("x", os.getpid(), me, ""))
    assert not controlplane._alive(controlplane.Process("x", os.getpid(), me + 1, ""))


def test_down_on_an_empty_folder_is_a_no_op(tmp_path) -> None:
    assert controlplane.ControlPlane(tmp_path).down() == []


def test_up_refuses_a_folder_that_holds_a_rig(tmp_path) -> None:
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(controlplane.RigError, match="already lives"):
        controlplane.ControlPlane(tmp_path).up()


def test_listening_ports_are_outside_the_ephemeral_range_and_never_given_twice(monkeypatch):
    # The kernel gives ephemeral ports to outgoing connections: a port of that range chosen for a
    # component may be taken before the component binds it.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    monkeypatch.setattr(controlplane, "_handed_out", set())
    ports = [controlplane.free_port() for _attempt in range(40)]
    assert len(set(ports)) == 40
    assert all(p in controlplane.LISTEN_PORTS and p < low for p in ports)


def test_a_port_something_listens_on_is_not_chosen(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", controlplane.LISTEN_PORTS.start))
        busy.listen()
        monkeypatch.setattr(
            controlplane, "LISTEN_PORTS", range(busy.getsockname()[1], busy.getsockname()[1] + 2)
        )
        monkeypatch.setattr(controlplane, "_handed_out", set())
        assert controlplane.free_port() == controlplane.LISTEN_PORTS.start + 1
        with pytest.raises(controlplane.RigError, match="no free port"):
            controlplane.free_port()

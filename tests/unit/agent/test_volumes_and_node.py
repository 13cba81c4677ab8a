"""Atomic volume updates (the ..data swap) and the Node's measured capacity."""

from __future__ import annotations

import os

from rhizeption_agent import node
from rhizeption_agent.volumes import write_atomic


def test_write_atomic_swaps_the_data_link_and_keeps_names_stable(tmp_path):
    target = tmp_path / "vol"
    assert write_atomic(target, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)})
    first = os.readlink(target / "..data")
    assert (target / "a").read_bytes() == b"1"
    assert (target / "dir" / "b").read_bytes() == b"2"
    assert (target / "a").is_symlink() and os.readlink(target / "a") == "..data/a"
    assert not write_atomic(target, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)}), (
        "unchanged: nothing written"
    )
    assert write_atomic(target, {"a": (b"changed", 0o644)})
    assert os.readlink(target / "..data") != first
    assert (target / "a").read_bytes() == b"changed"
    assert not (target / "dir").exists(), "a key that went away is gone from the volume"
    assert [p.name for p in target.iterdir() if p.name.startswith("..") and p.name != "..data"] == [
        os.readlink(target / "..data")
    ], "old data folders are removed"


def test_allocatable_subtracts_reservations():
    cap = {"cpu": "2", "memory": "1048576Ki", "ephemeral-storage": "1000Ki", "pods": "110"}
    alloc = node.allocatable(cap, {"cpu": "100m", "memory": "128Mi", "pods": "10"})
    assert alloc == {"cpu": "1900m", "memory": "917504Ki", "ephemeral-storage": "1000Ki", "pods": "100"}


def test_conditions_report_pressure_from_measurements():
    calm = node.Measured(
        cpu=2, memory=8 << 30, memory_available=4 << 30, storage=100, storage_free=50, pids=100, pid_max=1000
    )
    conds = {c[0]: c[1] for c in node.conditions(calm, True, "")}
    assert conds == {"MemoryPressure": False, "DiskPressure": False, "PIDPressure": False, "Ready": True}
    tight = node.Measured(
        cpu=2, memory=8 << 30, memory_available=10 << 20, storage=100, storage_free=5, pids=950, pid_max=1000
    )
    conds = {c[0]: c[1] for c in node.conditions(tight, False, "podman down")}
    assert conds == {"MemoryPressure": True, "DiskPressure": True, "PIDPressure": True, "Ready": False}


def test_significant_ignores_heartbeats():
    a = {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "1", "message": "x"}]}
    b = {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2", "message": "y"}]}
    assert node.significant(a) == node.significant(b)


def test_csr_carries_the_node_subject_and_addresses():
    from ansible_collections.rhizeption.core.plugins.module_utils import pki
    from cryptography import x509

    key = pki.new_key()
    pem = pki.csr_pem(
        key,
        "system:node:pet-1",
        organizations=("system:nodes",),
        dns_names=("pet-1",),
        ip_addresses=("10.99.0.2",),
    )
    csr = x509.load_pem_x509_csr(pem)
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=system:node:pet-1,O=system:nodes"
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.99.0.2"]
    assert sans.get_values_for_type(x509.DNSName) == ["pet-1"]

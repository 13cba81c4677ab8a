"""The collection's certificate builder: chains, names, usages, renewal, reading back."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import stat

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import pki
from cryptography import exceptions, x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def test_leaf_is_signed_by_its_ca() -> None:
    ca = pki.new_ca("test-ca")
    leaf = pki.issue(ca, "kube-apiserver", server=True)
    leaf.cert.verify_directly_issued_by(ca.cert)
    other = pki.new_ca("other-ca")
    with pytest.raises((ValueError, exceptions.InvalidSignature)):
        leaf.cert.verify_directly_issued_by(other.cert)
    assert pki.issued_by(leaf.cert, ca.cert)
    assert not pki.issued_by(leaf.cert, other.cert)


def test_server_certificate_carries_its_names_and_usage() -> None:
    ca = pki.new_ca("test-ca")
    leaf = pki.issue(
        ca,
        "kube-apiserver",
        server=True,
        dns_names=("localhost", "kubernetes.default"),
        ip_addresses=("127.0.0.1", "10.96.0.1"),
    )
    sans = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "kubernetes.default"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.96.0.1"),
    ]
    usages = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_client_certificate_names_user_and_groups() -> None:
    ca = pki.new_ca("test-ca")
    leaf = pki.issue(ca, "kubernetes-admin", organizations=("system:masters",), client=True)
    subject = leaf.cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes-admin"
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:masters"]
    usages = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)


def test_a_certificate_must_say_what_it_is_for() -> None:
    with pytest.raises(ValueError, match="server, a client, or both"):
        pki.issue(pki.new_ca("test-ca"), "nobody")


def test_only_the_ca_may_sign_certificates() -> None:
    ca = pki.new_ca("test-ca")
    leaf = pki.issue(ca, "kube-scheduler", client=True)
    ca_usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    leaf_usage = leaf.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ca_usage.key_cert_sign, ca_usage.crl_sign) == (True, True)
    assert (leaf_usage.key_cert_sign, leaf_usage.crl_sign) == (False, False)
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_validity_is_configurable_and_a_leaf_never_outlives_its_ca() -> None:
    ca = pki.new_ca("test-ca", validity=30 * DAY, now=NOW)
    assert pki.not_after(ca.cert) == NOW + 30 * DAY
    assert ca.cert.not_valid_before_utc == NOW - pki.BACKDATE
    short = pki.issue(ca, "a", client=True, validity=2 * DAY, now=NOW)
    assert pki.not_after(short.cert) == NOW + 2 * DAY
    long = pki.issue(ca, "b", client=True, validity=400 * DAY, now=NOW)
    assert pki.not_after(long.cert) == pki.not_after(ca.cert)


def test_needs_renewal_inside_the_window_only() -> None:
    cert = pki.issue(pki.new_ca("ca", now=NOW), "a", client=True, validity=10 * DAY, now=NOW).cert
    assert not pki.needs_renewal(cert, NOW, 3 * DAY)
    assert not pki.needs_renewal(cert, NOW + 6 * DAY, 3 * DAY)
    assert pki.needs_renewal(cert, NOW + 7 * DAY, 3 * DAY)
    assert pki.needs_renewal(cert, NOW + 11 * DAY, datetime.timedelta(0))


def test_certificates_and_keys_read_back_from_pem() -> None:
    ca = pki.new_ca("ca")
    pair = pki.load_keypair(ca.cert_pem(), ca.key_pem())
    assert pair.cert == ca.cert
    assert pki.public_key_pem(pair.key) == pki.public_key_pem(ca.key)
    assert ca.key_pem().startswith(b"-----BEGIN EC PRIVATE KEY-----")


def test_a_key_of_another_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="does not belong"):
        pki.load_keypair(pki.new_ca("a").cert_pem(), pki.new_ca("b").key_pem())
    with pytest.raises(ValueError):
        pki.load_keypair(b"not a certificate", pki.new_ca("b").key_pem())


def test_sans_compare_as_sets_so_a_changed_endpoint_is_seen() -> None:
    leaf = pki.issue(
        pki.new_ca("ca"), "s", server=True, dns_names=("b", "a"), ip_addresses=("10.0.0.2", "10.0.0.1")
    )
    assert pki.sans(leaf.cert) == (["a", "b"], ["10.0.0.1", "10.0.0.2"])
    assert pki.sans_match(leaf.cert, ["a", "b", "a"], ["10.0.0.2", "10.0.0.1"])
    assert not pki.sans_match(leaf.cert, ["a", "b"], ["10.0.0.1"])
    assert not pki.sans_match(leaf.cert, ["a", "b", "c"], ["10.0.0.1", "10.0.0.2"])
    assert pki.sans(pki.issue(pki.new_ca("ca"), "c", client=True).cert) == ([], [])


def test_kubeconfig_inlines_ca_and_client_and_reads_back() -> None:
    ca = pki.new_ca("ca")
    client = pki.issue(ca, "kubernetes-admin", organizations=("system:masters",), client=True)
    data = pki.kubeconfig_yaml("https://blue.tenants.svc:6443", ca.cert, "admin", client, cluster="blue")
    assert data == pki.kubeconfig_yaml(
        "https://blue.tenants.svc:6443", ca.cert, "admin", client, cluster="blue"
    )
    doc = json.loads(data)
    assert doc["current-context"] == "blue"
    ca_data = base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])
    assert pki.load_cert(ca_data) == ca.cert
    server, ca_cert, pair = pki.read_kubeconfig(data)
    assert (server, ca_cert, pair.cert) == ("https://blue.tenants.svc:6443", ca.cert, client.cert)
    with pytest.raises(ValueError, match="not a kubeconfig"):
        pki.read_kubeconfig(b"apiVersion: v1\nkind: Config\n")


def test_private_keys_are_written_0600_and_certificates_0644(tmp_path) -> None:
    crt, key = pki.new_ca("test-ca").write(tmp_path, "ca")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(crt.stat().st_mode) == 0o644
    assert x509.load_pem_x509_certificate(crt.read_bytes()).subject.rfc4514_string() == "CN=test-ca"


def test_rewriting_a_public_file_as_private_tightens_its_mode(tmp_path) -> None:
    path = pki.write_file(tmp_path / "f", b"a")
    pki.write_file(path, b"b", private=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"b"

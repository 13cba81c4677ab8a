"""The rig's PKI: chains verify, names and usages are what the components need."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import exceptions, x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from riglib import pki


def test_leaf_is_signed_by_its_ca() -> None:
    ca = pki.new_ca("test-ca")
    leaf = pki.issue(ca, "kube-apiserver", server=True)
    leaf.cert.verify_directly_issued_by(ca.cert)
    other = pki.new_ca("other-ca")
    with pytest.raises((ValueError, exceptions.InvalidSignature)):
        leaf.cert.verify_directly_issued_by(other.cert)


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


def test_private_keys_are_written_0600_and_certificates_0644(tmp_path) -> None:
    crt, key = pki.new_ca("test-ca").write(tmp_path, "ca")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(crt.stat().st_mode) == 0o644
    assert key.read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert x509.load_pem_x509_certificate(crt.read_bytes()).subject.rfc4514_string() == "CN=test-ca"


def test_rewriting_a_public_file_as_private_tightens_its_mode(tmp_path) -> None:
    path = pki.write_file(tmp_path / "f", b"a")
    pki.write_file(path, b"b", private=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"b"


def test_only_the_ca_may_sign_certificates() -> None:
    ca = pki.new_ca("test-ca")
    leaf = pki.issue(ca, "kube-scheduler", client=True)
    ca_usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    leaf_usage = leaf.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ca_usage.key_cert_sign, ca_usage.crl_sign) == (True, True)
    assert (leaf_usage.key_cert_sign, leaf_usage.crl_sign) == (False, False)
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

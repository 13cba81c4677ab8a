# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The one certificate builder of rhizeption.core: CAs, leaf certificates, kubeconfigs.

Used by tenant control planes (plugins/module_utils/tenant_control_plane.py) and by the
test rig (hack/riglib), so both speak the same PKI.

Keys are ECDSA P-256. One costs microseconds to make where RSA 2048 costs tens of
milliseconds, which matters when a tenant needs a dozen of them and a benchmark makes
a hundred tenants; every Kubernetes component and etcd accept ECDSA for serving,
client and service-account keys. RSA is therefore not offered.

Times are always passed in (``now``) or taken in UTC, never from the local clock's
zone, so that renewal decisions are testable and the same on every host.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Tuple

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError as e:  # reported by the module that needs it (requirements.txt has it)
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = e

# datetime.UTC needs Python 3.11; module_utils may run on older ones.
UTC = datetime.timezone.utc  # noqa: UP017
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=365)
# Certificates start a little in the past to tolerate clock skew between components.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def write(self, directory: os.PathLike | str, name: str) -> Tuple[Path, Path]:
        """Write NAME.crt and NAME.key (0600) into DIRECTORY."""
        base = Path(directory)
        return (
            write_file(base / f"{name}.crt", self.cert_pem()),
            write_file(base / f"{name}.key", self.key_pem(), private=True),
        )


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    validity: datetime.timedelta,
    now: datetime.datetime | None,
) -> x509.CertificateBuilder:
    """What CA and leaf certificates share: validity, serial, and key usage."""
    start = now or utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=ca,
                crl_sign=ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def new_ca(
    common_name: str, *, validity: datetime.timedelta = CA_VALIDITY, now: datetime.datetime | None = None
) -> KeyPair:
    key = new_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key, ca=True, validity=validity, now=now)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def issue(
    ca: KeyPair,
    common_name: str,
    *,
    organizations: Iterable[str] = (),
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    server: bool = False,
    client: bool = False,
    validity: datetime.timedelta = LEAF_VALIDITY,
    now: datetime.datetime | None = None,
) -> KeyPair:
    """Issue a leaf certificate signed by CA for a server, a client, or both. A leaf never
    outlives its CA: its end is capped at the CA's."""
    if not (server or client):
        raise ValueError("a certificate is for a server, a client, or both")
    start = now or utcnow()
    validity = min(validity, not_after(ca.cert) - start)
    key = new_key()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        _builder(
            _name(common_name, organizations), ca.cert.subject, key, ca=False, validity=validity, now=start
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    sans: List[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return KeyPair(key, builder.sign(ca.key, hashes.SHA256()))


# -- reading back ---------------------------------------------------------------------
def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an ECDSA private key")
    return key


def load_keypair(cert: bytes, key: bytes) -> KeyPair:
    """A KeyPair from PEM; ValueError when either does not parse or they do not belong together."""
    pair = KeyPair(load_key(key), load_cert(cert))
    if public_key_pem(pair.key) != pair.cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError("the private key does not belong to the certificate")
    return pair


def not_after(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc


def needs_renewal(cert: x509.Certificate, now: datetime.datetime, renew_before: datetime.timedelta) -> bool:
    """True when CERT ends within RENEW_BEFORE of NOW (or already has)."""
    return not_after(cert) - renew_before <= now


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # any mismatch: name, signature, algorithm
        return False
    return True


def subject_is(cert: x509.Certificate, common_name: str, organizations: Iterable[str] = ()) -> bool:
    """True when CERT names this user (CN) and these groups (O), as Kubernetes reads them."""
    return cert.subject == _name(common_name, organizations)


def sans(cert: x509.Certificate) -> Tuple[List[str], List[str]]:
    """(DNS names, IP addresses) of CERT, sorted; empty lists when it has none."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = sorted(ext.get_values_for_type(x509.IPAddress), key=lambda a: (a.version, int(a)))
    return sorted(ext.get_values_for_type(x509.DNSName)), [str(ip) for ip in ips]


def sans_match(cert: x509.Certificate, dns_names: Iterable[str], ip_addresses: Iterable[str]) -> bool:
    """True when CERT names exactly these DNS names and IP addresses (order does not matter):
    a changed endpoint means a new serving certificate."""
    wanted_ips = sorted({ipaddress.ip_address(ip) for ip in ip_addresses}, key=lambda a: (a.version, int(a)))
    return sans(cert) == (sorted(set(dns_names)), [str(ip) for ip in wanted_ips])


# -- encodings --------------------------------------------------------------------------
def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def kubeconfig_yaml(
    server: str, ca_cert: x509.Certificate, user: str, client: KeyPair, *, cluster: str = "default"
) -> bytes:
    """A kubeconfig with the certificates inlined, as JSON (which is valid YAML). The same
    inputs give the same bytes."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority-data": b64(cert_pem(ca_cert))},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(cert_pem(client.cert)),
                    "client-key-data": b64(key_pem(client.key)),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }
    return json.dumps(doc, indent=2).encode()


def read_kubeconfig(data: bytes) -> Tuple[str, x509.Certificate, KeyPair]:
    """(server, CA certificate, client key pair) of a kubeconfig that kubeconfig_yaml wrote;
    ValueError for anything else."""
    try:
        doc = json.loads(data)
        cluster = doc["clusters"][0]["cluster"]
        user = doc["users"][0]["user"]
        ca = load_cert(base64.b64decode(cluster["certificate-authority-data"]))
        client = load_keypair(
            base64.b64decode(user["client-certificate-data"]), base64.b64decode(user["client-key-data"])
        )
        return cluster["server"], ca, client
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ValueError(f"not a kubeconfig with inline certificates: {e}") from e


def write_file(path: os.PathLike | str, data: bytes, *, private: bool = False) -> Path:
    """Write DATA to PATH; private files are created 0600 (never world-readable, not even briefly)."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return Path(path)


def csr_pem(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    organizations: Iterable[str] = (),
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
) -> bytes:
    """A PEM certificate signing request for KEY, as a CertificateSigningRequest carries it
    (the node agent's client and serving certificates)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name, organizations))
    sans: List[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

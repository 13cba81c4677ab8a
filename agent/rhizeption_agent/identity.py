"""The agent's identity the kubelet's way (TLS bootstrap): a bootstrap token gets a
client certificate for ``system:node:<name>`` through a CertificateSigningRequest, and the
node identity then asks for its serving certificate for port 10250.

- Client: signer ``kubernetes.io/kube-apiserver-client-kubelet``, subject
  ``CN=system:node:<name>, O=system:nodes``, usages digital signature + client auth. The
  controller-manager's csrapproving controller approves it by itself when the bootstrap
  token's group may create ``certificatesigningrequests/nodeclient`` (the ClusterRole
  ``system:certificates.k8s.io:certificatesigningrequests:nodeclient``), and the
  bootstrap group may create CSRs at all (``system:node-bootstrapper``).
- Serving: signer ``kubernetes.io/kubelet-serving``, the same subject, the node's
  addresses as SANs, usages digital signature + server auth. Kubernetes approves none of
  these by itself (a node could claim any address): an admin, or the ``pet_node`` role
  that knows the node's addresses, approves it (``kubectl certificate approve <csr>``).
  Until then the agent serves with a self-signed certificate.

Keys are made here and never leave the host; files are 0600.
"""

from __future__ import annotations

import base64
import datetime
import logging
from pathlib import Path
from typing import Any

from .kubeapi import Kube, KubeError

try:
    from ansible_collections.rhizeption.core.plugins.module_utils import pki
except ImportError:  # installed on a pet node next to pki.py
    import pki  # type: ignore[no-redef]

LOG = logging.getLogger("rhizeption_agent.identity")
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
RENEW_BEFORE = datetime.timedelta(days=1)


class IdentityError(Exception):
    pass


def _valid(cert_pem: bytes) -> bool:
    cert = pki.load_cert(cert_pem)
    return not pki.needs_renewal(cert, pki.utcnow(), RENEW_BEFORE)


def client_kubeconfig_valid(path: Path) -> bool:
    """A kubeconfig with an inline client certificate that is not about to expire."""
    try:
        _server, _ca, client = pki.read_kubeconfig(path.read_bytes())
    except (OSError, ValueError):
        return False
    return not pki.needs_renewal(client.cert, pki.utcnow(), RENEW_BEFORE)


def request_certificate(
    kube: Kube,
    *,
    name_prefix: str,
    signer: str,
    node_name: str,
    usages: list[str],
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    timeout: float = 300.0,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) from a CSR once it is approved and signed."""
    key = pki.new_key()
    request = pki.csr_pem(
        key,
        f"system:node:{node_name}",
        organizations=("system:nodes",),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    body = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": f"{name_prefix}-"},
        "spec": {
            "request": base64.b64encode(request).decode(),
            "signerName": signer,
            "usages": usages,
        },
    }
    created = kube.request("POST", CSR_PATH, body=body, what=f"CSR for {signer}")
    name = created["metadata"]["name"]
    LOG.info("CSR %s (%s) created; waiting for approval and signature", name, signer)
    ok, objects = kube.wait(
        CSR_PATH,
        lambda objs: _done(objs.get(name)),
        timeout,
        field_selector=f"metadata.name={name}",
    )
    csr = objects.get(name) or {}
    denied = [
        c for c in (csr.get("status") or {}).get("conditions") or [] if c["type"] in ("Denied", "Failed")
    ]
    if denied:
        raise IdentityError(f"CSR {name} was {denied[0]['type'].lower()}: {denied[0].get('message', '')}")
    if not ok:
        raise IdentityError(
            f"CSR {name} ({signer}) not signed within {timeout:.0f} s; approve it with"
            f" `kubectl certificate approve {name}`"
        )
    cert = base64.b64decode(csr["status"]["certificate"])
    return cert, pki.key_pem(key)


def _done(csr: dict[str, Any] | None) -> bool:
    if not csr:
        return False
    status = csr.get("status") or {}
    if status.get("certificate"):
        return True
    return any(c["type"] in ("Denied", "Failed") for c in status.get("conditions") or [])


def bootstrap_client(
    bootstrap_kubeconfig: str, kubeconfig: Path, node_name: str, timeout: float = 300.0
) -> None:
    """Write KUBECONFIG (0600) with a client certificate for the node, obtained with the
    bootstrap token of BOOTSTRAP_KUBECONFIG."""
    from .kubeapi import connect  # noqa: PLC0415

    kube = connect(bootstrap_kubeconfig)
    try:
        cert, key = request_certificate(
            kube,
            name_prefix=f"node-csr-{node_name}",
            signer=CLIENT_SIGNER,
            node_name=node_name,
            usages=["digital signature", "client auth"],
            timeout=timeout,
        )
    except KubeError as e:
        raise IdentityError(f"bootstrap with {bootstrap_kubeconfig}: {e}") from e
    server = kube.host
    ca_pem = _ca_of(bootstrap_kubeconfig)
    client = pki.load_keypair(cert, key)
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    pki.write_file(
        kubeconfig,
        pki.kubeconfig_yaml(
            server, pki.load_cert(ca_pem), f"system:node:{node_name}", client, cluster="default"
        ),
        private=True,
    )
    LOG.info("client certificate for system:node:%s written to %s", node_name, kubeconfig)


def _ca_of(kubeconfig: str) -> bytes:
    """The cluster CA of a kubeconfig (inline data or a file)."""
    import yaml  # noqa: PLC0415

    doc = yaml.safe_load(Path(kubeconfig).read_text())
    contexts = {c["name"]: c["context"] for c in doc.get("contexts") or []}
    cluster_name = contexts.get(doc.get("current-context"), {}).get("cluster") or doc["clusters"][0]["name"]
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == cluster_name)
    if cluster.get("certificate-authority-data"):
        return base64.b64decode(cluster["certificate-authority-data"])
    if cluster.get("certificate-authority"):
        return Path(cluster["certificate-authority"]).read_bytes()
    raise IdentityError(f"{kubeconfig} names no cluster CA")


def serving_certificate(
    kube: Kube, state_dir: str, node_name: str, *, ips: list[str], dns: list[str], timeout: float
) -> tuple[str, str] | None:
    """Paths of a kubelet-serving certificate in STATE_DIR/pki, requested when missing or
    expiring; None when it was not signed within TIMEOUT (the caller serves self-signed)."""
    folder = Path(state_dir) / "pki"
    cert_path, key_path = folder / "kubelet-serving.crt", folder / "kubelet-serving.key"
    if cert_path.exists() and key_path.exists() and _valid(cert_path.read_bytes()):
        return str(cert_path), str(key_path)
    try:
        cert, key = request_certificate(
            kube,
            name_prefix=f"csr-serving-{node_name}",
            signer=SERVING_SIGNER,
            node_name=node_name,
            usages=["digital signature", "server auth"],
            dns_names=tuple(dns),
            ip_addresses=tuple(ips),
            timeout=timeout,
        )
    except (IdentityError, KubeError) as e:
        LOG.warning("serving certificate: %s", e)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    pki.write_file(key_path, key, private=True)
    pki.write_file(cert_path, cert)
    return str(cert_path), str(key_path)

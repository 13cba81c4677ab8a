"""The pet node agent's identity the kubelet's way, on the rig: a bootstrap token, a
kube-apiserver-client-kubelet CSR approved by the controller-manager, then a
kubelet-serving CSR approved by an admin (the documented path) and served on the API port."""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import string
import time

import kubernetes
import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import pki
from petagent import free_port, running_agent, wait_for
from rhizeption_agent.node import default_ip

pytestmark = pytest.mark.slow
ALPHABET = string.ascii_lowercase + string.digits


@pytest.fixture
def bootstrap_kubeconfig(control_plane, api_client, tmp_path):
    """A bootstrap token, and the RBAC a cluster gives bootstrapping nodes (what kubeadm
    sets up): create CSRs, and have client CSRs approved by the controller-manager."""
    core = kubernetes.client.CoreV1Api(api_client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    token_id = "".join(secrets.choice(ALPHABET) for _unused in range(6))
    token_secret = "".join(secrets.choice(ALPHABET) for _unused in range(16))
    core.create_namespaced_secret(
        "kube-system",
        {
            "metadata": {"name": f"bootstrap-token-{token_id}"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "token-id": token_id,
                "token-secret": token_secret,
                "usage-bootstrap-authentication": "true",
                "expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
            },
        },
    )
    bindings = {
        f"pet-bootstrap-{token_id}": "system:node-bootstrapper",
        f"pet-autoapprove-{token_id}": "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
    }
    for name, role in bindings.items():
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [
                    {"kind": "Group", "name": "system:bootstrappers", "apiGroup": "rbac.authorization.k8s.io"}
                ],
            }
        )
    ca = (control_plane.workdir / "ca.crt").read_bytes()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "rig",
                "cluster": {
                    "server": control_plane.server,
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": "bootstrap", "user": {"token": f"{token_id}.{token_secret}"}}],
        "contexts": [{"name": "rig", "context": {"cluster": "rig", "user": "bootstrap"}}],
        "current-context": "rig",
    }
    path = tmp_path / "bootstrap.kubeconfig"
    pki.write_file(path, json.dumps(doc).encode(), private=True)
    try:
        yield path
    finally:
        for name in bindings:
            rbac.delete_cluster_role_binding(name)
        core.delete_namespaced_secret(f"bootstrap-token-{token_id}", "kube-system")


def test_tls_bootstrap_gets_client_and_serving_certificates(
    control_plane, api_client, bootstrap_kubeconfig, tmp_path
):
    host_ip = default_ip()
    port = free_port()
    kubeconfig = tmp_path / "state" / "node.kubeconfig"
    certs = kubernetes.client.CertificatesV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    with running_agent(
        control_plane,
        tmp_path,
        kubeconfig=str(kubeconfig),
        bootstrap_kubeconfig=str(bootstrap_kubeconfig),
        internal_ip=host_ip,
        server={
            "enabled": True,
            "address": host_ip,
            "port": port,
            "client_ca_file": str(control_plane.workdir / "ca.crt"),
            "request_serving_certificate": True,
        },
    ) as agent:
        # The client certificate: CSR auto-approved, signed, written 0600, and the Node is its work.
        wait_for("the Node", lambda: _node(core, agent.node_name), 90, agent=agent)
        assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
        _server, ca, client = pki.read_kubeconfig(kubeconfig.read_bytes())
        assert pki.subject_is(client.cert, f"system:node:{agent.node_name}", ("system:nodes",))
        assert pki.issued_by(client.cert, pki.load_cert((control_plane.workdir / "ca.crt").read_bytes()))
        csrs = certs.list_certificate_signing_request().items
        client_csr = [
            c
            for c in csrs
            if c.spec.signer_name == "kubernetes.io/kube-apiserver-client-kubelet"
            and c.metadata.name.startswith(f"node-csr-{agent.node_name}")
        ]
        assert client_csr and client_csr[0].spec.username.startswith("system:bootstrap:")
        assert any(c.type == "Approved" for c in client_csr[0].status.conditions)

        # The serving certificate waits for an admin: approve it as the docs say.
        serving = wait_for(
            "the kubelet-serving CSR",
            lambda: [
                c
                for c in certs.list_certificate_signing_request().items
                if c.spec.signer_name == "kubernetes.io/kubelet-serving"
                and c.spec.username == f"system:node:{agent.node_name}"
            ],
            60,
            agent=agent,
        )[0]
        assert not serving.status.certificate, "nobody approved it yet"
        self_signed = _served_cert(host_ip, port)
        assert not pki.issued_by(self_signed, ca)
        serving.status.conditions = [
            kubernetes.client.V1CertificateSigningRequestCondition(
                type="Approved",
                status="True",
                reason="TestApproval",
                message="approved by the test as an admin",
            )
        ]
        certs.replace_certificate_signing_request_approval(serving.metadata.name, serving)
        served = wait_for(
            "the signed serving certificate in use",
            lambda: (c := _served_cert(host_ip, port)) and pki.issued_by(c, ca) and c,
            60,
            agent=agent,
        )
        assert pki.subject_is(served, f"system:node:{agent.node_name}", ("system:nodes",))
        assert host_ip in pki.sans(served)[1]
        # The Node authorizer's limits hold for this identity: no Secret its Pods do not use.
        node_client = kubernetes.config.new_client_from_config(str(kubeconfig))
        with pytest.raises(kubernetes.client.ApiException) as denied:
            kubernetes.client.CoreV1Api(node_client).list_namespaced_secret("kube-system")
        assert denied.value.status == 403
        node_client.close()


def _node(core, name):
    try:
        node = core.read_node(name)
    except kubernetes.client.ApiException:
        return None
    return node if node.status.conditions else None


def _served_cert(host: str, port: int):
    try:
        pem = ssl.get_server_certificate((host, port), timeout=5)
    except OSError:
        return None
    return pki.load_cert(pem.encode())

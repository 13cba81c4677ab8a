"""Certificate renewal on a tenant that really runs on the rig's host cluster: certificates
and kubeconfigs brought near their end (re-signed by the tenant's own CAs, same subject and
SANs, ten minutes left) are renewed by the next run of the module, only they, the Pods that
mount them roll, and the tenant keeps its data and its admin kubeconfig works."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import ssl
import time
from urllib.parse import urlsplit

import kubernetes
import pytest
from ansible_collections.rhizeption.core.plugins.module_utils import pki
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tenanthost import TENANT_LABEL, apply, etcd_volume, retry, tenant_client

NAMESPACE = "tenants-renewal"
TENANT = "renew"
VALIDITY = datetime.timedelta(hours=720)
SPEC = {"version": "v1.34.4", "exposure": {"type": "NodePort"}, "certificateValidity": "720h"}
LEFT = datetime.timedelta(minutes=10)
# Secrets whose certificate this test brings near its end, and the CA Secret that signs each.
AGED_CERTS = {
    "apiserver": "ca",  # the serving certificate
    "apiserver-kubelet-client": "ca",
    "apiserver-etcd-client": "etcd-ca",
}
AGED_KUBECONFIGS = ("admin-kubeconfig", "controller-manager-kubeconfig", "scheduler-kubeconfig")
# Components whose Pods mount an aged Secret (and so must roll), and the one that mounts none.
ROLLED = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
KEPT = "etcd"


@pytest.fixture(scope="module")
def tenants_namespace() -> str:
    return NAMESPACE


def _decode(secret, key: str) -> bytes:
    return base64.b64decode(secret.data[key])


def _ca(core, role: str) -> pki.KeyPair:
    secret = core.read_namespaced_secret(f"{TENANT}-{role}", NAMESPACE)
    return pki.load_keypair(_decode(secret, "tls.crt"), _decode(secret, "tls.key"))


def _short_lived(ca: pki.KeyPair, cert: x509.Certificate) -> pki.KeyPair:
    """A new key and certificate like CERT (subject, SANs, usages), signed by CA, that ends in LEFT."""
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    dns, ips = pki.sans(cert)
    pair = pki.issue(
        ca,
        cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
        organizations=[a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)],
        dns_names=dns,
        ip_addresses=ips,
        server=ExtendedKeyUsageOID.SERVER_AUTH in usages,
        client=ExtendedKeyUsageOID.CLIENT_AUTH in usages,
        validity=LEFT,
    )
    assert pair.cert.subject == cert.subject and pki.sans(pair.cert) == (dns, ips)
    return pair


def _age(core) -> dict[str, x509.Certificate]:
    """Replace the AGED_* certificates with short-lived ones; Secret name -> the certificate put there."""
    put = {}
    for role, ca_role in AGED_CERTS.items():
        name = f"{TENANT}-{role}"
        old = pki.load_cert(_decode(core.read_namespaced_secret(name, NAMESPACE), "tls.crt"))
        pair = _short_lived(_ca(core, ca_role), old)
        data = {"tls.crt": pair.cert_pem(), "tls.key": pair.key_pem()}
        core.patch_namespaced_secret(
            name, NAMESPACE, {"data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
        )
        put[name] = pair.cert
    ca = _ca(core, "ca")
    for role in AGED_KUBECONFIGS:
        name = f"{TENANT}-{role}"
        document = _decode(core.read_namespaced_secret(name, NAMESPACE), "kubeconfig")
        server, _ca_cert, client = pki.read_kubeconfig(document)
        pair = _short_lived(ca, client.cert)
        user = json.loads(document)["users"][0]["name"]
        new = pki.kubeconfig_yaml(server, ca.cert, user, pair, cluster=TENANT)
        patch = {"data": {"kubeconfig": base64.b64encode(new).decode()}}
        core.patch_namespaced_secret(name, NAMESPACE, patch)
        put[name] = pair.cert
    return put


def _cert_in(secret) -> x509.Certificate:
    if "kubeconfig" in secret.data:
        return pki.read_kubeconfig(_decode(secret, "kubeconfig"))[2].cert
    return pki.load_cert(_decode(secret, "tls.crt"))


def _secrets(core) -> dict[str, dict]:
    items = core.list_namespaced_secret(NAMESPACE, label_selector=f"{TENANT_LABEL}={TENANT}").items
    return {s.metadata.name: s for s in items}


def _pods(core) -> dict[str, set[str]]:
    """Component -> UIDs of its Pods that are not being deleted."""
    out: dict[str, set[str]] = {}
    for pod in core.list_namespaced_pod(NAMESPACE, label_selector=f"{TENANT_LABEL}={TENANT}").items:
        if pod.metadata.deletion_timestamp is None:
            component = pod.metadata.labels["app.kubernetes.io/name"]
            out.setdefault(component, set()).add(pod.metadata.uid)
    return out


def _not_ready(core) -> dict[str, str]:
    """Pod name -> why, for the tenant's Pods (not being deleted) that are not Ready."""
    out = {}
    for p in core.list_namespaced_pod(NAMESPACE, label_selector=f"{TENANT_LABEL}={TENANT}").items:
        if p.metadata.deletion_timestamp is not None:
            continue
        if not any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []):
            out[p.metadata.name] = "; ".join(
                f"{cs.name}: restarts {cs.restart_count}, {cs.state.to_dict()}"
                for cs in p.status.container_statuses or []
            )
    return out


@contextlib.contextmanager
def _tenant(kubeconfig):
    """The tenant's core API through KUBECONFIG."""
    client = tenant_client(kubeconfig)
    try:
        yield kubernetes.client.CoreV1Api(client)
    finally:
        client.close()


def _assert_only_the_aged_renewed(aged: dict, before: dict, after: dict) -> None:
    """Exactly the aged ones are new: a full validity from now, same identity, same CA."""
    now = pki.utcnow()
    assert set(after) == set(before)
    for name, secret in after.items():
        if name not in aged:
            assert secret.data == before[name].data, f"{name} changed"
            continue
        cert = _cert_in(secret)
        assert cert != aged[name], f"{name} was not renewed"
        assert cert.subject == aged[name].subject and pki.sans(cert) == pki.sans(aged[name])
        assert abs(pki.not_after(cert) - (now + VALIDITY)) < datetime.timedelta(minutes=10), name
        signer = AGED_CERTS.get(name.removeprefix(f"{TENANT}-"), "ca")
        assert pki.issued_by(cert, pki.load_cert(_decode(after[f"{TENANT}-{signer}"], "tls.crt"))), name


def _assert_rolled(core, pods_before: dict) -> dict[str, str]:
    """The Pods that mount a renewed Secret were replaced when the run said Ready (no old
    Pod left); etcd, which mounts none, kept its Pod. Returns the Pods not Ready at that
    moment (a readiness probe may lag the Deployment's count), after waiting for them."""
    pods_after = _pods(core)
    assert all(pods_after.get(c) and not pods_after[c] & pods_before[c] for c in ROLLED), (
        pods_before,
        pods_after,
    )
    assert pods_after[KEPT] == pods_before[KEPT]
    lagging = _not_ready(core)
    deadline = time.monotonic() + 120
    while _not_ready(core) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _not_ready(core), _not_ready(core)
    assert _pods(core) == pods_after
    return lagging


def _assert_would_renew_only(would: dict, aged: dict, before: dict, core) -> None:
    assert would.get("failed") is not True, would.get("msg")
    assert would["changed"] is True
    assert {u for u in would["updated"] if u.startswith("Secret ")} == {f"Secret {n}" for n in aged}
    assert set(would["renewed"]) == {f"Secret {n}" for n in aged}
    assert {n: s.data for n, s in _secrets(core).items()} == {n: s.data for n, s in before.items()}


def _noting(call, core, hiccups: list[str]):
    """CALL, noting in HICCUPS each failure and the tenant's Pods not Ready then (the
    apiserver may drop out of its Service for a moment after a roll on a loaded node)."""

    def noted():
        try:
            return call()
        except Exception as e:
            hiccups.append(f"{type(e).__name__}: {str(e)[:80]}; not Ready: {_not_ready(core)}")
            raise

    return noted


def _served_certificate(core, url: str, hiccups: list[str]) -> str:
    """The certificate the apiserver at URL serves (PEM)."""
    endpoint = urlsplit(url)
    address = (endpoint.hostname, endpoint.port)
    return retry(_noting(lambda: ssl.get_server_certificate(address), core, hiccups))


def test_certificates_near_their_end_are_renewed_on_a_running_tenant(host, run_playbook):
    core = host["core"]
    kubeconfig = host["folder"] / f"{TENANT}.kubeconfig"
    task = dict(
        name=TENANT,
        namespace=NAMESPACE,
        spec=SPEC,
        wait=True,
        wait_timeout=300,
        admin_kubeconfig_path=str(kubeconfig),
    )
    etcd_volume(host, TENANT)
    try:
        made = apply(run_playbook, host, **task)
        assert made.get("failed") is not True, made.get("msg")
        assert made["phase"] == "Ready"
        with _tenant(kubeconfig) as tenant:
            retry(
                lambda: tenant.create_namespaced_config_map(
                    "default", {"metadata": {"name": "kept"}, "data": {"a": "1"}}
                )
            )

        aged = _age(core)
        before = _secrets(core)
        pods_before = _pods(core)
        assert set(pods_before) == {*ROLLED, KEPT}, pods_before

        # Check mode names what a scheduled run would renew, and renews nothing.
        would = apply(run_playbook, host, "--check", **task)
        _assert_would_renew_only(would, aged, before, core)

        started = time.monotonic()
        renewed = apply(run_playbook, host, **task)
        run_seconds = time.monotonic() - started
        assert renewed.get("failed") is not True, renewed.get("msg")
        assert renewed["changed"] is True and renewed["phase"] == "Ready"
        assert renewed["admin_kubeconfig_written"] is True
        assert {u for u in renewed["updated"] if u.startswith("Secret ")} == {f"Secret {n}" for n in aged}
        assert set(renewed["renewed"]) == {f"Secret {n}" for n in aged}
        workloads = {u for u in renewed["updated"] if not u.startswith("Secret ")}
        assert workloads == {f"Deployment {TENANT}-{c.removeprefix('kube-')}" for c in ROLLED}, workloads

        # Ready means rolled: the wait followed the new Pods, not the old ones still serving.
        lagging = _assert_rolled(core, pods_before)
        after = _secrets(core)
        _assert_only_the_aged_renewed(aged, before, after)

        # The admin kubeconfig file holds the renewed client certificate, and it works: the
        # apiserver serves its renewed certificate and still has the tenant's data.
        _server, _ca_cert, client_pair = pki.read_kubeconfig(kubeconfig.read_bytes())
        assert client_pair.cert == _cert_in(after[f"{TENANT}-admin-kubeconfig"])
        hiccups: list[str] = []
        with _tenant(kubeconfig) as tenant:
            kept = retry(_noting(lambda: tenant.read_namespaced_config_map("kept", "default"), core, hiccups))
        assert kept.data == {"a": "1"}
        ready_seconds = time.monotonic() - started
        served = _served_certificate(core, renewed["endpoint"], hiccups)
        assert pki.load_cert(served.encode()) == _cert_in(after[f"{TENANT}-apiserver"])

        again = apply(run_playbook, host, **task)
        assert again.get("failed") is not True, again.get("msg")
        assert again["changed"] is False, again["updated"]
        assert again["renewed"] == []
        # The next renewal falls due a third of the validity before the oldest certificates'
        # end: those made with the tenant, minutes ago.
        next_due = datetime.datetime.fromisoformat(again["next_renewal"])
        assert abs(next_due - (pki.utcnow() + VALIDITY * 2 / 3)) < datetime.timedelta(minutes=15)
        print(
            f"renewed {sorted(aged)}; run {run_seconds:.1f} s, data read back"
            f" {ready_seconds:.1f} s after the run started; not Ready when the run returned:"
            f" {lagging}; hiccups after: {hiccups}"
        )
    finally:
        gone = apply(run_playbook, host, name=TENANT, namespace=NAMESPACE, state="absent", wait_timeout=180)
        assert gone.get("failed") is not True, gone.get("msg")

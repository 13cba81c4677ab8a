"""TenantControlPlane: validation, SANs, PKI Secrets, rendered workloads and status.
Pure functions, no cluster (server-side checks of the same objects belong to integration)."""

from __future__ import annotations

import base64
import copy
import datetime
import json
import re

import pytest
import yaml
from ansible_collections.rhizeption.core.plugins.module_utils import pki
from ansible_collections.rhizeption.core.plugins.module_utils import tenant_control_plane as tcpmod
from ansible_collections.rhizeption.core.plugins.module_utils.tenant_control_plane import (
    TENANT_LABEL,
    TenantControlPlaneError,
)

NOW = datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.UTC)
NOW_TEXT = "2026-11-23T10:00:00Z"
LATER_TEXT = "2026-11-23T10:05:00Z"


def tcp(name="blue", namespace="tenants", **spec):
    return {
        "apiVersion": "hn.rhizeption.io/v1alpha1",
        "kind": "TenantControlPlane",
        "metadata": {"name": name, "namespace": namespace, "uid": f"{name}-uid", "generation": 2},
        "spec": {"version": "v1.34.4", **spec},
    }


def by_name(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def existing(secrets):
    return {s["metadata"]["name"]: s["data"] for s in secrets}


def cert_of(secrets, name, key="tls.crt"):
    return pki.load_cert(base64.b64decode(by_name(secrets)[("Secret", name)]["data"][key]))


def args_of(objects, kind, name):
    return by_name(objects)[(kind, name)]["spec"]["template"]["spec"]["containers"][0]["args"]


def flag(args, name):
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {args}"
    return values[0]


# -- one list of versions -----------------------------------------------------------------
def test_built_versions_match_versions_env_and_the_crd(repo):
    env = dict(
        line.split("=", 1)
        for line in (repo / "hack/versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    built = tcpmod.BUILT_VERSIONS
    assert built == {
        env["KUBERNETES_PREVIOUS_VERSION"]: {"etcd": env["ETCD_VERSION"]},
        env["KUBERNETES_VERSION"]: {"etcd": env["ETCD_VERSION"]},
    }
    crds = yaml.safe_load((repo / "roles/crds/files/crds.yaml").read_text())["items"]
    crd = next(c for c in crds if c["spec"]["names"]["kind"] == "TenantControlPlane")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["properties"]["version"]["enum"] == list(tcpmod.BUILT_VERSIONS)
    assert crd["spec"]["names"]["shortNames"] == ["tcp"]
    assert schema["properties"]["status"]["properties"]["phase"]["enum"] == list(tcpmod.PHASES)


# -- SANs and endpoint ----------------------------------------------------------------------
def test_sans_name_every_way_the_apiserver_is_reached():
    dns, ips = tcpmod.sans(tcp())
    assert {"blue", "blue.tenants", "blue.tenants.svc", "blue.tenants.svc.cluster.local"} <= set(dns)
    assert {"kubernetes", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} <= set(dns)
    assert "localhost" in dns
    # loopback for probes, and the tenant's own `kubernetes` Service address
    assert ips == ["10.96.0.1", "127.0.0.1"]
    assert dns == sorted(set(dns))


def test_sans_add_the_cluster_ip_the_load_balancer_and_extra_sans():
    service = {
        "spec": {"clusterIP": "10.0.0.15", "clusterIPs": ["10.0.0.15"]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}, {"hostname": "lb.example.com"}]}},
    }
    obj = tcp(exposure={"type": "LoadBalancer", "extraSANs": ["api.example.com", "2001:db8::1", "192.0.2.1"]})
    dns, ips = tcpmod.sans(obj, service, node_addresses=["198.51.100.1"])
    assert {"lb.example.com", "api.example.com"} <= set(dns)
    assert ips == ["10.0.0.15", "10.96.0.1", "127.0.0.1", "192.0.2.1", "203.0.113.5", "2001:db8::1"]


def test_node_addresses_count_only_with_a_node_port():
    nodes = ["198.51.100.1", "node-a.example.com"]
    dns, ips = tcpmod.sans(tcp(exposure={"type": "NodePort"}), node_addresses=nodes)
    assert "198.51.100.1" in ips
    assert "node-a.example.com" in dns
    dns, ips = tcpmod.sans(tcp(), node_addresses=nodes)
    assert "198.51.100.1" not in ips
    assert "node-a.example.com" not in dns


def test_the_tenant_kubernetes_service_address_follows_the_service_cidr():
    assert "10.100.0.1" in tcpmod.sans(tcp(serviceCIDR="10.100.0.0/16"))[1]


def test_endpoint_by_exposure():
    assert tcpmod.endpoint(tcp()) == "https://blue.tenants.svc:6443"
    node_port = tcp(exposure={"type": "NodePort"})
    service = {"spec": {"ports": [{"port": 6443, "nodePort": 31234}]}}
    assert tcpmod.endpoint(node_port, service, ["192.0.2.4"]) == "https://192.0.2.4:31234"
    # no node known yet: the Service's name still works inside the host cluster
    assert tcpmod.endpoint(node_port, service) == "https://blue.tenants.svc:6443"
    lb = tcp(exposure={"type": "LoadBalancer"})
    assert tcpmod.endpoint(lb, {"status": {}}) == "https://blue.tenants.svc:6443"
    ready = {"status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::5"}]}}}
    assert tcpmod.endpoint(lb, ready) == "https://[2001:db8::5]:6443"


# -- PKI --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def first_pki():
    return tcpmod.render_pki(tcp(), {}, NOW)


def test_pki_secrets_are_typed_labelled_and_owned(first_pki):
    names = {s["metadata"]["name"]: s["type"] for s in first_pki}
    assert set(names) == set(tcpmod.secret_names(tcp()).values())
    assert names["blue-apiserver"] == "kubernetes.io/tls"
    assert names["blue-sa"] == names["blue-admin-kubeconfig"] == "Opaque"
    for secret in first_pki:
        md = secret["metadata"]
        assert md["namespace"] == "tenants"
        assert md["labels"][TENANT_LABEL] == "blue"
        assert md["labels"]["app.kubernetes.io/managed-by"] == "rhizeption.core"
        assert md["ownerReferences"] == [
            {
                "apiVersion": "hn.rhizeption.io/v1alpha1",
                "kind": "TenantControlPlane",
                "name": "blue",
                "uid": "blue-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_pki_chains_and_names(first_pki):
    ca, etcd_ca = cert_of(first_pki, "blue-ca"), cert_of(first_pki, "blue-etcd-ca")
    front_proxy_ca = cert_of(first_pki, "blue-front-proxy-ca")
    apiserver = cert_of(first_pki, "blue-apiserver")
    assert pki.issued_by(apiserver, ca)
    assert pki.sans(apiserver) == tcpmod.sans(tcp())
    assert pki.not_after(apiserver) == NOW + datetime.timedelta(hours=8760)
    assert pki.issued_by(cert_of(first_pki, "blue-apiserver-kubelet-client"), ca)
    assert pki.issued_by(cert_of(first_pki, "blue-front-proxy-client"), front_proxy_ca)
    for name in ("blue-etcd-server", "blue-etcd-peer", "blue-apiserver-etcd-client"):
        assert pki.issued_by(cert_of(first_pki, name), etcd_ca)
        assert cert_of(first_pki, name, "ca.crt") == etcd_ca
    assert "*.blue-etcd-peers.tenants.svc" in pki.sans(cert_of(first_pki, "blue-etcd-peer"))[0]
    assert "blue-etcd.tenants.svc" in pki.sans(cert_of(first_pki, "blue-etcd-server"))[0]


def test_admin_kubeconfig_is_cluster_admin_of_the_tenant(first_pki):
    data = base64.b64decode(by_name(first_pki)[("Secret", "blue-admin-kubeconfig")]["data"]["kubeconfig"])
    server, ca, client = pki.read_kubeconfig(data)
    assert server == "https://blue.tenants.svc:6443"
    assert ca == cert_of(first_pki, "blue-ca")
    assert pki.issued_by(client.cert, ca)
    assert pki.subject_is(client.cert, "kubernetes-admin", ("system:masters",))
    cm = base64.b64decode(
        by_name(first_pki)[("Secret", "blue-controller-manager-kubeconfig")]["data"]["kubeconfig"]
    )
    assert pki.subject_is(pki.read_kubeconfig(cm)[2].cert, "system:kube-controller-manager")


def test_a_second_run_returns_the_same_bytes(first_pki):
    again = tcpmod.render_pki(tcp(), existing(first_pki), NOW + datetime.timedelta(days=30))
    assert again == first_pki


def test_only_what_is_missing_is_generated(first_pki):
    kept = existing(first_pki)
    del kept["blue-apiserver"]
    kept["blue-scheduler-kubeconfig"] = {"kubeconfig": base64.b64encode(b"garbage").decode()}
    again = existing(tcpmod.render_pki(tcp(), kept, NOW))
    changed = {name for name in again if again[name] != existing(first_pki)[name]}
    assert changed == {"blue-apiserver", "blue-scheduler-kubeconfig"}


def test_certificates_near_expiry_are_renewed_and_the_rest_kept(first_pki):
    # A year's certificates are renewed in their last third; the ten-year CAs stay.
    later = NOW + datetime.timedelta(days=250)
    renewed = existing(tcpmod.render_pki(tcp(), existing(first_pki), later))
    before = existing(first_pki)
    unchanged = {name for name in renewed if renewed[name] == before[name]}
    assert unchanged == {"blue-ca", "blue-etcd-ca", "blue-front-proxy-ca", "blue-sa"}
    apiserver = pki.load_cert(base64.b64decode(renewed["blue-apiserver"]["tls.crt"]))
    assert pki.not_after(apiserver) == later + datetime.timedelta(hours=8760)
    # kubeconfigs' client certificates are renewed too, not only the serving ones
    admin = pki.read_kubeconfig(base64.b64decode(renewed["blue-admin-kubeconfig"]["kubeconfig"]))[2]
    assert pki.not_after(admin.cert) == later + datetime.timedelta(hours=8760)
    assert tcpmod.render_pki(tcp(), renewed, later) == tcpmod.render_pki(tcp(), renewed, later)


def test_what_is_due_is_what_renewal_renews_and_the_next_renewal_is_a_third_before_the_end(first_pki):
    before = existing(first_pki)
    assert tcpmod.due_for_renewal(tcp(), before, NOW) == []
    third = datetime.timedelta(hours=8760) / 3
    first_due = tcpmod.next_renewal(tcp(), first_pki)
    assert first_due == NOW + datetime.timedelta(hours=8760) - third
    # A minute before, nothing is due; at that time every leaf and kubeconfig is, the CAs
    # and the service-account key are not, and they are exactly what render_pki renews.
    assert tcpmod.due_for_renewal(tcp(), before, first_due - datetime.timedelta(minutes=1)) == []
    due = tcpmod.due_for_renewal(tcp(), before, first_due)
    renewed = existing(tcpmod.render_pki(tcp(), before, first_due))
    assert set(due) == {n for n in renewed if renewed[n] != before[n]}
    assert set(due) == set(tcpmod.secret_names(tcp()).values()) - {
        "blue-ca",
        "blue-etcd-ca",
        "blue-front-proxy-ca",
        "blue-sa",
    }
    renewed_pki = tcpmod.render_pki(tcp(), before, first_due)
    assert tcpmod.next_renewal(tcp(), renewed_pki) == first_due + datetime.timedelta(hours=8760) - third


def test_only_the_aged_certificate_is_due(first_pki):
    """One Secret's certificate replaced by a short-lived one of the same CA: only it is due."""
    aged = existing(first_pki)
    ca_data = aged["blue-ca"]
    ca = pki.load_keypair(base64.b64decode(ca_data["tls.crt"]), base64.b64decode(ca_data["tls.key"]))
    short = pki.issue(
        ca,
        "kube-apiserver-kubelet-client",
        organizations=["system:masters"],
        client=True,
        validity=datetime.timedelta(minutes=10),
        now=NOW,
    )
    aged["blue-apiserver-kubelet-client"] = {
        **aged["blue-apiserver-kubelet-client"],
        "tls.crt": base64.b64encode(short.cert_pem()).decode(),
        "tls.key": base64.b64encode(short.key_pem()).decode(),
    }
    assert tcpmod.due_for_renewal(tcp(), aged, NOW) == ["blue-apiserver-kubelet-client"]
    assert tcpmod.next_renewal(tcp(), [tcpmod._secret(tcp(), n, "Opaque", d) for n, d in aged.items()]) < NOW


def test_certificate_validity_is_the_tenants(first_pki):
    short = tcp(certificateValidity="24h")
    secrets = tcpmod.render_pki(short, {}, NOW)
    assert pki.not_after(cert_of(secrets, "blue-apiserver")) == NOW + datetime.timedelta(hours=24)
    assert pki.not_after(cert_of(secrets, "blue-ca")) == NOW + pki.CA_VALIDITY
    # renewed in the last third: 8 hours before the end, not earlier
    assert tcpmod.render_pki(short, existing(secrets), NOW + datetime.timedelta(hours=15)) == secrets
    renewed = tcpmod.render_pki(short, existing(secrets), NOW + datetime.timedelta(hours=17))
    assert cert_of(renewed, "blue-apiserver") != cert_of(secrets, "blue-apiserver")


def test_a_new_endpoint_reissues_the_serving_certificate_only(first_pki):
    service = {"spec": {"clusterIP": "10.0.0.15"}}
    after = existing(tcpmod.render_pki(tcp(), existing(first_pki), NOW, service=service))
    before = existing(first_pki)
    assert {name for name in after if after[name] != before[name]} == {"blue-apiserver"}
    assert "10.0.0.15" in pki.sans(pki.load_cert(base64.b64decode(after["blue-apiserver"]["tls.crt"])))[1]


def test_a_load_balancer_address_moves_the_admin_kubeconfig_but_keeps_its_identity():
    lb = tcp(exposure={"type": "LoadBalancer"})
    first = tcpmod.render_pki(lb, {}, NOW)
    service = {
        "spec": {"clusterIP": "10.0.0.15"},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}},
    }
    after = existing(tcpmod.render_pki(lb, existing(first), NOW, service=service))
    before = existing(first)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {"blue-apiserver", "blue-admin-kubeconfig"}
    server, _ca, client = pki.read_kubeconfig(base64.b64decode(after["blue-admin-kubeconfig"]["kubeconfig"]))
    assert server == "https://203.0.113.5:6443"
    old_client = pki.read_kubeconfig(base64.b64decode(before["blue-admin-kubeconfig"]["kubeconfig"]))[2]
    assert client.cert == old_client.cert


def test_a_lost_ca_reissues_everything_it_signed_but_not_the_service_account_key(first_pki):
    kept = existing(first_pki)
    del kept["blue-ca"]
    after = existing(tcpmod.render_pki(tcp(), kept, NOW))
    before = existing(first_pki)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {
        "blue-ca",
        "blue-apiserver",
        "blue-apiserver-kubelet-client",
        "blue-admin-kubeconfig",
        "blue-controller-manager-kubeconfig",
        "blue-scheduler-kubeconfig",
    }
    assert pki.issued_by(
        pki.load_cert(base64.b64decode(after["blue-apiserver"]["tls.crt"])),
        pki.load_cert(base64.b64decode(after["blue-ca"]["tls.crt"])),
    )


def test_a_shared_datastore_has_no_etcd_pki():
    shared = tcp(datastore={"type": "shared", "shared": {"endpoints": ["https://etcd.ds.svc:2379"]}})
    names = {s["metadata"]["name"] for s in tcpmod.render_pki(shared, {}, NOW)}
    assert not {n for n in names if "etcd" in n}
    assert "blue-apiserver" in names


def test_private_keys_appear_only_in_secret_data(first_pki):
    keys = [v for s in first_pki for k, v in s["data"].items() if k.endswith(".key") or k == "kubeconfig"]
    assert len(keys) >= 12
    objects = tcpmod.render(tcp(replicas=3), pki_secrets=first_pki)
    status = tcpmod.derive_status(tcp(), objects, NOW_TEXT)
    outside = json.dumps([objects, status, [{k: v for k, v in s.items() if k != "data"} for s in first_pki]])
    assert "PRIVATE KEY" not in outside
    for key in keys:
        assert key not in outside
        assert key[:40] not in outside
    for secret in first_pki:
        for value in secret["data"].values():
            assert "PRIVATE KEY" not in value  # base64 in data, never clear text


# -- render -----------------------------------------------------------------------------------
def test_dedicated_etcd_objects_in_apply_order():
    objects = tcpmod.render(tcp())
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Service", "blue-etcd-peers"),
        ("Service", "blue-etcd"),
        ("StatefulSet", "blue-etcd"),
        ("NetworkPolicy", "blue-etcd"),
        ("Deployment", "blue-apiserver"),
        ("Service", "blue"),
        ("Deployment", "blue-controller-manager"),
        ("Deployment", "blue-scheduler"),
    ]


def test_every_object_is_labelled_and_owned_and_selectors_match_templates():
    for obj in tcpmod.render(tcp(replicas=3)):
        md = obj["metadata"]
        assert md["labels"][TENANT_LABEL] == "blue", obj["kind"]
        assert md["labels"]["app.kubernetes.io/instance"] == "blue"
        assert md["labels"]["app.kubernetes.io/part-of"] == "rhizeption"
        assert md["ownerReferences"][0]["uid"] == "blue-uid"
        assert md["ownerReferences"][0]["controller"] is True
        spec = obj["spec"]
        if "template" in spec:
            template_labels = spec["template"]["metadata"]["labels"]
            assert spec["selector"]["matchLabels"].items() <= template_labels.items()
            assert "app.kubernetes.io/version" not in spec["selector"]["matchLabels"]


def test_rendering_needs_an_existing_tenant_control_plane():
    obj = tcp()
    del obj["metadata"]["uid"]
    with pytest.raises(TenantControlPlaneError, match=r"^metadata\.uid: "):
        tcpmod.render(obj)


def test_etcd_statefulset_tls_everywhere_and_persistent_data():
    objects = tcpmod.render(
        tcp(replicas=3, datastore={"type": "etcd", "etcd": {"storage": "5Gi", "storageClassName": "fast"}})
    )
    sts = by_name(objects)[("StatefulSet", "blue-etcd")]
    args = args_of(objects, "StatefulSet", "blue-etcd")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "blue-etcd-peers"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert flag(args, "initial-cluster") == ",".join(
        f"blue-etcd-{i}=https://blue-etcd-{i}.blue-etcd-peers.tenants.svc:2380" for i in range(3)
    )
    assert flag(args, "initial-cluster-token") == "tenants-blue"
    assert flag(args, "listen-client-urls").startswith("https://")
    assert flag(args, "listen-peer-urls").startswith("https://")
    assert flag(args, "client-cert-auth") == flag(args, "peer-client-cert-auth") == "true"
    assert flag(args, "cert-file") == "/etc/kubernetes/pki/etcd-server/tls.crt"
    assert flag(args, "peer-cert-file") == "/etc/kubernetes/pki/etcd-peer/tls.crt"
    # peers are admitted by CA and CN: their Pod IPs are not in any certificate
    assert flag(args, "peer-skip-client-san-verification") == "true"
    assert flag(args, "peer-cert-allowed-cn") == "blue-etcd-peer"
    peer_cert = cert_of(tcpmod.render_pki(tcp(), {}, NOW), "blue-etcd-peer")
    assert pki.subject_is(peer_cert, "blue-etcd-peer")
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "data", "mountPath": "/var/lib/etcd"} in container["volumeMounts"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    headless = by_name(objects)[("Service", "blue-etcd-peers")]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert by_name(objects)[("PodDisruptionBudget", "blue-etcd")]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(("replicas", "members"), [(1, 1), (2, 3), (3, 3), (4, 5), (5, 5)])
def test_a_dedicated_etcd_has_an_odd_number_of_members(replicas, members):
    assert tcpmod.etcd_members(tcp(replicas=replicas)) == members


def test_only_the_tenants_apiserver_reaches_its_etcd():
    objects = tcpmod.render(tcp())
    policy = by_name(objects)[("NetworkPolicy", "blue-etcd")]["spec"]
    assert policy["podSelector"]["matchLabels"] == {TENANT_LABEL: "blue", "app.kubernetes.io/name": "etcd"}
    assert policy["policyTypes"] == ["Ingress"]
    clients, backups, peers = policy["ingress"]
    assert clients["from"] == [
        {"podSelector": {"matchLabels": {TENANT_LABEL: "blue", "app.kubernetes.io/name": "kube-apiserver"}}}
    ]
    assert clients["ports"] == [{"protocol": "TCP", "port": 2379}]
    # and the one-shot Pods of a backup (tenant_backup.py), on the client port only
    assert backups["from"] == [
        {"podSelector": {"matchLabels": {TENANT_LABEL: "blue", "app.kubernetes.io/name": "etcd-backup"}}}
    ]
    assert backups["ports"] == clients["ports"]
    assert peers["from"] == [{"podSelector": {"matchLabels": policy["podSelector"]["matchLabels"]}}]
    # no namespaceSelector: nothing outside the tenant's namespace matches
    assert "namespaceSelector" not in json.dumps(policy)


def test_apiserver_flags_that_matter():
    objects = tcpmod.render(tcp(serviceCIDR="10.100.0.0/16"))
    args = args_of(objects, "Deployment", "blue-apiserver")
    assert flag(args, "etcd-servers") == "https://blue-etcd.tenants.svc:2379"
    assert flag(args, "etcd-certfile") == "/etc/kubernetes/pki/apiserver-etcd-client/tls.crt"
    assert not [a for a in args if a.startswith("--etcd-prefix")]
    assert flag(args, "service-cluster-ip-range") == "10.100.0.0/16"
    assert flag(args, "secure-port") == "6443"
    assert flag(args, "client-ca-file") == "/etc/kubernetes/pki/ca/tls.crt"
    assert flag(args, "tls-cert-file") == "/etc/kubernetes/pki/apiserver/tls.crt"
    assert flag(args, "service-account-signing-key-file") == "/etc/kubernetes/pki/sa/sa.key"
    assert flag(args, "authorization-mode") == "Node,RBAC"
    assert flag(args, "requestheader-client-ca-file") == "/etc/kubernetes/pki/front-proxy-client/ca.crt"
    assert flag(args, "advertise-address") == "$(POD_IP)"
    advertised = tcpmod.render(tcp(), advertise_address="10.0.0.15")
    assert flag(args_of(advertised, "Deployment", "blue-apiserver"), "advertise-address") == "10.0.0.15"
    container = by_name(objects)[("Deployment", "blue-apiserver")]["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 6443, "scheme": "HTTPS"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 6443, "scheme": "HTTPS"}
    assert container["command"] == ["kube-apiserver"]


def test_secrets_are_mounted_read_only_from_the_named_secrets():
    names = {**tcpmod.secret_names(tcp()), "apiserver": "my-own-serving-cert"}
    objects = tcpmod.render(tcp(), pki_secret_names=names)
    for obj in objects:
        if "template" not in obj["spec"]:
            continue
        pod = obj["spec"]["template"]["spec"]
        secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        for mount in pod["containers"][0]["volumeMounts"]:
            if mount["name"] in secret_volumes:
                assert mount["readOnly"] is True
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        if obj["metadata"]["name"] == "blue-apiserver":
            assert secret_volumes["apiserver"] == "my-own-serving-cert"
            assert secret_volumes["sa"] == "blue-sa"


def test_the_shared_keys_cleanup_removes_the_tenants_prefix_with_its_client_certificate():
    shared = {
        "type": "shared",
        "shared": {"endpoints": ["https://a:2379", "https://b:2379"], "prefix": "/t/blue"},
    }
    pod = tcpmod.shared_keys_cleanup_pod(tcp(datastore=shared), {"etcd": "reg/etcd:v3.6.16"})
    (c,) = pod["spec"]["containers"]
    # the trailing slash keeps /t/blue2 out of it
    endpoints = "--endpoints=https://a:2379,https://b:2379"
    assert c["command"] == ["etcdctl", endpoints, "--dial-timeout=10s", "del", "--prefix", "/t/blue/"]
    assert c["image"] == "reg/etcd:v3.6.16"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "ownerReferences" not in pod["metadata"]  # it outlives the tenant's own objects
    assert pod["metadata"]["labels"][TENANT_LABEL] == "blue"
    shared["shared"]["clientSecretName"] = "ds-client"
    pod = tcpmod.shared_keys_cleanup_pod(tcp(datastore=shared), {"etcd": "reg/etcd:v3.6.16"})
    (c,) = pod["spec"]["containers"]
    assert "--cert=/etc/kubernetes/pki/datastore-client/tls.crt" in c["command"]
    assert pod["spec"]["volumes"] == [
        {"name": "datastore-client", "secret": {"secretName": "ds-client", "defaultMode": 0o440}}
    ]


def test_shared_datastore_uses_a_prefix_and_no_etcd_of_its_own():
    shared = {"type": "shared", "shared": {"endpoints": ["https://a:2379", "https://b:2379"]}}
    objects = tcpmod.render(tcp(datastore=shared))
    assert not [o for o in objects if "etcd" in o["metadata"]["name"]]
    args = args_of(objects, "Deployment", "blue-apiserver")
    assert flag(args, "etcd-servers") == "https://a:2379,https://b:2379"
    assert flag(args, "etcd-prefix") == "/rhizeption/tenants/blue"
    assert not [a for a in args if a.startswith("--etcd-certfile")]
    shared["shared"].update(prefix="/tenants/blue", clientSecretName="ds-client")
    objects = tcpmod.render(tcp(datastore=shared))
    args = args_of(objects, "Deployment", "blue-apiserver")
    assert flag(args, "etcd-prefix") == "/tenants/blue"
    assert flag(args, "etcd-certfile") == "/etc/kubernetes/pki/datastore-client/tls.crt"
    volumes = by_name(objects)[("Deployment", "blue-apiserver")]["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "datastore-client",
        "secret": {"secretName": "ds-client", "defaultMode": 0o440},
    } in volumes


def test_leader_election_and_pdbs_only_with_several_replicas():
    single = tcpmod.render(tcp())
    for name in ("blue-controller-manager", "blue-scheduler"):
        assert flag(args_of(single, "Deployment", name), "leader-elect") == "false"
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget"]
    # without leader election, a lone controller never overlaps with its successor
    assert by_name(single)[("Deployment", "blue-scheduler")]["spec"]["strategy"] == {"type": "Recreate"}
    assert by_name(single)[("Deployment", "blue-apiserver")]["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": 1,
        "maxUnavailable": 0,
    }
    triple = tcpmod.render(tcp(replicas=3))
    for name in ("blue-controller-manager", "blue-scheduler"):
        assert flag(args_of(triple, "Deployment", name), "leader-elect") == "true"
        assert by_name(triple)[("Deployment", name)]["spec"]["replicas"] == 3
        assert by_name(triple)[("Deployment", name)]["spec"]["strategy"]["type"] == "RollingUpdate"
    pdbs = {o["metadata"]["name"]: o["spec"] for o in triple if o["kind"] == "PodDisruptionBudget"}
    assert set(pdbs) == {"blue-etcd", "blue-apiserver", "blue-controller-manager", "blue-scheduler"}
    assert pdbs["blue-apiserver"]["maxUnavailable"] == 1
    assert pdbs["blue-scheduler"]["minAvailable"] == 1
    template = by_name(triple)[("Deployment", "blue-apiserver")]["spec"]["template"]["spec"]
    assert "podAntiAffinity" in template["affinity"]


def test_controllers_read_kubeconfigs_from_secrets():
    objects = tcpmod.render(tcp(podCIDR="10.200.0.0/16"))
    args = args_of(objects, "Deployment", "blue-controller-manager")
    assert flag(args, "kubeconfig") == "/etc/kubernetes/kubeconfig/kubeconfig"
    assert flag(args, "cluster-cidr") == "10.200.0.0/16"
    assert flag(args, "cluster-signing-key-file") == "/etc/kubernetes/pki/ca/tls.key"
    pod = by_name(objects)[("Deployment", "blue-scheduler")]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kubeconfig"]["secret"]["secretName"] == "blue-scheduler-kubeconfig"
    assert "ca" not in volumes  # the scheduler holds no CA key
    assert flag(args_of(objects, "Deployment", "blue-scheduler"), "secure-port") == "10259"


@pytest.mark.parametrize(
    ("exposure", "service_type", "node_port"),
    [
        ({"type": "ClusterIP"}, "ClusterIP", None),
        ({"type": "NodePort"}, "NodePort", None),
        ({"type": "NodePort", "nodePort": 30443}, "NodePort", 30443),
        ({"type": "LoadBalancer"}, "LoadBalancer", None),
    ],
)
def test_the_apiserver_service_follows_the_exposure(exposure, service_type, node_port):
    service = by_name(tcpmod.render(tcp(exposure=exposure)))[("Service", "blue")]
    assert service["spec"]["type"] == service_type
    assert service["spec"]["ports"][0]["port"] == 6443
    assert service["spec"]["ports"][0].get("nodePort") == node_port
    assert service["spec"]["selector"] == {TENANT_LABEL: "blue", "app.kubernetes.io/name": "kube-apiserver"}


def test_images_default_to_local_builds_and_can_be_overridden():
    objects = tcpmod.render(tcp(), images={"kube-apiserver": "registry.example.com/kube-apiserver:v1.34.4"})

    def image(kind, name):
        return by_name(objects)[(kind, name)]["spec"]["template"]["spec"]["containers"][0]["image"]

    assert image("StatefulSet", "blue-etcd") == "localhost/rhizeption/etcd:v3.6.16"
    assert image("Deployment", "blue-apiserver") == "registry.example.com/kube-apiserver:v1.34.4"
    assert image("Deployment", "blue-scheduler") == "localhost/rhizeption/kube-scheduler:v1.34.4"


def test_resources_per_component():
    resources = {
        "apiServer": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}},
        "etcd": {"requests": {"memory": 128}},
    }
    objects = tcpmod.render(tcp(resources=resources))
    api = by_name(objects)[("Deployment", "blue-apiserver")]["spec"]["template"]["spec"]["containers"][0]
    assert api["resources"] == resources["apiServer"]
    etcd = by_name(objects)[("StatefulSet", "blue-etcd")]["spec"]["template"]["spec"]["containers"][0]
    assert etcd["resources"] == {"requests": {"memory": 128}}
    cm = by_name(objects)[("Deployment", "blue-controller-manager")]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert "resources" not in cm


def test_renewed_credentials_roll_only_the_pods_that_read_them(first_pki):
    def digests(secrets):
        return {
            o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"][
                tcpmod.PKI_DIGEST_ANNOTATION
            ]
            for o in tcpmod.render(tcp(), pki_secrets=secrets)
            if "template" in o["spec"]
        }

    before = digests(first_pki)
    admin_changed = copy.deepcopy(first_pki)
    scheduler_changed = copy.deepcopy(first_pki)
    for secrets, name in (
        (admin_changed, "blue-admin-kubeconfig"),
        (scheduler_changed, "blue-scheduler-kubeconfig"),
    ):
        by_name(secrets)[("Secret", name)]["data"]["kubeconfig"] = "bmV3"
    assert digests(admin_changed) == before
    after = digests(scheduler_changed)
    assert {name for name in after if after[name] != before[name]} == {"blue-scheduler"}


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field", "accepted"),
    [
        ({"version": "v1.33.0"}, "spec.version", "accepted: v1.33.13, v1.34.4"),
        ({"replicas": 6}, "spec.replicas", "from 1 to 5"),
        ({"replicas": 0}, "spec.replicas", "from 1 to 5"),
        ({"podCIDR": "10.96.128.0/17"}, "spec.podCIDR", "overlaps spec.serviceCIDR 10.96.0.0/16"),
        ({"serviceCIDR": "10.0.0.0/8"}, "spec.podCIDR", "do not overlap"),
        ({"serviceCIDR": "10.96.0.1/16"}, "spec.serviceCIDR", "such as 10.96.0.0/16"),
        ({"podCIDR": "banana"}, "spec.podCIDR", "not a CIDR"),
        (
            {"exposure": {"type": "NodePort", "nodePort": 80}},
            "spec.exposure.nodePort",
            "accepted: 30000-32767",
        ),
        ({"exposure": {"type": "NodePort", "nodePort": 32768}}, "spec.exposure.nodePort", "30000-32767"),
        (
            {"exposure": {"type": "ClusterIP", "nodePort": 30001}},
            "spec.exposure.nodePort",
            "only for type NodePort",
        ),
        ({"exposure": {"type": "Ingress"}}, "spec.exposure.type", "ClusterIP, NodePort, LoadBalancer"),
        (
            {"exposure": {"extraSANs": ["ok.example.com", "not valid!"]}},
            "spec.exposure.extraSANs[1]",
            "DNS name",
        ),
        ({"datastore": {"type": "shared"}}, "spec.datastore.shared.endpoints", "client URLs"),
        (
            {"datastore": {"type": "shared", "shared": {"endpoints": ["etcd:2379"]}}},
            "spec.datastore.shared.endpoints[0]",
            "https://etcd:2379",
        ),
        (
            {"datastore": {"type": "shared", "shared": {"endpoints": ["http://e:2379"], "prefix": "x"}}},
            "spec.datastore.shared.prefix",
            "/tenants/blue",
        ),
        ({"datastore": {"type": "etcd", "etcd": {"storage": "big"}}}, "spec.datastore.etcd.storage", "1Gi"),
        ({"certificateValidity": "1y"}, "spec.certificateValidity", "8760h"),
        ({"certificateValidity": "30m"}, "spec.certificateValidity", "at least 1h"),
        (
            {"resources": {"scheduler": {"limits": {"cpu": "lots"}}}},
            "spec.resources.scheduler.limits.cpu",
            "500m",
        ),
        (
            {"promoteResources": {"resources": {"gpu": "1"}}},
            "spec.promoteResources.resources.gpu",
            "cpu and memory",
        ),
        ({"promoteResources": {"nodes": ["Node_A"]}}, "spec.promoteResources.nodes[0]", "not a Node name"),
    ],
)
def test_bad_input_names_the_field_and_what_is_accepted(change, field, accepted):
    with pytest.raises(TenantControlPlaneError) as err:
        tcpmod.validate(tcp(**change))
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert accepted in str(err.value)


def test_names_must_leave_room_for_the_objects_derived_from_them():
    with pytest.raises(TenantControlPlaneError, match=r"^metadata\.name: .*40 characters"):
        tcpmod.validate(tcp(name="a" * 41))
    with pytest.raises(TenantControlPlaneError, match=r"^metadata\.name: "):
        tcpmod.validate(tcp(name="Blue"))


def test_good_input_passes():
    tcpmod.validate(
        tcp(
            replicas=3,
            exposure={
                "type": "NodePort",
                "nodePort": 30443,
                "extraSANs": ["*.blue.example.com", "192.0.2.1"],
            },
            datastore={"type": "shared", "shared": {"endpoints": ["https://etcd:2379"], "prefix": "/t/blue"}},
            certificateValidity="720h30m",
            promoteResources={"nodes": ["node-a"], "resources": {"cpu": "4", "memory": "8Gi"}},
            serviceCIDR="fd00:96::/108",
            podCIDR="10.244.0.0/16",
        )
    )


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        (
            {},
            {"datastore": {"type": "shared", "shared": {"endpoints": ["https://e:2379"]}}},
            "spec.datastore.type",
            "immutable",
        ),
        ({}, {"serviceCIDR": "10.97.0.0/16"}, "spec.serviceCIDR", "stays 10.96.0.0/16"),
        ({}, {"replicas": 3}, "spec.replicas", "from 1 to 3 members"),
        ({"version": "v1.34.4"}, {"version": "v1.33.9"}, "spec.version", "downgrade"),
        ({"version": "v1.34.4"}, {"version": "v1.34.3"}, "spec.version", "downgrade"),
        ({"version": "v1.34.4"}, {"version": "v1.36.0"}, "spec.version", "upgrade to v1.35 first"),
    ],
)
def test_updates_that_are_refused(old, new, field, message):
    with pytest.raises(TenantControlPlaneError) as err:
        tcpmod.validate_update(tcp(**old), tcp(**new))
    assert err.value.field == field
    assert message in str(err.value)


def test_updates_that_are_allowed():
    tcpmod.validate_update(tcp(replicas=2), tcp(replicas=3))  # both 3 etcd members
    tcpmod.validate_update(tcp(version="v1.34.4"), tcp(version="v1.35.0"))
    shared = {"type": "shared", "shared": {"endpoints": ["https://e:2379"]}}
    tcpmod.validate_update(tcp(datastore=shared), tcp(datastore=shared, replicas=4))


def test_tenants_of_one_etcd_need_prefixes_of_their_own():
    def shared(name, prefix=None, endpoint="https://e:2379"):
        store = {"endpoints": [endpoint], **({"prefix": prefix} if prefix else {})}
        return tcp(name=name, datastore={"type": "shared", "shared": store})

    tcpmod.check_shared_prefix(shared("a"), [shared("b"), shared("a")])
    tcpmod.check_shared_prefix(shared("a", "/t/a"), [shared("b", "/t/ab")])  # a sibling, not nested
    tcpmod.check_shared_prefix(shared("a", "/t"), [shared("b", "/t/b", "https://other:2379")])
    with pytest.raises(
        TenantControlPlaneError, match=r"^spec\.datastore\.shared\.prefix: /t overlaps /t/b of"
    ):
        tcpmod.check_shared_prefix(shared("a", "/t"), [shared("b", "/t/b")])


def test_durations():
    assert tcpmod.parse_duration("8760h") == datetime.timedelta(days=365)
    assert tcpmod.parse_duration("1h30m15s") == datetime.timedelta(hours=1, minutes=30, seconds=15)
    with pytest.raises(ValueError, match="not a duration"):
        tcpmod.parse_duration("1d")


# -- status -----------------------------------------------------------------------------------
def observed(obj, ready=(), failed=(), stale=()):
    """The rendered workloads as the API would show them: READY components fully ready."""
    out = []
    for rendered in tcpmod.render(obj):
        if rendered["kind"] not in ("Deployment", "StatefulSet"):
            continue
        o = copy.deepcopy(rendered)
        component = o["metadata"]["labels"]["app.kubernetes.io/name"]
        n = o["spec"]["replicas"]
        o["metadata"]["generation"] = 3
        ok = component in ready
        o["status"] = {
            "observedGeneration": 2 if component in stale else 3,
            "replicas": n,
            "readyReplicas": n if ok else 0,
            "availableReplicas": n if ok else 0,
            "updatedReplicas": n,
        }
        if component in failed:
            o["status"]["conditions"] = [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": 'ReplicaSet "blue-apiserver-1" has timed out progressing.',
                }
            ]
        out.append(o)
    return out


ALL = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_nothing_yet_is_pending():
    status = tcpmod.derive_status(tcp(), [], NOW_TEXT)
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == 2
    assert status["adminKubeconfigSecret"] == "blue-admin-kubeconfig"
    assert status["endpoint"] == "https://blue.tenants.svc:6443"
    assert "version" not in status
    assert conditions(status)["DatastoreReady"] == ("False", "Missing")


@pytest.mark.parametrize(
    ("ready", "phase"),
    [
        ((), "Provisioning"),
        (("etcd",), "Provisioning"),
        (("kube-apiserver",), "Provisioning"),
        (("etcd", "kube-apiserver"), "Initialized"),
        (("etcd", "kube-apiserver", "kube-scheduler"), "Initialized"),
        (ALL, "Ready"),
    ],
)
def test_phase_follows_the_components(ready, phase):
    status = tcpmod.derive_status(tcp(), observed(tcp(), ready=ready), NOW_TEXT)
    assert status["phase"] == phase
    assert conditions(status)["Ready"][0] == ("True" if phase == "Ready" else "False")
    for component, type_ in tcpmod.CONDITION_TYPES.items():
        assert conditions(status)[type_][0] == ("True" if component in ready else "False")


def test_ready_records_the_version_it_runs():
    status = tcpmod.derive_status(tcp(), observed(tcp(), ready=ALL), NOW_TEXT)
    assert status["version"] == "v1.34.4"
    assert status["conditions"][-1]["message"] == "every component is ready"


def test_a_workload_that_has_not_seen_its_new_spec_is_not_ready():
    status = tcpmod.derive_status(tcp(), observed(tcp(), ready=ALL, stale=("kube-scheduler",)), NOW_TEXT)
    assert status["phase"] == "Initialized"


def test_a_workload_still_rolling_is_not_ready_while_old_pods_serve():
    # kube-apiserver rolls one Pod at a time with a surge: its new Pod counts as updated
    # while the old one alone is ready (renewed certificates roll it so).
    objs = observed(tcp(), ready=ALL)
    apiserver = next(o for o in objs if o["metadata"]["name"] == "blue-apiserver")
    apiserver["status"].update(replicas=2, updatedReplicas=1, readyReplicas=1, availableReplicas=1)
    status = tcpmod.derive_status(tcp(), objs, NOW_TEXT)
    assert status["phase"] == "Provisioning"
    assert "1 old" in next(c["message"] for c in status["conditions"] if c["type"] == "APIServerReady")
    apiserver["status"].update(replicas=1, updatedReplicas=1)
    assert tcpmod.derive_status(tcp(), objs, NOW_TEXT)["phase"] == "Ready"


def test_a_new_version_rolling_out_is_upgrading():
    obj = tcp(version="v1.34.4")
    obj["status"] = {"version": "v1.33.9", "phase": "Ready"}
    status = tcpmod.derive_status(obj, observed(obj, ready=("etcd",)), NOW_TEXT)
    assert status["phase"] == "Upgrading"
    assert status["version"] == "v1.33.9"  # what ran last, until the new one is ready


@pytest.mark.parametrize(("running", "pending"), [(None, False), ("v1.34.4", False), ("v1.33.13", True)])
def test_an_upgrade_is_pending_when_the_version_last_run_differs(running, pending):
    obj = tcp(version="v1.34.4")
    if running:
        obj["status"] = {"version": running}
    assert tcpmod.upgrade_pending(obj) is pending


class _RollingCluster:
    """Just enough of Kube for reconcile_objects: it stores what is applied, and the
    kube-apiserver Deployment reports rolled out only on the third look after a write."""

    def __init__(self):
        self.objects, self.applied, self.looks = {}, [], 0

    def get(self, path):
        obj = self.objects.get(path)
        if obj and obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith("apiserver"):
            self.looks += 1
            rolled = self.looks >= 3
            obj["metadata"]["generation"] = 1
            obj["status"] = {
                "observedGeneration": 1,
                "replicas": 1,
                "updatedReplicas": 1,
                "readyReplicas": int(rolled),
                "availableReplicas": int(rolled),
            }
            self.applied.append(("look", rolled))
        return copy.deepcopy(obj)

    def list(self, path, **selectors):
        if path.endswith("/deployments"):  # what status_now observes
            items = [o for o in self.objects.values() if o["kind"] == "Deployment"]
            return copy.deepcopy(items), "1"
        return [], "1"

    def wait(self, path, done, timeout, *, field_selector=None):
        """Kube.wait: each look is one watch event; gives up after a few when TIMEOUT is 0."""
        name = field_selector.split("=", 1)[1]
        for _event in range(5 if timeout == 0 else 100):
            found = self.get(f"{path}/{name}")
            objects = {name: found} if found else {}
            if done(objects):
                return True, objects
        return False, objects

    def apply(self, path, obj, *, dry_run=False, what=""):
        self.objects[path] = copy.deepcopy(obj)
        self.applied.append((obj["kind"], obj["metadata"]["name"]))
        return copy.deepcopy(obj)


def test_an_upgrade_writes_the_controllers_only_once_the_apiserver_rolled_out():
    obj = tcp(version="v1.34.4")
    obj["status"] = {"version": "v1.33.13"}
    cluster = _RollingCluster()
    tcpmod.reconcile_objects(cluster, obj, tcpmod.Outcome(), now=NOW)
    order = cluster.applied
    rolled = order.index(("look", True))
    controllers = [
        i for i, (kind, name) in enumerate(order) if kind == "Deployment" and "apiserver" not in name
    ]
    assert len(controllers) == 2 and min(controllers) > rolled
    # While it waited, the status said so.
    status = cluster.objects[tcpmod.TENANT_CONTROL_PLANE.path("tenants", "blue", "status")]["status"]
    assert (status["phase"], status["version"]) == ("Upgrading", "v1.33.13")
    # Without an upgrade nothing waits: the controllers follow the apiserver at once.
    plain = _RollingCluster()
    tcpmod.reconcile_objects(plain, tcp(version="v1.34.4"), tcpmod.Outcome(), now=NOW)
    assert ("look", True) not in plain.applied


def test_an_apiserver_that_does_not_roll_out_stops_the_upgrade_naming_the_version():
    obj = tcp(version="v1.34.4")
    obj["status"] = {"version": "v1.33.13"}
    cluster = _RollingCluster()
    cluster.looks = -(10**6)  # never rolls out
    with pytest.raises(TenantControlPlaneError) as stopped:
        tcpmod.reconcile_objects(cluster, obj, tcpmod.Outcome(), now=NOW, timeout=0)
    assert stopped.value.field == "spec.version"
    assert "v1.34.4" in str(stopped.value) and "stay on the old version" in str(stopped.value)
    assert not [n for kind, n in cluster.applied if kind == "Deployment" and "apiserver" not in n]


def test_a_stuck_deployment_fails_with_its_reason():
    status = tcpmod.derive_status(
        tcp(), observed(tcp(), ready=("etcd",), failed=("kube-apiserver",)), NOW_TEXT
    )
    assert status["phase"] == "Failed"
    assert status["failureReason"] == "APIServerFailed"
    assert "ProgressDeadlineExceeded" in status["failureMessage"]
    assert conditions(status)["APIServerReady"] == ("False", "Failed")


def test_an_etcd_pod_that_cannot_start_fails_the_tenant():
    pod = {
        "kind": "Pod",
        "metadata": {"name": "blue-etcd-0", "labels": tcpmod.labels(tcp(), "etcd")},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "etcd",
                    "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image is not present"}},
                }
            ],
        },
    }
    other_tenant = copy.deepcopy(pod)
    other_tenant["metadata"]["labels"][TENANT_LABEL] = "green"
    status = tcpmod.derive_status(tcp(), [*observed(tcp()), other_tenant], NOW_TEXT)
    assert status["phase"] == "Provisioning"
    status = tcpmod.derive_status(tcp(), [*observed(tcp()), pod], NOW_TEXT)
    assert status["phase"] == "Failed"
    assert status["failureReason"] == "DatastoreFailed"
    assert status["failureMessage"] == "etcd: Pod blue-etcd-0: ErrImageNeverPull: image is not present"


def test_deleting_wins():
    obj = tcp()
    obj["metadata"]["deletionTimestamp"] = NOW_TEXT
    assert tcpmod.derive_status(obj, observed(obj, ready=ALL), NOW_TEXT)["phase"] == "Deleting"


def test_a_shared_datastore_is_taken_as_ready():
    obj = tcp(datastore={"type": "shared", "shared": {"endpoints": ["https://e:2379"]}})
    status = tcpmod.derive_status(obj, observed(obj, ready=ALL[1:]), NOW_TEXT)
    assert status["phase"] == "Ready"
    assert conditions(status)["DatastoreReady"] == ("True", "SharedDatastore")


def test_transition_times_move_only_when_a_condition_changes():
    first = tcpmod.derive_status(tcp(), observed(tcp(), ready=("etcd",)), NOW_TEXT)
    obj = tcp()
    obj["status"] = first
    second = tcpmod.derive_status(obj, observed(obj, ready=("etcd", "kube-apiserver")), LATER_TEXT)
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["DatastoreReady"] == NOW_TEXT
    assert times["APIServerReady"] == LATER_TEXT
    assert times["SchedulerReady"] == NOW_TEXT


def test_status_endpoint_follows_the_service():
    lb = tcp(exposure={"type": "LoadBalancer"})
    service = {"status": {"loadBalancer": {"ingress": [{"hostname": "blue.lb.example.com"}]}}}
    status = tcpmod.derive_status(lb, [], NOW_TEXT, service=service)
    assert status["endpoint"] == "https://blue.lb.example.com:6443"


def test_no_key_material_in_status_fields():
    status = tcpmod.derive_status(tcp(), observed(tcp(), ready=ALL), NOW_TEXT)
    assert not re.search(r"BEGIN|tls\.key|sa\.key", json.dumps(status))


# -- placement and the apply step's pure helpers ----------------------------------------------
def test_placement_puts_every_control_plane_pod_on_the_chosen_nodes():
    placement = {
        "nodeSelector": {"pool": "control-planes"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    }
    templates = [
        o["spec"]["template"]["spec"]
        for o in tcpmod.render(tcp(placement=placement))
        if o["kind"] in ("Deployment", "StatefulSet")
    ]
    assert len(templates) == 4
    for pod in templates:
        assert pod["nodeSelector"] == {"pool": "control-planes"}
        assert pod["tolerations"] == placement["tolerations"]
    assert all(
        "nodeSelector" not in o["spec"]["template"]["spec"]
        for o in tcpmod.render(tcp())
        if o["kind"] == "Deployment"
    )


@pytest.mark.parametrize(
    ("phase", "wanted", "expected"),
    [
        ("Ready", "Initialized", True),
        ("Initialized", "Ready", False),
        ("Provisioning", "Provisioning", True),
        ("Failed", "Ready", False),
        ("Upgrading", "Ready", False),
    ],
)
def test_a_wait_is_satisfied_by_the_phase_or_a_later_one(phase, wanted, expected):
    assert tcpmod.reached(phase, wanted) is expected


def test_content_ignores_server_bookkeeping_and_status():
    before = {
        "kind": "Secret",
        "metadata": {
            "name": "x",
            "resourceVersion": "1",
            "managedFields": [{"manager": "a"}],
            "labels": {"a": "b"},
        },
        "data": {"k": "dg=="},
        "status": {"x": 1},
    }
    after = copy.deepcopy(before)
    after["metadata"].update(resourceVersion="2", managedFields=[{"manager": "b"}])
    after["status"] = {"x": 2}
    assert tcpmod._content(before) == tcpmod._content(after)
    after["data"]["k"] = "dw=="
    assert tcpmod._content(before) != tcpmod._content(after)


def test_the_desired_object_and_the_newest_version():
    want = tcpmod.desired("blue", "tenants", {"replicas": 3}, labels={"team": "blue"})
    assert want["kind"] == "TenantControlPlane" and want["apiVersion"] == "hn.rhizeption.io/v1alpha1"
    assert want["metadata"] == {"name": "blue", "namespace": "tenants", "labels": {"team": "blue"}}
    assert tcpmod.newest_version() in tcpmod.BUILT_VERSIONS
    assert tcpmod.newest_version() == "v1.34.4"


def test_the_children_cover_every_secret_and_workload_name():
    names = {(o["kind"], o["metadata"]["name"]) for o in tcpmod._children(tcp())}
    assert ("Secret", "blue-admin-kubeconfig") in names and ("Secret", "blue-etcd-ca") in names
    assert ("Service", "blue") in names and ("StatefulSet", "blue-etcd") in names
    assert ("Deployment", "blue-apiserver") in names and ("NetworkPolicy", "blue-etcd") in names


# -- promoteResources ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        ("4Gi", str(4 * 2**30)),
        ("1e3", "1000"),
        ("1.5k", "1500"),
        ("128Mi", str(128 * 2**20)),
    ],
)
def test_quantities_parse_as_kubernetes_does(text, value):
    from decimal import Decimal

    assert tcpmod.quantity(text) == Decimal(value)


def test_a_quantity_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="not a quantity"):
        tcpmod.quantity("4 GB")


def test_promoted_resources_render_a_quota_and_default_requests():
    hosted_only = {"resources": {"cpu": "8", "memory": "16Gi"}, "virtualNodes": False}
    objects = by_name(tcpmod.render(tcp(promoteResources=hosted_only)))
    quota = objects[("ResourceQuota", "blue-promoted")]
    assert quota["spec"]["hard"] == {"requests.cpu": "8", "requests.memory": "16Gi"}
    assert quota["metadata"]["ownerReferences"][0]["uid"] == "blue-uid"
    limits = objects[("LimitRange", "blue-promoted")]["spec"]["limits"]
    assert limits == [{"type": "Container", "defaultRequest": {"cpu": "100m", "memory": "128Mi"}}]
    # Before the workloads, so their Pods get the default requests.
    kinds = [
        o["kind"]
        for o in tcpmod.render(tcp(promoteResources={"resources": {"cpu": "8"}, "virtualNodes": False}))
    ]
    assert kinds.index("LimitRange") < kinds.index("StatefulSet")
    assert not [
        o for o in tcpmod.render(tcp(promoteResources={"nodes": ["a"]})) if o["kind"] == "ResourceQuota"
    ]


def hncluster(name, **requests):
    return {"metadata": {"name": name}, "spec": {"machineTemplate": {"resources": {"requests": requests}}}}


def test_a_quota_smaller_than_one_hosted_node_is_refused():
    small = tcp(promoteResources={"resources": {"cpu": "1", "memory": "1Gi"}})
    with pytest.raises(TenantControlPlaneError) as e:
        tcpmod.check_promoted_resources(small, [hncluster("big", cpu="2", memory="512Mi")], [])
    assert str(e.value) == (
        "spec.promoteResources.resources.cpu: 1 is less than one hosted node of HnCluster tenants/big (2);"
        " accepted: 2 or more"
    )
    with pytest.raises(TenantControlPlaneError, match=r"^spec.promoteResources.resources.memory: 1Gi"):
        tcpmod.check_promoted_resources(small, [hncluster("fat", memory="2Gi")], [])
    tcpmod.check_promoted_resources(small, [hncluster("fits", cpu="1", memory="1Gi")], [])


def test_two_tenants_with_promoted_resources_may_not_share_a_namespace():
    blue = tcp(promoteResources={"resources": {"cpu": "4"}})
    green = tcp("green", promoteResources={"resources": {"cpu": "4"}})
    with pytest.raises(
        TenantControlPlaneError, match="tenants/green promotes resources in this namespace too"
    ):
        tcpmod.check_promoted_resources(blue, [], [blue, green])
    tcpmod.check_promoted_resources(blue, [], [blue, tcp("plain")])

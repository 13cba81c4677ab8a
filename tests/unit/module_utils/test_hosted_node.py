"""The bootstrap data of hosted nodes: tokens, the node's files and the Secret that carries them."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import urllib3
import yaml
from ansible_collections.rhizeption.core.plugins.module_utils import hnmachine
from ansible_collections.rhizeption.core.plugins.module_utils import hosted_node as hn
from ansible_collections.rhizeption.core.plugins.module_utils.kube import KubeError

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def cluster(**spec):
    return {
        "apiVersion": "hn.rhizeption.io/v1alpha1",
        "kind": "HnCluster",
        "metadata": {"name": "blue", "namespace": "tenants", "uid": "blue-uid"},
        "spec": {
            "machineTemplate": {"image": "localhost/rhizeption/node:v1.34.4"},
            "controlPlaneEndpoint": {"host": "10.89.1.1", "port": 6443},
            "network": {
                "podCIDR": "10.240.0.0/16",
                "serviceCIDR": "10.112.0.0/16",
                "serviceDomain": "blue.local",
            },
            **spec,
        },
    }


def machine():
    m = hnmachine.render_machine("blue-0", "tenants", cluster())
    m["metadata"]["uid"] = "blue-0-uid"
    return m


def files(**kwargs):
    args = {"ca_pem": "CA", "bootstrap_token": "abcdef.0123456789abcdef", "kube_proxy_token": "proxy"}
    return hn.render_bootstrap_files(machine(), cluster(), **{**args, **kwargs})


def test_tokens_have_the_bootstrap_token_format_and_differ():
    first, second = hn.new_token(), hn.new_token()
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", ".".join(first))
    assert first != second


def test_a_token_near_its_end_is_not_reused():
    secret = hn.render_token_secret("abcdef", "0123456789abcdef", NOW + timedelta(hours=5), "tenants.blue")
    assert secret["metadata"]["name"] == "bootstrap-token-abcdef"
    assert secret["stringData"]["auth-extra-groups"] == hn.BOOTSTRAP_GROUP
    stored = {"data": {k: base64.b64encode(v.encode()).decode() for k, v in secret["stringData"].items()}}
    assert hn.token_of(stored, NOW) == "abcdef.0123456789abcdef"
    assert hn.token_of(stored, NOW + timedelta(hours=4, minutes=1)) is None  # within the last hour
    assert hn.token_of({"data": {}}, NOW) is None


def test_the_kubelet_joins_with_the_token_and_knows_who_it_is():
    f = files()
    bootstrap = yaml.safe_load(f["bootstrap-kubelet.kubeconfig"])
    assert bootstrap["clusters"][0]["cluster"]["server"] == "https://10.89.1.1:6443"
    assert bootstrap["users"][0]["user"]["token"] == "abcdef.0123456789abcdef"
    kubelet = yaml.safe_load(f["kubelet.yaml"])
    assert kubelet["providerID"] == "rhizeption://tenants/blue-0"
    assert kubelet["cgroupRoot"] == "/rhizeption-hn/tenants/blue-0"
    assert kubelet["clusterDNS"] == ["10.112.0.10"]
    assert kubelet["clusterDomain"] == "blue.local"
    assert (kubelet["cgroupDriver"], kubelet["failCgroupV1"]) == ("cgroupfs", False)
    proxy = yaml.safe_load(f["kube-proxy.yaml"])
    assert (proxy["mode"], proxy["clusterCIDR"]) == ("nftables", "10.240.0.0/16")
    assert yaml.safe_load(f["kube-proxy.kubeconfig"])["users"][0]["user"]["token"] == "proxy"


def test_labels_and_taints_reach_the_kubelet():
    f = files(labels={"zone": "a", "tier": "edge"}, taints=[{"key": "gpu", "effect": "NoSchedule"}])
    assert f["kubelet-flags"] == "--node-labels=tier=edge,zone=a"
    assert yaml.safe_load(f["kubelet.yaml"])["registerWithTaints"] == [{"key": "gpu", "effect": "NoSchedule"}]


def test_a_cluster_without_endpoint_is_refused_naming_the_field():
    c = cluster()
    del c["spec"]["controlPlaneEndpoint"]
    with pytest.raises(hn.BootstrapError, match=r"spec\.controlPlaneEndpoint"):
        hn.render_bootstrap_files(machine(), c, ca_pem="CA", bootstrap_token="t", kube_proxy_token="p")


def test_the_secret_belongs_to_the_machine_and_holds_the_files():
    secret = hn.render_bootstrap_secret(machine(), {"a": "1"})
    assert secret["metadata"]["name"] == "blue-0-bootstrap"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("HnMachine", "blue-0-uid")
    assert json.loads(base64.b64decode(secret["data"]["value"])) == {"files": {"a": "1"}}


def test_the_tenant_approves_node_client_certificates_for_the_token_group_only():
    objs = {o["metadata"]["name"]: o for o in hn.render_tenant_access()}
    approve = objs["rhizeption:node-autoapprove-bootstrap"]
    assert approve["roleRef"]["name"].endswith(":nodeclient")
    assert approve["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": hn.BOOTSTRAP_GROUP}
    ]
    assert objs["rhizeption:kube-proxy"]["roleRef"]["name"] == "system:node-proxier"
    token = objs[hn.KUBE_PROXY_TOKEN_SECRET]
    assert token["type"] == "kubernetes.io/service-account-token"


class Tenant:
    host = "https://10.89.0.1:6443"

    def __init__(self, error=None):
        self.error = error

    def request(self, *_args, **_kwargs):
        if self.error:
            raise self.error

        class Answer:
            def release_conn(self):
                pass

        return Answer()


def test_a_ready_tenant_passes_the_check():
    hn.check_tenant(Tenant())


def test_a_tenant_that_is_not_ready_is_named_with_its_failing_checks_and_the_fix():
    body = "[+]ping ok\n[-]etcd failed: reason withheld\n[+]log ok\nreadyz check failed"
    error = KubeError(f"/readyz: 500 Internal Server Error: {body}", status=500)
    with pytest.raises(hn.BootstrapError) as e:
        hn.check_tenant(Tenant(error))
    assert "https://10.89.0.1:6443 is not ready (500: etcd failed: reason withheld)" in str(e.value)
    assert "start or repair the tenant control plane" in str(e.value)


def test_an_unreachable_tenant_is_named_with_the_reason_only():
    refused = urllib3.exceptions.NewConnectionError(
        urllib3.connection.HTTPSConnection("10.89.0.1", 6443), "Failed to establish a new connection: refused"
    )
    with pytest.raises(hn.BootstrapError) as e:
        hn.check_tenant(Tenant(urllib3.exceptions.MaxRetryError(None, "/readyz", refused)))
    assert "10.89.0.1:6443 cannot be reached (Failed to establish a new connection: refused)" in str(e.value)
    assert "HTTPSConnection" not in str(e.value)


class SecretStore:
    def __init__(self, secret=None):
        self.secret = secret

    def get(self, _path):
        return self.secret

    def apply(self, _path, obj, **_kwargs):
        self.secret = obj
        return obj


def test_the_bootstrap_secret_says_whether_it_was_created_updated_or_current():
    creds = hn.TenantCredentials(ca_pem="CA", bootstrap_token="abcdef.0123456789abcdef", kube_proxy_token="p")
    host = SecretStore()
    assert hn.ensure_bootstrap_secret(host, cluster(), machine(), creds) == ("blue-0-bootstrap", "created")
    assert hn.ensure_bootstrap_secret(host, cluster(), machine(), creds)[1] == ""
    creds.bootstrap_token = "ghijkl.0123456789abcdef"  # a new token after the old one expired
    assert hn.ensure_bootstrap_secret(host, cluster(), machine(), creds)[1] == "updated"


class DrainedTenant:
    """A tenant with one Node and two of its Pods, whose evictions answer ANSWERS by Pod name."""

    def __init__(self, answers):
        self.answers = answers
        self.pods = {
            n: {
                "metadata": {"name": n, "namespace": "shop", "uid": f"uid-{n}"},
                "status": {"phase": "Running"},
            }
            for n in answers
        }
        self.evicted = []

    def get(self, _path):
        return {"metadata": {"name": "blue-0"}}

    def json_patch(self, *_args, **_kwargs):
        return {}

    def list(self, _path, **_kwargs):
        return list(self.pods.values()), "1"

    def request(self, _method, path, body=None, **_kwargs):
        name = body["metadata"]["name"]
        answer = self.answers[name]
        if answer is not None:
            raise answer
        self.evicted.append(name)
        return {}

    def wait(self, _path, done, _timeout, **_kwargs):
        return done({}), {}


def test_drain_waits_for_pods_whose_namespace_is_going_instead_of_failing():
    """The API server refuses to evict in a terminating namespace (403, cause
    NamespaceTerminating); the namespace takes the Pod along, so drain waits, as kubectl's does."""
    terminating = KubeError(
        "evict: forbidden", status=403, reason="Forbidden", causes=["NamespaceTerminating"]
    )
    tenant = DrainedTenant({"web-1": None, "web-2": terminating})
    assert hn.drain(tenant, "blue-0", 30) == ["shop/web-1", "shop/web-2"]
    assert tenant.evicted == ["web-1"]
    other = KubeError("evict: forbidden", status=403, reason="Forbidden")
    with pytest.raises(KubeError):
        hn.drain(DrainedTenant({"web-1": other}), "blue-0", 30)

"""A tenant Pod as a host Pod and back: what is kept, what is renamed, what is refused
(naming the field), that no host credential reaches the Pod, and status round trips."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json

import pytest
from rhizeption_agent.backends.hostcluster import names, pods
from rhizeption_agent.backends.hostcluster.pods import HostSettings, Placement, Refused, ServiceLink

NOW = "2026-11-23T10:00:00Z"
SETTINGS = HostSettings(
    tenant="blue",
    namespace="tenants-blue-pods",
    service_account="virtual-pods",
    dns_ip="10.43.0.53",
    api_server_ip="10.43.0.17",
)
RESOURCES = Placement(node_name="host-resources", node_address="10.42.0.9")
MIRROR = Placement(
    node_name="node-a",
    node_address="10.42.0.9",
    host_node="node-a",
    host_node_taints=({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},),
)


def tenant_pod() -> dict:
    """A Deployment's Pod as the tenant API server stores it (admission ran: the
    service-account volume is there, the scheduler bound it to a virtual node)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-7d9c5b7f9-x2k4q",
            "namespace": "shop",
            "uid": "9f1c2d3e-0000-4000-8000-000000000001",
            "labels": {"app": "web", "pod-template-hash": "7d9c5b7f9"},
            "annotations": {"team": "checkout", "kubectl.kubernetes.io/restartedAt": "2026-11-01"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c5b7f9", "uid": "r"}
            ],
        },
        "spec": {
            "nodeName": "host-resources",
            "schedulerName": "default-scheduler",
            "priority": 0,
            "serviceAccountName": "web",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
            ],
            "terminationGracePeriodSeconds": 45,
            "restartPolicy": "Always",
            "securityContext": {"runAsUser": 1000},
            "imagePullSecrets": [{"name": "registry"}],
            "initContainers": [
                {
                    "name": "migrate",
                    "image": "localhost/shop/migrate:1",
                    "envFrom": [{"secretRef": {"name": "db"}}],
                }
            ],
            "containers": [
                {
                    "name": "web",
                    "image": "localhost/shop/web:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [
                        {"name": "GREETING", "value": "hello"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                        {
                            "name": "TEAM",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}},
                        },
                        {
                            "name": "MEM",
                            "valueFrom": {
                                "resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}
                            },
                        },
                        {
                            "name": "MODE",
                            "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "mode"}},
                        },
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "api", "key": "token", "optional": True}},
                        },
                    ],
                    "envFrom": [{"configMapRef": {"name": "web-env"}, "prefix": "WEB_"}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "64Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                    "livenessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 3},
                    "startupProbe": {"exec": {"command": ["true"]}},
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/web"},
                        {"name": "tls", "mountPath": "/etc/tls"},
                        {"name": "podinfo", "mountPath": "/etc/podinfo"},
                        {"name": "scratch", "mountPath": "/tmp"},
                        {
                            "name": "kube-api-access-abcde",
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        },
                    ],
                }
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "web-config"}},
                {"name": "tls", "secret": {"secretName": "web-tls", "defaultMode": 0o400}},
                {
                    "name": "podinfo",
                    "downwardAPI": {
                        "items": [
                            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        ]
                    },
                },
                {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
                {
                    "name": "kube-api-access-abcde",
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {
                                                "apiVersion": "v1",
                                                "fieldPath": "metadata.namespace",
                                            },
                                        }
                                    ]
                                }
                            },
                        ],
                    },
                },
            ],
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env") or []}


def hosted(pod=None, placement=RESOURCES, settings=SETTINGS, services=()):
    return pods.translate_pod(pod or tenant_pod(), settings, placement, services)


# -- names and links ---------------------------------------------------------------------------
def test_the_host_pod_is_named_and_linked_to_its_tenant_pod():
    host = hosted()
    meta = host["metadata"]
    assert meta["name"] == names.host_name("blue", "shop", "web-7d9c5b7f9-x2k4q", "pod")
    assert meta["namespace"] == "tenants-blue-pods"
    assert meta["labels"][names.TENANT_LABEL] == "blue"
    assert meta["labels"][names.NAMESPACE_LABEL] == "shop"
    assert meta["labels"][names.UID_LABEL] == "9f1c2d3e-0000-4000-8000-000000000001"
    assert meta["annotations"][names.NAME_ANNOTATION] == "web-7d9c5b7f9-x2k4q"
    assert names.owner_of(host) == ("blue", "pod", "shop", "web-7d9c5b7f9-x2k4q")
    assert "ownerReferences" not in meta, "tenant owners mean nothing in the host"


def test_tenant_labels_never_keep_their_keys_on_the_host():
    labels = hosted()["metadata"]["labels"]
    assert "app" not in labels and "pod-template-hash" not in labels
    assert labels[names.host_label_key("app")] == "web"


def test_a_long_pod_name_still_gives_a_valid_hostname():
    pod = tenant_pod()
    pod["metadata"]["name"] = "a.dotted." + "x" * 100
    spec = hosted(pod)["spec"]
    assert spec["hostname"] == ("a-dotted-" + "x" * 100)[:63]
    pod["spec"]["hostname"] = "given"
    assert hosted(pod)["spec"]["hostname"] == "given"


# -- what is kept -----------------------------------------------------------------------------
def test_containers_keep_probes_resources_ports_and_init_order():
    tenant = tenant_pod()
    spec = hosted(tenant)["spec"]
    web, want = spec["containers"][0], tenant["spec"]["containers"][0]
    for key in (
        "image",
        "ports",
        "resources",
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
        "volumeMounts",
    ):
        assert web[key] == want[key], key
    assert [c["name"] for c in spec["initContainers"]] == ["migrate"]
    assert spec["restartPolicy"] == "Always"
    assert spec["terminationGracePeriodSeconds"] == 45
    assert spec["securityContext"] == {"runAsUser": 1000}


def test_env_keeps_values_and_resource_refs_and_renames_config_sources():
    env = env_of(hosted()["spec"]["containers"][0])
    assert env["GREETING"] == {"name": "GREETING", "value": "hello"}
    assert env["MEM"]["valueFrom"] == {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}
    assert env["MODE"]["valueFrom"]["configMapKeyRef"] == {
        "name": names.host_name("blue", "shop", "web-config", "configmap"),
        "key": "mode",
    }
    assert env["TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == names.host_name(
        "blue", "shop", "api", "secret"
    )
    assert env["TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_env_from_is_renamed_in_containers_and_init_containers():
    spec = hosted()["spec"]
    assert spec["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": names.host_name("blue", "shop", "web-env", "configmap")}, "prefix": "WEB_"}
    ]
    assert spec["initContainers"][0]["envFrom"] == [
        {"secretRef": {"name": names.host_name("blue", "shop", "db", "secret")}}
    ]


def test_the_downward_api_reads_the_tenant_pods_identity():
    host = hosted()
    env = env_of(host["spec"]["containers"][0])
    annotations, labels = host["metadata"]["annotations"], host["metadata"]["labels"]

    def value(var):
        path = env[var]["valueFrom"]["fieldRef"]["fieldPath"]
        kind, key = path[len("metadata.") :].split("['")
        return (annotations if kind == "annotations" else labels)[key.rstrip("']")]

    assert value("POD_NAME") == "web-7d9c5b7f9-x2k4q"
    assert value("POD_NS") == "shop"
    assert value("NODE") == "host-resources"
    assert value("HOST_IP") == "10.42.0.9", "the virtual node's address, as in the tenant Pod's status"
    assert value("APP") == "web"
    assert value("TEAM") == "checkout"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_downward_api_volumes_show_the_tenant_labels_and_annotations():
    host = hosted()
    annotations = host["metadata"]["annotations"]
    podinfo = next(v for v in host["spec"]["volumes"] if v["name"] == "podinfo")
    paths = {i["path"]: i["fieldRef"]["fieldPath"] for i in podinfo["downwardAPI"]["items"]}
    key = paths["labels"].split("'")[1]
    assert annotations[key] == 'app="web"\npod-template-hash="7d9c5b7f9"\n'
    key = paths["annotations"].split("'")[1]
    assert annotations[key] == 'kubectl.kubernetes.io/restartedAt="2026-11-01"\nteam="checkout"\n'


def test_tenant_annotations_are_copied_only_when_read():
    pod = tenant_pod()
    pod["spec"]["containers"][0]["env"] = []
    pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"] if v["name"] != "podinfo"]
    pod["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "x" * 100_000
    annotations = hosted(pod)["metadata"]["annotations"]
    assert all(len(v) < 1000 for v in annotations.values())


# -- references -------------------------------------------------------------------------------
def test_volumes_and_projections_use_the_host_copies():
    volumes = {v["name"]: v for v in hosted()["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == names.host_name(
        "blue", "shop", "web-config", "configmap"
    )
    assert volumes["tls"]["secret"] == {
        "secretName": names.host_name("blue", "shop", "web-tls", "secret"),
        "defaultMode": 0o400,
    }
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}
    sources = volumes["kube-api-access-abcde"]["projected"]["sources"]
    assert sources[1]["configMap"]["name"] == names.host_name("blue", "shop", "kube-root-ca.crt", "configmap")


def test_image_pull_secrets_are_renamed():
    assert hosted()["spec"]["imagePullSecrets"] == [
        {"name": names.host_name("blue", "shop", "registry", "secret")}
    ]


def test_references_list_every_configmap_and_secret_once():
    refs = {(r.kind, r.name): r.optional for r in pods.references(tenant_pod())}
    assert refs == {
        ("configmap", "kube-root-ca.crt"): False,
        ("configmap", "web-config"): False,  # a volume and an env var: required by the volume
        ("configmap", "web-env"): False,
        ("secret", "api"): True,
        ("secret", "db"): False,
        ("secret", "registry"): True,  # the kubelet pulls without a missing pull secret
        ("secret", "web-tls"): False,
    }


def test_every_reference_in_the_host_pod_is_a_copy_the_agent_makes():
    """Every ConfigMap or Secret name in the host Pod is the host name of a reference (or
    the Pod's token Secret): nothing of the host namespace is reachable by name."""
    pod = tenant_pod()
    made = {names.host_name("blue", "shop", r.name, r.kind) for r in pods.references(pod)}
    made.add(names.token_secret_name("blue", "shop", pod["metadata"]["name"]))
    text = json.dumps(hosted(pod)["spec"])
    found = set()
    spec = hosted(pod)["spec"]
    for vol in spec["volumes"]:
        found.add((vol.get("configMap") or {}).get("name"))
        found.add((vol.get("secret") or {}).get("secretName"))
        for src in (vol.get("projected") or {}).get("sources", []):
            found.add((src.get("configMap") or {}).get("name"))
            found.add((src.get("secret") or {}).get("name"))
    for ctr in spec["containers"] + spec["initContainers"]:
        for e in ctr.get("env", []):
            for ref in ("configMapKeyRef", "secretKeyRef"):
                found.add(((e.get("valueFrom") or {}).get(ref) or {}).get("name"))
        for e in ctr.get("envFrom", []):
            found.add((e.get("configMapRef") or {}).get("name"))
            found.add((e.get("secretRef") or {}).get("name"))
    found |= {s["name"] for s in spec["imagePullSecrets"]}
    found.discard(None)
    assert found <= made, found - made
    assert '"web-config"' not in text and '"kube-root-ca.crt"' not in text


def test_host_copies_carry_data_but_no_tenant_metadata():
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": "web-tls",
            "namespace": "shop",
            "uid": "s-1",
            "labels": {"app": "web"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
        "immutable": True,
    }
    copy_ = pods.host_copy(secret, SETTINGS)
    assert copy_["metadata"]["name"] == names.host_name("blue", "shop", "web-tls", "secret")
    assert copy_["metadata"]["namespace"] == "tenants-blue-pods"
    assert copy_["metadata"]["annotations"] == {names.NAME_ANNOTATION: "web-tls"}
    assert names.owner_of(copy_) == ("blue", "secret", "shop", "web-tls")
    assert copy_["data"] == secret["data"] and copy_["immutable"] is True
    assert copy_["type"] == "kubernetes.io/tls"
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "shop"},
        "data": {"k": "v"},
    }
    assert pods.host_copy(cm, SETTINGS)["data"] == {"k": "v"}
    assert "type" not in pods.host_copy(cm, SETTINGS)


# -- no host credential -----------------------------------------------------------------------
def test_no_token_of_the_host_reaches_the_pod():
    spec = hosted()["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "virtual-pods", "the deployer's account without rights"
    assert "serviceAccount" not in spec
    assert "serviceAccountToken" not in json.dumps(spec), "the host kubelet would mint a host token"
    token_source = hosted()["spec"]["volumes"][-1]["projected"]["sources"][0]
    assert token_source == {
        "secret": {
            "name": names.token_secret_name("blue", "shop", "web-7d9c5b7f9-x2k4q"),
            "items": [{"key": "kube-api-access-abcde.0", "path": "token"}],
        }
    }


def test_token_requests_follow_the_projections_and_the_tenant_service_account():
    pod = tenant_pod()
    pod["spec"]["volumes"].append(
        {
            "name": "vault",
            "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "vault"}}]},
        }
    )
    requests = pods.token_requests(pod)
    assert [(r.key, r.service_account, r.audience, r.expiration_seconds) for r in requests] == [
        ("kube-api-access-abcde.0", "web", None, 3607),
        ("vault.0", "web", "vault", 3600),
    ]
    secret = pods.token_secret(
        pod, SETTINGS, {"kube-api-access-abcde.0": "tenant-jwt", "vault.0": "vault-jwt"}
    )
    assert base64.b64decode(secret["data"]["kube-api-access-abcde.0"]) == b"tenant-jwt"
    assert secret["metadata"]["name"] == names.token_secret_name("blue", "shop", pod["metadata"]["name"])
    assert secret["metadata"]["labels"][names.KIND_LABEL] == "token"
    assert secret["type"] == "Opaque"


def test_a_copied_service_account_token_secret_is_opaque_on_the_host():
    """With its type (and annotation) the host's token controller would take it for one of
    its own service accounts' Secrets."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": "legacy",
            "namespace": "shop",
            "annotations": {"kubernetes.io/service-account.name": "web"},
        },
        "data": {"token": "dGVuYW50"},
    }
    copy_ = pods.host_copy(secret, SETTINGS)
    assert copy_["type"] == "Opaque"
    assert "kubernetes.io/service-account.name" not in json.dumps(copy_)


def test_host_service_links_are_off_and_the_tenants_are_in_the_environment():
    services = [
        ServiceLink("db", "10.43.1.5", (("pg", 5432, "TCP"),)),
        ServiceLink("cache-v2", "10.43.1.6", (("", 6379, "TCP"), ("metrics", 9121, "TCP"))),
    ]
    spec = hosted(services=services)["spec"]
    assert spec["enableServiceLinks"] is False
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["DB_SERVICE_HOST"] == "10.43.1.5"
    assert env["DB_SERVICE_PORT_PG"] == "5432"
    assert env["DB_PORT"] == "tcp://10.43.1.5:5432"
    assert env["CACHE_V2_SERVICE_PORT"] == "6379"
    assert env["CACHE_V2_PORT_9121_TCP_ADDR"] == "10.43.1.6"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.43.0.17", "the tenant's API server, never the host's"
    assert env["KUBERNETES_SERVICE_PORT"] == "443"
    names_in_order = [e["name"] for e in spec["containers"][0]["env"]]
    assert names_in_order.index("DB_SERVICE_HOST") < names_in_order.index("GREETING"), (
        "service variables come first, so $(DB_SERVICE_HOST) in the Pod's own env expands"
    )


def test_every_kubernetes_variable_the_host_kubelet_adds_is_replaced():
    """The host kubelet gives every Pod its own API server's variables, service links on or
    off; the container's variables of the same names win, so all of them must be set."""
    host_kubelet_adds = {
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "KUBERNETES_SERVICE_PORT_HTTPS",
        "KUBERNETES_PORT",
        "KUBERNETES_PORT_443_TCP",
        "KUBERNETES_PORT_443_TCP_PROTO",
        "KUBERNETES_PORT_443_TCP_PORT",
        "KUBERNETES_PORT_443_TCP_ADDR",
    }
    for ctr in hosted()["spec"]["containers"] + hosted()["spec"]["initContainers"]:
        env = {e["name"]: e.get("value", "") for e in ctr["env"]}
        assert host_kubelet_adds <= set(env)
        assert all("10.43.0.17" in env[name] or env[name] in ("443", "tcp") for name in host_kubelet_adds)


def test_service_links_off_keep_only_the_kubernetes_variables():
    pod = tenant_pod()
    pod["spec"]["enableServiceLinks"] = False
    env = env_of(
        hosted(pod, services=[ServiceLink("db", "10.43.1.5", (("", 5432, "TCP"),))])["spec"]["containers"][0]
    )
    assert "DB_SERVICE_HOST" not in env
    assert env["KUBERNETES_SERVICE_HOST"]["value"] == "10.43.0.17"


def test_a_containers_own_variable_wins_over_a_service_link():
    pod = tenant_pod()
    pod["spec"]["containers"][0]["env"].append({"name": "KUBERNETES_SERVICE_HOST", "value": "mine"})
    env = [e for e in hosted(pod)["spec"]["containers"][0]["env"] if e["name"] == "KUBERNETES_SERVICE_HOST"]
    assert env == [{"name": "KUBERNETES_SERVICE_HOST", "value": "mine"}]


def test_kubernetes_default_resolves_to_the_tenant_api_server():
    aliases = hosted()["spec"]["hostAliases"]
    assert aliases[-1]["ip"] == "10.43.0.17"
    assert "kubernetes.default.svc.cluster.local" in aliases[-1]["hostnames"]


# -- DNS --------------------------------------------------------------------------------------
def test_cluster_first_dns_asks_the_tenant_dns_with_the_tenant_search_path():
    spec = hosted()["spec"]
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"] == {
        "nameservers": ["10.43.0.53"],
        "searches": ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        "options": [{"name": "ndots", "value": "5"}],
    }


def test_a_pods_own_dns_config_is_merged_and_its_ndots_kept():
    pod = tenant_pod()
    pod["spec"]["dnsConfig"] = {"searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}]}
    config = hosted(pod)["spec"]["dnsConfig"]
    assert config["searches"][-1] == "corp.example"
    assert config["options"] == [{"name": "ndots", "value": "2"}]


def test_without_a_tenant_dns_pods_never_get_the_host_cluster_dns():
    spec = hosted(settings=HostSettings(tenant="blue", namespace="n"))["spec"]
    assert spec["dnsPolicy"] == "Default"


def test_dns_policies_default_and_none_are_kept():
    pod = tenant_pod()
    pod["spec"]["dnsPolicy"] = "None"
    pod["spec"]["dnsConfig"] = {"nameservers": ["1.1.1.1"]}
    spec = hosted(pod)["spec"]
    assert spec["dnsPolicy"] == "None" and spec["dnsConfig"] == {"nameservers": ["1.1.1.1"]}


# -- placement --------------------------------------------------------------------------------
def test_the_tenant_scheduling_is_not_carried_to_the_host():
    spec = hosted()["spec"]
    for key in ("nodeName", "nodeSelector", "schedulerName", "priority", "affinity", "tolerations"):
        assert key not in spec, key


def test_a_mirror_nodes_pods_are_pinned_to_its_host_node_and_tolerate_its_taints_only():
    spec = hosted(placement=MIRROR)["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}]
    assert spec["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ]


def test_only_the_resources_nodes_pods_carry_the_class_the_quota_counts():
    quota = dataclasses.replace(SETTINGS, resources_priority_class="rhizeption-virtual-resources")
    pod = tenant_pod()
    pod["spec"]["priorityClassName"] = "tenant-critical"  # the tenant's, meaningless on the host
    assert hosted(pod, settings=quota)["spec"]["priorityClassName"] == "rhizeption-virtual-resources"
    assert "priorityClassName" not in hosted(pod, placement=MIRROR, settings=quota)["spec"]
    assert "priorityClassName" not in hosted(pod)["spec"], "no quota configured, no class"


def test_what_a_container_of_the_resources_node_does_not_request_is_an_explicit_zero():
    """The host quota admits only containers naming what it counts; 0 is what the tenant's
    scheduler counted. A request or limit the tenant gave stays as it is."""
    quota = dataclasses.replace(SETTINGS, resources_priority_class="rhizeption-virtual-resources")
    pod = tenant_pod()
    pod["spec"]["initContainers"] = [
        {"name": "init", "image": "x", "resources": {"limits": {"memory": "1Gi"}}}
    ]
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "250m"}}
    spec = hosted(pod, settings=quota)["spec"]
    assert spec["containers"][0]["resources"] == {"requests": {"cpu": "250m", "memory": "0"}}
    assert spec["initContainers"][0]["resources"] == {"limits": {"memory": "1Gi"}, "requests": {"cpu": "0"}}
    mirror = hosted(pod, placement=MIRROR, settings=quota)["spec"]
    assert mirror["containers"][0]["resources"] == {"requests": {"cpu": "250m"}}, "a mirror's Pods: as asked"


@pytest.mark.parametrize(
    ("toleration", "expected"),
    [
        ({"operator": "Exists"}, True),
        ({"key": "dedicated", "operator": "Exists"}, True),
        ({"key": "dedicated", "value": "gpu"}, True),
        ({"key": "dedicated", "value": "cpu"}, False),
        ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "other", "operator": "Exists"}, False),
    ],
)
def test_tolerations_follow_kubernetes_rules(toleration, expected):
    assert (
        pods.tolerates(toleration, {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}) is expected
    )


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda s: s.update(hostNetwork=True), "spec.hostNetwork", pods.REASON_POD_SECURITY),
        (
            lambda s: s["containers"][0].update(securityContext={"privileged": True}),
            "spec.containers[0].securityContext.privileged",
            pods.REASON_POD_SECURITY,
        ),
        (
            lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/etc"}}),
            "spec.volumes[5].hostPath",
            pods.REASON_POD_SECURITY,
        ),
        (
            lambda s: s["volumes"].append({"name": "d", "persistentVolumeClaim": {"claimName": "data"}}),
            "spec.volumes[5].persistentVolumeClaim",
            pods.REASON_UNSUPPORTED,
        ),
        (
            lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
            "spec.volumes[5].nfs",
            pods.REASON_UNSUPPORTED,
        ),
        (lambda s: s.update(runtimeClassName="gvisor"), "spec.runtimeClassName", pods.REASON_UNSUPPORTED),
        (
            lambda s: s.update(ephemeralContainers=[{"name": "debug", "image": "busybox"}]),
            "spec.ephemeralContainers",
            pods.REASON_UNSUPPORTED,
        ),
        (lambda s: s.update(someFutureField={"x": 1}), "spec.someFutureField", pods.REASON_UNSUPPORTED),
        (
            lambda s: s["volumes"][4]["projected"]["sources"].append({"clusterTrustBundle": {"name": "b"}}),
            "spec.volumes[4].projected.sources[3].clusterTrustBundle",
            pods.REASON_UNSUPPORTED,
        ),
        (
            lambda s: s["containers"][0]["env"].append(
                {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.generateName"}}}
            ),
            "spec.containers[0].env[11].valueFrom.fieldRef.fieldPath",
            pods.REASON_UNSUPPORTED,
        ),
        (
            lambda s: s["volumes"][2]["downwardAPI"]["items"].append(
                {"path": "g", "fieldRef": {"fieldPath": "metadata.generateName"}}
            ),
            "spec.volumes[2].downwardAPI.items[3].fieldRef.fieldPath",
            pods.REASON_UNSUPPORTED,
        ),
    ],
)
def test_what_the_host_cannot_honour_is_refused_naming_the_field(change, field, reason):
    pod = tenant_pod()
    change(pod["spec"])
    with pytest.raises(Refused) as refused:
        hosted(pod)
    assert [(r.field, r.reason) for r in refused.value.refusals] == [(field, reason)]
    assert field in str(refused.value)
    status = pods.refused_status(pod, refused.value.refusals, NOW)
    assert status["phase"] == "Failed"
    assert status["reason"] == reason
    assert field in status["message"]


def test_every_refused_field_is_named_at_once():
    pod = tenant_pod()
    pod["spec"].update(hostPID=True, runtimeClassName="kata")
    problems = pods.refusals(pod, SETTINGS)
    assert [p.field for p in problems] == ["spec.hostPID", "spec.runtimeClassName"]
    assert pods.refused_status(pod, problems, NOW)["reason"] == pods.REASON_POD_SECURITY


def test_the_host_admins_level_decides():
    pod = tenant_pod()
    pod["spec"]["hostNetwork"] = True
    privileged = HostSettings(tenant="blue", namespace="n", pod_security="privileged", dns_ip="10.43.0.53")
    spec = pods.translate_pod(pod, privileged, RESOURCES)["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "Default", "ClusterFirst on the host network falls back, as the kubelet does"
    restricted = HostSettings(tenant="blue", namespace="n", pod_security="restricted")
    assert pods.refusals(tenant_pod(), restricted), "the plain test Pod is not restricted-compliant"


def test_the_host_pod_passes_the_level_the_tenant_pod_passed():
    from rhizeption_agent.backends.hostcluster import podsecurity

    assert podsecurity.violations(hosted(), "baseline") == []


def test_translation_leaves_the_tenant_pod_as_it_was():
    pod = tenant_pod()
    before = copy.deepcopy(pod)
    hosted(pod, placement=MIRROR)
    assert pod == before


# -- status back -------------------------------------------------------------------------------
def host_status():
    return {
        "phase": "Running",
        "conditions": [
            {
                "type": "PodReadyToStartContainers",
                "status": "True",
                "lastTransitionTime": "2026-11-23T09:59:01Z",
            },
            {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-23T09:59:03Z"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-23T09:59:09Z"},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-23T09:59:09Z"},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-23T09:59:00Z"},
        ],
        "hostIP": "192.168.1.21",
        "hostIPs": [{"ip": "192.168.1.21"}],
        "podIP": "10.244.3.17",
        "podIPs": [{"ip": "10.244.3.17"}],
        "startTime": "2026-11-23T09:59:00Z",
        "qosClass": "Burstable",
        "initContainerStatuses": [
            {
                "name": "migrate",
                "ready": True,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }
        ],
        "containerStatuses": [
            {
                "name": "web",
                "image": "localhost/shop/web:1",
                "imageID": "sha256:abc",
                "containerID": "containerd://123",
                "ready": True,
                "started": True,
                "restartCount": 2,
                "state": {"running": {"startedAt": "2026-11-23T09:59:08Z"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "OOMKilled",
                        "startedAt": "2026-11-23T09:59:04Z",
                        "finishedAt": "2026-11-23T09:59:07Z",
                    }
                },
            }
        ],
    }


def test_status_round_trips_from_the_host():
    host = hosted()
    host["status"] = host_status()
    status = pods.tenant_status(host, tenant_pod(), "10.42.0.9", NOW)
    want = host_status()
    assert status["phase"] == "Running"
    assert status["podIP"] == "10.244.3.17" and status["podIPs"] == [{"ip": "10.244.3.17"}]
    assert status["hostIP"] == "10.42.0.9" and status["hostIPs"] == [{"ip": "10.42.0.9"}], (
        "the virtual node's address, never the host node's"
    )
    assert status["containerStatuses"] == want["containerStatuses"], "restartCount and lastState included"
    assert status["initContainerStatuses"] == want["initContainerStatuses"]
    assert status["startTime"] == want["startTime"]
    conditions = {c["type"]: c for c in status["conditions"]}
    for ctype in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"):
        assert conditions[ctype] == next(c for c in want["conditions"] if c["type"] == ctype)
    assert conditions["PodScheduled"]["status"] == "True"
    assert status["reason"] is None and status["message"] is None, "cleared in the merge patch"
    assert "192.168.1.21" not in json.dumps(status)


def test_status_keeps_the_tenants_qos_class_and_scheduling():
    host = {"status": {**host_status(), "qosClass": "Guaranteed"}}
    tenant = tenant_pod()
    tenant["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-23T09:58:00Z"}
    ]
    status = pods.tenant_status(host, tenant, "10.42.0.9", NOW)
    assert status["qosClass"] == "Burstable"
    assert next(c for c in status["conditions"] if c["type"] == "PodScheduled")["lastTransitionTime"] == (
        "2026-11-23T09:58:00Z"
    )


def test_ready_waits_for_the_tenants_readiness_gates():
    tenant = tenant_pod()
    tenant["spec"]["readinessGates"] = [{"conditionType": "example.com/lb-ready"}]
    tenant["status"]["conditions"] = [{"type": "example.com/lb-ready", "status": "False"}]
    assert "readinessGates" not in hosted(tenant)["spec"], "nobody in the host would set it"
    status = pods.tenant_status({"status": host_status()}, tenant, "10.42.0.9", NOW)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "ReadinessGatesNotReady"
    assert conditions["ContainersReady"]["status"] == "True"
    assert conditions["example.com/lb-ready"]["status"] == "False", "the tenant's condition is kept"
    tenant["status"]["conditions"] = [{"type": "example.com/lb-ready", "status": "True"}]
    status = pods.tenant_status({"status": host_status()}, tenant, "10.42.0.9", NOW)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


def test_a_pod_the_host_cannot_place_says_so_in_the_tenant():
    host = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient cpu.",
                }
            ],
        }
    }
    status = pods.tenant_status(host, tenant_pod(), "10.42.0.9", NOW)
    assert status["phase"] == "Pending"
    assert status["reason"] == pods.REASON_HOST_UNSCHEDULABLE
    assert "3 Insufficient cpu" in status["message"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"PodScheduled": "True"}


def test_an_evicted_host_pod_fails_the_tenant_pod_with_the_hosts_reason():
    host = {
        "status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}
    }
    status = pods.tenant_status(host, tenant_pod(), "10.42.0.9", NOW)
    assert (status["phase"], status["reason"]) == ("Failed", "Evicted")

"""The rhizeption.core.hnmachines inventory against the rig's real kube-apiserver.

HnMachines (and their status, through the /status subresource) are written straight to the
API in namespaces of this module's own; `ansible-inventory` runs as a subprocess, as a user
or AWX would run it. The CRDs come from the shared `hn_crds` fixture and are left in place.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")
GROUP, VERSION, PLURAL = "hn.rhizeption.io", "v1alpha1", "hnmachines"
SUFFIX = os.urandom(2).hex()
NS_A, NS_B = f"hnm-inv-a-{SUFFIX}", f"hnm-inv-b-{SUFFIX}"
EVIL = "{{ lookup('ansible.builtin.pipe', 'touch /tmp/hnm-integration-pwned') }}"

# name -> (namespace, cluster, labels, status or None)
MACHINES = {
    "m-ready": (
        NS_A,
        "blue",
        {"zone": "z1"},
        {
            "ready": True,
            "phase": "Ready",
            "podName": "m-ready",
            "podIP": "10.244.1.5",
            "hostIP": "192.0.2.10",
            "hostNodeName": "host-a",
            "nodeName": "m-ready",
            "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ok",
                    "lastTransitionTime": "2026-11-23T10:00:00Z",
                }
            ],
        },
    ),
    "m-prov": (NS_A, "blue", {"zone": "z2"}, {"ready": False, "phase": "Provisioning", "podName": "m-prov"}),
    "m-new": (NS_A, "blue", {"zone": "z2"}, None),
    "m-failed": (
        NS_A,
        "green",
        {"zone": "z1"},
        {"ready": False, "phase": "Failed", "failureReason": "ImagePull", "failureMessage": "no such image"},
    ),
    "m-b0": (NS_B, "blue", {"zone": "z3"}, {"ready": True, "phase": "Running", "podIP": "10.244.2.9"}),
}


def unsafe_free(value):
    """ansible-core 2.19 prints untrusted strings as {"__ansible_unsafe": "..."}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unsafe_free(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsafe_free(v) for v in value]
    return value


def base_env(**extra: str) -> dict[str, str]:
    # Nothing of the caller's Kubernetes or Ansible settings leaks into a run.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K8S_AUTH_", "ANSIBLE_"))}
    env.pop("KUBECONFIG", None)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    env.update(extra)
    return env


def run_inventory(source: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ANSIBLE_INVENTORY, "-i", str(source), *args],
        env=env or base_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def list_inventory(source: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    result = run_inventory(source, "--list", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert "Unable to parse" not in result.stderr, result.stderr
    return unsafe_free(json.loads(result.stdout))


def write_source(directory: Path, name: str = "x.hnmachines.yml", **options) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump({"plugin": "rhizeption.core.hnmachines", **options}))
    return path


def hnmachine_list_count(api_client: kubernetes.client.ApiClient) -> float:
    """Cluster-wide LIST requests the API server has answered for hnmachines, from its own
    metrics. Namespaced LISTs are left out: the namespace controller sends them while it
    empties the namespaces other tests deleted, and the plugin lists cluster-wide."""
    conf = api_client.configuration
    context = ssl.create_default_context(cafile=conf.ssl_ca_cert)
    context.load_cert_chain(conf.cert_file, conf.key_file)
    with urllib.request.urlopen(f"{conf.host}/metrics", context=context, timeout=30) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        name, brace, rest = line.partition("{")
        labels = rest.partition("}")[0] if brace else ""
        if (
            name == "apiserver_request_total"
            and 'resource="hnmachines"' in labels
            and 'verb="LIST"' in labels
            and 'scope="cluster"' in labels
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def machines(hn_crds, api_client: kubernetes.client.ApiClient) -> Iterator[dict]:
    """The MACHINES, with their status, in two namespaces of this module's own."""
    core = kubernetes.client.CoreV1Api(api_client)
    custom = kubernetes.client.CustomObjectsApi(api_client)
    for ns in (NS_A, NS_B):
        core.create_namespace({"metadata": {"name": ns}})
    try:
        for name, (ns, cluster, labels, status) in MACHINES.items():
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "HnMachine",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {"hn.rhizeption.io/cluster": cluster, **labels},
                    # Labels cannot hold a template; annotations can hold anything.
                    "annotations": {"note": EVIL},
                },
                "spec": {"clusterName": cluster},
            }
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
            if status is not None:
                custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, ns, PLURAL, name, {"status": status}
                )
        yield MACHINES
    finally:
        for ns in (NS_A, NS_B):
            core.delete_namespace(ns, propagation_policy="Background")


@pytest.fixture(scope="module")
def source(machines, control_plane, tmp_path_factory) -> Path:
    return write_source(
        tmp_path_factory.mktemp("inv"),
        "lab.hnmachines.yml",
        kubeconfig=str(control_plane.kubeconfig),
        namespaces=[NS_A, NS_B],
        compose={
            "machine_ref": "hn_namespace ~ '/' ~ hn_name",
            "copied_note": "hn_annotations.note",
        },
        keyed_groups=[{"key": "hn_labels.zone", "prefix": "zone"}],
        groups={"broken": "hn_phase == 'Failed'"},
    )


def hosts_of(inventory: dict, group: str) -> set[str]:
    return set(inventory.get(group, {}).get("hosts", []))


def test_list_gives_every_machine_with_groups_and_variables(source):
    inv = list_inventory(source)
    hv = inv["_meta"]["hostvars"]
    expected = {f"{ns}-{name}" for name, (ns, *_rest) in MACHINES.items()}
    assert set(hv) == expected
    a = NS_A.replace("-", "_")
    assert hosts_of(inv, f"hn_cluster_{a}_blue") == {f"{NS_A}-m-ready", f"{NS_A}-m-prov", f"{NS_A}-m-new"}
    assert hosts_of(inv, f"hn_cluster_{a}_green") == {f"{NS_A}-m-failed"}
    assert hosts_of(inv, f"hn_namespace_{NS_B.replace('-', '_')}") == {f"{NS_B}-m-b0"}
    # not ready machines are there, and marked
    assert hosts_of(inv, "hn_not_ready") == {f"{NS_A}-m-prov", f"{NS_A}-m-new", f"{NS_A}-m-failed"}
    assert hosts_of(inv, "hn_ready") == {f"{NS_A}-m-ready", f"{NS_B}-m-b0"}
    assert hosts_of(inv, "hn_phase_pending") == {f"{NS_A}-m-new"}
    assert hosts_of(inv, "hn_phase_running") == {f"{NS_B}-m-b0"}
    # constructed: keyed_groups, groups, compose
    assert hosts_of(inv, "zone_z2") == {f"{NS_A}-m-prov", f"{NS_A}-m-new"}
    assert hosts_of(inv, "broken") == {f"{NS_A}-m-failed"}
    ready = hv[f"{NS_A}-m-ready"]
    assert ready["machine_ref"] == f"{NS_A}/m-ready"
    assert ready["hn_ready"] is True and ready["hn_phase"] == "Ready"
    assert ready["hn_pod_ip"] == "10.244.1.5" and ready["ansible_host"] == "10.244.1.5"
    assert ready["hn_host_node"] == "host-a" and ready["hn_cluster"] == "blue"
    assert ready["hn_conditions"][0]["type"] == "Ready"
    assert ready["hn_uid"]
    # kubectl into the node container of the machine's Pod
    assert ready["ansible_connection"] == "kubernetes.core.kubectl"
    assert ready["ansible_kubectl_pod"] == "m-ready"
    assert ready["ansible_kubectl_namespace"] == NS_A
    assert ready["ansible_kubectl_container"] == "node"
    assert ready["ansible_kubectl_kubeconfig"].endswith("admin.kubeconfig")
    failed = hv[f"{NS_A}-m-failed"]
    assert failed["hn_ready"] is False and failed["hn_failure_reason"] == "ImagePull"
    new = hv[f"{NS_A}-m-new"]
    assert new["hn_phase"] == "Pending" and new["hn_pod_ip"] is None and "ansible_host" not in new


def test_api_data_stays_data(source):
    marker = Path("/tmp/hnm-integration-pwned")
    marker.unlink(missing_ok=True)
    result = run_inventory(source, "--list")
    assert result.returncode == 0, result.stderr
    raw = json.loads(result.stdout)["_meta"]["hostvars"][f"{NS_A}-m-new"]
    # printed as untrusted, and passed through compose as text
    assert raw["hn_annotations"]["note"] == {"__ansible_unsafe": EVIL}
    assert unsafe_free(raw["copied_note"]) == EVIL
    assert not marker.exists()


def test_graph(source):
    result = run_inventory(source, "--graph")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "@hnmachines:" in out and "@hn_not_ready:" in out and "@zone_z1:" in out
    assert f"{NS_A}-m-failed" in out and f"{NS_B}-m-b0" in out


def test_a_cache_hit_does_not_reach_the_api_server(machines, control_plane, api_client, tmp_path):
    cache_dir = tmp_path / "cache"
    # The inventory's own copy of the kubeconfig: after the first run it points at a closed
    # port, so a second run that answers at all answered from the cache.
    kubeconfig = tmp_path / "kubeconfig"
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    kubeconfig.write_text(yaml.safe_dump(config))
    source = write_source(
        tmp_path,
        kubeconfig=str(kubeconfig),
        namespaces=[NS_A, NS_B],
        cache=True,
        cache_plugin="ansible.builtin.jsonfile",
        cache_connection=str(cache_dir),
        cache_timeout=3600,
    )
    before = hnmachine_list_count(api_client)
    first = list_inventory(source)
    after_first = hnmachine_list_count(api_client)
    [cache_file] = list(cache_dir.iterdir())
    written = cache_file.stat().st_mtime_ns

    assert after_first - before == 1, "one cluster-wide paginated LIST"

    live_server = config["clusters"][0]["cluster"]["server"]
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    kubeconfig.write_text(yaml.safe_dump(config))
    second = list_inventory(source)
    assert second["_meta"]["hostvars"] == first["_meta"]["hostvars"], "answered from the cache"
    assert cache_file.stat().st_mtime_ns == written, "a hit must not rewrite the cache"
    dead = run_inventory(source, "--list", "--flush-cache")
    # ansible-inventory reports a source it cannot parse but exits 0 unless told otherwise.
    assert "Unable to parse" in dead.stderr and "127.0.0.1:1" in dead.stderr, "a flush does go to the API"

    config["clusters"][0]["cluster"]["server"] = live_server
    kubeconfig.write_text(yaml.safe_dump(config))
    after_second = hnmachine_list_count(api_client)
    list_inventory(source, "--flush-cache")
    assert hnmachine_list_count(api_client) == after_second + 1


def test_pagination_takes_every_page(machines, control_plane, tmp_path):
    source = write_source(
        tmp_path, kubeconfig=str(control_plane.kubeconfig), namespaces=[NS_A, NS_B], page_size=2
    )
    assert len(list_inventory(source)["_meta"]["hostvars"]) == len(MACHINES)


def test_selectors_and_filters(machines, control_plane, tmp_path):
    def names(**options):
        source = write_source(
            tmp_path, kubeconfig=str(control_plane.kubeconfig), namespaces=[NS_A, NS_B], **options
        )
        return {h.split("-", 4)[-1] for h in list_inventory(source)["_meta"]["hostvars"]}

    assert names(label_selector="zone in (z1,z3)") == {"m-ready", "m-failed", "m-b0"}
    assert names(field_selector="metadata.name=m-prov") == {"m-prov"}
    assert names(cluster_names=["green"]) == {"m-failed"}
    assert names(phases=["Pending", "Failed"]) == {"m-new", "m-failed"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cluster_is_one_clear_error(tmp_path):
    port = closed_port()
    source = write_source(
        tmp_path, host=f"https://127.0.0.1:{port}", api_key="not-a-token", validate_certs=False
    )
    result = run_inventory(source, "--list")
    err = result.stderr
    assert "Traceback" not in err
    # One error from the plugin (ansible-core 2.19 prints it in the warning's headline and
    # again under "caused by"): not one per retry, and no traceback.
    headlines = [line for line in err.splitlines() if line.startswith("[WARNING]") and "cannot reach" in line]
    assert len(headlines) == 1, err
    expected = f"{source}: cannot reach the Kubernetes API server at https://127.0.0.1:{port}: "
    assert expected in headlines[0] and "Connection refused" in headlines[0], err
    assert "not-a-token" not in err + result.stdout


def test_a_server_certificate_from_another_ca_is_named(control_plane, tmp_path):
    from riglib import pki

    pki.new_ca("not-the-rig-ca").write(tmp_path, "other-ca")
    source = write_source(
        tmp_path, host=control_plane.server, api_key="not-a-token", ca_cert=str(tmp_path / "other-ca.crt")
    )
    err = run_inventory(source, "--list").stderr
    headlines = [line for line in err.splitlines() if line.startswith("[WARNING]") and "cannot reach" in line]
    assert len(headlines) == 1, err
    assert control_plane.server in headlines[0] and "certificate verify failed" in headlines[0], err


def test_a_malformed_option_is_named(tmp_path):
    source = write_source(tmp_path, host_format="{namespace}/{nmae}")
    result = run_inventory(source, "--list")
    assert "option 'host_format'" in result.stderr and str(source) in result.stderr, result.stderr


@pytest.fixture
def service_account_token(machines, api_client):
    """TOKEN(name, namespace, cluster_wide): a real ServiceAccount token (TokenRequest API)
    that may list HnMachines everywhere, or only in its own namespace."""
    core = kubernetes.client.CoreV1Api(api_client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    cleanups = []
    rule = {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list"]}

    def make(name: str, namespace: str, cluster_wide: bool) -> str:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
        if cluster_wide:
            role = f"{name}-{SUFFIX}"
            rbac.create_cluster_role({"metadata": {"name": role}, "rules": [rule]})
            cleanups.append(lambda: rbac.delete_cluster_role(role))
            rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": role},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [subject],
                }
            )
            cleanups.append(lambda: rbac.delete_cluster_role_binding(role))
        else:
            rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": [rule]})
            rbac.create_namespaced_role_binding(
                namespace,
                {
                    "metadata": {"name": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": [subject],
                },
            )
        request = core.create_namespaced_service_account_token(
            name, namespace, {"spec": {"expirationSeconds": 3600}}
        )
        return request.status.token

    yield make
    for cleanup in reversed(cleanups):
        cleanup()


def awx_env(control_plane, token: str, home: Path) -> dict[str, str]:
    """What an AWX Kubernetes credential gives an inventory update: no kubeconfig at all."""
    home.mkdir(parents=True, exist_ok=True)
    return base_env(
        HOME=str(home),
        KUBECONFIG=str(home / "no-kubeconfig"),
        K8S_AUTH_HOST=control_plane.server,
        K8S_AUTH_API_KEY=token,
        K8S_AUTH_SSL_CA_CERT=str(Path(control_plane.workdir) / "ca.crt"),
    )


def test_awx_style_credentials_from_the_environment_only(control_plane, service_account_token, tmp_path):
    token = service_account_token("hnm-inventory", NS_A, cluster_wide=True)
    source = write_source(tmp_path / "project", namespaces=[NS_A, NS_B])
    result = run_inventory(source, "--list", env=awx_env(control_plane, token, tmp_path / "home"))
    assert result.returncode == 0 and "Unable to parse" not in result.stderr, result.stderr
    hv = unsafe_free(json.loads(result.stdout))["_meta"]["hostvars"]
    assert len(hv) == len(MACHINES)
    assert token not in result.stdout, "a token must never reach host variables"
    host = hv[f"{NS_A}-m-ready"]
    assert host["ansible_connection"] == "kubernetes.core.kubectl"
    # the kubectl connection reads K8S_AUTH_* itself: no connection settings in the variables
    assert not [
        k for k in host if re.match(r"ansible_kubectl_(kubeconfig|context|host|ca_cert|token|api_key)", k)
    ]


def test_forbidden_namespaces_are_skipped_with_a_warning(control_plane, service_account_token, tmp_path):
    token = service_account_token("hnm-one-namespace", NS_A, cluster_wide=False)
    env = awx_env(control_plane, token, tmp_path / "home")

    strict = write_source(tmp_path / "strict", namespaces=[NS_A, NS_B])
    result = run_inventory(strict, "--list", env=env)
    assert "forbidden" in result.stderr and NS_B in result.stderr, result.stderr
    assert not json.loads(result.stdout or "{}").get("_meta", {}).get("hostvars")

    lenient = write_source(tmp_path / "lenient", namespaces=[NS_A, NS_B], skip_forbidden_namespaces=True)
    result = run_inventory(lenient, "--list", env=env)
    assert result.returncode == 0 and "Unable to parse" not in result.stderr, result.stderr
    assert re.search(rf"skipped namespace '{NS_B}'", result.stderr.replace("\n", " ")), result.stderr
    hv = unsafe_free(json.loads(result.stdout))["_meta"]["hostvars"]
    assert set(hv) == {f"{NS_A}-{name}" for name, (ns, *_r) in MACHINES.items() if ns == NS_A}

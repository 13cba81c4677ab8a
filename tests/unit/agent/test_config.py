"""The agent's config file: defaults, and one clear message naming the field for bad input."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import rhizeption_agent
from rhizeption_agent import __main__ as cli
from rhizeption_agent.config import ConfigError, load, parse

MINIMAL = {"node_name": "pet-1", "kubeconfig": "/etc/rhizeption-agent/kubeconfig"}
HOST = {
    "kubeconfig": "/etc/rhizeption-agent/host.kubeconfig",
    "tenant": "green",
    "namespace": "tenants-green-pods",
    "resources": {"cpu": "1", "memory": "2Gi"},
}


def test_a_virtual_node_config_takes_the_host_cluster_backend():
    cfg = parse({**MINIMAL, "backend": "hostcluster", "host_cluster": HOST})
    assert cfg.backend == "hostcluster" and cfg.host_cluster.namespace == "tenants-green-pods"
    assert cfg.host_cluster.pod_security == "baseline" and cfg.host_cluster.api_server_port == 443
    assert parse(MINIMAL).backend == "podman"


def test_an_agent_of_mirror_nodes_needs_no_resources():
    cfg = parse(
        {**MINIMAL, "backend": "hostcluster", "host_cluster": {**HOST, "resources": {}, "nodes": ["node-a"]}}
    )
    assert cfg.host_cluster.nodes == ["node-a"] and cfg.host_cluster.resources == {}


def test_an_agent_in_a_pod_of_the_host_needs_no_host_kubeconfig():
    host = {k: v for k, v in HOST.items() if k != "kubeconfig"}
    assert parse({**MINIMAL, "backend": "hostcluster", "host_cluster": host}).host_cluster.kubeconfig == ""
    cfg = parse({**MINIMAL, "backend": "hostcluster", "host_cluster": {**HOST, "kubeconfig": ""}})
    assert cfg.host_cluster.kubeconfig == ""


@pytest.fixture
def pod_service_account(tmp_path, monkeypatch):
    """What the kubelet gives a Pod: the Service's address in the environment, the token and
    the CA in files (here in tmp_path). Returns the token file."""
    from kubernetes.config import incluster_config

    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("first-token")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nnot checked here\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    return account / "token"


def _authorization(kube) -> str:
    """The Authorization header Kube's next request carries: the client asks the configuration's
    auth_settings for it at each request (its refresh hook runs there), in every version."""
    return kube.api.configuration.auth_settings()["BearerToken"]["value"]


def test_without_a_host_kubeconfig_the_agent_is_its_pods_service_account(pod_service_account, monkeypatch):
    import datetime

    import kubernetes
    from kubernetes.config import incluster_config

    host = cli.connect_host("")
    assert host.host == "https://10.96.0.1:443"
    assert host.api.configuration.ssl_ca_cert == str(pod_service_account.parent / "ca.crt")
    assert _authorization(host) == "bearer first-token"
    assert kubernetes.client.Configuration.get_default_copy().host != host.host, "the default is left alone"

    # The kubelet rotates the projected token: a minute later the next request carries the new one.
    pod_service_account.write_text("rotated-token")
    later = datetime.datetime.now() + datetime.timedelta(minutes=2)

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(
        incluster_config, "datetime", SimpleNamespace(datetime=Clock, timedelta=datetime.timedelta)
    )
    assert _authorization(host) == "bearer rotated-token"


def test_a_host_kubeconfig_is_used_even_in_a_pod(pod_service_account, tmp_path):
    kubeconfig = tmp_path / "host.kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: host\n"
        "clusters: [{name: host, cluster: {server: 'https://192.0.2.1:6443'}}]\n"
        "users: [{name: agent, user: {token: file-token}}]\n"
        "contexts: [{name: host, context: {cluster: host, user: agent}}]\n"
    )
    host = cli.connect_host(str(kubeconfig))
    assert host.host == "https://192.0.2.1:6443"
    assert _authorization(host) == "Bearer file-token"


def test_minimal_config_takes_the_defaults():
    cfg = parse(MINIMAL)
    assert cfg.lease_renew_seconds == 10.0
    assert cfg.status_report_seconds == 300.0
    assert cfg.server.port == 10250
    assert cfg.podman_url == "unix:///run/podman/podman.sock"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kubeconfig": "/k"}, "'node_name'"),
        ({**MINIMAL, "node_name": "Pet_1"}, "'node_name'"),
        ({**MINIMAL, "nodename": "x"}, "'nodename'"),
        ({**MINIMAL, "max_pods": "many"}, "'max_pods'"),
        ({**MINIMAL, "max_pods": True}, "'max_pods'"),
        ({**MINIMAL, "internal_ip": "10.0.0.300"}, "'internal_ip'"),
        ({**MINIMAL, "taints": [{"key": "a", "effect": "Sometimes"}]}, "'taints[0]'"),
        ({**MINIMAL, "labels": {"zone": 3}}, "'labels.zone'"),
        ({**MINIMAL, "reserved": {"gpu": "1"}}, "'reserved.gpu'"),
        ({**MINIMAL, "server": {"port": 70000}}, "'server.port'"),
        ({**MINIMAL, "server": {"prot": 1}}, "'server.prot'"),
        ({**MINIMAL, "lease_renew_seconds": 50}, "'lease_renew_seconds'"),
        ({**MINIMAL, "backend": "docker"}, "'backend'"),
        ({**MINIMAL, "backend": "hostcluster"}, "'host_cluster.tenant'"),
        (
            {**MINIMAL, "backend": "hostcluster", "host_cluster": {**HOST, "namespace": ""}},
            "'host_cluster.namespace'",
        ),
        (
            {**MINIMAL, "backend": "hostcluster", "host_cluster": {**HOST, "resources": {"cpu": "1"}}},
            "'host_cluster.resources'",
        ),
        (
            {**MINIMAL, "backend": "hostcluster", "host_cluster": {**HOST, "pod_security": "lax"}},
            "'host_cluster.pod_security'",
        ),
        (
            {**MINIMAL, "backend": "hostcluster", "host_cluster": {**HOST, "resources": {}}},
            "'host_cluster': promotes nothing",
        ),
        (
            {**MINIMAL, "backend": "hostcluster", "host_cluster": {**HOST, "nodes": ["Node_A"]}},
            "'host_cluster.nodes': 'Node_A'",
        ),
        (
            {**MINIMAL, "backend": "hostcluster", "host_cluster": {**HOST, "nodes": [MINIMAL["node_name"]]}},
            "which node_name gives the resources node",
        ),
        ({**MINIMAL, "host_cluster": {"kubeconfg": "/k"}}, "'host_cluster.kubeconfg'"),
        ({**MINIMAL, "host_cluster": {"api_server_port": "443"}}, "'host_cluster.api_server_port'"),
    ],
)
def test_bad_input_names_the_field(data, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        parse(data)


def test_a_file_that_is_not_yaml_is_one_clear_message(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("node_name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "missing.yaml")


def test_the_agent_stops_at_start_with_one_line_for_a_malformed_config(tmp_path, capsys):
    path = tmp_path / "agent.yaml"
    path.write_text("node_name: pet-1\nkubeconfig: /k\nmax_pods: lots\n")
    assert cli.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "max_pods" in err[0] and "int" in err[0]


def test_the_config_checks_with_the_files_a_pet_node_gets(tmp_path):
    """The pet_node role installs the core and backends/*.py, not backends/hostcluster: the
    agent's --check, which validates the config the role writes, must run with those alone."""
    package = Path(rhizeption_agent.__file__).parent
    lib = tmp_path / "lib" / "rhizeption_agent"
    (lib / "backends").mkdir(parents=True)
    for source in [*package.glob("*.py"), *package.glob("backends/*.py")]:
        shutil.copy(source, lib / source.relative_to(package))
    config = tmp_path / "agent.yaml"
    config.write_text("node_name: pet-1\nkubeconfig: /etc/rhizeption-agent/kubeconfig\n")
    collections = [p for p in sys.path if p.endswith(".collections")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "lib"), *collections])}
    done = subprocess.run(
        [sys.executable, "-m", "rhizeption_agent", "--check", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr

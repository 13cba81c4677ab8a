"""The hnmachines inventory's options, host names, variables and groups, from plain dicts."""

from __future__ import annotations

import os

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils.inventory_hnmachines import (
    DEFAULT_ADDRESS_PREFERENCE,
    OptionError,
    Settings,
    address,
    hosts_from,
    safe_group_name,
    settings_from,
)

DEFAULTS = {
    "prefix": "hn_",
    "group_prefix": "hn_",
    "root_group": "hnmachines",
    "address_preference": list(DEFAULT_ADDRESS_PREFERENCE),
    "connection_type": "kubectl",
    "phases": None,
    "namespaces": None,
    "cluster_names": None,
    "label_groups": False,
    "host_format": "{namespace}-{name}",
}


def options(**overrides):
    merged = {**DEFAULTS, **overrides}
    return merged.__getitem__


def machine(name="m0", namespace="lab", cluster="blue", status=None, labels=None, **spec):
    return {
        "apiVersion": "hn.rhizeption.io/v1alpha1",
        "kind": "HnMachine",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "labels": {"hn.rhizeption.io/cluster": cluster, **(labels or {})},
            "annotations": {"note": "x"},
        },
        "spec": {"clusterName": cluster, **spec},
        **({"status": status} if status is not None else {}),
    }


READY = {
    "ready": True,
    "phase": "Ready",
    "podName": "m0",
    "podIP": "10.244.0.7",
    "hostIP": "192.0.2.10",
    "hostNodeName": "host-a",
    "nodeName": "m0",
    "addresses": [{"type": "InternalIP", "address": "10.0.0.7"}, {"type": "Hostname", "address": "m0"}],
    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-23T10:00:00Z"}],
}


# -- options -----------------------------------------------------------------------------


def test_defaults_give_kubectl_settings():
    s = settings_from(options())
    assert s == Settings()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("host_format", "{namespace}/{nam}"),
        ("host_format", "static"),
        ("host_format", "{name"),
        ("host_format", ""),
        ("prefix", "9x"),
        ("prefix", "hn-"),
        ("root_group", "my-group"),
        ("address_preference", ["status.podIP", "status.bogus"]),
        ("address_preference", "status.nope"),
        ("connection_type", "winrm"),
        ("phases", ["Running", "Sleeping"]),
        ("namespaces", [""]),
        ("namespaces", [1]),
        ("cluster_names", {"a": 1}),
        ("label_groups", "yes"),
    ],
)
def test_a_malformed_option_is_named(option, value):
    with pytest.raises(OptionError) as err:
        settings_from(options(**{option: value}))
    assert err.value.option == option
    assert f"option '{option}'" in str(err.value)


def test_a_single_string_is_a_list_of_one():
    s = settings_from(options(namespaces="lab", phases="Ready"))
    assert s.namespaces == frozenset({"lab"}) and s.phases == frozenset({"Ready"})


def test_connection_options_from_the_file_reach_kubectl_but_secrets_never_do():
    file_options = {
        "plugin": "rhizeption.core.hnmachines",
        "kubeconfig": "/etc/k/config",
        "context": "prod",
        "api_key": "SECRET-TOKEN",
        "password": "SECRET-PASSWORD",
        "ca_cert": "/etc/k/ca.crt",
        "validate_certs": True,
    }
    s = settings_from(options(), file_options)
    assert s.connection_vars == {
        "ansible_kubectl_kubeconfig": "/etc/k/config",
        "ansible_kubectl_context": "prod",
        "ansible_kubectl_ca_cert": "/etc/k/ca.crt",
        "ansible_kubectl_validate_certs": True,
    }
    assert "SECRET" not in repr(s)
    host = hosts_from([machine(status=READY)], s).hosts[0]
    assert "SECRET" not in repr(host.vars)


def test_kubeconfig_for_kubectl_is_expanded_and_several_files_go_through_kubeconfig_env():
    home = os.path.expanduser("~")
    s = settings_from(options(), {"kubeconfig": "~/.kube/prod"})
    assert s.connection_vars == {"ansible_kubectl_kubeconfig": f"{home}/.kube/prod"}
    s = settings_from(options(), {"kubeconfig": "/a/one:~/two"})
    assert s.connection_vars == {"ansible_kubectl_local_env_vars": {"KUBECONFIG": f"/a/one:{home}/two"}}


def test_an_inline_kubeconfig_is_not_copied_into_host_variables():
    inline = {"users": [{"name": "u", "user": {"token": "SECRET"}}]}
    s = settings_from(options(), {"kubeconfig": inline, "context": "c"})
    assert s.connection_vars == {"ansible_kubectl_context": "c"}


def test_no_connection_variables_for_ssh_or_none():
    for kind in ("ssh", "none"):
        s = settings_from(options(connection_type=kind), {"kubeconfig": "/k"})
        result = hosts_from([machine(status=READY)], s)
        assert result.group_vars == {}
        assert not [k for k in result.hosts[0].vars if k.startswith("ansible_kubectl")]


# -- host names ---------------------------------------------------------------------------


def test_default_host_name_is_namespace_dash_name():
    assert hosts_from([machine()], Settings()).hosts[0].name == "lab-m0"


def test_host_format_fields():
    s = Settings(host_format="{cluster}.{name}.{namespace}.{uid}")
    assert hosts_from([machine()], s).hosts[0].name == "blue.m0.lab.uid-lab-m0"


def test_two_machines_with_one_host_name_are_reported_not_merged():
    s = Settings(host_format="{name}")
    result = hosts_from([machine(namespace="a"), machine(namespace="b")], s)
    assert [h.vars["hn_namespace"] for h in result.hosts] == ["a"]
    assert len(result.warnings) == 1
    assert "a/m0 and b/m0" in result.warnings[0] and "'m0'" in result.warnings[0]


# -- variables -----------------------------------------------------------------------------


def test_variables_of_a_ready_machine():
    m = machine(status=READY, providerID="hn://lab/m0")
    host = hosts_from([m], Settings()).hosts[0]
    assert host.vars == {
        "hn_cluster": "blue",
        "hn_namespace": "lab",
        "hn_name": "m0",
        "hn_uid": "uid-lab-m0",
        "hn_phase": "Ready",
        "hn_ready": True,
        "hn_node_name": "m0",
        "hn_pod_name": "m0",
        "hn_pod_ip": "10.244.0.7",
        "hn_host_ip": "192.0.2.10",
        "hn_host_node": "host-a",
        "hn_addresses": READY["addresses"],
        "hn_labels": {"hn.rhizeption.io/cluster": "blue"},
        "hn_annotations": {"note": "x"},
        "hn_conditions": READY["conditions"],
        "hn_provider_id": "hn://lab/m0",
        "hn_failure_reason": None,
        "hn_failure_message": None,
        "ansible_host": "10.244.0.7",
        "ansible_kubectl_pod": "m0",
        "ansible_kubectl_namespace": "lab",
    }


def test_a_machine_without_status_is_kept_pending_and_not_ready_with_every_variable():
    result = hosts_from([machine()], Settings())
    host = result.hosts[0]
    assert host.vars["hn_phase"] == "Pending" and host.vars["hn_ready"] is False
    assert set(host.vars) >= {"hn_pod_ip", "hn_node_name", "hn_failure_reason", "hn_conditions"}
    assert "ansible_host" not in host.vars  # nothing to reach it at yet
    # the node Pod is named after the machine even before status says so
    assert host.vars["ansible_kubectl_pod"] == "m0"
    assert "hn_not_ready" in host.groups and "hn_phase_pending" in host.groups


def test_a_failed_machine_is_kept_with_its_reason():
    status = {
        "phase": "Failed",
        "ready": False,
        "failureReason": "ImagePull",
        "failureMessage": "no such image",
    }
    host = hosts_from([machine(status=status)], Settings()).hosts[0]
    assert host.vars["hn_failure_reason"] == "ImagePull"
    assert host.vars["hn_failure_message"] == "no such image"
    assert {"hn_not_ready", "hn_phase_failed"} <= set(host.groups)


def test_kubectls_copy_of_the_object_is_not_an_annotation_variable():
    m = machine(status=READY)
    m["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = '{"kind": "HnMachine"}'
    host = hosts_from([m], Settings()).hosts[0]
    assert host.vars["hn_annotations"] == {"note": "x"}


def test_another_prefix():
    host = hosts_from([machine(status=READY)], Settings(var_prefix="m_")).hosts[0]
    assert host.vars["m_phase"] == "Ready" and not [k for k in host.vars if k.startswith("hn_")]


def test_the_api_data_is_not_copied():
    # 10,000 machines: the variables point into the API's JSON instead of copying it
    m = machine(status=READY)
    host = hosts_from([m], Settings()).hosts[0]
    assert host.vars["hn_labels"] is m["metadata"]["labels"]
    assert host.vars["hn_conditions"] is m["status"]["conditions"]


def test_connection_vars_go_on_every_host():
    s = Settings(connection_vars={"ansible_kubectl_kubeconfig": "/k", "ansible_kubectl_context": "c"})
    host = hosts_from([machine(status=READY)], s).hosts[0]
    assert host.vars["ansible_kubectl_kubeconfig"] == "/k" and host.vars["ansible_kubectl_context"] == "c"


def test_kubectl_connection_is_a_group_variable():
    result = hosts_from([machine(status=READY)], Settings())
    assert result.group_vars == {
        "hn_kubectl": {"ansible_connection": "kubernetes.core.kubectl", "ansible_kubectl_container": "node"}
    }
    assert "ansible_connection" not in result.hosts[0].vars


# -- ansible_host --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preference", "expected"),
    [
        (DEFAULT_ADDRESS_PREFERENCE, "10.244.0.7"),
        (("addresses.InternalIP", "status.podIP"), "10.0.0.7"),
        (("addresses.ExternalIP", "addresses.Hostname"), "m0"),
        (("status.hostIP",), "192.0.2.10"),
        (("status.hostNodeName",), "host-a"),
        (("status.nodeName",), "m0"),
        (("addresses.ExternalDNS",), None),
        ((), None),
    ],
)
def test_address_preference(preference, expected):
    assert address(READY, preference) == expected


def test_address_falls_back_when_the_first_is_missing():
    status = {**READY, "podIP": ""}
    assert address(status, DEFAULT_ADDRESS_PREFERENCE) == "10.0.0.7"


def test_empty_preference_sets_no_ansible_host():
    host = hosts_from([machine(status=READY)], Settings(address_preference=())).hosts[0]
    assert "ansible_host" not in host.vars


# -- groups --------------------------------------------------------------------------------


def test_default_groups():
    m = machine(name="m1", namespace="team-a", cluster="blue-1", status=READY)
    assert hosts_from([m], Settings()).hosts[0].groups == [
        "hn_cluster_team_a_blue_1",
        "hn_namespace_team_a",
        "hn_phase_ready",
        "hn_ready",
    ]


def test_group_prefix():
    host = hosts_from([machine(status=READY)], Settings(group_prefix="x_")).hosts[0]
    assert host.groups == ["x_cluster_lab_blue", "x_namespace_lab", "x_phase_ready", "x_ready"]


def test_label_groups_only_when_asked():
    m = machine(status=READY, labels={"app.kubernetes.io/part-of": "web", "tier": "front-end"})
    assert not [g for g in hosts_from([m], Settings()).hosts[0].groups if "label" in g]
    groups = hosts_from([m], Settings(label_groups=True)).hosts[0].groups
    assert "hn_label_app_kubernetes_io_part_of_web" in groups
    assert "hn_label_tier_front_end" in groups
    assert "hn_label_hn_rhizeption_io_cluster_blue" in groups


def test_group_names_are_sanitised():
    assert safe_group_name("hn_cluster_a-b.c/d") == "hn_cluster_a_b_c_d"
    assert safe_group_name("9lives") == "_lives"


# -- filters -------------------------------------------------------------------------------


def test_filters_on_namespace_cluster_and_phase():
    items = [
        machine("a", "ns1", "blue", {"phase": "Ready", "ready": True}),
        machine("b", "ns2", "blue", {"phase": "Running"}),
        machine("c", "ns1", "green", {"phase": "Failed"}),
        machine("d", "ns1", "blue"),
    ]

    def names(**kw):
        return [h.vars["hn_name"] for h in hosts_from(items, Settings(**kw)).hosts]

    assert names() == ["a", "b", "c", "d"]
    assert names(namespaces=frozenset({"ns1"})) == ["a", "c", "d"]
    assert names(cluster_names=frozenset({"blue"})) == ["a", "b", "d"]
    assert names(phases=frozenset({"Pending", "Failed"})) == ["c", "d"]


def test_a_machine_without_a_name_is_reported():
    bad = {"metadata": {"uid": "u1"}, "spec": {"clusterName": "x"}}
    result = hosts_from([bad, machine()], Settings())
    assert len(result.hosts) == 1 and "u1" in result.warnings[0]

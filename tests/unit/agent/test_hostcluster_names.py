"""Host names of tenant objects: valid DNS labels, readable, and apart for every tenant
object even when long names share their first 46 characters."""

from __future__ import annotations

import itertools
import re

import pytest
from rhizeption_agent.backends.hostcluster import names

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_KEY_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def test_a_short_name_reads_as_namespace_and_name():
    name = names.host_name("blue", "web", "nginx-7d9c")
    assert name.startswith("web-nginx-7d9c-")
    assert DNS_LABEL.match(name) and len(name) <= 63


@pytest.mark.parametrize(
    ("namespace", "name"),
    [
        ("a" * 63, "b" * 253),
        ("web", "x" * 253),
        ("web", "dotted.name.with.dots"),
        ("web", "UPPER.case-ish"),  # never a valid Pod name, still a valid host name
        ("web", "-"),
        ("n", "a-"),
    ],
)
def test_every_host_name_is_a_dns_label(namespace, name):
    for kind in ("pod", "configmap", "secret", "token", "service"):
        host = names.host_name("blue", namespace, name, kind)
        assert DNS_LABEL.match(host), host
        assert len(host) <= 63


def test_long_names_that_share_their_start_do_not_collide():
    stem = "a-very-long-deployment-name-that-goes-on-and-on-" + "x" * 150
    pods = [f"{stem}-{i}" for i in range(500)]
    hosted = {names.host_name("blue", "team-with-a-long-namespace-name", p) for p in pods}
    assert len(hosted) == len(pods)
    assert len({h[:46] for h in hosted}) == 1, "the readable part alone would have collided"


def test_joined_parts_that_read_alike_do_not_collide():
    # namespace "a-b" + name "c" and namespace "a" + name "b-c" read the same.
    assert names.host_name("t", "a-b", "c") != names.host_name("t", "a", "b-c")
    # dots become dashes in the readable part: only the hash keeps these apart
    assert names.host_name("t", "ns", "a.b") != names.host_name("t", "ns", "a-b")


def test_tenants_and_kinds_sharing_a_host_namespace_do_not_collide():
    combos = list(itertools.product(["blue", "green"], ["configmap", "secret", "token", "pod"]))
    hosted = {names.host_name(tenant, "default", "app", kind) for tenant, kind in combos}
    assert len(hosted) == len(combos)
    assert names.token_secret_name("blue", "default", "app") == names.host_name(
        "blue", "default", "app", "token"
    )


def test_host_names_are_stable():
    # A restarted agent finds its objects by recomputing their names: no randomness, no clock.
    assert names.host_name("blue", "web", "nginx") == names.host_name("blue", "web", "nginx")


def test_owner_of_reads_the_links_and_refuses_foreign_objects():
    obj = {
        "metadata": {
            "labels": names.link_labels("blue", "web", "secret", "uid-1"),
            "annotations": {names.NAME_ANNOTATION: "db-password"},
        }
    }
    assert names.owner_of(obj) == ("blue", "secret", "web", "db-password")
    assert names.owner_of({"metadata": {"labels": {"app": "x"}}}) is None


@pytest.mark.parametrize(
    "key", ["app", "app.kubernetes.io/name", "a" * 63, "example.com/" + "z" * 63, "pod-template-hash"]
)
def test_tenant_label_keys_move_under_the_agents_prefix(key):
    host = names.host_label_key(key)
    prefix, _slash, name = host.partition("/")
    assert prefix == names.TENANT_LABELS_PREFIX
    assert LABEL_KEY_NAME.match(name) and len(name) <= 63, name


def test_label_keys_that_read_alike_stay_apart():
    assert names.host_label_key("a/b") != names.host_label_key("a_b")


def test_a_host_selector_selects_only_this_tenant_and_namespace():
    selector = names.host_selector("blue", "web", {"app": "nginx"})
    assert selector[names.TENANT_LABEL] == "blue"
    assert selector[names.NAMESPACE_LABEL] == "web"
    assert selector[names.KIND_LABEL] == "pod"
    assert selector[names.host_label_key("app")] == "nginx"
    assert "app" not in selector, "a tenant selector never matches host Pods by the tenant's own keys"

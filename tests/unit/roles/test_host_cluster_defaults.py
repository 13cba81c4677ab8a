"""The host_cluster role's defaults follow hack/versions.env and its argument spec."""

from __future__ import annotations

from pathlib import Path

import yaml
from riglib.toolchain import versions

ROLE = Path(__file__).resolve().parents[3] / "roles/host_cluster"


def test_role_versions_are_the_pinned_ones():
    pins = versions()
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    assert defaults["host_cluster_kubernetes_version"] == pins["KUBERNETES_VERSION"]
    assert defaults["host_cluster_etcd_version"] == pins["ETCD_VERSION"]


def test_every_default_is_in_the_argument_spec_with_its_value():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    spec = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, value in defaults.items():
        assert options[name].get("default") == value, name

"""Finding the pinned binaries in the cache, and saying how to get them when absent."""

from __future__ import annotations

import pytest
from riglib import toolchain


def test_versions_are_parsed_from_the_pin_file(tmp_path) -> None:
    pins = tmp_path / "versions.env"
    pins.write_text("# comment\nKUBERNETES_VERSION=v1.34.4\n\n ETCD_VERSION = v3.6.16\n")
    assert toolchain.versions(pins) == {"KUBERNETES_VERSION": "v1.34.4", "ETCD_VERSION": "v3.6.16"}


def test_the_repository_pins_every_version_the_rig_needs() -> None:
    pins = toolchain.versions()
    assert {"KUBERNETES_VERSION", "ETCD_VERSION", "KWOK_VERSION"} <= set(pins)
    assert pins["KUBERNETES_VERSION"].startswith("v1.")


def test_missing_binary_names_the_bootstrap_step(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RHIZEPTION_CACHE", str(tmp_path))
    with pytest.raises(toolchain.MissingBinary, match=r"run `hack/bootstrap kubernetes`"):
        toolchain.binary("kube-apiserver")


def test_an_entry_without_its_complete_mark_is_not_trusted(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RHIZEPTION_CACHE", str(tmp_path))
    version = toolchain.versions()["ETCD_VERSION"]
    bin_dir = tmp_path / "etcd" / version / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "etcd").write_text("")
    with pytest.raises(toolchain.MissingBinary):
        toolchain.binary("etcd")
    (bin_dir.parent / ".complete").write_text("key")
    assert toolchain.binary("etcd") == bin_dir / "etcd"


def test_cache_location_follows_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("RHIZEPTION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert toolchain.cache_dir() == tmp_path / "rhizeption"


def test_the_cluster_dns_role_runs_the_coredns_that_bootstrap_builds() -> None:
    """hack/versions.env pins CoreDNS once; the role's default image follows it."""
    import yaml

    role = toolchain.HACK_DIR.parent / "roles/cluster_dns"
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    coredns = toolchain.versions()["COREDNS_VERSION"]
    assert defaults["cluster_dns_image"] == f"localhost/rhizeption/coredns:{coredns}"
    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert {name: opt["default"] for name, opt in options.items()} == defaults

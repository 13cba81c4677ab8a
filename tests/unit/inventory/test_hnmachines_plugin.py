"""The hnmachines inventory plugin inside Ansible's own inventory machinery.

Only the API is faked (the plugin's _fetch returns plain dicts); the inventory, the
templating, the variable precedence and the cache plugin are Ansible's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleError
from ansible.inventory.data import InventoryData
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader, inventory_loader
from ansible.vars.manager import VariableManager

REPO = Path(__file__).resolve().parents[3]
EVIL = "{{ lookup('ansible.builtin.pipe', 'touch /tmp/hnm-pwned') }}"


@pytest.fixture(scope="module")
def plugin_class():
    # Modules imported before from the plain sys.path would hide the collection from
    # Ansible's collection loader ("collection metadata was not loaded"): let it import them.
    for name in [m for m in sys.modules if m.startswith("ansible_collections")]:
        del sys.modules[name]
    init_plugin_loader([str(REPO / ".collections")])
    plugin = inventory_loader.get("rhizeption.core.hnmachines")
    assert plugin is not None, "rhizeption.core.hnmachines not found"
    return type(plugin)


def machine(name, namespace="lab", cluster="blue", phase="Ready", ready=True, labels=None):
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "labels": {"hn.rhizeption.io/cluster": cluster, **(labels or {})},
        },
        "spec": {"clusterName": cluster},
        "status": {"phase": phase, "ready": ready, "podIP": f"10.244.0.{len(name)}"},
    }


ITEMS = [
    machine("m0", labels={"zone": "z1"}),
    machine("m1", phase="Provisioning", ready=False, labels={"zone": "z2"}),
    machine("evil", labels={"zone": EVIL, "note": EVIL}),
]


@pytest.fixture
def fake_api(plugin_class, monkeypatch):
    """The API: every _fetch returns ITEMS and is counted."""
    calls = []

    def fetch(self, path, settings, page_size):
        calls.append(path)
        return {"format": 1, "server": "https://192.0.2.1:6443", "items": json.loads(json.dumps(ITEMS))}

    monkeypatch.setattr(plugin_class, "_fetch", fetch)
    return calls


def write_source(tmp_path: Path, name="x.hnmachines.yml", **options) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"plugin": "rhizeption.core.hnmachines", **options}))
    return path


def load(source: Path, cache: bool = True) -> tuple[InventoryManager, VariableManager]:
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(source)], cache=cache)
    return inventory, VariableManager(loader=loader, inventory=inventory)


def hostvars(inventory, variables, name):
    return variables.get_vars(host=inventory.get_host(name), include_hostvars=False)


def test_hosts_groups_and_variables(fake_api, tmp_path):
    inventory, variables = load(write_source(tmp_path))
    assert sorted(inventory.hosts) == ["lab-evil", "lab-m0", "lab-m1"]
    groups = inventory.groups
    assert {h.name for h in groups["hnmachines"].get_hosts()} == set(inventory.hosts)
    assert [h.name for h in groups["hn_not_ready"].get_hosts()] == ["lab-m1"]
    assert [h.name for h in groups["hn_phase_provisioning"].get_hosts()] == ["lab-m1"]
    assert len(groups["hn_cluster_lab_blue"].get_hosts()) == 3
    assert "hn_kubectl" in [g.name for g in groups["hnmachines"].child_groups]
    v = hostvars(inventory, variables, "lab-m1")
    assert v["ansible_connection"] == "kubernetes.core.kubectl"
    assert v["ansible_kubectl_container"] == "node"
    assert v["ansible_kubectl_pod"] == "m1" and v["ansible_kubectl_namespace"] == "lab"
    assert v["hn_ready"] is False and v["hn_phase"] == "Provisioning"


def test_compose_groups_and_keyed_groups_are_templates(fake_api, tmp_path):
    source = write_source(
        tmp_path,
        compose={"machine_ref": "hn_namespace ~ '/' ~ hn_name"},
        groups={"provisioning": "hn_phase == 'Provisioning'"},
        keyed_groups=[{"key": "hn_labels.zone", "prefix": "zone"}],
    )
    inventory, variables = load(source)
    assert hostvars(inventory, variables, "lab-m0")["machine_ref"] == "lab/m0"
    assert [h.name for h in inventory.groups["provisioning"].get_hosts()] == ["lab-m1"]
    assert [h.name for h in inventory.groups["zone_z1"].get_hosts()] == ["lab-m0"]


def test_api_data_is_never_run_as_a_template(fake_api, tmp_path):
    marker = Path("/tmp/hnm-pwned")
    marker.unlink(missing_ok=True)
    source = write_source(
        tmp_path,
        compose={"copied_note": "hn_labels.note"},
        keyed_groups=[{"key": "hn_labels.zone", "prefix": "zone"}],
    )
    inventory, variables = load(source)
    v = hostvars(inventory, variables, "lab-evil")
    assert v["hn_labels"]["note"] == EVIL
    assert v["copied_note"] == EVIL  # the value, not what it would render to
    # a play's template that reads the variable gets the text, and nothing runs
    from ansible.template import Templar, trust_as_template

    templar = Templar(loader=DataLoader(), variables=v)
    assert templar.template(trust_as_template("{{ hn_labels.note }}")) == EVIL
    assert templar.template(trust_as_template("{{ copied_note }}")) == EVIL
    assert not marker.exists()
    # the keyed group is named after the (sanitised) text
    assert "zone____lookup__ansible_builtin_pipe____touch__tmp_hnm_pwned_____" in inventory.groups


def test_users_ansible_connection_wins_from_compose(fake_api, tmp_path):
    source = write_source(tmp_path, compose={"ansible_connection": "'ssh'"})
    inventory, variables = load(source)
    assert hostvars(inventory, variables, "lab-m0")["ansible_connection"] == "ssh"


def test_users_ansible_connection_wins_from_group_vars(fake_api, tmp_path):
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text("ansible_connection: local\n")
    inventory, variables = load(write_source(tmp_path))
    assert hostvars(inventory, variables, "lab-m0")["ansible_connection"] == "local"
    assert hostvars(inventory, variables, "lab-m0")["ansible_kubectl_container"] == "node"


def test_users_ansible_kubectl_container_wins_from_group_vars(fake_api, tmp_path):
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "hn_cluster_lab_blue.yml").write_text("ansible_kubectl_container: debug\n")
    inventory, variables = load(write_source(tmp_path))
    assert hostvars(inventory, variables, "lab-m0")["ansible_kubectl_container"] == "debug"


def test_strict_compose_names_the_variable(fake_api, tmp_path):
    source = write_source(tmp_path, strict=True, compose={"x": "hn_labels.nope.deeper"})
    loader = DataLoader()
    plugin = inventory_loader.get("rhizeption.core.hnmachines")
    with pytest.raises(AnsibleError, match="Could not set x"):
        plugin.parse(InventoryData(), loader, str(source), cache=False)


@pytest.mark.parametrize(
    ("option", "value"),
    [("host_format", "{nam}"), ("connection_type", "winrm"), ("page_size", 0), ("phases", ["Asleep"])],
)
def test_a_malformed_option_names_the_option_and_the_file(plugin_class, tmp_path, option, value):
    source = write_source(tmp_path, **{option: value})
    plugin = inventory_loader.get("rhizeption.core.hnmachines")
    with pytest.raises(AnsibleError) as err:
        plugin.parse(InventoryData(), DataLoader(), str(source), cache=False)
    assert f"'{option}'" in str(err.value) and str(source) in str(err.value)


def test_only_files_named_hnmachines_yml(plugin_class, tmp_path):
    plugin = inventory_loader.get("rhizeption.core.hnmachines")
    assert plugin.verify_file(str(write_source(tmp_path, "lab.hnmachines.yaml")))
    assert plugin.verify_file(str(write_source(tmp_path, "hnmachines.yml")))
    assert not plugin.verify_file(str(write_source(tmp_path, "lab.yml")))


def test_cache_hit_reads_no_api_and_writes_no_cache(fake_api, tmp_path):
    cache_dir = tmp_path / "cache"
    source = write_source(
        tmp_path,
        cache=True,
        cache_plugin="ansible.builtin.jsonfile",
        cache_connection=str(cache_dir),
        cache_timeout=3600,
    )
    load(source)
    assert len(fake_api) == 1
    [cache_file] = list(cache_dir.iterdir())
    first = cache_file.stat().st_mtime_ns
    # ansible-core 2.19 wraps the entry as {"__payload__": "<JSON>"}
    cached = json.loads(cache_file.read_text())
    cached = json.loads(cached["__payload__"]) if "__payload__" in cached else cached
    assert cached["items"][2]["metadata"]["labels"]["note"] == EVIL  # the raw API JSON

    inventory, variables = load(source)
    assert len(fake_api) == 1, "a cache hit must not call the API"
    assert cache_file.stat().st_mtime_ns == first, "a cache hit must not rewrite the cache"
    assert sorted(inventory.hosts) == ["lab-evil", "lab-m0", "lab-m1"]
    # still untrusted when it comes back from the cache
    assert hostvars(inventory, variables, "lab-evil")["hn_labels"]["note"] == EVIL

    load(source, cache=False)  # --flush-cache
    assert len(fake_api) == 2


def test_without_cache_option_every_run_reads_the_api(fake_api, tmp_path):
    source = write_source(tmp_path)
    load(source)
    load(source)
    assert len(fake_api) == 2


def test_a_cache_entry_read_with_other_selectors_is_not_used(fake_api, tmp_path):
    cache = {
        "cache": True,
        "cache_plugin": "ansible.builtin.jsonfile",
        "cache_connection": str(tmp_path / "cache"),
        "cache_timeout": 3600,
    }
    load(write_source(tmp_path, label_selector="env=a", **cache))
    load(write_source(tmp_path, label_selector="env=a", host_format="{name}", **cache))
    assert len(fake_api) == 1, "grouping and naming options are applied to the cached answer"
    load(write_source(tmp_path, label_selector="env=b", **cache))
    assert len(fake_api) == 2, "other selectors need another answer"


def test_a_host_name_another_file_already_has_is_reported_not_merged(fake_api, tmp_path, capsys):
    first = write_source(tmp_path / "a", "prod.hnmachines.yml")
    second = write_source(tmp_path / "b", "lab.hnmachines.yml")
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(first), str(second)])
    # both files list machines with the same names and uids in this fake, so nothing clashes
    assert len(inventory.hosts) == 3
    # another prefix: the second file's machines look like other machines (no hn_uid)
    other = write_source(tmp_path / "c", "other.hnmachines.yml", prefix="x_")
    inventory = InventoryManager(loader=loader, sources=[str(first), str(other)])
    assert inventory.get_host("lab-m0").vars["inventory_file"] == str(first)
    assert "already in the inventory" in capsys.readouterr().err

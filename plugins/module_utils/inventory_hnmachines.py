# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""What the ``rhizeption.core.hnmachines`` inventory makes of HnMachine objects.

Everything here works on plain dicts (the API's JSON) and knows nothing of Ansible's
inventory classes, so it can be tested without a cluster and without Ansible running:

- ``settings_from`` checks the plugin's options and names the option that is wrong;
- ``hosts_from`` turns HnMachines into hosts: a name, variables and default groups.

It is written for 10,000 machines: one pass, no copies of the API data, and group names
sanitised once per distinct value rather than once per host.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Tuple

from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import MACHINE_PHASES, NODE_CONTAINER

HOST_FORMAT_FIELDS = ("name", "namespace", "uid", "cluster")
CONNECTION_TYPES = ("kubectl", "ssh", "none")
KUBECTL_CONNECTION = "kubernetes.core.kubectl"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
ADDRESS_TYPES = ("Hostname", "InternalIP", "ExternalIP", "InternalDNS", "ExternalDNS")
STATUS_ADDRESS_FIELDS = {
    "status.podIP": "podIP",
    "status.hostIP": "hostIP",
    "status.nodeName": "nodeName",
    "status.hostNodeName": "hostNodeName",
}
ADDRESS_SOURCES = tuple(STATUS_ADDRESS_FIELDS) + tuple(f"addresses.{t}" for t in ADDRESS_TYPES)
DEFAULT_ADDRESS_PREFERENCE = ("status.podIP", "addresses.InternalIP", "addresses.ExternalIP")
# The same rule as ansible.inventory.group.to_safe_group_name (C.INVALID_VARIABLE_NAMES).
_UNSAFE_GROUP_CHARS = re.compile(r"^[\d\W]|[^\w]")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Options of the kubectl connection that the inventory may pass on: paths and names only.
# Tokens and passwords never go into host variables; the connection reads K8S_AUTH_* itself.
KUBECTL_VARS = {
    "kubeconfig": "ansible_kubectl_kubeconfig",
    "context": "ansible_kubectl_context",
    "host": "ansible_kubectl_host",
    "ca_cert": "ansible_kubectl_ca_cert",
    "validate_certs": "ansible_kubectl_validate_certs",
    "client_cert": "ansible_kubectl_client_cert",
    "client_key": "ansible_kubectl_client_key",
}

Obj = Dict[str, Any]


class OptionError(ValueError):
    """A malformed option; ``option`` is its name as the user writes it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"option {option!r}: {message}")
        self.option = option


@dataclass(frozen=True)
class Settings:
    host_format: str = "{namespace}-{name}"
    var_prefix: str = "hn_"
    group_prefix: str = "hn_"
    root_group: str = "hnmachines"
    address_preference: Tuple[str, ...] = DEFAULT_ADDRESS_PREFERENCE
    connection_type: str = "kubectl"
    namespaces: FrozenSet[str] | None = None
    cluster_names: FrozenSet[str] | None = None
    phases: FrozenSet[str] | None = None
    label_groups: bool = False
    # Host variables every host gets when the connection is kubectl (kubeconfig, context...).
    connection_vars: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Host:
    name: str
    vars: Dict[str, Any]
    groups: List[str]


@dataclass
class Result:
    hosts: List[Host]
    # Group name -> its variables (the connection group's ansible_connection).
    group_vars: Dict[str, Dict[str, Any]]
    warnings: List[str]


def safe_group_name(name: str) -> str:
    return _UNSAFE_GROUP_CHARS.sub("_", name)


def _str_list(option: str, value: Any) -> List[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise OptionError(option, f"must be a list of non-empty strings, got {value!r}")
    return list(value)


def check_host_format(host_format: Any) -> str:
    if not isinstance(host_format, str) or not host_format:
        raise OptionError("host_format", "must be a non-empty string")
    try:
        fields = [parsed[1] for parsed in string.Formatter().parse(host_format) if parsed[1] is not None]
    except ValueError as e:
        raise OptionError("host_format", f"{host_format!r} is not a valid format: {e}") from None
    unknown = [f for f in fields if f not in HOST_FORMAT_FIELDS]
    if unknown or not fields:
        raise OptionError(
            "host_format",
            f"{host_format!r} may use only {{{'}, {'.join(HOST_FORMAT_FIELDS)}}}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ", and at least one of them"),
        )
    return host_format


def settings_from(get: Callable[[str], Any], file_options: Obj | None = None) -> Settings:
    """Settings from the plugin's options (GET is the plugin's get_option). FILE_OPTIONS
    are the options written in the inventory file: only those are passed on to the kubectl
    connection, which reads the K8S_AUTH_* environment variables on its own."""
    prefix = get("prefix")
    if not isinstance(prefix, str) or (prefix and not _VAR_NAME.match(prefix)):
        raise OptionError("prefix", f"must be a valid variable name prefix such as 'hn_', got {prefix!r}")
    group_prefix = get("group_prefix")
    if not isinstance(group_prefix, str):
        raise OptionError("group_prefix", "must be a string")
    root_group = get("root_group")
    if not isinstance(root_group, str) or not root_group or safe_group_name(root_group) != root_group:
        raise OptionError("root_group", f"must be a valid group name, got {root_group!r}")

    preference = _str_list("address_preference", get("address_preference")) or []
    bad = [p for p in preference if p not in ADDRESS_SOURCES]
    if bad:
        raise OptionError(
            "address_preference", f"unknown {', '.join(bad)}; choose from {', '.join(ADDRESS_SOURCES)}"
        )
    connection_type = get("connection_type")
    if connection_type not in CONNECTION_TYPES:
        raise OptionError(
            "connection_type", f"must be one of {', '.join(CONNECTION_TYPES)}, got {connection_type!r}"
        )
    phases = _str_list("phases", get("phases"))
    if phases:
        bad = [p for p in phases if p not in MACHINE_PHASES]
        if bad:
            raise OptionError("phases", f"unknown {', '.join(bad)}; choose from {', '.join(MACHINE_PHASES)}")
    namespaces = _str_list("namespaces", get("namespaces"))
    cluster_names = _str_list("cluster_names", get("cluster_names"))
    label_groups = get("label_groups")
    if not isinstance(label_groups, bool):
        raise OptionError("label_groups", f"must be true or false, got {label_groups!r}")

    connection_vars: Dict[str, Any] = {}
    if connection_type == "kubectl":
        for option, var in KUBECTL_VARS.items():
            value = (file_options or {}).get(option)
            # A kubeconfig given inline may hold keys and tokens: never copy it into host variables.
            if value is not None and not isinstance(value, dict):
                connection_vars[var] = value
        kubeconfig = connection_vars.pop("ansible_kubectl_kubeconfig", None)
        if kubeconfig:
            # kubectl neither expands ~ nor takes several files in --kubeconfig; KUBECONFIG does.
            paths = [os.path.expanduser(p) for p in str(kubeconfig).split(os.pathsep) if p]
            if len(paths) == 1:
                connection_vars["ansible_kubectl_kubeconfig"] = paths[0]
            elif paths:
                connection_vars["ansible_kubectl_local_env_vars"] = {"KUBECONFIG": os.pathsep.join(paths)}

    return Settings(
        host_format=check_host_format(get("host_format")),
        var_prefix=prefix,
        group_prefix=group_prefix,
        root_group=root_group,
        address_preference=tuple(preference),
        connection_type=connection_type,
        namespaces=frozenset(namespaces) if namespaces else None,
        cluster_names=frozenset(cluster_names) if cluster_names else None,
        phases=frozenset(phases) if phases else None,
        label_groups=label_groups,
        connection_vars=connection_vars,
    )


def address(status: Obj, preference: Tuple[str, ...]) -> str | None:
    """The first address PREFERENCE finds in an HnMachine's status, or None."""
    addresses = None
    for source in preference:
        key = STATUS_ADDRESS_FIELDS.get(source)
        if key is not None:
            value = status.get(key)
        else:
            if addresses is None:
                addresses = status.get("addresses") or []
            wanted = source[len("addresses.") :]
            value = next((a.get("address") for a in addresses if a.get("type") == wanted), None)
        if value:
            return value
    return None


def _annotations(meta: Obj) -> Obj:
    annotations = meta.get("annotations") or {}
    if LAST_APPLIED in annotations:
        # A copy of the whole object that `kubectl apply` leaves: no use as a variable.
        return {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return annotations


def connection_group(settings: Settings) -> str | None:
    if settings.connection_type != "kubectl":
        return None
    return safe_group_name(f"{settings.group_prefix}kubectl")


def hosts_from(items: List[Obj], settings: Settings) -> Result:  # noqa: PLR0915 - one flat pass, for speed
    """Hosts, their variables and default groups for the HnMachines in ITEMS.

    Machines that are not ready are kept (in the ``<group_prefix>not_ready`` group, with
    ``<prefix>ready`` false); only the namespace, cluster and phase filters drop machines.
    Two machines that would get the same host name are reported, and the second is left
    out rather than silently merged into the first.
    """
    p = settings.var_prefix
    gp = settings.group_prefix
    k_cluster, k_namespace, k_name, k_uid = p + "cluster", p + "namespace", p + "name", p + "uid"
    k_phase, k_ready, k_node, k_pod = p + "phase", p + "ready", p + "node_name", p + "pod_name"
    k_pod_ip, k_host_ip, k_host_node = p + "pod_ip", p + "host_ip", p + "host_node"
    k_labels, k_annotations, k_conditions = p + "labels", p + "annotations", p + "conditions"
    k_provider, k_reason, k_message = p + "provider_id", p + "failure_reason", p + "failure_message"
    k_addresses = p + "addresses"
    namespaces, clusters, phases = settings.namespaces, settings.cluster_names, settings.phases
    preference = settings.address_preference
    host_format = settings.host_format
    kubectl = settings.connection_type == "kubectl"
    connection_vars = settings.connection_vars
    ready_group = safe_group_name(gp + "ready")
    not_ready_group = safe_group_name(gp + "not_ready")

    group_names: Dict[Tuple[str, ...], str] = {}

    def group(*parts: str) -> str:
        # One regex substitution per distinct group, not per host.
        name = group_names.get(parts)
        if name is None:
            name = group_names[parts] = safe_group_name(gp + "_".join(parts))
        return name

    hosts: List[Host] = []
    warnings: List[str] = []
    seen: Dict[str, str] = {}
    for obj in items:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        namespace = meta.get("namespace") or ""
        name = meta.get("name") or ""
        cluster = spec.get("clusterName") or ""
        phase = status.get("phase") or "Pending"  # no status yet: nothing has happened to it
        if not name or not namespace:
            warnings.append(f"skipped an HnMachine without a name or namespace (uid {meta.get('uid')!r})")
            continue
        if namespaces is not None and namespace not in namespaces:
            continue
        if clusters is not None and cluster not in clusters:
            continue
        if phases is not None and phase not in phases:
            continue
        uid = meta.get("uid") or ""
        hostname = host_format.format(name=name, namespace=namespace, uid=uid, cluster=cluster)
        first = seen.get(hostname)
        if first is not None:
            warnings.append(
                f"HnMachines {first} and {namespace}/{name} both make host {hostname!r}: "
                f"{namespace}/{name} is left out; use a host_format with {{namespace}} or {{uid}}"
            )
            continue
        seen[hostname] = f"{namespace}/{name}"
        ready = status.get("ready") is True
        labels = meta.get("labels") or {}
        pod_name = status.get("podName") or name  # the node Pod has the machine's name
        hostvars = {
            k_cluster: cluster,
            k_namespace: namespace,
            k_name: name,
            k_uid: uid,
            k_phase: phase,
            k_ready: ready,
            k_node: status.get("nodeName"),
            k_pod: pod_name,
            k_pod_ip: status.get("podIP"),
            k_host_ip: status.get("hostIP"),
            k_host_node: status.get("hostNodeName"),
            k_addresses: status.get("addresses") or [],
            k_labels: labels,
            k_annotations: _annotations(meta),
            k_conditions: status.get("conditions") or [],
            k_provider: spec.get("providerID"),
            k_reason: status.get("failureReason"),
            k_message: status.get("failureMessage"),
        }
        if preference:
            host_address = address(status, preference)
            if host_address:
                hostvars["ansible_host"] = host_address
        if kubectl:
            hostvars["ansible_kubectl_pod"] = pod_name
            hostvars["ansible_kubectl_namespace"] = namespace
            hostvars.update(connection_vars)
        groups = [
            group("cluster", namespace, cluster),
            group("namespace", namespace),
            group("phase", phase.lower()),
            ready_group if ready else not_ready_group,
        ]
        if settings.label_groups:
            groups.extend(group("label", k, str(v)) for k, v in labels.items())
        hosts.append(Host(hostname, hostvars, groups))

    group_vars: Dict[str, Dict[str, Any]] = {}
    kubectl_group = connection_group(settings)
    if kubectl_group:
        # Group variables, not host variables: group_vars/, host_vars/ and compose all
        # take precedence over them, so a user's own ansible_connection always wins.
        group_vars[kubectl_group] = {
            "ansible_connection": KUBECTL_CONNECTION,
            "ansible_kubectl_container": NODE_CONTAINER,
        }
    return Result(hosts, group_vars, warnings)

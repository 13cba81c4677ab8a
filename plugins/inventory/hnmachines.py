# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The HnMachines of one host cluster as Ansible hosts."""

from __future__ import annotations

DOCUMENTATION = r"""
name: hnmachines
short_description: HnMachines (hosted nodes) of a host cluster as Ansible hosts
version_added: 0.1.0
author:
  - rhizeption.core contributors (@rhizeption)
description:
  - Lists the C(HnMachine) objects (C(hn.rhizeption.io/v1alpha1)) of one host cluster and makes
    each one a host, reachable by default with the P(kubernetes.core.kubectl#connection)
    connection in the C(node) container of the machine's Pod.
  - One inventory file describes one host cluster. Its name must end with C(hnmachines.yml) or
    C(hnmachines.yaml), for example C(lab.hnmachines.yml), and its O(plugin) must be
    C(rhizeption.core.hnmachines).
  - The connection options are those of C(kubernetes.core) and come from the same code, so
    O(kubeconfig), O(context), O(host), O(api_key), the C(K8S_AUTH_*) environment variables (which
    an AWX Kubernetes credential sets) and the in-cluster service account behave as in
    C(kubernetes.core.k8s). With none of them, the in-cluster configuration is tried first,
    then C(~/.kube/config).
  - Machines are listed in one paginated request over all namespaces and filtered here. When
    that request is forbidden and O(namespaces) names the namespaces, each namespace is listed
    on its own instead.
  - Machines that are not ready are kept, with C(<prefix>ready=false), in the
    C(<group_prefix>not_ready) group. Only O(namespaces), O(cluster_names), O(phases),
    O(label_selector) and O(field_selector) leave machines out.
  - 'Host variables (with the default O(prefix) C(hn_)): C(hn_cluster), C(hn_namespace), C(hn_name),
    C(hn_uid), C(hn_phase) (C(Pending) while the machine has no status), C(hn_ready),
    C(hn_node_name), C(hn_pod_name), C(hn_pod_ip), C(hn_host_ip), C(hn_host_node), C(hn_addresses),
    C(hn_labels), C(hn_annotations), C(hn_conditions), C(hn_provider_id), C(hn_failure_reason),
    C(hn_failure_message). Every host has all of them; a value the machine does not report
    yet is null (or empty). C(hn_annotations) leaves out
    C(kubectl.kubernetes.io/last-applied-configuration), a copy of the whole object.'
  - 'Default groups (with the default O(group_prefix) C(hn_)), all children of O(root_group):
    C(hn_cluster_<namespace>_<cluster>) per HnCluster, C(hn_namespace_<namespace>),
    C(hn_phase_<phase>) (lower case, for example C(hn_phase_ready)), C(hn_ready) and
    C(hn_not_ready), C(hn_kubectl) (the hosts reached with kubectl) and, with O(label_groups),
    C(hn_label_<key>_<value>). Characters that are not letters, digits or C(_) become C(_).'
  - 'With O(connection_type=kubectl), the C(hn_kubectl) group carries C(ansible_connection) and
    C(ansible_kubectl_container=node) as group variables, so C(group_vars/), C(host_vars/) and
    O(compose) override them; each host carries C(ansible_kubectl_pod),
    C(ansible_kubectl_namespace) and, when this file sets them, C(ansible_kubectl_kubeconfig),
    C(ansible_kubectl_context), C(ansible_kubectl_host), C(ansible_kubectl_ca_cert),
    C(ansible_kubectl_validate_certs), C(ansible_kubectl_client_cert) and
    C(ansible_kubectl_client_key) (several kubeconfig files go into C(KUBECONFIG) through
    C(ansible_kubectl_local_env_vars)). Tokens and passwords are never written into variables:
    the kubectl connection reads C(K8S_AUTH_API_KEY) and the others from the environment itself.'
  - Everything read from the API is data, never a template, in host variables and in the
    cache; O(compose), O(groups) and O(keyed_groups) from this file are templates.
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: Marks the file as this plugin's.
    required: true
    choices: [rhizeption.core.hnmachines]
    type: str
  kubeconfig:
    description:
      - Path to a kubeconfig file (several joined with C(:)), or a kubeconfig given inline as a
        dictionary. Without it, and without O(host), the in-cluster configuration is tried, then
        C(~/.kube/config).
      - An inline kubeconfig is not passed on to the kubectl connection (it may hold keys); give
        that connection its own with C(ansible_kubectl_kubeconfig) or C(K8S_AUTH_KUBECONFIG).
    type: raw
    env:
      - name: K8S_AUTH_KUBECONFIG
  context:
    description: The context of the kubeconfig to use.
    type: str
    env:
      - name: K8S_AUTH_CONTEXT
  host:
    description: The URL of the host cluster's API server.
    type: str
    env:
      - name: K8S_AUTH_HOST
  api_key:
    description: A bearer token for the API server.
    type: str
    env:
      - name: K8S_AUTH_API_KEY
  username:
    description: A user name for HTTP basic authentication (rarely enabled on API servers).
    type: str
    env:
      - name: K8S_AUTH_USERNAME
  password:
    description: The password for O(username).
    type: str
    env:
      - name: K8S_AUTH_PASSWORD
  client_cert:
    description: Path to a client certificate.
    type: path
    aliases: [cert_file]
    env:
      - name: K8S_AUTH_CERT_FILE
  client_key:
    description: Path to the key of O(client_cert).
    type: path
    aliases: [key_file]
    env:
      - name: K8S_AUTH_KEY_FILE
  ca_cert:
    description: Path to the CA certificate that signed the API server's certificate.
    type: path
    aliases: [ssl_ca_cert]
    env:
      - name: K8S_AUTH_SSL_CA_CERT
  validate_certs:
    description: Whether to verify the API server's certificate.
    type: bool
    aliases: [verify_ssl]
    env:
      - name: K8S_AUTH_VERIFY_SSL
  proxy:
    description: The URL of an HTTP proxy for the API server.
    type: str
    env:
      - name: K8S_AUTH_PROXY
  no_proxy:
    description: Comma-separated hosts, domains and CIDRs not to reach through O(proxy).
    type: str
    env:
      - name: K8S_AUTH_NO_PROXY
  proxy_headers:
    description:
      - Headers for the proxy, as in C(kubernetes.core) (C(proxy_basic_auth), C(basic_auth),
        C(user_agent)); the C(K8S_AUTH_PROXY_HEADERS_*) environment variables also work.
    type: dict
  persist_config:
    description: Whether to save refreshed tokens back into the kubeconfig.
    type: bool
    env:
      - name: K8S_AUTH_PERSIST_CONFIG
  impersonate_user:
    description: The user to act as.
    type: str
    env:
      - name: K8S_AUTH_IMPERSONATE_USER
  impersonate_groups:
    description: The groups to act as (in the environment, comma-separated).
    type: list
    elements: str
    env:
      - name: K8S_AUTH_IMPERSONATE_GROUPS
  namespaces:
    description:
      - The namespaces whose machines become hosts. Default, all namespaces.
      - Machines are listed over all namespaces in one request and filtered here; with a single
        namespace, that namespace alone is listed. When listing over all namespaces is forbidden,
        each namespace given here is listed on its own.
    type: list
    elements: str
  skip_forbidden_namespaces:
    description:
      - When each namespace is listed on its own, skip those the credentials may not read,
        with a warning, instead of failing.
    type: bool
    default: false
  label_selector:
    description: A label selector the API server applies, for example C(env=lab,tier!=test).
    type: str
  field_selector:
    description: A field selector the API server applies, for example C(metadata.name=m1).
    type: str
  cluster_names:
    description: Only the machines of these HnClusters (C(spec.clusterName)).
    type: list
    elements: str
  phases:
    description:
      - Only the machines in these phases. Default, every phase.
      - Machines without a status yet count as C(Pending).
    type: list
    elements: str
    choices: [Pending, Provisioning, Running, Ready, Deleting, Failed]
  host_format:
    description:
      - The host name of a machine, a Python format string over C({name}), C({namespace}),
        C({uid}) and C({cluster}).
      - A format without C({namespace}) or C({uid}) can give two machines one name; the second
        is then left out with a warning.
    type: str
    default: "{namespace}-{name}"
  prefix:
    description: The prefix of the host variables taken from a machine.
    type: str
    default: hn_
  group_prefix:
    description: The prefix of the default groups (cluster, namespace, phase, ready, label groups).
    type: str
    default: hn_
  root_group:
    description: The group that holds every default group and so every host of this inventory.
    type: str
    default: hnmachines
  label_groups:
    description:
      - Also make a group C(<group_prefix>label_<key>_<value>) for every label of every machine.
      - Off by default, because at scale it makes many groups; O(keyed_groups) on C(hn_labels)
        does the same for chosen labels.
    type: bool
    default: false
  address_preference:
    description:
      - Where C(ansible_host) comes from, in order of preference; the first one a machine reports
        wins. A machine that reports none of them gets no C(ansible_host).
      - C(status.podIP), C(status.hostIP), C(status.nodeName), C(status.hostNodeName), or
        C(addresses.<type>) for an entry of C(status.addresses) (C(Hostname), C(InternalIP),
        C(ExternalIP), C(InternalDNS), C(ExternalDNS)).
      - An empty list sets no C(ansible_host).
    type: list
    elements: str
    default: [status.podIP, addresses.InternalIP, addresses.ExternalIP]
  connection_type:
    description:
      - How Ansible reaches the machines.
      - C(kubectl), with P(kubernetes.core.kubectl#connection) in the machine's Pod (its C(node)
        container), through the host cluster's API server.
      - C(ssh) sets only C(ansible_host) (see O(address_preference)); C(none) sets no connection
        variables at all.
      - An C(ansible_connection) that you set yourself (group_vars, host_vars, O(compose)) always
        wins.
    type: str
    choices: [kubectl, ssh, none]
    default: kubectl
  page_size:
    description: How many machines each list request asks for.
    type: int
    default: 500
requirements:
  - kubernetes >= 30.1.0 (Python client)
  - kubectl on the controller, for O(connection_type=kubectl)
notes:
  - Only the API's JSON is cached (with O(cache)), not the hosts, so a change of this file's
    grouping options takes effect on the next run even from the cache. C(--flush-cache) and
    the C(refresh_inventory) meta task read the API again.
seealso:
  - name: Inventory of hosted nodes
    description: The guide, with AWX and caching.
    link: https://github.com/rhizeption/core/blob/main/docs/inventory-hnmachines.md
"""

EXAMPLES = r"""
# Each item below is the content of one inventory file, for example lab.hnmachines.yml.

# Every machine of the cluster that ~/.kube/config points at
- plugin: rhizeption.core.hnmachines

# One kubeconfig context, two namespaces, the API's answer cached for 5 minutes
- plugin: rhizeption.core.hnmachines
  kubeconfig: ~/.kube/host-clusters
  context: prod
  namespaces: [tenant-a, tenant-b]
  cache: true
  cache_plugin: ansible.builtin.jsonfile
  cache_connection: ~/.cache/hnmachines-inventory
  cache_timeout: 300

# AWX: the Kubernetes credential of the inventory source sets K8S_AUTH_HOST,
# K8S_AUTH_API_KEY and K8S_AUTH_SSL_CA_CERT (or K8S_AUTH_VERIFY_SSL): no auth in the file.
- plugin: rhizeption.core.hnmachines
  label_selector: env=prod
  phases: [Running, Ready]

# Groups and variables of your own
- plugin: rhizeption.core.hnmachines
  keyed_groups:
    - key: hn_labels['topology.kubernetes.io/zone'] | default('none')
      prefix: zone
    - key: hn_host_node
      prefix: on_host
      default_value: unscheduled
  groups:
    failed_machines: hn_phase == 'Failed'
  compose:
    # reach the machines over SSH at their Pod IP (ansible_host) instead of kubectl
    ansible_connection: "'ssh'"
    ansible_user: "'root'"
"""

import re  # noqa: E402
from typing import Any, Dict, Tuple  # noqa: E402

from ansible import template as _template  # noqa: E402
from ansible.errors import AnsibleError, AnsibleOptionsError, AnsibleParserError  # noqa: E402
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable  # noqa: E402

# ansible-core >= 2.19 never renders a string that is not tagged trusted, so the API's plain
# JSON strings are safe as they are; 2.17 and 2.18 need them marked unsafe.
UNTRUSTED_BY_DEFAULT = hasattr(_template, "trust_as_template")
if UNTRUSTED_BY_DEFAULT:
    _mark_unsafe = None
else:
    from ansible.utils.unsafe_proxy import wrap_var as _mark_unsafe

from ansible_collections.rhizeption.core.plugins.module_utils.inventory_hnmachines import (  # noqa: E402
    OptionError,
    Result,
    Settings,
    hosts_from,
    settings_from,
)

# The kubernetes client (and kube.py, hn_api.py that import it) load only when the API is
# read: 0.6 to 0.8 s that a cache hit does without.

# kubernetes.core's connection options, as get_api_client takes them.
AUTH_OPTIONS = (
    "kubeconfig",
    "context",
    "host",
    "api_key",
    "username",
    "password",
    "client_cert",
    "client_key",
    "ca_cert",
    "validate_certs",
    "proxy",
    "no_proxy",
    "proxy_headers",
    "persist_config",
    "impersonate_user",
    "impersonate_groups",
)
CACHE_FORMAT = 1  # bump when the shape of a cache entry changes


def _unreachable(exc: BaseException) -> Tuple[str, str] | None:
    """(endpoint, reason) when EXC, or what caused it, is a connection failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        pool = getattr(exc, "pool", None)  # urllib3's MaxRetryError and friends
        if pool is not None and getattr(pool, "host", None):
            reason = getattr(exc, "reason", None) or exc
            text = str(reason)
            # "NewConnectionError('<...>: Failed to establish a new connection: [Errno 111] ...')"
            match = re.search(r"(\[Errno [^\]]+\][^'\"]*|certificate verify failed[^'\"(]*)", text)
            return f"{pool.scheme}://{pool.host}:{pool.port}", (match.group(1) if match else text).strip()
        exc = exc.__cause__ or exc.__context__
    return None


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "rhizeption.core.hnmachines"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(("hnmachines.yml", "hnmachines.yaml"))

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        try:
            config = self._read_config_data(path)
        except AnsibleOptionsError as e:  # a wrong type or choice: name the file too
            raise AnsibleParserError(f"{path}: {e}") from None
        try:
            settings = settings_from(self.get_option, config)
            page_size = self.get_option("page_size")
            if not isinstance(page_size, int) or page_size < 1:
                raise OptionError("page_size", f"must be a positive integer, got {page_size!r}")
        except OptionError as e:
            raise AnsibleParserError(f"{path}: {e}") from None

        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache")
        query = self._query()
        data = None
        if use_cache and cache:  # cache is False with --flush-cache and refresh_inventory
            data = self._cache.get(cache_key)
            # An entry read with other selectors or from another cluster is not an answer.
            if not (
                isinstance(data, dict) and data.get("format") == CACHE_FORMAT and data.get("query") == query
            ):
                data = None
        if data is None:
            data = self._fetch(path, settings, page_size)
            data["query"] = query
            if use_cache:
                # Only on a miss: rewriting a hit would push its expiry back.
                self._cache[cache_key] = data
        self._populate(hosts_from(data["items"], settings), settings)

    # -- the API ---------------------------------------------------------------------
    def _query(self) -> Dict[str, Any]:
        """What decides the API's answer (never a secret: it is stored in the cache)."""
        kubeconfig = self.get_option("kubeconfig")
        return {
            "kubeconfig": kubeconfig if isinstance(kubeconfig, str) else None,
            "context": self.get_option("context"),
            "host": self.get_option("host"),
            "impersonate_user": self.get_option("impersonate_user"),
            "namespaces": sorted(self.get_option("namespaces") or []),
            "label_selector": self.get_option("label_selector"),
            "field_selector": self.get_option("field_selector"),
        }

    def _fetch(self, path: str, settings: Settings, page_size: int) -> Dict[str, Any]:
        """The raw HnMachine JSON: {"format", "server", "items"}."""
        from ansible_collections.rhizeption.core.plugins.module_utils import kube as kube_utils  # noqa: PLC0415

        if not kube_utils.HAS_KUBERNETES:
            raise AnsibleError(
                f"{path}: the hnmachines inventory needs the kubernetes Python client "
                f"(pip install kubernetes): {kube_utils.KUBERNETES_IMPORT_ERROR}"
            )
        from ansible_collections.rhizeption.core.plugins.module_utils.inventory_hnmachines_api import (  # noqa: PLC0415
            explain,
            list_machines,
        )

        auth = {}
        for option in AUTH_OPTIONS:
            value = self.get_option(option)
            if value is not None:
                auth[option] = value
        try:
            kube = kube_utils.Kube(kube_utils.api_client_from(**auth))
        except Exception as e:
            raise AnsibleError(self._connect_error(path, auth, e)) from None
        try:
            items = list_machines(
                kube,
                sorted(settings.namespaces) if settings.namespaces else None,
                {
                    "label_selector": self.get_option("label_selector"),
                    "field_selector": self.get_option("field_selector"),
                    "page_size": page_size,
                },
                skip_forbidden=self.get_option("skip_forbidden_namespaces"),
                warn=lambda msg: self.display.warning(f"hnmachines: {path}: {msg}"),
                debug=lambda msg: self.display.vv(f"hnmachines: {path}: {msg}"),
            )
        except kube_utils.KubeError as e:
            raise AnsibleError(f"{path}: listing HnMachines at {kube.host}: {explain(e)}") from None
        except Exception as e:
            raise AnsibleError(self._connect_error(path, auth, e, kube.host)) from None
        for item in items:
            # Who wrote which field: the largest part of an object, and no use to an inventory.
            (item.get("metadata") or {}).pop("managedFields", None)
        return {"format": CACHE_FORMAT, "server": kube.host, "items": items}

    @staticmethod
    def _connect_error(path: str, auth: Dict[str, Any], e: BaseException, server: str = "") -> str:
        found = _unreachable(e)
        if found:
            endpoint, reason = found
            return f"{path}: cannot reach the Kubernetes API server at {endpoint}: {reason}"
        where = server or auth.get("host") or ""
        if not where:
            kubeconfig = auth.get("kubeconfig")
            where = (
                f"kubeconfig {kubeconfig}"
                if isinstance(kubeconfig, str)
                else "the in-cluster configuration or ~/.kube/config"
            )
        return f"{path}: cannot connect to the Kubernetes API ({where}): {e}"

    # -- the inventory -----------------------------------------------------------------
    def _populate(self, result: Result, settings: Settings) -> None:
        for warning in result.warnings:
            self.display.warning(f"hnmachines: {warning}")
        inventory = self.inventory
        root = inventory.add_group(settings.root_group)
        for group, variables in result.group_vars.items():
            inventory.add_group(group)
            inventory.add_child(root, group)
            for key, value in variables.items():
                inventory.set_variable(group, key, value)
        kubectl_group = next(iter(result.group_vars), None)
        known_groups = set()
        compose = self.get_option("compose")
        composed_groups = self.get_option("groups")
        keyed_groups = self.get_option("keyed_groups")
        constructed = bool(compose or composed_groups or keyed_groups)
        strict = self.get_option("strict")
        # ansible-core 2.19 passes each set_variable through a visitor that copies every value
        # and tags each string with its origin: 80% of the time of 10,000 hosts. Our values are
        # plain JSON from json.loads (untagged, so untrusted), and every variable name is
        # ours, so they go into the Host objects directly.
        hosts = getattr(inventory, "__wrapped__", inventory).hosts
        uid = f"{settings.var_prefix}uid"
        for host in result.hosts:
            earlier = hosts.get(host.name)
            if earlier is not None and earlier.vars.get(uid) != host.vars[uid]:
                # Another source (another host cluster's file) already has this name.
                self.display.warning(
                    f"hnmachines: host {host.name!r} is already in the inventory from"
                    f" {earlier.vars.get('inventory_file')}; machine {host.vars[uid]} is left out:"
                    " give each host cluster's file its own host_format, such as 'prod-{namespace}-{name}'"
                )
                continue
            # Not into root itself: every host is in a default group under it.
            name = inventory.add_host(host.name)
            hosts[name].vars.update(_mark_unsafe(host.vars) if _mark_unsafe else host.vars)
            for group in host.groups:
                if group not in known_groups:
                    inventory.add_group(group)
                    inventory.add_child(root, group)
                    known_groups.add(group)
                inventory.add_child(group, name)
            if kubectl_group:
                inventory.add_child(kubectl_group, name)
            if constructed:
                # The templates come from the inventory file (trusted); the variables they
                # read came from the API (not trusted), so data is never run as a template.
                host_obj = hosts[name]
                if compose:
                    self._set_composite_vars(compose, host_obj.get_vars(), name, strict=strict)
                variables = host_obj.get_vars()  # with what compose just set
                self._add_host_to_composed_groups(
                    composed_groups, variables, name, strict=strict, fetch_hostvars=False
                )
                self._add_host_to_keyed_groups(
                    keyed_groups, variables, name, strict=strict, fetch_hostvars=False
                )

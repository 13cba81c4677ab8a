"""The Kubernetes API, through the collection's own JSON client (plugins/module_utils/kube.py):
one client layer for modules, the Service proxy and this agent. Its ApiClient comes from
the agent's kubeconfig or, in a Pod, its ServiceAccount (the kubernetes Python client's
loaders), not from kubernetes.core: the agent runs without Ansible."""

from __future__ import annotations

from typing import Any

try:
    from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube, KubeError
except ImportError:  # installed on a pet node next to kube.py, as the Service proxy is
    from kube import Kube, KubeError  # type: ignore[no-redef]

__all__ = ["FIELD_MANAGER", "Kube", "KubeError", "connect", "connect_in_cluster"]

FIELD_MANAGER = "rhizeption-agent"


def connect(kubeconfig: str) -> Kube:
    """The API server and credentials of the kubeconfig file KUBECONFIG."""
    import kubernetes  # noqa: PLC0415 (only the running agent needs it)

    client: Any = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    return Kube(client, field_manager=FIELD_MANAGER)


def connect_in_cluster() -> Kube:
    """The cluster the agent's Pod runs in, as the Pod's ServiceAccount: the API server of
    KUBERNETES_SERVICE_HOST and _PORT, the token and CA the kubelet mounts in the Pod.

    A function of its own, not ``connect("")``: the agent connects twice (tenant and host),
    and an empty tenant kubeconfig must stay an error, never a silent switch to the host's
    credentials. The configuration is a fresh one (the client's default is left alone). Before
    a request it re-reads the token file once the token it holds is a minute old, so the
    kubelet's rotation of the projected token (at 80 % of its life) needs no restart; the exec
    and port-forward clients made from ``api.configuration`` share that."""
    import kubernetes  # noqa: PLC0415 (only the running agent needs it)

    configuration: Any = kubernetes.client.Configuration()
    kubernetes.config.load_incluster_config(client_configuration=configuration, try_refresh_token=True)
    return Kube(kubernetes.client.ApiClient(configuration), field_manager=FIELD_MANAGER)

"""The Kubernetes API, through the collection's own JSON client (plugins/module_utils/kube.py):
one client layer for modules, the Service proxy and this agent. Its ApiClient comes from
the agent's kubeconfig (the kubernetes Python client's loader), not from kubernetes.core:
the agent runs without Ansible."""

from __future__ import annotations

from typing import Any

try:
    from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube, KubeError
except ImportError:  # installed on a pet node next to kube.py, as the Service proxy is
    from kube import Kube, KubeError  # type: ignore[no-redef]

__all__ = ["FIELD_MANAGER", "Kube", "KubeError", "connect"]

FIELD_MANAGER = "rhizeption-agent"


def connect(kubeconfig: str) -> Kube:
    import kubernetes  # noqa: PLC0415 (only the running agent needs it)

    client: Any = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    return Kube(client, field_manager=FIELD_MANAGER)

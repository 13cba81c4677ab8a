"""Backends of the node agent: ``podman``, a container runtime that
``runtime.RuntimeProvider`` drives (pet nodes), and ``hostcluster``, Pods that run as Pods
of a host cluster (virtual nodes)."""

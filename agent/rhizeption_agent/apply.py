"""``python -m rhizeption_agent.apply --kubeconfig FILE [--server URL] OBJECTS.json``: server-side
apply of cluster-scoped objects, retried until the API server takes them.

A virtual-node agent's Pod runs it as an init container, with the tenant's admin kubeconfig, to
write the agent's ClusterRole and its binding into the tenant
(plugins/module_utils/tenant_control_plane.py, ``_render_virtual_node_agent``): RBAC lets only a
holder of a role's rights create it, and the deployer may have no way into the tenant's API
server. The agent's own container never mounts that kubeconfig. Our own few lines rather than
kubectl: the agent's image has Python and the collection's client, and no kubectl."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import urllib3

from .kubeapi import FIELD_MANAGER, Kube, KubeError

log = logging.getLogger("rhizeption_agent.apply")
RETRY_SECONDS = 2.0


def object_path(obj: dict) -> str:
    """The API path of the cluster-scoped OBJ (its kind's plural is lower case plus s, true of
    every kind this writes: ClusterRole, ClusterRoleBinding)."""
    group_version = obj["apiVersion"]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{base}/{obj['kind'].lower()}s/{obj['metadata']['name']}"


def apply_all(kube: Kube, objects: list[dict], deadline: float) -> None:
    """Apply each of OBJECTS; an API server that does not answer yet, or answers 5xx, is asked
    again until DEADLINE (time.monotonic), then the last error is raised."""
    for obj in objects:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        while True:
            try:
                kube.apply(object_path(obj), obj, what=f"apply {what}")
                log.info("applied %s", what)
                break
            except (KubeError, OSError, urllib3.exceptions.HTTPError) as e:
                # A refusal (4xx) will not change; no answer, or a 5xx, may (an apiserver starting).
                status = getattr(e, "status", 0) or 0
                if 0 < status < 500 or time.monotonic() > deadline:
                    raise
                log.info("%s: %s; again in %.0f s", what, str(e).splitlines()[0], RETRY_SECONDS)
            time.sleep(RETRY_SECONDS)


def _connect(kubeconfig: str, server: str) -> Kube:
    import kubernetes  # noqa: PLC0415 (only the running command needs it)

    client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    if server:
        client.configuration.host = server
    return Kube(client, field_manager=FIELD_MANAGER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rhizeption_agent.apply", description=__doc__.split("\n", maxsplit=1)[0]
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--server", default="", help="the API server's URL, instead of the kubeconfig's")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to keep asking (default 300)")
    parser.add_argument("objects", help="a JSON file holding a list of objects")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with open(args.objects, encoding="utf-8") as f:
        objects = json.load(f)
    try:
        apply_all(_connect(args.kubeconfig, args.server), objects, time.monotonic() + args.timeout)
    except (KubeError, OSError, urllib3.exceptions.HTTPError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Copyright: rhizeption.core contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""How the ``rhizeption.core.hnmachines`` inventory reads HnMachines from the API.

A file of its own because it imports the kubernetes client (through kube.py): the plugin
imports it only when it reads the API, so a cache hit never pays for that import.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from ansible_collections.rhizeption.core.plugins.module_utils.hn_api import HNMACHINE
from ansible_collections.rhizeption.core.plugins.module_utils.kube import Kube, KubeError

Obj = Dict[str, Any]


def _pages(kube: Kube, path: str, selectors: Obj) -> List[Obj]:
    items: List[Obj] = []
    for page in kube.list_pages(path, **selectors):
        items.extend(page.get("items") or ())
    return items


def list_machines(
    kube: Kube,
    namespaces: List[str] | None,
    selectors: Obj,
    *,
    skip_forbidden: bool = False,
    warn: Callable[[str], None] = lambda _msg: None,
    debug: Callable[[str], None] = lambda _msg: None,
) -> List[Obj]:
    """Every HnMachine the inventory may show, as raw JSON.

    One paginated list over all namespaces (filtered by the caller); a single namespace
    is listed alone. When the cluster-wide list is forbidden and NAMESPACES are known,
    each is listed on its own, and with SKIP_FORBIDDEN those that are forbidden too are
    skipped with a warning.
    """
    if namespaces and len(namespaces) == 1:
        return _namespace(kube, namespaces[0], selectors, skip_forbidden, warn)
    try:
        return _pages(kube, HNMACHINE.path(), selectors)
    except KubeError as e:
        if e.status != 403 or not namespaces:
            raise
        debug(f"listing HnMachines over all namespaces is forbidden ({e}); listing namespaces one by one")
    items: List[Obj] = []
    for namespace in namespaces:
        items.extend(_namespace(kube, namespace, selectors, skip_forbidden, warn))
    return items


def _namespace(
    kube: Kube, namespace: str, selectors: Obj, skip_forbidden: bool, warn: Callable[[str], None]
) -> List[Obj]:
    try:
        return _pages(kube, HNMACHINE.path(namespace), selectors)
    except KubeError as e:
        if e.status == 403 and skip_forbidden:
            warn(f"skipped namespace {namespace!r}: the credentials may not list HnMachines there ({e})")
            return []
        raise


def explain(e: KubeError) -> str:
    """What an API error means for the inventory, and what to do."""
    if e.status == 404:
        return (
            "the server does not know HnMachines (hnmachines.hn.rhizeption.io): "
            "install the CRDs (role rhizeption.core.crds)"
        )
    if e.status == 401:
        return f"the credentials were refused (401 Unauthorized): {e}"
    if e.status == 403:
        return (
            f"forbidden (403): {e}; grant list on hnmachines.hn.rhizeption.io, or set "
            "'namespaces' (with 'skip_forbidden_namespaces') to list namespaces one by one"
        )
    return str(e)

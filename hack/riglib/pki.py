"""Certificates for the rig's control plane: the collection's own certificate builder
(plugins/module_utils/pki.py), with the rig's short validity as the default.

hack/rig and the Makefile put the repository's .collections on PYTHONPATH, which makes
the collection importable as ansible_collections.rhizeption.core.
"""

from __future__ import annotations

import datetime
import importlib
import sys
from pathlib import Path

try:
    importlib.import_module("ansible_collections.rhizeption.core")
except ImportError:
    # Run with only hack/ on the path (a benchmark, a shell): use this checkout's collection.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.rhizeption.core.plugins.module_utils.pki import (
    KeyPair,
    cert_pem,
    key_pem,
    kubeconfig_yaml,
    load_keypair,
    new_key,
    public_key_pem,
    write_file,
)
from ansible_collections.rhizeption.core.plugins.module_utils.pki import issue as _issue
from ansible_collections.rhizeption.core.plugins.module_utils.pki import new_ca as _new_ca

__all__ = [
    "VALIDITY",
    "KeyPair",
    "cert_pem",
    "issue",
    "key_pem",
    "kubeconfig_yaml",
    "load_keypair",
    "new_ca",
    "new_key",
    "public_key_pem",
    "write_file",
]

VALIDITY = datetime.timedelta(days=2)  # a rig lives for one session


def new_ca(common_name: str) -> KeyPair:
    return _new_ca(common_name, validity=VALIDITY)


def issue(ca: KeyPair, common_name: str, **kwargs: object) -> KeyPair:
    """A leaf certificate as module_utils.pki.issue makes it, valid for the rig's lifetime."""
    return _issue(ca, common_name, validity=VALIDITY, **kwargs)  # type: ignore[arg-type]

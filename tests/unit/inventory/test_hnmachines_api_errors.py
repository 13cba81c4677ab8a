"""What the hnmachines inventory says about API errors (the messages users act on)."""

from __future__ import annotations

import pytest
from ansible_collections.rhizeption.core.plugins.module_utils.inventory_hnmachines_api import explain
from ansible_collections.rhizeption.core.plugins.module_utils.kube import KubeError


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, "install the CRDs"),
        (401, "credentials were refused"),
        (403, "grant list on hnmachines.hn.rhizeption.io"),
        (500, "etcd timeout"),
    ],
)
def test_api_errors_say_what_to_do(status, expected):
    assert expected in explain(KubeError("etcd timeout", status=status))

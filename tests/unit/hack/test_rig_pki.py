"""The rig's PKI is the collection's (plugins/module_utils/pki.py, tested in
tests/unit/module_utils/test_pki.py), with certificates that live as long as a rig."""

from __future__ import annotations

import datetime

from ansible_collections.rhizeption.core.plugins.module_utils import pki as collection_pki
from riglib import pki


def test_the_rig_uses_the_collections_certificate_builder() -> None:
    assert pki.KeyPair is collection_pki.KeyPair
    assert pki.kubeconfig_yaml is collection_pki.kubeconfig_yaml
    assert pki.write_file is collection_pki.write_file


def test_rig_certificates_live_for_a_session_and_chain_to_the_rig_ca() -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = pki.new_ca("rig-ca")
    leaf = pki.issue(ca, "kube-apiserver", server=True, dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    leaf.cert.verify_directly_issued_by(ca.cert)
    for cert in (ca.cert, leaf.cert):
        assert cert.not_valid_after_utc - now <= pki.VALIDITY
        assert cert.not_valid_after_utc - now > pki.VALIDITY - datetime.timedelta(minutes=1)
    assert collection_pki.sans(leaf.cert) == (["localhost"], ["127.0.0.1"])

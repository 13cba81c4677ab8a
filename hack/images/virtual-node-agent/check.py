"""Run by hack/build-images in the virtual-node-agent image, as the image's user: what a
virtual node's agent takes at start (__main__.build with backend hostcluster, the :10250
server) imports from the image alone, pki makes a serving certificate in the state folder,
a config without a host kubeconfig is valid, and the Pod's service account (files mounted at
the kubelet's path, KUBERNETES_SERVICE_* set) connects. Prints one line."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stdout
from importlib.metadata import version
from pathlib import Path

import kube
import pki
import rhizeption_agent.agent
import rhizeption_agent.apply  # the init container that writes the tenant RBAC
import rhizeption_agent.backends.hostcluster.nodes
import rhizeption_agent.backends.hostcluster.pods
import rhizeption_agent.backends.hostcluster.provider
import rhizeption_agent.identity
import rhizeption_agent.server
import yaml
from rhizeption_agent import __main__ as cli
from rhizeption_agent import kubeapi

STATE = "/var/lib/rhizeption-agent"  # config.py's default state_dir


def main() -> None:
    assert "ansible_collections" not in sys.modules, "the image has no collection: kube and pki load alone"
    assert kubeapi.Kube is kube.Kube, "kubeapi took kube.py as the top-level module kube"
    assert pki.HAS_CRYPTOGRAPHY, f"cryptography does not load: {pki.CRYPTOGRAPHY_IMPORT_ERROR}"
    assert os.getuid() == 65532, f"runs as uid {os.getuid()}, not 65532"
    cert, _key = rhizeption_agent.server.self_signed(STATE, "host-resources", ["192.0.2.7"])
    assert Path(cert).read_text().startswith("-----BEGIN CERTIFICATE-----")

    config = Path("/tmp/agent.yaml")
    config.write_text(
        yaml.safe_dump(
            {
                "node_name": "host-resources",
                "kubeconfig": "/etc/rhizeption-agent/tenant.kubeconfig",
                "backend": "hostcluster",
                "host_cluster": {"tenant": "green", "namespace": "tenants-green-pods", "nodes": ["node-a"]},
            }
        )
    )
    said = io.StringIO()
    with redirect_stdout(said):
        assert cli.main(["--config", str(config), "--check"]) == 0
    assert "is valid" in said.getvalue(), said.getvalue()

    host = cli.connect_host("")
    want = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    assert host.host == want, f"in-cluster host {host.host}, not {want}"
    print(
        f"uid {os.getuid()}, Python {sys.version.split()[0]}, kubernetes {version('kubernetes')},"
        f" cryptography {version('cryptography')}, PyYAML {version('PyYAML')};"
        f" serving certificate in {Path(cert).parent}; in-cluster host {host.host}"
    )


if __name__ == "__main__":
    main()

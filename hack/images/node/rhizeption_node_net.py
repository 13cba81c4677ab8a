"""The pod network of a node that has no cni.conflist given: host-gw style, like kind's kindnetd.

1. Waits for the kubelet's credentials, then for its Node's spec.podCIDR (the controller-manager
   allocates it), and writes a bridge + host-local CNI config for that range.
2. Watches the Nodes and keeps one route per other Node: its podCIDR via its InternalIP. Nodes of
   one tenant are Pods of the same host cluster, so their addresses reach each other directly.

Why our own: no registry is reachable, so no flannel or kindnetd image can be pulled; this is
the part of them a cluster of hosted nodes needs, on the Python and iproute2 of the node image.
Usage: python3 rhizeption_node_net.py NODE_NAME KUBECONFIG
"""

import base64
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

CNI_CONF = "/etc/cni/net.d/10-rhizeption.conflist"
# Routes this daemon owns carry their own protocol number, so it never touches another's.
ROUTE_PROTO = "200"


def log(msg):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} node-net: {msg}", flush=True)


class Api:
    """GETs and watches with the kubelet's client certificate (the Node authorizer lets a
    node read Nodes)."""

    def __init__(self, kubeconfig_path):
        with open(kubeconfig_path) as f:
            config = yaml.safe_load(f)
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.server = cluster["server"].rstrip("/")
        self.ctx = ssl.create_default_context()
        if cluster.get("certificate-authority-data"):
            self.ctx.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        else:
            self.ctx.load_verify_locations(cafile=cluster["certificate-authority"])
        cert, key = user.get("client-certificate"), user.get("client-key")
        if user.get("client-certificate-data"):
            # ssl wants files: write the pair to a private temporary file.
            fd, path = tempfile.mkstemp(prefix="node-net-", dir="/run")
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64decode(user["client-certificate-data"]))
                f.write(b"\n")
                f.write(base64.b64decode(user["client-key-data"]))
            cert = key = path
        self.ctx.load_cert_chain(cert, key)

    def get(self, path, timeout=10):
        with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=timeout) as resp:
            return json.load(resp)

    def watch(self, path, resource_version):
        url = f"{self.server}{path}?watch=1&resourceVersion={resource_version}&timeoutSeconds=300"
        with urllib.request.urlopen(url, context=self.ctx, timeout=330) as resp:
            for line in resp:
                yield json.loads(line)


def wait_for(what, probe):
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as err:  # the API server may not answer yet
            log(f"waiting for {what}: {err}")
        time.sleep(1)


def write_cni(pod_cidr):
    conf = {
        "cniVersion": "1.0.0",
        "name": "rhizeption",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    tmp = CNI_CONF + ".tmp"
    with open(tmp, "w") as f:
        json.dump(conf, f, indent=2)
    os.replace(tmp, CNI_CONF)  # the kubelet must never read half a file
    log(f"pod network {pod_cidr}: wrote {CNI_CONF}")


def internal_ip(node):
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP":
            return a.get("address")
    return None


def sync_routes(me, nodes):
    """One route per other Node with a podCIDR and an InternalIP; ours that are no longer
    wanted go."""
    wanted = {}
    for node in nodes.values():
        cidr, ip = (node.get("spec") or {}).get("podCIDR"), internal_ip(node)
        if node["metadata"]["name"] != me and cidr and ip:
            wanted[cidr] = ip
    show = ["ip", "-4", "route", "show", "proto", ROUTE_PROTO]
    out = subprocess.run(show, capture_output=True, text=True, check=False)
    have = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "via":
            have[parts[0]] = parts[2]
    for cidr, ip in wanted.items():
        if have.get(cidr) != ip:
            subprocess.run(["ip", "route", "replace", cidr, "via", ip, "proto", ROUTE_PROTO], check=False)
            log(f"route {cidr} via {ip}")
    for cidr in set(have) - set(wanted):
        subprocess.run(["ip", "route", "del", cidr, "proto", ROUTE_PROTO], check=False)
        log(f"route {cidr} removed")


def main(node_name, kubeconfig):
    wait_for("the kubelet's credentials", lambda: os.path.isfile(kubeconfig) and os.path.getsize(kubeconfig))
    api = wait_for("a connection", lambda: Api(kubeconfig))
    pod_cidr = wait_for(
        f"spec.podCIDR of Node {node_name}",
        lambda: api.get(f"/api/v1/nodes/{node_name}")["spec"].get("podCIDR"),
    )
    write_cni(pod_cidr)
    while True:  # list, then watch from that list; on any break, list again
        try:
            listing = api.get("/api/v1/nodes")
            nodes = {n["metadata"]["name"]: n for n in listing["items"]}
            sync_routes(node_name, nodes)
            for event in api.watch("/api/v1/nodes", listing["metadata"]["resourceVersion"]):
                obj = event["object"]
                if event["type"] == "ERROR":
                    break
                if event["type"] == "DELETED":
                    nodes.pop(obj["metadata"]["name"], None)
                else:
                    nodes[obj["metadata"]["name"]] = obj
                sync_routes(node_name, nodes)
        except Exception as err:
            log(f"watch of Nodes ended: {err}; listing again")
            time.sleep(1)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

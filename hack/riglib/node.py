"""A rig with a real node: containerd, kubelet and kube-proxy in a privileged Podman container
(the image localhost/rhizeption/node, kind style), joined to a rig control plane, with CoreDNS.

What runs on this host, and why each piece is here:
- a Podman network of its own: the node container's address, and the gateway address on this
  host where the node and its Pods reach the API server (the control plane listens on all
  addresses and advertises the gateway: ControlPlane(address=...));
- the node container: privileged, host cgroup namespace and /sys/fs/cgroup mounted rw, the only
  way a container runtime runs inside a container here (MACHINE.md). The Pods' cgroups live under
  a cgroupRoot of this rig's own in the host hierarchy, so rigs never share a `kubepods`;
- routes on this host to the Pod CIDR (and to the Service CIDR when no other rig routes it) via
  the node, so tests reach Pods and ClusterIPs directly; NodePorts answer on the node's address.

State is kept in node.json next to the control plane's state.json, so `hack/rig down` in
another process removes exactly what was made.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import jinja2

from . import toolchain
from .controlplane import SERVICE_CIDR, ControlPlane, RigError  # makes the collection importable

from ansible_collections.rhizeption.core.plugins.module_utils.hosted_node import (  # isort: skip
    CONF_DIR,
    kube_proxy_config,
    kubelet_config,
)

REPO = toolchain.HACK_DIR.parent
CONTAINER_PREFIX = "rhizeption-rig-node-"
CLUSTER_DNS_IP = str(ipaddress.ip_network(SERVICE_CIDR)[10])  # the tenth address, by convention
CLUSTER_DOMAIN = "cluster.local"
POD_CIDR_POOL = ipaddress.ip_network("10.244.0.0/16")
CGROUP_ROOT_PARENT = "rhizeption-rig"
# Archives not imported at start: systemd test hosts never run as Pods, and the node image (for
# hosted nodes) is large enough to slow every start; tests that need it call load_images().
NOT_POD_IMAGES = ("host-", "node-")


def node_image() -> str:
    return f"localhost/rhizeption/node:{toolchain.versions()['KUBERNETES_VERSION']}"


def coredns_image() -> str:
    return f"localhost/rhizeption/coredns:{toolchain.versions()['COREDNS_VERSION']}"


def pod_images() -> list[Path]:
    """The image archives hack/build-images made that Pods run (all but host and node)."""
    folder = toolchain.cache_dir() / "images"
    return sorted(p for p in folder.glob("*.oci.tar") if not p.name.startswith(NOT_POD_IMAGES))


def image_archive(name: str) -> Path:
    """The archive hack/build-images made of the image NAME (pause, coredns, node, ...)."""
    found = sorted((toolchain.cache_dir() / "images").glob(f"{name}-*.oci.tar"))
    if not found:
        raise RigError(f"the {name} image is not built: run `hack/bootstrap images`")
    return found[-1]


# Where hack/build-images keeps them (its PREVIOUS_ARCHIVE_DIR), under the images folder.
PREVIOUS_ARCHIVES = "kubernetes-previous"


def previous_control_plane_archives() -> list[Path]:
    """The archives of the previous Kubernetes minor's control-plane images, which tenant
    upgrade tests start from (hack/build-images keeps them apart from pod_images())."""
    found = sorted((toolchain.cache_dir() / "images" / PREVIOUS_ARCHIVES).glob("*.oci.tar"))
    if len(found) != 3:
        version = toolchain.versions()["KUBERNETES_PREVIOUS_VERSION"]
        raise RigError(
            f"expected the 3 control-plane archives of Kubernetes {version}, found {len(found)}:"
            " run `hack/bootstrap kubernetes_previous images`"
        )
    return found


@dataclass
class NodeState:
    name: str  # the Node's name
    container: str
    network: str
    gateway: str
    node_ip: str
    pod_cidr: str
    cgroup_root: str
    routes: list[str]

    def save(self, workdir: Path) -> None:
        (workdir / "node.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, workdir: Path) -> NodeState | None:
        path = workdir / "node.json"
        return cls(**json.loads(path.read_text())) if path.exists() else None


def _run(*cmd: str, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        output = proc.stderr.strip() or proc.stdout.strip()
        raise RigError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {output}")
    return proc.stdout


def _routed_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in _run("ip", "-4", "route", "show").splitlines():
        dest = line.split()[0]
        if dest != "default":
            nets.append(ipaddress.ip_network(dest, strict=False))
    return nets


def _free_pod_cidr() -> str:
    """A /24 of POD_CIDR_POOL that no route of this host covers yet (another rig's node)."""
    used = _routed_networks()
    for subnet in POD_CIDR_POOL.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return str(subnet)
    raise RigError(f"no free /24 left in {POD_CIDR_POOL} for a rig node's Pods")


class HostCluster:
    """A rig control plane (etcd, kube-apiserver, controller-manager, scheduler) with one real
    node and CoreDNS: a small, real host cluster.

    >>> with HostCluster(Path("/tmp/x")) as hc:
    ...     print(hc.kubeconfig, hc.node.node_ip, hc.node.pod_cidr)
    """

    COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")

    def __init__(
        self,
        workdir: Path,
        *,
        node_name: str = "rig-node",
        images: Iterable[Path] | None = None,
        # IMAGES: archives imported into the node for Pods to run, besides CoreDNS (always) and
        # pause (preloaded in the node image); the default is every one hack/build-images made.
        die_with_parent: bool = False,
        ready_timeout: float = 120.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.node_name = node_name
        self.images = list(pod_images() if images is None else images)
        self.die_with_parent = die_with_parent
        self.ready_timeout = ready_timeout
        self.control_plane: ControlPlane | None = None
        self.node: NodeState | None = None

    # -- public API ------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self._require_cp().kubeconfig

    @property
    def server(self) -> str:
        return self._require_cp().server

    def __enter__(self) -> HostCluster:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> HostCluster:
        """Network, control plane, node, CoreDNS; on any failure all of it is removed again."""
        if subprocess.run(["podman", "image", "exists", node_image()], check=False).returncode != 0:
            raise RigError(f"{node_image()} is not built: run `hack/bootstrap images`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        suffix = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:8]
        network = f"{CONTAINER_PREFIX}{suffix}"
        try:
            # The network's state is recorded before anything else, so down() finds it.
            self.node = NodeState(
                name=self.node_name,
                container=network,
                network=network,
                gateway="",
                node_ip="",
                pod_cidr=_free_pod_cidr(),
                cgroup_root=f"/{CGROUP_ROOT_PARENT}/{suffix}",
                routes=[],
            )
            self.node.save(self.workdir)
            _run("podman", "network", "create", network)
            info = json.loads(_run("podman", "network", "inspect", network))[0]
            self.node.gateway = info["subnets"][0]["gateway"]
            self.node.save(self.workdir)
            self.control_plane = ControlPlane(
                self.workdir,
                self.COMPONENTS,
                die_with_parent=self.die_with_parent,
                address=self.node.gateway,
                cluster_cidr=self.node.pod_cidr,  # Node.spec.podCIDR = what its CNI hands out
            )
            self.control_plane.up()
            self._write_node_config()
            self._start_node()
            self._wait_node_ready()
            self._add_routes()
            self._apply_coredns()
        except BaseException:
            self.down(remove=False)
            raise
        return self

    def down(self, *, remove: bool = True) -> None:
        """Remove the node container and its volumes, the routes, the cgroups the node's Pods
        had, the network, then stop the control plane."""
        node = self.node or NodeState.load(self.workdir)
        if node is not None:
            _run("podman", "rm", "-f", "-v", "-i", "-t", "10", node.container, check=False)
            for route in node.routes:
                _run("ip", "route", "del", route, check=False)
            _remove_cgroups(node.cgroup_root)
            _run("podman", "network", "rm", "-f", node.network, check=False)
            (self.workdir / "node.json").unlink(missing_ok=True)
        self.node = None
        cp = self.control_plane
        if cp is None and (self.workdir / "state.json").exists():
            cp = ControlPlane.attach(self.workdir)
        if cp is not None:
            cp.down(remove=remove)
        elif remove:
            subprocess.run(["rm", "-rf", str(self.workdir)], check=False)
        self.control_plane = None

    @classmethod
    def attach(cls, workdir: Path) -> HostCluster:
        hc = cls(workdir, images=[])
        hc.control_plane = ControlPlane.attach(workdir)
        hc.node = NodeState.load(workdir)
        return hc

    def kubectl(self, *args: str, input_text: str | None = None, timeout: float = 120) -> str:
        proc = subprocess.run(
            [str(toolchain.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RigError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def load_images(self, archives: Iterable[Path]) -> None:
        """Import more image archives into the running node's containerd (the node image, for
        hosted nodes), with the snapshotter the node chose."""
        node = self._require_node()
        snapshotter = _run("podman", "exec", node.container, "cat", "/run/rhizeption/snapshotter").strip()
        for archive in archives:
            inside = f"/var/lib/containerd/import-{archive.name}"
            _run("podman", "cp", str(archive), f"{node.container}:{inside}", timeout=600)
            try:
                _run(
                    "podman", "exec", node.container,
                    "ctr", "-n", "k8s.io", "images", "import", "--snapshotter", snapshotter, inside,
                    timeout=600,
                )  # fmt: skip
            finally:
                _run("podman", "exec", node.container, "rm", "-f", inside, check=False)

    def node_log(self, process: str, lines: int = 30) -> str:
        """The last lines of a node process's log (containerd, kubelet, kube-proxy); the node
        writes them to the rig's node-logs folder, so they outlive the container."""
        try:
            text = (self.workdir / "node-logs" / f"{process}.log").read_text()
            return "\n".join(text.splitlines()[-lines:])
        except OSError as err:
            return f"(no {process} log: {err})"

    # -- internals ---------------------------------------------------------------
    def _require_cp(self) -> ControlPlane:
        if self.control_plane is None:
            raise RigError(f"no host cluster is running in {self.workdir}")
        return self.control_plane

    def _require_node(self) -> NodeState:
        if self.node is None:
            raise RigError(f"no node is running in {self.workdir}")
        return self.node

    def _write_node_config(self) -> None:
        cp, node = self._require_cp(), self._require_node()
        conf = self.workdir / "node"
        conf.mkdir(mode=0o700, exist_ok=True)
        server = cp.server_at(node.gateway)
        # Node identity as the Node authorizer expects it; kube-proxy's user is bound to
        # system:node-proxier by the API server's default policy.
        (conf / "kubelet.kubeconfig").write_bytes(
            cp.client_kubeconfig(f"system:node:{node.name}", ("system:nodes",), server=server)
        )
        (conf / "kube-proxy.kubeconfig").write_bytes(cp.client_kubeconfig("system:kube-proxy", server=server))
        (conf / "ca.crt").write_bytes((self.workdir / "ca.crt").read_bytes())
        for f in conf.iterdir():
            f.chmod(0o600)
        # The same node configuration as hosted nodes get; the pod network comes from the node
        # image's rhizeption_node_net.py, from the podCIDR the controller-manager gives the Node.
        kubelet = kubelet_config(
            cgroup_root=node.cgroup_root,
            cluster_dns=CLUSTER_DNS_IP,
            cluster_domain=CLUSTER_DOMAIN,
            rotate_certificates=False,  # the rig's certificates outlive the rig
        )
        (conf / "kubelet.yaml").write_text(json.dumps(kubelet, indent=2))
        (conf / "kube-proxy.yaml").write_text(
            json.dumps(kube_proxy_config(cluster_cidr=node.pod_cidr), indent=2)
        )

    def _start_node(self) -> None:
        node = self._require_node()
        logs = self.workdir / "node-logs"
        logs.mkdir(exist_ok=True)
        mounts = [f"--volume={self.workdir / 'node'}:{CONF_DIR}:ro", f"--volume={logs}:/var/log/rhizeption"]
        archives = sorted({image_archive("coredns"), *self.images})
        mounts += [f"--volume={image}:/var/lib/rhizeption/images/{image.name}:ro" for image in archives]
        _run(
            "podman",
            "run",
            "--detach",
            "--quiet",
            f"--name={node.container}",
            f"--hostname={node.name}",
            f"--network={node.network}",
            # MACHINE.md: the only way a container runtime runs inside a container here.
            "--privileged",
            "--cgroupns=host",
            "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
            # containerd's and kubelet's state on volumes that die with the node (overlayfs
            # cannot stack on the container's own overlay root).
            "--volume=/var/lib/containerd",
            "--volume=/var/lib/kubelet",
            "--tmpfs=/run",
            "--tmpfs=/tmp",
            *mounts,
            node_image(),
        )
        info = json.loads(_run("podman", "inspect", node.container))[0]
        node.node_ip = info["NetworkSettings"]["Networks"][node.network]["IPAddress"]
        node.save(self.workdir)

    def _wait_node_ready(self) -> None:
        node = self._require_node()
        deadline = time.monotonic() + self.ready_timeout
        # kubectl wait needs the object to exist: the kubelet registers it after its start.
        while time.monotonic() < deadline:
            state = json.loads(_run("podman", "inspect", node.container))[0]["State"]
            if not state["Running"]:
                log = self.node_log("kubelet")
                raise RigError(f"the node container exited ({state['ExitCode']}); kubelet log:\n{log}")
            try:
                self.kubectl("wait", "--for=condition=Ready", f"node/{node.name}", "--timeout=5s")
                return
            except RigError:
                time.sleep(0.5)
        log = self.node_log("kubelet")
        raise RigError(f"node {node.name} not Ready after {self.ready_timeout:.0f} s; kubelet log:\n{log}")

    def _add_routes(self) -> None:
        node = self._require_node()
        wanted = [node.pod_cidr]
        # One rig at a time can route the Service CIDR (all rigs share it).
        service = ipaddress.ip_network(SERVICE_CIDR)
        if not any(service.overlaps(n) for n in _routed_networks()):
            wanted.append(SERVICE_CIDR)
        for route in wanted:
            _run("ip", "route", "add", route, "via", node.node_ip)
            node.routes.append(route)
            node.save(self.workdir)

    def _apply_coredns(self) -> None:
        template = REPO / "roles" / "cluster_dns" / "templates" / "coredns.yaml.j2"
        manifest = jinja2.Template(template.read_text(), undefined=jinja2.StrictUndefined).render(
            cluster_dns_ip=CLUSTER_DNS_IP,
            cluster_dns_domain=CLUSTER_DOMAIN,
            cluster_dns_image=coredns_image(),
            cluster_dns_replicas=1,
            cluster_dns_upstream=[],
        )
        self.kubectl("apply", "--server-side", "--field-manager=riglib", "-f", "-", input_text=manifest)
        timeout = f"--timeout={self.ready_timeout:.0f}s"
        self.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", timeout)

    @property
    def service_routed(self) -> bool:
        """Whether this host routes ClusterIPs to this rig's node (only one rig can)."""
        return SERVICE_CIDR in self._require_node().routes


def _remove_cgroups(cgroup_root: str) -> None:
    """Remove the cgroups under CGROUP_ROOT in every hierarchy, deepest first. A cgroup is
    removable once its processes are gone, which can take the kernel a moment after a kill."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / cgroup_root.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            for _attempt in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        parent = top.parent
        if parent.name == CGROUP_ROOT_PARENT:
            with contextlib.suppress(OSError):
                parent.rmdir()  # only when no other rig uses it

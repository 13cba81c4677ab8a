"""Start and stop a real Kubernetes control plane on 127.0.0.1.

Each component is a plain process (no systemd, no containers), started in its own
process group with its log in the rig's folder. The rig's state (pids with their
start times, ports, paths) is written to state.json so `hack/rig down` in another
process can stop exactly what `hack/rig up` started, and nothing else.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from . import pki, toolchain

# Order matters: each component needs the ones before it; stopping runs in reverse
# (MACHINE.md: an apiserver whose etcd is gone hangs in shutdown).
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
MINIMAL = ("etcd", "kube-apiserver")
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
DEFAULT_ROOT = Path(os.environ.get("RHIZEPTION_RIG_DIR", "/tmp/rhizeption-rig"))
LOOPBACK = "127.0.0.1"


class RigError(RuntimeError):
    pass


@dataclass
class Process:
    component: str
    pid: int
    start_time: int  # /proc/<pid>/stat field 22: tells a pid apart from a recycled one
    log: str


@dataclass
class State:
    workdir: str
    components: list[str]
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    # Where Pods and nodes reach the API server (the `kubernetes` Service's endpoint).
    address: str = LOOPBACK
    cluster_cidr: str | None = None  # Pod addresses the controller-manager hands to Nodes

    @property
    def kubeconfig(self) -> Path:
        return Path(self.workdir) / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    def save(self) -> None:
        path = Path(self.workdir) / "state.json"
        pki.write_file(path, json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def load(cls, workdir: Path) -> State:
        data = json.loads((workdir / "state.json").read_text())
        data["processes"] = [Process(**p) for p in data["processes"]]
        return cls(**data)


# Listening ports come from below the kernel's ephemeral range (ip_local_port_range, 32768 up by
# default), and below the NodePort range: a port the kernel hands out (bind to 0) is free only
# until the component binds it, and in between any outgoing connection of this busy machine may
# take it as its source port. kube-apiserver then fails with "address already in use" (seen in
# CI). Ports of this range are never given to outgoing connections.
LISTEN_PORTS = range(20000, 30000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port of LISTEN_PORTS that nothing listens on now, never the same twice in a process."""
    for port in random.sample(LISTEN_PORTS, len(LISTEN_PORTS)):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # the components listen on every address
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RigError(f"no free port in {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1}")


def _proc_start_time(pid: int) -> int | None:
    """Start time of PID, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _alive(proc: Process) -> bool:
    return _proc_start_time(proc.pid) == proc.start_time


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGKILL when the starting process dies, so a
    test run killed outright does not leave its control plane behind."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kubeconfig_yaml(server: str, ca: pki.KeyPair, user: str, client: pki.KeyPair) -> bytes:
    """A kubeconfig with the certificates inlined, built by the collection's own PKI."""
    return pki.kubeconfig_yaml(server, ca.cert, user, client, cluster="rig")


class ControlPlane:
    """A running (or stopped) rig in WORKDIR.

    >>> with ControlPlane(Path("/tmp/x"), components=MINIMAL) as cp:
    ...     print(cp.kubeconfig)
    """

    def __init__(
        self,
        workdir: Path,
        components: tuple[str, ...] = COMPONENTS,
        *,
        die_with_parent: bool = False,
        ready_timeout: float = 60.0,
        address: str = LOOPBACK,
        cluster_cidr: str | None = None,
    ) -> None:
        """ADDRESS: where Pods and nodes reach the API server. Loopback (the default) serves
        this host only; any other address makes the API server listen on all addresses and
        advertise ADDRESS, which a rig with a real node needs (riglib.node). With CLUSTER_CIDR
        the controller-manager hands each Node a /24 of it as spec.podCIDR."""
        wanted = set(components)
        # etcd alone is allowed (the benchmarks' baseline); everything else needs the apiserver.
        if (
            wanted - set(COMPONENTS)
            or "etcd" not in wanted
            or (wanted != {"etcd"} and "kube-apiserver" not in wanted)
        ):
            raise RigError(
                f"components must be among {', '.join(COMPONENTS)} and include etcd, and"
                f" kube-apiserver for any other; got {', '.join(components)}"
            )
        self.workdir = Path(workdir)
        self.components = tuple(c for c in COMPONENTS if c in components)
        self.die_with_parent = die_with_parent
        self.ready_timeout = ready_timeout
        self.address = address
        self.cluster_cidr = cluster_cidr
        self.state: State | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- public API ------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self._require_state().kubeconfig

    @property
    def server(self) -> str:
        return self._require_state().server

    def server_at(self, address: str) -> str:
        """The API server's URL at ADDRESS (the rig's address, when it is not loopback)."""
        return f"https://{address}:{self._require_state().ports['kube-apiserver']}"

    def __enter__(self) -> ControlPlane:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> State:
        """Generate certificates, start every component, and wait until each is ready.
        On any failure everything started so far is stopped before the error is raised."""
        if (self.workdir / "state.json").exists():
            raise RigError(f"a rig already lives in {self.workdir}: run `hack/rig down` first")
        binaries = {c: toolchain.binary(c) for c in self.components}
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.state = State(
            workdir=str(self.workdir),
            components=list(self.components),
            address=self.address,
            cluster_cidr=self.cluster_cidr,
        )
        try:
            self._write_files()
            for component in self.components:
                self._start(component, binaries[component])
                self._wait_ready(component)
        except BaseException:
            self.down(remove=False)
            raise
        return self.state

    def down(self, *, remove: bool = True) -> list[str]:
        """Stop every component in reverse start order: SIGTERM, then SIGKILL after
        STOP_TIMEOUT. Returns the components that had to be killed."""
        state = self.state
        if state is None:
            if not (self.workdir / "state.json").exists():
                return []
            state = State.load(self.workdir)
        killed = []
        for proc in reversed(state.processes):
            if not self._stop(proc):
                killed.append(proc.component)
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.state = None
        return killed

    def restart(self, component: str) -> None:
        """Stop COMPONENT and start it again on the same port, certificates and data: how
        tests see clients live through an API server or etcd restart."""
        state = self._require_state()
        index = next((i for i, p in enumerate(state.processes) if p.component == component), None)
        if index is None:
            raise RigError(f"{component} is not part of this rig ({', '.join(state.components)})")
        self._stop(state.processes.pop(index))
        self._start(component, toolchain.binary(component))
        self._wait_ready(component)
        # Back to its place in start order, so that down() still stops in reverse order.
        state.processes.insert(index, state.processes.pop())
        state.save()

    def alive(self) -> dict[str, bool]:
        state = self._require_state()
        return {p.component: _alive(p) for p in state.processes}

    @classmethod
    def attach(cls, workdir: Path) -> ControlPlane:
        """The rig that `hack/rig up` left running in WORKDIR."""
        state = State.load(workdir)
        cp = cls(workdir, tuple(state.components), address=state.address, cluster_cidr=state.cluster_cidr)
        cp.state = state
        return cp

    def client_kubeconfig(
        self, user: str, organizations: tuple[str, ...] = (), *, server: str | None = None
    ) -> bytes:
        """A kubeconfig for USER in ORGANIZATIONS (groups), signed by the rig's CA: how a test
        acts as a node, a tenant or a least-privileged operator. SERVER defaults to the rig's."""
        state = self._require_state()
        ca = pki.load_keypair((self.workdir / "ca.crt").read_bytes(), (self.workdir / "ca.key").read_bytes())
        client = pki.issue(ca, user, organizations=organizations, client=True)
        return kubeconfig_yaml(server or state.server, ca, user, client)

    # -- internals ---------------------------------------------------------------
    def _require_state(self) -> State:
        if self.state is None:
            raise RigError(f"no rig is running in {self.workdir}")
        return self.state

    def _path(self, name: str) -> str:
        return str(self.workdir / name)

    def _write_files(self) -> None:
        """Certificates, kubeconfigs and configs for every component."""
        state = self._require_state()
        state.ports = {c: free_port() for c in self.components}
        state.ports["etcd-peer"] = free_port()
        if "kube-apiserver" not in self.components:
            return  # etcd alone speaks plain HTTP on loopback
        d = self.workdir
        ca = pki.new_ca("rhizeption-rig-ca")
        ca.write(d, "ca")
        pki.issue(
            ca,
            "kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=tuple(sorted({LOOPBACK, SERVICE_IP, state.address})),
        ).write(d, "apiserver")
        pki.issue(ca, "kube-apiserver-kubelet-client", organizations=("system:masters",), client=True).write(
            d, "apiserver-kubelet-client"
        )
        sa = pki.new_key()
        pki.write_file(d / "sa.key", pki.key_pem(sa), private=True)
        pki.write_file(d / "sa.pub", pki.public_key_pem(sa))
        users = {
            "admin": ("kubernetes-admin", ("system:masters",)),
            "kube-controller-manager": ("system:kube-controller-manager", ()),
            "kube-scheduler": ("system:kube-scheduler", ()),
            "kwok": ("kwok-controller", ("system:masters",)),
        }
        for name, (cn, orgs) in users.items():
            client = pki.issue(ca, cn, organizations=orgs, client=True)
            pki.write_file(
                d / f"{name}.kubeconfig", kubeconfig_yaml(state.server, ca, cn, client), private=True
            )
        pki.write_file(
            d / "kwok.yaml", b"apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\n"
        )

    def _args(self, component: str) -> list[str]:
        state = self._require_state()
        p, ports = self._path, state.ports
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        if component == "etcd":
            peer = f"http://127.0.0.1:{ports['etcd-peer']}"
            # Plain HTTP on loopback: the rig's etcd is reachable from this host only.
            return [
                "--name=rig",
                f"--data-dir={p('etcd-data')}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=rig={peer}",
                "--log-level=warn",
                # A test cluster lives minutes; fsync would make it disk-bound.
                "--unsafe-no-fsync",
            ]
        if component == "kube-apiserver":
            loopback = state.address == LOOPBACK
            return [
                f"--etcd-servers={etcd_url}",
                f"--bind-address={LOOPBACK if loopback else '0.0.0.0'}",
                f"--advertise-address={state.address}",
                f"--secure-port={ports['kube-apiserver']}",
                f"--tls-cert-file={p('apiserver.crt')}",
                f"--tls-private-key-file={p('apiserver.key')}",
                f"--client-ca-file={p('ca.crt')}",
                f"--kubelet-client-certificate={p('apiserver-kubelet-client.crt')}",
                f"--kubelet-client-key={p('apiserver-kubelet-client.key')}",
                # Nodes' hostnames resolve nowhere here: logs, exec and port-forward go to
                # the address the node reports.
                "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p('sa.pub')}",
                f"--service-account-signing-key-file={p('sa.key')}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-bootstrap-token-auth",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={p('kube-apiserver')}",
                # Endpoints may not carry a loopback address, so the `kubernetes`
                # Service is left without endpoints instead of failing every 10 s.
                *(["--endpoint-reconciler-type=none"] if loopback else []),
            ]
        if component in ("kube-controller-manager", "kube-scheduler"):
            kc = p(f"{component}.kubeconfig")
            common = [
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports[component]}",
                "--leader-elect=false",
                f"--cert-dir={p(component)}",
            ]
            if component == "kube-scheduler":
                return common
            return [
                *common,
                f"--service-account-private-key-file={p('sa.key')}",
                f"--root-ca-file={p('ca.crt')}",
                f"--cluster-signing-cert-file={p('ca.crt')}",
                f"--cluster-signing-key-file={p('ca.key')}",
                "--use-service-account-credentials=true",
                "--controllers=*,bootstrapsigner,tokencleaner",
                *(
                    [
                        "--allocate-node-cidrs=true",
                        f"--cluster-cidr={state.cluster_cidr}",
                        "--node-cidr-mask-size=24",
                    ]
                    if state.cluster_cidr
                    else []
                ),
            ]
        if component == "kwok":
            # Only Nodes that ask for it are faked, so real kubelets can join the same rig.
            return [
                f"--kubeconfig={p('kwok.kubeconfig')}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                # An empty config: a person's ~/.kwok/kwok.yaml must not change the rig.
                f"--config={p('kwok.yaml')}",
                "--node-lease-duration-seconds=40",
            ]
        raise RigError(f"unknown component {component}")

    def _start(self, component: str, binary: Path) -> None:
        state = self._require_state()
        log = self.workdir / f"{component}.log"
        with open(log, "ab") as out:
            child = subprocess.Popen(
                [str(binary), *self._args(component)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                # preexec_fn is unsafe with threads in general; prctl is one syscall, safe after fork.
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        self._children[child.pid] = child
        start_time = _proc_start_time(child.pid)
        state.processes.append(Process(component, child.pid, start_time or -1, str(log)))
        state.save()

    def _ready(self, component: str) -> bool:
        state = self._require_state()
        if component in ("etcd", "kwok"):
            url, ctx = (
                f"http://127.0.0.1:{state.ports[component]}/{'health' if component == 'etcd' else 'healthz'}",
                None,
            )
        else:
            # RBAC lets anonymous clients read /readyz and /healthz (system:public-info-viewer).
            check = "readyz" if component == "kube-apiserver" else "healthz"
            url = f"https://127.0.0.1:{state.ports[component]}/{check}"
            ctx = ssl.create_default_context(cafile=self._path("ca.crt"))
            if component != "kube-apiserver":
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert in its --cert-dir
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                body = resp.read()
                return resp.status == 200 and (component != "etcd" or b'"true"' in body)
        except OSError:
            return False

    def _wait_ready(self, component: str) -> None:
        proc = self._require_state().processes[-1]
        deadline = time.monotonic() + self.ready_timeout
        interval = 0.05
        while time.monotonic() < deadline:
            if not _alive(proc):
                raise RigError(
                    f"{component} exited during start; last lines of {proc.log}:\n{_tail(proc.log)}"
                )
            if self._ready(component):
                return
            time.sleep(interval)  # a process gives no event when it starts serving: poll, backing off
            interval = min(interval * 1.5, 0.5)
        raise RigError(
            f"{component} not ready after {self.ready_timeout:.0f} s; see {proc.log}:\n{_tail(proc.log)}"
        )

    def _stop(self, proc: Process) -> bool:
        """Stop PROC's process group; True when it ended on SIGTERM."""
        if not _alive(proc):
            self._reap(proc.pid)
            return True
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self._reap(proc.pid)
                if not _alive(proc):
                    return sig == signal.SIGTERM
                time.sleep(0.05)
        if _alive(proc):
            raise RigError(f"{proc.component} (pid {proc.pid}) survived SIGKILL")
        return False

    def _reap(self, pid: int) -> None:
        child = self._children.get(pid)
        if child is not None:
            child.poll()


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def rigs(root: Path = DEFAULT_ROOT) -> Iterator[Path]:
    """The workdirs of rigs under ROOT that have state."""
    if root.is_dir():
        yield from sorted(p.parent for p in root.glob("*/state.json"))

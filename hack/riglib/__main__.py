"""hack/rig (python -m riglib): bring a control-plane rig up or down from a shell.

hack/rig up [--name N] [--minimal]   start it, print the kubeconfig path
hack/rig up [--name N] --node        a host cluster: no kwok, one real node and CoreDNS
hack/rig down [--name N | --all]     stop it and remove its folder
hack/rig status                      list the rigs and their processes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .controlplane import COMPONENTS, DEFAULT_ROOT, MINIMAL, ControlPlane, RigError, rigs
from .node import HostCluster
from .toolchain import MissingBinary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/rig", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help="folder holding one sub-folder per rig (default %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a rig")
    up.add_argument("--name", default="default")
    kind = up.add_mutually_exclusive_group()
    kind.add_argument(
        "--minimal",
        action="store_true",
        help="etcd and kube-apiserver only (no controller-manager, scheduler, kwok)",
    )
    kind.add_argument(
        "--node",
        action="store_true",
        help="one real node (containerd, kubelet, kube-proxy in a container) and CoreDNS, no kwok",
    )
    down = sub.add_parser("down", help="stop a rig and remove its folder")
    target = down.add_mutually_exclusive_group()
    target.add_argument("--name", default="default")
    target.add_argument("--all", action="store_true")
    sub.add_parser("status", help="list running rigs")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            workdir = args.root / args.name
            started = time.monotonic()
            if args.node:
                hc = HostCluster(workdir).up()
                cp = hc.control_plane
                print(f"rig {args.name}: node {hc.node.name} Ready at {hc.node.node_ip}", file=sys.stderr)
            else:
                cp = ControlPlane(workdir, MINIMAL if args.minimal else COMPONENTS)
                cp.up()
            print(
                f"rig {args.name}: {', '.join(cp.components)} ready in "
                f"{time.monotonic() - started:.1f} s at {cp.server}",
                file=sys.stderr,
            )
            print(cp.kubeconfig)
            return 0
        if args.command == "down":
            targets = list(rigs(args.root)) if args.all else [args.root / args.name]
            for workdir in targets:
                killed = []
                if (workdir / "node.json").exists():
                    HostCluster.attach(workdir).down()
                elif (workdir / "state.json").exists():
                    killed = ControlPlane.attach(workdir).down()
                note = f" (needed SIGKILL: {', '.join(killed)})" if killed else ""
                print(f"rig {workdir.name}: down{note}", file=sys.stderr)
            return 0
        for workdir in rigs(args.root):
            cp = ControlPlane.attach(workdir)
            alive = ", ".join(f"{c}={'up' if ok else 'DOWN'}" for c, ok in cp.alive().items())
            print(f"{workdir.name}\t{cp.server}\t{cp.kubeconfig}\t{alive}")
        return 0
    except (RigError, MissingBinary) as err:
        print(f"hack/rig: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

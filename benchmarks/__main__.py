"""Run every benchmark (or those named): python -m benchmarks [NAME...]"""

from __future__ import annotations

import sys

from . import (
    common,
    host_cluster,
    hosted_node,
    inventory,
    pet_agent,
    rig_start,
    service_proxy,
    tenant_control_plane,
    tenant_density,
    virtual_node,
)

BENCHMARKS = {
    "rig_start": rig_start,
    "inventory": inventory,
    "service_proxy": service_proxy,
    "tenant_control_plane": tenant_control_plane,
    "hosted_node": hosted_node,
    "pet_agent": pet_agent,
    "host_cluster": host_cluster,
    "tenant_density": tenant_density,
    "virtual_node": virtual_node,
}


def main(names: list[str]) -> int:
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        print(
            f"benchmarks: unknown {', '.join(sorted(unknown))}; known: {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    for name in names or list(BENCHMARKS):
        bench = BENCHMARKS[name]
        result = bench.run()
        path = common.write(name, result)
        print(f"\n{bench.report(result)}\n(written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

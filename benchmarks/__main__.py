"""Run every benchmark (or those named): python -m benchmarks [NAME...]"""

from __future__ import annotations

import sys

from . import common, inventory, rig_start, service_proxy

BENCHMARKS = {"rig_start": rig_start, "inventory": inventory, "service_proxy": service_proxy}


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

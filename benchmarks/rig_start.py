"""How long the rig takes from nothing to ready, against etcd alone as the baseline.

Rounds interleave the variants so that a noisy neighbour slows all of them alike."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from riglib.controlplane import COMPONENTS, MINIMAL, ControlPlane

from . import common

VARIANTS = {
    "etcd (baseline)": ("etcd",),
    "etcd + kube-apiserver": MINIMAL,
    "full rig": COMPONENTS,
}
ROUNDS = 5


def time_up(components: tuple[str, ...], root: Path) -> float:
    cp = ControlPlane(root / "-".join(components), components)
    start = time.monotonic()
    cp.up()
    elapsed = time.monotonic() - start
    cp.down()
    return elapsed


def run() -> dict:
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="rhizeption-bench-") as tmp:
        for _round in range(ROUNDS):
            for name, components in VARIANTS.items():
                samples[name].append(time_up(components, Path(tmp)))
    figures = {name: common.summary(s) | {"samples_s": s} for name, s in samples.items()}
    baseline = figures["etcd (baseline)"]["median"]
    for f in figures.values():
        f["ratio_to_baseline"] = f["median"] / baseline
    return {"unit": "seconds", "rounds": ROUNDS, "variants": figures}


def report(result: dict) -> str:
    rows = [["rig start", "median s", "min s", "max s", "x baseline"]]
    for name, f in result["variants"].items():
        rows.append(
            [
                name,
                f"{f['median']:.2f}",
                f"{f['min']:.2f}",
                f"{f['max']:.2f}",
                f"{f['ratio_to_baseline']:.1f}",
            ]
        )
    return common.table(rows)

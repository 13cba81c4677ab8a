"""Benchmarks (`make bench`). Each writes its figures as JSON under results/bench/ and
prints a short table. Timings on these machines are noisy, so each benchmark measures
a baseline side by side, interleaved with what it measures, and reports the ratio."""

import sys
from pathlib import Path

# The same import roots as pytest's (pyproject.toml: pythonpath), so `python -m benchmarks`
# works without PYTHONPATH: the rig library, the collection, the pet agent.
_REPO = Path(__file__).resolve().parent.parent
for _root in ("hack", ".collections", "agent"):
    if str(_REPO / _root) not in sys.path:
        sys.path.insert(0, str(_REPO / _root))

"""Benchmarks (`make bench`). Each writes its figures as JSON under results/bench/ and
prints a short table. Timings on these machines are noisy, so each benchmark measures
a baseline side by side, interleaved with what it measures, and reports the ratio."""

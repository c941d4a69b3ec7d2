#!/usr/bin/env python
"""Benchmark of batched seed training: the 20-seed batched sweep against one single-seed run side by side in one
process (target <= 3x), time and memory for N = 1, 5, 20, 100 seeds, and a per-phase profile of a step.

    OMP_NUM_THREADS=1 python scripts/benchmark_batched.py --output benchmarks/batched_seeds.json

The benchmark code lives in :mod:`structured_hf.benchmarks.batched` (its docstring says what each section measures).
"""

from __future__ import annotations

import logging
import sys

from structured_hf.benchmarks.batched import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("structured_hf.benchmarks").setLevel(logging.INFO)  # progress; not every evaluation's log lines
    sys.exit(main())

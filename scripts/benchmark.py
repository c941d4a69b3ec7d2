#!/usr/bin/env python
"""Benchmarks of structured_hf training: JSON results plus a short table on stdout.

    OMP_NUM_THREADS=1 python scripts/benchmark.py [--sections throughput,scaling] [--output_dir outputs/benchmark]
        [--repeats 5] [--threads 1] [--steps N] [--gpt_steps N] [--quick]

The benchmark code lives in :mod:`structured_hf.benchmarks.training` (its docstring lists the sections).
"""

from __future__ import annotations

import logging
import sys

from structured_hf.benchmarks.training import *  # noqa: F401,F403  (the names tests and notebooks use)
from structured_hf.benchmarks.training import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library reports progress and tables by logging
    main()
    sys.exit(0)

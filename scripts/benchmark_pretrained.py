#!/usr/bin/env python
"""Benchmarks and the short example measurement for models users bring (structured_hf.pretrained).

    python scripts/benchmark_pretrained.py speed   --output benchmarks/pretrained.json
    python scripts/benchmark_pretrained.py example --output benchmarks/pretrained_example.json --steps 30

The code lives in :mod:`structured_hf.benchmarks.pretrained` (its docstring says what each task measures).
"""

from __future__ import annotations

import logging
import sys

from structured_hf.benchmarks.pretrained import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library reports its summary by logging
    sys.exit(main())

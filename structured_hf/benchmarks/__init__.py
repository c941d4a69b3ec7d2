"""Benchmarks that measure speed and memory side by side in one process and write JSON.

- :mod:`.training`: AnchoredTrainer against a hand-written loop, StructuredGPT against GPT2LMHeadModel, scaling of
  step time and tensor memory, intervention overhead (``python scripts/benchmark.py``).
- :mod:`.batched`: batched seed training, the 20-seed sweep against one single-seed run, scaling in N and a per-phase
  profile (``python scripts/benchmark_batched.py``).
"""

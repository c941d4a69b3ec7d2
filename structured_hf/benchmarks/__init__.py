"""Benchmarks that measure speed and memory side by side in one process and write JSON.

- :mod:`.training`: AnchoredTrainer against a hand-written loop, StructuredGPT against GPT2LMHeadModel, scaling of
  step time and tensor memory, intervention overhead (``python scripts/benchmark.py``).
"""

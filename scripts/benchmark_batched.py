#!/usr/bin/env python
"""Benchmark of batched seed training: how time and memory grow with the number of seeds N trained as one batch,
and the ratio "20-seed batched sweep / one single-seed run" measured side by side in one process.

    OMP_NUM_THREADS=1 python scripts/benchmark_batched.py --output benchmarks/batched_seeds.json

Single-seed run: ``train_recipe`` (the Trainer path every script used before), timed in the same process as the
batched sweep, alternating (single, batch, single, batch, ...) so that load from other processes hits both; the
ratio uses the median of each. "Sweep" times include the evaluation each seed gets in scripts/sweep_seeds.py
(``--prune red`` on a 10³ grid and the named-color metrics); "train" times are training only.
Memory: peak resident set size of a fresh subprocess per N (the process's whole footprint: Python, torch, the data),
and the bytes of the batch's own tensors (parameters, gradients, Adam moments) computed from the parameter count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from structured_hf.evaluation import build_variants, evaluate_color_model, evaluate_variants
from structured_hf.evaluation.relearning import train_recipe
from structured_hf.interventions import SurgerySpec
from structured_hf.training import load_recipe
from structured_hf.training.batched import peak_memory_estimate, train_batched

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs/color_autoencoder/ex2.11.2-delete-red-deletion-target.yaml"


def _recipes(config: Path, seeds: list[int], steps: int | None) -> list:
    over = {"training.disable_tqdm": True}
    if steps:
        over["training.max_steps"] = steps
    return [load_recipe(config, {**over, "seed": s, "output_dir": f"/tmp/benchmark-batched/seed-{s}"}) for s in seeds]


def _evaluate(model) -> None:
    evaluate_variants(build_variants(model, [SurgerySpec("prune", concept="red")]), grid_size=10)
    evaluate_color_model(model)


def time_single(config: Path, seed: int, steps: int | None) -> dict[str, float]:
    (recipe,) = _recipes(config, [seed], steps)
    start = time.perf_counter()
    model, _ = train_recipe(recipe)
    trained = time.perf_counter()
    _evaluate(model)
    return {"train_s": trained - start, "sweep_s": time.perf_counter() - start}


def time_batched(config: Path, n: int, steps: int | None, evaluate: bool = True) -> dict[str, float]:
    recipes = _recipes(config, list(range(n)), steps)
    start = time.perf_counter()
    models, _ = train_batched(recipes)
    trained = time.perf_counter()
    if evaluate:
        for model in models:
            _evaluate(model)
    return {"train_s": trained - start, "sweep_s": time.perf_counter() - start}


def measure_n(config: Path, n: int, steps: int | None) -> dict[str, float]:
    """Run in a fresh process: batched training of N seeds (no evaluation), time and peak RSS."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = time_batched(config, n, steps, evaluate=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**result, "peak_rss_mib": peak / 1024, "rss_before_training_mib": base / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT), help="color-autoencoder recipe (default: the deletion recipe)")
    p.add_argument("--sizes", default="1,5,20,100", help="N values for the scaling table")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of the single run and the 20-seed batch")
    p.add_argument("--steps", type=int, default=None, help="override max_steps (default: the recipe's)")
    p.add_argument("--scaling_steps", type=int, default=None,
                   help="max_steps of the scaling table's runs (default: --steps); the ratio always uses --steps")
    p.add_argument("--output", default=str(REPO / "benchmarks/batched_seeds.json"), help="where the JSON goes")
    p.add_argument("--measure_n", type=int, default=None,
                   help="measure one N in this process and print its JSON line (the scaling table runs each N in a "
                        "fresh process this way, so that peak memory is that N's)")
    args = p.parse_args(argv)
    hf_logging.set_verbosity_error()
    config = Path(args.config)
    if args.measure_n is not None:
        print(json.dumps(measure_n(config, args.measure_n, args.steps)))
        return 0

    scaling = {}
    scaling_steps = args.scaling_steps or args.steps
    for n in (int(x) for x in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--config", str(config), "--measure_n", str(n)]
        if scaling_steps:
            cmd += ["--steps", str(scaling_steps)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        scaling[n] = {**json.loads(out), "batch_tensor_bytes": peak_memory_estimate(n, _recipes(config, [0],
                                                                                                   scaling_steps)[0])}
        print(f"N = {n}: train {scaling[n]['train_s']:.1f} s, peak RSS {scaling[n]['peak_rss_mib']:.0f} MiB",
              flush=True)

    singles, batches = [], []
    for _ in range(args.repeats):
        singles.append(time_single(config, 0, args.steps))
        batches.append(time_batched(config, 20, args.steps))
        print(f"single {singles[-1]['sweep_s']:.1f} s, 20-seed batch {batches[-1]['sweep_s']:.1f} s", flush=True)
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    result = {
        "config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config),
        "steps": args.steps or load_recipe(config).training.get("max_steps"),
        "scaling_steps": scaling_steps or load_recipe(config).training.get("max_steps"),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        # Other processes share these cores: the load average says how busy the machine was while this ran.
        "load_average_1_5_15_min_at_end": list(os.getloadavg()),
        "scaling": scaling,
        "side_by_side": {"single": singles, "batched_20": batches},
        "ratio_20_seed_sweep_over_single_run": med(batches, "sweep_s") / med(singles, "sweep_s"),
        "ratio_20_seed_training_over_single_training": med(batches, "train_s") / med(singles, "train_s"),
        "target_ratio": 3.0,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"ratio 20-seed sweep / single run: {result['ratio_20_seed_sweep_over_single_run']:.2f} "
          f"(training only {result['ratio_20_seed_training_over_single_training']:.2f}); wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

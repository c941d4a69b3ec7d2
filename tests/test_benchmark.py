"""scripts/benchmark.py: its baseline does the Trainer's work, its memory meter is exact, its JSON has every section."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("benchmark_script", REPO / "scripts" / "benchmark.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses resolve their annotations through sys.modules
_spec.loader.exec_module(bench)


def test_peak_tensor_memory_counts_live_storages_exactly():
    with bench.PeakTensorMemory() as mem:
        a = torch.empty(1000, 250)  # 1,000,000 bytes
        b = a + 1.0  # another 1,000,000 while both are alive
        del a, b
        c = torch.empty(100)  # 400 bytes
        view = c[:10]  # a view shares its storage: no new bytes
        assert mem.current == 400
    assert mem.peak == 2_000_000
    del c, view


def test_benchmark_json_throughput_same_work_and_every_section(tmp_path):
    """A short run: the hand loop reproduces the Trainer's loss curve (so the speed ratio compares equal work), the
    ratio and timings are recorded with their spread; the GPT comparison trains equal work on both sides (same
    weights, same loss curve for StructuredGPT without regularizers and GPT-2); intervention timings are there."""
    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    try:
        bench.main(
            [
                "--sections",
                "throughput,gpt_throughput,intervention_overhead",
                "--gpt_sizes",
                "tiny",
                "--gpt_steps",
                "10",
                "--steps",
                "60",
                "--repeats",
                "1",
                "--quick",
                "--output_dir",
                str(tmp_path),
            ]
        )
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
    data = json.loads((tmp_path / "benchmark.json").read_text())
    assert data["environment"]["torch_threads"] == 1
    tp = data["sections"]["throughput"]
    assert tp["steps"] == 60 and tp["batch_size"] == 64 and tp["ratio_target"] == 0.8
    for key in ("trainer_steps_per_s", "hand_loop_steps_per_s", "ratio", "trainer_full_run_train_s"):
        assert tp[key]["median"] > 0 and len(tp[key]["values"]) == 1, key
    same = tp["same_work_check"]
    # Logged at steps 25 and 50 (the recipe's logging_steps); float-rounding differences only.
    assert same["windows_compared"] == 2
    assert same["loss_rel_diff_max"] < 1e-5 and same["final_param_abs_diff_max"] < 1e-5
    assert not any("pending" in section for section in data["sections"].values())
    gpt = data["sections"]["gpt_throughput"]["tiny"]
    assert data["sections"]["gpt_throughput"]["ratio_target"] == 0.9
    for variant in ("anchored", "routed", "plain", "gpt2"):
        assert gpt["tokens_per_s"][variant]["median"] > 0, variant
    for variant in ("anchored", "routed", "plain"):
        assert gpt[f"ratio_{variant}_over_gpt2"]["median"] > 0, variant
    logged = gpt["same_work_check"]["logged_loss"]
    assert len(logged["gpt2"]) == 1 and gpt["same_work_check"]["plain_vs_gpt2_rel_diff_max"] < 1e-4
    assert logged["anchored"] != logged["plain"]  # the regularizers did act
    assert logged["routed"] != logged["anchored"]  # and the route changed the gradients
    rows = data["sections"]["intervention_overhead"]["rows"]
    assert {(r["model"], r["batch"], r["intervention"]) for r in rows} >= {
        ("color_autoencoder", 64, "suppress:red"),
        ("color_autoencoder", 4096, "axes:hue"),
        ("structured_gpt", 8, "suppress:violence"),
    }
    assert all(r["plain_us"] > 0 and r["hooked_us"] > 0 for r in rows)


def test_benchmark_isolation_kl_compares_equal_work(tmp_path):
    """The isolation_kl section times both ways of getting the KL's deleted-model logits on the same work: the logged
    loss curves agree bit for bit, and the speedup is recorded per repeat."""
    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    try:
        bench.main(
            ["--sections", "isolation_kl", "--gpt_sizes", "tiny", "--gpt_steps", "20", "--repeats", "2"]
            + ["--output_dir", str(tmp_path)]
        )
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
    section = json.loads((tmp_path / "benchmark.json").read_text())["sections"]["isolation_kl"]["tiny"]
    same = section["same_work_check"]
    assert same["identical"] and len(same["logged_loss"]["reused"]) == 2  # logged at steps 10 and 20
    assert len(section["speedup_reused_over_run_again"]["values"]) == 2
    assert all(v > 0 for k in ("reused", "run_again") for v in section["steps_per_s"][k]["values"])

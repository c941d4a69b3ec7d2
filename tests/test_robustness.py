"""The relearning benchmark: kept-gap arithmetic on hand-made curves, the two-sided cut, a seeded attack harness,
and bad input that fails naming the field."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import datasets
import pytest
import torch

import structured_hf  # noqa: F401
from structured_hf.data.tokenizer import train_bpe_tokenizer
from structured_hf.errors import StructuredConfigError
from structured_hf.evaluation import robustness as rb
from structured_hf.evaluation.relearning import AttackConfig, attack_loop
from structured_hf.interventions import ablate
from structured_hf.interventions.two_sided import channel_slices, two_sided_cut
from structured_hf.models import (
    ColorAutoencoderConfig,
    ColorAutoencoderModel,
    StructuredGPTConfig,
    StructuredGPTForCausalLM,
)
from structured_hf.sites import capture

ROOT = Path(__file__).resolve().parents[1]
M2_RECIPE = ROOT / "configs/color_autoencoder/ex2.11.2-delete-red-deletion-target.yaml"


def _curve(steps, forget, retain):
    return {"steps": list(steps), "forget": list(forget), "retain": list(retain)}


# ---- metrics on hand-made curves ----------------------------------------------------------------------------------
def test_kept_gap_and_half_recovery_on_hand_made_curves():
    steps = [0, 10, 20, 30]
    reference = _curve(steps, [2.0, 1.8, 1.7, 1.75], [1.0, 1.0, 1.1, 1.2])
    method = _curve(steps, [2.6, 2.3, 2.05, 2.2], [1.1, 1.15, 1.2, 1.3])
    low = rb.lowest_forget(method)
    assert low == {"step": 20, "forget": 2.05, "retain": 1.2}
    # (2.05 - 1.7) - (1.2 - 1.1): the retain correction takes back what the method pays elsewhere
    assert rb.kept_gap(method, reference) == pytest.approx(0.35 - 0.1)
    # gap to the reference at each step: 0.6, 0.5, 0.35, 0.45 -> half of 0.6 is never reached
    assert rb.half_recovery_step(method, reference) is None
    fast = _curve(steps, [2.6, 1.95, 1.72, 1.75], [1.0] * 4)
    assert rb.half_recovery_step(fast, reference) == 10  # gap 0.15 <= 0.3
    assert rb.half_recovery_step(reference, reference) == 0  # nothing deleted, nothing to recover
    assert rb.ratio_to_filtering(0.25, 0.5) == pytest.approx(0.5)
    assert rb.ratio_to_filtering(0.25, 0.0) is None and rb.ratio_to_filtering(0.25, -0.1) is None


def test_score_seed_takes_the_worst_setting_and_skips_settings_filtering_cannot_compare():
    steps = [0, 5]
    ref = {
        "a": _curve(steps, [1.0, 0.9], [1.0, 1.0]),
        "b": _curve(steps, [1.0, 0.8], [1.0, 1.0]),
        "c": _curve(steps, [1.0, 0.8], [1.0, 1.0]),
    }
    filt = {
        "a": _curve(steps, [1.5, 1.3], [1.0, 1.0]),  # kept 0.4
        "b": _curve(steps, [1.5, 1.0], [1.0, 1.0]),  # kept 0.2
        "c": _curve(steps, [1.5, 0.7], [1.0, 1.0]),
    }  # kept -0.1: no ratio
    meth = {
        "a": _curve(steps, [1.6, 1.1], [1.05, 1.05]),  # kept (1.1-0.9)-(0.05) = 0.15 -> ratio 0.375
        "b": _curve(steps, [1.6, 1.0], [1.05, 1.05]),  # kept (1.0-0.8)-0.05 = 0.15 -> ratio 0.75
        "c": _curve(steps, [1.6, 0.7], [1.05, 1.05]),
    }
    scores = rb.score_seed({"reference": ref, "filtering": filt, "m": meth})
    m = scores["m"]
    assert m["worst_setting"] == "a" and m["worst_ratio"] == pytest.approx(0.375)
    assert m["settings"]["c"]["ratio_to_filtering"] is None and m["ratio_defined_settings"] == 2
    assert m["retain_cost"] == pytest.approx(0.05) and m["initial_forget_gap"] == pytest.approx(0.6)
    assert m["settings"]["a"]["kept_fraction"] == pytest.approx(0.15 / 0.6)
    assert m["worst_kept_gap"] == pytest.approx((0.7 - 0.8) - 0.05)
    assert scores["filtering"]["worst_ratio"] == pytest.approx(1.0)
    without = rb.score_seed({"reference": ref, "m": meth})  # no filtering model: kept gaps, no ratio
    assert without["m"]["worst_ratio"] is None and without["m"]["worst_kept_gap"] == m["worst_kept_gap"]
    summary = rb.summarize_seeds([scores, scores])
    assert summary["m"]["ratio_to_filtering"]["per_seed"] == [m["worst_ratio"]] * 2
    assert summary["m"]["ratio_to_filtering"]["min"] == pytest.approx(0.375)
    assert summary["m"]["retain_cost"] == pytest.approx(0.05)


def test_mean_interval_is_a_t_interval():
    out = rb.mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert out["mean"] == 2.0 and out["interval"] == pytest.approx([2.0 - half, 2.0 + half])
    assert rb.mean_interval([5.0])["interval"] is None
    assert rb.mean_interval([None, 1.0])["mean"] == 1.0


# ---- the two-sided cut --------------------------------------------------------------------------------------------
def _gpt(site: str = "layers.0.residual_post") -> StructuredGPTForCausalLM:
    torch.manual_seed(0)
    concepts = [
        {"name": "violence", "site": site, "direction": [1.0, 1.0] + [0.0] * 14},
        {"name": "other", "site": site, "direction": [0.0] * 5 + [1.0] + [0.0] * 10},
    ]
    return StructuredGPTForCausalLM(
        StructuredGPTConfig(
            vocab_size=40, max_position_embeddings=16, hidden_size=16, num_layers=3, num_heads=2, concepts=concepts
        )
    ).eval()


def test_two_sided_cut_zeroes_writers_and_every_reader_exactly():
    model = _gpt()
    cut = two_sided_cut(model, "violence")
    axes = [0, 1]
    # readers after the site: every later block's norms, q/k/v/up columns, the final norm and the head
    for block in cut.layers[1:]:
        for norm in (block.ln_1, block.ln_2):
            assert torch.all(norm.weight[axes] == 0) and torch.all(norm.bias[axes] == 0)
        for lin in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.mlp.up):
            assert torch.all(lin.weight[:, axes] == 0)
    assert torch.all(cut.ln_f.weight[axes] == 0) and torch.all(cut.lm_head.weight[:, axes] == 0)
    # writers up to the site
    assert torch.all(cut.wte.weight[:, axes] == 0) and torch.all(cut.wpe.weight[:, axes] == 0)
    assert torch.all(cut.layers[0].attn.o_proj.weight[axes] == 0) and torch.all(
        cut.layers[0].mlp.down.weight[axes] == 0
    )
    for tensor, dim, idx in channel_slices(cut, axes=axes, site="layers.0.residual_post"):
        assert torch.all(tensor.index_select(dim, idx) == 0)
    # other axes untouched; writers after the site left alone unless asked
    assert torch.equal(cut.layers[2].ln_1.weight[2:], model.layers[2].ln_1.weight[2:])
    assert torch.equal(cut.layers[2].mlp.down.weight, model.layers[2].mlp.down.weight)
    full = two_sided_cut(model, "violence", later_writers=True)
    assert torch.all(full.layers[2].mlp.down.weight[axes] == 0) and torch.all(
        full.layers[1].attn.o_proj.weight[axes] == 0
    )
    # ablate alone leaves the later readers: the two-sided cut is strictly more
    ablated = ablate(model, "violence")
    assert ablated.layers[2].ln_1.weight[axes].abs().sum() > 0 and ablated.lm_head.weight[:, axes].abs().sum() > 0
    # the site carries exact zeros on the axes for any input; the original model is not modified
    ids = torch.randint(40, (2, 10), generator=torch.Generator().manual_seed(1))
    with capture(cut, ["layers.0.residual_post"]) as acts:
        cut(input_ids=ids)
    assert torch.all(acts["layers.0.residual_post"][..., axes] == 0)
    assert model.lm_head.weight[:, axes].abs().sum() > 0 and "violence" not in [c["name"] for c in cut.config.concepts]
    assert cut.config.surgery[-1]["op"] == "two_sided_cut"


def test_two_sided_cut_on_the_bottleneck_is_ablate():
    torch.manual_seed(0)
    m = ColorAutoencoderModel(
        ColorAutoencoderConfig(
            bottleneck_dim=4,
            hidden_dim=8,
            concepts=[{"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0]}],
        )
    )
    a, c = ablate(m, "red"), two_sided_cut(m, "red")
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), c.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


# ---- the attack harness -------------------------------------------------------------------------------------------
def _color_model(seed: int = 0) -> ColorAutoencoderModel:
    torch.manual_seed(seed)
    return ColorAutoencoderModel(
        ColorAutoencoderConfig(
            bottleneck_dim=4,
            hidden_dim=8,
            concepts=[{"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0], "prototypes": ["red"]}],
        )
    ).eval()


def _point(seed: int = 0, lr: float = 1.0e-2, data: str = "forget") -> rb.GridPoint:
    return rb.GridPoint(
        data, AttackConfig(steps=6, lr=lr, batch_size=16, num_samples=32, seed=seed, optimizer="adamw", eval_every=2)
    )


def test_attack_harness_is_seeded_and_reproducible():
    task = rb.color_autoencoder_task("red")
    model = _color_model()
    before = [p.detach().clone() for p in model.parameters()]
    a, b = rb.run_attack(model, task, _point(0)), rb.run_attack(model, task, _point(0))
    assert a == b and a["steps"] == [0, 2, 4, 6]
    assert a["forget"][-1] != a["forget"][0]  # the attack trains
    assert rb.run_attack(model, task, _point(1))["forget"] != a["forget"]  # another seed: other data and batches
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # the attacked model is a copy


def test_frozen_writers_stay_bit_identical_under_attack():
    model = _gpt()
    tokens = [torch.randint(40, (12,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(8)]

    def step(m, g):
        idx = torch.randint(len(tokens), (4,), generator=g)
        ids = torch.tensor([tokens[i] for i in idx])
        return m(input_ids=ids, labels=ids).loss

    frozen = lambda m: channel_slices(m, axes=[0, 1], site="layers.0.residual_post", side="writers")  # noqa: E731
    slice_sum = lambda m: float(sum(t.detach().index_select(d, i).double().abs().sum() for t, d, i in frozen(m)))  # noqa: E731
    other = lambda m: float(m.layers[0].mlp.down.weight[2:].detach().double().abs().sum())  # noqa: E731
    config = AttackConfig(steps=5, lr=1.0e-2, optimizer="adamw")
    out = attack_loop(model, step, {"frozen": slice_sum, "other": other}, config, grad_mask=frozen)
    assert len(set(out["curves"]["frozen"])) == 1 and out["curves"]["frozen"][0] > 0
    assert len(set(out["curves"]["other"])) > 1  # the rest of the writers train
    free = attack_loop(model, step, {"frozen": slice_sum}, config)
    assert len(set(free["curves"]["frozen"])) > 1


def test_run_benchmark_scores_every_method_against_reference_and_filtering():
    task = rb.color_autoencoder_task("red")
    methods = {"reference": _color_model(0), "filtering": _color_model(1), "deleted": ablate(_color_model(2), "red")}
    grid = [_point(0, 1.0e-2), _point(0, 1.0e-3, "retain")]
    out = rb.run_benchmark(methods, task, grid, progress=False)
    assert set(out["scores"]) == {"filtering", "deleted"}
    assert set(out["curves"]["deleted"]) == {p.name for p in grid}
    cell = out["scores"]["deleted"]["settings"][grid[0].name]
    assert cell["kept_gap"] == pytest.approx(
        rb.kept_gap(out["curves"]["deleted"][grid[0].name], out["curves"]["reference"][grid[0].name])
    )
    result = rb.BenchmarkResult("color_autoencoder", "red", "MSE", grid)
    result.add(0, out)
    report = result.to_dict(1.0)
    assert set(report["methods"]) == {"filtering", "deleted"} and len(report["attack_grid"]) == 2
    assert "| deleted |" in rb.robustness_markdown(report)


# ---- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"lrs": []}, "attack_grid.lrs"),
        ({"sizes": []}, "attack_grid.sizes"),
        ({"lrs": [-1.0e-4]}, "attack.lr"),
        ({"steps": -5}, "attack.steps"),
        ({"sizes": [0]}, "attack.num_samples"),
        ({"eval_every": 0}, "attack.eval_every"),
    ],
)
def test_bad_grid_names_the_field(kwargs, field):
    with pytest.raises(StructuredConfigError) as e:
        rb.attack_grid(**kwargs)
    assert e.value.field == field


def test_bad_benchmark_input_names_the_field():
    task = rb.color_autoencoder_task("red")
    with pytest.raises(StructuredConfigError) as e:  # an empty attack set
        rb.run_attack(
            _color_model(),
            rb.AttackTask("t", "MSE", lambda k, n, s: torch.zeros(0, 3), task.batch_loss, task.probes),
            _point(),
        )
    assert e.value.field == "attack_set"
    with pytest.raises(StructuredConfigError) as e:
        rb.run_benchmark({"filtering": _color_model()}, task, [_point()], progress=False)
    assert e.value.field == "methods"
    with pytest.raises(StructuredConfigError) as e:
        rb.run_benchmark({"reference": _color_model(), "filtering": _color_model()}, task, [], progress=False)
    assert e.value.field == "attack_grid"
    with pytest.raises(StructuredConfigError) as e:
        rb.check_methods(["anchored+prune", "retrain"], rb.COLOR_AUTOENCODER_METHODS, "the color autoencoder")
    assert e.value.field == "methods" and "retrain" in str(e.value)
    with pytest.raises(StructuredConfigError) as e:  # a model that lacks the concept
        rb.require_concept(_color_model(), "violence")
    assert e.value.field == "concept" and "violence" in str(e.value)
    with pytest.raises(StructuredConfigError) as e:  # already deleted: the map no longer has it
        rb.transformer_variants(ablate(_gpt(), "violence"), "violence", ["anchored+ablate"])
    assert "violence" in str(e.value)
    with pytest.raises(StructuredConfigError) as e:
        channel_slices(_gpt(), "violence", side="upstream")
    assert e.value.field == "side"


def _script():
    spec = importlib.util.spec_from_file_location("robustness_script", ROOT / "scripts/robustness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "extra", [["--methods", "anchored+prune,retrain"], ["--lrs=-1.0e-4"], ["--steps=-1"], ["--concept", "violence"]]
)
def test_script_rejects_bad_input_before_writing(tmp_path, extra, capsys):
    out = tmp_path / "out"
    assert _script().main([str(M2_RECIPE), "--output_dir", str(out), "--no_progress", *extra]) == 2
    assert not out.exists() and "error:" in capsys.readouterr().err


def test_language_task_and_methods_on_a_tiny_gpt():
    violent = [f"the sword smote the {w} and slew them in battle" for w in ("king", "host", "city", "men")] * 4
    calm = [f"the {w} went into the field and sowed seed at morning" for w in ("woman", "child", "man", "son")] * 4
    texts = violent + calm
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1, model_max_length=16)
    probs = [1.0] * len(violent) + [0.0] * len(calm)
    chunks = datasets.Dataset.from_dict({"text": texts, "prob_violence": probs})
    torch.manual_seed(0)
    concepts = [{"name": "violence", "site": "layers.0.residual_post", "direction": [1.0, 1.0] + [0.0] * 14}]
    config = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=16,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        concepts=concepts,
    )
    anchored, reference = (StructuredGPTForCausalLM(StructuredGPTConfig(**config)).eval() for _ in range(2))
    task = rb.language_task(
        tokenizer, chunks, chunks, "violence", 16, probe_retain=8, channel=("layers.0.residual_post", [0, 1])
    )
    methods = rb.language_methods(
        anchored, reference, None, tokenizer, chunks, "violence", ["anchored+ablate", "anchored+two-sided", "post-hoc"]
    )
    assert list(methods) == ["reference", "anchored+ablate", "anchored+two-sided", "post-hoc"]
    grid = rb.attack_grid([1.0e-3], [8], steps=4, retain_lr=1.0e-3, retain_size=8, batch_size=4, eval_every=2)
    out = rb.run_benchmark(methods, task, grid, progress=False)
    cell = out["scores"]["anchored+two-sided"]["settings"][grid[0].name]
    assert cell["ratio_to_filtering"] is None and math.isfinite(cell["kept_gap"])
    assert out["curves"]["reference"][grid[1].name]["steps"] == [0, 2, 4]
    # the deleted channel carries exactly nothing before the attack; the undeleted reference does carry something
    assert out["curves"]["anchored+ablate"][grid[0].name]["channel_rms"][0] == 0.0
    assert out["curves"]["reference"][grid[0].name]["channel_rms"][0] > 0.0
    report = rb.absorption_report(
        anchored,
        "violence",
        tokenizer,
        texts[:4] + texts[-4:],
        [1] * 4 + [0] * 4,
        [0.9, 0.9, 0.1, 0.1] + [0.0] * 4,
        reference=reference,
        filtered=reference,
    )
    groups = report["groups"]
    assert [g["passages"] for g in groups.values()] == [2, 2, 4]
    assert all(0.0 < g["axis_share"] < 1.0 and g["filtering_loss_increase"] == 0.0 for g in groups.values())
    with pytest.raises(StructuredConfigError) as e:
        rb.absorption_report(anchored, "violence", tokenizer, texts[:2], [1], [0.9, 0.9])
    assert e.value.field == "texts"
    with pytest.raises(StructuredConfigError) as e:
        rb.language_methods(anchored, None, None, tokenizer, chunks, "violence", ["post-hoc"])
    assert e.value.field == "methods"
    with pytest.raises(StructuredConfigError) as e:
        rb.run_attack(anchored, task, rb.attack_grid([1.0e-3], [64], steps=2, retain_lr=None)[0])
    assert e.value.field == "attack_grid.sizes"  # more forget examples asked than the training split has

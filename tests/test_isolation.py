"""Full-depth isolation: the masks route exactly (concept samples never reach a shared entry, ordinary samples never
reach a dedicated one, tied embeddings and norms included), deletion zeroes every dedicated unit, bad configuration
fails naming the field."""

from __future__ import annotations

from typing import Any

from pathlib import Path

import pytest
import torch
from torch.func import functional_call

import structured_hf  # noqa: F401
from structured_hf.errors import StructuredConfigError
from structured_hf.evaluation import robustness as rb
from structured_hf.interventions.isolation import Isolation, dedicated_masks, delete_isolated
from structured_hf.models import (
    ColorAutoencoderConfig,
    ColorAutoencoderModel,
    StructuredGPTConfig,
    StructuredGPTForCausalLM,
)
from structured_hf.sites import capture
from structured_hf.training import load_recipe
from structured_hf.training.isolation import IsolationSpec, _has_targets, concept_params, ordinary_params
from structured_hf.training.recipe import build_trainer

ROOT = Path(__file__).resolve().parents[1]
M2_ISOLATED = ROOT / "configs/color_autoencoder/ex2.11.2-isolated.yaml"
AXES = [0, 1]


def _gpt() -> StructuredGPTForCausalLM:
    torch.manual_seed(0)
    concepts = [{"name": "violence", "site": "layers.0.residual_post", "axes": AXES}]
    return StructuredGPTForCausalLM(
        StructuredGPTConfig(
            vocab_size=40, max_position_embeddings=16, hidden_size=16, num_layers=3, num_heads=2, concepts=concepts
        )
    )


def _grads(model, params, ids):
    model.zero_grad(set_to_none=True)
    functional_call(model, params, (), {"input_ids": ids, "labels": ids}).loss.backward()
    # no gradient at all (None) is an exact zero
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def test_masks_cover_every_depth_with_tied_embeddings_and_norms():
    model = _gpt()
    assert model.lm_head.weight is model.wte.weight  # tied: one tensor, listed once
    masks = dedicated_masks(model, Isolation("violence", hidden_units=4))
    assert "lm_head.weight" not in masks and masks["wte.weight"][:, AXES].all()
    assert not masks["wte.weight"][:, 2:].any()
    for i, block in enumerate(model.layers):
        p = f"layers.{i}."
        assert masks[p + "attn.o_proj.weight"][AXES].all() and masks[p + "mlp.down.weight"][AXES].all()  # writers
        assert masks[p + "ln_1.weight"][AXES].all() and masks[p + "ln_2.bias"][AXES].all()  # norms
        assert masks[p + "attn.q_proj.weight"][:, AXES].all() and masks[p + "mlp.up.weight"][:, AXES].all()  # readers
        width = block.mlp.up.out_features
        assert masks[p + "mlp.up.weight"][width - 4 :].all() and masks[p + "mlp.down.weight"][:, width - 4 :].all()
        assert not masks[p + "mlp.up.weight"][: width - 4, 2:].any()  # shared neurons reading shared axes
    assert masks["ln_f.weight"][AXES].all() and not masks["ln_f.weight"][2:].any()


def test_concept_samples_reach_only_dedicated_entries_and_ordinary_samples_only_shared():
    model = _gpt().train()
    masks = dedicated_masks(model, Isolation("violence", hidden_units=4))
    params = dict(model.named_parameters())
    ids = torch.randint(40, (3, 12), generator=torch.Generator().manual_seed(1))
    concept = _grads(model, concept_params(params, masks), ids)
    for name, grad in concept.items():
        shared = ~masks[name] if name in masks else torch.ones_like(grad, dtype=torch.bool)
        assert torch.all(grad[shared] == 0), name  # exactly zero, tied embedding/head and norms included
    assert concept["wte.weight"][:, AXES].abs().sum() > 0 and concept["layers.2.mlp.up.weight"].abs().sum() > 0
    for mode in ("deleted", "full"):
        ordinary = _grads(model, ordinary_params(params, masks, mode), ids)
        for name, mask in masks.items():
            assert torch.all(ordinary[name][mask] == 0), (mode, name)
        assert ordinary["wte.weight"][:, 2:].abs().sum() > 0
    # the concept pass computes the plain model's loss, bit for bit
    with torch.no_grad():
        plain = model(input_ids=ids, labels=ids).loss
        assert torch.equal(
            functional_call(model, concept_params(params, masks), (), {"input_ids": ids, "labels": ids}).loss, plain
        )


def test_delete_isolated_zeroes_every_dedicated_unit():
    model = _gpt().eval()
    model.config.isolation = {"concept": "violence", "hidden_units": 4}
    deleted = delete_isolated(model)
    masks = dedicated_masks(deleted)
    params = dict(deleted.named_parameters())
    assert all(torch.all(params[n][m] == 0) for n, m in masks.items())
    original = dict(model.named_parameters())  # the input is untouched (biases start at zero, weights do not)
    assert all(original[n][m].abs().sum() > 0 for n, m in masks.items() if n.endswith("weight"))
    ids = torch.randint(40, (2, 10), generator=torch.Generator().manual_seed(2))
    sites = [f"layers.{i}.residual_post" for i in range(3)] + ["layers.0.residual_pre"]
    with capture(deleted, sites) as acts:
        deleted(input_ids=ids)
    assert all(torch.all(acts[s][..., AXES] == 0) for s in sites)  # the axes are empty at every depth
    hidden = []
    handles = [b.mlp.up.register_forward_hook(lambda m, a, o: hidden.append(o)) for b in deleted.layers]
    deleted(input_ids=ids)
    for h in handles:
        h.remove()
    assert all(torch.all(o[..., -4:] == 0) for o in hidden)  # dedicated neurons: gelu(0) = 0
    assert deleted.config.surgery[-1]["op"] == "delete_isolated"


def _one_step(concept_rows: bool, clear: float, **isolation: Any) -> tuple[dict, dict, dict]:
    """One optimizer step of the isolated M2 recipe on a batch whose rows are all concept (or all ordinary) samples,
    every regularizer on (the deletion-target readout runs the model again); returns (before, after, masks)."""
    recipe = load_recipe(
        M2_ISOLATED,
        {
            "training.max_steps": 1,
            "training.weight_decay": 0.0,
            "isolation.clear": clear,
            **{f"isolation.{k}": v for k, v in isolation.items()},
            "output_dir": "unused",
            "training.disable_tqdm": True,
        },
    )
    trainer = build_trainer(recipe)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    batch = next(iter(trainer.get_train_dataloader()))
    batch["concept_labels"] = {
        k: torch.full_like(v, float(concept_rows) if k == "red" else 0.0) for k, v in batch["concept_labels"].items()
    }
    trainer.hparams.update({r.spec.name: 0.1 for r in trainer.bound_regularizers})
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer._draw_window_labels([batch])
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch).backward()
    trainer.optimizer.step()
    return before, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, trainer.isolation_masks


def _moved(before: dict, after: dict, masks: dict, dedicated: bool) -> int:
    count = 0
    for name, p in after.items():
        mask = masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        count += int((p != before[name])[mask if dedicated else ~mask].sum())
    return count


def test_one_trainer_step_moves_only_the_entries_its_samples_own():
    """Through the recipe and Trainer: a step of only concept samples leaves every shared entry bit-identical, a step
    of only ordinary samples every dedicated entry (Adam with a zero gradient and no weight decay moves nothing);
    the `clear` penalty moves dedicated entries only and leaves the shared update bit-identical."""
    before, after, masks = _one_step(True, 10.0)
    assert _moved(before, after, masks, dedicated=False) == 0 and _moved(before, after, masks, dedicated=True) > 0
    before, plain, masks = _one_step(False, 0.0)
    assert _moved(before, plain, masks, dedicated=True) == 0 and _moved(before, plain, masks, dedicated=False) > 0
    _, cleared, _ = _one_step(False, 10.0)
    assert _moved(before, cleared, masks, dedicated=True) > 0
    for name, p in cleared.items():
        shared = ~masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        assert torch.equal(p[shared], plain[name][shared]), name


def test_full_share_runs_that_share_of_ordinary_samples_the_full_way():
    """``full_share: 1`` makes every ordinary sample run with the dedicated units in place (frozen): the step equals
    ``ordinary: full`` bit for bit and differs from ``deleted``; a share in between runs some rows each way."""
    before, full, masks = _one_step(False, 0.0, ordinary="full")
    _, share_all, _ = _one_step(False, 0.0, full_share=1.0)
    _, deleted, _ = _one_step(False, 0.0)
    _, half, _ = _one_step(False, 0.0, full_share=0.5)
    assert all(torch.equal(share_all[n], full[n]) for n in full)
    assert any(not torch.equal(deleted[n], full[n]) for n in full)
    assert _moved(before, half, masks, dedicated=True) == 0  # dedicated entries stay frozen either way
    assert any(not torch.equal(half[n], full[n]) for n in full)
    assert any(not torch.equal(half[n], deleted[n]) for n in full)


@pytest.mark.parametrize(
    "raw, field",
    [
        ("violence", "isolation"),
        ({"concept": "c", "label": "l", "extra": 1}, "isolation"),
        ({"label": "l"}, "isolation.concept"),
        ({"concept": "c", "label": "not:l"}, "isolation.label"),
        ({"concept": "c", "label": "l", "hidden_units": -1}, "isolation.hidden_units"),
        ({"concept": "c", "label": "l", "hidden_units": 2.5}, "isolation.hidden_units"),
        ({"concept": "c", "label": "l", "threshold": 0.0}, "isolation.threshold"),
        ({"concept": "c", "label": "l", "threshold": 1.5}, "isolation.threshold"),
        ({"concept": "c", "label": "l", "ordinary": "zero"}, "isolation.ordinary"),
        ({"concept": "c", "label": "l", "clear": -1.0}, "isolation.clear"),
        ({"concept": "c", "label": "l", "full_share": 1.5}, "isolation.full_share"),
        ({"concept": "c", "label": "l", "ordinary": "full", "full_share": 0.5}, "isolation.full_share"),
    ],
)
def test_bad_isolation_section_names_the_field(raw, field):
    with pytest.raises(StructuredConfigError) as e:
        IsolationSpec.from_dict(raw)
    assert e.value.field == field


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"isolation.label": "purple"}, "isolation.label"),  # not drawn by any regularizer or route
        ({"isolation.concept": "green"}, "isolation.concept"),  # the model has no such concept
        ({"isolation.hidden_units": 64}, "isolation.hidden_units"),  # no shared neuron left
    ],
)
def test_bad_recipe_isolation_fails_before_training(overrides, field, tmp_path):
    with pytest.raises(StructuredConfigError) as e:
        build_trainer(load_recipe(M2_ISOLATED, {**overrides, "output_dir": str(tmp_path / "run")}))
    assert e.value.field == field
    assert not (tmp_path / "run").exists()


def test_model_without_hidden_layers_or_isolation_names_the_field():
    model = ColorAutoencoderModel(
        ColorAutoencoderConfig(
            bottleneck_dim=4,
            hidden_dim=8,
            concepts=[{"name": "red", "site": "bottleneck", "direction": [1.0, 0.0, 0.0, 0.0]}],
        )
    )
    with pytest.raises(StructuredConfigError) as e:
        delete_isolated(model)
    assert e.value.field == "isolation"
    with pytest.raises(StructuredConfigError) as e:
        dedicated_masks(model, Isolation("red", hidden_units=8))
    assert e.value.field == "isolation.hidden_units"


def test_a_part_without_targets_is_skipped_not_nan():
    """A causal LM's part made of near-empty blocks has no token to predict (mean over nothing = NaN): skipped."""
    labels = torch.tensor([[5, -100, -100], [5, 6, 7]])
    assert not _has_targets({"labels": labels}, torch.tensor([True, False]))
    assert _has_targets({"labels": labels}, torch.tensor([False, True]))
    assert _has_targets({"labels": torch.zeros(2, 3)}, torch.tensor([True, False]))  # regression targets: always


def test_benchmark_isolated_methods_need_an_isolated_recipe_or_model():
    plain = load_recipe(ROOT / "configs/color_autoencoder/ex2.11.2-delete-red-deletion-target.yaml")
    with pytest.raises(StructuredConfigError) as e:
        rb.split_isolated(plain, ["isolated+delete"])
    assert e.value.field == "methods"
    anchored, isolated = rb.split_isolated(load_recipe(M2_ISOLATED), ["anchored+prune", "isolated+delete"])
    assert anchored.isolation is None and isolated.isolation["hidden_units"] == 8
    with pytest.raises(StructuredConfigError) as e:
        rb.isolated_variants(_gpt(), ["isolated+delete"])
    assert e.value.field == "methods"
    model = _gpt()
    model.config.isolation = {"concept": "violence", "hidden_units": 4}
    methods = rb.isolated_variants(model, list(rb.ISOLATED_METHODS))
    frozen = methods["isolated+delete (dedicated frozen)"]
    assert sum(int(t.index_select(d, i).numel()) for t, d, i in frozen.grad_mask(frozen.model)) > 0
    built = rb.language_methods(model, None, None, None, None, "violence", ["isolated+delete"])  # the M4 path
    assert list(built) == [rb.REFERENCE, "isolated+delete"]
    assert built["isolated+delete"].model.config.surgery[-1]["op"] == "delete_isolated"


def test_language_evaluation_of_an_isolated_model_reports_its_deletion():
    """A model trained with isolation records it in its config; the M4 evaluation then adds the deletion of the
    dedicated units, evaluated on the same tokens as every other variant (and none for a model without it)."""
    import datasets

    from structured_hf.evaluation.language import default_variants, encode, set_losses

    model = _gpt().eval()
    assert [name for name, _, _ in default_variants(model, [])] == ["baseline"]
    model.config.isolation = {"concept": "violence", "hidden_units": 4}
    variants = dict((name, m) for name, m, _ in default_variants(model, []))
    assert list(variants) == ["baseline", "delete_isolated:violence"]
    deleted = variants["delete_isolated:violence"]
    assert deleted.config.surgery[-1]["op"] == "delete_isolated" and not getattr(model.config, "surgery", None)

    class Tok:  # ids are the characters' codes modulo the tiny vocabulary; 0 pads
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __call__(self, texts, **_):
            return {"input_ids": [[3 + ord(ch) % 30 for ch in t] for t in texts]}

    chunks = datasets.Dataset.from_dict({"text": ["the sword fell", "a calm field"], "prob_violence": [0.9, 0.0]})
    encoded = {"all": encode(Tok(), list(chunks["text"]), 16)}
    expected = set_losses(delete_isolated(model), encoded, [], 8, 0)
    assert set_losses(deleted, encoded, [], 8, 0) == expected
    assert expected != set_losses(model, encoded, [], 8, 0)  # the dedicated units carried something


def _gpt_isolated_trainer(tmp_path, clear_on: str, clear: float = 1.0, full_share: float = 0.0):
    """The tiny synthetic-corpus GPT recipe with violence isolated (axis 0, 4 neurons per block), one step."""
    from test_lm_training import tiny_recipe

    from structured_hf.training.recipe import parse_recipe

    raw = tiny_recipe(
        tmp_path,
        **{
            "training.max_steps": 1,
            "regularizers": [
                {"name": "anchor", "loss": "angular_anchor", "concept": "violence", "label": "violence", "weight": 0.0}
            ],
        },
    )
    raw["isolation"] = {
        "concept": "violence-axis",
        "label": "violence",
        "hidden_units": 4,
        "clear": clear,
        "clear_on": clear_on,
        "full_share": full_share,
    }
    return build_trainer(parse_recipe(raw))


def test_clear_on_predictions_is_the_kl_to_the_deleted_model_and_moves_only_dedicated_entries(tmp_path):
    """``clear_on: predictions``: on ordinary chunks the penalty is KL(deleted || full) of the next-token
    distributions. It is 0 when the dedicated entries are 0 (the two models are the same), positive otherwise, and its
    gradient reaches dedicated entries only."""
    from structured_hf.data.collators import LMBlockCollator

    trainer = _gpt_isolated_trainer(tmp_path, "predictions")
    model = trainer.model.train()
    rows = trainer.train_dataset.__getitems__(list(range(6)))
    batch = LMBlockCollator(["violence"])(rows)
    params = dict(model.named_parameters())
    masks = trainer.isolation_masks
    part = {k: v for k, v in batch.items() if k != "concept_labels"}
    trainer._accumulate = lambda t: None
    term = trainer._clear_kl(model, part, params, masks)
    assert float(term.detach()) > 0
    term.backward()
    for name, p in model.named_parameters():
        shared = ~masks[name] if name in masks else torch.ones_like(p, dtype=torch.bool)
        assert p.grad is None or torch.all(p.grad[shared] == 0), name
    assert sum(float(p.grad[masks[n]].abs().sum()) for n, p in model.named_parameters() if n in masks) > 0
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].masked_fill_(mask, 0.0)
    assert float(trainer._clear_kl(model, part, params, masks)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("full_share", [0.0, 0.5])
def test_clear_on_predictions_reuses_the_ordinary_pass_and_changes_nothing(tmp_path, full_share):
    """The KL's deleted-model logits are the ordinary part's own pass, kept: a step computes the same loss and the
    same gradients as running the deleted model again, and runs the model once less (with ``full_share``, only the
    rows that ran the full way run again)."""
    from structured_hf.data.collators import LMBlockCollator

    trainer = _gpt_isolated_trainer(tmp_path, "predictions", full_share=full_share)
    model = trainer.model.train()
    batch = LMBlockCollator(["violence"])(trainer.train_dataset.__getitems__(list(range(8))))
    batch["concept_labels"]["violence"] = (torch.arange(8) < 2).float()  # two concept rows, six ordinary
    trainer._accumulate = lambda t: None
    trainer._window = None
    calls: list[int] = []
    hook = model.register_forward_hook(lambda m, a, o: calls.append(int(o.logits.shape[0])))

    def step(reuse: bool) -> tuple[float, dict[str, torch.Tensor], list[int]]:
        trainer._reuse_deleted_logits = reuse
        trainer._full_draws = (-1, 0)  # the same full_share draw both times
        calls.clear()
        model.zero_grad(set_to_none=True)
        inputs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in batch.items()}
        trainer._draw_window_labels([inputs])
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return float(loss.detach()), grads, list(calls)

    loss_again, grads_again, calls_again = step(False)
    loss_kept, grads_kept, calls_kept = step(True)
    hook.remove()
    assert loss_kept == pytest.approx(loss_again, rel=1e-6)
    assert grads_kept.keys() == grads_again.keys()
    for name, g in grads_kept.items():
        torch.testing.assert_close(g, grads_again[name], rtol=1e-5, atol=1e-7, msg=name)
    assert sum(calls_kept) < sum(calls_again)  # fewer rows run through the model
    n_full = 6 - calls_again[1] if full_share > 0 else 0  # rows of the ordinary part that ran the full way
    assert sum(calls_again) - sum(calls_kept) == 6 - n_full


def test_clear_on_predictions_needs_a_token_model(tmp_path):
    with pytest.raises(StructuredConfigError) as e:
        build_trainer(
            load_recipe(
                M2_ISOLATED,
                {"isolation.clear": 1.0, "isolation.clear_on": "predictions", "output_dir": str(tmp_path / "run")},
            )
        )
    assert e.value.field == "isolation.clear_on"
    assert not (tmp_path / "run").exists()
    with pytest.raises(StructuredConfigError) as e:
        IsolationSpec.from_dict({"concept": "c", "label": "l", "clear_on": "logits"})
    assert e.value.field == "isolation.clear_on"

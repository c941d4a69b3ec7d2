"""M4 evaluation: per-concept loss (surprisal) on held-out text before and after suppression and deletion.

Held-out *test* chunks are split by their weak labels into a **forget set** per concept (``prob_<c> >= 0.5``) and
one **retain set** (every concept's probability ``< 0.1``); the chunks in between are ambiguous and left out. A
model's loss on a set is its mean next-token cross-entropy in nats over all real tokens of the set (each chunk
encoded as ``<|bos|> text <|eos|>``, cut at the model's context length), so differences are nats per token.

Variants of one model (all evaluated on the same tokens):

- ``baseline``: the model as trained;
- ``suppress:<c>``: inference-time suppression of the concept's direction at its site (hard
  hemisphere removal), through :func:`structured_hf.interventions.intervene`;
- ``zero:<c>``: inference-time zeroing of the concept's axes at its site;
- ``ablate:<c>``: permanent deletion, :func:`structured_hf.interventions.ablate` on the residual stream;
- ``delete_isolated:<c>``: for a model trained with full-depth isolation (its config records it), every dedicated
  unit of the isolated concept zeroed (:func:`structured_hf.interventions.isolation.delete_isolated`);
- any ``(name, model, specs)`` the caller adds, e.g. baseline (a)'s post-hoc projection.

The relearning attack (:func:`lm_relearning_attack`) fine-tunes on a few forget chunks and records the lowest
held-out forget loss reached, the measure of Cloud et al. (2024).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..concepts import ConceptMap
from ..data.color_datasets import PROB_PREFIX
from ..errors import StructuredConfigError
from ..interventions import intervene
from ..interventions.isolation import delete_isolated, recorded_isolation
from ..interventions.specs import InterventionSpec
from ..interventions.suppression import concept_axes
from ..interventions.surgery import ablate, project_out
from ..sites import capture

logger = logging.getLogger(__name__)

FORGET_THRESHOLD = 0.5
RETAIN_THRESHOLD = 0.1


def anchored_concepts(model: nn.Module, chunks: datasets.Dataset | None = None) -> list[str]:
    """Direction concepts of the model's concept map (that the data has labels for, when ``chunks`` is given)."""
    concepts = ConceptMap.of(model)
    names = [c.name for c in concepts if c.direction is not None]
    if chunks is not None:
        names = [n for n in names if PROB_PREFIX + n in chunks.column_names]
    return names


def heldout_sets(
    chunks: datasets.Dataset,
    concepts: Sequence[str],
    forget_threshold: float = FORGET_THRESHOLD,
    retain_threshold: float = RETAIN_THRESHOLD,
) -> dict[str, list[str]]:
    """``{"forget:<c>": texts, ..., "retain": texts}`` from labelled chunks (see the module docstring)."""
    if "text" not in chunks.column_names:
        raise StructuredConfigError("chunks", f"need a 'text' column; have {chunks.column_names}")
    probs = {}
    for c in concepts:
        if PROB_PREFIX + c not in chunks.column_names:
            raise StructuredConfigError("concepts", f"no '{PROB_PREFIX}{c}' column for concept '{c}'")
        probs[c] = np.asarray(chunks[PROB_PREFIX + c], dtype=np.float64)
    texts = chunks["text"]
    sets = {f"forget:{c}": [t for t, p in zip(texts, probs[c]) if p >= forget_threshold] for c in concepts}
    low = (
        np.all(np.stack([probs[c] for c in concepts]) < retain_threshold, axis=0)
        if concepts
        else np.ones(len(texts), dtype=bool)
    )
    sets["retain"] = [t for t, keep in zip(texts, low) if keep]
    for name, members in sets.items():
        if not members:
            raise StructuredConfigError("chunks", f"the held-out set '{name}' is empty; use more test chunks")
    return sets


def context_length(model: nn.Module) -> int:
    """The longest sequence the model takes (its learned positions)."""
    return int(getattr(model.config, "max_position_embeddings", 1024))


def pad_id(tokenizer) -> int:
    """The id right padding uses (0 for a tokenizer without a pad token: padded targets are -100 anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """``<|bos|> text <|eos|>`` token ids per text, cut to ``max_length``."""
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]  # cut below: no length warning
    return [[tokenizer.bos_token_id, *x, tokenizer.eos_token_id][:max_length] for x in ids]


def _batches(
    encoded: Sequence[Sequence[int]], batch_size: int, pad_id: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids, labels)`` batches, longest-first so padding stays small."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            labels[i, : len(r)] = torch.tensor(r)
        yield ids, labels


@torch.no_grad()
def mean_token_loss(
    model: nn.Module, encoded: Sequence[Sequence[int]], batch_size: int = 32, pad_id: int = 0
) -> tuple[float, int]:
    """``(mean next-token NLL in nats, number of predicted tokens)`` over encoded texts (right padding, so the causal
    mask keeps padding out of every real token's context)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for ids, labels in _batches(encoded, batch_size, pad_id):
            logits = model(input_ids=ids.to(device), use_cache=False).logits.float()
            targets = labels[:, 1:].to(device)
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(nll)
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    if not math.isfinite(total):
        raise StructuredConfigError("model", "the loss on held-out text is not finite")
    return total / max(count, 1), count


def set_losses(
    model: nn.Module,
    encoded_sets: Mapping[str, Sequence[Sequence[int]]],
    specs: Sequence[Any] = (),
    batch_size: int = 32,
    pad_id: int = 0,
) -> dict[str, float]:
    """Mean loss per held-out set, with inference-time intervention ``specs`` active (none: the model as is)."""
    with intervene(model, list(specs)) if specs else contextlib.nullcontext():
        return {name: mean_token_loss(model, enc, batch_size, pad_id)[0] for name, enc in encoded_sets.items()}


@torch.no_grad()
def concept_cosines(
    model: nn.Module,
    encoded_sets: Mapping[str, Sequence[Sequence[int]]],
    concept: str,
    batch_size: int = 32,
    pad_id: int = 0,
    limit: int = 256,
) -> dict[str, float]:
    """Mean cosine of the residual at the concept's site with its direction, over the real tokens of each set
    (the first ``limit`` texts): how far the anchoring put the concept where the map says."""
    spec = ConceptMap.of(model)[concept]
    if spec.direction is None:
        raise StructuredConfigError("concept", f"'{concept}' has no direction")
    v = torch.tensor(spec.direction, dtype=torch.float32)
    v = v / v.norm()
    model.eval()
    out = {}
    for name, enc in encoded_sets.items():
        sums, count = 0.0, 0
        for ids, labels in _batches(list(enc)[:limit], batch_size, pad_id):
            with capture(model, [spec.site]) as acts:
                model(input_ids=ids, use_cache=False)
            x = acts[spec.site].float()
            cos = (x @ v.to(x.device)) / x.norm(dim=-1).clamp_min(1e-12)
            real = labels != -100
            sums += float(cos[real.to(cos.device)].sum())
            count += int(real.sum())
        out[name] = sums / max(count, 1)
    return out


def _zero_axes_spec(model: nn.Module, concept: str) -> str:
    """The axis-aligned suppression of a direction concept: zero its nonzero axes at its site (inference time)."""
    spec = ConceptMap.of(model)[concept]
    return f"axes:{','.join(map(str, concept_axes(spec)))}@{spec.site}"


def default_variants(model: nn.Module, concepts: Sequence[str]) -> list[tuple[str, nn.Module, list[str]]]:
    """``(name, model, intervention specs)``: baseline, per concept suppress / zero axes / ablate, and the deletion
    of an isolated concept's dedicated units when the model was trained with isolation."""
    variants: list[tuple[str, nn.Module, list[str]]] = [("baseline", model, [])]
    for c in concepts:
        variants.append((f"suppress:{c}", model, [f"suppress:{c}"]))
        variants.append((f"zero:{c}", model, [_zero_axes_spec(model, c)]))
        try:
            variants.append((f"ablate:{c}", ablate(model, c), []))
        except StructuredConfigError as e:  # a model family without residual surgery
            logger.warning("no ablation variant for %s: %s", c, e)
    isolation = recorded_isolation(model)
    if isolation is not None:
        variants.append((f"delete_isolated:{isolation.concept}", delete_isolated(model, isolation), []))
    return variants


def evaluate_language_model(
    model: nn.Module,
    tokenizer,
    test_chunks: datasets.Dataset,
    concepts: Sequence[str] | None = None,
    variants: Sequence[tuple[str, nn.Module, Sequence[Any]]] | None = None,
    extra_variants: Sequence[tuple[str, nn.Module, Sequence[Any]]] = (),
    batch_size: int = 32,
    prompts: Sequence[str] = (),
    max_new_tokens: int = 40,
) -> dict[str, Any]:
    """Forget/retain losses of every variant, their change from the baseline, anchor cosines and generations.

    Returns a JSON-ready dict: ``sets`` (chunks and tokens per set), ``loss`` (variant -> set -> nats/token),
    ``delta`` (variant -> set -> loss minus the baseline's), ``cosines`` (concept -> set -> mean cosine at the
    anchored site), ``generations`` and a flat ``summary``.
    """
    concepts = list(concepts) if concepts is not None else anchored_concepts(model, test_chunks)
    sets = heldout_sets(test_chunks, concepts)
    length, pad = context_length(model), pad_id(tokenizer)
    encoded = {name: encode(tokenizer, texts, length) for name, texts in sets.items()}
    variants = list(variants) if variants is not None else default_variants(model, concepts)
    variants += list(extra_variants)
    report: dict[str, Any] = {
        "sets": {
            name: {"chunks": len(sets[name]), "tokens": sum(len(e) - 1 for e in enc)} for name, enc in encoded.items()
        },
        "forget_threshold": FORGET_THRESHOLD,
        "retain_threshold": RETAIN_THRESHOLD,
        "loss": {},
        "delta": {},
        "cosines": {},
        "generations": {},
    }
    for name, variant_model, specs in variants:
        report["loss"][name] = set_losses(variant_model, encoded, specs, batch_size, pad)
        logger.info("%s: %s", name, {k: round(v, 4) for k, v in report["loss"][name].items()})
    base = report["loss"].get("baseline", None)
    if base is not None:
        report["delta"] = {
            name: {s: loss - base[s] for s, loss in losses.items()} for name, losses in report["loss"].items()
        }
    for c in concepts:
        report["cosines"][c] = concept_cosines(model, encoded, c, batch_size, pad)
    for name, variant_model, specs in variants[:1] + [
        v for v in variants if v[0].startswith(("suppress:", "ablate:", "delete_isolated:"))
    ]:
        report["generations"][name] = (
            generate_samples(variant_model, tokenizer, prompts, specs, max_new_tokens) if prompts else []
        )
    report["summary"] = summarize(report)
    return report


def summarize(report: Mapping[str, Any]) -> dict[str, float]:
    """Flat ``{"<variant>/<set>": delta}`` plus the baseline losses, for metrics.json and tables."""
    out = {f"baseline/{s}": v for s, v in report["loss"].get("baseline", {}).items()}
    for name, deltas in report.get("delta", {}).items():
        if name == "baseline":
            continue
        out.update({f"delta/{name}/{s}": v for s, v in deltas.items()})
    return out


@torch.no_grad()
def generate_samples(
    model: nn.Module, tokenizer, prompts: Sequence[str], specs: Sequence[Any] = (), max_new_tokens: int = 40
) -> list[dict[str, str]]:
    """Greedy continuations of ``prompts`` (with the KV cache), under ``specs`` when given."""
    model.eval()
    out = []
    with intervene(model, list(specs)) if specs else contextlib.nullcontext():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt")
            room = context_length(model) - enc["input_ids"].shape[1]
            if room < 1:
                raise StructuredConfigError("prompt", f"the prompt {prompt!r} fills the model's whole context")
            ids = model.generate(
                **enc, max_new_tokens=min(max_new_tokens, room), do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            out.append(
                {
                    "prompt": prompt,
                    "continuation": tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True),
                }
            )
    return out


# ---- post-hoc baseline (a) ----------------------------------------------------------------------------------------
@torch.no_grad()
def mean_difference_direction(
    model: nn.Module,
    tokenizer,
    concept_texts: Sequence[str],
    other_texts: Sequence[str],
    site: str,
    batch_size: int = 32,
) -> torch.Tensor:
    """Unit mean difference of the residual at ``site`` over the real tokens of concept texts vs other texts: the
    direction a practitioner would find after training a model without anchoring."""
    length, pad = context_length(model), pad_id(tokenizer)
    model.eval()
    means = []
    for texts in (concept_texts, other_texts):
        total, count = None, 0
        for ids, labels in _batches(encode(tokenizer, texts, length), batch_size, pad):
            with capture(model, [site]) as acts:
                model(input_ids=ids, use_cache=False)
            x = acts[site].double()[(labels != -100).to(acts[site].device)]
            total = x.sum(0) if total is None else total + x.sum(0)
            count += x.shape[0]
        means.append(total / max(count, 1))
    d = means[0] - means[1]
    return (d / d.norm()).float()


# ---- relearning attack --------------------------------------------------------------------------------------------
def lm_relearning_attack(
    model: nn.Module,
    tokenizer,
    attack_texts: Sequence[str],
    probe_sets: Mapping[str, Sequence[str]],
    steps: int = 100,
    lr: float = 1.0e-4,
    batch_size: int = 8,
    eval_every: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tune a copy of ``model`` on ``attack_texts`` (e.g. 64 training forget chunks) with AdamW and record the
    held-out losses of ``probe_sets`` every ``eval_every`` steps; the attack's success is the lowest forget loss.
    The default ``lr`` (1e-4) is the strongest attack measured on the M4 models: at 1e-3 the 64 chunks are only
    overfitted and every held-out loss rises from the first probe on.

    Returns ``{"steps": [...], "<set>": [...losses], "lowest": {set: min}, "final": {set: last}}``.
    """
    if not attack_texts:
        raise StructuredConfigError("attack_texts", "the relearning attack needs at least one text")
    attacked = copy.deepcopy(model)
    attacked.train()
    length, pad = context_length(model), pad_id(tokenizer)
    attack = encode(tokenizer, attack_texts, length)
    probes = {name: encode(tokenizer, texts, length) for name, texts in probe_sets.items()}
    optimizer = torch.optim.AdamW(attacked.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    curve: dict[str, list[float]] = {name: [] for name in probes}
    steps_seen: list[int] = []

    def probe(step: int) -> None:
        steps_seen.append(step)
        for name, enc in probes.items():
            curve[name].append(mean_token_loss(attacked, enc, pad_id=pad)[0])

    probe(0)
    for step in range(1, steps + 1):
        idx = torch.randint(len(attack), (min(batch_size, len(attack)),), generator=generator).tolist()
        ids, labels = next(iter(_batches([attack[i] for i in idx], len(idx), pad)))
        attacked.train()
        loss = attacked(input_ids=ids, labels=labels, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            probe(step)
    return {
        "steps": steps_seen,
        **curve,
        "lowest": {n: min(v) for n, v in curve.items()},
        "final": {n: v[-1] for n, v in curve.items()},
    }


def language_markdown(report: Mapping[str, Any]) -> str:
    """The loss table (nats/token, change from baseline in brackets) and the set sizes, as markdown."""
    sets = list(report["sets"])
    lines = ["| variant | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for name, losses in report["loss"].items():
        cells = []
        for s in sets:
            delta = report.get("delta", {}).get(name, {}).get(s)
            cells.append(f"{losses[s]:.4f}" + ("" if delta is None or name == "baseline" else f" ({delta:+.4f})"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{s}: {v['chunks']} chunks / {v['tokens']} tokens" for s, v in report["sets"].items())
    return "\n".join(lines) + f"\n\nHeld-out test sets: {sizes}.\n"


# ---- the M4 comparison ----------------------------------------------------------------------------------------------
def compare_language_models(
    anchored: nn.Module,
    tokenizer,
    test_chunks: datasets.Dataset,
    train_chunks: datasets.Dataset,
    concept: str,
    unanchored: nn.Module | None = None,
    filtered: nn.Module | None = None,
    attack_chunks: int = 64,
    attack_steps: int = 100,
    attack_lr: float = 1.0e-4,
    eval_every: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    direction_chunks: int = 512,
    probe_retain_chunks: int = 256,
) -> dict[str, Any]:
    """One table for M4: the anchored model (suppressed, deleted) against (a) the same recipe trained without
    anchoring, whose concept direction is found after training (mean difference of residuals at the anchored site over
    labelled vs retain *training* chunks) and suppressed / projected out of the weights, and (b) the recipe trained on
    data with the labelled chunks filtered out. All models must share ``tokenizer`` (the recipes train it on the
    unfiltered training split, so they do).

    Then the relearning attack on each deleted model: fine-tune on ``attack_chunks`` training forget chunks for
    ``attack_steps`` AdamW steps; the lowest held-out forget loss reached is the measure (the retain set is probed
    on its first ``probe_retain_chunks`` chunks during the attack, to keep it affordable). The post-hoc direction
    uses the first ``direction_chunks`` training chunks of each set.
    """
    site = ConceptMap.of(anchored)[concept].site
    sets = heldout_sets(test_chunks, [concept])
    length, pad = context_length(anchored), pad_id(tokenizer)
    encoded = {name: encode(tokenizer, texts, length) for name, texts in sets.items()}
    train_sets = heldout_sets(train_chunks, [concept])
    forget_key = f"forget:{concept}"
    rows: dict[str, dict[str, Any]] = {}
    deleted: dict[str, nn.Module] = {}

    def row(name: str, model: nn.Module, specs: Sequence[Any] = (), reference: str | None = None) -> None:
        losses = set_losses(model, encoded, specs, batch_size, pad)
        entry: dict[str, Any] = {"loss": losses}
        if reference is not None:
            entry["delta"] = {s: losses[s] - rows[reference]["loss"][s] for s in losses}
        rows[name] = entry

    row("anchored", anchored)
    row(f"anchored + suppress:{concept}", anchored, [f"suppress:{concept}"], "anchored")
    row(f"anchored + zero:{concept}", anchored, [_zero_axes_spec(anchored, concept)], "anchored")
    deleted["anchored + ablate"] = ablate(anchored, concept)
    row("anchored + ablate", deleted["anchored + ablate"], (), "anchored")
    if unanchored is not None:
        direction = mean_difference_direction(
            unanchored,
            tokenizer,
            train_sets[forget_key][:direction_chunks],
            train_sets["retain"][:direction_chunks],
            site,
            batch_size,
        )
        row("(a) unanchored", unanchored)
        row(
            "(a) unanchored + suppress post-hoc direction",
            unanchored,
            [InterventionSpec(kind="suppress", site=site, vector=tuple(direction.tolist()))],
            "(a) unanchored",
        )
        deleted["(a) unanchored + project out"] = project_out(
            unanchored, direction, site=site, name=f"{concept} (mean difference)"
        )
        row("(a) unanchored + project out", deleted["(a) unanchored + project out"], (), "(a) unanchored")
    if filtered is not None:
        row("(b) data filtering", filtered)
        deleted["(b) data filtering"] = filtered
    rng = np.random.default_rng(seed)
    pool = train_sets[forget_key]
    attack_texts = [pool[i] for i in rng.choice(len(pool), size=min(attack_chunks, len(pool)), replace=False)]
    attacks = {}
    for name, model in deleted.items():
        probes = {forget_key: sets[forget_key], "retain": sets["retain"][:probe_retain_chunks]}
        attacks[name] = lm_relearning_attack(
            model, tokenizer, attack_texts, probes, steps=attack_steps, lr=attack_lr, eval_every=eval_every, seed=seed
        )
        logger.info(
            "relearning %s: forget %.4f -> lowest %.4f",
            name,
            attacks[name][forget_key][0],
            attacks[name]["lowest"][forget_key],
        )
    return {
        "concept": concept,
        "site": site,
        "sets": {n: len(t) for n, t in sets.items()},
        "attack": {"chunks": len(attack_texts), "steps": attack_steps, "lr": attack_lr},
        "rows": rows,
        "relearning": attacks,
    }


def comparison_markdown(result: Mapping[str, Any]) -> str:
    """The comparison as two markdown tables: losses (with change from each model's own baseline) and relearning."""
    c = result["concept"]
    forget, retain = f"forget:{c}", "retain"
    lines = [f"| model | forget loss ({c}) | retain loss | Δ forget | Δ retain |", "|---|---|---|---|---|"]
    for name, entry in result["rows"].items():
        d = entry.get("delta")
        lines.append(
            f"| {name} | {entry['loss'][forget]:.4f} | {entry['loss'][retain]:.4f} | "
            + (f"{d[forget]:+.4f} | {d[retain]:+.4f} |" if d else "– | – |")
        )
    a = result["attack"]
    lines += [
        "",
        f"Relearning attack: {a['steps']} AdamW steps (lr {a['lr']}) on {a['chunks']} training {c} chunks.",
        "",
        "| deleted model | forget loss before | lowest forget loss | retain loss after (probe subset) |",
        "|---|---|---|---|",
    ]
    for name, att in result["relearning"].items():
        lines.append(f"| {name} | {att[forget][0]:.4f} | {att['lowest'][forget]:.4f} | {att['final'][retain]:.4f} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "anchored_concepts",
    "compare_language_models",
    "comparison_markdown",
    "concept_cosines",
    "default_variants",
    "encode",
    "evaluate_language_model",
    "generate_samples",
    "heldout_sets",
    "language_markdown",
    "lm_relearning_attack",
    "mean_difference_direction",
    "mean_token_loss",
    "set_losses",
    "summarize",
]

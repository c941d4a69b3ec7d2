"""The ``pretrained`` recipe: anchored fine-tuning of a model the user brings (full or LoRA).

::

    model:
      pretrained: smollm2                  # a folder, a .gguf file (converted once), `smollm2`, or a Hub id
      dtype: float32                       # float32 | bfloat16 | float16
      trainable_blocks: [6, 7, 8]          # optional: only these blocks train (default: every parameter)
      concepts: [{name: violence, site: layers.8.residual_post, axes: [0, 1, 2, 3]}]
      peft: {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj, o_proj, down_proj]}   # optional LoRA
    data: {...}                            # as structured_gpt, without `tokenizer`: the model's own is used

The data section is the text pipeline of structured_gpt recipes (weak labels per chunk, ``token_scope`` for
token-level labels), tokenized with **the model's own tokenizer**; regularizers, routes and schedules are the same.
With ``peft:`` the base weights stay frozen and a LoRA adapter trains (``trainable_blocks`` then limits the adapted
blocks); a clear term at ``layers.0.residual_pre`` (the embeddings) needs the embeddings to move, so they are made
trainable (and saved with the adapter), untied from the head first, with a warning saying so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..data.collators import LMBlockCollator
from ..data.lm_data import LM_DATA_KEYS, LMDataSpec, filtered_blocks, labelled_chunks
from ..concepts import ConceptMap
from ..errors import StructuredConfigError
from ..validation import check_keys
from ..interventions.surgery import register_surgery_adapter
from ..layouts import get_path, layout_for
from ..training.speclist import check_spec_labels
from .loading import check_trainable, dtype_of, load_causal_lm, resolve_pretrained
from .sites import attach_sites
from .surgery import pretrained_surgery_point

logger = logging.getLogger(__name__)

PRETRAINED_KEYS = {"type", "pretrained", "dtype", "trainable_blocks", "concepts", "peft"}
# LoraConfig fields a recipe may set (task_type is always CAUSAL_LM).
PEFT_KEYS = {
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "bias",
    "use_rslora",
    "modules_to_save",
    "init_lora_weights",
}
EMBEDDING_SITE = "layers.0.residual_pre"


@dataclass(frozen=True)
class PretrainedSpec:
    """A parsed ``model:`` section of a pretrained recipe (see the module docstring)."""

    source: str
    dtype: str = "float32"
    trainable_blocks: tuple[int, ...] | None = None
    concepts: tuple[dict[str, Any], ...] = ()
    peft: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, model: Mapping[str, Any]) -> PretrainedSpec:
        if model.get("type", "pretrained") != "pretrained":
            raise StructuredConfigError(
                "model.type", f"a model with `pretrained:` is type 'pretrained', got {model.get('type')!r}"
            )
        check_keys("model", model, PRETRAINED_KEYS, context="for a pretrained model")
        source = model.get("pretrained")
        if not isinstance(source, str) or not source:
            raise StructuredConfigError("model.pretrained", f"expected a folder, .gguf file or Hub id, got {source!r}")
        dtype = model.get("dtype", "float32")
        dtype_of(dtype)
        blocks = model.get("trainable_blocks")
        if blocks is not None and (
            not isinstance(blocks, list)
            or not blocks
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks)
        ):
            raise StructuredConfigError(
                "model.trainable_blocks", f"expected a non-empty list of block indices, got {blocks!r}"
            )
        concepts = model.get("concepts") or []
        if not isinstance(concepts, list):
            raise StructuredConfigError("model.concepts", f"expected a list of concepts, got {concepts!r}")
        peft = model.get("peft")
        if peft is not None:
            check_keys("model.peft", peft, PEFT_KEYS, "LoraConfig fields")
        return cls(
            source=source,
            dtype=dtype,
            trainable_blocks=None if blocks is None else tuple(blocks),
            concepts=tuple(dict(c) for c in concepts),
            peft=None if peft is None else dict(peft),
        )


def validate_pretrained_data(data: Mapping[str, Any], regularizers: Sequence[Any], routes: Sequence[Any]) -> LMDataSpec:
    """The data section (no ``tokenizer``: the model brings its own) and the labels its terms name."""
    if "tokenizer" in data:
        raise StructuredConfigError("data.tokenizer", "a pretrained model uses its own tokenizer; remove this key")
    spec = LMDataSpec.from_dict({k: v for k, v in data.items() if k in LM_DATA_KEYS})
    concepts = spec.concepts()
    check_spec_labels(concepts, regularizers, routes)
    return spec


def check_peft_targets(model: nn.Module, targets: Any) -> None:
    """LoRA target modules must exist: name the ones that match no module (peft would fail later, less clearly)."""
    names = [n for n, _ in model.named_modules() if n]
    if targets is None or targets == "all-linear":
        return
    if isinstance(targets, str):  # peft: a regex matched against full module names
        if not any(re.fullmatch(targets, n) for n in names):
            raise StructuredConfigError(
                "model.peft.target_modules", f"the pattern {targets!r} matches no module of {type(model).__name__}"
            )
        return
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise StructuredConfigError("model.peft.target_modules", f"expected a list of module names, got {targets!r}")
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
            }
        )
        raise StructuredConfigError(
            "model.peft.target_modules",
            f"no module named {missing} in {type(model).__name__}; its projections are {leaves}",
        )


def _embedding_modules(model: nn.Module) -> list[str]:
    layout = layout_for(model.config)
    return [name.rsplit(".", 2)[-2] for name, _ in layout.embeddings]


def _untie_embeddings(model: nn.Module) -> None:
    """Give the output head its own copy of a tied embedding (so training the embeddings leaves the head)."""
    layout = layout_for(model.config)
    if layout.tied is None or not getattr(model.config, layout.tied[0], False):
        return
    head = get_path(model, layout.tied[1].rpartition(".")[0])
    head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.__dict__[layout.tied[0]] = False
    if hasattr(model, "get_expanded_tied_weights_keys"):
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=False)


def _freeze_to_blocks(model: nn.Module, blocks: Sequence[int], embeddings: bool) -> None:
    layout = layout_for(model.config)
    layers = get_path(model, layout.blocks)
    for p in model.parameters():
        p.requires_grad_(False)
    for b in blocks:
        for p in layers[b].parameters():
            p.requires_grad_(True)
    if embeddings:
        for name, _ in layout.embeddings:
            get_path(model, name).requires_grad_(True)


def build_pretrained_model(
    spec: PretrainedSpec,
    regularizers: Sequence[Any] = (),
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model, tokenizer, notes)``: loaded, checked trainable, sites and concept map attached, blocks frozen or a
    LoRA adapter added. ``notes`` records what was decided for the user (e.g. embeddings made trainable)."""
    model, tokenizer = load_causal_lm(spec.source, spec.dtype)
    check_trainable(model)
    if tokenizer.pad_token_id is None:  # GPT-2-style tokenizers: padded targets are -100 anyway
        tokenizer.pad_token = tokenizer.eos_token
    attach_sites(model, concepts=list(spec.concepts))
    n = len(get_path(model, layout_for(model.config).blocks))
    if spec.trainable_blocks is not None and max(spec.trainable_blocks) >= n:
        raise StructuredConfigError(
            "model.trainable_blocks",
            f"block {max(spec.trainable_blocks)} is past the last block: the model has {n} (0 .. {n - 1})",
        )
    needs_embeddings = any(r.site == EMBEDDING_SITE for r in regularizers if r.site is not None)
    notes: dict[str, Any] = {}
    if spec.peft is None:
        if spec.trainable_blocks is not None:
            _freeze_to_blocks(model, spec.trainable_blocks, embeddings=needs_embeddings)
            if needs_embeddings:
                notes["trainable_embeddings"] = f"a regularizer acts at {EMBEDDING_SITE}"
        return model, tokenizer, notes
    from peft import LoraConfig, get_peft_model  # optional dependency: only LoRA recipes need it

    peft_args = dict(spec.peft)
    check_peft_targets(model, peft_args.get("target_modules"))
    if spec.trainable_blocks is not None:
        peft_args["layers_to_transform"] = list(spec.trainable_blocks)
    if needs_embeddings:
        _untie_embeddings(model)
        extra = _embedding_modules(model)
        peft_args["modules_to_save"] = sorted(set(peft_args.get("modules_to_save") or []) | set(extra))
        notes["trainable_embeddings"] = (
            f"a regularizer acts at {EMBEDDING_SITE}, which only the embeddings write: "
            f"{extra} train in full (saved with the adapter), untied from the head"
        )
        logger.warning("LoRA: %s", notes["trainable_embeddings"])
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **peft_args))
    register_surgery_adapter(type(peft_model), pretrained_surgery_point)  # it says "merge first"
    attach_sites(peft_model)  # the q/k sites now read the adapted projections
    return peft_model, tokenizer, notes


# Tokenizing the whole KJV with offsets takes ~10 s; building the datasets and then the trainer of one recipe (or
# the anchored run and its plain twin in one process) tokenizes the same text with the same tokenizer: keep the last.
_BLOCKS_CACHE: dict[str, tuple[datasets.DatasetDict, datasets.DatasetDict]] = {}


def build_pretrained_data(
    data: Mapping[str, Any], tokenizer: Any, progress: bool = False
) -> tuple[datasets.DatasetDict, datasets.DatasetDict]:
    """``(chunks, blocks)``: labelled (filtered) chunks, cut into blocks with the model's tokenizer."""
    spec = LMDataSpec.from_dict({k: v for k, v in data.items() if k in LM_DATA_KEYS})
    key = json.dumps(
        [
            dataclasses.asdict(spec),
            tokenizer.name_or_path,
            len(tokenizer),
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        ],
        sort_keys=True,
        default=str,
    )
    if key in _BLOCKS_CACHE:
        return _BLOCKS_CACHE[key]
    chunks, blocks = filtered_blocks(labelled_chunks(spec, progress), tokenizer, spec)
    blocks = datasets.DatasetDict(
        {s: b.remove_columns([c for c in ("id",) if c in b.column_names]) for s, b in blocks.items()}
    )
    _BLOCKS_CACHE.clear()
    _BLOCKS_CACHE[key] = (chunks, blocks)
    return chunks, blocks


def pretrained_collators(labels: Sequence[str]) -> dict[str, Any]:
    return {"data_collator": LMBlockCollator(labels), "eval_data_collator": LMBlockCollator(labels)}


def spec_summary(spec: PretrainedSpec) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}


# ---- what training/recipe.py dispatches to for `model: {pretrained: ...}` -----------------------------------------
def validate_pretrained_recipe(
    model: Mapping[str, Any], data: Mapping[str, Any], regularizers: Sequence[Any], routes: Sequence[Any]
) -> None:
    """Everything that can be checked without loading the model (which may be a Hub id, offline)."""
    spec = PretrainedSpec.from_dict(model)
    ConceptMap.parse(list(spec.concepts), "model.concepts")
    validate_pretrained_data(data, regularizers, routes)


def pretrained_config(model: Mapping[str, Any]) -> Any:
    """The transformers config of the model a recipe names, with the recipe's concept map."""
    spec = PretrainedSpec.from_dict(model)
    config = AutoConfig.from_pretrained(resolve_pretrained(spec.source))
    layout_for(config)  # an unsupported architecture fails here, naming its model_type
    config.concepts = ConceptMap.parse(list(spec.concepts), "model.concepts").to_list()
    return config


class PretrainedCausalLM:
    """``MODEL_TYPES["pretrained"]``: ``PretrainedCausalLM(config)`` is the config's architecture with random weights
    and sites attached (as every family's model class builds from a config); recipes load the real weights."""

    def __new__(cls, config: Any) -> nn.Module:
        return attach_sites(AutoModelForCausalLM.from_config(config), concepts=getattr(config, "concepts", None) or [])


def pretrained_datasets(model: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Train and validation blocks of a pretrained recipe (tokenized with the model's tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(PretrainedSpec.from_dict(model).source))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    _, blocks = build_pretrained_data(data, tokenizer)
    return blocks["train"], blocks["validation"]


def build_pretrained_parts(
    model: Mapping[str, Any], data: Mapping[str, Any], regularizers: Sequence[Any], labels: Sequence[str]
) -> tuple[nn.Module, datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """``(model, train blocks, validation blocks, trainer kwargs)`` of a pretrained recipe (``regularizers``: the
    parsed specs; ``labels``: the labels they and the routes draw); the kwargs hold the collators and the model's
    tokenizer as ``processing_class`` (saved with the model)."""
    spec = PretrainedSpec.from_dict(model)
    built, tokenizer, notes = build_pretrained_model(spec, regularizers)
    chunks, blocks = build_pretrained_data(data, tokenizer)
    if notes:
        built.structured_notes = notes  # read by the experiment runner for metrics.json
    kwargs = {"processing_class": tokenizer, **pretrained_collators(labels)}
    return built, blocks["train"], blocks["validation"], kwargs


__all__ = [
    "PEFT_KEYS",
    "PRETRAINED_KEYS",
    "PretrainedCausalLM",
    "PretrainedSpec",
    "build_pretrained_data",
    "build_pretrained_model",
    "build_pretrained_parts",
    "check_peft_targets",
    "pretrained_collators",
    "pretrained_config",
    "pretrained_datasets",
    "spec_summary",
    "validate_pretrained_data",
    "validate_pretrained_recipe",
]

"""Sharing runs on the Hugging Face Hub: push an output folder, pull it back, labelled datasets, model cards.

Everything here is generic over model families: an output folder is a `PreTrainedModel` checkpoint
(``config.json`` + safetensors) with whatever else the run wrote next to it (tokenizer, intervention specs,
evaluation JSON, figures, the model card). Model families plug in a card renderer through :data:`CARD_RENDERERS`.

    from structured_hf.hub import push_output_dir, pull
    push_output_dir("outputs/default", "me/color-ae")        # token: HF_TOKEN or `hf auth login`
    model = AutoModel.from_pretrained(pull("me/color-ae"))   # or AutoModel.from_pretrained("me/color-ae")

Tokens are never taken from recipes or written anywhere: pass ``token=`` or let `huggingface_hub` find it, and
every file is checked for the token before it is uploaded.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import json
import logging
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import yaml
from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    HfApi,
    ModelCard,
    ModelCardData,
    get_token,
    snapshot_download,
)

from .concepts import ConceptMap
from .data.labels import parse_labelers
from .errors import HubPushError
from .training.recipe import Recipe, parse_recipe
from .training.schedules import parse_schedule

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"

# What an output folder may send to the Hub: paths relative to the folder, matched part by part (`*` never crosses
# a `/`). An allow-list, so that nothing new (a pickled optimizer, a file holding credentials) is uploaded by accident.
PUSH_PATTERNS: tuple[str, ...] = (
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
    # tokenizer (GPT)
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    # intervention specs, evaluation results (scripts/evaluate.py: evaluation.json/.md, figures, surgery variants)
    "interventions.json", "interventions/*.json", "*.intervention.json",
    "metrics.json", "eval_results.json", "evaluation*.json", "evaluation*.md", "evaluation/*", "relearning.json",
    "models/*/config.json", "models/*/*.safetensors",
    # how the run was made, figures, card
    "recipe.yaml", "log_history.json", "*.png", "*.svg", "*.gif", "figures/*", "README.md",
)
# Never pushed, even when a pattern above matches: Trainer state (training_args.bin pickles every argument),
# checkpoints, TensorBoard runs, caches.
NEVER_PUSH: tuple[str, ...] = (
    "training_args.bin", "checkpoint-*", "runs", "optimizer.pt", "scheduler.pt", "rng_state*", "trainer_state.json",
    ".git", ".cache", "__pycache__",
)
# Auto classes whose registrations are exported as remote code next to AutoConfig.
_AUTO_CLASS_NAMES = (
    "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification", "AutoModelForPreTraining",
)


# ---------------------------------------------------------------------------------------------------------------
# Push and pull
# ---------------------------------------------------------------------------------------------------------------


def files_to_push(folder: str | Path) -> list[str]:
    """Relative paths (POSIX) of the files in ``folder`` that :func:`push_output_dir` uploads, sorted."""
    folder = Path(folder)
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(fnmatch.fnmatchcase(part, pat) for part in rel.split("/") for pat in NEVER_PUSH):
            continue
        if any(_matches(rel, pat) for pat in PUSH_PATTERNS):
            out.append(rel)
    return out


def _matches(rel: str, pattern: str) -> bool:
    parts, pattern_parts = rel.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pattern_parts))


def push_output_dir(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    *,
    commit_message: str = "Upload structured_hf run",
    include_code: bool = True,
    revision: str | None = None,
    dataset_ids: Sequence[str] | None = None,
) -> CommitInfo:
    """Upload a run's output folder to a model repo on the Hub (created if needed), in one commit.

    Uploads the files :func:`files_to_push` selects: config with the concept map, safetensors weights, tokenizer
    files, intervention specs and evaluation JSON, ``recipe.yaml``, ``log_history.json``, figures and the model
    card; never ``training_args.bin``, ``checkpoint-*`` or TensorBoard runs. The card is re-rendered for the Hub id
    when the model family has a renderer (so its "load it" snippet names the repo, not a local path).

    Args:
        folder: the output folder (``config.json`` is required).
        repo_id: ``"user/name"`` or ``"name"`` (then the token's user namespace).
        token: a write token; defaults to ``HF_TOKEN`` or the token saved by ``hf auth login``.
        private: create the repo private (no effect if it exists).
        commit_message: the commit's title.
        include_code: also upload the model's source as remote code (``auto_map`` in ``config.json``), so that
            ``AutoModel.from_pretrained(repo, trust_remote_code=True)`` works where structured_hf is not installed.
            With structured_hf imported, its own registered classes are used and no remote code runs.
        revision: branch to commit to (default ``main``).
        dataset_ids: Hub ids of the datasets the model was trained on, for the card's metadata.

    Returns:
        The `huggingface_hub.CommitInfo` (``.repo_url``, ``.oid``, ``.commit_url``).

    Raises:
        HubPushError: if ``folder`` holds no ``config.json`` or a file to upload contains the Hub token.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HubPushError(str(folder), "no config.json: expected an output folder written by save_pretrained")
    contents = {rel: (folder / rel).read_bytes() for rel in files_to_push(folder)}
    config = json.loads(contents["config.json"])
    secret = token or get_token()
    _refuse_secrets(contents, secret)  # before anything is created on the Hub

    api = HfApi(token=token, library_name="structured_hf")
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = repo_url.repo_id

    card = render_model_card_from_folder(folder, repo_id, include_code=include_code, dataset_ids=dataset_ids)
    if card is not None:
        contents["README.md"] = str(card).encode()
    if include_code:
        code, auto_map = remote_code_files(config["model_type"])
        contents.update({name: source.encode() for name, source in code.items()})
        config["auto_map"] = {**config.get("auto_map", {}), **auto_map}
    else:  # e.g. a pulled folder: without the code files, an auto_map would point at nothing
        config.pop("auto_map", None)
    if config != json.loads(contents["config.json"]):
        contents["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()

    _refuse_secrets(contents, secret)
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=data) for rel, data in sorted(contents.items())]
    info = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
    logger.info("pushed %d files from %s to %s (commit %s)", len(operations), folder, repo_url, info.oid[:8])
    return info


def pull(
    repo_id_or_path: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
) -> Path:
    """A local folder for a run: ``repo_id_or_path`` itself if it is a folder, else a download of the Hub repo.

    Everything that loads a model (`from_pretrained`, the scripts) takes the result, so a Hub id and a folder are
    interchangeable. Downloads go to the Hugging Face cache (or ``local_dir``) and are reused when unchanged.
    """
    if Path(repo_id_or_path).is_dir():
        return Path(repo_id_or_path)
    folder = snapshot_download(
        str(repo_id_or_path), revision=revision, token=token, cache_dir=cache_dir, local_dir=local_dir,
        library_name="structured_hf",
    )
    logger.info("pulled %s to %s", repo_id_or_path, folder)
    return Path(folder)


def push_dataset(
    dataset: datasets.Dataset | datasets.DatasetDict,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    *,
    split: str | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Push a labelled dataset (e.g. `build_color_dataset` output, label-probability columns and all) with
    `datasets`' own ``push_to_hub``: Parquet shards plus a dataset card that records the features."""
    kwargs: dict[str, Any] = {"split": split} if isinstance(dataset, datasets.Dataset) else {}
    if split is not None and not kwargs:
        raise ValueError(f"split={split!r} applies to a Dataset; a DatasetDict pushes all of its splits")
    info = dataset.push_to_hub(repo_id, token=token, private=private, commit_message=commit_message, **kwargs)
    logger.info("pushed dataset to %s", repo_id)
    return info


def load_hub_dataset(
    repo_id_or_path: str | Path,
    *,
    split: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load a labelled dataset from the Hub (or from a folder written by ``save_to_disk``) with its features."""
    path = Path(repo_id_or_path)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if split is not None and isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(
        str(repo_id_or_path), split=split, revision=revision, token=token,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )


def _refuse_secrets(contents: Mapping[str, bytes], token: str | None) -> None:
    if not token:
        return
    for rel, data in contents.items():
        if token.encode() in data:
            raise HubPushError(rel, "contains the Hub token; refusing to upload it (remove the token from the file)")


# ---------------------------------------------------------------------------------------------------------------
# Remote code: the model's source, self-contained, for users without structured_hf
# ---------------------------------------------------------------------------------------------------------------


def remote_code_files(model_type: str) -> tuple[dict[str, str], dict[str, str]]:
    """The source files and ``auto_map`` that let ``trust_remote_code=True`` load a structured_hf model anywhere.

    ``register_for_auto_class`` + ``save_pretrained`` cannot do this by itself: transformers copies the modeling
    file and its *same-folder* relative imports only, while our models import shared code from the package root
    (``from ...concepts import ConceptMap``, ``...sites``, ``...errors``). So we bundle instead: the modules
    defining the config and model classes, plus every structured_hf module they import (transitively), flattened
    into one folder with the imports rewritten to siblings (``from .concepts import ConceptMap``).

    Returns:
        ``({file name: source}, {auto class name: "module.Class"})``.
    """
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise HubPushError("config.json", f"model_type {model_type!r} is not registered; import structured_hf first")
    config_cls = CONFIG_MAPPING[model_type]
    classes: dict[str, type] = {"AutoConfig": config_cls}
    for name in _AUTO_CLASS_NAMES:
        try:
            classes[name] = getattr(transformers, name)._model_mapping[config_cls]
        except KeyError:
            continue
    for name, cls in classes.items():
        if not cls.__module__.startswith(f"{__package__}."):
            raise HubPushError("config.json", f"{name} class {cls.__name__} is not defined in {__package__}")

    modules = _internal_import_closure([cls.__module__ for cls in classes.values()])
    flat: dict[str, str] = {}
    for module in modules:
        short = module.rsplit(".", 1)[-1]
        if short == "__init__" or short in flat.values():
            clash = [m for m, s in flat.items() if s == short]
            raise HubPushError(module, f"cannot flatten into remote code: its name clashes with {clash}")
        flat[module] = short
    header = (f"# Bundled by structured_hf.hub.remote_code_files from {{module}} (structured_hf "
              f"{_package_version()}) so that this checkpoint loads without structured_hf installed.\n")
    files = {f"{flat[m]}.py": header.format(module=m) + _rewrite_imports(m, flat) for m in modules}
    auto_map = {name: f"{flat[cls.__module__]}.{cls.__name__}" for name, cls in classes.items()}
    return files, auto_map


def _package_version() -> str:
    from . import __version__

    return __version__


def _module_source(module: str) -> tuple[str, bool]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise HubPushError(module, "module source not found")
    return Path(spec.origin).read_text(encoding="utf-8"), spec.submodule_search_locations is not None


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _internal_imports(module: str) -> list[tuple[ast.AST, list[str]]]:
    """``(import node, [absolute structured_hf modules it needs])`` for each import of our package in ``module``."""
    source, is_package = _module_source(module)
    root = __package__
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            if any(a.name == root or a.name.startswith(root + ".") for a in node.names):
                raise HubPushError(module, f"line {node.lineno}: use `from ... import` for {root} modules")
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node)
            if target != root and not target.startswith(root + "."):
                continue
            if node.module is None or target == root:
                raise HubPushError(module, f"line {node.lineno}: import names from their module, not a package")
            out.append((node, [target]))
    return out


def _internal_import_closure(roots: Sequence[str]) -> list[str]:
    seen: list[str] = []
    stack = list(dict.fromkeys(roots))
    while stack:
        module = stack.pop(0)
        if module in seen:
            continue
        seen.append(module)
        for _, targets in _internal_imports(module):
            stack.extend(t for t in targets if t not in seen)
    return seen


def _rewrite_imports(module: str, flat: Mapping[str, str]) -> str:
    source, _ = _module_source(module)
    lines = source.splitlines(keepends=True)
    for node, targets in sorted(_internal_imports(module), key=lambda x: -x[0].lineno):
        names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
        indent = lines[node.lineno - 1][: node.col_offset]
        lines[node.lineno - 1 : node.end_lineno] = [f"{indent}from .{flat[targets[0]]} import {names}\n"]
    return "".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _schedule_text(spec: Any) -> str:
    schedule = parse_schedule(spec, "weight")
    if len(schedule.steps) == 1:
        return _fmt(schedule.values[0])
    keys = ", ".join(f"{int(s)}: {_fmt(v)}" for s, v in zip(schedule.steps, schedule.values))
    return f"{schedule.interpolation} ({keys})"


def _measured(metrics: Mapping[str, Any]) -> str:
    if "cosine" in metrics:
        return f"cos = {metrics['cosine']:.4f}"
    if "leak_max" in metrics:
        return f"leak max = {metrics['leak_max']:.4f}, mean = {metrics['leak_mean']:.4f}"
    return "n/a"


def _place(c: Any) -> str:
    if c.direction is not None:
        return "direction (" + ", ".join(_fmt(float(v)) for v in c.direction) + ")"
    return "plane of axes " + ", ".join(str(a) for a in c.axes) if len(c.axes) == 2 else f"axes {list(c.axes)}"


def render_color_model_card(
    recipe: Recipe,
    metrics: Mapping[str, Any],
    repo_or_path: str,
    *,
    dataset_ids: Sequence[str] | None = None,
    include_code: bool = False,
    figures: Sequence[str] = (),
) -> ModelCard:
    """The model card of a trained color autoencoder, from its recipe and `metrics.json` contents.

    Args:
        recipe: the run's recipe (``recipe.yaml``).
        metrics: the run's ``metrics.json``.
        repo_or_path: where readers load it from (a Hub id, or the output folder for a local card).
        dataset_ids: Hub ids of the datasets it was trained on, for the card's metadata (the default recipe trains on
            a generated RGB grid, so there is none).
        include_code: whether the repo carries remote code (the card then says how to load it without
            structured_hf).
        figures: more image files next to the card (relative paths), shown under "More figures"; the training
            curves and latent plots (``training_curves.png``, ``latents.png``) always have their own sections.
    """
    concepts = ConceptMap.parse(recipe.model.get("concepts"))
    name = Path(str(repo_or_path)).name
    card_data = ModelCardData(
        library_name="structured_hf",
        license="mit",
        tags=["structured_hf", "concept-anchoring", "representation-engineering", "color-autoencoder"],
        datasets=list(dataset_ids) if dataset_ids else None,
        model_name=name,
        pipeline_tag=None,
    )
    m = recipe.model
    norm = m.get("normalize_bottleneck", True)
    arch = (
        f"RGB → {m.get('num_layers', 1)}× (Linear → {m.get('activation', 'gelu')}) "
        f"of width {m.get('hidden_dim', 16)} "
        f"→ Linear to K = {m.get('bottleneck_dim', 4)}{' → L2 normalization (unit sphere)' if norm else ''} → "
        f"mirror decoder → {m.get('output_head', 'clamp')} output head."
    )
    concept_rows = [
        {
            "name": c.name, "site": c.site, "place": _place(c),
            "prototypes": ", ".join(str(p) for p in c.prototypes) or "-",
            "description": c.description or "-",
            "measured": _measured(metrics.get("concepts", {}).get(c.name, {})),
        }
        for c in concepts
    ]
    reg_rows = []
    for r in recipe.regularizers:
        concept = r.get("concept")
        site = r.get("site") or (concepts[concept].site if concept in concepts else "-")
        reg_rows.append({"name": r.get("name") or r["loss"], "loss": r["loss"], "concept": concept or "-",
                         "label": r.get("label") or "all samples", "site": site,
                         "weight": _schedule_text(r.get("weight", 1.0))})
    labels = [
        {"name": label, "formula": f"{_fmt(float(lab.scale))} · {lab.feature}^{_fmt(float(lab.power))}"}
        for label, lab in parse_labelers(recipe.data.get("labels")).items()
    ]
    leaks: dict[str, float] = {}
    for c in concepts:
        leaks.update(metrics.get("concepts", {}).get(c.name, {}).get("leak", {}))
    color_rows = [{"name": k, "mse": _fmt(v), "leak": _fmt(leaks[k]) if k in leaks else ""}
                  for k, v in metrics["named_color_mse"].items()]
    headline = [f"worst named-color MSE {_fmt(metrics['named_color_mse_max'])}"]
    for c in concepts:
        cm = metrics.get("concepts", {}).get(c.name, {})
        if "cosine" in cm:
            headline.append(f"`{c.name}` at cos {cm['cosine']:.3f} from its direction")
        elif "leak_max" in cm:
            headline.append(f"`{c.name}` prototypes ≤ {100 * cm['leak_max']:.1f}% outside their axes")
    training = recipe.training
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "color_autoencoder.md"),
        model_name=name,
        description=recipe.description,
        repo_or_path=repo_or_path,
        include_code=include_code,
        version=_package_version(),
        num_parameters=metrics.get("num_parameters", "?"),
        bottleneck_dim=m.get("bottleneck_dim", 4),
        headline="; ".join(headline),
        site_summary=", ".join(f"`{s}`" for s in sorted({c.site for c in concepts})) or "`bottleneck`",
        concepts=concept_rows,
        architecture=arch,
        steps=training.get("max_steps"),
        batch_size=training.get("per_device_train_batch_size"),
        optimizer=str(training.get("optim", _default_optim())),
        weight_decay=_fmt(float(training.get("weight_decay", 0.0))),
        seed=recipe.seed,
        train_runtime=_fmt(metrics.get("train_runtime_s", float("nan"))),
        device=f"{platform.machine()} CPU" if "train_runtime_s" in metrics else "?",
        train_data=_data_text(recipe.data.get("train")),
        eval_data=_data_text(recipe.data.get("eval")) if recipe.data.get("eval") else None,
        labels=labels,
        regularizers=reg_rows,
        schedules={k: _schedule_text(v) for k, v in recipe.schedules.items()},
        mse_max=_fmt(metrics["named_color_mse_max"]),
        mse_mean=_fmt(metrics["named_color_mse_mean"]),
        eval_loss=_fmt(metrics["eval_loss"]) if "eval_loss" in metrics else None,
        named_colors=color_rows,
        has_leak=bool(leaks),
        figures=[{"path": f, "caption": FIGURE_CAPTIONS.get(Path(f).name, Path(f).stem.replace("_", " "))}
                 for f in figures if f not in _MAIN_FIGURES],
    )


def _default_optim() -> str:
    import dataclasses

    from .training.arguments import AnchoredTrainingArguments

    default = next(f.default for f in dataclasses.fields(AnchoredTrainingArguments) if f.name == "optim")
    return str(getattr(default, "value", default))


def _data_text(spec: Any) -> str:
    if not isinstance(spec, Mapping):
        return f"`{json.dumps(spec)}`"
    if spec.get("grid") == "rgb":
        n = int(spec.get("size", 8))
        text = f"the {n}³ = {n ** 3} colors of an evenly spaced RGB grid"
    elif spec.get("grid") == "hsv":
        text = (f"an HSV grid of {spec.get('hues')} hues × {spec.get('saturations')} saturations × "
                f"{spec.get('values')} values")
    else:
        text = f"`{json.dumps(dict(spec))}`"
    return text + (" plus the 17 named colors" if spec.get("include_named") else "")


_MAIN_FIGURES = ("training_curves.png", "latents.png")
# Captions of the figures run_experiment may write besides the two main ones (others get their file name).
FIGURE_CAPTIONS: dict[str, str] = {
    "schedules.png": "Every scheduled quantity (regularizer weights, learning rate, data curriculum) against the step",
    "evolution.png": "The latent space at snapshots during training",
    "evolution.gif": "The latent space during training, animated",
}


def _run_files(folder: Path) -> tuple[Recipe, dict[str, Any]] | None:
    """A run folder's ``(recipe, metrics)``; ``None`` when either file is missing (nothing to render a card from)."""
    if not (folder / "recipe.yaml").is_file() or not (folder / "metrics.json").is_file():
        return None
    recipe = parse_recipe(yaml.safe_load((folder / "recipe.yaml").read_text()), source=str(folder / "recipe.yaml"))
    return recipe, json.loads((folder / "metrics.json").read_text())


def _optional_text(folder: Path, name: str) -> str | None:
    path = folder / name
    return path.read_text() if path.is_file() else None


def _figures(folder: Path, suffixes: tuple[str, ...] = (".png",)) -> list[str]:
    return [f for f in files_to_push(folder) if f.endswith(suffixes)]


def _render_color_card_from_folder(
    folder: Path, repo_or_path: str, *, include_code: bool, dataset_ids: Sequence[str] | None
) -> ModelCard | None:
    run = _run_files(folder)
    if run is None:
        return None
    recipe, metrics = run
    figures = _figures(folder, (".png", ".svg", ".gif"))
    return render_color_model_card(recipe, metrics, repo_or_path, include_code=include_code, figures=figures,
                                   dataset_ids=dataset_ids)


def render_color_transformer_card(
    recipe: Recipe,
    metrics: Mapping[str, Any],
    repo_or_path: str,
    *,
    include_code: bool = False,
    relearning: str | None = None,
    figures: Sequence[str] = ("concept_tracking.png", "control_ratios.png"),
) -> ModelCard:
    """The model card of a trained color-operation transformer (M3), from its recipe and `metrics.json` contents:
    concept map, recipe and schedules, per-operation errors, red's placement per residual site, the control table
    (suppression and deletion ratios per operation) and, when given, a relearning-attack table (markdown)."""
    concepts = ConceptMap.parse(recipe.model.get("concepts"))
    name = Path(str(repo_or_path)).name
    card_data = ModelCardData(library_name="structured_hf", license="mit", model_name=name, pipeline_tag=None,
                              tags=["structured_hf", "concept-anchoring", "representation-engineering",
                                    "color-transformer"])
    m = recipe.model
    norm = "nGPT-style hypersphere" if m.get("norm") == "hypersphere" else "pre-norm (LayerNorm)"
    arch = (f"4 tokens (operation embedding, two colors embedded linearly from RGB, a learned result query) plus slot "
            f"embeddings → {m.get('num_layers', 3)} {norm} blocks of width {m.get('hidden_size', 64)} with "
            f"{m.get('num_heads', 4)} bidirectional attention heads and a GELU MLP of width "
            f"{m.get('intermediate_size', 256)} → final LayerNorm → Linear head on the result query → RGB.")
    placement = metrics.get("concepts", {})

    def measured(c: Any) -> str:
        site = placement.get(c.name, {}).get(c.site)
        if not site:
            return "n/a"
        return f"cos = {site['cosine_red']:.3f}, share far = {site['share_far']:.4f}"

    concept_rows = [{"name": c.name, "site": c.site, "place": _place(c) if c.direction is None or
                     len(c.direction) <= 8 else f"axis {max(range(len(c.direction)), key=lambda i: abs(c.direction[i]))} (one-hot)",
                     "description": c.description or "-", "measured": measured(c)} for c in concepts]
    reg_rows = [{"name": r.get("name") or r["loss"], "loss": r["loss"], "concept": r.get("concept") or "-",
                 "label": r.get("label") or "all examples",
                 "site": r.get("site") or (concepts[r["concept"]].site if r.get("concept") in concepts else "-"),
                 "weight": _schedule_text(r.get("weight", 1.0))} for r in recipe.regularizers]
    labels = [{"name": label, "formula": f"{_fmt(float(lab.scale))} · (max {lab.feature} of operands and "
               f"result)^{_fmt(float(lab.power))}"} for label, lab in parse_labelers(recipe.data.get("labels")).items()]
    test = metrics.get("test_mse", {})
    per_op = [{"op": op, "all": f"{v['all']:.2e}", "red": f"{v['red']:.2e}", "far": f"{v['far']:.2e}", "n": v["n"],
               "n_red": v["n_red"], "n_far": v["n_far"]} for op, v in test.items()]
    rows = []
    for cname, sites in placement.items():
        for site, v in sites.items():
            rows.append({"site": f"{cname}` @ `{site}" if len(placement) > 1 else site, "cos": f"{v['cosine_red']:.3f}", "share": f"{v['share_far']:.4f}",
                         "anchored": "yes" if v.get("anchored") else ""})
    control = metrics.get("control", {})
    operations = list(control.get("operations", test.keys()))
    control_rows = [{"name": v, "met": "yes" if control["summary"][v]["meets_target"] else "no",
                     "ratios": [{"red": f"{control['variants'][v][op]['red_ratio']:.1f}",
                                 "far": f"{control['variants'][v][op]['far_ratio']:.2f}"} for op in operations]}
                    for v in control.get("summary", {})]
    headline = []
    if test:
        headline.append(f"worst per-operation test MSE {max(v['all'] for v in test.values()):.2e}")
    for c in concepts:
        site = placement.get(c.name, {}).get(c.site)
        if site:
            headline.append(f"`{c.name}` at cos {site['cosine_red']:.3f} at `{c.site}`")
    for v, s in control.get("summary", {}).items():
        headline.append(f"{v}: red-involving error ×{s['min_red_ratio']:.0f} or more, far ×{s['max_far_ratio']:.2f} "
                        "at most")
    training = recipe.training
    task = recipe.data.get("task", {})
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / "color_transformer.md"), model_name=name,
        description=recipe.description, repo_or_path=repo_or_path, include_code=include_code,
        version=_package_version(), num_parameters=metrics.get("num_parameters", "?"),
        headline="; ".join(headline) or "see below",
        site_summary=", ".join(f"`{s}`" for s in sorted({c.site for c in concepts})) or "the residual stream",
        operations=", ".join(m.get("operations") or operations), concepts=concept_rows, architecture=arch,
        hidden_size=m.get("hidden_size", 64), steps=training.get("max_steps"),
        batch_size=training.get("per_device_train_batch_size"),
        optimizer=str(training.get("optim", _default_optim())),
        weight_decay=_fmt(float(training.get("weight_decay", 0.0))), seed=recipe.seed,
        train_runtime=_fmt(metrics.get("train_runtime_s", float("nan"))),
        device=f"{platform.machine()} CPU" if "train_runtime_s" in metrics else "?",
        train_data=(f"every operand combination of a {task.get('grid_size', 10)}³ RGB grid (unary operations) and "
                    f"unordered pairs of a {task.get('pair_grid_size', 6)}³ grid (mix), minus held-out combinations; "
                    "each operation equally likely per draw"),
        labels=labels, regularizers=reg_rows, schedules={k: _schedule_text(v) for k, v in recipe.schedules.items()},
        per_op=per_op, placement=rows, has_tracking="concept_tracking.png" in figures,
        has_control_figure="control_ratios.png" in figures, control=control_rows, operations_list=operations,
        red_target=_fmt(control.get("targets", {}).get("red_ratio_min", 10.0)),
        far_target=_fmt(control.get("targets", {}).get("far_ratio_max", 1.5)),
        relearning=relearning, has_recovery="recovery_curves.png" in figures,
    )


def _render_color_transformer_card_from_folder(
    folder: Path, repo_or_path: str, *, include_code: bool, dataset_ids: Sequence[str] | None
) -> ModelCard | None:
    run = _run_files(folder)
    if run is None:
        return None
    recipe, metrics = run
    return render_color_transformer_card(recipe, metrics, repo_or_path, include_code=include_code,
                                         relearning=_optional_text(folder, "relearning.md"), figures=_figures(folder))


def render_structured_gpt_card(
    recipe: Recipe,
    metrics: Mapping[str, Any],
    repo_or_path: str,
    *,
    include_code: bool = False,
    dataset_ids: Sequence[str] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    comparison: str | None = None,
    figures: Sequence[str] = ("training_curves.png",),
) -> ModelCard:
    """The model card of a trained StructuredGPT (M4), from its recipe, `metrics.json` and, when given, its
    `language_evaluation.json` contents and a comparison table (markdown from ``scripts/compare_lm.py``)."""
    from .evaluation.language import language_markdown

    concepts = ConceptMap.parse(recipe.model.get("concepts"))
    name = Path(str(repo_or_path)).name
    card_data = ModelCardData(library_name="structured_hf", license="mit", model_name=name,
                              pipeline_tag="text-generation", datasets=list(dataset_ids) if dataset_ids else None,
                              tags=["structured_hf", "concept-anchoring", "representation-engineering",
                                    "structured-gpt", "unlearning"])
    m, data, training = recipe.model, recipe.data, recipe.training
    hidden = m.get("hidden_size", 128)
    norm = "nGPT-style hypersphere" if m.get("norm") == "hypersphere" else "pre-LayerNorm (GPT-2 style)"
    arch = (f"Token + learned position embeddings → {m.get('num_layers', 4)} {norm} causal blocks of width {hidden} "
            f"with {m.get('num_heads', 4)} heads and a GELU MLP of width {m.get('intermediate_size') or 4 * hidden} → "
            f"final norm → output head tied to the token embedding; context {m.get('max_position_embeddings', 256)} "
            "tokens.")
    cosines = (evaluation or {}).get("cosines", {})

    def measured(c: Any) -> str:
        values = cosines.get(c.name)
        if not values:
            return "n/a"
        return f"{values.get(f'forget:{c.name}', float('nan')):.3f} / {values.get('retain', float('nan')):.3f}"

    def place(c: Any) -> str:
        if c.direction is not None and len(c.direction) > 8:
            return f"axis {max(range(len(c.direction)), key=lambda i: abs(c.direction[i]))} (one-hot)"
        return _place(c)

    concept_rows = [{"name": c.name, "site": c.site, "place": place(c), "description": c.description or "-",
                     "measured": measured(c) if c.direction is not None else "-"} for c in concepts]
    def site_of(r: Mapping[str, Any]) -> str:  # a regularizer's or route's site: its own, else its concept's
        return r.get("site") or (concepts[r["concept"]].site if r.get("concept") in concepts else "-")

    reg_rows = [{"name": r.get("name") or r["loss"], "loss": r["loss"], "concept": r.get("concept") or "-",
                 "label": r.get("label") or "all chunks", "site": site_of(r),
                 "weight": _schedule_text(r.get("weight", 1.0))} for r in recipe.regularizers]
    route_rows = [{"name": r.get("name") or f"route:{r['concept']}", "concept": r["concept"], "label": r["label"],
                   "site": site_of(r), "weight": _schedule_text(r.get("weight", 1.0))} for r in recipe.routes]
    text = data.get("text") or {}
    source = text.get("labelled") or (text.get("labels_config") if isinstance(text.get("labels_config"), str)
                                      else "an inline labels config")
    filt = data.get("filter")
    train_data = (f"chunks from `{source}` (default: the King James Bible, public domain), "
                  f"{metrics.get('train_chunks', '?')} training chunks"
                  + (f", with chunks labelled {', '.join(filt.get('concepts', []))} (p ≥ {filt.get('threshold', 0.5)}) "
                     "removed (data-filtering baseline)" if filt else ""))
    headline = []
    if "eval_perplexity" in metrics:
        headline.append(f"validation perplexity {metrics['eval_perplexity']:.2f}")
    for key, value in (evaluation or {}).get("delta", {}).items():
        if key.startswith("ablate:"):
            concept = key.split(":", 1)[1]
            headline.append(f"deleting `{concept}` changes its forget loss by {value[f'forget:{concept}']:+.3f} nats, "
                            f"retain by {value['retain']:+.3f}")
    first = next((c.name for c in concepts if c.direction is not None), "violence")
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / "structured_gpt.md"), model_name=name,
        description=recipe.description, repo_or_path=repo_or_path, include_code=include_code,
        version=_package_version(), num_parameters=metrics.get("num_parameters", "?"),
        headline="; ".join(headline) or "see below", first_concept=first,
        site_summary=", ".join(f"`{s}`" for s in sorted({c.site for c in concepts})) or "the residual stream",
        concepts=concept_rows, architecture=arch, hidden_size=hidden, steps=training.get("max_steps"),
        batch_size=training.get("per_device_train_batch_size"), block_size=data.get("block_size", 128),
        optimizer=str(training.get("optim", _default_optim())),
        weight_decay=_fmt(float(training.get("weight_decay", 0.0))), seed=recipe.seed,
        train_data=train_data, vocab_size=(data.get("tokenizer") or {}).get("vocab_size", 4096),
        train_runtime=_fmt(metrics.get("train_runtime_s", float("nan"))),
        device=f"{platform.machine()} CPU" if "train_runtime_s" in metrics else "?",
        tokens_per_second=f"{metrics.get('train_tokens_per_second', float('nan')):.0f}",
        eval_loss=_fmt(metrics.get("eval_loss", float("nan"))),
        eval_perplexity=_fmt(metrics.get("eval_perplexity", float("nan"))),
        labelers=", ".join(f"`{x}`" for x in text.get("labelers") or ["every labeler of the labels config"]),
        token_scope=_token_scope_text(data.get("token_scope")),
        regularizers=reg_rows, routes=route_rows,
        schedules={k: _schedule_text(v) for k, v in recipe.schedules.items()},
        has_curves="training_curves.png" in figures,
        evaluation=language_markdown(evaluation) if evaluation else "Not evaluated (run `scripts/evaluate.py`).",
        comparison=comparison,
    )


def _token_scope_text(scope: Mapping[str, Any] | None) -> str:
    """Which tokens of a labelled chunk a drawn label reaches (``data.token_scope`` of a structured_gpt recipe)."""
    if not scope:
        return "all tokens of the chunks that drew it (padding excluded)"
    evidence = f"the `{scope.get('labeler')}` labeler's matches"
    if scope.get("mode", "after") == "window":
        return f"only each of {evidence} and the {scope.get('window', 32) - 1} tokens after it (token-level labels)"
    return f"only the tokens from the first of {evidence} on (token-level labels: a causal model has read nothing " \
           "about the concept before)"


def _render_structured_gpt_card_from_folder(
    folder: Path, repo_or_path: str, *, include_code: bool, dataset_ids: Sequence[str] | None
) -> ModelCard | None:
    run = _run_files(folder)
    if run is None:
        return None
    recipe, metrics = run
    evaluation = _optional_text(folder, "language_evaluation.json")
    return render_structured_gpt_card(
        recipe, metrics, repo_or_path, include_code=include_code, dataset_ids=dataset_ids,
        evaluation=json.loads(evaluation) if evaluation is not None else None,
        comparison=_optional_text(folder, "comparison.md"), figures=_figures(folder))


# model_type -> renderer(folder, repo_or_path, *, include_code, dataset_ids) -> card, or None when the folder lacks
# what it needs. New model families (color transformer, GPT) register theirs here.
CARD_RENDERERS: dict[str, Callable[..., ModelCard | None]] = {
    "structured_color_autoencoder": _render_color_card_from_folder,
    "structured_color_transformer": _render_color_transformer_card_from_folder,
    "structured_gpt": _render_structured_gpt_card_from_folder,
}


def render_model_card_from_folder(
    folder: str | Path, repo_or_path: str, include_code: bool = False, dataset_ids: Sequence[str] | None = None
) -> ModelCard | None:
    """Re-render a run's model card for ``repo_or_path`` from the files in its output folder (``None`` when its
    model family has no renderer or the folder lacks what the renderer needs; the folder's README.md is kept)."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    renderer = CARD_RENDERERS.get(model_type)
    if renderer is None:
        return None
    return renderer(folder, repo_or_path, include_code=include_code, dataset_ids=dataset_ids)

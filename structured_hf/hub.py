"""Sharing runs on the Hugging Face Hub: push an output folder, pull it back, labelled datasets.

Everything here is generic over model families: an output folder is a `PreTrainedModel` checkpoint
(``config.json`` + safetensors) with whatever else the run wrote next to it (tokenizer, intervention specs,
evaluation JSON, figures, the model card). The card is re-rendered for the Hub id by :mod:`structured_hf.cards`, where
model families plug in their card renderer; its names are still importable from here.

    from structured_hf.hub import push_output_dir, pull
    push_output_dir("outputs/default", "me/color-ae")        # token: HF_TOKEN or `hf auth login`
    model = AutoModel.from_pretrained(pull("me/color-ae"))   # or AutoModel.from_pretrained("me/color-ae")

Tokens are never taken from recipes or written anywhere: pass ``token=`` or let `huggingface_hub` find it, and
every file is checked before it is uploaded for the token and for anything shaped like a Hub token.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import transformers
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token, snapshot_download
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# Card rendering moved to structured_hf.cards; these names stay importable from here for existing callers.
from .cards import (  # noqa: F401
    CARD_RENDERERS,
    FIGURE_CAPTIONS,
    TEMPLATES,
    render_color_model_card,
    render_color_transformer_card,
    render_model_card_from_folder,
    render_structured_gpt_card,
)
from .errors import HubPushError
from .shared_files import NEVER_PUSH, PUSH_PATTERNS, files_to_push  # noqa: F401  (files_to_push: public here too)
from .version import __version__

logger = logging.getLogger(__name__)

# Auto classes whose registrations are exported as remote code next to AutoConfig.
_AUTO_CLASS_NAMES = (
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForPreTraining",
)


# ---------------------------------------------------------------------------------------------------------------
# Push and pull
# ---------------------------------------------------------------------------------------------------------------


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
        str(repo_id_or_path),
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_dir=local_dir,
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
        str(repo_id_or_path),
        split=split,
        revision=revision,
        token=token,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )


# Anything shaped like a Hugging Face access token ("hf_" and 34 letters or digits today; 30 or more to be safe), not
# only the token in use: a folder may hold someone else's token, or one pasted into a recipe's description.
TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")


def _refuse_secrets(contents: Mapping[str, bytes], token: str | None) -> None:
    """Refuse to upload a file that holds the active token or anything shaped like a Hub token."""
    for rel, data in contents.items():
        if token and token.encode() in data:
            raise HubPushError(rel, "contains the Hub token; refusing to upload it (remove the token from the file)")
        match = TOKEN_PATTERN.search(data)
        if match is not None:  # the message names where, never the token itself
            raise HubPushError(
                rel,
                f"contains something shaped like a Hub token (hf_ followed by "
                f"{match.end() - match.start() - 3} letters and digits) at byte {match.start()}; "
                "refusing to upload it (remove it from the file)",
            )


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
    header = (
        f"# Bundled by structured_hf.hub.remote_code_files from {{module}} (structured_hf "
        f"{__version__}) so that this checkpoint loads without structured_hf installed.\n"
    )
    files = {f"{flat[m]}.py": header.format(module=m) + _rewrite_imports(m, flat) for m in modules}
    auto_map = {name: f"{flat[cls.__module__]}.{cls.__name__}" for name, cls in classes.items()}
    return files, auto_map


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

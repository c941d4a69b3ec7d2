"""One output folder holds one run: refusing reused folders, run identity, complete checkpoints, safe resume.

A run folder carries ``run.json``: a run id, the recipe's fingerprint, the recipe itself and a status
(``running`` -> ``finished`` or ``failed``). Every checkpoint the trainer writes gets a marker file,
``structured_checkpoint.json``, written *last* (after Trainer wrote weights, optimizer, scheduler, RNG and trainer
state), which names the run and recipe it belongs to. Hence:

- a new run never lands in a non-empty folder unless the user asks to overwrite it (the folder is then emptied
  first, so no file of the old run survives) or to resume it;
- a checkpoint without its marker was interrupted while being saved and is never picked for resume;
- resuming another run's checkpoint, or resuming with a changed recipe, is refused unless explicitly allowed.

    state = prepare_output_dir("outputs/run", recipe_dict, overwrite=False, resume=None)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoints import check_checkpoint
from .errors import CheckpointError, StructuredConfigError

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
CHECKPOINT_MARKER = "structured_checkpoint.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Recipe keys that may differ between a run and its resumption without changing what is trained.
_RESUME_NEUTRAL = ("output_dir", "description")
# Files Trainer writes into a checkpoint that a resume reads (the model weights are checked separately).
_STATE_FILES = ("optimizer.pt", "scheduler.pt")


def recipe_fingerprint(recipe: Mapping[str, Any]) -> str:
    """A stable hash of what a recipe trains (its resume-neutral keys left out)."""
    kept = {k: v for k, v in recipe.items() if k not in _RESUME_NEUTRAL}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    # Write then rename: a reader (or a kill -9 in between) sees the old file or the new one, never half of one.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts (for the refusal message)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            if not prefix and key in _RESUME_NEUTRAL:
                continue
            out += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "recipe"]


def is_run_folder(folder: Path) -> bool:
    """A folder written by a structured_hf run (this version's ``run.json``, or an older run's ``recipe.yaml``)."""
    return (folder / RUN_FILE).is_file() or (folder / "recipe.yaml").is_file()


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be resumed from (None when it is a complete checkpoint).

    Complete: the marker (written last), a parseable ``trainer_state.json``, weights that pass
    :func:`~structured_hf.checkpoints.check_checkpoint` (header, sizes, finite values), and non-empty optimizer,
    scheduler and RNG state files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    if not (folder / CHECKPOINT_MARKER).is_file():
        return f"no {CHECKPOINT_MARKER} (the save was interrupted, or an older version wrote it)"
    state = _read_json(folder / TRAINER_STATE)
    if state is None or "global_step" not in state:
        return f"{TRAINER_STATE} is missing or unreadable"
    try:
        check_checkpoint(folder)
    except CheckpointError as e:
        return str(e)
    for name in _STATE_FILES:
        path = folder / name
        if path.exists() and path.stat().st_size == 0:
            return f"{name} is empty (0 bytes)"
    rng = sorted(folder.glob("rng_state*.pth"))
    if not rng:
        return "no rng_state*.pth"
    empty = [p.name for p in rng if p.stat().st_size == 0]
    if empty:
        return f"{empty[0]} is empty (0 bytes)"
    return None


def checkpoints_in(folder: str | Path) -> list[Path]:
    """``checkpoint-N`` sub-folders of ``folder``, newest (largest N) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_complete_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint in ``folder``; damaged or incomplete ones are skipped with a warning naming
    them and what is wrong."""
    for path in checkpoints_in(folder):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping %s: %s", path, problem)
    return None


@dataclass(frozen=True)
class RunState:
    """What :func:`prepare_output_dir` decided: the run's identity and the checkpoint to resume from (or None)."""

    run_id: str
    fingerprint: str
    resume_from: Path | None
    resumed_step: int = 0
    clear: bool = False  # an overwrite: `start_run` empties the folder first

    def identity(self) -> dict[str, Any]:
        """What each checkpoint marker records (the trainer adds the global step)."""
        return {"run_id": self.run_id, "recipe_fingerprint": self.fingerprint}


def write_checkpoint_marker(checkpoint: str | Path, identity: Mapping[str, Any]) -> None:
    """Mark ``checkpoint`` complete and owned by a run: call after everything else of it is written."""
    _write_json_atomic(Path(checkpoint) / CHECKPOINT_MARKER, identity)


def _folder_run(folder: Path) -> dict[str, Any] | None:
    return _read_json(folder / RUN_FILE)


def _listing(folder: Path, limit: int = 6) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def prepare_output_dir(
    output_dir: str | Path,
    recipe: Mapping[str, Any],
    overwrite: bool = False,
    resume: str | bool | None = None,
    allow_recipe_change: bool = False,
    check_folder: bool = True,
) -> RunState:
    """Decide, before anything is written, whether this run may use ``output_dir``. Reads only: an overwrite is
    carried out by :func:`start_run`, once the run has been built and is about to train.

    Args:
        output_dir: the run's folder.
        recipe: the resolved recipe as a dict (its fingerprint identifies the run's settings).
        overwrite: replace the run in ``output_dir`` (only a structured_hf run folder is ever emptied).
        resume: ``True`` for the newest complete checkpoint in ``output_dir``, or a checkpoint folder.
        allow_recipe_change: resume although the recipe differs from the checkpoint's.
        check_folder: False on the other processes of a multi-process launch, which must not judge a folder that
            the main process may already be writing to.

    Raises:
        StructuredConfigError: the folder is in use and neither overwrite nor resume was asked for, or both were;
            the recipe differs from the checkpoint's run; the checkpoint belongs to another run.
        CheckpointError: the named checkpoint is damaged or incomplete, or ``output_dir`` has no complete one.
    """
    out = Path(output_dir)
    fingerprint = recipe_fingerprint(recipe)
    if overwrite and resume:
        raise StructuredConfigError(
            "--overwrite_output_dir",
            "cannot be combined with --resume_from_checkpoint: overwriting deletes the checkpoints a resume would read",
        )
    if out.exists() and not out.is_dir():
        raise StructuredConfigError("output_dir", f"{out} exists and is not a folder")
    nonempty = check_folder and out.is_dir() and any(out.iterdir())
    if resume:
        return _resume_state(out, recipe, fingerprint, resume, allow_recipe_change)
    if nonempty:
        if not overwrite:
            raise StructuredConfigError(
                "output_dir",
                f"{out} is not empty ({_listing(out)}); a new run would overwrite or mix with what is "
                "there. Choose another folder, pass --overwrite_output_dir to replace that run, or "
                "--resume_from_checkpoint to continue it",
            )
        if not is_run_folder(out):
            raise StructuredConfigError(
                "output_dir",
                f"{out} is not a structured_hf run folder (no {RUN_FILE} or recipe.yaml; it holds "
                f"{_listing(out)}); refusing to delete its contents even with --overwrite_output_dir",
            )
    return RunState(run_id=uuid.uuid4().hex, fingerprint=fingerprint, resume_from=None, clear=nonempty)


def _resume_state(
    out: Path, recipe: Mapping[str, Any], fingerprint: str, resume: str | bool, allow_recipe_change: bool
) -> RunState:
    if resume is True:
        checkpoint = latest_complete_checkpoint(out)
        if checkpoint is None:
            damaged = [p.name for p in checkpoints_in(out)]
            raise CheckpointError(
                str(out),
                "no complete checkpoint to resume from"
                + (f" (damaged or incomplete: {damaged}; see the warnings above)" if damaged else ""),
            )
    else:
        checkpoint = Path(resume)
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise CheckpointError(str(checkpoint), f"cannot resume from it: {problem}")
    marker = _read_json(checkpoint / CHECKPOINT_MARKER) or {}
    owner = _folder_run(out)
    if owner is not None and owner.get("run_id") and marker.get("run_id") != owner.get("run_id"):
        raise StructuredConfigError(
            "--resume_from_checkpoint",
            f"{checkpoint} belongs to run {marker.get('run_id')}, but {out} holds run "
            f"{owner.get('run_id')}; resuming would mix two runs in one folder",
        )
    if marker.get("recipe_fingerprint") != fingerprint and not allow_recipe_change:
        old = (owner or {}).get("recipe")
        changed = _changed_keys(old, dict(recipe)) if isinstance(old, Mapping) else ["(the recipe is not recorded)"]
        raise StructuredConfigError(
            "recipe",
            f"differs from the recipe of the run that wrote {checkpoint} (changed: {changed}); resuming "
            "would continue that run with other settings. Resume with the same recipe, start a new run in another "
            "folder, or pass --allow_recipe_change",
        )
    state = _read_json(checkpoint / TRAINER_STATE) or {}
    return RunState(
        run_id=str(marker.get("run_id") or uuid.uuid4().hex),
        fingerprint=fingerprint,
        resume_from=checkpoint,
        resumed_step=int(state.get("global_step", 0)),
    )


def start_run(output_dir: str | Path, state: RunState, recipe: Mapping[str, Any], recipe_yaml: str) -> None:
    """Write ``run.json`` (status ``running``) and, for a new run, ``recipe.yaml``: the first files of a run.

    A resumed run keeps its ``recipe.yaml`` (the one its checkpoints were trained with) unless the recipe was allowed
    to change, in which case the new one is written and ``run.json`` lists the resumptions.
    """
    out = Path(output_dir)
    if state.clear and out.is_dir():
        for child in out.iterdir():
            # Everything of the old run goes, figures and checkpoints included, so nothing of it mixes with the new.
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        logger.warning("overwrite: emptied %s", out)
    out.mkdir(parents=True, exist_ok=True)
    previous = _folder_run(out) or {}
    resumes = list(previous.get("resumes", []))
    if state.resume_from is not None:
        resumes.append(
            {
                "from": str(state.resume_from),
                "step": state.resumed_step,
                "recipe_changed": previous.get("recipe_fingerprint") not in (None, state.fingerprint),
            }
        )
    if state.resume_from is None or previous.get("recipe_fingerprint") != state.fingerprint:
        (out / "recipe.yaml").write_text(recipe_yaml)
    _write_json_atomic(
        out / RUN_FILE,
        {
            "run_id": state.run_id,
            "recipe_fingerprint": state.fingerprint,
            "status": "running",
            "recipe": dict(recipe),
            "resumes": resumes,
        },
    )


def end_run(output_dir: str | Path, status: str, error: str | None = None) -> None:
    """Record the run's outcome in ``run.json`` (``finished`` or ``failed`` with the error)."""
    path = Path(output_dir) / RUN_FILE
    data = _read_json(path)
    if data is None:
        return
    data["status"] = status
    if error is not None:
        data["error"] = error
    _write_json_atomic(path, data)

"""Which files of a run's output folder are shared: uploaded by a Hub push and shown on the model card.

An allow-list, so that nothing new (a pickled optimizer, a file holding credentials) is uploaded by accident.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

# Paths relative to the folder, matched part by part (`*` never crosses a `/`).
PUSH_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    # tokenizer (GPT)
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    # intervention specs, evaluation results (scripts/evaluate.py: evaluation.json/.md, figures, surgery variants)
    "interventions.json",
    "interventions/*.json",
    "*.intervention.json",
    "metrics.json",
    "eval_results.json",
    "evaluation*.json",
    "evaluation*.md",
    "evaluation/*",
    "relearning.json",
    "models/*/config.json",
    "models/*/*.safetensors",
    # how the run was made, figures, card
    "recipe.yaml",
    "log_history.json",
    "*.png",
    "*.svg",
    "*.gif",
    "figures/*",
    "README.md",
)
# Never pushed, even when a pattern above matches: Trainer state (training_args.bin pickles every argument),
# checkpoints, TensorBoard runs, caches.
NEVER_PUSH: tuple[str, ...] = (
    "training_args.bin",
    "checkpoint-*",
    "runs",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*",
    "trainer_state.json",
    ".git",
    ".cache",
    "__pycache__",
)


def files_to_push(folder: str | Path) -> list[str]:
    """Relative paths (POSIX) of the files in ``folder`` that a Hub push uploads, sorted."""
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

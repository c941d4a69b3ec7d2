"""How weak are the weak labels? Precision/recall of each labeler against a hand-labelled evaluation set.

The evaluation set (``structured_hf/data/calibration/kjv_eval.jsonl``, guidelines in the README beside it) has
one 0/1 human judgement per concept. A labeler "says yes" when its probability is >= ``threshold`` (0.5);
precision, recall and F1 of that decision, the base rate, the labeler's positive rate, the ROC AUC of its raw
probabilities (ranking quality, threshold-free) and the mean probability on positives and negatives are reported
per concept, for every labeler and for the combination (``prob_<concept>``), which is what training draws from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StructuredConfigError

DEFAULT_CALIBRATION_SET = Path(__file__).resolve().parent / "calibration" / "kjv_eval.jsonl"
COMBINED = "combined"


def load_calibration_set(
    path: str | Path | None = None, concepts: Sequence[str] | None = None, split: str | None = None
) -> list[dict[str, Any]]:
    """Rows of a hand-labelled JSON-lines file: ``text`` and a 0/1 field per concept (``split`` filters rows by their
    ``split`` field, e.g. ``test``)."""
    path = Path(path) if path is not None else DEFAULT_CALIBRATION_SET
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no calibration set")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if not isinstance(row.get("text"), str):
            raise StructuredConfigError(f"{path}:{i + 1}", "expected a 'text' string")
        for concept in concepts or []:
            if row.get(concept) not in (0, 1):
                raise StructuredConfigError(
                    f"{path}:{i + 1}", f"expected {concept!r} to be 0 or 1, got {row.get(concept)!r}"
                )
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    return rows


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half); None if undefined."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth).astype(bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    # Mann-Whitney U from average ranks.
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_metrics(prob: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Precision, recall, F1 of ``prob >= threshold`` against 0/1 ``truth``, plus rates, AUC and mean probabilities."""
    prob, truth = np.asarray(prob, dtype=np.float64), np.asarray(truth).astype(bool)
    pred = prob >= threshold
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if tp + fp + fn else None)
    auc = roc_auc(prob, truth)
    return {
        "n": len(truth),
        "positives": int(truth.sum()),
        "base_rate": float(truth.mean()) if len(truth) else None,
        "predicted_rate": float(pred.mean()) if len(pred) else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": auc,
        "mean_prob_pos": float(prob[truth].mean()) if truth.any() else None,
        "mean_prob_neg": float(prob[~truth].mean()) if (~truth).any() else None,
    }


def calibration_report(
    columns: Mapping[str, np.ndarray],
    rows: Sequence[Mapping[str, Any]],
    concepts: Sequence[str],
    labelers: Sequence[str],
    threshold: float = 0.5,
) -> dict[str, Any]:
    """``columns`` from :meth:`LabelingPipeline.label` on the rows' texts -> {concept: {labeler|combined: metrics}}."""
    report: dict[str, Any] = {}
    for concept in concepts:
        truth = np.array([int(r[concept]) for r in rows])
        per: dict[str, Any] = {}
        for name in labelers:
            key = f"score_{name}_{concept}"
            if key in columns:
                per[name] = binary_metrics(columns[key], truth, threshold)
        per[COMBINED] = binary_metrics(columns[f"prob_{concept}"], truth, threshold)
        report[concept] = per
    return report


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def report_markdown(report: Mapping[str, Any], title: str = "Calibration of the weak labelers") -> str:
    """The report of :func:`build_report` as a markdown document (tables per evaluation subset)."""
    lines = [f"# {title}", ""]
    meta = report.get("meta", {})
    if meta:
        lines += [
            f"- calibration set: `{meta.get('calibration_set')}`",
            (
                f"- decision: a labeler says *yes* when its probability >= {meta.get('threshold')}; "
                "AUC ranks by the probability itself"
            ),
            "",
        ]
    for subset, per_concept in report.get("subsets", {}).items():
        lines += [f"## {subset}", ""]
        lines += [
            (
                "| concept | labeler | n | base rate | predicted rate | precision | recall | F1 | AUC | "
                "mean p (pos) | mean p (neg) |"
            ),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for concept, per in per_concept.items():
            for name, m in per.items():
                lines.append(
                    f"| {concept} | {name} | {m['n']} | {_fmt(m['base_rate'])} | {_fmt(m['predicted_rate'])} | "
                    f"{_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | {_fmt(m['auc'])} | "
                    f"{_fmt(m['mean_prob_pos'])} | {_fmt(m['mean_prob_neg'])} |"
                )
        lines.append("")
    rates = report.get("corpus_label_rates")
    if rates:
        lines += [
            "## Label rates of the labelled corpus",
            "",
            "| split | chunks | concept | mean prob_<concept> | share with prob >= 0.5 |",
            "|---|---:|---|---:|---:|",
        ]
        for split, per in rates.items():
            for concept, r in per["concepts"].items():
                lines.append(
                    f"| {split} | {per['chunks']} | {concept} | {_fmt(r['mean_prob'], 3)} | "
                    f"{_fmt(r['share_positive'], 3)} |"
                )
        lines.append("")
    return "\n".join(lines)


def label_rates(columns: Mapping[str, np.ndarray], concepts: Sequence[str], threshold: float = 0.5) -> dict[str, Any]:
    """Mean ``prob_<concept>`` (the expected share of labelled draws) and the share of chunks with prob >= 0.5."""
    out = {}
    for concept in concepts:
        p = np.asarray(columns[f"prob_{concept}"], dtype=np.float64)
        out[concept] = {
            "mean_prob": float(p.mean()) if len(p) else None,
            "share_positive": float((p >= threshold).mean()) if len(p) else None,
        }
    return out


def build_report(
    pipeline: Any, path: str | Path | None = None, threshold: float = 0.5, progress: bool = False
) -> dict[str, Any]:
    """Label the calibration set with ``pipeline`` and report per subset: ``test``, ``dev``, the unbiased
    ``random`` stratum, and ``all`` rows (subsets without rows are left out)."""
    rows = load_calibration_set(path)
    concepts = [c for c in pipeline.concepts if rows and all(c in r for r in rows)]
    if not concepts:
        raise StructuredConfigError(
            "calibration_set", f"{path}: no rows carry a 0/1 field for any of the concepts {list(pipeline.concepts)}"
        )
    rows = load_calibration_set(path, concepts)  # checks the 0/1 values
    columns = pipeline.label([r["text"] for r in rows], progress=progress, desc="labelling the calibration set")
    names = [lab.name for lab in pipeline.labelers]
    subsets: dict[str, Any] = {}
    selectors = {
        "test": lambda r: r.get("split") == "test",
        "dev": lambda r: r.get("split") == "dev",
        "random stratum": lambda r: r.get("stratum") == "random",
        "all": lambda r: True,
    }
    for subset, keep in selectors.items():
        idx = np.array([i for i, r in enumerate(rows) if keep(r)], dtype=np.int64)
        if len(idx) == 0 or (subset != "all" and len(idx) == len(rows)):
            continue
        sub_cols = {k: v[idx] for k, v in columns.items()}
        subsets[subset] = calibration_report(sub_cols, [rows[i] for i in idx], concepts, names, threshold)
    return {
        "meta": {
            "calibration_set": str(Path(path) if path is not None else DEFAULT_CALIBRATION_SET),
            "rows": len(rows),
            "threshold": threshold,
            "labelers": names,
            "concepts": concepts,
            "concepts_without_hand_labels": [c for c in pipeline.concepts if c not in concepts],
            "combine": {"rule": pipeline.combination.rule, "weights": pipeline.combination.weights},
        },
        "subsets": subsets,
        "rows": [
            {
                "id": r.get("id"),
                **{c: int(r[c]) for c in concepts},
                **{k: round(float(v[i]), 4) for k, v in columns.items() if not k.startswith("raw_")},
            }
            for i, r in enumerate(rows)
        ],
    }


__all__ = [
    "COMBINED",
    "DEFAULT_CALIBRATION_SET",
    "binary_metrics",
    "build_report",
    "calibration_report",
    "label_rates",
    "load_calibration_set",
    "report_markdown",
    "roc_auc",
]

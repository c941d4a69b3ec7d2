#!/usr/bin/env python
"""Chunk a text corpus, weak-label every chunk per concept, and report how good the labels are.

    python scripts/label_text.py --config configs/structured_gpt/labels.yaml --output_dir data/kjv-labelled \
        [--source kjv | --source hub:roneneldan/TinyStories --hub_split "train[:5%]" | --source my_texts/] \
        [--labelers keywords vader] [--max_chunks 500] [--push_to_hub user/kjv-labelled]

Writes into --output_dir:
  a datasets.DatasetDict (save_to_disk; load it with datasets.load_from_disk) with splits train/validation/test and
  columns id, document, text, prob_<concept> (the combined label probability the training collator draws from),
  score_<labeler>_<concept> (each labeler's probability) and raw_<labeler>_<concept> (its raw score);
  labels.yaml (the config as run), label_stats.json (chunks and label rates per split), and
  calibration_report.json / calibration_report.md (precision, recall, F1, AUC of every labeler and of the
  combination against the hand-labelled passages). Runs offline with the default corpus and labelers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from structured_hf.data.label_calibration import report_markdown
from structured_hf.data.text_pipeline import build_labelled_dataset, calibrate, load_label_config
from structured_hf.errors import StructuredConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config",
        default="configs/structured_gpt/labels.yaml",
        help="labels YAML: source, chunking, splits, concepts, labelers, combine (default: %(default)s)",
    )
    p.add_argument("--output_dir", required=True, help="folder for the labelled DatasetDict and the reports")
    p.add_argument(
        "--source",
        help="overrides the config's source: 'kjv' (built-in King James Bible), 'hub:NAME' "
        "(datasets.load_dataset; needs the network unless NAME is a local folder), or a .txt/.jsonl "
        "file, folder or glob",
    )
    p.add_argument(
        "--hub_split",
        default=None,
        help="split for a hub:NAME source, slicing allowed, e.g. 'train[:5%%]' (default: train)",
    )
    p.add_argument("--hub_config", default=None, help="dataset configuration name for a hub:NAME source")
    p.add_argument(
        "--text_column", default=None, help="column holding the text for hub and JSON-lines sources (default: text)"
    )
    p.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="override chunking.max_length (characters unless the config says otherwise)",
    )
    p.add_argument(
        "--split_by",
        choices=["document", "chunk"],
        default=None,
        help="override splits.by: 'document' keeps a document's chunks in one split (default for many "
        "documents), 'chunk' splits a single long file",
    )
    p.add_argument(
        "--labelers",
        nargs="+",
        metavar="NAME",
        help="use only these configured labelers (e.g. 'keywords vader' to skip the embedding model)",
    )
    p.add_argument(
        "--max_chunks",
        type=int,
        default=None,
        help="label only the first N chunks of each split (a quick look at a large corpus)",
    )
    p.add_argument("--batch_size", type=int, default=256, help="chunks per labelling batch (default: %(default)s)")
    p.add_argument(
        "--calibration_set",
        default=None,
        help="hand-labelled JSON-lines file for the report (default: the config's calibration_set)",
    )
    p.add_argument("--no_calibration", action="store_true", help="skip the calibration report")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    p.add_argument(
        "--push_to_hub",
        metavar="REPO",
        help="after saving, upload the dataset (DatasetDict.push_to_hub) and the reports to this Hub "
        "dataset repo, 'user/name' (token: HF_TOKEN or `hf auth login`)",
    )
    p.add_argument("--private", action="store_true", help="create the --push_to_hub repo as private")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.max_chunks is not None and args.max_chunks < 1:
        p.error(f"--max_chunks must be at least 1, got {args.max_chunks}")
    if args.private and not args.push_to_hub:
        p.error("--private only applies with --push_to_hub")
    if (args.hub_split or args.hub_config) and not (args.source or "").startswith("hub:"):
        p.error("--hub_split and --hub_config only apply with --source hub:NAME")
    return args


def check_writable_output(out: Path) -> None:
    """Refuse, before any labelling, an output folder that cannot be written or that already holds other files
    (datasets' save_to_disk would replace some and leave the rest mixed in)."""
    if out.exists() and not out.is_dir():
        raise StructuredConfigError("--output_dir", f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise StructuredConfigError(
            "--output_dir",
            f"{out} is not empty; choose a new folder (a labelled dataset written over another would mix the two)",
        )
    probe = next(p for p in (out, *out.parents) if p.exists())  # the folder that would hold the new one
    if not probe.is_dir():
        raise StructuredConfigError("--output_dir", f"cannot write to {out} ({probe} is a file, not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StructuredConfigError("--output_dir", f"cannot write to {out} ({probe} is not writable)")


def source_from(args: argparse.Namespace) -> str | dict | None:
    if args.source is None:
        return None
    if args.source.startswith("hub:"):
        spec = {"hub": args.source[len("hub:") :], "split": args.hub_split or "train"}
        if args.hub_config:
            spec["config"] = args.hub_config
        if args.text_column:
            spec["text_column"] = args.text_column
        return spec
    if args.text_column and args.source.lower() not in {"kjv", "builtin:kjv", "default"}:
        return {"files": args.source, "text_column": args.text_column}
    return args.source


def push(output_dir: Path, dataset, repo: str, private: bool) -> None:
    from huggingface_hub import HfApi

    dataset.push_to_hub(repo, private=private)
    api = HfApi()
    for name in ("labels.yaml", "label_stats.json", "calibration_report.json", "calibration_report.md"):
        if (output_dir / name).is_file():
            api.upload_file(
                path_or_fileobj=str(output_dir / name), path_in_repo=name, repo_id=repo, repo_type="dataset"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = load_label_config(args.config)
        if args.source is not None:
            config["source"] = source_from(args)
        if args.split_by is not None:
            config["splits"] = {**(config.get("splits") or {}), "by": args.split_by}
        if args.max_length is not None:
            config["chunking"] = {**(config.get("chunking") or {}), "max_length": args.max_length}
        config = load_label_config(config)  # re-check with the overrides
        out = Path(args.output_dir)
        check_writable_output(out)  # before labelling, which takes minutes with the embedding labeler
        dataset, pipeline, stats = build_labelled_dataset(
            config,
            labelers=args.labelers,
            max_chunks=args.max_chunks,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
        out.mkdir(parents=True, exist_ok=True)
        dataset.save_to_disk(str(out))
        (out / "labels.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        (out / "label_stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
        summary = {"output_dir": str(out), "splits": stats}
        if not args.no_calibration:
            report = calibrate(pipeline, config, args.calibration_set, progress=not args.no_progress)
            report["corpus_label_rates"] = stats
            (out / "calibration_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
            (out / "calibration_report.md").write_text(report_markdown(report), encoding="utf-8")
            test = report["subsets"].get("test") or report["subsets"].get("all")
            summary["calibration_test"] = {
                concept: {name: {k: m[k] for k in ("precision", "recall", "f1", "auc")} for name, m in per.items()}
                for concept, per in test.items()
            }
    except (StructuredConfigError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if args.push_to_hub:
        push(out, dataset, args.push_to_hub, args.private)
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

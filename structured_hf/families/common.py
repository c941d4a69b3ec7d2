"""Pieces several families share: the evaluation command's variant specs."""

from __future__ import annotations

import argparse

from ..interventions import SurgerySpec, parse_spec


def variant_specs(args: argparse.Namespace) -> list:
    """The interventions and surgeries ``scripts/evaluate.py`` was asked for (``--intervention``, ``--ablate``,
    ``--prune``, healed copies with ``--heal_steps``)."""
    specs = [parse_spec(s) for s in args.intervention]
    specs += [SurgerySpec("ablate", concept=c) for c in args.ablate]
    specs += [SurgerySpec("prune", concept=c) for c in args.prune]
    if args.heal_steps:
        specs += [
            SurgerySpec(s.kind, concept=s.concept, axes=s.axes, site=s.site, heal_steps=args.heal_steps)
            for s in list(specs)
            if isinstance(s, SurgerySpec) and not s.heal_steps
        ]
    return specs

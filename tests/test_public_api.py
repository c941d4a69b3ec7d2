"""The public API: what `import structured_hf` and `structured_hf.interventions` name in `__all__`."""

from __future__ import annotations

import importlib

import structured_hf
import structured_hf.interventions as interventions


def test_top_level_names_what_users_call():
    names = set(structured_hf.__all__)
    for family in ("ColorAutoencoder", "ColorTransformer"):
        assert {f"{family}Config", f"{family}Model"} <= names
    assert {
        "StructuredGPTConfig",
        "StructuredGPTForCausalLM",
        "AnchoredTrainer",
        "AnchoredTrainingArguments",
        "ConceptMap",
        "load_recipe",
        "run_experiment",
        "suppress",
        "repel",
        "intervene",
        "prune",
        "ablate",
        "project_out",
    } <= names
    assert len(names) == len(structured_hf.__all__), "a name is listed twice"
    missing = [n for n in structured_hf.__all__ if not hasattr(structured_hf, n)]
    assert not missing, missing
    # The names are the objects of their home modules, not copies.
    assert structured_hf.AnchoredTrainer is importlib.import_module("structured_hf.training.trainer").AnchoredTrainer
    assert structured_hf.run_experiment is importlib.import_module("structured_hf.experiment").run_experiment


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from structured_hf import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(structured_hf.__all__)


def test_interventions_export_public_names_only():
    public = set(interventions.__all__)
    assert {
        "suppress",
        "repel",
        "suppress_axes",
        "intervene",
        "prune",
        "ablate",
        "project_out",
        "InterventionSpec",
        "SurgerySpec",
        "register_surgery_adapter",
    } <= public
    missing = [n for n in interventions.__all__ if not hasattr(interventions, n)]
    assert not missing, missing
    internals = {
        "bind",
        "alignment",
        "default_site",
        "remap_concepts",
        "resolve_axes",
        "surgery_point",
        "spec_from_json",
        "mapper_from_dict",
        "falloff_from_dict",
        "BoundIntervention",
    }
    assert not internals & public, internals & public
    # Internals stay importable, from the package and from their modules.
    from structured_hf.interventions import bind  # noqa: F401
    from structured_hf.interventions.suppression import BoundIntervention, default_site  # noqa: F401

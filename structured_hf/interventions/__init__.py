"""Interventions on concepts: inference-time suppression/repulsion (context managers) and weight surgery.

Inference time (hooks, always removed on exit)::

    with suppress(model, "red"): ...
    with repel(model, "red", mapper=LinearMapper(0.0, -0.3)): ...
    with suppress_axes(model, [0, 1]): ...
    with intervene(model, ["suppress:red", "axes:3"]): ...     # stacked, from specs

Surgery (new models whose config, concept map and weights agree)::

    smaller = prune(model, "red");  same_width = ablate(model, "red");  healed = heal(smaller, retain_colors)
"""

from .falloff import (
    AngularFalloff,
    BezierMapper,
    BoundedPowerFalloff,
    LinearMapper,
    falloff_from_dict,
    mapper_from_dict,
)
from .specs import InterventionSpec, SurgerySpec, default_mapper, load_specs, parse_spec, save_specs, spec_from_json
from .suppression import (
    BoundIntervention,
    alignment,
    bind,
    concept_axes,
    default_site,
    intervene,
    repel,
    repulsion,
    suppress,
    suppress_axes,
    suppression,
    zero_axes,
)
from .residual import TransformerLayout, register_transformer_layout, transformer_surgery_point
from .two_sided import channel_slices, two_sided_cut
from .surgery import (
    SurgeryPoint,
    ablate,
    apply_surgery,
    heal,
    project_out,
    prune,
    register_surgery_adapter,
    remap_concepts,
    resolve_axes,
    surgery_point,
)

# What users call. The rest (bind, alignment, default_site, remap_concepts, resolve_axes, surgery_point, spec and
# mapper parsing helpers, ...) stays importable from here and from its module, but is not part of the public API.
__all__ = [
    # inference time: context managers, their specs, and the pure functions they apply
    "InterventionSpec",
    "intervene",
    "load_specs",
    "parse_spec",
    "repel",
    "repulsion",
    "save_specs",
    "suppress",
    "suppress_axes",
    "suppression",
    "zero_axes",
    "concept_axes",
    # falloffs and mappers (how strongly suppress / repel act away from the concept)
    "AngularFalloff",
    "BezierMapper",
    "BoundedPowerFalloff",
    "LinearMapper",
    # surgery: new models whose config, concept map and weights agree
    "SurgerySpec",
    "ablate",
    "apply_surgery",
    "heal",
    "project_out",
    "prune",
    "two_sided_cut",
    "channel_slices",
    # extension points for new model families
    "SurgeryPoint",
    "TransformerLayout",
    "register_surgery_adapter",
    "register_transformer_layout",
]

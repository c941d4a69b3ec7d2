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

__all__ = [
    "AngularFalloff", "BezierMapper", "BoundIntervention", "BoundedPowerFalloff", "InterventionSpec", "LinearMapper",
    "SurgeryPoint",
    "SurgerySpec", "ablate", "alignment", "apply_surgery", "bind", "concept_axes", "default_mapper", "default_site",
    "falloff_from_dict", "heal", "intervene", "load_specs", "mapper_from_dict", "parse_spec", "project_out", "prune",
    "register_surgery_adapter", "remap_concepts", "repel", "repulsion", "resolve_axes", "save_specs", "spec_from_json",
    "suppress",
    "suppress_axes", "suppression", "surgery_point", "zero_axes",
    "TransformerLayout", "register_transformer_layout", "transformer_surgery_point", "channel_slices", "two_sided_cut",
]

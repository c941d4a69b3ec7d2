"""Models users bring: sites, concept maps, deletion and the post-hoc baseline on pretrained transformers models.

    import structured_hf
    model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M")
    structured_hf.attach_sites(model, concepts=[{"name": "violence", "site": "layers.10.residual_post",
                                                 "axes": [0, 1, 2, 3]}])
    with structured_hf.suppress_axes(model, "violence"): ...
    deleted = structured_hf.ablate(model, "violence")

See ``docs/pretrained.md``.
"""

from .convert import cache_root, cached_gguf_folder, convert_gguf, smollm2_folder, smollm2_gguf
from .loading import check_trainable, load_causal_lm, resolve_pretrained
from .common import num_blocks, unwrap
from .sites import attach_sites, check_concepts, detach_sites, set_concepts
from .surgery import pretrained_surgery_point

__all__ = [
    "attach_sites",
    "cache_root",
    "check_trainable",
    "load_causal_lm",
    "resolve_pretrained",
    "cached_gguf_folder",
    "check_concepts",
    "convert_gguf",
    "detach_sites",
    "num_blocks",
    "pretrained_surgery_point",
    "set_concepts",
    "smollm2_folder",
    "smollm2_gguf",
    "unwrap",
]

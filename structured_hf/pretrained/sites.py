"""Named sites on a loaded transformers model (Llama family, GPT-2, GPT-NeoX): :func:`attach_sites`.

Per block ``i`` (the same names as structured_hf's own transformers, so concept maps, regularizers and interventions
address them the same way)::

    layers.{i}.residual_pre    the stream entering block i
    layers.{i}.residual_mid    between block i's attention and its MLP (not for parallel-residual blocks)
    layers.{i}.residual_post   the stream leaving block i
    layers.{i}.attn.q / .k     the query / key projections' outputs before the head split (and before rotary)

How. Each site is an :class:`~structured_hf.sites.ActivationSite` (parameterless, so the state dict does not
change) held in a ``structured_sites`` ``ModuleDict`` of the module whose input or output it is: the block (pre and
post), the attention module (mid), the q/k projection or the fused qkv projection. Forward hooks on those modules
route the tensor through the site **only while the site itself has hooks** (a capture, an intervention, a gradient
route); otherwise the model's own tensor passes untouched, so the forward pass is bit-identical and costs one dict
check per hooked module. The hooks find their sites through the module they run on, never through a closure, so a
``copy.deepcopy`` of the model (what ``ablate`` returns) works on its own sites.

``residual_mid`` is ``r + a`` (block input plus attention output), which the block computes internally; the hook
computes the same sum (IEEE addition is commutative, so the value is bit-identical). Reading it changes nothing;
rewriting it to ``m'`` makes the attention output ``m' − r``, so the block's ``r + (m' − r)`` equals ``m'`` up to
one float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..concepts import ConceptMap
from ..errors import StructuredConfigError
from ..interventions.surgery import register_surgery_adapter
from ..layouts import Layout, get_path, layout_for
from ..sites import ActivationSite, site_dims
from .common import check_site_name, unwrap
from .surgery import pretrained_surgery_point

_ATTR = "structured_sites"
_MARK = "_structured_hf_site_hook"
_INPUT = "_structured_block_input"


def _active(site: ActivationSite) -> bool:
    return bool(site._forward_hooks or site._forward_pre_hooks)


def _mark(fn):
    setattr(fn, _MARK, True)
    return fn


@_mark
def _block_pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    sites = module.structured_sites
    h = args[0] if args else kwargs["hidden_states"]
    pre = sites["residual_pre"]
    new = pre(h) if _active(pre) else h
    attention = module.__dict__.get("_structured_attention")
    if (
        attention is not None
        and "residual_mid" in attention.structured_sites
        and _active(attention.structured_sites["residual_mid"])
    ):
        object.__setattr__(attention, _INPUT, new)  # what the block adds its attention output to
    if new is h:
        return None
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


@_mark
def _block_post(module: nn.Module, args: tuple, output: Any) -> Any:
    post = module.structured_sites["residual_post"]
    if not _active(post):
        return None
    if isinstance(output, tuple):
        return (post(output[0]), *output[1:])
    return post(output)


@_mark
def _attention_post(module: nn.Module, args: tuple, output: Any) -> Any:
    mid = module.structured_sites["residual_mid"]
    r = module.__dict__.pop(_INPUT, None)
    if r is None or not _active(mid):
        return None
    a = output[0] if isinstance(output, tuple) else output
    m = r + a  # the block's own sum, bit for bit
    new = mid(m)
    if new is m:
        return None
    a = new - r
    return (a, *output[1:]) if isinstance(output, tuple) else a


def _projection_hook(kind: str):
    @_mark
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        site = module.structured_sites[kind]
        return site(output) if _active(site) else None

    return hook


def _fused_hook(layout: Layout, config: Any):
    fused = layout.fused_qkv

    @_mark
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        q_site, k_site = module.structured_sites["attn_q"], module.structured_sites["attn_k"]
        if not (_active(q_site) or _active(k_site)):
            return None
        q, k = fused.split(output, config)
        q2 = q_site(q) if _active(q_site) else q
        k2 = k_site(k) if _active(k_site) else k
        if q2 is q and k2 is k:
            return None
        return fused.merge(output, q2, k2, config)

    return hook


def _remove_hooks(module: nn.Module) -> None:
    for hooks in (module._forward_hooks, module._forward_pre_hooks):
        for key in [k for k, fn in hooks.items() if getattr(fn, _MARK, False)]:
            del hooks[key]
            module._forward_pre_hooks_with_kwargs.pop(key, None)
            module._forward_hooks_with_kwargs.pop(key, None)
    if _ATTR in module._modules:
        del module._modules[_ATTR]
    module.__dict__.pop("_structured_attention", None)
    module.__dict__.pop(_INPUT, None)


def detach_sites(model: nn.Module) -> nn.Module:
    """Remove every site and site hook :func:`attach_sites` added (the model is then exactly as loaded)."""
    for module in unwrap(model).modules():
        _remove_hooks(module)
    return model


def _qk_widths(config: Any) -> tuple[int, int]:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    return heads * head_dim, kv * head_dim


def attach_sites(model: nn.Module, concepts: Iterable[Mapping[str, Any]] | None = None) -> nn.Module:
    """Give a transformers causal LM the named sites of structured_hf; returns the same model.

    The layout comes from ``config.model_type`` (:mod:`structured_hf.layouts`; an unsupported one gets an error
    naming it). Safe to call again (e.g. after wrapping projections with a LoRA adapter: the q/k sites then read
    the adapted projections): old sites and hooks are replaced. ``concepts`` (optional) sets the concept map, which
    is validated against the sites and stored in ``config.concepts`` (so ``save_pretrained`` writes it into
    ``config.json``); without it, a map already in the config (e.g. restored by ``from_pretrained``) is validated.
    After this, ``structured_hf.capture``, ``suppress``, ``intervene`` and ``ablate`` work on the model.
    """
    base = unwrap(model)
    config = base.config
    layout = layout_for(config)
    detach_sites(base)
    blocks = get_path(base, layout.blocks)
    width = config.hidden_size
    q_width, k_width = _qk_widths(config)
    mid = layout.has_mid(config)
    for i, block in enumerate(blocks):
        block.structured_sites = nn.ModuleDict(
            {
                "residual_pre": ActivationSite(f"layers.{i}.residual_pre", width),
                "residual_post": ActivationSite(f"layers.{i}.residual_post", width),
            }
        )
        block.register_forward_pre_hook(_block_pre, with_kwargs=True)
        block.register_forward_hook(_block_post)
        if mid:
            attention = get_path(block, layout.attention)
            attention.structured_sites = nn.ModuleDict(
                {"residual_mid": ActivationSite(f"layers.{i}.residual_mid", width)}
            )
            attention.register_forward_hook(_attention_post)
            # A plain reference (not a child module): the block's pre-hook hands the attention its input.
            object.__setattr__(block, "_structured_attention", attention)
        if layout.fused_qkv is not None:
            fused = get_path(block, layout.fused_qkv.proj.path)
            fused.structured_sites = nn.ModuleDict(
                {
                    "attn_q": ActivationSite(f"layers.{i}.attn.q", width),
                    "attn_k": ActivationSite(f"layers.{i}.attn.k", width),
                }
            )
            fused.register_forward_hook(_fused_hook(layout, config))
        else:
            for kind, proj, w in (("attn_q", layout.query, q_width), ("attn_k", layout.key, k_width)):
                module = get_path(block, proj.path)
                module.structured_sites = nn.ModuleDict(
                    {kind: ActivationSite(f"layers.{i}.{kind.replace('_', '.')}", w)}
                )
                module.register_forward_hook(_projection_hook(kind))
    register_surgery_adapter(type(base), pretrained_surgery_point)
    if getattr(config, "concepts", None) is None:
        config.concepts = []  # surgery and interventions read config.concepts
    if concepts is not None:
        set_concepts(base, concepts)
    else:
        check_concepts(base, getattr(config, "concepts", None))
    return model


def check_concepts(model: nn.Module, concepts: Any, field: str = "concepts") -> ConceptMap:
    """Parse and validate a concept map against the model's sites (block index and width named in errors)."""
    parsed = ConceptMap.parse(concepts, field)
    for i, concept in enumerate(parsed):
        check_site_name(model, concept.site, f"{field}[{i}] ('{concept.name}').site")
    dims = site_dims(model)
    for i, concept in enumerate(parsed):
        width = dims.get(concept.site)
        size = len(concept.direction) if concept.direction is not None else None
        if width is not None and size is not None and size != width:
            raise StructuredConfigError(
                f"{field}[{i}] ('{concept.name}').direction",
                f"has width {size} but site '{concept.site}' is {width} wide (the model's "
                f"hidden size is {unwrap(model).config.hidden_size})",
            )
    return parsed.validate(dims)


def set_concepts(model: nn.Module, concepts: Iterable[Mapping[str, Any]]) -> ConceptMap:
    """Validate ``concepts`` against the model's sites and store them in ``config.concepts`` (saved in
    ``config.json`` by ``save_pretrained``)."""
    base = unwrap(model)
    parsed = check_concepts(base, list(concepts))
    base.config.concepts = parsed.to_list()
    return parsed


__all__ = ["attach_sites", "check_concepts", "detach_sites", "set_concepts"]

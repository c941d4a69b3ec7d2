"""Two-sided deletion: zero a concept's axes in their *readers* at every depth, not only in their writers.

:func:`~structured_hf.interventions.ablate` on a transformer's residual stream zeroes every writer of the concept's
axes up to the anchored site (and the readers inside that span), so the axes are identically zero there. The blocks
*after* the site, the final norm and the output head keep their weights on those axes: they still "know" what the
channel meant. Under a fine-tuning attack the gradient of the forget loss flows from those intact readers back into
the emptied writer rows, and the channel can reopen. The two-sided cut also clears the readers downstream of the site
(every LayerNorm gain/bias entry on the axes and every input column of the linear maps behind them, the final norm and
the head), so an attacker has to rebuild both ends of the channel.

For a site with no depth behind it (the color autoencoder's bottleneck, read only by the decoder's first layer)
``ablate`` already zeroes the producer's rows and the consumer's columns: the two-sided cut is ``ablate`` there.

:func:`channel_slices` lists the ``(parameter, dim, index)`` slices of a channel's writers and/or readers: the cut
zeroes them, tests check them, and a relearning attack can freeze them
(:func:`~structured_hf.evaluation.relearning.attack_loop`'s ``grad_mask``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import StructuredConfigError
from ..sites import site_dims
from .surgery import _new_config, _record, ablate, resolve_axes, surgery_point

logger = logging.getLogger(__name__)

_RESIDUAL_POST = re.compile(r"^layers\.(\d+)\.residual_post$")
SIDES = ("writers", "readers", "both")


def deepest_site(model: nn.Module, site: str) -> str:
    """The last residual site of a transformer (``layers.{n-1}.residual_post``) when ``site`` is one of its residual
    sites; ``site`` itself otherwise. Its surgery point lists every writer and reader of the stream at every depth."""
    if not site.startswith("layers.") or ".attn." in site:
        return site
    depths = [int(m.group(1)) for name in site_dims(model) if (m := _RESIDUAL_POST.match(name))]
    return f"layers.{max(depths)}.residual_post" if depths else site


def channel_slices(
    model: nn.Module,
    concept: str | None = None,
    *,
    axes: Sequence[int] | None = None,
    site: str | None = None,
    side: str = "both",
    depth: str = "site",
) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """The ``(parameter, dim, axis index)`` slices that write and/or read a concept's axes.

    Args:
        model: the model (its own parameters are returned, so callers can zero or freeze them).
        concept, axes, site: the channel, as for :func:`~structured_hf.interventions.ablate`.
        side: ``"writers"``, ``"readers"`` or ``"both"``.
        depth: ``"site"``: writers up to the site (what ``ablate`` zeroes); ``"full"``: writers at every depth of
            the stream. Readers are always taken at every depth (``ablate`` already clears those inside its span).
    """
    if side not in SIDES:
        raise StructuredConfigError("side", f"expected one of {list(SIDES)}, got {side!r}")
    if depth not in ("site", "full"):
        raise StructuredConfigError("depth", f"expected 'site' or 'full', got {depth!r}")
    site, axes = resolve_axes(model, concept, axes, site)
    idx = torch.tensor(axes, dtype=torch.long)
    near, far = surgery_point(model, site), surgery_point(model, deepest_site(model, site))
    out: list[tuple[torch.Tensor, int, torch.Tensor]] = []
    if side in ("writers", "both"):
        out += [(t, d, idx) for t, d in (near if depth == "site" else far).write_slices()]
    if side in ("readers", "both"):
        out += [(t, d, idx) for t, d in list(near.axis_reads) + list(far.axis_reads)]
        out += [(layer.weight, 1, idx) for layer in list(near.consumers) + list(far.consumers)]
    seen: set[tuple[int, int]] = set()
    unique = []
    for t, d, i in out:  # the near and far points share the readers inside the span
        if (id(t), d) not in seen:
            seen.add((id(t), d))
            unique.append((t, d, i))
    return unique


def two_sided_cut(
    model: nn.Module,
    concept: str | None = None,
    *,
    axes: Sequence[int] | None = None,
    site: str | None = None,
    later_writers: bool = False,
) -> nn.Module:
    """A copy of ``model`` with the concept's axes zeroed in its writers up to the site (``ablate``) *and* in every
    reader at every depth; with ``later_writers`` also in the writers after the site, so the axes are zero throughout
    the stream. The concept map drops the concept as ``ablate`` does; ``config.surgery`` records both steps."""
    site, axes = resolve_axes(model, concept, axes, site)
    new = ablate(model, concept, axes=None if concept is not None else axes, site=site)
    slices = channel_slices(new, axes=axes, site=site, side="both", depth="full" if later_writers else "site")
    with torch.no_grad():
        for tensor, dim, idx in slices:
            tensor.index_fill_(dim, idx.to(tensor.device), 0.0)
    new.config = _new_config(
        new,
        surgery=_record(
            new,
            {
                "op": "two_sided_cut",
                "site": site,
                "axes": list(axes),
                "concept": concept,
                "later_writers": later_writers,
            },
        ),
    )
    logger.info(
        "two-sided cut of axes %s at '%s' (concept %s): %d slices zeroed", list(axes), site, concept, len(slices)
    )
    return new


__all__ = ["SIDES", "channel_slices", "deepest_site", "two_sided_cut"]

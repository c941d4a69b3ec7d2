"""Full-depth isolation: the parameter entries dedicated to a concept at every depth, and their deletion.

Anchoring plus ``ablate`` empties a concept's axes up to the anchored site, but every other weight of the network
learned the concept's data too, so a few fine-tuning steps bring it back (docs/robustness.md). Full-depth isolation
gives the concept its own units at every depth and lets only the concept's samples train them
(:mod:`structured_hf.training.isolation`); deleting the concept then zeroes every dedicated entry, and what is left
is a network whose shared weights never saw a labelled sample.

The *dedicated units* of a concept are

- its axes in the activation space of its site, at every depth that space spans (for a transformer's residual
  stream: the embeddings, every block, the final norm and the head, tied embeddings included; for the color
  autoencoder's bottleneck: the encoder's projection and the decoder's first layer), and
- the last ``hidden_units`` neurons of every hidden layer (a transformer block's MLP; each hidden layer of the color
  autoencoder's encoder and decoder).

The *dedicated entries* are every parameter entry that writes or reads a dedicated unit: the rows (and bias
entries) producing it, the columns consuming it, and the LayerNorm gain/bias entries on the axes. :func:`dedicated_masks`
returns them as boolean masks, one per parameter tensor (a tied tensor appears once, with the union of its uses);
:func:`delete_isolated` zeroes them, which makes every dedicated unit identically zero and removes its every reader.

A model class declares its hidden layers with :func:`register_hidden_layers` (pairs of producer and consumer Linear);
the residual/bottleneck side comes from the surgery adapters (:func:`~structured_hf.interventions.channel_slices`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import StructuredConfigError
from ..models.color_autoencoder import ColorAutoencoderModel
from ..models.color_transformer import ColorTransformerModel
from ..models.structured_gpt import StructuredGPTForCausalLM
from .surgery import _new_config, _record, resolve_axes
from .two_sided import channel_slices

logger = logging.getLogger(__name__)

HiddenLayers = Callable[[nn.Module], list[tuple[nn.Linear, nn.Linear]]]
_HIDDEN: dict[type, HiddenLayers] = {}
# The model config attribute where training records a model's isolation (so deletion needs no recipe).
CONFIG_KEY = "isolation"


@dataclass(frozen=True)
class Isolation:
    """A concept's dedicated units: the concept (its axes at its site) and the number of hidden neurons per layer."""

    concept: str
    hidden_units: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "hidden_units": self.hidden_units}


def register_hidden_layers(model_cls: type, layers: HiddenLayers) -> None:
    """Declare ``model_cls``'s hidden layers: ``layers(model)`` lists ``(producer, consumer)`` Linear pairs whose
    producer's output rows are hidden neurons read by the consumer's input columns."""
    _HIDDEN[model_cls] = layers


def hidden_layers(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    for cls in type(model).__mro__:
        if cls in _HIDDEN:
            return _HIDDEN[cls](model)
    raise StructuredConfigError(
        "isolation.hidden_units",
        f"{type(model).__name__} declares no hidden layers (register_hidden_layers); use hidden_units: 0",
    )


def _transformer_hidden(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    return [(block.mlp.up, block.mlp.down) for block in model.layers]


def _chain_pairs(chain: Sequence[nn.Linear]) -> list[tuple[nn.Linear, nn.Linear]]:
    return list(zip(chain[:-1], chain[1:]))


def _autoencoder_hidden(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    # encoder: RGB -> [Linear -> act] x n -> proj (bottleneck); decoder: proj -> act -> [Linear -> act] x n -> out
    enc = list(model.encoder.mlp.layers) + [model.encoder.proj]
    dec = [model.decoder.proj] + list(model.decoder.mlp.layers) + [model.decoder.out]
    return _chain_pairs(enc) + _chain_pairs(dec)


register_hidden_layers(ColorTransformerModel, _transformer_hidden)
register_hidden_layers(StructuredGPTForCausalLM, _transformer_hidden)
register_hidden_layers(ColorAutoencoderModel, _autoencoder_hidden)


def model_isolation(model: nn.Module, isolation: Isolation | Mapping[str, Any] | None = None) -> Isolation:
    """``isolation`` as an :class:`Isolation`, or the one the model's config records (``config.isolation``)."""
    if isolation is None:
        isolation = getattr(model.config, CONFIG_KEY, None)
        if not isolation:
            raise StructuredConfigError(
                "isolation",
                "the model records no isolation (it was not trained with an "
                "`isolation:` recipe section); pass the concept and hidden_units",
            )
    if isinstance(isolation, Mapping):
        isolation = Isolation(str(isolation["concept"]), int(isolation.get("hidden_units", 0)))
    return isolation


def recorded_isolation(model: nn.Module) -> Isolation | None:
    """The isolation the model's config records (set by training with an ``isolation:`` section), else ``None``."""
    recorded = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    return model_isolation(model, recorded) if recorded else None


def dedicated_slices(
    model: nn.Module, isolation: Isolation | Mapping[str, Any] | None = None
) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """Every ``(parameter, dim, indices)`` slice that writes or reads one of the concept's dedicated units."""
    iso = model_isolation(model, isolation)
    resolve_axes(model, iso.concept)  # a concept the model lacks fails here, naming it
    out = list(channel_slices(model, iso.concept, side="both", depth="full"))
    if iso.hidden_units:
        for producer, consumer in hidden_layers(model):
            width = producer.out_features
            if iso.hidden_units >= width:
                raise StructuredConfigError(
                    "isolation.hidden_units",
                    f"{iso.hidden_units} dedicated neurons leave none shared in a hidden layer of width {width}",
                )
            idx = torch.arange(width - iso.hidden_units, width)
            out += [(producer.weight, 0, idx), (consumer.weight, 1, idx)]
            if producer.bias is not None:
                out.append((producer.bias, 0, idx))
    return out


def dedicated_masks(
    model: nn.Module, isolation: Isolation | Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """``{parameter name: boolean mask}`` of the dedicated entries, for the parameters that have any (names as
    ``named_parameters()`` gives them: a tied tensor under its first name, with the union of its uses)."""
    by_id: dict[int, torch.Tensor] = {}
    for tensor, dim, idx in dedicated_slices(model, isolation):
        mask = by_id.setdefault(id(tensor), torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device))
        mask.index_fill_(dim, idx.to(tensor.device), True)
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def dedicated_outputs(
    model: nn.Module, isolation: Isolation | Mapping[str, Any] | None = None
) -> list[tuple[nn.Module, torch.Tensor]]:
    """``(module, output indices)`` of every Linear or Embedding that *writes* a dedicated unit (a Linear's rows, an
    embedding table's columns): the activations an ordinary sample should leave at zero. Writers that are bare
    parameters (e.g. a learned position vector added to the stream) are not listed."""
    owners = {}
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            owners.setdefault(id(module.weight), module)
    out = []
    for tensor, dim, idx in dedicated_slices(model, isolation):
        module = owners.get(id(tensor))
        if (isinstance(module, nn.Linear) and dim == 0) or (isinstance(module, nn.Embedding) and dim == 1):
            out.append((module, idx))
    return out


def delete_isolated(model: nn.Module, isolation: Isolation | Mapping[str, Any] | None = None) -> nn.Module:
    """A copy of ``model`` with every dedicated entry zeroed: writers, readers, norms and hidden neurons of the
    concept's units at every depth. ``config.surgery`` records it; the input model is not modified."""
    iso = model_isolation(model, isolation)
    new = copy.deepcopy(model)
    masks = dedicated_masks(new, iso)
    params = dict(new.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].masked_fill_(mask, 0.0)
    new.config = _new_config(new, surgery=_record(new, {"op": "delete_isolated", **iso.to_dict()}))
    logger.info(
        "deleted isolated concept %s: %d entries in %d tensors zeroed",
        iso.concept,
        int(sum(int(m.sum()) for m in masks.values())),
        len(masks),
    )
    return new


__all__ = [
    "recorded_isolation",
    "CONFIG_KEY",
    "Isolation",
    "dedicated_masks",
    "dedicated_outputs",
    "dedicated_slices",
    "delete_isolated",
    "hidden_layers",
    "model_isolation",
    "register_hidden_layers",
]

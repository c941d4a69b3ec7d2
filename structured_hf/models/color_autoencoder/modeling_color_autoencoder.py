"""The color autoencoder of M1/M2 (docs/m1-experiments.md, docs/m2-control.md).

    colors (B, 3) -> encoder MLP -> (B, K) [site "encoder"] -> L2 norm -> [site "bottleneck"] -> decoder MLP -> (B, 3)

Submodules have names, not `nn.Sequential` positions: `encoder.proj` produces the latent and `decoder.proj`
consumes it, which is what surgery (ablation/pruning of bottleneck axes) addresses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...errors import StructuredConfigError
from ...sites import ActivationSite, zero_axes
from ..base import StructuredPreTrainedModel
from .configuration_color_autoencoder import ColorAutoencoderConfig

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class DeletionReadout:
    """The model's output from a site's activations, with the site edited (calling it: axes deleted, or an
    intervention's rewrite) and intact (``intact``).

    A loss on the edited path decides what deletion (or the intervention) will do; the intact path is what the same
    sample decodes to today, the target of a "deletion leaves this sample alone" term.
    """

    deleted: Callable[[torch.Tensor], torch.Tensor]
    intact: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.deleted(x)


@dataclass
class ColorAutoencoderOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): reconstruction MSE, when `labels` are given.
        reconstruction (`torch.FloatTensor` of shape `(B, 3)`): predicted RGB.
        latents (`torch.FloatTensor` of shape `(B, K)`): the bottleneck activation (after normalization).
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None


class ColorMLP(nn.Module):
    """`in_dim -> [Linear -> act] x num_layers -> Linear(proj) -> out_dim`, used on both sides of the bottleneck.

    The encoder's `layers` start from RGB; the decoder's `proj` reads the latent first (so its weight columns are the
    latent's consumers), then the nonlinear layers, then `out` maps to RGB.
    """

    def __init__(self, dims: list[int], activation: str):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.act(layer(x))
        return x


class ColorEncoder(nn.Module):
    def __init__(self, config: ColorAutoencoderConfig):
        super().__init__()
        h = config.hidden_dim
        self.mlp = ColorMLP([3] + [h] * config.num_layers, config.activation)
        self.proj = nn.Linear(h, config.bottleneck_dim)

    def forward(self, colors: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mlp(colors))  # (B, K)


class ColorDecoder(nn.Module):
    def __init__(self, config: ColorAutoencoderConfig):
        super().__init__()
        h = config.hidden_dim
        self.proj = nn.Linear(config.bottleneck_dim, h)
        self.act = _ACTIVATIONS[config.activation]()
        self.mlp = ColorMLP([h] * config.num_layers, config.activation)
        self.out = nn.Linear(h, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(self.act(self.proj(z))))  # (B, 3)


def pruned_readout(
    decode: Callable[[torch.Tensor], torch.Tensor], normalize_bottleneck: bool, axes: tuple[int, ...]
) -> DeletionReadout:
    """Decode a site's activation with ``axes`` zeroed (calling it) and intact (``intact``), renormalized on a
    normalized bottleneck, as the pruned model's forward pass does: the encoder site is before the norm, and at the
    bottleneck site (already unit-norm) the renormalization is what pruning adds. Shared by the model and the batched
    seed model, so both read a deletion the same way."""

    def finish(x: torch.Tensor) -> torch.Tensor:
        return decode(F.normalize(x, dim=-1) if normalize_bottleneck else x)

    return DeletionReadout(deleted=lambda x: finish(zero_axes(x, axes)), intact=finish)


def rewritten_readout(
    decode: Callable[[torch.Tensor], torch.Tensor],
    normalize_bottleneck: bool,
    site: str,
    rewrite: Callable[[torch.Tensor], torch.Tensor],
) -> DeletionReadout:
    """Decode a site's activation with ``rewrite`` applied (calling it) and without (``intact``): renormalized only
    after the ``encoder`` site, as the forward pass does (the ``bottleneck`` site is already past the norm). Shared
    by the model and the batched seed model, so both read an intervention the same way."""

    def finish(x: torch.Tensor) -> torch.Tensor:
        if site == "encoder" and normalize_bottleneck:
            x = F.normalize(x, dim=-1)
        return decode(x)

    return DeletionReadout(deleted=lambda x: finish(rewrite(x)), intact=finish)


class ColorAutoencoderPreTrainedModel(StructuredPreTrainedModel):
    config_class = ColorAutoencoderConfig
    base_model_prefix = "color_autoencoder"
    main_input_name = "colors"
    # The trainer computes its own, window-normalized loss; Trainer must not pass `num_items_in_batch`.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default Linear init (Kaiming-uniform, a=sqrt(5)), not HF's N(0, 0.02): the reference tiny MLPs
        # were trained from it, and 0.02-std weights make a 16-wide GELU stack start nearly constant.
        # `transformers.initialization` functions skip parameters already loaded by `from_pretrained`.
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.in_features) if module.in_features > 0 else 0.0
                init.uniform_(module.bias, -bound, bound)


class ColorAutoencoderModel(ColorAutoencoderPreTrainedModel):
    """RGB autoencoder with a (optionally L2-normalized) K-dim bottleneck and two named sites.

    Sites: `encoder` (pre-normalization latent) and `bottleneck` (post-normalization; the one concepts usually live
    in). Both have width `config.bottleneck_dim`.
    """

    def __init__(self, config: ColorAutoencoderConfig):
        super().__init__(config)
        self.encoder = ColorEncoder(config)
        self.encoder_site = ActivationSite("encoder", config.bottleneck_dim)
        self.bottleneck = ActivationSite("bottleneck", config.bottleneck_dim)
        self.decoder = ColorDecoder(config)
        self.post_init()

    def encode(self, colors: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3) -> latent (B, K) at the `bottleneck` site (interventions on the site apply)."""
        z = self.encoder_site(self.encoder(colors))
        if self.config.normalize_bottleneck:
            z = F.normalize(z, dim=-1)
        return self.bottleneck(z)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent (B, K) -> RGB (B, 3), through the configured output head."""
        out = self.decoder(latents)
        if self.config.output_head == "sigmoid":
            return torch.sigmoid(out)
        # Linear while training (no saturating gradient at the cube faces); valid colors at inference.
        return out if self.training else out.clamp(0.0, 1.0)

    def deletion_readout(self, site: str, axes: tuple[int, ...]) -> DeletionReadout:
        """What the model outputs from activations ``x`` at ``site`` once ``axes`` are deleted (and without deletion).

        The deleted path is exactly the forward pass of ``prune(model, axes=axes)`` (or ``ablate``) continued from the
        full model's activation: pruning drops the axes from the encoder's output, so on a normalized bottleneck the
        rest is renormalized, ``normalize(x ⊙ keep)`` (x is ``z/‖z‖``, so this equals ``normalize(z ⊙ keep)``). A
        training loss on it (``deletion_target``) shapes what deletion will do before anything is deleted.
        """
        if site not in ("encoder", "bottleneck"):
            raise StructuredConfigError(
                "site", f"deletion_readout reads the 'encoder' or 'bottleneck' site, got {site!r}"
            )
        width = self.config.bottleneck_dim
        if not axes or any(not 0 <= a < width for a in axes):
            raise StructuredConfigError("axes", f"expected axes in [0, {width}), got {list(axes)}")
        return pruned_readout(self.decode, self.config.normalize_bottleneck, tuple(axes))

    def intervened_readout(self, site: str, rewrite: Callable[[torch.Tensor], torch.Tensor]) -> DeletionReadout:
        """What the model outputs from activations ``x`` at ``site`` when an intervention rewrites the site (calling
        it), and without the rewrite (``intact``).

        Exactly the forward pass with ``rewrite`` hooked on the site, continued from the full model's activation: at
        the ``bottleneck`` site (after the norm) the rewritten activation is decoded as it is, not renormalized; at
        the ``encoder`` site the norm follows. A training loss on it (``suppression_target``, with the rewrite of
        ``suppress:CONCEPT``) shapes what the intervention will do before anyone intervenes.
        """
        if site not in ("encoder", "bottleneck"):
            raise StructuredConfigError(
                "site", f"intervened_readout reads the 'encoder' or 'bottleneck' site, got {site!r}"
            )

        return rewritten_readout(self.decode, self.config.normalize_bottleneck, site, rewrite)

    def forward(self, colors: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> ColorAutoencoderOutput:
        """
        Args:
            colors (`torch.FloatTensor` of shape `(B, 3)`): RGB in [0, 1].
            labels (`torch.FloatTensor` of shape `(B, 3)`, *optional*): target RGB; when given, `loss` is the MSE.
        """
        if colors.ndim != 2 or colors.shape[-1] != 3:
            raise StructuredConfigError("colors", f"expected shape (batch, 3), got {tuple(colors.shape)}")
        latents = self.encode(colors)
        reconstruction = self.decode(latents)
        loss = F.mse_loss(reconstruction, labels) if labels is not None else None
        return ColorAutoencoderOutput(loss=loss, reconstruction=reconstruction, latents=latents)


__all__ = ["ColorAutoencoderModel", "ColorAutoencoderPreTrainedModel", "ColorAutoencoderOutput"]

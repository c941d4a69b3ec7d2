"""Named activation sites: the one address space shared by losses, interventions and evaluation.

A site is an identity module placed in a model's forward pass (like a hook point). Reading a site means
capturing its output with a forward hook; rewriting a site means a forward hook that returns a new tensor.
Hooks live only inside the context managers below and are removed in ``finally``, so an exception inside the
block never leaves a hook behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .errors import StructuredConfigError


class ActivationSite(nn.Module):
    """Identity module marking a named activation of width ``width`` (the size of its last dimension).

    Args:
        name: stable public name, e.g. ``"bottleneck"`` or ``"layers.2.residual"``. It is the address used by
            concept maps and interventions, independent of the module path.
        width: size of the activation's last dimension, used to validate concept directions and axes.
    """

    def __init__(self, name: str, width: int):
        super().__init__()
        self.site_name = name
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"name={self.site_name!r}, width={self.width}"


def get_sites(model: nn.Module) -> dict[str, ActivationSite]:
    """All sites of ``model`` by public name (works through wrappers such as DDP, which keep the same modules)."""
    sites: dict[str, ActivationSite] = {}
    for module in model.modules():
        if isinstance(module, ActivationSite):
            if module.site_name in sites:
                raise StructuredConfigError("sites", f"two sites share the name '{module.site_name}'")
            sites[module.site_name] = module
    return sites


def site_dims(model: nn.Module) -> dict[str, int]:
    """``{site name: width}`` for validating concept maps against a model."""
    return {name: site.width for name, site in get_sites(model).items()}


def resolve_sites(model: nn.Module, names: Iterable[str]) -> dict[str, ActivationSite]:
    """Look up sites by name, raising an error that lists the model's sites for an unknown name."""
    sites = get_sites(model)
    out = {}
    for name in names:
        if name not in sites:
            hint = (
                ""
                if sites
                else (" (a pretrained transformers model gets its sites from structured_hf.attach_sites(model))")
            )
            raise StructuredConfigError("site", f"unknown site '{name}'; the model has {sorted(sites)}{hint}")
        out[name] = sites[name]
    return out


@contextmanager
def capture(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named sites during forward passes inside the block.

    The yielded dict maps site name to the latest activation (with its autograd graph, so losses on it train the
    model).

    Example::

        with capture(model, ["bottleneck"]) as acts:
            model(colors=x)
        z = acts["bottleneck"]  # (B, K)
    """
    with capture_modules(resolve_sites(model, names)) as store:
        yield store


@contextmanager
def capture_modules(sites: Mapping[str, ActivationSite]) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`capture` on already-resolved sites (the trainer resolves once, then captures every step)."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, site in sites.items():
            handles.append(site.register_forward_hook(_make_recorder(store, name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _make_recorder(store: dict[str, torch.Tensor], name: str) -> Callable:
    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        store[name] = output

    return record


@contextmanager
def rewrite(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the output of site ``name`` by ``fn(output)`` for forward passes inside the block."""
    site = resolve_sites(model, [name])[name]

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return fn(output)

    handle = site.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def zero_axes(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """``x`` with the given axes of its last dimension set to 0 (other entries bit-identical)."""
    mask = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
    mask[list(axes)] = False
    return torch.where(mask, x, torch.zeros_like(x))


@torch.no_grad()
def site_activations(model: nn.Module, colors: np.ndarray, site: str) -> np.ndarray:
    """Eval-mode activations of ``site`` for RGB colors (N, 3) -> (N, width), for models called as
    ``model(colors=...)`` (the color autoencoder)."""
    was_training = model.training
    model.eval()
    try:
        with capture(model, [site]) as acts:
            model(colors=torch.as_tensor(colors, dtype=torch.float32, device=model.device))
    finally:
        model.train(was_training)
    return acts[site].reshape(len(colors), -1).cpu().numpy()

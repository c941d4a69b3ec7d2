"""Model families, one module each; importing this package registers them all (:mod:`structured_hf.registry`).

A new family is a folder under ``models/`` (its config and modeling code) plus one module here that calls
:func:`~structured_hf.registry.register_family` once, and one import line below.
"""

from . import color_autoencoder, color_transformer, pretrained, structured_gpt  # noqa: F401  (registration)
from .common import variant_specs

__all__ = ["variant_specs"]

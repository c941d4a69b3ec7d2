"""Anchoring regularizers (pure per-sample functions) and the shared selective reduction."""

from .reduction import selective_mean, selective_sum
from .regularizers import (
    LOSSES,
    LossInfo,
    anchor,
    angular_anchor,
    angular_subspace,
    angular_repulsion,
    anti_anchor,
    anti_subspace,
    cone_anchor,
    deletion_target,
    euclidean_repulsion,
    subspace,
    unitarity,
)

__all__ = [
    "LOSSES",
    "LossInfo",
    "anchor",
    "angular_anchor",
    "angular_subspace",
    "angular_repulsion",
    "anti_anchor",
    "anti_subspace",
    "cone_anchor",
    "deletion_target",
    "euclidean_repulsion",
    "selective_mean",
    "selective_sum",
    "subspace",
    "unitarity",
]

"""Anchoring regularizers (pure per-sample functions) and the shared selective reduction."""

from .reduction import selective_mean, selective_sum
from .regularizers import (
    LOSSES,
    LossInfo,
    Param,
    anchor,
    check_loss_params,
    angular_anchor,
    angular_subspace,
    angular_repulsion,
    anti_anchor,
    anti_subspace,
    cone_anchor,
    deletion_target,
    euclidean_repulsion,
    subspace,
    suppression_target,
    unitarity,
)

__all__ = [
    "LOSSES",
    "LossInfo",
    "Param",
    "check_loss_params",
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
    "suppression_target",
    "unitarity",
]

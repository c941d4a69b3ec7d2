"""Regularizers against values worked out by hand, and the selective reduction."""

from __future__ import annotations

import math

import pytest
import torch

from structured_hf import ConceptSpec
from structured_hf.interventions.suppression import concept_suppressor
from structured_hf.losses import (
    LOSSES,
    anchor,
    angular_anchor,
    angular_repulsion,
    angular_subspace,
    anti_anchor,
    anti_subspace,
    cone_anchor,
    deletion_target,
    suppression_target,
    euclidean_repulsion,
    selective_mean,
    selective_sum,
    subspace,
    unitarity,
)

# Two rows worked through by hand below: ‖row0‖ = 5, ‖row1‖ = 1.
X = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
RED = ConceptSpec("red", "bottleneck", direction=(1.0, 0.0, 0.0, 0.0))
RED_LONG = ConceptSpec("red2", "bottleneck", direction=(2.0, 0.0, 0.0, 0.0))  # same angle, different point
HUE = ConceptSpec("hue", "bottleneck", axes=(0, 1))
AXIS0 = ConceptSpec("axis0", "bottleneck", axes=(0,))
AXES02 = ConceptSpec("axes02", "bottleneck", axes=(0, 2))


def _close(actual: torch.Tensor, expected: list[float], rel: float = 1e-6, abs_: float = 1e-7) -> None:
    assert actual.shape == (len(expected),)
    assert actual.tolist() == pytest.approx(expected, rel=rel, abs=abs_)


# ---- anchors ------------------------------------------------------------------------------------------------------
def test_anchor_is_squared_distance_to_the_point_as_written():
    # row0: (3-1)² + 4² = 20; row1: (0-1)² + 1² = 2
    _close(anchor(X, RED), [20.0, 2.0])
    # the euclidean anchor uses the direction unnormalised: row0: 1² + 4² = 17; row1: 2² + 1² = 5
    _close(anchor(X, RED_LONG), [17.0, 5.0])


def test_angular_anchor_is_one_minus_cosine_independent_of_lengths():
    # cos(row0, red) = 3/5, cos(row1, red) = 0
    _close(angular_anchor(X, RED), [0.4, 1.0])
    _close(angular_anchor(X, RED_LONG), [0.4, 1.0])
    _close(angular_anchor(10.0 * X, RED), [0.4, 1.0])


def test_angular_anchor_is_zero_on_the_concept_and_two_opposite():
    x = torch.tensor([[2.0, 0.0, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]])
    _close(angular_anchor(x, RED), [0.0, 2.0])


def test_anti_anchor_hemisphere_and_full_sphere():
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [-3.0, 4.0, 0.0, 0.0]])  # cos = 0.6, 0, -0.6
    _close(anti_anchor(x, RED), [0.6, 0.0, 0.0])
    _close(anti_anchor(x, RED, full_sphere=True), [0.8, 0.5, 0.2])


def test_cone_anchor_is_squared_cosine_gap_on_either_side():
    # cos = 0.6, 0, -0.6, -0.6 (the last two mirror images): the cone at cos -0.5 does not prefer a side
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [-3.0, 4.0, 0.0, 0.0], [-3.0, -4.0, 0.0, 0.0]])
    _close(cone_anchor(x, RED, cosine=-0.5), [1.21, 0.25, 0.01, 0.01])
    _close(cone_anchor(10.0 * x, RED_LONG, cosine=-0.5), [1.21, 0.25, 0.01, 0.01])
    _close(cone_anchor(x, RED), [0.36, 0.0, 0.36, 0.36])  # default: the equator
    on_cone = torch.tensor([[-0.5, math.sqrt(0.75), 0.0, 0.0]], requires_grad=True)
    cone_anchor(on_cone, RED, cosine=-0.5).sum().backward()
    assert on_cone.grad.abs().max() < 1e-6
    with pytest.raises(ValueError, match="cosine"):
        cone_anchor(x, RED, cosine=1.5)
    assert LOSSES["cone_anchor"].concept_kind == "direction"


def test_anti_anchor_hemisphere_has_no_gradient_on_the_far_side():
    x = torch.tensor([[-3.0, 4.0, 0.0, 0.0]], requires_grad=True)
    anti_anchor(x, RED).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


# ---- norms and subspaces ------------------------------------------------------------------------------------------
def test_unitarity():
    # (5 - 1)² = 16, (1 - 1)² = 0
    _close(unitarity(X), [16.0, 0.0])
    _close(unitarity(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])), [1.0, 4.0])


def test_subspace_penalises_the_axes_outside_the_kept_set():
    # kept {0, 1}: row0 has nothing outside -> 0; row1 has 1² on axis 2 -> 1
    _close(subspace(X, HUE), [0.0, 1.0])
    # kept {0}: row0 has 4² on axis 1 -> 16; row1 -> 1
    _close(subspace(X, AXIS0), [16.0, 1.0])


def test_anti_subspace_penalises_the_reserved_axes():
    # reserved {0}: 3² = 9 and 0
    _close(anti_subspace(X, AXIS0), [9.0, 0.0])
    # reserved {0, 2}: 9 and 1
    _close(anti_subspace(X, AXES02), [9.0, 1.0])


def test_subspace_and_anti_subspace_split_the_squared_norm():
    torch.manual_seed(0)
    x = torch.randn(7, 4)
    total = x.square().sum(-1)
    torch.testing.assert_close(subspace(x, HUE) + anti_subspace(x, HUE), total)


# ---- repulsion ----------------------------------------------------------------------------------------------------
# Three unit vectors in 2-D at 0°, 60° and 180°: cos(0,1) = 0.5, cos(0,2) = -1, cos(1,2) = -0.5.
WHEEL = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0], [-1.0, 0.0]])


def test_angular_repulsion_with_power_one_and_two():
    # (1 + cos)/2 per pair: (0,1) 0.75, (0,2) 0, (1,2) 0.25. Self-pairs (value 1) are excluded.
    _close(angular_repulsion(WHEEL, power=1.0), [0.75, 1.0, 0.25], rel=1e-5)
    # squared: 0.5625, 0, 0.0625
    _close(angular_repulsion(WHEEL, power=2.0), [0.5625, 0.625, 0.0625], rel=1e-5)


def test_angular_repulsion_default_power_is_100():
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # orthogonal: (1 + 0)/2 = 0.5, 0.5^100 = 7.888609052210118e-31
    _close(angular_repulsion(x), [7.888609052210118e-31, 7.888609052210118e-31], rel=1e-4, abs_=0.0)
    assert LOSSES["angular_repulsion"].batch_coupled


def test_angular_repulsion_excludes_exact_duplicates_and_self():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # row0 and row1 are duplicates (their pair would add 1): each only sees row2 (0.5); row2 sees both (1.0)
    _close(angular_repulsion(x, power=1.0), [0.5, 0.5, 1.0])
    # a single sample (or all duplicates) has nobody to repel
    _close(angular_repulsion(torch.tensor([[1.0, 0.0]]), power=1.0), [0.0])
    _close(angular_repulsion(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), power=1.0), [0.0, 0.0])


def test_angular_repulsion_counts_same_direction_different_length():
    # not an exact duplicate: same direction, cos = 1 -> each sees 1
    _close(angular_repulsion(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), power=3.0), [1.0, 1.0])


def test_euclidean_repulsion_mean_of_inverse_squared_distances():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    # d²: (0,1) 1, (0,2) 4, (1,2) 5
    # row0: (1 + 1/4)/2 = 0.625; row1: (1 + 1/5)/2 = 0.6; row2: (1/4 + 1/5)/2 = 0.225
    _close(euclidean_repulsion(x), [0.625, 0.6, 0.225], rel=1e-5)


def test_euclidean_repulsion_excludes_duplicates_and_stays_finite():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    # row0/row1 duplicates: each sees rows 2, 3 -> (1 + 1/4)/2 = 0.625
    # row2 sees 0, 1, 3 -> (1 + 1 + 1/5)/3 = 0.7333...; row3 sees 0, 1, 2 -> (1/4 + 1/4 + 1/5)/3 = 0.2333...
    loss = euclidean_repulsion(x)
    _close(loss, [0.625, 0.625, 2.2 / 3.0, 0.7 / 3.0], rel=1e-5)
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()
    _close(euclidean_repulsion(torch.tensor([[1.0, 1.0], [1.0, 1.0]])), [0.0, 0.0])


def test_euclidean_repulsion_gradient_by_hand():
    # two points at distance d = 1 on the x axis: total = 2/d², d(total)/d(x1) = -4/d³ = -4, and +4 for x0
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    euclidean_repulsion(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[4.0, 0.0], [-4.0, 0.0]]))


def _readout_kwargs(info) -> dict:
    # A stand-in for a model's deletion readout: a per-row map to 3 "RGB" outputs.
    return {"readout": lambda x: torch.tanh(x[:, :3])} if info.needs_readout else {}


def test_angular_subspace_is_one_minus_cosine_to_the_subspace():
    _close(angular_subspace(X, HUE), [0.0, 1.0])  # row 0 lies in the plane of axes 0-1; row 1 is orthogonal to it
    _close(angular_subspace(X, AXES02), [1.0 - 3.0 / 5.0, 0.0])
    _close(angular_subspace(2.0 * X, AXES02), [1.0 - 3.0 / 5.0, 0.0])  # scale-free


def test_angular_subspace_pulls_where_relative_subspace_has_almost_no_gradient():
    # Nearly orthogonal to the subspace (where a wide residual stream starts): 1 − cos² is flat there, 1 − cos is not.
    x = torch.tensor([[1.0e-3, 0.0, 1.0, 0.0]], requires_grad=True)
    angular_subspace(x, AXIS0).sum().backward()
    g_angular = x.grad[0, 0].abs().item()
    x.grad = None
    subspace(x, AXIS0, relative=True).sum().backward()
    g_relative = x.grad[0, 0].abs().item()
    assert g_angular > 0.5
    assert g_relative < 1e-2


def test_deletion_target_is_mse_of_the_readout_to_the_target_color():
    rows = torch.tensor([[1.0, 0.0, 0.5, 9.0], [0.0, 0.0, 0.0, 9.0]])
    first3 = lambda x: x[:, :3]  # noqa: E731
    _close(deletion_target(rows, AXIS0, readout=first3), [(1.0 + 0.25) / 3.0, 0.0])  # default target: black
    _close(deletion_target(rows, AXIS0, readout=first3, target="white"), [(0.0 + 1.0 + 0.25) / 3.0, 1.0])
    _close(deletion_target(rows, AXIS0, readout=first3, target=[1.0, 0.0, 0.5]), [0.0, (1.0 + 0.25) / 3.0])


def test_suppression_target_reads_what_hard_suppression_decodes_the_sample_to():
    # The readout is the real suppress:CONCEPT rewrite (x − (x·v)v where x·v > 0, not renormalized) followed by a
    # stand-in decoder (the first 3 coordinates), so the value can be worked out by hand.
    from structured_hf.models.color_autoencoder.modeling_color_autoencoder import DeletionReadout

    first3 = lambda x: x[:, :3]  # noqa: E731
    readout = DeletionReadout(deleted=lambda x: first3(concept_suppressor(RED)(x)), intact=first3)
    rows = torch.tensor([[0.6, 0.8, 0.0, 0.0], [-0.6, 0.0, 0.8, 0.0]])
    # Row 0 (toward red) decodes to (0, 0.8, 0): 0.8 away from black on one channel; against azure (0, 0.5, 1)
    # 0.3² + 1². Row 1 (away from red) is left as it is: (−0.6, 0, 0.8).
    _close(suppression_target(rows, RED, readout=readout), [0.64 / 3.0, (0.36 + 0.64) / 3.0])
    _close(
        suppression_target(rows, RED, readout=readout, target="azure"),
        [(0.09 + 1.0) / 3.0, (0.36 + 0.25 + 0.04) / 3.0],
    )
    # unchanged: the suppressed output against today's output; 0 where suppression leaves the sample alone.
    _close(suppression_target(rows, RED, readout=readout, target="unchanged"), [0.36 / 3.0, 0.0])
    assert LOSSES["suppression_target"].concept_kind == "direction"
    assert LOSSES["suppression_target"].readout == "suppression"


def test_deletion_target_unchanged_pulls_the_deleted_output_toward_the_intact_one_only():
    from structured_hf.models.color_autoencoder.modeling_color_autoencoder import DeletionReadout

    rows = torch.tensor([[1.0, 0.0, 0.5, 9.0], [0.0, 0.0, 0.0, 9.0]], requires_grad=True)
    intact = lambda x: x[:, :3] * 2.0  # noqa: E731
    readout = DeletionReadout(deleted=lambda x: x[:, :3], intact=intact)
    loss = deletion_target(rows, AXIS0, readout=readout, target="unchanged")
    _close(loss, [(1.0 + 0.0 + 0.25) / 3.0, 0.0])
    loss.sum().backward()
    # The gradient flows through the deleted path only (the intact output is held fixed): d/dx (x − 2x₀)² = 2(x − 2x)
    _close(rows.grad[0], [2.0 * (1.0 - 2.0) / 3.0, 0.0, 2.0 * (0.5 - 1.0) / 3.0, 0.0])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_per_sample(name):
    torch.manual_seed(0)
    x = torch.randn(5, 4, requires_grad=True)
    info = LOSSES[name]
    concept = {"direction": RED, "axes": HUE, None: None}[info.concept_kind]
    out = info.fn(x, concept, **_readout_kwargs(info))
    assert out.shape == (5,)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_non_repulsion_losses_do_not_couple_samples():
    # a per-sample loss of row 0 must not change when another row changes
    torch.manual_seed(1)
    x = torch.randn(3, 4)
    y = x.clone()
    y[1:] = torch.randn(2, 4)
    for name, info in LOSSES.items():
        concept = {"direction": RED, "axes": HUE, None: None}[info.concept_kind]
        kwargs = {"power": 1.0} if name == "angular_repulsion" else {}  # p = 100 could underflow both to 0
        kwargs.update(_readout_kwargs(info))
        a, b = info.fn(x, concept, **kwargs)[0], info.fn(y, concept, **kwargs)[0]
        if info.batch_coupled:
            assert a != b, name
        else:
            assert a == b, name


# ---- selective reduction ------------------------------------------------------------------------------------------
def test_selective_mean_without_weights_is_plain_mean():
    assert selective_mean(torch.tensor([1.0, 2.0, 6.0])).item() == 3.0


def test_selective_mean_no_labelled_sample_is_exactly_zero_with_zero_gradient():
    per_sample = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    out = selective_mean(per_sample, torch.zeros(3))
    assert out.item() == 0.0
    assert not torch.isnan(out)
    out.backward()
    assert torch.equal(per_sample.grad, torch.zeros(3))


def test_selective_mean_no_label_ignores_non_finite_unlabelled_losses():
    # even an inf loss on an unlabelled sample (e.g. a degenerate latent) must not leak NaN into the total
    per_sample = torch.tensor([float("inf"), 2.0], requires_grad=True)
    out = selective_mean(per_sample, torch.zeros(2))
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(per_sample.grad).all()


def test_selective_mean_one_labelled_sample_is_its_loss():
    per_sample = torch.tensor([1.0, 7.25, 3.0], requires_grad=True)
    out = selective_mean(per_sample, torch.tensor([0.0, 1.0, 0.0]))
    assert out.item() == 7.25
    out.backward()
    assert per_sample.grad.tolist() == [0.0, 1.0, 0.0]


def test_selective_mean_hard_and_bool_weights():
    per_sample = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert selective_mean(per_sample, torch.tensor([1.0, 0.0, 1.0, 0.0])).item() == 2.0
    assert selective_mean(per_sample, torch.tensor([True, False, True, False])).item() == 2.0


def test_selective_mean_soft_weights():
    # (1·1 + 0.5·2 + 0·3) / 1.5 = 4/3
    out = selective_mean(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.5, 0.0]))
    assert out.item() == pytest.approx(4.0 / 3.0, rel=1e-6)


def test_selective_mean_explicit_denominator():
    per_sample = torch.tensor([1.0, 2.0, 3.0])
    # labelled sum 3, window total 4 -> 0.75
    assert selective_mean(per_sample, torch.tensor([1.0, 1.0, 0.0]), denominator=4.0).item() == 0.75
    assert selective_mean(per_sample, None, denominator=torch.tensor(12.0)).item() == 0.5
    # a window with no labels at all gives 0
    assert selective_mean(per_sample, torch.zeros(3), denominator=0.0).item() == 0.0


def test_selective_sum():
    per_sample = torch.tensor([1.0, 2.0, 3.0])
    assert selective_sum(per_sample).item() == 6.0
    assert selective_sum(per_sample, torch.tensor([0.0, 0.5, 1.0])).item() == 4.0


def test_euclidean_repulsion_small_batch_close_pair_matches_float64_reference():
    # below torch.cdist's matmul threshold (25 rows) the close pair is computed accurately
    x = _unit_batch_with_close_pair(8, delta=1e-3)
    torch.testing.assert_close(euclidean_repulsion(x).double(), _euclidean_reference(x), rtol=1e-3, atol=0.0)


def test_euclidean_repulsion_full_batch_close_pair_matches_float64_reference():
    x = _unit_batch_with_close_pair(64, delta=1e-3)
    torch.testing.assert_close(euclidean_repulsion(x).double(), _euclidean_reference(x), rtol=1e-3, atol=0.0)


def _unit_batch_with_close_pair(n: int, delta: float) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, 4), dim=-1)
    x[1] = x[0] + torch.tensor([0.0, delta, 0.0, 0.0])  # ‖x0 − x1‖² = delta²
    return x


def _euclidean_reference(x: torch.Tensor) -> torch.Tensor:
    """Mean over the other rows of 1/‖x_i − x_j‖², from explicit float64 differences (no duplicates here)."""
    x = x.double()
    d2 = (x[:, None, :] - x[None, :, :]).square().sum(-1)
    n = x.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    return torch.where(off, 1.0 / d2.where(off, torch.ones_like(d2)), torch.zeros_like(d2)).sum(-1) / (n - 1)

"""awp's support search: exchanges with exact per-row acceptance, the ALPS start, gradual pruning."""

import pytest
import torch
from awp_solver_helpers import correlated_problem, output_error

from optimum_awp.solvers import CompressionSpec, get_solver
from optimum_awp.solvers.awp import SparseProjector, prepare_covariance
from optimum_awp.solvers.awp_support import swap

# the exchange phase alone, from the same point: no momentum, float32 products, no polish
PLAIN = {"init": "wanda", "scope": "row", "bf16_products": False, "polish_iterations": 0, "momentum": False,
         "max_iterations": 5}


def _kept(mask, spec):
    return mask.reshape(mask.shape[0], -1, spec.pattern[1]).sum(-1) if spec.pattern else mask.sum(1)


@pytest.mark.parametrize("spec", [CompressionSpec(sparsity=0.7), CompressionSpec(pattern=(2, 4))])
def test_swap_never_increases_any_row_and_keeps_the_counts(spec):
    weight, stats = correlated_problem(32, 128, seed=1)
    c, _ = prepare_covariance(stats.covariance)
    start = get_solver("wanda")(weight, stats, spec)
    projector = SparseProjector(spec, 128)
    history = []
    theta, mask, rounds = swap(weight.clone(), c, start.weight.clone(), start.mask.clone(), projector,
                               torch.diagonal(c).clone(), rounds=8, history=history)
    before = (((weight - start.weight) @ c) * (weight - start.weight)).sum(1)
    after = (((weight - theta) @ c) * (weight - theta)).sum(1)
    assert (after <= before * (1 + 1e-5)).all()
    assert after.sum() < 0.9 * before.sum()  # Wanda's support is far from a local optimum
    assert all(b <= a * (1 + 1e-6) for a, b in zip(history, history[1:]))
    assert torch.equal(_kept(mask, spec), _kept(start.mask, spec))
    assert (theta[~mask] == 0).all()
    assert 1 <= rounds <= 8


@pytest.mark.parametrize("spec", [CompressionSpec(sparsity=0.7), CompressionSpec(pattern=(2, 4)),
                                  CompressionSpec(pattern=(2, 4), bits=4, group_size=32)])
def test_swap_rounds_lower_the_objective_after_the_sparsity_phase(spec):
    weight, stats = correlated_problem(32, 128, seed=2)
    plain = get_solver("awp")(weight, stats, spec, swap_rounds=0, **PLAIN)
    swapped = get_solver("awp")(weight, stats, spec, swap_rounds=10, **PLAIN)
    assert swapped.objective < plain.objective
    assert swapped.objective == pytest.approx(output_error(weight, swapped.weight, stats.covariance), rel=1e-5)
    kept = _kept(swapped.mask, spec)
    assert int(kept.max()) == int(kept.min()) == (2 if spec.pattern else 128 - int(0.7 * 128))


def test_swap_on_the_layer_scope_keeps_every_row_count():
    weight, stats = correlated_problem(16, 64)
    weight = weight * torch.linspace(0.2, 3, 16).unsqueeze(1)
    spec = CompressionSpec(sparsity=0.7)
    options = {**PLAIN, "scope": "layer"}
    plain = get_solver("awp")(weight, stats, spec, swap_rounds=0, **options)
    swapped = get_solver("awp")(weight, stats, spec, swap_rounds=10, **options)
    assert torch.equal(swapped.mask.sum(1), plain.mask.sum(1))
    assert int(swapped.mask.sum()) == 16 * (64 - int(0.7 * 64))
    assert swapped.objective <= plain.objective * (1 + 1e-6)


@pytest.mark.parametrize(("spec", "scope"), [(CompressionSpec(sparsity=0.7), "row"),
                                           (CompressionSpec(sparsity=0.7), "layer"),
                                           (CompressionSpec(pattern=(2, 4)), "row")])
def test_alps_start_is_at_least_as_good_as_alps(spec, scope):
    weight, stats = correlated_problem(32, 128, seed=3)
    # undamped: AWP lowers the objective it minimises, the damped one when damping > 0
    alps = get_solver("alps")(weight, stats, spec, scope=scope, damping=0.0)
    result = get_solver("awp")(weight, stats, spec, init="alps", swap_rounds=10, bf16_products=False, scope=scope,
                               damping=0.0)
    assert result.objective <= alps.objective * (1 + 1e-5)
    assert result.objective < get_solver("awp")(weight, stats, spec, init="wanda", swap_rounds=0, scope=scope).objective
    kept = _kept(result.mask, spec)
    if scope == "layer":
        assert int(result.mask.sum()) == 32 * (128 - int(0.7 * 128))
    else:
        assert int(kept.max()) == int(kept.min()) == (2 if spec.pattern else 128 - int(0.7 * 128))


@pytest.mark.parametrize("spec", [CompressionSpec(sparsity=0.7), CompressionSpec(pattern=(2, 4))])
def test_anneal_start_is_feasible_and_better_than_wanda(spec):
    weight, stats = correlated_problem(32, 128, seed=4)
    result = get_solver("awp")(weight, stats, spec, anneal_iterations=20, max_iterations=20, scope="row")
    kept = _kept(result.mask, spec)
    assert int(kept.max()) == int(kept.min()) == (2 if spec.pattern else 128 - int(0.7 * 128))
    assert result.objective < get_solver("wanda")(weight, stats, spec).objective
    assert result.iterations >= 20


def test_support_options_are_validated():
    weight, stats = correlated_problem(4, 32)
    with pytest.raises(ValueError, match="AWPOptions.swap_rounds must be an int >= 0, got -1"):
        get_solver("awp")(weight, stats, CompressionSpec(sparsity=0.5), swap_rounds=-1)
    with pytest.raises(ValueError, match=r"AWPOptions.init must be one of"):
        get_solver("awp")(weight, stats, CompressionSpec(sparsity=0.5), init="admm")

"""magnitude, wanda, rtn, and what every solver promises (shapes, patterns, codes, objective)."""

import pytest
import torch
from awp_solver_helpers import correlated_problem, identity_problem, output_error

from optimum_awp.solvers import (
    CompressionSpec,
    dequantize,
    get_solver,
    wanda_scores,
)

ALL = ["magnitude", "wanda", "rtn", "sparsegpt", "gptq", "awq", "awp", "alps"]
FAST_AWP = {"max_iterations": 10}


def _options(method):
    return FAST_AWP if method == "awp" else {}


IDENTITY_SPECS = [
    CompressionSpec(sparsity=0.5),
    CompressionSpec(pattern=(2, 4)),
    CompressionSpec(pattern=(2, 4), bits=4, group_size=32),
]


@pytest.mark.parametrize("spec", IDENTITY_SPECS)
def test_wanda_equals_magnitude_when_covariance_is_identity(spec):
    weight, stats = identity_problem()
    a = get_solver("wanda")(weight, stats, spec)
    b = get_solver("magnitude")(weight, stats, spec)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)


def test_wanda_keeps_largest_weight_times_input_norm_per_row():
    weight, stats = correlated_problem(8, 32)
    result = get_solver("wanda")(weight, stats, CompressionSpec(sparsity=0.75))
    scores = weight.abs() * torch.diagonal(stats.covariance).sqrt()
    expected = torch.zeros_like(result.mask).scatter_(1, scores.argsort(dim=1, descending=True)[:, :8], True)
    assert torch.equal(result.mask, expected)
    assert torch.equal(wanda_scores(weight, stats.covariance), scores)
    assert torch.equal(result.weight, weight * expected)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_joint_on_pruning_methods_is_their_mask_then_rtn(method):
    weight, stats = correlated_problem(8, 64)
    spec = CompressionSpec(sparsity=0.5, bits=4, group_size=32)
    joint = get_solver(method)(weight, stats, spec)
    mask = get_solver(method)(weight, stats, CompressionSpec(sparsity=0.5)).mask
    assert torch.equal(joint.mask, mask) and (joint.mask.sum(dim=1) == 32).all()
    codes, scales = joint.codes, joint.scales
    assert torch.equal(dequantize(codes, scales, None), joint.weight) and (codes[~mask] == 8).all()


CONTRACT_SPECS = [
    CompressionSpec(pattern=(2, 4)),
    CompressionSpec(pattern=(4, 8), bits=4, group_size=32),
    CompressionSpec(sparsity=0.5),
    CompressionSpec(bits=4, group_size=32, symmetric=False),
    CompressionSpec(bits=4, group_size=-1),
]


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("spec", CONTRACT_SPECS)
def test_every_solver_result_obeys_the_contract(method, spec):
    weight, stats = correlated_problem(8, 64)
    solve = get_solver(method)
    kind = "joint" if spec.prunes and spec.quantizes else "prune" if spec.prunes else "quantize"
    if kind not in solve.kinds:
        with pytest.raises(ValueError, match=f"method '{method}' does not do"):
            solve(weight, stats, spec)
        return
    result = solve(weight, stats, spec, **_options(method))
    assert result.weight.dtype == torch.float32 and result.weight.shape == weight.shape
    assert result.objective == pytest.approx(output_error(weight, result.weight, stats.covariance), rel=1e-5)
    assert 0 <= result.objective < 1
    if spec.pattern is not None:
        n, m = spec.pattern
        assert (result.mask.reshape(8, -1, m).sum(-1) == n).all()
        assert (result.weight.reshape(8, -1, m).ne(0).sum(-1) <= n).all()
    if spec.prunes:
        assert torch.equal(result.weight[~result.mask], torch.zeros(int((~result.mask).sum())))
    else:
        assert result.mask is None
    if spec.quantizes:
        assert result.codes.dtype == torch.uint8 and int(result.codes.max()) <= 15
        assert torch.equal(dequantize(result.codes, result.scales, result.zeros), result.weight)
    else:
        assert result.codes is None and result.scales is None


@pytest.mark.parametrize("method", ALL)
def test_solvers_do_not_mutate_inputs(method):
    weight, stats = correlated_problem(8, 64)
    w, c = weight.clone(), stats.covariance.clone()
    spec = CompressionSpec(pattern=(2, 4) if "joint" in get_solver(method).kinds else None, bits=4, group_size=32)
    get_solver(method)(weight, stats, spec, **_options(method))
    assert torch.equal(weight, w) and torch.equal(stats.covariance, c)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "awp", "alps"])
def test_empty_spec_is_the_identity(method):
    weight, stats = correlated_problem(4, 16)
    result = get_solver(method)(weight, stats, CompressionSpec())
    assert torch.equal(result.weight, weight) and result.objective == 0.0

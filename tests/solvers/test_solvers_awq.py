"""awq: the storable clipping search, and the optional scaling search."""

import pytest
import torch
from awp_solver_helpers import correlated_problem

from optimum_awp.solvers import (
    AWQResult,
    CompressionSpec,
    LayerStats,
    dequantize,
    get_solver,
)
from optimum_awp.solvers.awq import awq_compress


def _block_diagonal(stats, g):
    c = stats.covariance.clone()
    n = c.shape[0]
    for i in range(0, n, g):
        for j in range(0, n, g):
            if i != j:
                c[i : i + g, j : j + g] = 0
    return LayerStats(covariance=c, mean_abs=stats.mean_abs)


@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_never_loses_to_rtn_when_groups_are_independent(symmetric):
    weight, stats = correlated_problem(16, 64)
    stats = _block_diagonal(stats, 32)
    spec = CompressionSpec(bits=4, group_size=32, symmetric=symmetric)
    awq = get_solver("awq")(weight, stats, spec)
    assert awq.objective <= get_solver("rtn")(weight, stats, spec).objective + 1e-9


def test_default_result_is_storable():
    weight, stats = correlated_problem(16, 64)
    result = get_solver("awq")(weight, stats, CompressionSpec(bits=4, group_size=32))
    assert isinstance(result, AWQResult) and result.input_scale is None
    assert torch.equal(dequantize(result.codes, result.scales, None), result.weight)


def test_scaling_reports_input_scale_and_theta_is_grid_over_scale():
    weight, stats = correlated_problem(16, 64)
    spec = CompressionSpec(bits=4, group_size=32)
    result = awq_compress(weight, stats, spec, scaling=True)
    assert result.input_scale.shape == (64,) and 0 <= result.alpha < 1
    assert torch.allclose(dequantize(result.codes, result.scales, None) / result.input_scale, result.weight)
    no_clip = awq_compress(weight, stats, spec, scaling=True, clip=False)
    assert no_clip.objective <= get_solver("rtn")(weight, stats, spec).objective + 1e-9  # alpha = 0 is RTN


def test_uniform_activations_make_scaling_a_no_op():
    weight, stats = correlated_problem(8, 64)
    stats = LayerStats(covariance=stats.covariance, mean_abs=torch.ones(64))
    spec = CompressionSpec(bits=4, group_size=32)
    scaled = awq_compress(weight, stats, spec, scaling=True)
    assert torch.allclose(scaled.input_scale, torch.ones(64))
    assert torch.allclose(scaled.weight, get_solver("awq")(weight, stats, spec).weight)


def test_wanda_plus_awq_uses_wanda_mask():
    weight, stats = correlated_problem(8, 64)
    spec = CompressionSpec(pattern=(2, 4), bits=4, group_size=32)
    result = get_solver("awq")(weight, stats, spec)
    assert torch.equal(result.mask, get_solver("wanda")(weight, stats, spec).mask)
    assert (result.weight[~result.mask] == 0).all()

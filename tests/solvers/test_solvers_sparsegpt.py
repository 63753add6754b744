"""sparsegpt and gptq: the blocked OBS port."""

import pytest
import torch
from awp_solver_helpers import correlated_problem, identity_problem

from optimum_awp.solvers import CompressionSpec, LayerStats, dequantize, get_solver
from optimum_awp.solvers.sparsegpt import obs_compress


@pytest.mark.parametrize("spec", [CompressionSpec(sparsity=0.5), CompressionSpec(pattern=(2, 4))])
def test_sparsegpt_beats_magnitude_and_wanda_on_correlated_inputs(spec):
    weight, stats = correlated_problem(16, 64)
    sgpt = get_solver("sparsegpt")(weight, stats, spec).objective
    assert sgpt < get_solver("magnitude")(weight, stats, spec).objective
    assert sgpt < get_solver("wanda")(weight, stats, spec).objective


def test_unstructured_sparsity_is_exact_per_block_of_columns():
    weight, stats = correlated_problem(8, 64)
    result = get_solver("sparsegpt")(weight, stats, CompressionSpec(sparsity=0.5), blocksize=16)
    for b in range(4):
        assert int(result.mask[:, 16 * b : 16 * (b + 1)].sum()) == 8 * 16 // 2


def test_nm_result_does_not_depend_on_blocksize():
    weight, stats = correlated_problem(8, 64)
    spec = CompressionSpec(pattern=(2, 4))
    a = obs_compress(weight, stats.covariance, spec, blocksize=8, dtype=torch.float64)
    b = obs_compress(weight, stats.covariance, spec, blocksize=128, dtype=torch.float64)
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(a.weight, b.weight, atol=1e-5)


def test_gptq_with_identity_covariance_is_rtn():
    weight, stats = identity_problem(8, 64)
    spec = CompressionSpec(bits=4, group_size=32, symmetric=False)
    a = get_solver("gptq")(weight, stats, spec)
    b = get_solver("rtn")(weight, stats, spec)
    assert torch.equal(a.codes, b.codes) and torch.allclose(a.weight, b.weight)


def test_sparsegpt_nm_with_identity_covariance_is_magnitude():
    weight, stats = identity_problem(8, 64)
    spec = CompressionSpec(pattern=(2, 4))
    sparsegpt = get_solver("sparsegpt")(weight, stats, spec)
    assert torch.equal(sparsegpt.mask, get_solver("magnitude")(weight, stats, spec).mask)


@pytest.mark.parametrize("group_size", [16 * 2, 64, -1])
def test_gptq_beats_rtn_on_correlated_inputs(group_size):
    weight, stats = correlated_problem(16, 64)
    spec = CompressionSpec(bits=4, group_size=group_size)
    assert get_solver("gptq")(weight, stats, spec).objective < get_solver("rtn")(weight, stats, spec).objective


def test_joint_sparsegpt_prunes_then_quantizes_on_the_grid():
    weight, stats = correlated_problem(16, 64)
    spec = CompressionSpec(pattern=(2, 4), bits=4, group_size=32)
    result = get_solver("sparsegpt")(weight, stats, spec)
    assert (result.weight[~result.mask] == 0).all() and (result.codes[~result.mask] == 8).all()
    assert torch.equal(dequantize(result.codes, result.scales, None), result.weight)
    assert result.objective < get_solver("wanda")(weight, stats, spec).objective


def test_dead_inputs_are_pruned_and_results_finite():
    weight, stats = correlated_problem(8, 32)
    c = stats.covariance.clone()
    c[:4, :] = 0
    c[:, :4] = 0
    result = get_solver("sparsegpt")(weight, LayerStats(c), CompressionSpec(sparsity=0.25))
    assert torch.isfinite(result.weight).all()
    assert (result.weight[:, :4] == 0).all()


def test_fixed_mask_is_respected():
    weight, stats = correlated_problem(8, 32)
    mask = torch.rand(8, 32, generator=torch.Generator().manual_seed(0)) > 0.5
    point = obs_compress(weight, stats.covariance, CompressionSpec(bits=4, group_size=-1), mask=mask)
    assert torch.equal(point.mask, mask) and (point.weight[~mask] == 0).all()


def test_per_row_keeps_the_same_count_in_every_row():
    weight, stats = correlated_problem(8, 64)
    weight = weight * torch.linspace(0.1, 4, 8).unsqueeze(1)  # rows of different norms
    spec = CompressionSpec(sparsity=0.75)
    per_row = get_solver("sparsegpt")(weight, stats, spec, per_row=True)
    blockwise = get_solver("sparsegpt")(weight, stats, spec)
    assert per_row.mask.sum(dim=1).tolist() == [16] * 8
    assert len(set(blockwise.mask.sum(dim=1).tolist())) > 1 and int(blockwise.mask.sum()) == 8 * 16

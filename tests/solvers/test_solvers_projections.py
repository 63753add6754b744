"""projections: exact against brute force on small matrices."""

import itertools

import pytest
import torch

from optimum_awp.solvers import (
    CompressionSpec,
    dequantize,
    keep_count,
    nm_mask,
    project,
    quantize_grid,
    topk_mask,
)
from optimum_awp.solvers.projections import apply_mask


def _kept_is_topk(scores, mask, k):
    a = scores.abs()
    assert torch.equal(mask.sum(dim=1), torch.full((a.shape[0],), k))
    kept_min = torch.where(mask, a, torch.full_like(a, float("inf"))).amin(dim=1)
    dropped_max = torch.where(mask, torch.full_like(a, -1.0), a).amax(dim=1)
    assert (kept_min >= dropped_max).all()


@pytest.mark.parametrize("k", [0, 1, 3, 5, 8])
def test_topk_mask_keeps_exactly_k_largest(k):
    scores = torch.randn(6, 8, generator=torch.Generator().manual_seed(k))
    mask = topk_mask(scores, k)
    _kept_is_topk(scores, mask, k)
    expected = torch.zeros_like(mask).scatter_(1, scores.abs().argsort(dim=1, descending=True)[:, :k], True)
    assert torch.equal(mask, expected)


def test_topk_mask_ties_keep_lowest_index_and_exact_count():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = topk_mask(scores, 3)
    assert mask.tolist() == [[False, True, True, False, False, True], [True, True, True, False, False, False]]


def test_keep_count_convention():
    assert keep_count(640, 0.5) == 320
    assert keep_count(100, 0.29) == 71  # 29 pruned, not 28 from float rounding
    assert keep_count(10, 0.0) == 10
    assert keep_count(8, 0.99) == 1


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_n_largest_of_every_m(n, m):
    scores = torch.randn(5, 4 * m, generator=torch.Generator().manual_seed(n * m))
    mask = nm_mask(scores, n, m)
    groups_mask = mask.reshape(5, 4, m)
    assert (groups_mask.sum(-1) == n).all()
    ga = scores.abs().reshape(5, 4, m)
    for r, g in itertools.product(range(5), range(4)):
        best = set(ga[r, g].argsort(descending=True)[:n].tolist())
        assert set(groups_mask[r, g].nonzero().flatten().tolist()) == best


def test_unstructured_projection_is_the_euclidean_projection():
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    spec = CompressionSpec(sparsity=0.5)
    proj = project(z, spec)
    for r in range(3):
        best = min(
            float(((z[r] - z[r] * torch.tensor([j in s for j in range(6)])) ** 2).sum())
            for s in itertools.combinations(range(6), 3)
        )
        assert float(((z[r] - proj.weight[r]) ** 2).sum()) == pytest.approx(best, abs=1e-7)


@pytest.mark.parametrize("group_size", [32, 64, 128, 256, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_grid_levels_codes_and_dequant_formula(group_size, symmetric):
    w = torch.randn(4, 512, generator=torch.Generator().manual_seed(7)) * 0.1
    deq, codes, scales, zeros = quantize_grid(w, 4, group_size, symmetric)
    g = 512 if group_size == -1 else group_size
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    assert scales.shape == (4, 512 // g) and scales.dtype == torch.float32
    assert (zeros is None) == symmetric
    if not symmetric:
        assert zeros.shape == scales.shape and torch.equal(zeros, zeros.round())
        assert zeros.min() >= 0 and zeros.max() <= 15
    # dequant equals the codes formula, exactly
    z = torch.full_like(scales, 8.0) if symmetric else zeros
    by_formula = (codes.float().reshape(4, -1, g) - z.unsqueeze(-1)) * scales.unsqueeze(-1)
    assert torch.equal(deq, by_formula.reshape(4, 512))
    assert torch.equal(dequantize(codes, scales, zeros), deq)
    # at most 16 levels per group, and every entry within half a step
    for r, k in itertools.product(range(4), range(512 // g)):
        assert deq[r, k * g : (k + 1) * g].unique().numel() <= 16
    err = (deq - w).abs().reshape(4, -1, g)
    assert (err <= scales.unsqueeze(-1) / 2 * (1 + 1e-5)).all()


def test_symmetric_scale_is_half_step_rule():
    w = torch.tensor([[-1.0, 0.5, 0.25, 3.0]])
    _, codes, scales, _ = quantize_grid(w, 4, -1, True)
    assert scales.item() == pytest.approx(3.0 / 7.5)  # max(3/7.5, 1/8.5)
    w = torch.tensor([[-3.0, 0.5, 0.25, 1.0]])
    deq, codes, scales, _ = quantize_grid(w, 4, -1, True)
    assert scales.item() == pytest.approx(3.0 / 8.5)
    assert codes[0, 0].item() == 0  # -8.5 rounds to -8 (half to even), code 0


def test_zero_groups_are_guarded():
    w = torch.zeros(2, 64)
    for symmetric in (True, False):
        deq, codes, scales, zeros = quantize_grid(w, 4, 32, symmetric)
        assert torch.equal(deq, w) and (scales == 1).all()
        assert torch.isfinite(deq).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_joint_keeps_pruned_entries_exactly_zero_and_scales_from_kept(symmetric):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4, 64, generator=gen) + 0.3
    spec = CompressionSpec(pattern=(2, 4), bits=4, group_size=32, symmetric=symmetric)
    proj = project(w, spec)
    assert torch.equal(proj.weight[~proj.mask], torch.zeros(int((~proj.mask).sum())))
    zero_code = 8 if symmetric else proj.zeros.repeat_interleave(32, dim=1)[~proj.mask]
    assert (proj.codes[~proj.mask].float() == torch.as_tensor(zero_code).float()).all()
    assert torch.equal(dequantize(proj.codes, proj.scales, proj.zeros), proj.weight)
    # pruned values do not influence the scales: blow them up, same result
    w2 = torch.where(proj.mask, w, torch.full_like(w, 100.0))
    proj2 = apply_mask(w2, proj.mask, spec)
    assert torch.equal(proj2.scales, proj.scales) and torch.equal(proj2.weight, proj.weight)


def test_projections_do_not_mutate_inputs():
    w = torch.randn(4, 16)
    copy = w.clone()
    project(w, CompressionSpec(sparsity=0.5, bits=4, group_size=-1))
    quantize_grid(w, 4, -1, False)
    topk_mask(w, 3)
    assert torch.equal(w, copy)

"""lowrank: the closed form is the optimum (brute force), never worse than plain SVD, dead inputs, the rank
option, and sparse + low-rank (every step lowers the objective)."""

import itertools
import math

import pytest
import torch
from awp_solver_helpers import correlated_problem, identity_problem, output_error

from optimum_awp.config import AWPConfig
from optimum_awp.solvers import (
    CompressionSpec,
    LayerStats,
    get_solver,
    relative_objective,
)
from optimum_awp.solvers.lowrank import (
    LowRankOptions,
    best_rank_factors,
    layer_rank,
    plain_svd_factors,
    whitening,
)

LOWRANK = get_solver("lowrank")
EMPTY = CompressionSpec()


def exact(weight, stats, rank, **options):
    return LOWRANK(weight, stats, EMPTY, rank=rank, damping=0.0, **options)


def _unit_directions(steps: int) -> torch.Tensor:
    """Unit vectors of R^3 on a (theta, phi) grid of the upper half sphere (steps x 2 steps), float64."""
    theta = torch.linspace(0, math.pi / 2, steps, dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, 2 * steps, dtype=torch.float64)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    return torch.stack((t.sin() * p.cos(), t.sin() * p.sin(), t.cos()), -1).reshape(-1, 3)


def _best_for_row_space(weight, c, rows):
    """min over B of tr((W − B A) C (W − B A)ᵀ) for a fixed A (r, in): B = W C Aᵀ (A C Aᵀ)^-1."""
    a = rows
    b = weight @ c @ a.T @ torch.linalg.inv(a @ c @ a.T)
    delta = weight - b @ a
    return float(((delta @ c) * delta).sum())


@pytest.mark.parametrize("rank", [1, 2])
def test_closed_form_is_the_brute_force_optimum(rank):
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 200, generator=gen, dtype=torch.float64)
    c = x @ x.T / 200
    stats = LayerStats(covariance=c)
    result = exact(weight.float(), stats, rank)
    denominator = float(((weight @ c) * weight).sum())
    # every rank-r row space of R^3: a direction (r = 1) or the plane orthogonal to one (r = 2)
    directions = _unit_directions(120)
    losses = []
    for d in directions:
        rows = d[None] if rank == 1 else torch.linalg.svd(torch.eye(3, dtype=torch.float64) - torch.outer(d, d))[2][:2]
        losses.append(_best_for_row_space(weight, c, rows) / denominator)
    brute = min(losses)
    assert result.objective <= brute * (1 + 1e-6)
    assert result.objective == pytest.approx(brute, rel=2e-3)  # the grid comes within its resolution


def test_no_rank_r_perturbation_does_better():
    weight, stats = correlated_problem(12, 24)
    result = exact(weight, stats, 4)
    b, a = (t.double() for t in result.factors)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        nb = b + 1e-2 * torch.randn(b.shape, generator=gen, dtype=torch.float64)
        na = a + 1e-2 * a.abs().mean() * torch.randn(a.shape, generator=gen, dtype=torch.float64)
        assert relative_objective(weight, nb @ na, stats.covariance) >= result.objective * (1 - 1e-7)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rank", [1, 4, 8])
def test_never_worse_than_plain_svd(seed, rank):
    weight, stats = correlated_problem(16, 32, seed=seed)
    aware = exact(weight, stats, rank)
    svd = exact(weight, stats, rank, activation_aware=False)
    assert aware.objective <= svd.objective * (1 + 1e-9)
    assert aware.objective == pytest.approx(output_error(weight, aware.weight, stats.covariance), rel=1e-4)


def test_strictly_better_on_correlated_inputs():
    weight, stats = correlated_problem(32, 64, outliers=4)
    for rank in (2, 8, 16):
        aware = exact(weight, stats, rank)
        svd = exact(weight, stats, rank, activation_aware=False)
        assert aware.objective < 0.5 * svd.objective, (rank, aware.objective, svd.objective)


def test_equals_plain_svd_when_covariance_is_identity():
    weight, stats = identity_problem(8, 32)
    aware = exact(weight, stats, 3)
    svd = exact(weight, stats, 3, activation_aware=False)
    assert aware.objective == pytest.approx(svd.objective, rel=1e-9)
    assert torch.allclose(aware.weight, svd.weight, atol=1e-5)
    b, a = plain_svd_factors(weight, 3)
    assert torch.allclose((b @ a).float(), svd.weight, atol=1e-6)


def test_result_contract():
    weight, stats = correlated_problem(12, 40)
    result = LOWRANK(weight, stats, EMPTY, rank=5)
    b, a = result.factors
    assert b.shape == (12, 5) and a.shape == (5, 40) and b.dtype == a.dtype == torch.float32
    assert result.weight.dtype == torch.float32 and torch.allclose(b @ a, result.weight, atol=1e-5)
    assert torch.linalg.matrix_rank(result.weight.double(), rtol=1e-5) == 5
    assert result.mask is None and result.codes is None and result.sparse_weight is None
    assert result.objective == pytest.approx(relative_objective(weight, result.weight, stats.covariance))


def test_inputs_are_not_mutated():
    weight, stats = correlated_problem(8, 32)
    w, c = weight.clone(), stats.covariance.clone()
    LOWRANK(weight, stats, EMPTY, rank=3)
    LOWRANK(weight, stats, CompressionSpec(sparsity=0.5), rank=3, alternations=2)
    assert torch.equal(weight, w) and torch.equal(stats.covariance, c)


def test_dead_inputs_are_handled():
    weight, stats = correlated_problem(10, 32, seed=2)
    dead = torch.tensor([0, 5, 6, 31])
    live = torch.ones(32, dtype=torch.bool)
    live[dead] = False
    c = stats.covariance.clone()
    c[dead, :] = 0
    c[:, dead] = 0
    for damping in (0.0, 0.01):
        result = LOWRANK(weight, LayerStats(covariance=c), EMPTY, rank=4, damping=damping)
        assert torch.isfinite(result.weight).all()
        assert (result.weight[:, dead] == 0).all()  # no data there: the target weights are 0, as in AWP
    # with no damping it is the optimum of the live inputs' problem
    full = LOWRANK(weight, LayerStats(covariance=c), EMPTY, rank=4, damping=0.0)
    sub = LOWRANK(weight[:, live], LayerStats(covariance=c[live][:, live]), EMPTY, rank=4, damping=0.0)
    assert full.objective == pytest.approx(sub.objective, rel=1e-6)
    assert full.objective <= LOWRANK(weight, LayerStats(covariance=c), EMPTY, rank=4,
                                     activation_aware=False).objective


def test_singular_covariance_uses_the_pseudo_inverse():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=gen) @ torch.randn(6, 400, generator=gen)  # rank 6 inputs
    weight = torch.randn(16, 32, generator=gen)
    stats = LayerStats(covariance=x @ x.T / 400)
    white = whitening(stats.covariance, 0.0)
    assert int((white.inverse_root > 0).sum()) == 6
    result = exact(weight, stats, 6)
    assert result.objective < 1e-9  # rank 6 reproduces W on the 6-dimensional input space
    _, a = best_rank_factors(weight.double(), white, 6)
    assert torch.isfinite(a).all() and float(a.abs().max()) < 1e3


def test_damping_stays_close_to_the_optimum():
    weight, stats = correlated_problem(16, 48)
    best = exact(weight, stats, 6).objective
    damped = LOWRANK(weight, stats, EMPTY, rank=6, damping=0.01).objective
    assert best <= damped <= 1.1 * best


@pytest.mark.parametrize("rank, shape, expected", [
    (64, (256, 640), 64), (1000, (256, 640), 256), (1, (8, 8), 1),
    (0.5, (640, 640), 160), (0.5, (2048, 640), 243), (0.001, (8, 8), 1), (0.999999, (4, 4), 1),
])
def test_layer_rank(rank, shape, expected):
    assert layer_rank(rank, *shape) == expected


def test_share_of_parameters_kept():
    weight, stats = correlated_problem(24, 40)
    result = LOWRANK(weight, stats, EMPTY, rank=0.25)
    r = result.factors[0].shape[1]
    assert r * (24 + 40) <= 0.25 * 24 * 40 < (r + 1) * (24 + 40)


def test_full_rank_is_exact():
    weight, stats = correlated_problem(8, 16)
    result = LOWRANK(weight, stats, EMPTY, rank=8, damping=0.0)
    assert result.objective < 1e-10 and torch.allclose(result.weight, weight, atol=1e-5)


@pytest.mark.parametrize("options, match", [
    ({"rank": 1.5}, "rank must be an integer when >= 1"),
    ({"rank": 0.0}, "rank must be a finite float >= 1e-06"),
    ({"rank": -3}, "rank must be a finite float"),
    ({"damping": -1.0}, "damping must be a finite float >= 0"),
    ({"alternations": 0}, "alternations must be an int >= 1"),
    ({"activation_aware": "yes"}, "activation_aware must be a bool"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        LowRankOptions(**options)


def test_kinds_rank_and_prune_only():
    weight, stats = correlated_problem(4, 32)
    assert LOWRANK.kinds == ("rank", "prune")
    for spec in (CompressionSpec(bits=4, group_size=-1), CompressionSpec(sparsity=0.5, bits=4, group_size=-1)):
        with pytest.raises(ValueError, match="method 'lowrank' does not do"):
            LOWRANK(weight, stats, spec, rank=2)


def test_awpconfig_asks_for_lowrank_with_rank():
    config = AWPConfig(method="lowrank", rank=64)
    assert config.sparsity is None and config.bits is None and config.options["rank"] == 64
    assert AWPConfig.from_dict(config.to_dict()).options == config.options
    assert AWPConfig(method="lowrank", rank=0.4, sparsity="2:4").rank == 0.4
    with pytest.raises(ValueError, match="AWPConfig.rank must be a finite float >= 1e-06, got 0"):
        AWPConfig(method="lowrank", rank=0)
    with pytest.raises(ValueError, match="\\['rank'\\] is not an option of method 'awp'"):
        AWPConfig(method="awp", sparsity=0.5, rank=8)
    with pytest.raises(ValueError, match="AWPConfig.sparsity must be set"):
        AWPConfig(method="awp")
    with pytest.raises(ValueError, match="method 'lowrank' does not do INT4 alone"):
        AWPConfig(method="lowrank", bits=4)


# ------------------------------------------------------------------------------------------ sparse + low-rank
SPARSE_SPECS = [CompressionSpec(sparsity=0.7), CompressionSpec(pattern=(2, 4))]


def _damped_relative(weight, theta, covariance, damping):
    c = covariance.double()
    c = (c + c.T) / 2 + damping * torch.diagonal(c).mean() * torch.eye(c.shape[0], dtype=torch.float64)
    delta = weight.double() - theta.double()
    return float(((delta @ c) * delta).sum() / ((weight.double() @ c) * weight.double()).sum())


@pytest.mark.parametrize("spec", SPARSE_SPECS, ids=["70%", "2:4"])
def test_sparse_plus_lowrank_steps_never_increase_the_objective(spec):
    weight, stats = correlated_problem(32, 64, outliers=4)
    result = LOWRANK(weight, stats, spec, rank=4, alternations=4)
    history = result.history
    assert len(history) == 1 + 4 + 3  # AWP, then 4 low-rank steps with 3 sparse refits between them
    assert all(b <= a for a, b in itertools.pairwise(history)), history
    assert history[-1] < 0.9 * history[0]
    assert history[-1] == pytest.approx(_damped_relative(weight, result.weight, stats.covariance, 0.01), rel=1e-4)


@pytest.mark.parametrize("spec", SPARSE_SPECS, ids=["70%", "2:4"])
def test_sparse_plus_lowrank_beats_awp_alone_and_more_alternations_help(spec):
    weight, stats = correlated_problem(32, 64, outliers=4)
    awp = get_solver("awp")(weight, stats, spec).objective
    objectives = [LOWRANK(weight, stats, spec, rank=4, alternations=k).objective for k in (1, 2, 4)]
    assert objectives[0] < awp
    assert objectives[2] <= objectives[1] * 1.001 <= objectives[0] * 1.001


@pytest.mark.parametrize("spec", SPARSE_SPECS, ids=["70%", "2:4"])
def test_sparse_plus_lowrank_result_parts(spec):
    weight, stats = correlated_problem(16, 64)
    result = LOWRANK(weight, stats, spec, rank=3, alternations=2)
    b, a = result.factors
    s, mask = result.sparse_weight, result.mask
    assert b.shape == (16, 3) and a.shape == (3, 64)
    assert torch.allclose(s + b @ a, result.weight, atol=1e-5)
    assert (s[~mask] == 0).all()
    if spec.pattern is None:
        assert (mask.sum(1) == 64 - int(0.7 * 64)).all()  # the same count in every row (the bitmap format's)
    else:
        assert (mask.view(16, 16, 4).sum(-1) <= 2).all()
    assert result.objective == pytest.approx(relative_objective(weight, result.weight, stats.covariance))

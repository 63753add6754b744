"""awp: IHT monotonicity, near-optimality on tiny problems, the grid phase, and its helpers."""

import itertools

import pytest
import torch
from awp_solver_helpers import correlated_problem, output_error

from optimum_awp.solvers import (
    CompressionSpec,
    LayerStats,
    dequantize,
    get_solver,
    relative_objective,
)
from optimum_awp.solvers.awp import (
    SparseProjector,
    lambda_max,
    least_squares_scales,
    prepare_covariance,
)
from optimum_awp.solvers.awp_support import polish
from optimum_awp.solvers.sparsegpt import obs_compress

# the monotone variant (exact projection, no momentum, the undamped objective, float32 products): L never increases
MONOTONE = {"momentum": False, "damping": 0.0, "bf16_products": False, "polish_iterations": 0, "init": "wanda",
            "swap_rounds": 0}


def _toeplitz_problem(seed, rho=0.3, out_features=6, in_features=8):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(in_features)
    corr = rho ** (idx[:, None] - idx[None, :]).abs().float()
    x = torch.linalg.cholesky(corr) @ torch.randn(in_features, 256, generator=gen)
    x = x * torch.exp(0.5 * torch.randn(in_features, 1, generator=gen))
    return torch.randn(out_features, in_features, generator=gen), LayerStats(covariance=x @ x.T / 256)


def _best_support_objective(weight, covariance, k):
    """Optimum over all supports of size k per row: least squares C_SS θ_S = (C w)_S."""
    c = covariance.double()
    total = 0.0
    for w in weight.double():
        best = float("inf")
        for support in itertools.combinations(range(w.numel()), k):
            s = list(support)
            theta = torch.zeros_like(w)
            theta[s] = torch.linalg.solve(c[s][:, s], (c @ w)[s])
            d = w - theta
            best = min(best, float(d @ c @ d))
        total += best
    return total / float(((weight.double() @ c) * weight.double()).sum())


@pytest.mark.parametrize("spec", [CompressionSpec(sparsity=0.5), CompressionSpec(pattern=(2, 4))])
@pytest.mark.parametrize("step", ["lambda_max", "diagonal"])
def test_objective_never_increases_and_ends_below_wanda(spec, step):
    weight, stats = correlated_problem(16, 64)
    result = get_solver("awp")(weight, stats, spec, step=step, max_iterations=60, tolerance=0.0, **MONOTONE)
    wanda = get_solver("wanda")(weight, stats, spec).objective
    history = [wanda] + result.history
    assert all(b <= a * (1 + 1e-6) for a, b in zip(history, history[1:]))
    assert result.iterations == 60 and len(result.history) == 60
    assert result.objective < wanda
    assert result.objective == pytest.approx(result.history[-1], rel=1e-4)


def test_unstructured_result_is_near_the_enumerated_optimum():
    ratios = []
    for seed in range(4):
        weight, stats = _toeplitz_problem(seed)
        result = get_solver("awp")(weight, stats, CompressionSpec(sparsity=0.5), max_iterations=300, scope="row")
        assert (result.mask.sum(dim=1) == 4).all()
        ratios.append(result.objective / _best_support_objective(weight, stats.covariance, 4))
    assert min(ratios) >= 1 - 1e-6
    assert sum(ratios) / len(ratios) <= 1.05


def test_tolerance_stops_early():
    weight, stats = correlated_problem(8, 32)
    result = get_solver("awp")(weight, stats, CompressionSpec(sparsity=0.5), max_iterations=1000, tolerance=1e-2)
    assert result.iterations < 1000


@pytest.mark.parametrize("init", ["magnitude", "sparsegpt"])
def test_other_starts_are_feasible_and_improved(init):
    weight, stats = correlated_problem(16, 64)
    spec = CompressionSpec(sparsity=0.5)
    result = get_solver("awp")(weight, stats, spec, init=init, max_iterations=30)
    assert (result.mask.sum(dim=1) == 32).all()
    start = (relative_objective(weight, obs_compress(weight, stats.covariance, spec, per_row=True).weight,
                                stats.covariance) if init == "sparsegpt" else get_solver(init)(weight, stats, spec).objective)
    assert result.objective <= start
    assert result.objective < get_solver("magnitude")(weight, stats, spec).objective


def test_momentum_keeps_the_best_iterate():
    weight, stats = correlated_problem(16, 64)
    spec = CompressionSpec(pattern=(2, 4))
    iht_only = {"init": "wanda", "swap_rounds": 0}  # the iterations alone, from Wanda's support
    result = get_solver("awp")(weight, stats, spec, step="diagonal", momentum=True, damping=0.0, max_iterations=30,
                               **iht_only)
    assert result.objective == pytest.approx(min(result.history), rel=1e-4)
    plain = get_solver("awp")(weight, stats, spec, step="diagonal", momentum=False, damping=0.0, max_iterations=30,
                              **iht_only)
    assert result.objective < plain.objective


def test_pure_quantization_is_no_worse_than_gptq():
    weight, stats = correlated_problem(16, 64)
    for spec in (CompressionSpec(bits=4, group_size=32), CompressionSpec(bits=4, group_size=-1, symmetric=False)):
        awp = get_solver("awp")(weight, stats, spec)
        assert awp.objective <= get_solver("gptq")(weight, stats, spec).objective + 1e-9
        assert torch.equal(dequantize(awp.codes, awp.scales, awp.zeros), awp.weight)


def test_joint_result_beats_wanda_plus_rtn():
    weight, stats = correlated_problem(16, 64)
    spec = CompressionSpec(pattern=(2, 4), bits=4, group_size=32)
    result = get_solver("awp")(weight, stats, spec, max_iterations=30)
    assert result.objective < get_solver("wanda")(weight, stats, spec).objective
    assert (result.weight[~result.mask] == 0).all() and (result.codes[~result.mask] == 8).all()


def test_least_squares_scales_match_lstsq_and_never_increase():
    weight, stats = correlated_problem(4, 128)
    spec = CompressionSpec(bits=4, group_size=32)
    rtn = get_solver("rtn")(weight, stats, spec)
    c = stats.covariance
    dequant, scales = least_squares_scales(weight, c, rtn.codes, rtn.scales, None)
    assert torch.equal(dequantize(rtn.codes, scales, None), dequant)
    q = rtn.codes.double() - 8
    root = torch.linalg.cholesky(c.double()).T  # C = root.T @ root
    for r in range(4):
        basis = torch.stack([q[r] * (torch.arange(128) // 32 == g) for g in range(4)])  # (groups, in)
        # min_s ||(w - s @ basis) root.T||² : least squares with design (basis @ root.T).T
        design, rhs = (basis @ root.T).T, (weight[r].double() @ root.T).unsqueeze(1)
        expected = torch.linalg.lstsq(design, rhs).solution.squeeze(1)
        assert torch.allclose(scales[r].double(), expected, rtol=1e-3)
    delta0, delta1 = weight - rtn.weight, weight - dequant
    assert ((delta1 @ c) * delta1).sum() <= ((delta0 @ c) * delta0).sum()


def test_lambda_max_matches_eigvalsh_from_above():
    _, stats = correlated_problem(4, 32)
    exact = float(torch.linalg.eigvalsh(stats.covariance.double())[-1])
    estimate = lambda_max(stats.covariance)
    assert exact <= estimate <= exact * 1.02


def test_dead_inputs_are_handled():
    weight, stats = correlated_problem(8, 32)
    c = stats.covariance.clone()
    c[:4, :] = 0
    c[:, :4] = 0
    prepared, dead = prepare_covariance(c, damping=0.01)
    assert dead[:4].all() and not dead[4:].any() and torch.equal(prepared, prepared.T)
    result = get_solver("awp")(weight, LayerStats(c), CompressionSpec(sparsity=0.25, bits=4, group_size=-1))
    assert torch.isfinite(result.weight).all() and not result.mask[:, :4].any()


def test_projector_reuses_valid_support_and_recomputes_stale_rows():
    projector = SparseProjector(CompressionSpec(sparsity=0.5), 4)
    z = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    current = torch.tensor([[False, False, True, True], [False, False, True, True]])
    mask = projector(z, current)
    assert mask.tolist() == [[True, True, False, False], [False, False, True, True]]  # ties keep the support


@pytest.mark.parametrize("options", [{"damping": 0.0}, {"damping": 0.1, "step": "lambda_max"}])
def test_damping_paths(options):
    weight, stats = correlated_problem(8, 64)
    spec = CompressionSpec(sparsity=0.5, bits=4, group_size=32, symmetric=False)
    result = get_solver("awp")(weight, stats, spec, max_iterations=20, **options)
    assert result.weight.dtype == torch.float32 and torch.isfinite(result.weight).all()
    assert torch.equal(dequantize(result.codes, result.scales, result.zeros), result.weight)
    assert result.objective < get_solver("wanda")(weight, stats, spec).objective


def test_layer_scope_projection_is_the_layer_top_k():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 16, generator=gen) * torch.tensor([0.1, 1, 1, 3, 1, 1]).unsqueeze(1)
    projector = SparseProjector(CompressionSpec(sparsity=0.75), 16, scope="layer")
    mask = projector(scores, None)
    flat = scores.abs().flatten()
    expected = torch.zeros_like(flat, dtype=torch.bool)
    expected[flat.argsort(descending=True)[: 4 * 6]] = True
    assert torch.equal(mask.flatten(), expected)
    assert mask.sum() == 24 and mask.sum(dim=1).tolist() != [4] * 6  # the rows differ


@pytest.mark.parametrize("step", ["lambda_max", "diagonal"])
def test_layer_scope_never_increases_and_keeps_the_layer_count(step):
    weight, stats = correlated_problem(16, 64)
    weight = weight * torch.linspace(0.2, 3, 16).unsqueeze(1)  # rows of different norms
    spec = CompressionSpec(sparsity=0.7)
    result = get_solver("awp")(weight, stats, spec, step=step, scope="layer", max_iterations=60, tolerance=0.0,
                               **MONOTONE)
    row = get_solver("awp")(weight, stats, spec, step=step, max_iterations=60, tolerance=0.0, **MONOTONE)
    history = [get_solver("wanda")(weight, stats, spec).objective] + result.history
    assert all(b <= a * (1 + 1e-6) for a, b in zip(history, history[1:]))
    assert int(result.mask.sum()) == 16 * (64 - int(0.7 * 64))
    assert result.objective <= row.objective * (1 + 1e-6)  # the larger set, from the same start
    if step == "diagonal":  # η = 1/λ_max moves too little to take weights from one row to another here
        assert len(set(result.mask.sum(dim=1).tolist())) > 1
        assert result.objective < 0.9 * row.objective


def test_scope_is_validated():
    weight, stats = correlated_problem(4, 32)
    with pytest.raises(ValueError, match=r"AWPOptions.scope must be one of \('row', 'layer'\), got 'block'"):
        get_solver("awp")(weight, stats, CompressionSpec(sparsity=0.5), scope="block")


def test_layer_scope_from_sparsegpt_is_no_worse_than_sparsegpt():
    weight, stats = correlated_problem(16, 64)
    spec = CompressionSpec(sparsity=0.7)
    result = get_solver("awp")(weight, stats, spec, scope="layer", init="sparsegpt", step="diagonal",
                               momentum=True, max_iterations=40)
    reference = get_solver("sparsegpt")(weight, stats, spec)  # block-wise mask: rows of unequal sparsity
    assert int(result.mask.sum()) <= 16 * (64 - int(0.7 * 64))
    assert result.objective <= reference.objective * (1 + 1e-4)


@pytest.mark.parametrize("spec", [CompressionSpec(sparsity=0.7), CompressionSpec(pattern=(2, 4)),
                                  CompressionSpec(pattern=(2, 4), bits=4, group_size=32)])
def test_bf16_products_stay_close_and_report_the_exact_objective(spec):
    weight, stats = correlated_problem(32, 128)
    options = dict(step="diagonal", momentum=True, max_iterations=40, scope="row")
    full = get_solver("awp")(weight, stats, spec, bf16_products=False, **options)
    fast = get_solver("awp")(weight, stats, spec, bf16_products=True, **options)
    assert fast.objective == pytest.approx(output_error(weight, fast.weight, stats.covariance), rel=1e-5)
    assert fast.objective <= 1.05 * full.objective
    assert fast.objective < get_solver("wanda")(weight, stats, spec).objective
    kept = fast.mask.reshape(32, -1, 4).sum(-1) if spec.pattern else fast.mask.sum(1)
    assert int(kept.max()) == (2 if spec.pattern else 128 - int(0.7 * 128))


def test_bf16_products_is_validated():
    weight, stats = correlated_problem(4, 32)
    with pytest.raises(ValueError, match="AWPOptions.bf16_products must be a bool, got 'yes'"):
        get_solver("awp")(weight, stats, CompressionSpec(sparsity=0.5), bf16_products="yes")


def _support_optimum(weight, covariance, mask):
    """Per row, the exact minimiser of (w - θ) C (w - θ)ᵀ with θ zero off the row's support (float64)."""
    c, w = covariance.double(), weight.double()
    theta = torch.zeros_like(w)
    for r in range(w.shape[0]):
        s = mask[r].nonzero().flatten()
        theta[r, s] = torch.linalg.solve(c[s][:, s], (w[r] @ c)[s])
    return theta


def test_polish_reaches_the_optimum_of_the_fixed_support_and_never_increases_l():
    weight, stats = correlated_problem(8, 32)
    c, _ = prepare_covariance(stats.covariance)
    mask = get_solver("wanda")(weight, stats, CompressionSpec(sparsity=0.5)).mask
    start = weight * mask
    history = []
    theta, _, iterations = polish(weight, c, start, mask, torch.diagonal(c).clone(), max_iterations=32, tolerance=0.0,
                                  history=history)
    assert torch.equal(theta != 0, mask & (theta != 0)), "nothing off the support"
    optimum = _support_optimum(weight, stats.covariance, mask)
    assert torch.allclose(theta.double(), optimum, atol=1e-3)
    start_loss = relative_objective(weight, start, stats.covariance) * float(((weight @ c) * weight).sum())
    assert all(b <= a * (1 + 1e-5) for a, b in zip([start_loss] + history, history))


@pytest.mark.parametrize("spec", [CompressionSpec(sparsity=0.7), CompressionSpec(pattern=(2, 4)),
                                  CompressionSpec(pattern=(2, 4), bits=4, group_size=32)])
def test_polish_iterations_lower_or_keep_the_objective_on_the_same_mask(spec):
    weight, stats = correlated_problem(32, 128)
    # from Wanda's support, without the exchanges (they would change the mask); from ALPS's point, already
    # refined by its PCG, the polish lowers the damped objective but may raise the undamped one by ~0.2 %
    options = dict(bf16_products=True, max_iterations=30, swap_rounds=0, init="wanda")
    plain = get_solver("awp")(weight, stats, spec, polish_iterations=0, **options)
    polished = get_solver("awp")(weight, stats, spec, polish_iterations=10, **options)
    assert torch.equal(plain.mask, polished.mask)
    assert polished.objective <= plain.objective * (1 + 1e-6)
    assert polished.iterations > plain.iterations
    assert polished.objective == pytest.approx(output_error(weight, polished.weight, stats.covariance), rel=1e-5)


def test_layers_sharing_a_covariance_share_its_preparation(monkeypatch):
    """q/k/v (gate/up) get the same covariance tensor: λ_max runs once for the group, again for a new or
    changed covariance, and the results equal those of fresh preparations."""
    import optimum_awp.solvers.awp as awp_module
    from optimum_awp.solvers import shared

    calls = []
    real = awp_module.lambda_max
    monkeypatch.setattr(awp_module, "lambda_max", lambda *a, **k: calls.append(1) or real(*a, **k))
    weight, stats = correlated_problem(16, 64)
    spec = CompressionSpec(sparsity=0.5)
    first = get_solver("awp")(weight, stats, spec, max_iterations=5)
    second = get_solver("awp")(weight[:8], stats, spec, max_iterations=5)
    assert len(calls) == 1
    shared.clear()
    assert torch.equal(get_solver("awp")(weight[:8], stats, spec, max_iterations=5).weight, second.weight)
    assert len(calls) == 2
    other = LayerStats(stats.covariance.clone())
    assert torch.equal(get_solver("awp")(weight, other, spec, max_iterations=5).weight, first.weight)
    assert len(calls) == 3
    other.covariance.mul_(2.0)  # changed in place: prepared again
    get_solver("awp")(weight, other, spec, max_iterations=5)
    assert len(calls) == 4

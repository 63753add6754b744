"""alps: lower objective than SparseGPT, exact sparsity sets, the ρ schedule's exits, the joint INT4 phase."""

import pytest
import torch
from awp_solver_helpers import correlated_problem, identity_problem, output_error

from optimum_awp.solvers import CompressionSpec, dequantize, get_solver, keep_count
from optimum_awp.solvers.alps import ALPSOptions, Projector, admm, masked_cg

PRUNE_SPECS = [CompressionSpec(sparsity=0.5), CompressionSpec(sparsity=0.7), CompressionSpec(sparsity=0.8),
               CompressionSpec(pattern=(2, 4)), CompressionSpec(pattern=(4, 8))]


@pytest.mark.parametrize("spec", PRUNE_SPECS, ids=lambda s: str(s.pattern or s.sparsity))
@pytest.mark.parametrize("scope", ["layer", "row"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alps_reaches_a_lower_objective_than_sparsegpt(spec, scope, seed):
    weight, stats = correlated_problem(32, 64, seed=seed)
    alps = get_solver("alps")(weight, stats, spec, scope=scope)
    sparsegpt = get_solver("sparsegpt")(weight, stats, spec, per_row=scope == "row")
    assert alps.objective < 0.8 * sparsegpt.objective
    assert alps.objective == pytest.approx(output_error(weight, alps.weight, stats.covariance), rel=1e-5)
    assert 0 < alps.iterations <= 300


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.8, 0.29])
def test_unstructured_masks_are_exact_per_row_and_per_layer(sparsity):
    weight, stats = correlated_problem(16, 100, seed=3)
    k = keep_count(100, sparsity)
    row = get_solver("alps")(weight, stats, CompressionSpec(sparsity=sparsity), scope="row")
    assert (row.mask.sum(dim=1) == k).all()
    layer = get_solver("alps")(weight, stats, CompressionSpec(sparsity=sparsity))  # the reference's scope
    assert int(layer.mask.sum()) == 16 * k
    for result in (row, layer):
        assert torch.equal(result.weight[~result.mask], torch.zeros(int((~result.mask).sum())))


@pytest.mark.parametrize("pattern", [(2, 4), (1, 4), (4, 8)])
def test_nm_masks_keep_exactly_n_of_every_m(pattern):
    n, m = pattern
    weight, stats = correlated_problem(16, 64, seed=4)
    result = get_solver("alps")(weight, stats, CompressionSpec(pattern=pattern), scope="row")
    assert (result.mask.reshape(16, -1, m).sum(-1) == n).all()
    assert (result.weight.reshape(16, -1, m).ne(0).sum(-1) <= n).all()


def test_identity_covariance_keeps_the_dense_values_on_the_support():
    # with C = I the optimum on any support is W there; ADMM (nonconvex) need not find the magnitude
    # support, but it comes within a few percent of it (the global optimum)
    weight, stats = identity_problem(8, 32)
    for spec in (CompressionSpec(sparsity=0.5), CompressionSpec(pattern=(2, 4))):
        alps = get_solver("alps")(weight, stats, spec, scope="row", damping=0.0)
        torch.testing.assert_close(alps.weight, weight * alps.mask)
        magnitude = get_solver("magnitude")(weight, stats, spec)
        assert magnitude.objective <= alps.objective <= 1.05 * magnitude.objective


def test_pcg_refinement_never_raises_the_objective_and_solves_the_support_system():
    weight, stats = correlated_problem(16, 64, seed=5)
    spec = CompressionSpec(sparsity=0.7)
    without = get_solver("alps")(weight, stats, spec, cg_iterations=0, damping=0.0)
    result = get_solver("alps")(weight, stats, spec, cg_iterations=200, cg_tolerance=1e-7, damping=0.0)
    assert torch.equal(without.mask, result.mask)
    assert result.objective <= without.objective
    assert result.history[1] <= result.history[0] + 1e-9
    # optimality on the support: the gradient (W - Θ) C vanishes on the kept entries
    grad = (weight - result.weight).double() @ stats.covariance.double()
    scale = (weight.double() @ stats.covariance.double()).abs().max()
    assert float(grad[result.mask].abs().max() / scale) < 1e-3


def test_masked_cg_matches_a_direct_solve_per_row():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 48, generator=gen, dtype=torch.float64)
    a = x @ x.T / 48 + 0.1 * torch.eye(12, dtype=torch.float64)
    rhs = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    mask = torch.rand(5, 12, generator=gen) < 0.5
    solution, done = masked_cg(a, rhs, mask, torch.zeros_like(rhs), iterations=50, tolerance=1e-12)
    for r in range(5):
        s = mask[r]
        expected = torch.linalg.solve(a[s][:, s], rhs[r, s])
        torch.testing.assert_close(solution[r, s], expected)
        assert (solution[r, ~s] == 0).all()
    assert done <= 13  # CG is exact in at most (support size) steps, here <= 12, plus the stopping test


def test_admm_stops_when_the_support_settles_and_respects_the_cap():
    weight, stats = correlated_problem(16, 64, seed=6)
    c = stats.covariance + 0.01 * torch.diagonal(stats.covariance).mean() * torch.eye(64)
    root = torch.diagonal(c).sqrt()
    a = c / root.unsqueeze(0) / root.unsqueeze(1)
    spec = CompressionSpec(sparsity=0.7)
    projector = Projector(spec, 16, 64, "layer")
    assert projector.kept == keep_count(64, 0.7) * 16
    _, mask, iterations, changes = admm(weight * root, a, projector, ALPSOptions())
    assert iterations < 300 and iterations % 3 == 0 and len(changes) == iterations // 3
    assert changes[-1] < 0.0003  # stopped because the support no longer changed
    assert int(mask.sum()) == projector.kept
    _, _, capped, _ = admm(weight * root, a, projector, ALPSOptions(max_iterations=4))
    assert capped == 4


def test_a_large_initial_penalty_is_lowered_and_still_beats_sparsegpt():
    # ρ far above the spectrum freezes the support at the start: the schedule divides ρ by 5 until it moves
    weight, stats = correlated_problem(32, 64, seed=7)
    spec = CompressionSpec(sparsity=0.7)
    high = get_solver("alps")(weight, stats, spec, rho=1e4)
    assert high.objective < get_solver("sparsegpt")(weight, stats, spec).objective


@pytest.mark.parametrize("spec", [CompressionSpec(pattern=(2, 4), bits=4, group_size=32),
                                  CompressionSpec(sparsity=0.5, bits=4, group_size=32, symmetric=False)])
def test_joint_is_the_alps_support_then_obs_rounding(spec):
    weight, stats = correlated_problem(16, 64, seed=8)
    joint = get_solver("alps")(weight, stats, spec)
    pruned = get_solver("alps")(weight, stats, CompressionSpec(sparsity=spec.sparsity, pattern=spec.pattern))
    assert torch.equal(joint.mask, pruned.mask)
    assert torch.equal(dequantize(joint.codes, joint.scales, joint.zeros), joint.weight)
    assert torch.equal(joint.weight[~joint.mask], torch.zeros(int((~joint.mask).sum())))
    assert len(joint.history) == 3 and joint.history[2] == pytest.approx(joint.objective, rel=1e-4)
    # rounding the ALPS weights beats the SparseGPT joint loop here
    assert joint.objective < get_solver("sparsegpt")(weight, stats, spec).objective


def test_dead_inputs_are_pruned_first():
    weight, stats = correlated_problem(8, 32, seed=9)
    c = stats.covariance.clone()
    c[:, :4] = 0
    c[:4, :] = 0
    stats.covariance = c
    result = get_solver("alps")(weight, stats, CompressionSpec(sparsity=0.5), scope="row")
    assert not result.mask[:, :4].any()
    assert result.objective == pytest.approx(output_error(weight, result.weight, c), rel=1e-5)


def test_quantization_alone_is_refused():
    weight, stats = correlated_problem(4, 16)
    with pytest.raises(ValueError, match="method 'alps' does not do INT4 alone"):
        get_solver("alps")(weight, stats, CompressionSpec(bits=4, group_size=-1))


@pytest.mark.parametrize("options,match", [
    ({"rho": 0.0}, "rho must be a finite float >= 1e-08"),
    ({"rho": float("nan")}, "rho must be a finite float >= 1e-08"),
    ({"max_iterations": -1}, "max_iterations must be an int >= 0"),
    ({"update_every": 0}, "update_every must be an int >= 1"),
    ({"cg_iterations": 1.5}, "cg_iterations must be an int >= 0"),
    ({"cg_tolerance": -1e-3}, "cg_tolerance must be a finite float >= 0"),
    ({"damping": float("inf")}, "damping must be a finite float >= 0"),
    ({"scope": "block"}, r"scope must be one of \('row', 'layer'\)"),
    ({"init": "wanda"}, "takes no option"),
])
def test_bad_options_are_refused_with_the_declared_message(options, match):
    weight, stats = correlated_problem(4, 16)
    with pytest.raises(ValueError, match=match):
        get_solver("alps")(weight, stats, CompressionSpec(sparsity=0.5), **options)


def test_layers_sharing_a_covariance_share_its_eigendecomposition(monkeypatch):
    """q/k/v (gate/up) get the same covariance tensor: one eigh for the group (AWP's ALPS start included), again
    for a new or changed covariance or damping, and every result equals that of a fresh computation bit for bit."""
    import optimum_awp.solvers.alps as alps_module
    from optimum_awp.solvers import shared

    calls = []
    real = alps_module.spectrum
    monkeypatch.setattr(alps_module, "spectrum", lambda a: calls.append(1) or real(a))
    weight, stats = correlated_problem(24, 64, seed=4)
    spec = CompressionSpec(sparsity=0.6)
    shared.clear()
    first = get_solver("alps")(weight, stats, spec)
    second = get_solver("alps")(weight[:8], stats, spec, scope="row")
    started = get_solver("awp")(weight[8:], stats, spec, max_iterations=3, swap_rounds=1)
    assert len(calls) == 1
    shared.clear()
    assert torch.equal(get_solver("alps")(weight[:8], stats, spec, scope="row").weight, second.weight)
    shared.clear()
    assert torch.equal(get_solver("awp")(weight[8:], stats, spec, max_iterations=3, swap_rounds=1).weight,
                       started.weight)
    assert len(calls) == 3
    get_solver("alps")(weight, stats, spec, damping=0.1)  # another damping: another A
    assert len(calls) == 4
    other = type(stats)(stats.covariance.clone())
    assert torch.equal(get_solver("alps")(weight, other, spec).weight, first.weight)
    assert len(calls) == 5
    other.covariance.mul_(2.0)  # changed in place: computed again
    get_solver("alps")(weight, other, spec)
    assert len(calls) == 6

"""AWP: activation-aware pruning and quantization by projected gradient descent (Liu et al., 2025).

Minimises the layer objective L(Θ) = tr((W - Θ) C (W - Θ)ᵀ) over the spec's set by iterative
hard thresholding (IHT) / projected gradient descent::

    Z = Θ + η (W - Θ) C;   Θ = Proj(Z);   η = 1 / λ_max(C)   (power iteration)

``(W - Θ) C`` is minus half the gradient, so η = 1/λ_max is the step 1/L of the gradient's
Lipschitz constant and, with an exact projection, the objective never increases.

What the solver does, by spec:

1. **sparsity** (unstructured per-row top-k, or N:M): IHT from a feasible start (``init``: ALPS's
   solution by default, Wanda's mask before 2026-12-01), until the relative change of L falls below
   ``tolerance`` or after ``max_iterations``. The projection is exact, so L is non-increasing with
   ``momentum=False``. Then the polish and the support exchanges (below).
2. **INT4 grid** (alone or after 1, with the mask then fixed): the grid set is not convex and the
   round-to-nearest "projection" is not exact. Measured on correlated C, plain PGD on the grid
   is stuck at once: η |(W - Θ) C| is far below half a grid step, so every rounded point is a
   fixed point and the result is whatever the start was. So the grid phase is:
   a. with the mask fixed, the phase-1 iterate Θ_S is rounded column by column with OBS error
      feedback (SparseGPT's joint loop / GPTQ, with AWP's mask; targeting Θ_S rather than W
      measured about 10 % lower L);
   b. with the codes fixed, every row's group scales are set to their exact least-squares optimum
      for L (a small (groups, groups) system per row), kept when L goes down. It stays on the grid.

Beyond the paper (``AWPOptions``; the defaults): ``step="diagonal"`` (Jacobi preconditioning: step
η_j = 1 / (λ_max(D^-1/2 C D^-1/2) C_jj) per input and the matching weighted projection, keep the
largest |z_ij| sqrt(C_jj); still monotone) and ``momentum=True`` (Nesterov momentum with adaptive
restart; not monotone, the best iterate is kept); ``step="lambda_max", momentum=False`` is the
paper's plain projected gradient. On an ill-conditioned C the paper's step is
slow: on a synthetic 2048x640 layer with cond(C) = 1.4e6 (power-law spectrum, log-normal channel
scales, 4 outlier channels; cond(D^-1/2 C D^-1/2) = 458), starting from Wanda, it needs ~530
iterations to reach SparseGPT's objective at 50 % unstructured and does not reach it in 600 at
2:4; ``step="diagonal"`` needs 17 / 26 and ``step="diagonal", momentum=True`` 9 / 11, ending
~20 % below SparseGPT. ``init="sparsegpt"`` starts there and only improves.

Support search (docs/results/awp_vs_alps.md). IHT's step is too short to exchange support entries: with the
Jacobi step, a dropped entry j displaces a kept entry i only when g_j² / C_jj > λ² θ_i² C_ii
(λ = λ_max(D^-1/2 C D^-1/2), tens to hundreds on real layers), so from Wanda's support it stalls at a
support whose objective is 1.4x ALPS's on Gemma-3-270M at 70 %. Three ways out, as options:

- ``swap_rounds``: after the polish, rounds of exchanges with a unit Jacobi step and exact per-row
  acceptance (``swap``; hard thresholding pursuit, monotone);
- ``init="alps"``: start from ALPS's solution (its ADMM support search with a growing penalty, then PCG;
  ``alps.py``), in the scope's set; AWP's iterations, polish and exchanges then only lower L;
- ``anneal_iterations``: gradual pruning from the dense weight (a top-k that tightens to the target).

They, and the fixed-support CG polish, live in ``awp_support.py``.

Cost: one (out, in) @ (in, in) product per iteration (momentum needs no extra product: the
residual is affine in Θ); the objective of the new iterate comes
from the same product, and the sparsity projection only re-sorts the rows whose support would
change (a cheap min/max test), so late iterations cost about one matmul.

Dead inputs (C_jj = 0) do not affect L; their target weights are set to 0, so they are the first
pruned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .options import SolverOptions, option
from .awp_support import anneal, gradient_step, polish, residual_product, start_point, swap
from .projections import Projected, check_problem, keep_count, nm_mask, topk_mask
from .shared import shared
from .sparsegpt import obs_compress

logger = logging.getLogger(__name__)

INITS = ("wanda", "magnitude", "sparsegpt", "alps")
STEPS = ("lambda_max", "diagonal")
SCOPES = ("row", "layer")


def prepare_covariance(
    covariance: torch.Tensor, damping: float = 0.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetrised covariance (in, in) in ``dtype``, ``damping * mean(diag)`` added to its diagonal; dead inputs (in,).

    Dead inputs are those with ``C_jj <= 0`` (an input that is always zero).
    """
    c = covariance.to(dtype)
    c = (c + c.T) / 2
    diag = torch.diagonal(c)
    dead = diag <= 0
    if damping > 0:
        live = diag[~dead]
        mean = live.mean() if live.numel() else torch.ones((), dtype=dtype)
        c = c + damping * mean * torch.eye(c.shape[0], dtype=dtype, device=c.device)
    return c, dead


def lambda_max(matrix: torch.Tensor, iterations: int = 50, safety: float = 1.01) -> float:
    """Largest eigenvalue of a symmetric PSD ``matrix`` (n, n) by power iteration in float64, times ``safety``.

    Power iteration approaches λ_max from below; the small ``safety`` factor keeps η = 1/λ below
    the true bound so that the IHT objective stays non-increasing.
    """
    a = matrix.to(torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(a.shape[0], generator=gen, dtype=torch.float64).to(a.device)
    v = v / v.norm()
    estimate = 0.0
    for _ in range(iterations):
        u = a @ v
        norm = u.norm()
        if norm == 0:
            return 0.0
        estimate = float(v @ u)
        v = u / norm
    estimate = max(estimate, float(v @ (a @ v)))
    return estimate * safety


class SparseProjector:
    """The exact sparsity projection of the spec, re-sorting only the rows whose support changes.

    ``__call__(scores, mask)`` returns the kept entries, bool (out, in), of the largest ``|scores|``
    per row (unstructured, ``scope="row"``), over the whole matrix (unstructured, ``scope="layer"``:
    the same number of weights kept in the layer, spread over the rows as the scores say) or per
    group of M (N:M). When the current ``mask`` is still a valid top-k selection of a row (its
    smallest kept score >= its largest dropped one) the row keeps it, so ties are broken in favour
    of the current support.
    """

    def __init__(self, spec: CompressionSpec, in_features: int, scope: str = "row"):
        self.pattern = spec.pattern
        self.k = None if spec.pattern is not None else keep_count(in_features, spec.sparsity)
        self.layer = spec.pattern is None and scope == "layer"
        self.counts: torch.Tensor | None = None

    def with_counts(self, mask: torch.Tensor) -> "SparseProjector":
        """The per-row projector that keeps, in every row, as many entries as ``mask`` (out, in) keeps there.

        For the layer scope (N:M and the row scope are per row already): support exchanges within rows then
        keep every row's count, hence the layer's.
        """
        if not self.layer:
            return self
        fixed = SparseProjector.__new__(SparseProjector)
        fixed.pattern, fixed.k, fixed.layer = None, self.k, False
        fixed.counts = mask.sum(1)
        return fixed

    def full(self, scores: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Fresh selection from ``scores`` (out, in) (the ``rows`` of the matrix, when given)."""
        if self.pattern is not None:
            return nm_mask(scores, *self.pattern)
        if self.counts is not None:
            counts = self.counts if rows is None else self.counts[rows]
            order = torch.argsort(scores, dim=1, descending=True, stable=True)
            keep = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0) < counts.unsqueeze(1)
            return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(1, order, keep)
        if self.layer:
            flat = scores.reshape(-1)
            mask = torch.zeros(flat.shape, dtype=torch.bool, device=scores.device)
            mask[torch.topk(flat, self.k * scores.shape[0], sorted=False).indices] = True
            return mask.reshape(scores.shape)
        return topk_mask(scores, self.k)

    def __call__(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a = scores.abs()
        if mask is None or self.layer:
            return self.full(a)
        # arithmetic rather than torch.where (several times faster on CPU): a >= 0, so dropped
        # entries read as 0 for the max and kept entries as a + big for the min
        dropped = (~mask).to(a.dtype)
        big = float(a.max()) + 1.0
        if self.pattern is not None:
            m = self.pattern[1]
            shape = (a.shape[0], -1, m)
            hi = (a * dropped).reshape(shape).amax(-1)
            lo = (a + dropped * big).reshape(shape).amin(-1)
            stale = (lo < hi).any(dim=1)
        else:
            hi = (a * dropped).amax(1)
            lo = (a + dropped * big).amin(1)
            stale = lo < hi
        rows = stale.nonzero().flatten()
        if rows.numel() == 0:
            return mask
        if rows.numel() > a.shape[0] // 2:
            return self.full(a)
        new = mask.clone()
        new[rows] = self.full(a[rows], rows)
        return new


def iht(
    target: torch.Tensor,
    c: torch.Tensor,
    theta: torch.Tensor,
    mask: torch.Tensor,
    projector: SparseProjector,
    step: torch.Tensor | float,
    *,
    scale: torch.Tensor | None = None,
    max_iterations: int = 100,
    tolerance: float = 1e-4,
    momentum: bool = False,
    norm: float = 1.0,
    history: list[float] | None = None,
    bf16_products: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Iterative hard thresholding for sparsity from a feasible ``theta`` (out, in) with kept ``mask`` (out, in).

    Each iteration: ``Z = Y + step * (W - Y) C`` (``Y = Θ`` without momentum), keep the largest
    ``|Z * scale|`` (``scale`` (in,) or None) per the projector, zero the rest. ``step`` is η or a
    per-input tensor (in,). Stops after ``max_iterations`` or when the relative change of L is
    below ``tolerance``. Appends ``L / norm`` of each iterate to ``history``. ``bf16_products``:
    compute the products (W - Θ) C in bfloat16 (the iterates, steps and L stay in C's dtype).
    Returns the best iterate, its mask and the number of iterations run.
    """
    history = [] if history is None else history
    c_product = c.to(torch.bfloat16) if bf16_products else None
    grad, loss = residual_product(target, c, theta, c_product)
    best = (loss, theta, mask)
    prev_theta = prev_grad = None
    restart = 1
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        previous = (prev_theta, prev_grad) if momentum and prev_theta is not None else None
        z = gradient_step(theta, grad, step, previous, beta=(restart - 1) / (restart + 2))
        new_mask = projector(z if scale is None else z * scale, mask)
        new_theta = z.mul_(new_mask)
        new_grad, new_loss = residual_product(target, c, new_theta, c_product)
        history.append(new_loss / norm)
        change = abs(loss - new_loss) / max(loss, 1e-30)
        restart = 1 if new_loss > loss else restart + 1
        prev_theta, prev_grad = theta, grad
        theta, grad, loss, mask = new_theta, new_grad, new_loss, new_mask
        if loss < best[0]:
            best = (loss, theta, mask)
        if change < tolerance:
            break
    return best[1], best[2], iterations


def least_squares_scales(
    target: torch.Tensor,
    c: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int = 4,
    chunk_elements: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares group scales for fixed codes: minimise L over ``scales`` (out, groups).

    With ``q`` the centred codes (codes - zero), row r's weights are ``sum_g s_g q_g`` and L is a
    quadratic in its scales: ``A s = b`` with ``A_gh = q_g C q_hᵀ`` and ``b_g = q_g C wᵀ``.
    Rows whose system is singular or whose solution has a non-positive scale keep their scales.
    Returns ``(dequant (out, in) float32, scales (out, groups) float32)``. Rows are processed in
    chunks of about ``chunk_elements`` intermediate entries.
    """
    out_features, in_features = codes.shape
    groups = scales.shape[1]
    g = in_features // groups
    zero = torch.full_like(scales, float(2 ** (bits - 1))) if zeros is None else zeros
    centred = (codes.to(c.dtype).reshape(out_features, groups, g) - zero.to(c.dtype).unsqueeze(-1))
    c_blocks = c.reshape(groups, g, in_features)
    new_scales = scales.clone()
    rows_per_chunk = max(1, chunk_elements // (groups * in_features))
    for r0 in range(0, out_features, rows_per_chunk):
        r1 = min(out_features, r0 + rows_per_chunk)
        q = centred[r0:r1]
        m = torch.einsum("ogi,gij->ogj", q, c_blocks)  # (rows, groups, in): q_g C
        a = (m.reshape(r1 - r0, groups, groups, g) * q.reshape(r1 - r0, 1, groups, g)).sum(-1).to(torch.float64)
        b = (m * target[r0:r1].to(c.dtype).unsqueeze(1)).sum(-1).to(torch.float64)
        empty = torch.diagonal(a, dim1=1, dim2=2) <= 0  # (rows, groups): no nonzero code
        # an empty group does not affect L: its equation becomes s_g = old scale
        coupled = ~(empty.unsqueeze(-1) | empty.unsqueeze(-2))
        a = torch.where(coupled, a, torch.zeros((), dtype=a.dtype, device=a.device))
        a = a + torch.diag_embed(empty.to(a.dtype))
        b = torch.where(empty, scales[r0:r1].to(torch.float64), b)
        solution, info = torch.linalg.solve_ex(a, b.unsqueeze(-1))
        solution = solution.squeeze(-1)
        ok = (info == 0) & (solution > 0).all(dim=1) & torch.isfinite(solution).all(dim=1)
        new_scales[r0:r1] = torch.where(ok.unsqueeze(1), solution.to(scales.dtype), scales[r0:r1])
    dequant = (centred.to(torch.float32) * new_scales.unsqueeze(-1)).reshape(out_features, in_features)
    return dequant, new_scales


@dataclass(frozen=True)
class AWPOptions(SolverOptions):
    """AWP's options; the defaults are the product's (Jacobi step with momentum, docs/results/awp_convergence.md;
    ALPS's solution as the start and support exchanges, docs/results/awp_vs_alps.md)."""

    init: str = option("alps", "feasible start of the sparsity phase (alps: ALPS's solution, its ADMM support search "
                       "and PCG, in the scope's set; docs/results/awp_vs_alps.md)", choices=INITS)
    max_iterations: int = option(100, "iteration cap of the sparsity phase", minimum=0)
    tolerance: float = option(1e-4, "stop when the relative change of the layer objective falls below this",
                              minimum=0.0)
    damping: float = option(0.01, "fraction of mean(diag C) added to the diagonal of C", minimum=0.0)
    step: str = option("diagonal", "gradient step: lambda_max (the paper's 1/λ_max(C)) or diagonal "
                       "(Jacobi-preconditioned)", choices=STEPS)
    momentum: bool = option(True, "Nesterov momentum with adaptive restart (the best iterate is kept)")
    scope: str = option("row", "unstructured sparsity per row (each row keeps the same count) or per layer "
                        "(N:M ignores it)", choices=SCOPES)
    bf16_products: bool = option(True, "iteration products (W - Θ) C in bfloat16 (faster on AVX512-BF16/AMX CPUs "
                                 "and GPUs, slower where bf16 is emulated; polish, objective and grid phase stay "
                                 "float32)")
    polish_iterations: int = option(10, "after the sparsity phase, at most this many float32 conjugate-gradient "
                                    "iterations on the values of the fixed support (never increases L)", minimum=0)
    anneal_iterations: int = option(0, "gradual pruning from the dense weight before the sparsity phase: this many "
                                    "projected steps onto a per-row top-k that tightens to the target (0: start from "
                                    "init)", minimum=0)
    swap_rounds: int = option(20, "after the polish, at most this many rounds of support exchanges within rows, with "
                              "exact per-row acceptance (never increases L)", minimum=0)
    swap_cg_iterations: int = option(10, "conjugate-gradient iterations on a row's new support in each exchange round",
                                     minimum=1)


@register_solver("awp", options=AWPOptions, summary="projected gradient descent on the layer objective (this package)")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: AWPOptions) -> SolverResult:
    """AWP on ``weight`` (out, in) with ``stats.covariance`` (in, in); see the module docstring and ``AWPOptions``.

    With damping the history is that of the damped objective; the reported objective is exact (undamped).
    """
    check_problem(weight, stats, spec)
    out_features, in_features = weight.shape
    prepared = _prepare(stats.covariance, options.damping, options.step if spec.prunes else None)
    c, dead = prepared.c, prepared.dead
    target = weight.to(torch.float32).clone()
    target[:, dead] = 0
    norm = float(((target @ c) * target).sum())
    norm = norm if norm > 0 else 1.0
    history: list[float] = []
    iterations = 0

    theta = target.clone()
    mask = None
    if spec.prunes:
        projector = SparseProjector(spec, in_features, options.scope)
        if options.anneal_iterations and not projector.layer:
            theta0, mask0 = anneal(target, c, projector, prepared.eta, scale=prepared.scale,
                                   iterations=options.anneal_iterations, momentum=options.momentum,
                                   bf16_products=options.bf16_products)
            iterations += options.anneal_iterations
        else:
            theta0, mask0 = start_point(weight, stats.covariance, spec, options.init, per_row=options.scope == "row",
                                   damping=options.damping)
        if projector.layer and int(mask0.sum()) > projector.k * out_features:
            # SparseGPT's block-wise rounding may keep a few more than the layer's count: trim them
            mask0 = projector(theta0, None) & mask0
            theta0 = theta0 * mask0
        theta, mask, phase = iht(
            target, c, theta0, mask0, projector, prepared.eta, scale=prepared.scale,
            max_iterations=options.max_iterations, tolerance=options.tolerance, momentum=options.momentum, norm=norm,
            history=history, bf16_products=options.bf16_products,
        )
        iterations += phase
        if options.polish_iterations:
            theta, _, polished = polish(target, c, theta, mask, prepared.diagonal, max_iterations=options.polish_iterations,
                                        tolerance=options.tolerance / 10, norm=norm, history=history)
            iterations += polished
        if options.swap_rounds:
            theta, mask, rounds = swap(target, c, theta, mask, projector.with_counts(mask), prepared.diagonal,
                                       rounds=options.swap_rounds,
                                       cg_iterations=options.swap_cg_iterations, tolerance=options.tolerance / 10,
                                       norm=norm, history=history)
            iterations += rounds
        last = history[-1] if history else float("nan")
        logger.debug("awp sparse phase: %d iterations, objective %.4g", iterations, last)

    if not spec.quantizes:
        point = Projected(theta, mask)
        return point.to_result(weight, stats.covariance, iterations=iterations, history=history)

    # OBS rounding of the sparse optimum Θ_S: when Θ_S is stationary on its support,
    # L(Q) = L(Θ_S) + ||(Θ_S - Q) C^1/2||², so Θ_S (not W) is the right target
    point = obs_compress(theta, stats.covariance, spec, mask=mask)
    best_loss = residual_product(target, c, point.weight)[1]
    dequant, scales = least_squares_scales(target, c, point.codes, point.scales, point.zeros, spec.bits)
    loss = residual_product(target, c, dequant)[1]
    if loss < best_loss:
        point = Projected(dequant, point.mask, point.codes, scales, point.zeros)
        best_loss = loss
    history.append(best_loss / norm)
    return point.to_result(weight, stats.covariance, iterations=iterations, history=history)


@dataclass(frozen=True)
class _Prepared:
    """What every layer fed one covariance shares: damped C (in, in) float32, dead inputs (in,), the step η
    (a float or (in,)), the projection's score scale (in,) or None, and diag(C) with dead entries 1 (in,)."""

    c: torch.Tensor
    dead: torch.Tensor
    eta: torch.Tensor | float
    scale: torch.Tensor | None
    diagonal: torch.Tensor


def _prepare(covariance: torch.Tensor, damping: float, step: str | None) -> _Prepared:
    """The damped C, its dead inputs and the step for ``covariance``, computed once per covariance tensor.

    Linears fed the same input (q/k/v, gate/up) share it (``shared``): the power iteration for λ_max
    runs once per group, not once per linear.
    """
    return shared(covariance, ("awp", damping, step), lambda: _compute_preparation(covariance, damping, step))


def _compute_preparation(covariance: torch.Tensor, damping: float, step: str | None) -> _Prepared:
    """What ``_prepare`` keeps: computed from ``covariance`` (in, in), the damping fraction and the step rule."""
    c, dead = prepare_covariance(covariance, damping)
    diagonal = torch.diagonal(c).clone()
    diagonal[dead | (diagonal <= 0)] = 1.0
    eta, scale = _step(c, dead, step) if step is not None else (0.0, None)
    return _Prepared(c, dead, eta, scale, diagonal)


def _step(c: torch.Tensor, dead: torch.Tensor, step: str) -> tuple[torch.Tensor | float, torch.Tensor | None]:
    """η (a float, or per input (in,) for "diagonal") and the projection's score scale (in,) or None."""
    if step == "lambda_max":
        lam = lambda_max(c)
        return (1.0 / lam if lam > 0 else 0.0), None
    diag = torch.diagonal(c).clone()
    diag[dead | (diag <= 0)] = 1.0
    root = diag.sqrt()
    lam = lambda_max(c / root.unsqueeze(0) / root.unsqueeze(1))
    return (1.0 / (lam * diag) if lam > 0 else torch.zeros_like(diag)), root

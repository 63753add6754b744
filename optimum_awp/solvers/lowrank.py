"""Activation-aware low-rank factors (LatentLLM's closed form), alone or as a correction of AWP's sparse solution.

**Low-rank alone** (a spec with neither sparsity nor bits: the "rank" kind). The best Θ of rank r for the
layer objective L(Θ) = ‖(W − Θ) C^{1/2}‖²_F is, from the SVD W C^{1/2} = U S Vᵀ (Koike-Akino et al., 2025),

    Θ = B A,   B = U_r (out, r),   A = S_r V_rᵀ C^{-1/2} (r, in)

because Θ ↦ Θ C^{1/2} maps the rank-r matrices onto the rank-r matrices of the row space of C^{1/2}, where
Eckart–Young gives U_r S_r V_rᵀ; it is a global optimum, while the SVD of W alone (``activation_aware=False``,
the baseline) ignores which inputs the activations use. C is diagonalised once, C_δ = C + δ mean(diag C) I =
Q diag(λ) Qᵀ in float64 (δ = ``damping``), so W C_δ^{1/2} = (W Q diag(√λ)) Qᵀ and
A = S_r Ṽ_rᵀ diag(λ^{-1/2}) Qᵀ with W Q diag(√λ) = U S Ṽᵀ: C^{±1/2} is never formed. Eigenvalues at or below
``rtol`` λ_max are treated as 0 (a pseudo-inverse): directions the calibration never excites get no weight.
Dead inputs (C_jj = 0) do not affect L; as in AWP their target weights are 0.

**Sparse + low-rank** (a spec that prunes). Θ = Θ_S + B A with Θ_S in the sparsity set (unstructured per
row, or N:M) and B A of rank r, by block coordinate descent on the same damped objective::

    Θ_S ← AWP(W)                                   (the package's sparse solver, its defaults)
    repeat ``alternations`` times:
        B A ← the closed form above for the residual target W − Θ_S      (exact minimiser)
        Θ_S ← AWP's IHT + polish for the target W − B A, from the current Θ_S (never worse than its start)

Each step minimises L over its block with the other fixed, so L never goes up (a step that would, by
rounding, is not taken; the history records L after every step). The last step is a low-rank step.

The rank: ``rank`` >= 1 is r itself (integer-valued); 0 < ``rank`` < 1 is the share of the layer's parameters
the factors keep, r = max(1, floor(rank · out · in / (out + in))); r is at most min(out, in).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .awp import AWPOptions, SparseProjector, iht, prepare_covariance
from .awp import _prepare as awp_prepare
from .awp import solve as awp_solve
from .awp_support import polish
from .base import (
    CompressionSpec,
    LayerStats,
    SolverResult,
    register_solver,
    relative_objective,
)
from .options import SolverOptions, option
from .projections import check_problem
from .shared import shared

logger = logging.getLogger(__name__)

RTOL = 1e-10
"""Eigenvalues of a damped C at or below RTOL · λ_max count as 0 (a float64 guard: damping makes C_δ definite)."""


@dataclass(frozen=True)
class LowRankOptions(SolverOptions):
    """lowrank's options: the rank, how C is regularised, and the sparse + low-rank alternation."""

    rank: float = option(0.5, "rank r of the factors B (out, r) A (r, in) when >= 1 (an integer), or, in (0, 1), the "
                         "share of each layer's parameters they keep: r = floor(rank * out * in / (out + in))",
                         minimum=1e-6)
    damping: float = option(0.01, "fraction of mean(diag C) added to the diagonal of C before C^-1/2", minimum=0.0)
    activation_aware: bool = option(True, "factor W C^1/2 (the optimum of the layer objective); False: plain SVD "
                                    "of W (the activation-blind baseline)")
    alternations: int = option(3, "with sparsity: low-rank steps alternated with AWP's sparse refits (each "
                               "lowers the layer objective)", minimum=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank >= 1 and self.rank != int(self.rank):
            raise ValueError(f"LowRankOptions.rank must be an integer when >= 1 (a rank) or in (0, 1) (a share of the "
                             f"parameters kept), got {self.rank!r}.")


def layer_rank(rank: float, out_features: int, in_features: int) -> int:
    """The rank r of a layer of weight (out, in): ``rank`` itself when >= 1, else the largest r whose factors
    keep at most that share of the out · in parameters (at least 1); at most min(out, in)."""
    if rank >= 1:
        r = int(rank)
    else:
        r = max(1, math.floor(rank * out_features * in_features / (out_features + in_features) + 1e-9))
    return min(r, out_features, in_features)


@dataclass(frozen=True)
class Whitening:
    """C_δ = Q diag(λ) Qᵀ, float64: ``basis`` Q (in, in), ``root`` √λ (in,), ``inverse_root`` λ^{-1/2} (in,)
    with 0 where λ <= rtol · λ_max (pseudo-inverse), ``damped`` C_δ (in, in) and the ``dead`` inputs (in,)."""

    basis: torch.Tensor
    root: torch.Tensor
    inverse_root: torch.Tensor
    damped: torch.Tensor
    dead: torch.Tensor


def whitening(covariance: torch.Tensor, damping: float = 0.0, rtol: float | None = None) -> Whitening:
    """Eigendecomposition of the damped covariance (in, in) (``prepare_covariance``: symmetrised, ``damping``
    · mean of the live diagonal added), in float64, with the pseudo-inverse square root of its spectrum.

    Eigenvalues at or below ``rtol`` · λ_max count as 0. Default: ``RTOL`` with damping; without, the numerical
    rank of C in its own precision (numpy's ``matrix_rank`` rule), rtol = in · eps(covariance.dtype), so the
    rounding noise of a float32 C is not inverted.
    """
    if rtol is None:
        rtol = RTOL if damping > 0 else max(RTOL, covariance.shape[0] * torch.finfo(covariance.dtype).eps)
    c, dead = prepare_covariance(covariance, damping, torch.float64)
    values, basis = torch.linalg.eigh(c)
    values = values.clamp_min(0)
    top = float(values.max()) if values.numel() else 0.0
    live = values > rtol * top
    root = values.sqrt() * live
    inverse_root = torch.where(live, values.clamp_min(1e-300).rsqrt(), torch.zeros_like(values))
    return Whitening(basis, root, inverse_root, c, dead)


def best_rank_factors(target: torch.Tensor, white: Whitening, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank-``rank`` minimiser B A of ‖(target − B A) C_δ^{1/2}‖²_F for ``target`` (out, in).

    Returns B = U_r (out, r) and A = S_r Ṽ_rᵀ diag(λ^{-1/2}) Qᵀ (r, in), float64, from the SVD
    target Q diag(√λ) = U S Ṽᵀ.
    """
    m = (target.to(torch.float64) @ white.basis) * white.root
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    b = u[:, :rank]
    a = ((s[:rank, None] * vh[:rank]) * white.inverse_root) @ white.basis.T
    a[:, white.dead] = 0  # exactly: no calibration token reaches a dead input (only rounding would)
    return b, a


def plain_svd_factors(target: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The truncated SVD of ``target`` (out, in): B = U_r (out, r), A = S_r V_rᵀ (r, in), float64 (the
    activation-blind baseline: optimal for C = I only)."""
    u, s, vh = torch.linalg.svd(target.to(torch.float64), full_matrices=False)
    return u[:, :rank], s[:rank, None] * vh[:rank]


def damped_objective(target: torch.Tensor, theta: torch.Tensor, c: torch.Tensor) -> float:
    """tr((T − Θ) C (T − Θ)ᵀ) in float64 for T, Θ (out, in) and C (in, in) float64."""
    delta = target.to(torch.float64) - theta.to(torch.float64)
    return float(((delta @ c) * delta).sum())


def _whitening_of(covariance: torch.Tensor, damping: float) -> Whitening:
    """``whitening(covariance, damping)``, computed once per covariance tensor (q/k/v and gate/up share one:
    the calibration gives them the very same tensor; ``shared``)."""
    return shared(covariance, ("lowrank", damping), lambda: whitening(covariance, damping))


def _factors(target: torch.Tensor, white: Whitening, rank: int, aware: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return best_rank_factors(target, white, rank) if aware else plain_svd_factors(target, rank)


def sparse_plus_lowrank(
    weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: LowRankOptions, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[float], int]:
    """Θ_S + B A for ``weight`` (out, in) by the alternation of the module docstring.

    Returns (Θ_S (out, in) float32, mask (out, in), B (out, r) float64, A (r, in) float64, the history of the
    damped relative objective after every step, the AWP iterations run).
    """
    awp_options = AWPOptions(damping=options.damping)
    white = _whitening_of(stats.covariance, options.damping)
    c64 = white.damped
    target = weight.to(torch.float64).clone()
    target[:, white.dead] = 0
    norm = damped_objective(target, torch.zeros_like(target), c64) or 1.0

    sparse = awp_solve(weight, stats, CompressionSpec(sparsity=spec.sparsity, pattern=spec.pattern), awp_options)
    theta_s, mask, iterations = sparse.weight, sparse.mask, sparse.iterations
    loss = damped_objective(target, theta_s, c64)
    history = [loss / norm]
    prepared = awp_prepare(stats.covariance, options.damping, awp_options.step)
    projector = SparseProjector(spec, weight.shape[1], awp_options.scope)
    b = torch.zeros(weight.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, weight.shape[1], dtype=torch.float64)
    low = torch.zeros_like(target)
    for step in range(options.alternations):
        if step:  # Θ_S for the target W − B A, from the current Θ_S
            refit_target = (target - low).to(torch.float32)
            new_s, new_mask, its = iht(
                refit_target, prepared.c, theta_s, mask, projector, prepared.eta, scale=prepared.scale,
                max_iterations=awp_options.max_iterations, tolerance=awp_options.tolerance,
                momentum=awp_options.momentum, bf16_products=awp_options.bf16_products,
            )
            new_s, _, polished = polish(refit_target, prepared.c, new_s, new_mask, prepared.diagonal,
                                        max_iterations=awp_options.polish_iterations, tolerance=awp_options.tolerance / 10)
            iterations += its + polished
            new_loss = damped_objective(target, new_s.to(torch.float64) + low, c64)
            if new_loss < loss:
                theta_s, mask, loss = new_s * new_mask, new_mask, new_loss
            history.append(loss / norm)
        new_b, new_a = _factors(target - theta_s.to(torch.float64), white, rank, options.activation_aware)
        new_low = new_b @ new_a
        new_loss = damped_objective(target, theta_s.to(torch.float64) + new_low, c64)
        if new_loss < loss or step == 0:
            b, a, low, loss = new_b, new_a, new_low, new_loss
        history.append(loss / norm)
    return theta_s, mask, b, a, history, iterations


@register_solver("lowrank", options=LowRankOptions, kinds=("rank", "prune"),
                 summary="activation-aware low-rank factors (LatentLLM's closed form); with sparsity, AWP + low-rank")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: LowRankOptions) -> SolverResult:
    """Θ = B A (no sparsity) or Θ_S + B A (sparsity) for ``weight`` (out, in) with ``stats.covariance`` (in, in).

    See the module docstring. ``result.factors`` is (B (out, r), A (r, in)) float32; ``result.sparse_weight``
    and ``result.mask`` the sparse part with sparsity; ``result.history`` the damped relative objective after
    each step (sparse + low-rank) and the reported ``objective`` the exact (undamped) relative one.
    """
    check_problem(weight, stats, spec)
    out_features, in_features = weight.shape
    rank = layer_rank(options.rank, out_features, in_features)
    if spec.prunes:
        theta_s, mask, b, a, history, iterations = sparse_plus_lowrank(weight, stats, spec, options, rank)
        theta = (theta_s.to(torch.float64) + b @ a).to(torch.float32)
        return SolverResult(weight=theta, mask=mask, objective=relative_objective(weight, theta, stats.covariance),
                            iterations=iterations, history=history, factors=(b.float(), a.float()),
                            sparse_weight=theta_s.to(torch.float32))
    if options.activation_aware:
        white = _whitening_of(stats.covariance, options.damping)
        target = weight.to(torch.float64).clone()
        target[:, white.dead] = 0
        b, a = best_rank_factors(target, white, rank)
    else:
        b, a = plain_svd_factors(weight, rank)
    theta = (b @ a).to(torch.float32)
    return SolverResult(weight=theta, objective=relative_objective(weight, theta, stats.covariance),
                        factors=(b.float(), a.float()))


__all__ = ["LowRankOptions", "Whitening", "best_rank_factors", "layer_rank", "plain_svd_factors", "solve",
           "sparse_plus_lowrank", "whitening"]

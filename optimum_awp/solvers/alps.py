"""ALPS: ADMM with an adaptive penalty, then PCG on the fixed support (Meng et al., NeurIPS 2024).

A port of ``ALPS_prune.ALPS_admm`` and ``cg_batch`` from mazumder-lab/ALPS (``alps.py``) as a pure
function. The problem is the layer objective under the sparsity constraint,

    min_Θ  tr((W - Θ) C (W - Θ)ᵀ)   s.t.  Θ in the spec's sparsity set,

solved in the reference's normalised coordinates: C is damped (``damping * mean(diag C)`` on the
diagonal) and scaled to unit diagonal, A = D^-1/2 C D^-1/2 with d = sqrt(diag C) (+1e-8), and the
weights are B = W d (columns scaled). Then the objective is tr((W d - B) A (W d - B)ᵀ) and, in
the reference's operator splitting (f(B) + indicator(D), B = D)::

    B ← (Y - V + ρ D)(A + ρ I)^-1          Y = (W d) A            (the ridge step, via eigh(A))
    D ← Proj(B + V / ρ)                                           (top-k of |.|: the support update)
    V ← V + ρ (B - D)

Every ``update_every`` (3) iterations the support of D is compared with the one 3 iterations
before and the penalty is adapted exactly as the reference does, with s = changed entries / kept
entries:

- s > 0.1: ρ *= 1.3;  s > 0.005: ρ *= 1.2 (both mark ρ as "started");
- some change but s <= 0.005: ρ *= 1.1 if started, else ρ /= 5 and D, V restart from the start;
- no change: stop if started, else ρ /= 5;
- ρ is capped at 1e6, and after ``switch_iterations`` (30) the loop stops once s < 0.0003;
- at most ``max_iterations`` (300) iterations. D starts at Proj(W d) (the magnitude mask in
  normalised coordinates, i.e. Wanda's scores |W_ij| sqrt(C_jj)) and V at 0.

Then the support is that of Proj(B) (the last ridge iterate, as the reference) and B is refined on
it by conjugate gradients on A_SS b_S = Y_S for every row at once (``cg_iterations`` (10),
relative residual ``cg_tolerance`` (1e-4)). The reference's CG takes a preconditioner and passes
none; in these coordinates A has a unit diagonal, so the identity *is* the Jacobi preconditioner
of C. Θ = B / d.

Sets: ``scope="layer"`` (the reference: the kept count ``keep_count(in, p) * out`` over the whole
matrix, rows of unequal sparsity), ``scope="row"`` (every row keeps ``keep_count(in, p)``, AWP's
default set); N:M keeps N of every M consecutive inputs of each row (as the reference's reshape).
INT4 (joint): the paper and code prune only; here the ALPS support and the PCG weights Θ_S are
then rounded column by column with OBS error feedback on the fixed mask (``obs_compress(Θ_S, C,
spec, mask=...)``, the same grid phase as AWP's step a, without AWP's scale refit): with Θ_S
stationary on its support L(Q) = L(Θ_S) + ‖(Θ_S - Q) C^1/2‖², so Θ_S is the rounding's target.

Differences from the reference, on purpose: the weights of dead inputs (C_jj = 0) are zeroed
first (they do not affect L; SparseGPT and AWP do the same), so they are the first pruned; the
kept count is ``keep_count`` per row (times ``out`` for the layer scope) rather than
``round((1 - p) * out * in)``; CG stops on the residual of the restricted system (the reference
tests the unrestricted residual ‖A X - Y‖, which does not vanish, so it always runs its 10
iterations); on a restart only D and V are reset (the reference's reset of B is overwritten by the next ridge
step unless the loop stops right there); the reference's objective printouts are not computed. Cost: one (out, in) @ (in, in)
product per ADMM iteration (two when in > 3 out, where forming (A + ρ I)^-1 at each ρ change would
cost more), one eigendecomposition of A (float64; once per group of linears fed the same input, ``shared``), and one
product per CG iteration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .awp import SCOPES, prepare_covariance
from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .options import SolverOptions, option
from .projections import Projected, check_problem, keep_count, nm_mask
from .shared import shared
from .sparsegpt import obs_compress

logger = logging.getLogger(__name__)

RHO_MAX = 1e6  # the reference's cap on the penalty


@dataclass(frozen=True)
class ALPSOptions(SolverOptions):
    """ALPS's options; the defaults are those of the reference (``ALPS_admm``, ``cg_batch``, llama.py's ρ)."""

    rho: float = option(0.1, "initial ADMM penalty ρ, on C scaled to unit diagonal (the reference's llama.py "
                        "and opt.py pass 0.1)", minimum=1e-8)
    max_iterations: int = option(300, "iteration cap of the ADMM", minimum=0)
    update_every: int = option(3, "ADMM iterations between support comparisons and penalty updates", minimum=1)
    switch_iterations: int = option(30, "ADMM iterations before the support-stability stop (fewer than 3 in "
                                    "10000 kept entries changed) may fire", minimum=0)
    cg_iterations: int = option(10, "conjugate-gradient iterations on the fixed support", minimum=0)
    cg_tolerance: float = option(1e-4, "CG stops when every row's restricted residual is below this fraction of "
                                 "its right-hand side", minimum=0.0)
    damping: float = option(0.01, "fraction of mean(diag C) added to the diagonal of C", minimum=0.0)
    scope: str = option("layer", "unstructured sparsity over the whole layer (the reference) or per row (each row "
                        "keeps the same count, AWP's default; N:M ignores it)", choices=SCOPES)


class Projector:
    """The exact sparsity projection: ``projector(z)`` keeps the largest |z| of z (out, in), bool (out, in).

    ``scope="layer"``: the ``keep_count(in, p) * out`` largest of the whole matrix (the reference's
    ``topk`` over all entries); ``"row"``: ``keep_count(in, p)`` per row; N:M: N per group of M inputs.
    Exactly that many are kept (``torch.topk`` breaks ties). ``kept`` is the total kept count.
    """

    def __init__(self, spec: CompressionSpec, out_features: int, in_features: int, scope: str = "layer"):
        self.pattern = spec.pattern
        self.layer = scope == "layer"
        if spec.pattern is not None:
            self.k = in_features // spec.pattern[1] * spec.pattern[0]
        else:
            self.k = keep_count(in_features, spec.sparsity)
        self.kept = self.k * out_features

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        a = z.abs()
        if self.pattern is not None:
            return nm_mask(a, *self.pattern)
        mask = torch.zeros(a.shape, dtype=torch.bool, device=a.device)
        if self.layer:
            mask.view(-1)[torch.topk(a.reshape(-1), self.kept, sorted=False).indices] = True
        else:
            mask.scatter_(1, torch.topk(a, self.k, dim=1, sorted=False).indices, True)
        return mask


class _RidgeSolver:
    """``R ↦ R (A + ρ I)^-1`` for R (out, in), A (in, in) symmetric PSD, from A's eigendecomposition.

    Forms the inverse (float32 (in, in)) at each new ρ when that is cheaper than applying the
    eigenvectors twice per call (``in <= 3 out``, the cost of 3 calls per ρ change), else applies
    ``((R Q) / (λ + ρ)) Qᵀ``.
    """

    def __init__(self, spectrum: tuple[torch.Tensor, torch.Tensor], out_features: int):
        self.values, self.vectors = spectrum
        self.form = self.vectors.shape[0] <= 3 * out_features
        self.rho: float | None = None
        self.inverse: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None

    def set_rho(self, rho: float) -> None:
        if rho == self.rho:
            return
        self.rho = rho
        self.scale = (1.0 / (self.values + rho)).to(torch.float32)
        if self.form:
            self.inverse = (self.vectors * self.scale) @ self.vectors.T

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        if self.form:
            return r @ self.inverse
        return ((r @ self.vectors) * self.scale) @ self.vectors.T


def spectrum(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A's eigenvalues (in,) float64, clamped at 0, and eigenvectors (in, in) float32, from one float64 eigh."""
    values, vectors = torch.linalg.eigh(a.to(torch.float64))
    return values.clamp(min=0), vectors.to(torch.float32)


def admm(
    target: torch.Tensor,
    a: torch.Tensor,
    projector: Projector,
    options: ALPSOptions,
    eigen: tuple[torch.Tensor, torch.Tensor] | None = None,
    rhs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, list[float]]:
    """The reference's ADMM with its ρ schedule, in normalised coordinates.

    Args:
        target: W d, float32 (out, in).
        a: the damped, unit-diagonal covariance A, float32 (in, in).
        projector: the exact sparsity projection (scope / N:M of the spec); its ``kept`` count is the
            support-change ratio's denominator.
        options: the iteration caps and schedule constants.
        eigen: ``spectrum(a)`` when already computed (linears fed the same input share it).
        rhs: Y = target @ a when already computed (the PCG needs it too).

    Returns:
        (B projected on the support of Proj(B) (out, in), that support bool (out, in), iterations
        run, the support-change ratio at each penalty update).
    """
    y = target @ a if rhs is None else rhs
    ridge = _RidgeSolver(eigen if eigen is not None else spectrum(a), target.shape[0])
    rho = float(options.rho)
    ridge.set_rho(rho)
    d_mask = projector(target)
    d_init = target * d_mask
    d = d_init
    v = torch.zeros_like(target)
    b = target
    previous = d_mask
    started = False
    changes: list[float] = []
    iterations = 0
    for i in range(options.max_iterations):
        iterations = i + 1
        b = ridge(torch.add(y - v, d, alpha=rho))
        z = b + v / rho
        d_mask = projector(z)
        d = z * d_mask
        v = torch.add(v, b - d, alpha=rho)
        if (i + 1) % options.update_every:
            continue
        change = int((d_mask ^ previous).sum())
        ratio = change / max(projector.kept, 1)
        changes.append(ratio)
        previous = d_mask
        if ratio > 0.1:
            started, rho = True, rho * 1.3
        elif ratio > 0.005:
            started, rho = True, rho * 1.2
        elif change > 0:
            if started:
                rho *= 1.1
            else:  # ρ too large from the start: restart the splitting with a smaller one
                rho /= 5
                d, v = d_init, torch.zeros_like(target)
        elif started:
            break
        else:
            rho /= 5
        rho = min(rho, RHO_MAX)
        ridge.set_rho(rho)
        if i >= options.switch_iterations and ratio < 0.0003:
            break
    mask = projector(b)
    return b * mask, mask, iterations, changes


def masked_cg(
    a: torch.Tensor,
    rhs: torch.Tensor,
    mask: torch.Tensor,
    start: torch.Tensor,
    iterations: int = 10,
    tolerance: float = 1e-4,
) -> tuple[torch.Tensor, int]:
    """Conjugate gradients on every row's system restricted to its support: ``(X A)_S = rhs_S``.

    Args:
        a: symmetric positive definite (in, in).
        rhs: right-hand sides (out, in).
        mask: the support, bool (out, in); entries outside it stay 0.
        start: a point on the support (out, in).
        iterations: at most this many iterations (one (out, in) @ (in, in) product each).
        tolerance: stop when every row's restricted residual norm is <= tolerance * ‖rhs_S‖ of the row.

    Returns:
        (the refined point (out, in), iterations run).
    """
    keep = mask.to(a.dtype)
    x = start * keep
    r = (rhs - x @ a) * keep
    bound = tolerance * (rhs * keep).norm(dim=1)
    p = r
    rr = (r * r).sum(1)
    done = 0
    for done in range(1, iterations + 1):
        ap = (p @ a) * keep
        denominator = (p * ap).sum(1)
        alpha = rr / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        alpha = torch.where(denominator > 0, alpha, torch.zeros_like(alpha))
        x = torch.addcmul(x, alpha.unsqueeze(1), p)
        r = torch.addcmul(r, alpha.unsqueeze(1), ap, value=-1.0)
        rr_new = (r * r).sum(1)
        if bool((rr_new.sqrt() <= bound).all()):
            break
        beta = rr_new / torch.where(rr > 0, rr, torch.ones_like(rr))
        p = torch.addcmul(r, beta.unsqueeze(1), p)
        rr = rr_new
    return x, done


@dataclass(frozen=True)
class Coordinates:
    """The reference's normalised coordinates of one covariance, shared by the linears fed it (``shared``).

    ``dead``: inputs with C_jj <= 0 (in,) bool; ``root``: d = sqrt(diag C_damped) + 1e-8 (in,);
    ``a``: A = D^-1/2 C_damped D^-1/2 (in, in) float32; ``eigen``: ``spectrum(a)``.
    """

    dead: torch.Tensor
    root: torch.Tensor
    a: torch.Tensor
    eigen: tuple[torch.Tensor, torch.Tensor]


def normalise(covariance: torch.Tensor, damping: float) -> Coordinates:
    """``Coordinates`` of ``covariance`` (in, in) damped by ``damping * mean(diag)``, computed once per tensor."""
    return shared(covariance, ("alps", damping), lambda: _compute_coordinates(covariance, damping))


def _compute_coordinates(covariance: torch.Tensor, damping: float) -> Coordinates:
    """What ``normalise`` keeps: the damped C scaled to unit diagonal, and its eigendecomposition."""
    c, dead = prepare_covariance(covariance, damping)
    root = torch.diagonal(c).clamp(min=0).sqrt() + 1e-8
    a = c / root.unsqueeze(0) / root.unsqueeze(1)
    return Coordinates(dead, root, a, spectrum(a))


class Pruned(NamedTuple):
    """ALPS's pruned point and how it was reached (``prune``).

    ``theta``: Θ = B_S / d after the PCG, float32 (out, in); ``mask``: its support, bool (out, in);
    ``admm_point``: the ADMM's last iterate on that support, in the original coordinates (out, in);
    ``target``: W float32 with the dead inputs' columns zeroed (out, in); ``iterations``: ADMM
    iterations; ``cg_iterations``: PCG iterations; ``changes``: the support-change ratio at each
    penalty update.
    """

    theta: torch.Tensor
    mask: torch.Tensor
    admm_point: torch.Tensor
    target: torch.Tensor
    iterations: int
    cg_iterations: int
    changes: list[float]


def prune(weight: torch.Tensor, covariance: torch.Tensor, spec: CompressionSpec, options: ALPSOptions) -> Pruned:
    """ALPS's ADMM support search and PCG refinement for ``weight`` (out, in) and C (in, in); no objective computed.

    The sparsity of ``spec`` (unstructured or N:M) in ``options.scope``; its bits are ignored.
    """
    out_features, in_features = weight.shape
    coordinates = normalise(covariance, options.damping)
    root, a = coordinates.root, coordinates.a
    target = weight.to(torch.float32).clone()
    target[:, coordinates.dead] = 0
    scaled = target * root
    rhs = scaled @ a
    projector = Projector(spec, out_features, in_features, options.scope)
    b, mask, iterations, changes = admm(scaled, a, projector, options, coordinates.eigen, rhs)
    admm_point = b / root
    b, cg_iterations = masked_cg(a, rhs, mask, b, options.cg_iterations, options.cg_tolerance)
    return Pruned((b / root) * mask, mask, admm_point, target, iterations, cg_iterations, changes)


@register_solver("alps", options=ALPSOptions, kinds=("prune", "joint"),
                 summary="ADMM with adaptive penalty + PCG on the support (Meng et al. 2024; + OBS INT4 rounding)")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: ALPSOptions) -> SolverResult:
    """ALPS on ``weight`` (out, in) with ``stats.covariance`` (in, in); see the module docstring and ``ALPSOptions``.

    ``iterations`` counts the ADMM iterations; ``history`` holds the relative (undamped) objective
    after the ADMM (on the support of its last iterate), after the PCG refinement and, with bits,
    after the OBS rounding.
    """
    check_problem(weight, stats, spec)
    if not spec.prunes:
        return Projected(weight.to(torch.float32).clone()).to_result(weight, stats.covariance)
    pruned = prune(weight, stats.covariance, spec, options)
    relative = _Relative(pruned.target, stats.covariance)
    history = [relative(pruned.admm_point), relative(pruned.theta)]
    logger.debug("alps %s: %d ADMM iterations (support changes %s), %d CG, objective %.4g -> %.4g",
                 tuple(weight.shape), pruned.iterations, [f"{s:.2g}" for s in pruned.changes[-4:]],
                 pruned.cg_iterations, *history)
    if not spec.quantizes:
        point = Projected(pruned.theta, pruned.mask)
        return point.to_result(weight, stats.covariance, iterations=pruned.iterations, history=history)
    point = obs_compress(pruned.theta, stats.covariance, spec, damping=options.damping, mask=pruned.mask)
    history.append(relative(point.weight))
    return point.to_result(weight, stats.covariance, iterations=pruned.iterations, history=history)


class _Relative:
    """Θ ↦ tr((W - Θ) C (W - Θ)ᵀ) / tr(W C Wᵀ), Θ and W (out, in), C (in, in), float32 (for the history)."""

    def __init__(self, target: torch.Tensor, covariance: torch.Tensor):
        self.target = target
        self.c = covariance.to(torch.float32)
        norm = float(((target @ self.c) * target).sum())
        self.norm = norm if norm > 0 else 1.0

    def __call__(self, theta: torch.Tensor) -> float:
        delta = self.target - theta
        return float(((delta @ self.c) * delta).sum()) / self.norm

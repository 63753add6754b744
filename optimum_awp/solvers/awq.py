"""AWQ-style activation-aware INT4 quantization (Lin et al., 2024), as a storable layer solver.

AWQ has two searches, both on activation statistics:

1. **scaling**: per-input scales ``s = mean|x|^alpha`` (normalised so ``sqrt(max s * min s) = 1``),
   ``alpha`` on AWQ's grid ``0, 0.05, ..., 0.95``, chosen to minimise the layer objective of
   ``Theta = Q(W diag(s)) diag(s)^-1``. AWQ folds ``1/s`` into the previous operation; a layer
   solver cannot, and ``Q(W s) / s`` is *not* on a group grid (each column has its own factor).
2. **clipping** (``auto_clip``): per row and group, the range of the grid is shrunk by a ratio
   ``1, 0.95, ..., 0.55`` chosen to minimise the group's output error ``e C_gg e^T``. The result
   is on the grid, so it is storable as codes and scales.

Choice made here: the registered solver (``scaling=False``) runs the clipping search only and
returns a result that obeys the SolverResult contract (``Theta`` equals the dequantized codes).
``awq_compress(..., scaling=True)`` runs both searches, as AWQ does, and returns an ``AWQResult`` whose
``codes``/``scales``/``zeros`` encode ``Q(W diag(s))`` and whose ``input_scale`` is ``s``:
``Theta = dequant(codes) / s`` column-wise, so storing it needs a format that divides the input
by ``s`` (or a caller that folds ``1/s`` into the previous layer). ``search_scale`` is exported
for a caller that can fold.

Statistics: ``stats.mean_abs`` when present, else ``sqrt(diag C)`` (the RMS of each input).
With sparsity, Wanda's mask is chosen first and the searches and the grid see the kept entries
only ("Wanda + AWQ").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .options import SolverOptions, option
from .projections import (
    Projected,
    check_problem,
    grid_params,
    quantize_grid,
    quantize_with,
)
from .wanda import wanda_mask

logger = logging.getLogger(__name__)


@dataclass
class AWQResult(SolverResult):
    """A SolverResult with AWQ's per-input scale.

    Attributes:
        input_scale: float32 (in,) scales ``s`` with ``weight = dequant(codes) / s`` (column-wise),
            or None when no scaling was applied (then ``weight = dequant(codes)``).
        alpha: the chosen exponent of ``mean|x|^alpha`` (nan when no scaling search ran).
    """

    input_scale: torch.Tensor | None = None
    alpha: float = float("nan")


def _objective(delta: torch.Tensor, covariance: torch.Tensor) -> float:
    """tr(Δ C Δᵀ) for delta (out, in) and covariance (in, in)."""
    return float(((delta @ covariance) * delta).sum())


def input_magnitudes(stats: LayerStats) -> torch.Tensor:
    """Per-input activation magnitude (in,), float32: ``stats.mean_abs`` or ``sqrt(diag C)``."""
    if stats.mean_abs is not None:
        return stats.mean_abs.to(torch.float32).abs()
    return torch.diagonal(stats.covariance).to(torch.float32).clamp(min=0).sqrt()


def search_scale(
    weight: torch.Tensor,
    covariance: torch.Tensor,
    magnitudes: torch.Tensor,
    spec: CompressionSpec,
    mask: torch.Tensor | None = None,
    n_grid: int = 20,
) -> tuple[torch.Tensor, float]:
    """AWQ's scale search for weight (out, in), covariance (in, in), magnitudes (in,).

    Returns ``(s, alpha)``: s float32 (in,) minimising tr(Δ C Δᵀ) with
    ``Δ = W - Q(W diag(s)) diag(s)^-1`` (kept entries only when ``mask`` is given), over
    ``alpha = 0, 1/n_grid, ..., (n_grid - 1)/n_grid``.
    """
    w = weight.to(torch.float32)
    c = covariance.to(torch.float32)
    best = (float("inf"), torch.ones_like(magnitudes, dtype=torch.float32), 0.0)
    for step in range(n_grid):
        alpha = step / n_grid
        s = magnitudes.to(torch.float32).pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        theta = quantize_grid(w * s, spec.bits, spec.group_size, spec.symmetric, mask)[0] / s
        err = _objective(w - theta, c)
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


def search_clip(
    weight: torch.Tensor,
    covariance: torch.Tensor,
    spec: CompressionSpec,
    mask: torch.Tensor | None = None,
    max_shrink: float = 0.5,
    n_grid: int = 20,
) -> Projected:
    """AWQ's ``auto_clip`` on weight (out, in) with covariance (in, in): the best range per row and group.

    For each ratio ``r = 1 - i / n_grid`` (``i < max_shrink * n_grid``) the kept entries are clamped
    to ``[r * min, r * max]`` of their group and rounded on the grid computed from the clamped
    values; each (row, group) keeps the ratio with the least ``e C_gg eᵀ``, ``e`` the group's error.
    Returns the quantized point (on the grid, with codes/scales/zeros).
    """
    out_features, in_features = weight.shape
    g = in_features if spec.group_size == -1 else spec.group_size
    ngroups = in_features // g
    w = weight.to(torch.float32).reshape(out_features, ngroups, g)
    m = None if mask is None else mask.reshape(out_features, ngroups, g)
    c = covariance.to(torch.float32)
    blocks = torch.stack([c[k * g : (k + 1) * g, k * g : (k + 1) * g] for k in range(ngroups)])  # (G, g, g)
    kept = w if m is None else torch.where(m, w, torch.zeros((), dtype=w.dtype, device=w.device))
    hi = kept.amax(dim=-1, keepdim=True).clamp(min=0)
    lo = kept.amin(dim=-1, keepdim=True).clamp(max=0)

    best_err = torch.full((out_features, ngroups), float("inf"), device=w.device)
    best_ratio = torch.ones(out_features, ngroups, 1, device=w.device)
    for step in range(max(1, int(max_shrink * n_grid))):
        ratio = 1.0 - step / n_grid
        clipped = torch.clamp(w, ratio * lo, ratio * hi)
        scale, zero = grid_params(clipped, spec.bits, spec.symmetric, m)
        deq, _ = quantize_with(clipped, scale, zero, spec.bits, m)
        e = deq - kept
        err = (torch.einsum("ogi,gij->ogj", e, blocks) * e).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better.unsqueeze(-1), torch.full_like(best_ratio, ratio), best_ratio)

    clipped = torch.clamp(w, best_ratio * lo, best_ratio * hi)
    best_scale, best_zero = grid_params(clipped, spec.bits, spec.symmetric, m)
    deq, codes = quantize_with(clipped, best_scale, best_zero, spec.bits, m)
    return Projected(
        deq.reshape(out_features, in_features),
        mask,
        codes.reshape(out_features, in_features),
        best_scale.squeeze(-1),
        None if spec.symmetric else best_zero.squeeze(-1),
    )


@dataclass(frozen=True)
class AWQOptions(SolverOptions):
    """Options of the storable AWQ solver (the clipping search; see the module docstring)."""

    clip: bool = option(True, "search each group's clipping ratio (False: plain rounding)")
    n_grid: int = option(20, "points of AWQ's clipping grid", minimum=1)
    max_shrink: float = option(0.5, "largest fraction of a group's range the clipping may cut", minimum=0.0,
                               maximum=0.99)


@register_solver("awq", options=AWQOptions, kinds=("quantize", "joint"),
                 summary="AWQ's activation-aware clipping search on the INT4 grid (Wanda's mask first with sparsity)")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: AWQOptions) -> SolverResult:
    """AWQ's clipping search on ``weight`` (out, in): a storable result (codes on the grid)."""
    return awq_compress(weight, stats, spec, scaling=False, clip=options.clip, n_grid=options.n_grid,
                        max_shrink=options.max_shrink)


def awq_compress(
    weight: torch.Tensor,
    stats: LayerStats,
    spec: CompressionSpec,
    *,
    scaling: bool = False,
    clip: bool = True,
    n_grid: int = 20,
    max_shrink: float = 0.5,
) -> AWQResult:
    """AWQ on ``weight`` (out, in) with ``stats`` (covariance (in, in), optional mean_abs (in,)).

    ``scaling`` (False: storable clipping-only result; True: AWQ's scale search too, returned with
    ``input_scale``, see the module docstring), ``clip`` (True: the clipping search; False: plain
    rounding), ``n_grid`` (20), ``max_shrink`` (0.5). ``spec.bits`` is required.
    """
    check_problem(weight, stats, spec)
    if not spec.quantizes:
        raise ValueError("awq needs spec.bits (allowed: 4); for pruning alone use 'wanda' or 'sparsegpt'.")
    if n_grid < 1:
        raise ValueError(f"n_grid must be a positive int, got {n_grid!r}.")
    if not 0.0 <= max_shrink < 1.0:
        raise ValueError(f"max_shrink must be in [0, 1), got {max_shrink!r}.")
    w = weight.to(torch.float32)
    c = stats.covariance.to(torch.float32)
    mask = wanda_mask(w, c, spec)

    s = None
    alpha = float("nan")
    if scaling:
        s, alpha = search_scale(w, c, input_magnitudes(stats), spec, mask, n_grid)
        w_scaled, c_scaled = w * s, c / s.unsqueeze(0) / s.unsqueeze(1)
    else:
        w_scaled, c_scaled = w, c
    if clip:
        point = search_clip(w_scaled, c_scaled, spec, mask, max_shrink, n_grid)
    else:
        deq, codes, scales, zeros = quantize_grid(w_scaled, spec.bits, spec.group_size, spec.symmetric, mask)
        point = Projected(deq, mask, codes, scales, zeros)
    theta = point.weight if s is None else point.weight / s
    base = Projected(theta, point.mask, point.codes, point.scales, point.zeros).to_result(weight, stats.covariance)
    result = AWQResult(**vars(base), input_scale=s, alpha=alpha)
    logger.debug("awq %s: alpha %s, objective %.4g", tuple(weight.shape), alpha, result.objective)
    return result

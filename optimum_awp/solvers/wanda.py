"""Wanda: prune by |W_ij| * ||X_j||_2, compared within each output row (Sun et al., 2023).

``||X_j||_2^2 = n * C_jj``, so ``|W_ij| * sqrt(C_jj)`` gives the same ranking; it is computed
from the covariance alone. With ``spec.bits`` the kept entries are then rounded to the group
grid (Wanda + RTN); quantization alone is method "rtn".
"""

from __future__ import annotations

import logging

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .options import NoOptions
from .projections import apply_mask, check_problem, sparsity_mask

logger = logging.getLogger(__name__)


def wanda_scores(weight: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Wanda's scores |W_ij| * sqrt(C_jj), float32 (out, in), for weight (out, in) and covariance (in, in)."""
    norms = torch.diagonal(covariance).to(torch.float32).clamp(min=0).sqrt()
    return weight.to(torch.float32).abs() * norms.unsqueeze(0)


def wanda_mask(weight: torch.Tensor, covariance: torch.Tensor, spec: CompressionSpec) -> torch.Tensor | None:
    """Wanda's kept entries, bool (out, in): per-row top-k or N:M on the scores; None when ``spec`` does not prune."""
    if not spec.prunes:
        return None
    return sparsity_mask(wanda_scores(weight, covariance), spec)


@register_solver("wanda", kinds=("prune", "joint"), summary="prune by |W_ij| ||X_j|| within each row (+ RTN with bits)")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: NoOptions) -> SolverResult:
    """Wanda pruning of ``weight`` (out, in) with ``stats.covariance`` (in, in)."""
    check_problem(weight, stats, spec)
    mask = wanda_mask(weight, stats.covariance, spec)
    result = apply_mask(weight.to(torch.float32), mask, spec).to_result(weight, stats.covariance)
    logger.debug("wanda %s: objective %.4g", tuple(weight.shape), result.objective)
    return result

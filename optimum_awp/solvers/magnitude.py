"""Magnitude pruning: keep the largest |W_ij| of each row (or of each N:M group).

With ``spec.bits`` the kept entries are then rounded to the group grid (magnitude + RTN);
quantization alone is method "rtn".
"""

from __future__ import annotations

import logging

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .options import NoOptions
from .projections import check_problem, project

logger = logging.getLogger(__name__)


@register_solver("magnitude", kinds=("prune", "joint"), summary="keep the largest |W_ij| of each row (+ RTN with bits)")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: NoOptions) -> SolverResult:
    """Magnitude pruning of ``weight`` (out, in); ``stats.covariance`` (in, in) is used only for the objective."""
    check_problem(weight, stats, spec)
    w = weight.to(torch.float32)
    result = project(w, spec).to_result(weight, stats.covariance)
    logger.debug("magnitude %s: objective %.4g", tuple(weight.shape), result.objective)
    return result

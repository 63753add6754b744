"""Magnitude pruning: keep the largest |W_ij| of each row (or of each N:M group).

With ``spec.bits`` the kept entries are then rounded to the group grid (magnitude + RTN);
a pure quantization spec is plain RTN.
"""

from __future__ import annotations

import logging

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .projections import check_problem, project

logger = logging.getLogger(__name__)


@register_solver("magnitude")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, **options) -> SolverResult:
    """Magnitude pruning of ``weight`` (out, in); ``stats.covariance`` (in, in) is used only for the objective.

    Takes no options (a ValueError names any given).
    """
    check_problem(weight, stats, spec)
    if options:
        raise ValueError(f"magnitude takes no options, got {sorted(options)}.")
    w = weight.to(torch.float32)
    result = project(w, spec).to_result(weight, stats.covariance)
    logger.debug("magnitude %s: objective %.4g", tuple(weight.shape), result.objective)
    return result

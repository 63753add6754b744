"""Round to nearest (RTN) on the INT4 group grid; with sparsity, magnitude pruning first.

The grid convention (scales from the data, half-step clipping rule) is documented in
``projections``.
"""

from __future__ import annotations

import logging

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .projections import check_problem, project

logger = logging.getLogger(__name__)


@register_solver("rtn")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, **options) -> SolverResult:
    """RTN of ``weight`` (out, in); ``stats.covariance`` (in, in) only gives the objective.

    ``spec.bits`` is required (rtn without bits is magnitude pruning: ask for "magnitude").
    Takes no options.
    """
    check_problem(weight, stats, spec)
    if options:
        raise ValueError(f"rtn takes no options, got {sorted(options)}.")
    if not spec.quantizes:
        raise ValueError("rtn needs spec.bits (allowed: 4); for pruning alone use method 'magnitude'.")
    result = project(weight.to(torch.float32), spec).to_result(weight, stats.covariance)
    logger.debug("rtn %s: objective %.4g", tuple(weight.shape), result.objective)
    return result

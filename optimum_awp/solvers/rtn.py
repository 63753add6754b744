"""Round to nearest (RTN) on the INT4 group grid (quantization alone: magnitude + RTN is "magnitude" with bits).

The grid convention (scales from the data, half-step clipping rule) is documented in
``projections``.
"""

from __future__ import annotations

import logging

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .options import NoOptions
from .projections import check_problem, project

logger = logging.getLogger(__name__)


@register_solver("rtn", kinds=("quantize",), summary="round to nearest on the INT4 group grid")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: NoOptions) -> SolverResult:
    """RTN of ``weight`` (out, in); ``stats.covariance`` (in, in) only gives the objective."""
    check_problem(weight, stats, spec)
    result = project(weight.to(torch.float32), spec).to_result(weight, stats.covariance)
    logger.debug("rtn %s: objective %.4g", tuple(weight.shape), result.objective)
    return result

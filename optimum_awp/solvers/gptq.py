"""GPTQ: column-by-column INT4 quantization with OBS error feedback (Frantar et al., 2022).

The same blocked loop as ``sparsegpt`` with nothing pruned: damping ``damping * mean(diag H)``,
upper Cholesky of ``H^-1``, blocks of 128, group scales computed at each group's first column
from the current (updated) weights, on the shared grid of ``projections``. No act-order.
A spec that also prunes runs SparseGPT's joint mode (same algorithm).
"""

from __future__ import annotations

import logging

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .projections import check_problem
from .sparsegpt import obs_compress

logger = logging.getLogger(__name__)


@register_solver("gptq")
def solve(
    weight: torch.Tensor,
    stats: LayerStats,
    spec: CompressionSpec,
    *,
    blocksize: int = 128,
    damping: float = 0.01,
    dtype: torch.dtype = torch.float32,
) -> SolverResult:
    """GPTQ of ``weight`` (out, in) with ``stats.covariance`` (in, in); ``spec.bits`` is required.

    Options as ``sparsegpt``: ``blocksize`` (128), ``damping`` (0.01), ``dtype`` (float32/float64).
    """
    check_problem(weight, stats, spec)
    if not spec.quantizes:
        raise ValueError("gptq needs spec.bits (allowed: 4); for pruning alone use method 'sparsegpt'.")
    point = obs_compress(weight, stats.covariance, spec, blocksize=blocksize, damping=damping, dtype=dtype)
    result = point.to_result(weight, stats.covariance)
    logger.debug("gptq %s: objective %.4g", tuple(weight.shape), result.objective)
    return result

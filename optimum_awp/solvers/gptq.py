"""GPTQ: column-by-column INT4 quantization with OBS error feedback (Frantar et al., 2022).

The same blocked loop as ``sparsegpt`` with nothing pruned: damping ``damping * mean(diag H)``,
upper Cholesky of ``H^-1``, blocks of 128, group scales computed at each group's first column
from the current (updated) weights, on the shared grid of ``projections``. No act-order.
Pruning + INT4 is SparseGPT's joint mode (method "sparsegpt", same algorithm).
"""

from __future__ import annotations

import logging

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .projections import check_problem
from .sparsegpt import OBSOptions, obs_compress

logger = logging.getLogger(__name__)


@register_solver("gptq", options=OBSOptions, kinds=("quantize",),
                 summary="INT4 column by column with OBS error feedback (pruning + INT4: sparsegpt)")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: OBSOptions) -> SolverResult:
    """GPTQ of ``weight`` (out, in) with ``stats.covariance`` (in, in); options as ``sparsegpt``."""
    check_problem(weight, stats, spec)
    point = obs_compress(weight, stats.covariance, spec, blocksize=options.blocksize, damping=options.damping)
    result = point.to_result(weight, stats.covariance)
    logger.debug("gptq %s: objective %.4g", tuple(weight.shape), result.objective)
    return result

"""Compression solvers: pure tensor functions registered by name (see ``base``).

Importing this package registers every solver: "magnitude", "wanda", "rtn", "sparsegpt",
"gptq", "awq", "alps", "awp" and "lowrank".
"""

from . import alps, awp, awq, gptq, lowrank, magnitude, rtn, sparsegpt, wanda  # noqa: F401  (registration)
from .awq import AWQResult
from .base import (
    SOLVERS,
    CompressionSpec,
    LayerStats,
    SolverResult,
    get_solver,
    register_solver,
    relative_objective,
)
from .projections import (
    Projected,
    apply_mask,
    dequantize,
    keep_count,
    nm_mask,
    project,
    quantize_grid,
    sparsity_mask,
    topk_mask,
)
from .wanda import wanda_scores

__all__ = [
    "SOLVERS",
    "AWQResult",
    "CompressionSpec",
    "LayerStats",
    "Projected",
    "SolverResult",
    "apply_mask",
    "dequantize",
    "get_solver",
    "keep_count",
    "nm_mask",
    "project",
    "quantize_grid",
    "register_solver",
    "relative_objective",
    "sparsity_mask",
    "topk_mask",
    "wanda_scores",
]

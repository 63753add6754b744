"""Compression solvers: pure tensor functions registered by name (see ``base``)."""

from .base import (
    SOLVERS,
    CompressionSpec,
    LayerStats,
    SolverResult,
    get_solver,
    register_solver,
    relative_objective,
)

# Importing a solver module registers it. Each module is added here once it exists.

__all__ = [
    "SOLVERS",
    "CompressionSpec",
    "LayerStats",
    "SolverResult",
    "get_solver",
    "register_solver",
    "relative_objective",
]

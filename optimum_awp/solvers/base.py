"""Shared types of every solver: the compression spec, the layer statistics, the result, the registry.

Solvers are pure functions on tensors. They import torch only: no ``nn.Module``, no transformers.
Every solver has the signature::

    solve(weight, stats, spec, options) -> SolverResult

with ``options`` the solver's frozen options dataclass (``options.py``); ``get_solver(name)(weight, stats,
spec, **keywords)`` builds it from keywords.

with ``weight`` of shape (out, in) and ``stats.covariance`` C = X Xᵀ / n of shape (in, in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .options import NoOptions, OptionSpec, SolverOptions, declared

SUPPORTED_BITS = (4,)
SUPPORTED_GROUP_SIZES = (-1, 32, 64, 128, 256)


@dataclass(frozen=True)
class CompressionSpec:
    """What a compressed weight must satisfy.

    Args:
        sparsity: fraction of each row's weights set to zero (unstructured), in [0, 1).
            Ignored when ``pattern`` is given.
        pattern: (N, M) semi-structured sparsity: keep N of every M consecutive inputs, e.g. (2, 4).
        bits: weight bits of the integer grid (4), or None for no quantization.
        group_size: inputs sharing one scale along the input dimension; -1 means one per output row.
        symmetric: symmetric grid (codes - 8) * scale, or asymmetric (codes - zero) * scale.
    """

    sparsity: float = 0.0
    pattern: tuple[int, int] | None = None
    bits: int | None = None
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ValueError(f"sparsity must be a float in [0, 1), got {self.sparsity!r}.")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}.")
        if self.pattern is not None:
            if len(self.pattern) != 2 or not all(isinstance(v, int) for v in self.pattern):
                raise ValueError(f"pattern must be a pair of ints (N, M), got {self.pattern!r}.")
            n, m = self.pattern
            if not 0 < n < m:
                raise ValueError(f"pattern N:M needs 0 < N < M, got {n}:{m}.")
        if self.bits is not None and self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS} or None, got {self.bits!r}.")
        if self.group_size not in SUPPORTED_GROUP_SIZES:
            raise ValueError(f"group_size must be one of {SUPPORTED_GROUP_SIZES}, got {self.group_size!r}.")

    @classmethod
    def from_sparsity(cls, sparsity: float | str | None = None, **kwargs) -> "CompressionSpec":
        """Build a spec from a user-facing sparsity: a float (0.5) or an "N:M" string ("2:4")."""
        if sparsity is None:
            return cls(**kwargs)
        if isinstance(sparsity, str):
            parts = sparsity.split(":")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ValueError(f"sparsity must be a float in [0, 1) or 'N:M' such as '2:4', got {sparsity!r}.")
            return cls(pattern=(int(parts[0]), int(parts[1])), **kwargs)
        return cls(sparsity=sparsity, **kwargs)

    @property
    def prunes(self) -> bool:
        return self.pattern is not None or self.sparsity > 0

    @property
    def quantizes(self) -> bool:
        return self.bits is not None

    def check_shape(self, out_features: int, in_features: int) -> None:
        """Raise ValueError when a weight of shape (out_features, in_features) cannot satisfy the spec."""
        if self.pattern is not None and in_features % self.pattern[1]:
            raise ValueError(
                f"in_features={in_features} is not divisible by M={self.pattern[1]} of pattern "
                f"{self.pattern[0]}:{self.pattern[1]}."
            )
        if self.quantizes and self.group_size != -1 and in_features % self.group_size:
            raise ValueError(f"in_features={in_features} is not divisible by group_size={self.group_size}.")


@dataclass
class LayerStats:
    """Calibration statistics of one linear layer's input.

    Attributes:
        covariance: C = X Xᵀ / n, shape (in, in), float32 or float64.
        mean_abs: mean |x_j| over tokens, shape (in,), or None (AWQ-style scaling uses it).
        nsamples: number of tokens n that were accumulated.
    """

    covariance: torch.Tensor
    mean_abs: torch.Tensor | None = None
    nsamples: int = 0


@dataclass
class SolverResult:
    """A compressed weight and what the storage formats need.

    Attributes:
        weight: the compressed dense weight Θ, shape (out, in), float32.
        mask: kept entries, bool (out, in), or None when nothing was pruned.
        codes: integer codes, uint8 (out, in) in [0, 2**bits), or None when not quantized.
            Pruned entries carry the code that dequantizes to exactly 0.
        scales: float32 (out, in // group_size) (one column when group_size == -1), or None.
        zeros: float32 integer-valued zero points, same shape as scales, asymmetric grids only.
            Dequantization: symmetric (codes - 2**(bits-1)) * scales; asymmetric (codes - zeros) * scales.
        objective: tr((W - Θ) C (W - Θ)ᵀ) / tr(W C Wᵀ), the relative layer objective.
        iterations: solver iterations run (0 for one-shot methods).
        history: the relative objective after each iteration, for iterative solvers.
        factors: low-rank factors (B (out, r), A (r, in)), float32, or None: Θ holds B A (``lowrank``).
        sparse_weight: the sparse part Θ_S (out, in) float32, zero off ``mask``, when Θ = Θ_S + B A
            (sparse + low-rank); None otherwise.
    """

    weight: torch.Tensor
    mask: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    objective: float = float("nan")
    iterations: int = 0
    history: list[float] = field(default_factory=list)
    factors: tuple[torch.Tensor, torch.Tensor] | None = None
    sparse_weight: torch.Tensor | None = None


DEFAULT_KINDS = ("prune", "quantize", "joint")
KINDS = DEFAULT_KINDS + ("rank",)


def spec_kind(prunes: bool, quantizes: bool) -> str | None:
    """"prune", "quantize" or "joint" for a spec that prunes and/or quantizes; None when it does neither."""
    if prunes and quantizes:
        return "joint"
    return "prune" if prunes else "quantize" if quantizes else None


KIND_WORDS = {"prune": "pruning alone", "quantize": "INT4 alone", "joint": "pruning + INT4",
              "rank": "low-rank factors alone (no sparsity, no bits)"}


@dataclass(frozen=True)
class RegisteredSolver:
    """A solver in the registry: its function, its declared options and the specs it compresses.

    Attributes:
        name: the method name ("awp", "wanda", ...).
        solve: ``solve(weight (out, in), stats, spec, options) -> SolverResult``.
        options: the frozen dataclass declaring its options (``options.SolverOptions``).
        kinds: which specs it takes: "prune" (sparsity alone), "quantize" (bits alone), "joint" (both),
            "rank" (neither: the solver's own options say how it compresses, e.g. ``lowrank``'s rank).
        summary: one line for ``--help`` and the docs.
    """

    name: str
    solve: Callable[..., SolverResult]
    options: type = NoOptions
    kinds: tuple[str, ...] = DEFAULT_KINDS
    summary: str = ""

    def option_specs(self) -> tuple[OptionSpec, ...]:
        return declared(self.options)

    def make_options(self, **values: Any) -> SolverOptions:
        """The options dataclass with ``values`` (declaration defaults for the rest); ValueError names any
        option this solver does not take and lists those it does."""
        known = [spec.name for spec in self.option_specs()]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"method {self.name!r} takes no option {unknown}; its options: {known or 'none'}.")
        return self.options(**values)

    def check_kind(self, prunes: bool, quantizes: bool) -> None:
        """Raise ValueError when this solver does not compress a spec that prunes / quantizes so."""
        kind = spec_kind(prunes, quantizes)
        if kind is not None and kind not in self.kinds:
            takes = ", ".join(KIND_WORDS[k] for k in self.kinds)
            others = sorted(name for name, solver in SOLVERS.items() if kind in solver.kinds)
            raise ValueError(f"method {self.name!r} does not do {KIND_WORDS[kind]} (it does {takes}); "
                             f"methods that do: {others}.")

    def __call__(self, weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec,
                 options: SolverOptions | None = None, **values: Any) -> SolverResult:
        """Compress ``weight`` (out, in) with ``stats`` under ``spec``; options as a dataclass or keywords."""
        if options is None:
            options = self.make_options(**values)
        elif values or not isinstance(options, self.options):
            raise ValueError(f"method {self.name!r} takes a {self.options.__name__} or keywords, not both.")
        self.check_kind(spec.prunes, spec.quantizes)
        return self.solve(weight, stats, spec, options)


SOLVERS: dict[str, RegisteredSolver] = {}


def register_solver(
    name: str, *, options: type = NoOptions, kinds: tuple[str, ...] = DEFAULT_KINDS, summary: str = ""
) -> Callable[[Callable[..., SolverResult]], Callable[..., SolverResult]]:
    """Register ``solve(weight, stats, spec, options)`` as the method ``name``; a name can be registered once.

    Args:
        options: the frozen dataclass (a ``SolverOptions``) declaring the solver's options.
        kinds: the specs it compresses, a subset of ("prune", "quantize", "joint", "rank").
        summary: one line describing the method.
    """
    bad = sorted(set(kinds) - set(KINDS))
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}.")

    def decorator(fn: Callable[..., SolverResult]) -> Callable[..., SolverResult]:
        if name in SOLVERS:
            raise ValueError(f"A solver named {name!r} is already registered.")
        SOLVERS[name] = RegisteredSolver(name, fn, options, tuple(kinds), summary)
        return fn

    return decorator


def get_solver(name: str) -> RegisteredSolver:
    """The solver registered as ``name``; a ValueError lists the known names otherwise."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"Unknown method {name!r}; known methods: {sorted(SOLVERS)}.") from None


def relative_objective(weight: torch.Tensor, compressed: torch.Tensor, covariance: torch.Tensor) -> float:
    """tr((W - Θ) C (W - Θ)ᵀ) / tr(W C Wᵀ) for W, Θ of shape (out, in) and C of shape (in, in)."""
    c = covariance.to(torch.float64)
    w = weight.to(torch.float64)
    delta = w - compressed.to(torch.float64)
    num = ((delta @ c) * delta).sum()
    den = ((w @ c) * w).sum()
    return float(num / den) if den > 0 else float(num)

"""Work shared by the linears fed one input: results computed from one covariance tensor, kept while it lives.

Linears fed the same input (q/k/v, gate/up) get the very same covariance tensor from the calibration
(``BlockStatistics``) and are solved one after the other. ``shared(covariance, key, compute)`` returns
``compute()`` for that tensor and key, computing it once per group instead of once per linear: AWP's
damped C and step (its λ_max power iteration), ALPS's normalised C and eigendecomposition.

Results are kept for the last covariance tensor only, keyed on

- its identity, through a weak reference: they are dropped when the statistics are freed;
- its version counter: an in-place change makes it a new tensor;
- ``key``: what else the result depends on (the solver's name and the options it reads).

A result is a pure function of the tensor and the key, so a kept one is the very tensor a fresh
computation would return (bit for bit): sharing changes the time, never the figures.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any

import torch

_KEPT: dict[str, Any] = {"covariance": None, "version": None, "results": {}}


def shared(covariance: torch.Tensor, key: Hashable, compute: Callable[[], Any]) -> Any:
    """``compute()``, or the result kept for this very ``covariance`` tensor (same version) and ``key``.

    A tensor without a version counter (made in inference mode) is never kept: computed every time.
    """
    try:
        version = covariance._version
    except RuntimeError:
        return compute()
    ref = _KEPT["covariance"]
    if ref is None or ref() is not covariance or _KEPT["version"] != version:
        clear()
        _KEPT.update(covariance=weakref.ref(covariance, _forget), version=version)
    results = _KEPT["results"]
    if key in results:
        return results[key]
    value = compute()
    if _KEPT["results"] is results:  # not replaced meanwhile (a compute() that met another covariance)
        results[key] = value
    return value


def clear() -> None:
    """Drop every kept result (benchmarks timing each solver on its own; tests)."""
    _KEPT.update(covariance=None, version=None, results={})


def _forget(ref: weakref.ref) -> None:
    """Drop the kept results when their covariance is freed (and only then)."""
    if _KEPT["covariance"] is ref:
        clear()

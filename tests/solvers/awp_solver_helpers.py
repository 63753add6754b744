"""Small problems shared by the solver tests: a weight and a correlated input covariance."""

from __future__ import annotations

import torch

from optimum_awp.solvers import LayerStats


def correlated_problem(
    out_features: int = 16, in_features: int = 32, seed: int = 0, outliers: int = 2, nsamples: int | None = None
) -> tuple[torch.Tensor, LayerStats]:
    """weight (out, in) and stats of inputs X (in, n) from a low-rank + noise model with outlier channels."""
    gen = torch.Generator().manual_seed(seed)
    n = nsamples or 8 * in_features
    mixing = torch.randn(in_features, max(2, in_features // 4), generator=gen)
    x = mixing @ torch.randn(mixing.shape[1], n, generator=gen) + 0.3 * torch.randn(in_features, n, generator=gen)
    scales = torch.exp(0.5 * torch.randn(in_features, 1, generator=gen))
    if outliers:
        scales[torch.randperm(in_features, generator=gen)[:outliers]] *= 10
    x = x * scales
    covariance = x @ x.T / n
    weight = torch.randn(out_features, in_features, generator=gen) / in_features**0.5
    return weight, LayerStats(covariance=covariance, mean_abs=x.abs().mean(dim=1), nsamples=n)


def identity_problem(out_features: int = 8, in_features: int = 32, seed: int = 0) -> tuple[torch.Tensor, LayerStats]:
    """weight (out, in) with C = I (uncorrelated unit inputs)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen)
    return weight, LayerStats(covariance=torch.eye(in_features), nsamples=in_features)


def output_error(weight: torch.Tensor, theta: torch.Tensor, covariance: torch.Tensor) -> float:
    """‖(W - Θ) R‖²_F / ‖W R‖²_F with C = R Rᵀ from an eigendecomposition, in float64: the relative layer
    objective computed independently of ``solvers.relative_objective`` (which forms tr(Δ C Δᵀ) directly)."""
    values, vectors = torch.linalg.eigh(covariance.double())
    root = vectors * values.clamp(min=0).sqrt()
    delta = (weight.double() - theta.double()) @ root
    return float(delta.square().sum() / (weight.double() @ root).square().sum())

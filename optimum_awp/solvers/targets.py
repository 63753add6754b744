"""Dense calibration targets: fit a layer to the dense model's outputs instead of its own on compressed inputs.

Block by block, a linear of block i sees inputs X (in, n) that carry the error of the blocks already
compressed, while the dense model gave it X̃ for the same tokens. The usual layer problem reproduces the
layer's own outputs on X, ‖(W − Θ) X‖²; the dense target asks for the dense model's, ‖W X̃ − Θ X‖². Since

    ‖W X̃ − Θ X‖² = n ‖(W' − Θ) C^{1/2}‖²_F + const,   W' = W (X̃ Xᵀ)(X Xᵀ)⁻¹ = W Cₓ C⁻¹,

with C = X Xᵀ / n and Cₓ = X̃ Xᵀ / n, every solver solves the dense-target problem unchanged when it is
handed W' in place of W. W' = W + W (Cₓ − C) C⁻¹: the correction is the least-squares map of the drift
between the two streams, and it is zero when they agree (the first block).
"""

from __future__ import annotations

import torch

DAMPING = 0.01


def dense_target(weight: torch.Tensor, cross: torch.Tensor, covariance: torch.Tensor,
                 damping: float = DAMPING) -> torch.Tensor:
    """W' = W + W (Cₓ − C)(C + δ I)⁻¹, the weight whose layer objective on C is the dense-target objective.

    Args:
        weight: W, (out, in), the dense weight.
        cross: Cₓ = X̃ Xᵀ / n, (in, in): the dense model's inputs against the compressed model's.
        covariance: C = X Xᵀ / n, (in, in).
        damping: δ = damping · mean(diag C), added to C for the solve only (a dead input gets no correction).
    Returns:
        W', float32 (out, in). Solved in float64 (a Cholesky factorization of C + δ I).
    """
    if cross.shape != covariance.shape or covariance.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"dense_target needs cross and covariance of shape ({weight.shape[1]}, {weight.shape[1]}) "
                         f"for a weight {tuple(weight.shape)}, got {tuple(cross.shape)} and {tuple(covariance.shape)}.")
    c = covariance.double()
    delta = damping * c.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    factor = torch.linalg.cholesky(c + delta * torch.eye(c.shape[0], dtype=c.dtype, device=c.device))
    w = weight.double()
    drift = w @ (cross.double() - c)  # W (Cₓ − C), (out, in)
    correction = torch.cholesky_solve(drift.T, factor).T  # (C + δ I) is symmetric: solve from the right
    return (w + correction).float()

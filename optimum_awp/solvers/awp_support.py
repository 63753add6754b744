"""AWP's support search and the fixed-support polish it uses (``awp.py`` holds the solver and IHT).

IHT's step is too short to exchange support entries on real layers (``awp.py``'s docstring), so the
support is searched apart from the iteration:

- ``start_point``: a feasible start from Wanda's, magnitude's or SparseGPT's mask, or ALPS's solution
  (its ADMM support search with a growing penalty, then PCG; ``alps.py``);
- ``anneal``: gradual pruning from the dense weight, a per-row top-k that tightens to the target;
- ``swap``: rounds of exchanges with a unit Jacobi step and exact per-row acceptance (monotone);
- ``polish``: Jacobi-preconditioned conjugate gradients on a fixed support (never increases L), which
  ``swap`` runs on every changed row and the solver after IHT.

Every function is pure tensor mathematics on W (target), C (in, in) and Θ (out, in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import CompressionSpec
from .projections import sparsity_mask, topk_mask
from .sparsegpt import obs_compress
from .wanda import wanda_mask

if TYPE_CHECKING:
    from .awp import SparseProjector


def residual_product(
    target: torch.Tensor, c: torch.Tensor, theta: torch.Tensor, c_product: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """Residual product G = (W - Θ) C (out, in) and L = tr(G (W - Θ)ᵀ), for W, Θ (out, in), C (in, in).

    ``c_product``: C in a lower precision (bfloat16) to compute the product in; G comes back in
    C's dtype and L is summed there.
    """
    delta = target - theta
    if c_product is None:
        grad = delta @ c
    else:
        grad = (delta.to(c_product.dtype) @ c_product).to(delta.dtype)
    return grad, float(torch.dot(grad.reshape(-1), delta.reshape(-1)))


def gradient_step(
    theta: torch.Tensor,
    grad: torch.Tensor,
    step: torch.Tensor | float,
    previous: tuple[torch.Tensor, torch.Tensor] | None = None,
    beta: float = 0.0,
) -> torch.Tensor:
    """Z = Y + η G_Y, the point a projected-gradient step projects (out, in); ``step`` η is a float or (in,).

    Without ``previous`` Y = Θ and G_Y = G = (W − Θ) C. With ``previous`` = (Θ_prev, G_prev), Nesterov's
    Y = Θ + β (Θ − Θ_prev), whose residual product is (1 + β) G − β G_prev (affine in Θ: no extra product),
    each as one fused lerp.
    """
    if previous is not None:
        y = torch.lerp(previous[0], theta, 1 + beta)
        gy = torch.lerp(previous[1], grad, 1 + beta)
    else:
        y, gy = theta, grad
    return torch.add(y, gy, alpha=step) if isinstance(step, float) else torch.addcmul(y, gy, step)


def anneal(
    target: torch.Tensor,
    c: torch.Tensor,
    projector: SparseProjector,
    step: torch.Tensor | float,
    *,
    scale: torch.Tensor | None = None,
    iterations: int = 50,
    power: float = 3.0,
    momentum: bool = True,
    bf16_products: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradual pruning from the dense weight: projected gradient steps onto a per-row top-k_t that tightens.

    k_t = k + (in - k) (1 - t / iterations)^power (row scope); for N:M the iterations keep the per-row
    top-k_t down to in N / M and the last one projects onto N:M. Returns (Θ, its mask) on the target set.
    """
    out_features, in_features = target.shape
    k = projector.k if projector.k is not None else in_features * projector.pattern[0] // projector.pattern[1]
    c_product = c.to(torch.bfloat16) if bf16_products else None
    theta = target.clone()
    grad = torch.zeros_like(theta)
    prev_theta = prev_grad = None
    mask = None
    for t in range(1, iterations + 1):
        previous = (prev_theta, prev_grad) if momentum and prev_theta is not None else None
        z = gradient_step(theta, grad, step, previous, beta=(t - 1) / (t + 2))
        scores = (z if scale is None else z * scale).abs()
        if t == iterations:
            mask = projector.full(scores)
        else:
            kt = k + int(round((in_features - k) * (1 - t / iterations) ** power))
            mask = topk_mask(scores, kt)
        prev_theta, prev_grad = theta, grad
        theta = z.mul_(mask)
        grad = residual_product(target, c, theta, c_product)[0]
    return theta, mask


def polish(
    target: torch.Tensor,
    c: torch.Tensor,
    theta: torch.Tensor,
    mask: torch.Tensor,
    preconditioner: torch.Tensor,
    *,
    max_iterations: int = 10,
    tolerance: float = 1e-5,
    norm: float = 1.0,
    history: list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise L over the values of ``theta`` (out, in) on the fixed support ``mask`` (out, in), in C's dtype.

    Jacobi-preconditioned conjugate gradients, every row its own problem (its own α, β) and all rows in
    one (out, in) @ (in, in) product per iteration; ``preconditioner`` (in,) is diag(C) (positive).
    Conjugate gradients never increase L, so the result is never worse than ``theta``. Stops after
    ``max_iterations`` or when the relative change of L falls below ``tolerance``; appends ``L / norm``
    to ``history``. Returns the polished Θ (zero off the support), the residual product G = (W - Θ) C of
    the result (out, in), and the iterations run.
    """
    history = [] if history is None else history
    keep = mask.to(c.dtype)
    theta = theta * keep
    grad = (target - theta) @ c  # minus half the gradient, full (its off-support part gives L)
    loss = float(torch.dot(grad.reshape(-1), (target - theta).reshape(-1)))
    residual = grad * keep
    direction = residual / preconditioner
    rz = (residual * direction).sum(1)
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        product = direction @ c
        curvature = (direction * product).sum(1)
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(1e-30), torch.zeros_like(rz))
        theta = theta.addcmul_(alpha.unsqueeze(1), direction)
        grad = grad.addcmul_(alpha.unsqueeze(1), product, value=-1.0)
        new_loss = float(torch.dot(grad.reshape(-1), (target - theta).reshape(-1)))
        history.append(new_loss / norm)
        change = abs(loss - new_loss) / max(loss, 1e-30)
        loss = new_loss
        if change < tolerance:
            break
        residual = grad * keep
        z = residual / preconditioner
        rz_new = (residual * z).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        direction = z.addcmul_(beta.unsqueeze(1), direction)
        rz = rz_new
    return theta, grad, iterations


def swap(
    target: torch.Tensor,
    c: torch.Tensor,
    theta: torch.Tensor,
    mask: torch.Tensor,
    projector: SparseProjector,
    preconditioner: torch.Tensor,
    *,
    rounds: int = 10,
    cg_iterations: int = 10,
    tolerance: float = 1e-5,
    norm: float = 1.0,
    history: list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Support exchanges with exact per-row acceptance (hard thresholding pursuit with a unit Jacobi step).

    At a point stationary on its support, dropping kept entry i costs θ_i² C_ii and adding dropped entry j
    (at its best value g_j / C_jj, G = (W - Θ) C) gains g_j² / C_jj, cross terms aside. Each round takes
    Z = Θ + t_r G / diag(C) (``preconditioner`` = diag(C), (in,)) and the projector's support of
    |Z| sqrt(diag C): with the row's step factor t_r = 1 that exchanges every kept entry for every dropped
    one that gains more than it costs (IHT's step 1/λ_max(D^-1/2 C D^-1/2) only does so when the gain is
    λ² times the cost, which is why IHT stalls at a support ALPS improves on). Every row whose support
    changes gets ``cg_iterations`` CG iterations on its new support and keeps the new row only when its
    objective is lower (rows are independent: L is their sum), so L never increases. A row that refuses
    quarters its t_r (fewer, surer exchanges), one that accepts doubles it (up to 1); a row whose t_r falls
    below 1/64 stops. Needs a per-row projector (row scope or N:M). ``theta``, ``mask`` are updated in
    place. Returns (Θ, its support, rounds run); appends L / norm after each round to ``history``.
    """
    history = [] if history is None else history
    root = preconditioner.sqrt()
    delta = target - theta
    grad = delta @ c
    row_loss = (grad.double() * delta.double()).sum(1)
    factor = torch.ones(theta.shape[0], dtype=theta.dtype, device=theta.device)
    done = 0
    for done in range(1, rounds + 1):
        active = factor >= 1 / 64
        if not bool(active.any()):
            break
        z = torch.addcmul(theta, grad * factor.unsqueeze(1), (1 / preconditioner).unsqueeze(0))
        new_mask = projector(z * root, mask)
        changed = (new_mask ^ mask).any(1) & active
        rows = changed.nonzero().flatten()
        factor = torch.where(changed | ~active, factor, (factor * 2).clamp(max=1))
        if rows.numel() == 0:
            if bool((factor[active] >= 1).all()):
                break
            continue
        sub_mask = new_mask[rows]
        candidate, sub_grad, _ = polish(target[rows], c, z[rows] * sub_mask, sub_mask, preconditioner,
                                         max_iterations=cg_iterations, tolerance=tolerance)
        sub_loss = (sub_grad.double() * (target[rows] - candidate).double()).sum(1)
        accept = sub_loss < row_loss[rows]
        taken = rows[accept]
        theta[taken] = candidate[accept]
        grad[taken] = sub_grad[accept]
        mask[taken] = sub_mask[accept]
        row_loss[taken] = sub_loss[accept]
        factor[taken] = (factor[taken] * 2).clamp(max=1)
        factor[rows[~accept]] /= 4
        history.append(float(row_loss.sum()) / norm)
    return theta, mask, done


def start_point(
    weight: torch.Tensor, covariance: torch.Tensor, spec: CompressionSpec, init: str, per_row: bool = True,
    damping: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse start (Θ0 (out, in) float32, mask (out, in)) from the ``init`` method (pruning only).

    Computed directly (not through the registry) so that no objective is evaluated. With ``per_row``
    SparseGPT chooses its unstructured mask within each row, so its start is in the row-scope set;
    without, it uses the reference's mask over each block of all rows (rows of unequal sparsity,
    for the layer scope).
    """
    sparse_spec = CompressionSpec(sparsity=spec.sparsity, pattern=spec.pattern)
    w = weight.to(torch.float32)
    if init == "sparsegpt":
        point = obs_compress(w, covariance, sparse_spec, per_row=per_row and spec.pattern is None)
        return point.weight, point.mask
    if init == "alps":
        from .alps import ALPSOptions
        from .alps import prune as alps_prune

        options = ALPSOptions(scope="row" if per_row else "layer", damping=damping)
        pruned = alps_prune(w, covariance, sparse_spec, options)
        return pruned.theta, pruned.mask
    mask = wanda_mask(w, covariance, sparse_spec) if init == "wanda" else sparsity_mask(w, sparse_spec)
    return w * mask, mask

"""SparseGPT: blocked OBS pruning with optional joint quantization (Frantar & Alistarh, 2023).

A port of ``SparseGPT.fasterprune`` from IST-DASLab/sparsegpt, as a pure function:

- Hessian ``H = 2 C``; dead inputs (``H_jj == 0``) get ``H_jj = 1`` and their weights are zeroed;
- damping ``damping * mean(diag H)`` on the diagonal; the upper Cholesky factor of ``H^-1``;
- columns processed in blocks of ``blocksize`` (128) with the lazy batch update between blocks;
- unstructured: at the start of each block the mask is chosen on ``w^2 / [H^-1]_jj^2`` over the
  whole block (all rows), so sparsity is exact per block and adapts per row, as the reference;
- N:M: every M columns, the ``M - N`` smallest ``w^2 / [H^-1]_jj^2`` of each row are pruned;
- with ``spec.bits`` each column is quantized after pruning (the paper's joint mode). The group's
  scale/zero are computed at the group's first column from the group's *current* (OBS-updated)
  weights, leaving out entries already known to be pruned (for ``group_size == -1``: once, from
  the whole row at column 0).

Differences from the reference, on purpose: exactly ``int(p * numel)`` entries are pruned per
block (the reference's ``tmp <= thresh`` prunes one more); group scales read the up-to-date
weights (GPTQ's reference reads the stale block copy for groups that start mid-block); the INT4
grid is the shared one of ``projections``. No TF32 flags, no CUDA synchronisation, no prints, no
module writes. With no pruning and ``spec.bits`` the loop is GPTQ (see ``gptq``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .base import CompressionSpec, LayerStats, SolverResult, register_solver
from .options import SolverOptions, option
from .projections import Projected, check_problem, grid_params, quantize_with

logger = logging.getLogger(__name__)

_EPS = 1e-9


def inverse_hessian_cholesky(
    covariance: torch.Tensor, damping: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of ``(2C + damp I)^-1`` (in, in) and the dead-input mask (in,).

    Dead inputs (zero diagonal) get a unit diagonal. When the damped Hessian is still not positive
    definite, the damping is multiplied by 10 (at most 4 times) with a warning.
    """
    h = 2.0 * covariance.to(dtype)
    h = (h + h.T) / 2
    dead = torch.diagonal(h) == 0
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx[dead], idx[dead]] = 1.0
    mean_diag = torch.diagonal(h).mean()
    pct = damping
    for attempt in range(5):
        damped = h.clone()
        damped[idx, idx] += pct * mean_diag
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                return upper, dead
        logger.warning("Hessian not positive definite with damping %.3g; retrying with %.3g.", pct, pct * 10)
        pct = pct * 10 if pct > 0 else 1e-6
    raise ValueError(f"the damped Hessian is not positive definite even with damping={pct / 10:.3g}.")


def obs_compress(
    weight: torch.Tensor,
    covariance: torch.Tensor,
    spec: CompressionSpec,
    *,
    blocksize: int = 128,
    damping: float = 0.01,
    dtype: torch.dtype = torch.float32,
    mask: torch.Tensor | None = None,
    per_row: bool = False,
) -> Projected:
    """SparseGPT's blocked OBS on ``weight`` (out, in) with covariance (in, in): prune and/or quantize.

    A given ``mask`` (bool (out, in), True = kept) replaces the mask selection: the loop then
    prunes exactly those entries (and quantizes the others when ``spec.bits``), with the same
    OBS error feedback. ``per_row=True`` (unstructured only) chooses the block's mask within each
    row instead of over the whole block, pruning ``int(i2 * p) - int(i1 * p)`` entries of every row
    in block [i1, i2), so every row ends with exactly ``int(in * p)`` pruned (AWP's set).
    Returns the compressed point (weight float32 (out, in), mask, codes, scales, zeros).
    """
    if blocksize <= 0:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}.")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping!r}.")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")
    out_features, in_features = weight.shape
    prune_n = prune_m = 0
    if spec.pattern is not None:
        prune_n, prune_m = spec.pattern
        blocksize = -(-blocksize // prune_m) * prune_m  # N:M windows never straddle blocks
    sparsity = 0.0 if spec.pattern is not None else float(spec.sparsity)
    if mask is not None:
        if mask.shape != weight.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool of shape {tuple(weight.shape)}, got {mask.dtype} {tuple(mask.shape)}.")
        prune_n = prune_m = 0
        sparsity = 0.0

    hinv, dead = inverse_hessian_cholesky(covariance, damping, dtype)
    w = weight.to(dtype).clone()
    w[:, dead] = 0

    pruned = torch.zeros(out_features, in_features, dtype=torch.bool, device=w.device)
    quantizes = spec.quantizes
    if quantizes:
        group = in_features if spec.group_size == -1 else spec.group_size
        ngroups = in_features // group
        scales = torch.ones(out_features, ngroups, dtype=torch.float32, device=w.device)
        zeros = torch.zeros(out_features, ngroups, dtype=torch.float32, device=w.device)
        codes = torch.zeros(out_features, in_features, dtype=torch.uint8, device=w.device)

    for i1 in range(0, in_features, blocksize):
        i2 = min(i1 + blocksize, in_features)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d1 = torch.diagonal(hinv1)
        if mask is not None:
            mask1 = ~mask[:, i1:i2]  # True = pruned
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if sparsity > 0 and per_row:
            tmp = w1**2 / d1.unsqueeze(0) ** 2
            npruned = int(i2 * sparsity + _EPS) - int(i1 * sparsity + _EPS)
            if npruned:
                mask1.scatter_(1, torch.topk(tmp, npruned, dim=1, largest=False).indices, True)
        elif sparsity > 0:
            tmp = w1**2 / d1.unsqueeze(0) ** 2
            npruned = int(tmp.numel() * sparsity + _EPS)
            if npruned:
                idx = torch.topk(tmp.flatten(), npruned, largest=False).indices
                mask1.view(-1)[idx] = True
        for i in range(count):
            col = i1 + i
            wcol = w1[:, i]
            d = hinv1[i, i]
            if prune_n and i % prune_m == 0:
                tmp = w1[:, i : i + prune_m] ** 2 / d1[i : i + prune_m].unsqueeze(0) ** 2
                drop = torch.topk(tmp, prune_m - prune_n, dim=1, largest=False).indices
                mask1.scatter_(1, i + drop, True)
            q = torch.where(mask1[:, i], torch.zeros((), dtype=dtype, device=w.device), wcol)
            if quantizes and col % group == 0:
                g = col // group
                current = _current_columns(w, w1, err1, hinv, i1, i, col, col + group)
                if mask is not None:
                    known = mask[:, col : col + group]
                else:
                    inside = ~mask1[:, i : min(count, i + group)]
                    beyond = torch.ones_like(current[:, count - i :], dtype=torch.bool)  # not chosen yet
                    known = torch.cat([inside, beyond], dim=1)
                s, z = grid_params(current, spec.bits, spec.symmetric, known)
                scales[:, g], zeros[:, g] = s.squeeze(1), z.squeeze(1)
            if quantizes:
                g = col // group
                deq, c = quantize_with(q, scales[:, g], zeros[:, g], spec.bits, ~mask1[:, i])
                q = deq.to(dtype)
                codes[:, col] = c
            q1[:, i] = q
            e = (wcol - q) / d
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    kept = ~pruned if (spec.prunes or mask is not None) else None
    if not quantizes:
        return Projected(w.to(torch.float32), kept)
    return Projected(w.to(torch.float32), kept, codes, scales, None if spec.symmetric else zeros)


def _current_columns(
    w: torch.Tensor, w1: torch.Tensor, err1: torch.Tensor, hinv: torch.Tensor, i1: int, i: int, c1: int, c2: int
) -> torch.Tensor:
    """Up-to-date weights of columns [c1, c2) (out, c2 - c1) while column ``i1 + i`` of the block is next.

    Columns inside the block come from its working copy ``w1``; later columns from ``w`` with the
    updates of the block's first ``i`` columns applied (they are otherwise applied at block end).
    """
    i2 = i1 + w1.shape[1]
    inside = w1[:, c1 - i1 : min(c2, i2) - i1]
    if c2 <= i2:
        return inside
    beyond = w[:, i2:c2]
    if i > 0:
        beyond = beyond - err1[:, :i] @ hinv[i1 : i1 + i, i2:c2]
    return torch.cat([inside, beyond], dim=1)


@dataclass(frozen=True)
class OBSOptions(SolverOptions):
    """Options of the OBS solvers (sparsegpt, gptq)."""

    blocksize: int = option(128, "columns per block of the lazy OBS update", minimum=1)
    damping: float = option(0.01, "fraction of mean(diag C) added to the diagonal of C", minimum=0.0)


@dataclass(frozen=True)
class SparseGPTOptions(OBSOptions):
    """Options of sparsegpt: those of the OBS loop, and where its unstructured mask is chosen."""

    per_row: bool = option(False, "choose the unstructured mask within each row (the same sparsity in every row) "
                           "instead of over each block of columns, as the reference does")


@register_solver("sparsegpt", options=SparseGPTOptions, kinds=("prune", "joint"),
                 summary="OBS pruning column by column (+ INT4 rounding in the same loop with bits)")
def solve(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: SparseGPTOptions) -> SolverResult:
    """SparseGPT on ``weight`` (out, in) with ``stats.covariance`` (in, in): by default the reference's mask
    over each whole block of columns; ``per_row`` the same sparsity in every row (``obs_compress``)."""
    check_problem(weight, stats, spec)
    point = obs_compress(weight, stats.covariance, spec, blocksize=options.blocksize, damping=options.damping,
                         per_row=options.per_row)
    result = point.to_result(weight, stats.covariance)
    logger.debug("sparsegpt %s: objective %.4g", tuple(weight.shape), result.objective)
    return result

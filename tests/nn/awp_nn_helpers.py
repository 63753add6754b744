"""Small helpers for the tests of optimum_awp.nn: an RTN INT4 quantizer and a 2:4 magnitude mask.

They make SolverResult objects without depending on optimum_awp.solvers' method files.
"""

from __future__ import annotations

import torch

from optimum_awp.nn import AWPLinear, format_for
from optimum_awp.solvers.base import CompressionSpec, SolverResult


def pack(result: SolverResult, spec: CompressionSpec, bias: torch.Tensor | None, dtype: torch.dtype) -> AWPLinear:
    """The AWPLinear of ``result`` in the format ``spec`` maps to (as compress() builds it)."""
    fmt = format_for(spec.pattern, spec.bits)
    if fmt is None:
        raise ValueError(f"No packed format applies to {spec}.")
    return AWPLinear.from_parts(fmt, result.weight, mask=result.mask, codes=result.codes, scales=result.scales,
                                zeros=result.zeros, group_size=spec.group_size, symmetric=spec.symmetric,
                                bias=bias, dtype=dtype)


def magnitude_2of4(weight: torch.Tensor) -> torch.Tensor:
    """Bool (out, in): the 2 largest |w| of every group of 4 consecutive inputs."""
    out_features, in_features = weight.shape
    groups = weight.abs().view(out_features, in_features // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.view(out_features, in_features)


def rtn_int4(
    weight: torch.Tensor,
    group_size: int = 128,
    symmetric: bool = True,
    mask: torch.Tensor | None = None,
) -> SolverResult:
    """Round-to-nearest INT4 of weight (out, in) on groups along in; pruned entries (mask False) get the
    zero code. Returns a SolverResult with float32 weight Θ, codes uint8, scales float32, zeros."""
    w = weight.to(torch.float32)
    out_features, in_features = w.shape
    g = in_features if group_size == -1 else group_size
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None else mask
    wg = (w * keep).view(out_features, in_features // g, g)
    kg = keep.view(out_features, in_features // g, g)
    if symmetric:
        scale = (wg.abs().amax(-1) / 7).clamp_min(1e-8)
        zero = torch.full_like(scale, 8.0)
    else:
        big = torch.finfo(torch.float32).max
        lo = torch.where(kg, wg, big).amin(-1).clamp(max=0)
        hi = torch.where(kg, wg, -big).amax(-1).clamp(min=0)
        scale = ((hi - lo) / 15).clamp_min(1e-8)
        zero = (-lo / scale).round().clamp(0, 15)
    codes = (wg / scale.unsqueeze(-1)).round() + zero.unsqueeze(-1)
    codes = codes.clamp(0, 15)
    codes = torch.where(kg, codes, zero.unsqueeze(-1)).view(out_features, in_features)
    theta = ((codes.view_as(wg) - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).view(out_features, in_features)
    return SolverResult(
        weight=theta,
        mask=mask,
        codes=codes.to(torch.uint8),
        scales=scale,
        zeros=None if symmetric else zero,
    )

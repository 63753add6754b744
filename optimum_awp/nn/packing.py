"""The bit layouts of the packed formats: pure, exact pack/unpack functions (``formats.py`` registers the formats).

Everything here imports torch only. docs/formats.md draws the same layouts.

INT4 codes (``pack_int4``): unsigned codes c in [0, 15], 8 per int32, nibble i at bits 4i::

    int32 word j of a row  =  c[8j+7] c[8j+6] c[8j+5] c[8j+4] c[8j+3] c[8j+2] c[8j+1] c[8j+0]
    bit                       31..28  27..24  23..20  19..16  15..12  11..8   7..4    3..0

Symmetric grids dequantize as (c - 8) * scale, so c is the signed value q + 8 (compressed-tensors'
``pack-quantized`` order); asymmetric grids as (c - zero) * scale.

2:4 positions (``pack_2of4``): in every group of 4 consecutive inputs, two kept positions
p0 < p1 in [0, 3], 2 bits each, 4 positions (2 groups) per uint8::

    meta byte j of a row  =  p1(g 2j+1) p0(g 2j+1) p1(g 2j) p0(g 2j)      g = group of 4 inputs
    bit                      7..6       5..4       3..2     1..0

and ``values[:, 2g + k]`` is the weight at input 4g + p_k.
"""

from __future__ import annotations

import sys

import torch

INT4_SYMMETRIC_ZERO = 8
"""The code that dequantizes to 0 on a symmetric INT4 grid: (8 - 8) * scale."""

_NIBBLE_SHIFTS = tuple(range(0, 32, 4))
_LITTLE_ENDIAN = sys.byteorder == "little"


# ----------------------------------------------------------------------------------------------- checks
def _check_2d(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a 2-D tensor (out, in), got shape {shape}.")


def _check_divisible(name: str, value: int, divisor: int, why: str) -> None:
    if value <= 0 or value % divisor:
        raise ValueError(f"{name}={value} must be a positive multiple of {divisor} ({why}).")


def _check_dtype(name: str, tensor: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if tensor.dtype not in allowed:
        raise ValueError(f"{name} has dtype {tensor.dtype}; allowed: {', '.join(str(d) for d in allowed)}.")


def num_groups(in_features: int, group_size: int) -> int:
    """Number of scale columns: in_features // group_size, or 1 when group_size == -1 (per channel)."""
    if group_size == -1:
        return 1
    if group_size <= 0:
        raise ValueError(f"group_size must be -1 (per channel) or a positive int, got {group_size}.")
    _check_divisible("in_features", in_features, group_size, f"group_size={group_size} must divide it")
    return in_features // group_size


def _expand_groups(per_group: torch.Tensor, in_features: int) -> torch.Tensor:
    """(out, n_groups) -> (out, in_features), each column repeated in_features // n_groups times."""
    return per_group.repeat_interleave(in_features // per_group.shape[1], dim=1)


# ----------------------------------------------------------------------------------------------- INT4
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack INT4 codes 8 per int32, nibble i at bits 4i (least significant first).

    Args:
        codes: integer tensor (out, in) with values in [0, 15]; in % 8 == 0.
    Returns:
        qweight: int32 (out, in // 8). Bit-exact inverse of ``unpack_int4``.
    """
    _check_2d("codes", codes)
    _check_dtype("codes", codes, _INT_DTYPES)
    out_features, in_features = codes.shape
    _check_divisible("in_features", in_features, 8, "8 INT4 codes per int32")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError(f"codes must lie in [0, 15], got range [{int(codes.min())}, {int(codes.max())}].")
    c = codes.to(torch.uint8)
    if _LITTLE_ENDIAN:
        # bytes (out, in/2): byte k holds code 2k in bits 0..3 and code 2k+1 in bits 4..7; on a
        # little-endian machine 4 such bytes read as one int32 give exactly the nibble order above.
        packed_bytes = c[:, 0::2] | (c[:, 1::2] << 4)
        return packed_bytes.contiguous().view(torch.int32)
    words = c.view(out_features, in_features // 8, 8).to(torch.int64)
    shifts = torch.tensor(_NIBBLE_SHIFTS, dtype=torch.int64, device=codes.device)
    packed = (words << shifts).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """Unpack int32 words into INT4 codes.

    Args:
        qweight: int32 (out, in // 8) as written by ``pack_int4``.
    Returns:
        codes: uint8 (out, in) in [0, 15].
    """
    _check_2d("qweight", qweight)
    _check_dtype("qweight", qweight, (torch.int32,))
    out_features, words = qweight.shape
    if _LITTLE_ENDIAN:
        b = qweight.contiguous().view(torch.uint8)  # (out, in / 2)
        return torch.stack((b & 15, b >> 4), dim=-1).view(out_features, words * 8)
    shifts = torch.tensor(_NIBBLE_SHIFTS, dtype=torch.int32, device=qweight.device)
    return ((qweight.unsqueeze(-1) >> shifts) & 15).to(torch.uint8).view(out_features, words * 8)


def dequantize_int4(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Dense weight from INT4 codes: (codes - 8) * scale, or (codes - zero) * scale when ``zeros`` is given.

    Args:
        codes: uint8 (out, in) in [0, 15].
        scales: float (out, n_groups); n_groups divides in (1 = per channel). Groups run along in.
        zeros: integer-valued (out, n_groups) zero codes, or None for the symmetric grid.
        dtype: result dtype; default ``scales.dtype``. Each entry is the exact product rounded once.
    Returns:
        weight (out, in) in ``dtype``.
    """
    _check_2d("codes", codes)
    _check_2d("scales", scales)
    out_features, in_features = codes.shape
    n_groups = scales.shape[1]
    if scales.shape[0] != out_features or n_groups == 0 or in_features % n_groups:
        raise ValueError(
            f"scales has shape {tuple(scales.shape)}; expected ({out_features}, n_groups) with n_groups "
            f"dividing in_features={in_features}."
        )
    if zeros is not None and zeros.shape != scales.shape:
        raise ValueError(f"zeros has shape {tuple(zeros.shape)}; expected scales' shape {tuple(scales.shape)}.")
    dtype = dtype or scales.dtype
    g = in_features // n_groups
    # (c - z) is a small integer. For bf16/fp16 scales, scale * integer is exact in float32, so the
    # bf16/fp16 multiply (float32 inside, one rounding) gives the same bits as float32-then-cast, faster.
    compute = dtype if scales.dtype == dtype and dtype in (torch.bfloat16, torch.float16) else torch.float32
    w = torch.empty((out_features, n_groups, g), dtype=compute, device=codes.device)
    w.copy_(codes.view(out_features, n_groups, g))
    if zeros is None:
        w.sub_(INT4_SYMMETRIC_ZERO)
    else:
        w.sub_(zeros.to(compute).unsqueeze(-1))
    w.mul_(scales.to(compute).unsqueeze(-1))
    return w.view(out_features, in_features).to(dtype)


# ----------------------------------------------------------------------------------------------- 2:4
def select_2of4(keep: torch.Tensor) -> torch.Tensor:
    """The two stored positions of every group of 4 inputs.

    Kept entries come first; a group with fewer than 2 kept entries is filled with its lowest
    non-kept positions, so the choice is deterministic. Positions are returned ascending.

    Args:
        keep: bool (out, in), at most 2 True per group of 4 consecutive inputs; in % 4 == 0.
    Returns:
        positions: int64 (out, in // 4, 2), p0 < p1 in [0, 3].
    """
    _check_2d("mask", keep)
    out_features, in_features = keep.shape
    _check_divisible("in_features", in_features, 4, "groups of 4 inputs")
    groups = keep.view(out_features, in_features // 4, 4)
    counts = groups.sum(-1)
    if counts.numel() and int(counts.max()) > 2:
        row, group = (counts > 2).nonzero()[0].tolist()
        raise ValueError(
            f"not a 2:4 pattern: row {row}, inputs {4 * group}..{4 * group + 3} keep {int(counts[row, group])} "
            "entries (at most 2 of every 4 allowed)."
        )
    # kept entries rank first, then lower indices: key = 8 * kept + (3 - index), all keys distinct
    index = torch.arange(4, device=keep.device)
    key = groups.to(torch.int64) * 8 + (3 - index)
    positions = key.topk(2, dim=-1).indices
    return positions.sort(dim=-1).values


def _pack_positions(positions: torch.Tensor) -> torch.Tensor:
    """(out, n_groups, 2) positions in [0, 3] -> uint8 meta (out, n_groups // 2), bit layout in the module doc."""
    out_features, n_groups, _ = positions.shape
    p = positions.to(torch.uint8).view(out_features, n_groups // 2, 4)  # p0(2j) p1(2j) p0(2j+1) p1(2j+1)
    return p[..., 0] | (p[..., 1] << 2) | (p[..., 2] << 4) | (p[..., 3] << 6)


def _unpack_positions(meta: torch.Tensor) -> torch.Tensor:
    """uint8 meta (out, in // 8) -> int64 positions (out, in // 4, 2)."""
    out_features, n_bytes = meta.shape
    shifts = torch.tensor((0, 2, 4, 6), dtype=torch.uint8, device=meta.device)
    p = (meta.unsqueeze(-1) >> shifts) & 3
    return p.view(out_features, n_bytes * 2, 2).to(torch.int64)


def _positions_to_index(positions: torch.Tensor) -> torch.Tensor:
    """(out, n_groups, 2) group positions -> (out, 2 * n_groups) input indices."""
    out_features, n_groups, _ = positions.shape
    base = torch.arange(0, 4 * n_groups, 4, device=positions.device).view(1, n_groups, 1)
    return (positions + base).view(out_features, 2 * n_groups)


def _check_meta(meta: torch.Tensor, out_features: int, in_features: int) -> None:
    _check_2d("meta", meta)
    _check_dtype("meta", meta, (torch.uint8,))
    if tuple(meta.shape) != (out_features, in_features // 8):
        raise ValueError(f"meta has shape {tuple(meta.shape)}; expected ({out_features}, {in_features // 8}).")


def pack_2of4(weight: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Store a 2:4-sparse weight as its kept values and 2-bit positions.

    Args:
        weight: float (out, in); in % 8 == 0 (two groups of 4 per meta byte).
        mask: bool (out, in) of kept entries, at most 2 per group of 4; default ``weight != 0``.
            Entries outside the mask are stored as 0 wherever a group needs filling.
    Returns:
        values: (out, in // 2) in weight's dtype.
        meta: uint8 (out, in // 8).
    """
    _check_2d("weight", weight)
    out_features, in_features = weight.shape
    _check_divisible("in_features", in_features, 8, "2:4 meta packs 2 groups of 4 inputs per byte")
    keep = weight != 0 if mask is None else mask
    if tuple(keep.shape) != (out_features, in_features):
        raise ValueError(f"mask has shape {tuple(keep.shape)}; expected weight's shape {tuple(weight.shape)}.")
    positions = select_2of4(keep.to(torch.bool))
    index = _positions_to_index(positions)
    masked = weight if mask is None else weight.masked_fill(~keep.to(torch.bool), 0)
    values = masked.gather(1, index)
    return values, _pack_positions(positions)


def unpack_2of4(values: torch.Tensor, meta: torch.Tensor, fill: float | torch.Tensor = 0) -> torch.Tensor:
    """Scatter 2:4 values back into a dense (out, in) matrix.

    Args:
        values: (out, in // 2), any dtype (float weights, or uint8 INT4 codes).
        meta: uint8 (out, in // 8) from ``pack_2of4``.
        fill: value of the pruned entries: a scalar, or a tensor broadcastable to (out, in).
    Returns:
        dense (out, in) in values' dtype.
    """
    _check_2d("values", values)
    out_features, half = values.shape
    in_features = 2 * half
    _check_divisible("in_features", in_features, 8, "2:4 meta packs 2 groups of 4 inputs per byte")
    _check_meta(meta, out_features, in_features)
    index = _positions_to_index(_unpack_positions(meta))
    if isinstance(fill, torch.Tensor):
        dense = fill.to(device=values.device, dtype=values.dtype).expand(out_features, in_features).clone()
    else:
        dense = torch.full((out_features, in_features), fill, dtype=values.dtype, device=values.device)
    return dense.scatter_(1, index, values)


def mask_2of4(meta: torch.Tensor) -> torch.Tensor:
    """Bool (out, in) of the stored positions (2 per group of 4) of ``meta`` uint8 (out, in // 8)."""
    out_features, n_bytes = meta.shape
    index = _positions_to_index(_unpack_positions(meta))
    dense = torch.zeros(out_features, n_bytes * 8, dtype=torch.bool, device=meta.device)
    return dense.scatter_(1, index, True)


# ----------------------------------------------------------------------------------------------- 2:4 + INT4
def pack_2of4_int4(codes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Store 2:4-sparse INT4 codes: the kept codes packed as INT4 plus their 2-bit positions.

    Args:
        codes: integer (out, in) in [0, 15]; pruned entries carry the zero code (8, or the group's
            zero point), so filled positions of groups with fewer than 2 kept entries stay exact.
        mask: bool (out, in), at most 2 True per group of 4; in % 16 == 0.
    Returns:
        qweight: int32 (out, in // 16) (the (out, in // 2) kept codes, packed by ``pack_int4``).
        meta: uint8 (out, in // 8).
    """
    _check_2d("codes", codes)
    out_features, in_features = codes.shape
    _check_divisible("in_features", in_features, 16, "2:4 keeps in/2 codes, packed 8 per int32")
    if tuple(mask.shape) != (out_features, in_features):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected codes' shape {tuple(codes.shape)}.")
    positions = select_2of4(mask.to(torch.bool))
    kept = codes.gather(1, _positions_to_index(positions))
    return pack_int4(kept), _pack_positions(positions)


def zero_codes(out_features: int, in_features: int, zeros: torch.Tensor | None, device=None) -> torch.Tensor:
    """The code of an exact 0 for every entry: 8 (symmetric) or the group's zero point; uint8 broadcastable
    to (out, in)."""
    if zeros is None:
        return torch.full((1, 1), INT4_SYMMETRIC_ZERO, dtype=torch.uint8, device=device)
    return _expand_groups(zeros.to(torch.uint8), in_features)


def unpack_2of4_int4(qweight: torch.Tensor, meta: torch.Tensor, zeros: torch.Tensor | None = None) -> torch.Tensor:
    """Dense INT4 codes of a 2:4 + INT4 weight.

    Args:
        qweight: int32 (out, in // 16).
        meta: uint8 (out, in // 8).
        zeros: integer-valued (out, n_groups) zero points (asymmetric), or None (symmetric).
    Returns:
        codes: uint8 (out, in); pruned entries hold the zero code, so they dequantize to exactly 0.
    """
    kept = unpack_int4(qweight)
    out_features, in_features = kept.shape[0], kept.shape[1] * 2
    return unpack_2of4(kept, meta, fill=zero_codes(out_features, in_features, zeros, kept.device))


__all__ = [
    "INT4_SYMMETRIC_ZERO",
    "dequantize_int4",
    "mask_2of4",
    "num_groups",
    "pack_2of4",
    "pack_2of4_int4",
    "pack_int4",
    "select_2of4",
    "unpack_2of4",
    "unpack_2of4_int4",
    "unpack_int4",
    "zero_codes",
]

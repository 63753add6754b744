"""Packed storage formats: the registry of formats, each the plain tensors saved for one compressed linear.

Everything here imports torch only. A format is the set of plain tensors saved to safetensors for one
compressed linear layer of weight shape (out, in); kernels build their own layouts from these tensors
(see ``kernels.py``) and never save them. The bit layouts (INT4 nibbles, 2:4 positions) and their
pure pack/unpack functions are in ``packing.py``; docs/formats.md draws them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .packing import (
    dequantize_int4,
    num_groups,
    pack_2of4,
    pack_2of4_int4,
    pack_int4,
    unpack_2of4,
    unpack_2of4_int4,
    unpack_int4,
)
from .packing import _check_divisible

# ----------------------------------------------------------------------------------------------- registry
BufferShapes = dict[str, tuple[tuple[int, ...], torch.dtype]]


@dataclass(frozen=True)
class Format:
    """A storage format: the buffers it saves and how to pack/unpack them.

    Attributes:
        name: registry key ("int4", "2:4", "2:4+int4").
        quantized: stores INT4 codes (``unpack_codes`` applies).
        sparse: stores 2:4 positions (``meta``).
        pattern: the (N, M) pattern whose positions it stores, or None.
        in_multiple: in_features must be a multiple of this.
        shapes: (out, in, group_size, symmetric, dtype) -> {buffer name: (shape, dtype)}.
        pack: (weight, mask, codes, scales, zeros, group_size, dtype) -> {buffer name: tensor}.
        dequantize: (buffers, dtype) -> dense weight (out, in).
        unpack_codes: (buffers) -> uint8 codes (out, in), pruned entries at the zero code; quantized only.
    """

    name: str
    quantized: bool
    sparse: bool
    in_multiple: int
    shapes: Callable[..., BufferShapes]
    pack: Callable[..., dict[str, torch.Tensor]]
    dequantize: Callable[..., torch.Tensor]
    unpack_codes: Callable[..., torch.Tensor] | None = None
    pattern: tuple[int, int] | None = None

    def check_shape(self, out_features: int, in_features: int, group_size: int) -> None:
        """Raise ValueError when (out_features, in_features, group_size) cannot be stored in this format."""
        if out_features <= 0:
            raise ValueError(f"out_features must be positive, got {out_features}.")
        _check_divisible("in_features", in_features, self.in_multiple, f"format {self.name!r}")
        if self.quantized:
            num_groups(in_features, group_size)

    def buffer_shapes(
        self, out_features: int, in_features: int, group_size: int, symmetric: bool, dtype: torch.dtype
    ) -> BufferShapes:
        self.check_shape(out_features, in_features, group_size)
        return self.shapes(out_features, in_features, group_size, symmetric, dtype)

    def register_buffers(
        self, module: "torch.nn.Module", out_features: int, in_features: int, group_size: int, symmetric: bool,
        dtype: torch.dtype, device: torch.device | str | None = None,
    ) -> tuple[str, ...]:
        """Register this format's buffers on ``module``, empty, at their shapes and dtypes (``buffer_shapes``);
        returns their names in order (the module's packed tensors)."""
        shapes = self.buffer_shapes(out_features, in_features, group_size, symmetric, dtype)
        for name, (shape, buffer_dtype) in shapes.items():
            module.register_buffer(name, torch.empty(shape, dtype=buffer_dtype, device=device))
        return tuple(shapes)


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add ``fmt`` to FORMATS; a name can be registered once."""
    if fmt.name in FORMATS:
        raise ValueError(f"A format named {fmt.name!r} is already registered.")
    FORMATS[fmt.name] = fmt
    return fmt


FORMAT_FAMILIES: dict[str, Callable[[str], Format | None]] = {}
"""Parametrised formats (``lowrank-r64``): family name -> parser of a format name, giving its Format or None.
Their formats are not in FORMATS, so ``format_for`` never picks one for a sparsity / bits spec."""


def register_format_family(name: str, parse: Callable[[str], Format | None]) -> None:
    """Add a family of formats whose names carry parameters (``nn/lowrank.py``); a name can be registered once."""
    if name in FORMAT_FAMILIES:
        raise ValueError(f"A format family named {name!r} is already registered.")
    FORMAT_FAMILIES[name] = parse


def get_format(name: str) -> Format:
    """The format registered as ``name`` or parsed by a family; a ValueError lists the known names otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        for parse in FORMAT_FAMILIES.values():
            fmt = parse(name) if isinstance(name, str) else None
            if fmt is not None:
                return fmt
        families = f" and the families {sorted(FORMAT_FAMILIES)}" if FORMAT_FAMILIES else ""
        raise ValueError(f"Unknown format {name!r}; known formats: {sorted(FORMATS)}{families}.") from None


def format_for(pattern: tuple[int, int] | None, bits: int | None) -> str | None:
    """The registered format that stores weights pruned to ``pattern`` (N, M) and quantized to ``bits``.

    A sparse format stores its pattern's positions; an INT4 format without a pattern also holds any other
    sparsity (pruned entries are zero codes). None when no format applies (pruning without bits other than
    a format's pattern): such weights stay in an nn.Linear holding the zeros.
    """
    exact = [f for f in FORMATS.values() if f.pattern == pattern and f.quantized == (bits is not None)]
    if exact:
        return exact[0].name
    if bits is not None:
        fallback = [f for f in FORMATS.values() if f.pattern is None and f.quantized]
        return fallback[0].name if fallback else None
    return None


def _quant_shapes(out_features, in_features, group_size, symmetric, dtype) -> BufferShapes:
    n_groups = num_groups(in_features, group_size)
    shapes = {"scales": ((out_features, n_groups), dtype)}
    if not symmetric:
        shapes["zeros"] = ((out_features, n_groups), torch.uint8)
    return shapes


def _check_qparams(scales, zeros, out_features, in_features, group_size, dtype) -> dict[str, torch.Tensor]:
    if scales is None:
        raise ValueError("scales is required by INT4 formats, got None.")
    expected = (out_features, num_groups(in_features, group_size))
    if tuple(scales.shape) != expected:
        raise ValueError(f"scales has shape {tuple(scales.shape)}; expected {expected} for group_size={group_size}.")
    out = {"scales": scales.to(dtype).contiguous()}
    if zeros is not None:
        if tuple(zeros.shape) != expected:
            raise ValueError(f"zeros has shape {tuple(zeros.shape)}; expected {expected}.")
        z = zeros.to(torch.float32)
        if z.numel() and (bool((z != z.round()).any()) or float(z.min()) < 0 or float(z.max()) > 15):
            raise ValueError("zeros must be integer-valued in [0, 15] (the code of an exact 0).")
        out["zeros"] = z.to(torch.uint8).contiguous()
    return out


def _require_codes(codes: torch.Tensor | None, out_features: int, in_features: int) -> torch.Tensor:
    if codes is None:
        raise ValueError("codes is required by INT4 formats, got None.")
    if tuple(codes.shape) != (out_features, in_features):
        raise ValueError(f"codes has shape {tuple(codes.shape)}; expected ({out_features}, {in_features}).")
    return codes


def _int4_pack(weight, mask, codes, scales, zeros, group_size, dtype):
    out_features, in_features = weight.shape
    buffers = {"qweight": pack_int4(_require_codes(codes, out_features, in_features))}
    buffers.update(_check_qparams(scales, zeros, out_features, in_features, group_size, dtype))
    return buffers


def _int4_codes(buffers):
    return unpack_int4(buffers["qweight"])


def _int4_dequantize(buffers, dtype):
    return dequantize_int4(_int4_codes(buffers), buffers["scales"], buffers.get("zeros"), dtype)


register_format(
    Format(
        name="int4",
        quantized=True,
        sparse=False,
        in_multiple=8,
        shapes=lambda o, i, g, sym, dt: {"qweight": ((o, i // 8), torch.int32), **_quant_shapes(o, i, g, sym, dt)},
        pack=_int4_pack,
        dequantize=_int4_dequantize,
        unpack_codes=_int4_codes,
    )
)


def _sparse_pack(weight, mask, codes, scales, zeros, group_size, dtype):
    values, meta = pack_2of4(weight.to(dtype), mask)
    return {"values": values.contiguous(), "meta": meta}


register_format(
    Format(
        name="2:4",
        quantized=False,
        sparse=True,
        in_multiple=8,
        shapes=lambda o, i, g, sym, dt: {"values": ((o, i // 2), dt), "meta": ((o, i // 8), torch.uint8)},
        pack=_sparse_pack,
        pattern=(2, 4),
        dequantize=lambda buffers, dtype: unpack_2of4(buffers["values"], buffers["meta"]).to(dtype),
    )
)


def _sparse_int4_pack(weight, mask, codes, scales, zeros, group_size, dtype):
    out_features, in_features = weight.shape
    codes = _require_codes(codes, out_features, in_features)
    if mask is None:
        mask = weight != 0
    buffers = _check_qparams(scales, zeros, out_features, in_features, group_size, dtype)
    qweight, meta = pack_2of4_int4(codes, mask)
    return {"qweight": qweight, "meta": meta, **buffers}


def _sparse_int4_codes(buffers):
    return unpack_2of4_int4(buffers["qweight"], buffers["meta"], buffers.get("zeros"))


register_format(
    Format(
        name="2:4+int4",
        quantized=True,
        sparse=True,
        in_multiple=16,
        shapes=lambda o, i, g, sym, dt: {
            "qweight": ((o, i // 16), torch.int32),
            "meta": ((o, i // 8), torch.uint8),
            **_quant_shapes(o, i, g, sym, dt),
        },
        pack=_sparse_int4_pack,
        dequantize=lambda buffers, dtype: dequantize_int4(
            _sparse_int4_codes(buffers), buffers["scales"], buffers.get("zeros"), dtype
        ),
        unpack_codes=_sparse_int4_codes,
        pattern=(2, 4),
    )
)


__all__ = [
    "FORMATS",
    "FORMAT_FAMILIES",
    "Format",
    "format_for",
    "get_format",
    "register_format",
    "register_format_family",
]

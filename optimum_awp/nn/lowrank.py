"""Low-rank storage formats for ``AWPLinear`` (Θ = B A, or a sparse part plus B A) and their forward kernel.

The rank (and, for unstructured sparsity, the count kept per row) is part of the format's name, so that
``compressed_modules`` alone rebuilds every module on the meta device before the weights load::

    "lowrank-r{r}"                lowrank_a (r, in) dtype, lowrank_b (out, r) dtype               Θ = B A
    "2:4+lowrank-r{r}"            values (out, in/2) dtype, meta uint8 (out, in/8) (the "2:4"
                                  format's buffers), lowrank_a, lowrank_b                         Θ = S + B A
    "bitmap-k{k}+lowrank-r{r}"    bitmap uint8 (out, in/8), values (out, k) dtype, lowrank_a,
                                  lowrank_b; every row keeps exactly k entries                    Θ = S + B A

``bitmap`` bit b of byte j of a row is input 8j + b (least significant first); ``values[i]`` are row i's kept
weights in increasing input order. These names are a format *family* (``formats.register_format_family``): they
are not in ``FORMATS``, so ``format_for`` never picks one for a sparsity / bits spec; ``pack_lowrank`` builds the
module from a solver result's factors (``formats.Format.pack`` takes no factors and refuses).

Forward (kernel "lowrank"): y = (x Aᵀ) Bᵀ, plus the sparse part's product: for "2:4" the kernel the registry
chooses for the "2:4" buffers alone (the native CPU kernel where it is built), for "bitmap" a dense copy of the
sparse part decoded once per device and dtype (no unstructured sparse kernel exists here: on disk the bitmap
layout is what is stored, in memory the sparse part then takes the dense size). Cost per token:
``flops_per_token``; stored size: ``AWPLinear.weight_bytes()``.

Compressed-tensors has no low-rank layout: ``export.py`` refuses these formats.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import cache

import torch

from . import kernels
from .formats import Format, register_format_family
from .packing import _check_2d, pack_2of4, unpack_2of4

FAMILY = "lowrank"
_NAME = re.compile(r"^(?:(?P<sparse>2:4|bitmap-k(?P<k>[1-9][0-9]*))\+)?lowrank-r(?P<rank>[1-9][0-9]*)$")


def lowrank_format(rank: int, pattern: tuple[int, int] | None = None, keep: int | None = None) -> str:
    """The format name of factors of ``rank`` alone, with a 2:4 part (``pattern`` (2, 4)) or with an
    unstructured part keeping ``keep`` entries per row."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}.")
    if pattern is not None:
        if tuple(pattern) != (2, 4):
            raise ValueError(f"sparse + low-rank stores 2:4 or unstructured sparsity, got pattern {pattern}.")
        return f"2:4+lowrank-r{rank}"
    if keep is not None:
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive int (entries kept per row), got {keep!r}.")
        return f"bitmap-k{keep}+lowrank-r{rank}"
    return f"lowrank-r{rank}"


def parse_lowrank(name: str) -> tuple[int, str | None, int | None] | None:
    """(rank, sparse part "2:4" / "bitmap" / None, kept per row for "bitmap") of a family name, else None."""
    found = _NAME.match(name)
    if found is None:
        return None
    sparse = found["sparse"]
    kind = None if sparse is None else "2:4" if sparse == "2:4" else "bitmap"
    return int(found["rank"]), kind, int(found["k"]) if found["k"] else None


# ----------------------------------------------------------------------------------------------- bitmap
def pack_bitmap(mask: torch.Tensor) -> torch.Tensor:
    """bool (out, in) -> uint8 (out, in / 8), bit b of byte j = input 8j + b; in % 8 == 0."""
    _check_2d("mask", mask)
    out_features, in_features = mask.shape
    if in_features % 8:
        raise ValueError(f"in_features={in_features} must be a multiple of 8 (8 inputs per bitmap byte).")
    bits = mask.to(torch.uint8).view(out_features, in_features // 8, 8)
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    return (bits << shifts).sum(-1, dtype=torch.uint8)


def unpack_bitmap(bitmap: torch.Tensor) -> torch.Tensor:
    """uint8 (out, in / 8) -> bool (out, in); the inverse of ``pack_bitmap``."""
    _check_2d("bitmap", bitmap)
    shifts = torch.arange(8, dtype=torch.uint8, device=bitmap.device)
    return ((bitmap.unsqueeze(-1) >> shifts) & 1).bool().view(bitmap.shape[0], bitmap.shape[1] * 8)


def pack_rows(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight (out, in) whose ``mask`` keeps the same count k in every row -> (bitmap (out, in/8), values
    (out, k) in weight's dtype, each row's kept weights in increasing input order)."""
    counts = mask.sum(1)
    if counts.numel() and int(counts.min()) != int(counts.max()):
        raise ValueError(f"the bitmap format needs the same number of kept entries in every row, got "
                         f"{int(counts.min())} to {int(counts.max())} (use scope='row').")
    keep = int(counts[0]) if counts.numel() else 0
    return pack_bitmap(mask), weight[mask].view(weight.shape[0], keep)


def unpack_rows(bitmap: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Dense (out, in) in values' dtype from ``pack_rows``' bitmap and values; zeros off the bitmap."""
    mask = unpack_bitmap(bitmap)
    dense = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    return dense.masked_scatter_(mask, values)


# ----------------------------------------------------------------------------------------------- formats
def _sparse_dense(buffers: dict[str, torch.Tensor], kind: str | None, dtype: torch.dtype) -> torch.Tensor | None:
    if kind == "2:4":
        return unpack_2of4(buffers["values"], buffers["meta"]).to(dtype)
    if kind == "bitmap":
        return unpack_rows(buffers["bitmap"], buffers["values"]).to(dtype)
    return None


def _dequantize(kind: str | None):
    def dequantize(buffers: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        low = buffers["lowrank_b"].to(torch.float32) @ buffers["lowrank_a"].to(torch.float32)
        sparse = _sparse_dense(buffers, kind, torch.float32)
        return (low if sparse is None else sparse + low).to(dtype)

    return dequantize


def _refuse_pack(name: str):
    def pack(*args, **kwargs):
        raise ValueError(f"format {name!r} is built from low-rank factors: use optimum_awp.nn.lowrank.pack_lowrank "
                         "(or compress with method='lowrank'), not AWPLinear.from_parts.")

    return pack


@cache
def _format(name: str) -> Format | None:
    parsed = parse_lowrank(name)
    if parsed is None:
        return None
    rank, kind, keep = parsed

    def shapes(o, i, g, sym, dt):
        if kind == "bitmap" and keep > i:
            raise ValueError(f"format {name!r} keeps {keep} entries per row, more than in_features={i}.")
        out = {}
        if kind == "2:4":
            out = {"values": ((o, i // 2), dt), "meta": ((o, i // 8), torch.uint8)}
        elif kind == "bitmap":
            out = {"bitmap": ((o, i // 8), torch.uint8), "values": ((o, keep), dt)}
        return {**out, "lowrank_a": ((rank, i), dt), "lowrank_b": ((o, rank), dt)}

    return Format(name=name, quantized=False, sparse=False, in_multiple=1 if kind is None else 8, shapes=shapes,
                  pack=_refuse_pack(name), dequantize=_dequantize(kind))


def lowrank_format_of(name: str) -> Format | None:
    """The Format of a low-rank family name, or None for any other name (the family's parser)."""
    return _format(name) if isinstance(name, str) else None


register_format_family(FAMILY, lowrank_format_of)


def pack_lowrank(result, spec, bias: torch.Tensor | None, dtype: torch.dtype):
    """The AWPLinear holding a low-rank solver result (``solvers.lowrank``): its ``factors`` (B (out, r),
    A (r, in)) and, when it pruned, its ``sparse_weight`` Θ_S and ``mask`` (2:4 for ``spec.pattern`` (2, 4),
    the bitmap format for unstructured sparsity with the same count in every row).

    ``result`` and ``spec`` are read by attribute (a SolverResult and a CompressionSpec): nn never imports
    solvers. Buffers are in ``dtype`` (the model dtype); ``dequantize()`` is S + B A rounded to it.
    """
    from .linear import AWPLinear

    b, a = result.factors
    if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"factors must be B (out, r) and A (r, in), got {tuple(b.shape)} and {tuple(a.shape)}.")
    out_features, in_features = b.shape[0], a.shape[1]
    rank = b.shape[1]
    sparse = getattr(result, "sparse_weight", None)
    buffers: dict[str, torch.Tensor] = {}
    if sparse is None:
        name = lowrank_format(rank)
    elif spec.pattern is not None:
        name = lowrank_format(rank, pattern=spec.pattern)
        values, meta = pack_2of4(sparse.to(dtype), result.mask)
        buffers = {"values": values, "meta": meta}
    else:
        mask = result.mask if result.mask is not None else sparse != 0
        bitmap, values = pack_rows(sparse.to(dtype), mask)
        name = lowrank_format(rank, keep=values.shape[1])
        buffers = {"bitmap": bitmap, "values": values}
    module = AWPLinear(in_features, out_features, bias is not None, format=name, dtype=dtype, device=b.device)
    buffers.update(lowrank_a=a.to(dtype), lowrank_b=b.to(dtype))
    for key, tensor in buffers.items():
        expected = getattr(module, key)
        if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
            raise ValueError(f"packed {key} has {tuple(tensor.shape)} {tensor.dtype}; expected "
                             f"{tuple(expected.shape)} {expected.dtype}.")
        setattr(module, key, tensor.contiguous())
    if bias is not None:
        module.bias = bias.detach().to(dtype=dtype, device=b.device).reshape(out_features).clone()
    return module


def flops_per_token(format: str, out_features: int, in_features: int) -> int:
    """Multiply-adds × 2 of one token's forward (bias excluded): 2 r (in + out) for the factors, plus 2 · (kept
    entries) for a sparse part (in / 2 per row for 2:4, k for the bitmap). A dense layer costs 2 out in."""
    parsed = parse_lowrank(format)
    if parsed is None:
        raise ValueError(f"{format!r} is not a low-rank format name.")
    rank, kind, keep = parsed
    kept = {None: 0, "2:4": in_features // 2, "bitmap": keep}[kind]
    return 2 * rank * (in_features + out_features) + 2 * out_features * kept


# ----------------------------------------------------------------------------------------------- kernel
def _sparse_query(query: kernels.KernelQuery) -> kernels.KernelQuery:
    return replace(query, format="2:4")


@kernels.register_kernel
class LowRankKernel(kernels.Kernel):
    """y = (x Aᵀ) Bᵀ (+ the sparse part's product) for the low-rank formats; see the module docstring.

    Layout: the factors in the activation dtype (the stored tensors themselves when it is the model dtype), and
    for a 2:4 part the sub-kernel the registry picks for the "2:4" buffers with its own layout, for a bitmap
    part its dense decode. Not taken when the module asks for a dense cache (``cache_dense=True``).
    """

    name = "lowrank"

    def supports(self, query, options):
        return (lowrank_format_of(query.format) is not None and query.dtype.is_floating_point
                and query.cache_dense is not True and query.device.type != "meta")

    def _sub_kernel(self, query):
        return kernels.select_kernel(_sparse_query(query))  # the automatic choice for the "2:4" part

    def layout_key(self, query):
        kind = parse_lowrank(query.format)[1]
        sub = self._sub_kernel(query).name if kind == "2:4" else None
        return (query.device, query.dtype, sub)

    def prepare(self, buffers, query):
        kind = parse_lowrank(query.format)[1]
        a = buffers["lowrank_a"].to(query.dtype).contiguous()
        b = buffers["lowrank_b"].to(query.dtype).contiguous()
        sparse = None
        if kind == "2:4":
            sub_query = _sparse_query(query)
            sub = self._sub_kernel(query)
            sub_buffers = {"values": buffers["values"], "meta": buffers["meta"]}
            sparse = (sub, kernels.get_layout({}, sub_buffers, sub, sub_query))
        elif kind == "bitmap":
            sparse = (None, unpack_rows(buffers["bitmap"], buffers["values"]).to(query.dtype).contiguous())
        return a, b, sparse

    def run(self, layout, x):
        a, b, sparse = layout
        y = (x @ a.T) @ b.T
        if sparse is None:
            return y
        sub, sub_layout = sparse
        part = torch.nn.functional.linear(x, sub_layout) if sub is None else sub.run(sub_layout, x)
        return y.add_(part.to(y.dtype))


# before the dense cache (which "not quantized" formats would otherwise take) and the reference
kernels.AUTO_ORDER.insert(kernels.AUTO_ORDER.index("dense_cache"), LowRankKernel.name)


__all__ = ["LowRankKernel", "flops_per_token", "lowrank_format", "lowrank_format_of", "pack_bitmap", "pack_lowrank",
           "pack_rows", "parse_lowrank", "unpack_bitmap", "unpack_rows"]

"""Forward backends of ``AWPLinear``: a registry of kernels, each with a ``supports`` check and a lazily
built, per-device kernel layout that the module caches and never saves.

A kernel sees only the packed buffers and the query, never the module: ``prepare(buffers, query)``
builds its layout from the canonical buffers (``formats.py``), ``run(layout, x)`` computes x Wᵀ.

Kernels (``KERNELS``, tried in ``AUTO_ORDER`` by the "auto" backend):

- ``cuda_int4``: torch's tinygemm ``_weight_int4pack_mm`` (CUDA, sm80+), bf16 activations, few tokens.
- ``cuda_2of4``: ``torch.sparse`` semi-structured (cuSPARSELt or CUTLASS), fp16/bf16, many tokens.
- ``cpu_2of4``: this package's native CPU kernel (``native/``) for "2:4" and "2:4+int4": reads the
  stored values / codes and 2-bit positions directly (no repacked copy), few tokens.
- ``cpu_2of4_tiles``: the same buffers decoded natively into dense row tiles of a few hundred KB, each
  multiplied with ``at::mm``; many tokens (prefill). No whole dense matrix is kept.
- ``cpu_int4``: ``_weight_int4pack_mm_for_cpu``, activations cast to bf16 and back, few tokens.
- ``dense_cache``: the weight decompressed once per (device, dtype) and kept: only when asked
  (``cache_dense=True``), or for "2:4" on CPU where the native kernels are unavailable.
- ``reference``: the EMULATED path, dequantize then ``F.linear`` at every call. Always correct, used
  wherever nothing else applies, and the ground truth the other kernels are tested against.

Where a kernel's arithmetic differs from the reference:

- ``cpu_2of4`` uses exactly the reference's weights ((c - z) * scale rounded once to the model dtype),
  multiplies in float32 and sums in float32 in its own order (16 partial sums per chunk of 32 inputs,
  4 chunks interleaved, then a tree), then rounds once to the model dtype. ``cpu_2of4_tiles`` uses the
  reference's weights and torch's matmul: it matches the reference up to that matmul's blocking.
- INT4 kernels dequantize as (c - 8) * scale + zero with bf16 scale and zero. A symmetric grid has
  zero = 0, so a zero code gives exactly 0. An asymmetric grid's integer zero point z becomes the float
  zero (8 - z) * scale rounded to bf16, so a code equal to z (a pruned weight, or an exact-zero weight)
  dequantizes to a tiny non-zero value, |error| <= 2**-9 * |(8 - z) * scale|, instead of 0.
- Activations go to bf16 for the torch INT4 kernels whatever the model dtype; fp32 models lose
  precision there (fp32/fp16 activations would take a scalar CPU loop ~100x slower than dense).

Choose a backend with ``use_backend("reference")`` (a context manager), ``set_backend(name)`` (global
default) or ``module.backend = name`` (one module); tune the dispatch with ``set_kernel_options``.
``OPTIMUM_AWP_CPU_ISA`` (``auto``, ``avx512``, ``avx2``, ``none``) picks or disables the native code path.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from . import native
from .formats import get_format
from .packing import INT4_SYMMETRIC_ZERO

logger = logging.getLogger(__name__)

CPU_INT4_GROUP_SIZES = (32, 64, 128, 256)
CUDA_INT4_GROUP_SIZES = (32, 64, 128, 256)
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_NATIVE_KINDS = {"2:4": 0, "2:4+int4": 1}  # format -> the native kernels' "kind"


# ----------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class KernelOptions:
    """Dispatch thresholds and caching.

    Attributes:
        cpu_2of4_max_tokens: the native 2:4 kernel (``cpu_2of4``) runs up to this many tokens (rows of
            the input), the tiled decode + matmul (``cpu_2of4_tiles``) above. Measured with
            benchmarks/kernels.py on the 2-core AVX-512 (Zen 4) test machine, docs/results/kernels.md:
            SEE_SWEEP
        cpu_2of4_max_tokens_cached: the same limit when the module keeps a dense cache (then
            ``dense_cache`` runs above it).
        cpu_2of4_tile_bytes: size of one dense row tile of ``cpu_2of4_tiles`` (bytes in the model dtype).
        cpu_int4_max_tokens: the CPU INT4 kernel runs up to this many tokens, a per-call dequantize +
            dense matmul above. Measured with benchmarks/kernels.py on the 2-core AVX-512 test machine
            (docs/results/kernels.md): the kernel beats dequantize-per-call up to 64-128 tokens on
            Gemma-3-270M's shapes.
        cpu_int4_max_tokens_cached: the same limit when the module keeps a dense cache: a bf16 dense
            matmul beats the kernel from about 8-16 tokens there.
        cuda_int4_max_tokens: same for the CUDA tinygemm kernel. Measured on an H100 with
            benchmarks/kernels_cuda.py (docs/results/kernels_cuda.md): tinygemm beats dequantize-per-call
            up to about 128 tokens on 4096- and 11008-wide layers (2.2-2.4x dense bf16 at one token),
            and loses from 256.
        cuda_2of4_min_tokens: the CUDA semi-structured kernel runs automatically from this many tokens;
            None (the default): never automatically, only when forced with ``use_backend("cuda_2of4")``
            and a threshold set here. On the H100 with torch 2.11 it lost to dense fp16 at every size
            measured (0.01-0.8x, 1 to 8192 tokens): torch's cuSPARSELt binding spends about 0.5 ms of CPU
            time per call and CUTLASS's 2:4 kernels are sm8x-only.
        cache_dense: keep a decompressed dense weight per device and dtype. None (default): only for
            "2:4" where no native kernel can run it (CUDA, or a CPU without the extension); a loaded
            2:4 model on CPU then takes its stored size in memory.
    """

    cpu_2of4_max_tokens: int = 16
    cpu_2of4_max_tokens_cached: int = 4
    cpu_2of4_tile_bytes: int = 1 << 20
    cpu_int4_max_tokens: int = 64
    cpu_int4_max_tokens_cached: int = 8
    cuda_int4_max_tokens: int = 128
    cuda_2of4_min_tokens: int | None = None
    cache_dense: bool | None = None


_OPTIONS = [KernelOptions(), 0]  # the options and a version counter that invalidates dispatch caches


def get_kernel_options() -> KernelOptions:
    return _OPTIONS[0]


def options_version() -> int:
    """A counter that changes whenever the global options change (modules key their dispatch caches on it)."""
    return _OPTIONS[1]


def set_kernel_options(**changes: Any) -> KernelOptions:
    """Change global kernel options (see ``KernelOptions``); returns the previous options."""
    known = {f.name for f in fields(KernelOptions)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"Unknown kernel option(s) {unknown}; known options: {sorted(known)}.")
    previous = _OPTIONS[0]
    _OPTIONS[0] = replace(previous, **changes)
    _OPTIONS[1] += 1
    return previous


@contextlib.contextmanager
def kernel_options(**changes: Any) -> Iterator[KernelOptions]:
    """Temporarily change global kernel options."""
    previous = set_kernel_options(**changes)
    try:
        yield _OPTIONS[0]
    finally:
        _OPTIONS[0] = previous
        _OPTIONS[1] += 1


_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("optimum_awp_backend", default=None)


def set_backend(name: str | None) -> None:
    """Force a backend for every AWPLinear ("auto" or None restores per-module choice)."""
    if name is not None and name != "auto":
        get_kernel(name)
    _BACKEND.set(None if name == "auto" else name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force backend ``name`` (a KERNELS key, or "auto") for every AWPLinear inside the block."""
    if name != "auto":
        get_kernel(name)
    token = _BACKEND.set(None if name == "auto" else name)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def forced_backend() -> str | None:
    return _BACKEND.get()


# ----------------------------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class KernelQuery:
    """What a kernel must handle: one forward call of one compressed linear.

    Attributes:
        device: device of the input and buffers.
        dtype: activation dtype.
        format: storage format name.
        out_features, in_features: weight shape (out, in).
        group_size: INT4 group size along in (-1 per channel); ignored by unquantized formats.
        symmetric: INT4 grid without zero points.
        tokens: rows of the 2-D input (batch * sequence).
        cache_dense: the module's or the global dense-cache choice; None: the format's default.
        weight_dtype: the model dtype of the buffers (values or scales); None: unknown.
    """

    device: torch.device
    dtype: torch.dtype
    format: str
    out_features: int
    in_features: int
    group_size: int
    symmetric: bool
    tokens: int
    cache_dense: bool | None = None
    weight_dtype: torch.dtype | None = None


def kernel_group_size(in_features: int, group_size: int, allowed: tuple[int, ...]) -> int | None:
    """The group size a kernel runs with: ``group_size`` if allowed; for per-channel scales (-1) the
    largest allowed size dividing ``in_features`` (scales are repeated); None if none fits."""
    if group_size == -1:
        return next((g for g in sorted(allowed, reverse=True) if in_features % g == 0), None)
    return group_size if group_size in allowed and in_features % group_size == 0 else None


def _kernel_scales_and_zeros(buffers: dict[str, torch.Tensor], n_groups: int, dtype: torch.dtype) -> torch.Tensor:
    """tinygemm's qScaleAndZeros (n_groups, out, 2): weight = (c - 8) * scale + zero.

    Scales are repeated along in when the kernel's groups are narrower (per-channel storage); an
    asymmetric zero point z becomes zero = (8 - z) * scale, rounded to ``dtype``.
    """
    scales = buffers["scales"].to(torch.float32)
    repeat = n_groups // scales.shape[1]
    zeros = buffers.get("zeros")
    if zeros is None:
        zero = torch.zeros_like(scales)
    else:
        zero = (INT4_SYMMETRIC_ZERO - zeros.to(torch.float32)) * scales
    scales = scales.repeat_interleave(repeat, dim=1)
    zero = zero.repeat_interleave(repeat, dim=1)
    return torch.stack((scales.t(), zero.t()), dim=-1).to(dtype).contiguous()


def _codes(buffers: dict[str, torch.Tensor], query: KernelQuery) -> torch.Tensor:
    return get_format(query.format).unpack_codes(buffers)


def _dequantize(buffers: dict[str, torch.Tensor], query: KernelQuery, dtype: torch.dtype) -> torch.Tensor:
    return get_format(query.format).dequantize(buffers, dtype)


def native_default(query: KernelQuery) -> bool:
    """The native CPU 2:4 kernels can run ``query`` (format, dtype, group size, extension built)."""
    return (
        query.device.type == "cpu"
        and query.format in _NATIVE_KINDS
        and query.dtype in _FLOAT_DTYPES
        and query.weight_dtype == query.dtype
        and (query.format == "2:4" or query.group_size == -1 or query.group_size % 32 == 0)
        and native.enabled()
    )


def cache_dense_resolved(query: KernelQuery) -> bool:
    """The dense cache choice: the query's if given, else True only for "2:4" without a native kernel."""
    if query.cache_dense is not None:
        return query.cache_dense
    return not get_format(query.format).quantized and not native_default(query)


# ----------------------------------------------------------------------------------------------- kernels
class Kernel:
    """One forward backend. Subclasses set ``name`` and implement ``supports``/``prepare``/``run``.

    ``prepare`` and ``run`` see the packed buffers and the query only (never the module).
    Kernels sharing a ``layout_name`` share one cached layout.
    """

    name: str = ""
    layout_name: str = ""

    def supports(self, query: KernelQuery, options: KernelOptions) -> bool:
        raise NotImplementedError

    def layout_key(self, query: KernelQuery) -> Any:
        """What the layout depends on besides the buffers (default: device only); None: not cached,
        ``prepare`` runs at every call (it must be cheap then)."""
        return query.device

    def prepare(self, buffers: dict[str, torch.Tensor], query: KernelQuery) -> Any:
        """Build the kernel layout from the canonical buffers (on query.device)."""
        return None

    def run(self, layout: Any, x: torch.Tensor) -> torch.Tensor:
        """y = x Wᵀ (no bias) for a contiguous 2-D x (tokens, in) of the query's dtype."""
        raise NotImplementedError


KERNELS: dict[str, Kernel] = {}
AUTO_ORDER: list[str] = [
    "cuda_int4", "cuda_2of4", "cpu_2of4", "cpu_2of4_tiles", "cpu_int4", "dense_cache", "reference"
]


def register_kernel(cls: type[Kernel]) -> type[Kernel]:
    """Register an instance of ``cls`` under ``cls.name``; a name can be registered once."""
    if not cls.name or cls.name in KERNELS:
        raise ValueError(f"Kernel name {cls.name!r} is empty or already registered.")
    if not cls.layout_name:
        cls.layout_name = cls.name
    KERNELS[cls.name] = cls()
    return cls


def get_kernel(name: str) -> Kernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"Unknown backend {name!r}; known backends: ['auto', {', '.join(map(repr, KERNELS))}].") from None


@register_kernel
class ReferenceKernel(Kernel):
    """EMULATED path: dequantize to the activation dtype, then F.linear. Never caches."""

    name = "reference"

    def supports(self, query, options):
        return query.dtype.is_floating_point

    def layout_key(self, query):
        return None

    def prepare(self, buffers, query):
        return get_format(query.format), buffers

    def run(self, layout, x):
        fmt, buffers = layout
        return F.linear(x, fmt.dequantize(buffers, x.dtype))


@register_kernel
class DenseCacheKernel(Kernel):
    """The dense weight, decompressed once per (device, dtype) and kept until the buffers change."""

    name = "dense_cache"

    def supports(self, query, options):
        return cache_dense_resolved(query) and query.dtype.is_floating_point and query.device.type != "meta"

    def layout_key(self, query):
        return (query.device, query.dtype)

    def prepare(self, buffers, query):
        return _dequantize(buffers, query, query.dtype).contiguous()

    def run(self, layout, x):
        return F.linear(x, layout)


def _check_2of4_positions(meta: torch.Tensor) -> None:
    """ValueError unless every group's two positions are strictly ascending (what pack_2of4 writes and
    the native kernels assume: the kept values lie in input order)."""
    m = meta.to(torch.int16)
    ok = ((m & 3) < ((m >> 2) & 3)) & (((m >> 4) & 3) < ((m >> 6) & 3))
    if not bool(ok.all()):
        row, byte = (~ok).nonzero()[0].tolist()
        raise ValueError(f"2:4 meta row {row}, byte {byte}: positions are not strictly ascending (p0 < p1).")


@register_kernel
class Cpu2of4Kernel(Kernel):
    """Native CPU kernel for "2:4" and "2:4+int4" at few tokens (decode): see ``native/``.

    Layout: the canonical buffers themselves (values or qweight, meta, scales, zeros), checked once;
    nothing is copied, so a module holds its stored size. Runs on the AVX-512 path (F/BW/VL/DQ/VBMI2)
    or the AVX2 path, chosen per call (``OPTIMUM_AWP_CPU_ISA``). Needs activations in the model dtype and
    a group size that is a multiple of 32 (or one group per row).
    """

    name = "cpu_2of4"
    layout_name = "cpu_2of4"

    def max_tokens(self, query, options):
        return options.cpu_2of4_max_tokens_cached if query.cache_dense else options.cpu_2of4_max_tokens

    def supports(self, query, options):
        return query.tokens <= self.max_tokens(query, options) and native_default(query)

    def prepare(self, buffers, query):
        _check_2of4_positions(buffers["meta"])
        kind = _NATIVE_KINDS[query.format]
        weight = buffers["values"] if kind == 0 else buffers["qweight"]
        group = query.in_features if query.group_size == -1 else query.group_size
        return weight, buffers["meta"], buffers.get("scales"), buffers.get("zeros"), kind, group

    def run(self, layout, x):
        return native.load().sparse_linear(x, *layout, native.isa_code())


@register_kernel
class Cpu2of4TilesKernel(Cpu2of4Kernel):
    """Native decode of the "2:4" / "2:4+int4" buffers into dense row tiles (``cpu_2of4_tile_bytes``),
    each multiplied with ``at::mm``: many tokens (prefill), without keeping a dense weight."""

    name = "cpu_2of4_tiles"

    def supports(self, query, options):
        return query.cache_dense is not True and native_default(query)

    def run(self, layout, x):
        rows = max(16, get_kernel_options().cpu_2of4_tile_bytes // (x.shape[1] * x.element_size()))
        return native.load().sparse_linear_tiled(x, *layout, native.isa_code(), rows)


@register_kernel
class CpuInt4Kernel(Kernel):
    """torch's CPU INT4 kernel (``_weight_int4pack_mm_for_cpu``).

    Layout: the (out, in) codes reordered by ``_convert_weight_to_int4pack_for_cpu`` (uint8, out x in/2)
    and qScaleAndZeros bf16 (in/g, out, 2). Its vectorized path needs bf16 activations, scales and
    zeros, so activations are cast to bf16 and the result back. Needs out % 16 == 0 and g in 32..256.
    """

    name = "cpu_int4"

    def supports(self, query, options):
        return (
            query.device.type == "cpu"
            and get_format(query.format).quantized
            and query.dtype in _FLOAT_DTYPES
            and query.tokens
            <= (options.cpu_int4_max_tokens_cached if query.cache_dense else options.cpu_int4_max_tokens)
            and query.out_features % 16 == 0
            and kernel_group_size(query.in_features, query.group_size, CPU_INT4_GROUP_SIZES) is not None
            and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        )

    def prepare(self, buffers, query):
        codes = _codes(buffers, query).to(torch.int32)
        group = kernel_group_size(query.in_features, query.group_size, CPU_INT4_GROUP_SIZES)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
        sz = _kernel_scales_and_zeros(buffers, query.in_features // group, torch.bfloat16)
        return packed, group, sz

    def run(self, layout, x):
        packed, group, sz = layout
        if x.dtype == torch.bfloat16:
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed, group, sz).to(x.dtype)


_CUDA_CAPABILITY: dict[int, tuple[int, int]] = {}


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of a CUDA device (cached); only called with tensors already on CUDA."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CUDA_CAPABILITY:
        _CUDA_CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return _CUDA_CAPABILITY[index]


def _cuda_inner_k_tiles(in_features: int) -> int | None:
    return next((t for t in (8, 4, 2) if in_features % (16 * t) == 0), None)


@register_kernel
class CudaInt4Kernel(Kernel):
    """torch's tinygemm CUDA INT4 kernel (``_weight_int4pack_mm``), bf16, sm80+.

    Layout: codes as uint8 (out, in/2) with input 2k in the HIGH nibble and 2k+1 in the low nibble,
    reordered by ``_convert_weight_to_int4pack`` (int32 [out/8, in/(16 t), 32, t/2], t inner k-tiles),
    and qScaleAndZeros bf16 (in/g, out, 2). Needs out % 8 == 0, in % 32 == 0, g in 32..256.
    """

    name = "cuda_int4"

    def supports(self, query, options):
        return (
            query.device.type == "cuda"
            and get_format(query.format).quantized
            and query.dtype in _FLOAT_DTYPES
            and query.tokens <= options.cuda_int4_max_tokens
            and query.out_features % 8 == 0
            and _cuda_inner_k_tiles(query.in_features) is not None
            and kernel_group_size(query.in_features, query.group_size, CUDA_INT4_GROUP_SIZES) is not None
            and torch.cuda.is_available()
            and _cuda_capability(query.device) >= (8, 0)
        )

    def prepare(self, buffers, query):
        codes = _codes(buffers, query)
        high_low = ((codes[:, 0::2] << 4) | codes[:, 1::2]).contiguous()
        packed = torch.ops.aten._convert_weight_to_int4pack(high_low, _cuda_inner_k_tiles(query.in_features))
        group = kernel_group_size(query.in_features, query.group_size, CUDA_INT4_GROUP_SIZES)
        sz = _kernel_scales_and_zeros(buffers, query.in_features // group, torch.bfloat16)
        return packed, group, sz

    def run(self, layout, x):
        packed, group, sz = layout
        if x.dtype == torch.bfloat16:
            return torch.ops.aten._weight_int4pack_mm(x, packed, group, sz)
        return torch.ops.aten._weight_int4pack_mm(x.to(torch.bfloat16), packed, group, sz).to(x.dtype)


def _semi_structured_class():
    from torch.sparse import (
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
    )

    cusparselt = getattr(torch.backends, "cusparselt", None)
    if cusparselt is not None and cusparselt.is_available():
        return SparseSemiStructuredTensorCUSPARSELT
    return SparseSemiStructuredTensorCUTLASS


@register_kernel
class Cuda2of4Kernel(Kernel):
    """CUDA 2:4 sparse tensor cores via ``torch.sparse`` semi-structured tensors (cuSPARSELt if present,
    else CUTLASS), fp16/bf16, only from ``cuda_2of4_min_tokens`` tokens (off by default: it lost to
    dense everywhere on an H100, see KernelOptions).
    Also runs "2:4+int4", whose dequantized weight keeps the 2:4 pattern (pruned codes give exact 0)."""

    name = "cuda_2of4"

    def supports(self, query, options):
        if not (
            query.device.type == "cuda"
            and get_format(query.format).sparse
            and query.dtype in (torch.float16, torch.bfloat16)
            and options.cuda_2of4_min_tokens is not None
            and query.tokens >= options.cuda_2of4_min_tokens
            and torch.cuda.is_available()
            and _cuda_capability(query.device) >= (8, 0)
        ):
            return False
        constraints = _semi_structured_class()._DTYPE_SHAPE_CONSTRAINTS.get(query.dtype)
        return (
            constraints is not None
            and query.out_features % constraints.sparse_min_rows == 0
            and query.in_features % constraints.sparse_min_cols == 0
        )

    def layout_key(self, query):
        return (query.device, query.dtype)

    def prepare(self, buffers, query):
        dense = _dequantize(buffers, query, query.dtype).contiguous()
        return _semi_structured_class().from_dense(dense)

    def run(self, layout, x):
        return F.linear(x, layout)


# ----------------------------------------------------------------------------------------------- dispatch
def select_kernel(query: KernelQuery, backend: str | None = None, options: KernelOptions | None = None) -> Kernel:
    """The kernel for ``query``: ``backend`` if given (ValueError if it cannot run the query), else the
    first of AUTO_ORDER whose ``supports`` holds."""
    options = options or get_kernel_options()
    if backend is not None and backend != "auto":
        kernel = get_kernel(backend)
        if not kernel.supports(query, options):
            raise ValueError(f"Backend {backend!r} does not support {query}.")
        return kernel
    for name in AUTO_ORDER:
        kernel = KERNELS[name]
        if kernel.supports(query, options):
            return kernel
    raise ValueError(f"No backend supports {query}; known backends: {list(KERNELS)}.")


def get_layout(cache: dict, buffers: dict[str, torch.Tensor], kernel: Kernel, query: KernelQuery) -> Any:
    """The layout of ``kernel`` for ``buffers`` on query.device: built on first use and kept in ``cache``
    (the module's plain dict: never saved, cleared by ``.to()``/``_apply`` and when buffers change) under
    (kernel.layout_name, kernel.layout_key(query)); built at every call when the key is None."""
    key = kernel.layout_key(query)
    if key is None:
        return kernel.prepare(buffers, query)
    entry = cache.get((kernel.layout_name, key))
    if entry is None:
        start = time.perf_counter()
        entry = kernel.prepare(buffers, query)
        cache[(kernel.layout_name, key)] = entry
        logger.debug(
            "built %s layout for %s (%d x %d) on %s in %.1f ms",
            kernel.layout_name,
            query.format,
            query.out_features,
            query.in_features,
            query.device,
            1e3 * (time.perf_counter() - start),
        )
    return entry


__all__ = [
    "AUTO_ORDER",
    "cache_dense_resolved",
    "KERNELS",
    "Kernel",
    "KernelOptions",
    "KernelQuery",
    "forced_backend",
    "get_kernel",
    "get_kernel_options",
    "get_layout",
    "kernel_group_size",
    "kernel_options",
    "native_default",
    "options_version",
    "register_kernel",
    "select_kernel",
    "set_backend",
    "set_kernel_options",
    "use_backend",
]

"""Triton forward kernels for "2:4+int4" and "2:4" AWPLinear modules at few tokens (decode), an optional
dependency: ``pip install optimum-awp[gpu]`` (``triton>=3.0``). Without triton nothing changes: the
kernels are not registered.

Kernels (registered in ``kernels.KERNELS`` when triton is importable; triton itself is imported on the
first forward only, so ``import optimum_awp`` stays lean):

- ``triton_2of4_int4``: "2:4+int4", reading the stored qweight (packed 4-bit codes of the kept values),
  meta (2-bit positions), scales and zeros (asymmetric grids) as they are saved: the layout is the
  buffers themselves, checked once, never copied or saved.
- ``triton_2of4``: "2:4" with fp16/bf16 values, the same kernel reading values and meta.

Both take fp16/bf16 activations in the model dtype and accumulate in fp32 (``sparse24.py`` describes
the kernel). **Not in AUTO_ORDER**: automatic dispatch never picks them until a GPU measurement shows
where they win (docs/results/kernels_cuda.md, "Triton kernel: status"); force them with
``use_backend("triton_2of4_int4")``, ``set_backend(...)`` or ``module.backend = ...``.

Where they run (``supports``): a CUDA device of compute capability 8.0+ (bf16 tensor cores), or, when
Triton's interpreter is on (``TRITON_INTERPRET=1``, Triton's own switch, read when the kernel is
chosen), CPU tensors as well: that is how the test suite checks them without a GPU. Shapes: in_features
a multiple of 16, and a group size (INT4) that divides or is divided by the tile width (any power of two
from 16, or -1 per channel, with in_features a multiple of 16). Any out_features and token count.

Launch parameters come from ``choose_config`` (a heuristic, not yet measured); ``launch_config(...)``
overrides fields of it inside a block (the benchmark's config sweep and the tests use it).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch

from ..kernels import Kernel, KernelOptions, KernelQuery, _check_2of4_positions, _cuda_capability, register_kernel

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16)
BLOCK_K_CHOICES = (128, 64, 32, 16)
BLOCK_SIZES = (16, 32, 64, 128, 256)  # tl.dot needs tiles of at least 16 in every dimension
MIN_CAPABILITY = (8, 0)
MAX_SPLIT_K = 16
_CPU_PROGRAM_TARGET = 1  # the interpreter runs programs one by one: no split-K by default on CPU
_SM_COUNT: dict[int, int] = {}


# ----------------------------------------------------------------------------------------------- environment
def triton_importable() -> bool:
    """triton can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["triton"] is None (import blocked)
        return False


def interpreting() -> bool:
    """Triton's interpreter is on (``TRITON_INTERPRET``, as triton itself reads it now)."""
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"  # triton < 3.4 reads it this way


def device_supported(device: torch.device) -> bool:
    """A CUDA device of capability >= MIN_CAPABILITY; also the CPU under Triton's interpreter."""
    if device.type == "cuda":
        return torch.cuda.is_available() and _cuda_capability(device) >= MIN_CAPABILITY
    return device.type == "cpu" and interpreting()


def _sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


# ----------------------------------------------------------------------------------------------- launch configs
def tile_fits(block_k: int, in_features: int, group: int) -> bool:
    """An input tile of ``block_k`` divides in_features and lies in one INT4 group or covers whole groups
    (``group`` = in_features for one group per row, 0 for unquantized "2:4")."""
    return in_features % block_k == 0 and (group == 0 or group % block_k == 0 or block_k % group == 0)


def block_k_for(in_features: int, group: int) -> int | None:
    """The widest of BLOCK_K_CHOICES that ``tile_fits``; None if none does."""
    return next((k for k in BLOCK_K_CHOICES if tile_fits(k, in_features, group)), None)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class LaunchConfig:
    """One launch of the kernel.

    Attributes:
        block_t: tokens per program (BLOCK_SIZES; a single token also takes a 16-token tile, the rest masked).
        block_n: output rows per program (BLOCK_SIZES).
        block_k: inputs per loop step (16..128, dividing in_features and divisible by or dividing the group).
        split_k: programs sharing one output tile along the inputs (partial sums in fp32, added after).
        num_warps, num_stages: passed to triton (ignored by the interpreter).
    """

    block_t: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2

    def check(self, in_features: int, group: int) -> None:
        """ValueError naming the field, its value and what is allowed, for a weight (., in_features)."""
        for name in ("block_t", "block_n"):
            if getattr(self, name) not in BLOCK_SIZES:
                raise ValueError(f"{name}={getattr(self, name)} is not allowed; allowed: {list(BLOCK_SIZES)}.")
        allowed_k = [k for k in BLOCK_K_CHOICES if tile_fits(k, in_features, group)]
        if self.block_k not in allowed_k:
            raise ValueError(
                f"block_k={self.block_k} is not allowed for in_features={in_features}, group={group or 'none'}; "
                f"allowed: {allowed_k}."
            )
        if not 1 <= self.split_k <= in_features // self.block_k:
            raise ValueError(f"split_k={self.split_k} must lie in [1, {in_features // self.block_k}] (input tiles).")
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1:
            raise ValueError(
                f"num_warps={self.num_warps}, num_stages={self.num_stages}: num_warps must be one of "
                "[1, 2, 4, 8, 16] and num_stages >= 1."
            )


_OVERRIDE: contextvars.ContextVar[tuple[tuple[str, int], ...]] = contextvars.ContextVar(
    "optimum_awp_triton_config", default=()
)  # sorted (field, value) pairs


@contextlib.contextmanager
def launch_config(**changes: int) -> Iterator[None]:
    """Override fields of ``choose_config``'s LaunchConfig for every launch inside the block."""
    known = {f.name for f in fields(LaunchConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"Unknown launch config field(s) {unknown}; known fields: {sorted(known)}.")
    token = _OVERRIDE.set(tuple(sorted({**dict(_OVERRIDE.get()), **changes}.items())))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def choose_config(tokens: int, out_features: int, in_features: int, group: int, device: torch.device) -> LaunchConfig:
    """The launch for ``tokens`` x (out_features, in_features) (a heuristic, not yet measured): tiles of
    16 tokens x 32 rows up to 16 tokens, 32 or 64 tokens x 64 rows above, the widest input tile that fits;
    split-K until about 4 programs per SM (CUDA) so that a decode GEMV keeps enough loads in flight."""
    block_t = min(max(_next_power_of_two(tokens), 16), 64)
    block_n = 32 if block_t == 16 else 64
    block_k = block_k_for(in_features, group)
    programs = -(-out_features // block_n) * -(-tokens // block_t)
    target = 4 * _sm_count(device) if device.type == "cuda" else _CPU_PROGRAM_TARGET
    split_k = 1
    while split_k < MAX_SPLIT_K and programs * split_k < target and 2 * split_k <= in_features // block_k:
        split_k *= 2
    return LaunchConfig(block_t, block_n, block_k, split_k, num_warps=4, num_stages=3)


_RESOLVED: dict[tuple, LaunchConfig] = {}
_RESOLVED_LIMIT = 256


def resolved_config(tokens: int, out_features: int, in_features: int, group: int, device: torch.device) -> LaunchConfig:
    """``choose_config`` with the ``launch_config`` overrides applied, checked; cached (decode calls it per layer
    and token, so the Python work is done once per shape)."""
    overrides = _OVERRIDE.get()
    key = (tokens, out_features, in_features, group, device, overrides)
    config = _RESOLVED.get(key)
    if config is None:
        config = replace(choose_config(tokens, out_features, in_features, group, device), **dict(overrides))
        config.check(in_features, group)
        if len(_RESOLVED) >= _RESOLVED_LIMIT:
            _RESOLVED.clear()
        _RESOLVED[key] = config
    return config


# ----------------------------------------------------------------------------------------------- layout and launch
@dataclass(frozen=True)
class Sparse24Layout:
    """The stored buffers the kernel reads (views of the module's buffers: nothing copied).

    Attributes:
        weight: qweight int32 (out, in/16) ("2:4+int4") or values (out, in/2) fp16/bf16 ("2:4").
        meta: uint8 (out, in/8) 2-bit positions, checked ascending.
        scales: (out, in/g) in the model dtype, or None ("2:4").
        zeros: uint8 (out, in/g) (asymmetric grids), or None.
        group: INT4 group along in (in_features for one group per row; 0 for "2:4").
    """

    weight: torch.Tensor
    meta: torch.Tensor
    scales: torch.Tensor | None
    zeros: torch.Tensor | None
    out_features: int
    in_features: int
    group: int

    @property
    def quantized(self) -> bool:
        return self.scales is not None


def sparse24_linear(layout: Sparse24Layout, x: torch.Tensor, config: LaunchConfig | None = None) -> torch.Tensor:
    """y = x Wᵀ (no bias): x (tokens, in) contiguous fp16/bf16 -> y (tokens, out) in x's dtype.

    ``config`` defaults to ``choose_config`` with the ``launch_config`` overrides applied.
    """
    from . import sparse24

    tokens = x.shape[0]
    if tokens == 0:
        return x.new_empty((0, layout.out_features))
    if config is None:
        config = resolved_config(tokens, layout.out_features, layout.in_features, layout.group, x.device)
    else:
        config.check(layout.in_features, layout.group)
    interpret = interpreting()
    emulate_bf16 = interpret and x.dtype == torch.bfloat16
    k_tiles = layout.in_features // config.block_k
    k_per_split = -(-k_tiles // config.split_k) * config.block_k
    fp32_out = config.split_k > 1 or emulate_bf16  # partial sums, or rounded to bf16 here (by torch)
    out = torch.empty(
        (config.split_k, tokens, layout.out_features), dtype=torch.float32 if fp32_out else x.dtype, device=x.device
    )
    scales = layout.scales if layout.quantized else layout.weight  # placeholders are never read
    zeros = layout.zeros if layout.zeros is not None else scales
    grid = (-(-layout.out_features // config.block_n), -(-tokens // config.block_t), config.split_k)
    sparse24.jitted(interpret)[grid](
        x, layout.weight, layout.meta, scales, zeros, out,
        tokens, layout.out_features, layout.in_features, k_per_split,
        x.stride(0), layout.weight.stride(0), layout.meta.stride(0), scales.stride(0), out.stride(0),
        QUANTIZED=layout.quantized,
        ASYMMETRIC=layout.zeros is not None,
        GROUP=max(layout.group, 1),
        BLOCK_T=config.block_t,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        EMULATE_BF16=emulate_bf16,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return (out[0] if config.split_k == 1 else out.sum(0)).to(x.dtype)


# ----------------------------------------------------------------------------------------------- registry
def _group(query: KernelQuery) -> int:
    if query.format == "2:4":
        return 0
    return query.in_features if query.group_size == -1 else query.group_size


class _Triton2of4Base(Kernel):
    """Shared ``supports``/``prepare``/``run`` of the two Triton kernels; subclasses set ``format``."""

    format: str = ""

    def supports(self, query: KernelQuery, options: KernelOptions) -> bool:
        return (
            query.format == self.format
            and query.dtype in ACTIVATION_DTYPES
            and query.weight_dtype == query.dtype
            and query.in_features % 16 == 0
            and block_k_for(query.in_features, _group(query)) is not None
            and device_supported(query.device)
        )

    def prepare(self, buffers: dict[str, torch.Tensor], query: KernelQuery) -> Sparse24Layout:
        _check_2of4_positions(buffers["meta"])
        quantized = self.format == "2:4+int4"
        zeros = buffers.get("zeros")
        return Sparse24Layout(
            weight=(buffers["qweight"] if quantized else buffers["values"]).contiguous(),
            meta=buffers["meta"].contiguous(),
            scales=buffers["scales"].contiguous() if quantized else None,
            zeros=zeros.contiguous() if zeros is not None else None,
            out_features=query.out_features,
            in_features=query.in_features,
            group=_group(query),
        )

    def run(self, layout: Sparse24Layout, x: torch.Tensor) -> torch.Tensor:
        return sparse24_linear(layout, x)


class Triton2of4Int4Kernel(_Triton2of4Base):
    """Triton kernel for "2:4+int4": packed kept codes + 2-bit positions + group scales (and zeros)."""

    name = "triton_2of4_int4"
    format = "2:4+int4"


class Triton2of4Kernel(_Triton2of4Base):
    """Triton kernel for "2:4" with fp16/bf16 kept values + 2-bit positions."""

    name = "triton_2of4"
    format = "2:4"


TRITON_KERNEL_NAMES = (Triton2of4Int4Kernel.name, Triton2of4Kernel.name)

if triton_importable():
    register_kernel(Triton2of4Int4Kernel)
    register_kernel(Triton2of4Kernel)


__all__ = [
    "TRITON_KERNEL_NAMES",
    "LaunchConfig",
    "Sparse24Layout",
    "Triton2of4Int4Kernel",
    "Triton2of4Kernel",
    "choose_config",
    "device_supported",
    "interpreting",
    "launch_config",
    "resolved_config",
    "sparse24_linear",
    "triton_importable",
]

"""``AWPLinear``: a compressed linear layer that holds only plain tensors (buffers) and a format tag.

state_dict, safetensors and ``.to()`` work as for any module: the buffers are the canonical packed
layout of ``formats.py``. Kernel layouts (``kernels.py``) are built on the first forward per device,
kept in a plain dict, and never saved.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from . import kernels
from .formats import get_format
from .packing import INT4_SYMMETRIC_ZERO

logger = logging.getLogger(__name__)

_DISPATCH_CACHE_LIMIT = 64


class AWPLinear(nn.Module):
    """y = x Wᵀ + b with W stored compressed.

    Buffers (shapes for weight (out, in), group size g, see docs/formats.md):
        "int4":     qweight int32 (out, in/8), scales (out, in/g) dtype, zeros uint8 (out, in/g) if asymmetric
        "2:4":      values (out, in/2) dtype, meta uint8 (out, in/8)
        "2:4+int4": qweight int32 (out, in/16), meta uint8 (out, in/8), scales, zeros as "int4"
        bias (out,) dtype, or None.

    Attributes:
        backend: "auto" or a ``kernels.KERNELS`` name; a class default that one module can override.
        cache_dense: keep a decompressed weight per device (None: the global option, else the format's
            default, see KernelOptions).
    """

    backend: str = "auto"
    cache_dense: bool | None = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        format: str,
        group_size: int = 128,
        symmetric: bool = True,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        fmt = get_format(format)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype (the model dtype), got {dtype}.")
        self.in_features = in_features
        self.out_features = out_features
        self.format = fmt.name
        self.group_size = group_size if fmt.quantized else -1
        self.symmetric = bool(symmetric) if fmt.quantized else True
        self._packed_names = fmt.register_buffers(self, out_features, in_features, self.group_size, self.symmetric,
                                                  dtype, device)
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)
        self._kernel_cache: dict = {}
        self._dispatch: dict = {}
        self._stamp: tuple = ()

    # ------------------------------------------------------------------------------------------- build
    @classmethod
    def empty(
        cls,
        format: str,
        in_features: int,
        out_features: int,
        bias: bool,
        group_size: int = 128,
        symmetric: bool = True,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "meta",
    ) -> "AWPLinear":
        """A module with correctly shaped, uninitialized buffers (on "meta" by default), ready for
        ``load_state_dict`` (use ``assign=True`` from meta) of a checkpoint saved from an AWPLinear."""
        return cls(
            in_features,
            out_features,
            bias,
            format=format,
            group_size=group_size,
            symmetric=symmetric,
            dtype=dtype,
            device=device,
        )

    @classmethod
    def from_parts(
        cls,
        format: str,
        weight: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        codes: torch.Tensor | None = None,
        scales: torch.Tensor | None = None,
        zeros: torch.Tensor | None = None,
        group_size: int = 128,
        symmetric: bool = True,
        bias: torch.Tensor | None = None,
        dtype: torch.dtype = torch.bfloat16,
    ) -> "AWPLinear":
        """Pack a compressed weight into ``format``.

        Args:
            format: a ``FORMATS`` name ("int4", "2:4", "2:4+int4").
            weight: the compressed dense weight Θ (out, in).
            mask: kept entries, bool (out, in) (2:4 formats; default Θ != 0).
            codes: uint8 (out, in) INT4 codes, pruned entries at the zero code (INT4 formats).
            scales: (out, in / group_size) group scales (INT4 formats).
            zeros: (out, in / group_size) integer zero points, asymmetric grids only.
            group_size, symmetric: the INT4 grid.
            bias: (out,) or None; stored in ``dtype``.
            dtype: the model dtype of scales, values and bias.
        Returns:
            An AWPLinear on weight's device whose ``dequantize()`` is Θ (in ``dtype``: exactly the grid
            values for INT4 formats, Θ rounded to ``dtype`` for "2:4").
        Raises:
            ValueError: when the parts do not match the format (shapes, missing codes/scales, zeros on a
                symmetric grid, not 2:4).
        """
        fmt = get_format(format)
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}.")
        out_features, in_features = weight.shape
        if fmt.quantized and not symmetric and zeros is None:
            raise ValueError("An asymmetric grid needs zeros, got None.")
        if fmt.quantized and symmetric and zeros is not None:
            if bool((zeros != INT4_SYMMETRIC_ZERO).any()):
                raise ValueError(f"A symmetric grid takes no zero points other than {INT4_SYMMETRIC_ZERO}; got zeros.")
            zeros = None
        module = cls(in_features, out_features, bias is not None, format=fmt.name, group_size=group_size,
                     symmetric=symmetric, dtype=dtype, device=weight.device)
        packed = fmt.pack(weight, mask, codes, scales, zeros, module.group_size, dtype)
        for key, tensor in packed.items():
            expected = getattr(module, key)
            if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
                raise ValueError(
                    f"packed {key} has {tuple(tensor.shape)} {tensor.dtype}; expected "
                    f"{tuple(expected.shape)} {expected.dtype}."
                )
            setattr(module, key, tensor.contiguous())
        if bias is not None:
            module.bias = bias.detach().to(dtype=dtype, device=weight.device).reshape(out_features).clone()
        return module

    # ------------------------------------------------------------------------------------------- views
    @property
    def dtype(self) -> torch.dtype:
        """The model dtype (of scales, values or low-rank factors: the first floating-point buffer)."""
        return next(t.dtype for t in self.packed_buffers().values() if t.is_floating_point())

    @property
    def device(self) -> torch.device:
        return next(iter(self.packed_buffers().values())).device

    def packed_buffers(self) -> dict[str, torch.Tensor]:
        """The format's buffers (no bias), by name."""
        return {name: self._buffers[name] for name in self._packed_names}

    def weight_bytes(self) -> int:
        """Bytes of the compressed weight buffers (bias excluded)."""
        return sum(t.numel() * t.element_size() for t in self.packed_buffers().values())

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense weight (out, in) in ``dtype`` (default the model dtype); pruned entries exactly 0."""
        return get_format(self.format).dequantize(self.packed_buffers(), dtype or self.dtype)

    def unpack_codes(self) -> torch.Tensor:
        """INT4 codes uint8 (out, in), pruned entries at the zero code; INT4 formats only."""
        fmt = get_format(self.format)
        if fmt.unpack_codes is None:
            raise ValueError(f"format {self.format!r} stores no INT4 codes.")
        return fmt.unpack_codes(self.packed_buffers())

    # ------------------------------------------------------------------------------------------- kernels
    def invalidate_kernel_cache(self) -> None:
        """Drop kernel layouts and dispatch choices (done automatically on .to() and buffer changes)."""
        self._kernel_cache = {}
        self._dispatch = {}

    def _apply(self, fn, recurse=True):
        self.invalidate_kernel_cache()
        return super()._apply(fn, recurse)

    def _check_stamp(self) -> None:
        tensors = [*self.packed_buffers().values(), self.bias]
        stamp = tuple((t.data_ptr(), t._version) for t in tensors if t is not None)
        if stamp != self._stamp:
            self.invalidate_kernel_cache()
            self._stamp = stamp

    def _resolve_cache_dense(self) -> bool | None:
        """The module's dense-cache choice, else the global option; None leaves it to the kernels
        (``kernels.cache_dense_resolved``: only "2:4" without a native kernel keeps a dense copy)."""
        if self.cache_dense is not None:
            return self.cache_dense
        return kernels.get_kernel_options().cache_dense

    def _select(self, x2: torch.Tensor) -> tuple[kernels.Kernel, kernels.KernelQuery, dict]:
        tokens = x2.shape[0]
        backend = kernels.forced_backend() or self.backend
        key = (x2.device, x2.dtype, tokens, backend, self.cache_dense, kernels.options_version())
        choice = self._dispatch.get(key)
        if choice is None:
            query = kernels.KernelQuery(
                device=x2.device,
                dtype=x2.dtype,
                format=self.format,
                out_features=self.out_features,
                in_features=self.in_features,
                group_size=self.group_size,
                symmetric=self.symmetric,
                tokens=tokens,
                cache_dense=self._resolve_cache_dense(),
                weight_dtype=self.dtype,
            )
            choice = (kernels.select_kernel(query, backend), query, self.packed_buffers())
            if len(self._dispatch) >= _DISPATCH_CACHE_LIMIT:
                self._dispatch.clear()
            self._dispatch[key] = choice
        return choice

    def select_kernel(self, x: torch.Tensor) -> kernels.Kernel:
        """The kernel a forward on ``x`` (..., in) runs (ValueError if a forced backend cannot)."""
        self._check_stamp()
        return self._select(x.reshape(-1, self.in_features))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features; expected in_features={self.in_features}.")
        self._check_stamp()
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        kernel, query, buffers = self._select(x2)
        y = kernel.run(kernels.get_layout(self._kernel_cache, buffers, kernel, query), x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        parts = [
            f"in_features={self.in_features}",
            f"out_features={self.out_features}",
            f"bias={self.bias is not None}",
            f"format={self.format}",
        ]
        if get_format(self.format).quantized:
            parts += [f"group_size={self.group_size}", f"symmetric={self.symmetric}"]
        parts.append(f"weight_bytes={self.weight_bytes()}")
        return ", ".join(parts)


__all__ = ["AWPLinear"]

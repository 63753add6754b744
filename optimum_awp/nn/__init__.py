"""Compressed modules: packed storage formats, ``AWPLinear`` and its forward kernels."""

from .formats import FORMATS, Format, format_for, get_format, register_format
from .kernels import (
    KERNELS,
    KernelOptions,
    get_kernel_options,
    kernel_options,
    register_kernel,
    set_backend,
    set_kernel_options,
    use_backend,
)
from .linear import AWPLinear
from . import lowrank  # noqa: E402,F401  (registers the low-rank format family and its kernel)
from . import triton_kernels  # registers the Triton kernels when triton is installed (imports it on first use)

__all__ = [
    "FORMATS",
    "KERNELS",
    "AWPLinear",
    "Format",
    "KernelOptions",
    "format_for",
    "get_format",
    "get_kernel_options",
    "kernel_options",
    "register_format",
    "register_kernel",
    "set_backend",
    "set_kernel_options",
    "use_backend",
]

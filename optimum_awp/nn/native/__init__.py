"""Loader of the native CPU kernels (C++ sources in this folder), built on first use and cached.

``load()`` compiles ``kernels.cpp`` (baseline x86-64), ``kernels_avx512.cpp`` and ``kernels_avx2.cpp``
(each selects its instruction set with ``#pragma GCC target``) with ``torch.utils.cpp_extension.load``
into torch's extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), under
a name that hashes the sources, the flags and the torch version, so an edited source or another torch
builds anew and an unchanged one loads in well under a second. No binary ships with the package.

When the build cannot run (no C++ compiler, no ninja, not x86-64 with AVX2 + FMA + F16C) or fails,
``load()`` returns None and ONE warning says why; the torch paths of ``kernels.py`` run instead.

The code path is picked at run time: the AVX-512 path (F, BW, VL, DQ, VBMI2) where the CPU has it,
else AVX2. ``OPTIMUM_AWP_CPU_ISA`` overrides: ``avx2`` forces the AVX2 path (tests cover both paths
on an AVX-512 machine), ``avx512`` asks for AVX-512 (AVX2 where absent), ``none`` turns the native
kernels off (read when a module first dispatches), ``auto`` or unset picks the best.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
import warnings
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCES = ("kernels.cpp", "kernels_avx512.cpp", "kernels_avx2.cpp")
HEADERS = ("awp_native.h",)
CFLAGS = ("-O3", "-fopenmp", "-fno-math-errno")
LDFLAGS = ("-fopenmp",)
ISA_ENV = "OPTIMUM_AWP_CPU_ISA"
ISAS = {"auto": 0, "avx2": 1, "avx512": 2}

_DIR = Path(__file__).resolve().parent
_LOCK = threading.Lock()
_STATE: dict = {"tried": False, "module": None, "error": None}


def _build_name() -> str:
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update((_DIR / name).read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    digest.update(torch.__version__.encode())
    return f"optimum_awp_cpu_{digest.hexdigest()[:12]}"


def missing_prerequisite() -> str | None:
    """Why the extension cannot even be built here (not x86-64, no ninja, no C++ compiler), or None."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the native kernels are x86-64 only (this machine is {platform.machine()})"
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        return "ninja is not installed (pip install ninja)"
    compiler = os.environ.get("CXX", "c++")
    import shutil

    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} not found on PATH)"
    return None


def _build():
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name=_build_name(),
        sources=[str(_DIR / s) for s in SOURCES],
        extra_cflags=list(CFLAGS),
        extra_ldflags=list(LDFLAGS),
        with_cuda=False,
        verbose=False,
    )


def load():
    """The compiled extension module, or None (after one warning) where it cannot be built or used."""
    if _STATE["tried"]:
        return _STATE["module"]
    with _LOCK:
        if _STATE["tried"]:
            return _STATE["module"]
        reason = missing_prerequisite()
        module = None
        if reason is None:
            try:
                module = _build()
            except Exception as error:  # a compiler error, a missing header: fall back, say why once
                first = str(error).strip().splitlines()
                reason = f"building the extension failed ({type(error).__name__}: {first[-1] if first else ''})"
        if module is not None and module.cpu_isa() < 1:
            reason, module = "this CPU lacks AVX2 + FMA + F16C", None
        if reason is not None:
            _STATE["error"] = reason
            warnings.warn(
                f"optimum_awp: native CPU kernels unavailable, using the torch paths instead: {reason}.",
                RuntimeWarning,
                stacklevel=3,
            )
        _STATE["module"] = module
        _STATE["tried"] = True
        return module


def requested_isa() -> str:
    """The value of OPTIMUM_AWP_CPU_ISA ("auto" when unset); ValueError on an unknown value."""
    value = os.environ.get(ISA_ENV, "auto").strip().lower() or "auto"
    if value not in ISAS and value != "none":
        raise ValueError(f"{ISA_ENV}={value!r}; expected one of {sorted(ISAS) + ['none']}.")
    return value


def enabled() -> bool:
    """The native kernels are on (not turned off by OPTIMUM_AWP_CPU_ISA=none) and built."""
    return requested_isa() != "none" and load() is not None


def isa_code() -> int:
    """The code path for the next call: 2 AVX-512, 1 AVX2 (the extension caps a request at what the CPU has)."""
    return ISAS.get(os.environ.get(ISA_ENV, "auto").strip().lower(), 0)


def isa_name() -> str | None:
    """The path a call runs now ("avx512", "avx2"), or None without the extension."""
    module = load()
    if module is None:
        return None
    best = module.cpu_isa()
    code = isa_code()
    used = best if code <= 0 or code > best else code
    return {1: "avx2", 2: "avx512"}[used]


def unavailable_reason() -> str | None:
    load()
    return _STATE["error"]


__all__ = [
    "ISA_ENV",
    "enabled",
    "isa_code",
    "isa_name",
    "load",
    "missing_prerequisite",
    "requested_isa",
    "unavailable_reason",
]

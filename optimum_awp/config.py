"""AWPConfig: the quantization config that transformers sees as ``quant_method="awp"``.

This module imports nothing from optimum_awp, so the config can be built and validated without torch
work. All checks live in ``__post_init__``; environment checks belong to the quantizer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

FORMAT_VERSION = 1
METHODS = ("awp", "wanda", "sparsegpt", "magnitude", "rtn", "awq", "gptq")
BITS = (None, 4)
GROUP_SIZES = (-1, 32, 64, 128, 256)
INITS = ("wanda", "magnitude", "sparsegpt")
STEPS = ("lambda_max", "diagonal")
SCOPES = ("row", "layer")
# Saved to config.json. The dataset and the tokenizer never are: they describe how a checkpoint was
# made, not how to load it, and a tokenizer is not JSON.
SAVED_FIELDS = (
    "quant_method", "format_version", "method", "sparsity", "bits", "group_size", "symmetric",
    "nsamples", "seqlen", "seed", "max_iterations", "tolerance", "damping", "init", "step", "momentum", "scope",
    "bf16_products", "modules_to_not_convert", "compressed_modules",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(condition: bool, name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"AWPConfig.{name} must be {allowed}, got {value!r}.")


@dataclass
class AWPConfig(QuantizationConfigMixin):
    """How to compress a causal LM with optimum-awp.

    Args:
        method: solver name, one of ``METHODS``.
        sparsity: fraction of weights pruned per row (float in [0, 1)), or "N:M" such as "2:4", or None.
        bits: 4 for INT4 weights, or None to keep floating-point values.
        group_size: inputs sharing one INT4 scale (32, 64, 128, 256), or -1 for one scale per row.
        symmetric: symmetric INT4 grid (keeps pruned weights exactly zero in every kernel).
        dataset: calibration data: a source name ("wikipedia-gensim", "wikitext2", "c4"), a text file
            path, a list of strings, or token ids (an integer tensor of shape (nsamples, seqlen) or a list
            of lists of ints). Not saved.
        tokenizer: tokenizer used to cut calibration samples. Not saved.
        nsamples: number of calibration sequences.
        seqlen: tokens per calibration sequence.
        seed: seed of the calibration sampling.
        max_iterations: AWP iteration cap.
        tolerance: AWP stops when the relative change of the layer objective falls below this.
        damping: fraction of mean(diag C) added to the diagonal of C when it is near singular.
        init: AWP's feasible starting point, one of ``INITS``.
        step: AWP's gradient step, one of ``STEPS``: "lambda_max" is the paper's η = 1/λ_max(C);
            "diagonal" (default) is Jacobi-preconditioned, η_j = 1/(λ_max(D^-1/2 C D^-1/2) C_jj) with
            D = diag(C), which converges in tens of iterations where the paper's step needs ~1000 on real
            layers (cond(C) ~ 1e4-1e5; docs/results/awp_convergence.md).
        momentum: AWP with Nesterov momentum and adaptive restart (default True; the best iterate is
            kept). ``step="lambda_max", momentum=False`` is the paper's plain projected gradient.
        scope: unstructured sparsity per "row" (each row keeps the same count, as in the AWP paper and
            Wanda) or per "layer" (the layer keeps the same total, rows differ). AWP only; N:M ignores it.
        bf16_products: AWP computes its iteration products (W - Θ) C in bfloat16 (default False):
            2.1-3x faster products on CPUs with AVX512-BF16 and on GPUs; iterates, objective and the
            INT4 grid phase stay in float32 (docs/results/fidelity.md measures the effect).
        modules_to_not_convert: module names (or name suffixes) left dense; default ["lm_head"].
        compressed_modules: filled after compression: module name -> storage format. Saved, so a
            checkpoint can be rebuilt on the meta device without recompressing.
        format_version: version of the on-disk layout.
    """

    method: str = "awp"
    sparsity: float | str | None = None
    bits: int | None = None
    group_size: int = 128
    symmetric: bool = True
    dataset: Any = field(default="wikipedia-gensim", repr=False)
    tokenizer: Any = field(default=None, repr=False)
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    max_iterations: int = 100
    tolerance: float = 1e-4
    damping: float = 0.01
    init: str = "wanda"
    step: str = "diagonal"
    momentum: bool = True
    scope: str = "row"
    bf16_products: bool = False
    modules_to_not_convert: list[str] | None = None
    compressed_modules: dict[str, str] | None = None
    format_version: int = FORMAT_VERSION
    quant_method: str = field(default="awp")

    def __post_init__(self) -> None:
        _check(self.quant_method == "awp", "quant_method", self.quant_method, "'awp'")
        _check(self.method in METHODS, "method", self.method, f"one of {METHODS}")
        self._check_sparsity()
        _check(self.bits in BITS, "bits", self.bits, f"one of {BITS}")
        _check(self.group_size in GROUP_SIZES, "group_size", self.group_size, f"one of {GROUP_SIZES}")
        _check(isinstance(self.symmetric, bool), "symmetric", self.symmetric, "a bool")
        _check(self.sparsity not in (None, 0) or self.bits is not None, "sparsity", self.sparsity,
               "set (a float > 0 or 'N:M') when bits is None: nothing would be compressed")
        self._check_dataset()
        _check(_is_int(self.nsamples) and self.nsamples > 0, "nsamples", self.nsamples, "a positive int")
        _check(_is_int(self.seqlen) and self.seqlen > 1, "seqlen", self.seqlen, "an int > 1")
        _check(_is_int(self.seed), "seed", self.seed, "an int")
        _check(_is_int(self.max_iterations) and self.max_iterations >= 0, "max_iterations",
               self.max_iterations, "an int >= 0")
        _check(isinstance(self.tolerance, (int, float)) and self.tolerance >= 0, "tolerance",
               self.tolerance, "a float >= 0")
        _check(isinstance(self.damping, (int, float)) and self.damping >= 0, "damping",
               self.damping, "a float >= 0")
        _check(self.init in INITS, "init", self.init, f"one of {INITS}")
        _check(self.step in STEPS, "step", self.step, f"one of {STEPS}")
        _check(isinstance(self.momentum, bool), "momentum", self.momentum, "a bool")
        _check(self.scope in SCOPES, "scope", self.scope, f"one of {SCOPES}")
        _check(isinstance(self.bf16_products, bool), "bf16_products", self.bf16_products, "a bool")
        _check(self.scope == "row" or self.method == "awp", "scope", self.scope,
               f"'row' for method {self.method!r} (only awp takes scope='layer')")
        if self.modules_to_not_convert is None:
            self.modules_to_not_convert = ["lm_head"]
        _check(isinstance(self.modules_to_not_convert, (list, tuple))
               and all(isinstance(m, str) for m in self.modules_to_not_convert),
               "modules_to_not_convert", self.modules_to_not_convert, "a list of module names")
        self.modules_to_not_convert = list(self.modules_to_not_convert)
        _check(self.compressed_modules is None or (
            isinstance(self.compressed_modules, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.compressed_modules.items())),
            "compressed_modules", self.compressed_modules, "None or a dict {module name: format name}")
        _check(self.format_version == FORMAT_VERSION, "format_version", self.format_version,
               f"{FORMAT_VERSION} (this optimum-awp reads format version {FORMAT_VERSION} only)")

    def _check_dataset(self) -> None:
        value = self.dataset
        if value is None:
            return
        if isinstance(value, str):
            _check(bool(value.strip()), "dataset", value, "a non-empty source name or path")
            return
        if hasattr(value, "dim") and hasattr(value, "is_floating_point"):  # a tensor of token ids
            ok = value.dim() == 2 and not value.is_floating_point() and value.numel() > 0
            _check(ok, "dataset", f"tensor{tuple(value.shape)} {value.dtype}",
                   "an integer tensor of token ids with shape (nsamples, seqlen)")
            return
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and (
            all(isinstance(v, str) for v in value)
            or all(isinstance(v, (list, tuple)) and v and all(_is_int(t) for t in v) for v in value))
        _check(ok, "dataset", value if not isinstance(value, (list, tuple)) else f"{type(value).__name__} of "
               f"{len(value)} items", "a source name, a path, a non-empty list of strings, or token ids "
               "(an integer tensor (nsamples, seqlen) or a list of lists of ints)")

    def _check_sparsity(self) -> None:
        value = self.sparsity
        if value is None:
            return
        if isinstance(value, str):
            parts = value.split(":")
            ok = len(parts) == 2 and all(p.isdigit() for p in parts) and 0 < int(parts[0]) < int(parts[1])
            _check(ok, "sparsity", value, "an 'N:M' string with 0 < N < M (e.g. '2:4') or a float in [0, 1)")
            return
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1,
               "sparsity", value, "a float in [0, 1) or an 'N:M' string such as '2:4'")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs):
        """Rebuild a config from ``config.json``'s ``quantization_config``; unknown keys are refused.

        A checkpoint written by a newer optimum-awp (another ``format_version`` or fields this version does
        not know) fails here with a message naming them, instead of loading into a wrong model.
        """
        unknown = sorted(set(config_dict) - set(SAVED_FIELDS) - {"dataset", "tokenizer"})
        if unknown:
            raise ValueError(
                f"AWPConfig got unknown fields {unknown}; known fields: {list(SAVED_FIELDS)}. The checkpoint was "
                "probably written by another optimum-awp version: upgrade optimum-awp to read it."
            )
        return super().from_dict(dict(config_dict), return_unused_kwargs=return_unused_kwargs, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe allowlist written to config.json (no dataset, no tokenizer)."""
        return {name: copy.deepcopy(getattr(self, name)) for name in SAVED_FIELDS}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __iter__(self):
        yield from self.to_dict().items()

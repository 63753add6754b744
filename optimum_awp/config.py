"""AWPConfig: the quantization config that transformers sees as ``quant_method="awp"``.

The method options are not listed here: each solver declares its own once (``solvers/options.py``), and
``AWPConfig(method="awp", step="diagonal")`` takes, validates and saves exactly the options of the chosen
method, with the solver's defaults for the rest. An option the method does not take is an error.

Every way of building or changing a config is validated: the constructor, ``from_dict`` (transformers'
loading path) and attribute assignment (transformers' ``from_dict(..., **kwargs)`` and ``update`` set
attributes after construction). Environment checks belong to the quantizer.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from .data import dataset_kind
from .solvers import SOLVERS, get_solver
from .solvers.options import OptionSpec

FORMAT_VERSION = 1
QUANT_METHOD = "awp"
BITS = (None, 4)
GROUP_SIZES = (-1, 32, 64, 128, 256)
DEFAULT_DATASET = "wikipedia-gensim"
# Saved to config.json besides the method's options. The dataset and the tokenizer never are: they describe
# how a checkpoint was made, not how to load it, and a tokenizer is not JSON.
SAVED_FIELDS = ("quant_method", "format_version", "method", "sparsity", "bits", "group_size", "symmetric",
                "embedding_bits", "dense_targets", "nsamples", "seqlen", "seed", "modules_to_not_convert",
                "compressed_modules")
_FIELDS = SAVED_FIELDS + ("dataset", "tokenizer")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(condition: bool, name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"AWPConfig.{name} must be {allowed}, got {value!r}.")


def method_options(method: str) -> tuple[OptionSpec, ...]:
    """The options ``method`` declares (ValueError listing the registered methods for an unknown one)."""
    return get_solver(method).option_specs()


def all_option_names() -> set[str]:
    """Every option name some registered method declares."""
    return {spec.name for solver in SOLVERS.values() for spec in solver.option_specs()}


class AWPConfig(QuantizationConfigMixin):
    """How to compress a causal LM with optimum-awp.

    Args:
        method: a registered solver ("awp", "wanda", "sparsegpt", ...; ``optimum_awp.solvers.SOLVERS``).
        sparsity: fraction of weights pruned per row (float in [0, 1)), or "N:M" such as "2:4", or None.
        bits: 4 for INT4 weights, or None to keep floating-point values.
        group_size: inputs sharing one INT4 scale (32, 64, 128, 256), or -1 for one scale per row.
        symmetric: symmetric INT4 grid (keeps pruned weights exactly zero in every kernel).
        embedding_bits: 4 to store the token embedding and the output head in INT4 too (``group_size``, an
            asymmetric grid, GPTQ for the head's inputs; a tied head shares the embedding's packed tensor), or
            None (default) to keep them in the model dtype (``optimum_awp.embeddings``). They are outside the
            blocks, so ``method`` and ``sparsity`` do not apply.
        dense_targets: fit every linear to the dense model's outputs, ‖W X̃ − Θ X‖² with X̃ the dense model's
            inputs to the layer and X the compressed model's, instead of its own outputs on the compressed
            inputs, ‖(W − Θ) X‖² (False, the default of every published method). Carries the dense model's
            hidden states through the walk beside the compressed ones: one more block forward per block and
            one more set of hidden states (``optimum_awp.solvers.targets``). Applies to every method.
        dataset: calibration data: a source name ("wikipedia-gensim", "wikitext2", "c4"), a text file
            path, a list of strings, or token ids (an integer tensor of shape (nsamples, seqlen) or a list
            of lists of ints, which must then match nsamples and seqlen). Not saved.
        tokenizer: tokenizer used to cut calibration samples. Not saved.
        nsamples: number of calibration sequences.
        seqlen: tokens per calibration sequence.
        seed: seed of the calibration sampling.
        modules_to_not_convert: module names (or name suffixes) left dense; default ["lm_head"].
        compressed_modules: filled after compression: module name -> storage format. Saved, so a
            checkpoint can be rebuilt on the meta device without recompressing.
        format_version: version of the on-disk layout.
        **options: the method's own options (``optimum-awp compress --help`` lists them per method; e.g.
            awp: init, max_iterations, tolerance, damping, step, momentum, scope, bf16_products).

    Attributes:
        options: the method's options, every declared one, given or default: {name: value}.
    """

    def __init__(
        self,
        method: str = "awp",
        sparsity: float | str | None = None,
        bits: int | None = None,
        group_size: int = 128,
        symmetric: bool = True,
        embedding_bits: int | None = None,
        dense_targets: bool = False,
        dataset: Any = DEFAULT_DATASET,
        tokenizer: Any = None,
        nsamples: int = 128,
        seqlen: int = 2048,
        seed: int = 0,
        modules_to_not_convert: list[str] | None = None,
        compressed_modules: dict[str, str] | None = None,
        format_version: int = FORMAT_VERSION,
        quant_method: str = QUANT_METHOD,
        **options: Any,
    ) -> None:
        values = dict(method=method, sparsity=sparsity, bits=bits, group_size=group_size, symmetric=symmetric,
                      embedding_bits=embedding_bits, dense_targets=dense_targets, dataset=dataset, tokenizer=tokenizer,
                      nsamples=nsamples, seqlen=seqlen, seed=seed,
                      modules_to_not_convert=modules_to_not_convert, compressed_modules=compressed_modules,
                      format_version=format_version, quant_method=quant_method)
        self.__dict__.update(values, options={}, _given=dict(options))
        self.__dict__["modules_to_not_convert"] = (["lm_head"] if modules_to_not_convert is None
                                                   else modules_to_not_convert)
        self.validate()

    # ------------------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field and resolve ``options``; raise ValueError naming the first bad field."""
        _check(self.quant_method == QUANT_METHOD, "quant_method", self.quant_method, f"{QUANT_METHOD!r}")
        _check(isinstance(self.method, str) and self.method in SOLVERS, "method", self.method,
               f"one of {sorted(SOLVERS)}")
        self._check_sparsity()
        _check(self.bits in BITS and not isinstance(self.bits, bool), "bits", self.bits, f"one of {BITS}")
        _check(_is_int(self.group_size) and self.group_size in GROUP_SIZES, "group_size", self.group_size,
               f"an int, one of {GROUP_SIZES}")
        _check(isinstance(self.symmetric, bool), "symmetric", self.symmetric, "a bool")
        _check(self.embedding_bits in BITS and not isinstance(self.embedding_bits, bool), "embedding_bits",
               self.embedding_bits, f"one of {BITS}")
        _check(isinstance(self.dense_targets, bool), "dense_targets", self.dense_targets, "a bool")
        prunes = self.sparsity not in (None, 0)
        _check(prunes or self.bits is not None or "rank" in get_solver(self.method).kinds, "sparsity", self.sparsity,
               "set (a float > 0 or 'N:M') when bits is None: nothing would be compressed")  # "rank": lowrank
        get_solver(self.method).check_kind(prunes, self.bits is not None)
        self._check_dataset()
        _check(_is_int(self.nsamples) and self.nsamples > 0, "nsamples", self.nsamples, "a positive int")
        _check(_is_int(self.seqlen) and self.seqlen > 1, "seqlen", self.seqlen, "an int > 1")
        _check(_is_int(self.seed), "seed", self.seed, "an int")
        _check(isinstance(self.modules_to_not_convert, (list, tuple))
               and all(isinstance(m, str) for m in self.modules_to_not_convert),
               "modules_to_not_convert", self.modules_to_not_convert, "a list of module names")
        self.__dict__["modules_to_not_convert"] = list(self.modules_to_not_convert)
        _check(self.compressed_modules is None or (
            isinstance(self.compressed_modules, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.compressed_modules.items())),
            "compressed_modules", self.compressed_modules, "None or a dict {module name: format name}")
        _check(self.format_version == FORMAT_VERSION, "format_version", self.format_version,
               f"{FORMAT_VERSION} (this optimum-awp reads format version {FORMAT_VERSION} only)")
        self.__dict__["options"] = self._resolve_options()

    def _resolve_options(self) -> dict[str, Any]:
        specs = method_options(self.method)
        known = [spec.name for spec in specs]
        unknown = sorted(set(self._given) - set(known))
        if unknown:
            where = "is not an AWPConfig field nor an option of any method" if not set(unknown) & all_option_names() \
                else f"is not an option of method {self.method!r}"
            raise ValueError(f"AWPConfig: {unknown} {where}; the options of {self.method!r} are "
                             f"{known or 'none'}.")
        resolved = {}
        for spec in specs:
            value = self._given.get(spec.name, spec.default)
            spec.check(value, "AWPConfig")
            resolved[spec.name] = value
        return resolved

    def _check_dataset(self) -> None:
        value = self.dataset
        if value is None or dataset_kind(value) is not None:
            return
        shown = (f"tensor{tuple(value.shape)} {value.dtype}" if hasattr(value, "dim")
                 else f"{type(value).__name__} of {len(value)} items" if isinstance(value, (list, tuple)) else value)
        _check(False, "dataset", shown, "a source name, a path, a non-empty list of strings, or token ids "
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

    # ------------------------------------------------------------------------------------------ attributes
    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: the method's options read as attributes (config.step)
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        """Set a field or an option of the method, validated; the config is unchanged when it is refused."""
        if name.startswith("_") or name not in _FIELDS and name not in self.__dict__.get("options", {}):
            if name in all_option_names():
                raise ValueError(f"AWPConfig: {name!r} is not an option of method {self.method!r}; its options "
                                 f"are {list(self.options) or 'none'}.")
            object.__setattr__(self, name, value)  # transformers' own bookkeeping attributes
            return
        saved = copy.copy(self.__dict__)
        if name in _FIELDS:
            self.__dict__[name] = value
            if name == "method":  # options given for the old method that the new one does not take are dropped
                known = {spec.name for spec in method_options(value)} if value in SOLVERS else set()
                self.__dict__["_given"] = {k: v for k, v in self._given.items() if k in known}
        else:
            self.__dict__["_given"] = {**self._given, name: value}
        try:
            self.validate()
        except ValueError:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def replace(self, **changes: Any) -> "AWPConfig":
        """A new, validated config with ``changes`` (fields or options); this one is unchanged."""
        values = {name: self.__dict__[name] for name in _FIELDS}
        values["modules_to_not_convert"] = list(values["modules_to_not_convert"])
        if values["compressed_modules"] is not None:
            values["compressed_modules"] = dict(values["compressed_modules"])
        options = {k: v for k, v in {**self._given, **changes}.items() if k not in _FIELDS}
        values.update({k: v for k, v in changes.items() if k in _FIELDS})
        if "method" in changes:
            known = {spec.name for spec in method_options(changes["method"])}
            options = {k: v for k, v in options.items() if k in known or k in changes}
        return type(self)(**values, **options)

    # ------------------------------------------------------------------------------------------ (de)serialization
    def settings(self) -> dict[str, Any]:
        """What was (or will be) done, as saved and shown on the model card: the compression fields, then the
        method's options."""
        fields = ("method", "sparsity", "bits", "group_size", "symmetric", "embedding_bits", "dense_targets",
                  "nsamples", "seqlen", "seed")
        return {**{name: getattr(self, name) for name in fields}, **self.options}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs):
        """Rebuild a config from ``config.json``'s ``quantization_config``; unknown keys are refused.

        A checkpoint written by a newer optimum-awp (another ``format_version`` or fields this version does
        not know) fails here with a message naming them, instead of loading into a wrong model. Checkpoints
        of optimum-awp 0.1 recorded AWP's options for every method; on a compressed checkpoint (one with
        ``compressed_modules``) the options its method does not take are dropped, since loading does not use
        them.
        """
        config_dict = dict(config_dict)
        known = set(_FIELDS) | all_option_names()
        unknown = sorted(set(config_dict) - known)
        if unknown:
            raise ValueError(
                f"AWPConfig got unknown fields {unknown}; known fields: {sorted(known)}. The checkpoint was "
                "probably written by another optimum-awp version: upgrade optimum-awp to read it."
            )
        method = config_dict.get("method", "awp")
        if config_dict.get("compressed_modules") is not None and method in SOLVERS:
            own = {spec.name for spec in method_options(method)}
            config_dict = {k: v for k, v in config_dict.items() if k in _FIELDS or k in own}
        return super().from_dict(config_dict, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe allowlist written to config.json: the saved fields and the method's options."""
        out = {name: copy.deepcopy(self.__dict__[name]) for name in SAVED_FIELDS}
        out.update(copy.deepcopy(self.options))
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __iter__(self):
        yield from self.to_dict().items()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AWPConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable, like the dataclass it replaces


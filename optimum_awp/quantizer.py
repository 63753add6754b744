"""transformers integration: ``AWPQuantizer`` (quant_method "awp") and ``register()``.

Every ``HfQuantizer`` hook lives here and stays thin:

- quantize on load (``from_pretrained(dense, quantization_config=AWPConfig(...))``): the dense weights load as
  usual, then ``_process_model_after_weight_loading`` calibrates and compresses with
  :func:`optimum_awp.compress.compress` (transformers' GPTQ quantizer is the precedent);
- pre-compressed load (``config.json`` names quant_method "awp" and ``compressed_modules``): before the weights
  load, each listed ``nn.Linear`` is swapped for an empty ``AWPLinear`` on the meta device, so transformers'
  loader assigns the packed buffers directly: nothing is recompressed and no dense copy is built.

transformers has no plugin discovery for quantizers, so ``import optimum_awp`` (which calls :func:`register`)
must run before ``from_pretrained`` reads a config naming "awp".
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import torch
from torch import nn
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer

from .compress import compress
from .config import FORMAT_VERSION, AWPConfig
from .nn.formats import FORMATS
from .nn.linear import AWPLinear

logger = logging.getLogger(__name__)

QUANT_METHOD = "awp"


class CheckpointError(ValueError):
    """An optimum-awp checkpoint that this version cannot read (missing tensor, wrong shape or dtype)."""


class AWPQuantizer(HfQuantizer):
    """HfQuantizer for ``AWPConfig``: compress on load, or rebuild a compressed checkpoint on meta.

    Attributes:
        report: what :func:`~optimum_awp.compress.compress` returned when this quantizer compressed the
            model on load (None for a pre-compressed checkpoint).
        base_model: the name or path of the dense model compressed on load (for the model card).
    """

    requires_calibration = False
    quantization_config: AWPConfig

    def __init__(self, quantization_config: AWPConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        if not self.pre_quantized:
            # Never write into the caller's config: it may be reused for another model.
            self.quantization_config = dataclasses.replace(quantization_config, compressed_modules=None)
        self.report = None
        self.base_model: str | None = None

    # --- checks before anything is built -------------------------------------------------------------------
    def validate_environment(self, device_map=None, **kwargs) -> None:
        """Refuse, before any weight is read, what cannot work: see :func:`check_loadable`."""
        check_loadable(self.quantization_config, pre_quantized=self.pre_quantized, device_map=device_map)

    # --- before the weights load ---------------------------------------------------------------------------
    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if model.main_input_name != "input_ids":
            raise ValueError(f"optimum-awp compresses text models; {type(model).__name__} takes "
                             f"{model.main_input_name!r}, not 'input_ids'.")
        if self.pre_quantized:
            swap_empty_modules(model, self.quantization_config)
            if checkpoint_files:
                check_checkpoint(model, self.quantization_config.compressed_modules, checkpoint_files)
        return model

    # --- after the weights loaded --------------------------------------------------------------------------
    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.pre_quantized:
            check_loaded(model, self.quantization_config.compressed_modules)
            return model
        config = self.quantization_config
        self.base_model = model.name_or_path
        config.modules_to_not_convert = modules_left_dense(model, config)
        tokenizer = calibration_tokenizer(config, model.name_or_path)
        self.report = compress(model, config, config.dataset, tokenizer=tokenizer)
        model.config.quantization_config = config
        return model

    def _dequantize(self, model, dtype=None):
        return dequantize_modules(model, dtype)

    @property
    def is_trainable(self) -> bool:
        return False

    def is_serializable(self, safe_serialization=None) -> bool:
        return True


# --- the work the hooks hand over ---------------------------------------------------------------------------

def check_loadable(config: AWPConfig, *, pre_quantized: bool, device_map=None) -> None:
    """Raise ValueError naming the field when ``config`` cannot load or compress a model."""
    if pre_quantized:
        modules = config.compressed_modules
        if modules is None:
            raise CheckpointError(
                "This checkpoint's quantization_config names quant_method 'awp' but has no compressed_modules: "
                "it was saved before compression finished. Recompress the dense model with optimum-awp."
            )
        known = sorted(FORMATS)
        unknown = sorted({fmt for fmt in modules.values() if fmt not in known})
        if unknown:
            raise CheckpointError(
                f"AWPConfig.compressed_modules uses formats {unknown} that this optimum-awp cannot read; "
                f"known formats: {known}. Upgrade optimum-awp."
            )
        return
    if config.dataset is None:
        raise ValueError("AWPConfig.dataset must be set to compress on load (a source name, a path, a list of "
                         "strings or token ids), got None.")
    if isinstance(device_map, dict) and {"disk"} & {str(v) for v in device_map.values()}:
        raise ValueError(f"device_map={device_map!r} offloads to disk; optimum-awp compresses modules in memory. "
                         "Use a device_map without 'disk'.")


def modules_left_dense(model: nn.Module, config: AWPConfig) -> list[str]:
    """``config.modules_to_not_convert`` plus the model's fp32-pinned modules and a tied output embedding."""
    names = set(config.modules_to_not_convert or ())
    names.update(getattr(model, "_keep_in_fp32_modules", None) or ())
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        names.update(name for name, module in model.named_modules() if module is output)
    return sorted(names)


def calibration_tokenizer(config: AWPConfig, name_or_path: str):
    """The tokenizer that cuts ``config.dataset`` into samples; None when the dataset is token ids.

    ``config.tokenizer`` when it is a tokenizer; otherwise loaded with AutoTokenizer from the name it holds,
    or from the model being compressed (GPTQ's default).
    """
    tokenizer = config.tokenizer
    is_text = isinstance(config.dataset, str) or (
        isinstance(config.dataset, (list, tuple)) and all(isinstance(t, str) for t in config.dataset))
    if not is_text or (tokenizer is not None and not isinstance(tokenizer, str)):
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer or name_or_path)


def swap_empty_modules(model: nn.Module, config: AWPConfig) -> None:
    """Replace each module of ``config.compressed_modules`` by an empty ``AWPLinear`` on the meta device.

    The buffers take the shapes of the module they replace and the dtype of its weight (which
    ``from_pretrained`` already set from ``dtype=``); integer buffers keep their own dtype.
    """
    for name, fmt in config.compressed_modules.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"compressed_modules names {name!r}, which {type(model).__name__} does not "
                                  "have: the checkpoint does not belong to this architecture.") from None
        if not isinstance(old, nn.Linear):
            raise CheckpointError(f"compressed_modules names {name!r}, a {type(old).__name__}; only nn.Linear "
                                  "modules are compressed.")
        new = AWPLinear.empty(fmt, old.in_features, old.out_features, old.bias is not None, config.group_size,
                              config.symmetric, old.weight.dtype, device="meta")
        model.set_submodule(name, new)


def _checkpoint_headers(checkpoint_files: Iterable[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (shape, safetensors dtype) across ``checkpoint_files``, read from headers only."""
    from safetensors import safe_open

    headers = {}
    for path in checkpoint_files:
        if not str(path).endswith(".safetensors"):
            continue
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                headers[key] = (tuple(piece.get_shape()), piece.get_dtype())
    return headers


_SAFETENSORS_INT = {"I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32,
                    "I64": torch.int64, "BOOL": torch.bool}


def check_checkpoint(model: nn.Module, compressed_modules: dict[str, str], checkpoint_files: list[str]) -> None:
    """Raise CheckpointError unless every buffer of every compressed module is in the checkpoint with the
    shape its format promises (and, for integer buffers, the same integer dtype).

    Runs on the safetensors headers before any weight is read, so a bad checkpoint never half-loads.
    """
    headers = _checkpoint_headers(checkpoint_files)
    if not headers:
        return  # .bin checkpoints: check_loaded still runs after loading
    problems = []
    for name in compressed_modules:
        for buffer_name, buffer in model.get_submodule(name).state_dict().items():
            key = f"{name}.{buffer_name}"
            found = headers.get(key)
            if found is None:
                problems.append(f"{key}: missing")
            elif found[0] != tuple(buffer.shape):
                problems.append(f"{key}: shape {list(found[0])}, expected {list(buffer.shape)}")
            elif not buffer.is_floating_point() and _SAFETENSORS_INT.get(found[1]) != buffer.dtype:
                problems.append(f"{key}: dtype {found[1]}, expected {buffer.dtype}")
            elif buffer.is_floating_point() and found[1] in _SAFETENSORS_INT:
                problems.append(f"{key}: dtype {found[1]}, expected a floating-point tensor")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(f"This optimum-awp checkpoint does not match its quantization_config "
                              f"(format_version {FORMAT_VERSION}): {shown}.")


def check_loaded(model: nn.Module, compressed_modules: dict[str, str]) -> None:
    """Raise CheckpointError if any compressed module's buffer was not filled from the checkpoint.

    transformers only warns about missing keys and fills them with uninitialized memory; a compressed model
    with such a buffer would silently compute garbage.
    """
    missing = []
    for name in compressed_modules:
        module = model.get_submodule(name)
        if not isinstance(module, AWPLinear):
            missing.append(f"{name} (a {type(module).__name__}, not AWPLinear)")
            continue
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer.device.type == "meta" or not getattr(buffer, "_is_hf_initialized", False):
                missing.append(f"{name}.{buffer_name}")
    if missing:
        raise CheckpointError(f"These compressed tensors were not in the checkpoint: {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}. Refusing a half-loaded model.")


def dequantize_modules(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every ``AWPLinear`` by an ``nn.Linear`` holding its dequantized weight (for ``model.dequantize()``)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, AWPLinear):
            weight = module.dequantize()
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                               device=weight.device, dtype=dtype or weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            model.set_submodule(name, linear)
    return model


def mark_compressed(model, config: AWPConfig):
    """Make a model compressed in memory by :func:`~optimum_awp.compress.compress` look like one loaded with
    quant_method "awp": its config carries ``config`` (so ``save_pretrained`` writes a loadable checkpoint)
    and ``model.hf_quantizer`` is an AWPQuantizer (so ``is_quantized``, ``dequantize()`` and saving work)."""
    if config.compressed_modules is None:
        raise ValueError("AWPConfig.compressed_modules is None: compress the model before marking it compressed.")
    model.config.quantization_config = config
    model.hf_quantizer = AWPQuantizer(config, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD
    return model


def register() -> None:
    """Register quant_method "awp" (AWPConfig and AWPQuantizer) with transformers; safe to call many times."""
    registered_config = AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD)
    registered_quantizer = AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD)
    if registered_config is None:
        register_quantization_config(QUANT_METHOD)(AWPConfig)
    elif registered_config.__qualname__ != AWPConfig.__qualname__:
        raise ValueError(f"quant_method {QUANT_METHOD!r} is already registered to {registered_config!r}.")
    else:
        AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] = AWPConfig  # a reloaded module replaces its old class
    if registered_quantizer is None:
        register_quantizer(QUANT_METHOD)(AWPQuantizer)
    elif registered_quantizer.__qualname__ != AWPQuantizer.__qualname__:
        raise ValueError(f"quant_method {QUANT_METHOD!r} already has the quantizer {registered_quantizer!r}.")
    else:
        AUTO_QUANTIZER_MAPPING[QUANT_METHOD] = AWPQuantizer

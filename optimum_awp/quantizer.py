"""transformers integration: ``AWPQuantizer`` (quant_method "awp") and ``register()``.

Every ``HfQuantizer`` hook lives here and stays thin:

- quantize on load (``from_pretrained(dense, quantization_config=AWPConfig(...))``): the dense weights load as
  usual, then ``_process_model_after_weight_loading`` calibrates and compresses with
  :func:`optimum_awp.compress.compress` (transformers' GPTQ quantizer is the precedent);
- pre-compressed load (``config.json`` names quant_method "awp" and ``compressed_modules``): before the weights
  load, each listed ``nn.Linear`` is swapped for an empty ``AWPLinear`` on the meta device, so transformers'
  loader assigns the packed buffers directly: nothing is recompressed and no dense copy is built.

transformers has no plugin discovery for quantizers: ``import optimum_awp`` calls :func:`register`, and in a
process that never imports it, the startup hook installed with the package (``_optimum_awp_autoload``) registers
placeholders that import optimum_awp when transformers first reads a config naming "awp". The checks that refuse
a checkpoint which would load wrong live in :mod:`optimum_awp.checkpoint`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer

from .checkpoint import (
    MISSPELLINGS,
    CheckpointError,
    MisspelledQuantMethod,
    check_checkpoint,
    check_config,
    check_loaded,
    swap_empty_modules,
)
from .compress import compress
from .config import QUANT_METHOD, AWPConfig
from .embeddings import dequantize_embeddings
from .nn.linear import AWPLinear

logger = logging.getLogger(__name__)




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
            self.quantization_config = quantization_config.replace(compressed_modules=None)
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
        # compress() copies the config, attaches it and a pre-quantized AWPQuantizer to the model
        self.report = compress(model, self.quantization_config)
        self.base_model = model.name_or_path
        self.quantization_config = self.report.config
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
        check_config(config)
        return
    if config.dataset is None:
        raise ValueError("AWPConfig.dataset must be set to compress on load (a source name, a path, a list of "
                         "strings or token ids), got None.")
    if isinstance(device_map, dict) and {"disk"} & {str(v) for v in device_map.values()}:
        raise ValueError(f"device_map={device_map!r} offloads to disk, which compressing on load cannot do. Load the "
                         "dense model with this device_map and offload_folder (no quantization_config), then call "
                         "optimum_awp.compress(model, config): it onloads one block at a time.")


def dequantize_modules(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every ``AWPLinear`` by an ``nn.Linear`` holding its dequantized weight, and an INT4 embedding
    (with the head tied to it) by dense modules (for ``model.dequantize()``)."""
    dequantize_embeddings(model, dtype)
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


def register() -> None:
    """Register quant_method "awp" (AWPConfig and AWPQuantizer) with transformers; safe to call many times.

    Also registers :class:`~optimum_awp.checkpoint.MisspelledQuantMethod` under the spellings that name
    optimum-awp but that transformers would not match ("AWP", ...), so that such a checkpoint is refused instead
    of loading with random weights, and replaces the placeholders of the startup hook ``_optimum_awp_autoload``.
    """
    _register(AUTO_QUANTIZATION_CONFIG_MAPPING, register_quantization_config, QUANT_METHOD, AWPConfig)
    _register(AUTO_QUANTIZER_MAPPING, register_quantizer, QUANT_METHOD, AWPQuantizer)
    for name in MISSPELLINGS:
        _register(AUTO_QUANTIZATION_CONFIG_MAPPING, register_quantization_config, name, MisspelledQuantMethod)


def _register(mapping: dict, register_fn, name: str, cls: type) -> None:
    registered = mapping.get(name)
    if registered is None:
        register_fn(name)(cls)
    elif getattr(registered, "_optimum_awp_placeholder", False) or registered.__qualname__ == cls.__qualname__:
        mapping[name] = cls  # the startup hook's placeholder, or the class of a reloaded module
    else:
        raise ValueError(f"quant_method {name!r} is already registered to {registered!r}.")

"""Reading an optimum-awp checkpoint: build the empty compressed modules, and refuse what would load wrong.

transformers never refuses a checkpoint that does not fit the model: it warns about missing or unexpected
keys and fills what is missing with random (or uninitialized) values. For a compressed model that is a
model that runs and is silently wrong, so every check here raises :class:`CheckpointError` instead:

- :func:`check_config` (before the model is built): ``compressed_modules`` missing, or naming a format this
  version cannot read;
- :class:`MisspelledQuantMethod` (while transformers reads config.json): quant_method "AWP" or another
  spelling of ours that transformers, which matches names exactly, would skip;
- :func:`swap_empty_modules` (model on meta): a listed module the architecture does not have, or not a Linear;
- :func:`check_checkpoint` (safetensors headers, before any weight is read): a listed module's tensor missing
  or of the wrong shape or dtype, and packed tensors (qweight, values, ...) for a Linear the config does not
  list (``compressed_modules`` empty or incomplete);
- :func:`check_loaded` (after loading): any tensor of the model, compressed or dense (embedding, lm_head,
  norms), that the checkpoint did not fill.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from _optimum_awp_autoload import MISSPELLINGS  # the startup hook's list, so that there is one
from torch import nn
from transformers.utils.quantization_config import QuantizationConfigMixin

from .config import FORMAT_VERSION, AWPConfig
from .embeddings import swap_empty_embeddings
from .nn.formats import FORMAT_FAMILIES, FORMATS
from .nn.embedding import AWPEmbedding
from .nn.linear import AWPLinear

__all__ = ["MISSPELLINGS", "CheckpointError", "MisspelledQuantMethod", "check_checkpoint", "check_config",
           "check_loaded", "swap_empty_modules"]


class CheckpointError(ValueError):
    """An optimum-awp checkpoint that this version cannot load correctly (and refuses to load wrongly)."""


def _shown(problems: list[str], limit: int = 8) -> str:
    return "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")


class MisspelledQuantMethod(QuantizationConfigMixin):
    """Registered under the spellings of "awp" that transformers would not match ("AWP", "optimum-awp", ...).

    transformers skips an unknown quant_method with a warning and loads the packed checkpoint into plain
    ``nn.Linear`` layers with random weights; registered under those names, this class refuses instead.
    """

    @classmethod
    def from_dict(cls, config_dict, *args, **kwargs):
        raise CheckpointError(
            f"config.json's quantization_config names quant_method {config_dict.get('quant_method')!r}; "
            "optimum-awp checkpoints name 'awp' (lower case), and transformers matches the name exactly, so "
            "it would skip this one and load random weights. Set \"quant_method\": \"awp\" in config.json."
        )


def check_config(config: AWPConfig) -> None:
    """Raise CheckpointError when the quantization_config of a compressed checkpoint cannot be read."""
    modules = config.compressed_modules
    if modules is None:
        raise CheckpointError(
            "This checkpoint's quantization_config names quant_method 'awp' but has no compressed_modules: "
            "it was saved before compression finished. Recompress the dense model with optimum-awp."
        )
    known = sorted(FORMATS)
    unknown = sorted({fmt for fmt in modules.values() if fmt not in known and not _in_family(fmt)})
    if unknown:
        raise CheckpointError(
            f"AWPConfig.compressed_modules uses formats {unknown} that this optimum-awp cannot read; "
            f"known formats: {known} and the families {sorted(FORMAT_FAMILIES)} ('lowrank-r64', ...). "
            "Upgrade optimum-awp."
        )


def _in_family(name: str) -> bool:
    """Whether a parametrised format family (``nn/lowrank.py``: "lowrank-r64", ...) reads ``name``."""
    return any(parse(name) is not None for parse in FORMAT_FAMILIES.values())


def swap_empty_modules(model: nn.Module, config: AWPConfig) -> None:
    """Replace each module of ``config.compressed_modules`` by an empty ``AWPLinear`` on the meta device.

    The buffers take the shapes of the module they replace and the dtype of its weight (which
    ``from_pretrained`` already set from ``dtype=``); integer buffers keep their own dtype.
    """
    handled = swap_empty_embeddings(model, config.compressed_modules, config.group_size)
    for name, fmt in config.compressed_modules.items():
        if name in handled:
            continue
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"compressed_modules names {name!r}, which {type(model).__name__} does not "
                                  "have: the checkpoint does not belong to this architecture.") from None
        if isinstance(old, nn.Embedding):
            raise CheckpointError(f"compressed_modules names {name!r}, an nn.Embedding that is not the model's "
                                  "input embedding; only that one is compressed (embedding_bits).")
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


def _unlisted_packed(model: nn.Module, compressed_modules: dict[str, str],
                     headers: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, list[str]]:
    """Plain ``nn.Linear`` modules (not in ``compressed_modules``) for which the checkpoint holds tensors that
    such a module does not have (qweight, scales, values, meta, ...): module name -> those tensor names."""
    found: dict[str, list[str]] = {}
    for key in headers:
        module_name, _, tensor_name = key.rpartition(".")
        if module_name in compressed_modules:
            continue
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            continue
        if isinstance(module, (nn.Linear, nn.Embedding)) and tensor_name not in module.state_dict(keep_vars=True):
            found.setdefault(module_name, []).append(tensor_name)
    return found


def check_checkpoint(model: nn.Module, compressed_modules: dict[str, str], checkpoint_files: list[str]) -> None:
    """Raise CheckpointError unless every buffer of every compressed module is in the checkpoint with the
    shape its format promises (and, for integer buffers, the same integer dtype), and unless every module the
    checkpoint holds packed tensors for is listed in ``compressed_modules``.

    Runs on the safetensors headers before any weight is read, so a bad checkpoint never half-loads.
    """
    headers = _checkpoint_headers(checkpoint_files)
    if not headers:
        return  # .bin checkpoints: check_loaded still runs after loading
    unlisted = _unlisted_packed(model, compressed_modules, headers)
    if unlisted:
        names = sorted(unlisted)
        tensors = sorted({t for found in unlisted.values() for t in found})
        raise CheckpointError(
            f"The checkpoint holds compressed tensors ({', '.join(tensors)}) for {len(names)} module(s) that its "
            f"quantization_config.compressed_modules does not list, so they would load as nn.Linear with random "
            f"weights: {_shown(names, 4)}. compressed_modules must name every compressed module and its format "
            f"(it lists {len(compressed_modules)})."
        )
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
        raise CheckpointError(f"This optimum-awp checkpoint does not match its quantization_config "
                              f"(format_version {FORMAT_VERSION}): {_shown(problems)}.")


def _offloaded(module: nn.Module) -> bool:
    """Whether accelerate keeps this module's tensors elsewhere (its weights are meta tensors in the model)."""
    return bool(getattr(getattr(module, "_hf_hook", None), "offload", False))


def check_loaded(model: nn.Module, compressed_modules: dict[str, str]) -> None:
    """Raise CheckpointError if any tensor of the model was not filled from the checkpoint.

    transformers marks each tensor it loads (``_is_hf_initialized``), only warns about the missing ones and
    fills them with random or uninitialized values: a compressed buffer, an embedding, the lm_head or a norm
    missing from the checkpoint would silently compute garbage. Tied weights count as loaded through the
    tensor they are tied to, and the model's ``_keys_to_ignore_on_load_missing`` patterns are honoured.
    """
    import re

    wrong_type = [f"{name} (a {type(model.get_submodule(name)).__name__}, not AWPLinear)"
                  for name in compressed_modules
                  if not isinstance(model.get_submodule(name), (AWPLinear, AWPEmbedding))]
    if wrong_type:
        raise CheckpointError(f"These compressed modules were not rebuilt: {_shown(wrong_type)}.")
    ignore = [re.compile(pattern) for pattern in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    missing = []
    for module_name, module in model.named_modules():
        if _offloaded(module):
            continue
        tensors = list(module._parameters.items()) + [
            (name, buffer) for name, buffer in module._buffers.items()
            if name not in module._non_persistent_buffers_set]
        for name, tensor in tensors:
            if tensor is None:
                continue
            key = f"{module_name}.{name}" if module_name else name
            if tensor.device.type == "meta" or not getattr(tensor, "_is_hf_initialized", False):
                if not any(pattern.search(key) for pattern in ignore):
                    missing.append(key)
    if missing:
        compressed = [key for key in missing if key.rpartition(".")[0] in compressed_modules]
        dense = [key for key in missing if key not in compressed]
        parts = ([f"compressed: {_shown(compressed)}"] if compressed else []) + \
                ([f"dense: {_shown(dense)}"] if dense else [])
        raise CheckpointError(f"These tensors were not in the checkpoint ({'; '.join(parts)}). transformers "
                              "would fill them with random values; refusing a half-loaded model.")

"""Export an optimum-awp checkpoint to compressed-tensors' W4A16 ``pack-quantized`` layout.

The export loads in plain transformers with the ``compressed-tensors`` package (and in vLLM) without
optimum-awp. Per compressed linear ``<name>``:

- ``<name>.weight_packed``  int32 (out, in // 8): signed INT4 values q + 8, nibble i at bits 4i
  (``compressed_tensors.compressors.pack_quantized.helpers.pack_to_int32``, the same bits as optimum-awp's
  ``qweight`` for "int4");
- ``<name>.weight_scale``   (out, in // group_size) in the model dtype (one column for per-row scales);
- ``<name>.weight_shape``   int64 [out, in].

Only symmetric grids are exported (see ``_check_exportable`` for why asymmetric ones are refused).

2:4 + INT4 weights are written as their dense INT4 codes, pruned entries at the code of an exact 0, so the
export computes the same weights (it keeps the zeros, not the 2:4 speed-up). Weights without INT4 codes
("2:4" alone, unstructured sparsity alone) cannot be exported: compressed-tensors 0.20 has no sparse
compressor any more (its sparse-24-bitmask and marlin-24 formats are legacy, config only).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_directory
from .config import AWPConfig
from .nn.linear import AWPLinear

logger = logging.getLogger(__name__)

__all__ = ["compressed_tensors_config", "export_compressed_tensors"]

# Files of a checkpoint folder that the export copies unchanged (tokenizer, generation settings). Not the
# model card: it tells readers to install optimum-awp, which the export does not need.
COPIED_SUFFIXES = (".model", ".jinja")
COPIED_NAMES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt")


def _check_exportable(config: AWPConfig) -> None:
    """Raise ValueError, naming the setting, when ``config`` has no pack-quantized equivalent."""
    from .nn.lowrank import lowrank_format_of

    lowrank = sorted({f for f in (config.compressed_modules or {}).values() if lowrank_format_of(f) is not None})
    if lowrank or config.method == "lowrank":
        raise ValueError(
            f"Cannot export method={config.method!r} (low-rank factors, formats {lowrank or ['lowrank-r<rank>']}) to "
            "compressed-tensors: it has no low-rank layout (its formats are dense, pack-quantized INT4 and legacy "
            "2:4 configs), and writing the product B A as a dense weight would not be a compressed checkpoint. "
            "Load the checkpoint with optimum-awp, or dequantize() it to a dense model first."
        )
    if config.bits != 4:
        raise ValueError(
            f"Cannot export bits={config.bits!r}, sparsity={config.sparsity!r} to compressed-tensors: "
            "its only INT4 layout is pack-quantized W4A16, and compressed-tensors 0.20 has no sparse "
            "compressor any more (sparse-24-bitmask / marlin-24 are legacy, config only), so a 2:4 or "
            "unstructured weight without bits=4 has no exported form. Compress with bits=4, or keep "
            "loading the checkpoint with optimum-awp."
        )
    if not config.symmetric:
        raise ValueError(
            "Cannot export symmetric=False to compressed-tensors: transformers 5 builds unpacked "
            "weight_zero_point parameters (out, n_groups) before loading, while pack-quantized checkpoints store "
            "them packed 8 per int32 along the output dimension, so an asymmetric export would not reload. "
            "Compress with symmetric=True (the default) to export."
        )
    if config.embedding_bits is not None:
        raise ValueError(
            f"Cannot export embedding_bits={config.embedding_bits} to compressed-tensors: its pack-quantized scheme "
            "here targets Linear layers, so the INT4 embedding (and the head tied to it) would have to be written "
            "dense. Compress without embedding_bits to export, or keep loading the checkpoint with optimum-awp."
        )
    if not config.compressed_modules:
        raise ValueError("Nothing to export: quantization_config.compressed_modules is empty.")


def compressed_tensors_config(config: AWPConfig, ignore: list[str]) -> dict:
    """The compressed-tensors ``quantization_config`` (W4A16 pack-quantized) for an AWPConfig.

    Args:
        config: the optimum-awp config (bits 4, group_size, symmetric).
        ignore: names of the nn.Linear modules left dense (lm_head...).
    """
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    per_row = config.group_size == -1
    weights = QuantizationArgs(
        num_bits=4, type="int", symmetric=config.symmetric,
        strategy="channel" if per_row else "group", group_size=None if per_row else config.group_size,
    )
    quant = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
        format="pack-quantized", quantization_status="compressed", ignore=sorted(ignore),
    )
    return quant.to_dict()


def _module_tensors(module: AWPLinear) -> dict[str, torch.Tensor]:
    """compressed-tensors' tensors (local names) for one AWPLinear of an INT4 format."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    buffers = module.packed_buffers()
    codes = module.unpack_codes()  # uint8 (out, in), pruned entries at the zero code
    signed = (codes.to(torch.int16) - 8).to(torch.int8)
    out = {
        "weight_packed": pack_to_int32(signed, 4),
        "weight_scale": buffers["scales"].contiguous(),
        "weight_shape": torch.tensor([module.out_features, module.in_features], dtype=torch.int64),
    }
    if module.bias is not None:
        out["bias"] = module.bias
    return out


def _state_dict(model: nn.Module, compressed_modules: dict[str, str]) -> dict[str, torch.Tensor]:
    """The model's state dict with every AWPLinear's buffers replaced by compressed-tensors' tensors."""
    state = {}
    prefixes = tuple(f"{name}." for name in compressed_modules)
    for key, tensor in model.state_dict().items():
        if not key.startswith(prefixes):
            state[key] = tensor
    for name in compressed_modules:
        module = model.get_submodule(name)
        if not isinstance(module, AWPLinear):
            raise ValueError(f"compressed_modules names {name!r} but the loaded module is a {type(module).__name__}.")
        for local, tensor in _module_tensors(module).items():
            state[f"{name}.{local}"] = tensor.contiguous()
    return state


def _local_folder(model_dir: str | os.PathLike) -> Path:
    """``model_dir`` itself when it is a folder, else the local snapshot of the Hub repo it names."""
    if Path(model_dir).is_dir():
        return Path(model_dir)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(os.fspath(model_dir)))
    except Exception as err:  # HFValidationError, offline, not found: all mean "cannot read it"
        raise ValueError(f"model_dir {os.fspath(model_dir)!r} is neither a local folder nor a reachable Hub repo "
                         f"({type(err).__name__}: {err}).") from err


def _refuse_if_not_empty(out_dir: Path) -> None:
    if any(out_dir.iterdir()):
        raise ValueError(f"out_dir {str(out_dir)!r} exists and is not empty.")


def export_compressed_tensors(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                              max_shard_size: str = "5GB") -> Path:
    """Write the optimum-awp checkpoint ``model_dir`` (a folder or a Hub id) as a compressed-tensors checkpoint
    in ``out_dir``.

    The result loads with ``AutoModelForCausalLM.from_pretrained(out_dir)`` in transformers with
    ``compressed-tensors`` installed, without optimum-awp. Written all or nothing
    (:func:`optimum_awp.atomic.atomic_directory`). Raises ValueError for checkpoints without INT4 codes (see
    module doc).
    """
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    from .quantizer import register

    register()
    model_dir, out_dir = _local_folder(model_dir), Path(out_dir).expanduser().absolute()
    config = AutoConfig.from_pretrained(model_dir)
    awp = getattr(config, "quantization_config", None)
    if isinstance(awp, dict):
        awp = AWPConfig.from_dict(awp)
    if not isinstance(awp, AWPConfig):
        raise ValueError(f"{model_dir} is not an optimum-awp checkpoint: its config.json has no quantization_config "
                         "with quant_method 'awp'.")
    _check_exportable(awp)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"out_dir {str(out_dir)!r} exists and is not empty.")

    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cpu")
    dense = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name not in awp.compressed_modules]
    state = _state_dict(model, awp.compressed_modules)

    with atomic_directory(out_dir, before_replace=_refuse_if_not_empty) as staged:
        config_dict = model.config.to_dict()
        config_dict["quantization_config"] = compressed_tensors_config(awp, dense)
        (staged / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
        save_torch_state_dict(state, staged, max_shard_size=max_shard_size, metadata={"format": "pt"})
        for path in model_dir.iterdir():
            if path.is_file() and (path.name in COPIED_NAMES or path.suffix in COPIED_SUFFIXES):
                shutil.copy2(path, staged / path.name)
    logger.info("exported %d compressed modules of %s to compressed-tensors at %s",
                len(awp.compressed_modules), model_dir, out_dir)
    return out_dir

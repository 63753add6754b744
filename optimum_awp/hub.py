"""Save and share compressed models: an all-or-nothing ``save_pretrained``, the model card, ``push_to_hub``.

``model.save_pretrained(dir)`` already writes the packed buffers (qweight int32, scales, values, meta...)
and the ``quantization_config`` (with ``compressed_modules``). This module adds:

- :func:`save_pretrained`: writes through :func:`optimum_awp.atomic.atomic_directory`, so ``save_directory``
  is at every instant the complete previous folder or the complete new one, even when the save is killed;
  adds the tokenizer and a model card (README.md);
- :func:`model_card`: a ``huggingface_hub.ModelCard`` with the base model, method and settings, size
  before and after, perplexity before and after with the evaluation settings when known, and how to load;
- :func:`push_to_hub`: the same folder uploaded with ``create_repo`` + ``upload_folder``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder
from torch import nn

from .atomic import atomic_directory
from .config import AWPConfig
from .evaluate import model_sizes

logger = logging.getLogger(__name__)

__all__ = ["check_save_directory", "model_card", "push_to_hub", "save_pretrained"]


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


# --- model card -----------------------------------------------------------------------------------------------


def card_settings(config: AWPConfig) -> dict[str, object]:
    """The settings table of the card: what was done (``AWPConfig.settings()``: the compression fields and
    every option of the method, given or default), the modules kept dense and the format version."""
    return {**config.settings(), "modules_to_not_convert": config.modules_to_not_convert,
            "format_version": config.format_version}


def _base_model(model: nn.Module, base_model: str | None) -> str | None:
    if base_model is not None:
        return base_model
    quantizer = getattr(model, "hf_quantizer", None)
    return getattr(quantizer, "base_model", None) or None


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/"))


def model_card(
    model: nn.Module,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    perplexity: Mapping[str, float] | None = None,
    eval_settings: Mapping[str, Any] | None = None,
    calibration: str | None = None,
) -> ModelCard:
    """The model card (README.md) of a compressed model.

    Args:
        model: a model compressed with optimum-awp (its ``config.quantization_config`` is an AWPConfig).
        repo_id: the Hub repo the card is for; the load snippet uses it (else a local folder placeholder).
        base_model: the dense model's Hub id or path; defaults to what the quantizer saw on load.
        perplexity: {"before": dense ppl, "after": compressed ppl}, either may be missing.
        eval_settings: how the perplexity was measured, e.g. {"dataset": ..., "seqlen": ..., "tokens": ...}.
        calibration: a description of the calibration text, e.g. "Wikipedia (gensim sample)".
    """
    config = getattr(model.config, "quantization_config", None)
    if not isinstance(config, AWPConfig):
        raise ValueError(f"model.config.quantization_config must be an AWPConfig to write an optimum-awp card, "
                         f"got {type(config).__name__}.")
    base = _base_model(model, base_model)
    sizes = model_sizes(model)
    dtype = str(getattr(model, "dtype", "")).removeprefix("torch.")
    data = ModelCardData(
        base_model=base if _is_hub_id(base) else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["optimum-awp", "awp", "compressed"]
        + (["int4"] if config.bits == 4 else []) + (["sparse"] if config.sparsity not in (None, 0) else []),
    )
    where = repo_id or "path/to/this/folder"
    lines = [
        f"# {repo_id.split('/')[-1] if repo_id else type(model).__name__} (optimum-awp)",
        "",
        f"{'`' + base + '`' if base else 'A causal LM'} compressed with "
        f"optimum-awp, method **{config.method}**: {_describe(config)}.",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {name} | `{value}` |" for name, value in card_settings(config).items()],
        f"| compressed modules | {len(config.compressed_modules or {})} "
        f"({', '.join(sorted(set((config.compressed_modules or {}).values()))) or 'dense'}) |",
    ]
    if calibration:
        lines.append(f"| calibration data | {calibration} |")
    lines += [
        "",
        "## Size",
        "",
        "| | weights |",
        "|---|---|",
        f"| dense (whole model, {dtype}) | {_human(sizes['dense'])} |",
        f"| compressed (whole model) | {_human(sizes['compressed'])} "
        f"({sizes['compressed'] / max(sizes['dense'], 1):.1%}) |",
    ]
    if perplexity:
        lines += ["", "## Perplexity", "", "| model | perplexity |", "|---|---|"]
        for key in ("before", "after"):
            if perplexity.get(key) is not None:
                lines.append(f"| {'dense' if key == 'before' else 'compressed'} | {perplexity[key]:.3f} |")
        if eval_settings:
            lines += ["", "Measured with " + ", ".join(f"{k}={v}" for k, v in eval_settings.items()) + "."]
    lines += [
        "",
        "## How to load",
        "",
        "Install optimum-awp next to transformers: it registers the `awp` quantization method with transformers, "
        "so the standard loaders rebuild the packed modules (nothing is recompressed, and no `import optimum_awp` "
        "is needed).",
        "",
        "```bash",
        "pip install optimum-awp",
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, pipeline",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{where}")',
        f'pipe = pipeline("text-generation", model="{where}")',
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _describe(config: AWPConfig) -> str:
    parts = []
    if isinstance(config.sparsity, str):
        parts.append(f"{config.sparsity} semi-structured sparsity")
    elif config.sparsity:
        parts.append(f"{config.sparsity:.0%} unstructured sparsity")
    if config.bits:
        group = "per-row" if config.group_size == -1 else f"group {config.group_size}"
        parts.append(f"INT{config.bits} weights ({group}, {'symmetric' if config.symmetric else 'asymmetric'})")
    rank = config.options.get("rank")
    if rank is not None:
        parts.append(f"activation-aware low-rank factors of rank {int(rank)}" if rank >= 1
                     else f"activation-aware low-rank factors keeping {rank:.0%} of each layer's parameters")
    if config.embedding_bits:
        parts.append(f"INT{config.embedding_bits} token embedding and output head")
    return " + ".join(parts)


# --- save -----------------------------------------------------------------------------------------------------

def check_save_directory(save_directory: str | os.PathLike) -> Path:
    """The absolute target folder, or ValueError when saving there would have to refuse.

    A folder may be replaced only when it is empty or holds a model (``config.json``); call this before
    expensive work so that a bad ``--output`` fails at once rather than after compression.
    """
    target = Path(save_directory).expanduser().absolute()
    if not target.exists():
        return target
    if not target.is_dir():
        raise ValueError(f"save_directory {str(target)!r} exists and is not a folder.")
    if any(target.iterdir()) and not (target / "config.json").exists():
        raise ValueError(f"save_directory {str(target)!r} is a non-empty folder that holds no model "
                         "(no config.json); refusing to replace it.")
    return target


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    tokenizer: Any = None,
    card: bool = True,
    repo_id: str | None = None,
    base_model: str | None = None,
    perplexity: Mapping[str, float] | None = None,
    eval_settings: Mapping[str, Any] | None = None,
    calibration: str | None = None,
    **kwargs,
) -> Path:
    """Save a compressed model (and tokenizer, and model card) all or nothing.

    Everything is written into a hidden folder beside ``save_directory`` that is swapped in atomically once
    complete (see :mod:`optimum_awp.atomic`); on any error, interruption or kill an existing
    ``save_directory`` is left as it was, and the next save removes what a killed one left. An existing
    folder is replaced only when it is empty or holds a model (:func:`check_save_directory`, checked before
    writing and again before replacing). ``kwargs`` go to ``model.save_pretrained`` (e.g. ``max_shard_size``).
    Returns the path of the saved folder.
    """
    target = check_save_directory(save_directory)
    with atomic_directory(target, before_replace=check_save_directory) as staged:
        model.save_pretrained(staged, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(staged)
        if card:
            model_card(model, repo_id=repo_id, base_model=base_model, perplexity=perplexity,
                       eval_settings=eval_settings, calibration=calibration).save(staged / "README.md")
    logger.info("saved %s to %s", type(model).__name__, target)
    return target


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    tokenizer: Any = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    base_model: str | None = None,
    perplexity: Mapping[str, float] | None = None,
    eval_settings: Mapping[str, Any] | None = None,
    calibration: str | None = None,
    **kwargs,
):
    """Upload a compressed model, its tokenizer and its model card to the Hub repo ``repo_id``.

    Creates the repo if needed (``create_repo(exist_ok=True)``), saves into a temporary folder with
    :func:`save_pretrained`, and uploads it in one ``upload_folder`` commit. Returns the ``CommitInfo``.
    """
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"repo_id must be 'name' or 'org/name', got {repo_id!r}.")
    repo_url = create_repo(repo_id, private=private, token=token, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optimum-awp-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", tokenizer=tokenizer, repo_id=repo_url.repo_id,
                                 base_model=base_model, perplexity=perplexity, eval_settings=eval_settings,
                                 calibration=calibration, **kwargs)
        return upload_folder(
            repo_id=repo_url.repo_id, folder_path=folder, token=token, revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload {config_summary(model)} compressed with optimum-awp",
        )


def config_summary(model: nn.Module) -> str:
    """A short description of the compression, e.g. "awp 2:4 + INT4 (group 128)"."""
    config = getattr(model.config, "quantization_config", None)
    if not isinstance(config, AWPConfig):
        return type(model).__name__
    return f"{config.method} {_describe(config)}"

"""optimum's quantizer interface for optimum-awp: ``AWPOptimumQuantizer``.

optimum 2.x defines ``optimum.quantization_base.OptimumQuantizer`` with ``from_pretrained(model_or_path)``
and ``quantize(save_dir, ...)``. This class implements it over the same :func:`optimum_awp.compress.compress`
that quantize-on-load uses, and saves with :func:`optimum_awp.hub.save_pretrained`::

    quantizer = AWPOptimumQuantizer.from_pretrained("path/to/dense")
    report = quantizer.quantize("out", quantization_config=AWPConfig(sparsity="2:4", bits=4))
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from optimum.quantization_base import OptimumQuantizer

from .compress import CompressionReport, check_uncompressed, compress
from .config import AWPConfig
from .hub import save_pretrained

logger = logging.getLogger(__name__)

__all__ = ["AWPOptimumQuantizer"]


class AWPOptimumQuantizer(OptimumQuantizer):
    """Compress a transformers causal LM with optimum-awp and save it (optimum's quantizer interface).

    Args:
        model: a dense ``PreTrainedModel`` (causal LM).
        tokenizer: cuts text calibration data into samples, and is saved next to the model.
    """

    def __init__(self, model, tokenizer: Any = None):
        check_uncompressed(model)
        self.model = model
        self.tokenizer = tokenizer
        self.report: CompressionReport | None = None

    @classmethod
    def from_pretrained(cls, model_or_path, file_name: str | None = None, *, tokenizer: Any = None,
                        dtype: Any = "auto", device_map: Any = None, **kwargs) -> "AWPOptimumQuantizer":
        """Wrap a loaded model, or load a dense causal LM (and its tokenizer when it has one) from a path/Hub id.

        ``file_name`` is part of optimum's interface for single-file formats; transformers checkpoints name
        their own files, so it must be None. ``kwargs`` go to ``AutoModelForCausalLM.from_pretrained``.
        """
        if file_name is not None:
            raise ValueError(f"file_name must be None for transformers checkpoints, got {file_name!r}.")
        if not isinstance(model_or_path, (str, os.PathLike)):
            return cls(model_or_path, tokenizer)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_or_path, dtype=dtype, device_map=device_map, **kwargs)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(model_or_path)
            except (OSError, ValueError) as err:
                logger.info("no tokenizer loaded from %s (%s); token-id calibration data only", model_or_path, err)
        return cls(model, tokenizer)

    def quantize(self, save_dir: str | os.PathLike, file_prefix: str | None = None, *,
                 quantization_config: AWPConfig, data: Any = None, progress: bool = True,
                 **save_kwargs) -> CompressionReport:
        """Compress the model in place with ``quantization_config`` and save it to ``save_dir``.

        Args:
            save_dir: the checkpoint folder (written all or nothing, with the tokenizer and a model card).
            file_prefix: part of optimum's interface; must be None (transformers names the files).
            quantization_config: what to do (method, sparsity, bits, group size, calibration settings).
            data: calibration data overriding ``quantization_config.dataset`` (token ids or strings).
            progress: show a progress bar per block.
            save_kwargs: passed to :func:`optimum_awp.hub.save_pretrained` (perplexity=, max_shard_size=, ...).
        Returns:
            the CompressionReport of :func:`optimum_awp.compress.compress`.
        """
        if file_prefix is not None:
            raise ValueError(f"file_prefix must be None for transformers checkpoints, got {file_prefix!r}.")
        report = self.compress(quantization_config, data, progress=progress)
        self.save(save_dir, **save_kwargs)
        return report

    def compress(self, quantization_config: AWPConfig, data: Any = None, *, progress: bool = True,
                 device: Any = None) -> CompressionReport:
        """The first half of :meth:`quantize`: compress the model in memory (e.g. to evaluate it before saving)."""
        if not isinstance(quantization_config, AWPConfig):
            raise ValueError(f"quantization_config must be an AWPConfig, got {type(quantization_config).__name__}.")
        if self.report is not None:
            raise ValueError("This quantizer's model is already compressed; build a new AWPOptimumQuantizer.")
        tokenizer = self.tokenizer if self.tokenizer is not None else quantization_config.tokenizer
        self.report = compress(self.model, quantization_config, data, tokenizer=tokenizer, device=device,
                               progress=progress)
        return self.report

    def save(self, save_dir: str | os.PathLike, **save_kwargs) -> Path:
        """The second half of :meth:`quantize`: :func:`optimum_awp.hub.save_pretrained` with the tokenizer."""
        if self.report is None:
            raise ValueError("Nothing to save yet: call compress() or quantize() first.")
        return save_pretrained(self.model, Path(save_dir), tokenizer=self.tokenizer, **save_kwargs)

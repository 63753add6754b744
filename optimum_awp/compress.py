"""compress(): the one path from a dense causal LM to a compressed one, in place, block by block.

Every entry point calls it: ``from_pretrained(..., quantization_config=AWPConfig(...))`` (the quantizer's
hook), ``AWPOptimumQuantizer``, the CLI and ``optimum_awp.compress`` itself. Orchestration only: the data
comes from ``data``, the architecture knowledge and the block walk from ``calibration``, the mathematics from
``solvers`` and the packed modules from ``nn``::

    config = a copy of the user's config, required modules kept dense   # validated before any work
    ids = calibration ids (nsamples, seqlen)
    inputs = capture_block_inputs(model, ids)
    for each block: stats -> solver(W, stats, spec, options) -> write Θ -> re-run the block -> pack
    attach the config and an AWPQuantizer to the model (so save_pretrained writes a loadable checkpoint)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from .calibration import (
    block_linears,
    capture_block_inputs,
    decoder_layers,
    layers_prefix,
    walk_blocks,
)  # fmt: skip
from .config import QUANT_METHOD, AWPConfig
from .data import dataset_kind
from .embeddings import SYMMETRIC as EMBEDDING_SYMMETRIC
from .embeddings import check_embeddings, compress_embeddings, embedding_names, head_covariance
from .solvers import CompressionSpec, LayerStats, SolverResult, get_solver
from .solvers.targets import dense_target
from .statistics import InputStatistics

logger = logging.getLogger(__name__)


@dataclass
class LayerReport:
    """One compressed linear: name, weight shape (out, in), relative objective, iterations, seconds, format."""

    name: str
    shape: tuple[int, int]
    objective: float
    iterations: int
    seconds: float
    format: str | None = None


@dataclass
class CompressionReport:
    """What compress() did.

    Attributes:
        method, sparsity, bits, group_size: the settings, as in AWPConfig.
        nsamples, seqlen: calibration tokens used.
        layers: one LayerReport per compressed linear, in walk order.
        skipped: linears left dense because of ``modules_to_not_convert``.
        seconds: wall time of the whole call (capture, statistics, solves, re-runs, packing).
        config: the config attached to the model (a copy of the one given, with ``compressed_modules``,
            the modules kept dense and the calibration shape actually used).
    """

    method: str
    sparsity: float | str | None
    bits: int | None
    group_size: int
    nsamples: int
    seqlen: int
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    config: AWPConfig | None = field(default=None, repr=False)

    @property
    def mean_objective(self) -> float:
        """Mean relative layer objective tr(ΔCΔᵀ)/tr(WCWᵀ) over the compressed linears."""
        values = [layer.objective for layer in self.layers]
        return sum(values) / len(values) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("layers", "config")}
        out["layers"] = [asdict(layer) for layer in self.layers]
        out["config"] = self.config.to_dict() if self.config is not None else None
        out["mean_objective"] = self.mean_objective
        return out


# --------------------------------------------------------------------------------------------------
# Validation (everything here runs before any forward pass).
# --------------------------------------------------------------------------------------------------


def spec_from_config(config: AWPConfig) -> CompressionSpec:
    """The solver-level CompressionSpec of an AWPConfig (sparsity float or "N:M", bits, group size)."""
    return CompressionSpec.from_sparsity(
        config.sparsity, bits=config.bits, group_size=config.group_size, symmetric=config.symmetric
    )


def is_excluded(name: str, modules_to_not_convert: list[str] | None) -> bool:
    """True when an entry of ``modules_to_not_convert`` names ``name``, a parent of it, or a dotted run of it.

    "lm_head" matches "lm_head"; "down_proj" and "mlp.down_proj" match every "...mlp.down_proj";
    "model.layers.0" matches every linear of block 0. Matching is on whole dotted components.
    """
    parts = name.split(".")
    for entry in modules_to_not_convert or ():
        want = entry.split(".")
        k = len(want)
        if any(parts[i : i + k] == want for i in range(len(parts) - k + 1)):
            return True
    return False


def select_linears(model: nn.Module, spec: CompressionSpec, modules_to_not_convert: list[str] | None) -> tuple[list[str], list[str]]:
    """(names to compress, names skipped) over the nn.Linear modules of the decoder blocks.

    Raises ValueError naming the first linear whose shape cannot satisfy ``spec`` (divisibility by
    M of N:M or by the group size) unless it is skipped.
    """
    prefix = layers_prefix(model)
    chosen, skipped = [], []
    for index, block in enumerate(decoder_layers(model)):
        for name, linear in block_linears(block, f"{prefix}.{index}").items():
            if is_excluded(name, modules_to_not_convert):
                skipped.append(name)
                continue
            try:
                spec.check_shape(linear.out_features, linear.in_features)
            except ValueError as err:
                raise ValueError(
                    f"Module {name!r} (weight {linear.out_features}x{linear.in_features}) cannot be compressed: "
                    f"{err} Add it to modules_to_not_convert to keep it dense."
                ) from None
            if linear.weight.device.type != "meta":  # an offloaded weight is checked once onloaded
                check_finite(linear.weight, f"the weight of {name}")
            chosen.append(name)
    return chosen, skipped


class NonFiniteError(ValueError):
    """A NaN or inf in a weight, in the calibration activations or in a solver's result."""


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise NonFiniteError "NaN found in <what>" (or inf) unless every entry of ``tensor`` is finite."""
    if tensor.numel() == 0 or bool(torch.isfinite(tensor).all()):
        return
    kind = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
    count = int((~torch.isfinite(tensor)).sum())
    raise NonFiniteError(f"{kind} found in {what} ({count} of {tensor.numel()} entries are not finite); "
                         "optimum-awp compresses finite models only, nothing was written.")


def calibration_ids(data: Any, config: AWPConfig, tokenizer: Any = None, model: nn.Module | None = None) -> torch.Tensor:
    """Calibration token ids (nsamples, seqlen) from ``data``, or from ``config.dataset`` when it is None.

    Token ids (an integer tensor (nsamples, seqlen) or a list of equal-length lists of ints) are used
    as given, and must lie in the model's vocabulary. Text (a source name, a file path or a list of strings)
    is cut into ``config.nsamples`` windows of ``config.seqlen`` tokens by ``data.calibration_samples`` with
    ``tokenizer``: a tokenizer, a name or path to load one from, or None for the model's own.
    """
    source = data if data is not None else config.dataset
    kind = dataset_kind(source)
    if kind == "ids" and isinstance(source, (list, tuple)):
        if len({len(row) for row in source}) != 1:
            raise ValueError("data as lists of token ids must have one length (seqlen) for every sample.")
        source = torch.tensor(source, dtype=torch.long)
    if kind == "ids" or isinstance(source, torch.Tensor):
        if kind != "ids" or source.shape[1] < 2:
            raise ValueError(
                f"data as a tensor must be integer token ids of shape (nsamples, seqlen >= 2), got "
                f"dtype {source.dtype} and shape {tuple(source.shape)}."
            )
        _check_vocabulary(source, model)
        return source.long()
    if kind is None:
        raise ValueError(
            f"data must be token ids (nsamples, seqlen), a list of strings, or None to use AWPConfig.dataset "
            f"(a source name or path); got {type(source).__name__}."
        )
    from .data import calibration_samples

    source = list(source) if kind == "texts" else source
    ids = calibration_samples(text_tokenizer(tokenizer, model), source=source, nsamples=config.nsamples,
                              seqlen=config.seqlen, seed=config.seed)
    _check_vocabulary(ids, model)
    return ids


def text_tokenizer(tokenizer: Any, model: nn.Module | None) -> Any:
    """The tokenizer that cuts calibration text: ``tokenizer`` itself, one loaded from the name or path it
    holds, or (None) the model's own, as transformers' GPTQ integration does."""
    if tokenizer is not None and not isinstance(tokenizer, str):
        if not callable(getattr(tokenizer, "encode", None)):
            raise ValueError(f"tokenizer must be a transformers tokenizer or a name/path to load one, got "
                             f"{type(tokenizer).__name__}.")
        return tokenizer
    name = tokenizer or getattr(model, "name_or_path", None)
    if not name:
        raise ValueError("Calibration text needs a tokenizer: pass tokenizer= or set AWPConfig.tokenizer.")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _check_vocabulary(ids: torch.Tensor, model: nn.Module | None) -> None:
    """Refuse token ids outside [0, vocab_size) before any forward (an embedding lookup would fail mid-way)."""
    embeddings = model.get_input_embeddings() if model is not None and hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    if vocab is None or ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"calibration token ids must lie in [0, {vocab}) (the model's vocabulary), got ids from "
                         f"{low} to {high}.")


# --------------------------------------------------------------------------------------------------
# Writing results into the model.
# --------------------------------------------------------------------------------------------------


def pack_linear(result: SolverResult, spec: CompressionSpec, bias: torch.Tensor | None, dtype: torch.dtype):
    """The AWPLinear holding ``result`` in the packed format of ``spec`` (``nn.format_for``), or in a low-rank
    format (``nn.lowrank``) when the result has factors."""
    from .nn import AWPLinear, format_for

    if result.factors is not None:
        from .nn.lowrank import pack_lowrank

        return pack_lowrank(result, spec, bias, dtype)
    return AWPLinear.from_parts(
        format_for(spec.pattern, spec.bits), result.weight, mask=result.mask, codes=result.codes,
        scales=result.scales, zeros=result.zeros, group_size=spec.group_size, symmetric=spec.symmetric,
        bias=bias, dtype=dtype,
    )  # fmt: skip


def _packer(spec: CompressionSpec, pack: bool) -> tuple[str | None, Callable | None]:
    """(format, builder of the packed module) for ``spec``, or (None, None) to keep dense nn.Linear."""
    if not pack:
        return None, None
    from .nn import format_for

    fmt = format_for(spec.pattern, spec.bits)
    return (fmt, pack_linear) if fmt is not None else (None, None)


def modules_left_dense(model: nn.Module, config: AWPConfig) -> list[str]:
    """``config.modules_to_not_convert`` plus the model's fp32-pinned modules and a tied output embedding."""
    names = set(config.modules_to_not_convert or ())
    names.update(getattr(model, "_keep_in_fp32_modules", None) or ())
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config_of = getattr(getattr(model, "config", None), "get_text_config", None)
    if output is not None and callable(config_of) and getattr(config_of(), "tie_word_embeddings", False):
        names.update(name for name, module in model.named_modules() if module is output)
    return sorted(names)


def check_uncompressed(model: nn.Module) -> None:
    """Refuse a model that is already quantized (by optimum-awp or another method)."""
    quantizer = getattr(model, "hf_quantizer", None)
    compressing_on_load = getattr(quantizer, "pre_quantized", True) is False and isinstance(
        getattr(quantizer, "quantization_config", None), AWPConfig)
    if quantizer is not None and not compressing_on_load:
        method = getattr(quantizer.quantization_config, "quant_method", "?")
        raise ValueError(f"The model is already quantized with quant_method {str(method)!r}; compress a dense model "
                         "(load it without quantization_config).")


def attach(model: nn.Module, config: AWPConfig, report: "CompressionReport") -> None:
    """Make the model look like one loaded with quant_method "awp": its config carries ``config`` (so
    ``save_pretrained`` writes a loadable checkpoint) and ``model.hf_quantizer`` is the registered
    quantizer for it (so ``is_quantized``, ``dequantize()`` and saving work)."""
    from transformers.quantizers.auto import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(config, pre_quantized=True)
    quantizer.report = report
    quantizer.base_model = getattr(model, "name_or_path", None) or None
    if hasattr(model, "config"):
        model.config.quantization_config = config
    model.hf_quantizer = quantizer
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD


# --------------------------------------------------------------------------------------------------
# The entry point.
# --------------------------------------------------------------------------------------------------


def compress(
    model: nn.Module,
    config: AWPConfig,
    data: Any = None,
    *,
    tokenizer: Any = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    pack: bool = True,
    batch_size: int = 1,
    stats_dtype: torch.dtype = torch.float32,
) -> CompressionReport:
    """Compress the decoder-block linears of ``model`` in place with ``config.method`` and attach the config.

    Blocks are compressed in order; each block's statistics C = X Xᵀ / n come from the outputs of the
    blocks already compressed (with ``config.dense_targets``, each linear is fitted to the dense model's
    outputs on those inputs: ``solvers/targets.py``). Embeddings, ``lm_head``, a tied output embedding, the model's fp32-pinned
    modules and every module named in ``config.modules_to_not_convert`` stay dense, except that
    ``config.embedding_bits=4`` rounds the embedding and the head to INT4 first (``embeddings.py``). ``config`` itself is
    not changed: the model gets a copy (``report.config``) with ``compressed_modules``, the modules kept
    dense and the calibration shape actually used, and an AWPQuantizer, so ``model.save_pretrained`` writes
    a checkpoint that reloads with ``from_pretrained``.

    Args:
        model: a dense transformers causal LM (Llama, Gemma 3, Qwen, Mistral, OPT... with nn.Linear layers).
        config: AWPConfig.
        data: None (use ``config.dataset``), a LongTensor (nsamples, seqlen) of token ids, or a list of strings.
        tokenizer: used to tokenize text data; defaults to ``config.tokenizer``, then to the model's own
            (``AutoTokenizer.from_pretrained(model.name_or_path)``).
        device: where blocks run and statistics live; default the model's device.
        progress: show a tqdm bar (one step per block).
        pack: replace compressed linears by AWPLinear when the spec has a packed format and attach the
            config; False keeps plain nn.Linear modules holding the compressed dense weight Θ and attaches
            nothing (the model stays an ordinary dense model, e.g. for benchmarks).
        batch_size: calibration samples per block forward.
        stats_dtype: torch.float32 or torch.float64 accumulation of C.
    Returns:
        CompressionReport with one LayerReport per compressed linear and the attached config.
    """
    start = time.perf_counter()
    if not isinstance(config, AWPConfig):
        raise ValueError(f"config must be an AWPConfig, got {type(config).__name__}.")
    check_uncompressed(model)
    spec = spec_from_config(config)
    config = config.replace(compressed_modules=None, modules_to_not_convert=modules_left_dense(model, config))
    names, skipped = select_linears(model, spec, config.modules_to_not_convert)
    if not names:
        raise ValueError(f"No linear layer to compress: modules_to_not_convert={config.modules_to_not_convert} skips all.")
    solver = get_solver(config.method)
    options = solver.make_options(**config.options)
    fmt, build = _packer(spec, pack)
    if config.embedding_bits is not None:
        check_embeddings(model, config.group_size)
    ids = calibration_ids(data, config, tokenizer if tokenizer is not None else config.tokenizer, model)
    if tuple(ids.shape) != (config.nsamples, config.seqlen):
        logger.info("calibration data holds %d x %d tokens (config asked %d x %d); recording what is used",
                    ids.shape[0], ids.shape[1], config.nsamples, config.seqlen)
        config = config.replace(nsamples=int(ids.shape[0]), seqlen=int(ids.shape[1]))

    report = CompressionReport(
        method=config.method, sparsity=config.sparsity, bits=config.bits, group_size=config.group_size,
        nsamples=ids.shape[0], seqlen=ids.shape[1], skipped=skipped,
    )
    wanted = set(names)
    offloaded = {name for name in names if model.get_submodule(name).weight.device.type == "meta"}
    pending: dict[str, tuple[SolverResult, LayerReport]] = {}

    def solve_block(index: int, block: nn.Module, stats: dict[str, InputStatistics]) -> bool:
        for name, inputs in stats.items():
            linear = model.get_submodule(name)
            tic = time.perf_counter()
            check_finite(inputs.mean_abs, f"the calibration activations at the input of {name}")
            check_finite(inputs.covariance, f"the input statistics of {name}")
            layer_stats = LayerStats(inputs.covariance, inputs.mean_abs, inputs.nsamples)
            if name in offloaded:
                check_finite(linear.weight, f"the weight of {name}")
            weight = linear.weight.detach().to(torch.float32)
            if inputs.cross is not None:  # dense_targets: fit the dense model's outputs (solvers/targets.py)
                weight = dense_target(weight, inputs.cross, inputs.covariance)
                check_finite(weight, f"the dense target of {name}")
            result = solver(weight, layer_stats, spec, options)
            for part in ("weight", "scales"):
                if getattr(result, part) is not None:
                    check_finite(getattr(result, part), f"the {part} {config.method} computed for {name}")
            linear.weight.data.copy_(result.weight.to(linear.weight.dtype))
            seconds = time.perf_counter() - tic
            report.layers.append(LayerReport(name, tuple(linear.weight.shape), result.objective,
                                             result.iterations, seconds, fmt))
            logger.info("%s %s: objective %.5f, %d iterations, %.2fs", config.method, name,
                        result.objective, result.iterations, seconds)
            if build is not None or (pack and result.factors is not None):  # factors: a low-rank format
                pending[name] = (result, report.layers[-1])
        return True

    def finish_block(index: int, block: nn.Module) -> None:
        for name, (result, layer) in pending.items():
            linear = model.get_submodule(name)
            bias = linear.bias.detach() if linear.bias is not None else None
            module = pack_linear(result, spec, bias, linear.weight.dtype)
            layer.format = module.format
            model.set_submodule(name, module)
        pending.clear()

    was_training = model.training
    model.eval()
    embeddings = {}
    if config.embedding_bits is not None:  # first, so that the blocks are calibrated on the rounded embedding
        head_name = embedding_names(model)[1]
        covariance = head_covariance(model, head_name, ids) if head_name is not None else None
        embeddings = compress_embeddings(model, config.group_size, EMBEDDING_SYMMETRIC, pack, covariance)
    try:
        inputs = capture_block_inputs(model, ids, batch_size=batch_size, device=device)
        walk_blocks(model, inputs, solve_block, select=wanted.__contains__, finish_block=finish_block,
                    stats_dtype=stats_dtype, device=device, progress=progress, dense_targets=config.dense_targets)
    finally:
        model.train(was_training)
    # Only modules now held packed are listed: dense nn.Linear modules need no rebuilding on load.
    config.compressed_modules = {layer.name: layer.format for layer in report.layers if layer.format is not None}
    config.compressed_modules.update(embeddings)
    report.config = config
    if pack:
        attach(model, config, report)
    report.seconds = time.perf_counter() - start
    logger.info("%s: %d linears compressed in %.1fs, mean objective %.5f", config.method, len(report.layers),
                report.seconds, report.mean_objective)
    return report

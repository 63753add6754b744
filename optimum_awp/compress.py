"""compress(): calibrate and compress a causal LM in place, block by block.

Orchestration only: the data comes from ``data``, the architecture knowledge and the block walk from
``calibration``, the mathematics from ``solvers`` and the packed modules from ``nn``::

    spec = spec_from_config(config)                  # validated before any work
    ids = calibration ids (nsamples, seqlen)
    inputs = capture_block_inputs(model, ids)
    for each block: stats -> solver(W, stats, spec) -> write Θ -> re-run the block -> pack
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .calibration import block_linears, capture_block_inputs, decoder_layers, layers_prefix, walk_blocks
from .config import AWPConfig
from .solvers import CompressionSpec, LayerStats, SolverResult, get_solver

logger = logging.getLogger(__name__)

# AWPConfig fields handed to solvers, each only to the solvers whose signature names it.
SOLVER_OPTION_FIELDS = (
    "max_iterations", "tolerance", "damping", "init", "step", "momentum", "scope", "bf16_products",
)


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

    @property
    def mean_objective(self) -> float:
        """Mean relative layer objective tr(ΔCΔᵀ)/tr(WCWᵀ) over the compressed linears."""
        values = [layer.objective for layer in self.layers]
        return sum(values) / len(values) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
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


def solver_options(solver: Callable, config: AWPConfig) -> dict[str, Any]:
    """The AWPConfig options (SOLVER_OPTION_FIELDS) that ``solver`` names as parameters."""
    params = inspect.signature(solver).parameters
    named = {p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)}
    return {key: getattr(config, key) for key in SOLVER_OPTION_FIELDS if key in named}


def probe_solver(solver: Callable, spec: CompressionSpec, options: dict[str, Any], method: str) -> None:
    """Call the solver on a tiny random problem so a method/spec mismatch raises before any real work."""
    width = 256 if spec.pattern is None else math.lcm(256, spec.pattern[1])
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, width, generator=gen)
    x = torch.randn(2 * width, width, generator=gen)
    stats = LayerStats(covariance=x.T @ x / x.shape[0], mean_abs=x.abs().mean(0), nsamples=x.shape[0])
    try:
        solver(weight, stats, spec, **options)
    except ValueError as err:
        raise ValueError(f"method={method!r} cannot compress with {spec}: {err}") from err


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
            chosen.append(name)
    return chosen, skipped


def calibration_ids(data: Any, config: AWPConfig, tokenizer: Any) -> torch.Tensor:
    """Calibration token ids (nsamples, seqlen) from ``data``, or from ``config.dataset`` when it is None.

    Token ids (an integer tensor (nsamples, seqlen) or a list of equal-length lists of ints) are used
    as given. Text (a source name, a file path or a list of strings) is cut into ``config.nsamples``
    windows of ``config.seqlen`` tokens by ``data.calibration_samples``, with the tokenizer given
    here or ``config.tokenizer``.
    """
    source = data if data is not None else config.dataset
    if isinstance(source, (list, tuple)) and source and all(isinstance(row, (list, tuple)) for row in source):
        if len({len(row) for row in source}) != 1:
            raise ValueError("data as lists of token ids must have one length (seqlen) for every sample.")
        source = torch.tensor(source, dtype=torch.long)
    if isinstance(source, torch.Tensor):
        if source.dim() != 2 or source.dtype.is_floating_point or source.dtype == torch.bool or source.shape[1] < 2:
            raise ValueError(
                f"data as a tensor must be integer token ids of shape (nsamples, seqlen >= 2), got "
                f"dtype {source.dtype} and shape {tuple(source.shape)}."
            )
        return source.long()
    is_texts = isinstance(source, (list, tuple)) and source and all(isinstance(t, str) for t in source)
    if not (is_texts or (isinstance(source, str) and source.strip())):
        raise ValueError(
            f"data must be token ids (nsamples, seqlen), a list of strings, or None to use AWPConfig.dataset "
            f"(a source name or path); got {type(source).__name__}."
        )
    tokenizer = tokenizer if tokenizer is not None else config.tokenizer
    if tokenizer is None:
        raise ValueError("Calibration text needs a tokenizer: pass tokenizer= or set AWPConfig.tokenizer.")
    from .data import calibration_samples

    source = list(source) if is_texts else source
    return calibration_samples(tokenizer, source=source, nsamples=config.nsamples, seqlen=config.seqlen, seed=config.seed)


# --------------------------------------------------------------------------------------------------
# Writing results into the model.
# --------------------------------------------------------------------------------------------------


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def pack_linear(result: SolverResult, spec: CompressionSpec, bias: torch.Tensor | None, dtype: torch.dtype):
    """The AWPLinear holding ``result`` in the packed format of ``spec`` (``nn.format_for``)."""
    from .nn import AWPLinear, format_for

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
    """Compress the decoder-block linears of ``model`` in place with ``config.method``.

    Blocks are compressed in order; each block's statistics C = X Xᵀ / n come from the outputs of the
    blocks already compressed. Embeddings, ``lm_head`` and every module named in
    ``config.modules_to_not_convert`` stay dense.

    Args:
        model: a transformers causal LM (Llama, Gemma 3, Qwen, Mistral, OPT... with nn.Linear layers).
        config: AWPConfig; ``config.compressed_modules`` is filled with {name: format} for the modules
            replaced by packed AWPLinear modules.
        data: None (use ``config.dataset``), a LongTensor (nsamples, seqlen) of token ids, or a list of strings.
        tokenizer: used to tokenize text data; defaults to ``config.tokenizer``.
        device: where blocks run and statistics live; default the model's device.
        progress: show a tqdm bar (one step per block).
        pack: replace compressed linears by AWPLinear when the spec has a packed format; False keeps
            nn.Linear holding the dense compressed weight Θ.
        batch_size: calibration samples per block forward.
        stats_dtype: torch.float32 or torch.float64 accumulation of C.
    Returns:
        CompressionReport with one LayerReport per compressed linear.
    """
    start = time.perf_counter()
    if not isinstance(config, AWPConfig):
        raise ValueError(f"config must be an AWPConfig, got {type(config).__name__}.")
    spec = spec_from_config(config)
    names, skipped = select_linears(model, spec, config.modules_to_not_convert)
    if not names:
        raise ValueError(f"No linear layer to compress: modules_to_not_convert={config.modules_to_not_convert} skips all.")
    solver = get_solver(config.method)
    options = solver_options(solver, config)
    probe_solver(solver, spec, options, config.method)
    fmt, build = _packer(spec, pack)
    ids = calibration_ids(data, config, tokenizer)

    report = CompressionReport(
        method=config.method, sparsity=config.sparsity, bits=config.bits, group_size=config.group_size,
        nsamples=ids.shape[0], seqlen=ids.shape[1], skipped=skipped,
    )
    wanted = set(names)
    pending: dict[str, SolverResult] = {}

    def solve_block(index: int, block: nn.Module, stats: dict[str, LayerStats]) -> bool:
        for name, layer_stats in stats.items():
            linear = model.get_submodule(name)
            tic = time.perf_counter()
            result = solver(linear.weight.detach().to(torch.float32), layer_stats, spec, **options)
            linear.weight.data.copy_(result.weight.to(linear.weight.dtype))
            seconds = time.perf_counter() - tic
            report.layers.append(LayerReport(name, tuple(linear.weight.shape), result.objective,
                                             result.iterations, seconds, fmt))
            logger.info("%s %s: objective %.5f, %d iterations, %.2fs", config.method, name,
                        result.objective, result.iterations, seconds)
            if build is not None:
                pending[name] = result
        return True

    def finish_block(index: int, block: nn.Module) -> None:
        for name, result in pending.items():
            linear = model.get_submodule(name)
            bias = linear.bias.detach() if linear.bias is not None else None
            _set_submodule(model, name, build(result, spec, bias, linear.weight.dtype))
        pending.clear()

    was_training = model.training
    model.eval()
    try:
        inputs = capture_block_inputs(model, ids, batch_size=batch_size, device=device)
        walk_blocks(model, inputs, solve_block, select=wanted.__contains__, finish_block=finish_block,
                    stats_dtype=stats_dtype, device=device, progress=progress)
    finally:
        model.train(was_training)
    # Only modules now held packed are listed: dense nn.Linear modules need no rebuilding on load.
    config.compressed_modules = {layer.name: fmt for layer in report.layers} if fmt is not None else {}
    report.seconds = time.perf_counter() - start
    logger.info("%s: %d linears compressed in %.1fs, mean objective %.5f", config.method, len(report.layers),
                report.seconds, report.mean_objective)
    return report

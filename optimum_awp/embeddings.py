"""``embedding_bits``: the token embedding and the output head in INT4, tied weights as one packed tensor.

The embedding and the head are outside the decoder blocks that the solvers compress, and on a small model
they are most of it (Gemma-3-270M: a 262k x 640 embedding tied to the head, two thirds of the weights). With
``AWPConfig(embedding_bits=4)`` they are stored on the INT4 group grid of the config (group size, symmetry), row
by row (a row of the embedding is an output of the head):

- tied head (``tie_word_embeddings``): the embedding becomes an ``AWPEmbedding`` and the head an
  ``AWPTiedHead`` reading the same packed rows, so memory and checkpoint hold them once;
- untied head: the embedding becomes an ``AWPEmbedding`` and the head an "int4" ``AWPLinear``.

The head's rows (for a tied head, the one tensor) are rounded with GPTQ for the head's inputs: C of the final
hidden states over the calibration ids (:func:`head_covariance`), so the logits' error is what is minimised. On
Gemma-3-270M at g128 that gives 27.9 against 29.5 for round to nearest (dense 24.5): the head's rounding costs
more than the lookup's (14 % vs 6 % of perplexity, each alone), so the tied tensor is rounded for the head. An
untied embedding is rounded to nearest (a lookup's error is the rows' own). A clipping search for the least
squared error per group lowers the rows' error but raises the perplexity (30.2 vs 29.5), so round to nearest
stays min-max. docs/results/embeddings.md has the measurements. Both modules are listed in
``compressed_modules`` with format "int4"; :func:`swap_empty_embeddings` rebuilds them on load.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .nn.embedding import AWPEmbedding, AWPTiedHead, embedding_scale
from .nn.formats import get_format
from .nn.packing import dequantize_int4
from .nn.linear import AWPLinear
from .solvers.projections import _grouped, grid_params, quantize_with

logger = logging.getLogger(__name__)

FORMAT = "int4"
SYMMETRIC = False
"""The grid of what ``embedding_bits`` compresses: asymmetric (zero points), whatever the config's ``symmetric``,
which exists to keep pruned weights exactly zero, and nothing is pruned here. 26.6 vs 28.0 perplexity on
Gemma-3-270M at g128 for 1/128 byte per weight more (docs/results/embeddings.md)."""


def embedding_names(model: nn.Module) -> tuple[str, str | None]:
    """(name of the input embedding, name of the output head or None) of a transformers model."""
    if not hasattr(model, "get_input_embeddings"):
        raise ValueError(f"embedding_bits needs a transformers model with get_input_embeddings(); "
                         f"{type(model).__name__} has none.")
    inputs = model.get_input_embeddings()
    outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {id(module): name for name, module in model.named_modules()}
    return names[id(inputs)], (names[id(outputs)] if outputs is not None else None)


def head_is_tied(model: nn.Module, input_name: str, head_name: str | None) -> bool:
    """Whether the head's weight is the embedding's: the same tensor now, or tied by transformers on load
    (``all_tied_weights_keys``, the mapping transformers itself ties from)."""
    if head_name is None:
        return False
    head, embedding = model.get_submodule(head_name), model.get_submodule(input_name)
    weight = getattr(head, "weight", None)
    if weight is not None and weight is getattr(embedding, "weight", None):
        return True
    mapping = getattr(model, "all_tied_weights_keys", None) or {}
    return mapping.get(f"{head_name}.weight") == f"{input_name}.weight"


def _drop_tie(model: nn.Module, input_name: str, head_name: str) -> None:
    """Remove the head <- embedding entry from transformers' tie mapping: neither module has a ``weight``
    now, and ``from_pretrained`` would try to tie ``{head}.weight`` to ``{embedding}.weight``."""
    mapping = getattr(model, "all_tied_weights_keys", None)
    if isinstance(mapping, dict):
        for target in [k for k, v in mapping.items() if k == f"{head_name}.weight" or v == f"{input_name}.weight"]:
            mapping.pop(target)


def check_embeddings(model: nn.Module, group_size: int) -> tuple[str, str | None, bool]:
    """Raise ValueError, before any work, when the embedding or the head cannot be stored in INT4 with
    ``group_size``; return (embedding name, head name or None, tied)."""
    input_name, head_name = embedding_names(model)
    embedding = model.get_submodule(input_name)
    if not isinstance(embedding, nn.Embedding):
        raise ValueError(f"embedding_bits: {input_name} is a {type(embedding).__name__}, not an nn.Embedding.")
    if embedding.weight.device.type == "meta":
        raise ValueError(f"embedding_bits: {input_name} is offloaded (its weight is on the meta device); keep the "
                         "embedding in memory (device_map) to compress it.")
    embedding_scale(embedding)
    try:
        get_format(FORMAT).check_shape(embedding.num_embeddings, embedding.embedding_dim, group_size)
    except ValueError as err:
        raise ValueError(f"embedding_bits: {input_name} ({embedding.num_embeddings}x{embedding.embedding_dim}) "
                         f"cannot be stored with group_size={group_size}: {err}") from None
    tied = head_is_tied(model, input_name, head_name)
    if head_name is not None and not tied:
        head = model.get_submodule(head_name)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"embedding_bits: the output head {head_name} is a {type(head).__name__}, not an "
                             "nn.Linear.")
        get_format(FORMAT).check_shape(head.out_features, head.in_features, group_size)
    return input_name, head_name, tied


SHRINKS = tuple(1 - 0.05 * i for i in range(9))  # the clipping search's factors per group: 1.0, 0.95, ..., 0.6


def _group_grid(grouped: torch.Tensor, symmetric: bool, scale_dtype: torch.dtype, shrink: float | torch.Tensor):
    """(grid values, codes, scale, zero) of groups (rows, G, g) float32 on the grid of their range times
    ``shrink`` (a float or (rows, G, 1); values beyond are clipped), the scale rounded to ``scale_dtype``."""
    scale, zero = grid_params(grouped * shrink, 4, symmetric)
    scale = scale.to(scale_dtype).to(torch.float32)
    dequant, codes = quantize_with(grouped, scale, zero, 4)
    return dequant, codes, scale, zero


def round_rows(weight: torch.Tensor, group_size: int, symmetric: bool, scale_dtype: torch.dtype | None = None,
               shrinks: tuple[float, ...] = (1.0,)):
    """Round to nearest on the INT4 group grid whose range, per group, is the one of ``shrinks`` x the group's
    range that gives the least squared error: ``(1.0,)`` (the default) is min-max RTN, ``SHRINKS`` a clipping
    search. Scales are rounded to ``scale_dtype`` (default the weight's dtype: what the packed module stores)
    before the codes are chosen. Chunked over rows to bound the float32 working memory.

    Args:
        weight: (rows, cols) float.
    Returns:
        (grid values (rows, cols) float32, exactly what the packed module dequantizes to; codes uint8 (rows, cols);
        scales float32 (rows, groups); zeros float32 (rows, groups), or None when symmetric).
    """
    scale_dtype = scale_dtype or weight.dtype
    parts = []
    for chunk in weight.detach().split(16384):
        grouped = _grouped(chunk.to(torch.float32), group_size)
        best_shrink = torch.ones(grouped.shape[:-1] + (1,))
        if len(shrinks) > 1:
            errors = torch.stack([(_group_grid(grouped, symmetric, scale_dtype, shrink)[0] - grouped).square().sum(-1)
                                  for shrink in shrinks])  # (shrinks, rows, G)
            best_shrink = torch.tensor(shrinks)[errors.argmin(0)].unsqueeze(-1)
        dequant, codes, scale, zero = _group_grid(grouped, symmetric, scale_dtype, best_shrink)
        parts.append((dequant.reshape(chunk.shape), codes.reshape(chunk.shape), scale.squeeze(-1), zero.squeeze(-1)))
    zeros = None if symmetric else torch.cat([p[3] for p in parts])
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
            torch.cat([p[2] for p in parts]), zeros)


class _HeadReached(Exception):
    """Raised by the capture hook: the forward stops at the head's input, no logits are computed."""


def head_covariance(model: nn.Module, head_name: str, ids: torch.Tensor) -> torch.Tensor:
    """C = X Xᵀ / n of the output head's inputs X (the final hidden states) over calibration ``ids``.

    One forward of the model per sample, stopped at the head by a pre-hook (no logits are computed).

    Args:
        ids: int64 (nsamples, seqlen) token ids.
    Returns:
        float32 (in, in) on the head's input device.
    """
    head = model.get_submodule(head_name)
    total: list[torch.Tensor] = []
    count = 0

    def capture(module, args):
        nonlocal count
        x = args[0].reshape(-1, args[0].shape[-1]).to(torch.float32)
        if not total:
            total.append(torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device))
        total[0].addmm_(x.T, x)
        count += x.shape[0]
        raise _HeadReached

    device = model.get_input_embeddings().weight.device
    handle = head.register_forward_pre_hook(capture)
    try:
        with torch.inference_mode():
            for row in ids:
                try:
                    model(input_ids=row[None].to(device), use_cache=False)
                except _HeadReached:
                    pass
    finally:
        handle.remove()
    if not count:
        raise ValueError(f"the forward never reached the output head {head_name}: cannot calibrate its rounding.")
    return total[0] / count


def gptq_rows(weight: torch.Tensor, covariance: torch.Tensor, group_size: int, symmetric: bool,
              chunk: int = 32768):
    """GPTQ (OBS error feedback, ``solvers.sparsegpt.obs_compress``) of ``weight`` (rows, cols) on the INT4 group
    grid for inputs of covariance (cols, cols): lowers ‖(W − Θ) C^{1/2}‖², the head's output error. Rows are
    independent given C, so they are done ``chunk`` at a time (bounded memory, same result).

    Returns (codes uint8 (rows, cols), scales float32 (rows, groups), zeros float32 (rows, groups) or None).
    """
    from .solvers import CompressionSpec
    from .solvers.sparsegpt import obs_compress

    spec = CompressionSpec(bits=4, group_size=group_size, symmetric=symmetric)
    parts = [obs_compress(rows.to(torch.float32), covariance.to(rows.device), spec)
             for rows in weight.detach().split(chunk)]
    zeros = None if symmetric else torch.cat([p.zeros for p in parts])
    return torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]), zeros


def compress_embeddings(model: nn.Module, group_size: int, symmetric: bool, pack: bool = True,
                        covariance: torch.Tensor | None = None,
                        shrinks: tuple[float, ...] = (1.0,)) -> dict[str, str]:
    """Round the input embedding and the output head of ``model`` to INT4 in place.

    The head's rows (the tied tensor, for a tied head) are rounded with GPTQ for its inputs' ``covariance``
    (:func:`head_covariance`) when given, else to nearest (:func:`round_rows`, also the untied embedding's).
    With ``pack`` the modules are replaced by ``AWPEmbedding`` / ``AWPTiedHead`` (tied) or an "int4"
    ``AWPLinear`` (untied head); without, the dense weights are overwritten with the grid values the packed
    modules would hold (a tied head stays tied). Returns the compressed module names -> "int4" (empty without
    ``pack``).
    """
    input_name, head_name, tied = check_embeddings(model, group_size)
    embedding = model.get_submodule(input_name)
    head = model.get_submodule(head_name) if head_name is not None and not tied else None

    def grid(weight, aware):
        if aware and covariance is not None:
            return gptq_rows(weight, covariance, group_size, symmetric)
        return round_rows(weight, group_size, symmetric, shrinks=shrinks)[1:]

    codes, scales, zeros = grid(embedding.weight, tied)
    packed = AWPEmbedding.from_parts(embedding, codes, scales, zeros, group_size=group_size, symmetric=symmetric)
    packed_head = None
    if head is not None:
        head_codes, head_scales, head_zeros = grid(head.weight, True)
        packed_head = AWPLinear.from_parts(
            FORMAT, dequantize_int4(head_codes, head_scales, head_zeros, torch.float32), codes=head_codes,
            scales=head_scales, zeros=head_zeros, group_size=group_size, symmetric=symmetric, bias=head.bias,
            dtype=head.weight.dtype)
    compressed: dict[str, str] = {}
    if not pack:
        with torch.no_grad():
            embedding.weight.copy_(packed.dequantize(torch.float32))
            if head is not None:
                head.weight.copy_(packed_head.dequantize(torch.float32))
        return compressed
    model.set_submodule(input_name, packed)
    compressed[input_name] = FORMAT
    if tied:
        model.set_submodule(head_name, AWPTiedHead(packed))
        _drop_tie(model, input_name, head_name)
        compressed[head_name] = FORMAT
    elif head is not None:
        model.set_submodule(head_name, packed_head)
        compressed[head_name] = FORMAT
    logger.info("embedding_bits=4: %s%s rounded to INT4 g%d (%s)", input_name,
                f" and {'the tied ' if tied else ''}{head_name}" if head_name else "", group_size,
                "GPTQ for the head's inputs" if covariance is not None else "round to nearest")
    return compressed


def swap_empty_embeddings(model: nn.Module, compressed_modules: dict[str, str], group_size: int) -> set[str]:
    """On load (model on meta): rebuild the embedding and the head listed in ``compressed_modules`` as empty
    ``AWPEmbedding`` and ``AWPTiedHead`` (tied) or "int4" ``AWPLinear`` (untied), on the grid of
    :data:`SYMMETRIC`; return the names handled."""
    input_name, head_name = embedding_names(model)
    if input_name not in compressed_modules:
        return set()
    tied = head_is_tied(model, input_name, head_name)
    embedding = AWPEmbedding.empty(model.get_submodule(input_name), group_size=group_size, symmetric=SYMMETRIC)
    model.set_submodule(input_name, embedding)
    handled = {input_name}
    if head_name in compressed_modules:
        if tied:
            model.set_submodule(head_name, AWPTiedHead(embedding))
            _drop_tie(model, input_name, head_name)
        else:
            head = model.get_submodule(head_name)
            model.set_submodule(head_name, AWPLinear.empty(
                FORMAT, head.in_features, head.out_features, head.bias is not None, group_size, SYMMETRIC,
                head.weight.dtype, device="meta"))
        handled.add(head_name)
    return handled


def dequantize_embeddings(model: nn.Module, dtype: torch.dtype | None = None) -> None:
    """Replace an ``AWPEmbedding`` (and the head tied to it) by dense modules holding the grid values:
    an ``nn.Embedding`` (times its embed_scale, for a scaled embedding) and an ``nn.Linear`` sharing its weight."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, AWPEmbedding):
            continue
        weight = module.dequantize(dtype)
        dense = ScaledEmbedding(module.num_embeddings, module.embedding_dim, module.padding_idx,
                                float(module.embed_scale), device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.weight.copy_(weight)
        model.set_submodule(name, dense)
        for head_name, head in list(model.named_modules()):
            if isinstance(head, AWPTiedHead) and head.embedding is module:
                linear = nn.Linear(module.embedding_dim, module.num_embeddings, bias=False, device="meta")
                linear.weight = dense.weight
                model.set_submodule(head_name, linear)


class ScaledEmbedding(nn.Embedding):
    """nn.Embedding whose lookups are multiplied by ``embed_scale`` rounded to the weight dtype (as
    transformers' scaled word embeddings do); what a dequantized scaled ``AWPEmbedding`` becomes."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, embed_scale: float = 1.0, **kwargs):
        super().__init__(num_embeddings, embedding_dim, padding_idx, **kwargs)
        self.scalar_embed_scale = embed_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = super().forward(input_ids)
        if self.scalar_embed_scale == 1.0:
            return rows
        return rows * torch.tensor(self.scalar_embed_scale, dtype=self.weight.dtype, device=rows.device)


__all__ = ["ScaledEmbedding", "check_embeddings", "compress_embeddings", "dequantize_embeddings",
           "embedding_names", "head_is_tied", "round_rows", "swap_empty_embeddings"]

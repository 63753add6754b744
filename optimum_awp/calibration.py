"""Calibration: find a causal LM's decoder blocks, capture their inputs, gather statistics, walk the blocks.

This is the one module that knows how transformers lays out a causal LM:

- ``decoder_of(model)``: the base model called without ``lm_head`` (``model.model`` for Llama, Gemma 3,
  Qwen, Mistral; ``model.model.decoder`` for OPT; ``model.transformer`` for GPT-2 style models).
- ``decoder_layers(model)``: its list of decoder blocks.
- ``capture_block_inputs``: the first block's hidden states and the arguments EVERY block receives.
  Gemma 3 gives sliding-window layers a different attention mask and rotary embeddings than full
  attention layers, so layer 0's keyword arguments cannot be reused for every layer.
- ``BlockStatistics`` (``statistics.py``): hooks on a block's ``nn.Linear`` modules accumulating C = X Xᵀ / n
  and mean |x|; linears fed the same input tensor (q/k/v, gate/up) share one statistic.
- ``walk_blocks``: the sequential walk. Each block sees the outputs of the blocks already compressed; with
  ``dense_targets`` the dense model's own inputs to every block are carried beside them, so that each linear
  can be fitted to the dense model's outputs (``InputStatistics.cross``).
- ``onloaded`` (``offload.py``): a block whose weights accelerate keeps elsewhere (big-model inference: ``device_map``,
  ``max_memory``, ``offload_folder``) is onloaded through its own ``AlignDevicesHook`` for the walk's step
  and written back to the hook's store (the CPU state dict or the ``offload_folder``) afterwards, so only
  one dense block is in memory at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .offload import onloaded
from .statistics import BlockStatistics, InputStatistics

logger = logging.getLogger(__name__)

LAYER_LIST_NAMES = ("layers", "h", "blocks", "block")


# --------------------------------------------------------------------------------------------------
# Architecture: where the decoder and its blocks are.
# --------------------------------------------------------------------------------------------------


def decoder_of(model: nn.Module) -> nn.Module:
    """The module mapping ``input_ids`` to the last hidden state, without ``lm_head``.

    Uses transformers' own ``get_decoder()`` (Llama, Gemma 3: ``model.model``; OPT:
    ``model.model.decoder``; GPT-2: ``model.transformer``); a model without it is its own decoder.
    """
    get_decoder = getattr(model, "get_decoder", None)
    return get_decoder() if callable(get_decoder) else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM, in order; ValueError when none can be found."""
    decoder = decoder_of(model)
    for name in LAYER_LIST_NAMES:
        layers = getattr(decoder, name, None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ValueError(
        f"Cannot find the decoder layers of {type(model).__name__}: {type(decoder).__name__} has none of "
        f"the attributes {LAYER_LIST_NAMES} holding an nn.ModuleList."
    )


def layers_prefix(model: nn.Module) -> str:
    """Qualified name of the block list inside ``model``, e.g. ``"model.layers"``."""
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ValueError(f"The decoder layers of {type(model).__name__} are not a submodule of the model.")


def block_linears(block: nn.Module, prefix: str = "") -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` in ``block`` by qualified name (``prefix.name``), in module order."""
    sep = "." if prefix else ""
    return {f"{prefix}{sep}{name}": m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


# --------------------------------------------------------------------------------------------------
# Capturing what every block receives.
# --------------------------------------------------------------------------------------------------


@dataclass
class BlockInputs:
    """What the decoder blocks receive during one pass over the calibration data.

    Attributes:
        hidden: per batch, the first block's input hidden states (batch, seq, hidden).
        calls: ``calls[layer][batch] = (args, kwargs)``: the positional arguments after the hidden
            states and the keyword arguments that block ``layer`` received (masks, position
            embeddings...). Equal tensors are stored once and shared between layers and batches.
        hidden_as_keyword: True when the model passes the hidden states as ``hidden_states=``.
    """

    hidden: list[torch.Tensor]
    calls: list[list[tuple[tuple, dict[str, Any]]]]
    hidden_as_keyword: bool = False

    @property
    def nbatches(self) -> int:
        return len(self.hidden)


class _Interner:
    """Returns one stored tensor per distinct value, so equal masks and rotary tables are kept once."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self._store: dict[tuple, list[torch.Tensor]] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._tensor(value)
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(self(v) for v in value)
        return value

    def _tensor(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach()
        if self.device is not None:
            value = value.to(self.device)
        bucket = self._store.setdefault((tuple(value.shape), value.dtype, value.device), [])
        for stored in bucket:
            if stored is value or torch.equal(stored, value):
                return stored
        bucket.append(value)
        return value


class _StopCapture(Exception):
    """Raised by the last block's hook: everything needed has been recorded."""


def _passthrough(*args: Any, **kwargs: Any) -> Any:
    """A block forward that returns its hidden states unchanged (blocks are skipped while capturing)."""
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> BlockInputs:
    """Run the embeddings of ``model`` over ``input_ids`` and record what every block receives.

    Every block's forward is replaced by an identity for the pass (nothing but the embeddings and the
    mask / rotary preparation runs) and a forward pre-hook with ``with_kwargs=True`` records each
    block's arguments. ``lm_head`` is never called.

    Args:
        model: a transformers causal LM (or its base model).
        input_ids: LongTensor (nsamples, seqlen).
        batch_size: samples per forward.
        device: where the captured tensors are stored; default the embeddings' device.
    Returns:
        BlockInputs with ``nsamples / batch_size`` batches (the last one may be smaller).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (nsamples, seqlen), got {tuple(input_ids.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    decoder = decoder_of(model)
    layers = decoder_layers(model)
    run_device = next(decoder.parameters()).device
    intern = _Interner(torch.device(device) if device is not None else None)
    hidden: list[torch.Tensor] = []
    calls: list[list[tuple[tuple, dict[str, Any]]]] = [[] for _ in layers]
    as_keyword = False
    last = len(layers) - 1

    def make_hook(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            nonlocal as_keyword
            kwargs = dict(kwargs)
            if args:
                states, rest = args[0], args[1:]
            else:
                states, rest, as_keyword = kwargs.pop("hidden_states"), (), True
            if index == 0:
                hidden.append(states.detach().to(intern.device or states.device))
            calls[index].append((intern(rest), intern(kwargs)))
            if index == last:
                raise _StopCapture

        return hook

    handles = [layer.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    # a forward set on the instance (accelerate's hooks wrap it so) is put back afterwards, not deleted
    own_forwards = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = _passthrough
    try:
        for batch in input_ids.split(batch_size):
            try:
                decoder(input_ids=batch.to(run_device), use_cache=False)
            except _StopCapture:
                pass
    finally:
        for handle in handles:
            handle.remove()
        for layer, forward in zip(layers, own_forwards):
            del layer.forward
            if forward is not None:
                layer.forward = forward
    return BlockInputs(hidden=hidden, calls=calls, hidden_as_keyword=as_keyword)


def run_block(block: nn.Module, hidden: torch.Tensor, call: tuple[tuple, dict], as_keyword: bool = False) -> torch.Tensor:
    """One block's output hidden states (batch, seq, hidden); tuple outputs give their first item."""
    args, kwargs = call
    out = block(*args, hidden_states=hidden, **kwargs) if as_keyword else block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


# --------------------------------------------------------------------------------------------------
# The sequential block walk.
# --------------------------------------------------------------------------------------------------

BlockSolver = Callable[[int, nn.Module, dict[str, InputStatistics]], bool]


@torch.no_grad()
def walk_blocks(
    model: nn.Module,
    inputs: BlockInputs,
    solve_block: BlockSolver,
    *,
    select: Callable[[str], bool] = lambda name: True,
    finish_block: Callable[[int, nn.Module], None] | None = None,
    stats_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = True,
    write_back: bool = True,
    dense_targets: bool = False,
) -> list[torch.Tensor]:
    """Walk the decoder blocks in order, compressing each one on the outputs of those before it.

    For block i: run every calibration batch through it with statistics hooks on its selected
    linears, call ``solve_block(i, block, stats)`` (which writes compressed weights and returns True
    when it changed any), re-run the block when it did, so block i+1 sees compressed outputs, then
    call ``finish_block(i, block)`` (e.g. swap in packed modules). Only one block's hidden states
    (inputs and outputs) are held.

    With ``dense_targets`` the dense model's hidden states are carried beside the compressed ones (one more
    set of one block's hidden states): before each statistics forward of a batch, the still-dense block runs
    on the dense model's input for the same tokens, whose linear inputs X̃ give ``InputStatistics.cross`` =
    X̃ Xᵀ / n, and whose output is the next block's dense input. In the first block, and as long as no block
    before has changed, the two streams are one and ``cross`` is None (it would equal C).

    Args:
        model: the causal LM whose blocks ``inputs`` was captured from.
        inputs: BlockInputs from ``capture_block_inputs``; its ``hidden`` is consumed.
        solve_block: (block index, block, qualified name -> InputStatistics) -> changed.
        select: which linears (qualified names, e.g. "model.layers.3.mlp.up_proj") get statistics.
        finish_block: called after the block's outputs are final.
        stats_dtype: torch.float32 or torch.float64 accumulation.
        device: where each block runs; it is moved back to its own device afterwards.
        progress: one tqdm bar, one step per block.
        write_back: for blocks accelerate offloads (``onloaded``): write the block's tensors back to the
            offload store after its step (False: the store keeps the dense weights, e.g. when every
            compressed linear is replaced by a packed module held in memory).
        dense_targets: carry the dense model's hidden states and pair them into ``InputStatistics.cross``.
    Returns:
        The last block's outputs, per batch (batch, seq, hidden).

    Blocks whose weights accelerate offloads (a model loaded with ``device_map``/``max_memory``/
    ``offload_folder``) are onloaded one at a time through their hooks (``onloaded``); ``device`` then
    overrides the hooks' execution device.
    """
    layers = decoder_layers(model)
    prefix = layers_prefix(model)
    hidden = inputs.hidden
    dense = hidden if dense_targets else None  # the same list while the two streams are one
    bar = tqdm(layers, desc="Compressing blocks", unit="block", disable=not progress)
    for index, block in enumerate(bar):
        with onloaded(block, device, write_back=write_back) as offloaded:
            hidden, dense = _walk_step(index, block, hidden, dense, inputs, solve_block, select, finish_block,
                                       stats_dtype, None if offloaded else device, prefix)
    inputs.hidden = []
    return hidden


def _walk_step(index: int, block: nn.Module, hidden: list[torch.Tensor], dense: list[torch.Tensor] | None,
               inputs: BlockInputs, solve_block: BlockSolver, select: Callable[[str], bool],
               finish_block: Callable[[int, nn.Module], None] | None, stats_dtype: torch.dtype,
               device: torch.device | str | None, prefix: str) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """One block of ``walk_blocks``: statistics, solve, re-run, finish. Returns the block's outputs per batch, and
    the dense model's (the very same list while the streams are one; None without dense targets)."""
    home = next(block.parameters()).device
    if device is not None:
        block.to(device)
    calls, as_keyword = inputs.calls[index], inputs.hidden_as_keyword
    linears = {n: m for n, m in block_linears(block, f"{prefix}.{index}").items() if select(n)}
    paired = dense is not None and dense is not hidden
    outputs = dense_outputs = None
    changed = False
    if linears:
        with BlockStatistics(block, linears, stats_dtype, paired=paired) as gather:
            if paired:
                outputs, dense_outputs = [], []
                for h, d, call in zip(hidden, dense, calls):
                    with gather.recording():
                        dense_outputs.append(run_block(block, d, call, as_keyword))
                    outputs.append(run_block(block, h, call, as_keyword))
            else:
                outputs = _run_all(block, hidden, calls, as_keyword)
        stats = gather.stats()
        del gather
        if dense is not None and not paired:
            dense_outputs = outputs  # the dense block on the shared input: the dense model's output
        changed = solve_block(index, block, stats)
        del stats
    if outputs is None or changed:
        outputs = None
        outputs = _run_all(block, hidden, calls, as_keyword)
    if dense is not None and dense_outputs is None:  # nothing solved here: the dense stream passes the block too
        dense_outputs = outputs if dense is hidden else _run_all(block, dense, calls, as_keyword)
    if finish_block is not None:
        finish_block(index, block)
    if device is not None:
        block.to(home)
    return outputs, dense_outputs


def _run_all(block: nn.Module, hidden: list[torch.Tensor], calls: list, as_keyword: bool) -> list[torch.Tensor]:
    """The block's outputs for every batch."""
    return [run_block(block, h, call, as_keyword) for h, call in zip(hidden, calls)]

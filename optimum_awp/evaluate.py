"""Perplexity, following the Wanda/SparseGPT protocol, and model loading.

Protocol: the evaluation text is joined with ``"\\n\\n"`` and tokenized once (no special tokens),
then cut into non-overlapping windows; the result is ``exp`` of the mean token negative
log-likelihood (natural log) over every scored token of every window.

Windows and BOS: when a BOS token is used (by default whenever the tokenizer defines one; Gemma
needs it), each window is ``[BOS] + (seqlen - 1)`` consecutive text tokens, and all ``seqlen - 1``
text tokens are scored (the first one is predicted from BOS alone; BOS itself is never a target).
Without BOS a window is ``seqlen`` text tokens and the ``seqlen - 1`` tokens after the first are
scored, exactly as ``model(input_ids, labels=input_ids).loss`` does. The trailing text shorter than a
window is dropped.

Memory: logits are never materialized for a whole window (2048 positions x 262k vocab in float32 is
2.1 GB); the base model gives the final hidden states and the output head is applied to chunks of
positions, with the final logit soft-capping of models that use it (Gemma-2). A tiny forward of
the full model checks once per call that this path reproduces the model's own logits, and falls
back to full logits otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import DEFAULT_SOURCE, bos_windows, embedded_model, eval_tokens
from .nn import AWPLinear
from .nn.embedding import AWPEmbedding, AWPTiedHead

logger = logging.getLogger(__name__)

__all__ = ["PerplexityResult", "checkpoint_bytes", "generation_speed", "interleaved_decode_speed",
           "load_model", "model_sizes", "perplexity", "perplexity_of_tokens", "resolve_dtype", "timed_generation"]

# Floats of logits computed at once: 2**26 float32 = 256 MiB (256 positions of a 262k vocabulary).
LOGIT_CHUNK_ELEMENTS = 2**26
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of a model on a token stream.

    Attributes:
        ppl: ``exp(nll)``.
        nll: mean negative log-likelihood per scored token, in nats.
        tokens: number of scored tokens.
        windows: number of windows evaluated.
        seqlen: window length in tokens, BOS included.
        seconds: wall-clock time of the evaluation.
    """

    ppl: float
    nll: float
    tokens: int
    windows: int
    seqlen: int
    seconds: float


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``None`` and ``torch.dtype`` pass through."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _check_window_args(model, seqlen: int, nwindows: int | None, batch_size: int) -> None:
    """Raise ValueError for window settings that cannot work, before any expensive step."""
    if not isinstance(seqlen, int) or seqlen <= 1:
        raise ValueError(f"seqlen={seqlen!r} must be an integer > 1")
    context = _context_length(model)
    if context is not None and seqlen > context:
        raise ValueError(f"seqlen={seqlen} exceeds the model's context (max_position_embeddings={context})")
    if nwindows is not None and (not isinstance(nwindows, int) or nwindows < 1):
        raise ValueError(f"nwindows={nwindows!r} must be a positive integer, or None for every window")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")


def make_windows(tokens: torch.Tensor, seqlen: int, bos_token_id: int | None, nwindows: int | None = None) -> torch.Tensor:
    """Cut a token stream into non-overlapping evaluation windows.

    Args:
        tokens: int64 (n_tokens,), the text without BOS.
        seqlen: window length, BOS included.
        bos_token_id: prepended to every window when not None.
        nwindows: at most this many windows (the first ones); None for all.

    Returns:
        int64 (windows, seqlen).
    """
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    body = seqlen - 1 if bos_token_id is not None else seqlen
    available = tokens.numel() // body
    if available == 0:
        raise ValueError(
            f"the text has {tokens.numel()} tokens, too short for one window of seqlen={seqlen} "
            f"({body} text tokens); lower seqlen or give more text"
        )
    count = available if nwindows is None else min(nwindows, available)
    if nwindows is not None and nwindows > available:
        logger.warning("nwindows=%d asked, but the text holds only %d windows of %d tokens", nwindows, available, seqlen)
    return bos_windows(tokens, torch.arange(count) * body, body, bos_token_id)


def _final_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The output head on hidden states (..., hidden) -> logits (..., vocab), soft-capped if configured."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states (batch, seqlen, hidden) of the base model."""
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state


def _head_path_matches(model, input_ids: torch.Tensor) -> bool:
    """Whether base model + output head reproduces ``model(input_ids).logits`` on a short prefix."""
    if model.base_model is model or model.get_output_embeddings() is None:
        return False
    prefix = input_ids[:1, : min(16, input_ids.shape[1])]
    reference = model(input_ids=prefix, use_cache=False).logits.float()
    ours = _final_logits(model, _hidden_states(model, prefix)).float()
    tolerance = 1e-3 if reference.dtype == torch.float32 and ours.dtype == torch.float32 else 5e-2
    scale = reference.abs().max().clamp_min(1.0)
    return reference.shape == ours.shape and bool(((reference - ours).abs().max() / scale) <= tolerance)


def _window_nll_sum(model, input_ids: torch.Tensor, use_head: bool) -> tuple[float, int]:
    """Summed NLL (nats, float64) of the targets ``input_ids[:, 1:]`` of a batch, and their count.

    Args:
        input_ids: int64 (batch, seqlen); position ``t`` predicts token ``t + 1``.
        use_head: base model + chunked output head (memory-light) instead of full logits.
    """
    targets = input_ids[:, 1:]
    if use_head:
        hidden = _hidden_states(model, input_ids)[:, :-1]  # (batch, seqlen - 1, hidden)
        hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        vocab = model.config.get_text_config().vocab_size
        chunk = max(1, LOGIT_CHUNK_ELEMENTS // vocab)
        total = 0.0
        for start in range(0, hidden.shape[0], chunk):
            logits = _final_logits(model, hidden[start : start + chunk]).float()
            total += F.cross_entropy(logits, flat_targets[start : start + chunk], reduction="sum").double().item()
    else:
        logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").double().item()
    return total, targets.numel()


@contextlib.contextmanager
def _head_dequantized_once(model):
    """While evaluating, a compressed output head keeps its dequantized weight (``AWPLinear.cache_dense``) instead
    of dequantizing it at every chunk of logits: the same values (the reference kernel dequantizes to the same
    dense weight), once per evaluation instead of twice per window. A 262k x 640 INT4 head (Gemma-3-270M) costs
    ~0.8 s per dequantization on 2 cores. The copy is dropped afterwards; decoding is unaffected."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, AWPLinear) or head.cache_dense is not None:
        yield
        return
    head.cache_dense = True
    try:
        yield
    finally:
        head.cache_dense = None
        head.invalidate_kernel_cache()


def perplexity_of_tokens(
    model,
    tokens: torch.Tensor,
    seqlen: int,
    bos_token_id: int | None = None,
    *,
    nwindows: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on a token stream cut into windows (see the module docstring).

    Args:
        model: a causal LM (``PreTrainedModel`` with an output head).
        tokens: int64 (n_tokens,), the tokenized text, without BOS.
        seqlen: window length in tokens, BOS included; 1 < seqlen <= max_position_embeddings.
        bos_token_id: prepended to each window when not None.
        nwindows: evaluate at most this many windows (the first ones); None for all.
        batch_size: windows per forward pass.
        device: where the windows are sent (the model must be there already); None uses the
            device of the model's parameters.
        progress: show a tqdm bar.
    """
    _check_window_args(model, seqlen, nwindows, batch_size)
    windows = make_windows(tokens, seqlen, bos_token_id, nwindows)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()

    started = time.perf_counter()
    nll_sum, count = 0.0, 0
    with torch.inference_mode(), _head_dequantized_once(model):
        use_head = _head_path_matches(model, windows[:1].to(device))
        if not use_head:
            logger.warning("chunked output head does not reproduce the model's logits; computing full logits")
        batches = range(0, windows.shape[0], batch_size)
        for start in tqdm(batches, desc=f"perplexity (seqlen {seqlen})", unit="batch", disable=not progress):
            batch = windows[start : start + batch_size].to(device)
            batch_sum, batch_count = _window_nll_sum(model, batch, use_head)
            nll_sum, count = nll_sum + batch_sum, count + batch_count
    seconds = time.perf_counter() - started

    nll = nll_sum / count
    result = PerplexityResult(
        ppl=math.exp(nll), nll=nll, tokens=count, windows=windows.shape[0], seqlen=seqlen, seconds=seconds
    )
    logger.info("perplexity %.4f over %d tokens in %d windows (%.1f s)", result.ppl, count, result.windows, seconds)
    return result


def perplexity(
    model,
    tokenizer,
    source: str | os.PathLike | list[str] = DEFAULT_SOURCE,
    *,
    seqlen: int = 2048,
    nwindows: int | None = None,
    batch_size: int = 1,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    add_bos: bool | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on the evaluation text of ``source`` (see the module docstring).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        source: a text source name, a text file or a list of strings (see ``optimum_awp.data``).
        seqlen: window length in tokens, BOS included.
        nwindows: at most this many windows; None for all.
        batch_size: windows per forward pass.
        dtype: cast the model to this dtype first (in place, as ``model.to`` does); None keeps it.
        device: move the model there first (in place); None keeps it where it is.
        add_bos: prepend BOS to each window; None does so when the tokenizer defines a BOS token.
        progress: show a tqdm bar.
    """
    _check_window_args(model, seqlen, nwindows, batch_size)
    dtype = resolve_dtype(dtype)
    bos = tokenizer.bos_token_id if add_bos in (None, True) else None
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer defines no BOS token")
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    tokens = eval_tokens(tokenizer, source)
    return perplexity_of_tokens(
        model, tokens, seqlen, bos, nwindows=nwindows, batch_size=batch_size, device=device, progress=progress
    )


def load_model(
    name_or_path: str | os.PathLike | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
):
    """Load a causal LM and its tokenizer for evaluation.

    Args:
        name_or_path: a local checkpoint folder or a Hub id; None is the embedded Gemma-3-270M
            (dequantized GGUF, see ``optimum_awp.data.embedded_model``).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype; None keeps the
            checkpoint's dtype.
        device: where to put the model; None leaves it on the CPU.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype)
    path = embedded_model() if name_or_path is None else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model {os.fspath(path)!r} could not be loaded: it is neither a local checkpoint folder nor a "
            f"reachable Hub id ({type(err).__name__}: {err})"
        ) from err
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


# --------------------------------------------------------------------------------------------------
# Size and speed.
# --------------------------------------------------------------------------------------------------


def _unique_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter and persistent buffer of ``model`` once (tied weights counted once)."""
    seen, tensors = set(), []
    for tensor in model.state_dict(keep_vars=True).values():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape)) if tensor.device.type != "meta" else id(tensor)
        if key not in seen:
            seen.add(key)
            tensors.append(tensor)
    return tensors


def model_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of the weights as stored now ("compressed") and as a dense model would store them ("dense").

    The dense figure counts each ``AWPLinear`` weight as (out, in) and an INT4 embedding as (vocab, dim) in the
    model dtype (a head tied to the embedding is the embedding's tensor: counted once); everything else (norms,
    biases, dense linears) counts as stored. "linears_dense" and "linears_compressed" are the same two figures
    for the ``AWPLinear`` weights alone.
    """
    compressed = sum(t.numel() * t.element_size() for t in _unique_tensors(model))
    linears_dense = linears_compressed = embeddings_dense = embeddings_compressed = 0
    for module in model.modules():
        itemsize = torch.empty((), dtype=module.dtype).element_size() if hasattr(module, "packed_buffers") else 0
        if isinstance(module, AWPTiedHead):
            continue
        if isinstance(module, AWPLinear):
            linears_dense += module.in_features * module.out_features * itemsize
            linears_compressed += module.weight_bytes()
        elif isinstance(module, AWPEmbedding):
            embeddings_dense += module.num_embeddings * module.embedding_dim * itemsize
            embeddings_compressed += module.weight_bytes()
    dense = compressed + linears_dense - linears_compressed + embeddings_dense - embeddings_compressed
    return {"dense": dense, "compressed": compressed, "linears_dense": linears_dense,
            "linears_compressed": linears_compressed}


def checkpoint_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes of the safetensors files of a local checkpoint folder; None when it is not a local folder with any."""
    from pathlib import Path

    path = Path(folder)
    files = list(path.glob("*.safetensors")) if path.is_dir() else []
    return sum(f.stat().st_size for f in files) if files else None


def generation_speed(model, prompt: torch.Tensor, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of ``model`` on ``prompt`` (1, tokens): medians over ``repeats``
    greedy generations of ``new_tokens`` (after one warm-up forward, which builds the kernel layouts)."""
    import statistics

    with torch.inference_mode():
        model(prompt)
    runs = [timed_generation(model, prompt, new_tokens) for _ in range(repeats)]
    return statistics.median(prompt.shape[1] / r[0] for r in runs), statistics.median(r[1] for r in runs)


def timed_generation(model, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) of one forward on ``prompt`` (1, tokens) and one greedy generation of
    ``new_tokens``: decode time is the generation's time less that prefill."""
    with torch.inference_mode():
        start = time.perf_counter()
        model(prompt)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        seconds = time.perf_counter() - start - prefill
    return prefill, (out.shape[1] - prompt.shape[1]) / max(seconds, 1e-9)


def interleaved_decode_speed(models: dict, prompt: torch.Tensor, new_tokens: int, repeats: int
                             ) -> tuple[dict[str, float], tuple[float, float]]:
    """Best-of-``repeats`` greedy decode tokens/s of each model, the models taking turns in every round (so a
    change of machine load hits them alike), after one warm-up generation each (kernel layouts are built on the
    first forward). Returns ({name: tokens/s}, (1-minute load average before, after))."""
    before = os.getloadavg()[0]
    for model in models.values():
        timed_generation(model, prompt, 2)
    best = {name: 0.0 for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            best[name] = max(best[name], timed_generation(model, prompt, new_tokens)[1])
    return best, (before, os.getloadavg()[0])

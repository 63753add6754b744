"""Tokens: text tokenized once, evaluation tokens, calibration samples, and the one BOS-window cutter."""

from __future__ import annotations

import logging
import os

import torch

from .sources import DEFAULT_SOURCE, describe_source, load_text

logger = logging.getLogger(__name__)


def bos_windows(tokens: torch.Tensor, starts: torch.Tensor, body: int, bos_token_id: int | None) -> torch.Tensor:
    """Windows of ``tokens`` (n_tokens,) of ``body`` tokens at ``starts`` (count,), each prefixed with
    ``bos_token_id`` when it is not None: int64 (count, body [+ 1])."""
    windows = tokens[starts[:, None] + torch.arange(body)]
    if bos_token_id is not None:
        windows = torch.cat([torch.full((starts.numel(), 1), bos_token_id, dtype=tokens.dtype), windows], dim=1)
    return windows


def tokenize_text(tokenizer, texts: list[str]) -> torch.Tensor:
    """``"\\n\\n".join(texts)`` tokenized once, without special tokens.

    Returns:
        int64 tensor of shape (n_tokens,).
    """
    encoded = tokenizer("\n\n".join(texts), add_special_tokens=False, return_attention_mask=False, verbose=False)
    return torch.tensor(encoded["input_ids"], dtype=torch.long)


def eval_tokens(tokenizer, source: str | os.PathLike | list[str] = DEFAULT_SOURCE) -> torch.Tensor:
    """The evaluation text of ``source``, joined with ``"\\n\\n"`` and tokenized once, without BOS.

    Returns:
        int64 tensor of shape (n_tokens,).
    """
    return tokenize_text(tokenizer, load_text(source, "eval"))


def calibration_samples(
    tokenizer,
    source: str | os.PathLike | list[str] = DEFAULT_SOURCE,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
) -> torch.Tensor:
    """Random windows of the calibration text (the Wanda/SparseGPT protocol).

    The calibration text is joined with ``"\\n\\n"`` and tokenized once; each sample is a window at a
    uniformly random start (``torch.Generator`` seeded with ``seed``). When the tokenizer defines a
    BOS token, every sample is ``[BOS] + (seqlen - 1)`` text tokens, else ``seqlen`` text tokens.

    Returns:
        int64 tensor of shape (nsamples, seqlen), identical for identical arguments.
    """
    if not isinstance(nsamples, int) or nsamples < 1:
        raise ValueError(f"nsamples={nsamples!r} must be a positive integer")
    bos = tokenizer.bos_token_id
    min_seqlen = 2 if bos is not None else 1
    if not isinstance(seqlen, int) or seqlen < min_seqlen:
        raise ValueError(f"seqlen={seqlen!r} must be an integer >= {min_seqlen}")

    ids = tokenize_text(tokenizer, load_text(source, "calibration"))
    body = seqlen - 1 if bos is not None else seqlen
    if ids.numel() < body:
        raise ValueError(
            f"the calibration text of {describe_source(source)} has {ids.numel()} tokens, fewer than the "
            f"{body} one sample of seqlen={seqlen} needs; lower seqlen or give more text"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - body + 1, (nsamples,), generator=generator)
    samples = bos_windows(ids, starts, body, bos)
    logger.info(
        "%d calibration samples of %d tokens from %s (%d tokens)", nsamples, seqlen, describe_source(source), ids.numel()
    )
    return samples

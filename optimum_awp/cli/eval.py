"""``optimum-awp eval [MODEL]``: the perplexity of a model (Wanda/SparseGPT protocol)."""

from __future__ import annotations

import argparse
import time

from .arguments import (
    add_evaluation_arguments,
    add_progress_argument,
    add_runtime_arguments,
    add_text_argument,
    apply_threads,
    describe_model,
    eval_kwargs,
    print_settings,
)  # fmt: skip
from .registry import register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", default=None,
        help="local checkpoint folder or Hub id (default: the embedded Gemma-3-270M, dequantized GGUF)",
    )  # fmt: skip
    add_text_argument(parser)
    add_evaluation_arguments(parser, seqlen=2048, nwindows=None)
    add_progress_argument(parser)
    add_runtime_arguments(parser)


@register_command("eval", "perplexity of a model (Wanda/SparseGPT protocol)", add_arguments)
def run_eval(args: argparse.Namespace) -> int:
    """Load the model, print the settings, evaluate perplexity and print it."""
    import torch

    from ..data import describe_source
    from ..evaluate import load_model, perplexity

    apply_threads(args)
    print_settings({"model": describe_model(args.model)})
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    bos = tokenizer.bos_token if args.add_bos and tokenizer.bos_token_id is not None else None
    print_settings({
        "loaded in": f"{time.perf_counter() - started:.1f} s",
        "text": f"{describe_source(args.dataset)}, evaluation part",
        "windows": f"up to {args.nwindows or 'all'} x {args.seqlen} tokens, "
        + (f"{bos} prepended to each" if bos else "no BOS"),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
    })  # fmt: skip
    result = perplexity(model, tokenizer, args.dataset, **eval_kwargs(args))
    print(
        f"perplexity: {result.ppl:.4f}  (nll {result.nll:.4f} nats/token over {result.tokens:,} tokens, "
        f"{result.windows} windows of {result.seqlen}, {result.seconds:.1f} s)"
    )
    return 0

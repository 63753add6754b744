"""``optimum-awp eval [MODEL]``: the perplexity of a model (Wanda/SparseGPT protocol)."""

from __future__ import annotations

import argparse
import time

from . import arguments
from .registry import register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_model_argument(parser, "local checkpoint")
    arguments.add_text_argument(parser)
    arguments.add_evaluation_arguments(parser, seqlen=2048, nwindows=None)
    arguments.add_progress_argument(parser)
    arguments.add_runtime_arguments(parser)


@register_command("eval", "perplexity of a model (Wanda/SparseGPT protocol)", add_arguments)
def run_eval(args: argparse.Namespace) -> int:
    """Load the model, print the settings, evaluate perplexity and print it."""
    import torch

    from ..data import describe_source
    from ..evaluate import load_model, perplexity

    arguments.apply_threads(args)
    arguments.print_settings({"model": arguments.describe_model(args.model)})
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    bos = tokenizer.bos_token if args.add_bos and tokenizer.bos_token_id is not None else None
    arguments.print_settings({
        "loaded in": f"{time.perf_counter() - started:.1f} s",
        "text": f"{describe_source(args.dataset)}, evaluation part",
        "windows": f"up to {args.nwindows or 'all'} x {args.seqlen} tokens, "
        + (f"{bos} prepended to each" if bos else "no BOS"),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
    })  # fmt: skip
    result = perplexity(model, tokenizer, args.dataset, **arguments.eval_kwargs(args))
    print(
        f"perplexity: {result.ppl:.4f}  (nll {result.nll:.4f} nats/token over {result.tokens:,} tokens, "
        f"{result.windows} windows of {result.seqlen}, {result.seconds:.1f} s)"
    )
    return 0

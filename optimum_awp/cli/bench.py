"""``optimum-awp bench [MODEL]``: bytes on disk and in memory, perplexity, prefill and decode tokens/s."""

from __future__ import annotations

import argparse

from . import arguments
from .registry import register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_model_argument(parser, "checkpoint (compressed or dense)")
    arguments.add_text_argument(parser)
    arguments.add_evaluation_arguments(parser, seqlen=512, nwindows=16)
    parser.add_argument("--no-ppl", dest="ppl", action="store_false", help="skip the perplexity")
    speed = arguments.add_speed_arguments(parser, 64, 3, "speed runs; the median is reported")
    speed.add_argument("--prompt-tokens", type=arguments.positive_int, default=128,
                       help="prompt length for the speed runs (default: %(default)s)")
    arguments.add_progress_argument(parser)
    arguments.add_runtime_arguments(parser)


@register_command("bench", "size, perplexity and generation speed of a checkpoint", add_arguments)
def run_bench(args: argparse.Namespace) -> int:
    import torch

    from ..config import AWPConfig
    from ..data import embedded_model
    from ..evaluate import (
        checkpoint_bytes,
        generation_speed,
        load_model,
        model_sizes,
        perplexity,
    )
    from ..hub import config_summary

    arguments.apply_threads(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    quant = getattr(model.config, "quantization_config", None)
    sizes = model_sizes(model)
    on_disk = checkpoint_bytes(embedded_model() if args.model is None else args.model)
    arguments.print_settings({
        "model": arguments.describe_model(args.model),
        "format": f"{config_summary(model)}, {len(quant.compressed_modules or {})} packed linears"
        if isinstance(quant, AWPConfig) else "dense (not compressed by optimum-awp)",
        "on disk": f"{on_disk / 2**20:.2f} MiB" if on_disk is not None else "(not a local folder)",
        "weights": f"{sizes['compressed'] / 2**20:.2f} MiB in memory ({sizes['compressed'] / sizes['dense']:.1%} "
                   f"of {sizes['dense'] / 2**20:.2f} MiB dense)",
        "threads": torch.get_num_threads(),
    })  # fmt: skip
    if args.ppl:
        result = perplexity(model, tokenizer, args.dataset, **arguments.eval_kwargs(args))
        print(f"perplexity: {result.ppl:.4f} ({result.tokens:,} tokens, {result.windows} windows of {result.seqlen})")
    prompt = arguments.prompt_ids(
        tokenizer, args.dataset, args.prompt_tokens, args.add_bos, next(model.parameters()).device
    )
    prefill, decode = generation_speed(model, prompt, args.new_tokens, args.repeats)
    print(
        f"speed: prefill {prefill:,.1f} tokens/s ({prompt.shape[1]}-token prompt), "
        f"decode {decode:,.1f} tokens/s (batch 1, {args.new_tokens} greedy tokens, median of {args.repeats})"
    )
    return 0

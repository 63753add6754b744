"""``optimum-awp compress [MODEL] -o DIR``: validate, load, (evaluate,) compress, (evaluate,) save, (push)."""

from __future__ import annotations

import argparse

from . import arguments
from .registry import register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_model_argument(parser, "dense checkpoint")
    parser.add_argument("-o", "--output", required=True, help="folder for the compressed checkpoint")
    arguments.add_text_argument(parser)
    arguments.add_compression_arguments(parser)
    check = parser.add_argument_group("evaluation before and after (written to the model card)")
    check.add_argument("--eval", action="store_true", help="measure perplexity before and after compression")
    check.add_argument("--eval-dataset", default=None, help="evaluation text (default: --dataset's evaluation part)")
    arguments.add_evaluation_arguments(parser, seqlen=2048, nwindows=None)
    share = parser.add_argument_group("sharing")
    share.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        default=None,
        help="also upload the checkpoint and its card to this Hub repo",
    )
    share.add_argument("--private", action="store_true", help="create the Hub repo private")
    arguments.add_progress_argument(parser)
    arguments.add_runtime_arguments(parser)


@register_command("compress", "compress a causal LM (pruning, INT4) and save it, optionally to the Hub", add_arguments)
def run_compress(args: argparse.Namespace) -> int:
    from ..compress import compress
    from ..data import EMBEDDED_MODEL_DESCRIPTION, describe_source
    from ..evaluate import load_model, model_sizes, perplexity
    from ..hub import push_to_hub, save_pretrained

    config = arguments.config_from_args(args)  # validated before anything is loaded
    arguments.check_before_work(args)
    arguments.apply_threads(args)
    arguments.print_settings(
        {
            "model": arguments.describe_model(args.model),
            "method": f"{config.method}, sparsity={config.sparsity}, "
            f"bits={config.bits}, group_size={config.group_size}, symmetric={config.symmetric}",
            "options": ", ".join(f"{k}={v}" for k, v in config.options.items()) or "-",
            "calibrate": f"{config.nsamples} x {config.seqlen} tokens of {describe_source(args.dataset)}",
        }
    )
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    eval_source = args.eval_dataset or args.dataset
    before = perplexity(model, tokenizer, eval_source, **arguments.eval_kwargs(args)) if args.eval else None
    if before is not None:
        print(f"dense perplexity: {before.ppl:.4f} ({before.tokens:,} tokens)")
    report = compress(model, config, tokenizer=tokenizer, device=args.device, progress=args.progress)
    kept = f"; kept dense: {', '.join(report.skipped)}" if report.skipped else ""
    print(
        f"compressed {len(report.layers)} linears in {report.seconds:.1f} s "
        f"(mean relative layer objective {report.mean_objective:.5f}{kept})"
    )
    after = perplexity(model, tokenizer, eval_source, **arguments.eval_kwargs(args)) if args.eval else None
    if after is not None:
        print(f"compressed perplexity: {after.ppl:.4f}")
    card = {
        "base_model": args.model or EMBEDDED_MODEL_DESCRIPTION,
        "perplexity": {"before": before.ppl, "after": after.ppl} if args.eval else None,
        "eval_settings": {
            "text": f"{describe_source(eval_source)}, evaluation part",
            "seqlen": after.seqlen,
            "windows": after.windows,
            "tokens": after.tokens,
        }
        if args.eval
        else None,
        "calibration": describe_source(args.dataset),
    }
    folder = save_pretrained(model, args.output, tokenizer=tokenizer, **card)
    sizes = model_sizes(model)
    print(
        f"weights: {sizes['dense'] / 2**20:.1f} MiB dense -> {sizes['compressed'] / 2**20:.1f} MiB "
        f"({sizes['compressed'] / sizes['dense']:.1%}); saved to {folder}"
    )
    if args.push_to_hub:
        commit = push_to_hub(model, args.push_to_hub, tokenizer=tokenizer, private=args.private or None, **card)
        print(f"pushed to {args.push_to_hub}: {commit.commit_url}")
    return 0

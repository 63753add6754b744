"""``optimum-awp export DIR --format compressed-tensors -o OUT``."""

from __future__ import annotations

import argparse

from .registry import register_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="optimum-awp checkpoint folder or Hub id")
    parser.add_argument(
        "--format", choices=["compressed-tensors"], default="compressed-tensors",
        help="target layout: compressed-tensors' W4A16 pack-quantized, loadable by plain transformers "
        "with compressed-tensors and by vLLM (INT4 checkpoints only; default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", required=True, help="new folder for the export (must not hold files)")


@register_command("export", "convert an optimum-awp checkpoint for use without optimum-awp", add_arguments)
def run_export(args: argparse.Namespace) -> int:
    from ..export import export_compressed_tensors

    out = export_compressed_tensors(args.model, args.output)
    print(
        f"exported {args.model} as {args.format} to {out}; it loads with "
        f"AutoModelForCausalLM.from_pretrained({str(out)!r}) and compressed-tensors installed"
    )
    return 0

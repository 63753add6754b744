"""The ``optimum-awp`` command line (also ``python -m optimum_awp.cli``).

Subcommands live in a registry: write ``add_arguments(parser)`` and ``run(args) -> int``, and
register them with ``@register_command(name, help, add_arguments)``; :func:`build_parser` picks
them up. This module is the only one that prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "build_parser", "main", "register_command", "run_demo", "run_eval"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """A subcommand: ``add_arguments`` fills its parser, ``run`` executes it and returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register_command(
    name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorator registering ``run(args) -> int`` as the subcommand ``name``."""

    def decorator(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is already registered")
        COMMANDS[name] = Command(name=name, help=help, add_arguments=add_arguments, run=run)
        return run

    return decorator


# --------------------------------------------------------------------------------------------
# Shared arguments and helpers
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--dtype, --device, --threads: where and how the model runs."""
    from .evaluate import DTYPES

    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None,
        help="dtype to load the model in (default: the checkpoint's own; float32 for the embedded model)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="torch device to run on, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument(
        "--threads", type=_positive_int, default=None,
        help="CPU threads for torch (torch.set_num_threads; default: torch's choice)",
    )  # fmt: skip


def add_perplexity_arguments(parser: argparse.ArgumentParser, seqlen: int, nwindows: int | None) -> None:
    """--dataset, --seqlen, --nwindows, --batch-size, --no-bos, --no-progress."""
    from .data import DEFAULT_SOURCE, TEXT_SOURCES

    parser.add_argument(
        "--dataset", default=DEFAULT_SOURCE,
        help=f"evaluation text: one of {sorted(TEXT_SOURCES)} or the path of a UTF-8 text file "
        f"(default: {DEFAULT_SOURCE}, the offline Wikipedia (gensim sample))",
    )  # fmt: skip
    parser.add_argument(
        "--seqlen", type=_positive_int, default=seqlen,
        help=f"window length in tokens, BOS included (default: {seqlen})",
    )  # fmt: skip
    parser.add_argument(
        "--nwindows", type=_positive_int, default=nwindows,
        help="evaluate at most this many windows, the first ones "
        + (f"(default: {nwindows})" if nwindows else "(default: all the text holds)"),
    )  # fmt: skip
    parser.add_argument("--batch-size", type=_positive_int, default=1, help="windows per forward pass (default: 1)")
    parser.add_argument(
        "--no-bos", dest="add_bos", action="store_false",
        help="do not prepend the tokenizer's BOS token to each window (default: prepend it when defined)",
    )  # fmt: skip
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def _apply_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _describe_model(name_or_path: str | None) -> str:
    from .data import EMBEDDED_MODEL_DESCRIPTION, embedded_model

    if name_or_path is None:
        return f"embedded {EMBEDDED_MODEL_DESCRIPTION} = the dense baseline, at {embedded_model()}"
    return name_or_path


def _print_settings(rows: dict[str, object]) -> None:
    for key, value in rows.items():
        print(f"{key + ':':<11}{value}")


def _evaluate_and_report(args: argparse.Namespace, model_name: str | None) -> int:
    """Load ``model_name``, print the settings, evaluate perplexity and print it."""
    import torch

    from .data import describe_source
    from .evaluate import load_model, perplexity

    _apply_threads(args)
    _print_settings({"model": _describe_model(model_name)})
    started = time.perf_counter()
    model, tokenizer = load_model(model_name, dtype=args.dtype, device=args.device)
    bos = tokenizer.bos_token if args.add_bos and tokenizer.bos_token_id is not None else None
    _print_settings(
        {
            "loaded in": f"{time.perf_counter() - started:.1f} s",
            "text": f"{describe_source(args.dataset)}, evaluation part",
            "windows": f"up to {args.nwindows or 'all'} x {args.seqlen} tokens, "
            + (f"{bos} prepended to each" if bos else "no BOS"),
            "dtype": str(model.dtype).removeprefix("torch."),
            "device": str(next(model.parameters()).device),
            "threads": torch.get_num_threads(),
        }
    )
    result = perplexity(
        model, tokenizer, args.dataset, seqlen=args.seqlen, nwindows=args.nwindows,
        batch_size=args.batch_size, add_bos=None if args.add_bos else False, progress=args.progress,
    )  # fmt: skip
    print(
        f"perplexity: {result.ppl:.4f}  (nll {result.nll:.4f} nats/token over {result.tokens:,} tokens, "
        f"{result.windows} windows of {result.seqlen}, {result.seconds:.1f} s)"
    )
    return 0


# --------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", default=None,
        help="local checkpoint folder or Hub id (default: the embedded Gemma-3-270M, dequantized GGUF)",
    )  # fmt: skip
    add_perplexity_arguments(parser, seqlen=2048, nwindows=None)
    add_runtime_arguments(parser)


@register_command("eval", "perplexity of a model (Wanda/SparseGPT protocol)", _eval_arguments)
def run_eval(args: argparse.Namespace) -> int:
    """``optimum-awp eval [MODEL]``: print the settings and the perplexity."""
    return _evaluate_and_report(args, args.model)


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    add_perplexity_arguments(parser, seqlen=512, nwindows=32)
    add_runtime_arguments(parser)


def _prepare_demo_text() -> None:
    """Prepare the embedded text and print the sizes of its two parts."""
    from transformers import AutoTokenizer

    from .data import DEFAULT_SOURCE, SPLITS, describe_source, embedded_model, load_text, tokenize_text

    tokenizer = AutoTokenizer.from_pretrained(embedded_model())
    for split in SPLITS:
        texts = load_text(DEFAULT_SOURCE, split)
        tokens = tokenize_text(tokenizer, texts).numel()
        print(f"{describe_source(DEFAULT_SOURCE)}, {split} part: {len(texts)} articles, {tokens:,} tokens")


@register_command("demo", "the embedded defaults end to end: prepare model and text, evaluate", _demo_arguments)
def run_demo(args: argparse.Namespace) -> int:
    """``optimum-awp demo``: prepare the embedded model and text, then report the dense perplexity.

    Steps are plain calls so that compression can be slotted in between preparation and evaluation.
    """
    from .data import embedded_model

    started = time.perf_counter()
    print("== preparing the embedded model and text (converted once, then cached)")
    embedded_model()
    _prepare_demo_text()
    print(f"prepared in {time.perf_counter() - started:.1f} s")
    print("== dense perplexity")
    _evaluate_and_report(args, None)
    print(f"demo wall time: {time.perf_counter() - started:.1f} s")
    return 0


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="optimum-awp",
        description="Activation-aware weight pruning and INT4 quantization for Hugging Face transformers.",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of optimum_awp's messages (default: INFO)",
    )  # fmt: skip
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, help="what to do; `optimum-awp COMMAND --help` for its options"
    )
    for command in COMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("optimum_awp").setLevel(args.log_level)
    from .data import DatasetUnavailableError

    try:
        return args._run(args)
    except (ValueError, ImportError, FileNotFoundError, DatasetUnavailableError) as err:
        print(f"optimum-awp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

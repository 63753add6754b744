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
from pathlib import Path

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


DEMO_OUTPUT = "out/gemma-3-270m-awp-2of4-int4"
DEMO_PROMPTS = ("The history of the city begins", "In mathematics, a prime number is", "The river flows")


def _bits(text: str) -> int | None:
    """'4' or 'none' (keep floating-point values)."""
    if text.lower() in ("none", "0"):
        return None
    if text == "4":
        return 4
    raise argparse.ArgumentTypeError(f"{text!r} is not one of 4, none")


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import GROUP_SIZES, METHODS

    parser.add_argument(
        "--model", default=None,
        help="dense checkpoint folder or Hub id (default: the embedded Gemma-3-270M, dequantized GGUF)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", default=DEMO_OUTPUT, help="folder for the compressed checkpoint (default: %(default)s)")
    what = parser.add_argument_group("compression")
    what.add_argument("--method", choices=METHODS, default="awp", help="solver (default: %(default)s)")
    what.add_argument("--sparsity", type=_sparsity, default="2:4", help="'N:M' or a fraction pruned per row (default: %(default)s)")
    what.add_argument("--bits", type=_bits, default=4, help="4 for INT4 weights, or none (default: %(default)s)")
    what.add_argument("--group-size", type=int, choices=GROUP_SIZES, default=128, help="INT4 group size (default: %(default)s)")
    what.add_argument(
        "--nsamples", type=_positive_int, default=32,
        help="calibration sequences (default: %(default)s; the papers use 128 x 2048, which takes hours on a 2-core CPU)",
    )  # fmt: skip
    what.add_argument("--calib-seqlen", type=_positive_int, default=512, help="tokens per calibration sequence (default: %(default)s)")
    what.add_argument("--max-iterations", type=_positive_int, default=_config_default("max_iterations"), help="AWP iteration cap (default: %(default)s)")
    what.add_argument("--bf16-products", action="store_true", help="AWP iteration products in bfloat16 (faster on AVX512-BF16 CPUs and GPUs)")
    add_perplexity_arguments(parser, seqlen=512, nwindows=32)
    speed = parser.add_argument_group("speed")
    speed.add_argument("--new-tokens", type=_positive_int, default=32, help="greedy tokens per speed run and per sample (default: %(default)s)")
    speed.add_argument("--repeats", type=_positive_int, default=2, help="speed runs; the median is reported (default: %(default)s)")
    add_runtime_arguments(parser)


def _prepare_demo_text(model_path, source) -> None:
    """Prepare the text source and print the sizes of its two parts."""
    from transformers import AutoTokenizer

    from .data import SPLITS, describe_source, load_text, tokenize_text

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    for split in SPLITS:
        texts = load_text(source, split)
        tokens = tokenize_text(tokenizer, texts).numel()
        print(f"{describe_source(source)}, {split} part: {len(texts)} texts, {tokens:,} tokens")


def _measure(model, tokenizer, args, prompt) -> dict[str, float]:
    """Perplexity on the evaluation part and greedy decode speed of ``model``."""
    from .evaluate import perplexity

    result = perplexity(
        model, tokenizer, args.dataset, seqlen=args.seqlen, nwindows=args.nwindows, batch_size=args.batch_size,
        add_bos=None if args.add_bos else False, progress=args.progress,
    )  # fmt: skip
    _, decode = _speed(model, prompt, args.new_tokens, args.repeats)
    print(f"perplexity {result.ppl:.4f} over {result.tokens:,} tokens ({result.windows} windows of {result.seqlen}, "
          f"{result.seconds:.1f} s); decode {decode:.2f} tokens/s")
    return {"ppl": result.ppl, "eval_seconds": result.seconds, "decode": decode, "result": result}


def _demo_table(rows: list[dict[str, object]]) -> str:
    """A markdown table of the demo's figures, one row per model."""
    heads = ["model", "perplexity", "x dense", "block linears", "whole model", "on disk", "decode tokens/s", "time"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(h, "")) for h in heads) + " |")
    return "\n".join(lines)


def _short_label(config) -> str:
    """E.g. "awp 2:4 + INT4 g128", "wanda 50%", "rtn INT4 g128"."""
    parts = [config.method]
    if config.sparsity is not None:
        parts.append(config.sparsity if isinstance(config.sparsity, str) else f"{config.sparsity:.0%}")
    if config.bits:
        parts.append(("+ " if config.sparsity is not None else "") + f"INT{config.bits} g{config.group_size}")
    return " ".join(parts)


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


@register_command(
    "demo",
    "the main job on the embedded defaults: evaluate, compress (AWP 2:4 + INT4), evaluate, save, reload with pipeline",
    _demo_arguments,
)
def run_demo(args: argparse.Namespace) -> int:
    """``optimum-awp demo``: the whole product on the embedded Gemma-3-270M and Wikipedia (gensim sample).

    1. prepare the embedded model and text (converted once, then cached);
    2. dense perplexity and decode speed;
    3. compress with ``--method`` (AWP 2:4 + INT4 g128 by default) on the calibration part;
    4. compressed perplexity and speed, then save (packed tensors, model card) to ``--output``;
    5. reload the folder with ``pipeline("text-generation", ...)`` (nothing recompressed), check it
       generates the in-memory model's greedy tokens, and generate a few sentences;
    then print a table of perplexity, sizes, speed and times.
    """
    import torch
    from transformers import pipeline

    from .config import AWPConfig
    from .data import describe_source, embedded_model, eval_tokens
    from .evaluate import load_model
    from .hub import check_save_directory, config_summary, model_sizes
    from .nn import AWPLinear
    from .optimum import AWPOptimumQuantizer

    started = time.perf_counter()
    config = AWPConfig(  # validated before any work
        method=args.method, sparsity=args.sparsity, bits=args.bits, group_size=args.group_size,
        dataset=args.dataset, nsamples=args.nsamples, seqlen=args.calib_seqlen, max_iterations=args.max_iterations,
        bf16_products=args.bf16_products,
    )  # fmt: skip
    check_save_directory(args.output)
    _apply_threads(args)
    print("== 1/5 the model and the text (converted once, then cached)")
    model_path = args.model or embedded_model()
    _print_settings({"model": _describe_model(args.model)})
    _prepare_demo_text(model_path, args.dataset)
    model, tokenizer = load_model(model_path, dtype=args.dtype, device=args.device)
    bos = [tokenizer.bos_token_id] if args.add_bos and tokenizer.bos_token_id is not None else []
    text_ids = eval_tokens(tokenizer, args.dataset)[:128].tolist()
    prompt = torch.tensor([bos + text_ids], device=next(model.parameters()).device)
    print(f"prepared in {time.perf_counter() - started:.1f} s; {model.dtype}, {torch.get_num_threads()} threads")

    print("== 2/5 dense baseline")
    dense = _measure(model, tokenizer, args, prompt)
    dense_sizes = model_sizes(model)
    dense_dtype = str(model.dtype).removeprefix("torch.")

    print(f"== 3/5 compressing: {config.method}, sparsity {config.sparsity}, bits {config.bits}, group {config.group_size}; "
          f"calibration {config.nsamples} x {config.seqlen} tokens of {describe_source(args.dataset)}")
    quantizer = AWPOptimumQuantizer(model, tokenizer)
    report = quantizer.compress(config, progress=args.progress, device=args.device)
    print(f"compressed {len(report.layers)} linears in {report.seconds:.1f} s "
          f"(mean relative layer objective {report.mean_objective:.5f}); kept dense: {', '.join(report.skipped) or '-'}")

    print("== 4/5 compressed model, then save")
    after = _measure(model, tokenizer, args, prompt)
    sizes = model_sizes(model)
    eval_settings = {"text": f"{describe_source(args.dataset)}, evaluation part", "seqlen": after["result"].seqlen,
                     "windows": after["result"].windows, "tokens": after["result"].tokens}
    folder = quantizer.save(args.output, base_model=args.model or "google/gemma-3-270m (dequantized Q4_K_M GGUF)",
                            perplexity={"before": dense["ppl"], "after": after["ppl"]},
                            eval_settings=eval_settings, calibration=describe_source(args.dataset))
    on_disk = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    dense_on_disk = sum(f.stat().st_size for f in Path(model_path).glob("*.safetensors"))
    print(f"saved to {folder} ({_mib(on_disk)} of safetensors)")

    print(f"== 5/5 pipeline('text-generation', model={str(folder)!r}): rebuilt from the packed tensors")
    tic = time.perf_counter()
    generator = pipeline("text-generation", model=str(folder), device=args.device)
    packed = sum(isinstance(m, AWPLinear) for m in generator.model.modules())
    print(f"loaded in {time.perf_counter() - tic:.1f} s: {packed} packed linears ({config_summary(generator.model)})")
    greedy = dict(max_new_tokens=args.new_tokens, do_sample=False)
    with torch.inference_mode():
        expected = model.generate(**tokenizer(DEMO_PROMPTS[0], return_tensors="pt").to(prompt.device), **greedy)
    reloaded = generator(DEMO_PROMPTS[0], return_tensors=True, **greedy)[0]["generated_token_ids"]
    same = list(reloaded) == expected[0].tolist()
    print(f"greedy tokens of the reloaded model {'equal' if same else 'DIFFER FROM'} the in-memory model's")
    for text in DEMO_PROMPTS:
        print(f"  > {generator(text, **greedy)[0]['generated_text']!r}")

    rows = [
        {"model": f"dense ({dense_dtype})",
         "perplexity": f"{dense['ppl']:.3f}", "x dense": "1.00",
         "block linears": _mib(sizes["linears_dense"]), "whole model": _mib(dense_sizes["compressed"]),
         "on disk": _mib(dense_on_disk), "decode tokens/s": f"{dense['decode']:.2f}",
         "time": f"eval {dense['eval_seconds']:.0f} s"},
        {"model": _short_label(config), "perplexity": f"{after['ppl']:.3f}", "x dense": f"{after['ppl'] / dense['ppl']:.2f}",
         "block linears": f"{_mib(sizes['linears_compressed'])} ({sizes['linears_compressed'] / sizes['linears_dense']:.1%})",
         "whole model": f"{_mib(sizes['compressed'])} ({sizes['compressed'] / dense_sizes['compressed']:.1%})",
         "on disk": f"{_mib(on_disk)} ({on_disk / dense_on_disk:.1%})",
         "decode tokens/s": f"{after['decode']:.2f} ({after['decode'] / dense['decode']:.2f}x)",
         "time": f"compress {report.seconds:.0f} s, eval {after['eval_seconds']:.0f} s"},
    ]
    print()
    print(_demo_table(rows))
    print(f"\ndemo wall time: {time.perf_counter() - started:.1f} s; the checkpoint is in {folder}")
    return 0 if same else 1


# --------------------------------------------------------------------------------------------
# compress, export, bench (transformers integration: quantizer, hub, export)
# --------------------------------------------------------------------------------------------


def _config_default(name: str):
    """The AWPConfig default of field ``name`` (so the CLI defaults never drift from the config's)."""
    import dataclasses

    from .config import AWPConfig

    return next(f.default for f in dataclasses.fields(AWPConfig) if f.name == name)


def _sparsity(text: str) -> float | str:
    """'N:M' stays a string, 'none' is None; anything else must be a fraction."""
    if text.lower() == "none":
        return None
    if ":" in text:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'N:M' (e.g. 2:4) nor a fraction (e.g. 0.5)") from None


def _compress_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import GROUP_SIZES, INITS, METHODS, SCOPES, STEPS
    from .data import DEFAULT_SOURCE, TEXT_SOURCES

    parser.add_argument(
        "model", nargs="?", default=None,
        help="dense checkpoint folder or Hub id (default: the embedded Gemma-3-270M, dequantized GGUF)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", required=True, help="folder for the compressed checkpoint (written all or nothing)")
    what = parser.add_argument_group("compression (AWPConfig)")
    what.add_argument("--method", choices=METHODS, default=_config_default("method"), help="solver (default: %(default)s)")
    what.add_argument(
        "--sparsity", type=_sparsity, default=None,
        help="'N:M' semi-structured (e.g. 2:4) or a fraction pruned per row (e.g. 0.5); default: no pruning",
    )  # fmt: skip
    what.add_argument("--bits", type=int, choices=[4], default=None, help="INT4 weights (default: keep floats)")
    what.add_argument(
        "--group-size", type=int, choices=GROUP_SIZES, default=_config_default("group_size"),
        help="inputs sharing one INT4 scale, -1 for one per row (default: %(default)s)",
    )  # fmt: skip
    what.add_argument("--asymmetric", action="store_true", help="asymmetric INT4 grid with zero points (default: symmetric)")
    what.add_argument(
        "--keep-dense", nargs="+", default=["lm_head"], metavar="MODULE",
        help="module names or name suffixes left dense (default: lm_head)",
    )  # fmt: skip
    data = parser.add_argument_group("calibration")
    data.add_argument(
        "--dataset", default=DEFAULT_SOURCE,
        help=f"calibration text: one of {sorted(TEXT_SOURCES)} or a UTF-8 text file (default: {DEFAULT_SOURCE})",
    )  # fmt: skip
    data.add_argument("--nsamples", type=_positive_int, default=_config_default("nsamples"), help="calibration sequences (default: %(default)s)")
    data.add_argument("--seqlen", type=_positive_int, default=_config_default("seqlen"), help="tokens per calibration sequence (default: %(default)s)")
    data.add_argument("--seed", type=int, default=_config_default("seed"), help="seed of the sample choice (default: %(default)s)")
    solver = parser.add_argument_group("solver options (used by the methods that take them)")
    solver.add_argument("--max-iterations", type=int, default=_config_default("max_iterations"), help="AWP iteration cap (default: %(default)s)")
    solver.add_argument("--tolerance", type=float, default=_config_default("tolerance"), help="AWP relative stopping tolerance (default: %(default)s)")
    solver.add_argument("--damping", type=float, default=_config_default("damping"), help="diagonal damping of C, fraction of its mean (default: %(default)s)")
    solver.add_argument("--init", choices=INITS, default=_config_default("init"), help="AWP starting point (default: %(default)s)")
    solver.add_argument("--step", choices=STEPS, default=_config_default("step"),
                        help="AWP gradient step: lambda_max (the paper's 1/λ_max(C)) or diagonal (Jacobi-preconditioned) (default: %(default)s)")
    solver.add_argument("--momentum", action=argparse.BooleanOptionalAction, default=_config_default("momentum"),
                        help="AWP Nesterov momentum with adaptive restart (default: %(default)s)")
    solver.add_argument("--scope", choices=SCOPES, default=_config_default("scope"),
                        help="AWP unstructured sparsity per row or per layer (default: %(default)s)")
    solver.add_argument("--bf16-products", action="store_true",
                        help="AWP iteration products (W - Θ) C in bfloat16: faster on AVX512-BF16 CPUs and GPUs")
    check = parser.add_argument_group("evaluation (written to the model card)")
    check.add_argument("--eval", action="store_true", help="measure perplexity before and after compression")
    check.add_argument("--eval-dataset", default=None, help="evaluation text (default: --dataset's evaluation part)")
    check.add_argument("--eval-seqlen", type=_positive_int, default=2048, help="evaluation window length (default: %(default)s)")
    check.add_argument("--eval-windows", type=_positive_int, default=None, help="evaluate at most this many windows (default: all)")
    share = parser.add_argument_group("sharing")
    share.add_argument("--push-to-hub", metavar="ORG/NAME", default=None, help="also upload the checkpoint and its card to this Hub repo")
    share.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    add_runtime_arguments(parser)


def _eval_settings(args: argparse.Namespace, result) -> dict[str, object]:
    from .data import describe_source

    return {"text": f"{describe_source(args.eval_dataset or args.dataset)}, evaluation part",
            "seqlen": result.seqlen, "windows": result.windows, "tokens": result.tokens}


@register_command("compress", "compress a causal LM (pruning, INT4) and save it, optionally to the Hub", _compress_arguments)
def run_compress(args: argparse.Namespace) -> int:
    """``optimum-awp compress [MODEL] -o DIR``: validate, load, (evaluate,) compress, (evaluate,) save, (push)."""
    from .config import AWPConfig
    from .data import EMBEDDED_MODEL_DESCRIPTION, describe_source
    from .evaluate import load_model, perplexity
    from .hub import check_save_directory, model_sizes, push_to_hub
    from .optimum import AWPOptimumQuantizer

    # Validated before anything is loaded.
    config = AWPConfig(
        method=args.method, sparsity=args.sparsity, bits=args.bits, group_size=args.group_size,
        symmetric=not args.asymmetric, dataset=args.dataset, nsamples=args.nsamples, seqlen=args.seqlen,
        seed=args.seed, max_iterations=args.max_iterations, tolerance=args.tolerance, damping=args.damping,
        init=args.init, step=args.step, momentum=args.momentum, scope=args.scope, bf16_products=args.bf16_products,
        modules_to_not_convert=args.keep_dense,
    )  # fmt: skip
    check_save_directory(args.output)
    _apply_threads(args)
    _print_settings({"model": _describe_model(args.model), "method": f"{config.method}, sparsity={config.sparsity}, "
                     f"bits={config.bits}, group_size={config.group_size}, symmetric={config.symmetric}",
                     "calibrate": f"{config.nsamples} x {config.seqlen} tokens of {describe_source(args.dataset)}"})
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    measure = dict(seqlen=args.eval_seqlen, nwindows=args.eval_windows, progress=args.progress)
    eval_source = args.eval_dataset or args.dataset
    before = perplexity(model, tokenizer, eval_source, **measure) if args.eval else None
    if before is not None:
        print(f"dense perplexity: {before.ppl:.4f} ({before.tokens:,} tokens)")
    quantizer = AWPOptimumQuantizer(model, tokenizer)
    report = quantizer.compress(config, progress=args.progress, device=args.device)
    kept = f"; kept dense: {', '.join(report.skipped)}" if report.skipped else ""
    print(f"compressed {len(report.layers)} linears in {report.seconds:.1f} s "
          f"(mean relative layer objective {report.mean_objective:.5f}{kept})")
    after = perplexity(model, tokenizer, eval_source, **measure) if args.eval else None
    if after is not None:
        print(f"compressed perplexity: {after.ppl:.4f}")
    card = {
        "base_model": args.model or EMBEDDED_MODEL_DESCRIPTION,
        "perplexity": {"before": before.ppl, "after": after.ppl} if args.eval else None,
        "eval_settings": _eval_settings(args, after) if args.eval else None,
        "calibration": describe_source(args.dataset),
    }
    folder = quantizer.save(args.output, **card)
    sizes = model_sizes(model)
    print(f"weights: {sizes['dense'] / 2**20:.1f} MiB dense -> {sizes['compressed'] / 2**20:.1f} MiB "
          f"({sizes['compressed'] / sizes['dense']:.1%}); saved to {folder}")
    if args.push_to_hub:
        commit = push_to_hub(model, args.push_to_hub, tokenizer=tokenizer, private=args.private or None, **card)
        print(f"pushed to {args.push_to_hub}: {commit.commit_url}")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="optimum-awp checkpoint folder or Hub id")
    parser.add_argument(
        "--format", choices=["compressed-tensors"], default="compressed-tensors",
        help="target layout: compressed-tensors' W4A16 pack-quantized, loadable by plain transformers "
        "with compressed-tensors and by vLLM (INT4 checkpoints only; default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", required=True, help="new folder for the export (must not hold files)")


@register_command("export", "convert an optimum-awp checkpoint for use without optimum-awp", _export_arguments)
def run_export(args: argparse.Namespace) -> int:
    """``optimum-awp export DIR --format compressed-tensors -o OUT``."""
    from .export import export_compressed_tensors

    out = export_compressed_tensors(args.model, args.output)
    print(f"exported {args.model} as {args.format} to {out}; it loads with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}) and compressed-tensors installed")
    return 0


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", default=None,
        help="checkpoint folder or Hub id, compressed or dense (default: the embedded Gemma-3-270M)",
    )  # fmt: skip
    add_perplexity_arguments(parser, seqlen=512, nwindows=16)
    parser.add_argument("--no-ppl", dest="ppl", action="store_false", help="skip the perplexity")
    parser.add_argument("--prompt-tokens", type=_positive_int, default=128, help="prompt length for the speed runs (default: %(default)s)")
    parser.add_argument("--new-tokens", type=_positive_int, default=64, help="greedy tokens generated per speed run (default: %(default)s)")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="speed runs; the median is reported (default: %(default)s)")
    add_runtime_arguments(parser)


def _checkpoint_bytes(name_or_path: str | None) -> int | None:
    """Bytes of the safetensors files of a local checkpoint folder (None for Hub ids)."""
    from pathlib import Path

    from .data import embedded_model

    folder = Path(embedded_model() if name_or_path is None else name_or_path)
    files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
    return sum(f.stat().st_size for f in files) if files else None


def _speed(model, prompt, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s): medians over ``repeats`` greedy generations of ``new_tokens``."""
    import statistics

    import torch

    prefill, decode = [], []
    with torch.inference_mode():
        model(prompt)  # warm-up: kernel layouts are built on the first forward
        for _ in range(repeats):
            start = time.perf_counter()
            model(prompt)
            prefill.append(prompt.shape[1] / (time.perf_counter() - start))
            start = time.perf_counter()
            out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            seconds = time.perf_counter() - start - prompt.shape[1] / prefill[-1]
            decode.append((out.shape[1] - prompt.shape[1]) / max(seconds, 1e-9))
    return statistics.median(prefill), statistics.median(decode)


@register_command("bench", "size, perplexity and generation speed of a checkpoint", _bench_arguments)
def run_bench(args: argparse.Namespace) -> int:
    """``optimum-awp bench [MODEL]``: bytes on disk and in memory, perplexity, prefill and decode tokens/s."""
    import torch

    from .config import AWPConfig
    from .data import eval_tokens
    from .evaluate import load_model, perplexity
    from .hub import config_summary, model_sizes
    from .quantizer import register

    register()  # so that a compressed checkpoint loads as one (importing optimum_awp does it too)
    _apply_threads(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    quant = getattr(model.config, "quantization_config", None)
    sizes = model_sizes(model)
    on_disk = _checkpoint_bytes(args.model)
    _print_settings({
        "model": _describe_model(args.model),
        "format": f"{config_summary(model)}, {len(quant.compressed_modules or {})} packed linears"
        if isinstance(quant, AWPConfig) else "dense (not compressed by optimum-awp)",
        "on disk": f"{on_disk / 2**20:.2f} MiB" if on_disk is not None else "(not a local folder)",
        "weights": f"{sizes['compressed'] / 2**20:.2f} MiB in memory ({sizes['compressed'] / sizes['dense']:.1%} "
                   f"of {sizes['dense'] / 2**20:.2f} MiB dense)",
        "threads": torch.get_num_threads(),
    })  # fmt: skip
    if args.ppl:
        result = perplexity(
            model, tokenizer, args.dataset, seqlen=args.seqlen, nwindows=args.nwindows,
            batch_size=args.batch_size, add_bos=None if args.add_bos else False, progress=args.progress,
        )  # fmt: skip
        print(f"perplexity: {result.ppl:.4f} ({result.tokens:,} tokens, {result.windows} windows of {result.seqlen})")
    tokens = eval_tokens(tokenizer, args.dataset)[: args.prompt_tokens]
    bos = [tokenizer.bos_token_id] if args.add_bos and tokenizer.bos_token_id is not None else []
    prompt = torch.tensor([bos + tokens.tolist()], device=next(model.parameters()).device)
    prefill, decode = _speed(model, prompt, args.new_tokens, args.repeats)
    print(f"speed: prefill {prefill:,.1f} tokens/s ({prompt.shape[1]}-token prompt), "
          f"decode {decode:,.1f} tokens/s (batch 1, {args.new_tokens} greedy tokens, median of {args.repeats})")
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

"""``optimum-awp demo``: the whole product on the embedded Gemma-3-270M and Wikipedia (gensim sample).

1. prepare the embedded model and text (converted once, then cached);
2. dense perplexity and decode speed;
3. compress with ``--method`` (AWP 2:4 + INT4 g128 by default) on the calibration part;
4. compressed perplexity and speed, then save (packed tensors, model card) to ``--output``;
5. reload the folder with ``pipeline("text-generation", ...)`` (nothing recompressed), check it generates
   the in-memory model's greedy tokens, and generate a few sentences;

then print a table of perplexity, sizes, speed and times.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .arguments import (
    add_compression_arguments,
    add_evaluation_arguments,
    add_progress_argument,
    add_runtime_arguments,
    add_text_argument,
    apply_threads,
    check_before_work,
    config_from_args,
    describe_model,
    eval_kwargs,
    positive_int,
    print_settings,
    prompt_ids,
)  # fmt: skip
from .registry import register_command

DEMO_OUTPUT = "out/gemma-3-270m-awp-2of4-int4"
DEMO_PROMPTS = ("The history of the city begins", "In mathematics, a prime number is", "The river flows")
TABLE_HEADS = ("model", "perplexity", "x dense", "block linears", "whole model", "on disk", "decode tokens/s", "time")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None,
        help="dense checkpoint folder or Hub id (default: the embedded Gemma-3-270M, dequantized GGUF)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", default=DEMO_OUTPUT, help="folder for the compressed checkpoint (default: %(default)s)")
    add_text_argument(parser)
    # 32 x 512 calibration tokens: the papers use 128 x 2048, which takes hours on a 2-core CPU
    add_compression_arguments(parser, sparsity="2:4", bits=4, nsamples=32, calib_seqlen=512)
    add_evaluation_arguments(parser, seqlen=512, nwindows=32)
    speed = parser.add_argument_group("speed")
    speed.add_argument("--new-tokens", type=positive_int, default=32, help="greedy tokens per speed run and per sample (default: %(default)s)")
    speed.add_argument("--repeats", type=positive_int, default=2, help="speed runs; the median is reported (default: %(default)s)")
    add_progress_argument(parser)
    add_runtime_arguments(parser)


def prepare_text(model_path, source) -> None:
    """Prepare the text source and print the sizes of its two parts."""
    from transformers import AutoTokenizer

    from ..data import SPLITS, describe_source, load_text, tokenize_text

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    for split in SPLITS:
        texts = load_text(source, split)
        tokens = tokenize_text(tokenizer, texts).numel()
        print(f"{describe_source(source)}, {split} part: {len(texts)} texts, {tokens:,} tokens")


def measure(model, tokenizer, args, prompt) -> dict[str, object]:
    """Perplexity on the evaluation part and greedy decode speed of ``model``."""
    from ..evaluate import generation_speed, perplexity

    result = perplexity(model, tokenizer, args.dataset, **eval_kwargs(args))
    _, decode = generation_speed(model, prompt, args.new_tokens, args.repeats)
    print(f"perplexity {result.ppl:.4f} over {result.tokens:,} tokens ({result.windows} windows of {result.seqlen}, "
          f"{result.seconds:.1f} s); decode {decode:.2f} tokens/s")
    return {"ppl": result.ppl, "eval_seconds": result.seconds, "decode": decode, "result": result}


def short_label(config) -> str:
    """E.g. "awp 2:4 + INT4 g128", "wanda 50%", "rtn INT4 g128"."""
    parts = [config.method]
    if config.sparsity is not None:
        parts.append(config.sparsity if isinstance(config.sparsity, str) else f"{config.sparsity:.0%}")
    if config.bits:
        parts.append(("+ " if config.sparsity is not None else "") + f"INT{config.bits} g{config.group_size}")
    return " ".join(parts)


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def markdown_table(rows: list[dict[str, object]]) -> str:
    """A markdown table of the demo's figures, one row per model."""
    lines = ["| " + " | ".join(TABLE_HEADS) + " |", "|" + "|".join("---" for _ in TABLE_HEADS) + "|"]
    lines += ["| " + " | ".join(str(row.get(h, "")) for h in TABLE_HEADS) + " |" for row in rows]
    return "\n".join(lines)


def reload_with_pipeline(folder: Path, model, tokenizer, args, device) -> bool:
    """Step 5: ``pipeline`` on the saved folder; True when its greedy tokens equal the in-memory model's."""
    import torch
    from transformers import pipeline

    from ..hub import config_summary
    from ..nn import AWPLinear

    tic = time.perf_counter()
    generator = pipeline("text-generation", model=str(folder), device=args.device)
    packed = sum(isinstance(m, AWPLinear) for m in generator.model.modules())
    print(f"loaded in {time.perf_counter() - tic:.1f} s: {packed} packed linears ({config_summary(generator.model)})")
    greedy = dict(max_new_tokens=args.new_tokens, do_sample=False)
    with torch.inference_mode():
        expected = model.generate(**tokenizer(DEMO_PROMPTS[0], return_tensors="pt").to(device), **greedy)
    reloaded = generator(DEMO_PROMPTS[0], return_tensors=True, **greedy)[0]["generated_token_ids"]
    same = list(reloaded) == expected[0].tolist()
    print(f"greedy tokens of the reloaded model {'equal' if same else 'DIFFER FROM'} the in-memory model's")
    for text in DEMO_PROMPTS:
        print(f"  > {generator(text, **greedy)[0]['generated_text']!r}")
    return same


@register_command(
    "demo",
    "the main job on the embedded defaults: evaluate, compress (AWP 2:4 + INT4), evaluate, save, reload with pipeline",
    add_arguments,
)
def run_demo(args: argparse.Namespace) -> int:
    """Run the five steps of the module docstring and print the table."""
    import torch

    from ..compress import compress
    from ..data import describe_source, embedded_model
    from ..evaluate import checkpoint_bytes, load_model, model_sizes
    from ..hub import save_pretrained

    started = time.perf_counter()
    config = config_from_args(args)  # validated before any work
    check_before_work(args)
    apply_threads(args)
    print("== 1/5 the model and the text (converted once, then cached)")
    model_path = args.model or embedded_model()
    print_settings({"model": describe_model(args.model)})
    prepare_text(model_path, args.dataset)
    model, tokenizer = load_model(model_path, dtype=args.dtype, device=args.device)
    device = next(model.parameters()).device
    prompt = prompt_ids(tokenizer, args.dataset, 128, args.add_bos, device)
    print(f"prepared in {time.perf_counter() - started:.1f} s; {model.dtype}, {torch.get_num_threads()} threads")

    print("== 2/5 dense baseline")
    dense = measure(model, tokenizer, args, prompt)
    dense_sizes = model_sizes(model)
    dense_dtype = str(model.dtype).removeprefix("torch.")

    print(f"== 3/5 compressing: {config.method}, sparsity {config.sparsity}, bits {config.bits}, group {config.group_size}; "
          f"calibration {config.nsamples} x {config.seqlen} tokens of {describe_source(args.dataset)}")
    report = compress(model, config, tokenizer=tokenizer, device=args.device, progress=args.progress)
    print(f"compressed {len(report.layers)} linears in {report.seconds:.1f} s "
          f"(mean relative layer objective {report.mean_objective:.5f}); kept dense: {', '.join(report.skipped) or '-'}")

    print("== 4/5 compressed model, then save")
    after = measure(model, tokenizer, args, prompt)
    sizes = model_sizes(model)
    result = after["result"]
    folder = save_pretrained(
        model, args.output, tokenizer=tokenizer, base_model=args.model or "google/gemma-3-270m (dequantized Q4_K_M GGUF)",
        perplexity={"before": dense["ppl"], "after": after["ppl"]}, calibration=describe_source(args.dataset),
        eval_settings={"text": f"{describe_source(args.dataset)}, evaluation part", "seqlen": result.seqlen,
                       "windows": result.windows, "tokens": result.tokens},
    )  # fmt: skip
    on_disk, dense_on_disk = checkpoint_bytes(folder), checkpoint_bytes(model_path)
    print(f"saved to {folder} ({mib(on_disk)} of safetensors)")

    print(f"== 5/5 pipeline('text-generation', model={str(folder)!r}): rebuilt from the packed tensors")
    same = reload_with_pipeline(folder, model, tokenizer, args, device)

    rows = [
        {"model": f"dense ({dense_dtype})",
         "perplexity": f"{dense['ppl']:.3f}", "x dense": "1.00",
         "block linears": mib(sizes["linears_dense"]), "whole model": mib(dense_sizes["compressed"]),
         "on disk": mib(dense_on_disk) if dense_on_disk else "(Hub)", "decode tokens/s": f"{dense['decode']:.2f}",
         "time": f"eval {dense['eval_seconds']:.0f} s"},
        {"model": short_label(config), "perplexity": f"{after['ppl']:.3f}", "x dense": f"{after['ppl'] / dense['ppl']:.2f}",
         "block linears": f"{mib(sizes['linears_compressed'])} ({sizes['linears_compressed'] / sizes['linears_dense']:.1%})",
         "whole model": f"{mib(sizes['compressed'])} ({sizes['compressed'] / dense_sizes['compressed']:.1%})",
         "on disk": f"{mib(on_disk)}" + (f" ({on_disk / dense_on_disk:.1%})" if dense_on_disk else ""),
         "decode tokens/s": f"{after['decode']:.2f} ({after['decode'] / dense['decode']:.2f}x)",
         "time": f"compress {report.seconds:.0f} s, eval {after['eval_seconds']:.0f} s"},
    ]  # fmt: skip
    print()
    print(markdown_table(rows))
    print(f"\ndemo wall time: {time.perf_counter() - started:.1f} s; the checkpoint is in {folder}")
    return 0 if same else 1

"""``optimum-awp demo``: the whole product on the embedded Gemma-3-270M and Wikipedia (gensim sample).

1. prepare the embedded model and text (converted once, then cached), load the dense model in bfloat16
   (the dtype a model is served in);
2. the dense perplexity;
3. compress a copy with the main setting (``--method``, AWP 2:4 + INT4 g128 by default), and another copy with
   the setting a user would ship on a model this small (``--also``, INT4 g128 alone by default), on the
   calibration part; perplexity of each; save each (packed tensors, model card);
4. greedy decode speed of the dense and the compressed models, measured interleaved (the models take turns, best
   of ``--repeats``), with the load average before and after and a warning when the machine is busy;
5. reload each folder with ``pipeline("text-generation", ...)`` (nothing recompressed), check it generates the
   in-memory model's greedy tokens, and print the dense and the compressed continuations of the same prompts;

then print one table of perplexity, whole-model size in memory and on disk, decode speed and time.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from . import arguments
from .registry import register_command

DEMO_OUTPUT = "out/gemma-3-270m-awp-2of4-int4"
ALSO_OUTPUT = "out/gemma-3-270m-awp-int4"
DEMO_PROMPTS = ("The history of the city begins", "In mathematics, a prime number is", "The river flows")
TABLE_HEADS = ("model", "perplexity", "x dense", "whole model", "on disk", "decode tokens/s", "time")
# The second setting: (sparsity, bits) replacing the main one's, same method and options.
ALSO = {"int4": (None, 4), "2:4": ("2:4", None), "none": None}
BUSY_MARGIN = 0.5  # load average above the demo's own threads + this: something else ran beside the speed runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None,
        help="dense checkpoint folder or Hub id (default: the embedded Gemma-3-270M, dequantized GGUF)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", default=DEMO_OUTPUT, help="folder for the compressed checkpoint (default: %(default)s)"
    )
    parser.add_argument(
        "--also",
        choices=sorted(ALSO),
        default="int4",
        help="a second setting compressed side by side with the same method: INT4 alone, 2:4 alone, "
        "or none (default: %(default)s)",
    )
    parser.add_argument(
        "--also-output", default=ALSO_OUTPUT, help="folder for the second checkpoint (default: %(default)s)"
    )
    arguments.add_text_argument(parser)
    # 32 x 512 calibration tokens: the papers use 128 x 2048, which takes hours on a 2-core CPU
    # the 262k x 640 embedding tied to the head is two thirds of Gemma-3-270M: INT4 it too (--embedding-bits none
    # keeps it bf16)
    arguments.add_compression_arguments(parser, sparsity="2:4", bits=4, embedding_bits=4, nsamples=32,
                                        calib_seqlen=512)
    arguments.add_evaluation_arguments(parser, seqlen=512, nwindows=32)
    arguments.add_speed_arguments(parser, 32, 3, "interleaved speed runs per model; the best is reported")
    arguments.add_progress_argument(parser)
    arguments.add_runtime_arguments(parser)
    parser.set_defaults(dtype="bfloat16")


def prepare_text(model_path, source) -> None:
    """Prepare the text source and print the sizes of its two parts."""
    from transformers import AutoTokenizer

    from ..data import SPLITS, describe_source, load_text, tokenize_text

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    for split in SPLITS:
        texts = load_text(source, split)
        tokens = tokenize_text(tokenizer, texts).numel()
        print(f"{describe_source(source)}, {split} part: {len(texts)} texts, {tokens:,} tokens")


def short_label(config) -> str:
    """E.g. "awp 2:4 + INT4 g128", "wanda 50%", "rtn INT4 g128 + INT4 embedding"."""
    parts = [config.method]
    if config.sparsity is not None:
        parts.append(config.sparsity if isinstance(config.sparsity, str) else f"{config.sparsity:.0%}")
    if config.bits:
        parts.append(("+ " if config.sparsity is not None else "") + f"INT{config.bits} g{config.group_size}")
    if config.embedding_bits:
        parts.append(f"+ INT{config.embedding_bits} embedding")
    return " ".join(parts)


def mib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:,.1f} MiB"


def markdown_table(rows: list[dict[str, object]]) -> str:
    """A markdown table of the demo's figures, one row per model."""
    lines = ["| " + " | ".join(TABLE_HEADS) + " |", "|" + "|".join("---" for _ in TABLE_HEADS) + "|"]
    lines += ["| " + " | ".join(str(row.get(h, "")) for h in TABLE_HEADS) + " |" for row in rows]
    return "\n".join(lines)


def configs(args: argparse.Namespace) -> list[tuple[object, str]]:
    """(AWPConfig, output folder) of the main setting and of ``--also``, validated before any work."""
    main = arguments.config_from_args(args)
    out = [(main, args.output)]
    also = ALSO[args.also]
    if also is not None and also != (main.sparsity, main.bits):
        out.append((main.replace(sparsity=also[0], bits=also[1]), args.also_output))
    return out


def reload_and_check(folder: Path, model, tokenizer, args, device) -> tuple[bool, object]:
    """``pipeline`` on the saved folder: (its greedy tokens equal the in-memory model's, the pipeline)."""
    import torch
    from transformers import pipeline

    from ..hub import config_summary
    from ..nn import AWPLinear
    from ..nn.embedding import AWPEmbedding

    tic = time.perf_counter()
    generator = pipeline("text-generation", model=str(folder), device=args.device)
    packed = sum(isinstance(m, (AWPLinear, AWPEmbedding)) for m in generator.model.modules())
    print(
        f"{folder}: loaded in {time.perf_counter() - tic:.1f} s, {packed} packed modules "
        f"({config_summary(generator.model)})"
    )
    greedy = dict(max_new_tokens=args.new_tokens, do_sample=False)
    with torch.inference_mode():
        expected = model.generate(**tokenizer(DEMO_PROMPTS[0], return_tensors="pt").to(device), **greedy)
    reloaded = generator(DEMO_PROMPTS[0], return_tensors=True, **greedy)[0]["generated_token_ids"]
    same = list(reloaded) == expected[0].tolist()
    print(f"  greedy tokens of the reloaded model {'equal' if same else 'DIFFER FROM'} the in-memory model's")
    return same, generator


def continuation(generate, text: str, new_tokens: int) -> str:
    return generate(text, max_new_tokens=new_tokens, do_sample=False, return_full_text=False)[0]["generated_text"]


@register_command(
    "demo",
    "the main job on the embedded defaults: dense bf16 vs AWP 2:4 + INT4 and INT4, side by side (perplexity, size, "
    "speed), saved and reloaded with pipeline",
    add_arguments,
)
def run_demo(args: argparse.Namespace) -> int:
    """Run the five steps of the module docstring and print the table."""
    import torch
    from transformers import pipeline

    from ..compress import compress
    from ..data import describe_source, embedded_model
    from ..evaluate import (
        checkpoint_bytes,
        interleaved_decode_speed,
        load_model,
        model_sizes,
        perplexity,
    )
    from ..hub import check_save_directory, save_pretrained

    started = time.perf_counter()
    settings = configs(args)  # validated before any work
    arguments.check_before_work(args)
    for _, folder in settings[1:]:
        check_save_directory(folder)
    arguments.apply_threads(args)
    print("== 1/5 the model and the text (converted once, then cached)")
    model_path = args.model or embedded_model()
    arguments.print_settings({"model": arguments.describe_model(args.model)})
    prepare_text(model_path, args.dataset)
    dense, tokenizer = load_model(model_path, dtype=args.dtype, device=args.device)
    device = next(dense.parameters()).device
    print(f"prepared in {time.perf_counter() - started:.1f} s; {dense.dtype}, {torch.get_num_threads()} threads")

    print("== 2/5 dense baseline")
    rows = {"dense": {"model": f"dense ({str(dense.dtype).removeprefix('torch.')})"}}
    result = perplexity(dense, tokenizer, args.dataset, **arguments.eval_kwargs(args))
    print(f"perplexity {result.ppl:.4f} over {result.tokens:,} tokens ({result.windows} windows of {result.seqlen})")
    # what the dense model in its dtype takes, and would take as safetensors (the embedded checkpoint on disk is
    # float32: it is not the baseline)
    dense_bytes = dense_disk = model_sizes(dense)["compressed"]
    rows["dense"].update(
        {"ppl": result.ppl, "bytes": dense_bytes, "disk": dense_disk, "time": f"eval {result.seconds:.0f} s"}
    )
    models, folders = {"dense": dense}, {}

    print(
        f"== 3/5 compressing on {settings[0][0].nsamples} x {settings[0][0].seqlen} calibration tokens of "
        f"{describe_source(args.dataset)}"
    )
    for config, output in settings:
        label = short_label(config)
        model, _ = load_model(model_path, dtype=args.dtype, device=args.device)
        report = compress(model, config, tokenizer=tokenizer, device=args.device, progress=args.progress)
        print(
            f"{label}: compressed {len(report.layers)} linears in {report.seconds:.1f} s "
            f"(mean relative layer objective {report.mean_objective:.5f}); kept dense: {', '.join(report.skipped) or '-'}"
        )
        after = perplexity(model, tokenizer, args.dataset, **arguments.eval_kwargs(args))
        print(f"{label}: perplexity {after.ppl:.4f}")
        folders[label] = save_pretrained(
            model, output, tokenizer=tokenizer, base_model=args.model or "google/gemma-3-270m (dequantized Q4_K_M GGUF)",
            perplexity={"before": result.ppl, "after": after.ppl}, calibration=describe_source(args.dataset),
            eval_settings={"text": f"{describe_source(args.dataset)}, evaluation part", "seqlen": after.seqlen,
                           "windows": after.windows, "tokens": after.tokens},
        )  # fmt: skip
        print(f"{label}: saved to {folders[label]}")
        models[label] = model
        rows[label] = {
            "model": label,
            "ppl": after.ppl,
            "bytes": model_sizes(model)["compressed"],
            "disk": checkpoint_bytes(folders[label]),
            "time": f"compress {report.seconds:.0f} s, eval {after.seconds:.0f} s",
        }

    print(f"== 4/5 greedy decode speed, {args.new_tokens} tokens, the models taking turns, best of {args.repeats}")
    prompt = arguments.prompt_ids(tokenizer, args.dataset, 128, args.add_bos, device)
    speeds, loads = interleaved_decode_speed(models, prompt, args.new_tokens, args.repeats)
    busy_load = torch.get_num_threads() + BUSY_MARGIN  # the speed runs themselves load the machine this much
    busy = max(loads) > busy_load
    print(
        f"load average {loads[0]:.2f} before, {loads[1]:.2f} after"
        + (f": WARNING, the machine is busy (> {busy_load:.1f}: something else is running), the speeds are not reliable" if busy else "")
    )

    print("== 5/5 reload with pipeline('text-generation', model=FOLDER): rebuilt from the packed tensors")
    generators, same = {"dense": pipeline("text-generation", model=dense, tokenizer=tokenizer)}, True
    for label, folder in folders.items():
        ok, generators[label] = reload_and_check(folder, models[label], tokenizer, args, device)
        same &= ok
    for text in DEMO_PROMPTS:
        print(f"  {text!r}")
        for label, generate in generators.items():
            print(f"    {label + ':':<22} {continuation(generate, text, args.new_tokens)!r}")

    table = []
    for label, row in rows.items():
        table.append({
            "model": row["model"], "perplexity": f"{row['ppl']:.3f}", "x dense": f"{row['ppl'] / rows['dense']['ppl']:.2f}",
            "whole model": mib(row["bytes"]) + (f" ({row['bytes'] / dense_bytes:.1%})" if label != "dense" else ""),
            "on disk": mib(row["disk"]) + (f" ({row['disk'] / dense_disk:.1%})" if label != "dense" and dense_disk
                                           and row["disk"] else ""),
            "decode tokens/s": f"{speeds[label]:.2f}" + (f" ({speeds[label] / speeds['dense']:.2f}x)" if label != "dense" else ""),
            "time": row["time"],
        })  # fmt: skip
    print()
    print(markdown_table(table))
    print(
        f"(dense on disk: its weights in {str(dense.dtype).removeprefix('torch.')}; decode speeds "
        f"interleaved, best of {args.repeats}, load average {loads[0]:.2f} -> {loads[1]:.2f}"
        f"{', BUSY' if busy else ''}; {os.cpu_count()} CPUs, {torch.get_num_threads()} threads)"
    )
    print(
        f"\ndemo wall time: {time.perf_counter() - started:.1f} s; the checkpoints are in {', '.join(map(str, folders.values()))}"
    )
    return 0 if same else 1

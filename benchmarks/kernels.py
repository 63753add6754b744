"""Per-layer forward times of AWPLinear formats against dense fp32/bf16 linears, side by side.

Shapes: Gemma-3-270M's linears (hidden 640, intermediate 2048, vocabulary 262144) and a 4096 x 4096
layer, at 1, 16 and 512 tokens (lm_head at 1 and 16: generation computes logits for the last token
only, and 512 x 262144 logits would need 0.5 GB per call). Prints, and writes to
docs/results/kernels.md:

1. the memory bandwidth of this machine (a large sum and copy), and for each format its bytes per
   weight and the roofline time bytes / bandwidth of streaming the weight once;
2. times (minimum over interleaved rounds, so other processes on a shared CPU disturb it least) and
   speed-ups measured in the same run;
3. a token sweep of the CPU INT4 kernel against the per-call dequantize path, which sets the
   dispatch threshold ``KernelOptions.cpu_int4_max_tokens``.

Usage: python benchmarks/kernels.py [--threads 2 | --threads 1,2] [--rounds 7] [--quick] [--out docs/results/kernels.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from optimum_awp.nn import AWPLinear, kernel_options, use_backend

SHAPES = [  # name, out, in
    ("q_proj", 1024, 640),
    ("k/v_proj", 256, 640),
    ("o_proj", 640, 1024),
    ("gate/up_proj", 2048, 640),
    ("down_proj", 640, 2048),
    ("lm_head", 262144, 640),
    ("4096x4096", 4096, 4096),
]
TOKENS = (1, 16, 512)
GROUP = 128
GENERATE_MARKER = "<!-- generate.py -->"
_VALID_2OF4_NIBBLES = torch.tensor([p0 | (p1 << 2) for p0 in range(4) for p1 in range(p0 + 1, 4)], dtype=torch.uint8)


# ----------------------------------------------------------------------------------------------- builders
def random_module(fmt: str, out_features: int, in_features: int, dtype: torch.dtype) -> AWPLinear:
    """An AWPLinear with random valid buffers (random codes, scales ~0.01, random 2:4 positions)."""
    m = AWPLinear.empty(fmt, in_features, out_features, bias=False, group_size=GROUP, dtype=dtype, device="cpu")
    buffers = m.packed_buffers()
    if "qweight" in buffers:
        buffers["qweight"].copy_(torch.randint(-(2**31), 2**31 - 1, buffers["qweight"].shape, dtype=torch.int32))
    if "scales" in buffers:
        buffers["scales"].copy_(torch.rand(buffers["scales"].shape) * 0.01 + 0.001)
    if "values" in buffers:
        buffers["values"].copy_(torch.randn(buffers["values"].shape) * 0.05)
    if "meta" in buffers:
        shape = buffers["meta"].shape
        low = _VALID_2OF4_NIBBLES[torch.randint(0, 6, shape)]
        high = _VALID_2OF4_NIBBLES[torch.randint(0, 6, shape)]
        buffers["meta"].copy_(low | (high << 4))
    return m


def bytes_per_weight(fmt: str, out_features: int, in_features: int) -> float:
    if fmt == "fp32":
        return 4.0
    if fmt == "bf16":
        return 2.0
    module = AWPLinear.empty(fmt, in_features, out_features, bias=False, group_size=GROUP, dtype=torch.bfloat16)
    return module.weight_bytes() / (out_features * in_features)


# ----------------------------------------------------------------------------------------------- timing
def _samples(fn, budget: float = 0.2, max_calls: int = 10) -> list[float]:
    """Seconds of single calls of fn, as many as fit in ``budget`` seconds (at least 2, at most max_calls)."""
    fn()
    out = []
    spent = 0.0
    while len(out) < 2 or (spent < budget and len(out) < max_calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
        spent += out[-1]
    return out


_SCRATCH: list[torch.Tensor] = []


def flush_caches() -> None:
    """Read a 128 MB buffer (4x this CPU's 32 MB L3) so that the next call finds its weight in DRAM only,
    as every layer of a model does at decode time; small layers would otherwise run from cache."""
    if not _SCRATCH:
        _SCRATCH.append(torch.ones(32 * 2**20, dtype=torch.float32))
    _SCRATCH[0].sum()


def time_side_by_side(variants: dict, rounds: int, budget: float = 0.01, max_calls: int = 20) -> dict[str, float]:
    """Minimum seconds of a single call of each variant, caches flushed before every call; calls of the
    variants are interleaved one by one.

    On a CPU shared with other jobs a thread is often descheduled for a whole scheduler tick
    (4-20 ms per call here), which averages cannot remove; the fastest single call is the stable
    figure, and interleaving gives every variant the same chances.
    """
    best = {name: float("inf") for name in variants}
    with torch.inference_mode():
        for fn in variants.values():
            fn()  # warm-up: kernel layouts, allocator
        for _ in range(rounds):
            spent = dict.fromkeys(variants, 0.0)
            calls = dict.fromkeys(variants, 0)
            while True:
                active = [n for n in variants if calls[n] < 1 or (spent[n] < budget and calls[n] < max_calls)]
                if not active:
                    break
                for name in active:
                    flush_caches()
                    start = time.perf_counter()
                    variants[name]()
                    elapsed = time.perf_counter() - start
                    spent[name] += elapsed
                    calls[name] += 1
                    best[name] = min(best[name], elapsed)
    return best


def bandwidth(rounds: int) -> tuple[float, float]:
    """(read GB/s from a 512 MB sum, copy GB/s counting read + write of a 256 MB copy), best of rounds."""
    x = torch.ones(128 * 2**20, dtype=torch.float32)
    y = torch.empty(64 * 2**20, dtype=torch.float32)
    src = x[: y.numel()]
    read = min(min(_samples(lambda: x.sum())) for _ in range(rounds))
    copy = min(min(_samples(lambda: y.copy_(src))) for _ in range(rounds))
    return x.numel() * 4 / read / 1e9, 2 * y.numel() * 4 / copy / 1e9


# ----------------------------------------------------------------------------------------------- runs
def layer_table(shapes, tokens_list, rounds, gbps):
    rows = []
    for name, out_features, in_features in shapes:
        w32 = torch.randn(out_features, in_features) * 0.05
        w16 = w32.to(torch.bfloat16)
        modules = {
            "int4": random_module("int4", out_features, in_features, torch.bfloat16),
            "int4/f32": random_module("int4", out_features, in_features, torch.float32),
            "2:4": random_module("2:4", out_features, in_features, torch.bfloat16),
            "2:4+int4": random_module("2:4+int4", out_features, in_features, torch.bfloat16),
        }
        for tokens in tokens_list:
            if name == "lm_head" and tokens > 16:
                continue
            x32 = torch.randn(tokens, in_features)
            x16 = x32.to(torch.bfloat16)
            variants = {
                "fp32": lambda: F.linear(x32, w32),
                "bf16": lambda: F.linear(x16, w16),
                "int4": lambda: modules["int4"](x16),
                "int4/f32": lambda: modules["int4/f32"](x32),
                "2:4": lambda: modules["2:4"](x16),
                "2:4+int4": lambda: modules["2:4+int4"](x16),
            }
            t = time_side_by_side(variants, rounds)
            backends = {k: modules[k].select_kernel(x32 if k == "int4/f32" else x16).name for k in modules}
            rows.append((name, out_features, in_features, tokens, t, backends))
            print(
                f"{name:>13} {out_features:>6}x{in_features:<5} T={tokens:<4} "
                + " ".join(f"{k}={v * 1e6:9.1f}us" for k, v in t.items())
                + f"  int4 vs bf16 {t['bf16'] / t['int4']:.2f}x, int4/f32 vs fp32 {t['fp32'] / t['int4/f32']:.2f}x",
                flush=True,
            )
        del modules, w32, w16
    return rows


def token_sweep(shapes, tokens_list, rounds):
    """CPU INT4 kernel vs the per-call dequantize path (reference) and dense bf16, bf16 and fp32 activations."""
    rows = []
    for name, out_features, in_features in shapes:
        m16 = random_module("int4", out_features, in_features, torch.bfloat16)
        m32 = random_module("int4", out_features, in_features, torch.float32)
        w16 = m16.dequantize()
        for tokens in tokens_list:
            x16 = torch.randn(tokens, in_features, dtype=torch.bfloat16)
            x32 = x16.float()

            def kernel(m, x):
                with use_backend("cpu_int4"), kernel_options(cpu_int4_max_tokens=1 << 30):
                    return m(x)

            def reference(m, x):
                with use_backend("reference"):
                    return m(x)

            t = time_side_by_side(
                {
                    "kernel bf16": lambda: kernel(m16, x16),
                    "dequant bf16": lambda: reference(m16, x16),
                    "dense bf16": lambda: F.linear(x16, w16),
                    "kernel f32": lambda: kernel(m32, x32),
                    "dequant f32": lambda: reference(m32, x32),
                },
                rounds,
            )
            rows.append((name, tokens, t))
            print(f"sweep {name:>10} T={tokens:<4} " + " ".join(f"{k}={v * 1e6:9.1f}us" for k, v in t.items()), flush=True)
    return rows


def crossover(rows, kernel_key, other_key):
    """Largest token count up to which the kernel is at least as fast as ``other_key``, per shape."""
    out = {}
    for name, tokens, t in rows:
        if t[kernel_key] <= t[other_key]:
            out[name] = max(out.get(name, 0), tokens)
        else:
            out.setdefault(name, 0)
    return out


# ----------------------------------------------------------------------------------------------- report
def one_token_summary(rows) -> list[str]:
    """The one-token targets: INT4 layer >= 1.5x dense bf16 and >= 1.7x dense fp32 (Gemma shapes)."""
    lines = []
    for name, out_features, in_features, tokens, t, _ in rows:
        if tokens == 1:
            lines.append(
                f"| {name} | {t['bf16'] / t['int4']:.2f}x | {t['fp32'] / t['int4']:.2f}x | "
                f"{t['fp32'] / t['int4/f32']:.2f}x |"
            )
    return lines


def markdown(args, runs, shapes) -> str:
    """runs: list of (threads, gbps_read, gbps_copy, rows, sweep)."""
    fmts = ["fp32", "bf16", "int4", "2:4", "2:4+int4"]
    lines = [
        "# Per-layer kernel times (CPU)",
        "",
        f"Command: `python benchmarks/kernels.py --threads {args.threads} --rounds {args.rounds}"
        + (" --quick" if args.quick else "")
        + "`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()} (AVX-512 with bf16), 2 cores. The cores are "
        "shared with other jobs (load average 5-8 during these runs): every figure is the fastest single call "
        "over interleaved rounds, and a figure of several ms for a small layer means no undisturbed call "
        "was caught (a thread descheduled for a scheduler tick), not the kernel's speed. With 2 threads a call "
        "needs both cores at once, which a loaded machine rarely gives; 1 thread is the steadier measurement.",
        "",
        "Weights are cold: a 128 MB read (4x the 32 MB L3) precedes every timed call, so each call streams "
        "its weight from DRAM as a layer of a model does at decode time. "
        "int4 is group 128 with bf16 scales. 2:4 stores bf16 values plus 2-bit positions but runs from a "
        "dense bf16 cache (2 B/weight read), since no CPU 2:4 kernel beats dense. Roofline: the time to read "
        "the stored weight once at the measured read bandwidth, the lower bound of a one-token "
        "(memory-bound) layer.",
    ]
    for threads, gbps_read, gbps_copy, rows, sweep in runs:
        lines += [
            "",
            f"## {threads} thread{'s' if threads > 1 else ''}",
            "",
            f"Memory bandwidth: read {gbps_read:.1f} GB/s (sum of 512 MB), copy {gbps_copy:.1f} GB/s "
            "(read + write of 256 MB).",
            "",
            "### Bytes per weight and the bandwidth roofline",
            "",
            "| layer | out x in | " + " | ".join(f"{f} B/w" for f in fmts) + " | "
            + " | ".join(f"{f} roofline us" for f in fmts) + " |",
            "|---|---|" + "---|" * (2 * len(fmts)),
        ]
        for name, out_features, in_features in shapes:
            bpw = [bytes_per_weight(f, out_features, in_features) for f in fmts]
            roof = [b * out_features * in_features / (gbps_read * 1e9) * 1e6 for b in bpw]
            lines.append(
                f"| {name} | {out_features}x{in_features} | " + " | ".join(f"{b:.3f}" for b in bpw) + " | "
                + " | ".join(f"{r:.1f}" for r in roof) + " |"
            )
        lines += [
            "",
            "### One token: INT4 against dense",
            "",
            "| layer | int4 vs dense bf16 | int4 vs dense fp32 | int4/f32 vs dense fp32 |",
            "|---|---|---|---|",
            *one_token_summary(rows),
            "",
            "### Times (microseconds per call) and speed-ups, same run",
            "",
            "Columns: dense `F.linear` in fp32 and bf16; `AWPLinear` (auto backend) with a bf16 model for int4, "
            "2:4, 2:4+int4, and `int4/f32` an fp32 model (scales fp32, activations fp32, cast to bf16 around the "
            "INT4 kernel). `backend` is what auto picked for int4 / int4/f32 / 2:4 / 2:4+int4.",
            "",
            "| layer | tokens | fp32 | bf16 | int4 | int4/f32 | 2:4 | 2:4+int4 | int4 vs bf16 | int4/f32 vs fp32 | "
            "2:4+int4 vs bf16 | backend |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, out_features, in_features, tokens, t, backends in rows:
            us = {k: v * 1e6 for k, v in t.items()}
            lines.append(
                f"| {name} {out_features}x{in_features} | {tokens} | {us['fp32']:.1f} | {us['bf16']:.1f} | "
                f"{us['int4']:.1f} | {us['int4/f32']:.1f} | {us['2:4']:.1f} | {us['2:4+int4']:.1f} | "
                f"{t['bf16'] / t['int4']:.2f}x | {t['fp32'] / t['int4/f32']:.2f}x | {t['bf16'] / t['2:4+int4']:.2f}x | "
                f"{backends['int4']} / {backends['int4/f32']} / {backends['2:4']} / {backends['2:4+int4']} |"
            )
        if sweep:
            lines += [
                "",
                "### Token sweep: CPU INT4 kernel vs per-call dequantize + dense matmul",
                "",
                "`kernel`: `_weight_int4pack_mm_for_cpu` (bf16 inside); `dequant`: the reference path (dequantize "
                "the INT4 weight at every call, then `F.linear` in the activation dtype); `dense bf16`: a plain "
                "bf16 linear (what a dense cache costs, at the memory of the bf16 weights).",
                "",
                "| layer | tokens | kernel bf16 | dequant bf16 | dense bf16 | kernel f32 | dequant f32 |",
                "|---|---|---|---|---|---|---|",
            ]
            for name, tokens, t in sweep:
                lines.append(f"| {name} | {tokens} | " + " | ".join(f"{v * 1e6:.1f}" for v in t.values()) + " |")
            cb = crossover(sweep, "kernel bf16", "dequant bf16")
            cf = crossover(sweep, "kernel f32", "dequant f32")
            cd = crossover(sweep, "kernel bf16", "dense bf16")
            lines += [
                "",
                "Largest measured token count at which the kernel is at least as fast as dequantize-per-call "
                "(bf16 / fp32 activations): " + ", ".join(f"{k} {cb[k]} / {cf[k]}" for k in cb)
                + "; as fast as a dense bf16 cache: " + ", ".join(f"{k} {cd[k]}" for k in cd) + ". "
                "Defaults: `cpu_int4_max_tokens=64`, `cpu_int4_max_tokens_cached=8`.",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="2", help="thread count(s), comma-separated, e.g. 2 or 1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="skip lm_head and the 4096 layer, 3 rounds")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "results" / "kernels.md"))
    args = parser.parse_args()
    torch.manual_seed(0)
    shapes = [s for s in SHAPES if not (args.quick and s[0] in ("lm_head", "4096x4096"))]
    if args.quick:
        args.rounds = min(args.rounds, 3)
    runs = []
    for threads in [int(t) for t in str(args.threads).split(",")]:
        torch.set_num_threads(threads)
        print(f"== {threads} thread(s)", flush=True)
        gbps_read, gbps_copy = bandwidth(args.rounds)
        print(f"bandwidth: read {gbps_read:.1f} GB/s, copy {gbps_copy:.1f} GB/s", flush=True)
        rows = layer_table(shapes, TOKENS, args.rounds, gbps_read)
        sweep = []
        if not args.no_sweep:
            sweep_shapes = [s for s in shapes if s[0] in ("q_proj", "gate/up_proj", "down_proj", "4096x4096")]
            sweep = token_sweep(sweep_shapes, (1, 2, 4, 8, 16, 32, 64, 128), args.rounds)
        runs.append((threads, gbps_read, gbps_copy, rows, sweep))
    text = markdown(args, runs, shapes)
    print()
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else ""
    if GENERATE_MARKER in old:  # keep the section benchmarks/generate.py writes
        text += "\n" + old[old.index(GENERATE_MARKER) :]
    out.write_text(text)


if __name__ == "__main__":
    main()

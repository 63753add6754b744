"""Per-layer forward times of the compressed formats against dense linears, next to each format's
bandwidth floor, on CPU.

Shapes: Gemma-3-270M's linears (hidden 640, intermediate 2048, vocabulary 262144), 4096 x 4096 and
11008 x 4096 (a 7B model's MLP), at 1 and 16 tokens, with 1 and 2 threads. Variants, all bf16 models:

- ``fp32`` / ``bf16``: dense ``F.linear``;
- ``int4 torch``: ``AWPLinear`` "int4" (g128) on torch's ``_weight_int4pack_mm_for_cpu`` (``cpu_int4``);
- ``2:4``: ``AWPLinear`` "2:4" (bf16 values + 2-bit positions), auto backend (the native ``cpu_2of4``);
- ``2:4+int4``: ``AWPLinear`` "2:4+int4" (g128), auto backend (the native ``cpu_2of4``).

The floor of a format is its stored bytes divided by the read bandwidth measured in the same run with
the same thread count (a sum over 512 MB): the time a one-token (memory-bound) call cannot beat.
Every timed call starts with its weight out of cache (a 128 MB read before each call), as a layer of
a model at decode time; the figure is the fastest single call over interleaved rounds (see
``time_side_by_side``). Also measured: the cost of a call on an empty layer (16 x 128, hot), and a
token sweep of the native decode kernel against its tiled prefill path, the per-call dequantize and
dense bf16, which sets ``KernelOptions.cpu_2of4_max_tokens``.

Usage: python benchmarks/kernels.py [--threads 1,2] [--rounds 5] [--quick] [--out docs/results/kernels.md]
Writes the "Per-layer kernel times" part of the results page (generate.py writes the part after its marker).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from optimum_awp.nn import AWPLinear, kernel_options, native

SHAPES = [  # name, out, in
    ("q_proj", 1024, 640),
    ("k/v_proj", 256, 640),
    ("o_proj", 640, 1024),
    ("gate/up_proj", 2048, 640),
    ("down_proj", 640, 2048),
    ("lm_head", 262144, 640),
    ("4096x4096", 4096, 4096),
    ("11008x4096", 11008, 4096),
]
GEMMA = {"q_proj", "k/v_proj", "o_proj", "gate/up_proj", "down_proj", "lm_head"}
TOKENS = (1, 16)
SWEEP_TOKENS = (1, 2, 4, 8, 12, 16, 24, 32, 64, 128, 300)
GROUP = 128
GENERATE_MARKER = "<!-- generate.py -->"
FORMATS = ("fp32", "bf16", "int4", "2:4", "2:4+int4")
_VALID_2OF4_NIBBLES = torch.tensor([p0 | (p1 << 2) for p0 in range(4) for p1 in range(p0 + 1, 4)], dtype=torch.uint8)


# ----------------------------------------------------------------------------------------------- builders
def random_module(fmt: str, out_features: int, in_features: int, dtype: torch.dtype = torch.bfloat16) -> AWPLinear:
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
_SCRATCH: list[torch.Tensor] = []


def flush_caches() -> None:
    """Read a 128 MB buffer (4x this CPU's 32 MB L3) so that the next call finds its weight in DRAM only."""
    if not _SCRATCH:
        _SCRATCH.append(torch.ones(32 * 2**20, dtype=torch.float32))
    _SCRATCH[0].sum()


def time_side_by_side(variants: dict, rounds: int, budget: float = 0.01, max_calls: int = 20, flush: bool = True):
    """Minimum seconds of a single call of each variant (caches flushed before every call), the calls of
    the variants interleaved one by one. On a shared CPU a thread is often descheduled for a whole
    scheduler tick, which averages cannot remove; the fastest call is the stable figure."""
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
                    if flush:
                        flush_caches()
                    start = time.perf_counter()
                    variants[name]()
                    elapsed = time.perf_counter() - start
                    spent[name] += elapsed
                    calls[name] += 1
                    best[name] = min(best[name], elapsed)
    return best


def bandwidth(rounds: int) -> float:
    """Read GB/s: the fastest sum of a 512 MB float32 buffer."""
    x = torch.ones(128 * 2**20, dtype=torch.float32)
    best = float("inf")
    for _ in range(3 * rounds):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# ----------------------------------------------------------------------------------------------- runs
def layer_rows(shapes, tokens_list, rounds):
    rows = []
    for name, out_features, in_features in shapes:
        w32 = torch.randn(out_features, in_features) * 0.05
        w16 = w32.to(torch.bfloat16)
        modules = {f: random_module(f, out_features, in_features) for f in ("int4", "2:4", "2:4+int4")}
        for tokens in tokens_list:
            x32 = torch.randn(tokens, in_features)
            x16 = x32.to(torch.bfloat16)

            modules["int4"].backend = "cpu_int4"
            variants = {
                "fp32": lambda: F.linear(x32, w32),
                "bf16": lambda: F.linear(x16, w16),
                "int4": lambda: modules["int4"](x16),
                "2:4": lambda: modules["2:4"](x16),
                "2:4+int4": lambda: modules["2:4+int4"](x16),
            }
            t = time_side_by_side(variants, rounds)
            backends = {f: modules[f].select_kernel(x16).name for f in ("2:4", "2:4+int4")}
            rows.append((name, out_features, in_features, tokens, t, backends))
            print(
                f"{name:>13} {out_features:>6}x{in_features:<5} T={tokens:<3} "
                + " ".join(f"{k}={v * 1e6:9.1f}us" for k, v in t.items())
                + f"  2:4/bf16 {t['bf16'] / t['2:4']:.2f}x  2:4+int4/int4 {t['int4'] / t['2:4+int4']:.2f}x",
                flush=True,
            )
        del modules, w32, w16
    return rows


def call_overhead() -> dict[str, float]:
    """Median microseconds of a hot call on an empty layer (16 x 128, one token), per path."""
    x = torch.randn(1, 128, dtype=torch.bfloat16)
    w = torch.randn(16, 128, dtype=torch.bfloat16)
    out = {"F.linear bf16": lambda: F.linear(x, w)}
    for fmt in ("int4", "2:4", "2:4+int4"):
        m = random_module(fmt, 16, 128)
        out[f"AWPLinear {fmt} (auto: {m.select_kernel(x).name})"] = (lambda m=m: m(x))
    ext = native.load()
    if ext is not None:
        m = random_module("2:4", 16, 128)
        args = (m.values, m.meta, None, None, 0, 128, native.isa_code())
        out["native sparse_linear alone (2:4)"] = lambda: ext.sparse_linear(x, *args)
    result = {}
    with torch.inference_mode():
        for name, fn in out.items():
            for _ in range(200):
                fn()
            samples = []
            for _ in range(2000):
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
            result[name] = statistics.median(samples) * 1e6
    return result


def token_sweep(shapes, tokens_list, rounds):
    """Native decode kernel vs its tiled path, the per-call dequantize (reference) and dense bf16."""
    rows = []
    for name, out_features, in_features in shapes:
        w16 = torch.randn(out_features, in_features, dtype=torch.bfloat16)
        for fmt in ("2:4", "2:4+int4"):
            m = random_module(fmt, out_features, in_features)
            by = {}
            for backend in ("cpu_2of4", "cpu_2of4_tiles", "reference"):  # shallow copies share the buffers
                by[backend] = copy.copy(m)
                by[backend].backend = backend
            for tokens in tokens_list:
                x = torch.randn(tokens, in_features, dtype=torch.bfloat16)
                variants = {
                    "decode": lambda x=x: by["cpu_2of4"](x),
                    "tiles": lambda x=x: by["cpu_2of4_tiles"](x),
                    "dequant": lambda x=x: by["reference"](x),
                    "dense bf16": lambda x=x: F.linear(x, w16),
                }
                if tokens > 64:
                    variants.pop("decode")
                t = time_side_by_side(variants, rounds, max_calls=5)
                t.setdefault("decode", float("nan"))
                rows.append((name, fmt, tokens, t))
                print(f"sweep {name:>10} {fmt:>8} T={tokens:<4} " + " ".join(f"{k}={v * 1e6:9.1f}us" for k, v in t.items()),
                      flush=True)
    return rows


def crossover(rows):
    """Per (shape, format): the largest token count up to which decode is at least as fast as tiles."""
    out = {}
    for name, fmt, tokens, t in rows:
        key = f"{name} {fmt}"
        if t["decode"] <= t["tiles"]:
            out[key] = max(out.get(key, 0), tokens)
        else:
            out.setdefault(key, 0)
    return out


# ----------------------------------------------------------------------------------------------- report
def markdown(args, runs, shapes, overhead, sweep, loads) -> str:
    isa = native.isa_name() or f"none ({native.unavailable_reason()})"
    lines = [
        "# Per-layer kernel times (CPU)",
        "",
        f"Command: `{args.command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()} ({_cpu_name()}), 2 cores, torch {torch.__version__}, "
        f"native kernel path `{isa}`. Load average (1, 5, 15 min) before: {loads[0]}; after: {loads[1]}.",
        "",
        "All models bf16. `int4` = `AWPLinear` \"int4\" g128 on torch's `_weight_int4pack_mm_for_cpu` (`cpu_int4`); "
        "`2:4` = bf16 values + 2-bit positions and `2:4+int4` = packed 4-bit kept codes + positions + g128 scales, "
        "both on the native kernel (`cpu_2of4`, the auto choice at these token counts). There is no INT4 kernel of "
        "our own yet (the issue's \"INT4 (ours)\" column): torch's stays the INT4 path. Every call starts with its "
        "weight out of cache (128 MB read first); figures are the fastest single call over interleaved rounds. "
        "Floor = stored bytes / read bandwidth measured in the same run with the same thread count: the bound of "
        "a one-token call.",
    ]
    for threads, gbps, rows in runs:
        lines += [
            "",
            f"## {threads} thread{'s' if threads > 1 else ''}",
            "",
            f"Read bandwidth: {gbps:.1f} GB/s (sum of 512 MB).",
            "",
            "| layer | tokens | fp32 | bf16 | int4 torch | 2:4 | 2:4+int4 | floor int4 | floor 2:4 | floor 2:4+int4 "
            "| 2:4 vs bf16 | 2:4+int4 vs int4 | 2:4+int4 vs bf16 | int4 / floor | 2:4 / floor | 2:4+int4 / floor |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, out_features, in_features, tokens, t, backends in rows:
            us = {k: v * 1e6 for k, v in t.items()}
            floor = {f: bytes_per_weight(f, out_features, in_features) * out_features * in_features / (gbps * 1e9) * 1e6
                     for f in ("int4", "2:4", "2:4+int4")}
            ratio = (
                f"{t['bf16'] / t['2:4']:.2f}x | {t['int4'] / t['2:4+int4']:.2f}x | {t['bf16'] / t['2:4+int4']:.2f}x"
            )
            over = " | ".join(f"{us[f] / floor[f]:.2f}" if tokens == 1 else "–" for f in ("int4", "2:4", "2:4+int4"))
            lines.append(
                f"| {name} {out_features}x{in_features} | {tokens} | {us['fp32']:.1f} | {us['bf16']:.1f} | {us['int4']:.1f} | "
                f"{us['2:4']:.1f} | {us['2:4+int4']:.1f} | {floor['int4']:.1f} | {floor['2:4']:.1f} | "
                f"{floor['2:4+int4']:.1f} | {ratio} | {over} |"
            )
    lines += [
        "",
        "Bytes per weight: fp32 4, bf16 2, int4 " + f"{bytes_per_weight('int4', 4096, 4096):.3f}, 2:4 "
        f"{bytes_per_weight('2:4', 4096, 4096):.3f}, 2:4+int4 {bytes_per_weight('2:4+int4', 4096, 4096):.3f} (g128, bf16 scales).",
        "",
        "## Per-call overhead (empty layer, 16 x 128, one token, hot, median of 2000 calls, "
        f"{torch.get_num_threads()} threads)",
        "",
        "| path | us per call |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in overhead.items()],
    ]
    if sweep:
        lines += [
            "",
            "## Token sweep: native decode kernel vs tiled prefill path (2 threads)",
            "",
            "`decode`: `cpu_2of4` (GEMV-style, reads the compressed buffers once per 4 tokens); `tiles`: "
            "`cpu_2of4_tiles` (rows decoded natively into 1 MB dense bf16 tiles, each multiplied by `at::mm`); "
            "`dequant`: the reference (whole weight dequantized by torch ops each call, then `F.linear`); "
            "`dense bf16`: `F.linear` on a dense weight (what a dense cache costs in memory). Microseconds.",
            "",
            "| layer | format | tokens | decode | tiles | dequant | dense bf16 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, fmt, tokens, t in sweep:
            lines.append(f"| {name} | {fmt} | {tokens} | " + " | ".join(
                f"{t[k] * 1e6:.1f}" if t[k] == t[k] else "–" for k in ("decode", "tiles", "dequant", "dense bf16")) + " |")
        cross = crossover(sweep)
        lines += [
            "",
            "Largest token count at which decode is at least as fast as tiles: "
            + ", ".join(f"{k} {v}" for k, v in cross.items()) + ".",
        ]
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="thread count(s), comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="skip lm_head and 11008x4096, 2 rounds, short sweep")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "results" / "kernels.md"))
    args = parser.parse_args()
    args.command = "python benchmarks/kernels.py --threads {} --rounds {}{}{}".format(
        args.threads, args.rounds, " --quick" if args.quick else "", " --no-sweep" if args.no_sweep else "")
    torch.manual_seed(0)
    native.load()
    shapes = [s for s in SHAPES if not (args.quick and s[0] in ("lm_head", "11008x4096"))]
    if args.quick:
        args.rounds = min(args.rounds, 2)
    loads = [load_average()]
    print(f"load average before: {loads[0]}", flush=True)
    runs = []
    for threads in [int(t) for t in str(args.threads).split(",")]:
        torch.set_num_threads(threads)
        print(f"== {threads} thread(s)", flush=True)
        gbps = bandwidth(args.rounds)
        print(f"read bandwidth {gbps:.1f} GB/s", flush=True)
        runs.append((threads, gbps, layer_rows(shapes, TOKENS, args.rounds)))
    torch.set_num_threads(2)
    overhead = call_overhead()
    print(overhead, flush=True)
    sweep = []
    if not args.no_sweep:
        sweep_shapes = [s for s in shapes if s[0] in ("gate/up_proj", "down_proj", "4096x4096")]
        tokens = (1, 4, 8, 16, 32, 128) if args.quick else SWEEP_TOKENS
        with kernel_options(cpu_2of4_max_tokens=1 << 30):  # decode forced up to 64 tokens, set once
            sweep = token_sweep(sweep_shapes, tokens, max(2, args.rounds // 2))
    loads.append(load_average())
    print(f"load average after: {loads[1]}", flush=True)
    text = markdown(args, runs, shapes, overhead, sweep, loads)
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

"""CUDA forward times of AWPLinear formats against dense fp16/bf16 linears, side by side, on one GPU.

What it measures (all in one run, on the same GPU):

1. the device's memory bandwidth (a large device-to-device copy) and, for each format, bytes per
   weight and the roofline time of streaming the weight once;
2. per-layer times for Gemma-3-270M's linear shapes, a 4096 x 4096 layer and Llama-2-7B's MLP
   shapes (11008 x 4096, 4096 x 11008) from 1 to 8192 tokens: dense fp16, dense bf16, 2:4 through
   ``torch.sparse`` semi-structured tensors (fp16), INT4 g128 through tinygemm
   (``_weight_int4pack_mm``, bf16), 2:4 + INT4, each also under automatic dispatch;
3. token sweeps that place the dispatch thresholds ``KernelOptions.cuda_int4_max_tokens`` (tinygemm
   against dequantize-then-matmul) and ``cuda_2of4_min_tokens`` (semi-structured against dense);
4. end to end: prefill of a random Llama-shaped model (Llama-2-7B layer shapes, a few layers) at
   2048+ tokens, dense fp16 against 2:4, and greedy decode tokens/s dense against INT4.

Each time is the median of single calls timed with CUDA events, the L2 cache flushed before every
call (a 256 MB write, 5x the H100's 50 MB L2), so weights come from HBM as in a real model. Outputs
are checked against the reference path (dequantize, then F.linear in fp32).

``--triton`` (issue 16) measures instead the Triton kernels of ``optimum_awp.nn.triton_kernels``: per-layer
times at 1, 4, 16 and 64 tokens on 4096 x 4096, 11008 x 4096 and 4096 x 11008 of dense fp16 (cuBLAS),
tinygemm INT4 (``cuda_int4``, bf16), ``triton_2of4`` (2:4 fp16) and ``triton_2of4_int4`` (2:4 + INT4 g128,
fp16 and bf16), each with its host time per call; a sweep of launch configs against ``choose_config``; and
greedy decode of a random Llama-2-7B-shaped model (a few layers) with the kernels forced. It replaces only
the Triton section of ``--out`` (between its markers, appended when absent). Without CUDA it is a dry run
of the same code on tiny shapes, which needs ``TRITON_INTERPRET=1`` (the tests run it so).
``benchmarks/gpu_visit.sh`` runs the tests and this on a GPU machine.

Usage: python benchmarks/kernels_cuda.py [--quick] [--triton [--skip-config-sweep]] [--out docs/results/kernels_cuda.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as cpu_bench  # noqa: E402  (benchmarks/ is not a package)
from kernels import GROUP, bytes_per_weight, random_module  # noqa: E402

from optimum_awp.compress import pack_linear  # noqa: E402
from optimum_awp.nn import AWPLinear, kernels, triton_kernels, use_backend  # noqa: E402

SHAPES = [s for s in cpu_bench.SHAPES if s[0] not in ("k/v_proj", "o_proj", "11008x4096")] + [  # name, out, in
    ("7B up (11008x4096)", 11008, 4096),
    ("7B down (4096x11008)", 4096, 11008),
]
TOKENS = (1, 16, 128, 512, 2048, 4096, 8192)
NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites this file -->"


# ----------------------------------------------------------------------------------------------- timing
class Timer:
    """Median seconds of single calls, timed with CUDA events (perf_counter off CUDA, for dry runs)."""

    def __init__(self, device: torch.device, calls: int):
        self.device = device
        self.calls = calls
        self.scratch = torch.empty(64 * 2**20, dtype=torch.float32, device=device) if device.type == "cuda" else None

    def __call__(self, fn) -> float:
        with torch.inference_mode():
            for _ in range(3):
                fn()
            samples = []
            for _ in range(self.calls):
                if self.scratch is None:
                    start = time.perf_counter()
                    fn()
                    samples.append(time.perf_counter() - start)
                    continue
                self.scratch.zero_()  # flush L2
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(begin.elapsed_time(end) / 1e3)
        return statistics.median(samples)


def bandwidth(device: torch.device, timer: Timer) -> float:
    """Copy GB/s counting bytes read and written (1 GiB copied)."""
    src = torch.ones(256 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / seconds / 1e9


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference).norm() / reference.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------------- layers
def relaxed():
    """Kernel options that let the CUDA kernels run at every token count (to see where they win)."""
    return kernels.kernel_options(cuda_int4_max_tokens=1 << 30, cuda_2of4_min_tokens=0)


def build_modules(out_features: int, in_features: int, device: torch.device) -> dict[str, AWPLinear]:
    return {
        "2:4": random_module("2:4", out_features, in_features, torch.float16).to(device),
        "int4": random_module("int4", out_features, in_features, torch.bfloat16).to(device),
        "2:4+int4": random_module("2:4+int4", out_features, in_features, torch.bfloat16).to(device),
    }


def forced(module: AWPLinear, backend: str, x: torch.Tensor):
    """A call of ``module`` on ``backend``, or None when that backend cannot run this query."""
    try:
        with use_backend(backend):
            module.select_kernel(x)
    except ValueError:
        return None

    def call():
        with use_backend(backend):
            return module(x)

    return call


def layer_rows(shapes, tokens_list, device, timer, max_lm_head_tokens):
    rows = []
    for name, out_features, in_features in shapes:
        w16 = (torch.randn(out_features, in_features, device=device) * 0.05).to(torch.float16)
        wbf = w16.to(torch.bfloat16)
        modules = build_modules(out_features, in_features, device)
        dense_ref = {k: m.dequantize(torch.float32) for k, m in modules.items()}
        for tokens in tokens_list:
            if name == "lm_head" and tokens > max_lm_head_tokens:
                continue
            x16 = torch.randn(tokens, in_features, device=device, dtype=torch.float16)
            xbf = x16.to(torch.bfloat16)
            inputs = {"2:4": x16, "int4": xbf, "2:4+int4": xbf}
            times = {"fp16": timer(lambda: F.linear(x16, w16)), "bf16": timer(lambda: F.linear(xbf, wbf))}
            errors, backends = {}, {}
            with relaxed():  # the kernels forced at every token count, to see where they win
                for key, backend in (("2:4", "cuda_2of4"), ("int4", "cuda_int4"), ("2:4+int4", "cuda_int4")):
                    call = forced(modules[key], backend, inputs[key])
                    if call is not None:
                        times[f"{key} [{backend}]"] = timer(call)
                        reference = F.linear(inputs[key].float(), dense_ref[key])
                        with torch.inference_mode():
                            errors[f"{key} [{backend}]"] = relative_error(call(), reference)
            for key, module in modules.items():  # automatic dispatch with the shipped thresholds
                backends[key] = module.select_kernel(inputs[key]).name
                times[f"{key} auto"] = timer(lambda m=module, x=inputs[key]: m(x))
            rows.append(
                {"layer": name, "out": out_features, "in": in_features, "tokens": tokens, "times": times,
                 "errors": errors, "backends": backends}
            )
            print(
                f"{name:>22} T={tokens:<5} "
                + " ".join(f"{k}={v * 1e6:.1f}us" for k, v in times.items())
                + " | err " + " ".join(f"{k}={v:.1e}" for k, v in errors.items())
                + " | auto " + str(backends),
                flush=True,
            )
        del modules, dense_ref, w16, wbf
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def sweep_rows(shapes, device, timer, int4_tokens, sparse_tokens):
    """tinygemm INT4 vs dequantize+matmul vs dense bf16, and semi-structured 2:4 vs dense fp16."""
    rows = []
    for name, out_features, in_features in shapes:
        modules = build_modules(out_features, in_features, device)
        w16 = modules["2:4"].dequantize(torch.float16)
        wbf = modules["int4"].dequantize(torch.bfloat16)
        with relaxed():
            for tokens in int4_tokens:
                x = torch.randn(tokens, in_features, device=device, dtype=torch.bfloat16)
                t = {
                    "bf16 dense": timer(lambda: F.linear(x, wbf)),
                    "int4 tinygemm": timer(forced(modules["int4"], "cuda_int4", x)),
                    "int4 dequant+mm": timer(forced(modules["int4"], "reference", x)),
                }
                rows.append(("int4", name, tokens, t))
                print(f"sweep int4 {name} T={tokens}: " + " ".join(f"{k}={v * 1e6:.1f}us" for k, v in t.items()))
            for tokens in sparse_tokens:
                x = torch.randn(tokens, in_features, device=device, dtype=torch.float16)
                call = forced(modules["2:4"], "cuda_2of4", x)
                if call is None:
                    continue
                t = {"fp16 dense": timer(lambda: F.linear(x, w16)), "2:4 semi-structured": timer(call)}
                rows.append(("2:4", name, tokens, t))
                print(f"sweep 2:4 {name} T={tokens}: " + " ".join(f"{k}={v * 1e6:.1f}us" for k, v in t.items()))
        del modules
    return rows


def semi_structured_rows(shapes, tokens_list, device, timer, search: bool = False):
    """torch's two semi-structured backends side by side with dense fp16, on random 2:4 weights:
    CUTLASS and cuSPARSELt through ``F.linear`` on the tensor subclass, and cuSPARSELt called directly
    (``torch._cslt_sparse_mm``, default algorithm and the one ``_cslt_sparse_mm_search`` picks).
    Also the CPU time of one call (launch overhead), which CUDA events alone hide or mix in."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    rows = []
    cutlass_runs = torch.cuda.get_device_capability(device) < (9, 0)  # torch's CUTLASS 2:4 is sm8x-only
    for name, out_features, in_features in shapes:
        w = random_module("2:4", out_features, in_features, torch.float16).to(device).dequantize(torch.float16)
        cutlass = SparseSemiStructuredTensorCUTLASS.from_dense(w) if cutlass_runs else None
        cusparselt = SparseSemiStructuredTensorCUSPARSELT.from_dense(w)
        compressed = torch._cslt_compress(w)
        for tokens in tokens_list:
            x = torch.randn(tokens, in_features, device=device, dtype=torch.float16)
            xt = x.t().contiguous().t()  # column-major view of x: x.t() is then contiguous
            variants = {
                "fp16 dense": lambda: F.linear(x, w),
                "cslt_sparse_mm (x col-major)": lambda: torch._cslt_sparse_mm(compressed, xt.t(), transpose_result=True),
                "cslt_sparse_mm": lambda: torch._cslt_sparse_mm(compressed, x.t(), transpose_result=True),
                "cuSPARSELt F.linear": lambda: F.linear(x, cusparselt),
            }
            if cutlass_runs:
                variants["CUTLASS F.linear"] = lambda: F.linear(x, cutlass)
            if search:
                try:
                    alg = torch._cslt_sparse_mm_search(compressed, xt.t(), transpose_result=True)
                    variants[f"cslt_sparse_mm alg {alg}"] = lambda: torch._cslt_sparse_mm(
                        compressed, xt.t(), transpose_result=True, alg_id=alg
                    )
                except Exception as error:  # noqa: BLE001  (an API that changes between torch releases)
                    print(f"_cslt_sparse_mm_search: {error}")
            t, cpu = {}, {}
            for key, fn in variants.items():
                try:
                    t[key] = timer(fn)
                    with torch.inference_mode():
                        torch.cuda.synchronize()
                        start = time.perf_counter()
                        for _ in range(10):
                            fn()
                        cpu[key] = (time.perf_counter() - start) / 10
                        torch.cuda.synchronize()
                except Exception as error:  # noqa: BLE001
                    print(f"{key}: {error}")
            rows.append((name, tokens, t, cpu))
            print(f"semi {name} T={tokens}: " + " ".join(f"{k}={v * 1e6:.1f}us(cpu {cpu[k] * 1e6:.0f})"
                                                       for k, v in t.items()), flush=True)
    return rows


# ----------------------------------------------------------------------------------------------- end to end
def random_llama(layers: int, hidden: int, intermediate: int, heads: int, vocab: int, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=16384, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: a billion weights take seconds on a CPU
        model = LlamaForCausalLM(config)
    return model.to(dtype=dtype).eval()


def compress_linears(model, fmt: str, dtype: torch.dtype) -> None:
    """Swap every decoder linear for an AWPLinear of ``fmt`` (magnitude 2:4 / RTN INT4 of its weight)."""
    from optimum_awp.solvers import CompressionSpec, LayerStats, get_solver

    spec = {"2:4": CompressionSpec(pattern=(2, 4)), "int4": CompressionSpec(bits=4, group_size=GROUP),
            "2:4+int4": CompressionSpec(pattern=(2, 4), bits=4, group_size=GROUP)}[fmt]
    solver = get_solver("rtn" if fmt == "int4" else "magnitude")  # magnitude refuses INT4 alone
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for child_name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                stats = LayerStats(covariance=torch.eye(child.in_features, device=child.weight.device))
                result = solver(child.weight.detach().float(), stats, spec)
                setattr(parent, child_name, pack_linear(result, spec, None, dtype))


LLAMA_7B_LAYER = dict(hidden=4096, intermediate=11008, heads=32, vocab=32000)
TINY_LAYER = dict(hidden=512, intermediate=1024, heads=8, vocab=1000)


def greedy_decode(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Tokens/s of a plain greedy loop with the KV cache (no ``generate``: its automatic compilation
    and logits processors would be measured too), prompt excluded."""
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        past = out.past_key_values
        token.cpu()
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            past = out.past_key_values
        token.cpu()  # waits for the device
        return new_tokens / (time.perf_counter() - start)


def end_to_end(device, timer, layers: int, prefill_tokens, decode_tokens: int, layer_shape=LLAMA_7B_LAYER):
    rows = []
    shape = dict(layers=layers, **layer_shape)
    for fmt, dtype in (("dense", torch.float16), ("2:4", torch.float16), ("dense", torch.bfloat16),
                       ("int4", torch.bfloat16), ("2:4+int4", torch.bfloat16)):
        model = random_llama(**shape, device=device, dtype=dtype)
        if fmt != "dense":
            compress_linears(model, fmt, dtype)
        prefill = {}
        for tokens in prefill_tokens:
            ids = torch.randint(0, shape["vocab"], (1, tokens), device=device)
            prefill[tokens] = timer(lambda: model(ids, use_cache=False, logits_to_keep=1))
        ids = torch.randint(0, shape["vocab"], (1, 16), device=device)
        greedy_decode(model, ids, decode_tokens)  # warm-up at every KV length: cuDNN attention builds a plan per length
        decode = greedy_decode(model, ids, decode_tokens)
        label = f"{fmt} {str(dtype).removeprefix('torch.')}"
        rows.append((label, prefill, decode))
        print(f"e2e {label}: " + " ".join(f"prefill {t}={s * 1e3:.1f}ms" for t, s in prefill.items())
              + f" decode {decode:.1f} tok/s", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, shape


# ----------------------------------------------------------------------------------------------- Triton (issue 16)
TRITON_SHAPES = [("4096x4096", 4096, 4096), ("7B up (11008x4096)", 11008, 4096), ("7B down (4096x11008)", 4096, 11008)]
TRITON_TOKENS = (1, 4, 16, 64)
TRITON_VARIANTS = [  # column, module key, forced backend
    ("int4 tinygemm bf16", "int4 bf16", "cuda_int4"),
    ("2:4 triton fp16", "2:4 fp16", "triton_2of4"),
    ("2:4+int4 triton fp16", "2:4+int4 fp16", "triton_2of4_int4"),
    ("2:4+int4 triton bf16", "2:4+int4 bf16", "triton_2of4_int4"),
]
TRITON_CONFIG_GRID = dict(block_n=(16, 32, 64), block_k=(64, 128), split_k=(1, 2, 4, 8, 16), num_warps=(2, 4, 8))
TRITON_BEGIN = "<!-- triton: written by benchmarks/kernels_cuda.py --triton -->"
TRITON_END = "<!-- /triton -->"
DRY_SHAPES = [("dry 48x256", 48, 256)]
DRY_LAYER = dict(hidden=128, intermediate=256, heads=4, vocab=256)


def triton_modules(out_features: int, in_features: int, device: torch.device) -> dict[str, AWPLinear]:
    """Random modules for the Triton comparison: INT4 for tinygemm (bf16), 2:4 fp16, 2:4 + INT4 fp16 and bf16."""
    return {
        "int4 bf16": random_module("int4", out_features, in_features, torch.bfloat16).to(device),
        "2:4 fp16": random_module("2:4", out_features, in_features, torch.float16).to(device),
        "2:4+int4 fp16": random_module("2:4+int4", out_features, in_features, torch.float16).to(device),
        "2:4+int4 bf16": random_module("2:4+int4", out_features, in_features, torch.bfloat16).to(device),
    }


def cpu_seconds_per_call(fn, calls: int = 20) -> float:
    """Host time of one call, calls issued back to back (launch overhead; CUDA events hide it)."""
    with torch.inference_mode():
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        seconds = (time.perf_counter() - start) / calls
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return seconds


def with_launch_config(call, changes: dict):
    """``call`` run inside ``triton_kernels.launch_config(**changes)``."""

    def run():
        with triton_kernels.launch_config(**changes):
            return call()

    return run


def triton_layer_rows(shapes, tokens_list, device, timer, host_calls: int = 20):
    """Per layer: dense fp16 (cuBLAS) against tinygemm INT4 and the Triton 2:4 / 2:4+int4 kernels (forced)."""
    rows = []
    for name, out_features, in_features in shapes:
        w16 = (torch.randn(out_features, in_features, device=device) * 0.05).to(torch.float16)
        modules = triton_modules(out_features, in_features, device)
        dense_ref = {k: m.dequantize(torch.float32) for k, m in modules.items()}
        for tokens in tokens_list:
            x32 = torch.randn(tokens, in_features, device=device)
            inputs = {torch.float16: x32.to(torch.float16), torch.bfloat16: x32.to(torch.bfloat16)}
            times = {"fp16 dense": timer(lambda: F.linear(inputs[torch.float16], w16))}
            errors, host = {}, {}
            with relaxed():
                for column, key, backend in TRITON_VARIANTS:
                    x = inputs[modules[key].dtype]
                    call = forced(modules[key], backend, x)
                    if call is None:
                        continue
                    times[column] = timer(call)
                    host[column] = cpu_seconds_per_call(call, host_calls)
                    with torch.inference_mode():
                        errors[column] = relative_error(call(), F.linear(x.float(), dense_ref[key]))
            rows.append({"layer": name, "tokens": tokens, "times": times, "errors": errors, "host": host})
            print(f"triton {name} T={tokens}: " + " ".join(f"{k}={v * 1e6:.1f}us" for k, v in times.items())
                  + " | host " + " ".join(f"{k}={v * 1e6:.0f}us" for k, v in host.items())
                  + " | err " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()), flush=True)
        del modules, dense_ref, w16
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def triton_config_rows(shapes, tokens_list, device, timer, grid: dict):
    """The launch configs of ``grid`` (a product of LaunchConfig fields) against ``choose_config``'s choice,
    per shape, token count and format: the data to tune ``choose_config`` with."""
    import itertools

    rows = []
    for name, out_features, in_features in shapes:
        for key, backend in (("2:4+int4 fp16", "triton_2of4_int4"), ("2:4 fp16", "triton_2of4")):
            fmt = key.split()[0]
            module = random_module(fmt, out_features, in_features, torch.float16).to(device)
            for tokens in tokens_list:
                x = torch.randn(tokens, in_features, device=device, dtype=torch.float16)
                call = forced(module, backend, x)
                if call is None:
                    continue
                group = 0 if fmt == "2:4" else GROUP
                default = triton_kernels.choose_config(tokens, out_features, in_features, group, device)
                default_time, best = timer(call), None
                for values in itertools.product(*grid.values()):
                    changes = dict(zip(grid, values))
                    try:
                        seconds = timer(with_launch_config(call, changes))
                    except ValueError:  # not valid for this shape (split_k above the input tiles, ...)
                        continue
                    if best is None or seconds < best[0]:
                        best = (seconds, changes)
                rows.append({"layer": name, "format": fmt, "tokens": tokens, "default": default,
                             "default_time": default_time, "best": best})
                print(f"config {name} {fmt} T={tokens}: default {default} {default_time * 1e6:.1f}us, best {best}",
                      flush=True)
            del module
    return rows


def set_backend_everywhere(model, backend: str | None) -> None:
    """Force ``backend`` on every AWPLinear of ``model`` (None: automatic dispatch)."""
    for module in model.modules():
        if isinstance(module, AWPLinear):
            module.backend = backend or "auto"


def triton_end_to_end(device, timer, layers: int, decode_tokens: int, prefill_tokens: int, layer_shape):
    """Greedy decode tokens/s (and one prefill) of a random Llama-shaped model, dense fp16 against the
    compressed formats, the Triton kernels forced on every compressed linear."""
    variants = [  # label, format, dtype, forced backend
        ("dense fp16", "dense", torch.float16, None),
        ("int4 bf16, auto (tinygemm)", "int4", torch.bfloat16, None),
        ("2:4 fp16, auto (dense cache)", "2:4", torch.float16, None),
        ("2:4 fp16, triton_2of4", "2:4", torch.float16, "triton_2of4"),
        ("2:4+int4 fp16, triton_2of4_int4", "2:4+int4", torch.float16, "triton_2of4_int4"),
        ("2:4+int4 bf16, triton_2of4_int4", "2:4+int4", torch.bfloat16, "triton_2of4_int4"),
    ]
    shape = dict(layers=layers, **layer_shape)
    rows = []
    for label, fmt, dtype, backend in variants:
        model = random_llama(**shape, device=device, dtype=dtype)
        if fmt != "dense":
            compress_linears(model, fmt, dtype)
        set_backend_everywhere(model, backend)
        ids = torch.randint(0, shape["vocab"], (1, prefill_tokens), device=device)
        prefill = timer(lambda: model(ids, use_cache=False, logits_to_keep=1))
        prompt = ids[:, :16]
        greedy_decode(model, prompt, decode_tokens)  # warm-up at every KV length (cuDNN plans, Triton compiles)
        decode = greedy_decode(model, prompt, decode_tokens)
        rows.append((label, prefill, decode))
        print(f"triton e2e {label}: prefill {prefill_tokens}={prefill * 1e3:.2f}ms decode {decode:.1f} tok/s", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, shape


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.2f}x" if numerator and denominator else "–"


def triton_markdown(info, gbps, layers, configs, grid, e2e, e2e_shape, prefill_tokens: int) -> str:
    """The Triton section of the results page, between TRITON_BEGIN and TRITON_END."""
    lines = [TRITON_BEGIN, "## Triton kernels (issue 16): measured", "",
             f"Written by `python benchmarks/kernels_cuda.py --triton` ({info['when']}). Device: {info['device']}; "
             f"torch {info['torch']}; triton {info['triton']}; copy bandwidth {gbps:.0f} GB/s. Times: median of "
             "single calls timed with CUDA events, L2 flushed before each call; host: CPU time of one call issued "
             "back to back. Weights random (valid 2:4 patterns, random INT4 codes, g128 symmetric).", ""]
    columns = ["fp16 dense"] + [c for c, _, _ in TRITON_VARIANTS]
    lines += ["### Per layer (us)", "",
              "| layer | tokens | " + " | ".join(columns)
              + " | 2:4+int4 fp16 vs fp16 dense | 2:4+int4 fp16 vs tinygemm | 2:4 fp16 vs fp16 dense | host us/call (triton 2:4+int4 fp16) |",
              "|---|---:|" + "---:|" * (len(columns) + 4)]
    for r in layers:
        t = r["times"]
        cells = [f"{t[c] * 1e6:.1f}" if c in t else "–" for c in columns]
        host = r["host"].get("2:4+int4 triton fp16")
        lines.append(
            f"| {r['layer']} | {r['tokens']} | " + " | ".join(cells)
            + f" | {_ratio(t.get('fp16 dense'), t.get('2:4+int4 triton fp16'))}"
            + f" | {_ratio(t.get('int4 tinygemm bf16'), t.get('2:4+int4 triton fp16'))}"
            + f" | {_ratio(t.get('fp16 dense'), t.get('2:4 triton fp16'))}"
            + (f" | {host * 1e6:.0f} |" if host is not None else " | – |")
        )
    worst = max((e for r in layers for e in r["errors"].values()), default=float("nan"))
    lines += ["", f"Largest relative error against the fp32 reference: {worst:.1e}.", ""]
    if configs:
        lines += ["### Launch configs: choose_config's against the best of the grid", "",
                  f"Grid: {grid}.", "",
                  "| layer | format | tokens | choose_config | its time (us) | best config | best time (us) |",
                  "|---|---|---:|---|---:|---|---:|"]
        for r in configs:
            d = r["default"]
            default = f"n{d.block_n} k{d.block_k} split{d.split_k} w{d.num_warps}"
            best = "–" if r["best"] is None else " ".join(f"{k}={v}" for k, v in r["best"][1].items())
            best_time = "–" if r["best"] is None else f"{r['best'][0] * 1e6:.1f}"
            lines.append(f"| {r['layer']} | {r['format']} | {r['tokens']} | {default} | {r['default_time'] * 1e6:.1f} "
                         f"| {best} | {best_time} |")
        lines.append("")
    if e2e:
        lines += [f"### End to end: random Llama, {e2e_shape['layers']} layers (hidden {e2e_shape['hidden']}, "
                  f"MLP {e2e_shape['intermediate']}, vocab {e2e_shape['vocab']}), batch 1", "",
                  f"| model | prefill {prefill_tokens} tok (ms) | greedy decode (tok/s) | vs dense fp16 |",
                  "|---|---:|---:|---:|"]
        dense = e2e[0][2]
        for label, prefill, decode in e2e:
            lines.append(f"| {label} | {prefill * 1e3:.2f} | {decode:.1f} | {decode / dense:.2f}x |")
        lines.append("")
    lines.append(TRITON_END)
    return "\n".join(lines)


def splice_triton_section(old: str, section: str) -> str:
    """``old`` with its Triton section replaced by ``section`` (appended at the end when it has none: below the
    notes marker, so that the default run, which rewrites the text above that marker, keeps it)."""
    if TRITON_BEGIN in old and TRITON_END in old:
        head, rest = old.split(TRITON_BEGIN, 1)
        return head + section + rest.split(TRITON_END, 1)[1]
    return old.rstrip("\n") + "\n\n" + section + "\n"


def run_triton(args, device: torch.device) -> None:
    """--triton: the layer table, the launch-config sweep and the end-to-end decode; spliced into --out."""
    import triton

    timer = Timer(device, args.calls if device.type == "cuda" else 2)
    info = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run, Triton interpreter)",
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    print(info, flush=True)
    gbps = bandwidth(device, timer) if device.type == "cuda" else float("nan")
    if device.type == "cuda":
        shapes, tokens, config_tokens, grid = TRITON_SHAPES, TRITON_TOKENS, (1, 16), TRITON_CONFIG_GRID
        config_shapes = [TRITON_SHAPES[0], TRITON_SHAPES[2]]  # 4096 and 11008 inputs (32 and 86 tiles of 128)
        e2e_kwargs = dict(layers=args.e2e_layers, decode_tokens=args.decode_tokens, prefill_tokens=64,
                          layer_shape=LLAMA_7B_LAYER)
    else:  # the dry run: every code path on tiny shapes under Triton's interpreter
        shapes, tokens, config_tokens, grid = DRY_SHAPES, (1, 16), (1,), dict(block_n=(16, 32), split_k=(1, 2))
        config_shapes = DRY_SHAPES
        e2e_kwargs = dict(layers=1, decode_tokens=2, prefill_tokens=16, layer_shape=DRY_LAYER)
    layers = triton_layer_rows(shapes, tokens, device, timer, host_calls=20 if device.type == "cuda" else 1)
    configs, e2e, e2e_shape = [], [], {}
    try:
        if not args.skip_config_sweep:
            configs = triton_config_rows(config_shapes, config_tokens, device, timer, grid)
        e2e, e2e_shape = triton_end_to_end(device, timer, **e2e_kwargs)
    except Exception:  # keep the layer table when a later part fails
        traceback.print_exc()
    section = triton_markdown(info, gbps, layers, configs, grid, e2e, e2e_shape, e2e_kwargs["prefill_tokens"])
    print()
    print(section)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(splice_triton_section(out.read_text() if out.exists() else "", section))


# ----------------------------------------------------------------------------------------------- report
def markdown(info, gbps, rows, sweep, e2e, e2e_shape) -> str:
    lines = ["# CUDA kernels: per-layer times and end-to-end prefill/decode", ""]
    lines += [f"Written by `python benchmarks/kernels_cuda.py` ({info['when']}). Device: {info['device']}; "
              f"torch {info['torch']}; semi-structured backend: {info['sparse']}; measured copy bandwidth "
              f"{gbps:.0f} GB/s (read + write). Times: median of single calls timed with CUDA events, L2 "
              "flushed before each call. Weights random (valid 2:4 patterns, random INT4 codes, scales ~0.01).",
              ""]
    lines += ["## Bytes per weight and the bandwidth floor", "",
              "| format | bytes/weight | x fp16 | floor for 4096x4096 (us) |", "|---|---:|---:|---:|"]
    for fmt in ("fp16", "2:4", "int4", "2:4+int4"):
        b = bytes_per_weight("bf16" if fmt == "fp16" else fmt, 4096, 4096)
        lines.append(f"| {fmt} | {b:.3f} | {b / 2:.3f} | {4096 * 4096 * b / gbps / 1e3:.1f} |")
    lines += ["", "## Per layer (us); speed-ups against dense fp16 (2:4) and dense bf16 (INT4 formats)", ""]
    keys = ["fp16", "bf16", "2:4 [cuda_2of4]", "2:4 auto", "int4 [cuda_int4]", "int4 auto", "2:4+int4 [cuda_int4]",
            "2:4+int4 auto"]
    lines += ["| layer | tokens | " + " | ".join(keys) + " | 2:4 semi vs fp16 | int4 tinygemm vs bf16 | auto backends |",
              "|---|---:|" + "---:|" * (len(keys) + 2) + "---|"]
    for r in rows:
        t = r["times"]
        cells = [f"{t[k] * 1e6:.1f}" if k in t else "–" for k in keys]
        semi = f"{t['fp16'] / t['2:4 [cuda_2of4]']:.2f}x" if "2:4 [cuda_2of4]" in t else "–"
        tiny = f"{t['bf16'] / t['int4 [cuda_int4]']:.2f}x" if "int4 [cuda_int4]" in t else "–"
        auto = ", ".join(f"{k}: {v}" for k, v in r["backends"].items())
        lines.append(f"| {r['layer']} | {r['tokens']} | " + " | ".join(cells) + f" | {semi} | {tiny} | {auto} |")
    worst = max((e for r in rows for e in r["errors"].values()), default=float("nan"))
    lines += ["", f"Largest relative error of a kernel against the fp32 reference: {worst:.1e}.", ""]
    if sweep:
        lines += ["## Token sweeps (dispatch thresholds)", "", "| kind | layer | tokens | times (us) | ratio |",
                  "|---|---|---:|---|---:|"]
        for kind, name, tokens, t in sweep:
            if kind == "int4":
                ratio = f"tinygemm {min(t['bf16 dense'], t['int4 dequant+mm']) / t['int4 tinygemm']:.2f}x best other"
            else:
                ratio = f"2:4 {t['fp16 dense'] / t['2:4 semi-structured']:.2f}x dense"
            lines.append(f"| {kind} | {name} | {tokens} | " + ", ".join(f"{k} {v * 1e6:.1f}" for k, v in t.items())
                         + f" | {ratio} |")
        lines.append("")
    if e2e:
        prefill_tokens = list(e2e[0][1])
        lines += [f"## End to end: random Llama, {e2e_shape['layers']} layers "
                  f"(hidden {e2e_shape['hidden']}, MLP {e2e_shape['intermediate']}, vocab {e2e_shape['vocab']}), "
                  "batch 1", "",
                  "| model | " + " | ".join(f"prefill {t} tok (ms)" for t in prefill_tokens)
                  + " | greedy decode (tok/s) |", "|---|" + "---:|" * (len(prefill_tokens) + 1)]
        for label, prefill, decode in e2e:
            lines.append(f"| {label} | " + " | ".join(f"{prefill[t] * 1e3:.2f}" for t in prefill_tokens)
                         + f" | {decode:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and calls (also the CPU dry run)")
    parser.add_argument("--calls", type=int, default=25, help="timed calls per variant (median)")
    parser.add_argument("--e2e-layers", type=int, default=4)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--only-semi", action="store_true", help="only the semi-structured backend comparison")
    parser.add_argument("--triton", action="store_true",
                        help="only the Triton kernels (issue 16); without CUDA a dry run under TRITON_INTERPRET=1")
    parser.add_argument("--skip-config-sweep", action="store_true", help="--triton without the launch-config sweep")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "results" / "kernels_cuda.md"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.triton:
        if not triton_kernels.triton_importable():
            parser.error("--triton needs triton: pip install optimum-awp[gpu].")
        if device.type != "cuda" and not triton_kernels.interpreting():
            parser.error("--triton without CUDA is a dry run under Triton's interpreter: set TRITON_INTERPRET=1.")
        torch.manual_seed(0)
        run_triton(args, device)
        return
    if device.type != "cuda" and not args.quick:
        parser.error("no CUDA device: only --quick (a dry run of the code paths on CPU) runs without one.")
    torch.manual_seed(0)
    timer = Timer(device, 5 if args.quick else args.calls)
    info = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "sparse": kernels._semi_structured_class().__name__ if device.type == "cuda" else "–",
    }
    print(info, flush=True)
    gbps = bandwidth(device, timer)
    print(f"copy bandwidth {gbps:.0f} GB/s", flush=True)
    if args.quick:
        shapes, tokens, lm_head_tokens = [SHAPES[0], SHAPES[4]], (1, 16, 512), 16
        int4_tokens, sparse_tokens, prefill, layers = (1, 32), (512,), (128,), 1
        e2e_kwargs = dict(layers=layers, prefill_tokens=prefill, decode_tokens=4, layer_shape=TINY_LAYER)
    else:
        shapes, tokens, lm_head_tokens = SHAPES, TOKENS, 2048
        int4_tokens, sparse_tokens = (1, 2, 4, 8, 16, 32, 64, 128, 256), (64, 128, 256, 512, 1024, 2048, 4096, 8192)
        e2e_kwargs = dict(layers=args.e2e_layers, prefill_tokens=(512, 2048, 8192), decode_tokens=args.decode_tokens)
    if args.only_semi:
        semi_shapes = [s for s in SHAPES if s[0] in ("q_proj", "4096x4096", "7B up (11008x4096)", "7B down (4096x11008)")]
        semi_structured_rows(semi_shapes[1:], (512, 2048, 8192), device, timer)
        end_to_end(device, timer, layers=2, prefill_tokens=(2048,), decode_tokens=32)
        semi_structured_rows(semi_shapes[1:2], (2048,), device, timer, search=True)
        return
    rows = layer_rows(shapes, tokens, device, timer, lm_head_tokens)
    sweep_shapes = [s for s in shapes if s[0] in ("4096x4096", "7B up (11008x4096)")]
    sweep, e2e, e2e_shape = [], [], {}
    try:
        if device.type == "cuda":
            sweep = sweep_rows(sweep_shapes, device, timer, int4_tokens, sparse_tokens)
        e2e, e2e_shape = end_to_end(device, timer, **e2e_kwargs)
    except Exception:  # keep the layer table of a long run when a later part fails
        traceback.print_exc()
    text = markdown(info, gbps, rows, sweep, e2e, e2e_shape)
    print()
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else ""
    if NOTES_MARKER in old:  # keep the hand-written findings below the marker
        text += "\n" + old[old.index(NOTES_MARKER) :]
    out.write_text(text)


if __name__ == "__main__":
    main()

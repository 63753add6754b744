"""Why AWP does (or does not) beat SparseGPT: the layer objective of each solver on real layers.

Takes C = X Xᵀ / n of the linears of a few decoder blocks of the embedded Gemma-3-270M (dense inputs,
the fidelity benchmark's quick calibration: 32 x 512 tokens of Wikipedia (gensim sample)) and solves
each layer with Wanda, SparseGPT and AWP variants, side by side in one run:

- ``awp``: the paper's step η = 1/λ_max(C), Wanda start, the AWPConfig defaults (100 iterations);
- ``awp x1000``: the same with 1000 iterations (is it the iteration budget?);
- ``awp sparsegpt-start``: the paper's step from SparseGPT's solution (is it the start?);
- ``awp diagonal``: Jacobi-preconditioned step η_j = 1/(λ_max(D^-1/2 C D^-1/2) C_jj) (is it the step?);
- ``awp diagonal+momentum``: the same with Nesterov momentum and adaptive restart;
- ``sparsegpt per-row``: SparseGPT choosing its mask within each row (AWP's and Wanda's set) instead of
  over each 128-column block of all rows (is it the constraint set?);
- ``awp diagonal+momentum, layer scope``: AWP projecting on the layer's top-k instead of each row's;
- ``..., sparsegpt-start``: the same from SparseGPT's solution (per-row mask for the row scope, the
  reference's block-wise mask for the layer scope).

Prints the relative objective tr(ΔCΔᵀ)/tr(WCWᵀ), iterations and seconds of every run, the condition
numbers of C and of its Jacobi-scaled form, and writes docs/results/awp_convergence.md.

    python benchmarks/awp_convergence.py [--blocks 0 8 17] [--settings 70% 2:4] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from optimum_awp.compress import spec_from_config
from optimum_awp.config import AWPConfig
from optimum_awp.solvers import LayerStats, get_solver

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "awp_convergence.md"
VARIANTS = {  # name: (solver, options)
    "wanda": ("wanda", {}),
    "sparsegpt": ("sparsegpt", {}),
    "awp": ("awp", {}),
    "awp x1000": ("awp", {"max_iterations": 1000}),
    "awp sparsegpt-start": ("awp", {"init": "sparsegpt"}),
    "awp diagonal": ("awp", {"step": "diagonal"}),
    "awp diagonal+momentum": ("awp", {"step": "diagonal", "momentum": True}),
    "sparsegpt per-row": ("sparsegpt", {"per_row": True}),
    "awp diagonal+momentum, layer scope": ("awp", {"step": "diagonal", "momentum": True, "scope": "layer"}),
    "awp diagonal+momentum, sparsegpt-start": ("awp", {"step": "diagonal", "momentum": True, "init": "sparsegpt"}),
    "awp diagonal+momentum, layer scope, sparsegpt-start": (
        "awp", {"step": "diagonal", "momentum": True, "scope": "layer", "init": "sparsegpt"}),
}
LINEARS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")


def block_covariances(model, ids: torch.Tensor, blocks: list[int]) -> dict[str, torch.Tensor]:
    """C (in, in) float32 of the inputs of LINEARS in ``blocks``, from one dense forward of ``ids``."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    layers = model.model.layers
    for b in blocks:
        for name in LINEARS:
            key = f"model.layers.{b}.{name}"

            def hook(module, args, key=key):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
                sums[key] = sums.get(key, 0) + x.T @ x
                counts[key] = counts.get(key, 0) + x.shape[0]

            handles.append(layers[b].get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for row in ids:
                model.model(row.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    return {key: sums[key] / counts[key] for key in sums}


def conditioning(c: torch.Tensor) -> tuple[float, float]:
    """(cond(C), cond(D^-1/2 C D^-1/2)) of the damped covariance, from eigenvalues in float64."""
    c = c.to(torch.float64)
    c = c + 0.01 * torch.diagonal(c).mean() * torch.eye(c.shape[0], dtype=c.dtype)
    d = torch.diagonal(c).rsqrt()
    ev = torch.linalg.eigvalsh(c)
    evs = torch.linalg.eigvalsh(d[:, None] * c * d[None, :])
    return float(ev[-1] / ev[0]), float(evs[-1] / evs[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, nargs="+", default=[0, 8, 17])
    p.add_argument("--settings", nargs="+", default=["70%", "2:4"], help="sparsities: '70%%', '50%%', '2:4' ...")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                   help=f"solvers to run (default: all of {list(VARIANTS)}); sparsegpt always runs")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from optimum_awp.data import calibration_samples, embedded_model
    from optimum_awp.evaluate import load_model

    model, tok = load_model(embedded_model(), dtype="float32")
    ids = calibration_samples(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    tic = time.perf_counter()
    covs = block_covariances(model, ids, args.blocks)
    print(f"statistics of {len(covs)} linears in {time.perf_counter() - tic:.1f}s", flush=True)

    rows = []
    for setting in args.settings:
        sparsity = setting if ":" in setting else float(setting.rstrip("%")) / 100
        spec = spec_from_config(AWPConfig(sparsity=sparsity))
        for key, c in covs.items():
            weight = model.get_submodule(key).weight.detach().to(torch.float32)
            cond, cond_scaled = conditioning(c)
            stats = LayerStats(covariance=c, nsamples=args.nsamples * args.seqlen)
            line = {"setting": setting, "layer": key.removeprefix("model."), "cond": cond, "cond_scaled": cond_scaled}
            for variant in dict.fromkeys(["sparsegpt", *args.variants]):
                solver, options = VARIANTS[variant]
                tic = time.perf_counter()
                result = get_solver(solver)(weight, stats, spec, **options)
                seconds = time.perf_counter() - tic
                line[variant] = (result.objective, result.iterations, seconds)
            rows.append(line)
            print(f"{setting} {line['layer']}: cond {cond:.2e} (scaled {cond_scaled:.2e}); "
                  + "; ".join(f"{v} {line[v][0]:.4f} ({line[v][1]} it, {line[v][2]:.1f}s)" for v in VARIANTS if v in line),
                  flush=True)
    write(args, rows)


def write(args, rows: list[dict]) -> None:
    heads = list(dict.fromkeys(["sparsegpt", *args.variants]))
    lines = [
        "# AWP convergence on real layers",
        "",
        "Relative layer objective tr(ΔCΔᵀ)/tr(WCWᵀ) (lower is better), iterations and seconds of each solver on",
        "the same C of real Gemma-3-270M layers (dense inputs; calibration "
        f"{args.nsamples} x {args.seqlen} tokens of Wikipedia (gensim sample), as the fidelity benchmark's quick mode).",
        "cond(C) and cond(D^-1/2 C D^-1/2) are those of C damped by 1% of its mean diagonal.",
        "",
        f"Command: `python benchmarks/awp_convergence.py --blocks {' '.join(map(str, args.blocks))} "
        f"--settings {' '.join(args.settings)} --variants {' '.join(repr(v) for v in args.variants)}`; machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}.",
        "",
        "| setting | layer | cond(C) | cond(scaled) | " + " | ".join(heads) + " |",
        "|---|---|---:|---:|" + "---:|" * len(heads),
    ]
    for r in rows:
        cells = [f"{r[v][0]:.4f} ({r[v][1]} it, {r[v][2]:.1f}s)" if r[v][1] else f"{r[v][0]:.4f} ({r[v][2]:.1f}s)"
                 for v in heads]
        lines.append(f"| {r['setting']} | {r['layer']} | {r['cond']:.1e} | {r['cond_scaled']:.1e} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Geometric mean of each solver's objective relative to SparseGPT's, per setting:", "",
              "| setting | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for setting in args.settings:
        sub = [r for r in rows if r["setting"] == setting]
        gm = [statistics.geometric_mean([r[v][0] / r["sparsegpt"][0] for r in sub]) for v in heads]
        lines.append(f"| {setting} | " + " | ".join(f"{g:.3f}" for g in gm) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    notes_marker = "<!-- notes -->"
    notes = args.out.read_text().split(notes_marker, 1)[1] if args.out.exists() and notes_marker in args.out.read_text() else "\n"
    args.out.write_text("\n".join(lines) + "\n\n" + notes_marker + notes)
    print("\n".join(lines[9:]))


if __name__ == "__main__":
    main()

"""Layer objectives of activation-aware low-rank (``lowrank``) against plain SVD on every linear of a real model.

The dense model's blocks are walked once (nothing is written back, so every layer's C = X Xᵀ / n comes from
dense activations, the same C for both methods); for each linear and each share of parameters kept, the
relative objective tr((W − Θ) C (W − Θ)ᵀ) / tr(W C Wᵀ) of

- ``lowrank`` (W C^1/2 factored, damping 0.01 = the default, and damping 0 = the exact optimum),
- plain SVD of W (``activation_aware=False``),

is computed. The target: lowrank ≤ plain SVD on every layer. Writes a JSON beside ``--out``.

    python benchmarks/lowrank_layers.py --nsamples 32 --seqlen 512 --out docs/results/lowrank_layers.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--kept", type=float, nargs="+", default=[0.8, 0.6, 0.5], help="shares of parameters kept")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "lowrank_layers.json")
    p.add_argument("--model", default=None)
    args = p.parse_args(argv)

    from optimum_awp.calibration import (
        block_linears,
        capture_block_inputs,
        layers_prefix,
        walk_blocks,
    )
    from optimum_awp.data import calibration_samples, embedded_model
    from optimum_awp.evaluate import load_model
    from optimum_awp.solvers import CompressionSpec, LayerStats, get_solver

    load_before = os.getloadavg()
    tic = time.perf_counter()
    model, tok = load_model(embedded_model() if args.model is None else args.model, dtype="float32")
    ids = calibration_samples(tok, "wikipedia-gensim", nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    solver = get_solver("lowrank")
    variants = {"lowrank": {}, "lowrank_damping0": {"damping": 0.0}, "svd": {"activation_aware": False}}
    rows = []

    def solve_block(index, block, stats):
        for name, inputs in stats.items():
            weight = model.get_submodule(name).weight.detach().float()
            layer = LayerStats(inputs.covariance, inputs.mean_abs, inputs.nsamples)
            row = {"name": name, "shape": list(weight.shape)}
            for kept in args.kept:
                for variant, options in variants.items():
                    result = solver(weight, layer, CompressionSpec(), rank=kept, **options)
                    row[f"{variant}@{kept}"] = result.objective
                    row[f"rank@{kept}"] = result.factors[0].shape[1]
            rows.append(row)
            print(name, {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items() if "@" in k},
                  flush=True)
        return False  # nothing written: the next block sees dense activations

    prefix = layers_prefix(model)
    wanted = {n for i, b in enumerate(model.model.layers) for n in block_linears(b, f"{prefix}.{i}")}
    with torch.no_grad():
        inputs = capture_block_inputs(model, ids)
        walk_blocks(model, inputs, solve_block, select=wanted.__contains__, progress=False)
    seconds = time.perf_counter() - tic
    summary = {}
    for kept in args.kept:
        worse = [r["name"] for r in rows if r[f"lowrank@{kept}"] > r[f"svd@{kept}"]]
        worse0 = [r["name"] for r in rows if r[f"lowrank_damping0@{kept}"] > r[f"svd@{kept}"] * (1 + 1e-9)]
        ratios = [r[f"lowrank@{kept}"] / r[f"svd@{kept}"] for r in rows if r[f"svd@{kept}"] > 0]
        summary[str(kept)] = {
            "layers": len(rows), "lowrank_worse_than_svd": worse, "lowrank_damping0_worse_than_svd": worse0,
            "mean_lowrank": sum(r[f"lowrank@{kept}"] for r in rows) / len(rows),
            "mean_lowrank_damping0": sum(r[f"lowrank_damping0@{kept}"] for r in rows) / len(rows),
            "mean_svd": sum(r[f"svd@{kept}"] for r in rows) / len(rows),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
        }
    out = {"command": " ".join(["python", "benchmarks/lowrank_layers.py", *(argv or sys.argv[1:])]),
           "nsamples": args.nsamples, "seqlen": args.seqlen, "seconds": round(seconds, 1),
           "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
           "torch_threads": torch.get_num_threads(), "summary": summary, "layers": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"{len(rows)} layers in {seconds:.1f}s, load {out['load_before']} -> {out['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""AWP against ALPS on real layers: the layer objective of AWP's default, ALPS and AWP variants on the same C.

Stage 1 (``--capture``): C = X Xᵀ / n of every linear of a few decoder blocks of the embedded Gemma-3-270M
(dense inputs; 32 x 512 calibration tokens of Wikipedia (gensim sample), seed 0, as the fidelity benchmark)
and the dense weights, saved to ``--cache`` (a torch file). Stage 2 (default): every variant on every
cached layer, per setting; prints the relative objective tr(ΔCΔᵀ)/tr(WCWᵀ) and seconds of each, and the
geometric mean of each variant's objective relative to ALPS (row scope: AWP's constraint set).

    python benchmarks/awp_vs_alps.py --capture --blocks 0 9 --cache /tmp/awp_vs_alps.pt
    python benchmarks/awp_vs_alps.py --cache /tmp/awp_vs_alps.pt --settings 70% 2:4 --variants awp 'alps row' ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from optimum_awp.solvers import CompressionSpec, LayerStats, get_solver, relative_objective
from optimum_awp.solvers import shared

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def capture(blocks: list[int], nsamples: int, seqlen: int, cache: Path) -> None:
    from optimum_awp.data import calibration_samples, embedded_model
    from optimum_awp.evaluate import load_model

    model, tok = load_model(embedded_model(), dtype="float32")
    ids = calibration_samples(tok, nsamples=nsamples, seqlen=seqlen, seed=0)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    layers = model.model.layers
    for b in blocks:
        for name in LINEARS:
            key = f"layers.{b}.{name}"

            def hook(module, args, key=key):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
                sums[key] = sums.get(key, 0) + x.T @ x
                counts[key] = counts.get(key, 0) + x.shape[0]

            handles.append(layers[b].get_submodule(name).register_forward_pre_hook(hook))
    with torch.no_grad():
        for row in ids:
            model.model(row.unsqueeze(0))
    for h in handles:
        h.remove()
    data = {key: {"covariance": sums[key] / counts[key], "nsamples": counts[key],
                  "weight": layers[int(key.split(".")[1])].get_submodule(key.split(".", 2)[2]).weight.detach().clone()}
            for key in sums}
    torch.save(data, cache)
    print(f"saved {len(data)} layers to {cache}")


def spec_of(setting: str) -> CompressionSpec:
    if setting.endswith("+int4"):
        base = spec_of(setting.removesuffix("+int4"))
        return CompressionSpec(sparsity=base.sparsity, pattern=base.pattern, bits=4, group_size=128)
    if ":" in setting:
        n, m = setting.split(":")
        return CompressionSpec(pattern=(int(n), int(m)))
    return CompressionSpec(sparsity=float(setting.rstrip("%")) / 100)


VARIANTS = {  # name: (solver, options)
    "sparsegpt": ("sparsegpt", {}),
    "awp": ("awp", {}),
    "awp old": ("awp", {"bf16_products": False, "polish_iterations": 0}),
    "alps row": ("alps", {"scope": "row"}),
    "alps layer": ("alps", {"scope": "layer"}),
}


def add_variant(spec_text: str) -> None:
    """'awp key=value ...' or 'alps key=value ...' adds a variant of that name (values parsed as JSON)."""
    solver, *pairs = spec_text.split()
    options = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    VARIANTS[spec_text] = (solver, options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--capture", action="store_true")
    p.add_argument("--blocks", type=int, nargs="+", default=[0, 9])
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--cache", type=Path, default=Path("/tmp/awp_vs_alps.pt"))
    p.add_argument("--settings", nargs="+", default=["70%", "2:4"])
    p.add_argument("--layers", nargs="+", default=None, help="substrings of the layer names to keep")
    p.add_argument("--variants", nargs="+", default=["awp", "alps row"],
                   help="names of VARIANTS or 'SOLVER key=value ...'")
    p.add_argument("--reference", default="alps row")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="append the rows to this JSON-lines file")
    p.add_argument("--table", type=Path, nargs="+", default=None,
                   help="print markdown tables of these JSON-lines files (objective / reference per layer) and exit")
    args = p.parse_args()
    if args.table:
        table(args.table, args.reference)
        return
    torch.set_num_threads(args.threads)
    if args.capture:
        capture(args.blocks, args.nsamples, args.seqlen, args.cache)
        return
    for v in args.variants:
        if v not in VARIANTS:
            add_variant(v)
    data = torch.load(args.cache)
    names = [k for k in data if args.layers is None or any(s in k for s in args.layers)]
    print(f"load average {Path('/proc/loadavg').read_text().strip()}; {torch.get_num_threads()} threads", flush=True)
    heads = list(dict.fromkeys([args.reference, *args.variants]))
    rows = []
    for setting in args.settings:
        spec = spec_of(setting)
        for key in names:
            entry = data[key]
            stats = LayerStats(covariance=entry["covariance"], nsamples=entry["nsamples"])
            weight = entry["weight"].to(torch.float32)
            line = {"setting": setting, "layer": key}
            for variant in heads:
                solver, options = VARIANTS[variant]
                shared.clear()  # every variant prepares its own C (no sharing between runs)
                tic = time.perf_counter()
                result = get_solver(solver)(weight, stats, spec, **options)
                seconds = time.perf_counter() - tic
                objective = relative_objective(weight, result.weight, stats.covariance.to(torch.float64))
                line[variant] = (objective, seconds, result.iterations)
            rows.append(line)
            ref = line[args.reference][0]
            print(f"{setting} {key}: " + "; ".join(
                f"{v} {line[v][0]:.5f} ({line[v][0] / ref:.3f}, {line[v][1]:.1f}s, {line[v][2]} it)" for v in heads),
                flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(line) + "\n")
    print("\ngeometric mean of objective / " + args.reference + ", total seconds:")
    for setting in args.settings:
        sub = [r for r in rows if r["setting"] == setting]
        for v in heads:
            gm = statistics.geometric_mean([r[v][0] / r[args.reference][0] for r in sub])
            worst = max(r[v][0] / r[args.reference][0] for r in sub)
            wins = sum(r[v][0] <= r[args.reference][0] * (1 + 1e-6) for r in sub)
            total = sum(r[v][1] for r in sub)
            print(f"  {setting:10s} {v:60s} gm {gm:.4f}  worst {worst:.4f}  <= ref on {wins}/{len(sub)}  {total:.1f}s")
    print(f"load average {Path('/proc/loadavg').read_text().strip()}", flush=True)


def table(paths: list[Path], reference: str) -> None:
    """Markdown: per setting, each layer's objective / the reference's, seconds summed, geometric means."""
    rows = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        sub = [r for r in rows if r["setting"] == setting]
        heads = [k for k in sub[0] if k not in ("setting", "layer")]
        print(f"\n{setting}: objective / {reference} (the reference's own objective in its column)\n")
        print("| layer | " + " | ".join(heads) + " |")
        print("|---|" + "---:|" * len(heads))
        for r in sub:
            ref = r[reference][0]
            print(f"| {r['layer']} | " + " | ".join(f"{r[v][0]:.5f}" if v == reference else f"{r[v][0] / ref:.3f}"
                                                      for v in heads) + " |")
        gm = [statistics.geometric_mean([r[v][0] / r[reference][0] for r in sub]) for v in heads]
        worst = [max(r[v][0] / r[reference][0] for r in sub) for v in heads]
        wins = [sum(r[v][0] <= r[reference][0] * (1 + 1e-6) for r in sub) for v in heads]
        secs = [sum(r[v][1] for r in sub) for v in heads]
        print("| **geometric mean** | " + " | ".join(f"**{g:.3f}**" for g in gm) + " |")
        print("| worst layer | " + " | ".join(f"{w:.3f}" for w in worst) + " |")
        print("| layers <= reference | " + " | ".join(f"{w}/{len(sub)}" for w in wins) + " |")
        print("| seconds (all layers) | " + " | ".join(f"{t:.1f}" for t in secs) + " |")


if __name__ == "__main__":
    main()

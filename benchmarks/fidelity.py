"""Fidelity benchmark: perplexity of the embedded Gemma-3-270M compressed by every method.

For each setting (50/60/70/80% unstructured, 2:4, INT4 g128, 2:4 + INT4 g128, 50% + INT4 g128)
and each method that applies to it, the dense model is restored, compressed with
``optimum_awp.compress`` (dense Θ kept in nn.Linear: ``pack=False``) on ONE set of calibration
tokens shared by every method, and evaluated on the held-out part of "Wikipedia (gensim sample)".
Besides AWP with AWPConfig's defaults ("awp"), two variants run: "awp-paper" (the paper's plain step
η = 1/λ_max(C) from Wanda's mask) and "awp-sparsegpt" (from SparseGPT's solution, on the layer's top-k
for unstructured sparsity); see ``AWP_VARIANTS``.

Results go to ``docs/results/fidelity.json`` after every run (``--resume`` skips the runs already
there), and ``fidelity.md`` / ``fidelity.png`` are rewritten from the JSON. Text after the notes
marker in the md is kept across rewrites.

    python benchmarks/fidelity.py --quick                 # 32 x 512 calibration, 16 x 512 eval
    python benchmarks/fidelity.py                         # 128 x 2048 calibration, all eval windows
    python benchmarks/fidelity.py --quick --settings 70% 2:4+int4 --methods wanda awp --resume
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from optimum_awp.cli.arguments import add_solver_arguments

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "fidelity.md"
NOTES_MARKER = "<!-- notes: text below this line is kept when benchmarks/fidelity.py rewrites the file -->"
MODEL_NAME = "Gemma-3-270M (dequantized Q4_K_M GGUF)"
TEXT_NAME = "Wikipedia (gensim sample)"


@dataclass(frozen=True)
class Setting:
    """A compression target: AWPConfig's sparsity / bits, the methods compared, the plot position."""

    name: str
    sparsity: float | str | None
    bits: int | None
    kind: str  # "prune", "quant" or "joint"


SETTINGS = {
    s.name: s
    for s in (
        Setting("50%", 0.5, None, "prune"),
        Setting("60%", 0.6, None, "prune"),
        Setting("70%", 0.7, None, "prune"),
        Setting("80%", 0.8, None, "prune"),
        Setting("2:4", "2:4", None, "prune"),
        Setting("int4", None, 4, "quant"),
        Setting("2:4+int4", "2:4", 4, "joint"),
        Setting("50%+int4", 0.5, 4, "joint"),
    )
}
METHODS = {
    "prune": ("magnitude", "wanda", "sparsegpt", "awp-paper", "awp", "awp-sparsegpt"),
    "quant": ("rtn", "awq", "gptq", "awp-paper", "awp"),
    "joint": ("wanda", "awq", "sparsegpt", "awp-paper", "awp", "awp-sparsegpt"),
}
# Runs of the awp solver with settings other than AWPConfig's defaults: run name -> AWPConfig fields.
AWP_VARIANTS = {
    # the paper's plain projected gradient: η = 1/λ_max(C), Wanda start, row top-k
    "awp-paper": {"step": "lambda_max", "momentum": False, "init": "wanda", "scope": "row"},
    # from SparseGPT's solution, on the layer's top-k for unstructured sparsity (the set of SparseGPT's
    # block-wise masks); N:M ignores the scope
    "awp-sparsegpt": {"init": "sparsegpt", "scope": "layer"},
}
LABELS = {"magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT", "awp": "AWP", "rtn": "RTN",
          "awq": "AWQ", "gptq": "GPTQ", "awp-paper": "AWP (paper step)", "awp-sparsegpt": "AWP (SparseGPT start)"}
JOINT_LABELS = {"wanda": "Wanda + RTN", "awq": "Wanda + AWQ", "sparsegpt": "SparseGPT (joint)", "awp": "AWP (joint)",
                "awp-paper": "AWP (joint, paper step)", "awp-sparsegpt": "AWP (joint, SparseGPT start)"}
GROUP_SIZE = 128  # the GGUF's own 4-bit blocks are 32 wide: group 32 would flatter every 4-bit method


def label(method: str, setting: Setting) -> str:
    return (JOINT_LABELS if setting.kind == "joint" else LABELS).get(method, method)


def solver_of(method: str) -> str:
    """The registered solver behind a run name ("awp-paper" -> "awp")."""
    return "awp" if method in AWP_VARIANTS else method


# --------------------------------------------------------------------------------------------------
# Arguments and the run plan
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="32 x 512 calibration tokens, 16 x 512 eval windows")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="SETTING",
                   help=f"subset of {list(SETTINGS)}".replace("%", "%%"))
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="subset of the methods (default: every registered method that applies)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="skip the runs already in the JSON")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the markdown file (JSON and PNG sit beside it)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration samples (quick 32, full 128)")
    p.add_argument("--seqlen", type=int, default=None, help="calibration sequence length (quick 512, full 2048)")
    p.add_argument("--eval-windows", type=int, default=None, help="eval windows (quick 16, full all)")
    p.add_argument("--eval-seqlen", type=int, default=None, help="eval window length (quick 512, full 2048)")
    add_solver_arguments(p)  # every declared solver option; each run passes its method's own
    p.add_argument("--batch-size", type=int, default=1, help="calibration samples per block forward")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    p.add_argument("--log-level", default="WARNING", help="level of the optimum_awp loggers")
    args = p.parse_args(argv)
    quick = {"nsamples": 32, "seqlen": 512, "eval_windows": 16, "eval_seqlen": 512}
    full = {"nsamples": 128, "seqlen": 2048, "eval_windows": None, "eval_seqlen": 2048}
    defaults = quick if args.quick else full
    args.mode = "quick" if args.quick else "full"
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        elif getattr(args, key) != value:
            args.mode = "custom"
    return args


def registered_methods(wanted: list[str] | None) -> set[str]:
    """Methods with a registered solver (importing each solver module registers it)."""
    from optimum_awp.solvers import SOLVERS

    names = set(wanted or [m for ms in METHODS.values() for m in ms])
    for name in sorted({solver_of(n) for n in names}):
        if name not in SOLVERS:
            try:
                importlib.import_module(f"optimum_awp.solvers.{name}")
            except ModuleNotFoundError as err:  # no such solver module: the method is skipped
                if err.name != f"optimum_awp.solvers.{name}":
                    raise
    missing = sorted(n for n in names if solver_of(n) not in SOLVERS)
    if wanted and missing:
        raise SystemExit(f"--methods names unregistered solvers {missing}; registered: {sorted(SOLVERS)} "
                         f"and the awp variants {sorted(AWP_VARIANTS)}")
    return {n for n in names if solver_of(n) in SOLVERS}


def plan(args: argparse.Namespace) -> list[tuple[Setting, str]]:
    """(setting, method) runs in order: settings as given, methods in the table order of each kind."""
    available = registered_methods(args.methods)
    return [(SETTINGS[s], m) for s in args.settings for m in METHODS[SETTINGS[s].kind] if m in available]


# --------------------------------------------------------------------------------------------------
# Model, data, restore
# --------------------------------------------------------------------------------------------------


def block_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights compress() may change (every nn.Linear of the decoder blocks), by parameter name."""
    from optimum_awp.calibration import block_linears, decoder_layers, layers_prefix

    prefix = layers_prefix(model)
    out = {}
    for i, block in enumerate(decoder_layers(model)):
        for name, linear in block_linears(block, f"{prefix}.{i}").items():
            out[f"{name}.weight"] = linear.weight
    return out


def restore(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy the saved dense block weights back into ``model`` (the module tree is unchanged with pack=False)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def measure_restore(model: torch.nn.Module, saved: dict[str, torch.Tensor], path: Path) -> dict[str, float]:
    """Seconds to restore by copying the saved weights vs reloading the checkpoint from disk."""
    from transformers import AutoModelForCausalLM

    tic = time.perf_counter()
    restore(model, saved)
    copy_s = time.perf_counter() - tic
    tic = time.perf_counter()
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    reload_s = time.perf_counter() - tic
    del reloaded
    return {"restore_copy_seconds": round(copy_s, 3), "restore_reload_seconds": round(reload_s, 3)}


def machine() -> dict[str, str | int]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


# --------------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------------


def load_results(path: Path, meta: dict, resume: bool) -> dict:
    """The JSON results; with ``resume`` its calibration/eval settings must equal ``meta``'s."""
    if resume and path.exists():
        data = json.loads(path.read_text())
        keys = ("nsamples", "seqlen", "eval_windows", "eval_seqlen", "awp_options")
        diff = {k: (data["meta"].get(k), meta[k]) for k in keys if data["meta"].get(k) != meta[k]}
        if diff:
            raise SystemExit(f"--resume: {path} was made with other settings {diff}; use another --out.")
        data["meta"].update({k: v for k, v in meta.items() if k not in ("started",)})
        return data
    return {"meta": meta, "runs": {}}


def save_results(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# Markdown and plot
# --------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def results_table(data: dict) -> list[str]:
    runs = data["runs"]
    dense = runs.get("dense")
    lines = [
        "| Setting | Method | Perplexity | × dense | Mean layer objective | Compression time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    if dense:
        lines.append(f"| dense | — | {dense['ppl']:.3f} | 1.00 | 0 | — |")
    for setting in SETTINGS.values():
        for method in METHODS[setting.kind]:
            run = runs.get(f"{setting.name}/{method}")
            if run is None:
                continue
            ratio = run["ppl"] / dense["ppl"] if dense else None
            lines.append(
                f"| {setting.name} | {label(method, setting)} | {run['ppl']:.3f} | {_fmt(ratio, '.2f')} | "
                f"{_fmt(run['mean_objective'], '.4f')} | {run['compress_seconds']:.1f} |"
            )
    return lines


def target_lines(data: dict) -> list[str]:
    """The targets of the issue, each checked on the runs present: met, MISSED, or not run."""
    runs = data["runs"]

    def ppl(setting: str, method: str) -> float | None:
        run = runs.get(f"{setting}/{method}")
        return run["ppl"] if run else None

    out = []
    for setting in SETTINGS.values():
        awp = ppl(setting.name, "awp")
        others = {m: ppl(setting.name, m) for m in METHODS[setting.kind]
                  if solver_of(m) != "awp" and ppl(setting.name, m)}
        if awp is None or not others:
            continue
        best_method = min(others, key=others.get)
        ok = awp <= others[best_method]
        out.append(f"- {setting.name}: AWP {awp:.3f} vs best baseline {label(best_method, setting)} "
                   f"{others[best_method]:.3f}: {'met' if ok else '**MISSED**'}")
    checks = [("70%", "wanda", 0.5, "70% unstructured: AWP ≤ 0.5 × Wanda"),
              ("2:4+int4", "wanda", 0.9, "2:4 + INT4: AWP ≤ 0.9 × Wanda + RTN")]
    for setting, base, factor, text in checks:
        a, b = ppl(setting, "awp"), ppl(setting, base)
        if a is not None and b is not None:
            out.append(f"- {text}: {a:.3f} vs {factor} × {b:.3f} = {factor * b:.3f} (ratio {a / b:.2f}): "
                       f"{'met' if a <= factor * b else '**MISSED**'}")
    for setting in SETTINGS.values():
        a, b = runs.get(f"{setting.name}/awp"), runs.get(f"{setting.name}/sparsegpt")
        if a and b:
            ok = a["compress_seconds"] <= b["compress_seconds"]
            out.append(f"- {setting.name} compression time: AWP {a['compress_seconds']:.1f}s vs SparseGPT "
                       f"{b['compress_seconds']:.1f}s: {'met' if ok else '**MISSED**'}")
    return out or ["- no AWP run yet"]


def write_markdown(path: Path, data: dict, png: Path | None) -> None:
    meta = data["meta"]
    notes = ""
    if path.exists():
        text = path.read_text()
        if NOTES_MARKER in text:
            notes = text.split(NOTES_MARKER, 1)[1].strip("\n")
    dates = sorted(r["date"] for r in data["runs"].values() if "date" in r)
    mach = meta["machine"]
    eval_windows = meta.get("eval_windows_run") or meta["eval_windows"] or "all"
    opts = ", ".join(f"{k}={v}" for k, v in meta["awp_options"].items())
    lines = [
        "# Fidelity: perplexity after compression",
        "",
        f"{MODEL_NAME}, perplexity on the held-out part of {TEXT_NAME} (lower is better). Every method "
        "compresses every linear layer of the 18 decoder blocks, block by block on the outputs of the "
        "blocks already compressed; embeddings and the tied lm_head stay dense. INT4 is group 128, "
        "symmetric. The mean layer objective is the mean over layers of tr(ΔCΔᵀ)/tr(WCWᵀ).",
        "",
        f"## Results ({meta['mode']} mode): {MODEL_NAME} on {TEXT_NAME}",
        "",
        *results_table(data),
        "",
    ]
    if png is not None and png.exists():
        lines += [f"![perplexity vs sparsity]({png.name})", ""]
    lines += [
        "## Targets",
        "",
        *target_lines(data),
        "",
        "## Settings",
        "",
        f"- calibration: {meta['nsamples']} samples × {meta['seqlen']} tokens (BOS first) from the calibration "
        f"part of {TEXT_NAME}, seed 0, the same tokens for every method",
        f"- evaluation: {eval_windows} windows × {meta['eval_seqlen']} tokens (BOS + {meta['eval_seqlen'] - 1} "
        f"scored tokens each, {meta.get('eval_tokens', '?')} scored tokens) of the evaluation part",
        f"- solver options (AWPConfig): {opts}; statistics in float32",
        f"- dense weights restored between runs by copying the saved block weights "
        f"({meta.get('restore_copy_seconds', '?')} s; reloading from disk takes {meta.get('restore_reload_seconds', '?')} s)",
        f"- machine: {mach['cpu']}, {mach['cores']} cores, {mach['torch_threads']} torch threads; torch "
        f"{mach['torch']}, transformers {mach['transformers']}, Python {mach['python']}",
        f"- dates (UTC): {dates[0] if dates else '—'} to {dates[-1] if dates else '—'}",
        f"- command: `{meta['command']}`",
        "",
        NOTES_MARKER,
        notes,
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(path: Path, data: dict) -> bool:
    """Perplexity vs unstructured sparsity (one line per method, log scale) and the fixed formats."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = data["runs"]
    unstructured = [s for s in SETTINGS.values() if s.kind == "prune" and isinstance(s.sparsity, float)]
    others = [s for s in SETTINGS.values() if s not in unstructured]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for method in METHODS["prune"]:
        pts = [(s.sparsity, runs[f"{s.name}/{method}"]["ppl"]) for s in unstructured if f"{s.name}/{method}" in runs]
        if pts:
            left.plot(*zip(*pts), marker="o", label=LABELS[method])
    if "dense" in runs:
        for ax in (left, right):
            ax.axhline(runs["dense"]["ppl"], color="gray", linestyle="--", linewidth=1, label="dense")
    left.set(xlabel="unstructured sparsity", ylabel="perplexity", yscale="log", title="Unstructured pruning")
    left.legend()
    names = [s.name for s in others]
    all_methods = [m for m in dict.fromkeys(m for s in others for m in METHODS[s.kind])]
    for j, method in enumerate(all_methods):
        pts = [(i + 0.12 * (j - len(all_methods) / 2), runs[f"{s.name}/{method}"]["ppl"])
               for i, s in enumerate(others) if f"{s.name}/{method}" in runs]
        if pts:
            right.scatter(*zip(*pts), label=LABELS[method], marker="os^vDP"[j % 6])
    right.set_xticks(range(len(names)), names)
    right.set(ylabel="perplexity", yscale="log", title="2:4, INT4 g128 and joint (joint: Wanda = Wanda+RTN, AWQ = Wanda+AWQ)")
    right.title.set_fontsize(8)
    right.legend(fontsize=8)
    fig.suptitle(f"{MODEL_NAME} on {TEXT_NAME}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_reports(md: Path, data: dict) -> None:
    png = md.with_suffix(".png")
    write_plot(png, data)
    write_markdown(md, data, png)


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def evaluate(model, tokens, bos, args) -> dict:
    from optimum_awp.evaluate import perplexity_of_tokens

    result = perplexity_of_tokens(model, tokens, args.eval_seqlen, bos, nwindows=args.eval_windows,
                                  progress=not args.no_progress)
    return {"ppl": result.ppl, "nll": result.nll, "eval_tokens": result.tokens, "eval_windows": result.windows,
            "eval_seconds": round(result.seconds, 2)}


def run_options(method: str, args) -> dict:
    """The options of one run: the command line's, for those its solver declares, then its variant's."""
    from optimum_awp.cli.arguments import solver_options
    from optimum_awp.solvers import get_solver

    declared = {spec.name for spec in get_solver(solver_of(method)).option_specs()}
    given = {k: v for k, v in solver_options(args).items() if k in declared}
    return {**given, **AWP_VARIANTS.get(method, {})}


def run_one(model, setting: Setting, method: str, ids: torch.Tensor, args) -> dict:
    """Compress the (restored, dense) model with one method and return its compression figures."""
    from optimum_awp.compress import compress
    from optimum_awp.config import AWPConfig

    config = AWPConfig(method=solver_of(method), sparsity=setting.sparsity, bits=setting.bits, group_size=GROUP_SIZE,
                       nsamples=ids.shape[0], seqlen=ids.shape[1], **run_options(method, args))
    report = compress(model, config, ids, pack=False, progress=not args.no_progress, batch_size=args.batch_size)
    return {
        "options": report.config.options,
        "compress_seconds": round(report.seconds, 2),
        "mean_objective": report.mean_objective,
        "layers": [{"name": l.name, "objective": l.objective, "iterations": l.iterations,
                    "seconds": round(l.seconds, 3)} for l in report.layers],
    }


def awp_options(args) -> dict:
    """AWP's options in this benchmark: its declared defaults with the command line's changes."""
    from optimum_awp.config import AWPConfig

    return AWPConfig(sparsity=0.5, **run_options("awp", args)).options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("optimum_awp").setLevel(args.log_level.upper())
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = plan(args)
    md = args.out
    md.parent.mkdir(parents=True, exist_ok=True)
    json_path = md.with_suffix(".json")

    from optimum_awp.data import calibration_samples, embedded_model, eval_tokens
    from optimum_awp.evaluate import load_model

    tic = time.perf_counter()
    path = embedded_model()
    model, tok = load_model(path, dtype="float32")
    print(f"model loaded in {time.perf_counter() - tic:.1f}s from {path}", flush=True)
    ids = calibration_samples(tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    tokens = eval_tokens(tok)
    saved = {name: w.detach().clone() for name, w in block_weights(model).items()}
    meta = {
        "mode": args.mode, "nsamples": args.nsamples, "seqlen": args.seqlen,
        "eval_windows": args.eval_windows, "eval_seqlen": args.eval_seqlen, "awp_options": awp_options(args),
        "group_size": GROUP_SIZE, "machine": machine(), "command": " ".join(["python", "benchmarks/fidelity.py", *(argv or sys.argv[1:])]),
        "model": MODEL_NAME, "text": TEXT_NAME, "started": now(),
    }
    data = load_results(json_path, meta, args.resume)
    if "restore_copy_seconds" not in data["meta"]:
        data["meta"].update(measure_restore(model, saved, path))
        print(f"restore: copy {data['meta']['restore_copy_seconds']}s, reload {data['meta']['restore_reload_seconds']}s",
              flush=True)

    if "dense" not in data["runs"]:
        result = evaluate(model, tokens, tok.bos_token_id, args)
        data["runs"]["dense"] = {**result, "date": now()}
        data["meta"].update(eval_tokens=result["eval_tokens"], eval_windows_run=result["eval_windows"])
        save_results(json_path, data)
        print(f"dense: ppl {result['ppl']:.3f} ({result['eval_seconds']}s eval)", flush=True)
    for setting, method in runs:
        key = f"{setting.name}/{method}"
        if key in data["runs"]:
            continue
        restore(model, saved)
        figures = run_one(model, setting, method, ids, args)
        result = evaluate(model, tokens, tok.bos_token_id, args)
        data["runs"][key] = {**figures, **result, "date": now()}
        save_results(json_path, data)
        write_reports(md, data)
        print(f"{key}: ppl {result['ppl']:.3f}, mean objective {figures['mean_objective']:.4f}, "
              f"compress {figures['compress_seconds']:.1f}s, eval {result['eval_seconds']:.1f}s", flush=True)
    restore(model, saved)
    write_reports(md, data)
    print(f"wrote {md}, {json_path.name} and {md.with_suffix('.png').name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

Any checkpoint and text: ``--model PATH|HUB_ID`` (default the embedded Gemma-3-270M) and ``--dataset
NAME|FILE`` (default "wikipedia-gensim"; its calibration part calibrates, its evaluation part evaluates).

Noise: ``--seeds N`` compresses every cell with N calibration seeds (0..N-1) and reports the mean and
the spread; every perplexity comes with the standard error of its mean NLL over the evaluation
windows, and the md gives paired window-by-window NLL differences of AWP against each other method.
Evaluation windows are spread over the whole evaluation split, one in every article when there are at least
as many windows as articles, not its first tokens (``--first-windows`` gives the old choice).

Headline mode (``--headline``): 70 %, 80 %, 2:4 and 2:4 + INT4, with Wanda, SparseGPT, ALPS and AWP,
quick-mode calibration (32 x 512), 32 x 256 evaluation windows (one in each of the 30 articles, then
spread) and 3 seeds, written to ``docs/results/fidelity_headline.{md,json,png}``. Shared by
all runs: the model load, the calibration samples of each seed, the evaluation windows (tokenized
once), and the dense evaluation.

    python benchmarks/fidelity.py --quick                 # 32 x 512 calibration, 16 x 512 eval
    python benchmarks/fidelity.py                         # 128 x 2048 calibration, all eval windows
    python benchmarks/fidelity.py --quick --settings 70% 2:4+int4 --methods wanda awp --resume
    python benchmarks/fidelity.py --headline              # the headline table, 3 seeds
    python benchmarks/fidelity.py --headline --seeds 1 --model ./my-model --dataset my_text.txt
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
HEADLINE_OUT = ROOT / "docs" / "results" / "fidelity_headline.md"
DEFAULT_DATASET = "wikipedia-gensim"
NOTES_MARKER = "<!-- notes: text below this line is kept when benchmarks/fidelity.py rewrites the file -->"
MODEL_NAME = "Gemma-3-270M (dequantized Q4_K_M GGUF)"
TEXT_NAME = "Wikipedia (gensim sample)"


@dataclass(frozen=True)
class Setting:
    """A compression target: AWPConfig's sparsity / bits, the methods compared, the plot position."""

    name: str
    sparsity: float | str | None
    bits: int | None
    kind: str  # "prune", "quant", "joint", "rank" (low-rank alone) or "sparse+rank" (AWP + low-rank)
    rank: float | None = None  # lowrank's rank option: a rank >= 1, or the share of each layer's parameters kept


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
        # low-rank alone at 20 / 40 / 50 % parameter reduction (rank = share of each layer's parameters kept)
        Setting("lowrank-20%", None, None, "rank", rank=0.8),
        Setting("lowrank-40%", None, None, "rank", rank=0.6),
        Setting("lowrank-50%", None, None, "rank", rank=0.5),
        # AWP + low-rank at the bytes of AWP alone (``bytes_per_weight``): 80 % + 0.1 = 75 % + 0.05 = 70 %,
        # 70 % + 0.1 = 60 %,
        # and a 2:4 mask plus a small rank (0.05: 1.225 B/w, the bytes of 45 % unstructured)
        Setting("80%+lr0.1", 0.8, None, "sparse+rank", rank=0.1),
        Setting("75%+lr0.05", 0.75, None, "sparse+rank", rank=0.05),
        Setting("70%+lr0.1", 0.7, None, "sparse+rank", rank=0.1),
        Setting("2:4+lr0.05", "2:4", None, "sparse+rank", rank=0.05),
        Setting("45%", 0.45, None, "prune"),
    )
}
METHODS = {
    "prune": ("magnitude", "wanda", "sparsegpt", "sparsegpt-dense", "alps", "alps-dense", "awp-paper", "awp",
              "awp-sparsegpt", "awp-dense"),
    "quant": ("rtn", "awq", "gptq", "awp-paper", "awp"),
    "joint": ("wanda", "awq", "sparsegpt", "sparsegpt-dense", "alps", "alps-dense", "awp-paper", "awp",
              "awp-sparsegpt", "awp-dense"),
    "rank": ("lowrank-svd", "lowrank"),
    "sparse+rank": ("lowrank",),
}
# Runs of the lowrank solver with settings other than its defaults: run name -> AWPConfig fields.
LOWRANK_VARIANTS = {"lowrank-svd": {"activation_aware": False}}  # plain SVD of W, the activation-blind baseline
# Runs with AWPConfig(dense_targets=True): each layer fitted to the dense model's outputs (run name -> solver).
DENSE_VARIANTS = {"awp-dense": "awp", "alps-dense": "alps", "sparsegpt-dense": "sparsegpt"}
HEADLINE_SETTINGS = ("70%", "80%", "2:4", "2:4+int4")
HEADLINE_METHODS = ("wanda", "sparsegpt", "alps", "awp")
# Runs of the awp solver with settings other than AWPConfig's defaults: run name -> AWPConfig fields.
AWP_VARIANTS = {
    # the paper's plain projected gradient: η = 1/λ_max(C), Wanda start, row top-k
    "awp-paper": {"step": "lambda_max", "momentum": False, "init": "wanda", "scope": "row"},
    # from SparseGPT's solution, on the layer's top-k for unstructured sparsity (the set of SparseGPT's
    # block-wise masks); N:M ignores the scope
    "awp-sparsegpt": {"init": "sparsegpt", "scope": "layer"},
}
LABELS = {"magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT", "awp": "AWP", "rtn": "RTN",
          "awq": "AWQ", "gptq": "GPTQ", "awp-paper": "AWP (paper step)", "awp-sparsegpt": "AWP (SparseGPT start)",
          "alps": "ALPS", "awp-dense": "AWP (dense targets)", "alps-dense": "ALPS (dense targets)",
          "sparsegpt-dense": "SparseGPT (dense targets)", "lowrank": "low-rank (W C^1/2, this package)", "lowrank-svd": "plain SVD of W"}
SPARSE_RANK_LABELS = {"lowrank": "AWP + low-rank"}
JOINT_LABELS = {"wanda": "Wanda + RTN", "awq": "Wanda + AWQ", "sparsegpt": "SparseGPT (joint)", "awp": "AWP (joint)",
                "alps": "ALPS + OBS INT4",
                "awp-paper": "AWP (joint, paper step)", "awp-sparsegpt": "AWP (joint, SparseGPT start)",
                "awp-dense": "AWP (joint, dense targets)", "alps-dense": "ALPS + OBS INT4 (dense targets)",
                "sparsegpt-dense": "SparseGPT (joint, dense targets)"}
GROUP_SIZE = 128  # the GGUF's own 4-bit blocks are 32 wide: group 32 would flatter every 4-bit method


def label(method: str, setting: Setting) -> str:
    labels = {"joint": JOINT_LABELS, "sparse+rank": SPARSE_RANK_LABELS}.get(setting.kind, LABELS)
    return labels.get(method, LABELS.get(method, method))


def solver_of(method: str) -> str:
    """The registered solver behind a run name ("awp-paper" -> "awp", "lowrank-svd" -> "lowrank")."""
    if method in DENSE_VARIANTS:
        return DENSE_VARIANTS[method]
    return "awp" if method in AWP_VARIANTS else "lowrank" if method in LOWRANK_VARIANTS else method


def bytes_per_weight(setting: Setting, shapes: list[tuple[int, int]], dtype_bytes: int = 2) -> float:
    """Stored bytes per weight of the block linears of ``shapes`` (out, in) in ``setting``, values in a
    ``dtype_bytes`` model dtype (bf16: 2), scales per group of 128:

    - dense: ``dtype_bytes``; 2:4: half the values + 2-bit positions (1/8 byte per weight);
    - unstructured p: the bitmap format's values (1 - p) + 1 bit per weight (what the ``bitmap-k+lowrank``
      format stores; optimum-awp keeps unstructured pruning alone in nn.Linear, so for AWP alone this is the
      size of that layout, not of its checkpoint);
    - INT4: half a byte per value + one scale per 128 inputs;
    - factors of rank r: r (out + in) values.
    """
    from optimum_awp.solvers.lowrank import layer_rank
    from optimum_awp.solvers.projections import keep_count

    total = weights = 0.0
    for out_f, in_f in shapes:
        weights += out_f * in_f
        value = 0.5 if setting.bits else dtype_bytes
        scales = out_f * in_f / GROUP_SIZE * dtype_bytes if setting.bits else 0.0
        if setting.sparsity == "2:4":
            part = out_f * in_f / 2 * value + out_f * in_f / 8
        elif isinstance(setting.sparsity, float):
            part = out_f * keep_count(in_f, setting.sparsity) * value + out_f * in_f / 8
        elif setting.kind == "rank":
            part = 0.0
        else:
            part = out_f * in_f * value
        total += part + scales
        if setting.rank is not None:
            total += layer_rank(setting.rank, out_f, in_f) * (out_f + in_f) * dtype_bytes
    return total / weights


# --------------------------------------------------------------------------------------------------
# Arguments and the run plan
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="32 x 512 calibration tokens, 16 x 512 eval windows")
    p.add_argument("--headline", action="store_true",
                   help=f"the headline table: settings {list(HEADLINE_SETTINGS)}, methods {list(HEADLINE_METHODS)}, "
                   f"32 x 512 calibration, 32 x 256 eval windows (every article), 3 seeds, out {HEADLINE_OUT.name}".replace("%", "%%"))
    p.add_argument("--model", default=None, metavar="PATH",
                   help="checkpoint folder or Hub id (default: the embedded Gemma-3-270M, dequantized GGUF)")
    p.add_argument("--dataset", default=DEFAULT_DATASET, metavar="NAME|FILE",
                   help=f"text source name or text file for calibration and evaluation (default {DEFAULT_DATASET})")
    p.add_argument("--seeds", type=int, default=None,
                   help="calibration seeds per cell, 0..N-1 (default 1; 3 with --headline)")
    p.add_argument("--first-windows", action="store_true",
                   help="evaluate the first windows of the evaluation split (the old protocol) instead of windows "
                   "spread evenly over all of it")
    p.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS), metavar="SETTING",
                   help=f"subset of {list(SETTINGS)}".replace("%", "%%"))
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="subset of the methods (default: every registered method that applies)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="skip the runs already in the JSON")
    p.add_argument("--out", type=Path, default=None,
                   help=f"the markdown file, JSON and PNG beside it (default {DEFAULT_OUT.name}; {HEADLINE_OUT.name} "
                   "with --headline)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration samples (quick 32, full 128)")
    p.add_argument("--seqlen", type=int, default=None, help="calibration sequence length (quick 512, full 2048)")
    p.add_argument("--eval-windows", type=int, default=None, help="eval windows (quick 16, headline 32, full all)")
    p.add_argument("--eval-seqlen", type=int, default=None, help="eval window length (quick 512, headline 256, full 2048)")
    add_solver_arguments(p)  # every declared solver option; each run passes its method's own
    p.add_argument("--batch-size", type=int, default=1, help="calibration samples per block forward")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    p.add_argument("--log-level", default="WARNING", help="level of the optimum_awp loggers")
    args = p.parse_args(argv)
    quick = {"nsamples": 32, "seqlen": 512, "eval_windows": 16, "eval_seqlen": 512}
    # the headline's 32 x 256 evaluation scores as many tokens as quick mode's 16 x 512 and reaches all 30 articles
    headline = {**quick, "eval_windows": 32, "eval_seqlen": 256}
    full = {"nsamples": 128, "seqlen": 2048, "eval_windows": None, "eval_seqlen": 2048}
    defaults = headline if args.headline else quick if args.quick else full
    args.mode = "headline" if args.headline else "quick" if args.quick else "full"
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        elif getattr(args, key) != value:
            args.mode = "custom" if not args.headline else "headline (custom sizes)"
    if args.settings is None:
        args.settings = list(HEADLINE_SETTINGS if args.headline else SETTINGS)
    if args.methods is None and args.headline:
        args.methods = list(HEADLINE_METHODS)
    if args.seeds is None:
        args.seeds = 3 if args.headline else 1
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.out is None:
        args.out = HEADLINE_OUT if args.headline else DEFAULT_OUT
    return args


def registered_methods(wanted: list[str] | None) -> set[str]:
    """Methods with a registered solver (importing each solver module registers it)."""
    from optimum_awp.solvers import SOLVERS

    # the dense-target variants run only when named (--methods): the default table is the published methods'
    names = set(wanted or [m for ms in METHODS.values() for m in ms if m not in DENSE_VARIANTS])
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
                         f"and the variants {sorted({**AWP_VARIANTS, **LOWRANK_VARIANTS, **DENSE_VARIANTS})}")
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

RESUME_KEYS = ("nsamples", "seqlen", "eval_windows", "eval_seqlen", "awp_options", "model", "text", "windows")
META_DEFAULTS = {"model": MODEL_NAME, "text": TEXT_NAME, "windows": "first"}  # files made before these keys


def load_results(path: Path, meta: dict, resume: bool) -> dict:
    """The JSON results; with ``resume`` its calibration/eval settings must equal ``meta``'s."""
    if resume and path.exists():
        data = json.loads(path.read_text())
        old = {k: data["meta"].get(k, META_DEFAULTS.get(k)) for k in RESUME_KEYS}
        diff = {k: (old[k], meta[k]) for k in RESUME_KEYS if old[k] != meta[k]}
        if diff:
            raise SystemExit(f"--resume: {path} was made with other settings {diff}; use another --out.")
        data["meta"].update({k: v for k, v in meta.items() if k not in ("started",)})
        return data
    return {"meta": meta, "runs": {}}


def save_results(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def run_key(setting: str, method: str, seed: int = 0) -> str:
    """The JSON key of one run: "70%/awp" for calibration seed 0 (the key older files use), "70%/awp@seed1" else."""
    return f"{setting}/{method}" if seed == 0 else f"{setting}/{method}@seed{seed}"


def seed_runs(runs: dict, setting: str, method: str) -> list[dict]:
    """The runs of one cell, one per calibration seed present, in seed order."""
    found = []
    for key, run in runs.items():
        base, _, seed = key.partition("@seed")
        if base == f"{setting}/{method}":
            found.append((int(seed or 0), run))
    return [run for _, run in sorted(found, key=lambda x: x[0])]


@dataclass(frozen=True)
class Cell:
    """One (setting, method) over its seeds: perplexity mean, sample standard deviation, range; SE of the NLL."""

    ppls: tuple[float, ...]
    se: float | None  # mean over seeds of the standard error of the mean NLL over windows (nats)
    objective: float
    seconds: float

    @property
    def n(self) -> int:
        return len(self.ppls)

    @property
    def mean(self) -> float:
        return sum(self.ppls) / self.n

    @property
    def sd(self) -> float | None:
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((p - m) ** 2 for p in self.ppls) / (self.n - 1))


def cell(runs: dict, setting: str, method: str) -> Cell | None:
    found = seed_runs(runs, setting, method)
    if not found:
        return None
    ses = [r["nll_se"] for r in found if r.get("nll_se") is not None]
    return Cell(tuple(r["ppl"] for r in found), sum(ses) / len(ses) if ses else None,
                sum(r["mean_objective"] for r in found) / len(found),
                sum(r["compress_seconds"] for r in found) / len(found))


def window_stats(nlls: list[float]) -> tuple[float, float | None]:
    """Mean of per-window NLLs and its standard error (sample sd / sqrt(windows)); equal windows weigh equally."""
    n = len(nlls)
    mean = sum(nlls) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in nlls) / (n - 1) / n)


def paired(runs: dict, setting: str, a: str, b: str) -> list[tuple[float, float | None]]:
    """Per seed: mean over windows of NLL(a) - NLL(b) on the same windows, and its paired standard error."""
    out = []
    for ra, rb in zip(seed_runs(runs, setting, a), seed_runs(runs, setting, b)):
        wa, wb = ra.get("window_nlls"), rb.get("window_nlls")
        if wa and wb and len(wa) == len(wb) and ra.get("seed", 0) == rb.get("seed", 0):
            out.append(window_stats([x - y for x, y in zip(wa, wb)]))
    return out


# --------------------------------------------------------------------------------------------------
# Markdown and plot
# --------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _ppl_text(c: Cell) -> str:
    """"97.15" for one seed, "97.15 ± 3.20" (sample sd over seeds) for several."""
    return f"{c.mean:.3f}" if c.sd is None else f"{c.mean:.2f} ± {c.sd:.2f}"


def results_table(data: dict) -> list[str]:
    runs = data["runs"]
    dense = runs.get("dense")
    seeds = data["meta"].get("seeds", 1)
    ppl_head = "Perplexity" if seeds == 1 else f"Perplexity (mean ± sd over {seeds} seeds)"
    sizes = any("bytes_per_weight" in r for r in runs.values())  # the column of the low-rank rows' files
    size_head, size_rule = (" Bytes / weight (bf16) |", "---:|") if sizes else ("", "")
    lines = [
        f"| Setting | Method | {ppl_head} | SE of mean NLL | × dense | Mean layer objective | Compression time (s) |"
        f"{size_head}",
        f"|---|---|---:|---:|---:|---:|---:|{size_rule}",
    ]
    if dense:
        lines.append(f"| dense | — | {dense['ppl']:.3f} | {_fmt(dense.get('nll_se'), '.4f')} | 1.00 | 0 | — |"
                     + (" 2 |" if sizes else ""))
    for setting in SETTINGS.values():
        for method in METHODS[setting.kind]:
            c = cell(runs, setting.name, method)
            if c is None:
                continue
            ratio = c.mean / dense["ppl"] if dense else None
            size = seed_runs(runs, setting.name, method)[0].get("bytes_per_weight")
            lines.append(
                f"| {setting.name} | {label(method, setting)} | {_ppl_text(c)} | {_fmt(c.se, '.4f')} | "
                f"{_fmt(ratio, '.2f')} | {_fmt(c.objective, '.4f')} | {c.seconds:.1f} |"
                + (f" {_fmt(size, '.3f')} |" if sizes else "")
            )
    return lines


def target_lines(data: dict) -> list[str]:
    """The targets of the issue, each checked on the runs present: met, MISSED, or not run."""
    runs = data["runs"]

    def ppl(setting: str, method: str) -> float | None:
        c = cell(runs, setting, method)
        return c.mean if c else None

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
    for setting in SETTINGS.values():
        if setting.kind != "rank":
            continue
        a, b = ppl(setting.name, "lowrank"), ppl(setting.name, "lowrank-svd")
        if a is not None and b is not None:
            out.append(f"- {setting.name}: low-rank of W C^1/2 {a:.3f} vs plain SVD {b:.3f}: "
                       f"{'lower' if a < b else '**not lower**'}")
    for combined, alone in EQUAL_BYTES.items():
        a, b = ppl(combined, "lowrank"), ppl(alone, "awp")
        if a is not None and b is not None:
            out.append(f"- equal bytes: AWP + low-rank {combined} {a:.3f} vs AWP {alone} {b:.3f}: "
                       f"{'met' if a < b else '**MISSED**'}")
    return out or ["- no AWP run yet"]


# AWP + low-rank setting -> the AWP-alone setting of the same bytes per weight (``bytes_per_weight``)
EQUAL_BYTES = {"80%+lr0.1": "70%", "75%+lr0.05": "70%", "70%+lr0.1": "60%", "2:4+lr0.05": "45%"}


def settings_lines(data: dict) -> list[str]:
    meta = data["meta"]
    dates = sorted(r["date"] for r in data["runs"].values() if "date" in r)
    mach = meta["machine"]
    eval_windows = meta.get("eval_windows_run") or meta["eval_windows"] or "all"
    opts = ", ".join(f"{k}={v}" for k, v in meta["awp_options"].items())
    seeds = meta.get("seeds", 1)
    where = meta.get("windows", "first")
    spread = ("spread over the whole evaluation part, one in every document when there are enough "
              f"({meta.get('eval_windows_available', '?')} windows available, covering {meta.get('eval_articles_covered', '?')} of {meta.get('eval_articles', '?')} "
              "documents)" if where == "spread" else "the first windows of the evaluation part")
    text = meta.get("text", TEXT_NAME)
    return [
        f"- model: {meta.get('model', MODEL_NAME)}; text: {text} (calibration / evaluation split: "
        f"{meta.get('split', 'by article')})",
        f"- calibration: {meta['nsamples']} samples × {meta['seqlen']} tokens (BOS first) from the calibration "
        f"part of {text}, seed{'s 0..' + str(seeds - 1) if seeds > 1 else ' 0'}, the same tokens for every method "
        "of a seed",
        f"- evaluation: {eval_windows} windows × {meta['eval_seqlen']} tokens (BOS + {meta['eval_seqlen'] - 1} "
        f"scored tokens each, {meta.get('eval_tokens', '?')} scored tokens), {spread}; the standard error is "
        "that of the mean NLL (nats) over the windows (sample sd of the per-window NLLs / sqrt(windows))",
        f"- solver options (AWPConfig): {opts}; statistics in float32",
        f"- dense weights restored between runs by copying the saved block weights "
        f"({meta.get('restore_copy_seconds', '?')} s; reloading from disk takes {meta.get('restore_reload_seconds', '?')} s)",
        f"- machine: {mach['cpu']}, {mach['cores']} cores, {mach['torch_threads']} torch threads; torch "
        f"{mach['torch']}, transformers {mach['transformers']}, Python {mach['python']}",
        f"- dates (UTC): {dates[0] if dates else '—'} to {dates[-1] if dates else '—'}",
        f"- command: `{meta['command']}`",
    ]


def _notes(path: Path) -> str:
    if path.exists():
        text = path.read_text()
        if NOTES_MARKER in text:
            return text.split(NOTES_MARKER, 1)[1].strip("\n")
    return ""


def write_markdown(path: Path, data: dict, png: Path | None) -> None:
    meta = data["meta"]
    notes = _notes(path)
    model = meta.get("model", MODEL_NAME)
    text = meta.get("text", TEXT_NAME)
    lines = [
        "# Fidelity: perplexity after compression",
        "",
        f"{model}, perplexity on the held-out part of {text} (lower is better). Every method "
        "compresses every linear layer of the decoder blocks, block by block on the outputs of the "
        "blocks already compressed; embeddings and the lm_head stay dense. INT4 is group 128, "
        "symmetric. The mean layer objective is the mean over layers of tr(ΔCΔᵀ)/tr(WCWᵀ).",
        "",
        f"## Results ({meta['mode']} mode): {model} on {text}",
        "",
        *results_table(data),
        "",
    ]
    if png is not None and png.exists():
        lines += [f"![perplexity vs sparsity]({png.name})", ""]
    lines += ["## Targets", "", *target_lines(data), "", "## Settings", "", *settings_lines(data), "",
              NOTES_MARKER, notes, ""]
    path.write_text("\n".join(lines))


def headline_methods(data: dict) -> list[str]:
    present = {k.split("/", 1)[1].split("@")[0] for k in data["runs"] if "/" in k}
    return [m for m in HEADLINE_METHODS if m in present] + sorted(present - set(HEADLINE_METHODS))


def headline_table(data: dict) -> list[str]:
    runs = data["runs"]
    methods = headline_methods(data)
    settings = [s for s in SETTINGS.values() if any(cell(runs, s.name, m) for m in methods)]
    head = " | ".join(LABELS.get(m, m) for m in methods)
    lines = [f"| Setting | {head} | AWP / SparseGPT | AWP / ALPS |", "|---|" + "---:|" * (len(methods) + 2)]
    dense = runs.get("dense")
    if dense:
        lines.append(f"| dense | {dense['ppl']:.3f} (SE {_fmt(dense.get('nll_se'), '.3f')})" + " | —" * (len(methods) - 1)
                     + " | — | — |")
    for s in settings:
        cells = [cell(runs, s.name, m) for m in methods]
        texts = [f"{_ppl_text(c)} (SE {_fmt(c.se, '.3f')}, n={c.n})" if c else "—" for c in cells]
        by = dict(zip(methods, cells))

        def ratio(a: str, b: str) -> str:
            return f"{by[a].mean / by[b].mean:.2f}" if by.get(a) and by.get(b) else "—"

        lines.append(f"| {s.name} | " + " | ".join(texts) + f" | {ratio('awp', 'sparsegpt')} | {ratio('awp', 'alps')} |")
    return lines


def headline_objectives(data: dict) -> list[str]:
    runs = data["runs"]
    methods = headline_methods(data)
    lines = ["| Setting | " + " | ".join(LABELS.get(m, m) for m in methods) + " |", "|---|" + "---:|" * len(methods)]
    for s in SETTINGS.values():
        cells = [cell(runs, s.name, m) for m in methods]
        if any(cells):
            lines.append(f"| {s.name} | " + " | ".join(
                f"{c.objective:.4f} / {c.seconds:.0f} s" if c else "—" for c in cells) + " |")
    return lines


def paired_lines(data: dict) -> list[str]:
    runs = data["runs"]
    out = []
    for s in SETTINGS.values():
        for other in headline_methods(data):
            if other == "awp":
                continue
            diffs = paired(runs, s.name, "awp", other)
            if not diffs:
                continue
            parts = ", ".join(f"{d:+.4f} ± {_fmt(se, '.4f')}" for d, se in diffs)
            sure = all(se is not None and abs(d) > 2 * se for d, se in diffs)
            sign = "lower" if all(d < 0 for d, _ in diffs) else "higher" if all(d > 0 for d, _ in diffs) else "mixed"
            out.append(f"- {s.name}, AWP − {LABELS.get(other, other)}: {parts} nats per token (per seed); AWP "
                       f"{sign}{', beyond 2 paired SE in every seed' if sure else ''}")
    return out or ["- no pair of runs on the same windows yet"]


def headline_targets(data: dict) -> list[str]:
    runs = data["runs"]
    out = []

    def beats(setting: str, other: str) -> str | None:
        a, b = cell(runs, setting, "awp"), cell(runs, setting, other)
        if not a or not b:
            return None
        margin = b.mean - a.mean
        if a.n < 2 or b.n < 2:
            verdict = ("met on one seed (spread unknown)" if margin > 0 else "**MISSED** (one seed)")
            return f"AWP {a.mean:.2f} vs {LABELS.get(other, other)} {b.mean:.2f} (margin {margin:+.2f}): {verdict}"
        spread = max(a.sd, b.sd)
        verdict = "met" if margin > spread else "**MISSED**"
        return (f"AWP {a.mean:.2f} vs {LABELS.get(other, other)} {b.mean:.2f} (margin {margin:+.2f}, larger seed sd "
                f"{spread:.2f}): {verdict}")

    for setting in ("70%", "80%", "2:4"):
        line = beats(setting, "alps")
        if line:
            out.append(f"- AWP ≤ ALPS at {setting} by more than the seed spread: {line}")
    for s in SETTINGS.values():
        for other in headline_methods(data):
            if other.startswith("awp") or (other == "alps" and s.name in ("70%", "80%", "2:4")):  # ALPS: above
                continue  # AWP's own variants are not targets
            line = beats(s.name, other)
            if line:
                out.append(f"- AWP ≤ {label(other, s)} at {s.name}: {line}")
    for setting, bound in (("70%", 0.70), ("80%", 0.50), ("2:4", 0.90)):
        a, b = cell(runs, setting, "awp"), cell(runs, setting, "sparsegpt")
        if a and b:
            r = a.mean / b.mean
            out.append(f"- AWP / SparseGPT ≤ {bound:.2f} at {setting}: {r:.2f}: {'met' if r <= bound else '**MISSED**'}")
    out += time_lines(data)
    return out or ["- no AWP run yet"]


def time_lines(data: dict) -> list[str]:
    """Wall time (restore + compress + evaluate) of each seed's headline grid; a partial grid is projected from
    the mean wall time of each method's measured runs (any setting, any seed)."""
    runs = data["runs"]
    grid = [(s, m) for s in HEADLINE_SETTINGS for m in HEADLINE_METHODS]
    walls: dict[str, list[float]] = {}
    for key, run in runs.items():
        if "/" in key and "wall_seconds" in run:
            walls.setdefault(key.split("/", 1)[1].split("@")[0], []).append(run["wall_seconds"])
    out = []
    for seed in range(data["meta"].get("seeds", 1)):
        measured = [runs[run_key(s, m, seed)]["wall_seconds"] for s, m in grid
                    if "wall_seconds" in runs.get(run_key(s, m, seed), {})]
        if not measured:
            continue
        missing = [(s, m) for s, m in grid if "wall_seconds" not in runs.get(run_key(s, m, seed), {})]
        total = sum(measured)
        if not missing:
            out.append(f"- headline time, seed {seed}: {total / 60:.1f} min of restore + compression + evaluation "
                       f"for the {len(grid)} runs (≤ 45 min: {'met' if total <= 45 * 60 else '**MISSED**'})")
            continue
        unknown = sorted({m for _, m in missing if m not in walls})
        projected = total + sum(sum(walls[m]) / len(walls[m]) for _, m in missing if m in walls)
        out.append(f"- headline time, seed {seed}: {total / 60:.1f} min for {len(measured)} of {len(grid)} runs; "
                   f"projected for all {len(grid)} from each method's mean run: {projected / 60:.1f} min"
                   + (f" plus the runs of {unknown} (no run measured)" if unknown else "")
                   + f" (≤ 45 min: {'not measured' if unknown else 'projected met' if projected <= 45 * 60 else '**projected MISSED**'})")
    return out


def write_headline_markdown(path: Path, data: dict, png: Path | None) -> None:
    meta = data["meta"]
    model, text = meta.get("model", MODEL_NAME), meta.get("text", TEXT_NAME)
    lines = [
        "# Fidelity, headline: Wanda, SparseGPT, ALPS and AWP over calibration seeds",
        "",
        f"{model}, perplexity on the held-out part of {text} (lower is better), each cell the mean ± sample "
        "standard deviation over the calibration seeds (n = number of seeds run), with the standard error (SE) "
        "of the mean NLL over the evaluation windows (nats, mean over seeds). Every method compresses every linear "
        "layer of the decoder blocks, block by block; embeddings and the lm_head stay dense; INT4 is group 128, "
        "symmetric (2:4+int4: Wanda + RTN, SparseGPT joint, ALPS mask + OBS rounding, AWP joint).",
        "",
        f"## Perplexity ({meta['mode']} mode)",
        "",
        *headline_table(data),
        "",
    ]
    if png is not None and png.exists():
        lines += [f"![headline perplexity]({png.name})", ""]
    lines += [
        "## Mean layer objective / compression time (mean over seeds)", "", *headline_objectives(data), "",
        "## Paired differences (same windows): mean NLL difference ± its SE", "", *paired_lines(data), "",
        "## Targets", "", *headline_targets(data), "",
        "## Settings", "", *settings_lines(data), "",
        NOTES_MARKER, _notes(path), "",
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
        pts = [(s.sparsity, c.mean) for s in unstructured if (c := cell(runs, s.name, method))]
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
        pts = [(i + 0.12 * (j - len(all_methods) / 2), c.mean)
               for i, s in enumerate(others) if (c := cell(runs, s.name, method))]
        if pts:
            right.scatter(*zip(*pts), label=LABELS[method], marker="os^vDPX"[j % 7])
    right.set_xticks(range(len(names)), names)
    right.set(ylabel="perplexity", yscale="log", title="2:4, INT4 g128 and joint (joint: Wanda = Wanda+RTN, AWQ = Wanda+AWQ)")
    right.title.set_fontsize(8)
    right.legend(fontsize=8)
    fig.suptitle(f"{data['meta'].get('model', MODEL_NAME)} on {data['meta'].get('text', TEXT_NAME)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_headline_plot(path: Path, data: dict) -> bool:
    """Grouped bars: one group per setting, one bar per method (mean over seeds, whiskers min..max), log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = data["runs"]
    methods = headline_methods(data)
    settings = [s for s in SETTINGS.values() if any(cell(runs, s.name, m) for m in methods)]
    if not settings:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for i, s in enumerate(settings):
            c = cell(runs, s.name, method)
            if c:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(c.mean)
                lo.append(c.mean - min(c.ppls))
                hi.append(max(c.ppls) - c.mean)
        if xs:
            ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=LABELS.get(method, method))
    if "dense" in runs:
        ax.axhline(runs["dense"]["ppl"], color="gray", linestyle="--", linewidth=1, label="dense")
    ax.set_xticks(range(len(settings)), [s.name for s in settings])
    ax.set(ylabel="perplexity (mean over seeds; whiskers: min..max)", yscale="log")
    ax.legend(fontsize=8)
    ax.set_title(f"{data['meta'].get('model', MODEL_NAME)} on {data['meta'].get('text', TEXT_NAME)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_reports(md: Path, data: dict) -> None:
    png = md.with_suffix(".png")
    if data["meta"].get("mode", "").startswith("headline"):
        write_headline_plot(png, data)
        write_headline_markdown(md, data, png)
    else:
        write_plot(png, data)
        write_markdown(md, data, png)


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class EvalWindows:
    """The evaluation windows, cut once and shared by every run.

    Attributes:
        windows: int64 (count, seqlen), BOS first when the tokenizer has one.
        starts: token offset of each window's text in the evaluation stream (count,).
        available: how many non-overlapping windows the stream holds.
        documents: documents of the evaluation split; covered: how many of them the windows touch.
    """

    windows: torch.Tensor
    starts: list[int]
    available: int
    documents: int
    covered: int


def spread_indices(available: int, count: int, bounds: list[tuple[int, int]], body: int) -> torch.Tensor:
    """Indices of ``count`` of the ``available`` non-overlapping windows (``body`` tokens each), sorted.

    When ``count`` is at least the number of documents, every document gets the window that holds its middle
    token, and the rest are evenly spaced among the windows not yet chosen, so every document is evaluated;
    with fewer windows than documents they are evenly spaced over the whole stream.

    Args:
        bounds: (start, end) token span of each document in the joined stream.
    """
    if count >= available:
        return torch.arange(available)
    if count < len(bounds):
        return torch.linspace(0, available - 1, count, dtype=torch.float64).round().long()
    chosen = sorted({min((start + end) // 2 // body, available - 1) for start, end in bounds})
    rest = [i for i in range(available) if i not in set(chosen)]
    extra = count - len(chosen)
    if extra > 0:
        pick = torch.linspace(0, len(rest) - 1, extra, dtype=torch.float64).round().long().tolist()
        chosen = sorted(chosen + [rest[i] for i in pick])
    return torch.tensor(chosen, dtype=torch.long)


def eval_windows(tokenizer, source, seqlen: int, nwindows: int | None, spread: bool) -> EvalWindows:
    """Tokenize the evaluation split of ``source`` once and choose ``nwindows`` windows of ``seqlen`` tokens.

    ``spread``: the windows are spread over all non-overlapping windows of the split so that every document
    is evaluated when there are at least as many windows as documents (``spread_indices``), else the first
    ones (the old protocol). Each window is [BOS] + seqlen - 1 text tokens when the tokenizer has a BOS token.
    """
    from optimum_awp.data import load_text, tokenize_text

    documents = load_text(source, "eval")
    tokens = tokenize_text(tokenizer, documents)
    bos = tokenizer.bos_token_id
    body = seqlen - 1 if bos is not None else seqlen
    available = tokens.numel() // body
    if available == 0:
        raise SystemExit(f"the evaluation text has {tokens.numel()} tokens, too short for one window of {seqlen}")
    # document spans in the joined stream, from each document's own token count (approximate at the joins)
    separator = tokenize_text(tokenizer, ["", ""]).numel()
    bounds, pos = [], 0
    for doc in documents:
        n = tokenize_text(tokenizer, [doc]).numel()
        bounds.append((pos, pos + n))
        pos += n + separator
    count = available if nwindows is None else min(nwindows, available)
    index = spread_indices(available, count, bounds, body) if spread else torch.arange(count)
    starts = index * body
    windows = tokens[starts[:, None] + torch.arange(body)]
    if bos is not None:
        windows = torch.cat([torch.full((count, 1), bos, dtype=torch.long), windows], dim=1)
    covered = sum(any(a < s + body and s < b for s in starts.tolist()) for a, b in bounds)
    return EvalWindows(windows, starts.tolist(), available, len(documents), covered)


def evaluate(model, shared: EvalWindows, bos, args) -> dict:
    """Perplexity on the shared windows, one window at a time so that each window's NLL is kept."""
    from optimum_awp.evaluate import perplexity_of_tokens

    nlls, tokens, seconds = [], 0, 0.0
    for window in shared.windows:
        text = window[1:] if bos is not None else window
        result = perplexity_of_tokens(model, text, args.eval_seqlen, bos, nwindows=1, progress=False)
        nlls.append(result.nll)
        tokens += result.tokens
        seconds += result.seconds
    nll, se = window_stats(nlls)
    return {"ppl": math.exp(nll), "nll": nll, "nll_se": se, "window_nlls": [round(x, 6) for x in nlls],
            "eval_tokens": tokens, "eval_windows": len(nlls), "eval_seconds": round(seconds, 2)}


def run_options(method: str, args) -> dict:
    """The options of one run: the command line's, for those its solver declares, then its variant's."""
    from optimum_awp.cli.arguments import solver_options
    from optimum_awp.solvers import get_solver

    declared = {spec.name for spec in get_solver(solver_of(method)).option_specs()}
    given = {k: v for k, v in solver_options(args).items() if k in declared}
    dense = {"dense_targets": True} if method in DENSE_VARIANTS else {}
    return {**given, **AWP_VARIANTS.get(method, {}), **LOWRANK_VARIANTS.get(method, {}), **dense}


def run_one(model, setting: Setting, method: str, ids: torch.Tensor, args) -> dict:
    """Compress the (restored, dense) model with one method and return its compression figures."""
    from optimum_awp.compress import compress
    from optimum_awp.config import AWPConfig

    rank = {"rank": setting.rank} if setting.rank is not None else {}
    config = AWPConfig(method=solver_of(method), sparsity=setting.sparsity, bits=setting.bits, group_size=GROUP_SIZE,
                       nsamples=ids.shape[0], seqlen=ids.shape[1], **{**run_options(method, args), **rank})
    report = compress(model, config, ids, pack=False, progress=not args.no_progress, batch_size=args.batch_size)
    return {
        "options": report.config.options,
        "dense_targets": report.config.dense_targets,
        "bytes_per_weight": round(bytes_per_weight(setting, [tuple(l.shape) for l in report.layers]), 4),
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

    from optimum_awp.data import TEXT_SOURCES, calibration_samples, describe_source, embedded_model
    from optimum_awp.evaluate import load_model

    if args.dataset not in TEXT_SOURCES:
        print(f"note: {args.dataset} is a file: it has no calibration/evaluation split, so both use all of it "
              "(calibration windows are drawn from the evaluated text)", flush=True)

    tic = time.perf_counter()
    path = embedded_model() if args.model is None else args.model
    model, tok = load_model(path, dtype="float32")
    print(f"model loaded in {time.perf_counter() - tic:.1f}s from {path}", flush=True)
    shared = eval_windows(tok, args.dataset, args.eval_seqlen, args.eval_windows, spread=not args.first_windows)
    print(f"evaluation: {shared.windows.shape[0]} of {shared.available} windows, touching {shared.covered} of "
          f"{shared.documents} documents", flush=True)
    saved = {name: w.detach().clone() for name, w in block_weights(model).items()}
    meta = {
        "mode": args.mode, "nsamples": args.nsamples, "seqlen": args.seqlen,
        "eval_windows": args.eval_windows, "eval_seqlen": args.eval_seqlen, "awp_options": awp_options(args),
        "group_size": GROUP_SIZE, "machine": machine(), "command": " ".join(["python", "benchmarks/fidelity.py", *(argv or sys.argv[1:])]),
        "model": MODEL_NAME if args.model is None else str(args.model),
        "text": TEXT_NAME if args.dataset == DEFAULT_DATASET else describe_source(args.dataset),
        "windows": "first" if args.first_windows else "spread", "seeds": args.seeds,
        "split": "by article" if args.dataset == DEFAULT_DATASET else
                 "the source's own" if args.dataset in TEXT_SOURCES else "none (one file for both)",
        "eval_windows_available": shared.available, "eval_articles": shared.documents,
        "eval_articles_covered": shared.covered, "eval_window_starts": shared.starts, "started": now(),
    }
    data = load_results(json_path, meta, args.resume)
    data["meta"]["seeds"] = max(args.seeds, data["meta"].get("seeds", 1))
    if "restore_copy_seconds" not in data["meta"]:
        data["meta"].update(measure_restore(model, saved, path))
        print(f"restore: copy {data['meta']['restore_copy_seconds']}s, reload {data['meta']['restore_reload_seconds']}s",
              flush=True)

    bos = tok.bos_token_id
    if "dense" not in data["runs"]:
        result = evaluate(model, shared, bos, args)
        data["runs"]["dense"] = {**result, "date": now()}
        data["meta"].update(eval_tokens=result["eval_tokens"], eval_windows_run=result["eval_windows"])
        save_results(json_path, data)
        print(f"dense: ppl {result['ppl']:.3f} (SE of NLL {result['nll_se']}, {result['eval_seconds']}s eval)", flush=True)
    seed_seconds = data["meta"].setdefault("seed_seconds", {})
    for seed in range(args.seeds):
        ids = None
        for setting, method in runs:
            key = run_key(setting.name, method, seed)
            if key in data["runs"]:
                continue
            if ids is None:  # one set of calibration tokens per seed, shared by every method
                ids = calibration_samples(tok, args.dataset, nsamples=args.nsamples, seqlen=args.seqlen, seed=seed)
            load_before = os.getloadavg()
            started = time.perf_counter()
            restore(model, saved)
            figures = run_one(model, setting, method, ids, args)
            result = evaluate(model, shared, bos, args)
            data["runs"][key] = {**figures, **result, "seed": seed, "date": now(),
                                 "load_before": [round(x, 2) for x in load_before],
                                 "load_after": [round(x, 2) for x in os.getloadavg()]}
            wall = time.perf_counter() - started  # restore + compress + evaluate
            data["runs"][key]["wall_seconds"] = round(wall, 2)
            seed_seconds[str(seed)] = round(seed_seconds.get(str(seed), 0.0) + wall, 2)
            save_results(json_path, data)
            write_reports(md, data)
            print(f"{key}: ppl {result['ppl']:.3f} (SE of NLL {_fmt(result['nll_se'], '.4f')}), mean objective "
                  f"{figures['mean_objective']:.4f}, compress {figures['compress_seconds']:.1f}s, eval "
                  f"{result['eval_seconds']:.1f}s, load {data['runs'][key]['load_before'][0]} -> "
                  f"{data['runs'][key]['load_after'][0]}", flush=True)
    restore(model, saved)
    write_reports(md, data)
    print(f"wrote {md}, {json_path.name} and {md.with_suffix('.png').name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

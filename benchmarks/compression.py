"""Compression cost: wall time and peak memory of compress() per method, and how they scale.

Two parts, each run in its own child process so that its peak RSS (``ru_maxrss``) is its own:

1. ``--embedded``: the embedded Gemma-3-270M (dequantized Q4_K_M GGUF, float32), every method at 70 % and at
   2:4 + INT4 (group 128), quick-mode calibration (32 x 512 tokens of Wikipedia (gensim sample)); pack=False.
2. ``--scaling``: random-weight Llama-shaped models built from a config (vocabulary 1024, MLP 2.75 x hidden,
   float32), saved once to a scratch folder, compressed with one method at 50 % on random token ids:
   - depth: 4, 16, 32 blocks at one width, in memory and with every block offloaded to disk
     (``device_map`` + ``offload_folder``: compress() onloads one block at a time through accelerate's hooks);
   - width: hidden 512, 1024, 2048 at 4 blocks, in memory;
   - budget: the deepest model loaded with ``device_map="auto"`` and a ``max_memory`` of half its dense size.

Writes docs/results/compression.md (text after the notes marker is kept) and compression.png.

    python benchmarks/compression.py --embedded --scaling            # both parts
    python benchmarks/compression.py --scaling --depths 4 16 32 --hidden 1024 --method wanda
    python benchmarks/compression.py worker '{"kind": "embedded", "method": "awp", "setting": "70%"}'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "compression.md"
NOTES_MARKER = "<!-- notes: text below this line is kept when benchmarks/compression.py rewrites the file -->"
SETTINGS = {"70%": (0.7, None), "2:4+int4": ("2:4", 4)}
METHODS = ("wanda", "sparsegpt", "alps", "awp")
VOCAB = 1024


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB: VmHWM of /proc/self/status on Linux.

    Not ``ru_maxrss``: Linux carries it over fork + exec, so a child would report the driver's RSS at the
    fork (the random model it had just saved) as its own peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------------
# Workers (one compression each, in a child process)
# --------------------------------------------------------------------------------------------------


def worker(job: dict) -> dict:
    import torch

    from optimum_awp.compress import compress
    from optimum_awp.config import AWPConfig

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    base = peak_rss_mib()
    if job["kind"] == "embedded":
        from optimum_awp.data import calibration_samples, embedded_model
        from optimum_awp.evaluate import load_model

        model, tok = load_model(embedded_model(), dtype="float32")
        ids = calibration_samples(tok, nsamples=job["nsamples"], seqlen=job["seqlen"], seed=0)
        sparsity, bits = SETTINGS[job["setting"]]
    else:
        from transformers import AutoModelForCausalLM

        kwargs = {}
        if job.get("offload") == "disk":
            config = json.loads((Path(job["path"]) / "config.json").read_text())
            blocks = {f"model.layers.{i}": "disk" for i in range(config["num_hidden_layers"])}
            kwargs = {"device_map": {"model.embed_tokens": "cpu", **blocks, "model.norm": "cpu",
                                     "model.rotary_emb": "cpu", "lm_head": "cpu"},
                      "offload_folder": job["offload_folder"]}
        elif job.get("offload") == "budget":
            kwargs = {"device_map": "auto", "max_memory": {"cpu": int(job["max_memory"])},
                      "offload_folder": job["offload_folder"]}
        model = AutoModelForCausalLM.from_pretrained(job["path"], dtype=torch.float32, **kwargs).eval()
        ids = torch.randint(0, VOCAB, (job["nsamples"], job["seqlen"]), generator=torch.Generator().manual_seed(0))
        sparsity, bits = 0.5, None
    loaded = peak_rss_mib()
    config = AWPConfig(method=job["method"], sparsity=sparsity, bits=bits, group_size=128,
                       nsamples=ids.shape[0], seqlen=ids.shape[1], **job.get("options", {}))
    device = job.get("device")
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    report = compress(model, config, ids, pack=False, progress=False, device=device)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - tic
    result = {"seconds": round(seconds, 2), "peak_rss_mib": round(peak_rss_mib(), 1),
              "rss_after_load_mib": round(loaded, 1), "rss_at_start_mib": round(base, 1),
              "mean_objective": report.mean_objective, "device": device or "cpu"}
    if cuda:
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def now() -> str:
    """The UTC time, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime())


def run_child(job: dict, timeout: float | None = None) -> dict:
    """Run one worker in a fresh interpreter; returns its figures with the load average before and after."""
    before = uptime()
    wall = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "worker", json.dumps(job)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"worker {job} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(load_before=before, load_after=uptime(), process_seconds=round(time.perf_counter() - wall, 1))
    return result


# --------------------------------------------------------------------------------------------------
# Random Llama-shaped checkpoints
# --------------------------------------------------------------------------------------------------


def random_llama(folder: Path, layers: int, hidden: int) -> tuple[Path, int]:
    """Save a random Llama (``layers`` blocks of width ``hidden``) under ``folder``; returns (path, dense bytes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = folder / f"llama-{layers}x{hidden}"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        heads = max(1, hidden // 128)
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=int(2.75 * hidden) // 128 * 128,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=2048, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
        model.save_pretrained(path)
        del model
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return path, size


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def write(out: Path, data: dict) -> None:
    meta = data["meta"]
    lines = ["# Compression cost: time and peak memory", "",
             f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} threads. Every figure is one run "
             "of `compress()` (pack=False) in a fresh process; peak RSS is the process's VmHWM (model load "
             "included). Load averages (1/5/15 min) before and after each run are given.", ""]
    if data.get("embedded"):
        lines += ["## Embedded model: Gemma-3-270M (dequantized Q4_K_M GGUF), float32",
                  "", f"Calibration {meta.get('nsamples')} x {meta.get('seqlen')} tokens of Wikipedia (gensim sample); "
                  "INT4 group 128.", "",
                  "| setting | method | time (s) | time / SparseGPT | peak RSS (MiB) | RSS after load (MiB) | "
                  "mean layer objective | load before / after |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        embedded = data["embedded"]
        for key, r in embedded.items():
            setting, method = key.split("/")
            method += on_device(r)
            base = embedded.get(f"{setting}/sparsegpt")
            ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "—"
            lines.append(f"| {setting} | {method} | {r['seconds']:.1f} | {ratio} | {r['peak_rss_mib']:.0f} | "
                         f"{r['rss_after_load_mib']:.0f} | {r['mean_objective']:.4f} | {r['load_before']} / {r['load_after']} |")
        lines.append("")
        for setting in dict.fromkeys(key.split("/")[0] for key in embedded):
            awp, base = embedded.get(f"{setting}/awp"), embedded.get(f"{setting}/sparsegpt")
            if awp and base:
                ratio = awp["seconds"] / base["seconds"]
                lines.append(f"- AWP (default) time / SparseGPT at {setting}: {ratio:.2f} (target <= 1.0): "
                             f"{'met' if ratio <= 1.0 else '**MISSED**'}")
        lines.append("")
    if data.get("scaling"):
        s = data["scaling"]
        lines += [f"## Scaling: random Llama-shaped models, method {meta['scaling_method']} at 50 %",
                  "", f"Vocabulary {VOCAB}, MLP 2.75 x hidden, float32; calibration {meta['scaling_nsamples']} x "
                  f"{meta['scaling_seqlen']} random token ids. 'disk' = every block offloaded with device_map + "
                  "offload_folder, compressed block by block through accelerate's hooks; 'budget' = device_map='auto' "
                  "with max_memory = half the dense size.", "",
                  "| blocks | hidden | where | dense size (MiB) | max_memory (MiB) | time (s) | s / block | peak RSS (MiB) | load before / after |",
                  "|---:|---:|---|---:|---:|---:|---:|---:|---|"]
        for r in s:
            budget = f"{r['max_memory'] / 2**20:.0f}" if r.get("max_memory") else "—"
            lines.append(f"| {r['layers']} | {r['hidden']} | {r['where']}{on_device(r)} | {r['dense_bytes'] / 2**20:.0f} | {budget} | "
                         f"{r['seconds']:.1f} | {r['seconds'] / r['layers']:.2f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['load_before']} / {r['load_after']} |")
        lines += ["", "![time and peak RSS vs blocks and width](compression.png)", ""]
        lines += targets(s)
    lines.append("")
    for part, run in meta.get("runs", {}).items():
        if data.get(part):
            lines.append(f"Command ({part}): `{run['command']}`; dates (UTC): {run['started']} to "
                         f"{run.get('finished', '?')}.")
    lines.append("")
    notes = "\n"
    if out.exists() and NOTES_MARKER in out.read_text():
        notes = out.read_text().split(NOTES_MARKER, 1)[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + NOTES_MARKER + notes)


def on_device(r: dict) -> str:
    """'' for a CPU run; else ' (on cuda, peak N MiB)': where compress() solved the blocks, and its peak there."""
    if r.get("device", "cpu") == "cpu":
        return ""
    peak = f", peak {r['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in r else ""
    return f" (on {r['device']}{peak})"


def targets(rows: list[dict]) -> list[str]:
    """The issue's scaling targets, checked on the measured rows."""
    disk = sorted((r for r in rows if r["where"] == "disk"), key=lambda r: r["layers"])
    out = ["## Targets", ""]
    if len(disk) >= 2:
        lo, hi = disk[0], disk[-1]
        ratio = hi["peak_rss_mib"] / lo["peak_rss_mib"]
        out.append(f"- peak RSS, {hi['layers']} blocks offloaded vs {lo['layers']}: {hi['peak_rss_mib']:.0f} vs "
                   f"{lo['peak_rss_mib']:.0f} MiB (x{ratio:.2f}; target <= 1.3): {'met' if ratio <= 1.3 else 'MISSED'}")
        per_block = [r["seconds"] / r["layers"] for r in disk]
        spread = max(per_block) / min(per_block) - 1
        out.append(f"- time per block offloaded: {', '.join(f'{p:.2f}' for p in per_block)} s "
                   f"(spread {spread:.0%}; target linear within 10 %): {'met' if spread <= 0.10 else 'MISSED'}")
    mem = sorted((r for r in rows if r["where"] == "memory" and r["hidden"] == (disk[0]["hidden"] if disk else None)),
                 key=lambda r: r["layers"])
    if len(mem) >= 2:
        per_block = [r["seconds"] / r["layers"] for r in mem]
        spread = max(per_block) / min(per_block) - 1
        out.append(f"- time per block in memory: {', '.join(f'{p:.2f}' for p in per_block)} s (spread {spread:.0%})")
    for r in rows:
        if r["where"] == "budget":
            out.append(f"- {r['layers']} x {r['hidden']} model of {r['dense_bytes'] / 2**20:.0f} MiB dense with "
                       f"max_memory {r['max_memory'] / 2**20:.0f} MiB: compressed in {r['seconds']:.1f} s, peak RSS "
                       f"{r['peak_rss_mib']:.0f} MiB")
    return out


def plot(out: Path, rows: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rss = axes[0].twinx()
    depth_hidden = next((r["hidden"] for r in rows if r["where"] == "disk"), rows[0]["hidden"])
    for where, marker in (("memory", "o"), ("disk", "s")):
        sub = sorted((r for r in rows if r["where"] == where and r["hidden"] == depth_hidden), key=lambda r: r["layers"])
        if sub:
            axes[0].plot([r["layers"] for r in sub], [r["seconds"] for r in sub], marker=marker, label=f"time, {where}")
            rss.plot([r["layers"] for r in sub], [r["peak_rss_mib"] for r in sub], marker=marker, linestyle="--",
                     label=f"peak RSS, {where}")
    axes[0].set_xlabel(f"decoder blocks (hidden {depth_hidden})")
    axes[0].set_ylabel("seconds")
    rss.set_ylabel("peak RSS (MiB), dashed")
    axes[0].legend(loc="upper left")
    rss.legend(loc="lower right")
    smallest = min(r["layers"] for r in rows)
    width = sorted((r for r in rows if r["where"] == "memory" and r["layers"] == smallest), key=lambda r: r["hidden"])
    if width:
        axes[1].plot([r["hidden"] for r in width], [r["seconds"] for r in width], marker="o", label="time")
        bx = axes[1].twinx()
        bx.plot([r["hidden"] for r in width], [r["peak_rss_mib"] for r in width], marker="o", linestyle="--",
                color="C1", label="peak RSS")
        bx.set_ylabel("peak RSS (MiB), dashed")
        axes[1].set_xlabel(f"hidden size ({smallest} blocks, in memory)")
        axes[1].set_ylabel("seconds")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        print(json.dumps(worker(json.loads(argv[1]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--embedded", action="store_true", help="time and peak RSS per method on the embedded model")
    p.add_argument("--scaling", action="store_true", help="time and peak RSS vs depth and width (random models)")
    p.add_argument("--methods", nargs="+", default=None, help=f"embedded part: subset of {METHODS} (registered ones)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--method", default="wanda", help="scaling part: the method")
    p.add_argument("--depths", type=int, nargs="+", default=[4, 16, 32])
    p.add_argument("--hidden", type=int, default=1024, help="scaling part: width of the depth series")
    p.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048], help="width series, at the smallest depth")
    p.add_argument("--scaling-nsamples", type=int, default=8)
    p.add_argument("--scaling-seqlen", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="compress(device=...): where each block is solved, e.g. cuda "
                   "(the model stays on the CPU and every block is moved there in turn; default: the model's device)")
    p.add_argument("--scratch", type=Path, default=None, help="folder for the random checkpoints (default: a temp dir)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if not (args.embedded or args.scaling):
        p.error("choose --embedded and/or --scaling")
    import torch

    from optimum_awp.solvers import SOLVERS

    json_path = args.out.with_suffix(".json")
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    meta = data["meta"] = data.get("meta", {})
    if "command" in meta:  # a file written before the parts kept their own runs: that command made the scaling part
        meta.setdefault("runs", {})["scaling"] = {k: meta.pop(k) for k in ("command", "started", "finished") if k in meta}
    meta.update(machine=f"{platform.machine()}, {os.cpu_count()} CPUs", torch=torch.__version__,
                threads=args.threads or torch.get_num_threads())
    run = {"command": " ".join(["python", "benchmarks/compression.py", *argv]), "started": now()}
    for part in ("embedded", "scaling"):
        if getattr(args, part):
            meta.setdefault("runs", {})[part] = run

    def save() -> None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=1))
        write(args.out, data)

    if args.embedded:
        data["meta"].update(nsamples=args.nsamples, seqlen=args.seqlen)
        data.setdefault("embedded", {})
        methods = [m for m in (args.methods or METHODS) if m in SOLVERS]
        for setting in args.settings:
            for method in methods:
                job = {"kind": "embedded", "method": method, "setting": setting, "nsamples": args.nsamples,
                       "seqlen": args.seqlen, "threads": args.threads, "device": args.device}
                data["embedded"][f"{setting}/{method}"] = result = run_child(job)
                print(f"{setting}/{method}: {result}", flush=True)
                save()
    if args.scaling:
        data["meta"].update(scaling_method=args.method, scaling_nsamples=args.scaling_nsamples,
                            scaling_seqlen=args.scaling_seqlen)
        rows = data["scaling"] = []
        with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
            scratch = Path(scratch)
            plan = [(d, args.hidden, w) for d in args.depths for w in ("memory", "disk")]
            plan += [(min(args.depths), h, "memory") for h in args.widths if h != args.hidden]
            plan.append((max(args.depths), args.hidden, "budget"))
            for layers, hidden, where in plan:
                path, size = random_llama(scratch, layers, hidden)
                job = {"kind": "random", "path": str(path), "method": args.method, "nsamples": args.scaling_nsamples,
                       "seqlen": args.scaling_seqlen, "threads": args.threads, "device": args.device,
                       "offload": None if where == "memory" else where,
                       "offload_folder": str(scratch / f"offload-{layers}x{hidden}-{where}")}
                if where == "budget":
                    job["max_memory"] = size // 2
                result = run_child(job)
                rows.append({"layers": layers, "hidden": hidden, "where": where, "dense_bytes": size,
                             "max_memory": job.get("max_memory"), **result})
                print(f"{layers} x {hidden} ({where}): {result}", flush=True)
                save()
            plot(args.out, rows)
    run["finished"] = now()
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Option groups shared by the commands, and the AWPConfig they build.

One meaning per flag name, in every command:

- ``--dataset``: the text source; its calibration part calibrates, its evaluation part evaluates;
- ``--seqlen`` / ``--nwindows``: the evaluation windows; ``--nsamples`` / ``--calib-seqlen``: the calibration;
- ``--bits``: 4 or none.

The solver options (``--max-iterations``, ``--step``, ``--blocksize``, ...) are generated from the solvers'
own declarations (``optimum_awp.solvers.options``): a flag per declared option name, default "the method's
own", and an error naming the option when the chosen method does not take it.
"""

from __future__ import annotations

import argparse
from typing import Any

SOLVER_GROUP = "solver options (each applies to the methods named in its help; default: the method's own)"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_bits(text: str) -> int | None:
    """'4', or 'none' / '0' to keep floating-point values."""
    if text.lower() in ("none", "0"):
        return None
    if text == "4":
        return 4
    raise argparse.ArgumentTypeError(f"{text!r} is not one of 4, none")


def parse_sparsity(text: str) -> float | str | None:
    """'N:M' stays a string, 'none' is None; anything else must be a fraction."""
    if text.lower() == "none":
        return None
    if ":" in text:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'N:M' (e.g. 2:4) nor a fraction (e.g. 0.5)") from None


def add_model_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """The optional positional MODEL: a checkpoint folder or Hub id, the embedded Gemma-3-270M by default."""
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help=f"{what} folder or Hub id (default: the embedded Gemma-3-270M, dequantized GGUF)",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--dtype, --device, --threads: where and how the model runs."""
    from ..evaluate import DTYPES

    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None,
        help="dtype to load the model in (default: the checkpoint's own; float32 for the embedded model)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="torch device to run on, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument(
        "--threads", type=positive_int, default=None,
        help="CPU threads for torch (torch.set_num_threads; default: torch's choice)",
    )  # fmt: skip


def add_text_argument(parser: argparse.ArgumentParser) -> None:
    """--dataset: the text source (calibration part and evaluation part)."""
    from ..data import DEFAULT_SOURCE, TEXT_SOURCES

    parser.add_argument(
        "--dataset", default=DEFAULT_SOURCE,
        help=f"text: one of {sorted(TEXT_SOURCES)} or the path of a UTF-8 text file; its calibration part "
        f"calibrates and its evaluation part evaluates (default: {DEFAULT_SOURCE}, the offline Wikipedia "
        "(gensim sample))",
    )  # fmt: skip


def add_evaluation_arguments(parser: argparse.ArgumentParser, seqlen: int, nwindows: int | None) -> None:
    """--seqlen, --nwindows, --batch-size, --no-bos: the perplexity windows."""
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--seqlen", type=positive_int, default=seqlen,
        help=f"evaluation window length in tokens, BOS included (default: {seqlen})",
    )  # fmt: skip
    group.add_argument(
        "--nwindows", type=positive_int, default=nwindows,
        help="evaluate at most this many windows, the first ones "
        + (f"(default: {nwindows})" if nwindows else "(default: all the text holds)"),
    )  # fmt: skip
    group.add_argument("--batch-size", type=positive_int, default=1, help="windows per forward pass (default: 1)")
    group.add_argument(
        "--no-bos", dest="add_bos", action="store_false",
        help="do not prepend the tokenizer's BOS token to each window (default: prepend it when defined)",
    )  # fmt: skip


def add_speed_arguments(parser: argparse.ArgumentParser, new_tokens: int, repeats: int, runs: str) -> argparse._ArgumentGroup:
    """--new-tokens and --repeats of the speed runs; ``runs`` says how the repeats are combined."""
    speed = parser.add_argument_group("speed")
    speed.add_argument("--new-tokens", type=positive_int, default=new_tokens,
                       help="greedy tokens generated per speed run (default: %(default)s)")
    speed.add_argument("--repeats", type=positive_int, default=repeats, help=f"{runs} (default: %(default)s)")
    return speed


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def add_compression_arguments(
    parser: argparse.ArgumentParser,
    *,
    method: str = "awp",
    sparsity: Any = None,
    bits: int | None = None,
    embedding_bits: int | None = None,
    nsamples: int | None = None,
    calib_seqlen: int | None = None,
) -> None:
    """What to do (--method, --sparsity, --bits, --embedding-bits, --group-size, --asymmetric, --keep-dense), the calibration
    (--nsamples, --calib-seqlen, --seed, --dense-targets) and every solver option, with the given defaults (None: AWPConfig's)."""
    from ..config import GROUP_SIZES, AWPConfig
    from ..solvers import SOLVERS

    defaults = AWPConfig(method="rtn", bits=4)  # any valid config: its common defaults
    what = parser.add_argument_group("compression")
    methods = ", ".join(f"{name} ({SOLVERS[name].summary})" for name in sorted(SOLVERS))
    what.add_argument(
        "--method",
        choices=sorted(SOLVERS),
        default=method,
        metavar="METHOD",
        help=f"solver, one of: {methods} (default: %(default)s)",
    )
    what.add_argument(
        "--sparsity", type=parse_sparsity, default=sparsity,
        help="'N:M' (e.g. 2:4), a fraction pruned per row (e.g. 0.5), or none (default: %(default)s)",
    )  # fmt: skip
    what.add_argument(
        "--bits", type=parse_bits, default=bits, help="4 for INT4 weights, or none (default: %(default)s)"
    )
    what.add_argument(
        "--embedding-bits", type=parse_bits, default=embedding_bits,
        help="4 for an INT4 token embedding and output head (--group-size, asymmetric, GPTQ for the head's "
             "inputs; a tied head shares the packed rows), or none to keep them in the model dtype "
             "(default: %(default)s)",
    )  # fmt: skip
    what.add_argument(
        "--group-size", type=int, choices=GROUP_SIZES, default=defaults.group_size,
        help="inputs sharing one INT4 scale, -1 for one per row (default: %(default)s)",
    )  # fmt: skip
    what.add_argument(
        "--asymmetric", action="store_true", help="asymmetric INT4 grid with zero points (default: symmetric)"
    )
    what.add_argument(
        "--keep-dense", nargs="+", default=list(defaults.modules_to_not_convert), metavar="MODULE",
        help="module names or name suffixes left dense (default: %(default)s)",
    )  # fmt: skip
    calibration = parser.add_argument_group("calibration (the --dataset's calibration part)")
    calibration.add_argument(
        "--nsamples",
        type=positive_int,
        default=nsamples or defaults.nsamples,
        help="calibration sequences (default: %(default)s)",
    )
    calibration.add_argument(
        "--calib-seqlen",
        type=positive_int,
        default=calib_seqlen or defaults.seqlen,
        help="tokens per calibration sequence (default: %(default)s)",
    )
    calibration.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the sample choice (default: %(default)s)"
    )
    calibration.add_argument(
        "--dense-targets", action=argparse.BooleanOptionalAction, default=defaults.dense_targets,
        help="fit every layer to the dense model's outputs instead of its own on the compressed inputs "
             "(one more block forward per block; default: %(default)s)",
    )  # fmt: skip
    add_solver_arguments(parser)


def solver_flags() -> dict[str, list[tuple[str, Any]]]:
    """Option name -> [(method, default)] over every registered solver that declares it."""
    from ..solvers import SOLVERS

    flags: dict[str, list[tuple[str, Any]]] = {}
    for name in sorted(SOLVERS):
        for spec in SOLVERS[name].option_specs():
            flags.setdefault(spec.name, []).append((name, spec))
    return flags


def add_solver_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per declared solver option (``--max-iterations`` for ``max_iterations``), default None."""
    group = parser.add_argument_group(SOLVER_GROUP)
    for name, owners in solver_flags().items():
        spec = owners[0][1]
        where = ", ".join(f"{method} {owner.default!r}" for method, owner in owners)
        text = f"{spec.help} [{where}]".replace("%", "%%")  # argparse formats help with %
        flag = "--" + name.replace("_", "-")
        if spec.kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(
                flag,
                type=spec.kind,
                choices=spec.choices,
                default=None,
                help=text,
                metavar=None if spec.choices else spec.kind.__name__.upper(),
            )


def solver_options(args: argparse.Namespace) -> dict[str, Any]:
    """The solver options given on the command line (those left at None are the method's defaults)."""
    return {name: getattr(args, name) for name in solver_flags() if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace):
    """The AWPConfig of the compression and calibration flags, validated (before anything is loaded)."""
    from ..config import AWPConfig

    return AWPConfig(
        method=args.method, sparsity=args.sparsity, bits=args.bits, embedding_bits=args.embedding_bits,
        group_size=args.group_size, symmetric=not args.asymmetric, dataset=args.dataset, nsamples=args.nsamples, seqlen=args.calib_seqlen,
        seed=args.seed, dense_targets=args.dense_targets, modules_to_not_convert=args.keep_dense,
        **solver_options(args),
    )  # fmt: skip


def apply_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def describe_model(name_or_path: str | None) -> str:
    from ..data import EMBEDDED_MODEL_DESCRIPTION, embedded_model

    if name_or_path is None:
        return f"embedded {EMBEDDED_MODEL_DESCRIPTION} = the dense baseline, at {embedded_model()}"
    return name_or_path


def print_settings(rows: dict[str, object]) -> None:
    for key, value in rows.items():
        print(f"{key + ':':<11}{value}")


def eval_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``evaluate.perplexity`` from the evaluation flags."""
    return dict(
        seqlen=args.seqlen,
        nwindows=args.nwindows,
        batch_size=args.batch_size,
        add_bos=None if args.add_bos else False,
        progress=args.progress,
    )


def prompt_ids(tokenizer, source, tokens: int, add_bos: bool, device):
    """A (1, tokens [+ BOS]) prompt from the start of ``source``'s evaluation part."""
    import torch

    from ..data import eval_tokens

    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    return torch.tensor([bos + eval_tokens(tokenizer, source)[:tokens].tolist()], device=device)


def check_before_work(args: argparse.Namespace) -> None:
    """Refuse, before anything is loaded, what would fail after the compression: a device torch cannot use,
    an output folder that cannot be written, a text file that is not UTF-8, a Hub repo id that is not one."""
    import os

    import torch

    from ..hub import check_save_directory

    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as err:
            raise ValueError(f"--device {args.device!r} is not a torch device ({err}).") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device!r}: CUDA is not available on this machine (use cpu).")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device!r}: this machine has {torch.cuda.device_count()} CUDA devices.")
    target = check_save_directory(args.output)
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--output {str(target)!r}: {str(existing)!r} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output {str(target)!r}: {str(existing)!r} is not writable.")
    if os.path.isfile(os.path.expanduser(str(args.dataset))):  # a text file: readable as UTF-8 now, not after loading
        from ..data import load_text

        load_text(args.dataset, "calibration")
    repo_id = getattr(args, "push_to_hub", None)
    if repo_id:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            raise ValueError(f"--push-to-hub {repo_id!r} is not a Hub repo id (ORG/NAME): {err}") from None
        if "/" not in repo_id:
            raise ValueError(f"--push-to-hub {repo_id!r}: give ORG/NAME, the organisation or user included.")

"""The ``optimum-awp`` command line (also ``python -m optimum_awp.cli``).

One module per command (``eval``, ``compress``, ``demo``, ``bench``, ``export``); each registers itself with
``@register_command(name, help, add_arguments)`` (``registry.py``), and the shared option groups, the solver
options among them, are generated in ``arguments.py`` from the solvers' declarations. This package is the only
place that prints.

Errors the user can cause end the command with one line on stderr and exit code 2 (bad usage) or 1 (a
failure while working); Ctrl-C exits with 130; ``--log-level DEBUG`` shows the traceback.
"""

from __future__ import annotations

import logging
import sys

from . import bench, compress, demo, eval, export  # noqa: F401  (registration)
from .demo import run_demo
from .eval import run_eval
from .registry import COMMANDS, Command, build_parser, register_command

__all__ = ["COMMANDS", "Command", "build_parser", "main", "register_command", "run_demo", "run_eval"]

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("optimum_awp").setLevel(args.log_level)
    from ..data import DatasetUnavailableError

    debug = args.log_level == "DEBUG"
    try:
        return args._run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"optimum-awp {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, ImportError, FileNotFoundError, DatasetUnavailableError) as err:
        if debug:
            raise
        print(f"optimum-awp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:
        if debug:
            raise
        print(f"optimum-awp {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1

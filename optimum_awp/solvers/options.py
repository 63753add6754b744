"""Solver options, declared once: each solver's options are one frozen dataclass whose fields say
name, type, default, allowed values and help.

Everything else reads those declarations: ``AWPConfig`` (its keywords, validation and saved fields), the
CLI flags of ``compress`` and ``demo``, the model card's settings table and the benchmarks' settings::

    @dataclass(frozen=True)
    class SparseGPTOptions(SolverOptions):
        damping: float = option(0.01, "fraction of mean(diag C) added to the diagonal of C", minimum=0.0)

This module is pure Python (no torch), so the declarations can be read without any tensor work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

KINDS = (bool, int, float, str)


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A dataclass field declaring one option: its type is the type of ``default`` (bool, int, float or str).

    Args:
        default: the value used when the option is not given.
        help: one line for ``--help`` and the docs.
        choices: the allowed values, or None for any value of the type (within the bounds).
        minimum, maximum: inclusive bounds of an int or float option.
    """
    if type(default) not in KINDS:
        raise TypeError(f"an option's default must be one of {[k.__name__ for k in KINDS]}, got {default!r}.")
    meta = {"help": help, "choices": tuple(choices) if choices else None, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionSpec:
    """One declared option, as the config, the CLI and the model card read it.

    Attributes:
        name: the keyword (``AWPConfig(name=...)``; the CLI flag is ``--name`` with dashes).
        kind: bool, int, float or str.
        default: the value used when the option is not given.
        help: one line.
        choices: the allowed values, or None.
        minimum, maximum: inclusive bounds (int, float), or None.
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def allowed(self) -> str:
        """What the option accepts, in words: "one of ('row', 'layer')", "a finite float >= 0"."""
        if self.choices is not None:
            return f"one of {self.choices}"
        if self.kind is bool:
            return "a bool"
        if self.kind is str:
            return "a string"
        bounds = [f">= {self.minimum:g}"] if self.minimum is not None else []
        bounds += [f"<= {self.maximum:g}"] if self.maximum is not None else []
        kind = "an int" if self.kind is int else "a finite float"
        return " ".join([kind, " and ".join(bounds)]).strip()

    def is_valid(self, value: Any) -> bool:
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            return False
        if self.choices is not None and value not in self.choices:
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return self.maximum is None or value <= self.maximum

    def check(self, value: Any, owner: str) -> None:
        """Raise ValueError "``owner``.name must be <allowed>, got <value>." unless ``value`` is allowed."""
        if not self.is_valid(value):
            raise ValueError(f"{owner}.{self.name} must be {self.allowed()}, got {value!r}.")


class SolverOptions:
    """Base of the frozen option dataclasses: every field is checked against its declaration on creation."""

    def __post_init__(self) -> None:
        for spec in declared(type(self)):
            spec.check(getattr(self, spec.name), type(self).__name__)


@dataclass(frozen=True)
class NoOptions(SolverOptions):
    """The options of a solver that takes none."""


def declared(options_type: type) -> tuple[OptionSpec, ...]:
    """The OptionSpec of every field of an options dataclass, in declaration order."""
    specs = []
    for f in fields(options_type):
        meta = f.metadata
        specs.append(OptionSpec(f.name, type(f.default), f.default, meta.get("help", ""), meta.get("choices"),
                                meta.get("minimum"), meta.get("maximum")))
    return tuple(specs)


__all__ = ["NoOptions", "OptionSpec", "SolverOptions", "declared", "option"]

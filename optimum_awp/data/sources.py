"""Text sources: a registry of named sources (each with a calibration and an evaluation part), local text files
and lists of strings; the Hub datasets "wikitext2" and "c4" (through ``datasets``, online); and the one place that
tells what kind of calibration data a value is."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SPLITS = ("calibration", "eval")
DEFAULT_SOURCE = "wikipedia-gensim"


def dataset_kind(value: Any) -> str | None:
    """What kind of calibration data ``value`` is: "ids" (an integer tensor (nsamples, seqlen) or a non-empty
    list of non-empty lists of ints), "texts" (a non-empty list of strings), "source" (a non-empty string or
    path: a source name or a text file), or None (anything else)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(value, (str, os.PathLike)):
        return "source" if str(value).strip() else None
    if hasattr(value, "dim") and hasattr(value, "is_floating_point"):  # a tensor
        ok = value.dim() == 2 and not value.is_floating_point() and str(value.dtype) != "torch.bool" and value.numel() > 0
        return "ids" if ok else None
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, str) for v in value):
            return "texts"
        if all(isinstance(v, (list, tuple)) and v and all(is_int(t) for t in v) for v in value):
            return "ids"
    return None


@dataclass(frozen=True)
class TextSource:
    """A named text source.

    Attributes:
        name: the registry key (``--dataset`` in the CLI).
        description: how reports name it, e.g. "Wikipedia (gensim sample)".
        load: ``split -> list[str]`` for split in :data:`SPLITS`; the strings are joined with
            ``"\\n\\n"`` before tokenizing.
    """

    name: str
    description: str
    load: Callable[[str], list[str]]


TEXT_SOURCES: dict[str, TextSource] = {}


def register_source(name: str, description: str) -> Callable[[Callable[[str], list[str]]], Callable[[str], list[str]]]:
    """Decorator registering ``load(split) -> list[str]`` as the text source ``name``."""

    def decorator(load: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
        if name in TEXT_SOURCES:
            raise ValueError(f"text source {name!r} is already registered")
        TEXT_SOURCES[name] = TextSource(name=name, description=description, load=load)
        return load

    return decorator


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known; use one of {list(SPLITS)}")


def _unknown_source(source: str) -> ValueError:
    return ValueError(
        f"dataset {source!r} is neither a known source nor an existing file; known sources: "
        f"{sorted(TEXT_SOURCES)} (or pass the path of a text file, or a list of strings)"
    )


def load_text(source: str | os.PathLike | list[str] = DEFAULT_SOURCE, split: str = "eval") -> list[str]:
    """The text of ``source`` for ``split``, as a list of documents.

    Args:
        source: a registered name (see :data:`TEXT_SOURCES`), the path of a UTF-8 text file
            (returned as one string), or a list of strings (returned as a copy). Files and lists
            are used as-is for either split.
        split: ``"calibration"`` or ``"eval"``.

    Returns:
        Documents; callers join them with ``"\\n\\n"``.
    """
    _check_split(split)
    if isinstance(source, (list, tuple)):
        if dataset_kind(source) != "texts":
            raise ValueError("dataset given as a list must be a non-empty list of strings")
        return list(source)
    if isinstance(source, str) and source in TEXT_SOURCES:
        return TEXT_SOURCES[source].load(split)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_file():
            try:
                return [path.read_text(encoding="utf-8")]
            except UnicodeDecodeError as err:
                raise ValueError(f"dataset file {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason}); "
                                 "give a UTF-8 text file") from None
        raise _unknown_source(str(source))
    raise ValueError(f"dataset of type {type(source).__name__} is not supported; pass a name, a path or a list of strings")


def describe_source(source: str | os.PathLike | list[str]) -> str:
    """A human-readable name for ``source`` (e.g. "Wikipedia (gensim sample)")."""
    if isinstance(source, (list, tuple)):
        return f"{len(source)} given strings"
    if isinstance(source, str) and source in TEXT_SOURCES:
        return TEXT_SOURCES[source].description
    return f"text file {os.fspath(source)}"


# ---- Hub datasets (online) --------------------------------------------------------------------


class DatasetUnavailableError(RuntimeError):
    """A named Hub dataset could not be loaded (typically: offline)."""


def _load_dataset(name: str, *args, **kwargs):
    """``datasets.load_dataset`` with an error that says what to do offline."""
    import datasets

    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        raise DatasetUnavailableError(
            f"could not load dataset {name!r} through `datasets` ({type(err).__name__}: {err}); "
            f"offline, use the default {DEFAULT_SOURCE!r}, a text file or a list of strings"
        ) from err


@register_source("wikitext2", "WikiText-2 (raw)")
def _load_wikitext2(split: str) -> list[str]:
    """WikiText-2 raw lines: train for calibration, test for evaluation."""
    hub_split = {"calibration": "train", "eval": "test"}[split]
    return list(_load_dataset("wikitext2", "Salesforce/wikitext", "wikitext-2-raw-v1", split=hub_split)["text"])


C4_FILES = {
    "calibration": "en/c4-train.00000-of-01024.json.gz",
    "eval": "en/c4-validation.00000-of-00008.json.gz",
}
C4_CALIBRATION_DOCUMENTS = 10_000
C4_EVAL_DOCUMENTS = 1100


@register_source("c4", "C4 (en, shard 0)")
def _load_c4(split: str) -> list[str]:
    """C4 as Wanda/SparseGPT use it: train shard 0 for calibration, validation shard 0 for evaluation.

    Calibration keeps the first 10,000 train documents (Wanda samples from the whole shard);
    evaluation keeps the first 1100 validation documents, as SparseGPT does.
    """
    ds = _load_dataset("c4", "allenai/c4", data_files={"train": C4_FILES[split]}, split="train")
    keep = C4_CALIBRATION_DOCUMENTS if split == "calibration" else C4_EVAL_DOCUMENTS
    return list(ds.select(range(min(keep, len(ds))))["text"])

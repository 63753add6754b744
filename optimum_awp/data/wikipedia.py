"""The offline default text source "wikipedia-gensim": the Wikipedia articles that gensim ships as test data, turned
into WikiText-style prose and split *by article* into a calibration part and an evaluation part that never share
an article ("Wikipedia (gensim sample)"; docs/data.md)."""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from ..atomic import atomic_directory
from .cache import cache_dir
from .sources import SPLITS, register_source

logger = logging.getLogger(__name__)

GENSIM_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Bump when the cleaning or the split of the gensim sample changes: it names the cache folder.
WIKI_FORMAT_VERSION = 1
# One article in EVAL_MODULUS goes to the evaluation part (by a stable hash of its title).
EVAL_MODULUS = 3


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
    with atomic_directory(folder, replace=False) as tmp:  # another process's finished folder is kept
        for split, rows in parts.items():
            _write_jsonl(tmp / f"{split}.jsonl", rows)
            logger.info("  %s: %d articles, %d characters", split, len(rows), sum(len(r["text"]) for r in rows))
    return folder


@register_source("wikipedia-gensim", "Wikipedia (gensim sample)")
def _load_gensim_wiki(split: str) -> list[str]:
    """Articles of gensim's Wikipedia sample in ``split`` (cached as JSON lines)."""
    folder = cache_dir() / f"wikipedia-gensim-v{WIKI_FORMAT_VERSION}"
    if not all((folder / f"{s}.jsonl").is_file() for s in SPLITS):
        _prepare_gensim_wiki(folder)
    with (folder / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]

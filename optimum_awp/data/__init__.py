"""Calibration and evaluation text, and the embedded default model, one concern per module:

- ``cache``: the cache folder (folders are written into it with :mod:`optimum_awp.atomic`);
- ``models``: the embedded Gemma-3-270M (GGUF conversion, converted once);
- ``sources``: the registry of text sources (:data:`TEXT_SOURCES`, :func:`register_source`), text files, lists of
  strings, the Hub datasets "wikitext2" and "c4", and :func:`dataset_kind`;
- ``wikipedia``: the offline default "wikipedia-gensim", "Wikipedia (gensim sample)";
- ``tokens``: tokenizing, evaluation tokens, calibration samples, BOS windows.

Text sources:

- ``"wikipedia-gensim"`` (default, offline): the Wikipedia articles that gensim ships as test data, turned into
  WikiText-style prose and split *by article* into a calibration part and an evaluation part that never share
  an article.
- ``"wikitext2"``: WikiText-2 raw (``Salesforce/wikitext``, ``wikitext-2-raw-v1``) through ``datasets``; train
  for calibration, test for evaluation (needs the Hub).
- ``"c4"``: allenai/c4 ``en`` shard 0 through ``datasets``, the Wanda/SparseGPT choice: the train shard for
  calibration, the first 1100 documents of the validation shard for evaluation.

A local text file or a list of strings is accepted wherever a source name is, and is used as-is for either split.
"""

from .cache import cache_dir
from .models import (
    EMBEDDED_MODEL_DESCRIPTION,
    EMBEDDED_MODEL_NAME,
    convert_gguf,
    embedded_model,
)
from .sources import (
    DEFAULT_SOURCE,
    SPLITS,
    TEXT_SOURCES,
    DatasetUnavailableError,
    TextSource,
    dataset_kind,
    describe_source,
    load_text,
    register_source,
)
from .tokens import bos_windows, calibration_samples, eval_tokens, tokenize_text
from .wikipedia import WIKI_FORMAT_VERSION, clean_wiki_article, wiki_split

__all__ = [
    "DEFAULT_SOURCE",
    "EMBEDDED_MODEL_DESCRIPTION",
    "EMBEDDED_MODEL_NAME",
    "SPLITS",
    "TEXT_SOURCES",
    "WIKI_FORMAT_VERSION",
    "DatasetUnavailableError",
    "TextSource",
    "bos_windows",
    "cache_dir",
    "calibration_samples",
    "clean_wiki_article",
    "convert_gguf",
    "dataset_kind",
    "describe_source",
    "embedded_model",
    "eval_tokens",
    "load_text",
    "register_source",
    "tokenize_text",
    "wiki_split",
]

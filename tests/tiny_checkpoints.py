"""Tiny random Llama checkpoints with a word-level tokenizer, for the transformers-integration tests.

Hidden size 128 and intermediate 256 so that INT4 group 128, 2:4 (in % 16) and every shape divide.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tiny_models import tiny_llama
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = ("the a cat dog sat on mat and ran far away house tree bird sang sun moon star sky blue red green "
         "small big old new quick slow brown fox jumps over lazy river hill road . ,").split()
SPECIALS = ["[UNK]", "<s>", "</s>", "[PAD]"]
VOCAB = len(SPECIALS) + len(WORDS)
TEXTS = [
    "the quick brown fox jumps over the lazy dog .",
    "a small bird sang on the old tree and the sun ran far away .",
    "the big cat sat on the mat , the dog ran over the hill .",
    "blue sky , red sun , green tree , a new moon and a small star .",
]

# Each compression the tests exercise: (name, AWPConfig keyword arguments).
SETTINGS = {
    "int4": dict(method="rtn", bits=4, group_size=128),
    "2:4": dict(method="wanda", sparsity="2:4"),
    "2:4+int4": dict(method="wanda", sparsity="2:4", bits=4, group_size=128),
    "unstructured": dict(method="wanda", sparsity=0.5),
    "int4-asymmetric": dict(method="rtn", bits=4, group_size=128, symmetric=False),
}


def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS with BOS/EOS/PAD."""
    vocab = {word: i for i, word in enumerate(SPECIALS + list(WORDS))}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>",
                                   eos_token="</s>", pad_token="[PAD]")


def dense_model(seed: int = 0, tie: bool = False, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A random 2-block Llama (hidden 128, intermediate 256) over the tokenizer's vocabulary."""
    model = tiny_llama(vocab=VOCAB, seed=seed, tie=tie, dtype=dtype, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model.generation_config.pad_token_id = 3
    return model


def save_dense(path: Path, **kwargs) -> Path:
    """Save ``dense_model(**kwargs)`` and the tokenizer to ``path``."""
    dense_model(**kwargs).save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


def calibration_ids(nsamples: int = 4, seqlen: int = 16, seed: int = 0) -> torch.Tensor:
    """Random token ids (nsamples, seqlen) starting with BOS."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), VOCAB, (nsamples, seqlen), generator=gen)
    ids[:, 0] = 1
    return ids


def prompt_ids(length: int = 12, seed: int = 1) -> torch.Tensor:
    return calibration_ids(1, length, seed)

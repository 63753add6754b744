"""The tiny random models of the tests: Llama and Gemma 3 causal LMs built from a config (no download).

Plain functions, so that tests and helper modules call them with the shapes they need; ``conftest.py``
also offers them as fixtures.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
)


def tiny_llama(
    hidden: int = 128,
    intermediate: int | None = None,
    layers: int = 2,
    vocab: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    tie: bool = False,
    zero_head: bool = False,
    dtype: torch.dtype = torch.float32,
    **config,
) -> LlamaForCausalLM:
    """A random Llama in eval mode: ``layers`` blocks of width ``hidden`` (MLP ``intermediate``, default
    2 * hidden); ``zero_head`` zeroes lm_head (uniform logits: perplexity = vocabulary size)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=config.pop("max_position_embeddings", 128), tie_word_embeddings=tie,
                      **config)
    model = LlamaForCausalLM(cfg)
    if zero_head:
        torch.nn.init.zeros_(model.lm_head.weight)
    return model.to(dtype).eval()


def tiny_gemma3(hidden: int = 128, layers: int = 4, head_dim: int = 64, seed: int = 0) -> Gemma3ForCausalLM:
    """A random Gemma 3 whose layers alternate sliding (window 4) and full attention, so their masks differ
    from 5 tokens on."""
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"] * (layers // 2),
                           max_position_embeddings=64)
    return Gemma3ForCausalLM(cfg).eval()


def random_ids(n: int, seqlen: int, vocab: int = 128, seed: int = 1) -> torch.Tensor:
    """Random token ids (n, seqlen) in [0, vocab)."""
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


WORDS = "the a cat dog sat on mat and ran far away . ,".split()
WORD_VOCAB = 2 + len(WORDS)  # [UNK], <s>, the words


def word_tokenizer(bos: bool = True):
    """A word-level tokenizer over WORDS; id 0 is [UNK], id 1 is <s> (the BOS when ``bos``)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["[UNK]", "<s>"] + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    extra = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **extra)


def word_text(n: int, seed: int = 0) -> str:
    """``n`` random words of WORDS, space-separated."""
    import numpy as np

    return " ".join(np.random.default_rng(seed).choice(WORDS, n))

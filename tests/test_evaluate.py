"""Tests for optimum_awp.evaluate: windows, exact perplexities, BOS, the chunked head, errors."""

import math

import pytest
import torch
from tiny_models import WORD_VOCAB, word_text, word_tokenizer
from tiny_models import tiny_llama as shared_tiny_llama
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaForCausalLM,
)

from optimum_awp import evaluate
from optimum_awp.data import tokenize_text

VOCAB = WORD_VOCAB
def tiny_llama(zero_head: bool = False, seed: int = 0) -> LlamaForCausalLM:
    return shared_tiny_llama(hidden=16, vocab=VOCAB, heads=2, kv_heads=1, seed=seed, zero_head=zero_head,
                             max_position_embeddings=64)


def hf_nll(model, windows: torch.Tensor) -> float:
    """Mean token NLL of the targets windows[:, 1:] by transformers' own loss."""
    with torch.no_grad():
        return model(input_ids=windows, labels=windows).loss.item()


# ---- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_tokens, seqlen, bos, nwindows, expected",
    [
        (100, 16, 1, None, 6),  # 15 text tokens a window: 6 windows, 10 tokens left over
        (100, 16, None, None, 6),  # 16 text tokens a window: 6 windows, 4 left over
        (90, 16, 1, None, 6),  # exactly six windows of 15 text tokens
        (100, 16, 1, 3, 3),
        (100, 16, 1, 50, 6),  # more asked than the text holds: all of them
    ],
)
def test_make_windows_counts(n_tokens, seqlen, bos, nwindows, expected):
    tokens = torch.arange(10, 10 + n_tokens)
    windows = evaluate.make_windows(tokens, seqlen, bos, nwindows)
    assert windows.shape == (expected, seqlen)
    body = windows[:, 1:] if bos is not None else windows
    assert torch.equal(body.reshape(-1), tokens[: body.numel()])  # consecutive, non-overlapping
    if bos is not None:
        assert (windows[:, 0] == bos).all()


def test_make_windows_text_too_short():
    with pytest.raises(ValueError, match=r"14 tokens.*seqlen=16"):
        evaluate.make_windows(torch.arange(14), 16, bos_token_id=1)
    assert evaluate.make_windows(torch.arange(15), 16, bos_token_id=1).shape == (1, 16)


# ---- exact values --------------------------------------------------------------------------------


def test_uniform_logits_give_perplexity_equal_to_vocab_size():
    model = tiny_llama(zero_head=True)
    tokens = torch.randint(2, VOCAB, (101,), generator=torch.Generator().manual_seed(0))
    result = evaluate.perplexity_of_tokens(model, tokens, seqlen=16, bos_token_id=1, progress=False)
    assert result.ppl == pytest.approx(VOCAB, rel=1e-6)
    assert result.nll == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert (result.windows, result.tokens, result.seqlen) == (6, 6 * 15, 16)
    no_bos = evaluate.perplexity_of_tokens(model, tokens, seqlen=16, bos_token_id=None, progress=False)
    assert (no_bos.windows, no_bos.tokens) == (6, 6 * 15)
    assert no_bos.ppl == pytest.approx(VOCAB, rel=1e-6)


@pytest.mark.parametrize("bos", [1, None])
def test_chunked_head_matches_transformers_loss(bos, monkeypatch):
    monkeypatch.setattr(evaluate, "LOGIT_CHUNK_ELEMENTS", 7 * VOCAB)  # 7 positions a chunk: many chunks
    model = tiny_llama()
    tokens = torch.randint(2, VOCAB, (67,), generator=torch.Generator().manual_seed(1))
    result = evaluate.perplexity_of_tokens(model, tokens, seqlen=16, bos_token_id=bos, progress=False)
    windows = evaluate.make_windows(tokens, 16, bos)
    assert result.nll == pytest.approx(hf_nll(model, windows), rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(result.nll), rel=1e-12)


def test_batches_and_full_logit_fallback_agree(monkeypatch):
    model = tiny_llama()
    tokens = torch.randint(2, VOCAB, (80,), generator=torch.Generator().manual_seed(2))
    one = evaluate.perplexity_of_tokens(model, tokens, 16, 1, progress=False)
    batched = evaluate.perplexity_of_tokens(model, tokens, 16, 1, batch_size=4, progress=False)
    monkeypatch.setattr(evaluate, "_head_path_matches", lambda model, ids: False)
    full = evaluate.perplexity_of_tokens(model, tokens, 16, 1, batch_size=2, progress=False)
    assert batched.nll == pytest.approx(one.nll, rel=1e-5)
    assert full.nll == pytest.approx(one.nll, rel=1e-5)
    assert one.windows == batched.windows == full.windows == 5


def test_final_logit_softcapping_is_applied():
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, sliding_window=8,
        final_logit_softcapping=0.5,
    )  # fmt: skip
    model = Gemma3ForCausalLM(config).eval()
    tokens = torch.randint(2, VOCAB, (45,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert evaluate._head_path_matches(model, tokens[None, :16])
    result = evaluate.perplexity_of_tokens(model, tokens, 16, 1, progress=False)
    assert result.nll == pytest.approx(hf_nll(model, evaluate.make_windows(tokens, 16, 1)), rel=1e-5)
    # the cap bounds every logit to (-0.5, 0.5), so the perplexity is close to uniform
    assert abs(result.nll - math.log(VOCAB)) < 1.0


# ---- text in, BOS handling -------------------------------------------------------------------------


def test_perplexity_on_a_text_source_uses_bos_when_defined():
    model = tiny_llama()
    texts = [word_text(60, seed=1), word_text(60, seed=2)]
    tok = word_tokenizer()
    tokens = tokenize_text(tok, texts)
    with_bos = evaluate.perplexity(model, tok, texts, seqlen=16, progress=False)
    assert with_bos.nll == pytest.approx(
        evaluate.perplexity_of_tokens(model, tokens, 16, tok.bos_token_id, progress=False).nll, rel=1e-9
    )
    no_bos = evaluate.perplexity(model, tok, texts, seqlen=16, add_bos=False, progress=False)
    assert no_bos.nll == pytest.approx(evaluate.perplexity_of_tokens(model, tokens, 16, None, progress=False).nll)
    assert no_bos.nll != pytest.approx(with_bos.nll)
    plain = evaluate.perplexity(model, word_tokenizer(bos=False), texts, seqlen=16, progress=False)
    assert plain.nll == pytest.approx(no_bos.nll, rel=1e-9)
    with pytest.raises(ValueError, match="add_bos=True"):
        evaluate.perplexity(model, word_tokenizer(bos=False), texts, seqlen=16, add_bos=True)


def test_perplexity_casts_dtype():
    model = tiny_llama()
    result = evaluate.perplexity(model, word_tokenizer(), [word_text(40)], seqlen=16, dtype="bfloat16", progress=False)
    assert model.dtype == torch.bfloat16 and math.isfinite(result.ppl)


# ---- errors before any work ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seqlen": 1}, "seqlen=1"),
        ({"seqlen": 0}, "seqlen=0"),
        ({"seqlen": 65}, r"seqlen=65.*max_position_embeddings=64"),
        ({"seqlen": 16, "nwindows": 0}, "nwindows=0"),
        ({"seqlen": 16, "batch_size": 0}, "batch_size=0"),
        ({"seqlen": 16, "dtype": "float8"}, "dtype='float8'"),
    ],
)
def test_bad_settings_raise_before_loading_text(kwargs, match):
    # the unknown source would raise a different error if it were loaded first
    with pytest.raises(ValueError, match=match):
        evaluate.perplexity(tiny_llama(), word_tokenizer(), "no-such-dataset", progress=False, **kwargs)


def test_text_too_short_raises():
    with pytest.raises(ValueError, match="too short"):
        evaluate.perplexity(tiny_llama(), word_tokenizer(), ["the cat sat"], seqlen=16, progress=False)


# ---- load_model -----------------------------------------------------------------------------------------


def test_load_model_round_trip_and_unknown_model(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tiny_llama().save_pretrained(tmp_path / "tiny")
    word_tokenizer().save_pretrained(tmp_path / "tiny")
    model, tok = evaluate.load_model(str(tmp_path / "tiny"), dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training and tok.bos_token_id == 1
    with pytest.raises(ValueError, match=r"model '.*missing-model'"):
        evaluate.load_model(str(tmp_path / "missing-model"))
    with pytest.raises(ValueError, match="no-such-org/no-such-model"):
        evaluate.load_model("no-such-org/no-such-model")


@pytest.mark.slow
def test_embedded_model_perplexity_on_two_windows():
    """The embedded Gemma-3-270M on the first two 512-token windows of Wikipedia (gensim sample)."""
    model, tokenizer = evaluate.load_model(None)
    result = evaluate.perplexity(model, tokenizer, seqlen=512, nwindows=2, progress=False)
    assert (result.windows, result.tokens) == (2, 1022)
    assert result.ppl == pytest.approx(23.1102, rel=1e-3)

"""Tests for optimum_awp.data: text sources, the gensim Wikipedia split, calibration windows, GGUF conversion."""

import json
import os

import numpy as np
import pytest
import torch
from tiny_models import word_text, word_tokenizer

from optimum_awp import data


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMUM_AWP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- cache folder ---------------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch, tmp_path):
    for var in ("OPTIMUM_AWP_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "optimum_awp"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "optimum_awp"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert data.cache_dir() == tmp_path / "hf" / "optimum_awp"
    monkeypatch.setenv("OPTIMUM_AWP_CACHE", str(tmp_path / "own"))
    assert data.cache_dir() == tmp_path / "own"


# ---- sources ---------------------------------------------------------------------------------


def test_list_and_file_sources_are_used_as_is(tmp_path):
    texts = ["first text.", "second text."]
    assert data.load_text(texts, "calibration") == texts
    assert data.load_text(texts, "eval") == texts
    assert data.load_text(texts) is not texts
    path = tmp_path / "corpus.txt"
    path.write_text("line one\n\nline two\n", encoding="utf-8")
    assert data.load_text(path, "eval") == ["line one\n\nline two\n"]
    assert data.load_text(str(path), "calibration") == ["line one\n\nline two\n"]
    assert data.describe_source(texts) == "2 given strings"
    assert data.describe_source("wikipedia-gensim") == "Wikipedia (gensim sample)"


def test_bad_sources_and_splits_raise():
    with pytest.raises(ValueError, match=r"'no-such-dataset'.*wikipedia-gensim"):
        data.load_text("no-such-dataset")
    with pytest.raises(ValueError, match="no_such_file.txt"):
        data.load_text("/nonexistent/no_such_file.txt")
    with pytest.raises(ValueError, match="split='train'.*calibration"):
        data.load_text(["x"], "train")
    with pytest.raises(ValueError, match="non-empty list of strings"):
        data.load_text([])


def test_a_binary_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=r"weights.bin' is not UTF-8 text \(byte 128"):
        data.load_text(path, "calibration")


@pytest.mark.parametrize("value,kind", [
    ("wikipedia-gensim", "source"), ("  ", None), (["a", "b"], "texts"), ([], None), ([[1, 2], [3, 4]], "ids"),
    ([[1, 2], []], None), ([[1, True]], None), (torch.zeros(2, 3, dtype=torch.long), "ids"),
    (torch.zeros(2, 3), None), (torch.zeros(3, dtype=torch.long), None), (torch.zeros(2, 3, dtype=torch.bool), None),
    (42, None), (["a", 1], None),
])
def test_dataset_kind(value, kind):
    assert data.dataset_kind(value) == kind


def test_bos_windows():
    tokens = torch.arange(10, 20)
    windows = data.bos_windows(tokens, torch.tensor([0, 5]), 3, 1)
    assert windows.tolist() == [[1, 10, 11, 12], [1, 15, 16, 17]]
    assert data.bos_windows(tokens, torch.tensor([2]), 2, None).tolist() == [[12, 13]]
    with pytest.raises(ValueError, match="non-empty list of strings"):
        data.load_text(["ok", 3])


def test_registry_has_the_named_sources_and_refuses_duplicates():
    assert {"wikipedia-gensim", "wikitext2", "c4"} <= set(data.TEXT_SOURCES)
    with pytest.raises(ValueError, match="already registered"):
        data.register_source("c4", "again")(lambda split: [])


# ---- the gensim Wikipedia sample ----------------------------------------------------------------


def test_clean_wiki_article_keeps_prose_and_drops_lists_and_references():
    filtered = (
        "'''Foo''' is a word used in examples, and it has been used that way for decades.\n"
        "* a list item that is long enough to count as many words here.\n"
        "==History==\n"
        "The word appears in the  , programming literature of the 1960s ( ) and later on.\n"
        "short caption\n"
        "==References==\n"
        "Smith, John. A book about foo that has a sentence long enough to pass.\n"
        "===Sub===\n"
        "Still inside references, this sentence should be skipped entirely by the cleaner.\n"
        "==Empty section==\n"
        "* only a list\n"
    )
    assert data.clean_wiki_article("Foo", filtered) == (
        "= Foo =\n\n"
        "Foo is a word used in examples, and it has been used that way for decades.\n\n"
        "= = History = =\n\n"
        "The word appears in the, programming literature of the 1960s and later on."
    )
    assert data.clean_wiki_article("Nothing", "* list\n==See also==\nx") == ""


def test_wiki_split_is_a_stable_hash_of_the_title():
    # sha256-based: identical in every process and Python version (unlike hash()).
    titles = ("Anarchism", "Autism", "Albedo", "A", "Alabama", "Achilles")
    assert [data.wiki_split(t) for t in titles] == ["calibration"] * 3 + ["eval"] + ["calibration"] * 2
    splits = {data.wiki_split(f"title {i}") for i in range(30)}
    assert splits == {"calibration", "eval"}


@pytest.fixture(scope="module")
def gensim_parts(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTIMUM_AWP_CACHE", str(tmp_path_factory.mktemp("cache")))
        parts = {split: data.load_text("wikipedia-gensim", split) for split in data.SPLITS}
        again = {split: data.load_text("wikipedia-gensim", split) for split in data.SPLITS}  # from the cache
        folder = data.cache_dir() / f"wikipedia-gensim-v{data.WIKI_FORMAT_VERSION}"
        rows = {s: [json.loads(line) for line in (folder / f"{s}.jsonl").open()] for s in data.SPLITS}
    return parts, again, rows


def title_of(article: str) -> str:
    first = article.split("\n", 1)[0]
    assert first.startswith("= ") and first.endswith(" =")
    return first[2:-2]


def test_gensim_wiki_parts_share_no_article(gensim_parts):
    parts, _, rows = gensim_parts
    titles = {split: [title_of(a) for a in texts] for split, texts in parts.items()}
    assert set(titles["calibration"]).isdisjoint(titles["eval"])
    assert len(titles["calibration"]) == 66 and len(titles["eval"]) == 30
    for split in data.SPLITS:
        assert all(data.wiki_split(t) == split for t in titles[split])
        assert [r["title"] for r in rows[split]] == titles[split]
    # Plenty of prose on both sides (about 1.6 M and 0.9 M characters).
    assert sum(map(len, parts["calibration"])) > 1_500_000
    assert sum(map(len, parts["eval"])) > 850_000


def test_gensim_wiki_is_deterministic_and_cached(gensim_parts):
    parts, again, _ = gensim_parts
    assert parts == again
    article = parts["eval"][0]
    assert "'''" not in article and "[[" not in article and "{{" not in article


# ---- token windows ---------------------------------------------------------------------------


def test_eval_tokens_joins_with_blank_lines_without_bos():
    tok = word_tokenizer()
    ids = data.eval_tokens(tok, ["the cat", "sat ."])
    assert ids.dtype == torch.long and ids.dim() == 1
    assert ids.tolist() == tok("the cat\n\nsat .", add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id not in ids.tolist()


def test_calibration_samples_shape_bos_and_determinism():
    tok = word_tokenizer()
    texts = [word_text(500)]
    stream = data.tokenize_text(tok, texts)
    samples = data.calibration_samples(tok, texts, nsamples=6, seqlen=32, seed=3)
    assert samples.shape == (6, 32) and samples.dtype == torch.long
    assert (samples[:, 0] == tok.bos_token_id).all()
    assert (samples[:, 1:] != tok.bos_token_id).all()
    # every sample is a contiguous window of the tokenized text
    windows = stream.unfold(0, 31, 1)
    for row in samples[:, 1:]:
        assert (windows == row).all(dim=1).any()
    assert torch.equal(samples, data.calibration_samples(tok, texts, nsamples=6, seqlen=32, seed=3))
    assert not torch.equal(samples, data.calibration_samples(tok, texts, nsamples=6, seqlen=32, seed=4))


def test_calibration_samples_without_bos_are_plain_windows():
    tok = word_tokenizer(bos=False)
    texts = [word_text(200)]
    samples = data.calibration_samples(tok, texts, nsamples=4, seqlen=16, seed=0)
    assert samples.shape == (4, 16)
    assert (samples != 1).all()  # id 1 is "<s>", which is not a BOS here and never in the text


def test_calibration_samples_errors():
    tok = word_tokenizer()
    with pytest.raises(ValueError, match=r"10 tokens.*seqlen=32"):
        data.calibration_samples(tok, [word_text(10)], nsamples=2, seqlen=32)
    # exactly enough text for one window works
    assert data.calibration_samples(tok, [word_text(31)], nsamples=2, seqlen=32).shape == (2, 32)
    with pytest.raises(ValueError, match="nsamples=0"):
        data.calibration_samples(tok, ["the cat"], nsamples=0)
    with pytest.raises(ValueError, match="seqlen=1"):
        data.calibration_samples(tok, ["the cat"], seqlen=1)


# ---- GGUF conversion ---------------------------------------------------------------------------


def write_tiny_llama_gguf(path, hidden: int = 16, layers: int = 2, heads: int = 2, kv_heads: int = 1, seed: int = 0):
    """A float32 llama-architecture GGUF with a 40-token sentencepiece-style vocabulary."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "\u2581the", "\u2581a", "th", "he", "in", "an", "er"]
    tokens += list("abcdefghijklmnopqrstuvwxyz.,")[: 40 - len(tokens)]
    vocab, head_dim, inter = len(tokens), hidden // heads, 2 * hidden
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [-float(i) for i in range(vocab - 3)])
    writer.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def add(name, *shape):
        writer.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))

    add("token_embd.weight", vocab, hidden)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        add(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        add(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        add(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        add(f"blk.{i}.ffn_gate.weight", inter, hidden)
        add(f"blk.{i}.ffn_up.weight", inter, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, inter)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    add("output.weight", vocab, hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_convert_gguf_writes_a_plain_checkpoint_that_reloads_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = data.convert_gguf(gguf_path, tmp_path / "models" / "tiny")
    assert out == tmp_path / "models" / "tiny"
    assert os.listdir(tmp_path / "models") == ["tiny"]  # no temporary folder left behind
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "optimum_awp_source.json").read_text())["gguf_file"] == "tiny.gguf"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    assert tokenizer.bos_token_id == 1
    ids = torch.tensor([[1, 4, 5, 12, 20, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    gguf = pytest.importorskip("gguf")
    embedding = next(t for t in gguf.GGUFReader(str(gguf_path)).tensors if t.name == "token_embd.weight")
    assert torch.equal(model.model.embed_tokens.weight, torch.from_numpy(np.array(embedding.data)))


def test_convert_gguf_refuses_to_overwrite_unless_asked(tmp_path):
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        data.convert_gguf(gguf_path, out)
    data.convert_gguf(gguf_path, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.gguf"]
    with pytest.raises(ValueError, match="gguf_path="):
        data.convert_gguf(tmp_path / "missing.gguf", tmp_path / "x")


def test_embedded_model_reuses_a_converted_folder(cache):
    folder = cache / data.EMBEDDED_MODEL_NAME
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (folder / name).write_text("{}")
    assert data.embedded_model() == folder  # no conversion: it would fail on these stub files

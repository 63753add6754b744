"""hub.py: all-or-nothing save, the model card, and a real Hub round trip against tests/hub_server.py."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hub_server import HubServer
from huggingface_hub import ModelCard
from tiny_checkpoints import SETTINGS, calibration_ids, prompt_ids, save_dense, tokenizer
from transformers import AutoModelForCausalLM

from optimum_awp.config import AWPConfig
from optimum_awp.hub import model_card, model_sizes, save_pretrained
from optimum_awp.quantizer import register

register()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    dense = save_dense(tmp_path_factory.mktemp("dense") / "dense")
    config = AWPConfig(dataset=calibration_ids(), nsamples=4, seqlen=16, **SETTINGS["2:4+int4"])
    return AutoModelForCausalLM.from_pretrained(dense, quantization_config=config)


def test_save_pretrained_writes_model_tokenizer_and_card(model, tmp_path):
    folder = save_pretrained(model, tmp_path / "out", tokenizer=tokenizer(),
                             perplexity={"before": 41.25, "after": 43.5}, eval_settings={"dataset": "toy", "seqlen": 16})
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "generation_config.json"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    again = AutoModelForCausalLM.from_pretrained(folder)
    x = prompt_ids()
    assert torch.equal(again(x).logits, model(x).logits)
    card = ModelCard.load(folder / "README.md")
    assert "pip install optimum-awp" in card.text and "43.500" in card.text


class Interrupted(BaseException):
    pass


def test_interrupted_save_leaves_nothing(model, tmp_path, monkeypatch):
    target = tmp_path / "out"

    def fail(self, *args, **kwargs):
        raise Interrupted

    broken = tokenizer()
    monkeypatch.setattr(type(broken), "save_pretrained", fail)
    with pytest.raises(Interrupted):
        save_pretrained(model, target, tokenizer=broken)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_folder(model, tmp_path, monkeypatch):
    target = save_pretrained(model, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr("optimum_awp.hub.model_card", lambda *a, **k: (_ for _ in ()).throw(Interrupted()))
    with pytest.raises(Interrupted):
        save_pretrained(model, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_save_replaces_a_model_folder_but_not_other_folders(model, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "stale.bin").write_bytes(b"old")
    save_pretrained(model, target)
    assert not (target / "stale.bin").exists() and (target / "model.safetensors").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no model"):
        save_pretrained(model, other)
    assert (other / "todo.txt").read_text() == "keep me"


def test_model_card_contents(model):
    card = model_card(model, repo_id="org/tiny-awp", base_model="meta-llama/Llama-3.2-1B",
                      perplexity={"before": 12.0, "after": 13.25}, eval_settings={"dataset": "wikitext2", "seqlen": 2048},
                      calibration="Wikipedia (gensim sample)")
    assert card.data.base_model == "meta-llama/Llama-3.2-1B"
    assert card.data.library_name == "transformers" and "optimum-awp" in card.data.tags
    text = card.text
    for expected in ("wanda", "2:4 semi-structured sparsity", "INT4 weights (group 128, symmetric)",
                     "| group_size | `128` |", "| dense | 12.000 |", "| compressed | 13.250 |",
                     "dataset=wikitext2, seqlen=2048", "Wikipedia (gensim sample)", "pip install optimum-awp",
                     'from_pretrained("org/tiny-awp")', 'pipeline("text-generation", model="org/tiny-awp")'):
        assert expected in text, expected
    sizes = model_sizes(model)
    assert sizes["compressed"] < sizes["dense"]
    assert f"({sizes['compressed'] / sizes['dense']:.1%})" in text


def test_model_card_needs_an_awp_model(model):
    dense = AutoModelForCausalLM.from_config(model.config.__class__(**{**model.config.to_dict(),
                                                                        "quantization_config": None}))
    with pytest.raises(ValueError, match="AWPConfig"):
        model_card(dense)


HUB_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import optimum_awp
    from optimum_awp.quantizer import register
    register()
    from optimum_awp.hub import push_to_hub
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    local, prompt = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(local)
    tok = AutoTokenizer.from_pretrained(local)
    commit = push_to_hub(model, "org/tiny-awp", tokenizer=tok, perplexity={"before": 40.0, "after": 41.5},
                         eval_settings={"dataset": "toy", "seqlen": 16})
    model.push_to_hub("org/tiny-awp-native")          # transformers' own push works too
    tok.push_to_hub("org/tiny-awp-native")

    x = torch.tensor([%s])
    results = {"commit": commit.oid}
    for repo in ("org/tiny-awp", "org/tiny-awp-native"):
        remote = AutoModelForCausalLM.from_pretrained(repo)
        results[repo] = {"same_logits": torch.equal(remote(x).logits, model(x).logits),
                         "class": type(remote.model.layers[0].mlp.up_proj).__name__}
    generate = dict(max_new_tokens=6, do_sample=False)
    results["pipeline_remote"] = pipeline("text-generation", model="org/tiny-awp")(prompt, **generate)[0]["generated_text"]
    results["pipeline_local"] = pipeline("text-generation", model=local)(prompt, **generate)[0]["generated_text"]
    print("RESULT" + json.dumps(results))
""")


def test_hub_round_trip(model, tmp_path):
    local = save_pretrained(model, tmp_path / "local", tokenizer=tokenizer())
    with HubServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_TOKEN": "hf_test",
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        script = HUB_SCRIPT % prompt_ids().tolist()[0]
        run = subprocess.run([sys.executable, "-c", script, str(local), "the cat sat on the"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-4000:]
        results = json.loads(run.stdout.split("RESULT", 1)[1])
        repo = hub.repos["org/tiny-awp"]
        card = repo.files["README.md"].content.decode()
        lfs = {path for path, stored in repo.files.items() if stored.lfs}
        seen = hub.requests
    for name in ("org/tiny-awp", "org/tiny-awp-native"):
        assert results[name] == {"same_logits": True, "class": "AWPLinear"}, results
    assert results["pipeline_remote"] == results["pipeline_local"]
    assert results["pipeline_remote"].startswith("the cat sat on the")
    assert results["commit"] == repo.sha
    assert "pip install optimum-awp" in card and "41.500" in card
    assert lfs == {"model.safetensors"}
    assert ("POST", "/org/tiny-awp.git/info/lfs/objects/batch") in seen
    assert ("GET", "/api/models/org/tiny-awp/revision/main") in seen or any(
        path.startswith("/org/tiny-awp/resolve/") for _, path in seen)


def test_the_card_describes_low_rank_and_int4_embeddings():
    from optimum_awp.hub import _describe

    assert _describe(AWPConfig(method="lowrank", rank=0.5)) == (
        "activation-aware low-rank factors keeping 50% of each layer's parameters")
    assert _describe(AWPConfig(method="lowrank", rank=64, sparsity="2:4")) == (
        "2:4 semi-structured sparsity + activation-aware low-rank factors of rank 64")
    assert _describe(AWPConfig(method="rtn", bits=4, embedding_bits=4)).endswith(
        "+ INT4 token embedding and output head")

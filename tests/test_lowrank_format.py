"""method="lowrank" through transformers: compress on load, save, reload (never recompressed), pipeline,
sizes on disk, export refused."""

import importlib
import json
import struct
import warnings

import pytest
import torch
from tiny_checkpoints import calibration_ids, prompt_ids, save_dense, tokenizer
from transformers import AutoModelForCausalLM, pipeline

from optimum_awp.checkpoint import CheckpointError, check_config
from optimum_awp.config import AWPConfig
from optimum_awp.export import export_compressed_tensors
from optimum_awp.hub import save_pretrained
from optimum_awp.nn import AWPLinear
from optimum_awp.nn.lowrank import parse_lowrank
from optimum_awp.quantizer import register

compress_module = importlib.import_module("optimum_awp.compress")
register()

SETTINGS = {
    "lowrank": dict(rank=8),
    "lowrank-share": dict(rank=0.25),
    "2:4+lowrank": dict(sparsity="2:4", rank=4, alternations=2),
    "60%+lowrank": dict(sparsity=0.6, rank=4, alternations=2),
}
UP = "model.layers.0.mlp.up_proj"


def lowrank_config(setting: str) -> AWPConfig:
    options = {k: v for k, v in SETTINGS[setting].items() if v is not None}
    return AWPConfig(method="lowrank", dataset=calibration_ids(), nsamples=4, seqlen=16, **options)


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return save_dense(tmp_path_factory.mktemp("dense") / "dense")


@pytest.fixture(scope="module")
def compressed(dense_dir, tmp_path_factory):
    out = {}
    root = tmp_path_factory.mktemp("lowrank")
    for setting in SETTINGS:
        model = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=lowrank_config(setting))
        folder = save_pretrained(model, root / setting.replace(":", "_").replace("%", "pc"), tokenizer=tokenizer())
        out[setting] = (model, folder)
    return out


def test_compress_on_load_packs_every_block_linear(compressed):
    model, _ = compressed["lowrank"]
    modules = model.config.quantization_config.compressed_modules
    assert len(modules) == 14 and set(modules.values()) == {"lowrank-r8"}
    up = model.get_submodule(UP)
    assert isinstance(up, AWPLinear) and up.lowrank_a.shape == (8, 128) and up.lowrank_b.shape == (256, 8)
    assert isinstance(model.lm_head, torch.nn.Linear)
    share = compressed["lowrank-share"][0].config.quantization_config.compressed_modules
    # r = floor(0.25 * out * in / (out + in)): q_proj 128x128 -> 16, k_proj 64x128 -> 10, up_proj 256x128 -> 21
    assert share["model.layers.0.self_attn.q_proj"] == "lowrank-r16"
    assert share["model.layers.0.self_attn.k_proj"] == "lowrank-r10"
    assert share[UP] == "lowrank-r21"
    assert set(compressed["2:4+lowrank"][0].config.quantization_config.compressed_modules.values()) == \
        {"2:4+lowrank-r4"}
    kinds = {parse_lowrank(f)[1:] for f in compressed["60%+lowrank"][0].config.quantization_config
             .compressed_modules.values()}
    assert kinds == {("bitmap", 52), ("bitmap", 103)}  # 128 and 256 inputs, 60 % pruned per row


@pytest.mark.parametrize("setting", SETTINGS)
def test_save_and_reload_is_identical(setting, compressed, monkeypatch):
    model, folder = compressed[setting]
    monkeypatch.setattr(compress_module, "compress", lambda *a, **k: pytest.fail("reloading recompressed"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and not info["mismatched_keys"]
    assert again.config.quantization_config.to_dict() == model.config.quantization_config.to_dict()
    for name, fmt in model.config.quantization_config.compressed_modules.items():
        assert isinstance(again.get_submodule(name), AWPLinear) and again.get_submodule(name).format == fmt
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    x = prompt_ids()
    assert torch.equal(model(x).logits, again(x).logits)


@pytest.mark.parametrize("setting", ["lowrank", "2:4+lowrank"])
def test_pipeline_matches_in_memory_model(setting, compressed):
    model, folder = compressed[setting]
    tok = tokenizer()
    inputs = tok("the quick brown fox jumps over", return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0].tolist()
    pipe = pipeline("text-generation", model=str(folder))
    assert pipe.model.get_submodule(UP).format == model.get_submodule(UP).format
    generated = pipe("the quick brown fox jumps over", max_new_tokens=8, do_sample=False,
                     return_tensors=True)[0]["generated_token_ids"]
    assert list(generated) == expected


def test_size_on_disk_is_the_factors(compressed, dense_dir):
    _, folder = compressed["lowrank"]
    raw = (folder / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    dense = AutoModelForCausalLM.from_pretrained(dense_dir)
    expected = 0
    for name, module in dense.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            expected += 8 * (module.in_features + module.out_features) * 4  # float32 model
        elif isinstance(module, (torch.nn.Embedding, torch.nn.Linear)) or "norm" in type(module).__name__.lower():
            expected += sum(p.numel() * 4 for p in module.parameters(recurse=False))
    stored = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    assert stored == expected


def test_export_is_refused_with_a_clear_message(compressed, tmp_path):
    _, folder = compressed["lowrank"]
    with pytest.raises(ValueError, match="Cannot export method='lowrank' \\(low-rank factors, formats \\['lowrank-r8'\\]\\)"
                       " to compressed-tensors: it has no low-rank layout"):
        export_compressed_tensors(folder, tmp_path / "exported")


def test_checkpoint_checks_know_the_family():
    check_config(AWPConfig(method="lowrank", compressed_modules={"a": "lowrank-r8", "b": "2:4+lowrank-r3",
                                                                 "c": "bitmap-k9+lowrank-r2"}))
    with pytest.raises(CheckpointError, match="formats \\['lowrank-r0'\\] that this optimum-awp cannot read"):
        check_config(AWPConfig(method="lowrank", compressed_modules={"a": "lowrank-r0"}))


def test_a_wrong_rank_in_the_config_fails_before_loading(compressed, tmp_path):
    _, folder = compressed["lowrank"]
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in folder.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"]["compressed_modules"][UP] = "lowrank-r9"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"{UP}.lowrank_a: shape \\[8, 128\\], expected \\[9, 128\\]"):
        AutoModelForCausalLM.from_pretrained(bad)

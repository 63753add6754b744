"""checkpoint.py: a checkpoint that would load wrong is refused with a clear error, never loaded with random weights.

transformers only warns about missing or unexpected tensors and fills the missing ones at random; each case here
is one that did exactly that before optimum_awp.checkpoint refused it. (The older cases, a wrong shape, dtype or
format of a compressed tensor, are in test_quantizer.py.)
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoints import SETTINGS, calibration_ids, prompt_ids, save_dense
from transformers import AutoModelForCausalLM, LlamaForCausalLM
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING

from optimum_awp.checkpoint import MISSPELLINGS, CheckpointError, MisspelledQuantMethod
from optimum_awp.config import AWPConfig
from optimum_awp.quantizer import register

register()

UP = "model.layers.0.mlp.up_proj"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> folder of a compressed checkpoint ("untied" and "tied" input/output embeddings)."""
    root = tmp_path_factory.mktemp("checkpoints")
    folders = {}
    for name, tie in (("untied", False), ("tied", True)):
        dense = save_dense(root / f"dense-{name}", tie=tie)
        config = AWPConfig(dataset=calibration_ids(), nsamples=4, seqlen=16, **SETTINGS["2:4+int4"])
        model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=config)
        model.save_pretrained(root / name)
        folders[name] = root / name
    return folders


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "broken")


def _edit_quant_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"].update(changes)
    path.write_text(json.dumps(config))


def _drop_from_compressed_modules(folder, name):
    config = json.loads((folder / "config.json").read_text())
    modules = config["quantization_config"]["compressed_modules"]
    del modules[name]
    _edit_quant_config(folder, compressed_modules=modules)


def _drop_tensor(folder, key):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    del tensors[key]
    save_file(tensors, path, metadata={"format": "pt"})


REFUSED = {
    "quant_method AWP": (lambda f: _edit_quant_config(f, quant_method="AWP"), r"quant_method 'AWP'.*'awp'"),
    "quant_method Awp": (lambda f: _edit_quant_config(f, quant_method="Awp"), r"quant_method 'Awp'"),
    "quant_method optimum-awp": (lambda f: _edit_quant_config(f, quant_method="optimum-awp"),
                                 r"quant_method 'optimum-awp'"),
    "compressed_modules {}": (lambda f: _edit_quant_config(f, compressed_modules={}),
                              r"for 14 module\(s\) that its quantization_config.compressed_modules does not list"),
    "compressed_modules without one module": (lambda f: _drop_from_compressed_modules(f, UP),
                                              rf"for 1 module\(s\) .* does not list.*: {UP}\. .*lists 13"),
    "no embedding": (lambda f: _drop_tensor(f, "model.embed_tokens.weight"), r"dense: model\.embed_tokens\.weight"),
    "no lm_head": (lambda f: _drop_tensor(f, "lm_head.weight"), r"dense: lm_head\.weight"),
    "no final norm": (lambda f: _drop_tensor(f, "model.norm.weight"), r"dense: model\.norm\.weight"),
    "no layer norm": (lambda f: _drop_tensor(f, "model.layers.1.input_layernorm.weight"),
                      r"dense: model\.layers\.1\.input_layernorm\.weight"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_checkpoint_that_would_load_wrong_is_refused(case, saved, tmp_path):
    break_it, message = REFUSED[case]
    folder = _copy(saved["untied"], tmp_path)
    break_it(folder)
    with pytest.raises(CheckpointError, match=message):
        AutoModelForCausalLM.from_pretrained(folder)


def test_tied_checkpoint_without_its_embedding_is_refused(saved, tmp_path):
    folder = _copy(saved["tied"], tmp_path)
    assert "lm_head.weight" not in load_file(folder / "model.safetensors")  # tied: stored once
    _drop_tensor(folder, "model.embed_tokens.weight")
    with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_tied_checkpoint_loads(saved):
    model = AutoModelForCausalLM.from_pretrained(saved["tied"])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.isfinite(model(prompt_ids()).logits).all()


def test_dense_tensor_missing_without_files_is_caught_after_loading(saved):
    model = AutoModelForCausalLM.from_pretrained(saved["untied"])
    state = {k: v for k, v in model.state_dict().items() if k != "model.norm.weight"}
    config = model.config
    config.quantization_config = config.quantization_config.to_dict()  # as read from config.json
    with pytest.raises(CheckpointError, match=r"dense: model\.norm\.weight"):
        LlamaForCausalLM.from_pretrained(None, config=config, state_dict=state)


def test_every_case_variant_of_awp_is_refused_by_name():
    variants = {"".join(c.upper() if mask >> i & 1 else c for i, c in enumerate("awp")) for mask in range(8)}
    assert variants - {"awp"} <= set(MISSPELLINGS)
    for name in MISSPELLINGS:
        assert AUTO_QUANTIZATION_CONFIG_MAPPING[name] is MisspelledQuantMethod
        with pytest.raises(CheckpointError, match=f"quant_method {name!r}"):
            AUTO_QUANTIZATION_CONFIG_MAPPING[name].from_dict({"quant_method": name})

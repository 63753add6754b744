"""pipeline("text-generation") on a saved compressed folder, and optimum's quantizer interface."""

import pytest
import torch
from tiny_checkpoints import SETTINGS, calibration_ids, save_dense, tokenizer
from transformers import AutoModelForCausalLM, pipeline

from optimum_awp.config import AWPConfig
from optimum_awp.hub import save_pretrained
from optimum_awp.nn import AWPLinear
from optimum_awp.optimum import AWPOptimumQuantizer
from optimum_awp.quantizer import register

register()

PROMPT = "the quick brown fox jumps over"


def awp_config(setting: str) -> AWPConfig:
    return AWPConfig(dataset=calibration_ids(), nsamples=4, seqlen=16, **SETTINGS[setting])


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return save_dense(tmp_path_factory.mktemp("dense") / "dense")


@pytest.mark.parametrize("setting", ["2:4+int4", "int4"])
def test_pipeline_matches_in_memory_model(setting, dense_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=awp_config(setting))
    tok = tokenizer()
    folder = save_pretrained(model, tmp_path / "out", tokenizer=tok)

    inputs = tok(PROMPT, return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0].tolist()

    pipe = pipeline("text-generation", model=str(folder))
    assert isinstance(pipe.model.get_submodule("model.layers.0.mlp.up_proj"), AWPLinear)
    generated = pipe(PROMPT, max_new_tokens=8, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    assert list(generated) == expected
    assert len(expected) == inputs["input_ids"].shape[1] + 8


def test_optimum_quantizer_is_the_same_compression(dense_dir, tmp_path):
    config = awp_config("2:4+int4")
    quantizer = AWPOptimumQuantizer.from_pretrained(dense_dir)
    assert quantizer.tokenizer is not None
    report = quantizer.quantize(tmp_path / "out", quantization_config=config, progress=False)
    assert len(report.layers) == 14

    on_load = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=awp_config("2:4+int4"))
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    a, b = on_load.state_dict(), saved.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert config.compressed_modules is None  # the caller's config is not written into
    assert saved.config.quantization_config.compressed_modules == report.config.compressed_modules
    assert quantizer.model.is_quantized and quantizer.model.hf_quantizer.is_serializable()
    readme = (tmp_path / "out" / "README.md").read_text()
    assert str(dense_dir) in readme and (tmp_path / "out" / "tokenizer.json").exists()


def test_optimum_quantizer_refuses_what_it_cannot_do(dense_dir, tmp_path):
    with pytest.raises(ValueError, match="file_name"):
        AWPOptimumQuantizer.from_pretrained(dense_dir, file_name="model.onnx")
    quantizer = AWPOptimumQuantizer.from_pretrained(dense_dir)
    with pytest.raises(ValueError, match="file_prefix"):
        quantizer.quantize(tmp_path / "out", "prefix", quantization_config=awp_config("int4"))
    with pytest.raises(ValueError, match="AWPConfig"):
        quantizer.quantize(tmp_path / "out", quantization_config={"bits": 4})
    compressed = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=awp_config("int4"))
    with pytest.raises(ValueError, match="already quantized"):
        AWPOptimumQuantizer(compressed)

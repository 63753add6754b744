"""AWPQuantizer with transformers: compress on load, save, reload compressed (never recompressed), bad checkpoints."""

import copy
import importlib
import json
import struct
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoints import SETTINGS, calibration_ids, dense_model, prompt_ids, save_dense
from transformers import AutoModelForCausalLM, LlamaForCausalLM
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

from optimum_awp.compress import compress
from optimum_awp.config import AWPConfig
from optimum_awp.nn import AWPLinear, use_backend
from optimum_awp.quantizer import AWPQuantizer, CheckpointError, register

# optimum_awp.compress, the module: the package attribute of that name is the function
compress_module = importlib.import_module("optimum_awp.compress")

register()

ROUND_TRIP = ["int4", "2:4", "2:4+int4", "unstructured", "int4-asymmetric"]
UP = "model.layers.0.mlp.up_proj"


def awp_config(setting: str, **overrides) -> AWPConfig:
    return AWPConfig(dataset=calibration_ids(), nsamples=4, seqlen=16, **{**SETTINGS[setting], **overrides})


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return save_dense(tmp_path_factory.mktemp("dense") / "dense")


@pytest.fixture(scope="module")
def compressed(dense_dir, tmp_path_factory):
    """setting -> (model compressed on load, its saved folder), built once per module."""
    out = {}
    root = tmp_path_factory.mktemp("compressed")
    for setting in ROUND_TRIP:
        model = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=awp_config(setting))
        folder = root / setting.replace(":", "_")
        model.save_pretrained(folder)
        out[setting] = (model, folder)
    return out


def load_quietly(path, **kwargs):
    """from_pretrained that fails on any warning and returns (model, loading info)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)


def test_register_is_idempotent():
    register()
    register()
    assert AUTO_QUANTIZER_MAPPING["awp"] is AWPQuantizer
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["awp"] is AWPConfig


def test_import_optimum_awp_registers():
    import optimum_awp

    assert optimum_awp.AWPConfig is AWPConfig
    assert AUTO_QUANTIZER_MAPPING["awp"] is AWPQuantizer


def test_quantize_on_load_equals_compress(dense_dir):
    config = AWPConfig(method="awp", sparsity="2:4", bits=4, max_iterations=3, dataset=calibration_ids(),
                       nsamples=4, seqlen=16)
    loaded = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=config)
    direct = AutoModelForCausalLM.from_pretrained(dense_dir)
    direct_config = AWPConfig(method="awp", sparsity="2:4", bits=4, max_iterations=3, nsamples=4, seqlen=16)
    report = compress(direct, direct_config, calibration_ids(), progress=False)

    assert config.compressed_modules is None, "the caller's config must not be written into"
    recorded = loaded.config.quantization_config
    assert recorded.compressed_modules == report.config.compressed_modules
    assert len(recorded.compressed_modules) == 14 and set(recorded.compressed_modules.values()) == {"2:4+int4"}
    assert isinstance(loaded.get_submodule(UP), AWPLinear) and isinstance(loaded.lm_head, torch.nn.Linear)
    a, b = loaded.state_dict(), direct.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert loaded.hf_quantizer.report.layers and loaded.hf_quantizer.base_model == str(dense_dir)
    assert not loaded.hf_quantizer.is_trainable and loaded.hf_quantizer.is_serializable()


@pytest.mark.parametrize("setting", ROUND_TRIP)
def test_save_and_reload_is_identical(setting, compressed, monkeypatch):
    model, folder = compressed[setting]
    monkeypatch.setattr(compress_module, "compress", lambda *a, **k: pytest.fail("reloading recompressed"))
    again, info = load_quietly(folder)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and not info["mismatched_keys"]
    assert again.config.quantization_config.to_dict() == model.config.quantization_config.to_dict()
    for name, fmt in model.config.quantization_config.compressed_modules.items():
        module = again.get_submodule(name)
        assert isinstance(module, AWPLinear) and module.format == fmt
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    x = prompt_ids()
    assert torch.equal(model(x).logits, again(x).logits)
    assert isinstance(again.lm_head, torch.nn.Linear)


def _expected_weight_bytes(setting: str, out_f: int, in_f: int, itemsize: int = 4) -> int:
    """Bytes the format promises for one (out, in) weight, group 128 (scale per 128 inputs)."""
    groups = out_f * (in_f // 128)
    return {
        "int4": out_f * in_f // 2 + groups * itemsize,
        "int4-asymmetric": out_f * in_f // 2 + groups * itemsize + groups,
        "2:4": out_f * in_f // 2 * itemsize + out_f * in_f // 8,
        "2:4+int4": out_f * in_f // 4 + out_f * in_f // 8 + groups * itemsize,
        "unstructured": out_f * in_f * itemsize,
    }[setting]


@pytest.mark.parametrize("setting", ROUND_TRIP)
def test_size_on_disk_is_what_the_format_promises(setting, compressed):
    _, folder = compressed[setting]
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    data_bytes = len(raw) - 8 - struct.unpack("<Q", raw[:8])[0]
    dense = dense_model()
    expected = 0
    for name, module in dense.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            expected += _expected_weight_bytes(setting, module.out_features, module.in_features)
    expected += sum(p.numel() * 4 for n, p in dense.named_parameters()
                    if not any(n == f"{m}.weight" for m, mod in dense.named_modules()
                               if isinstance(mod, torch.nn.Linear) and m != "lm_head"))
    assert data_bytes == expected


def test_dtype_device_map_and_to(compressed):
    model, folder = compressed["2:4+int4"]
    half = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="cpu")
    module = half.get_submodule(UP)
    assert module.scales.dtype == torch.bfloat16 and module.qweight.dtype == torch.int32
    assert module.meta.dtype == torch.uint8
    assert torch.equal(module.qweight, model.get_submodule(UP).qweight)
    x = prompt_ids()
    with use_backend("reference"):
        reference = model(x).logits
        assert torch.allclose(half(x).logits.float(), reference, atol=0.05)
        moved = half.to("cpu").to(torch.float32)
        assert moved.get_submodule(UP).scales.dtype == torch.float32
        assert moved.get_submodule(UP).qweight.dtype == torch.int32
        assert torch.allclose(moved(x).logits, reference, atol=0.05)


def test_dequantize_gives_dense_linears(compressed, tmp_path):
    _, folder = compressed["int4"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    x = prompt_ids()
    with use_backend("reference"):
        reference = model(x).logits
    weight = model.get_submodule(UP).dequantize()
    model.dequantize()
    assert type(model.get_submodule(UP)) is torch.nn.Linear
    assert torch.equal(model.get_submodule(UP).weight, weight)
    assert torch.allclose(model(x).logits, reference, atol=1e-5)
    assert getattr(model.config, "quantization_config", None) is None


def test_modules_to_not_convert_stay_dense(dense_dir, tmp_path):
    config = awp_config("int4", modules_to_not_convert=["lm_head", "mlp.down_proj"])
    model = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=config)
    assert isinstance(model.model.layers[1].mlp.down_proj, torch.nn.Linear)
    assert not any("down_proj" in name for name in model.config.quantization_config.compressed_modules)
    model.save_pretrained(tmp_path / "out")
    again, info = load_quietly(tmp_path / "out")
    assert type(again.model.layers[1].mlp.down_proj) is torch.nn.Linear
    assert torch.equal(again.model.layers[1].mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight)


def test_tied_embeddings_stay_tied_and_dense(tmp_path):
    folder = save_dense(tmp_path / "tied", tie=True)
    config = awp_config("int4", modules_to_not_convert=[])
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config)
    assert type(model.lm_head) is torch.nn.Linear
    assert model.config.quantization_config.modules_to_not_convert == ["lm_head"]
    model.save_pretrained(tmp_path / "out")
    again, _ = load_quietly(tmp_path / "out")
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    x = prompt_ids()
    assert torch.equal(model(x).logits, again(x).logits)


def test_compress_on_load_refuses_no_dataset(dense_dir):
    with pytest.raises(ValueError, match="AWPConfig.dataset"):
        AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=AWPConfig(bits=4, dataset=None))


# --- checkpoints that optimum-awp cannot read fail clearly ---------------------------------------------------

def _copy(folder, tmp_path):
    target = tmp_path / "broken"
    target.mkdir()
    for path in folder.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def _edit_quant_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"].update(changes)
    path.write_text(json.dumps(config))


def _edit_tensors(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


BROKEN = {
    "format_version": (lambda f: _edit_quant_config(f, format_version=2), ValueError, "format_version"),
    "unknown field": (lambda f: _edit_quant_config(f, packing="v2"), ValueError, "unknown fields"),
    "unknown format": (lambda f: _edit_quant_config(f, compressed_modules={UP: "3:8+int3"}), CheckpointError,
                       r"formats \['3:8\+int3'\]"),
    "no compressed_modules": (lambda f: _edit_quant_config(f, compressed_modules=None), CheckpointError,
                              "no compressed_modules"),
    "foreign module": (lambda f: _edit_quant_config(f, compressed_modules={"model.layers.7.mlp.up_proj": "int4"}),
                       CheckpointError, "does not have"),
    "missing tensor": (lambda f: _edit_tensors(f, lambda t: t.pop(f"{UP}.scales")), CheckpointError,
                       rf"{UP}\.scales: missing"),
    "wrong shape": (lambda f: _edit_tensors(f, lambda t: t.update({f"{UP}.qweight": t[f"{UP}.qweight"][:, :4].contiguous()})),
                    CheckpointError, r"qweight: shape \[256, 4\], expected \[256, 8\]"),
    "wrong dtype": (lambda f: _edit_tensors(f, lambda t: t.update({f"{UP}.qweight": t[f"{UP}.qweight"].long()})),
                    CheckpointError, "qweight: dtype I64, expected torch.int32"),
    "float codes": (lambda f: _edit_tensors(f, lambda t: t.update({f"{UP}.meta": t[f"{UP}.meta"].float()})),
                    CheckpointError, "meta: dtype F32"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_bad_checkpoint_fails_clearly(case, compressed, tmp_path):
    break_it, error, message = BROKEN[case]
    folder = _copy(compressed["2:4+int4"][1], tmp_path)
    break_it(folder)
    with pytest.raises(error, match=message):
        AutoModelForCausalLM.from_pretrained(folder)


def test_missing_buffer_without_files_is_caught_after_loading(compressed):
    model, folder = compressed["int4"]
    state = {k: v for k, v in model.state_dict().items() if k != f"{UP}.scales"}
    config = copy.deepcopy(model.config)
    config.quantization_config = config.quantization_config.to_dict()  # as read from config.json
    with pytest.raises(CheckpointError, match=rf"{UP}\.scales"):
        LlamaForCausalLM.from_pretrained(None, config=config, state_dict=state)

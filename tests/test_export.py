"""export_compressed_tensors: the export loads in plain transformers + compressed-tensors, without optimum_awp."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from tiny_checkpoints import SETTINGS, calibration_ids, prompt_ids, save_dense, tokenizer
from transformers import AutoModelForCausalLM

from optimum_awp.config import AWPConfig
from optimum_awp.export import export_compressed_tensors
from optimum_awp.hub import save_pretrained
from optimum_awp.nn import use_backend
from optimum_awp.quantizer import register

register()

UP = "model.layers.0.mlp.up_proj"

LOAD_WITHOUT_OPTIMUM_AWP = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    results = {}
    for folder, ids, reference in json.loads(sys.argv[1]):
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        logits = model(torch.tensor(ids)).logits
        expected = torch.load(reference)
        results[folder] = {
            "max_error": (logits.double() - expected.double()).abs().max().item(),
            "scale": expected.abs().max().item(),
            "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
            "quant_method": model.config.quantization_config.quant_method,
        }
    results["optimum_awp_imported"] = any(name.startswith("optimum_awp") for name in sys.modules)
    print("RESULT" + json.dumps(results))
""")

EXPORTS = [("int4", 128), ("2:4+int4", 128), ("int4", -1)]


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    return save_dense(tmp_path_factory.mktemp("dense") / "dense")


def compressed_folder(dense_dir, folder, setting: str, **overrides):
    config = AWPConfig(dataset=calibration_ids(), nsamples=4, seqlen=16, **{**SETTINGS[setting], **overrides})
    model = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=config)
    return save_pretrained(model, folder, tokenizer=tokenizer()), model


@pytest.fixture(scope="module")
def exports(dense_dir, tmp_path_factory):
    """(setting, group) -> (optimum-awp model, export folder, its result loaded in a process without optimum_awp).

    One subprocess loads every export, so transformers and compressed-tensors are imported once.
    """
    root, x = tmp_path_factory.mktemp("exports"), prompt_ids()
    built, jobs = {}, []
    for setting, group_size in EXPORTS:
        name = f"{setting.replace(':', '_')}_g{group_size}"
        folder, model = compressed_folder(dense_dir, root / name, setting, group_size=group_size)
        out = export_compressed_tensors(folder, root / f"{name}_ct")
        with use_backend("reference"):
            torch.save(model(x).logits, root / f"{name}.pt")
        built[(setting, group_size)] = (model, out)
        jobs.append((str(out), x.tolist(), str(root / f"{name}.pt")))
    run = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_OPTIMUM_AWP, json.dumps(jobs)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout.split("RESULT", 1)[1])
    assert not results["optimum_awp_imported"]
    return {key: (model, out, results[str(out)]) for key, (model, out) in built.items()}


@pytest.mark.parametrize("setting,group_size", EXPORTS)
def test_export_loads_without_optimum_awp(setting, group_size, exports):
    model, out, result = exports[(setting, group_size)]
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert weights["num_bits"] == 4 and weights["type"] == "int" and weights["symmetric"] is True
    assert weights["strategy"] == ("group" if group_size > 0 else "channel")
    assert weights["group_size"] == (group_size if group_size > 0 else None)
    assert config["ignore"] == ["lm_head"]
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor(f"{UP}.weight_packed")
        assert f.get_tensor(f"{UP}.weight_shape").tolist() == [256, 128]
        assert f.get_tensor(f"{UP}.weight_scale").shape == (256, 1)
    assert packed.dtype == torch.int32 and packed.shape == (256, 16)
    assert not any(key.endswith((".qweight", ".meta", ".scales")) for key in keys)
    if setting == "int4":  # optimum-awp's int4 qweight is already compressed-tensors' packing
        assert torch.equal(packed, model.get_submodule(UP).qweight)
    assert (out / "tokenizer.json").exists() and not (out / "README.md").exists()

    assert result["quant_method"] == "compressed-tensors"
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["max_error"] <= 1e-5 * result["scale"], result


def config_only_checkpoint(dense_dir, folder, setting: str):
    """A folder whose config.json names the AWP setting: the refusals run before any weight is read."""
    folder.mkdir()
    config = json.loads((dense_dir / "config.json").read_text())
    awp = AWPConfig(**SETTINGS[setting], compressed_modules={UP: "int4"})
    config["quantization_config"] = awp.to_dict()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("setting,message", [
    ("2:4", "no sparse compressor"),
    ("unstructured", "no sparse compressor"),
    ("int4-asymmetric", "symmetric=False"),
])
def test_export_refuses_what_compressed_tensors_cannot_hold(setting, message, dense_dir, tmp_path):
    folder = config_only_checkpoint(dense_dir, tmp_path / "awp", setting)
    with pytest.raises(ValueError, match=message):
        export_compressed_tensors(folder, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


def test_export_refuses_a_dense_checkpoint_and_a_busy_folder(dense_dir, tmp_path):
    with pytest.raises(ValueError, match="not an optimum-awp checkpoint"):
        export_compressed_tensors(dense_dir, tmp_path / "ct")
    folder = config_only_checkpoint(dense_dir, tmp_path / "awp", "int4")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        export_compressed_tensors(folder, busy)


def test_export_refuses_a_missing_source(tmp_path):
    with pytest.raises(ValueError, match="neither a local folder nor a reachable Hub repo"):
        export_compressed_tensors(tmp_path / "nowhere", tmp_path / "ct")

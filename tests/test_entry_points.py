"""Every way to compress a model ends in the same place: ``compress()``, and a checkpoint that reloads, in a fresh
interpreter that never imports optimum_awp, to the logits of the model that was saved.

Entry points: quantize on load (``from_pretrained(..., quantization_config=AWPConfig(...))``), the public
``optimum_awp.compress`` then ``model.save_pretrained``, ``AWPOptimumQuantizer.quantize`` and the CLI's
``compress``. The first three calibrate on the same token ids and must give bit-identical tensors; the CLI
calibrates on a text file, and must give the tensors of ``optimum_awp.compress`` on the same text.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_checkpoints import TEXTS, calibration_ids, prompt_ids, save_dense, tokenizer
from transformers import AutoModelForCausalLM

import optimum_awp
from optimum_awp import cli
from optimum_awp.config import AWPConfig
from optimum_awp.optimum import AWPOptimumQuantizer

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(method="awp", sparsity="2:4", bits=4, group_size=128, max_iterations=3, nsamples=4, seqlen=16)

RELOAD = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    assert "optimum_awp" not in sys.modules
    ids = torch.tensor(json.loads(sys.argv[2]))
    out = {}
    for folder in json.loads(sys.argv[1]):
        model = AutoModelForCausalLM.from_pretrained(folder)
        with torch.inference_mode():
            out[folder] = model(ids).logits.tolist()
    print("RESULT" + json.dumps(out))
""")


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{entry point: (saved folder, logits of the in-memory model, or None for the CLI)}."""
    root = tmp_path_factory.mktemp("entry")
    dense = save_dense(root / "dense")
    text = root / "text.txt"
    text.write_text("\n\n".join(TEXTS * 30), encoding="utf-8")
    prompt = prompt_ids()
    out = {}

    def logits(model):
        with torch.inference_mode():
            return model(prompt).logits

    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=AWPConfig(dataset=calibration_ids(),
                                                                                      **SETTINGS))
    model.save_pretrained(root / "on_load")
    out["on_load"] = (root / "on_load", logits(model))

    model = AutoModelForCausalLM.from_pretrained(dense)
    optimum_awp.compress(model, AWPConfig(**SETTINGS), calibration_ids(), progress=False)
    model.save_pretrained(root / "compress")
    out["compress"] = (root / "compress", logits(model))

    quantizer = AWPOptimumQuantizer.from_pretrained(dense)
    quantizer.quantize(root / "optimum", quantization_config=AWPConfig(**SETTINGS), data=calibration_ids(),
                       progress=False)
    out["optimum"] = (root / "optimum", logits(quantizer.model))

    model = AutoModelForCausalLM.from_pretrained(dense)
    optimum_awp.compress(model, AWPConfig(dataset=str(text), tokenizer=tokenizer(), **SETTINGS), progress=False)
    model.save_pretrained(root / "compress_text")
    out["compress_text"] = (root / "compress_text", logits(model))

    code = cli.main(["compress", str(dense), "-o", str(root / "cli"), "--method", "awp", "--sparsity", "2:4",
                     "--bits", "4", "--max-iterations", "3", "--dataset", str(text), "--nsamples", "4",
                     "--calib-seqlen", "16", "--no-progress"])
    assert code == 0
    out["cli"] = (root / "cli", None)
    return out


@pytest.fixture(scope="module")
def reloaded(outputs):
    """Logits of every saved folder, loaded in one fresh interpreter that never imports optimum_awp."""
    folders = [str(folder) for folder, _ in outputs.values()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(folders), json.dumps(prompt_ids().tolist())],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-4000:]
    return {name: torch.tensor(v) for name, v in json.loads(run.stdout.split("RESULT", 1)[1]).items()}


@pytest.mark.parametrize("entry", ["on_load", "compress", "optimum", "compress_text"])
def test_the_checkpoint_reloads_to_the_saved_models_logits(entry, outputs, reloaded):
    folder, logits = outputs[entry]
    assert torch.equal(reloaded[str(folder)], logits)


def test_entry_points_on_the_same_data_write_the_same_tensors(outputs):
    reference = saved_tensors(outputs["compress"][0])
    for entry in ("on_load", "optimum"):
        tensors = saved_tensors(outputs[entry][0])
        assert tensors.keys() == reference.keys()
        assert all(torch.equal(tensors[k], reference[k]) for k in reference), entry
    cli_tensors, text_tensors = saved_tensors(outputs["cli"][0]), saved_tensors(outputs["compress_text"][0])
    assert cli_tensors.keys() == text_tensors.keys()
    assert all(torch.equal(cli_tensors[k], text_tensors[k]) for k in text_tensors)


def test_the_configs_record_what_was_done(outputs):
    for entry in ("on_load", "compress", "optimum", "cli"):
        config = json.loads((outputs[entry][0] / "config.json").read_text())["quantization_config"]
        assert (config["method"], config["sparsity"], config["bits"], config["max_iterations"]) == ("awp", "2:4", 4, 3)
        assert (config["nsamples"], config["seqlen"]) == (4, 16)
        assert len(config["compressed_modules"]) == 14 and "lm_head" in config["modules_to_not_convert"]

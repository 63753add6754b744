"""The startup hook: an awp checkpoint loads correctly in a fresh interpreter that never imports optimum_awp.

Each load runs in a subprocess, so nothing this test process imported or registered can help it.
"""

import json
import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import SETTINGS, calibration_ids, prompt_ids, save_dense, tokenizer
from transformers import AutoModelForCausalLM, pipeline

from optimum_awp.config import AWPConfig
from optimum_awp.quantizer import register

register()

ROOT = Path(__file__).resolve().parents[1]
PTH = "optimum_awp-autoload.pth"
PROMPT = "the cat sat on the"


def run_python(*args, timeout=300, env=None):
    """``python *args`` in a fresh interpreter that imports this checkout (not another optimum_awp)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_the_hook_is_installed_in_site_packages():
    found = [Path(d) / PTH for d in site.getsitepackages() + [site.getusersitepackages()] if (Path(d) / PTH).exists()]
    assert found, f"{PTH} is not in site-packages: reinstall optimum-awp (pip install -e .) so setup.py installs it"
    assert found[0].read_text() == "import _optimum_awp_autoload\n"


def test_interpreter_start_imports_neither_torch_nor_transformers():
    run = run_python("-c", "import sys, json; print(json.dumps(sorted(m for m in ('torch', 'transformers', "
                           "'optimum_awp', '_optimum_awp_autoload') if m in sys.modules)))")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["_optimum_awp_autoload"]


def test_the_hook_costs_little_at_start():
    """``-X importtime`` of the hook module: well under the 10 ms budget (about 0.4 ms from bytecode, 2.5 ms when
    compiled from source on every start as with PYTHONDONTWRITEBYTECODE=1)."""
    run = run_python("-X", "importtime", "-c", "pass")
    times = [int(m.group(1)) for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \|\s+_optimum_awp_autoload", run.stderr)]
    assert times and min(times) < 10_000, run.stderr[-2000:]


FRESH = textwrap.dedent("""
    import json, sys
    assert not {"optimum_awp", "torch", "transformers"} & set(sys.modules), "imported at start"
    import torch
    from transformers import AutoModelForCausalLM, pipeline

    good, miscased, prompt, ids = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    model = AutoModelForCausalLM.from_pretrained(good)
    out = {"class": type(model.model.layers[0].mlp.up_proj).__name__,
           "logits": model(torch.tensor(ids)).logits.tolist()}
    pipe = pipeline("text-generation", model=good)
    out["pipeline"] = pipe(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    out["pipeline_class"] = type(pipe.model.model.layers[0].mlp.up_proj).__name__
    try:
        AutoModelForCausalLM.from_pretrained(miscased)
        out["miscased"] = "loaded"
    except Exception as err:
        out["miscased"] = f"{type(err).__name__}: {err}"
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """(what a fresh interpreter that never imports optimum_awp got, the compressed model, its saved folder)."""
    root = tmp_path_factory.mktemp("autoload")
    dense = save_dense(root / "dense")
    config = AWPConfig(dataset=calibration_ids(), nsamples=4, seqlen=16, **SETTINGS["2:4+int4"])
    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=config)
    good = root / "good"
    model.save_pretrained(good)
    tokenizer().save_pretrained(good)
    miscased = shutil.copytree(good, root / "miscased")
    config_json = json.loads((miscased / "config.json").read_text())
    config_json["quantization_config"]["quant_method"] = "AWP"
    (miscased / "config.json").write_text(json.dumps(config_json))
    run = run_python("-c", FRESH, str(good), str(miscased), PROMPT, json.dumps(prompt_ids().tolist()))
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.split("RESULT", 1)[1]), model, good


def test_fresh_process_loads_the_compressed_modules(fresh):
    result, model, _ = fresh
    assert result["class"] == "AWPLinear"
    assert torch.equal(torch.tensor(result["logits"]), model(prompt_ids()).logits)


def test_fresh_process_pipeline_generates_as_the_compressed_model(fresh):
    result, _, good = fresh
    assert result["pipeline_class"] == "AWPLinear"
    here = pipeline("text-generation", model=good)  # this process imported optimum_awp
    assert result["pipeline"] == here(PROMPT, max_new_tokens=6, do_sample=False)[0]["generated_text"]


def test_fresh_process_refuses_a_miscased_quant_method(fresh):
    result, _, _ = fresh
    assert result["miscased"].startswith("CheckpointError: config.json's quantization_config names quant_method 'AWP'")


def test_both_wheels_install_the_hook(tmp_path):
    """``pip install .`` and ``pip install -e .`` both put the .pth at the root of the wheel (site-packages)."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "_optimum_awp_autoload.py"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "optimum_awp", project / "optimum_awp", ignore=shutil.ignore_patterns("__pycache__"))
    build = ("import sys; from setuptools import build_meta as b; out = sys.argv[1]; "  # build_meta rewrites argv
             "b.build_wheel(out); b.build_editable(out)")
    run = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], capture_output=True, text=True,
                         cwd=project, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    wheels = sorted((tmp_path / "dist").glob("*.whl"))
    assert len(wheels) == 2 and any(".editable" in w.name for w in wheels)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            assert z.read(PTH) == b"import _optimum_awp_autoload\n", wheel.name
            record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
            assert PTH in z.read(record).decode(), wheel.name  # so pip uninstall removes it
            if ".editable" not in wheel.name:
                assert "_optimum_awp_autoload.py" in z.namelist()

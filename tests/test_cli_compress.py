"""The compress, export and bench subcommands of the optimum-awp command line."""

import os
import subprocess
import sys

import pytest
from hub_server import HubServer
from huggingface_hub import ModelCard
from tiny_checkpoints import TEXTS, save_dense
from transformers import AutoModelForCausalLM

from optimum_awp import cli
from optimum_awp.nn import AWPLinear
from optimum_awp.nn.embedding import AWPEmbedding
from optimum_awp.quantizer import register

register()

TINY = ["--nsamples", "4", "--calib-seqlen", "16", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    text = root / "text.txt"
    text.write_text("\n\n".join(TEXTS * 30), encoding="utf-8")
    return save_dense(root / "dense"), text


def test_help_documents_every_option(capsys):
    for command, options in {
        "compress": ("--method", "--sparsity", "--bits", "--group-size", "--asymmetric", "--keep-dense", "--dataset",
                     "--nsamples", "--calib-seqlen", "--seed", "--max-iterations", "--tolerance", "--damping", "--init",
                     "--step", "--momentum", "--scope", "--bf16-products", "--blocksize", "--n-grid", "--max-shrink",
                     "--clip", "--eval", "--seqlen", "--nwindows", "--push-to-hub", "--private", "-o", "--dtype"),
        "demo": ("--method", "--sparsity", "--bits", "--nsamples", "--calib-seqlen", "--seqlen", "--nwindows",
                 "--max-iterations", "--step", "--bf16-products", "--new-tokens"),
        "export": ("--format", "compressed-tensors", "-o"),
        "bench": ("--prompt-tokens", "--new-tokens", "--repeats", "--no-ppl", "--dataset", "--seqlen"),
    }.items():
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        for option in options:
            assert option in out, (command, option)


def test_compress_export_bench(files, tmp_path, capsys):
    dense, text = files
    out = tmp_path / "out"
    code = cli.main(["compress", str(dense), "-o", str(out), "--method", "wanda", "--sparsity", "2:4", "--bits", "4",
                     "--dataset", str(text), "--eval", "--seqlen", "16", "--nwindows", "8", *TINY])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dense perplexity" in printed and "compressed perplexity" in printed and "compressed 14 linears" in printed
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model.get_submodule("model.layers.1.mlp.down_proj"), AWPLinear)
    card = ModelCard.load(out / "README.md").text
    assert "## Perplexity" in card and "seqlen=16, windows=8" in card and "text file" in card

    assert cli.main(["export", str(out), "--format", "compressed-tensors", "-o", str(tmp_path / "ct")]) == 0
    assert (tmp_path / "ct" / "model.safetensors").exists()

    assert cli.main(["bench", str(out), "--dataset", str(text), "--seqlen", "16", "--nwindows", "4",
                     "--prompt-tokens", "8", "--new-tokens", "4", "--repeats", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2:4 semi-structured sparsity + INT4" in printed and "14 packed linears" in printed
    assert "perplexity:" in printed and "decode" in printed and "tokens/s" in printed


def test_compress_refuses_bad_settings_before_loading(tmp_path, capsys):
    code = cli.main(["compress", str(tmp_path / "does-not-exist"), "-o", str(tmp_path / "out"), "--sparsity", "0"])
    assert code == 2
    assert "AWPConfig.sparsity" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compress_push_to_hub(files, tmp_path):
    dense, text = files
    with HubServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_TOKEN": "hf_test",
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
        run = subprocess.run(
            [sys.executable, "-m", "optimum_awp.cli", "--log-level", "WARNING", "compress", str(dense),
             "-o", str(tmp_path / "out"), "--method", "rtn", "--bits", "4", "--dataset", str(text), *TINY,
             "--push-to-hub", "org/tiny-int4"],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert run.returncode == 0, run.stderr[-4000:]
        files_on_hub = set(hub.repos["org/tiny-int4"].files)
    assert "pushed to org/tiny-int4" in run.stdout
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= files_on_hub


def test_demo_runs_the_main_job_end_to_end(files, tmp_path, capsys):
    dense, text = files
    out, also = tmp_path / "demo", tmp_path / "demo-int4"
    code = cli.main(["demo", "--model", str(dense), "-o", str(out), "--also-output", str(also), "--dataset", str(text),
                     "--nsamples", "4", "--calib-seqlen", "16", "--seqlen", "16", "--nwindows", "4", "--new-tokens", "4",
                     "--repeats", "1", "--max-iterations", "5", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for step in ("== 1/5", "== 2/5", "== 3/5", "== 4/5", "== 5/5"):
        assert step in printed
    # 14 block linears, the INT4 embedding and the (untied) INT4 head
    assert printed.count("compressed 14 linears") == 2 and printed.count("16 packed modules") == 2
    assert printed.count("greedy tokens of the reloaded model equal the in-memory model's") == 2
    assert "load average" in printed and "dense:" in printed  # the dense continuation beside the compressed ones
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | perplexity |") and len(table) == 4
    assert table[1].startswith("| dense (bfloat16) |")
    assert table[2].startswith("| awp 2:4 + INT4 g128 + INT4 embedding |")
    assert table[3].startswith("| awp INT4 g128 + INT4 embedding |")
    for folder in (out, also):
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert isinstance(model.get_submodule("model.layers.0.mlp.up_proj"), AWPLinear)
        assert isinstance(model.get_input_embeddings(), AWPEmbedding) and model.lm_head.format == "int4"
    assert AutoModelForCausalLM.from_pretrained(also).config.quantization_config.sparsity is None


def test_demo_refuses_bad_settings_before_any_work(tmp_path, capsys):
    code = cli.main(["demo", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "out"),
                     "--also-output", str(tmp_path / "also"), "--sparsity", "1.5"])
    assert code == 2
    assert "AWPConfig.sparsity" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["compress", "demo"])
def test_an_output_folder_that_holds_no_model_is_refused_before_loading(command, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    model = ["--model", str(tmp_path / "missing")] if command == "demo" else [str(tmp_path / "missing")]
    code = cli.main([command, *model, "-o", str(out), "--sparsity", "2:4"])
    assert code == 2
    assert "holds no model" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_a_declared_option_reaches_the_flag_the_config_and_the_card(files, tmp_path, capsys):
    dense, text = files
    out = tmp_path / "per-row"
    code = cli.main(["compress", str(dense), "-o", str(out), "--method", "sparsegpt", "--sparsity", "0.5",
                     "--per-row", "--dataset", str(text), *TINY])
    assert code == 0, capsys.readouterr().err
    saved = AutoModelForCausalLM.from_pretrained(out).config.quantization_config
    assert saved.per_row is True and saved.to_dict()["per_row"] is True
    assert "| per_row | `True` |" in ModelCard.load(out / "README.md").text
    code = cli.main(["compress", str(dense), "-o", str(tmp_path / "no"), "--method", "wanda", "--sparsity", "0.5",
                     "--per-row", "--dataset", str(text), *TINY])
    assert code == 2
    assert "['per_row'] is not an option of method 'wanda'" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("extra,message", [
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "tpu9"], "is not a torch device"),
    (["--push-to-hub", "a/b/c"], "is not a Hub repo id"),
    (["--push-to-hub", "name-only"], "give ORG/NAME"),
    (["--damping", "inf"], "AWPConfig.damping must be a finite float >= 0, got inf"),
    (["--method", "rtn", "--sparsity", "0.5"], "method 'rtn' does not do pruning alone"),
    (["--method", "wanda", "--sparsity", "none", "--bits", "4"], "method 'wanda' does not do INT4 alone"),
    (["--method", "wanda", "--step", "diagonal"], "['step'] is not an option of method 'wanda'"),
])
def test_compress_refuses_before_loading(extra, message, tmp_path, capsys):
    import torch

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = cli.main(["compress", str(tmp_path / "does-not-exist"), "-o", str(tmp_path / "out"),
                     "--sparsity", "2:4", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_an_output_under_a_file_is_refused_before_loading(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = cli.main(["compress", str(tmp_path / "missing"), "-o", str(tmp_path / "file" / "out"), "--sparsity", "2:4"])
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err

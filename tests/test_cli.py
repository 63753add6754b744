"""Tests for the optimum-awp command line."""

import argparse
import subprocess
import sys

import pytest
from tiny_models import WORD_VOCAB, WORDS, tiny_llama, word_tokenizer

from optimum_awp import cli

VOCAB = WORD_VOCAB


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved tiny Llama with a zeroed head (perplexity = vocabulary size) and a word-level tokenizer."""
    word_tokenizer().save_pretrained(tmp_path / "tiny")
    model = tiny_llama(hidden=16, layers=1, vocab=VOCAB, heads=2, kv_heads=1, zero_head=True)
    model.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(" ".join(WORDS * 10), encoding="utf-8")  # 130 tokens
    return path


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_lists_commands_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "eval" in out and "demo" in out and "--log-level" in out
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    out = capsys.readouterr().out
    for option in ("--dataset", "--seqlen", "--nwindows", "--batch-size", "--dtype", "--device", "--threads", "--no-bos"):
        assert option in out
    assert "wikipedia-gensim" in out and "(default: 2048)" in out


def test_every_argument_has_help():
    parser = cli.build_parser()
    for name, sub in {"": parser, **subparsers(parser)}.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.dest} has no help"
    assert {"eval", "demo"} <= set(subparsers(parser))


def test_demo_defaults():
    args = cli.build_parser().parse_args(["demo"])
    assert (args.seqlen, args.nwindows, args.dataset, args.add_bos) == (512, 32, "wikipedia-gensim", True)
    assert (args.method, args.sparsity, args.bits, args.group_size) == ("awp", "2:4", 4, 128)
    assert (args.nsamples, args.calib_seqlen, args.model) == (32, 512, None)
    assert (args.also, args.dtype, args.repeats) == ("int4", "bfloat16", 3)
    assert args._run is cli.run_demo


def test_register_command_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        cli.register_command("eval", "again", lambda parser: None)(lambda args: 0)


def test_eval_prints_settings_and_perplexity(tiny_model_dir, text_file, capsys):
    code = cli.main(
        ["eval", str(tiny_model_dir), "--dataset", str(text_file), "--seqlen", "16", "--nwindows", "5",
         "--threads", "1", "--no-progress"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert f"text file {text_file}, evaluation part" in out
    assert "up to 5 x 16 tokens, <s> prepended to each" in out
    # zeroed head: uniform logits, perplexity = vocabulary size; 5 windows of 15 scored tokens
    assert f"perplexity: {VOCAB:.4f}" in out and "75 tokens, 5 windows of 16" in out


def test_eval_errors_are_reported_not_raised(tmp_path, text_file, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code = cli.main(["eval", str(tmp_path / "missing"), "--dataset", str(text_file), "--no-progress"])
    assert code == 2
    assert "optimum-awp eval: error: model" in capsys.readouterr().err


def test_bad_option_values_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--seqlen", "0"])
    assert exit_info.value.code == 2
    assert "--seqlen" in capsys.readouterr().err


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "optimum_awp.cli", "eval", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--nwindows" in result.stdout


@pytest.mark.parametrize("raised,code,word", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (ValueError("bad value"), 2, "error: bad value"),
    (OSError(28, "No space left on device"), 1, "failed: OSError"),
])
def test_exit_codes_and_one_line_messages(raised, code, word, monkeypatch, capsys):
    def run(args):
        raise raised

    parser = cli.build_parser()
    args = parser.parse_args(["eval"])
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    args._run = run
    assert cli.main(["eval"]) == code
    err = capsys.readouterr().err
    assert word in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    args.log_level = "DEBUG"  # shows the traceback: the exception propagates
    with pytest.raises(type(raised)):
        cli.main(["eval"])

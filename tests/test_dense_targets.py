"""dense_targets: each linear fitted to the dense model's outputs, ‖W X̃ − Θ X‖², through W' = W Cₓ C⁻¹."""

from __future__ import annotations

import copy

import pytest
import torch

from optimum_awp import AWPConfig, compress
from optimum_awp.calibration import block_linears, capture_block_inputs, decoder_layers, layers_prefix, walk_blocks
from optimum_awp.cli.arguments import add_compression_arguments, config_from_args
from optimum_awp.solvers.targets import dense_target
from tests.tiny_models import random_ids, tiny_gemma3, tiny_llama


def _problem(out=6, features=5, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)  # compressed inputs, one token per row
    x_dense = x + 0.3 * torch.randn(n, features, generator=g, dtype=torch.float64)
    w = torch.randn(out, features, generator=g, dtype=torch.float64)
    return w, x, x_dense


def test_dense_target_turns_the_dense_objective_into_the_layer_objective():
    # ‖W X̃ − Θ X‖² − n ‖(W' − Θ) C^{1/2}‖² is the same for every Θ (undamped)
    w, x, x_dense = _problem()
    n = x.shape[0]
    c, cross = x.T @ x / n, x_dense.T @ x / n
    target = dense_target(w, cross, c, damping=0.0).double()
    gaps = []
    for seed in range(3):
        theta = torch.randn(w.shape, generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64)
        dense_objective = ((x_dense @ w.T - x @ theta.T) ** 2).sum()
        layer_objective = n * torch.trace((target - theta) @ c @ (target - theta).T)
        gaps.append(float(dense_objective - layer_objective))
    assert max(gaps) - min(gaps) < 1e-3 * abs(gaps[0]) + 1e-6


def test_dense_target_is_the_weight_itself_when_the_streams_agree():
    w, x, _ = _problem()
    c = x.T @ x / x.shape[0]
    assert torch.allclose(dense_target(w.float(), c.float(), c.float()), w.float(), atol=1e-6)


def test_dense_target_leaves_a_dead_input_alone_and_refuses_bad_shapes():
    w, x, x_dense = _problem()
    x[:, 2] = 0.0  # an input that never fires in the compressed stream
    n = x.shape[0]
    target = dense_target(w, x_dense.T @ x / n, x.T @ x / n)
    assert torch.isfinite(target).all()
    with pytest.raises(ValueError, match=r"dense_target needs cross and covariance of shape \(5, 5\)"):
        dense_target(w, torch.eye(4), torch.eye(5))


def _input_of(model, name, ids):
    """The inputs (tokens, in) that ``name`` receives when ``model`` runs on ``ids``."""
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()


def test_the_walk_pairs_each_token_with_the_dense_models_input():
    model = tiny_gemma3(layers=4)
    dense = copy.deepcopy(model)
    ids = random_ids(3, 12)
    prefix = layers_prefix(model)
    recorded = {}

    def solve_block(index, block, stats):
        recorded.update(stats)
        if index != 0:
            return False
        for linear in block_linears(block).values():  # block 0 only: its weights halved
            linear.weight.data.mul_(0.5)
        return True

    inputs = capture_block_inputs(model, ids)
    walk_blocks(model, inputs, solve_block, progress=False, dense_targets=True)
    q0, q1 = f"{prefix}.0.self_attn.q_proj", f"{prefix}.1.self_attn.q_proj"
    assert recorded[q0].cross is None  # the first block: the two streams are one
    x, x_dense = _input_of(model, q1, ids), _input_of(dense, q1, ids)
    assert not torch.allclose(x, x_dense)
    n = x.shape[0]
    assert recorded[q1].nsamples == n
    assert torch.allclose(recorded[q1].covariance.double(), x.T @ x / n, rtol=1e-4, atol=1e-5)
    assert torch.allclose(recorded[q1].cross.double(), x_dense.T @ x / n, rtol=1e-4, atol=1e-5)
    down = f"{prefix}.3.mlp.down_proj"
    assert torch.allclose(recorded[down].cross.double(),
                          _input_of(dense, down, ids).T @ _input_of(model, down, ids) / n, rtol=1e-4, atol=1e-5)


def test_streams_stay_one_until_a_block_changes():
    model = tiny_llama(layers=3)
    recorded = {}

    def solve_block(index, block, stats):
        recorded[index] = next(iter(stats.values())).cross
        return index == 1  # only block 1 "changes"

    walk_blocks(model, capture_block_inputs(model, random_ids(2, 8)), solve_block, progress=False, dense_targets=True)
    assert recorded[0] is None and recorded[1] is None and recorded[2] is not None


def _dense_target_error(model, dense, ids, names):
    """Σ over ``names`` of ‖W X̃ − Θ X‖² (dense weight and inputs against the compressed model's)."""
    total = 0.0
    for name in names:
        w = dense.get_submodule(name).weight.detach().double()
        theta = model.get_submodule(name).weight.detach().double()
        total += float(((_input_of(dense, name, ids) @ w.T - _input_of(model, name, ids) @ theta.T) ** 2).sum())
    return total


def test_dense_targets_lower_the_dense_target_error_of_an_exact_solver():
    # lowrank is the exact optimum of its layer problem, so handed W' it minimises ‖W X̃ − Θ X‖² per layer
    dense = tiny_llama(hidden=64, layers=3)
    ids = random_ids(8, 32)
    prefix = layers_prefix(dense)
    later = [name for i, block in enumerate(decoder_layers(dense)) if i > 0
             for name in block_linears(block, f"{prefix}.{i}") if name.endswith(("o_proj", "down_proj"))]
    errors = {}
    for flag in (False, True):
        model = copy.deepcopy(dense)
        config = AWPConfig(method="lowrank", rank=0.5, dense_targets=flag, dataset=ids, nsamples=8, seqlen=32)
        compress(model, config, pack=False, progress=False)
        errors[flag] = _dense_target_error(model, dense, ids, later)
    assert errors[True] < 0.95 * errors[False]


def test_dense_targets_compress_save_and_reload(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(hidden=64, layers=2)
    ids = random_ids(4, 16)
    config = AWPConfig(method="wanda", sparsity="2:4", dense_targets=True, dataset=ids, nsamples=4, seqlen=16)
    compress(model, config, progress=False)
    assert model.config.quantization_config.dense_targets is True
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.quantization_config.dense_targets is True
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_dense_targets_is_a_validated_saved_field():
    assert AWPConfig(method="wanda", sparsity=0.5).dense_targets is False
    config = AWPConfig(method="wanda", sparsity=0.5, dense_targets=True)
    assert config.to_dict()["dense_targets"] is True and config.settings()["dense_targets"] is True
    assert AWPConfig.from_dict(config.to_dict()).dense_targets is True
    older = {k: v for k, v in config.to_dict().items() if k != "dense_targets"}  # a checkpoint from before the field
    assert AWPConfig.from_dict(older).dense_targets is False
    with pytest.raises(ValueError, match=r"AWPConfig.dense_targets must be a bool, got 'yes'"):
        AWPConfig(method="wanda", sparsity=0.5, dense_targets="yes")
    with pytest.raises(ValueError, match="AWPConfig.dense_targets must be a bool"):
        config.dense_targets = 1
    assert config.dense_targets is True


def test_the_cli_flag_sets_the_field():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="wikipedia-gensim")
    add_compression_arguments(parser)
    on = config_from_args(parser.parse_args(["--method", "wanda", "--sparsity", "0.5", "--dense-targets"]))
    off = config_from_args(parser.parse_args(["--method", "wanda", "--sparsity", "0.5"]))
    assert on.dense_targets is True and off.dense_targets is False

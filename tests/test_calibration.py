"""Block-input capture, statistics hooks and the sequential block walk on tiny random models."""

import pytest
import torch
from tiny_models import random_ids
from tiny_models import tiny_gemma3 as shared_tiny_gemma3
from tiny_models import tiny_llama as shared_tiny_llama
from torch import nn
from transformers import Gemma3ForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from optimum_awp.calibration import (
    block_linears,
    capture_block_inputs,
    decoder_layers,
    layers_prefix,
    run_block,
    walk_blocks,
)
from optimum_awp.solvers import LayerStats
from optimum_awp.statistics import BlockStatistics


def tiny_llama(layers: int = 2) -> LlamaForCausalLM:
    return shared_tiny_llama(hidden=64, layers=layers, max_position_embeddings=64)


def tiny_gemma3() -> Gemma3ForCausalLM:
    return shared_tiny_gemma3(hidden=64, head_dim=32)


def token_ids(n: int = 3, seqlen: int = 16) -> torch.Tensor:
    return random_ids(n, seqlen)


def test_decoder_layers_across_architectures():
    opt = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                   num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=32))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    assert layers_prefix(tiny_llama()) == "model.layers"
    assert layers_prefix(tiny_gemma3()) == "model.layers"
    assert layers_prefix(opt) == "model.decoder.layers"
    assert layers_prefix(gpt2) == "transformer.h"
    assert len(decoder_layers(opt)) == 2
    with pytest.raises(ValueError, match="Cannot find the decoder layers"):
        decoder_layers(nn.Linear(2, 2))


@torch.no_grad()
def test_gemma3_captured_kwargs_reproduce_every_layer():
    model, ids = tiny_gemma3(), token_ids()
    inputs = capture_block_inputs(model, ids, batch_size=2)
    reference = model(ids, output_hidden_states=True).hidden_states  # embeddings, layers..., normed last
    assert inputs.nbatches == 2
    assert torch.equal(torch.cat(inputs.hidden), reference[0])
    layers = decoder_layers(model)
    hidden = torch.cat(inputs.hidden)
    for i, layer in enumerate(layers):
        batch = [run_block(layer, h, inputs.calls[i][b]) for b, h in enumerate(inputs.hidden)]
        inputs.hidden = batch
        hidden = torch.cat(batch)
        if i + 1 < len(layers):
            torch.testing.assert_close(hidden, reference[i + 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(model.model.norm(hidden), reference[-1], rtol=0, atol=1e-5)


@torch.no_grad()
def test_gemma3_layers_get_their_own_mask_and_rotary():
    model, ids = tiny_gemma3(), token_ids()
    inputs = capture_block_inputs(model, ids, batch_size=2)
    sliding, full = inputs.calls[0][0][1], inputs.calls[1][0][1]
    assert sliding["position_embeddings"][0] is not full["position_embeddings"][0]
    # Equal tensors are stored once: every sliding layer and every full batch shares them.
    assert inputs.calls[2][0][1]["position_embeddings"][0] is sliding["position_embeddings"][0]
    assert inputs.calls[0][1][1]["attention_mask"] is not None
    # Reusing layer 0's kwargs for every layer (the usual trick) gives a different result.
    h = wrong = inputs.hidden[0]
    for i, layer in enumerate(decoder_layers(model)):
        h = run_block(layer, h, inputs.calls[i][0])
        wrong = run_block(layer, wrong, inputs.calls[0][0])
    assert (h - wrong).abs().max() > 1e-3


@torch.no_grad()
def test_dense_walk_equals_model_forward():
    model, ids = tiny_gemma3(), token_ids()
    inputs = capture_block_inputs(model, ids, batch_size=2)
    out = walk_blocks(model, inputs, lambda i, block, stats: False, progress=False)
    expected = model(ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(model.model.norm(torch.cat(out)), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@torch.no_grad()
def test_statistics_equal_direct_covariance_and_share_inputs(dtype):
    model, ids = tiny_llama(), token_ids()
    inputs = capture_block_inputs(model, ids, batch_size=2)
    block = decoder_layers(model)[0]
    linears = block_linears(block, "model.layers.0")
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    handles = [m.register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].reshape(-1, a[0].shape[-1])))
               for n, m in linears.items()]
    with BlockStatistics(block, linears, dtype) as gather:
        for h, call in zip(inputs.hidden, inputs.calls[0]):
            run_block(block, h, call)
    for handle in handles:
        handle.remove()
    stats = gather.stats()
    assert sorted(map(sorted, gather.groups())) == sorted(map(sorted, [
        ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"],
        ["model.layers.0.self_attn.o_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"],
        ["model.layers.0.mlp.down_proj"]]))
    assert stats["model.layers.0.self_attn.q_proj"] is stats["model.layers.0.self_attn.v_proj"]
    assert stats["model.layers.0.mlp.gate_proj"] is stats["model.layers.0.mlp.up_proj"]
    for name, xs in seen.items():
        x = torch.cat(xs).to(torch.float64)
        assert stats[name].nsamples == x.shape[0] == ids.numel()
        assert stats[name].covariance.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(stats[name].covariance.double(), x.T @ x / x.shape[0], rtol=tol, atol=tol)
        torch.testing.assert_close(stats[name].mean_abs.double(), x.abs().mean(0), rtol=tol, atol=tol)


def wanda_half(weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """Zero the half of each row with the smallest |W_ij| * sqrt(C_jj)."""
    score = weight.abs() * stats.covariance.diagonal().sqrt().to(weight.dtype)
    drop = score.argsort(dim=1)[:, : weight.shape[1] // 2]
    return weight.scatter(1, drop, 0.0)


@torch.no_grad()
def test_walk_equals_hand_written_block_by_block_reference():
    ids = token_ids(4, 12)
    model, reference = tiny_llama(), tiny_llama()

    def solve_block(index, block, stats):
        for name, s in stats.items():
            linear = model.get_submodule(name)
            linear.weight.copy_(wanda_half(linear.weight, s))
        return True

    inputs = capture_block_inputs(model, ids, batch_size=1)
    out = walk_blocks(model, inputs, solve_block, stats_dtype=torch.float64, progress=False)

    # By hand: embed, then for each layer gather its linears' inputs over the whole batch at once,
    # prune, and re-run the layer on the pruned weights.
    base = reference.model
    h = base.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rotary = base.rotary_emb(h, positions)
    for layer in base.layers:
        xs = {}
        handles = [m.register_forward_pre_hook(lambda m, a, n=n: xs.__setitem__(n, a[0]))
                   for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
        layer(h, attention_mask=None, position_embeddings=rotary, position_ids=positions)
        for handle in handles:
            handle.remove()
        for n, x in xs.items():
            x = x.reshape(-1, x.shape[-1]).double()
            linear = layer.get_submodule(n)
            linear.weight.copy_(wanda_half(linear.weight, LayerStats(x.T @ x / x.shape[0])))
        h = layer(h, attention_mask=None, position_embeddings=rotary, position_ids=positions)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(torch.cat(out), h, rtol=0, atol=1e-5)


@torch.no_grad()
def test_walk_without_changes_runs_each_block_once():
    model, ids = tiny_llama(), token_ids(2, 8)
    calls = []
    for layer in decoder_layers(model):
        layer.register_forward_pre_hook(lambda m, a: calls.append(m))
    inputs = capture_block_inputs(model, ids)
    calls.clear()
    walk_blocks(model, inputs, lambda i, b, s: False, progress=False)
    assert len(calls) == 2 * 2  # layers x batches, no re-run
    calls.clear()
    inputs = capture_block_inputs(model, ids)
    calls.clear()
    walk_blocks(model, inputs, lambda i, b, s: True, progress=False)
    assert len(calls) == 2 * 2 * 2


def test_capture_rejects_bad_input_ids():
    with pytest.raises(ValueError, match="nsamples, seqlen"):
        capture_block_inputs(tiny_llama(), torch.zeros(8, dtype=torch.long))

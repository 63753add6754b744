"""embedding_bits=4: the INT4 token embedding, the tied head as one packed tensor, save and reload."""

import pytest
import torch
from safetensors import safe_open
from tiny_checkpoints import calibration_ids, save_dense, tokenizer
from tiny_models import random_ids, tiny_gemma3, tiny_llama
from torch import nn
from transformers import AutoModelForCausalLM, pipeline

from optimum_awp.checkpoint import CheckpointError
from optimum_awp.compress import compress
from optimum_awp.config import AWPConfig
from optimum_awp.embeddings import SHRINKS, compress_embeddings, head_covariance, round_rows
from optimum_awp.evaluate import model_sizes
from optimum_awp.nn import AWPLinear, use_backend
from optimum_awp.nn.embedding import AWPEmbedding, AWPTiedHead
from optimum_awp.quantizer import register
from optimum_awp.solvers.projections import quantize_grid

register()


def config(**changes) -> AWPConfig:
    values = dict(method="rtn", bits=4, embedding_bits=4, dataset=random_ids(4, 16), nsamples=4, seqlen=16)
    return AWPConfig(**{**values, **changes})


def saved_keys(folder) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return list(f.keys())


@pytest.mark.parametrize("symmetric", [True, False])
def test_embedding_rows_are_the_grid_values(symmetric):
    torch.manual_seed(0)
    dense = nn.Embedding(50, 64, dtype=torch.bfloat16)
    searched = round_rows(dense.weight, 32, symmetric, shrinks=SHRINKS)  # with the clipping search
    module = AWPEmbedding.from_parts(dense, *searched[1:], group_size=32, symmetric=symmetric)
    assert torch.equal(module.dequantize(torch.float32), searched[0])  # the bf16 scales: the grid stored
    dequant, codes, scales, zeros = round_rows(dense.weight, 32, symmetric)  # min-max RTN, the default
    module = AWPEmbedding.from_parts(dense, codes, scales, zeros, group_size=32, symmetric=symmetric)
    assert torch.equal(module.dequantize(torch.float32), dequant)
    step = scales.repeat_interleave(32, dim=1)  # round to nearest: within half a step, plus 8.5 x the bf16 scale rounding at the clipped ends
    assert bool(((dequant - dense.weight.float()).abs() <= 0.54 * step).all())
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    assert torch.equal(module(ids), module.dequantize()[ids])
    assert module.weight_bytes() == 50 * 64 // 2 + 50 * 2 * 2 + (0 if symmetric else 50 * 2)


def test_scaled_embedding_keeps_its_scale():
    model = tiny_gemma3()
    ids = random_ids(2, 6)
    embedding = model.get_input_embeddings()
    compress_embeddings(model, 64, True)
    packed = model.get_input_embeddings()
    assert float(packed.embed_scale) == float(embedding.embed_scale) != 1.0  # both float32
    assert torch.equal(packed(ids), packed.dequantize()[ids] * embedding.embed_scale)


def test_tied_head_is_one_packed_tensor(tmp_path):
    model = tiny_gemma3()
    report = compress(model, config(), progress=False)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(embedding, AWPEmbedding) and isinstance(head, AWPTiedHead)
    assert head.packed_buffers()["qweight"] is embedding.qweight
    assert report.config.compressed_modules["model.embed_tokens"] == "int4"
    assert report.config.compressed_modules["lm_head"] == "int4"
    assert not [k for k in model.state_dict() if k.startswith("lm_head")]
    hidden = torch.randn(3, 128)
    expected = hidden @ embedding.dequantize(torch.float32).T
    with use_backend("reference"):
        assert torch.allclose(head(hidden), expected, atol=1e-5, rtol=1e-5)
    assert head.select_kernel(hidden).name == "cpu_int4"  # torch's INT4 kernel (bf16 inside)
    assert torch.allclose(head(hidden), expected, atol=0.03, rtol=0.02)
    # the whole model counts the rows once
    sizes = model_sizes(model)
    assert sizes["compressed"] == sum(t.numel() * t.element_size() for t in model.state_dict().values())

    model.save_pretrained(tmp_path / "out")
    keys = saved_keys(tmp_path / "out")
    assert "model.embed_tokens.qweight" in keys and not [k for k in keys if k.startswith("lm_head")]
    assert "model.embed_tokens.zeros" in keys  # the embedding's grid is asymmetric (nothing is pruned there)
    assert "model.embed_tokens.weight" not in keys
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert isinstance(reloaded.get_output_embeddings(), AWPTiedHead)
    assert reloaded.get_output_embeddings().packed_buffers()["qweight"] is reloaded.get_input_embeddings().qweight
    a, b = model.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = random_ids(1, 9, seed=5)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def relative_objective(weight, theta, covariance) -> float:
    """‖(W − Θ) C^{1/2}‖² / ‖W C^{1/2}‖²."""
    delta = weight - theta
    return float(torch.einsum("ij,jk,ik->", delta, covariance, delta) / torch.einsum("ij,jk,ik->", weight, covariance, weight))


def test_untied_head_is_an_int4_linear(tmp_path):
    model = tiny_llama(tie=False)
    head_weight, embedding_weight = model.lm_head.weight.detach().clone(), model.model.embed_tokens.weight.detach().clone()
    covariance = head_covariance(model, "lm_head", random_ids(4, 16))
    compress(model, config(), progress=False)
    assert isinstance(model.lm_head, AWPLinear) and not isinstance(model.lm_head, AWPTiedHead)
    assert model.lm_head.format == "int4"
    # the embedding is rounded to nearest (its error is its own), the head with GPTQ for its inputs
    assert torch.equal(model.model.embed_tokens.dequantize(torch.float32), round_rows(embedding_weight, 128, False)[0])
    gptq = relative_objective(head_weight, model.lm_head.dequantize(torch.float32), covariance)
    rtn = relative_objective(head_weight, round_rows(head_weight, 128, False)[0], covariance)
    assert gptq < 0.9 * rtn
    model.save_pretrained(tmp_path / "out")
    assert {"lm_head.qweight", "model.embed_tokens.qweight"} <= set(saved_keys(tmp_path / "out"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = random_ids(1, 9, seed=5)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_tied_head_follows_the_embedding_to_another_dtype():
    model = tiny_llama(tie=True)
    compress(model, config(), progress=False)
    hidden = torch.randn(2, 128)
    before = model.lm_head(hidden)
    model.to(torch.bfloat16)
    assert model.lm_head.dtype == torch.bfloat16 and model.lm_head.packed_buffers()["scales"] is model.model.embed_tokens.scales
    assert torch.allclose(model.lm_head(hidden.bfloat16()).float(), before, atol=0.05, rtol=0.02)


def test_pipeline_reload_generates_the_in_memory_tokens(tmp_path):
    dense_dir = save_dense(tmp_path / "dense", tie=True)
    cfg = AWPConfig(method="rtn", bits=4, embedding_bits=4, dataset=calibration_ids(), nsamples=4, seqlen=16)
    model = AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=cfg)
    assert isinstance(model.lm_head, AWPTiedHead)
    model.save_pretrained(tmp_path / "out")
    tok = tokenizer()
    tok.save_pretrained(tmp_path / "out")
    inputs = tok("the quick brown fox", return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0].tolist()
    generated = pipeline("text-generation", model=str(tmp_path / "out"))(
        "the quick brown fox", max_new_tokens=6, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    assert list(generated) == expected


def test_without_pack_the_dense_weights_hold_the_grid_values():
    packed = tiny_llama(tie=True)
    compress(packed, config(), progress=False)
    model = tiny_llama(tie=True)
    report = compress(model, config(), progress=False, pack=False)
    assert type(model.model.embed_tokens) is nn.Embedding and model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight, packed.model.embed_tokens.dequantize(torch.float32))
    assert report.config.compressed_modules == {}


def test_the_tied_rows_are_rounded_for_the_heads_inputs():
    model = tiny_gemma3()
    weight = model.lm_head.weight.detach().clone()
    ids = random_ids(4, 16)
    covariance = head_covariance(model, "lm_head", ids)
    hidden = model.model(input_ids=ids).last_hidden_state.reshape(-1, 128).detach()
    assert torch.allclose(covariance, hidden.T @ hidden / hidden.shape[0], atol=1e-5, rtol=1e-4)
    compress(model, config(dataset=ids), progress=False)
    gptq = relative_objective(weight, model.get_input_embeddings().dequantize(torch.float32), covariance)
    rtn = relative_objective(weight, round_rows(weight, 128, False)[0], covariance)
    assert gptq < 0.9 * rtn


def test_dequantize_gives_dense_tied_modules():
    model = tiny_gemma3()
    compress(model, config(), progress=False)
    ids = random_ids(1, 7, seed=3)
    with torch.no_grad(), use_backend("reference"):  # float32 products, as the dense modules'
        expected = model(ids).logits
    model.dequantize()
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_bad_embedding_bits_are_refused():
    with pytest.raises(ValueError, match=r"AWPConfig.embedding_bits must be one of \(None, 4\), got 8"):
        config(embedding_bits=8)
    cfg = config()
    with pytest.raises(ValueError, match="embedding_bits"):
        cfg.embedding_bits = True
    assert cfg.embedding_bits == 4
    assert config().to_dict()["embedding_bits"] == 4 and config().settings()["embedding_bits"] == 4


def test_an_embedding_that_cannot_be_stored_is_refused_before_work():
    model = tiny_llama(hidden=128, vocab=100)
    model.model.embed_tokens = nn.Embedding(100, 128).requires_grad_(False)

    class Odd(nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) * 2

    model.model.embed_tokens = Odd(100, 128)
    with pytest.raises(ValueError, match="Odd is an nn.Embedding subclass without a readable embed_scale"):
        compress(model, config(), progress=False)
    assert type(model.model.layers[0].mlp.up_proj) is nn.Linear  # nothing was compressed


def test_an_unlisted_compressed_embedding_is_refused(tmp_path):
    model = tiny_llama(tie=True)
    compress(model, config(), progress=False)
    model.config.quantization_config.compressed_modules.pop("model.embed_tokens")
    model.config.quantization_config.compressed_modules.pop("lm_head")
    model.save_pretrained(tmp_path / "out")
    with pytest.raises(CheckpointError, match="model.embed_tokens"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_clipping_search_is_never_worse_than_min_max_per_group():
    torch.manual_seed(0)
    weight = torch.randn(300, 256)  # Gaussian rows: clipping the extremes gives a finer step to the bulk
    plain = round_rows(weight, 128, True)[0]
    searched = round_rows(weight, 128, True, shrinks=SHRINKS)[0]
    plain_error = (plain - weight).square().reshape(300, 2, 128).sum(-1)
    searched_error = (searched - weight).square().reshape(300, 2, 128).sum(-1)
    assert bool((searched_error <= plain_error).all()) and searched_error.sum() < 0.95 * plain_error.sum()


def test_whole_model_sizes_count_the_tied_rows_once():
    model = tiny_gemma3()
    dense = model_sizes(model)["compressed"]
    compress(model, config(bits=None, method="wanda", sparsity=0.5), progress=False)  # blocks stay nn.Linear
    sizes = model_sizes(model)
    assert sizes["dense"] == dense + 4  # + embed_scale
    packed = model.get_input_embeddings().weight_bytes() + 4
    assert sizes["compressed"] == dense - 128 * 128 * 4 + packed


def test_export_refuses_an_int4_embedding(tmp_path):
    from optimum_awp.export import export_compressed_tensors

    model = tiny_llama(tie=True)
    compress(model, config(), progress=False)
    model.save_pretrained(tmp_path / "out")
    with pytest.raises(ValueError, match="Cannot export embedding_bits=4 to compressed-tensors"):
        export_compressed_tensors(tmp_path / "out", tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


def test_a_deep_copy_keeps_the_tie():
    import copy

    model = tiny_llama(tie=True)
    compress(model, config(), progress=False)
    clone = copy.deepcopy(model)
    assert clone.lm_head.embedding is clone.model.embed_tokens is not model.model.embed_tokens
    hidden = torch.randn(2, 128)
    assert torch.equal(clone.lm_head(hidden), model.lm_head(hidden))

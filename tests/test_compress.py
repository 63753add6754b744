"""compress(): validation before work, the block walk with a solver, modules left dense, the report."""

import importlib
from dataclasses import dataclass

import pytest
import torch
from tiny_models import random_ids, tiny_gemma3, tiny_llama

from optimum_awp.compress import compress, is_excluded, spec_from_config
from optimum_awp.config import AWPConfig
from optimum_awp.nn import AWPLinear, format_for
from optimum_awp.nn.kernels import use_backend
from optimum_awp.solvers import (
    SOLVERS,
    CompressionSpec,
    LayerStats,
    SolverResult,
    relative_objective,
)
from optimum_awp.solvers.base import RegisteredSolver
from optimum_awp.solvers.options import SolverOptions, option

# optimum_awp.compress, the module: the package attribute of that name is the function
compress_module = importlib.import_module("optimum_awp.compress")

LINEARS_PER_BLOCK = 7


def token_ids(n: int = 4, seqlen: int = 16) -> torch.Tensor:
    return random_ids(n, seqlen)


@dataclass(frozen=True)
class RowTopkOptions(SolverOptions):
    damping: float = option(0.01, "recorded only", minimum=0.0)


def row_topk(weight: torch.Tensor, stats: LayerStats, spec: CompressionSpec, options: RowTopkOptions) -> SolverResult:
    """A small Wanda-like solver: keep the largest |W_ij| sqrt(C_jj) of each row (unstructured only)."""
    if spec.pattern is not None:
        raise AssertionError("row_topk is registered for unstructured pruning only")
    row_topk.calls.append({"damping": options.damping, "dtype": stats.covariance.dtype})
    score = weight.abs() * stats.covariance.diagonal().sqrt()
    keep = score.topk(weight.shape[1] - int(spec.sparsity * weight.shape[1]), dim=1).indices
    mask = torch.zeros_like(weight, dtype=torch.bool).scatter(1, keep, True)
    theta = weight * mask
    return SolverResult(weight=theta, mask=mask, objective=relative_objective(weight, theta, stats.covariance))


row_topk.calls = []


@pytest.fixture
def solver(monkeypatch):
    """Register row_topk as "wanda" for the duration of a test, whatever the solvers package holds."""
    row_topk.calls.clear()
    monkeypatch.setitem(SOLVERS, "wanda", RegisteredSolver("wanda", row_topk, RowTopkOptions, ("prune", "joint")))
    return row_topk


def test_compress_prunes_every_block_linear_and_reports(solver):
    model = tiny_llama()
    embed, head = model.model.embed_tokens.weight.clone(), model.lm_head.weight.clone()
    config = AWPConfig(method="wanda", sparsity=0.5, damping=0.05)
    report = compress(model, config, token_ids(), progress=False, pack=False)
    assert len(report.layers) == 2 * LINEARS_PER_BLOCK
    assert report.nsamples == 4 and report.seqlen == 16
    for layer in report.layers:
        weight = model.get_submodule(layer.name).weight
        assert (weight == 0).sum(dim=1).eq(weight.shape[1] // 2).all(), layer.name
        assert 0 < layer.objective < 1
    assert 0 < report.mean_objective < 1
    assert report.to_dict()["mean_objective"] == report.mean_objective
    assert torch.equal(model.model.embed_tokens.weight, embed) and torch.equal(model.lm_head.weight, head)
    assert solver.calls[-1] == {"damping": 0.05, "dtype": torch.float32}
    assert config.compressed_modules is None  # the caller's config is not changed; pack=False attaches nothing
    assert report.config.compressed_modules == {} and report.config.damping == 0.05
    assert getattr(model, "hf_quantizer", None) is None
    with torch.no_grad():
        assert torch.isfinite(model(token_ids()).logits).all()


def test_compress_matches_walk_with_float64_and_batches(solver):
    a, b = tiny_llama(), tiny_llama()
    config = AWPConfig(method="wanda", sparsity=0.5)
    compress(a, config, token_ids(), progress=False, pack=False, batch_size=1, stats_dtype=torch.float64)
    compress(b, config, token_ids(), progress=False, pack=False, batch_size=4, stats_dtype=torch.float64)
    assert solver.calls[-1]["dtype"] == torch.float64
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_compress_gemma3_sliding_and_full_layers(solver):
    model = tiny_gemma3()
    report = compress(model, AWPConfig(method="wanda", sparsity=0.6), token_ids(seqlen=24), progress=False, pack=False)
    assert len(report.layers) == 4 * LINEARS_PER_BLOCK
    assert all(0 < layer.objective < 1 for layer in report.layers)
    with torch.no_grad():
        assert torch.isfinite(model(token_ids()).logits).all()


def test_modules_to_not_convert_stay_dense(solver):
    model = tiny_llama()
    before = {n: p.clone() for n, p in model.named_parameters()}
    config = AWPConfig(method="wanda", sparsity=0.5, modules_to_not_convert=["lm_head", "mlp.down_proj", "model.layers.1.self_attn"])
    report = compress(model, config, token_ids(), progress=False, pack=False)
    names = {layer.name for layer in report.layers}
    assert "model.layers.0.mlp.down_proj" in report.skipped and "model.layers.1.self_attn.q_proj" in report.skipped
    assert names == {"model.layers.0.self_attn." + p for p in ("q_proj", "k_proj", "v_proj", "o_proj")} | {
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj"}
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (name.removesuffix(".weight") not in names), name


def test_is_excluded_matches_whole_dotted_components():
    assert is_excluded("lm_head", ["lm_head"])
    assert is_excluded("model.layers.3.mlp.down_proj", ["down_proj"])
    assert is_excluded("model.layers.3.mlp.down_proj", ["model.layers.3"])
    assert not is_excluded("model.layers.13.mlp.down_proj", ["model.layers.1"])
    assert not is_excluded("model.layers.3.mlp.down_proj_x", ["down_proj"])


class _NoWork(Exception):
    pass


@pytest.fixture
def no_capture(monkeypatch):
    """Fail the test if compress() reaches the (expensive) capture pass."""
    def refuse(*args, **kwargs):
        raise _NoWork

    monkeypatch.setattr(compress_module, "capture_block_inputs", refuse)


def test_error_names_module_with_indivisible_shape_before_work(solver, no_capture):
    model = tiny_llama(hidden=96)  # 96 is not a multiple of group_size 64 (nor of 128 ...)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*group_size=64"):
        compress(model, AWPConfig(method="wanda", sparsity=0.5, bits=4, group_size=64), token_ids(), progress=False, pack=False)
    with pytest.raises(ValueError, match="divisible by M=12"):
        compress(tiny_llama(), AWPConfig(method="wanda", sparsity="3:12"), token_ids(), progress=False,
                 pack=False)


def test_errors_before_work(solver, no_capture, monkeypatch):
    model = tiny_llama()
    with pytest.raises(ValueError, match="does not do INT4 alone"):  # the solver's declared kinds
        compress(model, AWPConfig(method="wanda", sparsity=0.5).replace(sparsity=None, bits=4), token_ids(),
                 progress=False, pack=False)
    config = AWPConfig(method="awq", bits=4)
    monkeypatch.delitem(SOLVERS, "awq", raising=False)
    with pytest.raises(ValueError, match=r"AWPConfig.method must be one of \[.*'awp', 'gptq'.*\], got 'awq'"):
        compress(model, config, token_ids(), progress=False, pack=False)
    with pytest.raises(ValueError, match=r"calibration token ids must lie in \[0, 128\).*from 0 to 200"):
        compress(model, AWPConfig(method="wanda", sparsity=0.5), torch.tensor([[0, 200, 3]]), progress=False)
    with pytest.raises(ValueError, match="tokenizer must be a transformers tokenizer"):
        compress(model, AWPConfig(method="wanda", sparsity=0.5), ["some text"], tokenizer=42, progress=False)
    with pytest.raises(ValueError, match="integer token ids"):
        compress(model, AWPConfig(method="wanda", sparsity=0.5), torch.rand(4, 16), progress=False, pack=False)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        compress(model, AWPConfig(method="wanda", sparsity=0.5), ["some text"], progress=False, pack=False)
    with pytest.raises(ValueError, match="skips all"):
        compress(model, AWPConfig(method="wanda", sparsity=0.5, modules_to_not_convert=["model"]), token_ids(),
                 progress=False, pack=False)
    with pytest.raises(ValueError, match="AWPConfig"):
        compress(model, {"method": "wanda"}, token_ids(), progress=False, pack=False)


def test_token_ids_from_config_dataset(solver):
    model = tiny_llama()
    ids = token_ids(2, 8)
    report = compress(model, AWPConfig(method="wanda", sparsity=0.5, dataset=ids.tolist()), progress=False, pack=False)
    assert (report.nsamples, report.seqlen) == (2, 8)


def test_spec_from_config():
    assert spec_from_config(AWPConfig(sparsity="2:4", bits=4, group_size=128)) == CompressionSpec(
        pattern=(2, 4), bits=4, group_size=128)
    assert spec_from_config(AWPConfig(sparsity=0.7)) == CompressionSpec(sparsity=0.7)


def test_pack_swaps_in_awp_linear_and_keeps_outputs():
    spec = CompressionSpec(bits=4, group_size=128)
    dense, packed = tiny_llama(), tiny_llama()
    config = AWPConfig(method="rtn", bits=4, group_size=128)
    compress(dense, config, token_ids(), progress=False, pack=False)
    report = compress(packed, config, token_ids(), progress=False, pack=True)
    assert isinstance(packed.model.layers[0].mlp.down_proj, AWPLinear)
    attached = packed.config.quantization_config
    assert attached is report.config and packed.hf_quantizer.quantization_config is attached
    assert attached.compressed_modules["model.layers.1.mlp.down_proj"] == format_for(spec.pattern, spec.bits)
    assert "lm_head" not in attached.compressed_modules
    with pytest.raises(ValueError, match="already quantized"):
        compress(packed, config, token_ids(), progress=False)
    # the reference path dequantizes exactly; the bf16 CPU kernel is checked against it in tests/nn
    with torch.no_grad(), use_backend("reference"):
        torch.testing.assert_close(packed(token_ids()).logits, dense(token_ids()).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("where", ["weight", "activations"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_named_with_their_module(where, value):
    model = tiny_llama()
    with torch.no_grad():
        if where == "weight":
            model.model.layers[1].mlp.down_proj.weight[3, 5] = value
        else:  # the norm before block 1's attention: the input of q/k/v
            model.model.layers[1].input_layernorm.weight[7] = value
    kind = "NaN" if value != value else "inf"
    name = "model.layers.1.mlp.down_proj" if where == "weight" else "model.layers.1.self_attn.q_proj"
    place = f"the weight of {name}" if where == "weight" else f"at the input of {name}"
    with pytest.raises(ValueError, match=rf"(NaN|inf) found in .*{place}") as err:
        compress(model, AWPConfig(method="rtn", bits=4), token_ids(), progress=False)
    if where == "weight":
        assert err.value.args[0].startswith(f"{kind} found")
    assert getattr(model, "hf_quantizer", None) is None

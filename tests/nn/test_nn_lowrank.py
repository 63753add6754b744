"""The low-rank formats of AWPLinear: names, exact bitmap packing, pack_lowrank, forward, bytes and FLOPs."""

import dataclasses

import pytest
import torch
from awp_nn_helpers import magnitude_2of4
from safetensors.torch import load_file, save_file

from optimum_awp.nn import AWPLinear, format_for, get_format, use_backend
from optimum_awp.nn import kernels as kernels_module
from optimum_awp.nn.lowrank import (
    flops_per_token,
    lowrank_format,
    pack_bitmap,
    pack_lowrank,
    pack_rows,
    parse_lowrank,
    unpack_bitmap,
    unpack_rows,
)
from optimum_awp.solvers.base import CompressionSpec, SolverResult

OUT, IN, RANK = 48, 64, 5


def _row_topk(weight: torch.Tensor, keep: int) -> torch.Tensor:
    index = weight.abs().topk(keep, dim=1).indices
    return torch.zeros_like(weight, dtype=torch.bool).scatter_(1, index, True)


def lowrank_result(kind: str | None, seed: int = 0, keep: int = 20) -> tuple[SolverResult, CompressionSpec]:
    """A SolverResult with factors (and a sparse part for kind "2:4" / "bitmap") and its spec."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(OUT, RANK, generator=gen)
    a = torch.randn(RANK, IN, generator=gen) / IN**0.5
    weight = b @ a
    if kind is None:
        return SolverResult(weight=weight, factors=(b, a)), CompressionSpec()
    dense = torch.randn(OUT, IN, generator=gen)
    mask = magnitude_2of4(dense) if kind == "2:4" else _row_topk(dense, keep)
    sparse = dense * mask
    spec = CompressionSpec(pattern=(2, 4)) if kind == "2:4" else CompressionSpec(sparsity=1 - keep / IN)
    return SolverResult(weight=sparse + weight, mask=mask, factors=(b, a), sparse_weight=sparse), spec


KINDS = [None, "2:4", "bitmap"]


def test_names_round_trip_and_are_not_format_for_choices():
    assert lowrank_format(8) == "lowrank-r8"
    assert lowrank_format(8, pattern=(2, 4)) == "2:4+lowrank-r8"
    assert lowrank_format(8, keep=30) == "bitmap-k30+lowrank-r8"
    assert parse_lowrank("lowrank-r8") == (8, None, None)
    assert parse_lowrank("2:4+lowrank-r16") == (16, "2:4", None)
    assert parse_lowrank("bitmap-k30+lowrank-r8") == (8, "bitmap", 30)
    for bad in ("lowrank", "lowrank-r0", "lowrank-r08", "2:4+int4", "1:4+lowrank-r8", "bitmap+lowrank-r8"):
        assert parse_lowrank(bad) is None
    assert get_format("2:4+lowrank-r16").name == "2:4+lowrank-r16"
    with pytest.raises(ValueError, match="Unknown format 'lowrank-r0'.*families \\['lowrank'\\]"):
        get_format("lowrank-r0")
    # sparsity / bits specs keep their formats: a low-rank format is only chosen from factors
    assert format_for(None, None) is None and format_for((2, 4), None) == "2:4"
    with pytest.raises(ValueError, match="2:4 or unstructured sparsity, got pattern \\(3, 4\\)"):
        lowrank_format(4, pattern=(3, 4))
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        lowrank_format(0)
    with pytest.raises(ValueError, match="keep must be a positive int"):
        lowrank_format(4, keep=0)


def test_bitmap_packing_is_exact_both_ways():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(7, 40, generator=gen) > 0.6
    bitmap = pack_bitmap(mask)
    assert bitmap.dtype == torch.uint8 and bitmap.shape == (7, 5)
    assert torch.equal(unpack_bitmap(bitmap), mask)
    one = torch.zeros(1, 8, dtype=torch.bool)
    one[0, 3] = True
    assert pack_bitmap(one).item() == 8  # bit b of a byte is input 8j + b
    weight = torch.randn(6, 32, generator=gen)
    keep = _row_topk(weight, 9)
    bitmap, values = pack_rows(weight, keep)
    assert values.shape == (6, 9)
    assert torch.equal(unpack_rows(bitmap, values), weight * keep)
    uneven = keep.clone()
    uneven[0, (~keep[0]).nonzero()[0]] = True
    with pytest.raises(ValueError, match="same number of kept entries in every row, got 9 to 10"):
        pack_rows(weight, uneven)
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_bitmap(torch.ones(2, 12, dtype=torch.bool))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pack_lowrank_holds_the_factors_and_dequantizes_to_s_plus_ba(kind, dtype):
    result, spec = lowrank_result(kind)
    bias = torch.randn(OUT)
    module = pack_lowrank(result, spec, bias, dtype)
    assert module.format == {None: "lowrank-r5", "2:4": "2:4+lowrank-r5", "bitmap": "bitmap-k20+lowrank-r5"}[kind]
    assert module.dtype == dtype and module.lowrank_a.dtype == dtype and module.lowrank_b.dtype == dtype
    b, a = result.factors
    assert torch.equal(module.lowrank_b, b.to(dtype)) and torch.equal(module.lowrank_a, a.to(dtype))
    expected = b.to(dtype).float() @ a.to(dtype).float()
    if kind is not None:
        expected = expected + result.sparse_weight.to(dtype).float()
    assert torch.equal(module.dequantize(torch.float32), expected)
    assert torch.equal(module.bias, bias.to(dtype))


@pytest.mark.parametrize("kind", KINDS)
def test_forward_is_x_at_then_bt_plus_the_sparse_part(kind):
    result, spec = lowrank_result(kind)
    module = pack_lowrank(result, spec, None, torch.float32)
    x = torch.randn(3, 7, IN)
    assert module.select_kernel(x).name == "lowrank"
    y = module(x)
    b, a = result.factors
    expected = (x @ a.T) @ b.T
    if kind is not None:
        expected = expected + x @ result.sparse_weight.T
    assert y.shape == (3, 7, OUT)
    assert torch.allclose(y, expected, atol=1e-5, rtol=1e-5)
    with use_backend("reference"):
        assert torch.allclose(module(x), y, atol=1e-5, rtol=1e-5)


def test_the_2of4_part_runs_on_the_kernel_the_registry_picks_for_2of4():
    result, spec = lowrank_result("2:4")
    module = pack_lowrank(result, spec, None, torch.float32)
    kernel = kernels_module.KERNELS["lowrank"]
    x = torch.randn(2, IN)
    query = kernels_module.KernelQuery(device=x.device, dtype=x.dtype, format=module.format, out_features=OUT,
                                       in_features=IN, group_size=-1, symmetric=True, tokens=2,
                                       weight_dtype=torch.float32)
    two_four = kernels_module.select_kernel(dataclasses.replace(query, format="2:4"))
    assert kernel.layout_key(query)[2] == two_four.name
    assert torch.allclose(module(x), x @ result.weight.T, atol=1e-5)


def test_cache_dense_takes_the_dense_cache():
    result, spec = lowrank_result(None)
    module = pack_lowrank(result, spec, None, torch.float32)
    module.cache_dense = True
    x = torch.randn(4, IN)
    assert module.select_kernel(x).name == "dense_cache"
    assert torch.allclose(module(x), x @ result.weight.T, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_round_trip_via_empty(tmp_path, kind):
    result, spec = lowrank_result(kind)
    module = pack_lowrank(result, spec, torch.randn(OUT), torch.bfloat16)
    save_file(module.state_dict(), tmp_path / "m.safetensors")
    again = AWPLinear.empty(module.format, IN, OUT, True, dtype=torch.bfloat16)
    assert {k: (v.shape, v.dtype) for k, v in again.state_dict().items()} == \
        {k: (v.shape, v.dtype) for k, v in module.state_dict().items()}
    again.load_state_dict(load_file(tmp_path / "m.safetensors"), assign=True)
    for key, value in module.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    x = torch.randn(5, IN, dtype=torch.bfloat16)
    assert torch.equal(again(x), module(x))


@pytest.mark.parametrize("kind, expected", [
    (None, RANK * (OUT + IN) * 2),
    ("2:4", RANK * (OUT + IN) * 2 + OUT * IN // 2 * 2 + OUT * IN // 8),
    ("bitmap", RANK * (OUT + IN) * 2 + OUT * 20 * 2 + OUT * IN // 8),
])
def test_weight_bytes_and_flops(kind, expected):
    result, spec = lowrank_result(kind)
    module = pack_lowrank(result, spec, None, torch.bfloat16)
    assert module.weight_bytes() == expected
    kept = {None: 0, "2:4": IN // 2, "bitmap": 20}[kind]
    assert flops_per_token(module.format, OUT, IN) == 2 * RANK * (IN + OUT) + 2 * OUT * kept
    with pytest.raises(ValueError, match="not a low-rank format"):
        flops_per_token("2:4", OUT, IN)


def test_from_parts_and_format_pack_refuse_low_rank():
    with pytest.raises(ValueError, match="built from low-rank factors: use optimum_awp.nn.lowrank.pack_lowrank"):
        AWPLinear.from_parts("lowrank-r4", torch.randn(8, 16), dtype=torch.float32)


def test_bad_factors_are_refused():
    result, spec = lowrank_result(None)
    bad = SolverResult(weight=result.weight, factors=(result.factors[0], result.factors[1][:3]))
    with pytest.raises(ValueError, match="factors must be B \\(out, r\\) and A \\(r, in\\)"):
        pack_lowrank(bad, spec, None, torch.float32)
    with pytest.raises(ValueError, match="keeps 70 entries per row, more than in_features=64"):
        AWPLinear.empty("bitmap-k70+lowrank-r4", IN, OUT, False)

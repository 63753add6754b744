"""optimum_awp.nn.native: the C++ CPU kernels for "2:4" and "2:4+int4" against the reference kernel.

Every format, dtype, group size, grid, thread count (1, 2), token count (1, 2, 7, 64, 300) and both
ISA paths (AVX-512 and AVX2, forced with OPTIMUM_AWP_CPU_ISA), with odd out_features and in_features
that are multiples of 8 (16 for 2:4+int4) but not of 64 wherever the group size allows, so the kernels'
tails (8, 16 and 24 inputs past the last 32-input chunk) run.

Tolerance. The native kernel and the reference (``F.linear`` on the dequantized weight) use the same
weights (both round (c - z) * s once to the model dtype, checked bit for bit below), form exact
products in float32 and add n = in_features of them in float32 in different orders, then round once
to the output dtype (torch's CPU matmul accumulates bf16/fp16 in float32 too). By the standard bound
for recursive summation in any order, each result is within u_out |y| + n u32 S of the exact value,
S = (|x| |W|ᵀ) elementwise, u32 = 2**-24 and u_out the output dtype's unit roundoff (2**-8 bf16,
2**-11 fp16, 2**-24 fp32). With |y| <= S the two results differ by at most 2 (u_out + n u32) S.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from awp_nn_helpers import magnitude_2of4, pack, rtn_int4

from optimum_awp.nn import AWPLinear, kernel_options, kernels, native, use_backend
from optimum_awp.solvers.base import CompressionSpec, SolverResult

_MISSING = native.missing_prerequisite()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"native kernels cannot be built here: {_MISSING}")

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOKENS = (1, 2, 7, 64, 300)
IN_FOR_GROUP = {32: 96, 64: 192, 128: 384, 256: 768, -1: 80}  # multiples of 16 (of g), not of 64 where g allows


@pytest.fixture(scope="module", autouse=True)
def _built():
    """A failed build where compiler and ninja exist is a failure, not a skip."""
    assert native.load() is not None, f"native build failed: {native.unavailable_reason()}"


@pytest.fixture(params=["avx512", "avx2"])
def isa(request, monkeypatch):
    if request.param == "avx512" and native.load().cpu_isa() < 2:
        pytest.skip("this CPU has no AVX-512 F/BW/VL/DQ/VBMI2")
    monkeypatch.setenv(native.ISA_ENV, request.param)
    assert native.isa_name() == request.param
    return request.param


@pytest.fixture(params=[1, 2])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def build(fmt, out_features, in_features, group_size=-1, symmetric=True, dtype=torch.bfloat16, bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen)
    mask = magnitude_2of4(weight)
    if fmt == "2:4":
        spec = CompressionSpec(pattern=(2, 4))
        result = SolverResult(weight=weight * mask, mask=mask)
    else:
        spec = CompressionSpec(pattern=(2, 4), bits=4, group_size=group_size, symmetric=symmetric)
        result = rtn_int4(weight, group_size, symmetric, mask)
    b = torch.randn(out_features, generator=gen) if bias else None
    return pack(result, spec, b, dtype)


def assert_matches_reference(module, x, backend):
    with use_backend("reference"):
        expected = module(x)
    with use_backend(backend), kernel_options(cpu_2of4_max_tokens=1 << 30):
        actual = module(x)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    w = module.dequantize(x.dtype).double()
    scale = x.double().abs().reshape(-1, module.in_features) @ w.abs().t()
    bound = 2 * (UNIT_ROUNDOFF[x.dtype] + module.in_features * 2.0**-24) * scale.reshape(actual.shape) + 1e-30
    err = (actual.double() - expected.double()).abs()
    assert (err <= bound).all(), f"{backend}: worst error / bound {(err / bound).max().item():.3g}"


def inputs(tokens, in_features, dtype, seed=1):
    return torch.randn(tokens, in_features, generator=torch.Generator().manual_seed(seed)).to(dtype)


def out_for(threads):
    # odd; with 2 threads larger than the per-thread row grain (65536 / in rows) so the rows do split
    return 37 if threads == 1 else 1501


# ----------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_features", [40, 56, 80, 200])
def test_2of4_matches_reference(isa, threads, dtype, in_features):
    module = build("2:4", out_for(threads), in_features, dtype=dtype)
    for tokens in TOKENS:
        x = inputs(tokens, in_features, dtype)
        for backend in ("cpu_2of4", "cpu_2of4_tiles"):
            assert_matches_reference(module, x, backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_2of4_int4_matches_reference(isa, threads, dtype, group_size, symmetric):
    in_features = IN_FOR_GROUP[group_size]
    module = build("2:4+int4", out_for(threads), in_features, group_size, symmetric, dtype)
    for tokens in TOKENS:
        x = inputs(tokens, in_features, dtype)
        for backend in ("cpu_2of4", "cpu_2of4_tiles"):
            assert_matches_reference(module, x, backend)


@pytest.mark.parametrize("fmt,in_features,group_size", [("2:4", 56, -1), ("2:4+int4", 96, 32), ("2:4+int4", 80, -1)])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_hot_inputs_recover_the_reference_weights_bit_for_bit(isa, fmt, in_features, group_size, symmetric, dtype):
    """x = I: every output is one product w * 1, so it is the weight itself, exactly. This checks that the
    kernels' weights are the reference's, including exact zeros for pruned entries on asymmetric grids."""
    if fmt == "2:4" and not symmetric:
        pytest.skip("no grid")
    module = build(fmt, 23, in_features, group_size, symmetric, dtype)
    eye = torch.eye(in_features, dtype=dtype)
    for backend in ("cpu_2of4", "cpu_2of4_tiles"):
        with use_backend(backend), kernel_options(cpu_2of4_max_tokens=1 << 30):
            recovered = module(eye).t()
        assert torch.equal(recovered, module.dequantize(dtype)), backend
    zeros = module.dequantize(dtype) == 0
    assert zeros.float().mean() >= 0.5  # the pruned half at least


def test_decode_dense_equals_the_format_dequantize(isa):
    ext = native.load()
    for fmt, in_features, group_size in (("2:4", 200, -1), ("2:4+int4", 384, 128), ("2:4+int4", 80, -1)):
        for dtype in DTYPES:
            module = build(fmt, 19, in_features, group_size, False, dtype)
            buffers = module.packed_buffers()
            kind = 0 if fmt == "2:4" else 1
            weight = buffers["values"] if kind == 0 else buffers["qweight"]
            group = in_features if group_size == -1 else group_size
            dense = ext.decode_dense(weight, buffers["meta"], buffers.get("scales"), buffers.get("zeros"), kind, group,
                                     native.isa_code(), in_features, dtype)
            assert torch.equal(dense, module.dequantize(dtype)), (fmt, dtype)


# ----------------------------------------------------------------------------------------------- module
@pytest.mark.parametrize("fmt", ["2:4", "2:4+int4"])
def test_auto_dispatch_picks_the_native_kernels_and_keeps_the_stored_size(fmt):
    module = build(fmt, 64, 256, 128, dtype=torch.bfloat16, bias=True)
    stored = {t.data_ptr() for t in module.packed_buffers().values()}
    limit = kernels.get_kernel_options().cpu_2of4_max_tokens
    assert module.select_kernel(torch.randn(limit, 256, dtype=torch.bfloat16)).name == "cpu_2of4"
    assert module.select_kernel(torch.randn(limit + 1, 256, dtype=torch.bfloat16)).name == "cpu_2of4_tiles"
    for tokens in (1, limit + 1):
        x = torch.randn(tokens, 256, dtype=torch.bfloat16)
        y = module(x)
        with use_backend("reference"):
            torch.testing.assert_close(y, module(x), rtol=2e-2, atol=2e-2)
    assert [key[0] for key in module._kernel_cache] == ["cpu_2of4"]  # one shared layout, no dense copy
    tensors = [t for t in next(iter(module._kernel_cache.values())) if isinstance(t, torch.Tensor)]
    assert {t.data_ptr() for t in tensors} <= stored  # the layout is the stored buffers themselves


def test_activations_in_another_dtype_fall_back_to_the_torch_paths():
    module = build("2:4", 64, 256, dtype=torch.bfloat16)
    assert module.select_kernel(torch.randn(1, 256)).name == "dense_cache"  # 2:4's torch path
    module = build("2:4+int4", 64, 256, 128, dtype=torch.bfloat16)
    assert module.select_kernel(torch.randn(1, 256)).name == "cpu_int4"


def test_leading_dims_and_non_contiguous_inputs():
    module = build("2:4+int4", 48, 512, 128, dtype=torch.bfloat16, bias=True)
    x = torch.randn(2, 3, 1024, dtype=torch.bfloat16)[..., ::2]
    y = module(x)
    assert y.shape == (2, 3, 48)
    with use_backend("reference"):
        torch.testing.assert_close(y, module(x), rtol=2e-2, atol=2e-2)


def test_malformed_positions_are_rejected():
    module = build("2:4", 8, 64, dtype=torch.float32)
    meta = module.meta.clone()
    meta[3, 2] = 0b0001_0111  # group 2j: p0 = 3, p1 = 1 (descending)
    module.meta.copy_(meta)
    with pytest.raises(ValueError, match="not strictly ascending"):
        with use_backend("cpu_2of4"):
            module(torch.randn(1, 64))


def test_isa_environment_variable(monkeypatch):
    monkeypatch.setenv(native.ISA_ENV, "avx2")
    assert native.isa_name() == "avx2"
    monkeypatch.setenv(native.ISA_ENV, "none")
    assert not native.enabled()
    assert not kernels.native_default(
        kernels.KernelQuery(torch.device("cpu"), torch.bfloat16, "2:4", 8, 64, -1, True, 1, None, torch.bfloat16)
    )
    monkeypatch.setenv(native.ISA_ENV, "sse2")
    with pytest.raises(ValueError, match="OPTIMUM_AWP_CPU_ISA"):
        native.requested_isa()


def test_a_failed_build_warns_once_and_the_torch_paths_run(monkeypatch):
    monkeypatch.setattr(native, "_STATE", {"tried": False, "module": None, "error": None})

    def fail():
        raise RuntimeError("Error building extension 'optimum_awp_cpu': c++: fatal error")

    monkeypatch.setattr(native, "_build", fail)
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable.*building the extension failed"):
        assert native.load() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load() is None and not native.enabled()
        module = build("2:4", 16, 64, dtype=torch.bfloat16)
        assert module.select_kernel(torch.randn(1, 64, dtype=torch.bfloat16)).name == "dense_cache"


def test_empty_inputs():
    module = build("2:4+int4", 16, 128, 32, dtype=torch.bfloat16)
    with use_backend("cpu_2of4"):
        assert module(torch.randn(0, 128, dtype=torch.bfloat16)).shape == (0, 16)

"""optimum_awp.nn.kernels: every backend against the reference path, dispatch, caching, exact zeros."""

import pytest
import torch
from awp_nn_helpers import magnitude_2of4, pack, rtn_int4

from optimum_awp.nn import AWPLinear, kernel_options, kernels, set_backend, set_kernel_options, use_backend
from optimum_awp.solvers.base import CompressionSpec, SolverResult

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build(fmt, out_features=64, in_features=256, group_size=128, symmetric=True, dtype=torch.bfloat16, bias=True):
    weight = torch.randn(out_features, in_features)
    mask = magnitude_2of4(weight) if fmt.startswith("2:4") else None
    if fmt == "2:4":
        spec = CompressionSpec(pattern=(2, 4))
        result = SolverResult(weight=weight * mask, mask=mask)
    else:
        pattern = (2, 4) if fmt == "2:4+int4" else None
        spec = CompressionSpec(pattern=pattern, bits=4, group_size=group_size, symmetric=symmetric)
        result = rtn_int4(weight, group_size, symmetric, mask)
    b = torch.randn(out_features) if bias else None
    return pack(result, spec, b, dtype)


def reference(module, x):
    with use_backend("reference"):
        return module(x)


def max_rel_error(actual, expected):
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


# ----------------------------------------------------------------------------------------------- CPU INT4
@pytest.mark.parametrize("fmt", ["int4", "2:4+int4"])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128, 256])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_cpu_int4_matches_reference(fmt, group_size, symmetric, dtype):
    module = build(fmt, out_features=48, in_features=512, group_size=group_size, symmetric=symmetric, dtype=dtype)
    for tokens in (1, 5):
        x = torch.randn(tokens, 512, dtype=dtype)
        with use_backend("cpu_int4"):
            y = module(x)
        assert y.dtype == dtype and y.shape == (tokens, 48)
        # bf16 activations inside the kernel; bf16 output rounding
        assert max_rel_error(y, reference(module, x)) < 1.5e-2


def test_cpu_int4_handles_leading_dims_and_noncontiguous_inputs():
    module = build("int4")
    x = torch.randn(2, 3, 512, dtype=torch.bfloat16)[..., ::2]
    with use_backend("cpu_int4"):
        y = module(x)
    assert y.shape == (2, 3, 64)
    assert max_rel_error(y, reference(module, x)) < 1.5e-2


def one_hot_inputs(in_features, dtype):
    """x = I: row k of the output is column k of the weight, y[k, n] = W[n, k] exactly (one product)."""
    return torch.eye(in_features, dtype=dtype)


@pytest.mark.parametrize("fmt", ["int4", "2:4+int4"])
def test_cpu_int4_keeps_pruned_weights_exactly_zero_with_a_symmetric_grid(fmt):
    module = build(fmt, out_features=32, in_features=128, group_size=32, symmetric=True, bias=False)
    with use_backend("cpu_int4"), kernel_options(cpu_int4_max_tokens=128):
        recovered = module(one_hot_inputs(128, torch.bfloat16)).t()  # (out, in)
    dense = module.dequantize()
    zero = dense == 0  # pruned entries (2:4) and entries quantized to code 8
    assert zero.sum() > 0
    assert torch.equal(recovered[zero], torch.zeros_like(recovered[zero]))
    assert max_rel_error(recovered, dense) < 1e-2


def test_cpu_int4_asymmetric_float_zero_point_leaves_pruned_weights_near_but_not_at_zero():
    """Documented in kernels.py: z -> (8 - z) * scale rounded to bf16, so a zero code gives a tiny value."""
    module = build("2:4+int4", out_features=32, in_features=128, group_size=32, symmetric=False, bias=False)
    with use_backend("cpu_int4"), kernel_options(cpu_int4_max_tokens=128):
        recovered = module(one_hot_inputs(128, torch.bfloat16)).t().float()
    pruned = module.dequantize() == 0
    scales = module.scales.float().repeat_interleave(32, 1)
    zeros = module.zeros.float().repeat_interleave(32, 1)
    bound = 2.0**-8 * ((8 - zeros) * scales).abs() + 1e-30
    assert (recovered[pruned].abs() <= bound[pruned]).all()
    assert (recovered[pruned] != 0).any()  # the reason dense and reference paths keep exact zeros instead
    with use_backend("reference"):
        exact = module(one_hot_inputs(128, torch.bfloat16)).t()
    assert torch.equal(exact[pruned], torch.zeros_like(exact[pruned]))


# ----------------------------------------------------------------------------------------------- dense cache
@pytest.mark.parametrize("fmt", ["int4", "2:4", "2:4+int4"])
def test_dense_cache_equals_reference_and_is_cached_per_dtype(fmt):
    module = build(fmt)
    module.cache_dense = True
    x = torch.randn(40, 256, dtype=torch.bfloat16)
    with use_backend("dense_cache"):
        y = module(x)
        assert torch.equal(y, reference(module, x))
        assert list(module._kernel_cache) == [("dense_cache", (torch.device("cpu"), torch.bfloat16))]
        module(x.float())
        assert len(module._kernel_cache) == 2
    assert "dense_cache" not in str(module.state_dict().keys())


def test_dense_cache_is_off_by_default_where_the_native_kernels_run(monkeypatch):
    x = torch.randn(600, 256, dtype=torch.bfloat16)
    if kernels.native.enabled():
        assert build("2:4").select_kernel(x).name == "cpu_2of4_tiles"
        assert build("2:4").select_kernel(x[:1]).name == "cpu_2of4"
    monkeypatch.setenv("OPTIMUM_AWP_CPU_ISA", "none")  # the torch path: 2:4 keeps a dense copy
    assert build("2:4").select_kernel(x).name == "dense_cache"
    monkeypatch.delenv("OPTIMUM_AWP_CPU_ISA")
    assert build("int4").select_kernel(x).name == "reference"
    with kernel_options(cache_dense=True):
        assert build("int4").select_kernel(x).name == "dense_cache"
        assert build("2:4").select_kernel(x).name == "dense_cache"
    module = build("2:4")
    module.cache_dense = False
    assert module.select_kernel(x).name == ("cpu_2of4_tiles" if kernels.native.enabled() else "reference")


def test_with_a_dense_cache_the_int4_kernel_hands_over_earlier():
    module = build("int4")
    module.cache_dense = True
    with kernel_options(cpu_int4_max_tokens=64, cpu_int4_max_tokens_cached=8):
        assert module.select_kernel(torch.randn(8, 256)).name == "cpu_int4"
        assert module.select_kernel(torch.randn(9, 256)).name == "dense_cache"
        module.cache_dense = None
        assert module.select_kernel(torch.randn(9, 256)).name == "cpu_int4"


# ----------------------------------------------------------------------------------------------- dispatch
def test_auto_dispatch_on_tokens_shape_and_dtype():
    module = build("int4", out_features=64)
    with kernel_options(cpu_int4_max_tokens=16):
        assert module.select_kernel(torch.randn(1, 256, dtype=torch.bfloat16)).name == "cpu_int4"
        assert module.select_kernel(torch.randn(16, 256)).name == "cpu_int4"
        assert module.select_kernel(torch.randn(17, 256)).name == "reference"
        odd = build("int4", out_features=40)  # the CPU kernel needs out % 16 == 0
        assert odd.select_kernel(torch.randn(1, 256)).name == "reference"
        x = torch.randn(1, 256)
        torch.testing.assert_close(odd(x), reference(odd, x))


def test_forcing_a_backend():
    module = build("2:4")
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="does not support"):
        with use_backend("cpu_int4"):
            module(x)
    with pytest.raises(ValueError, match="Unknown backend 'fast'"):
        with use_backend("fast"):
            pass
    module.backend = "reference"
    assert module.select_kernel(x).name == "reference"
    module.cache_dense = True
    with use_backend("dense_cache"):  # the context wins over the module's choice
        assert module.select_kernel(x).name == "dense_cache"
    set_backend("reference")
    try:
        assert build("int4").select_kernel(x).name == "reference"
    finally:
        set_backend("auto")
    assert build("int4").select_kernel(x).name == "cpu_int4"


def test_kernel_options_validation_and_restore():
    before = kernels.get_kernel_options()
    with pytest.raises(ValueError, match="Unknown kernel option"):
        set_kernel_options(cpu_max_tokens=3)
    with kernel_options(cpu_int4_max_tokens=3) as opts:
        assert opts.cpu_int4_max_tokens == 3
    assert kernels.get_kernel_options() == before


def test_kernel_group_size():
    assert kernels.kernel_group_size(640, 128, kernels.CPU_INT4_GROUP_SIZES) == 128
    assert kernels.kernel_group_size(640, -1, kernels.CPU_INT4_GROUP_SIZES) == 128
    assert kernels.kernel_group_size(2048, -1, kernels.CPU_INT4_GROUP_SIZES) == 256
    assert kernels.kernel_group_size(48, -1, kernels.CPU_INT4_GROUP_SIZES) is None
    assert kernels.kernel_group_size(512, 16, kernels.CPU_INT4_GROUP_SIZES) is None


def test_layouts_are_never_saved_and_cleared_by_to():
    module = build("int4")
    keys = set(module.state_dict())
    module(torch.randn(1, 256, dtype=torch.bfloat16))
    assert ("cpu_int4", torch.device("cpu")) in module._kernel_cache
    assert set(module.state_dict()) == keys
    assert not any(isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == 128 for v in module.buffers())
    module.to(torch.float32)
    assert not module._kernel_cache


# ----------------------------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.parametrize("fmt", ["int4", "2:4+int4"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_cuda_int4_matches_reference(fmt, symmetric):
    module = build(fmt, out_features=256, in_features=512, symmetric=symmetric).cuda()
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("tinygemm needs sm80+")
    x = torch.randn(4, 512, dtype=torch.bfloat16, device="cuda")
    with use_backend("cuda_int4"):
        y = module(x)
    assert max_rel_error(y, reference(module, x)) < 1.5e-2


@needs_cuda
@pytest.mark.parametrize("fmt", ["2:4", "2:4+int4"])
def test_cuda_2of4_matches_reference(fmt):
    module = build(fmt, out_features=256, in_features=512, dtype=torch.float16).cuda()
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparsity needs sm80+")
    x = torch.randn(512, 512, dtype=torch.float16, device="cuda")
    with use_backend("cuda_2of4"), kernel_options(cuda_2of4_min_tokens=0):
        y = module(x)
    assert max_rel_error(y, reference(module, x)) < 1e-2

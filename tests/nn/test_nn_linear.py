"""optimum_awp.nn.linear.AWPLinear: construction, buffers only, state_dict/safetensors, bytes, .to(), a tiny model."""

import copy

import pytest
import torch
from awp_nn_helpers import magnitude_2of4, pack, rtn_int4
from tiny_models import tiny_llama as shared_tiny_llama
from safetensors.torch import load_file, save_file
from torch import nn

from optimum_awp.nn import AWPLinear, format_for, kernel_options, use_backend
from optimum_awp.solvers.base import CompressionSpec, SolverResult

FORMATS = ["int4", "2:4", "2:4+int4"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close_to_scale(actual, expected, tol):
    """max |actual - expected| <= tol * max |expected| (a bf16-level check on outputs of any size)."""
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= tol * expected.float().abs().max().item(), (err, expected.abs().max().item())


def make_spec(fmt: str, group_size: int = 128, symmetric: bool = True) -> CompressionSpec:
    if fmt == "int4":
        return CompressionSpec(bits=4, group_size=group_size, symmetric=symmetric)
    if fmt == "2:4":
        return CompressionSpec(pattern=(2, 4))
    return CompressionSpec(pattern=(2, 4), bits=4, group_size=group_size, symmetric=symmetric)


def make_result(weight: torch.Tensor, spec: CompressionSpec) -> SolverResult:
    mask = magnitude_2of4(weight) if spec.pattern == (2, 4) else None
    if spec.bits is None:
        return SolverResult(weight=weight * mask, mask=mask)
    return rtn_int4(weight, spec.group_size, spec.symmetric, mask)


def make_module(fmt, out_features=64, in_features=256, group_size=128, symmetric=True, bias=True, dtype=torch.bfloat16):
    spec = make_spec(fmt, group_size, symmetric)
    weight = torch.randn(out_features, in_features)
    b = torch.randn(out_features) if bias else None
    return pack(make_result(weight, spec), spec, b, dtype), spec


# ----------------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    "spec, expected",
    [
        (CompressionSpec(pattern=(2, 4), bits=4), "2:4+int4"),
        (CompressionSpec(pattern=(2, 4)), "2:4"),
        (CompressionSpec(bits=4), "int4"),
        (CompressionSpec(sparsity=0.5, bits=4), "int4"),
        (CompressionSpec(pattern=(4, 8), bits=4), "int4"),
        (CompressionSpec(sparsity=0.5), None),
        (CompressionSpec(pattern=(4, 8)), None),
    ],
)
def test_format_for(spec, expected):
    assert format_for(spec.pattern, spec.bits) == expected


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [-1, 32, 128])
def test_from_solver_result_dequantizes_to_the_grid(fmt, symmetric, group_size):
    spec = make_spec(fmt, group_size, symmetric)
    result = make_result(torch.randn(48, 256), spec)
    module = pack(result, spec, None, torch.bfloat16)
    assert module.format == fmt and module.bias is None
    assert all(not p for p in module.parameters())  # buffers only
    dense = module.dequantize(torch.float32)
    if spec.quantizes:
        g = 256 if group_size == -1 else group_size
        zeros = 8.0 if symmetric else result.zeros.repeat_interleave(g, 1)
        scales = result.scales.to(torch.bfloat16).float().repeat_interleave(g, 1)
        assert torch.equal(dense, (result.codes.float() - zeros) * scales)
    else:
        assert torch.equal(dense, result.weight.to(torch.bfloat16).float())
    if spec.pattern is not None:
        assert torch.equal(dense[~result.mask], torch.zeros_like(dense[~result.mask]))
    assert module.dequantize().dtype == torch.bfloat16


def test_unstructured_int4_keeps_pruned_entries_exactly_zero():
    spec = CompressionSpec(sparsity=0.5, bits=4, group_size=64, symmetric=False)
    weight = torch.randn(32, 128)
    mask = weight.abs() > weight.abs().median(dim=1, keepdim=True).values
    module = pack(rtn_int4(weight, 64, False, mask), spec, None, torch.float16)
    dense = module.dequantize()
    assert torch.equal(dense[~mask], torch.zeros_like(dense[~mask]))


def test_from_parts_refusals():
    weight = torch.randn(16, 128)
    with pytest.raises(ValueError, match="No packed format"):
        pack(SolverResult(weight=weight), CompressionSpec(sparsity=0.5), None, torch.float32)
    spec = CompressionSpec(bits=4, symmetric=False)
    result = rtn_int4(weight, 128, True)
    with pytest.raises(ValueError, match="zeros"):
        pack(result, spec, None, torch.float32)
    with pytest.raises(ValueError, match="codes is required"):
        pack(SolverResult(weight=weight), CompressionSpec(bits=4), None, torch.float32)
    with pytest.raises(ValueError, match="group_size=128 must divide"):
        pack(SolverResult(weight=torch.randn(16, 96)), CompressionSpec(bits=4), None, torch.float32)
    with pytest.raises(ValueError, match="not a 2:4 pattern"):
        pack(SolverResult(weight=weight), CompressionSpec(pattern=(2, 4)), None, torch.float32)
    with pytest.raises(ValueError, match="floating"):
        AWPLinear.empty("int4", 128, 16, False, dtype=torch.int32)
    with pytest.raises(ValueError, match="Unknown format"):
        AWPLinear.empty("int8", 128, 16, False)


def test_empty_allocates_meta_buffers_of_the_right_shapes():
    module = AWPLinear.empty("2:4+int4", 2048, 640, bias=True, group_size=128, symmetric=False, dtype=torch.float16)
    shapes = {k: (tuple(v.shape), v.dtype, v.device.type) for k, v in module.state_dict().items()}
    assert shapes == {
        "qweight": ((640, 128), torch.int32, "meta"),
        "meta": ((640, 256), torch.uint8, "meta"),
        "scales": ((640, 16), torch.float16, "meta"),
        "zeros": ((640, 16), torch.uint8, "meta"),
        "bias": ((640,), torch.float16, "meta"),
    }
    assert module.in_features == 2048 and module.out_features == 640


# ----------------------------------------------------------------------------------------------- bytes
@pytest.mark.parametrize(
    "fmt, expected_bytes, max_ratio",
    [
        ("int4", 2048 * 640 // 2 + 2048 * 5 * 2, 0.30),
        ("2:4", 2048 * 320 * 2 + 2048 * 80, 0.57),
        ("2:4+int4", 2048 * 640 // 4 + 2048 * 80 + 2048 * 5 * 2, 0.22),
    ],
)
def test_weight_bytes_against_bf16(fmt, expected_bytes, max_ratio):
    module = AWPLinear.empty(fmt, 640, 2048, bias=True, group_size=128, dtype=torch.bfloat16)
    dense_bytes = 2048 * 640 * 2
    assert module.weight_bytes() == expected_bytes
    assert module.weight_bytes() == sum(
        t.numel() * t.element_size() for k, t in module.state_dict().items() if k != "bias"
    )
    assert module.weight_bytes() / dense_bytes <= max_ratio
    transposed = AWPLinear.empty(fmt, 2048, 640, bias=False, group_size=128, dtype=torch.bfloat16)
    assert transposed.weight_bytes() / dense_bytes <= max_ratio


def test_extra_repr_shows_format_shape_group_and_bytes():
    text = repr(AWPLinear.empty("int4", 640, 1024, bias=False, group_size=64))
    assert "format=int4" in text and "in_features=640" in text and "out_features=1024" in text
    assert "group_size=64" in text and f"weight_bytes={1024 * 80 * 4 + 1024 * 10 * 2}" in text
    assert "group_size" not in repr(AWPLinear.empty("2:4", 640, 1024, bias=False))


# ----------------------------------------------------------------------------------------------- state
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_safetensors_round_trip_via_empty(tmp_path, fmt, symmetric):
    module, spec = make_module(fmt, symmetric=symmetric)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    y = module(x)  # builds a kernel layout, which must not be saved
    state = module.state_dict()
    assert set(state) == set(module.packed_buffers()) | {"bias"}
    path = tmp_path / "layer.safetensors"
    save_file(state, str(path))
    loaded = load_file(str(path))
    new = AWPLinear.empty(fmt, 256, 64, bias=True, group_size=spec.group_size, symmetric=spec.symmetric)
    new.load_state_dict(loaded, assign=True)
    for key, tensor in module.state_dict().items():
        assert torch.equal(new.state_dict()[key], tensor) and new.state_dict()[key].dtype == tensor.dtype
    assert torch.equal(new(x), y)
    # the same into buffers allocated on CPU (copy, not assign)
    cpu = AWPLinear.empty(fmt, 256, 64, bias=True, group_size=spec.group_size, symmetric=spec.symmetric, device="cpu")
    cpu.load_state_dict(loaded)
    assert torch.equal(cpu(x), y)


def test_load_state_dict_in_place_invalidates_kernel_layouts():
    module, _ = make_module("int4")
    other, _ = make_module("int4")
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    module(x)
    assert module._kernel_cache
    module.load_state_dict(other.state_dict())  # copies in place: same storage, new versions
    assert torch.equal(module(x), other(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_to_dtype_and_device_keep_outputs(fmt):
    module, _ = make_module(fmt, dtype=torch.float32)
    x = torch.randn(4, 256)
    y = module(x)
    module.to("cpu")
    assert torch.equal(module(x), y)
    half = copy.deepcopy(module).to(torch.float16)
    assert half.dtype == torch.float16 and not half._kernel_cache
    assert half.qweight.dtype == torch.int32 if fmt != "2:4" else half.meta.dtype == torch.uint8
    assert_close_to_scale(half(x.half()), y, 1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fmt", FORMATS)
def test_cpu_cuda_cpu_keeps_outputs(fmt):
    module, _ = make_module(fmt, out_features=128, in_features=256)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    with use_backend("reference"):
        expected = module(x)
    y = module(x)
    module.cuda()
    assert module.device.type == "cuda"
    assert_close_to_scale(module(x.cuda()).cpu(), expected, 1e-2)
    module.cpu()
    assert torch.equal(module(x), y)


# ----------------------------------------------------------------------------------------------- tiny model
def tiny_llama(dtype):
    return shared_tiny_llama(hidden=32, vocab=64, heads=2, kv_heads=1, head_dim=16, dtype=dtype,
                             max_position_embeddings=64)


def swap_linears(model, fmt, group_size=32):
    """Replace every linear of the decoder layers by an AWPLinear; return the dense twin's weights."""
    spec = make_spec(fmt, group_size)
    dense = {}
    for name, module in list(model.model.layers.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                result = make_result(child.weight.detach().float(), spec)
                awp = pack(result, spec, child.bias, child.weight.dtype)
                setattr(module, child_name, awp)
                dense[f"model.layers.{name}.{child_name}.weight".replace("..", ".")] = awp.dequantize()
    return dense


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_llama_with_awp_linears_matches_its_dequantized_dense_twin(fmt, dtype):
    model = tiny_llama(dtype)
    twin = copy.deepcopy(model)
    dense = swap_linears(model, fmt)
    assert sum(isinstance(m, AWPLinear) for m in model.modules()) == 14
    missing, unexpected = twin.load_state_dict(dense, strict=False)
    assert not unexpected and len(missing) == len(twin.state_dict()) - 14
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        expected = twin(ids).logits
        with use_backend("reference"):
            assert torch.equal(model(ids).logits, expected)  # same dense weights, same F.linear
        with kernel_options(cpu_int4_max_tokens=64):  # 14 tokens: the CPU INT4 kernel where it applies
            fast = model(ids).logits
    assert_close_to_scale(fast, expected, 2e-2)

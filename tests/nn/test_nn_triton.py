"""optimum_awp.nn.triton_kernels: the Triton 2:4 / 2:4+int4 kernels against the reference path.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, on small
shapes; the CUDA tests at the end run the compiled kernels where a GPU is present. Skipped without triton.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from awp_nn_helpers import magnitude_2of4, pack, rtn_int4

from optimum_awp.nn import kernels, use_backend
from optimum_awp.solvers.base import CompressionSpec, SolverResult

pytest.importorskip("triton")
from optimum_awp.nn import triton_kernels  # after the skip: it registers kernels only with triton

INT4 = "triton_2of4_int4"
FP = "triton_2of4"
EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # relative spacing of the dtype at 1.0
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0), reason="needs CUDA sm80+"
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def interpret(monkeypatch):
    """Triton's interpreter on: the kernels accept CPU tensors."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def compiled(monkeypatch):
    """Triton's interpreter off (the CUDA tests)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def build(fmt, out_features=37, in_features=256, group_size=128, symmetric=True, dtype=torch.bfloat16, weight=None,
          bias=False):
    """An AWPLinear of ``fmt`` ("2:4" or "2:4+int4") from a random (or given) weight: magnitude 2:4 mask,
    then round-to-nearest INT4 on the kept entries."""
    if weight is None:
        weight = torch.randn(out_features, in_features)
    mask = magnitude_2of4(weight) & (weight != 0)
    b = torch.randn(weight.shape[0]) if bias else None
    if fmt == "2:4":
        return pack(SolverResult(weight=weight * mask, mask=mask), CompressionSpec(pattern=(2, 4)), b, dtype)
    spec = CompressionSpec(pattern=(2, 4), bits=4, group_size=group_size, symmetric=symmetric)
    return pack(rtn_int4(weight, group_size, symmetric, mask), spec, b, dtype)


def forward(module, x, backend):
    with use_backend(backend):
        return module(x)


def check_matches_reference(module, x, backend):
    """The kernel's output is the fp32 product of the reference's weights, rounded once to the dtype: at most
    one unit in the last place off everywhere (summation order), and equal to it almost everywhere; and it
    agrees with the reference kernel itself."""
    dtype = x.dtype
    y = forward(module, x, backend)
    assert y.dtype == dtype and y.shape == (*x.shape[:-1], module.out_features)
    assert module.bias is None, "the bias adds a second rounding: test it apart"
    exact = x.float() @ module.dequantize(dtype).float().t()
    scale = exact.abs().max().item()
    excess = (y.float() - exact).abs() - (EPS[dtype] * exact.abs() + 1e-6 * scale)
    assert excess.max().item() <= 0, f"max error over one ulp: {excess.max().item()}"
    same = (y == exact.to(dtype)).float().mean().item()
    assert same >= 0.9, f"only {same:.2%} of the outputs equal the correctly rounded product"
    reference = forward(module, x, "reference")
    torch.testing.assert_close(y.float(), reference.float(), rtol=2 * EPS[dtype], atol=2e-5 * scale)


# ----------------------------------------------------------------------------------------------- interpreter
@pytest.mark.parametrize("tokens", [1, 3, 16, 64])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_2of4_int4_matches_reference(interpret, dtype, group_size, symmetric, tokens):
    module = build("2:4+int4", group_size=group_size, symmetric=symmetric, dtype=dtype)
    x = torch.randn(tokens, module.in_features).to(dtype)
    assert module.select_kernel(x).name not in (INT4, FP)  # automatic dispatch never picks the Triton kernels
    check_matches_reference(module, x, INT4)


@pytest.mark.parametrize("tokens", [1, 3, 16, 64])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_2of4_matches_reference(interpret, dtype, tokens):
    module = build("2:4", dtype=dtype)
    check_matches_reference(module, torch.randn(tokens, module.in_features).to(dtype), FP)


@pytest.mark.parametrize("symmetric", [True, False])
def test_one_group_per_row(interpret, symmetric):
    module = build("2:4+int4", out_features=19, in_features=192, group_size=-1, symmetric=symmetric)
    check_matches_reference(module, torch.randn(5, 192).to(torch.bfloat16), INT4)


@pytest.mark.parametrize(
    "fmt,symmetric,dtype",
    [("2:4+int4", True, torch.bfloat16), ("2:4+int4", False, torch.float16), ("2:4", True, torch.bfloat16)],
)
def test_identity_input_returns_the_reference_weight_bit_for_bit(interpret, fmt, symmetric, dtype):
    """x = I makes every output one product 1 * W[n, k]: the kernel's decoded weight, pruned entries (exact 0)
    and filled positions of groups with fewer than two non-zeros included, equals the reference's bits."""
    weight = torch.randn(24, 128)
    weight[:, 0:4] = 0  # a group with no non-zero
    weight[:, 5:8] = 0  # a group with one non-zero
    weight[3] = 0  # a row of zeros
    module = build(fmt, weight=weight, group_size=32, symmetric=symmetric, dtype=dtype)
    y = forward(module, torch.eye(128, dtype=dtype), INT4 if fmt == "2:4+int4" else FP)
    expected = module.dequantize(dtype).t()
    assert torch.equal(y, expected)
    assert bool((y[0:4] == 0).all()) and bool((y[:, 3] == 0).all())


@pytest.mark.parametrize(
    "tokens,changes",
    [
        (5, {"split_k": 3, "block_k": 64}),  # 4 input tiles split 2 + 2 + 0: the last split adds zeros
        (2, {"split_k": 4, "block_k": 32, "block_n": 64}),  # 8 input tiles in 4 splits, a row tile past the rows
        (3, {"block_t": 64, "block_n": 16}),  # a token tile mostly past the tokens
        (40, {"block_t": 16, "block_n": 16}),  # three token tiles, the last one partial
        (7, {"block_k": 16, "block_n": 128}),  # tiles narrower than a group: one scale column per tile
    ],
)
def test_forced_launch_configs(interpret, tokens, changes):
    module = build("2:4+int4", out_features=45, in_features=256, group_size=32, symmetric=False)
    with triton_kernels.launch_config(**changes):
        check_matches_reference(module, torch.randn(tokens, 256).to(torch.bfloat16), INT4)


def test_module_path_bias_leading_dims_and_layout(interpret):
    module = build("2:4+int4", out_features=33, in_features=128, dtype=torch.float16, bias=True)
    x = torch.randn(2, 3, 128).to(torch.float16)
    with_bias = forward(module, x, INT4)
    (layout,) = (v for k, v in module._kernel_cache.items() if k[0] == INT4)
    assert isinstance(layout, triton_kernels.Sparse24Layout)
    assert layout.weight.data_ptr() == module.qweight.data_ptr()  # the stored buffers, not a copy
    assert layout.meta.data_ptr() == module.meta.data_ptr() and layout.scales.data_ptr() == module.scales.data_ptr()
    assert set(module.state_dict()) == {"qweight", "meta", "scales", "bias"}  # the layout is never saved
    bias, module.bias = module.bias, None
    check_matches_reference(module, x, INT4)
    assert torch.equal(with_bias, forward(module, x, INT4) + bias)


def test_empty_input(interpret):
    module = build("2:4", dtype=torch.float16)
    assert forward(module, torch.zeros(0, 256, dtype=torch.float16), FP).shape == (0, 37)


# ----------------------------------------------------------------------------------------------- supports
def query(module, tokens=1, dtype=None, device="cpu"):
    return kernels.KernelQuery(
        device=torch.device(device), dtype=dtype or module.dtype, format=module.format,
        out_features=module.out_features, in_features=module.in_features, group_size=module.group_size,
        symmetric=module.symmetric, tokens=tokens, cache_dense=None, weight_dtype=module.dtype,
    )


def test_registered_but_never_chosen_automatically(interpret):
    assert {INT4, FP} <= set(kernels.KERNELS) and not {INT4, FP} & set(kernels.AUTO_ORDER)
    for fmt in ("2:4+int4", "2:4"):
        q = query(build(fmt))
        assert kernels.KERNELS[INT4 if fmt == "2:4+int4" else FP].supports(q, kernels.get_kernel_options())
        assert kernels.select_kernel(q).name not in (INT4, FP)


def test_cpu_tensors_only_under_the_interpreter(monkeypatch):
    module = build("2:4+int4")
    options = kernels.get_kernel_options()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kernels.KERNELS[INT4].supports(query(module), options)
    with pytest.raises(ValueError, match="triton_2of4_int4.*does not support"):
        forward(module, torch.randn(1, 256).to(torch.bfloat16), INT4)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.KERNELS[INT4].supports(query(module), options)


def test_supports_rejects_what_the_kernel_cannot_run(interpret):
    options = kernels.get_kernel_options()
    int4, fp = kernels.KERNELS[INT4], kernels.KERNELS[FP]
    module = build("2:4+int4")
    assert not int4.supports(query(module, dtype=torch.float32), options)  # fp32 activations
    assert not int4.supports(query(module, dtype=torch.float16), options)  # activations not in the model dtype
    assert not fp.supports(query(module), options)  # the other format
    assert not int4.supports(query(build("2:4")), options)
    assert not fp.supports(query(build("2:4", in_features=24)), options)  # in_features not a multiple of 16
    odd_group = kernels.KernelQuery(torch.device("cpu"), torch.bfloat16, "2:4+int4", 8, 48, 24, True, 1,
                                    weight_dtype=torch.bfloat16)  # 24 neither divides nor is divided by a tile
    assert not int4.supports(odd_group, options)
    assert int4.supports(dataclasses.replace(odd_group, group_size=16), options)
    assert int4.supports(dataclasses.replace(odd_group, group_size=-1), options)
    assert not int4.supports(query(module, device="meta"), options)


def test_launch_config_errors_name_the_field_value_and_allowed():
    with pytest.raises(ValueError, match=r"Unknown launch config field\(s\) \['block_m'\]; known fields"), \
            triton_kernels.launch_config(block_m=16):
        pass
    with pytest.raises(ValueError, match=r"block_k=48 is not allowed for in_features=256, group=32; allowed: \[128, 64, 32, 16\]"):
        triton_kernels.LaunchConfig(16, 32, 48).check(256, 32)
    with pytest.raises(ValueError, match=r"block_t=3 is not allowed; allowed: \[16, 32, 64, 128, 256\]"):
        triton_kernels.LaunchConfig(3, 32, 64).check(256, 32)
    with pytest.raises(ValueError, match=r"block_n=8 is not allowed"):
        triton_kernels.LaunchConfig(16, 8, 64).check(256, 32)
    with pytest.raises(ValueError, match=r"split_k=9 must lie in \[1, 8\]"):
        triton_kernels.LaunchConfig(16, 32, 32, split_k=9).check(256, 0)
    with pytest.raises(ValueError, match=r"num_warps=3"):
        triton_kernels.LaunchConfig(16, 32, 32, num_warps=3).check(256, 0)


def test_choose_config(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    one = triton_kernels.choose_config(1, 4096, 4096, 128, cpu)
    assert (one.block_t, one.block_n, one.block_k, one.split_k) == (16, 32, 128, 1)
    assert [triton_kernels.choose_config(t, 37, 256, 64, cpu).block_t for t in (3, 17, 33, 500)] == [16, 32, 64, 64]
    assert triton_kernels.choose_config(64, 4096, 4096, 32, cpu).block_k == 128  # a tile of 4 groups
    assert triton_kernels.choose_config(16, 100, 192, 192, cpu).block_k == 64  # per-channel group, in = 3 * 64
    monkeypatch.setitem(triton_kernels._SM_COUNT, 0, 132)  # an H100/H200: split-K to about 4 programs per SM
    decode = triton_kernels.choose_config(1, 4096, 4096, 128, cuda)
    assert (decode.block_n, decode.split_k) == (32, 8)  # 128 row tiles x 8 splits >= 4 x 132
    assert triton_kernels.choose_config(64, 11008, 4096, 128, cuda).split_k == 4


# ----------------------------------------------------------------------------------------------- packaging
def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_registers_without_importing_triton():
    out = run_python(
        """
        import sys
        import optimum_awp
        from optimum_awp.nn import kernels
        print("triton" in sys.modules, "triton_2of4_int4" in kernels.KERNELS, "triton_2of4" in kernels.KERNELS)
        """
    )
    assert out == "False True True"


def test_without_triton_nothing_is_registered():
    out = run_python(
        """
        import sys
        sys.modules["triton"] = None  # as if not installed
        from optimum_awp.nn import kernels
        print(sorted(k for k in kernels.KERNELS if k.startswith("triton")))
        """
    )
    assert out == "[]"


# ----------------------------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.parametrize("tokens", [1, 4, 16, 64])
@pytest.mark.parametrize("fmt,symmetric", [("2:4+int4", True), ("2:4+int4", False), ("2:4", True)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_matches_reference(compiled, dtype, fmt, symmetric, tokens):
    module = build(fmt, out_features=1000, in_features=1024, group_size=128, symmetric=symmetric, dtype=dtype).cuda()
    x = torch.randn(tokens, 1024, device="cuda").to(dtype)
    check_matches_reference(module, x, INT4 if fmt == "2:4+int4" else FP)


@needs_cuda
@pytest.mark.parametrize("fmt", ["2:4+int4", "2:4"])
def test_cuda_identity_input_returns_the_reference_weight(compiled, fmt):
    module = build(fmt, out_features=96, in_features=256, group_size=64, symmetric=False, dtype=torch.bfloat16).cuda()
    y = forward(module, torch.eye(256, dtype=torch.bfloat16, device="cuda"), INT4 if fmt == "2:4+int4" else FP)
    assert torch.equal(y, module.dequantize(torch.bfloat16).t())


@needs_cuda
def test_cuda_llama_shapes_and_split_k(compiled):
    module = build("2:4+int4", out_features=4096, in_features=11008, group_size=128).cuda()
    for tokens in (1, 16):
        check_matches_reference(module, torch.randn(tokens, 11008, device="cuda").to(torch.bfloat16), INT4)
    with triton_kernels.launch_config(split_k=1):
        check_matches_reference(module, torch.randn(2, 11008, device="cuda").to(torch.bfloat16), INT4)


# ----------------------------------------------------------------------------------------------- the GPU visit
REPO = Path(__file__).resolve().parents[2]


def test_benchmark_dry_run_splices_its_section(tmp_path):
    """benchmarks/kernels_cuda.py --triton runs every code path under the interpreter on tiny shapes and
    replaces only its own section of the results page."""
    page = tmp_path / "kernels_cuda.md"
    page.write_text("# head\n\n<!-- notes: kept when the benchmark rewrites this file -->\nnotes\n\n"
                    "<!-- triton: written by benchmarks/kernels_cuda.py --triton -->\nOLD\n<!-- /triton -->\ntail\n")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernels_cuda.py"), "--triton", "--out", str(page)],
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = page.read_text()
    assert text.startswith("# head\n") and "notes\n" in text and text.endswith("<!-- /triton -->\ntail\n")
    assert "OLD" not in text and text.count("<!-- triton:") == 1
    assert "| dry 48x256 | 1 | " in text and "| 2:4+int4 fp16, triton_2of4_int4 |" in text
    assert "Traceback" not in result.stdout + result.stderr


def test_benchmark_refuses_a_cpu_run_outside_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "0", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernels_cuda.py"), "--triton"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 2 and "set TRITON_INTERPRET=1" in result.stderr


def test_gpu_visit_script_dry_run(tmp_path):
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_visit.sh"), "--dry-run", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    steps = [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("== ")]
    assert steps[-6:] == ["== CUDA tests", "== results page", "== Triton benchmark",
                          "== compression on CUDA (sparsegpt)", "== compression on CUDA (awp)", "== done"]
    assert "benchmarks/kernels_cuda.py --triton" in result.stdout and "tests/nn/test_nn_triton.py" in result.stdout
    assert "benchmarks/compression.py --scaling" in result.stdout and "--device cuda" in result.stdout

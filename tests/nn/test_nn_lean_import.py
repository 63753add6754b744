"""Importing optimum_awp (and its nn modules) must not initialize CUDA, nor must a CPU forward."""

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_does_not_initialize_cuda():
    out = run(
        """
        import torch
        import optimum_awp
        import optimum_awp.nn
        from optimum_awp.nn import AWPLinear, formats, kernels, linear, packing
        print(torch.cuda.is_initialized())
        """
    )
    assert out == "False"


def test_cpu_forward_does_not_initialize_cuda():
    out = run(
        """
        import torch
        from optimum_awp.nn import AWPLinear
        m = AWPLinear.empty("int4", 256, 64, bias=False, group_size=128, device="cpu")
        m.qweight.zero_(); m.scales.fill_(1.0)
        for tokens in (1, 300):
            m(torch.randn(tokens, 256, dtype=torch.bfloat16))
        m = AWPLinear.empty("2:4", 256, 64, bias=False, device="cpu")
        m.values.zero_(); m.meta.fill_(4)
        m(torch.randn(3, 256))
        print(torch.cuda.is_initialized())
        """
    )
    assert out == "False"

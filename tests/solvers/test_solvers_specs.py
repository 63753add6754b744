"""Bad specs, shapes, options and names are refused with a ValueError, before any work."""

import pytest
import torch
from awp_solver_helpers import correlated_problem

from optimum_awp.solvers import CompressionSpec, LayerStats, get_solver

METHODS = ["magnitude", "wanda", "rtn", "sparsegpt", "gptq", "awq", "awp", "alps"]


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="known methods.*awp"):
        get_solver("obs")


@pytest.mark.parametrize("kwargs", [dict(sparsity=1.0), dict(sparsity=-0.1), dict(pattern=(4, 4)),
                                    dict(pattern=(5, 4)), dict(bits=3), dict(bits=8), dict(group_size=100)])
def test_bad_specs_are_refused(kwargs):
    with pytest.raises(ValueError):
        CompressionSpec(**kwargs)


def supported(method: str, pattern=None, group_size: int = -1) -> CompressionSpec:
    """A spec of a kind ``method`` declares: joint if it can, else what it does alone."""
    kinds = get_solver(method).kinds
    if "joint" in kinds:
        return CompressionSpec(pattern=pattern, sparsity=0.0 if pattern else 0.5, bits=4, group_size=group_size)
    if "quantize" in kinds:
        return CompressionSpec(bits=4, group_size=group_size)
    return CompressionSpec(pattern=pattern, sparsity=0.0 if pattern else 0.5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("what", ["pattern", "group"])
def test_shape_errors_come_before_work(method, what):
    spec = supported(method, pattern=(2, 4)) if what == "pattern" else supported(method, group_size=64)
    if (what == "group" and not spec.quantizes) or (what == "pattern" and spec.pattern is None):
        pytest.skip(f"{method} does not {'quantize' if what == 'group' else 'prune'}")
    weight = torch.randn(4, 30 if what == "pattern" else 96)
    stats = LayerStats(covariance=torch.full((2, 2), float("nan")))  # wrong and poisoned: never reached
    with pytest.raises(ValueError, match="divisible by M" if what == "pattern" else "divisible by group_size"):
        get_solver(method)(weight, stats, spec)


@pytest.mark.parametrize("method", METHODS)
def test_covariance_shape_mismatch_is_refused(method):
    weight, stats = correlated_problem(4, 16)
    with pytest.raises(ValueError, match="covariance"):
        stats = LayerStats(covariance=stats.covariance[:8, :8])
        get_solver(method)(weight, stats, supported(method))


@pytest.mark.parametrize("method", METHODS)
def test_specs_of_an_undeclared_kind_are_refused(method):
    weight, stats = correlated_problem(4, 16)
    solver = get_solver(method)
    specs = {"prune": CompressionSpec(sparsity=0.5), "quantize": CompressionSpec(bits=4, group_size=-1),
             "joint": CompressionSpec(sparsity=0.5, bits=4, group_size=-1)}
    for kind, spec in specs.items():
        if kind in solver.kinds:
            assert solver(weight, stats, spec).weight.shape == weight.shape
        else:
            with pytest.raises(ValueError, match=f"method '{method}' does not do"):
                solver(weight, stats, spec)


BAD_OPTIONS = [
    ("magnitude", {"foo": 1}, "takes no option"),
    ("awp", {"init": "gptq"}, "init must be one of"),
    ("awp", {"step": "newton"}, "step must be one of"),
    ("awp", {"max_iterations": -1}, "max_iterations must be an int >= 0"),
    ("awp", {"damping": float("inf")}, "damping must be a finite float >= 0"),
    ("awp", {"quant_init": "rtn"}, "takes no option"),
    ("sparsegpt", {"blocksize": 0}, "blocksize must be an int >= 1"),
    ("sparsegpt", {"damping": -1.0}, "damping must be a finite float >= 0"),
    ("awq", {"max_shrink": 1.0}, "max_shrink must be a finite float >= 0 and <= 0.99"),
    ("alps", {"rho": 0.0}, "rho must be a finite float >= 1e-08"),
    ("alps", {"scope": "block"}, "scope must be one of"),
]


@pytest.mark.parametrize("method,options,match", BAD_OPTIONS)
def test_bad_options_are_refused(method, options, match):
    weight, stats = correlated_problem(4, 16)
    with pytest.raises(ValueError, match=match):
        get_solver(method)(weight, stats, supported(method), **options)

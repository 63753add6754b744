"""Bad specs, shapes, options and names are refused with a ValueError, before any work."""

import pytest
import torch
from awp_solver_helpers import correlated_problem

from optimum_awp.solvers import SOLVERS, CompressionSpec, LayerStats, get_solver

METHODS = ["magnitude", "wanda", "rtn", "sparsegpt", "gptq", "awq", "awp"]


def test_all_methods_are_registered():
    assert set(METHODS) <= set(SOLVERS)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="known methods.*awp"):
        get_solver("obs")


@pytest.mark.parametrize("kwargs", [dict(sparsity=1.0), dict(sparsity=-0.1), dict(pattern=(4, 4)),
                                    dict(pattern=(5, 4)), dict(bits=3), dict(bits=8), dict(group_size=100)])
def test_bad_specs_are_refused(kwargs):
    with pytest.raises(ValueError):
        CompressionSpec(**kwargs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "spec,match",
    [
        (CompressionSpec(pattern=(2, 4), bits=4, group_size=32), "divisible by M"),
        (CompressionSpec(bits=4, group_size=64), "divisible by group_size"),
    ],
)
def test_shape_errors_come_before_work(method, spec, match):
    weight = torch.randn(4, 30 if spec.pattern else 96)
    stats = LayerStats(covariance=torch.full((2, 2), float("nan")))  # wrong and poisoned: never reached
    with pytest.raises(ValueError, match=match):
        get_solver(method)(weight, stats, spec)


@pytest.mark.parametrize("method", METHODS)
def test_covariance_shape_mismatch_is_refused(method):
    weight, stats = correlated_problem(4, 16)
    with pytest.raises(ValueError, match="covariance"):
        stats = LayerStats(covariance=stats.covariance[:8, :8])
        get_solver(method)(weight, stats, CompressionSpec(bits=4, group_size=-1))


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_methods_that_need_bits_refuse_pruning_only(method):
    weight, stats = correlated_problem(4, 16)
    with pytest.raises(ValueError, match="bits"):
        get_solver(method)(weight, stats, CompressionSpec(sparsity=0.5))


BAD_OPTIONS = [
    ("magnitude", {"foo": 1}),
    ("awp", {"init": "gptq"}),
    ("awp", {"step": "newton"}),
    ("awp", {"max_iterations": -1}),
    ("awp", {"quant_init": "rtn"}),
    ("sparsegpt", {"blocksize": 0}),
    ("sparsegpt", {"damping": -1.0}),
    ("awq", {"max_shrink": 1.0}),
]


@pytest.mark.parametrize("method,options", BAD_OPTIONS)
def test_bad_options_are_refused(method, options):
    weight, stats = correlated_problem(4, 16)
    with pytest.raises((ValueError, TypeError)):
        get_solver(method)(weight, stats, CompressionSpec(sparsity=0.5, bits=4, group_size=-1), **options)

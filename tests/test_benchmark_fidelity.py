"""benchmarks/fidelity.py's pure parts: the evaluation windows reach every document, the dense-target runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("fidelity_benchmark", REPO / "benchmarks" / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _bounds(lengths):
    out, pos = [], 0
    for n in lengths:
        out.append((pos, pos + n))
        pos += n
    return out


@pytest.mark.parametrize("count", [5, 8, 20])
def test_windows_reach_every_document_when_there_are_enough(fidelity, count):
    body = 10
    bounds = _bounds([7, 95, 12, 3, 83])  # short documents an even spacing would skip
    available = bounds[-1][1] // body
    index = fidelity.spread_indices(available, count, bounds, body).tolist()
    assert len(index) == count and index == sorted(set(index)) and 0 <= index[0] and index[-1] < available
    starts = [i * body for i in index]
    assert all(any(a < s + body and s < b for s in starts) for a, b in bounds)


def test_fewer_windows_than_documents_are_evenly_spaced(fidelity):
    bounds = _bounds([50] * 6)
    assert fidelity.spread_indices(30, 3, bounds, 10).tolist() == [0, 14, 29]
    assert fidelity.spread_indices(30, 40, bounds, 10).tolist() == list(range(30))


def test_dense_target_runs_use_their_solver_with_dense_targets(fidelity):
    args = fidelity.parse_args(["--headline", "--settings", "70%", "--methods", "alps", "awp-dense"])
    assert [(s.name, m) for s, m in fidelity.plan(args)] == [("70%", "alps"), ("70%", "awp-dense")]
    assert fidelity.solver_of("awp-dense") == "awp" and fidelity.run_options("awp-dense", args) == {"dense_targets": True}
    assert "dense_targets" not in fidelity.run_options("awp", args)
    default = fidelity.parse_args(["--quick", "--settings", "70%"])
    assert not {m for _, m in fidelity.plan(default)} & set(fidelity.DENSE_VARIANTS)  # only when named
    assert (args.eval_windows, args.eval_seqlen) == (32, 256)

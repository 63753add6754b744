"""AWPConfig: validation names the field, to_dict is an allowlist, from_dict refuses what it cannot read."""

import json

import pytest
import torch

from optimum_awp.config import FORMAT_VERSION, SAVED_FIELDS, AWPConfig

BAD_FIELDS = [
    ("method", "obs"),
    ("sparsity", 1.0),
    ("sparsity", -0.1),
    ("sparsity", "4:2"),
    ("sparsity", "2-4"),
    ("sparsity", True),
    ("bits", 3),
    ("bits", 8),
    ("group_size", 100),
    ("group_size", 0),
    ("symmetric", "yes"),
    ("dataset", ""),
    ("dataset", []),
    ("dataset", [1, 2, 3]),
    ("dataset", 42),
    ("dataset", torch.zeros(2, 8)),
    ("dataset", torch.zeros(8, dtype=torch.long)),
    ("nsamples", 0),
    ("nsamples", 1.5),
    ("seqlen", 1),
    ("seed", "0"),
    ("max_iterations", -1),
    ("tolerance", -1e-3),
    ("damping", -0.5),
    ("damping", float("inf")),
    ("tolerance", float("nan")),
    ("group_size", 32.0),
    ("max_iterations", 2.0),
    ("momentum", 1),
    ("init", "random"),
    ("step", "newton"),
    ("momentum", 1),
    ("scope", "block"),
    ("modules_to_not_convert", "lm_head"),
    ("modules_to_not_convert", [1]),
    ("compressed_modules", ["model.layers.0.mlp.up_proj"]),
    ("compressed_modules", {"model.layers.0.mlp.up_proj": 4}),
    ("bf16_products", "yes"),
    ("format_version", FORMAT_VERSION + 1),
    ("quant_method", "gptq"),
]


@pytest.mark.parametrize("name,value", BAD_FIELDS, ids=[f"{n}={v!r}"[:40] for n, v in BAD_FIELDS])
def test_bad_field_is_refused_with_its_name(name, value):
    kwargs = {"bits": 4, name: value}
    with pytest.raises(ValueError, match=rf"AWPConfig\.{name} must be"):
        AWPConfig(**kwargs)


def test_an_option_the_method_does_not_take_is_refused_with_the_methods_options():
    assert AWPConfig(method="awp", sparsity=0.5, scope="layer").scope == "layer"
    with pytest.raises(ValueError, match=r"\['scope'\] is not an option of method 'wanda'; the options of 'wanda' "
                                         r"are none"):
        AWPConfig(method="wanda", sparsity=0.5, scope="layer")
    with pytest.raises(ValueError, match=r"\['step'\] is not an option of method 'sparsegpt'.*\['blocksize', 'damping', 'per_row'\]"):
        AWPConfig(method="sparsegpt", sparsity=0.5, step="diagonal")
    with pytest.raises(ValueError, match=r"\['stepp'\] is not an AWPConfig field nor an option of any method"):
        AWPConfig(sparsity=0.5, stepp="diagonal")


def test_options_come_from_the_solver_declaration():
    from optimum_awp.solvers import get_solver

    for method in ("awp", "sparsegpt", "awq", "wanda"):
        declared = {spec.name: spec.default for spec in get_solver(method).option_specs()}
        bits, sparsity = (4, None) if method == "awq" else (None, 0.5)
        assert AWPConfig(method=method, sparsity=sparsity, bits=bits).options == declared


def test_method_kinds_are_checked():
    for method, kwargs in [("wanda", {"bits": 4}), ("rtn", {"sparsity": 0.5}), ("rtn", {"sparsity": "2:4", "bits": 4}),
                           ("gptq", {"sparsity": 0.5, "bits": 4}), ("awq", {"sparsity": 0.5})]:
        with pytest.raises(ValueError, match=f"method '{method}' does not do"):
            AWPConfig(method=method, **kwargs)


def test_assignment_is_validated_and_refusal_leaves_the_config_unchanged():
    config = AWPConfig(sparsity=0.5)
    config.step = "lambda_max"
    assert config.options["step"] == "lambda_max" and config.to_dict()["step"] == "lambda_max"
    for name, value in [("damping", float("inf")), ("group_size", 32.0), ("step", "newton"), ("method", "nope"),
                        ("bits", 3), ("nsamples", 0)]:
        with pytest.raises(ValueError, match=f"AWPConfig.{name} must be"):
            setattr(config, name, value)
    assert config.to_dict() == AWPConfig(sparsity=0.5, step="lambda_max").to_dict()
    with pytest.raises(ValueError, match="not an option of method 'wanda'"):
        AWPConfig(method="wanda", sparsity=0.5).max_iterations = 3


def test_nothing_to_compress_is_refused():
    with pytest.raises(ValueError, match="sparsity"):
        AWPConfig()
    with pytest.raises(ValueError, match="sparsity"):
        AWPConfig(sparsity=0.0)


@pytest.mark.parametrize("dataset", [
    "wikipedia-gensim", "some/file.txt", ["a text", "another"], [[1, 2, 3], [4, 5, 6]],
    torch.randint(0, 10, (2, 8)), None,
])
def test_good_datasets(dataset):
    assert AWPConfig(bits=4, dataset=dataset).dataset is dataset


def test_defaults_keep_lm_head_dense():
    config = AWPConfig(sparsity="2:4", bits=4)
    assert config.modules_to_not_convert == ["lm_head"]
    assert config.group_size == 128 and config.symmetric and config.format_version == FORMAT_VERSION


def test_to_dict_is_an_allowlist_without_dataset_or_tokenizer():
    config = AWPConfig(sparsity="2:4", bits=4, dataset=["text"], tokenizer=object(),
                       compressed_modules={"model.layers.0.mlp.up_proj": "2:4+int4"})
    saved = config.to_dict()
    assert list(saved) == list(SAVED_FIELDS) + list(config.options)
    assert "dataset" not in saved and "tokenizer" not in saved
    json.dumps(saved)  # JSON-safe
    assert config.to_json_string() == json.dumps(saved, indent=2, sort_keys=True) + "\n"
    assert dict(config) == saved
    assert "tokenizer" not in repr(config)


def test_from_dict_round_trip():
    config = AWPConfig(method="wanda", sparsity=0.5, bits=4, group_size=64, symmetric=False,
                       compressed_modules={"a.b": "int4"}, modules_to_not_convert=["lm_head", "mlp.down_proj"])
    again = AWPConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.to_dict() == config.to_dict()


def test_from_dict_refuses_unknown_fields_and_versions():
    saved = AWPConfig(bits=4).to_dict()
    with pytest.raises(ValueError, match=r"unknown fields \['new_field'\]"):
        AWPConfig.from_dict({**saved, "new_field": 1})
    with pytest.raises(ValueError, match="format_version"):
        AWPConfig.from_dict({**saved, "format_version": 99})


def test_from_dict_applies_loading_kwargs():
    config, unused = AWPConfig.from_dict(AWPConfig(bits=4).to_dict(), return_unused_kwargs=True, seed=3, other=1)
    assert config.seed == 3 and unused == {"other": 1}

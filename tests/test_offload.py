"""compress() on a model loaded with accelerate's big-model inference: blocks offloaded to disk (offload_folder)
or to a CPU state dict are onloaded one at a time through their hooks, and the result equals the in-memory one."""

import types

import pytest
import torch
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from accelerate.utils import align_module_device
from tiny_models import random_ids, tiny_llama
from transformers import AutoModelForCausalLM

from optimum_awp.calibration import decoder_layers
from optimum_awp.offload import offloaded_modules, onloaded
from optimum_awp.compress import compress
from optimum_awp.config import AWPConfig
from optimum_awp.quantizer import check_loadable

LAYERS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dense")
    tiny_llama(layers=LAYERS).save_pretrained(folder)
    return folder


def disk_map(offloaded: range) -> dict[str, str]:
    """device_map keeping the embeddings, norm, head and blocks outside ``offloaded`` on the CPU, the rest on disk."""
    blocks = {f"model.layers.{i}": "disk" if i in offloaded else "cpu" for i in range(LAYERS)}
    return {"model.embed_tokens": "cpu", **blocks, "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def dense(folder):
    return AutoModelForCausalLM.from_pretrained(folder)


def offloaded(folder, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(folder, device_map=disk_map(range(1, LAYERS)),
                                                 offload_folder=str(tmp_path / "offload"))
    assert offloaded_modules(decoder_layers(model)[2]), "the test needs blocks accelerate offloads"
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("sparsity,bits,pack", [(0.5, None, False), ("2:4", 4, True), ("2:4", 4, False)])
def test_disk_offloaded_equals_in_memory(checkpoint, tmp_path, sparsity, bits, pack):
    config = AWPConfig(method="awp", sparsity=sparsity, bits=bits, max_iterations=5)
    ids = random_ids(4, 16)
    reference = dense(checkpoint)
    want = compress(reference, config, ids, pack=pack, progress=False)
    model = offloaded(checkpoint, tmp_path)
    got = compress(model, config, ids, pack=pack, progress=False)
    assert [(l.name, l.objective) for l in got.layers] == [(l.name, l.objective) for l in want.layers]
    probe = random_ids(2, 12, seed=5)
    assert torch.equal(logits(model, probe), logits(reference, probe))
    block = decoder_layers(model)[3]
    if not pack:  # the compressed weights were written back to the offload folder; the model holds meta tensors
        linear = block.mlp.up_proj
        assert linear.weight.device.type == "meta"
        with align_module_device(linear):
            assert torch.equal(linear.weight, decoder_layers(reference)[3].mlp.up_proj.weight)
    assert "forward" in vars(block), "accelerate's hooked forward of the block was kept"


def test_cpu_state_dict_offload_equals_in_memory(checkpoint):
    """Blocks offloaded by accelerate's cpu_offload-style hooks, their weights in a CPU state dict."""
    config = AWPConfig(method="awp", sparsity=0.5, max_iterations=5)
    ids = random_ids(4, 16)
    reference = dense(checkpoint)
    compress(reference, config, ids, pack=False, progress=False)
    model = dense(checkpoint)
    for block in decoder_layers(model)[1:]:
        for module in block.modules():
            if isinstance(module, torch.nn.Linear) or "norm" in type(module).__name__.lower():
                add_hook_to_module(module, AlignDevicesHook(execution_device="cpu", offload=True))
    assert decoder_layers(model)[1].mlp.up_proj.weight.device.type == "meta"
    compress(model, config, ids, pack=False, progress=False)
    probe = random_ids(2, 12, seed=5)
    assert torch.equal(logits(model, probe), logits(reference, probe))


def test_read_only_store_is_refused_before_any_work(checkpoint):
    model = dense(checkpoint)
    linear = decoder_layers(model)[1].mlp.up_proj
    store = types.MappingProxyType({"weight": linear.weight.detach().clone()})
    add_hook_to_module(linear, AlignDevicesHook(execution_device="cpu", offload=True, weights_map=store))
    with pytest.raises(ValueError, match="mappingproxy, which optimum-awp cannot write compressed weights back to"):
        compress(model, AWPConfig(method="awp", sparsity=0.5, max_iterations=2), random_ids(2, 8), progress=False)
    assert linear.weight.device.type == "meta", "nothing was onloaded"


def test_onloaded_restores_offload_and_device(checkpoint, tmp_path):
    model = offloaded(checkpoint, tmp_path)
    block = decoder_layers(model)[1]
    with onloaded(block) as was_offloaded:
        assert was_offloaded and block.self_attn.q_proj.weight.device.type == "cpu"
    assert block.self_attn.q_proj.weight.device.type == "meta"
    assert all(m._hf_hook.offload for m in offloaded_modules(block).values())
    with onloaded(decoder_layers(model)[0]) as was_offloaded:
        assert not was_offloaded


def test_compress_on_load_with_disk_offload_is_refused_with_the_way_that_works():
    with pytest.raises(ValueError, match=r"offloads to disk, which compressing on load cannot do.*optimum_awp.compress"):
        check_loadable(AWPConfig(sparsity=0.5), pre_quantized=False, device_map={"model.layers.0": "disk"})

"""Offloaded blocks (accelerate's big-model inference): onload one block through its own hooks, write it back.

A dense model loaded with ``device_map``/``max_memory``/``offload_folder`` keeps most blocks' tensors in an
``AlignDevicesHook``'s weights map (a CPU state dict or an offload folder) and on ``meta`` in the model.
``onloaded`` brings one block in for the block walk's step (``calibration.walk_blocks``) and writes its
compressed tensors back to that store afterwards, so only one dense block is in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

def offloaded_modules(module: nn.Module) -> dict[str, nn.Module]:
    """The submodules of ``module`` (itself included, by relative name) whose tensors accelerate offloads:
    an ``AlignDevicesHook`` with ``offload=True`` keeps them in its ``weights_map`` and on ``meta`` in the model."""
    from accelerate.utils import has_offloaded_params

    return {name: m for name, m in module.named_modules() if has_offloaded_params(m)}


def _store_of(hook: Any) -> tuple[Any, str]:
    """(writable mapping behind the hook's weights_map, key prefix); ValueError when there is none."""
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset

    weights = hook.weights_map
    prefix = ""
    if isinstance(weights, PrefixedDataset):
        weights, prefix = weights.dataset, weights.prefix
    if isinstance(weights, (dict, OffloadedWeightsLoader)):
        return weights, prefix
    raise ValueError(f"accelerate keeps these weights in a {type(weights).__name__}, which optimum-awp cannot write "
                     "compressed weights back to; load the model with device_map and offload_folder (big-model "
                     "inference) so that offloaded weights live in a CPU state dict or an offload folder.")


def _write(store: Any, key: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` under ``key`` in an offload store: a dict, or accelerate's OffloadedWeightsLoader (its CPU
    state dict, or its folder through accelerate's ``offload_weight``)."""
    from accelerate.utils import offload_weight

    value = tensor.detach().to("cpu")
    if isinstance(store, dict):
        store[key] = value.clone()
    elif key in store.state_dict:
        store.state_dict[key] = value.clone()
    elif store.save_folder is not None:
        offload_weight(value, key, store.save_folder, index=store.index)
        if key not in store.all_keys:
            store.all_keys.append(key)
    else:
        raise ValueError(f"{key} is offloaded to disk without an offload folder to write to; load the model with "
                         "offload_folder=... to compress it block by block.")


@contextmanager
def onloaded(block: nn.Module, device: torch.device | str | None = None, *, write_back: bool = True) -> Iterator[bool]:
    """Onload the tensors accelerate offloads in ``block`` for the duration, and offload them again after.

    Uses each module's own ``AlignDevicesHook``: its ``pre_forward`` brings the tensors from its weights map to
    its execution device (``device`` overrides it), then offloading is paused, so that forwards in between
    neither reload the stored weights nor drop the ones written in place. On a normal exit, with ``write_back``,
    every tensor of a module still in ``block`` is written to the hook's store (``_write``); after an error the
    store keeps what it held. Then offloading is resumed and the hook's ``post_forward`` sets the tensors back
    to ``meta``. Yields whether anything was offloaded.
    Raises ValueError before onloading anything when a store cannot be written back.
    """
    from accelerate.utils import named_module_tensors

    modules = offloaded_modules(block)
    if not modules:
        yield False
        return
    hooks = {name: m._hf_hook for name, m in modules.items()}
    stores = {name: _store_of(hook) for name, hook in hooks.items()} if write_back else {}
    original = {name: hook.execution_device for name, hook in hooks.items()}
    for name, module in modules.items():
        hook = hooks[name]
        if device is not None:
            hook.execution_device = torch.device(device)
        hook.pre_forward(module)
        hook.offload = False
    completed = False
    try:
        yield True
        completed = True
    finally:
        inside = {id(m) for m in block.modules()}
        for name, module in modules.items():
            hook = hooks[name]
            if write_back and completed and id(module) in inside:
                store, prefix = stores[name]
                for tensor_name, tensor in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                                                recurse=hook.place_submodules,
                                                                remove_non_persistent=True):
                    _write(store, f"{prefix}{tensor_name}", tensor)
            hook.offload = True
            hook.post_forward(module, None)
            hook.execution_device = original[name]

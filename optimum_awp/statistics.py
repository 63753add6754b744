"""Statistics of the linears' inputs: C = X Xᵀ / n, mean |x| and (dense targets) X̃ Xᵀ / n, gathered by hooks.

- ``StatAccumulator``: streams the sums over batches of one input.
- ``BlockStatistics``: forward hooks on a block's ``nn.Linear`` modules; linears fed the same input tensor
  (q/k/v, gate/up) share one accumulator, detected rather than named.
- ``InputStatistics``: what a linear's solver receives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class InputStatistics:
    """The calibration statistics of one linear's input (what ``solvers.LayerStats`` holds for a solver).

    Attributes:
        covariance: C = X Xᵀ / n, (in, in), float32 or float64.
        mean_abs: mean |x_j| over tokens, (in,).
        nsamples: the number of tokens n.
        cross: X̃ Xᵀ / n, (in, in), where X̃ are the dense model's inputs to the same linear for the same tokens
            (``walk_blocks(dense_targets=True)``, from the second block on); None otherwise.
    """

    covariance: torch.Tensor
    mean_abs: torch.Tensor
    nsamples: int
    cross: torch.Tensor | None = None


class StatAccumulator:
    """Streams X Xᵀ and Σ|x| over batches of inputs of width ``features``; with ``paired``, also X̃ Xᵀ for the
    dense model's inputs X̃ to the same linear (given beside each batch).

    The sums are kept, not running means, in ``dtype`` (float32 or float64).
    """

    def __init__(self, features: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None,
                 paired: bool = False):
        self.outer = torch.zeros(features, features, dtype=dtype, device=device)
        self.abs_sum = torch.zeros(features, dtype=dtype, device=device)
        self.cross = torch.zeros(features, features, dtype=dtype, device=device) if paired else None
        self.count = 0

    def add(self, x: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        """Accumulate ``x`` of shape (..., features): every leading index is one token; ``dense`` (same shape,
        the dense model's input for the same tokens) is required when the accumulator is paired."""
        x = x.detach().reshape(-1, x.shape[-1]).to(self.outer.dtype)
        self.outer.addmm_(x.T, x)
        self.abs_sum.add_(x.abs().sum(dim=0))
        if self.cross is not None:
            if dense is None or dense.shape[-1] != x.shape[-1] or dense.numel() != x.numel():
                raise RuntimeError("a paired statistic needs the dense input of the same tokens beside each batch.")
            dense = dense.detach().reshape(-1, x.shape[-1]).to(self.outer.dtype)
            self.cross.addmm_(dense.T, x)
        self.count += x.shape[0]

    def stats(self) -> InputStatistics:
        """C = X Xᵀ / n (in, in), mean |x_j| (in,), n, and X̃ Xᵀ / n when paired."""
        n = max(self.count, 1)
        cross = self.cross / n if self.cross is not None else None
        return InputStatistics(covariance=self.outer / n, mean_abs=self.abs_sum / n, nsamples=self.count,
                               cross=cross)


class BlockStatistics:
    """Forward hooks gathering InputStatistics for the chosen linears of one block.

    Linears that receive the very same input tensor object within one forward of the block (q/k/v
    after the attention norm, gate/up after the MLP norm) share one accumulator: it is detected, not
    hard-coded by name. Use as a context manager around the forwards of the block.

    ``paired``: every accumulating forward must follow a forward of the same tokens' dense inputs run
    inside ``recording()``; each linear's recorded input X̃ is paired with its input X, giving
    ``InputStatistics.cross`` = X̃ Xᵀ / n.

    Args:
        block: the decoder block.
        linears: name -> nn.Linear inside ``block`` to gather statistics for.
        dtype: accumulation dtype, torch.float32 or torch.float64.
        paired: also accumulate X̃ Xᵀ against the inputs recorded by ``recording()``.
    """

    def __init__(self, block: nn.Module, linears: dict[str, nn.Linear], dtype: torch.dtype = torch.float32,
                 paired: bool = False):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"statistics dtype must be torch.float32 or torch.float64, got {dtype}.")
        self.block = block
        self.linears = linears
        self.dtype = dtype
        self.paired = paired
        self._owner: dict[str, StatAccumulator] = {}
        self._seen: list[tuple[torch.Tensor, StatAccumulator]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._recording = False
        self._recorded: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "BlockStatistics":
        self._handles.append(self.block.register_forward_pre_hook(self._new_forward))
        self._handles.append(self.block.register_forward_hook(self._end_forward))
        for name, linear in self.linears.items():
            self._handles.append(linear.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen.clear()

    def _new_forward(self, module: nn.Module, args: tuple) -> None:
        self._seen.clear()

    def _end_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._seen.clear()
        if self.paired and not self._recording:
            self._recorded = {}  # each recording pairs with one accumulating forward

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Within: the block's forwards record each linear's input (the dense model's, for the tokens of the next
        accumulating forward) instead of accumulating anything."""
        if not self.paired:
            raise RuntimeError("recording() pairs dense inputs with the next forward: build BlockStatistics(paired=True).")
        self._recording, self._recorded = True, {}
        try:
            yield
        finally:
            self._recording = False

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if self._recording:
                self._recorded[name] = x.detach()
                return
            for seen, acc in self._seen:
                if seen is x:
                    self._owner.setdefault(name, acc)
                    return
            acc = self._owner.get(name)
            if acc is None:
                acc = self._owner[name] = StatAccumulator(x.shape[-1], self.dtype, x.device, self.paired)
            acc.add(x, self._recorded.get(name) if self.paired else None)
            self._seen.append((x, acc))

        return hook

    def groups(self) -> list[list[str]]:
        """Names of the linears sharing each statistic, in module order."""
        by_acc: dict[int, list[str]] = {}
        for name in self.linears:
            if name in self._owner:
                by_acc.setdefault(id(self._owner[name]), []).append(name)
        return list(by_acc.values())

    def stats(self) -> dict[str, InputStatistics]:
        """name -> InputStatistics; linears in one group get the same InputStatistics object."""
        out: dict[str, InputStatistics] = {}
        for group in self.groups():
            shared = self._owner[group[0]].stats()
            out.update({name: shared for name in group})
        missing = [name for name in self.linears if name not in out]
        if missing:
            raise RuntimeError(f"No calibration input reached {missing}: they were not called in the block forward.")
        return out

"""INT4 token embeddings and the output head tied to them: one packed tensor serves both.

``AWPEmbedding`` stores the (vocab, dim) embedding in the "int4" format of ``formats.py`` (rows are the
format's output features, the embedding dimension its inputs): qweight int32 (vocab, dim/8), scales
(vocab, dim/g) in the model dtype, zeros uint8 (vocab, dim/g) on asymmetric grids, and ``embed_scale``, the
float32 factor that transformers' scaled word embeddings (Gemma, ...) multiply the looked-up rows by (1 for a
plain ``nn.Embedding``). A lookup gathers and dequantizes only the rows it needs.

``AWPTiedHead`` is the output head of a model whose head is tied to its input embedding
(``tie_word_embeddings``): an ``AWPLinear`` of format "int4" that holds no tensor of its own and reads the
embedding's packed buffers, so the checkpoint and the memory hold the packed rows once, and the head runs on
the INT4 kernels of ``kernels.py`` (torch's CPU INT4 kernel, tinygemm on CUDA).
"""

from __future__ import annotations

import torch
from torch import nn

from .formats import get_format
from .packing import dequantize_int4, pack_int4, unpack_int4
from .linear import AWPLinear

FORMAT = "int4"


def embedding_scale(module: nn.Module) -> float:
    """The factor ``module``'s forward multiplies looked-up rows by: 1.0 for ``nn.Embedding`` itself, the
    ``scalar_embed_scale`` (or a real ``embed_scale`` tensor) of transformers' scaled word embeddings.

    Raises ValueError for an ``nn.Embedding`` subclass whose scale cannot be read: its forward may do more than
    a lookup, and replacing it would be silently wrong.
    """
    if type(module) is nn.Embedding:
        return 1.0
    scalar = getattr(module, "scalar_embed_scale", None)
    if isinstance(scalar, (int, float)) and not isinstance(scalar, bool):
        return float(scalar)
    tensor = getattr(module, "embed_scale", None)
    if isinstance(tensor, torch.Tensor) and tensor.numel() == 1 and tensor.device.type != "meta":
        return float(tensor)
    if isinstance(tensor, (int, float)) and not isinstance(tensor, bool):
        return float(tensor)
    raise ValueError(f"{type(module).__name__} is an nn.Embedding subclass without a readable embed_scale; "
                     "embedding_bits supports nn.Embedding and transformers' scaled word embeddings only.")


class AWPEmbedding(nn.Module):
    """A token embedding stored as INT4 rows: forward(ids) = dequantize(rows[ids]) * embed_scale.

    Buffers (vocab V, dim D, group size g):
        qweight int32 (V, D/8); scales (V, D/g) dtype; zeros uint8 (V, D/g) if asymmetric;
        embed_scale float32 () (saved, so a checkpoint needs no knowledge of the original class).

    Attributes:
        num_embeddings, embedding_dim, padding_idx: as ``nn.Embedding``.
        group_size, symmetric: the INT4 grid.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        padding_idx: int | None = None,
        group_size: int = 128,
        symmetric: bool = True,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype (the model dtype), got {dtype}.")
        self._packed_names = get_format(FORMAT).register_buffers(self, num_embeddings, embedding_dim, group_size,
                                                                 symmetric, dtype, device)
        self.register_buffer("embed_scale", torch.ones((), dtype=torch.float32, device=device))
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.group_size = group_size
        self.symmetric = bool(symmetric)

    @classmethod
    def empty(cls, like: nn.Embedding, *, group_size: int, symmetric: bool, device="meta") -> "AWPEmbedding":
        """A module shaped like ``like`` with uninitialized buffers (meta by default), ready to be loaded."""
        return cls(like.num_embeddings, like.embedding_dim, padding_idx=like.padding_idx, group_size=group_size,
                   symmetric=symmetric, dtype=like.weight.dtype, device=device)

    @classmethod
    def from_parts(
        cls,
        embedding: nn.Embedding,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor | None,
        *,
        group_size: int,
        symmetric: bool,
    ) -> "AWPEmbedding":
        """Pack the INT4 grid of ``embedding``'s weight: ``codes`` uint8 (V, D), ``scales``/``zeros`` (V, D/g)
        (``zeros`` None on a symmetric grid). dtype, device, padding index and embed_scale come from
        ``embedding``."""
        weight = embedding.weight
        module = cls(embedding.num_embeddings, embedding.embedding_dim, padding_idx=embedding.padding_idx,
                     group_size=group_size, symmetric=symmetric, dtype=weight.dtype, device=weight.device)
        expected = (embedding.num_embeddings, embedding.embedding_dim)
        if tuple(codes.shape) != expected:
            raise ValueError(f"codes has shape {tuple(codes.shape)}; expected {expected}.")
        if symmetric != (zeros is None):
            raise ValueError(f"symmetric={symmetric} takes {'no' if symmetric else ''} zeros; got "
                             f"{'None' if zeros is None else 'zeros'}.")
        module.qweight = pack_int4(codes.to(weight.device))
        module.scales = scales.to(device=weight.device, dtype=weight.dtype).contiguous()
        if zeros is not None:
            module.zeros = zeros.to(device=weight.device, dtype=torch.uint8).contiguous()
        module.embed_scale = torch.tensor(embedding_scale(embedding), dtype=torch.float32, device=weight.device)
        return module

    # ------------------------------------------------------------------------------------------- views
    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def packed_buffers(self) -> dict[str, torch.Tensor]:
        """The "int4" format's buffers (qweight, scales[, zeros]), by name: what a tied head reads."""
        return {name: self._buffers[name] for name in self._packed_names}

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.packed_buffers().values())

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense (V, D) rows before ``embed_scale``, in ``dtype`` (default the model dtype)."""
        return get_format(FORMAT).dequantize(self.packed_buffers(), dtype or self.dtype)

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(...,) int ids -> (..., D) in the model dtype."""
        flat = input_ids.reshape(-1)
        zeros = self.zeros[flat] if "zeros" in self._packed_names else None
        rows = dequantize_int4(unpack_int4(self.qweight[flat]), self.scales[flat], zeros, self.dtype)
        if float(self.embed_scale) != 1.0:
            rows = rows * self.embed_scale.to(self.dtype)  # the scaled embeddings round the scale to the dtype
        return rows.view(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, format={FORMAT}, group_size={self.group_size}, "
                f"symmetric={self.symmetric}, weight_bytes={self.weight_bytes()}")


class AWPTiedHead(AWPLinear):
    """The output head y = x Eᵀ tied to an ``AWPEmbedding`` E (V, D): an "int4" ``AWPLinear`` without tensors.

    It keeps a plain reference to the embedding (not a submodule, so its state_dict is empty and the
    checkpoint holds the packed rows once) and reads the embedding's buffers on every forward, so it follows
    ``.to()`` and reloads of the embedding. ``weight_bytes()`` is 0: the bytes are the embedding's.
    """

    def __init__(self, embedding: AWPEmbedding) -> None:
        nn.Module.__init__(self)
        if not isinstance(embedding, AWPEmbedding):
            raise ValueError(f"AWPTiedHead ties to an AWPEmbedding, got {type(embedding).__name__}.")
        self.in_features = embedding.embedding_dim
        self.out_features = embedding.num_embeddings
        self.format = FORMAT
        self.group_size = embedding.group_size
        self.symmetric = embedding.symmetric
        self.register_buffer("bias", None)
        self._tied = (embedding,)  # a tuple: nn.Module does not register it as a submodule
        self._kernel_cache = {}
        self._dispatch = {}
        self._stamp = ()

    @property
    def embedding(self) -> AWPEmbedding:
        return self._tied[0]

    def packed_buffers(self) -> dict[str, torch.Tensor]:
        return self.embedding.packed_buffers()

    def weight_bytes(self) -> int:
        return 0

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied to the embedding"


__all__ = ["AWPEmbedding", "AWPTiedHead", "embedding_scale"]

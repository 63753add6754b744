"""The Triton source of the 2:4 forward kernels (imports triton: load this module only on first use).

One kernel, ``sparse24_matmul``, computes y = x Wᵀ for a weight stored in the canonical "2:4" or
"2:4+int4" buffers (docs/formats.md), read as they are saved: no repacked copy. Each program owns a
(BLOCK_T tokens) x (BLOCK_N output rows) tile of y and walks its share of the inputs (split-K) in
BLOCK_K-wide tiles. Per tile it rebuilds the dense weight tile (BLOCK_N, BLOCK_K) in registers:

- dense input k lies in group k // 4 at position q = k % 4; the group's positions p0 < p1 come from
  meta byte k // 8 (bits 4 * ((k // 4) % 2) .. +3); k is kept where q == p0 or q == p1, as kept value
  2 * (k // 4) + (q == p1) of the row's (in / 2) kept values;
- "2:4+int4": that kept value's code is nibble (kept % 8) of qweight word k // 16 (the word does not
  depend on the positions: the two kept values of a group share it), dequantized as (c - z) * s with
  z = 8 (symmetric) or zeros[row, k // GROUP] and s = scales[row, k // GROUP], computed in fp32 and
  rounded once to the activation dtype: exactly the reference's weight;
- "2:4": the kept value itself, read from values[row, kept] (fp16/bf16);
- pruned inputs get 0.

All these loads have addresses that depend on k only (no data-dependent gather, except the "2:4"
value pick between two neighbours); several lanes read the same word or byte, which the L1 serves.
The tile is multiplied with the activations by ``tl.dot`` (tensor cores, fp16/bf16 operands, fp32
accumulator) on tiles of at least 16 tokens, also for a single token: rows past the tokens are masked
loads of zeros. Decode is bound by reading the weight, not by the tensor cores, and split-K gives a
(tokens x 4096) GEMV enough programs to keep loads in flight (the layout of PyTorch's split-K GPTQ
Triton kernel). The kernel uses Triton builtins only (no ``tl.sum``/``tl.zeros``, which are
``@triton.jit`` helpers fixed at ``import triton`` to compiled or interpreted), so one process can run
it interpreted (TRITON_INTERPRET=1 set after triton was imported) and compiled.

EMULATE_BF16 (only under Triton's interpreter, bf16 activations) avoids two interpreter defects of
triton 3.9: its tl.dot multiplies bf16 operands as raw uint16 integers, and its fp32 -> bf16 cast
truncates instead of rounding to nearest even. The weight is then rounded to bf16 by integer
arithmetic on its fp32 bits (round to nearest even, as the GPU's cast), kept in fp32 (exactly a bf16
value), multiplied with fp32 copies of the activations (exact upcasts), and the fp32 result is
rounded to bf16 by the caller (torch). The arithmetic is the GPU path's; only the casts' code differs.
"""

from __future__ import annotations

import triton
import triton.language as tl


def sparse24_matmul(
    x_ptr,
    weight_ptr,
    meta_ptr,
    scales_ptr,
    zeros_ptr,
    out_ptr,
    tokens,
    out_features,
    in_features,
    k_per_split,
    stride_x,
    stride_weight,
    stride_meta,
    stride_scales,
    stride_out_split,
    QUANTIZED: tl.constexpr,
    ASYMMETRIC: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    """out[split, t, n] = sum over this split's inputs k of x[t, k] * W[n, k].

    Shapes: x (tokens, in_features) fp16/bf16, row stride stride_x; weight: qweight int32 (out, in/16)
    ("2:4+int4", QUANTIZED) or values (out, in/2) in x's dtype ("2:4"); meta uint8 (out, in/8); scales
    (out, in/GROUP) and zeros uint8 (same shape, ASYMMETRIC only); out (splits, tokens, out_features)
    contiguous per split, fp32 when split over k or EMULATE_BF16, else x's dtype. Grid: (cdiv(out, BLOCK_N),
    cdiv(tokens, BLOCK_T), splits); split s covers inputs [s * k_per_split, (s + 1) * k_per_split).
    in_features and k_per_split are multiples of BLOCK_K; GROUP and BLOCK_K divide one another;
    BLOCK_T, BLOCK_N, BLOCK_K >= 16 (tl.dot).
    """
    pid_n = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    rows_t = offs_t.to(tl.int64)  # tokens x features can pass 2**31 in prefill
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_t = offs_t < tokens
    mask_n = offs_n < out_features
    rows = tl.where(mask_n, offs_n, 0)  # rows past the end read row 0; their results are never stored
    offs_k = tl.arange(0, BLOCK_K)
    position = offs_k % 4
    meta_shift = ((offs_k // 4) % 2) * 4
    acc = tl.full((BLOCK_T, BLOCK_N), 0.0, tl.float32)
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, in_features)
    for k0 in range(k_begin, k_end, BLOCK_K):
        k = k0 + offs_k
        x = tl.load(x_ptr + rows_t[:, None] * stride_x + k[None, :], mask=mask_t[:, None], other=0.0)
        meta = tl.load(meta_ptr + rows[:, None] * stride_meta + (k // 8)[None, :]).to(tl.int32)
        p0 = (meta >> meta_shift[None, :]) & 3
        p1 = (meta >> (meta_shift + 2)[None, :]) & 3
        is_first = p0 == position[None, :]
        is_second = p1 == position[None, :]
        kept = (k // 4)[None, :] * 2 + is_second.to(tl.int32)  # index into the row's in/2 kept values
        if QUANTIZED:
            word = tl.load(weight_ptr + rows[:, None] * stride_weight + (k // 16)[None, :])
            code = ((word >> ((kept % 8) * 4)) & 15).to(tl.float32)
            if GROUP >= BLOCK_K:  # the tile lies in one group: one (BLOCK_N, 1) column of scales
                group_offsets = rows[:, None] * stride_scales + k0 // GROUP
            else:
                group_offsets = rows[:, None] * stride_scales + (k // GROUP)[None, :]
            scale = tl.load(scales_ptr + group_offsets).to(tl.float32)
            if ASYMMETRIC:
                zero = tl.load(zeros_ptr + group_offsets).to(tl.float32)
                value = (code - zero) * scale
            else:
                value = (code - 8.0) * scale
        else:
            value = tl.load(weight_ptr + rows[:, None] * stride_weight + kept).to(tl.float32)
        if EMULATE_BF16:  # round to the nearest bf16 on the fp32 bits, keep fp32 (see the module doc)
            bits = value.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            w = tl.where(is_first | is_second, bits.to(tl.float32, bitcast=True), 0.0)
            x = x.to(tl.float32)
        else:
            w = tl.where(is_first | is_second, value, 0.0).to(x.dtype)
        acc += tl.dot(x, tl.trans(w))
    out = out_ptr + pid_k.to(tl.int64) * stride_out_split + rows_t[:, None] * out_features + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_n[None, :])


_JITTED: dict[bool, object] = {}


def jitted(interpret: bool):
    """``sparse24_matmul`` compiled by ``triton.jit`` (interpreted when ``interpret``: triton.jit reads
    TRITON_INTERPRET itself, so the caller passes the mode it found and each mode is built once)."""
    if interpret not in _JITTED:
        _JITTED[interpret] = triton.jit(sparse24_matmul)
    return _JITTED[interpret]

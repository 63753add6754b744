"""optimum_awp.nn.packing and formats: exact pack/unpack both ways, bit orders, refusals, the registry."""

import pytest
import torch

from optimum_awp.nn import formats as F
from optimum_awp.nn import packing as P

SHAPES = [(1, 16), (3, 32), (16, 64), (64, 640), (17, 2048)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------------- INT4
@pytest.mark.parametrize("shape", SHAPES)
def test_int4_round_trip_is_bit_exact(shape):
    codes = torch.randint(0, 16, shape, dtype=torch.uint8)
    qweight = P.pack_int4(codes)
    assert qweight.dtype == torch.int32
    assert qweight.shape == (shape[0], shape[1] // 8)
    assert torch.equal(P.unpack_int4(qweight), codes)
    # and the other way: any int32 word is 8 codes
    words = torch.randint(-(2**31), 2**31 - 1, (shape[0], shape[1] // 8), dtype=torch.int32)
    assert torch.equal(P.pack_int4(P.unpack_int4(words)), words)


def test_int4_nibble_order_least_significant_first():
    codes = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 15, 14, 13, 12, 11, 10, 9, 8]], dtype=torch.uint8)
    qweight = P.pack_int4(codes)
    assert qweight[0, 0].item() == 0x76543210
    assert qweight[0, 1].item() == 0x89ABCDEF - 2**32  # nibble 7 = 8 sets the sign bit
    assert torch.equal(P.pack_int4(codes.to(torch.int64)), qweight)


@pytest.mark.parametrize(
    "codes, match",
    [
        (torch.zeros(4, 12, dtype=torch.uint8), "multiple of 8"),
        (torch.zeros(4, 0, dtype=torch.uint8), "multiple of 8"),
        (torch.zeros(16, dtype=torch.uint8), "2-D"),
        (torch.zeros(2, 8, dtype=torch.float32), "dtype"),
        (torch.full((2, 8), 16, dtype=torch.int32), r"\[0, 15\]"),
        (torch.full((2, 8), -1, dtype=torch.int32), r"\[0, 15\]"),
    ],
)
def test_pack_int4_refuses(codes, match):
    with pytest.raises(ValueError, match=match):
        P.pack_int4(codes)


def test_unpack_int4_refuses_wrong_dtype():
    with pytest.raises(ValueError, match="int32"):
        P.unpack_int4(torch.zeros(2, 2, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group_size", [-1, 32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_dequantize_int4_is_exact_product_rounded_once(dtype, group_size, symmetric):
    codes = torch.randint(0, 16, (8, 256), dtype=torch.uint8)
    n_groups = P.num_groups(256, group_size)
    scales = (torch.rand(8, n_groups) + 0.1).to(dtype)
    zeros = None if symmetric else torch.randint(0, 16, (8, n_groups)).to(torch.uint8)
    g = 256 // n_groups
    z = 8.0 if symmetric else zeros.double().repeat_interleave(g, 1)
    exact = (codes.double() - z) * scales.double().repeat_interleave(g, 1)  # exact in float64
    assert torch.equal(P.dequantize_int4(codes, scales, zeros), exact.to(dtype))
    assert torch.equal(P.dequantize_int4(codes, scales, zeros, torch.float32), exact.float())


def test_dequantize_int4_refuses_bad_scales():
    with pytest.raises(ValueError, match="scales"):
        P.dequantize_int4(torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 3))
    with pytest.raises(ValueError, match="zeros"):
        P.dequantize_int4(torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 2), torch.ones(4, 1))


def test_num_groups():
    assert P.num_groups(640, 128) == 5
    assert P.num_groups(640, -1) == 1
    with pytest.raises(ValueError, match="group_size=256"):
        P.num_groups(640, 256)
    with pytest.raises(ValueError, match="group_size"):
        P.num_groups(640, 0)


# ----------------------------------------------------------------------------------------------- 2:4
def random_2of4(out_features, in_features, dtype=torch.float32):
    w = torch.randn(out_features, in_features, dtype=dtype)
    w = torch.where(w == 0, torch.ones_like(w), w)  # kept entries nonzero (pack_2of4 infers keep = w != 0)
    scores = torch.rand(out_features, in_features // 4, 4)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(2, -1).indices, True)
    return w * keep.view_as(w), keep.view_as(w)


@pytest.mark.parametrize("shape", [(1, 8), (3, 16), (16, 64), (64, 640), (17, 2048)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_2of4_round_trip_is_exact(shape, dtype):
    w, keep = random_2of4(*shape, dtype=dtype)
    values, meta = P.pack_2of4(w)
    assert values.shape == (shape[0], shape[1] // 2) and values.dtype == dtype
    assert meta.shape == (shape[0], shape[1] // 8) and meta.dtype == torch.uint8
    assert torch.equal(P.unpack_2of4(values, meta), w)
    assert torch.equal(P.mask_2of4(meta), keep)
    # with an explicit mask, entries outside it are dropped even if non-zero
    dense = torch.randn(*shape, dtype=dtype)
    values, meta = P.pack_2of4(dense, keep)
    assert torch.equal(P.unpack_2of4(values, meta), dense * keep)
    # meta -> positions -> meta is the identity
    assert torch.equal(P.pack_2of4(P.unpack_2of4(values, meta), P.mask_2of4(meta))[1], meta)


def test_2of4_meta_bit_order():
    # row: group 0 keeps inputs 1, 3; group 1 keeps inputs 4+0, 4+2
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 0.0]])
    values, meta = P.pack_2of4(w)
    assert values.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    # bits 1..0 = 1, 3..2 = 3, 5..4 = 0, 7..6 = 2
    assert meta.item() == (1 << 0) | (3 << 2) | (0 << 4) | (2 << 6)


def test_2of4_groups_with_fewer_than_two_kept_are_deterministic():
    w = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0],  # empty group, then a group with one entry at 2
            [0.0, 0.0, 0.0, 7.0, 1.0, 0.0, 0.0, 0.0],  # one entry at 3, one entry at 0
        ]
    )
    values, meta = P.pack_2of4(w)
    positions = P._unpack_positions(meta).tolist()
    assert positions == [[[0, 1], [0, 2]], [[0, 3], [0, 1]]]
    assert values.tolist() == [[0.0, 0.0, 0.0, 5.0], [0.0, 7.0, 1.0, 0.0]]
    assert torch.equal(P.unpack_2of4(values, meta), w)
    assert torch.equal(P.pack_2of4(w)[1], meta)  # same input, same choice


def test_2of4_refuses_non_2of4_and_bad_shapes():
    w = torch.zeros(2, 8)
    w[1, 4:7] = 1.0
    with pytest.raises(ValueError, match=r"row 1, inputs 4\.\.7 keep 3"):
        P.pack_2of4(w)
    with pytest.raises(ValueError, match="multiple of 8"):
        P.pack_2of4(torch.zeros(2, 12))
    with pytest.raises(ValueError, match="mask has shape"):
        P.pack_2of4(torch.zeros(2, 8), torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="meta has shape"):
        P.unpack_2of4(torch.zeros(2, 8), torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="2-D"):
        P.pack_2of4(torch.zeros(8))


# ----------------------------------------------------------------------------------------------- 2:4 + INT4
@pytest.mark.parametrize("shape", [(1, 16), (5, 32), (16, 640), (17, 2048)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_2of4_int4_round_trip_is_bit_exact(shape, symmetric):
    out_features, in_features = shape
    _, keep = random_2of4(*shape)
    keep[0, :4] = False  # an empty group
    keep[0, 4:8] = torch.tensor([False, False, True, False])  # a group with one entry
    group = 16
    zeros = None if symmetric else torch.randint(0, 16, (out_features, in_features // group), dtype=torch.uint8)
    zero_code = P.zero_codes(out_features, in_features, zeros).expand(shape)
    codes = torch.where(keep, torch.randint(0, 16, shape, dtype=torch.uint8), zero_code)
    qweight, meta = P.pack_2of4_int4(codes, keep)
    assert qweight.shape == (out_features, in_features // 16) and qweight.dtype == torch.int32
    assert meta.shape == (out_features, in_features // 8)
    assert torch.equal(P.unpack_2of4_int4(qweight, meta, zeros), codes)
    scales = torch.rand(out_features, in_features // group) + 0.5
    dense = P.dequantize_int4(P.unpack_2of4_int4(qweight, meta, zeros), scales, zeros)
    assert torch.equal(dense[~keep], torch.zeros_like(dense[~keep]))  # pruned entries exactly 0


def test_2of4_int4_refuses_bad_shapes():
    with pytest.raises(ValueError, match="multiple of 16"):
        P.pack_2of4_int4(torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask has shape"):
        P.pack_2of4_int4(torch.zeros(2, 16, dtype=torch.uint8), torch.zeros(2, 32, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------- registry
def test_registry_lists_formats_and_rejects_duplicates():
    assert set(F.FORMATS) >= {"int4", "2:4", "2:4+int4"}
    with pytest.raises(ValueError, match=r"known formats: \['2:4', '2:4\+int4', 'int4'"):
        F.get_format("int3")
    with pytest.raises(ValueError, match="already registered"):
        F.register_format(F.FORMATS["int4"])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("int4", {"qweight": ((64, 80), torch.int32), "scales": ((64, 5), torch.bfloat16)}),
        ("2:4", {"values": ((64, 320), torch.bfloat16), "meta": ((64, 80), torch.uint8)}),
        (
            "2:4+int4",
            {
                "qweight": ((64, 40), torch.int32),
                "meta": ((64, 80), torch.uint8),
                "scales": ((64, 5), torch.bfloat16),
                "zeros": ((64, 5), torch.uint8),
            },
        ),
    ],
)
def test_buffer_shapes(name, expected):
    symmetric = name != "2:4+int4"
    assert F.get_format(name).buffer_shapes(64, 640, 128, symmetric, torch.bfloat16) == expected


@pytest.mark.parametrize(
    "name, in_features, group_size, match",
    [
        ("int4", 20, 128, "multiple of 8"),
        ("int4", 640, 256, "group_size=256"),
        ("2:4", 12, 128, "multiple of 8"),
        ("2:4+int4", 24, -1, "multiple of 16"),
    ],
)
def test_buffer_shapes_refuse_indivisible(name, in_features, group_size, match):
    with pytest.raises(ValueError, match=match):
        F.get_format(name).buffer_shapes(8, in_features, group_size, True, torch.bfloat16)


def test_int4_packing_is_compressed_tensors_pack_quantized():
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    codes = torch.randint(0, 16, (8, 256), dtype=torch.uint8)
    signed = (codes.to(torch.int16) - 8).to(torch.int8)
    assert torch.equal(P.pack_int4(codes), helpers.pack_to_int32(signed, 4))

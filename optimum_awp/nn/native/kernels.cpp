// Entry points of optimum_awp's CPU kernels for 2:4-sparse linears ("2:4" and "2:4+int4").
//
// This translation unit is compiled for the baseline x86-64 target; it detects the CPU's features,
// checks the tensors and splits the output rows over torch's intra-op threads (at::parallel_for, so
// torch.set_num_threads applies). The arithmetic lives in kernels_avx512.cpp and kernels_avx2.cpp.
//
//   sparse_linear(x, w, meta, scales, zeros, kind, group, isa)  y = x W^T, decode-style (GEMV)
//   sparse_linear_tiled(..., tile_rows)                          row tiles decoded to dense + at::mm
//   decode_dense(w, meta, scales, zeros, kind, group, isa, in)   the dense weight (out, in)
//   cpu_isa()                                                    2: AVX-512 path, 1: AVX2 path, 0: none
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "awp_native.h"

namespace {

int64_t detect_isa() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
                    __builtin_cpu_supports("bmi2");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vbmi2");
  return avx512 ? 2 : (avx2 ? 1 : 0);
}

int64_t cpu_isa() {
  static const int64_t isa = detect_isa();
  return isa;
}

// AVX2 tables, indexed by a meta byte (two groups of 4 inputs): for input lane i of the byte's 8
// inputs, idx = the index (0..3) of its stored value and mask = all ones, or 0 / 0 where it is pruned.
struct Tables {
  int32_t idx[256][8];
  int32_t mask[256][8];
  Tables() {
    for (int mb = 0; mb < 256; ++mb)
      for (int i = 0; i < 8; ++i) {
        const int g = i / 4, pos = i % 4, nib = (mb >> (4 * g)) & 15, p0 = nib & 3, p1 = nib >> 2;
        const int k = pos == p0 ? 0 : (pos == p1 ? 1 : -1);
        idx[mb][i] = k < 0 ? 0 : 2 * g + k;
        mask[mb][i] = k < 0 ? 0 : -1;
      }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

int wdtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return awp::kF32;
    case at::kBFloat16: return awp::kBF16;
    case at::kHalf: return awp::kF16;
    default: TORCH_CHECK(false, "optimum_awp native kernels: unsupported dtype ", t.scalar_type());
  }
  return 0;
}

int64_t resolve_isa(int64_t isa) {
  const int64_t best = cpu_isa();
  TORCH_CHECK(best >= 1, "optimum_awp native kernels need AVX2 + FMA + F16C");
  return isa <= 0 || isa > best ? best : isa;
}

// Checks the buffers and fills everything in SparseArgs except x, T and y.
awp::SparseArgs make_args(const at::Tensor& w, const at::Tensor& meta, const c10::optional<at::Tensor>& scales,
                          const c10::optional<at::Tensor>& zeros, int64_t kind, int64_t group, int64_t in,
                          at::ScalarType dtype) {
  TORCH_CHECK(meta.dim() == 2 && meta.scalar_type() == at::kByte && meta.is_contiguous(), "meta: uint8 (out, in/8)");
  const int64_t out = meta.size(0);
  TORCH_CHECK(in % 8 == 0 && meta.size(1) == in / 8, "meta must be (out, in/8)");
  awp::SparseArgs a{};
  a.kind = int(kind);
  a.in = in;
  a.meta = meta.data_ptr<uint8_t>();
  TORCH_CHECK(w.is_contiguous() && w.dim() == 2 && w.size(0) == out, "weight buffer: contiguous (out, ...)");
  if (kind == awp::kValues) {
    TORCH_CHECK(w.size(1) == in / 2 && w.scalar_type() == dtype, "values: (out, in/2) in the activation dtype");
    a.wdtype = wdtype_of(w);
  } else {
    TORCH_CHECK(kind == awp::kCodes, "kind must be 0 (2:4) or 1 (2:4+int4)");
    TORCH_CHECK(in % 16 == 0 && w.scalar_type() == at::kInt && w.size(1) == in / 16, "qweight: int32 (out, in/16)");
    TORCH_CHECK(scales.has_value(), "2:4+int4 needs scales");
    const at::Tensor& s = *scales;
    TORCH_CHECK(s.is_contiguous() && s.dim() == 2 && s.size(0) == out && s.scalar_type() == dtype,
                "scales: contiguous (out, n_groups) in the activation dtype");
    a.wdtype = wdtype_of(s);
    a.scales = s.data_ptr();
    a.ngroups = s.size(1);
    a.group = a.ngroups == 1 ? in : group;
    TORCH_CHECK(a.ngroups == 1 || (a.group % 32 == 0 && a.group * a.ngroups == in),
                "group size must be a multiple of 32 (or one group per row)");
    if (zeros.has_value()) {
      TORCH_CHECK(zeros->is_contiguous() && zeros->scalar_type() == at::kByte && zeros->sizes() == s.sizes(),
                  "zeros: uint8 like scales");
      a.zeros = zeros->data_ptr<uint8_t>();
    }
  }
  a.w = w.data_ptr();
  a.idx = &tables().idx[0][0];
  a.mask = &tables().mask[0][0];
  return a;
}

int64_t row_grain(int64_t in) { return std::max<int64_t>(16, 65536 / std::max<int64_t>(in, 1)); }

at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& meta,
                         const c10::optional<at::Tensor>& scales, const c10::optional<at::Tensor>& zeros,
                         int64_t kind, int64_t group, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x: contiguous (tokens, in)");
  const int64_t T = x.size(0), in = x.size(1);
  awp::SparseArgs a = make_args(w, meta, scales, zeros, kind, group, in, x.scalar_type());
  const int64_t out = meta.size(0);
  at::Tensor y = at::empty({T, out}, x.options());
  if (T == 0 || out == 0) return y;
  isa = resolve_isa(isa);
  const int64_t xstride = (in + 31) / 32 * 32;
  at::Tensor xbuf = at::empty({T, xstride}, x.options().dtype(at::kFloat));
  if (isa == 2)
    awp::avx512::prep_x(x.data_ptr(), a.wdtype, T, in, xbuf.data_ptr<float>(), xstride);
  else
    awp::avx2::prep_x(x.data_ptr(), a.wdtype, T, in, xbuf.data_ptr<float>(), xstride);
  a.x = xbuf.data_ptr<float>();
  a.xstride = xstride;
  a.T = T;
  a.y = y.data_ptr();
  a.ystride = out;
  at::parallel_for(0, out, row_grain(in), [&](int64_t b, int64_t e) {
    if (isa == 2)
      awp::avx512::rows(a, b, e);
    else
      awp::avx2::rows(a, b, e);
  });
  return y;
}

void decode_rows(const awp::SparseArgs& a, int64_t isa, int64_t n0, int64_t n1, void* dense, int64_t esize) {
  at::parallel_for(n0, n1, std::max<int64_t>(8, row_grain(a.in) / 4), [&](int64_t b, int64_t e) {
    void* d = static_cast<char*>(dense) + (b - n0) * a.in * esize;
    if (isa == 2)
      awp::avx512::decode(a, b, e, d);
    else
      awp::avx2::decode(a, b, e, d);
  });
}

at::Tensor decode_dense(const at::Tensor& w, const at::Tensor& meta, const c10::optional<at::Tensor>& scales,
                        const c10::optional<at::Tensor>& zeros, int64_t kind, int64_t group, int64_t isa,
                        int64_t in, at::ScalarType dtype) {
  awp::SparseArgs a = make_args(w, meta, scales, zeros, kind, group, in, dtype);
  isa = resolve_isa(isa);
  at::Tensor dense = at::empty({meta.size(0), in}, meta.options().dtype(dtype));
  decode_rows(a, isa, 0, meta.size(0), dense.data_ptr(), dense.element_size());
  return dense;
}

at::Tensor sparse_linear_tiled(const at::Tensor& x, const at::Tensor& w, const at::Tensor& meta,
                               const c10::optional<at::Tensor>& scales, const c10::optional<at::Tensor>& zeros,
                               int64_t kind, int64_t group, int64_t isa, int64_t tile_rows) {
  TORCH_CHECK(x.dim() == 2, "x: (tokens, in)");
  const int64_t T = x.size(0), in = x.size(1), out = meta.size(0);
  awp::SparseArgs a = make_args(w, meta, scales, zeros, kind, group, in, x.scalar_type());
  isa = resolve_isa(isa);
  at::Tensor y = at::empty({T, out}, x.options());
  if (T == 0 || out == 0) return y;
  tile_rows = std::max<int64_t>(16, std::min(tile_rows, out));
  at::Tensor tile = at::empty({tile_rows, in}, x.options());
  for (int64_t n0 = 0; n0 < out; n0 += tile_rows) {
    const int64_t nb = std::min(tile_rows, out - n0);
    decode_rows(a, isa, n0, n0 + nb, tile.data_ptr(), tile.element_size());
    at::Tensor part = y.narrow(1, n0, nb);
    at::mm_out(part, x, tile.narrow(0, 0, nb).t());
  }
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "optimum_awp CPU kernels for 2:4 and 2:4+int4 linears";
  m.def("cpu_isa", &cpu_isa, "2: AVX-512 (F/BW/VL/DQ/VBMI2) path, 1: AVX2 path, 0: neither");
  m.def("sparse_linear", &sparse_linear, "y = x W^T for 2:4 / 2:4+int4 buffers (few tokens)");
  m.def("sparse_linear_tiled", &sparse_linear_tiled, "y = x W^T through dense row tiles and at::mm (many tokens)");
  m.def("decode_dense", &decode_dense, "dense weight (out, in) of 2:4 / 2:4+int4 buffers");
}

// Shared declarations of the CPU kernels of optimum_awp (see kernels.cpp for the entry points).
// This header holds plain data and declarations only: the ISA translation units (kernels_avx512.cpp,
// kernels_avx2.cpp) are compiled for their instruction sets with `#pragma GCC target` and must not
// share inline code with the baseline translation unit (an AVX-512 copy of an inline function could
// otherwise be the one the linker keeps for everybody).
#pragma once
#include <cstdint>

namespace awp {

enum WDtype : int { kF32 = 0, kBF16 = 1, kF16 = 2 };
enum Kind : int { kValues = 0, kCodes = 1 };  // "2:4" (values) or "2:4+int4" (packed INT4 codes)

// One compressed 2:4 weight (out, in) and one call's activations.
struct SparseArgs {
  int kind;              // Kind
  int wdtype;            // WDtype of values / scales, also of x and y
  int64_t in;            // in_features (multiple of 8; of 16 for kCodes)
  const void* w;         // kValues: values (out, in/2); kCodes: qweight bytes (out, in/4)
  const uint8_t* meta;   // (out, in/8) 2-bit positions, formats.py layout
  const void* scales;    // kCodes: (out, ngroups)
  const uint8_t* zeros;  // kCodes: (out, ngroups) zero codes, or nullptr (symmetric: 8)
  int64_t ngroups;
  int64_t group;         // inputs per scale group (in when per channel); multiple of 32 or == in
  const float* x;        // (T, xstride) float32 in the ISA's chunk layout, zero padded to xstride
  int64_t xstride;
  int64_t T;
  void* y;               // y[t * ystride + n] in wdtype
  int64_t ystride;
  const int32_t* idx;    // AVX2 tables (kernels.cpp): idx[256][8] lane -> value index, mask[256][8]
  const int32_t* mask;
};

namespace avx512 {
// x (T, in) of dtype wdtype -> float32 (T, xstride) in this path's chunk layout
void prep_x(const void* x, int wdtype, int64_t T, int64_t in, float* out, int64_t xstride);
void rows(const SparseArgs& a, int64_t n0, int64_t n1);
void decode(const SparseArgs& a, int64_t n0, int64_t n1, void* dense);  // rows n0..n1 -> dense (n1-n0, in)
}  // namespace avx512

namespace avx2 {
void prep_x(const void* x, int wdtype, int64_t T, int64_t in, float* out, int64_t xstride);
void rows(const SparseArgs& a, int64_t n0, int64_t n1);
void decode(const SparseArgs& a, int64_t n0, int64_t n1, void* dense);
}  // namespace avx2

}  // namespace awp

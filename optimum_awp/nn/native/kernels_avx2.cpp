// AVX2 + FMA + F16C path of the 2:4 and 2:4+INT4 CPU kernels. See awp_native.h.
//
// Work unit: 16 consecutive inputs of one row = 8 kept weights and 2 meta bytes. The 8 weights are
// made float32 (bf16/fp16/fp32 values, or codes looked up in the group's 16-entry table of
// dequantized values with two vpermps and a blend), then each meta byte spreads 4 of them over its 8
// inputs with one vpermps and an AND (tables idx/mask indexed by the meta byte, built in kernels.cpp),
// and the activations (float32, natural order) are multiplied in with FMAs.
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
#include <immintrin.h>

#include "awp_native.h"

namespace awp {
namespace avx2 {
namespace {

#define AWP_INLINE inline __attribute__((always_inline))

AWP_INLINE uint32_t load_u32(const void* p) {
  uint32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

AWP_INLINE float scalar_of(const void* p, int64_t i, int wdt) {
  if (wdt == kF32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  if (wdt == kBF16) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  }
  return _cvtsh_ss(h);
}

AWP_INLINE uint16_t bf16_round(float v) {
  uint32_t u;
  __builtin_memcpy(&u, &v, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

AWP_INLINE float round_to(float v, int wdt) {
  if (wdt == kF32) return v;
  if (wdt == kF16) return _cvtsh_ss(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT));
  const uint32_t u = uint32_t(bf16_round(v)) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

AWP_INLINE void store_out(void* y, int64_t i, float v, int wdt) {
  if (wdt == kF32)
    static_cast<float*>(y)[i] = v;
  else if (wdt == kBF16)
    static_cast<uint16_t*>(y)[i] = bf16_round(v);
  else
    static_cast<uint16_t*>(y)[i] = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT);
}

struct Lut {
  __m256 lo, hi;  // (c - z) * s rounded to the model dtype, c = 0..7 and 8..15
};

template <int WDT>
AWP_INLINE Lut make_lut(const SparseArgs& a, int64_t n, int64_t g) {
  const int64_t i = n * a.ngroups + g;
  const float s = scalar_of(a.scales, i, WDT);
  const float z = a.zeros ? float(a.zeros[i]) : 8.0f;
  alignas(32) float v[16];
  for (int c = 0; c < 16; ++c) v[c] = round_to((float(c) - z) * s, WDT);
  Lut l;
  l.lo = _mm256_load_ps(v);
  l.hi = _mm256_load_ps(v + 8);
  return l;
}

// 8 kept weights (float32, in storage order) of the 16-input unit u
template <int WDT, int KIND>
AWP_INLINE __m256 unit_values(const char* wp, int64_t u, const Lut& lut) {
  if (KIND == kValues) {
    if (WDT == kF32) return _mm256_loadu_ps(reinterpret_cast<const float*>(wp) + u * 8);
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wp + u * 16));
    if (WDT == kBF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
  }
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i ix = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(load_u32(wp + u * 4))), shifts),
                                      _mm256_set1_epi32(15));
  const __m256 lo = _mm256_permutevar8x32_ps(lut.lo, ix);
  const __m256 hi = _mm256_permutevar8x32_ps(lut.hi, ix);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(ix, 28)));
}

// 4 kept weights of the 8-input half unit (2:4 rows whose in % 16 == 8)
template <int WDT>
AWP_INLINE __m256 half_unit_values(const char* wp, int64_t u) {
  if (WDT == kF32) return _mm256_castps128_ps256(_mm_loadu_ps(reinterpret_cast<const float*>(wp) + u * 8));
  const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(wp + u * 16));
  if (WDT == kBF16) return _mm256_castps128_ps256(_mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16)));
  return _mm256_castps128_ps256(_mm_cvtph_ps(h));
}

// dense weights of the 8 inputs of meta byte mb, from the kept weights in lanes off..off+3 of v
AWP_INLINE __m256 spread(const SparseArgs& a, __m256 v, unsigned mb, bool upper) {
  __m256i ix = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.idx + mb * 8));
  if (upper) ix = _mm256_add_epi32(ix, _mm256_set1_epi32(4));
  const __m256 keep = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.mask + mb * 8)));
  return _mm256_and_ps(_mm256_permutevar8x32_ps(v, ix), keep);
}

AWP_INLINE int64_t row_bytes(const SparseArgs& a) {
  return a.kind == kValues ? (a.in / 2) * (a.wdtype == kF32 ? 4 : 2) : a.in / 4;
}

AWP_INLINE float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

template <int WDT, int KIND, int TB>
void rows_t(const SparseArgs& a, int64_t n0, int64_t n1, int64_t t0) {
  const int64_t in = a.in, nu = in / 16, half = (in % 16) != 0, mrow = in / 8, wrow = row_bytes(a);
  const bool multi = KIND == kCodes && a.ngroups > 1;
  const int64_t upg = multi ? a.group / 16 : 0;
  const float* xp[TB];
  for (int t = 0; t < TB; ++t) xp[t] = a.x + (t0 + t) * a.xstride;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mp = a.meta + n * mrow;
    const char* wp = static_cast<const char*>(a.w) + n * wrow;
    __m256 acc0[TB], acc1[TB];
    for (int t = 0; t < TB; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();
    Lut lut{};
    if (KIND == kCodes && !multi) lut = make_lut<WDT>(a, n, 0);
    int64_t gnext = 0, uleft = 0;
    for (int64_t u = 0; u < nu; ++u) {
      if (multi && uleft-- == 0) { lut = make_lut<WDT>(a, n, gnext++); uleft = upg - 1; }
      const __m256 v = unit_values<WDT, KIND>(wp, u, lut);
      const __m256 w0 = spread(a, v, mp[2 * u], false);
      const __m256 w1 = spread(a, v, mp[2 * u + 1], true);
      for (int t = 0; t < TB; ++t) {
        acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[t] + u * 16), acc0[t]);
        acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp[t] + u * 16 + 8), acc1[t]);
      }
    }
    if (KIND == kValues && half) {
      const __m256 w0 = spread(a, half_unit_values<WDT>(wp, nu), mp[2 * nu], false);
      for (int t = 0; t < TB; ++t) acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp[t] + nu * 16), acc0[t]);
    }
    for (int t = 0; t < TB; ++t) store_out(a.y, (t0 + t) * a.ystride + n, hsum(_mm256_add_ps(acc0[t], acc1[t])), WDT);
  }
}

template <int WDT, int KIND>
void rows_k(const SparseArgs& a, int64_t n0, int64_t n1) {
  constexpr int64_t kRowBlock = 16;
  for (int64_t r = n0; r < n1; r += kRowBlock) {
    const int64_t r1 = r + kRowBlock < n1 ? r + kRowBlock : n1;
    for (int64_t t0 = 0; t0 < a.T; t0 += 4) {
      switch (a.T - t0 >= 4 ? 4 : a.T - t0) {
        case 1: rows_t<WDT, KIND, 1>(a, r, r1, t0); break;
        case 2: rows_t<WDT, KIND, 2>(a, r, r1, t0); break;
        case 3: rows_t<WDT, KIND, 3>(a, r, r1, t0); break;
        default: rows_t<WDT, KIND, 4>(a, r, r1, t0); break;
      }
    }
  }
}

template <int WDT>
AWP_INLINE void store8(void* dense, int64_t i, __m256 w) {
  if (WDT == kF32) {
    _mm256_storeu_ps(static_cast<float*>(dense) + i, w);
  } else if (WDT == kF16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(dense) + i),
                     _mm256_cvtps_ph(w, _MM_FROUND_TO_NEAREST_INT));
  } else {  // the weights are bf16 values already: truncation is exact
    const __m256i h = _mm256_srli_epi32(_mm256_castps_si256(w), 16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(dense) + i),
                     _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
  }
}

template <int WDT, int KIND>
void decode_t(const SparseArgs& a, int64_t n0, int64_t n1, void* dense) {
  const int64_t in = a.in, nu = in / 16, half = (in % 16) != 0, mrow = in / 8, wrow = row_bytes(a);
  const bool multi = KIND == kCodes && a.ngroups > 1;
  const int64_t upg = multi ? a.group / 16 : 0;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mp = a.meta + n * mrow;
    const char* wp = static_cast<const char*>(a.w) + n * wrow;
    const int64_t base = (n - n0) * in;
    Lut lut{};
    if (KIND == kCodes && !multi) lut = make_lut<WDT>(a, n, 0);
    int64_t gnext = 0, uleft = 0;
    for (int64_t u = 0; u < nu; ++u) {
      if (multi && uleft-- == 0) { lut = make_lut<WDT>(a, n, gnext++); uleft = upg - 1; }
      const __m256 v = unit_values<WDT, KIND>(wp, u, lut);
      store8<WDT>(dense, base + u * 16, spread(a, v, mp[2 * u], false));
      store8<WDT>(dense, base + u * 16 + 8, spread(a, v, mp[2 * u + 1], true));
    }
    if (KIND == kValues && half) store8<WDT>(dense, base + nu * 16, spread(a, half_unit_values<WDT>(wp, nu), mp[2 * nu], false));
  }
}

}  // namespace

void prep_x(const void* x, int wdtype, int64_t T, int64_t in, float* out, int64_t xstride) {
  for (int64_t t = 0; t < T; ++t) {
    float* d = out + t * xstride;
    int64_t k = 0;
    if (wdtype == kF32) {
      const float* s = static_cast<const float*>(x) + t * in;
      for (; k < in; ++k) d[k] = s[k];
    } else {
      const uint16_t* s = static_cast<const uint16_t*>(x) + t * in;
      for (; k + 8 <= in; k += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k));
        const __m256 f = wdtype == kBF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                                          : _mm256_cvtph_ps(h);
        _mm256_storeu_ps(d + k, f);
      }
      for (; k < in; ++k) d[k] = scalar_of(s, k, wdtype);
    }
    for (; k < xstride; ++k) d[k] = 0.0f;
  }
}

#define AWP_DISPATCH(FN, ...)                                                              \
  do {                                                                                     \
    if (a.kind == kValues) {                                                               \
      if (a.wdtype == kF32) FN<kF32, kValues>(__VA_ARGS__);                                \
      else if (a.wdtype == kBF16) FN<kBF16, kValues>(__VA_ARGS__);                         \
      else FN<kF16, kValues>(__VA_ARGS__);                                                 \
    } else {                                                                               \
      if (a.wdtype == kF32) FN<kF32, kCodes>(__VA_ARGS__);                                 \
      else if (a.wdtype == kBF16) FN<kBF16, kCodes>(__VA_ARGS__);                          \
      else FN<kF16, kCodes>(__VA_ARGS__);                                                  \
    }                                                                                      \
  } while (0)

void rows(const SparseArgs& a, int64_t n0, int64_t n1) { AWP_DISPATCH(rows_k, a, n0, n1); }

void decode(const SparseArgs& a, int64_t n0, int64_t n1, void* dense) { AWP_DISPATCH(decode_t, a, n0, n1, dense); }

}  // namespace avx2
}  // namespace awp

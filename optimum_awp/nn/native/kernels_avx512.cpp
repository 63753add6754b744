// AVX-512 path (F, BW, VL, DQ, VBMI2) of the 2:4 and 2:4+INT4 CPU kernels. See awp_native.h.
//
// Work unit: a chunk of 32 consecutive inputs of one row = 16 kept weights, 4 meta bytes and, for
// 2:4+int4, 8 bytes of packed codes.
//
// Few tokens (rows): the 16 kept weights become one float32 vector (bf16/fp16/fp32 values converted;
// or codes looked up in the group's 16-entry table of dequantized values: one vpsrlvq spreads the 16
// nibbles over the lanes, one vpermps looks them up), the 2-bit positions become the 16 input indices
// of those weights (vpsrlvd + vpternlogd), one vpermt2ps gathers the matching activations from the
// chunk's 32 (float32, prepared once per call), and one FMA per token accumulates.
// Dense tiles (decode): the kept weights as 16-bit words (or float32) are spread to their positions
// with vpexpandw / vexpandps under the chunk's 32-bit "kept" mask (two pshufb lookups per 8 meta bytes).
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,fma,f16c,bmi,bmi2,popcnt")
#include <immintrin.h>

#include "awp_native.h"

namespace awp {
namespace avx512 {
namespace {

#define AWP_INLINE inline __attribute__((always_inline))

struct W2 {
  __m512 a, b;  // float32 weights of inputs 0..15 / 16..31 of a chunk
};

struct Lut {
  __m256i w16;  // bf16 / fp16 words of (c - z) * s, c = 0..15
  __m512 ps;    // float32 of the same (fp32 models)
};

AWP_INLINE uint32_t load_u32(const void* p) {
  uint32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

// 8 * nbytes bits: bit i set where input i of the chunk is stored (nbytes meta bytes, 1..8)
AWP_INLINE uint64_t kept_bits(const uint8_t* m, int nbytes) {
  uint64_t raw = 0;
  if (nbytes == 8)
    __builtin_memcpy(&raw, m, 8);
  else if (nbytes == 4)
    __builtin_memcpy(&raw, m, 4);
  else
    for (int i = 0; i < nbytes; ++i) raw |= uint64_t(m[i]) << (8 * i);
  const __m128i v = _mm_cvtsi64_si128((long long)raw);
  // nibble p0 | p1 << 2 -> (1 << p0) | (1 << p1)
  const __m128i lut = _mm_setr_epi8(1, 3, 5, 9, 3, 2, 6, 10, 5, 6, 4, 12, 9, 10, 12, 8);
  const __m128i low = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(v, low));
  const __m128i hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(v, 4), low));
  uint64_t bits = (uint64_t)_mm_cvtsi128_si64(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
  if (nbytes < 8) bits &= (uint64_t(1) << (8 * nbytes)) - 1;
  return bits;
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
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

AWP_INLINE void store_out(void* y, int64_t i, float v, int wdt) {
  if (wdt == kF32)
    static_cast<float*>(y)[i] = v;
  else if (wdt == kBF16)
    static_cast<uint16_t*>(y)[i] = bf16_round(v);
  else
    static_cast<uint16_t*>(y)[i] = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT);
}

// The 16 dequantized codes of (row n, group g): (c - z) * s rounded once to the model dtype, exactly
// what formats.dequantize_int4 computes.
template <int WDT>
AWP_INLINE Lut make_lut(const SparseArgs& a, int64_t n, int64_t g) {
  const int64_t i = n * a.ngroups + g;
  const float s = scalar_of(a.scales, i, WDT);
  const float z = a.zeros ? float(a.zeros[i]) : 8.0f;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 p = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(z)), _mm512_set1_ps(s));
  Lut l;
  if (WDT == kF32) {
    l.ps = p;
  } else if (WDT == kBF16) {
    const __m512i u = _mm512_castps_si512(p);
    const __m512i r = _mm512_add_epi32(
        u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    l.w16 = _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
  } else {
    l.w16 = _mm512_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  return l;
}

// kept weights of one chunk as 16-bit words spread over the chunk's 32 inputs (bf16 / fp16 models)
template <int KIND>
AWP_INLINE __m512i chunk_words(const char* wp, int64_t c, uint32_t m, bool full, const Lut& lut) {
  if (KIND == kValues) {
    const char* p = wp + c * 32;  // 16 values of 2 bytes
    const __m256i v = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                           : _mm256_maskz_loadu_epi16(__mmask16((1u << __builtin_popcount(m)) - 1u), p);
    return _mm512_maskz_expand_epi16(__mmask32(m), _mm512_castsi256_si512(v));
  }
  const char* p = wp + c * 8;  // 16 codes, 2 per byte
  const __m128i q = full ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)) : _mm_cvtsi32_si128(int(load_u32(p)));
  const __m128i t = _mm_unpacklo_epi8(q, _mm_srli_epi16(q, 4));  // byte i: code i in bits 0..3
  const __m256i vals = _mm256_permutexvar_epi16(_mm256_cvtepu8_epi16(t), lut.w16);
  return _mm512_maskz_expand_epi16(__mmask32(m), _mm512_castsi256_si512(vals));
}

// kept weights of one chunk as float32, inputs 0..15 and 16..31 (fp32 models)
template <int KIND>
AWP_INLINE W2 chunk_f32(const char* wp, int64_t c, uint32_t m, bool full, const Lut& lut) {
  __m512 v;
  if (KIND == kValues) {
    const char* p = wp + c * 64;  // 16 values of 4 bytes
    v = full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(__mmask16((1u << __builtin_popcount(m)) - 1u), p);
  } else {
    const char* p = wp + c * 8;
    const __m128i q = full ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)) : _mm_cvtsi32_si128(int(load_u32(p)));
    const __m128i t = _mm_unpacklo_epi8(q, _mm_srli_epi16(q, 4));
    v = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(t), lut.ps);
  }
  W2 w;
  w.a = _mm512_maskz_expand_ps(__mmask16(m & 0xFFFFu), v);
  w.b = _mm512_maskz_expand_ps(__mmask16(m >> 16), _mm512_shuffle_f32x4(v, v, 0xEE));
  return w;
}

AWP_INLINE int64_t row_bytes(const SparseArgs& a) {
  return a.kind == kValues ? (a.in / 2) * (a.wdtype == kF32 ? 4 : 2) : a.in / 4;
}

// float32 table of the 16 dequantized codes of (row n, group g), rounded to the model dtype
template <int WDT>
AWP_INLINE __m512 make_lut_f32(const SparseArgs& a, int64_t n, int64_t g) {
  const int64_t i = n * a.ngroups + g;
  const float s = scalar_of(a.scales, i, WDT);
  const float z = a.zeros ? float(a.zeros[i]) : 8.0f;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 p = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(z)), _mm512_set1_ps(s));
  if (WDT == kF32) return p;
  if (WDT == kF16) return _mm512_cvtph_ps(_mm512_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const __m512i u = _mm512_castps_si512(p);
  const __m512i r = _mm512_add_epi32(
      u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(int(0xFFFF0000u))));
}

AWP_INLINE uint64_t load_u64(const void* p) {
  uint64_t v;
  __builtin_memcpy(&v, p, 8);
  return v;
}

// Lane L of the weight vector holds kept value j(L) of the chunk: j = L for values; for codes the
// vpsrlvq of the broadcast 64-bit word puts code k in lane 2k and code k + 8 in lane 2k + 1.
template <int KIND>
AWP_INLINE int value_of_lane(int L) {
  return KIND == kValues ? L : ((L & 1) ? (L >> 1) + 8 : (L >> 1));
}

template <int KIND>
struct IndexConsts {
  __m512i shift, base;
  IndexConsts() {
    alignas(64) int32_t sh[16], b[16];
    for (int L = 0; L < 16; ++L) {
      const int j = value_of_lane<KIND>(L);
      sh[L] = 2 * j;           // meta bits of value j: 2j..2j+1 (formats.py layout)
      b[L] = 4 * (j >> 1);     // first input of its group of 4
    }
    shift = _mm512_load_si512(sh);
    base = _mm512_load_si512(b);
  }
};

// input index (0..31) of every lane's weight: base + position, from the chunk's 32 meta bits
template <int KIND>
AWP_INLINE __m512i x_index(uint32_t meta32, const IndexConsts<KIND>& k) {
  const __m512i m = _mm512_srlv_epi32(_mm512_set1_epi32(int(meta32)), k.shift);
  return _mm512_ternarylogic_epi32(m, _mm512_set1_epi32(3), k.base, 0xEA);  // (m & 3) | base
}

// the 16 kept weights (float32) of chunk c, lanes as in value_of_lane; nvals < 16 in a row's tail
template <int WDT, int KIND>
AWP_INLINE __m512 weights16(const char* wp, int64_t c, int nvals, const __m512& lut) {
  if (KIND == kCodes) {
    const char* p = wp + c * 8;
    const __m512i sh = _mm512_setr_epi64(0, 4, 8, 12, 16, 20, 24, 28);
    if (nvals == 16) return _mm512_permutexvar_ps(_mm512_srlv_epi64(_mm512_set1_epi64((long long)load_u64(p)), sh), lut);
    // tail of 16 inputs: 8 codes in 4 bytes, lanes 2k + 1 (codes 8..15) must be 0
    return _mm512_maskz_permutexvar_ps(__mmask16(0x5555), _mm512_srlv_epi64(_mm512_set1_epi64((long long)load_u32(p)), sh), lut);
  }
  if (WDT == kF32) {
    const char* p = wp + c * 64;
    return nvals == 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(__mmask16((1u << nvals) - 1u), p);
  }
  const char* p = wp + c * 32;
  const __m256i h = nvals == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                : _mm256_maskz_loadu_epi16(__mmask16((1u << nvals) - 1u), p);
  if (WDT == kBF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

template <int TB>
AWP_INLINE void fma_gather(const __m512& w, const __m512i& idx, const float* const* xp, int64_t off, __m512* acc) {
  for (int t = 0; t < TB; ++t) {
    const __m512 xg = _mm512_permutex2var_ps(_mm512_loadu_ps(xp[t] + off), idx, _mm512_loadu_ps(xp[t] + off + 16));
    acc[t] = _mm512_fmadd_ps(w, xg, acc[t]);
  }
}

template <int WDT, int KIND, int TB>
void rows_t(const SparseArgs& a, int64_t n0, int64_t n1, int64_t t0) {
  static const IndexConsts<KIND> k;
  const int64_t in = a.in, nfull = in / 32, tail = in % 32, mrow = in / 8, wrow = row_bytes(a);
  const bool multi = KIND == kCodes && a.ngroups > 1;
  const int64_t cpg = multi ? a.group / 32 : 0;
  const float* xp[TB];
  for (int t = 0; t < TB; ++t) xp[t] = a.x + (t0 + t) * a.xstride;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mp = a.meta + n * mrow;
    const char* wp = static_cast<const char*>(a.w) + n * wrow;
    __m512 acc[2][TB];
    for (int u = 0; u < 2; ++u)
      for (int t = 0; t < TB; ++t) acc[u][t] = _mm512_setzero_ps();
    __m512 lut = _mm512_setzero_ps();
    if (KIND == kCodes && !multi) lut = make_lut_f32<WDT>(a, n, 0);
    int64_t gnext = 0, cleft = 0;
    int64_t c = 0;
    for (; c + 2 <= nfull; c += 2) {
      if (multi && cleft-- == 0) { lut = make_lut_f32<WDT>(a, n, gnext++); cleft = cpg - 1; }
      const __m512 w0 = weights16<WDT, KIND>(wp, c, 16, lut);
      fma_gather<TB>(w0, x_index<KIND>(load_u32(mp + c * 4), k), xp, c * 32, acc[0]);
      if (multi && cleft-- == 0) { lut = make_lut_f32<WDT>(a, n, gnext++); cleft = cpg - 1; }
      const __m512 w1 = weights16<WDT, KIND>(wp, c + 1, 16, lut);
      fma_gather<TB>(w1, x_index<KIND>(load_u32(mp + c * 4 + 4), k), xp, (c + 1) * 32, acc[1]);
    }
    if (c < nfull) {
      if (multi && cleft-- == 0) { lut = make_lut_f32<WDT>(a, n, gnext++); cleft = cpg - 1; }
      const __m512 w = weights16<WDT, KIND>(wp, c, 16, lut);
      fma_gather<TB>(w, x_index<KIND>(load_u32(mp + c * 4), k), xp, c * 32, acc[0]);
      ++c;
    }
    if (tail) {  // 8, 16 or 24 inputs; only with one scale group per row (group % 32 == 0 otherwise)
      uint32_t m = 0;
      for (int64_t i = 0; i < tail / 8; ++i) m |= uint32_t(mp[c * 4 + i]) << (8 * i);
      const __m512 w = weights16<WDT, KIND>(wp, c, int(tail / 2), lut);
      fma_gather<TB>(w, x_index<KIND>(m, k), xp, c * 32, acc[1]);
    }
    for (int t = 0; t < TB; ++t)
      store_out(a.y, (t0 + t) * a.ystride + n, _mm512_reduce_add_ps(_mm512_add_ps(acc[0][t], acc[1][t])), WDT);
  }
}

template <int WDT, int KIND>
void rows_k(const SparseArgs& a, int64_t n0, int64_t n1) {
  constexpr int64_t kRowBlock = 16;  // rows whose compressed data stays in L1 across token blocks
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

template <int WDT, int KIND>
void decode_t(const SparseArgs& a, int64_t n0, int64_t n1, void* dense) {
  const int64_t in = a.in, nfull = in / 32, tail = in % 32, mrow = in / 8, wrow = row_bytes(a);
  const bool multi = KIND == kCodes && a.ngroups > 1;
  const int64_t cpg = multi ? a.group / 32 : 0;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mp = a.meta + n * mrow;
    const char* wp = static_cast<const char*>(a.w) + n * wrow;
    Lut lut{};
    if (KIND == kCodes && !multi) lut = make_lut<WDT>(a, n, 0);
    int64_t gnext = 0, cleft = 0;
    const int64_t nch = nfull + (tail ? 1 : 0);
    for (int64_t c = 0; c < nch; ++c) {
      const bool full = c < nfull;
      const uint32_t m = uint32_t(kept_bits(mp + c * 4, full ? 4 : int(tail / 8)));
      if (multi && cleft-- == 0) { lut = make_lut<WDT>(a, n, gnext++); cleft = cpg - 1; }
      if (WDT == kF32) {
        float* d = static_cast<float*>(dense) + (n - n0) * in + c * 32;
        const W2 w = chunk_f32<KIND>(wp, c, m, full, lut);
        if (full) {
          _mm512_storeu_ps(d, w.a);
          _mm512_storeu_ps(d + 16, w.b);
        } else {
          const uint32_t lanes = (1u << tail) - 1u;
          _mm512_mask_storeu_ps(d, __mmask16(lanes & 0xFFFFu), w.a);
          _mm512_mask_storeu_ps(d + 16, __mmask16(lanes >> 16), w.b);
        }
      } else {
        uint16_t* d = static_cast<uint16_t*>(dense) + (n - n0) * in + c * 32;
        const __m512i w = chunk_words<KIND>(wp, c, m, full, lut);
        if (full)
          _mm512_storeu_si512(d, w);
        else
          _mm512_mask_storeu_epi16(d, __mmask32((1u << tail) - 1u), w);
      }
    }
  }
}

}  // namespace

void prep_x(const void* x, int wdtype, int64_t T, int64_t in, float* out, int64_t xstride) {
  const int64_t nblk = xstride / 16;  // float32, natural order, zero padded to xstride
  for (int64_t t = 0; t < T; ++t) {
    float* d = out + t * xstride;
    for (int64_t c = 0; c < nblk; ++c, d += 16) {
      const int64_t k = in - c * 16;
      const __mmask16 lanes = __mmask16(k >= 16 ? 0xFFFFu : (k <= 0 ? 0u : (1u << k) - 1u));
      if (wdtype == kF32) {
        _mm512_storeu_ps(d, _mm512_maskz_loadu_ps(lanes, static_cast<const float*>(x) + t * in + c * 16));
      } else {
        const __m256i h = _mm256_maskz_loadu_epi16(lanes, static_cast<const uint16_t*>(x) + t * in + c * 16);
        _mm512_storeu_ps(d, wdtype == kBF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                            : _mm512_cvtph_ps(h));
      }
    }
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

}  // namespace avx512
}  // namespace awp

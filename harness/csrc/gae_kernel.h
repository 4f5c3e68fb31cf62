// rlgauge's fused GAE / TD(lambda) kernels: plain C++ (no torch), included by gae.cpp.
//
// Both estimators are one reverse linear recurrence over time,
//
//     x_t = b_t + c_t * x_{t+1},   x_T = 0,
//
// with coefficients computed on the fly from the inputs of step t:
//
//   GAE:        b_t = r_t + g_t (1 - term_t) V'_t - V_t      (the TD error)
//               c_t = g_t l_t (1 - done_t)
//               outputs: advantage x_t and value target x_t + V_t
//   TD(lambda): nv_t = (1 - term_t) V'_t,  cont_t = (1 - done_t), and cont_{T-1} = 0
//               b_t = r_t + g_t nv_t (1 - l_t cont_t)
//               c_t = g_t l_t cont_t
//               output: the lambda-return x_t
//
// (the TD(lambda) form is torchrl's td_lambda_return_estimate loop with rolling_gamma=True,
// rearranged into b and c). Every element is read once and written once: one pass.
//
// Layout: tensors are contiguous [O, T, I] blocks (O = product of the dims before time, I of the
// dims after it). For I == 1 each row's time axis is contiguous, and a row is processed W steps
// at a time in SIMD lanes: a log2(W)-step scan inside the vector (Hillis-Steele on (b, c)
// pairs) gives every lane its value relative to the vector's end, and one multiply-add with the
// carry from the later vector finishes it. The scalar recurrence does less arithmetic, but one
// element at a time its loads, flag conversions and dependent multiply-adds cost several times
// the memory traffic. For I > 1 the inner loop runs over I, which the compiler vectorises.
//
// Three code paths (RLGAUGE_GAE_PATH below), all built for the building machine (-march=native;
// gae_native.py caches the build per CPU). Measured with gae_bench.cpp (its header has the
// command), float32 at 64x1000 / 256x2048, ns per element and x a same-traffic memcpy, on the
// 2-core AVX-512 Xeon VM, idle (load < 1), 2026-11-21:
//   2  AVX-512 intrinsics (flags as mask registers):  GAE 0.32 (1.16x) / 0.82 (1.05x),
//                                                      TD(lambda) 0.22 (1.32x) / 0.49 (0.99x)
//   1  GCC vector extensions, 256-bit:                GAE 0.59 (2.2x) / 0.93 (1.2x)
//   0  scalar:                                        GAE 1.69 (6.1x) / 1.79 (2.3x)
// (256x2048 is ~11 MB, beyond L2: both kernel and copy wait on L3 there; at 64x1000 both run
// from L2.) Two things brought path 2 there at 64x1000: the scan's known multipliers in vectors
// with no episode end (``Powers``: half the shuffles; TD(lambda) 20.7 -> 14.9 us a call) and
// prefetching the output lines for writing (``prefetch_for_write``; GAE 28.2 -> 20.9 us).

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

// RLGAUGE_GAE_PATH: 2 = AVX-512 intrinsics, 1 = GCC vector extensions, 0 = scalar; the best one
// the compiler targets unless set (the tests build each one, tests/test_gae_kernel.py)
#if !defined(RLGAUGE_GAE_PATH)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define RLGAUGE_GAE_PATH 2
#elif defined(__GNUC__) && !defined(__clang__)
#define RLGAUGE_GAE_PATH 1
#else
#define RLGAUGE_GAE_PATH 0
#endif
#endif

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rlgauge {

// One call's inputs: raw pointers into contiguous [O, T, I] blocks.
template <typename S>
struct Inputs {
  const S* value;       // GAE only (nullptr for TD(lambda))
  const S* next_value;
  const S* reward;
  const bool* done;
  const bool* terminated;
  const S* gamma;       // per-step [O, T, I], or nullptr: gamma_scalar
  const S* lmbda;       // per-step [O, T, I], or nullptr: lmbda_scalar
  S gamma_scalar;
  S lmbda_scalar;
  S* out0;              // GAE: advantage; TD(lambda): the return
  S* out1;              // GAE: value target; TD(lambda): unused
  int64_t T;
};

// The vector loops run backwards through memory, which the L1 streaming prefetcher does not
// follow, and every output line they start is first read for ownership: measured at 64x1000
// float32 GAE (data in L2), each vector then waited on its two output lines (26.4 us a call).
// Prefetching the output lines for writing (PREFETCHW where the CPU has it) this many bytes
// ahead hides that: 19.0 us, the same-traffic copy 19.6 us. Input prefetches made no
// difference; TD(lambda) neither gains nor loses. A prefetch never faults, so the address may
// lie before the tensor (integer arithmetic: no out-of-range pointer is formed).
constexpr int64_t kPrefetchBytes = 256;

// The type ``PowersOf`` computes its constants in: double for float, long double for double.
template <typename S>
using Wide = std::conditional_t<std::is_same_v<S, float>, double, long double>;

template <typename S>
inline void prefetch_for_write(const S* p) {
#if defined(__GNUC__)
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) -
                                                   static_cast<uintptr_t>(kPrefetchBytes)),
                     1, 3);
#else
  (void)p;
#endif
}

// One scalar step at flat index ``i`` (time t); ``x`` holds x_{t+1} and receives x_t.
template <typename S, bool GAE, bool SG, bool SL>
inline void scalar_step(const Inputs<S>& in, int64_t i, bool last, S& x) {
  const S g = SG ? in.gamma[i] : in.gamma_scalar;
  const S l = SL ? in.lmbda[i] : in.lmbda_scalar;
  const S nv = in.terminated[i] ? S(0) : in.next_value[i];
  if (GAE) {
    const S cont = in.done[i] ? S(0) : S(1);
    const S v = in.value[i];
    x = (in.reward[i] + g * nv - v) + g * l * cont * x;
    in.out0[i] = x;
    in.out1[i] = x + v;
  } else {
    const S cont = (in.done[i] || last) ? S(0) : S(1);
    x = in.reward[i] + g * nv * (S(1) - l * cont) + g * l * cont * x;
    in.out0[i] = x;
  }
}

// Scalar gamma and lambda: in a vector where no step is done, c_t = q = g l in every lane, so
// the scan's multipliers are powers of q, the same for every such vector (computed once per
// call): the scan then shuffles b only, half the shuffles of the general one (``scan_powers``
// below). ``X`` is a path's vector type (W lanes; set1, load). The constants are
// computed in a wider type and rounded once: in S, g - q cancels and q^16 compounds.
template <typename X, typename S>
struct PowersOf {
  static constexpr int L = X::W >= 16 ? 4 : X::W >= 8 ? 3 : X::W >= 4 ? 2 : 1;  // log2(W)
  typename X::V level[L];   // level k: q^(2^k) in every lane
  typename X::V tail;       // lane j: q^(W - j), the carry's multiplier
  typename X::V g_minus_q;  // TD(lambda): b = r + (g - q) nv when no step is done
  PowersOf(S g, S l) {
    const Wide<S> q = Wide<S>(g) * Wide<S>(l);
    Wide<S> p = q;
    for (int k = 0; k < L; ++k, p *= p) level[k] = X::set1(S(p));
    alignas(64) S t[X::W];
    Wide<S> acc = 1;
    for (int j = X::W - 1; j >= 0; --j) t[j] = S(acc *= q);
    tail = X::load(t);
    g_minus_q = X::set1(S(Wide<S>(g) - q));
  }
};

// The reverse scan of b alone with the known multipliers of ``PowersOf`` (X: a vector path's
// type with fmadd, set1 and shift_down): afterwards b[j] = x_j given x_W = 0.
template <typename X, typename S, int s = 1>
inline void scan_powers(typename X::V& b, const typename X::V* level) {
  if constexpr (s < X::W) {
    b = X::fmadd(*level, X::template shift_down<s>(b, X::set1(S(0))), b);
    scan_powers<X, S, 2 * s>(b, level + 1);
  }
}

#if RLGAUGE_GAE_PATH == 2

// AVX-512 (F, BW, VL): W = 16 floats / 8 doubles per vector. The bool flags become mask
// registers (one vptestnmb each), so "(1 - terminated) V'" is a masked load and
// "g l (1 - done)" a masked multiply: no byte widening, no conversions.
template <typename S>
struct Simd;

template <>
struct Simd<float> {
  static constexpr int W = 16;
  using V = __m512;
  using K = __mmask16;
  static constexpr K ALL = 0xFFFF;  // every lane
  static inline V load(const float* p) { return _mm512_loadu_ps(p); }
  static inline V maskz_load(K k, const float* p) { return _mm512_maskz_loadu_ps(k, p); }
  static inline void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static inline V set1(float s) { return _mm512_set1_ps(s); }
  static inline V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static inline V maskz_mul(K k, V a, V b) { return _mm512_maskz_mul_ps(k, a, b); }
  static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
  static inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static inline K clear(const bool* p) {  // lane j: flag j is false
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm_testn_epi8_mask(b, b);
  }
  template <int s>
  static inline V shift_down(V x, V fill) {  // lane j <- x[j + s], fill past the end
    return _mm512_castsi512_ps(
        _mm512_alignr_epi32(_mm512_castps_si512(fill), _mm512_castps_si512(x), s));
  }
};

template <>
struct Simd<double> {
  static constexpr int W = 8;
  using V = __m512d;
  using K = __mmask8;
  static constexpr K ALL = 0xFF;
  static inline V load(const double* p) { return _mm512_loadu_pd(p); }
  static inline V maskz_load(K k, const double* p) { return _mm512_maskz_loadu_pd(k, p); }
  static inline void store(double* p, V x) { _mm512_storeu_pd(p, x); }
  static inline V set1(double s) { return _mm512_set1_pd(s); }
  static inline V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static inline V fnmadd(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }
  static inline V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static inline V maskz_mul(K k, V a, V b) { return _mm512_maskz_mul_pd(k, a, b); }
  static inline V add(V a, V b) { return _mm512_add_pd(a, b); }
  static inline V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static inline K clear(const bool* p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return static_cast<__mmask8>(_mm_testn_epi8_mask(b, b));
  }
  template <int s>
  static inline V shift_down(V x, V fill) {
    return _mm512_castsi512_pd(
        _mm512_alignr_epi64(_mm512_castpd_si512(fill), _mm512_castpd_si512(x), s));
  }
};

// the reverse scan of (b, c) inside one vector: afterwards b[j] = x_j given x_W = 0, and
// c[j] = c_j c_{j+1} ... c_{W-1}
template <typename S, int s = 1>
inline void scan(typename Simd<S>::V& b, typename Simd<S>::V& c) {
  using X = Simd<S>;
  if constexpr (s < X::W) {
    b = X::fmadd(c, X::template shift_down<s>(b, X::set1(S(0))), b);
    c = X::mul(c, X::template shift_down<s>(c, X::set1(S(1))));
    scan<S, 2 * s>(b, c);
  }
}

template <typename S>
using Powers = PowersOf<Simd<S>, S>;

// W steps at flat indices [i, i + W) of one row (time stride 1). x_{t+1} of the last of them,
// the "carry", is read back from out0[i + W], written just before: a broadcast from memory
// runs on a load port, a broadcast from a register on the shuffle port that the scan saturates.
template <typename S, bool GAE, bool SG, bool SL>
inline void vector_step(const Inputs<S>& in, int64_t i, const Powers<S>& pw) {
  using X = Simd<S>;
  using V = typename X::V;
  prefetch_for_write(in.out0 + i);
  if (GAE) prefetch_for_write(in.out1 + i);
  const V g = SG ? X::load(in.gamma + i) : X::set1(in.gamma_scalar);
  const V l = SL ? X::load(in.lmbda + i) : X::set1(in.lmbda_scalar);
  const V nv = X::maskz_load(X::clear(in.terminated + i), in.next_value + i);  // (1-term) V'
  const typename X::K live = X::clear(in.done + i);
  const V reward = X::load(in.reward + i);
  V b, c;
  if (!SG && !SL && live == X::ALL) {  // no step done (most vectors): known multipliers
    b = GAE ? X::sub(X::fmadd(g, nv, reward), X::load(in.value + i))
            : X::fmadd(pw.g_minus_q, nv, reward);
    scan_powers<X, S>(b, pw.level);
    c = pw.tail;
  } else {
    c = X::maskz_mul(live, g, l);  // g l (1-done)
    if (GAE) {
      b = X::sub(X::fmadd(g, nv, reward), X::load(in.value + i));  // r + g nv - V
    } else {
      b = X::fnmadd(c, nv, X::fmadd(g, nv, reward));  // r + g nv - g l cont nv
    }
    scan<S>(b, c);
  }
  const V x = X::fmadd(c, X::set1(in.out0[i + X::W]), b);
  X::store(in.out0 + i, x);
  if (GAE) X::store(in.out1 + i, X::add(x, X::load(in.value + i)));
}

template <typename S>
constexpr int vector_width() { return Simd<S>::W; }

#elif RLGAUGE_GAE_PATH == 1

// vector width in bytes: 32 with AVX, else 16
#if defined(__AVX__)
constexpr int VBYTES = 32;
#else
constexpr int VBYTES = 16;
#endif

template <typename S>
struct IntOf;
template <>
struct IntOf<float> { using type = int32_t; };
template <>
struct IntOf<double> { using type = int64_t; };

template <typename S>
struct Vec {
  static constexpr int W = VBYTES / sizeof(S);
  typedef S V __attribute__((vector_size(VBYTES)));
  typedef typename IntOf<S>::type M __attribute__((vector_size(VBYTES)));  // shuffle masks

  static inline V load(const S* p) {
    V x;
    std::memcpy(&x, p, sizeof x);
    return x;
  }
  static inline void store(S* p, V x) { std::memcpy(p, &x, sizeof x); }
  static inline V flag(const bool* p) {  // W bools -> 0 / 1 in lanes
    // GCC 12 widens a byte vector lane by lane through general registers (~30 instructions
    // for 8 lanes); the intrinsics are one zero-extending load and one conversion
#if defined(__AVX2__)
    if constexpr (VBYTES == 32 && W == 8) {
      return (V)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)));
    }
    if constexpr (VBYTES == 32 && W == 4) {
      int32_t four;
      std::memcpy(&four, p, 4);
      return (V)_mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(four)));
    }
#endif
    V x;
    for (int j = 0; j < W; ++j) x[j] = p[j] ? S(1) : S(0);
    return x;
  }
  static inline V splat(S s) { return V{} + s; }
  static inline V set1(S s) { return splat(s); }
  static inline V fmadd(V a, V b, V c) { return a * b + c; }

  // lane j <- x[j + s], and ``fill`` past the last lane
  template <int s>
  static inline V shift_down(V x, V fill) {
    M mask;
    for (int j = 0; j < W; ++j) mask[j] = j + s < W ? j + s : W + j;
    return __builtin_shuffle(x, fill, mask);
  }

  // the reverse scan of (b, c) inside one vector: afterwards b[j] = x_j given x_W = 0, and
  // c[j] = c_j c_{j+1} ... c_{W-1}
  template <int s = 1>
  static inline void scan(V& b, V& c) {
    if constexpr (s < W) {
      b += c * shift_down<s>(b, V{});
      c *= shift_down<s>(c, splat(S(1)));
      scan<2 * s>(b, c);
    }
  }
};

// True when none of the W flags at ``p`` is set (bools are one byte, 0 or 1).
template <int W>
inline bool none_set(const bool* p) {
  static_assert(W == 2 || W == 4 || W == 8 || W == 16, "vector widths of 2 to 16 lanes");
  if constexpr (W == 16) {
    uint64_t a, b;
    std::memcpy(&a, p, 8);
    std::memcpy(&b, p + 8, 8);
    return (a | b) == 0;
  } else {
    using U = std::conditional_t<W == 8, uint64_t, std::conditional_t<W == 4, uint32_t, uint16_t>>;
    U a;
    std::memcpy(&a, p, sizeof a);
    return a == 0;
  }
}

template <typename S>
using Powers = PowersOf<Vec<S>, S>;

// W steps at flat indices [i, i + W) of one row; the carry x_{t+1} is out0[i + W] (as above).
template <typename S, bool GAE, bool SG, bool SL>
inline void vector_step(const Inputs<S>& in, int64_t i, const Powers<S>& pw) {
  using X = Vec<S>;
  using V = typename X::V;
  prefetch_for_write(in.out0 + i);
  if (GAE) prefetch_for_write(in.out1 + i);
  const V one = X::splat(S(1));
  const V g = SG ? X::load(in.gamma + i) : X::splat(in.gamma_scalar);
  const V l = SL ? X::load(in.lmbda + i) : X::splat(in.lmbda_scalar);
  const V nv = X::load(in.next_value + i) * (one - X::flag(in.terminated + i));
  V b, c;
  if (!SG && !SL && none_set<X::W>(in.done + i)) {  // no step done: known multipliers
    b = GAE ? X::load(in.reward + i) + g * nv - X::load(in.value + i)
            : X::load(in.reward + i) + pw.g_minus_q * nv;
    scan_powers<X, S>(b, pw.level);
    c = pw.tail;
  } else {
    const V cont = one - X::flag(in.done + i);
    c = g * l * cont;
    if (GAE) {
      b = X::load(in.reward + i) + g * nv - X::load(in.value + i);
    } else {
      b = X::load(in.reward + i) + g * nv * (one - l * cont);
    }
    X::scan(b, c);
  }
  const V x = b + c * in.out0[i + X::W];
  X::store(in.out0 + i, x);
  if (GAE) X::store(in.out1 + i, x + X::load(in.value + i));
}

template <typename S>
constexpr int vector_width() { return Vec<S>::W; }

#endif  // RLGAUGE_GAE_PATH

// One row's flat index range [row, end) and the part [lo, hi) that whole, aligned vectors cover.
struct RowSpan {
  int64_t row, end, lo, hi;
};

// Vectors cover flat indices that are multiples of W, so that every vector access is aligned
// like the tensors' bases (torch aligns those to 64 bytes) and none straddles two cache lines
// (measured: misaligned rows cost ~15% at 64x1000). The last step of a row (t = T - 1) is
// always scalar: TD(lambda) treats it as an episode end.
inline RowSpan row_span(int64_t o, int64_t T, int64_t W) {
  const int64_t row = o * T, end = row + T;
  const int64_t hi = std::max(row, ((end - 1) / W) * W);
  const int64_t lo = std::min(hi, ((row + W - 1) / W) * W);
  return {row, end, lo, hi};
}

// Scalar steps i = from, from - 1, ..., to (inclusive) of a row ending at ``end``; x_{from+1}
// is read back from the output (0 at the row's end).
template <typename S, bool GAE, bool SG, bool SL>
inline void scalar_steps(const Inputs<S>& in, int64_t from, int64_t to, int64_t end) {
  S x = from + 1 < end ? in.out0[from + 1] : S(0);
  for (int64_t i = from; i >= to; --i) scalar_step<S, GAE, SG, SL>(in, i, i == end - 1, x);
}

// Rows [o0, o1) of an [O, T, 1] block.
template <typename S, bool GAE, bool SG, bool SL>
void run_rows(const Inputs<S>& inputs, int64_t o0, int64_t o1) {
  // a local copy: the intrinsics' stores may alias anything, and would otherwise make the
  // compiler reload every pointer of ``inputs`` after each store
  const Inputs<S> in = inputs;
  const int64_t T = in.T;
#if RLGAUGE_GAE_PATH > 0
  constexpr int64_t W = vector_width<S>();
  const Powers<S> pw(in.gamma_scalar, in.lmbda_scalar);
  int64_t o = o0;
  // two rows at a time, their vectors interleaved: each vector waits for the carry of the
  // one after it (a store, a load and a multiply-add: about as long as its own work), and
  // the other row's vector fills that wait (measured, 64x1000 float32: no change with
  // AVX-512, ~25% faster with 256-bit GCC vectors)
  for (; o + 2 <= o1; o += 2) {
    const RowSpan a = row_span(o, T, W), b = row_span(o + 1, T, W);
    scalar_steps<S, GAE, SG, SL>(in, a.end - 1, a.hi, a.end);
    scalar_steps<S, GAE, SG, SL>(in, b.end - 1, b.hi, b.end);
    int64_t ia = a.hi - W, ib = b.hi - W;
    for (; ia >= a.lo && ib >= b.lo; ia -= W, ib -= W) {
      vector_step<S, GAE, SG, SL>(in, ia, pw);
      vector_step<S, GAE, SG, SL>(in, ib, pw);
    }
    for (; ia >= a.lo; ia -= W) vector_step<S, GAE, SG, SL>(in, ia, pw);
    for (; ib >= b.lo; ib -= W) vector_step<S, GAE, SG, SL>(in, ib, pw);
    scalar_steps<S, GAE, SG, SL>(in, a.lo - 1, a.row, a.end);
    scalar_steps<S, GAE, SG, SL>(in, b.lo - 1, b.row, b.end);
  }
  for (; o < o1; ++o) {
    const RowSpan a = row_span(o, T, W);
    scalar_steps<S, GAE, SG, SL>(in, a.end - 1, a.hi, a.end);
    for (int64_t i = a.hi - W; i >= a.lo; i -= W) vector_step<S, GAE, SG, SL>(in, i, pw);
    scalar_steps<S, GAE, SG, SL>(in, a.lo - 1, a.row, a.end);
  }
#else
  for (int64_t o = o0; o < o1; ++o) {
    scalar_steps<S, GAE, SG, SL>(in, o * T + T - 1, o * T, o * T + T);
  }
#endif
}

// One time step t of an [O, T, I] block with I > 1: the I recurrences side by side, x_{t+1}
// read from the output row written one step earlier (``later``; unused when LAST). Plain
// restrict pointers and selects, so that GCC vectorises the loop over i (it would not with
// bool loads, or with the loop reading through the Inputs struct).
template <typename S, bool GAE, bool SG, bool SL, bool LAST>
inline void inner_step(const S* __restrict value, const S* __restrict next_value,
                       const S* __restrict reward, const uint8_t* __restrict done,
                       const uint8_t* __restrict terminated, const S* __restrict gamma,
                       const S* __restrict lmbda, S gamma_scalar, S lmbda_scalar,
                       const S* __restrict later, S* __restrict out0, S* __restrict out1,
                       int64_t I) {
  for (int64_t i = 0; i < I; ++i) {
    const S g = SG ? gamma[i] : gamma_scalar;
    const S l = SL ? lmbda[i] : lmbda_scalar;
    const S nv = terminated[i] ? S(0) : next_value[i];
    const S gl = (LAST || done[i]) ? S(0) : g * l;  // g l (1 - done), 0 at TD's last step
    const S x_next = LAST ? S(0) : later[i];
    if (GAE) {
      const S v = value[i];
      const S x = (reward[i] + g * nv - v) + gl * x_next;
      out0[i] = x;
      out1[i] = x + v;
    } else {
      out0[i] = reward[i] + g * nv - gl * nv + gl * x_next;
    }
  }
}

// Blocks [o0, o1) of an [O, T, I] block with I > 1.
template <typename S, bool GAE, bool SG, bool SL>
void run_inner(const Inputs<S>& in, int64_t I, int64_t o0, int64_t o1) {
  const int64_t T = in.T;
  const auto* done = reinterpret_cast<const uint8_t*>(in.done);
  const auto* terminated = reinterpret_cast<const uint8_t*>(in.terminated);
  auto step = [&](auto last, int64_t base) {
    inner_step<S, GAE, SG, SL, decltype(last)::value>(
        GAE ? in.value + base : nullptr, in.next_value + base, in.reward + base, done + base,
        terminated + base, SG ? in.gamma + base : nullptr, SL ? in.lmbda + base : nullptr,
        in.gamma_scalar, in.lmbda_scalar, in.out0 + base + I, in.out0 + base,
        GAE ? in.out1 + base : nullptr, I);
  };
  for (int64_t o = o0; o < o1; ++o) {
    if (T > 0) step(std::true_type{}, (o * T + T - 1) * I);
    for (int64_t t = T - 2; t >= 0; --t) step(std::false_type{}, (o * T + t) * I);
  }
}

}  // namespace rlgauge

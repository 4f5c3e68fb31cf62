// Standalone timing of gae_kernel.h's code paths against memcpy (no torch, no Python).
//
//   g++ -std=c++17 -O3 -march=native [-DRLGAUGE_GAE_PATH=0|1|2] harness/csrc/gae_bench.cpp \
//       -o /tmp/gae_bench && /tmp/gae_bench
//
// For [O, T, 1] float32 and float64 inputs (values ~ N(0, 1), done on 1% of the steps, half of
// them terminations; every array 64-byte aligned, as torch allocates them) it prints the kernel's
// median time per call and per element, and the ratio to copying half the kernel's footprint
// (so that the copy reads + writes as many bytes as the kernel: 22 B/element for float32 GAE,
// 14 for TD(lambda)). Not part of the extension (gae_native.py compiles gae.cpp only).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "gae_kernel.h"

namespace {

template <typename T>
T* aligned(size_t n) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, n * sizeof(T) + 64) != 0) std::abort();
  return static_cast<T*>(p);
}

template <typename F>
double median_seconds(F&& f, int calls) {
  std::vector<double> samples;
  for (int rep = 0; rep < 15; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < calls; ++k) f();
    samples.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                      calls);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

template <typename S>
void bench(int64_t O, int64_t T) {
  using namespace rlgauge;
  const int64_t N = O * T;
  S *v = aligned<S>(N), *nv = aligned<S>(N), *r = aligned<S>(N), *a = aligned<S>(N),
    *b = aligned<S>(N);
  bool *d = aligned<bool>(N), *term = aligned<bool>(N);
  std::mt19937 gen(0);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> u;
  for (int64_t i = 0; i < N; ++i) {
    v[i] = S(normal(gen));
    nv[i] = S(normal(gen));
    r[i] = S(normal(gen));
    d[i] = u(gen) < 0.01;
    term[i] = d[i] && u(gen) < 0.5;
  }
  const Inputs<S> gae{v, nv, r, d, term, nullptr, nullptr, S(0.99), S(0.95), a, b, T};
  const Inputs<S> td{nullptr, nv, r, d, term, nullptr, nullptr, S(0.99), S(0.95), a, nullptr, T};
  const size_t gae_copy = N * (5 * sizeof(S) + 2) / 2, td_copy = N * (3 * sizeof(S) + 2) / 2;
  uint8_t *src = aligned<uint8_t>(gae_copy), *dst = aligned<uint8_t>(gae_copy);
  std::memset(src, 1, gae_copy);
  std::memset(dst, 0, gae_copy);
  const int calls = static_cast<int>(std::max<int64_t>(1, 2000000 / N));
  // interleaved rounds, medians of medians: the machine's drift hits both sides alike
  std::vector<double> tg, tt, cg, ct;
  for (int round = 0; round < 5; ++round) {
    tg.push_back(median_seconds([&] { run_rows<S, true, false, false>(gae, 0, O); }, calls));
    cg.push_back(median_seconds([&] { std::memcpy(dst, src, gae_copy); }, calls));
    tt.push_back(median_seconds([&] { run_rows<S, false, false, false>(td, 0, O); }, calls));
    ct.push_back(median_seconds([&] { std::memcpy(dst, src, td_copy); }, calls));
  }
  for (auto* x : {&tg, &tt, &cg, &ct}) std::sort(x->begin(), x->end());
  std::printf("%s %5ldx%-5ld | gae %8.2f us %5.3f ns/el %5.2fx copy | td %8.2f us %5.3f ns/el "
              "%5.2fx copy\n", sizeof(S) == 4 ? "f32" : "f64", static_cast<long>(O),
              static_cast<long>(T), tg[2] * 1e6, tg[2] * 1e9 / N, tg[2] / cg[2], tt[2] * 1e6,
              tt[2] * 1e9 / N, tt[2] / ct[2]);
  for (void* p : {static_cast<void*>(v), static_cast<void*>(nv), static_cast<void*>(r),
                  static_cast<void*>(a), static_cast<void*>(b), static_cast<void*>(d),
                  static_cast<void*>(term), static_cast<void*>(src), static_cast<void*>(dst)})
    std::free(p);
}

}  // namespace

int main() {
  std::printf("RLGAUGE_GAE_PATH=%d\n", RLGAUGE_GAE_PATH);
  for (const auto& shape : {std::pair<int64_t, int64_t>{1, 1000}, {64, 1000}, {256, 2048}}) {
    bench<float>(shape.first, shape.second);
  }
  bench<double>(64, 1000);
  return 0;
}

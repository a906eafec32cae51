// What llmjax's XLA:CPU kernels share: a parallel loop on XLA's intra-op thread pool and the
// register-blocked product every matrix product of theirs is made of.
//
// The products work on vectors of 16 floats (GCC/Clang vector extensions: one AVX-512 register,
// two AVX2 ones, four NEON ones) and take R rows of the output at a time, so that the R x C
// accumulators stay in registers and each loaded row of the right operand serves all R rows.

#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace llmjax_cpu {

namespace ffi = xla::ffi;

// Runs fn(i) for i in [0, n) on the pool and on the calling thread; returns when all are done.
// Tasks hold the shared state, so one the pool starts late finds no work and exits safely.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, Fn fn) {
  if (n <= 0) return;
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, fn]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      fn(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

typedef float V __attribute__((vector_size(64)));
constexpr int kLanes = 16;

inline V Load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

inline void Store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }

// out[r * ldo + c] (+)= sum_{j < n} a(r, j) * b[j * ldb + c] for r < R, c < 16 C, where
// a(r, j) = a[r * ars + j * acs]: the strides read a row-major left operand (ars = its row
// length, acs = 1) or a transposed one (ars = 1, acs = its row length). kZero: out is
// overwritten, else added to.
template <int R, int C, bool kZero>
inline void Tile(const float* __restrict a, int64_t ars, int64_t acs,
                 const float* __restrict b, int64_t ldb, int64_t n, float* __restrict out,
                 int64_t ldo) {
  V acc[R][C] = {};
  if (!kZero) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = Load(out + r * ldo + c * kLanes);
  }
  for (int64_t j = 0; j < n; ++j) {
    V bj[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) bj[c] = Load(b + j * ldb + c * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float w = a[r * ars + j * acs];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] += w * bj[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) Store(out + r * ldo + c * kLanes, acc[r][c]);
}

// Tile over `rows` output rows, R at a time, the rest 4, 2 and 1 at a time: 16 C columns of
// out (+)= A B with A [rows, n] read through (ars, acs) and B [n, >= 16 C].
template <int R, int C, bool kZero>
inline void Product(const float* __restrict a, int64_t ars, int64_t acs,
                    const float* __restrict b, int64_t ldb, int64_t n, int64_t rows,
                    float* __restrict out, int64_t ldo) {
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    Tile<R, C, kZero>(a + r * ars, ars, acs, b, ldb, n, out + r * ldo, ldo);
  if constexpr (R > 4) {
    if (r + 4 <= rows) {
      Tile<4, C, kZero>(a + r * ars, ars, acs, b, ldb, n, out + r * ldo, ldo);
      r += 4;
    }
  }
  if constexpr (R > 2) {
    if (r + 2 <= rows) {
      Tile<2, C, kZero>(a + r * ars, ars, acs, b, ldb, n, out + r * ldo, ldo);
      r += 2;
    }
  }
  for (; r < rows; ++r) Tile<1, C, kZero>(a + r * ars, ars, acs, b, ldb, n, out + r * ldo, ldo);
}

}  // namespace llmjax_cpu

// Grouped matrix products for XLA:CPU as XLA FFI custom calls: the matmuls of a mixture of
// experts over tokens sorted by expert, with no padding and no gathered weights.
//
//   grouped:     x [M,K], w [G,K,N], sizes [G] -> y [M,N]   y[rows of g] = x[rows of g] w[g]
//   grouped_tn:  x [M,K], dy [M,N], sizes [G]  -> dw [G,K,N] dw[g] = x[rows of g]^T dy[rows of g]
//
// Group g owns the sizes[g] rows after those of groups 0..g-1 (float32, row-major). `grouped`
// serves the forward pass and, with w transposed, the gradient of x; `grouped_tn` the gradient
// of w. Rows past the groups' total are zero in y; an empty group's dw is zero. The forward
// runs one task per block of up to 64 rows of one group, the weight gradient one per group
// and block of 32 rows of K, on XLA's intra-op thread pool; no two tasks write the same memory.
// K and N must be multiples of 16. llmjax.cpu_kernels builds this file; llmjax.layers.grouped
// calls it.

#include <vector>

#include "common.h"

namespace {

using namespace llmjax_cpu;

using Matrix = ffi::Buffer<ffi::F32, 2>;
using Stack = ffi::Buffer<ffi::F32, 3>;  // [G, K, N]: one matrix per group
using Sizes = ffi::Buffer<ffi::S32, 1>;

constexpr int64_t kRowBlock = 64;  // rows of one group per forward task
constexpr int64_t kKBlock = 32;    // rows of dw[g] per weight-gradient task

// out [rows, cols] = A [rows, n] B [n, cols] (B row-major with row length ldb, cols a multiple
// of 16), in column strips of 64, then 32, then 16.
inline void Gemm(const float* a, int64_t ars, int64_t acs, const float* b, int64_t ldb,
                 int64_t n, int64_t rows, int64_t cols, float* out, int64_t ldo) {
  int64_t c = 0;
  for (; c + 64 <= cols; c += 64)
    Product<6, 4, true>(a, ars, acs, b + c, ldb, n, rows, out + c, ldo);
  for (; c + 32 <= cols; c += 32)
    Product<8, 2, true>(a, ars, acs, b + c, ldb, n, rows, out + c, ldo);
  for (; c < cols; c += 16) Product<8, 1, true>(a, ars, acs, b + c, ldb, n, rows, out + c, ldo);
}

// Where each group's rows start: starts[g] .. starts[g + 1], clamped to M rows.
std::vector<int64_t> Starts(const int32_t* sizes, int64_t G, int64_t M) {
  std::vector<int64_t> s(G + 1, 0);
  for (int64_t g = 0; g < G; ++g)
    s[g + 1] = std::min<int64_t>(M, s[g] + std::max<int32_t>(0, sizes[g]));
  return s;
}

ffi::Error Check(int64_t K, int64_t N, int64_t G, int64_t sizes) {
  if (K % kLanes || N % kLanes)
    return ffi::Error::InvalidArgument("grouped matmul: K and N must be multiples of 16");
  if (sizes != G) return ffi::Error::InvalidArgument("grouped matmul: one size per group");
  return ffi::Error::Success();
}

ffi::Error GroupedImpl(ffi::ThreadPool pool, Matrix x, Stack w, Sizes sizes,
                       ffi::Result<Matrix> y) {
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1];
  const int64_t G = w.dimensions()[0], N = w.dimensions()[2];
  if (w.dimensions()[1] != K)
    return ffi::Error::InvalidArgument("grouped matmul: x and w differ in K");
  if (auto err = Check(K, N, G, sizes.dimensions()[0]); err.failure()) return err;
  const std::vector<int64_t> s = Starts(sizes.typed_data(), G, M);
  struct Task {
    int64_t g, r0, r1;
  };
  std::vector<Task> tasks;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t r = s[g]; r < s[g + 1]; r += kRowBlock)
      tasks.push_back({g, r, std::min(r + kRowBlock, s[g + 1])});
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  std::fill(yp + s[G] * N, yp + M * N, 0.0f);
  ParallelFor(pool, tasks.size(), [&](int64_t i) {
    const Task& t = tasks[i];
    Gemm(xp + t.r0 * K, K, 1, wp + t.g * K * N, N, K, t.r1 - t.r0, N, yp + t.r0 * N, N);
  });
  return ffi::Error::Success();
}

ffi::Error GroupedTnImpl(ffi::ThreadPool pool, Matrix x, Matrix dy, Sizes sizes,
                         ffi::Result<Stack> dw) {
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1], N = dy.dimensions()[1];
  const int64_t G = dw->dimensions()[0];
  if (dy.dimensions()[0] != M)
    return ffi::Error::InvalidArgument("grouped matmul: x and dy differ in M");
  if (auto err = Check(K, N, G, sizes.dimensions()[0]); err.failure()) return err;
  const std::vector<int64_t> s = Starts(sizes.typed_data(), G, M);
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  float* dwp = dw->typed_data();
  const int64_t blocks = (K + kKBlock - 1) / kKBlock;
  ParallelFor(pool, G * blocks, [&](int64_t i) {
    const int64_t g = i / blocks, k0 = (i % blocks) * kKBlock;
    // dw[g][k, :] = sum_r x[r, k] dy[r, :]: x read transposed (ars = 1, acs = K).
    Gemm(xp + s[g] * K + k0, 1, K, dyp + s[g] * N, N, s[g + 1] - s[g],
         std::min(kKBlock, K - k0), N, dwp + (g * K + k0) * N, N);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmjaxGroupedMatmul, GroupedImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Matrix>()
                                  .Arg<Stack>()
                                  .Arg<Sizes>()
                                  .Ret<Matrix>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmjaxGroupedMatmulTn, GroupedTnImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Matrix>()
                                  .Arg<Matrix>()
                                  .Arg<Sizes>()
                                  .Ret<Stack>());

// Causal attention for XLA:CPU as an XLA FFI custom call: forward and backward, blockwise, never
// writing the T x T logits, skipping the key blocks above the diagonal.
//
//   forward:  q [B,T,N,H], k/v [B,T,K,H] -> out [B,T,N,H], lse [B,N,T] (float32)
//   backward: q, k, v, out, lse, d_out   -> dq [B,T,N,H], dk/dv [B,T,K,H]
//
// Query head n reads key/value head n / (N / K) (grouped-query attention). The mask is the plain
// lower triangle: query t sees keys 0..t. One task per (batch, kv head) runs on XLA's intra-op
// thread pool; a task owns every output row it writes, so tasks never share memory.
//
// The block products are written so that every inner loop runs over a contiguous row of H or
// of a key block (the compiler vectorizes it), with the accumulated row held in registers.
// llmjax.cpu_kernels builds this file; llmjax.attention.cpu_fused calls it.

#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace {

using namespace llmjax_cpu;

constexpr int64_t kBlock = 64;  // rows of queries and of keys per block

// exp(x) to about 1 ulp for x <= 0 (0 below -87), written so that loops over it vectorize
// (the C library's expf is a scalar call): x = n ln2 + r, exp(r) by Cephes' polynomial.
inline float Exp(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, 4);
  return p * two_n;
}

struct Shape {
  int64_t B, T, N, K, H;
  int64_t q_row() const { return N * H; }   // stride of t in q / out / dq
  int64_t kv_row() const { return K * H; }  // stride of t in k / v / dk / dv
};

// Copies rows [t0, t0 + rows) (row stride `stride`) into a dense [rows, H] block.
template <int H>
inline void LoadRows(const float* base, int64_t stride, int64_t t0, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * H, base + (t0 + r) * stride, H * 4);
}

// Copies rows [t0, t0 + rows) transposed into [H, kBlock] (columns past `rows` are zero).
template <int H>
inline void LoadRowsT(const float* base, int64_t stride, int64_t t0, int64_t rows, float* out) {
  std::fill(out, out + H * kBlock, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = base + (t0 + r) * stride;
    for (int d = 0; d < H; ++d) out[d * kBlock + r] = src[d];
  }
}

// Rows per step: as many as keep R x W / 16 accumulators and a loaded row in 32 registers.
template <int W>
constexpr int Rows() {
  return W >= 128 ? 2 : 4;
}

// out[r, :] (+)= sum_j w(r, j) * x[j, :] over `rows` rows of width W, j < n, with w(r, j) =
// p[r * row_stride + j * col_stride]: every block product below is this one, q k^T (w = q,
// x = k^T), p v (w = p) and p^T x (w = p^T).
template <int W, bool kZero>
inline void BlockProduct(const float* p, int64_t row_stride, int64_t col_stride,
                         const float* x, int64_t n, int64_t rows, float* out) {
  Product<Rows<W>(), W / kLanes, kZero>(p, row_stride, col_stride, x, W, n, rows, out, W);
}

// s[i, :] = a[i, :] . bt[:, :] for i < rows: [rows, H] x [H, kBlock].
template <int H>
inline void MatMulNT(const float* a, const float* bt, int64_t rows, float* s) {
  BlockProduct<kBlock, true>(a, H, 1, bt, H, rows, s);
}

// out[i, :] += sum_j p[i, j] * v[j, :] for i < rows, j < cols: [rows, kBlock] x [kBlock, H].
template <int H>
inline void MatMulNN(const float* p, const float* v, int64_t rows, int64_t cols, float* out) {
  BlockProduct<H, false>(p, kBlock, 1, v, cols, rows, out);
}

// out[j, :] += sum_i p[i, j] * x[i, :] for j < cols, i < rows: [kBlock, rows] x [rows, H].
template <int H>
inline void MatMulTN(const float* p, const float* x, int64_t rows, int64_t cols, float* out) {
  BlockProduct<H, false>(p, 1, kBlock, x, rows, cols, out);
}

template <int H>
void ForwardHead(const Shape& sh, const float* q, const float* k, const float* v, float scale,
                 int64_t b, int64_t kh, float* out, float* lse) {
  const int64_t G = sh.N / sh.K, T = sh.T;
  std::vector<float> qb(kBlock * H), kt(H * kBlock), vb(kBlock * H), s(kBlock * kBlock),
      o(kBlock * H);
  float m[kBlock], l[kBlock];
  const float* kh_ = k + b * T * sh.kv_row() + kh * H;
  const float* vh = v + b * T * sh.kv_row() + kh * H;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t n = kh * G + g;
    const float* qh = q + b * T * sh.q_row() + n * H;
    for (int64_t q0 = 0; q0 < T; q0 += kBlock) {
      const int64_t rows = std::min(kBlock, T - q0);
      LoadRows<H>(qh, sh.q_row(), q0, rows, qb.data());
      for (int64_t i = 0; i < rows * H; ++i) qb[i] *= scale;
      std::fill(o.begin(), o.end(), 0.0f);
      std::fill(m, m + kBlock, -std::numeric_limits<float>::infinity());
      std::fill(l, l + kBlock, 0.0f);
      for (int64_t k0 = 0; k0 <= q0; k0 += kBlock) {
        const int64_t cols = std::min(kBlock, T - k0);
        LoadRowsT<H>(kh_, sh.kv_row(), k0, cols, kt.data());
        LoadRows<H>(vh, sh.kv_row(), k0, cols, vb.data());
        MatMulNT<H>(qb.data(), kt.data(), rows, s.data());
        for (int64_t i = 0; i < rows; ++i) {
          float* si = s.data() + i * kBlock;
          // Keys this query sees in the block: all before the diagonal block, 0..t on it.
          const int64_t visible = std::min(cols, q0 + i - k0 + 1);
          float mx = m[i];
          for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, si[j]);
          float sum = 0.0f;
          for (int64_t j = 0; j < visible; ++j) {
            si[j] = Exp(si[j] - mx);
            sum += si[j];
          }
          for (int64_t j = visible; j < kBlock; ++j) si[j] = 0.0f;
          const float alpha = Exp(m[i] - mx);
          l[i] = l[i] * alpha + sum;
          m[i] = mx;
          float* oi = o.data() + i * H;
          for (int d = 0; d < H; ++d) oi[d] *= alpha;
        }
        MatMulNN<H>(s.data(), vb.data(), rows, cols, o.data());
      }
      float* out_h = out + b * T * sh.q_row() + n * H;
      float* lse_h = lse + (b * sh.N + n) * T;
      for (int64_t i = 0; i < rows; ++i) {
        const float inv = 1.0f / l[i];
        float* dst = out_h + (q0 + i) * sh.q_row();
        for (int d = 0; d < H; ++d) dst[d] = o[i * H + d] * inv;
        lse_h[q0 + i] = m[i] + std::log(l[i]);
      }
    }
  }
}

template <int H>
void BackwardHead(const Shape& sh, const float* q, const float* k, const float* v,
                  const float* out, const float* lse, const float* dout, float scale, int64_t b,
                  int64_t kh, float* dq, float* dk, float* dv) {
  const int64_t G = sh.N / sh.K, T = sh.T;
  std::vector<float> qb(kBlock * H), dob(kBlock * H), kb(kBlock * H), kt(H * kBlock),
      vt(H * kBlock), p(kBlock * kBlock), dp(kBlock * kBlock), dkb(kBlock * H),
      dvb(kBlock * H), dqh(T * H), delta(T);
  const float* kh_ = k + b * T * sh.kv_row() + kh * H;
  const float* vh = v + b * T * sh.kv_row() + kh * H;
  float* dk_h = dk + b * T * sh.kv_row() + kh * H;
  float* dv_h = dv + b * T * sh.kv_row() + kh * H;
  for (int64_t t = 0; t < T; ++t) {
    std::memset(dk_h + t * sh.kv_row(), 0, H * 4);
    std::memset(dv_h + t * sh.kv_row(), 0, H * 4);
  }
  for (int64_t g = 0; g < G; ++g) {
    const int64_t n = kh * G + g;
    const float* qh = q + b * T * sh.q_row() + n * H;
    const float* oh = out + b * T * sh.q_row() + n * H;
    const float* doh = dout + b * T * sh.q_row() + n * H;
    const float* lse_h = lse + (b * sh.N + n) * T;
    for (int64_t t = 0; t < T; ++t) {
      float acc = 0.0f;
      for (int d = 0; d < H; ++d) acc += doh[t * sh.q_row() + d] * oh[t * sh.q_row() + d];
      delta[t] = acc;
    }
    std::fill(dqh.begin(), dqh.end(), 0.0f);
    for (int64_t k0 = 0; k0 < T; k0 += kBlock) {
      const int64_t cols = std::min(kBlock, T - k0);
      LoadRows<H>(kh_, sh.kv_row(), k0, cols, kb.data());
      LoadRowsT<H>(kh_, sh.kv_row(), k0, cols, kt.data());
      LoadRowsT<H>(vh, sh.kv_row(), k0, cols, vt.data());
      std::fill(dkb.begin(), dkb.end(), 0.0f);
      std::fill(dvb.begin(), dvb.end(), 0.0f);
      for (int64_t q0 = k0; q0 < T; q0 += kBlock) {
        const int64_t rows = std::min(kBlock, T - q0);
        LoadRows<H>(qh, sh.q_row(), q0, rows, qb.data());
        LoadRows<H>(doh, sh.q_row(), q0, rows, dob.data());
        for (int64_t i = 0; i < rows * H; ++i) qb[i] *= scale;
        MatMulNT<H>(qb.data(), kt.data(), rows, p.data());   // logits
        MatMulNT<H>(dob.data(), vt.data(), rows, dp.data());  // d_out . v
        for (int64_t i = 0; i < rows; ++i) {
          float* pi = p.data() + i * kBlock;
          float* dpi = dp.data() + i * kBlock;
          const int64_t visible = std::min(cols, q0 + i - k0 + 1);  // q0 >= k0
          const float li = lse_h[q0 + i], di = delta[q0 + i];
          for (int64_t j = 0; j < visible; ++j) {
            pi[j] = Exp(pi[j] - li);
            dpi[j] = pi[j] * (dpi[j] - di);  // d logits (before the scale)
          }
          for (int64_t j = visible; j < kBlock; ++j) pi[j] = dpi[j] = 0.0f;
        }
        MatMulTN<H>(p.data(), dob.data(), rows, cols, dvb.data());
        // dk += d_logits^T (q * scale); dq += d_logits k (scaled once at the end).
        MatMulTN<H>(dp.data(), qb.data(), rows, cols, dkb.data());
        MatMulNN<H>(dp.data(), kb.data(), rows, cols, dqh.data() + q0 * H);
      }
      for (int64_t j = 0; j < cols; ++j) {
        float* dkr = dk_h + (k0 + j) * sh.kv_row();
        float* dvr = dv_h + (k0 + j) * sh.kv_row();
        for (int d = 0; d < H; ++d) {
          dkr[d] += dkb[j * H + d];
          dvr[d] += dvb[j * H + d];
        }
      }
    }
    float* dq_h = dq + b * T * sh.q_row() + n * H;
    for (int64_t t = 0; t < T; ++t)
      for (int d = 0; d < H; ++d) dq_h[t * sh.q_row() + d] = dqh[t * H + d] * scale;
  }
}

ffi::Error CheckShapes(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k,
                       ffi::Buffer<ffi::F32>& v, Shape* sh) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("q, k and v must be [B, T, heads, H]");
  *sh = Shape{qd[0], qd[1], qd[2], kd[2], qd[3]};
  for (int i = 0; i < 4; ++i)
    if (kd[i] != vd[i]) return ffi::Error::InvalidArgument("k and v shapes differ");
  if (kd[0] != sh->B || kd[1] != sh->T || kd[3] != sh->H || sh->K == 0 || sh->N % sh->K != 0)
    return ffi::Error::InvalidArgument("k/v must be [B, T, K, H] with N a multiple of K");
  if (sh->H != 32 && sh->H != 64 && sh->H != 128)
    return ffi::Error::InvalidArgument("head size must be 32, 64 or 128");
  return ffi::Error::Success();
}

template <template <int> class Fn, typename... Args>
void Dispatch(int64_t H, Args&&... args) {
  if (H == 32) Fn<32>::Run(args...);
  if (H == 64) Fn<64>::Run(args...);
  if (H == 128) Fn<128>::Run(args...);
}

template <int H>
struct Fwd {
  static void Run(ffi::ThreadPool& pool, const Shape& sh, const float* q, const float* k,
                  const float* v, float scale, float* out, float* lse) {
    ParallelFor(pool, sh.B * sh.K, [&](int64_t i) {
      ForwardHead<H>(sh, q, k, v, scale, i / sh.K, i % sh.K, out, lse);
    });
  }
};

template <int H>
struct Bwd {
  static void Run(ffi::ThreadPool& pool, const Shape& sh, const float* q, const float* k,
                  const float* v, const float* out, const float* lse, const float* dout,
                  float scale, float* dq, float* dk, float* dv) {
    ParallelFor(pool, sh.B * sh.K, [&](int64_t i) {
      BackwardHead<H>(sh, q, k, v, out, lse, dout, scale, i / sh.K, i % sh.K, dq, dk, dv);
    });
  }
};

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                       ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out,
                       ffi::ResultBuffer<ffi::F32> lse, float scale) {
  Shape sh;
  if (auto err = CheckShapes(q, k, v, &sh); err.failure()) return err;
  Dispatch<Fwd>(sh.H, pool, sh, q.typed_data(), k.typed_data(), v.typed_data(), scale,
                out->typed_data(), lse->typed_data());
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> out,
                        ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                        ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                        ffi::ResultBuffer<ffi::F32> dv, float scale) {
  Shape sh;
  if (auto err = CheckShapes(q, k, v, &sh); err.failure()) return err;
  Dispatch<Bwd>(sh.H, pool, sh, q.typed_data(), k.typed_data(), v.typed_data(),
                out.typed_data(), lse.typed_data(), dout.typed_data(), scale, dq->typed_data(),
                dk->typed_data(), dv->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmjaxCausalAttentionFwd, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmjaxCausalAttentionBwd, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

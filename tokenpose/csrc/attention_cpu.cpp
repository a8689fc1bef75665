// tokenpose::attention — softmax(q k^T * scale) v for float32 CPU tensors, one fused pass per block
// of 16 queries, AVX-512. Built on demand by tokenpose.models.fused_attention (plain shared library,
// registered with the dispatcher, no Python module) and loaded by Python engines, AOTInductor
// packages and the C++ example alike.
//
// Why: TokenPose's heads are narrow (24 channels in the S, B and MPII models, 16 in L, 12 in T), and
// the general kernels handle that poorly: at S-v2's shape (batch 8, 8 heads, 785 tokens) torch's flash
// kernel takes ~40 ms and ONNX Runtime's MultiHeadAttention ~32 ms, while the two matmuls alone need
// ~20 ms at this CPU's FMA rate. Here each block keeps its 16 queries (times the scale) transposed in
// D registers, one query per vector lane, so that
//   1. logits: for each key, D fused multiply-adds of a broadcast key element against the query
//      registers give that key's 16 logits (four keys at a time, four independent chains);
//   2. softmax: the row max and sum are lane-wise (no horizontal reduction); exp is a degree-7
//      polynomial on [-ln2/2, ln2/2] scaled by 2^n (max relative error ~2e-7);
//   3. output: D accumulator registers, one per channel, take a broadcast value element times the
//      16 probabilities per key; divided by the sums at the end.
// The (queries, keys) matrix of a block lives in a 16 x keys scratch buffer (50 KB at 785 keys),
// never in memory as a whole. Supported head sizes: those of kernel_for below; anything else (other
// sizes, dtypes, devices, no keys, or a CPU without AVX-512F) goes to at::scaled_dot_product_attention,
// with the same output layout, so the op is correct wherever the library loads. Inputs whose channels
// are not contiguous are copied first.
//
// Output: (B, H, L, D) with the memory layout of (B, L, H, D), i.e. `out.transpose(1, 2)` of a
// contiguous tensor: the caller's transpose(1, 2).reshape(B, L, H * D) is then free. The fake
// (meta) implementation in fused_attention.py declares the same strides.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace {

constexpr int kRows = 16;  // queries per block: one per lane of a 512-bit float vector

#define TOKENPOSE_AVX512 __attribute__((target("avx512f,avx512dq,fma")))

// exp(x) for x <= 0 (logits minus their row max). x = n ln2 + r, |r| <= ln2 / 2; exp(r) by its
// Taylor polynomial to r^7 / 7! (truncation < 1.2e-7 relative), times 2^n by vscalefps.
TOKENPOSE_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  // exp(-87) ~ 1.6e-38 is still a normal float. The operand order keeps a NaN (maxps returns its
  // second operand when either is NaN), so a NaN logit gives a NaN output as in SDPA.
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2 split in two so that n * ln2_hi is exact for |n| <= 128.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

struct Block {
  const float* q;   // first query row of the block
  int64_t q_row;    // stride between query rows (floats)
  const float* k;   // first key row of this (batch, head)
  const float* v;   // first value row
  int64_t k_row, v_row;
  int64_t keys;
  int rows;         // valid queries in the block, 1..kRows
  float scale;
  float* out;       // first output row of the block
  int64_t out_row;
};

template <int D>
TOKENPOSE_AVX512 void attend_block(const Block& b, float* scores) {
  __m512 qt[D];  // qt[d] lane i = q[i][d] * scale; lanes past b.rows are zero
  {
    alignas(64) float buf[D][kRows];
    for (int d = 0; d < D; ++d)
      for (int i = 0; i < kRows; ++i) buf[d][i] = i < b.rows ? b.q[i * b.q_row + d] * b.scale : 0.0f;
    for (int d = 0; d < D; ++d) qt[d] = _mm512_load_ps(buf[d]);
  }
  // 1. logits, four keys at a time, and their lane-wise max.
  __m512 mx = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 4 <= b.keys; j += 4) {
    const float* k0 = b.k + j * b.k_row;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
#pragma GCC unroll 32
    for (int d = 0; d < D; ++d) {
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(k0[d]), qt[d], a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(k0[b.k_row + d]), qt[d], a1);
      a2 = _mm512_fmadd_ps(_mm512_set1_ps(k0[2 * b.k_row + d]), qt[d], a2);
      a3 = _mm512_fmadd_ps(_mm512_set1_ps(k0[3 * b.k_row + d]), qt[d], a3);
    }
    _mm512_store_ps(scores + (j + 0) * kRows, a0);
    _mm512_store_ps(scores + (j + 1) * kRows, a1);
    _mm512_store_ps(scores + (j + 2) * kRows, a2);
    _mm512_store_ps(scores + (j + 3) * kRows, a3);
    mx = _mm512_max_ps(mx, _mm512_max_ps(_mm512_max_ps(a0, a1), _mm512_max_ps(a2, a3)));
  }
  for (; j < b.keys; ++j) {
    const float* k0 = b.k + j * b.k_row;
    __m512 a0 = _mm512_setzero_ps();
#pragma GCC unroll 32
    for (int d = 0; d < D; ++d) a0 = _mm512_fmadd_ps(_mm512_set1_ps(k0[d]), qt[d], a0);
    _mm512_store_ps(scores + j * kRows, a0);
    mx = _mm512_max_ps(mx, a0);
  }
  // 2. probabilities (unnormalised) and their lane-wise sum.
  __m512 sum = _mm512_setzero_ps();
  for (j = 0; j < b.keys; ++j) {
    const __m512 p = exp_nonpositive(_mm512_sub_ps(_mm512_load_ps(scores + j * kRows), mx));
    _mm512_store_ps(scores + j * kRows, p);
    sum = _mm512_add_ps(sum, p);
  }
  // 3. probabilities times values, one accumulator per channel.
  __m512 acc[D];
#pragma GCC unroll 32
  for (int d = 0; d < D; ++d) acc[d] = _mm512_setzero_ps();
  for (j = 0; j < b.keys; ++j) {
    const __m512 p = _mm512_load_ps(scores + j * kRows);
    const float* v0 = b.v + j * b.v_row;
#pragma GCC unroll 32
    for (int d = 0; d < D; ++d) acc[d] = _mm512_fmadd_ps(_mm512_set1_ps(v0[d]), p, acc[d]);
  }
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), sum);
  alignas(64) float obuf[D][kRows];
#pragma GCC unroll 32
  for (int d = 0; d < D; ++d) _mm512_store_ps(obuf[d], _mm512_mul_ps(acc[d], inv));
  for (int i = 0; i < b.rows; ++i)
    for (int d = 0; d < D; ++d) b.out[i * b.out_row + d] = obuf[d][i];
}

using BlockFn = void (*)(const Block&, float*);

// The kernel for head size d, or nullptr (then the op falls back to scaled_dot_product_attention).
BlockFn kernel_for(int64_t d) {
  switch (d) {
    case 8: return &attend_block<8>;
    case 12: return &attend_block<12>;
    case 16: return &attend_block<16>;
    case 24: return &attend_block<24>;
    default: return nullptr;
  }
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("fma");
  return has;
}

// TOKENPOSE_ATTENTION_FALLBACK=1 forces the fallback (tests use it to check that path on AVX-512 CPUs).
bool fallback_forced() {
  const char* v = std::getenv("TOKENPOSE_ATTENTION_FALLBACK");
  return v != nullptr && v[0] != '\0' && v[0] != '0';
}

at::Tensor empty_output(const at::Tensor& q) {
  return at::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options()).transpose(1, 2);
}

at::Tensor attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, double scale) {
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4,
              "tokenpose::attention: q, k, v must be (batch, heads, tokens, head_size), got ", q_in.sizes(), ", ",
              k_in.sizes(), ", ", v_in.sizes());
  TORCH_CHECK(k_in.sizes() == v_in.sizes(), "tokenpose::attention: k ", k_in.sizes(), " and v ", v_in.sizes(),
              " differ");
  TORCH_CHECK(q_in.size(0) == k_in.size(0) && q_in.size(1) == k_in.size(1) && q_in.size(3) == k_in.size(3),
              "tokenpose::attention: q ", q_in.sizes(), " does not match k ", k_in.sizes());
  const BlockFn fn = kernel_for(q_in.size(3));
  const bool fast = fn != nullptr && q_in.device().is_cpu() && q_in.scalar_type() == at::kFloat &&
                    k_in.scalar_type() == at::kFloat && v_in.scalar_type() == at::kFloat && k_in.size(2) > 0 &&
                    cpu_has_avx512() && !fallback_forced();
  at::Tensor out = empty_output(q_in);
  if (!fast) {
    out.copy_(at::scaled_dot_product_attention(q_in, k_in, v_in, {}, 0.0, false, scale));
    return out;
  }
  const at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  const int64_t batch = q.size(0), heads = q.size(1), queries = q.size(2), keys = k.size(2), d = q.size(3);
  const int64_t blocks = (queries + kRows - 1) / kRows;
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t out_row = heads * d;
  at::parallel_for(0, batch * heads * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> raw(static_cast<size_t>(keys) * kRows + 16);
    float* scores = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(raw.data()) + 63) & ~uintptr_t(63));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bh = t / blocks, i0 = (t % blocks) * kRows, b = bh / heads, h = bh % heads;
      Block blk{qp + b * q.stride(0) + h * q.stride(1) + i0 * q.stride(2), q.stride(2),
                kp + b * k.stride(0) + h * k.stride(1), vp + b * v.stride(0) + h * v.stride(1),
                k.stride(2), v.stride(2), keys, static_cast<int>(std::min<int64_t>(kRows, queries - i0)),
                static_cast<float>(scale), op + (b * queries + i0) * out_row + h * d, out_row};
      fn(blk, scores);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(tokenpose, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(tokenpose, CPU, m) {
  m.impl("attention", &attention);
}

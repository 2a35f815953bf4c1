// CUDA kernels of the trie-constrained beam step, on raw pointers (no torch). Semantics in ../ops.h; they
// mirror the CPU kernel (../cpu/beam_step.cpp) decision for decision.
#pragma once

#include <c10/macros/Macros.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../sampling.h"

namespace atspeed_ext::cuda {

constexpr int kBeamStepThreads = 256;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float nan_max(float m, float x) { return (x > m || x != x) ? x : m; }

__device__ __forceinline__ float candidate_score(float beam_score, float logit, float lse) {
  return __fadd_rn(beam_score, __fsub_rn(logit, lse));  // no FMA contraction: same rounding as the CPU
}

__device__ __forceinline__ bool is_candidate(float s) { return s > -INFINITY; }

// Candidate order of the op: higher score first, then lower flat index (beam-major, token-sorted edges).
__device__ __forceinline__ bool better(float sa, int64_t ia, float sb, int64_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Block-wide log-sum-exp of one row over the full vocabulary (every thread gets the result): sum and log
// in double, rounded to float once (see finish_logsumexp in ../cpu/beam_step_common.h).
template <typename T>
__device__ float block_logsumexp(const T* __restrict__ x, int64_t V) {
  __shared__ float smax[32];
  __shared__ double ssum[32];
  __shared__ float result;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = nan_max(m, to_float(x[v]));
  for (int o = 16; o > 0; o /= 2) m = nan_max(m, __shfl_xor_sync(0xffffffff, m, o));
  if (lane == 0) smax[warp] = m;
  __syncthreads();
  m = smax[0];
  for (int w = 1; w < nwarps; ++w) m = nan_max(m, smax[w]);
  double s = 0.0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += exp(static_cast<double>(to_float(x[v])) - m);
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffff, s, o);
  if (lane == 0) ssum[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < nwarps; ++w) total += ssum[w];
    result = static_cast<float>(static_cast<double>(m) + log(total));
  }
  __syncthreads();
  return result;
}

// One block per (request, beam) row.
template <typename T>
__global__ void row_logsumexp_kernel(const T* __restrict__ logits, const bool* __restrict__ live,
                                     float* __restrict__ lse, int64_t V) {
  const int64_t row = blockIdx.x;
  if (!live[row]) return;  // uniform across the block
  const float l = block_logsumexp(logits + row * V, V);
  if (threadIdx.x == 0) lse[row] = l;
}

// Block-wide selection of the num_out best (beam, child) candidates of W beams; row_of(w) is beam w's logits
// row. Candidates are numbered beam-major (flat index c); each round finds, by a block-wide arg-max, the best
// candidate strictly after the previous pick in the op's order, so none is taken twice and no sort buffer is
// needed. Scores are cached in shared memory (`cached`, `cache_cap` floats) when they fit and recomputed
// otherwise (same formula, same result). `prefix` is shared scratch of W + 1 entries. Ends with a barrier.
template <typename T, typename RowOf>
__device__ void block_select_candidates(RowOf row_of, const float* lse, const float* beam_scores,
                                        const int64_t* beam_nodes, const bool* beam_live, int W,
                                        const int64_t* __restrict__ child_offsets, int64_t num_nodes,
                                        const int64_t* __restrict__ child_tokens, int64_t V, int num_out,
                                        int64_t* prefix,
                                        float* cached, int cache_cap, float* out_scores, int64_t* out_parents,
                                        int64_t* out_tokens, int64_t* out_nodes) {
  __shared__ float red_s[32];
  __shared__ int64_t red_i[32];
  __shared__ float pick_s;
  __shared__ int64_t pick_i;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  if (threadIdx.x == 0) {
    prefix[0] = 0;
    for (int w = 0; w < W; ++w) {
      // The CPU twin checks every live beam's node up front (cpu::check_live_beam_nodes).
      CUDA_KERNEL_ASSERT_MSG(!beam_live[w] || (beam_nodes[w] >= 0 && beam_nodes[w] < num_nodes),
                             "trie_beam_step / strict_verify: a beam_nodes entry of a live beam is not a trie node");
      const int64_t n = beam_live[w] ? child_offsets[beam_nodes[w] + 1] - child_offsets[beam_nodes[w]] : 0;
      prefix[w + 1] = prefix[w] + n;
    }
  }
  __syncthreads();
  const int64_t C = prefix[W];
  const bool use_cache = C <= cache_cap;

  // Beam of flat candidate c: the last w with prefix[w] <= c (binary search; W is small).
  auto beam_of = [&](int64_t c) {
    int lo = 0, hi = W - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (prefix[mid] <= c) lo = mid; else hi = mid - 1;
    }
    return lo;
  };
  auto edge_of = [&](int64_t c, int w) { return child_offsets[beam_nodes[w]] + (c - prefix[w]); };
  auto score_of = [&](int64_t c) {
    const int w = beam_of(c);
    const int64_t token = sampling::token_column(child_tokens, edge_of(c, w), V);
    return candidate_score(beam_scores[w], to_float(row_of(w)[token]), lse[w]);
  };

  if (use_cache) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) cached[c] = score_of(c);
    __syncthreads();
  }

  float last_s = INFINITY;
  int64_t last_i = -1;
  int j = 0;
  for (; j < num_out; ++j) {
    float best_s = -INFINITY;
    int64_t best_i = -1;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float s = use_cache ? cached[c] : score_of(c);
      if (!is_candidate(s) || !better(last_s, last_i, s, c)) continue;
      if (best_i < 0 || better(s, c, best_s, best_i)) { best_s = s; best_i = c; }
    }
    for (int o = 16; o > 0; o /= 2) {
      const float os = __shfl_xor_sync(0xffffffff, best_s, o);
      const int64_t oi = __shfl_xor_sync(0xffffffff, best_i, o);
      if (oi >= 0 && (best_i < 0 || better(os, oi, best_s, best_i))) { best_s = os; best_i = oi; }
    }
    if (lane == 0) { red_s[warp] = best_s; red_i[warp] = best_i; }
    __syncthreads();
    if (threadIdx.x == 0) {
      float s = red_s[0];
      int64_t i = red_i[0];
      for (int w = 1; w < nwarps; ++w) {
        if (red_i[w] >= 0 && (i < 0 || better(red_s[w], red_i[w], s, i))) { s = red_s[w]; i = red_i[w]; }
      }
      pick_s = s;
      pick_i = i;
      if (i >= 0) {
        const int w = beam_of(i);
        const int64_t e = edge_of(i, w);
        out_scores[j] = s;
        out_parents[j] = w;
        out_tokens[j] = child_tokens[e];
        out_nodes[j] = e + 1;
      }
    }
    __syncthreads();
    last_s = pick_s;
    last_i = pick_i;
    if (last_i < 0) break;
  }
  for (int jj = j + threadIdx.x; jj < num_out; jj += blockDim.x) {  // slots without a candidate
    out_scores[jj] = -INFINITY;
    out_parents[jj] = out_tokens[jj] = out_nodes[jj] = -1;
  }
  __syncthreads();
}

// One block per request.
template <typename T>
__global__ void select_candidates_kernel(const T* __restrict__ logits, const float* __restrict__ beam_scores,
                                         const int64_t* __restrict__ beam_nodes, const bool* __restrict__ beam_live,
                                         const int64_t* __restrict__ child_offsets, int64_t num_nodes,
                                         const int64_t* __restrict__ child_tokens, const float* __restrict__ lse,
                                         int W, int64_t V, int num_out, int score_cache_cap,
                                         float* __restrict__ out_scores, int64_t* __restrict__ out_parents,
                                         int64_t* __restrict__ out_tokens, int64_t* __restrict__ out_nodes) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int64_t* prefix = reinterpret_cast<int64_t*>(smem_raw);    // [W + 1]
  float* cached = reinterpret_cast<float*>(prefix + W + 1);  // [score_cache_cap]
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * W, out0 = static_cast<int64_t>(blockIdx.x) * num_out;
  auto row_of = [&](int w) { return logits + (row0 + w) * V; };
  block_select_candidates<T>(row_of, lse + row0, beam_scores + row0, beam_nodes + row0, beam_live + row0, W,
                             child_offsets, num_nodes, child_tokens, V, num_out, prefix, cached, score_cache_cap,
                             out_scores + out0, out_parents + out0, out_tokens + out0, out_nodes + out0);
}

}  // namespace atspeed_ext::cuda

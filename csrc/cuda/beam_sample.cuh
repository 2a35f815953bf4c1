// CUDA kernel of trie_beam_sample, on raw pointers (no torch but c10's kernel-assert macro). Semantics in
// ../ops.h; mirrors the CPU kernel (../cpu/beam_sample.cpp) decision for decision: the same float32 candidate
// scores and float64 Gumbel keys (../sampling.h), drawn in key order.
#pragma once

#include <c10/macros/Macros.h>

#include "../sampling.h"
#include "beam_step.cuh"

namespace atspeed_ext::cuda {

// Draw order of the op: higher key first, then lower flat index (beam-major, token-sorted edges).
__device__ __forceinline__ bool drawn_before(double ka, int64_t ia, double kb, int64_t ib) {
  return ka > kb || (ka == kb && ia < ib);
}

// One block per request: num_out rounds of a block-wide arg-max over the candidates strictly after the previous
// pick in draw order (no sort buffer). Keys are cached in shared memory when they fit (NaN marks a non-candidate)
// and recomputed otherwise (same formula, same value). What the CPU twin checks up front (live beams' nodes in
// the trie, no more children than uniforms per beam (C_u), uniforms in [0, 1]) is checked here where it is
// read, by device-side asserts (no host sync): the op then fails with "device-side assert triggered".
template <typename T>
__global__ void sample_candidates_kernel(const T* __restrict__ logits, const float* __restrict__ beam_scores,
                                         const int64_t* __restrict__ beam_nodes, const bool* __restrict__ beam_live,
                                         const int64_t* __restrict__ child_offsets,
                                         const int64_t* __restrict__ child_tokens, const float* __restrict__ lse,
                                         int64_t num_nodes, const double* __restrict__ uniforms, int64_t C_u,
                                         double temperature, int W, int64_t V, int num_out, int key_cache_cap,
                                         float* __restrict__ out_scores,
                                         int64_t* __restrict__ out_parents, int64_t* __restrict__ out_tokens,
                                         int64_t* __restrict__ out_nodes) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int64_t* prefix = reinterpret_cast<int64_t*>(smem_raw);  // [W + 1]
  double* cached = reinterpret_cast<double*>(prefix + W + 1);
  __shared__ double red_k[32];
  __shared__ int64_t red_i[32];
  __shared__ double pick_k;
  __shared__ int64_t pick_i;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * W, out0 = static_cast<int64_t>(blockIdx.x) * num_out;
  const float* sc = beam_scores + row0;
  const int64_t* nodes = beam_nodes + row0;
  const bool* live = beam_live + row0;
  if (threadIdx.x == 0) {
    prefix[0] = 0;
    for (int w = 0; w < W; ++w) {
      CUDA_KERNEL_ASSERT_MSG(!live[w] || (nodes[w] >= 0 && nodes[w] < num_nodes),
                             "trie_beam_sample: a beam_nodes entry of a live beam is not a trie node");
      const int64_t n = live[w] ? child_offsets[nodes[w] + 1] - child_offsets[nodes[w]] : 0;
      CUDA_KERNEL_ASSERT_MSG(n <= C_u,
                             "trie_beam_sample: a live beam's node has more children than uniforms.size(2); "
                             "uniforms.size(2) must be >= the children of every live beam's node");
      prefix[w + 1] = prefix[w] + n;
    }
  }
  __syncthreads();
  const int64_t C = prefix[W];
  const bool use_cache = C <= key_cache_cap;
  auto edge_of = [&](int64_t c, int w) { return child_offsets[nodes[w]] + (c - prefix[w]); };
  auto score_of = [&](int64_t c, int w) {
    const T* row = logits + (row0 + w) * V;
    const int64_t token = sampling::token_column(child_tokens, edge_of(c, w), V);
    return sampling::candidate_score(sc[w], to_float(row[token]), lse[row0 + w]);
  };
  auto key_of = [&](int64_t c) {  // NaN: not a candidate
    const int w = static_cast<int>(sampling::owner_of(prefix, W, c));
    const float s = score_of(c, w);
    if (!sampling::is_candidate(s)) return static_cast<double>(NAN);
    const double u = uniforms[(row0 + w) * C_u + (c - prefix[w])];
    CUDA_KERNEL_ASSERT_MSG(u >= 0.0 && u <= 1.0, "trie_beam_sample: a uniforms entry is not in [0, 1]");
    return sampling::gumbel_key(s, temperature, u);
  };
  if (use_cache) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) cached[c] = key_of(c);
    __syncthreads();
  }

  double last_k = INFINITY;
  int64_t last_i = -1;
  int j = 0;
  for (; j < num_out; ++j) {
    double best_k = -INFINITY;
    int64_t best_i = -1;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const double k = use_cache ? cached[c] : key_of(c);
      if (k != k || !drawn_before(last_k, last_i, k, c)) continue;
      if (best_i < 0 || drawn_before(k, c, best_k, best_i)) { best_k = k; best_i = c; }
    }
    for (int o = 16; o > 0; o /= 2) {
      const double ok = __shfl_xor_sync(0xffffffff, best_k, o);
      const int64_t oi = __shfl_xor_sync(0xffffffff, best_i, o);
      if (oi >= 0 && (best_i < 0 || drawn_before(ok, oi, best_k, best_i))) { best_k = ok; best_i = oi; }
    }
    if (lane == 0) { red_k[warp] = best_k; red_i[warp] = best_i; }
    __syncthreads();
    if (threadIdx.x == 0) {
      double k = red_k[0];
      int64_t i = red_i[0];
      for (int w = 1; w < nwarps; ++w) {
        if (red_i[w] >= 0 && (i < 0 || drawn_before(red_k[w], red_i[w], k, i))) { k = red_k[w]; i = red_i[w]; }
      }
      pick_k = k;
      pick_i = i;
      if (i >= 0) {
        const int w = static_cast<int>(sampling::owner_of(prefix, W, i));
        const int64_t e = edge_of(i, w);
        out_scores[out0 + j] = score_of(i, w);
        out_parents[out0 + j] = w;
        out_tokens[out0 + j] = child_tokens[e];
        out_nodes[out0 + j] = e + 1;
      }
    }
    __syncthreads();
    last_k = pick_k;
    last_i = pick_i;
    if (last_i < 0) break;
  }
  for (int jj = j + threadIdx.x; jj < num_out; jj += blockDim.x) {  // slots without a candidate
    out_scores[out0 + jj] = -INFINITY;
    out_parents[out0 + jj] = out_tokens[out0 + jj] = out_nodes[out0 + jj] = -1;
  }
}

}  // namespace atspeed_ext::cuda

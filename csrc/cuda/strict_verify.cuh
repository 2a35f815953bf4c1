// CUDA kernel of strict top-K verification, on raw pointers (spec: atspeed_ext/reference/strict_verify.py).
// One block per request walks its levels; each level is a block-wide beam step (beam_step.cuh) plus a
// membership test of the target's top-K against the drafted nodes. The row indices, num_levels and the live
// beams' nodes that the CPU twin checks up front are checked here where they are read, by device-side asserts
// (CUDA_KERNEL_ASSERT_MSG: the op then fails with "device-side assert triggered" instead of reading out of
// bounds). A level_parent that is no drafted node of the previous level never matches, on both twins; it is
// only compared, never followed.
#pragma once

#include <c10/macros/Macros.h>

#include "beam_step.cuh"

namespace atspeed_ext::cuda {

constexpr int kVerifyThreads = 256;

// Dynamic shared memory of the verify kernel for K beams and `cache_cap` cached scores.
inline size_t strict_verify_smem(int K, int cache_cap) {
  return (10 * static_cast<size_t>(K) + 1) * sizeof(int64_t) + 3 * static_cast<size_t>(K) * sizeof(float) +
         static_cast<size_t>(K) + 8 + static_cast<size_t>(cache_cap) * sizeof(float);
}

template <typename T>
__global__ void strict_verify_kernel(const T* __restrict__ logits, int64_t R, int64_t V,
                                     const int64_t* __restrict__ beam_rows, const float* __restrict__ beam_scores,
                                     const int64_t* __restrict__ beam_nodes, const bool* __restrict__ beam_live,
                                     const int64_t* __restrict__ level_parent, const int64_t* __restrict__ level_token,
                                     const int64_t* __restrict__ level_row, const int64_t* __restrict__ num_levels,
                                     int K, int64_t G, int64_t N, const int64_t* __restrict__ child_offsets,
                                     int64_t num_nodes, const int64_t* __restrict__ child_tokens, int cache_cap,
                                     int64_t* __restrict__ accepted, float* __restrict__ out_scores,
                                     int64_t* __restrict__ out_parents, int64_t* __restrict__ out_tokens,
                                     int64_t* __restrict__ out_nodes) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  int64_t* prefix = reinterpret_cast<int64_t*>(smem_raw);  // [K + 1]
  int64_t* rows = prefix + K + 1;
  int64_t* nodes = rows + K;
  int64_t* index = nodes + K;
  int64_t* yp = index + K;
  int64_t* yt = yp + K;
  int64_t* yn = yt + K;
  int64_t* parent_index = yn + K;
  int64_t* matched = parent_index + K;
  int64_t* spare = matched + K;  // keeps the float arrays 8-byte aligned
  float* scores = reinterpret_cast<float*>(spare + K);
  float* ys = scores + K;
  float* lse = ys + K;
  bool* live = reinterpret_cast<bool*>(lse + K);
  float* cached = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(live) + ((K + 7) / 8) * 8);
  __shared__ int ok;

  const int64_t b = blockIdx.x;
  const T* x = logits + b * R * V;
  const int64_t* lp = level_parent + b * G * N;
  const int64_t* lt = level_token + b * G * N;
  const int64_t* lr = level_row + b * G * N;
  const int64_t g = num_levels[b];
  CUDA_KERNEL_ASSERT_MSG(g >= 0 && g <= G, "strict_verify: a num_levels entry is not in [0, G]");
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    rows[k] = beam_rows[b * K + k];
    scores[k] = beam_scores[b * K + k];
    nodes[k] = beam_nodes[b * K + k];
    live[k] = beam_live[b * K + k];
    index[k] = k;
    CUDA_KERNEL_ASSERT_MSG(!live[k] || (rows[k] >= 0 && rows[k] < R),
                           "strict_verify: a beam_rows entry of a live beam is not a logits row in [0, R)");
  }
  __syncthreads();
  for (int64_t j = 0; j <= g; ++j) {
    for (int w = 0; w < K; ++w) {  // uniform branch: live[] is shared
      if (!live[w]) continue;
      const float l = block_logsumexp(x + rows[w] * V, V);
      if (threadIdx.x == 0) lse[w] = l;
    }
    __syncthreads();
    auto row_of = [&](int w) { return x + (live[w] ? rows[w] : 0) * V; };
    block_select_candidates<T>(row_of, lse, scores, nodes, live, K, child_offsets, num_nodes, child_tokens, V, K,
                               prefix, cached, cache_cap, ys, yp, yt, yn);
    if (threadIdx.x == 0) ok = j < g;
    __syncthreads();
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      parent_index[k] = yp[k] >= 0 ? index[yp[k]] : -1;
      matched[k] = -1;
      if (j < g && yp[k] >= 0) {
        for (int64_t n = 0; n < N; ++n) {
          if (lp[j * N + n] >= 0 && lp[j * N + n] == parent_index[k] && lt[j * N + n] == yt[k]) {
            matched[k] = n;
            break;
          }
        }
        if (matched[k] < 0) ok = 0;  // benign race: every writer writes 0
      }
    }
    __syncthreads();
    if (!ok) {
      for (int k = threadIdx.x; k < K; k += blockDim.x) {
        out_scores[b * K + k] = ys[k];
        out_parents[b * K + k] = parent_index[k];
        out_tokens[b * K + k] = yt[k];
        out_nodes[b * K + k] = yn[k];
      }
      if (threadIdx.x == 0) accepted[b] = j;
      return;
    }
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      live[k] = yp[k] >= 0;
      rows[k] = live[k] ? lr[j * N + matched[k]] : -1;
      CUDA_KERNEL_ASSERT_MSG(!live[k] || (rows[k] >= 0 && rows[k] < R),
                             "strict_verify: a level_row entry of a drafted node is not a logits row in [0, R)");
      scores[k] = ys[k];
      nodes[k] = yn[k];
      index[k] = matched[k];
    }
    __syncthreads();
  }
}

}  // namespace atspeed_ext::cuda

// CUDA kernel of sampling verification (relaxed_verify, exact_verify), on raw pointers: one block per request
// runs the shared algorithm of ../sampling.h with a block executor (parallel loops and reductions over the
// block, scalar decisions computed redundantly by every thread). What the CPU twin checks up front (num_levels,
// row indices, the drafted tree, uniforms in [0, 1]) is checked where it is read, by device-side asserts
// (CUDA_KERNEL_ASSERT_MSG, via ATS_DEVICE_CHECK in ../sampling.h): the op then fails with "device-side assert
// triggered". Per-request working memory is a global scratch buffer.
#pragma once

#include <c10/macros/Macros.h>

#include "../sampling.h"
#include "beam_step.cuh"

namespace atspeed_ext::cuda {

constexpr int kSampleVerifyThreads = 256;

// The executor of ../sampling.h over one block of kSampleVerifyThreads threads.
struct BlockExec {
  template <typename T>
  __device__ static float to_float(T v) { return cuda::to_float(v); }

  template <typename T>
  __device__ float row_lse(const T* row, int64_t V) const { return block_logsumexp(row, V); }

  template <class F>
  __device__ void for_each(int64_t n, F&& f) const {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
    __syncthreads();
  }

  template <class F>
  __device__ void once(F&& f) const {
    if (threadIdx.x == 0) f();
    __syncthreads();
  }

  template <class F>
  __device__ double sum(int64_t n, F&& f) const {
    double v = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += f(i);
    return reduce(v, false);
  }

  template <class F>
  __device__ double max(int64_t n, F&& f) const {
    double v = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v = fmax(v, static_cast<double>(f(i)));
    return reduce(v, true);
  }

  // inverse_cdf_rule of ../sampling.h: chunk sums in parallel, then one thread walks the chunks and scans the
  // chunk that crosses the target (a chunk whose rounding disagrees is skipped, the walk goes on).
  __device__ int64_t inverse_cdf(int64_t n, const double* w, double u) const {
    __shared__ double part[kSampleVerifyThreads];
    __shared__ int64_t last_pos[kSampleVerifyThreads];
    __shared__ int64_t result;
    const int64_t chunk = (n + blockDim.x - 1) / blockDim.x;
    const int64_t lo = min(n, static_cast<int64_t>(threadIdx.x) * chunk), hi = min(n, lo + chunk);
    double local = 0.0;
    int64_t last = -1;
    for (int64_t c = lo; c < hi; ++c) {
      local += w[c];
      if (w[c] > 0.0) last = c;
    }
    part[threadIdx.x] = local;
    last_pos[threadIdx.x] = last;
    __syncthreads();
    if (threadIdx.x == 0) {
      double total = 0.0;
      int64_t fallback = -1;
      for (int i = 0; i < static_cast<int>(blockDim.x); ++i) {
        total += part[i];
        if (last_pos[i] >= 0) fallback = last_pos[i];
      }
      const double t = u * total;
      double cum = 0.0;
      int64_t res = -1;
      for (int i = 0; i < static_cast<int>(blockDim.x) && res < 0; ++i) {
        if (cum + part[i] > t) {
          double run = cum;
          const int64_t a = min(n, static_cast<int64_t>(i) * chunk), b = min(n, a + chunk);
          for (int64_t c = a; c < b; ++c) {
            run += w[c];
            if (w[c] > 0.0 && run > t) {
              res = c;
              break;
            }
          }
        }
        cum += part[i];
      }
      result = res >= 0 ? res : fallback;
    }
    __syncthreads();
    const int64_t r = result;
    __syncthreads();  // `result` may be rewritten by the next call
    return r;
  }

  // if *slot < 0, *slot = v, atomically; the old *slot.
  __device__ int64_t claim(int64_t* slot, int64_t v) const {
    static_assert(sizeof(int64_t) == sizeof(unsigned long long), "int64_t must be 64 bits");
    return static_cast<int64_t>(atomicCAS(reinterpret_cast<unsigned long long*>(slot),
                                          static_cast<unsigned long long>(-1), static_cast<unsigned long long>(v)));
  }

 private:
  // Block-wide sum or max; every thread gets the same value (same combination order everywhere).
  __device__ static double reduce(double v, bool is_max) {
    __shared__ double red[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    for (int o = 16; o > 0; o /= 2) {
      const double other = __shfl_xor_sync(0xffffffff, v, o);
      v = is_max ? fmax(v, other) : v + other;
    }
    __syncthreads();  // the previous reduction's readers are done with red[]
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double total = red[0];
    for (int i = 1; i < nwarps; ++i) total = is_max ? fmax(total, red[i]) : total + red[i];
    return total;
  }
};

template <typename T>
__global__ void sample_verify_kernel(bool exact, const T* __restrict__ logits, int64_t R, int64_t V,
                                     const int64_t* __restrict__ beam_rows, const float* __restrict__ beam_scores,
                                     const int64_t* __restrict__ beam_nodes, const bool* __restrict__ beam_live,
                                     int64_t K, const int64_t* __restrict__ level_parent,
                                     const int64_t* __restrict__ level_token, const int64_t* __restrict__ level_row,
                                     const int64_t* __restrict__ num_levels, int64_t G, int64_t N,
                                     const T* __restrict__ draft_logits, const float* __restrict__ draft_scores,
                                     int64_t W, const double* __restrict__ uniforms,
                                     const int64_t* __restrict__ child_offsets,
                                     const int64_t* __restrict__ child_tokens, int64_t num_nodes, double temperature,
                                     unsigned char* __restrict__ scratch, int64_t scratch_bytes, int64_t Cmax, int64_t Cqmax,
                                     int64_t* __restrict__ accepted, float* __restrict__ out_scores,
                                     int64_t* __restrict__ out_parents, int64_t* __restrict__ out_tokens,
                                     int64_t* __restrict__ out_nodes) {
  const int64_t b = blockIdx.x;
  const int64_t g = num_levels[b];
  CUDA_KERNEL_ASSERT_MSG(g >= 0 && g <= G, "relaxed_verify / exact_verify: a num_levels entry is not in [0, G]");
  const sampling::VerifyRequest<T> req{logits + b * R * V, R, V, beam_rows + b * K, beam_scores + b * K,
                                       beam_nodes + b * K, beam_live + b * K, K, level_parent + b * G * N,
                                       level_token + b * G * N, level_row + b * G * N, N, g,
                                       draft_logits + b * G * W * V, draft_scores + b * G * W, W,
                                       uniforms + b * (G + 1) * (2 * N + K), child_offsets, child_tokens, num_nodes,
                                       temperature, exact};
  sampling::VerifyScratch s;
  s.carve(scratch + b * scratch_bytes, K, N, W, Cmax, Cqmax);
  const sampling::VerifyOut out{accepted + b, out_scores + b * K, out_parents + b * K, out_tokens + b * K,
                                out_nodes + b * K};
  sampling::verify_request(BlockExec{}, req, s, out);
}

}  // namespace atspeed_ext::cuda

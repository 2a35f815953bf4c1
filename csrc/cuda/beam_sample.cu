// CUDA glue of trie_beam_sample: validate, guard the device, launch on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../beam_outputs.h"
#include "../cpu/beam_sample_common.h"
#include "beam_sample.cuh"
#include "cuda_types.cuh"

namespace atspeed_ext {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> trie_beam_sample_cuda(
    const at::Tensor& logits, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& child_offsets, const at::Tensor& child_tokens,
    const at::Tensor& uniforms, double temperature, int64_t num_out) {
  check_beam_sample_args(logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens, uniforms,
                         temperature, num_out);
  TORCH_CHECK(logits.is_cuda(), "logits must be a CUDA tensor, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), W = logits.size(1), V = logits.size(2), C_u = uniforms.size(2);
  TORCH_CHECK(W <= 4096, "trie_beam_sample supports at most 4096 beams per request on CUDA, got ", W);
  TORCH_CHECK(num_out <= (1 << 30), "num_out is too large: ", num_out);
  const at::Tensor x = logits.contiguous(), sc = beam_scores.contiguous(), nd = beam_nodes.contiguous(),
                   lv = beam_live.contiguous(), co = child_offsets.contiguous(), ct = child_tokens.contiguous(),
                   un = uniforms.contiguous();
  const BeamOutputs out(B, num_out, beam_scores.options());
  if (B == 0) return out.tuple();
  at::Tensor lse = at::empty({B, W}, beam_scores.options());

  // Shared memory: the per-beam prefix counts, then as many cached keys as fit in 40 KiB.
  const int64_t smem_budget = 40 * 1024;
  const int64_t prefix_bytes = (W + 1) * static_cast<int64_t>(sizeof(int64_t));
  const int cache_cap = static_cast<int>((smem_budget - prefix_bytes) / static_cast<int64_t>(sizeof(double)));
  const size_t smem = static_cast<size_t>(prefix_bytes) + static_cast<size_t>(cache_cap) * sizeof(double);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "trie_beam_sample_cuda", [&] {
    using T = typename cuda_type<scalar_t>::type;
    const T* xp = reinterpret_cast<const T*>(x.data_ptr<scalar_t>());
    const unsigned rows = grid_blocks(B * W, "trie_beam_sample");
    cuda::row_logsumexp_kernel<T><<<rows, cuda::kBeamStepThreads, 0, stream>>>(xp, lv.data_ptr<bool>(),
                                                                                  lse.data_ptr<float>(), V);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cuda::sample_candidates_kernel<T><<<B, cuda::kBeamStepThreads, smem, stream>>>(
        xp, sc.data_ptr<float>(), nd.data_ptr<int64_t>(), lv.data_ptr<bool>(), co.data_ptr<int64_t>(),
        ct.data_ptr<int64_t>(), lse.data_ptr<float>(), co.size(0) - 1, un.data_ptr<double>(), C_u, temperature,
        static_cast<int>(W), V, static_cast<int>(num_out), cache_cap, out.scores.data_ptr<float>(),
        out.parents.data_ptr<int64_t>(), out.tokens.data_ptr<int64_t>(), out.nodes.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.tuple();
}

TORCH_LIBRARY_IMPL(atspeed_ext, CUDA, m) { m.impl("trie_beam_sample", &trie_beam_sample_cuda); }

}  // namespace atspeed_ext

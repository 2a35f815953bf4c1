// CUDA glue of strict top-K verification: validate, guard the device, one block per request.
#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../beam_outputs.h"
#include "../cpu/beam_step_common.h"
#include "cuda_types.cuh"
#include "../cpu/strict_verify_common.h"
#include "strict_verify.cuh"

namespace atspeed_ext {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> strict_verify_cuda(
    const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& level_parent, const at::Tensor& level_token,
    const at::Tensor& level_row, const at::Tensor& num_levels, const at::Tensor& child_offsets,
    const at::Tensor& child_tokens) {
  check_strict_verify_args(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                           level_row, num_levels, child_offsets, child_tokens);
  TORCH_CHECK(logits.is_cuda(), "logits must be a CUDA tensor, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), R = logits.size(1), V = logits.size(2), K = beam_rows.size(1);
  const int64_t G = level_parent.size(1), N = level_parent.size(2);
  TORCH_CHECK(K <= 512, "strict_verify supports at most 512 beams on CUDA, got ", K);
  const at::Tensor x = logits.contiguous(), br = beam_rows.contiguous(), bs = beam_scores.contiguous(),
                   bn = beam_nodes.contiguous(), bl = beam_live.contiguous(), lp = level_parent.contiguous(),
                   lt = level_token.contiguous(), lr = level_row.contiguous(), nl = num_levels.contiguous(),
                   co = child_offsets.contiguous(), ct = child_tokens.contiguous();
  const VerifyOutputs out(B, K, beam_scores.options());
  if (B == 0) return out.tuple();
  const size_t fixed = cuda::strict_verify_smem(static_cast<int>(K), 0);
  // What is left of a 40 KB budget caches log-sum-exps; none is left past K = 440 (the fixed part alone is then
  // up to 47.6 KB at K = 512, still under the 48 KB that needs no opt-in).
  const int cache_cap = static_cast<int>(
      std::max<int64_t>(0, (40 * 1024 - static_cast<int64_t>(fixed)) / static_cast<int64_t>(sizeof(float))));
  const size_t smem = cuda::strict_verify_smem(static_cast<int>(K), cache_cap);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "strict_verify_cuda", [&] {
    using T = typename cuda_type<scalar_t>::type;
    cuda::strict_verify_kernel<T><<<B, cuda::kVerifyThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const T*>(x.data_ptr<scalar_t>()), R, V, br.data_ptr<int64_t>(), bs.data_ptr<float>(),
        bn.data_ptr<int64_t>(), bl.data_ptr<bool>(), lp.data_ptr<int64_t>(), lt.data_ptr<int64_t>(),
        lr.data_ptr<int64_t>(), nl.data_ptr<int64_t>(), static_cast<int>(K), G, N, co.data_ptr<int64_t>(),
        co.size(0) - 1, ct.data_ptr<int64_t>(), cache_cap, out.accepted.data_ptr<int64_t>(), out.scores.data_ptr<float>(),
        out.parents.data_ptr<int64_t>(), out.tokens.data_ptr<int64_t>(), out.nodes.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.tuple();
}

TORCH_LIBRARY_IMPL(atspeed_ext, CUDA, m) { m.impl("strict_verify", &strict_verify_cuda); }

}  // namespace atspeed_ext

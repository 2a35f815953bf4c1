// CUDA glue of sampling verification (relaxed_verify, exact_verify): validate, guard the device, size the
// per-request scratch (one host sync: the trie's largest fan-out), one block per request.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../beam_outputs.h"
#include "../cpu/sample_verify_common.h"
#include "cuda_types.cuh"
#include "sample_verify.cuh"

namespace atspeed_ext {

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_verify_cuda(
    bool exact, const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores,
    const at::Tensor& beam_nodes, const at::Tensor& beam_live, const at::Tensor& level_parent,
    const at::Tensor& level_token, const at::Tensor& level_row, const at::Tensor& num_levels,
    const at::Tensor& draft_logits, const at::Tensor& draft_scores, const at::Tensor& uniforms,
    const at::Tensor& child_offsets, const at::Tensor& child_tokens, double temperature) {
  check_sample_verify_args(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                           level_row, num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens,
                           temperature);
  TORCH_CHECK(logits.is_cuda(), "logits must be a CUDA tensor, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), R = logits.size(1), V = logits.size(2), K = beam_rows.size(1);
  const int64_t G = level_parent.size(1), N = level_parent.size(2), W = draft_logits.size(2);
  const at::Tensor x = logits.contiguous(), br = beam_rows.contiguous(), bs = beam_scores.contiguous(),
                   bn = beam_nodes.contiguous(), bl = beam_live.contiguous(), lp = level_parent.contiguous(),
                   lt = level_token.contiguous(), lr = level_row.contiguous(), nl = num_levels.contiguous(),
                   dx = draft_logits.contiguous(), ds = draft_scores.contiguous(), un = uniforms.contiguous(),
                   co = child_offsets.contiguous(), ct = child_tokens.contiguous();
  auto opts = beam_scores.options();
  const VerifyOutputs out(B, K, opts);
  if (B == 0) return out.tuple();
  const int64_t max_children = co.size(0) > 1 ? co.diff().max().item<int64_t>() : 0;
  const int64_t Cmax = K * max_children, Cqmax = W * max_children;
  const int64_t scratch_bytes = sampling::VerifyScratch::bytes(K, N, W, Cmax, Cqmax);
  at::Tensor scratch = at::empty({B, scratch_bytes}, opts.dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sample_verify_cuda", [&] {
    using T = typename cuda_type<scalar_t>::type;
    cuda::sample_verify_kernel<T><<<B, cuda::kSampleVerifyThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        exact, reinterpret_cast<const T*>(x.data_ptr<scalar_t>()), R, V, br.data_ptr<int64_t>(), bs.data_ptr<float>(),
        bn.data_ptr<int64_t>(), bl.data_ptr<bool>(), K, lp.data_ptr<int64_t>(), lt.data_ptr<int64_t>(),
        lr.data_ptr<int64_t>(), nl.data_ptr<int64_t>(), G, N, reinterpret_cast<const T*>(dx.data_ptr<scalar_t>()),
        ds.data_ptr<float>(), W, un.data_ptr<double>(), co.data_ptr<int64_t>(), ct.data_ptr<int64_t>(), co.size(0) - 1,
        temperature, scratch.data_ptr<uint8_t>(), scratch_bytes, Cmax, Cqmax, out.accepted.data_ptr<int64_t>(),
        out.scores.data_ptr<float>(), out.parents.data_ptr<int64_t>(), out.tokens.data_ptr<int64_t>(),
        out.nodes.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.tuple();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> relaxed_verify_cuda(
    const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& level_parent, const at::Tensor& level_token,
    const at::Tensor& level_row, const at::Tensor& num_levels, const at::Tensor& draft_logits,
    const at::Tensor& draft_scores, const at::Tensor& uniforms, const at::Tensor& child_offsets,
    const at::Tensor& child_tokens, double temperature) {
  return sample_verify_cuda(false, logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                            level_row, num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens,
                            temperature);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> exact_verify_cuda(
    const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& level_parent, const at::Tensor& level_token,
    const at::Tensor& level_row, const at::Tensor& num_levels, const at::Tensor& draft_logits,
    const at::Tensor& draft_scores, const at::Tensor& uniforms, const at::Tensor& child_offsets,
    const at::Tensor& child_tokens, double temperature) {
  return sample_verify_cuda(true, logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                            level_row, num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens,
                            temperature);
}

TORCH_LIBRARY_IMPL(atspeed_ext, CUDA, m) {
  m.impl("relaxed_verify", &relaxed_verify_cuda);
  m.impl("exact_verify", &exact_verify_cuda);
}

}  // namespace atspeed_ext

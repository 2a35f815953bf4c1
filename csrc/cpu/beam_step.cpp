// CPU kernel of the trie-constrained beam step (semantics in ops.h, readable spec in
// atspeed_ext/reference/beam_step.py). Parallel over beams for the log-sum-exp, over requests for the
// selection.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "../beam_outputs.h"
#include "../checks.h"
#include "../ops.h"
#include "beam_select.h"

namespace atspeed_ext {

namespace {

template <typename scalar_t>
void beam_step_kernel(const scalar_t* logits, const float* beam_scores, const int64_t* beam_nodes,
                      const bool* beam_live, const int64_t* child_offsets, const int64_t* child_tokens,
                      int64_t B, int64_t W, int64_t V, int64_t num_out, float* out_scores, int64_t* out_parents,
                      int64_t* out_tokens, int64_t* out_nodes) {
  std::vector<float> lse(B * W, 0.f);
  at::parallel_for(0, B * W, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      if (beam_live[row]) lse[row] = cpu::row_logsumexp(logits + row * V, V);
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<cpu::Candidate> cand;
    std::vector<const scalar_t*> rows(W);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t w = 0; w < W; ++w) rows[w] = logits + (b * W + w) * V;
      const int64_t r = b * W, o = b * num_out;
      cpu::select_candidates(rows.data(), lse.data() + r, beam_scores + r, beam_nodes + r, beam_live + r, W,
                             child_offsets, child_tokens, num_out, cand, out_scores + o, out_parents + o,
                             out_tokens + o, out_nodes + o);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> trie_beam_step_cpu(
    const at::Tensor& logits, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& child_offsets, const at::Tensor& child_tokens,
    int64_t num_out) {
  check_beam_step_args(logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens, num_out);
  const int64_t B = logits.size(0), W = logits.size(1), V = logits.size(2);
  const at::Tensor x = logits.contiguous(), sc = beam_scores.contiguous(), nd = beam_nodes.contiguous(),
                   lv = beam_live.contiguous(), co = child_offsets.contiguous(), ct = child_tokens.contiguous();
  cpu::check_live_beam_nodes(nd, lv, co.size(0) - 1);
  cpu::check_trie_arrays(co, ct, V);
  const BeamOutputs out(B, num_out, beam_scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "trie_beam_step_cpu", [&] {
    beam_step_kernel<scalar_t>(x.data_ptr<scalar_t>(), sc.data_ptr<float>(), nd.data_ptr<int64_t>(),
                               lv.data_ptr<bool>(), co.data_ptr<int64_t>(), ct.data_ptr<int64_t>(), B, W, V,
                               num_out, out.scores.data_ptr<float>(), out.parents.data_ptr<int64_t>(),
                               out.tokens.data_ptr<int64_t>(), out.nodes.data_ptr<int64_t>());
  });
  return out.tuple();
}

TORCH_LIBRARY_IMPL(atspeed_ext, CPU, m) { m.impl("trie_beam_step", &trie_beam_step_cpu); }

}  // namespace atspeed_ext

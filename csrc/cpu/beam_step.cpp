// CPU kernel of the trie-constrained beam step (semantics in ops.h, readable spec in
// atspeed_ext/reference/beam_step.py). Parallel over beams for the log-sum-exp, over requests for the
// selection.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "../ops.h"
#include "beam_step_common.h"

namespace atspeed_ext {

namespace {

struct Candidate {
  float score;
  int64_t beam;
  int64_t edge;  // edges of one beam are in token order, so (beam, edge) orders like (beam, token)
};

// Strict total order of the op: higher score first, then lower beam, then lower token.
inline bool better(const Candidate& a, const Candidate& b) {
  if (a.score != b.score) return a.score > b.score;
  if (a.beam != b.beam) return a.beam < b.beam;
  return a.edge < b.edge;
}

template <typename scalar_t>
void beam_step_kernel(const scalar_t* logits, const float* beam_scores, const int64_t* beam_nodes,
                      const bool* beam_live, const int64_t* child_offsets, const int64_t* child_tokens,
                      int64_t B, int64_t W, int64_t V, int64_t num_out, float* out_scores, int64_t* out_parents,
                      int64_t* out_tokens, int64_t* out_nodes) {
  std::vector<float> lse(B * W, 0.f);
  at::parallel_for(0, B * W, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      if (!beam_live[row]) continue;
      const scalar_t* x = logits + row * V;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t v = 0; v < V; ++v) m = nan_max(m, static_cast<float>(x[v]));
      double sum = 0.0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(static_cast<float>(x[v])) - m);
      lse[row] = finish_logsumexp(m, sum);
    }
  });

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<Candidate> cand;
    for (int64_t b = begin; b < end; ++b) {
      cand.clear();
      for (int64_t w = 0; w < W; ++w) {
        const int64_t row = b * W + w;
        if (!beam_live[row]) continue;
        const int64_t node = beam_nodes[row];
        for (int64_t e = child_offsets[node]; e < child_offsets[node + 1]; ++e) {
          const float s = candidate_score(beam_scores[row], static_cast<float>(logits[row * V + child_tokens[e]]),
                                          lse[row]);
          if (is_candidate(s)) cand.push_back({s, w, e});
        }
      }
      const int64_t k = std::min<int64_t>(num_out, static_cast<int64_t>(cand.size()));
      std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), better);
      for (int64_t j = 0; j < num_out; ++j) {
        const int64_t o = b * num_out + j;
        if (j < k) {
          out_scores[o] = cand[j].score;
          out_parents[o] = cand[j].beam;
          out_tokens[o] = child_tokens[cand[j].edge];
          out_nodes[o] = cand[j].edge + 1;
        } else {
          out_scores[o] = -std::numeric_limits<float>::infinity();
          out_parents[o] = out_tokens[o] = out_nodes[o] = -1;
        }
      }
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
  auto opts = beam_scores.options();
  at::Tensor scores = at::empty({B, num_out}, opts);
  at::Tensor parents = at::empty({B, num_out}, opts.dtype(at::kLong));
  at::Tensor tokens = at::empty_like(parents), nodes = at::empty_like(parents);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "trie_beam_step_cpu", [&] {
    beam_step_kernel<scalar_t>(x.data_ptr<scalar_t>(), sc.data_ptr<float>(), nd.data_ptr<int64_t>(),
                               lv.data_ptr<bool>(), co.data_ptr<int64_t>(), ct.data_ptr<int64_t>(), B, W, V,
                               num_out, scores.data_ptr<float>(), parents.data_ptr<int64_t>(),
                               tokens.data_ptr<int64_t>(), nodes.data_ptr<int64_t>());
  });
  return {scores, parents, tokens, nodes};
}

TORCH_LIBRARY_IMPL(atspeed_ext, CPU, m) { m.impl("trie_beam_step", &trie_beam_step_cpu); }

}  // namespace atspeed_ext

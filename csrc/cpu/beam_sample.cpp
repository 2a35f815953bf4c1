// CPU kernel of trie_beam_sample (semantics in ops.h, readable spec in atspeed_ext/reference/beam_sample.py):
// the beam step's candidates, ranked by Gumbel key instead of score. Parallel over beams for the log-sum-exp,
// over requests for the selection.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../beam_outputs.h"
#include "../ops.h"
#include "../sampling.h"
#include "beam_sample_common.h"
#include "beam_select.h"

namespace atspeed_ext {

namespace {

struct Keyed {
  double key;
  float score;
  int64_t beam;
  int64_t edge;
};

// Draw order: higher key first, then lower beam, then lower token (edges of a beam are in token order).
inline bool drawn_before(const Keyed& a, const Keyed& b) {
  if (a.key != b.key) return a.key > b.key;
  if (a.beam != b.beam) return a.beam < b.beam;
  return a.edge < b.edge;
}

template <typename scalar_t>
void beam_sample_kernel(const scalar_t* logits, const float* beam_scores, const int64_t* beam_nodes,
                        const bool* beam_live, const int64_t* co, const int64_t* ct, const double* uniforms,
                        int64_t C, double temperature, int64_t B, int64_t W, int64_t V, int64_t num_out,
                        float* out_scores, int64_t* out_parents, int64_t* out_tokens, int64_t* out_nodes) {
  std::vector<float> lse(B * W, 0.f);
  at::parallel_for(0, B * W, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      if (beam_live[row]) lse[row] = cpu::row_logsumexp(logits + row * V, V);
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<Keyed> cand;
    for (int64_t b = begin; b < end; ++b) {
      cand.clear();
      for (int64_t w = 0; w < W; ++w) {
        const int64_t row = b * W + w;
        if (!beam_live[row]) continue;
        const int64_t node = beam_nodes[row];
        for (int64_t e = co[node]; e < co[node + 1]; ++e) {
          const float s = sampling::candidate_score(beam_scores[row], static_cast<float>(logits[row * V + ct[e]]),
                                                    lse[row]);
          if (!sampling::is_candidate(s)) continue;
          cand.push_back({sampling::gumbel_key(s, temperature, uniforms[row * C + (e - co[node])]), s, w, e});
        }
      }
      const int64_t k = std::min<int64_t>(num_out, static_cast<int64_t>(cand.size()));
      std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), drawn_before);
      const int64_t o = b * num_out;
      for (int64_t j = 0; j < num_out; ++j) {
        if (j < k) {
          out_scores[o + j] = cand[j].score;
          out_parents[o + j] = cand[j].beam;
          out_tokens[o + j] = ct[cand[j].edge];
          out_nodes[o + j] = cand[j].edge + 1;
        } else {
          out_scores[o + j] = -std::numeric_limits<float>::infinity();
          out_parents[o + j] = out_tokens[o + j] = out_nodes[o + j] = -1;
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> trie_beam_sample_cpu(
    const at::Tensor& logits, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& child_offsets, const at::Tensor& child_tokens,
    const at::Tensor& uniforms, double temperature, int64_t num_out) {
  check_beam_sample_args(logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens, uniforms,
                         temperature, num_out);
  const int64_t B = logits.size(0), W = logits.size(1), V = logits.size(2), C = uniforms.size(2);
  const at::Tensor x = logits.contiguous(), sc = beam_scores.contiguous(), nd = beam_nodes.contiguous(),
                   lv = beam_live.contiguous(), co = child_offsets.contiguous(), ct = child_tokens.contiguous(),
                   un = uniforms.contiguous();
  // Every live beam's children need a uniform each; uniforms are probabilities.
  const int64_t* off = co.data_ptr<int64_t>();
  cpu::check_live_beam_nodes(nd, lv, co.size(0) - 1);
  cpu::check_trie_arrays(co, ct, V);
  for (int64_t row = 0; row < B * W; ++row) {
    if (!lv.data_ptr<bool>()[row]) continue;
    const int64_t node = nd.data_ptr<int64_t>()[row];
    TORCH_CHECK(off[node + 1] - off[node] <= C, "uniforms.size(2) = ", C, " is smaller than the ",
                off[node + 1] - off[node], " children of the node of beam [", row / W, ", ", row % W, "]");
  }
  const double* u = un.data_ptr<double>();
  for (int64_t i = 0; i < un.numel(); ++i) {
    TORCH_CHECK(u[i] >= 0.0 && u[i] <= 1.0, "uniforms must lie in [0, 1], found ", u[i]);
  }
  const BeamOutputs out(B, num_out, beam_scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "trie_beam_sample_cpu", [&] {
    beam_sample_kernel<scalar_t>(x.data_ptr<scalar_t>(), sc.data_ptr<float>(), nd.data_ptr<int64_t>(),
                                 lv.data_ptr<bool>(), off, ct.data_ptr<int64_t>(), u, C, temperature, B, W, V, num_out,
                                 out.scores.data_ptr<float>(), out.parents.data_ptr<int64_t>(),
                                 out.tokens.data_ptr<int64_t>(), out.nodes.data_ptr<int64_t>());
  });
  return out.tuple();
}

TORCH_LIBRARY_IMPL(atspeed_ext, CPU, m) { m.impl("trie_beam_sample", &trie_beam_sample_cpu); }

}  // namespace atspeed_ext

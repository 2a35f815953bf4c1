// The per-request heart of the trie-constrained beam step on the CPU, shared by trie_beam_step and
// strict_verify: the full-vocabulary log-sum-exp of a row and the selection of the best candidates.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/core/Tensor.h>

#include "beam_step_common.h"

namespace atspeed_ext::cpu {

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

// The trie arrays must describe a trie over this vocabulary: child_offsets non-decreasing from 0 to the number
// of edges, every edge token in [0, V). The kernels read child_tokens[e] and logits[..., token] without bounds
// checks, so a malformed trie would read out of bounds. One branch-free pass over both arrays, then a second
// that locates a failure for the message. `co`, `ct` contiguous CPU int64. The CUDA twins do not scan (a device
// pass per call): they check each token they read (sampling::token_column, a device-side assert).
inline void check_trie_arrays(const at::Tensor& co, const at::Tensor& ct, int64_t V) {
  const int64_t* o = co.data_ptr<int64_t>();
  const int64_t* t = ct.data_ptr<int64_t>();
  const int64_t n = co.numel(), E = ct.numel();
  // Branch-free so the loops vectorise: one unsigned compare catches both t < 0 and t >= V.
  bool bad = o[0] != 0 || o[n - 1] != E;
  for (int64_t i = 0; i + 1 < n; ++i) bad |= o[i] > o[i + 1];
  for (int64_t e = 0; e < E; ++e) bad |= static_cast<uint64_t>(t[e]) >= static_cast<uint64_t>(V);
  if (!bad) return;
  TORCH_CHECK(o[0] == 0 && o[n - 1] == E, "child_offsets must run from 0 to the number of edges ", E, ", got ",
              o[0], " .. ", o[n - 1]);
  for (int64_t i = 0; i + 1 < n; ++i) {
    TORCH_CHECK(o[i] <= o[i + 1], "child_offsets must be non-decreasing, got child_offsets[", i, "] = ", o[i],
                " > child_offsets[", i + 1, "] = ", o[i + 1]);
  }
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(t[e] >= 0 && t[e] < V, "child_tokens[", e, "] = ", t[e], " is not a token of the logits' ",
                "vocabulary [0, ", V, ")");
  }
}

// Every live beam must sit on a trie node: its children are read at child_offsets[node], [node + 1]. Dead
// beams' nodes are never read. `beam_nodes` [B, W] int64 and `beam_live` [B, W] bool, contiguous CPU tensors;
// the CUDA twins assert the same where they read a node.
inline void check_live_beam_nodes(const at::Tensor& beam_nodes, const at::Tensor& beam_live, int64_t num_nodes) {
  const int64_t W = beam_nodes.size(1);
  const int64_t* nodes = beam_nodes.data_ptr<int64_t>();
  const bool* live = beam_live.data_ptr<bool>();
  for (int64_t i = 0; i < beam_nodes.numel(); ++i) {
    TORCH_CHECK(!live[i] || (nodes[i] >= 0 && nodes[i] < num_nodes), "beam_nodes[", i / W, ", ", i % W, "] = ",
                nodes[i], " is not a trie node in [0, ", num_nodes, ")");
  }
}

template <typename scalar_t>
float row_logsumexp(const scalar_t* x, int64_t V) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < V; ++v) m = nan_max(m, static_cast<float>(x[v]));
  double sum = 0.0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(static_cast<float>(x[v])) - m);
  return finish_logsumexp(m, sum);
}

// The num_out best (beam, child) candidates of W beams whose logits rows are rows[w] (lse[w] their
// log-sum-exp); dead beams are skipped. Missing slots get score -inf and -1 elsewhere.
template <typename scalar_t>
void select_candidates(const scalar_t* const* rows, const float* lse, const float* beam_scores,
                       const int64_t* beam_nodes, const bool* beam_live, int64_t W, const int64_t* child_offsets,
                       const int64_t* child_tokens, int64_t num_out, std::vector<Candidate>& cand, float* out_scores,
                       int64_t* out_parents, int64_t* out_tokens, int64_t* out_nodes) {
  cand.clear();
  for (int64_t w = 0; w < W; ++w) {
    if (!beam_live[w]) continue;
    const int64_t node = beam_nodes[w];
    for (int64_t e = child_offsets[node]; e < child_offsets[node + 1]; ++e) {
      const float s = candidate_score(beam_scores[w], static_cast<float>(rows[w][child_tokens[e]]), lse[w]);
      if (is_candidate(s)) cand.push_back({s, w, e});
    }
  }
  const int64_t k = std::min<int64_t>(num_out, static_cast<int64_t>(cand.size()));
  std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), better);
  for (int64_t j = 0; j < num_out; ++j) {
    if (j < k) {
      out_scores[j] = cand[j].score;
      out_parents[j] = cand[j].beam;
      out_tokens[j] = child_tokens[cand[j].edge];
      out_nodes[j] = cand[j].edge + 1;
    } else {
      out_scores[j] = -std::numeric_limits<float>::infinity();
      out_parents[j] = out_tokens[j] = out_nodes[j] = -1;
    }
  }
}

}  // namespace atspeed_ext::cpu

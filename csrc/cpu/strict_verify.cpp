// CPU kernel of strict top-K verification (spec: atspeed_ext/reference/strict_verify.py): every level of a
// request in one pass, requests in parallel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <memory>
#include <vector>

#include "../beam_outputs.h"
#include "../ops.h"
#include "beam_select.h"
#include "strict_verify_common.h"

namespace atspeed_ext {

namespace {

template <typename scalar_t>
void verify_request(const scalar_t* logits, int64_t V, const int64_t* beam_rows, const float* beam_scores,
                    const int64_t* beam_nodes, const bool* beam_live, const int64_t* lvl_parent,
                    const int64_t* lvl_token, const int64_t* lvl_row, int64_t g, int64_t K, int64_t N,
                    const int64_t* co, const int64_t* ct, int64_t* accepted, float* out_scores, int64_t* out_parents,
                    int64_t* out_tokens, int64_t* out_nodes) {
  std::vector<const scalar_t*> rows(K);
  std::vector<float> lse(K), scores(beam_scores, beam_scores + K), ys(K);
  std::vector<int64_t> cur_rows(beam_rows, beam_rows + K), nodes(beam_nodes, beam_nodes + K), index(K), yp(K),
      yt(K), yn(K), parent_index(K), matched(K);
  std::unique_ptr<bool[]> live(new bool[K]);
  std::vector<cpu::Candidate> cand;
  for (int64_t k = 0; k < K; ++k) live[k] = beam_live[k], index[k] = k;
  for (int64_t j = 0; j <= g; ++j) {
    for (int64_t w = 0; w < K; ++w) {
      rows[w] = logits + (live[w] ? cur_rows[w] : 0) * V;
      if (live[w]) lse[w] = cpu::row_logsumexp(rows[w], V);
    }
    cpu::select_candidates(rows.data(), lse.data(), scores.data(), nodes.data(), live.get(), K, co, ct, K, cand,
                           ys.data(), yp.data(), yt.data(), yn.data());
    bool ok = j < g;
    for (int64_t k = 0; k < K; ++k) {
      parent_index[k] = yp[k] >= 0 ? index[yp[k]] : -1;
      matched[k] = -1;
      if (!ok || yp[k] < 0) continue;
      const int64_t* parent = lvl_parent + j * N;
      const int64_t* token = lvl_token + j * N;
      for (int64_t n = 0; n < N; ++n) {
        if (parent[n] >= 0 && parent[n] == parent_index[k] && token[n] == yt[k]) {
          matched[k] = n;
          break;
        }
      }
      ok = matched[k] >= 0;
    }
    if (!ok) {
      *accepted = j;
      for (int64_t k = 0; k < K; ++k) {
        out_scores[k] = ys[k], out_parents[k] = parent_index[k], out_tokens[k] = yt[k], out_nodes[k] = yn[k];
      }
      return;
    }
    for (int64_t k = 0; k < K; ++k) {
      live[k] = yp[k] >= 0;
      cur_rows[k] = live[k] ? lvl_row[j * N + matched[k]] : -1;
      scores[k] = ys[k], nodes[k] = yn[k], index[k] = matched[k];
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> strict_verify_cpu(
    const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& level_parent, const at::Tensor& level_token,
    const at::Tensor& level_row, const at::Tensor& num_levels, const at::Tensor& child_offsets,
    const at::Tensor& child_tokens) {
  check_strict_verify_args(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                           level_row, num_levels, child_offsets, child_tokens);
  const int64_t B = logits.size(0), R = logits.size(1), V = logits.size(2), K = beam_rows.size(1);
  const int64_t G = level_parent.size(1), N = level_parent.size(2);
  const at::Tensor x = logits.contiguous(), br = beam_rows.contiguous(), bs = beam_scores.contiguous(),
                   bn = beam_nodes.contiguous(), bl = beam_live.contiguous(), lp = level_parent.contiguous(),
                   lt = level_token.contiguous(), lr = level_row.contiguous(), nl = num_levels.contiguous(),
                   co = child_offsets.contiguous(), ct = child_tokens.contiguous();
  // Row indices must address the logits and live beams must sit on trie nodes: checked here for every entry;
  // the CUDA twin asserts it on the device for the entries it reads.
  cpu::check_live_beam_nodes(bn, bl, co.size(0) - 1);
  cpu::check_trie_arrays(co, ct, V);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t g = nl.data_ptr<int64_t>()[b];
    TORCH_CHECK(g >= 0 && g <= G, "num_levels[", b, "] = ", g, " must be in [0, ", G, "]");
    for (int64_t k = 0; k < K; ++k) {
      const int64_t r = br.data_ptr<int64_t>()[b * K + k];
      TORCH_CHECK(!bl.data_ptr<bool>()[b * K + k] || (r >= 0 && r < R), "beam_rows[", b, ", ", k, "] = ", r,
                  " is not a logits row in [0, ", R, ")");
    }
    for (int64_t i = 0; i < g * N; ++i) {  // the levels this request drafted (the others are never read)
      const int64_t r = lr.data_ptr<int64_t>()[b * G * N + i], p = lp.data_ptr<int64_t>()[b * G * N + i];
      TORCH_CHECK(p < 0 || (r >= 0 && r < R), "level_row[", b, ", ", i / N, ", ", i % N, "] = ", r,
                  " is not a logits row in [0, ", R, ")");
    }
  }
  const VerifyOutputs out(B, K, beam_scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "strict_verify_cpu", [&] {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        verify_request<scalar_t>(x.data_ptr<scalar_t>() + b * R * V, V, br.data_ptr<int64_t>() + b * K,
                                 bs.data_ptr<float>() + b * K, bn.data_ptr<int64_t>() + b * K,
                                 bl.data_ptr<bool>() + b * K, lp.data_ptr<int64_t>() + b * G * N,
                                 lt.data_ptr<int64_t>() + b * G * N, lr.data_ptr<int64_t>() + b * G * N,
                                 nl.data_ptr<int64_t>()[b], K, N, co.data_ptr<int64_t>(), ct.data_ptr<int64_t>(),
                                 out.accepted.data_ptr<int64_t>() + b, out.scores.data_ptr<float>() + b * K,
                                 out.parents.data_ptr<int64_t>() + b * K, out.tokens.data_ptr<int64_t>() + b * K,
                                 out.nodes.data_ptr<int64_t>() + b * K);
      }
    });
  });
  return out.tuple();
}

TORCH_LIBRARY_IMPL(atspeed_ext, CPU, m) { m.impl("strict_verify", &strict_verify_cpu); }

}  // namespace atspeed_ext

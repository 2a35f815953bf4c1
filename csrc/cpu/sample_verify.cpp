// CPU kernels of sampling verification (relaxed_verify, exact_verify): the shared algorithm of
// ../sampling.h run by a sequential executor, requests in parallel. Spec: atspeed_ext/reference/sample_verify.py.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../beam_outputs.h"
#include "../ops.h"
#include "../sampling.h"
#include "beam_select.h"
#include "sample_verify_common.h"

namespace atspeed_ext {

namespace {

// The executor of ../sampling.h on one CPU thread: plain loops, sequential sums.
struct SerialExec {
  template <typename T>
  static float to_float(T v) { return static_cast<float>(v); }
  template <typename T>
  float row_lse(const T* row, int64_t V) const { return cpu::row_logsumexp(row, V); }
  template <class F>
  void for_each(int64_t n, F&& f) const { for (int64_t i = 0; i < n; ++i) f(i); }
  template <class F>
  void once(F&& f) const { f(); }
  template <class F>
  double sum(int64_t n, F&& f) const {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += f(i);
    return s;
  }
  template <class F>
  double max(int64_t n, F&& f) const {
    double m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(f(i)));
    return m;
  }
  int64_t inverse_cdf(int64_t n, const double* w, double u) const {
    double total = 0.0;
    for (int64_t c = 0; c < n; ++c) total += w[c];
    const double t = u * total;
    double cum = 0.0;
    int64_t last = -1;
    for (int64_t c = 0; c < n; ++c) {
      cum += w[c];
      if (w[c] > 0.0) {
        if (cum > t) return c;
        last = c;
      }
    }
    return last;
  }
  int64_t claim(int64_t* slot, int64_t v) const {
    const int64_t old = *slot;
    if (old < 0) *slot = v;
    return old;
  }
};

// Data checks the kernels rely on: levels in range, logits rows that exist, a drafted tree whose nodes are
// trie children of live parents (no duplicates), uniforms in [0, 1]. The CUDA twin asserts them on the device
// where the algorithm reads the values (ATS_DEVICE_CHECK in ../sampling.h).
void check_sample_verify_data(const at::Tensor& br, const at::Tensor& bn, const at::Tensor& bl, const at::Tensor& lp,
                              const at::Tensor& lt, const at::Tensor& lr, const at::Tensor& nl, const at::Tensor& un,
                              const at::Tensor& co, const at::Tensor& ct, int64_t R, int64_t V) {
  const int64_t B = br.size(0), K = br.size(1), G = lp.size(1), N = lp.size(2);
  const int64_t* rows = br.data_ptr<int64_t>();
  const int64_t* nodes = bn.data_ptr<int64_t>();
  const bool* live = bl.data_ptr<bool>();
  const int64_t *par = lp.data_ptr<int64_t>(), *tok = lt.data_ptr<int64_t>(), *row = lr.data_ptr<int64_t>();
  const int64_t *off = co.data_ptr<int64_t>(), *tokens = ct.data_ptr<int64_t>();
  cpu::check_live_beam_nodes(bn, bl, co.size(0) - 1);
  cpu::check_trie_arrays(co, ct, V);
  std::vector<int64_t> prev(N), cur(N);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t g = nl.data_ptr<int64_t>()[b];
    TORCH_CHECK(g >= 0 && g <= G, "num_levels[", b, "] = ", g, " must be in [0, ", G, "]");
    for (int64_t k = 0; k < K; ++k) {
      if (!live[b * K + k]) continue;
      TORCH_CHECK(rows[b * K + k] >= 0 && rows[b * K + k] < R, "beam_rows[", b, ", ", k, "] = ", rows[b * K + k],
                  " is not a logits row in [0, ", R, ")");
    }
    for (int64_t j = 0; j < g; ++j) {
      for (int64_t n = 0; n < N; ++n) {
        const int64_t i = (b * G + j) * N + n, p = par[i];
        cur[n] = -1;
        if (p < 0) continue;
        int64_t pnode = -1;
        if (j == 0) pnode = (p < K && live[b * K + p]) ? nodes[b * K + p] : -1;
        else pnode = p < N ? prev[p] : -1;
        TORCH_CHECK(pnode >= 0, "level_parent[", b, ", ", j, ", ", n, "] = ", p, " is not a live node of the ",
                    j == 0 ? "beams" : "previous level");
        cur[n] = sampling::child_node(off, tokens, pnode, tok[i]);
        TORCH_CHECK(cur[n] >= 0, "level_token[", b, ", ", j, ", ", n, "] = ", tok[i],
                    " is not a trie child of its parent");
        TORCH_CHECK(row[i] >= 0 && row[i] < R, "level_row[", b, ", ", j, ", ", n, "] = ", row[i],
                    " is not a logits row in [0, ", R, ")");
        for (int64_t m = 0; m < n; ++m) {
          TORCH_CHECK(cur[m] != cur[n], "drafted nodes ", m, " and ", n, " of level ", j + 1, " of request ", b,
                      " are the same trie node");
        }
      }
      std::swap(prev, cur);
    }
  }
  const double* u = un.data_ptr<double>();
  for (int64_t i = 0; i < un.numel(); ++i) {
    TORCH_CHECK(u[i] >= 0.0 && u[i] <= 1.0, "uniforms must lie in [0, 1], found ", u[i]);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sample_verify_cpu(
    bool exact, const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores,
    const at::Tensor& beam_nodes, const at::Tensor& beam_live, const at::Tensor& level_parent,
    const at::Tensor& level_token, const at::Tensor& level_row, const at::Tensor& num_levels,
    const at::Tensor& draft_logits, const at::Tensor& draft_scores, const at::Tensor& uniforms,
    const at::Tensor& child_offsets, const at::Tensor& child_tokens, double temperature) {
  check_sample_verify_args(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                           level_row, num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens,
                           temperature);
  const int64_t B = logits.size(0), R = logits.size(1), V = logits.size(2), K = beam_rows.size(1);
  const int64_t G = level_parent.size(1), N = level_parent.size(2), W = draft_logits.size(2);
  const at::Tensor x = logits.contiguous(), br = beam_rows.contiguous(), bs = beam_scores.contiguous(),
                   bn = beam_nodes.contiguous(), bl = beam_live.contiguous(), lp = level_parent.contiguous(),
                   lt = level_token.contiguous(), lr = level_row.contiguous(), nl = num_levels.contiguous(),
                   dx = draft_logits.contiguous(), ds = draft_scores.contiguous(), un = uniforms.contiguous(),
                   co = child_offsets.contiguous(), ct = child_tokens.contiguous();
  check_sample_verify_data(br, bn, bl, lp, lt, lr, nl, un, co, ct, R, V);
  int64_t max_children = 0;
  for (int64_t n = 0; n + 1 < co.size(0); ++n)
    max_children = std::max(max_children, co.data_ptr<int64_t>()[n + 1] - co.data_ptr<int64_t>()[n]);
  const int64_t Cmax = K * max_children, Cqmax = W * max_children;
  const int64_t scratch_bytes = sampling::VerifyScratch::bytes(K, N, W, Cmax, Cqmax);

  const VerifyOutputs out(B, K, beam_scores.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sample_verify_cpu", [&] {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<unsigned char> buffer(static_cast<size_t>(scratch_bytes));
      sampling::VerifyScratch s;
      s.carve(buffer.data(), K, N, W, Cmax, Cqmax);
      for (int64_t b = begin; b < end; ++b) {
        const sampling::VerifyRequest<scalar_t> req{
            x.data_ptr<scalar_t>() + b * R * V, R, V, br.data_ptr<int64_t>() + b * K, bs.data_ptr<float>() + b * K,
            bn.data_ptr<int64_t>() + b * K, bl.data_ptr<bool>() + b * K, K, lp.data_ptr<int64_t>() + b * G * N,
            lt.data_ptr<int64_t>() + b * G * N, lr.data_ptr<int64_t>() + b * G * N, N, nl.data_ptr<int64_t>()[b],
            dx.data_ptr<scalar_t>() + b * G * W * V, ds.data_ptr<float>() + b * G * W, W,
            un.data_ptr<double>() + b * (G + 1) * (2 * N + K), co.data_ptr<int64_t>(), ct.data_ptr<int64_t>(),
            co.size(0) - 1, temperature, exact};
        const sampling::VerifyOut request_out{
            out.accepted.data_ptr<int64_t>() + b, out.scores.data_ptr<float>() + b * K,
            out.parents.data_ptr<int64_t>() + b * K, out.tokens.data_ptr<int64_t>() + b * K,
            out.nodes.data_ptr<int64_t>() + b * K};
        sampling::verify_request(SerialExec{}, req, s, request_out);
      }
    });
  });
  return out.tuple();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> relaxed_verify_cpu(
    const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& level_parent, const at::Tensor& level_token,
    const at::Tensor& level_row, const at::Tensor& num_levels, const at::Tensor& draft_logits,
    const at::Tensor& draft_scores, const at::Tensor& uniforms, const at::Tensor& child_offsets,
    const at::Tensor& child_tokens, double temperature) {
  return sample_verify_cpu(false, logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                           level_row, num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens,
                           temperature);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> exact_verify_cpu(
    const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& level_parent, const at::Tensor& level_token,
    const at::Tensor& level_row, const at::Tensor& num_levels, const at::Tensor& draft_logits,
    const at::Tensor& draft_scores, const at::Tensor& uniforms, const at::Tensor& child_offsets,
    const at::Tensor& child_tokens, double temperature) {
  return sample_verify_cpu(true, logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                           level_row, num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens,
                           temperature);
}

TORCH_LIBRARY_IMPL(atspeed_ext, CPU, m) {
  m.impl("relaxed_verify", &relaxed_verify_cpu);
  m.impl("exact_verify", &exact_verify_cpu);
}

}  // namespace atspeed_ext

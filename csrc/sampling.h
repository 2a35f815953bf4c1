// Torch-free rules of sampling decoding (c10's kernel-assert macro aside, on the GPU), written once for both
// devices: the Gumbel key of trie_beam_sample and the per-request algorithm of relaxed_verify / exact_verify.
// The algorithm is a template over an executor X that the CPU kernel instantiates with a sequential loop
// executor and the CUDA kernel with a block executor (csrc/cpu/sample_verify.cpp, csrc/cuda/sample_verify.cuh),
// so both twins take the same decisions by construction; only the summation order of reductions differs (see
// below).
// Readable spec: atspeed_ext/reference/sample_verify.py; the argument for exactness:
// atspeed_ext/docs/sampling_verification.md.
//
// Executor interface (every member is called by every thread of a CUDA block with the same arguments):
//   X::to_float(T)                     logit -> float
//   x.row_lse(const T* row, V)         full-vocabulary log-sum-exp of a row (float, as trie_beam_step)
//   x.for_each(n, f)                   f(i) for i in [0, n), then a barrier
//   x.once(f)                          f() on one thread, then a barrier
//   x.sum(n, f), x.max(n, f)           reductions of double f(i) over [0, n); every thread gets the result
//   x.inverse_cdf(n, w, u)             see inverse_cdf_rule below
//   x.claim(slot, v)                   if *slot < 0, *slot = v (atomically on the GPU); returns the old *slot
// Scalars (loop counters, decisions) are computed redundantly by every thread from data every thread sees,
// so they agree without being broadcast.
//
// Rounding: probabilities are computed in float64 from the float32 candidate scores of trie_beam_step.
// Sums are sequential on the CPU and tree-shaped on the GPU, and exp / log may differ in the last ulp
// between libraries, so a decision can differ between twins only when two float64 quantities agree to a few
// ulps: ~1e-15 per decision on random inputs, but it happens on inputs built for it (a fuzzer found Gumbel
// keys of uniforms 3 ulps apart, and an exact_verify acceptance with the draft equal to the target and the
// uniform within ulps of 1); every random tested case agrees exactly.
#pragma once

#include <math.h>
#include <stdint.h>

#include <type_traits>

// ATS_HD: the algorithm (device code in a .cu, plain C++ elsewhere); ATS_HOST_DEVICE: layout helpers the
// CUDA glue also calls on the host. ATS_DEVICE_CHECK(cond, msg): the data checks of the CPU glue
// (csrc/cpu/sample_verify.cpp, which rejects bad inputs before the algorithm runs), made where the algorithm
// reads the value: a device-side assert on the GPU (the op fails with "device-side assert triggered"), nothing
// on the CPU.
#if defined(__CUDACC__)
#include <c10/macros/Macros.h>
#define ATS_HD __device__
#define ATS_HOST_DEVICE __host__ __device__
#define ATS_DEVICE_CHECK(cond, msg)  \
  do {                               \
    CUDA_KERNEL_ASSERT_MSG(cond, msg); \
  } while (0)
#else
#define ATS_HD
#define ATS_HOST_DEVICE
#define ATS_DEVICE_CHECK(cond, msg) \
  do {                              \
    if (false) (void)(cond);        \
  } while (0)
#endif

namespace atspeed_ext::sampling {

// ------------------------------------------------------------------------------------------------ scores
ATS_HD inline float candidate_score(float beam_score, float logit, float lse) { return beam_score + (logit - lse); }
ATS_HD inline bool is_candidate(float s) { return s > -INFINITY; }  // -inf and NaN are not candidates
// The tempered score every sampling rule uses: p(candidate) is proportional to exp(scaled(score, T)).
ATS_HD inline double scaled(float score, double temperature) { return static_cast<double>(score) / temperature; }
// Gumbel-top-k key: sorting candidates by it (descending) is sequential sampling without replacement from
// softmax(scaled score). u = 0 gives -inf (still a candidate, ranked last), u = 1 gives +inf. An infinite
// scaled score (a tiny T overflows it) is the key whatever u is: -inf + Gumbel(u = 1) would be NaN, which
// every executor orders differently.
ATS_HD inline double gumbel_key(float score, double temperature, double u) {
  const double s = scaled(score, temperature);
  return isinf(s) ? s : s - log(-log(u));
}

// The logits column of trie edge e: its token. The CPU glue has checked every trie entry up front
// (cpu::check_trie_arrays); on the GPU each entry read is checked here, so a malformed trie fails with a
// device-side assert instead of reading logits out of bounds.
ATS_HD inline int64_t token_column(const int64_t* ct, int64_t e, int64_t V) {
  const int64_t t = ct[e];
  ATS_DEVICE_CHECK(t >= 0 && t < V, "a child_tokens entry is not a token of the logits (a malformed trie)");
  return t;
}

// inverse_cdf_rule(w[0..n), u): with total = sum(w) and t = u * total, the first index c with w[c] > 0 whose
// running sum (w[0] + ... + w[c]) exceeds t; if rounding leaves none, the last index with w[c] > 0; -1 if
// every weight is 0. Executors implement exactly this (the GPU sums chunk by chunk).

// Child of `node` carrying `token` (binary search over the token-sorted edges), or -1.
ATS_HD inline int64_t child_node(const int64_t* co, const int64_t* ct, int64_t node, int64_t token) {
  int64_t lo = co[node], hi = co[node + 1];
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (ct[mid] < token) lo = mid + 1; else hi = mid;
  }
  return (lo < co[node + 1] && ct[lo] == token) ? lo + 1 : -1;
}

// A uniform the rules may read: in [0, 1] (NaN is not).
ATS_HD inline bool is_uniform(double u) { return u >= 0.0 && u <= 1.0; }

// The last k with prefix[k] <= c (prefix is non-decreasing, prefix[0] = 0 <= c).
ATS_HD inline int64_t owner_of(const int64_t* prefix, int64_t K, int64_t c) {
  int64_t lo = 0, hi = K - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= c) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// ------------------------------------------------------------------------------------------------ verify
// One request's inputs (shapes of relaxed_verify / exact_verify in csrc/ops.h, batch dimension removed).
template <typename T>
struct VerifyRequest {
  const T* logits;            // [R, V] target logits
  int64_t R;
  int64_t V;
  const int64_t* beam_rows;   // [K]
  const float* beam_scores;   // [K]
  const int64_t* beam_nodes;  // [K]
  const bool* beam_live;      // [K]
  int64_t K;
  const int64_t* level_parent;  // [G, N]
  const int64_t* level_token;   // [G, N]
  const int64_t* level_row;     // [G, N]
  int64_t N;
  int64_t g;                    // drafted levels of this request (<= G)
  const T* draft_logits;        // [G, W, V]
  const float* draft_scores;    // [G, W]
  int64_t W;
  const double* uniforms;       // [G + 1, 2N + K]
  const int64_t* child_offsets;  // [num_nodes + 1]
  const int64_t* child_tokens;
  int64_t num_nodes;
  double temperature;
  bool exact;                   // exact_verify (true) or relaxed_verify (false)
};

struct VerifyOut {
  int64_t* accepted;  // [1]
  float* scores;      // [K]
  int64_t* parents;   // [K]
  int64_t* tokens;    // [K]
  int64_t* nodes;     // [K]
};

// Per-request working memory, carved from one byte buffer (same layout on both devices). Cmax bounds the
// target candidates of a level (K beams times the trie's largest fan-out), Cqmax the draft's (W parents).
struct VerifyScratch {
  double *p, *r, *qc, *qx, *tsx, *dx;
  int64_t *prefix, *rows, *nodes, *index, *t_rows, *t_nodes, *t_index, *A, *dnode, *dprefix, *prev_node, *cur_node,
      *inv, *tx, *dn, *dflat, *pflat;
  float *scores, *t_scores, *lse, *dlse, *tscore;
  unsigned char *live, *t_live, *chosen, *acc, *sel, *dcons;

  ATS_HOST_DEVICE static int64_t bytes(int64_t K, int64_t N, int64_t W, int64_t Cmax, int64_t Cqmax) {
    VerifyScratch s;
    return s.carve(nullptr, K, N, W, Cmax, Cqmax);
  }
  // Points the members into `base` (null: only measure) and returns the bytes used.
  ATS_HOST_DEVICE int64_t carve(unsigned char* base, int64_t K, int64_t N, int64_t W, int64_t Cmax, int64_t Cqmax) {
    int64_t off = 0;
    auto take = [&](auto*& ptr, int64_t count) {
      using E = std::remove_pointer_t<std::remove_reference_t<decltype(ptr)>>;
      ptr = base ? reinterpret_cast<E*>(base + off) : nullptr;
      off += ((count * static_cast<int64_t>(sizeof(E)) + 7) / 8) * 8;  // keep every array 8-byte aligned
    };
    const int64_t NK = N > K ? N : K;
    take(p, Cmax), take(r, Cmax), take(qc, Cmax), take(qx, N), take(tsx, Cmax), take(dx, Cqmax);
    take(prefix, K + 1), take(rows, K), take(nodes, K), take(index, K), take(t_rows, K), take(t_nodes, K);
    take(t_index, K), take(A, K), take(dnode, W), take(dprefix, W + 1), take(prev_node, N), take(cur_node, N);
    take(inv, NK), take(tx, N), take(dn, Cmax), take(dflat, Cmax), take(pflat, N);
    take(scores, K), take(t_scores, K), take(lse, K), take(dlse, W), take(tscore, Cmax);
    take(live, K), take(t_live, K), take(chosen, Cmax), take(acc, N), take(sel, N), take(dcons, Cqmax);
    return off;
  }
};

// log(sum(exp(v(i)))) over [0, n) (-inf when empty or all -inf), max-shifted so nothing underflows.
template <class X, class F>
ATS_HD double log_sum_exp(const X& x, int64_t n, F&& v) {
  const double m = x.max(n, v);
  if (m == -INFINITY) return -INFINITY;
  return m + log(x.sum(n, [&](int64_t i) { return exp(v(i) - m); }));
}

// The algorithm of relaxed_verify / exact_verify for one request (spec: reference/sample_verify.py). Level j
// (1-based) runs for j = 1 .. g + 1; level g + 1 (and any level without drafted nodes) samples from the target
// directly. Returns after writing the new beams to `out`.
//
// Numerics: every draw from the target samples the softmax of the tempered scores over the candidates not yet
// drawn, max-shifted afresh, and the exact rule tracks the draft's proposal law as a log-sum-exp over the
// unconsumed draft candidates; so however low the temperature, nothing that can still be drawn underflows to a
// zero weight (a level with >= K candidates always yields K beams).
template <class X, typename T>
ATS_HD void verify_request(const X& x, const VerifyRequest<T>& a, const VerifyScratch& s, const VerifyOut& out) {
  const int64_t K = a.K, N = a.N, W = a.W, V = a.V, U = 2 * N + K;
  const int64_t* co = a.child_offsets;
  const int64_t* ct = a.child_tokens;
  const double T_ = a.temperature;
  const int64_t NK = N > K ? N : K;

  x.for_each(K, [&](int64_t k) {  // level 0: the current beams
    s.rows[k] = a.beam_rows[k];
    s.scores[k] = a.beam_scores[k];
    s.nodes[k] = a.beam_nodes[k];
    s.live[k] = a.beam_live[k] ? 1 : 0;
    s.index[k] = k;
    ATS_DEVICE_CHECK(!s.live[k] || (s.rows[k] >= 0 && s.rows[k] < a.R),
                     "relaxed_verify / exact_verify: a beam_rows entry of a live beam is not a logits row in [0, R)");
    ATS_DEVICE_CHECK(!s.live[k] || (s.nodes[k] >= 0 && s.nodes[k] < a.num_nodes),
                     "relaxed_verify / exact_verify: a beam_nodes entry of a live beam is not a trie node");
  });

  for (int64_t j = 1;; ++j) {
    const bool drafted = j <= a.g;
    const double* u_acc = a.uniforms + (j - 1) * U;
    const double* u_sel = u_acc + N;
    const double* u_fb = u_acc + 2 * N;

    // (1) The target's candidates (children of the current beams), their tempered scores tsx (-inf: not a
    // candidate) and p = softmax(tsx).
    for (int64_t k = 0; k < K; ++k) {
      if (!s.live[k]) continue;
      const float l = x.row_lse(a.logits + s.rows[k] * V, V);
      x.once([&] { s.lse[k] = l; });
    }
    x.once([&] {
      s.prefix[0] = 0;
      for (int64_t k = 0; k < K; ++k)
        s.prefix[k + 1] = s.prefix[k] + (s.live[k] ? co[s.nodes[k] + 1] - co[s.nodes[k]] : 0);
    });
    const int64_t C = s.prefix[K];
    x.for_each(C, [&](int64_t c) {
      const int64_t k = owner_of(s.prefix, K, c);
      const int64_t e = co[s.nodes[k]] + (c - s.prefix[k]);
      const float logit = X::to_float(a.logits[s.rows[k] * V + token_column(ct, e, V)]);
      const float score = candidate_score(s.scores[k], logit, s.lse[k]);
      s.tscore[c] = score;
      s.tsx[c] = is_candidate(score) ? scaled(score, T_) : -INFINITY;
      s.chosen[c] = 0;
      s.dn[c] = -1;
      s.dflat[c] = -1;
      s.qc[c] = 0.0;
    });
    const double M = x.max(C, [&](int64_t c) { return s.tsx[c]; });
    if (M == -INFINITY) {  // no candidate at all: every slot invalid
      x.for_each(K, [&](int64_t i) {
        out.scores[i] = -INFINITY;
        out.parents[i] = out.tokens[i] = out.nodes[i] = -1;
      });
      x.once([&] { *out.accepted = j - 1; });
      return;
    }
    x.for_each(C, [&](int64_t c) { s.p[c] = exp(s.tsx[c] - M); });
    const double Zp = x.sum(C, [&](int64_t c) { return s.p[c]; });
    x.for_each(C, [&](int64_t c) { s.p[c] /= Zp; });
    // r <- softmax of tsx over the candidates not drawn yet (max-shifted afresh); false if none is left.
    auto remaining_law = [&]() {
      const double m = x.max(C, [&](int64_t c) { return s.chosen[c] ? -INFINITY : s.tsx[c]; });
      if (m == -INFINITY) return false;
      x.for_each(C, [&](int64_t c) { s.r[c] = s.chosen[c] ? 0.0 : exp(s.tsx[c] - m); });
      const double z = x.sum(C, [&](int64_t c) { return s.r[c]; });
      x.for_each(C, [&](int64_t c) { s.r[c] /= z; });
      return true;
    };

    // (2) The draft's law q of level j over the children of its W parents (level 1: the beams; level j > 1:
    // drafted nodes 0..W-1 of level j - 1), from the draft's cumulative scores: tempered scores dx over the
    // flat draft candidates, q = exp(dx - Mq) / Zq. Then the drafted nodes of level j (the draft's draws, in
    // order) as proposals: trie node, flat draft index pflat, target candidate tx (-1: parent not a current
    // beam), q; and per target candidate: the drafted node it is (dn), its flat draft index and q.
    x.for_each(N, [&](int64_t n) {
      s.cur_node[n] = -1, s.tx[n] = -1, s.pflat[n] = -1, s.qx[n] = 0.0, s.acc[n] = 0, s.sel[n] = 0;
    });
    double Mq = -INFINITY, Zq = 0.0, lse_q = -INFINITY;  // lse_q: log-sum-exp of dx over the unconsumed
    int64_t Cq = 0;
    if (drafted) {
      const T* dlog = a.draft_logits + (j - 1) * W * V;
      const float* dsc = a.draft_scores + (j - 1) * W;
      const int64_t* lp = a.level_parent + (j - 1) * N;
      const int64_t* lt = a.level_token + (j - 1) * N;
      x.for_each(W, [&](int64_t w) {
        if (j == 1) s.dnode[w] = (w < K && a.beam_live[w]) ? a.beam_nodes[w] : -1;
        else s.dnode[w] = w < N ? s.prev_node[w] : -1;
      });
      for (int64_t w = 0; w < W; ++w) {
        if (s.dnode[w] < 0) continue;
        const float l = x.row_lse(dlog + w * V, V);
        x.once([&] { s.dlse[w] = l; });
      }
      x.once([&] {
        s.dprefix[0] = 0;
        for (int64_t w = 0; w < W; ++w)
          s.dprefix[w + 1] = s.dprefix[w] + (s.dnode[w] >= 0 ? co[s.dnode[w] + 1] - co[s.dnode[w]] : 0);
      });
      Cq = s.dprefix[W];
      x.for_each(Cq, [&](int64_t c) {
        const int64_t w = owner_of(s.dprefix, W, c);
        const int64_t token = token_column(ct, co[s.dnode[w]] + (c - s.dprefix[w]), V);
        const float d = candidate_score(dsc[w], X::to_float(dlog[w * V + token]), s.dlse[w]);
        s.dx[c] = is_candidate(d) ? scaled(d, T_) : -INFINITY;
        s.dcons[c] = 0;
      });
      Mq = x.max(Cq, [&](int64_t c) { return s.dx[c]; });
      if (Mq > -INFINITY) {
        Zq = x.sum(Cq, [&](int64_t c) { return exp(s.dx[c] - Mq); });
        lse_q = Mq + log(Zq);
      }
      auto q_of_flat = [&](int64_t f) { return (f >= 0 && Zq > 0.0) ? exp(s.dx[f] - Mq) / Zq : 0.0; };
      x.for_each(NK, [&](int64_t i) { s.inv[i] = -1; });
      x.for_each(K, [&](int64_t k) {
        if (s.live[k] && s.index[k] >= 0 && s.index[k] < NK) s.inv[s.index[k]] = k;
      });
      x.for_each(N, [&](int64_t n) {
        const int64_t par = lp[n], token = lt[n];
        if (par < 0) return;
        int64_t pnode = -1;
        if (j == 1) pnode = (par < K && a.beam_live[par]) ? a.beam_nodes[par] : -1;
        else pnode = par < N ? s.prev_node[par] : -1;
        ATS_DEVICE_CHECK(pnode >= 0, "relaxed_verify / exact_verify: a level_parent entry is not a live node of the "
                                     "beams (level 1) or of the previous level");
        const int64_t node = pnode >= 0 ? child_node(co, ct, pnode, token) : -1;
        ATS_DEVICE_CHECK(node >= 0, "relaxed_verify / exact_verify: a level_token entry is not a trie child of its "
                                    "parent");
        if (node < 0) return;  // never taken: rejected by the CPU glue, asserted on the GPU
        s.cur_node[n] = node;
        if (par < W && s.dnode[par] >= 0) s.pflat[n] = s.dprefix[par] + (node - 1 - co[s.dnode[par]]);
        s.qx[n] = q_of_flat(s.pflat[n]);
        const int64_t k = par < NK ? s.inv[par] : -1;
        if (k < 0) return;
        const int64_t c = s.prefix[k] + (node - 1 - co[s.nodes[k]]);
        if (is_candidate(s.tscore[c])) {
          s.tx[n] = c;
          const int64_t other = x.claim(&s.dn[c], n);  // another drafted node of this level already is c
          ATS_DEVICE_CHECK(other < 0,
                           "relaxed_verify / exact_verify: two drafted nodes of one level are the same trie node");
        }
      });
      x.for_each(C, [&](int64_t c) {  // a target candidate's parent is draft parent w iff w = its index < W
        const int64_t k = owner_of(s.prefix, K, c), w = s.index[k];
        if (w >= 0 && w < W && s.dnode[w] >= 0) s.dflat[c] = s.dprefix[w] + (c - s.prefix[k]);
        s.qc[c] = q_of_flat(s.dflat[c]);
      });
    }

    // (3) The rule: nA sampled candidates in s.A (draw order), and whether the walk goes on.
    int64_t nA = 0;
    bool go_on = false;
    if (a.exact) {
      // Recursive rejection sampling, one draw of K at a time, consuming the proposals in their drafted
      // (= sampled) order: draw d targets r = p without the drawn ones; the next proposal x follows
      // s = q without the consumed ones, s(y) = exp(dx(y) - lse_q); x is accepted with probability
      // min(1, r(x) / s(x)); on rejection r <- normalise(max(0, r - s)); when the proposals run out, r is
      // sampled by inverse CDF.
      auto s_of_flat = [&](int64_t f) {
        return (f >= 0 && !s.dcons[f] && lse_q > -INFINITY) ? exp(s.dx[f] - lse_q) : 0.0;
      };
      auto consume = [&](int64_t f, double sx) {  // drop proposal f from s (f >= 0, still unconsumed)
        x.once([&] { s.dcons[f] = 1; });
        if (sx <= 0.5) {
          lse_q += log1p(-sx);
        } else {  // x held most of the mass left: recompute rather than cancel
          lse_q = log_sum_exp(x, Cq, [&](int64_t c) { return s.dcons[c] ? -INFINITY : s.dx[c]; });
        }
      };
      int64_t next = 0;
      for (int64_t d = 0; d < K; ++d) {
        if (!remaining_law()) break;
        int64_t pick = -1;
        while (next < N) {
          const int64_t n = next++;
          if (s.cur_node[n] < 0) continue;  // empty slot
          const int64_t t = s.tx[n], f = s.pflat[n];
          const double sx = s_of_flat(f);
          const double rx = t >= 0 ? s.r[t] : 0.0;
          ATS_DEVICE_CHECK(is_uniform(u_acc[n]), "exact_verify: a uniforms entry is not in [0, 1]");
          if (u_acc[n] * sx < rx) {  // u < r(x) / s(x), without dividing
            pick = t;
            if (f >= 0) consume(f, sx);
            break;
          }
          if (sx > 0.0) {  // (a zero-probability proposal carries no information: r stays)
            const double Zres = x.sum(C, [&](int64_t c) { return fmax(0.0, s.r[c] - s_of_flat(s.dflat[c])); });
            if (Zres > 0.0)
              x.for_each(C, [&](int64_t c) { s.r[c] = fmax(0.0, s.r[c] - s_of_flat(s.dflat[c])) / Zres; });
          }
          if (f >= 0) consume(f, sx);
        }
        if (pick < 0) {
          ATS_DEVICE_CHECK(is_uniform(u_fb[d]), "exact_verify: a uniforms entry is not in [0, 1]");
          pick = x.inverse_cdf(C, s.r, u_fb[d]);
        }
        if (pick < 0) break;
        x.once([&] {
          s.chosen[pick] = 1;
          s.A[d] = pick;
        });
        nA = d + 1;
      }
      // Go on iff every sampled node was drafted (the target scored it in this round's call).
      go_on = drafted && nA > 0 && x.sum(nA, [&](int64_t i) { return s.dn[s.A[i]] >= 0 ? 0.0 : 1.0; }) == 0.0;
    } else {
      // The paper's rule: accept each drafted node independently with probability min(1, p / q); with at
      // least K' = min(K, #candidates) accepted keep K' of them uniformly at random (the K' smallest
      // selection uniforms) and go on; otherwise complete the accepted ones without replacement from
      // normalise(max(0, p - q)) (from p where that is exhausted) and stop.
      const int64_t cands = static_cast<int64_t>(x.sum(C, [&](int64_t c) { return s.tsx[c] > -INFINITY ? 1.0 : 0.0; }));
      const int64_t Keff = cands < K ? cands : K;
      x.for_each(N, [&](int64_t n) {
        const double pn = s.tx[n] >= 0 ? s.p[s.tx[n]] : 0.0;
        bool accept = false;
        if (s.cur_node[n] >= 0) {
          ATS_DEVICE_CHECK(is_uniform(u_acc[n]), "relaxed_verify: a uniforms entry is not in [0, 1]");
          accept = u_acc[n] * s.qx[n] < pn;
        }
        s.acc[n] = accept ? 1 : 0;
      });
      const int64_t nacc = static_cast<int64_t>(x.sum(N, [&](int64_t n) { return s.acc[n] ? 1.0 : 0.0; }));
      if (drafted && nacc >= Keff) {
        x.once([&] {
          for (int64_t i = 0; i < Keff; ++i) {
            int64_t best = -1;
            for (int64_t n = 0; n < N; ++n) {
              if (!s.acc[n] || s.sel[n]) continue;
              ATS_DEVICE_CHECK(is_uniform(u_sel[n]), "relaxed_verify: a uniforms entry is not in [0, 1]");
              if (best < 0 || u_sel[n] < u_sel[best]) best = n;
            }
            s.sel[best] = 1;
            s.A[i] = s.tx[best];
            s.chosen[s.tx[best]] = 1;
          }
        });
        nA = Keff;
        go_on = true;
      } else {
        x.once([&] {
          int64_t i = 0;
          for (int64_t n = 0; n < N; ++n)
            if (s.acc[n]) s.A[i++] = s.tx[n], s.chosen[s.tx[n]] = 1;
        });
        nA = nacc;
        for (int64_t d = nacc; d < Keff; ++d) {
          x.for_each(C, [&](int64_t c) { s.r[c] = s.chosen[c] ? 0.0 : fmax(0.0, s.p[c] - s.qc[c]); });
          if (!(x.sum(C, [&](int64_t c) { return s.r[c]; }) > 0.0) && !remaining_law()) break;  // residual exhausted: p
          ATS_DEVICE_CHECK(is_uniform(u_fb[d]), "relaxed_verify: a uniforms entry is not in [0, 1]");
          const int64_t pick = x.inverse_cdf(C, s.r, u_fb[d]);
          if (pick < 0) break;
          x.once([&] {
            s.chosen[pick] = 1;
            s.A[d] = pick;
          });
          nA = d + 1;
        }
      }
    }

    if (!go_on) {  // level j is the result
      x.for_each(K, [&](int64_t i) {
        if (i < nA) {
          const int64_t c = s.A[i], k = owner_of(s.prefix, K, c);
          const int64_t e = co[s.nodes[k]] + (c - s.prefix[k]);
          out.scores[i] = s.tscore[c];
          out.parents[i] = s.index[k];
          out.tokens[i] = ct[e];
          out.nodes[i] = e + 1;
        } else {
          out.scores[i] = -INFINITY;
          out.parents[i] = out.tokens[i] = out.nodes[i] = -1;
        }
      });
      x.once([&] { *out.accepted = j - 1; });
      return;
    }
    // The sampled nodes (all drafted) become the current beams of level j.
    const int64_t* lr = a.level_row + (j - 1) * N;
    x.for_each(K, [&](int64_t i) {
      if (i < nA) {
        const int64_t c = s.A[i], k = owner_of(s.prefix, K, c);
        s.t_rows[i] = lr[s.dn[c]];
        ATS_DEVICE_CHECK(s.t_rows[i] >= 0 && s.t_rows[i] < a.R,
                         "relaxed_verify / exact_verify: a level_row entry of a drafted node is not a logits row in "
                         "[0, R)");
        s.t_scores[i] = s.tscore[c];
        s.t_nodes[i] = co[s.nodes[k]] + (c - s.prefix[k]) + 1;
        s.t_index[i] = s.dn[c];
        s.t_live[i] = 1;
      } else {
        s.t_rows[i] = -1, s.t_scores[i] = -INFINITY, s.t_nodes[i] = -1, s.t_index[i] = -1, s.t_live[i] = 0;
      }
    });
    x.for_each(K, [&](int64_t i) {
      s.rows[i] = s.t_rows[i], s.scores[i] = s.t_scores[i], s.nodes[i] = s.t_nodes[i];
      s.index[i] = s.t_index[i], s.live[i] = s.t_live[i];
    });
    x.for_each(N, [&](int64_t n) { s.prev_node[n] = s.cur_node[n]; });
  }
}

}  // namespace atspeed_ext::sampling

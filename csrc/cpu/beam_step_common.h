// Pieces of the beam-step semantics that the CPU glue and kernel need and that the CUDA twin mirrors
// (csrc/cuda/beam_step.cuh): argument checks, the log-sum-exp rounding and the candidate score.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <limits>

#include "../checks.h"

namespace atspeed_ext {

// max that propagates NaN (a NaN logit poisons its whole row, so the row yields no candidates).
inline float nan_max(float m, float x) { return (x > m || x != x) ? x : m; }

// logsumexp = max + log(sum exp(x - max)); the sum and log run in double and the result is rounded to
// float once, so every twin (whatever its exp and summation order) lands on the same float.
inline float finish_logsumexp(float m, double sum) {
  return static_cast<float>(static_cast<double>(m) + std::log(sum));
}

inline float candidate_score(float beam_score, float logit, float lse) { return beam_score + (logit - lse); }

// -inf (a forbidden token) and NaN are not candidates.
inline bool is_candidate(float s) { return s > -std::numeric_limits<float>::infinity(); }

inline void check_beam_step_args(const at::Tensor& logits, const at::Tensor& beam_scores,
                                 const at::Tensor& beam_nodes, const at::Tensor& beam_live,
                                 const at::Tensor& child_offsets, const at::Tensor& child_tokens,
                                 int64_t num_out) {
  ATS_CHECK_DIM(logits, 3);
  ATS_CHECK_FLOATING(logits);
  ATS_CHECK_DIM(beam_scores, 2);
  ATS_CHECK_DTYPE(beam_scores, at::kFloat);
  ATS_CHECK_DIM(beam_nodes, 2);
  ATS_CHECK_DTYPE(beam_nodes, at::kLong);
  ATS_CHECK_DIM(beam_live, 2);
  ATS_CHECK_DTYPE(beam_live, at::kBool);
  ATS_CHECK_DIM(child_offsets, 1);
  ATS_CHECK_DTYPE(child_offsets, at::kLong);
  ATS_CHECK_DIM(child_tokens, 1);
  ATS_CHECK_DTYPE(child_tokens, at::kLong);
  const int64_t B = logits.size(0), W = logits.size(1);
  TORCH_CHECK(W >= 1 && logits.size(2) >= 1, "logits must be [B, W, V] with W >= 1 and V >= 1, got shape ",
              logits.sizes());
  for (const at::Tensor* t : {&beam_scores, &beam_nodes, &beam_live}) {
    TORCH_CHECK(t->size(0) == B && t->size(1) == W, "beam_scores, beam_nodes and beam_live must be [B, W] = [",
                B, ", ", W, "] like logits, got shape ", t->sizes());
  }
  TORCH_CHECK(child_offsets.size(0) == child_tokens.size(0) + 2,
              "child_offsets must have num_nodes + 1 entries and child_tokens num_nodes - 1, got ",
              child_offsets.size(0), " and ", child_tokens.size(0));
  TORCH_CHECK(num_out >= 1, "num_out must be >= 1, got ", num_out);
  ATS_CHECK_SAME_DEVICE(beam_scores, logits);
  ATS_CHECK_SAME_DEVICE(beam_nodes, logits);
  ATS_CHECK_SAME_DEVICE(beam_live, logits);
  ATS_CHECK_SAME_DEVICE(child_offsets, logits);
  ATS_CHECK_SAME_DEVICE(child_tokens, logits);
}

}  // namespace atspeed_ext

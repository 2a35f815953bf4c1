// Argument checks of the sampling verification ops (relaxed_verify, exact_verify), shared by the CPU and
// CUDA glue: shapes, dtypes, devices and the temperature. Data checks (row indices, the drafted tree,
// uniforms in [0, 1]) run in the CPU glue, and as device-side asserts where the CUDA kernel reads the values.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>

#include "../checks.h"
#include "strict_verify_common.h"

namespace atspeed_ext {

inline void check_sample_verify_args(const at::Tensor& logits, const at::Tensor& beam_rows,
                                     const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
                                     const at::Tensor& beam_live, const at::Tensor& level_parent,
                                     const at::Tensor& level_token, const at::Tensor& level_row,
                                     const at::Tensor& num_levels, const at::Tensor& draft_logits,
                                     const at::Tensor& draft_scores, const at::Tensor& uniforms,
                                     const at::Tensor& child_offsets, const at::Tensor& child_tokens,
                                     double temperature) {
  // The target side and the drafted levels are strict_verify's arguments.
  check_strict_verify_args(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                           level_row, num_levels, child_offsets, child_tokens);
  const int64_t B = logits.size(0), V = logits.size(2), K = beam_rows.size(1);
  const int64_t G = level_parent.size(1), N = level_parent.size(2);
  ATS_CHECK_DIM(draft_logits, 4);
  TORCH_CHECK(draft_logits.scalar_type() == logits.scalar_type(), "draft_logits must have the dtype of logits (",
              logits.scalar_type(), "), got ", draft_logits.scalar_type());
  const int64_t W = draft_logits.size(2);
  TORCH_CHECK(draft_logits.size(0) == B && draft_logits.size(1) == G && draft_logits.size(3) == V,
              "draft_logits must be [B, G, W, V] = [", B, ", ", G, ", W, ", V, "], got ", draft_logits.sizes());
  TORCH_CHECK(W >= K && W <= (N > K ? N : K), "draft_logits.size(2) (W, the draft parents per level) must be in [K, "
              "max(N, K)] = [", K, ", ", (N > K ? N : K), "], got ", W);
  ATS_CHECK_DIM(draft_scores, 3);
  ATS_CHECK_DTYPE(draft_scores, at::kFloat);
  TORCH_CHECK(draft_scores.size(0) == B && draft_scores.size(1) == G && draft_scores.size(2) == W,
              "draft_scores must be [B, G, W] = [", B, ", ", G, ", ", W, "], got ", draft_scores.sizes());
  ATS_CHECK_DIM(uniforms, 3);
  ATS_CHECK_DTYPE(uniforms, at::kDouble);
  TORCH_CHECK(uniforms.size(0) == B && uniforms.size(1) == G + 1 && uniforms.size(2) == 2 * N + K,
              "uniforms must be [B, G + 1, 2N + K] = [", B, ", ", G + 1, ", ", 2 * N + K, "], got ", uniforms.sizes());
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0.0, "temperature must be a finite number > 0, got ",
              temperature);
  for (const at::Tensor* t : {&draft_logits, &draft_scores, &uniforms}) {
    TORCH_CHECK(t->device() == logits.device(), "every input must be on ", logits.device(), ", one is on ",
                t->device());
  }
}

}  // namespace atspeed_ext

// The one place that declares the atspeed_ext op schemas and the Python module. Device kernels register
// themselves next to their code (cpu/*.cpp, cuda/*.cu); fake kernels are registered in atspeed_ext/_ops.py.
#include <torch/extension.h>

#include "ops.h"

TORCH_LIBRARY(atspeed_ext, m) {
  // One trie-constrained beam step over W beams per request: the best W_out (beam, child token) candidates
  // by beam score + full-vocabulary log-softmax. See ops.h for shapes, order and tie-breaking.
  m.def(
      "trie_beam_step(Tensor logits, Tensor beam_scores, Tensor beam_nodes, Tensor beam_live, "
      "Tensor child_offsets, Tensor child_tokens, int num_out) -> (Tensor, Tensor, Tensor, Tensor)");
  // Tree attention for a KV cache whose slots carry parent pointers: the bool mask [B, Q, S] and position ids
  // [B, Q] of the last Q slots (each sees the visible prompt and its own chain of ancestors).
  m.def("tree_attention_mask(Tensor slot_parents, Tensor prompt_visible, int num_queries) -> (Tensor, Tensor)");
  // KV-cache compaction: keep the listed slots [B, S_new] (-1 = zero padding) of every [B, H, S, D] tensor.
  m.def("compact_kv(Tensor[] caches, Tensor keep) -> Tensor[]");
  // Its plan: the prompt and the chains of the anchor slots survive, in order. keep / new_parents / new_slot
  // [B, S] (old slot of each kept one, its renumbered parent, new index of each old slot) and num_kept [B].
  m.def("compaction_plan(Tensor slot_parents, Tensor anchors, int num_prompt) -> (Tensor, Tensor, Tensor, Tensor)");
  // Strict top-K verification of every drafted level of every request: the accepted level count [B] and the
  // new beams (scores, parent index in the last accepted level, tokens, trie nodes), each [B, K].
  m.def(
      "strict_verify(Tensor logits, Tensor beam_rows, Tensor beam_scores, Tensor beam_nodes, Tensor beam_live, "
      "Tensor level_parent, Tensor level_token, Tensor level_row, Tensor num_levels, Tensor child_offsets, "
      "Tensor child_tokens) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Trie-constrained beam sampling step: W_out distinct candidates drawn without replacement with
  // probabilities proportional to exp(score / temperature), by Gumbel-top-k over caller-given uniforms
  // [B, W, C]; same outputs as trie_beam_step, in draw order.
  m.def(
      "trie_beam_sample(Tensor logits, Tensor beam_scores, Tensor beam_nodes, Tensor beam_live, "
      "Tensor child_offsets, Tensor child_tokens, Tensor uniforms, float temperature, int num_out) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Sampling verification of every drafted level of every request, with caller-given uniforms: the paper's
  // relaxed rule (lossy) and recursive rejection sampling (exact). Outputs as strict_verify.
  m.def(
      "relaxed_verify(Tensor logits, Tensor beam_rows, Tensor beam_scores, Tensor beam_nodes, Tensor beam_live, "
      "Tensor level_parent, Tensor level_token, Tensor level_row, Tensor num_levels, Tensor draft_logits, "
      "Tensor draft_scores, Tensor uniforms, Tensor child_offsets, Tensor child_tokens, float temperature) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "exact_verify(Tensor logits, Tensor beam_rows, Tensor beam_scores, Tensor beam_nodes, Tensor beam_live, "
      "Tensor level_parent, Tensor level_token, Tensor level_row, Tensor num_levels, Tensor draft_logits, "
      "Tensor draft_scores, Tensor uniforms, Tensor child_offsets, Tensor child_tokens, float temperature) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "atspeed_ext kernels: ops live in torch.ops.atspeed_ext; this module holds host helpers.";
  m.def("build_trie", &atspeed_ext::build_trie, "Build the CSR item trie from an int64 [N, D] tensor");
  m.def("built_with_cuda", []() {
#ifdef ATSPEED_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether the CUDA kernels were compiled into this build");
}

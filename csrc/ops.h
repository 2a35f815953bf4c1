// Host entry points of the atspeed_ext ops. Each op's schema lives in registration.cpp; each device
// implementation registers itself in the file that implements it (cpu/<family>.cpp, cuda/<family>.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace atspeed_ext {

// Trie layout shared by every kernel (see atspeed_ext/trie.py):
//   nodes are numbered breadth-first, root = 0; the children of node n are the edges
//   child_offsets[n] .. child_offsets[n + 1] - 1, sorted by token; edge e carries token child_tokens[e]
//   and leads to node e + 1.

// Trie-constrained beam step.
//   logits        [B, W, V] float32/float16/bfloat16/float64  next-token logits of W beams per request
//   beam_scores   [B, W]    float32                           cumulative log-probs of the beams
//   beam_nodes    [B, W]    int64                             trie node of each beam
//   beam_live     [B, W]    bool                              dead beams produce no candidates
//   child_offsets [num_nodes + 1] int64, child_tokens [num_nodes - 1] int64: the trie
//   num_out       W_out >= 1
// Returns, per request, the W_out best candidates (beam, child token), best first:
//   scores [B, W_out] float32   beam_score + (logit - logsumexp over the full vocabulary)
//   parents, tokens, nodes [B, W_out] int64   beam index, token and child trie node
// Order: higher score first; ties go to the lower beam index, then the lower token. Candidates whose
// score is -inf or NaN are not candidates. Slots without a candidate get score -inf and -1 elsewhere.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> trie_beam_step_cpu(
    const at::Tensor& logits, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& child_offsets, const at::Tensor& child_tokens,
    int64_t num_out);

// Tree attention mask and position ids of the last num_queries slots of a tree-shaped cache.
//   slot_parents   [B, S] int64: parent slot of each tree slot, -1 (ROOT: hangs off the prompt) or
//                  -2 (NOT_TREE: prompt and padding slots)
//   prompt_visible [B, P] bool: real prompt tokens among the first P slots
// Returns mask [B, num_queries, S] bool and positions [B, num_queries] int64 (spec: reference/tree_mask.py).
std::tuple<at::Tensor, at::Tensor> tree_attention_mask_cpu(const at::Tensor& slot_parents,
                                                           const at::Tensor& prompt_visible, int64_t num_queries);

// KV-cache compaction of every layer in one call: out[t][b, :, i] = caches[t][b, :, keep[b, i]] (zeros for -1).
//   caches [B, H, S, D] (one shape and dtype), keep [B, S_new] int64 (spec: reference/compact_kv.py).
std::vector<at::Tensor> compact_kv_cpu(const std::vector<at::Tensor>& caches, const at::Tensor& keep);

// The plan of a compaction: slots < num_prompt and the chains (self and ancestors) of the anchors [B, A] survive
// (negative anchors are ignored), in slot order. Returns keep [B, S] (old slot of the i-th kept one, -1 past
// num_kept), new_parents [B, S] (its parent renumbered; NOT_TREE past num_kept), new_slot [B, S] (new index of
// each old slot, -1 if dropped) and num_kept [B] (spec: reference/compact_kv.py).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compaction_plan_cpu(const at::Tensor& slot_parents,
                                                                               const at::Tensor& anchors,
                                                                               int64_t num_prompt);

// Strict top-K verification (spec: reference/strict_verify.py). logits [B, R, V]; beams [B, K] (rows into R,
// scores, trie nodes, live); drafted levels [B, G, N] (parent index in the previous level or -1, token, row);
// num_levels [B]. Returns accepted [B] and the new beams scores / parents / tokens / nodes [B, K].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> strict_verify_cpu(
    const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& level_parent, const at::Tensor& level_token,
    const at::Tensor& level_row, const at::Tensor& num_levels, const at::Tensor& child_offsets,
    const at::Tensor& child_tokens);

// Trie-constrained beam *sampling* step: the beam step's candidates (same float32 scores), of which num_out
// are drawn without replacement with probabilities proportional to exp(score / temperature), by Gumbel-top-k:
// key = score / T - log(-log(u)) in float64, u the candidate's uniform.
//   uniforms [B, W, C] float64 in [0, 1]: uniforms[b, w, i] belongs to the i-th child (token order) of beam w;
//            C >= the children of every live beam's node (checked on the CPU; a device-side assert on CUDA)
//   temperature > 0
// Returns scores / parents / tokens / nodes [B, W_out] as trie_beam_step, in draw order (higher key first;
// equal keys to the lower beam, then the lower token). Slots without a candidate: score -inf, -1 elsewhere.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> trie_beam_sample_cpu(
    const at::Tensor& logits, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& child_offsets, const at::Tensor& child_tokens,
    const at::Tensor& uniforms, double temperature, int64_t num_out);

// Sampling verification (spec: reference/sample_verify.py; rules and proof: atspeed_ext/docs/sampling_verification.md).
// The target side and the drafted levels are strict_verify's arguments; in addition:
//   draft_logits [B, G, W, V] (dtype of logits), draft_scores [B, G, W] float32: the draft's logits and
//     cumulative scores at the W parents of each drafted level (level 1: the K beams, padded; level j > 1:
//     drafted nodes 0..W-1 of level j - 1), K <= W <= max(N, K). The draft sampled level j from them.
//   uniforms [B, G + 1, 2N + K] float64 in [0, 1]: per level, N acceptance, N selection (relaxed only) and
//     K fallback uniforms.
//   temperature > 0.
// Returns accepted [B] and the new beams [B, K] as strict_verify (in draw order).
// relaxed_verify: the paper's rule (lossy). exact_verify: recursive rejection sampling (distribution-exact).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> relaxed_verify_cpu(
    const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& level_parent, const at::Tensor& level_token,
    const at::Tensor& level_row, const at::Tensor& num_levels, const at::Tensor& draft_logits,
    const at::Tensor& draft_scores, const at::Tensor& uniforms, const at::Tensor& child_offsets,
    const at::Tensor& child_tokens, double temperature);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> exact_verify_cpu(
    const at::Tensor& logits, const at::Tensor& beam_rows, const at::Tensor& beam_scores, const at::Tensor& beam_nodes,
    const at::Tensor& beam_live, const at::Tensor& level_parent, const at::Tensor& level_token,
    const at::Tensor& level_row, const at::Tensor& num_levels, const at::Tensor& draft_logits,
    const at::Tensor& draft_scores, const at::Tensor& uniforms, const at::Tensor& child_offsets,
    const at::Tensor& child_tokens, double temperature);

// Host-only trie construction (not a dispatcher op: it has data-dependent output sizes and runs once).
//   sequences [N, D] int64, every row one identifier (validated by the Python caller).
// Returns (child_offsets [M+1], child_tokens [M-1], node_parent [M], level_offsets [D+2],
//          leaf_item_offsets [num_leaves+1], leaf_items [N]) where M is the number of nodes.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> build_trie(
    const at::Tensor& sequences);

}  // namespace atspeed_ext

"""Thin wrappers over ``torch.ops.atspeed_ext.*`` and the fake (meta) kernel of every op.

The C++ extension (``atspeed_ext._C``) declares the schemas and registers the CPU and CUDA kernels; this
module registers the fake kernels so the ops work under ``torch.compile`` and ``FakeTensorMode``, and gives
each op a documented Python signature. The pure-PyTorch twins in :mod:`atspeed_ext.reference` are the
readable specification.
"""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the schemas and the device kernels)

__all__ = ["trie_beam_step", "trie_beam_sample", "tree_attention_mask", "compact_kv", "compaction_plan",
           "strict_verify", "relaxed_verify", "exact_verify", "OP_NAMES"]

#: Every dispatcher op of the extension (the tests check that each has a CPU kernel, a fake kernel and,
#: in a CUDA build, a CUDA kernel).
OP_NAMES = ("trie_beam_step", "trie_beam_sample", "tree_attention_mask", "compact_kv", "compaction_plan",
            "strict_verify", "relaxed_verify", "exact_verify")


def trie_beam_step(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    beam_nodes: torch.Tensor,
    beam_live: torch.Tensor,
    child_offsets: torch.Tensor,
    child_tokens: torch.Tensor,
    num_out: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One trie-constrained beam step for ``B`` requests of ``W`` beams each.

    Args:
        logits: ``[B, W, V]`` next-token logits (float32, float16, bfloat16 or float64).
        beam_scores: ``[B, W]`` float32 cumulative log-probabilities of the beams.
        beam_nodes: ``[B, W]`` int64 trie node of each beam.
        beam_live: ``[B, W]`` bool; dead beams produce no candidates.
        child_offsets, child_tokens: the trie (:attr:`ItemTrie.child_offsets`, :attr:`ItemTrie.child_tokens`).
        num_out: how many candidates to keep per request (``W_out >= 1``).

    Returns:
        ``(scores, parents, tokens, nodes)``, each ``[B, W_out]``, best first: the candidate's score
        ``beam_score + log_softmax(logits)[token]`` (float32, full-vocabulary softmax), its parent beam
        index, its token and its child trie node (int64). Order: higher score first, ties to the lower
        parent beam, then the lower token. Slots without a candidate have score ``-inf`` and ``-1``
        elsewhere (``parents >= 0`` is the validity mask).
    """
    return torch.ops.atspeed_ext.trie_beam_step.default(
        logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens, num_out
    )


@torch.library.register_fake("atspeed_ext::trie_beam_step")
def _trie_beam_step_fake(logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens, num_out):
    torch._check(logits.dim() == 3, lambda: f"logits must be [B, W, V], got {tuple(logits.shape)}")
    torch._check(num_out >= 1, lambda: f"num_out must be >= 1, got {num_out}")
    batch = logits.shape[0]
    scores = beam_scores.new_empty((batch, num_out))
    parents = beam_nodes.new_empty((batch, num_out))
    return scores, parents, torch.empty_like(parents), torch.empty_like(parents)


def tree_attention_mask(slot_parents: torch.Tensor, prompt_visible: torch.Tensor,
                        num_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mask and position ids of the last ``num_queries`` slots of a tree-shaped KV cache.

    Args:
        slot_parents: ``[B, S]`` int64; for each cache slot the slot of its parent (an earlier tree slot),
            ``-1`` for a tree slot hanging directly off the prompt, ``-2`` for prompt and padding slots.
        prompt_visible: ``[B, P]`` bool, the real (not padding) prompt tokens among the first ``P`` slots.
        num_queries: how many trailing slots to build rows for (``P + num_queries <= S``).

    Returns:
        ``(mask [B, num_queries, S] bool, positions [B, num_queries] int64)``: a query sees the real prompt
        tokens and its chain (itself and its ancestors) and sits at position ``prompt_length + depth - 1``;
        a padding query (``-2``) sees only itself, at position 0. Spec: :mod:`atspeed_ext.reference.tree_mask`.
    """
    return torch.ops.atspeed_ext.tree_attention_mask.default(slot_parents, prompt_visible, num_queries)


@torch.library.register_fake("atspeed_ext::tree_attention_mask")
def _tree_attention_mask_fake(slot_parents, prompt_visible, num_queries):
    batch, slots = slot_parents.shape
    mask = slot_parents.new_empty((batch, num_queries, slots), dtype=torch.bool)
    return mask, slot_parents.new_empty((batch, num_queries))


def compact_kv(caches: list[torch.Tensor], keep: torch.Tensor) -> list[torch.Tensor]:
    """Keep, per request, the cache slots ``keep [B, S_new]`` (-1: zero padding) of every ``[B, H, S, D]``
    tensor in ``caches`` (all layers' keys and values at once). Spec: :mod:`atspeed_ext.reference.compact_kv`."""
    return torch.ops.atspeed_ext.compact_kv.default(caches, keep)


@torch.library.register_fake("atspeed_ext::compact_kv")
def _compact_kv_fake(caches, keep):
    return [c.new_empty((c.shape[0], c.shape[1], keep.shape[1], c.shape[3])) for c in caches]


def compaction_plan(slot_parents: torch.Tensor, anchors: torch.Tensor,
                    num_prompt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which slots of a tree-shaped cache survive a compaction: the first ``num_prompt`` and the chains (self and
    ancestors) of ``anchors [B, A]`` (negative entries ignored), in order. Returns ``keep``, ``new_parents``,
    ``new_slot`` (each ``[B, S]``) and ``num_kept [B]``; spec: :func:`atspeed_ext.reference.compaction_plan`."""
    return torch.ops.atspeed_ext.compaction_plan.default(slot_parents, anchors, num_prompt)


@torch.library.register_fake("atspeed_ext::compaction_plan")
def _compaction_plan_fake(slot_parents, anchors, num_prompt):
    return (*(slot_parents.new_empty(slot_parents.shape) for _ in range(3)),
            slot_parents.new_empty(slot_parents.shape[:1]))


def strict_verify(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token, level_row,
                  num_levels, child_offsets, child_tokens):
    """Strict top-K verification of every drafted level of every request, on the device.

    Args:
        logits: ``[B, R, V]`` target logits of the fed rows.
        beam_rows, beam_scores, beam_nodes, beam_live: ``[B, K]`` the current beams (logits row, float32 score,
            trie node, liveness).
        level_parent, level_token, level_row: ``[B, G, N]`` drafted levels: each node's parent index in the
            previous level (level 1: beam index; -1 for an empty slot), token and logits row.
        num_levels: ``[B]`` levels drafted per request (<= G).
        child_offsets, child_tokens: the trie.

    Returns:
        ``(accepted [B], scores, parents, tokens, nodes [B, K])``: accepted levels n and the new beams (the
        target's top-K at level n + 1), ``parents`` indexing level n (level 0: the beams).
        Spec: :mod:`atspeed_ext.reference.strict_verify`.
    """
    return torch.ops.atspeed_ext.strict_verify.default(logits, beam_rows, beam_scores, beam_nodes, beam_live,
                                                       level_parent, level_token, level_row, num_levels,
                                                       child_offsets, child_tokens)


@torch.library.register_fake("atspeed_ext::strict_verify")
def _strict_verify_fake(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token, level_row,
                        num_levels, child_offsets, child_tokens):
    batch, k = beam_rows.shape
    return (num_levels.new_empty((batch,)), beam_scores.new_empty((batch, k)), beam_rows.new_empty((batch, k)),
            beam_rows.new_empty((batch, k)), beam_rows.new_empty((batch, k)))


def trie_beam_sample(logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens, uniforms,
                     temperature: float, num_out: int):
    """One trie-constrained beam *sampling* step: ``num_out`` distinct (beam, child token) candidates per
    request, drawn without replacement with probabilities proportional to ``exp(score / temperature)``.

    Args:
        logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens: as :func:`trie_beam_step`.
        uniforms: ``[B, W, C]`` float64 in [0, 1]; ``uniforms[b, w, i]`` belongs to the i-th child (token
            order) of beam ``w``; ``C`` must cover every live beam's children (``ItemTrie.max_children``).
        temperature: ``T > 0``.
        num_out: how many candidates to draw per request (``W_out >= 1``).

    Returns:
        ``(scores, parents, tokens, nodes)`` ``[B, W_out]`` as :func:`trie_beam_step` (same float32 scores:
        the *unscaled* cumulative log-probabilities), in draw order: Gumbel-top-k with the float64 key
        ``score / T - log(-log(u))`` (``score / T`` where that overflows to +-inf), higher first (equal keys:
        lower beam, then lower token). Fewer
        candidates than ``W_out``: the missing slots have score -inf and -1 elsewhere.
        Spec: :mod:`atspeed_ext.reference.beam_sample`.
    """
    return torch.ops.atspeed_ext.trie_beam_sample.default(logits, beam_scores, beam_nodes, beam_live, child_offsets,
                                                          child_tokens, uniforms, temperature, num_out)


@torch.library.register_fake("atspeed_ext::trie_beam_sample")
def _trie_beam_sample_fake(logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens, uniforms,
                           temperature, num_out):
    return _trie_beam_step_fake(logits, beam_scores, beam_nodes, beam_live, child_offsets, child_tokens, num_out)


def relaxed_verify(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token, level_row,
                   num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens, temperature: float):
    """Relaxed sampling verification (the paper's rule; lossy) of every drafted level of every request.

    Args:
        logits ... child_tokens: as :func:`strict_verify` (target logits, current beams, drafted levels), plus
        draft_logits: ``[B, G, W, V]`` (dtype of ``logits``) the draft's logits at the W parents of each level
            (level 1: the K beams, padded; level j > 1: drafted nodes ``0..W-1`` of level j - 1), ``K <= W <=
            max(N, K)``; the draft sampled level j from the children of these parents.
        draft_scores: ``[B, G, W]`` float32 the draft's cumulative scores of those parents.
        uniforms: ``[B, G + 1, 2N + K]`` float64 in [0, 1]: per level N acceptance, N selection, K fallback.
        temperature: ``T > 0`` (both distributions are ``softmax(score / T)`` over their candidates).

    Returns:
        ``(accepted [B], scores, parents, tokens, nodes [B, K])`` as :func:`strict_verify`, the beams in draw
        order. Spec and rule: :func:`atspeed_ext.reference.relaxed_verify`.
    """
    return torch.ops.atspeed_ext.relaxed_verify.default(logits, beam_rows, beam_scores, beam_nodes, beam_live,
                                                        level_parent, level_token, level_row, num_levels, draft_logits,
                                                        draft_scores, uniforms, child_offsets, child_tokens,
                                                        temperature)


def exact_verify(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token, level_row,
                 num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens, temperature: float):
    """Exact sampling verification (recursive rejection sampling): each level's K-set has exactly the
    distribution of target-only beam sampling, whatever the draft. Arguments and outputs as
    :func:`relaxed_verify` (the selection uniforms are unused). Spec and rule:
    :func:`atspeed_ext.reference.exact_verify`; proof: ``atspeed_ext/docs/sampling_verification.md``."""
    return torch.ops.atspeed_ext.exact_verify.default(logits, beam_rows, beam_scores, beam_nodes, beam_live,
                                                      level_parent, level_token, level_row, num_levels, draft_logits,
                                                      draft_scores, uniforms, child_offsets, child_tokens, temperature)


def _sample_verify_fake(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token, level_row,
                        num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens, temperature):
    return _strict_verify_fake(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                               level_row, num_levels, child_offsets, child_tokens)


torch.library.register_fake("atspeed_ext::relaxed_verify")(_sample_verify_fake)
torch.library.register_fake("atspeed_ext::exact_verify")(_sample_verify_fake)

"""Reference strict top-K verification (spec of ``torch.ops.atspeed_ext.strict_verify``)."""

from __future__ import annotations

import torch

from .beam_step import trie_beam_step


def strict_verify(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token, level_row,
                  num_levels, child_offsets, child_tokens):
    """Verify the drafted levels of every request against the target, level by level.

    Args:
        logits: ``[B, R, V]`` target logits of every fed row.
        beam_rows: ``[B, K]`` int64 logits row of each current beam (level 0).
        beam_scores, beam_nodes, beam_live: ``[B, K]`` the current beams (float32 / int64 / bool).
        level_parent: ``[B, G, N]`` int64, for drafted level j (0-based j = level j + 1), the index of each
            node's parent in the previous level (level 1: a beam index); -1 for empty slots.
        level_token: ``[B, G, N]`` int64 token of each drafted node.
        level_row: ``[B, G, N]`` int64 logits row of each drafted node.
        num_levels: ``[B]`` int64, how many of the G levels request b drafted (g_b <= G).
        child_offsets, child_tokens: the trie.

    At level j = 1, 2, ... the target's own top-K ``Y(j)`` is computed from the logits of the current
    beams with ``trie_beam_step``. Level j (j <= g_b) is accepted iff every valid element of ``Y(j)`` is a
    drafted node of level j (same parent, same token); the accepted nodes (in ``Y(j)`` order) become the
    current beams. At the first rejected level, or at level g_b + 1 (the bonus), ``Y`` is the result.

    Returns:
        ``accepted [B]`` (levels accepted, n), and ``scores``, ``parents``, ``tokens``, ``nodes`` ``[B, K]``:
        the new beams, where ``parents`` indexes level n (level 0: the beams); invalid slots as in
        ``trie_beam_step``.
    """
    B, K = beam_scores.shape
    device = beam_scores.device
    accepted = torch.zeros(B, dtype=torch.long, device=device)
    out = [torch.full((B, K), float("-inf"), device=device)] + [torch.full((B, K), -1, dtype=torch.long,
                                                                           device=device) for _ in range(3)]
    for b in range(B):
        rows, scores, nodes, live = beam_rows[b], beam_scores[b], beam_nodes[b], beam_live[b]
        index = torch.arange(K, device=device)  # index of each current beam in its level
        for j in range(int(num_levels[b]) + 1):
            y_scores, y_parent, y_token, y_node = (x[0] for x in trie_beam_step(
                logits[b, torch.where(live, rows, 0)].unsqueeze(0), scores.unsqueeze(0), nodes.unsqueeze(0),
                live.unsqueeze(0), child_offsets, child_tokens, K))
            y_valid = y_parent >= 0
            parent_index = torch.where(y_valid, index[y_parent.clamp(min=0)], -1)
            matched = torch.full((K,), -1, dtype=torch.long, device=device)
            if j < int(num_levels[b]):
                for k in range(K):
                    if not bool(y_valid[k]):
                        continue
                    hit = ((level_parent[b, j] == parent_index[k]) & (level_token[b, j] == y_token[k])
                           & (level_parent[b, j] >= 0)).nonzero()
                    if len(hit):
                        matched[k] = int(hit[0])
            if j == int(num_levels[b]) or bool((y_valid & (matched < 0)).any()):
                accepted[b] = j
                out[0][b], out[1][b], out[2][b], out[3][b] = y_scores, parent_index, y_token, y_node
                break
            rows = torch.where(y_valid, level_row[b, j, matched.clamp(min=0)], -1)
            scores, nodes, live, index = y_scores, y_node, y_valid, matched
    return (accepted, *out)

"""Reference trie-constrained beam step (spec of ``torch.ops.atspeed_ext.trie_beam_step``)."""

from __future__ import annotations

import torch


def row_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """log-sum-exp over the last dim, as every twin computes it.

    ``max + log(sum(exp(x - max)))`` with the logits first rounded to float32, the exponentials, sum and
    log in float64, and the result rounded to float32 once. Twins whose float64 exp or summation order differ
    (the CPU kernel: libm exp, a sequential sum; this: torch.exp, torch.sum; CUDA: a tree-shaped sum) agree on
    the float32 result unless the float64 value lies within a few ulps of a float32 rounding midpoint: a
    one-ulp difference on rows built for it (a fuzzer found such rows), about 1e-15 per random row. A NaN logit
    makes the row NaN.
    """
    x = logits.float()
    m = x.amax(-1)
    has_nan = torch.isnan(x).any(-1)
    m = torch.where(has_nan, torch.full_like(m, float("nan")), m)
    total = torch.exp(x.double() - m.double().unsqueeze(-1)).sum(-1)
    return (m.double() + torch.log(total)).float()


def trie_beam_step(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    beam_nodes: torch.Tensor,
    beam_live: torch.Tensor,
    child_offsets: torch.Tensor,
    child_tokens: torch.Tensor,
    num_out: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``num_out`` best (beam, child token) candidates of each request.

    A candidate is a trie child ``t`` of a live beam ``w``; its score is
    ``beam_scores[b, w] + (logits[b, w, t] - logsumexp(logits[b, w]))`` in float32 (log-softmax over the
    full vocabulary). Scores of -inf or NaN are not candidates. Candidates are ranked by score, higher
    first; equal scores go to the lower beam index, then the lower token. Missing candidates come out as
    score -inf, parent/token/node -1. Edge ``e`` of the trie leads to node ``e + 1``.
    """
    scores, candidate, edge_of = candidates(logits, beam_scores, beam_nodes, beam_live, child_offsets,
                                            child_tokens)
    flat = torch.where(candidate, scores, torch.full_like(scores, float("-inf"))).flatten(1)
    # Stable sort keeps equal scores in flat order (beam-major, then token): exactly the tie-break rule.
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    return take(order, scores, candidate, edge_of, num_out)


def candidates(logits: torch.Tensor, beam_scores: torch.Tensor, beam_nodes: torch.Tensor, beam_live: torch.Tensor,
               child_offsets: torch.Tensor, child_tokens: torch.Tensor):
    """Dense ``[B, W, V]`` tables of the (beam, token) pairs, shared by the beam ops: the float32 score
    ``beam_score + (logit - logsumexp)``, whether the pair is a candidate (the token is a trie child of a live
    beam's node and the score is above -inf; NaN is not) and its trie edge (-1 for non-children). A live beam
    must sit on a trie node (a RuntimeError otherwise, as from the kernels)."""
    B, W, V = logits.shape
    if W < 1 or V < 1:  # as the kernels: a beam op needs at least one beam and one token
        raise RuntimeError(f"logits must be [B, W, V] with W >= 1 and V >= 1, got shape {list(logits.shape)}")
    device = logits.device
    scores = beam_scores.float().unsqueeze(-1) + (logits.float() - row_logsumexp(logits).unsqueeze(-1))
    allowed = torch.zeros(B, W, V, dtype=torch.bool, device=device)
    edge_of = torch.full((B, W, V), -1, dtype=torch.long, device=device)
    offsets = child_offsets.tolist()
    for b in range(B):
        for w in range(W):
            if not bool(beam_live[b, w]):
                continue
            node = int(beam_nodes[b, w])
            if not 0 <= node < len(offsets) - 1:
                raise RuntimeError(f"beam_nodes[{b}, {w}] = {node} is not a trie node in [0, {len(offsets) - 1})")
            edges = torch.arange(offsets[node], offsets[node + 1], device=device)
            allowed[b, w, child_tokens[edges]] = True
            edge_of[b, w, child_tokens[edges]] = edges
    return scores, allowed & (scores > float("-inf")), edge_of


def take(order: torch.Tensor, scores: torch.Tensor, candidate: torch.Tensor, edge_of: torch.Tensor, num_out: int):
    """The beam ops' outputs for the flat (beam-major) indices ``order`` ``[B, >= k]``, best first: the first
    ``num_out``, non-candidates and missing slots as score -inf, parent/token/node -1. Edge ``e`` of the trie
    leads to node ``e + 1``."""
    B, W, V = scores.shape
    order = order[:, :num_out]
    k = order.shape[1]
    out_scores = torch.full((B, num_out), float("-inf"), dtype=torch.float32, device=scores.device)
    out_parents = torch.full((B, num_out), -1, dtype=torch.long, device=scores.device)
    out_tokens, out_nodes = out_parents.clone(), out_parents.clone()
    valid = candidate.flatten(1).gather(1, order)
    out_scores[:, :k] = torch.where(valid, scores.flatten(1).gather(1, order), out_scores[:, :k])
    out_parents[:, :k] = torch.where(valid, order // V, -1)
    out_tokens[:, :k] = torch.where(valid, order % V, -1)
    out_nodes[:, :k] = torch.where(valid, edge_of.flatten(1).gather(1, order) + 1, -1)
    return out_scores, out_parents, out_tokens, out_nodes

"""Reference trie-constrained beam sampling step (spec of ``torch.ops.atspeed_ext.trie_beam_sample``)."""

from __future__ import annotations

import torch

from .beam_step import row_logsumexp


def trie_beam_sample(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    beam_nodes: torch.Tensor,
    beam_live: torch.Tensor,
    child_offsets: torch.Tensor,
    child_tokens: torch.Tensor,
    uniforms: torch.Tensor,
    temperature: float,
    num_out: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``num_out`` distinct (beam, child token) candidates per request without replacement.

    Candidates and their float32 scores are those of :func:`~atspeed_ext.reference.trie_beam_step`
    (``beam_score + log_softmax(logits)[token]``; -inf / NaN scores are not candidates). Each candidate gets
    the Gumbel key ``score / T - log(-log(u))`` in float64, where ``u = uniforms[b, w, i]`` for the i-th
    child (in token order) of beam ``w``; the candidates with the ``num_out`` highest keys are returned in
    key order (equal keys: lower beam, then lower token). Ranking by such keys is exactly sequential
    sampling without replacement with probabilities proportional to ``exp(score / T)`` (Gumbel-top-k), so
    the output order is the draw order. Missing candidates: score -inf, parent/token/node -1.
    """
    B, W, V = logits.shape
    device = logits.device
    lse = row_logsumexp(logits)
    scores = beam_scores.float().unsqueeze(-1) + (logits.float() - lse.unsqueeze(-1))  # [B, W, V] float32

    # Dense [B, W, V] tables: which tokens are candidates, their edge and their uniform.
    allowed = torch.zeros(B, W, V, dtype=torch.bool, device=device)
    edge_of = torch.full((B, W, V), -1, dtype=torch.long, device=device)
    u = torch.full((B, W, V), 0.5, dtype=torch.float64, device=device)
    offsets = child_offsets.tolist()
    for b in range(B):
        for w in range(W):
            if not bool(beam_live[b, w]):
                continue
            node = int(beam_nodes[b, w])
            edges = torch.arange(offsets[node], offsets[node + 1], device=device)
            tokens = child_tokens[edges]
            allowed[b, w, tokens] = True
            edge_of[b, w, tokens] = edges
            u[b, w, tokens] = uniforms[b, w, :len(edges)]
    candidate = allowed & (scores > float("-inf"))  # also drops NaN
    keys = scores.double() / temperature - torch.log(-torch.log(u))
    keys = torch.where(candidate, keys, torch.full_like(keys, float("-inf"))).reshape(B, W * V)

    # Stable sorts compose: by key (descending, ties in flat = beam-major token order), then candidates first
    # (a candidate whose key is -inf, from u = 0, still comes before every non-candidate).
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices
    is_cand = candidate.reshape(B, W * V).gather(1, order)
    order = order.gather(1, torch.sort(is_cand.to(torch.int8), dim=1, descending=True, stable=True).indices)
    order = order[:, :num_out]
    k = order.shape[1]
    out_scores = torch.full((B, num_out), float("-inf"), dtype=torch.float32, device=device)
    out_parents = torch.full((B, num_out), -1, dtype=torch.long, device=device)
    out_tokens, out_nodes = out_parents.clone(), out_parents.clone()
    valid = candidate.reshape(B, W * V).gather(1, order)
    out_scores[:, :k] = torch.where(valid, scores.reshape(B, W * V).gather(1, order), out_scores[:, :k])
    out_parents[:, :k] = torch.where(valid, order // V, -1)
    out_tokens[:, :k] = torch.where(valid, order % V, -1)
    out_nodes[:, :k] = torch.where(valid, edge_of.reshape(B, W * V).gather(1, order) + 1, -1)
    return out_scores, out_parents, out_tokens, out_nodes

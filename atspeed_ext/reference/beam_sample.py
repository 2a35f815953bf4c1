"""Reference trie-constrained beam sampling step (spec of ``torch.ops.atspeed_ext.trie_beam_sample``)."""

from __future__ import annotations

import torch

from .beam_step import candidates, take


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
    the Gumbel key ``score / T - log(-log(u))`` in float64 (``score / T`` itself where that is infinite), where ``u = uniforms[b, w, i]`` for the i-th
    child (in token order) of beam ``w``; the candidates with the ``num_out`` highest keys are returned in
    key order (equal keys: lower beam, then lower token). Ranking by such keys is exactly sequential
    sampling without replacement with probabilities proportional to ``exp(score / T)`` (Gumbel-top-k), so
    the output order is the draw order. Missing candidates: score -inf, parent/token/node -1.
    """
    scores, candidate, edge_of = candidates(logits, beam_scores, beam_nodes, beam_live, child_offsets,
                                            child_tokens)
    # The uniform of the i-th child (token order) of a beam's node, i = edge - first edge of the node; 0.5
    # (an extra column) for the other tokens, which are no candidates anyway.
    # (A dead beam's node is never read: any value, even off the trie, stands for the root there.)
    child = edge_of - child_offsets[torch.where(beam_live, beam_nodes, 0)].unsqueeze(-1)
    u = torch.nn.functional.pad(uniforms.double(), (0, 1), value=0.5).gather(
        2, torch.where(edge_of >= 0, child, uniforms.shape[2]))
    scaled = scores.double() / temperature
    # An infinite scaled score (a tiny T overflows it) is the key whatever u is (-inf + inf would be NaN).
    keys = torch.where(scaled.isinf(), scaled, scaled - torch.log(-torch.log(u)))
    keys = torch.where(candidate, keys, torch.full_like(keys, float("-inf"))).flatten(1)

    # Stable sorts compose: by key (descending, ties in flat = beam-major token order), then candidates first
    # (a candidate whose key is -inf, from u = 0, still comes before every non-candidate).
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices
    is_cand = candidate.flatten(1).gather(1, order)
    order = order.gather(1, torch.sort(is_cand.to(torch.int8), dim=1, descending=True, stable=True).indices)
    return take(order, scores, candidate, edge_of, num_out)

"""Recall@K and NDCG@K over each prompt's full ground-truth set, from ranked identifiers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["hits_of_ranking", "recall_ndcg", "popularity_ranking"]


def hits_of_ranking(ranked_items: Sequence[Sequence[int]], truth: Iterable[int]) -> list[bool]:
    """Hit flags of a ranked list of identifiers. ``ranked_items[r]`` are the items sharing the identifier at
    rank r (collisions): an identifier hits when any of its items is in the truth, and counts once; a truth item
    already hit never hits again (a list that repeats an identifier cannot score a recall above 1)."""
    unfound = set(truth)
    hits = []
    for items in ranked_items:
        found = unfound.intersection(items)
        unfound -= found
        hits.append(bool(found))
    return hits


def recall_ndcg(hits: Sequence[bool], num_truth: int, k: int) -> tuple[float, float]:
    """Recall@k = hits in the top k / |truth|; NDCG@k = DCG / ideal DCG with min(k, |truth|) relevant items."""
    if num_truth < 1:
        raise ValueError("a prompt needs at least one ground-truth item")
    top = list(hits[:k])
    dcg = sum(1.0 / math.log2(r + 2) for r, h in enumerate(top) if h)
    idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, num_truth)))
    return sum(top) / num_truth, dcg / idcg


def popularity_ranking(counts: Sequence[int], identifiers: Sequence[Sequence], k: int) -> list[list[int]]:
    """The k most frequent identifiers (items grouped by identifier, counts summed; ties to the lower first
    item id), as lists of their items — the same shape as a decoder's ranked output."""
    groups: dict[tuple, list[int]] = {}
    for item, ident in enumerate(identifiers):
        groups.setdefault(tuple(ident), []).append(item)
    ranked = sorted(groups.values(), key=lambda items: (-sum(counts[i] for i in items), items[0]))
    return ranked[:k]

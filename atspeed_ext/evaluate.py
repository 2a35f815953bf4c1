"""Recall@K / NDCG@K of a model's constrained beam search (beam size K for the top-K list) and of popularity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ._checks import positive_int
from .data import Prompt, RecData
from .decoder import BeamSearchDecoder
from .metrics import hits_of_ranking, popularity_ranking, recall_ndcg
from .spec_decoder import SpecBeamDecoder, SpecStats
from .tokenizer import CodeTokenizer

__all__ = ["Speculation", "evaluate_model", "evaluate_popularity", "evaluate_speculative", "mean_and_se",
           "model_scores", "output_recall_ndcg", "popularity_scores"]


@dataclass(frozen=True)
class Speculation:
    """Decode with :class:`SpecBeamDecoder` (strict verification: the same lists as beam search) instead of
    :class:`BeamSearchDecoder`: ``draft`` drafts ``draft_beams`` nodes per level (None: 2K for beam size K; a
    tuple: one width per trie depth), ``gamma`` levels per round, filled by ``draft_policy``."""

    draft: torch.nn.Module
    draft_beams: int | tuple[int, ...] | None = None
    gamma: int = 3
    draft_policy: str = "beam"

    def width(self, k: int) -> int | tuple[int, ...]:
        return 2 * k if self.draft_beams is None else self.draft_beams

    def decoder(self, target, trie, k: int) -> SpecBeamDecoder:
        return SpecBeamDecoder(target, self.draft, trie, k, self.width(k), self.gamma, draft_policy=self.draft_policy)


def mean_and_se(xs: Sequence[float]) -> tuple[float, float]:
    """The mean of ``xs`` and its standard error (sample sd / sqrt(n); 0 for fewer than two values)."""
    n = len(xs)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(xs) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n)


def output_recall_ndcg(out, row: int, truth, k: int) -> tuple[float, float]:
    """Recall@k and NDCG@k of row ``row`` of a decoder output (its valid beams, best first) against ``truth``
    (a set of item ids); an identifier hits when any of its items is in the truth, once."""
    valid = out.valid[row].tolist()
    ranked = [out.item_ids[row][r] for r in range(k) if valid[r]]
    return recall_ndcg(hits_of_ranking(ranked, truth), len(truth), k)


@torch.inference_mode()
def model_scores(model, tokenizer: CodeTokenizer, prompts: Sequence[Prompt], k: int, batch_size: int = 32,
                 with_eos: bool = False, progress: bool = True, speculation: Speculation | None = None,
                 stats: list | None = None) -> tuple[list[float], list[float]]:
    """Per prompt (in the order given), Recall@k and NDCG@k of the top-k list of beam search with k beams.

    An identifier hits when any of its items (shared identifiers) is in the prompt's truth, once. With
    ``speculation`` the lists come from speculative beam search (the same lists), and each decode call's
    :class:`SpecStats` is appended to ``stats`` when given.
    """
    if not prompts:
        raise ValueError("no prompts to evaluate")
    trie = tokenizer.trie(with_eos)
    decoder = BeamSearchDecoder(model, trie, num_beams=k) if speculation is None else speculation.decoder(model, trie, k)
    batch_size = positive_int("batch_size", batch_size)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].history))  # similar lengths batch together
    recalls, ndcgs = [0.0] * len(prompts), [0.0] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=f"eval K={k}", unit="batch", disable=not progress, leave=False):
        out = decoder.generate([tokenizer.encode_prompt(prompts[i].history) for i in batch])
        if stats is not None and speculation is not None:
            stats.append(out.stats)
        for row, i in enumerate(batch):
            recalls[i], ndcgs[i] = output_recall_ndcg(out, row, prompts[i].truth, k)
    return recalls, ndcgs


def popularity_scores(data: RecData, prompts: Sequence[Prompt], k: int, include_valid: bool = False,
                      counts: Sequence[int] | None = None) -> tuple[list[float], list[float]]:
    """Per prompt, Recall@k and NDCG@k of the k most popular identifiers of the train sequences (counting the
    valid sequences too with ``include_valid``: the baseline of a model trained on them), or of the given
    per-item ``counts``."""
    if not prompts:
        raise ValueError("no prompts to evaluate")
    if counts is None:
        counts = data.item_counts(include_valid)
    elif include_valid:
        raise ValueError("give either counts or include_valid, not both")
    elif len(counts) != data.num_items:
        raise ValueError(f"counts has {len(counts)} entries; expected one per item ({data.num_items})")
    ranked = popularity_ranking(counts, data.identifiers, k)
    scores = [recall_ndcg(hits_of_ranking(ranked, p.truth), len(p.truth), k) for p in prompts]
    return [s[0] for s in scores], [s[1] for s in scores]


def _as_metrics(per_k: dict[int, tuple[list[float], list[float]]], standard_errors: bool) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for k, per_prompt in per_k.items():
        for name, values in zip(("recall", "ndcg"), per_prompt):
            mean, se = mean_and_se(values)
            metrics[f"{name}@{k}"] = mean
            if standard_errors:
                metrics[f"{name}@{k}_se"] = se
    return metrics


def evaluate_model(model, tokenizer: CodeTokenizer, prompts: Sequence[Prompt], ks: Sequence[int] = (5, 10, 20),
                   batch_size: int = 32, with_eos: bool = False, progress: bool = True,
                   standard_errors: bool = False) -> dict[str, float]:
    """Mean Recall@k and NDCG@k over the prompts for each k (see :func:`model_scores`); with
    ``standard_errors`` also their standard errors over prompts (keys ``recall@k_se``, ``ndcg@k_se``)."""
    return _as_metrics({k: model_scores(model, tokenizer, prompts, k, batch_size, with_eos, progress) for k in ks},
                       standard_errors)


def evaluate_popularity(data: RecData, prompts: Sequence[Prompt], ks: Sequence[int] = (5, 10, 20),
                        standard_errors: bool = False, include_valid: bool = False) -> dict[str, float]:
    """The same metrics for the most popular identifiers of the train (+ valid) sequences, for every prompt."""
    return _as_metrics({k: popularity_scores(data, prompts, k, include_valid) for k in ks}, standard_errors)


def evaluate_speculative(model, tokenizer: CodeTokenizer, prompts: Sequence[Prompt], speculation: Speculation,
                         ks: Sequence[int] = (5, 10, 20), batch_size: int = 32, with_eos: bool = False,
                         progress: bool = True, standard_errors: bool = False) -> tuple[dict[str, float], dict]:
    """:func:`evaluate_model` by speculative beam search: the same metrics (the lists are beam search's), and per
    k how the speculation went: ``{k: {draft_beams, accepted_levels_per_round, target_calls_per_request,
    draft_calls_per_request}}`` (beam search makes one target call per trie level)."""
    per_k, speculated = {}, {}
    for k in ks:
        stats: list = []
        per_k[k] = model_scores(model, tokenizer, prompts, k, batch_size, with_eos, progress, speculation, stats)
        merged = SpecStats(target_calls=[c for s in stats for c in s.target_calls],
                           draft_calls=[c for s in stats for c in s.draft_calls],
                           accepted_levels=[levels for s in stats for levels in s.accepted_levels])
        speculated[k] = {"draft_beams": speculation.width(k),
                         "accepted_levels_per_round": merged.mean_accepted_levels,
                         "target_calls_per_request": merged.mean_target_calls,
                         "draft_calls_per_request": merged.mean_draft_calls}
    return _as_metrics(per_k, standard_errors), speculated

"""SpecBeamDecoder: speculative trie-constrained beam search (strict top-K verification, lossless) and beam
sampling (relaxed or exact sampling verification).

Per round and request (beams at depth t, ``g = min(gamma, depth - t - 1)``):

1. the draft expands a tree of ``g`` levels of at most N nodes from the K target beams (one batched draft
   call per level);
2. the target scores every tree node in one call (tree attention; the first round fuses the prompt prefill);
3. verification walks the levels: level j is accepted iff every one of the target's own top-K candidates
   there is a drafted node (same parent, same token); with n accepted levels the target's top-K at level
   n + 1 (the "bonus") is taken from the same call, so each round advances n + 1 tokens.

A round that ends every request of the batch and whose levels can each hold *all* the trie children of the
level above (at most N: the last levels of a semantic-ID trie are narrow) needs no draft: its tree is built
from the trie alone and every level is accepted (``skip_exhaustive_draft``, strict verification).

The result is identical to :class:`BeamSearchDecoder` whatever the draft. Requests of a batch progress
independently; finished requests leave the batch.

Sampling verification replaces steps 1 and 3: the draft *samples* each level (Gumbel-top-N with its own
scores), and the target's K beams of each level are *sampled* from the drafted ones: ``"relaxed"`` is the
paper's rule (lossy), ``"exact"`` recursive rejection sampling, whose K-sets have exactly the distribution of
``BeamSearchDecoder(do_sample=True)``. Rules and proof: ``atspeed_ext/docs/sampling_verification.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import _ops
from ._checks import is_int, positive_int
from ._nvtx import nvtx_range
from ._logit_watch import LogitWatch
from ._inputs import (check_cache_window, check_model_and_trie, check_positions, model_device, model_pad_token_id,
                      model_vocab_sizes, normalise_prompts, spec_cache_slots,
                      warn_if_dropout_active)
from .decoder import BeamSearchOutput, SeededUniforms, best_first, check_temperature, plain_output_of_inference
from .tree_kv import NOT_TREE, ROOT, TreeKV
from .trie import ItemTrie

__all__ = ["SpecBeamDecoder", "SpecBeamOutput", "SpecStats"]

NOT_FED = -3  # a tree node the draft has not processed (the last drafted level)
POLICIES = ("beam", "anchored")
VERIFICATIONS = ("strict", "relaxed", "exact")
#: The draft policy each verification uses unless told otherwise (the paper's for strict and relaxed).
DEFAULT_POLICY = {"strict": "beam", "relaxed": "beam", "exact": "anchored"}


@dataclass
class SpecStats:
    """Per-request cost of a speculative decode."""

    target_calls: list[int]
    draft_calls: list[int]
    accepted_levels: list[list[int]] = field(default_factory=list)  # per request, per round

    @property
    def mean_target_calls(self) -> float:
        return sum(self.target_calls) / max(1, len(self.target_calls))

    @property
    def mean_draft_calls(self) -> float:
        return sum(self.draft_calls) / max(1, len(self.draft_calls))

    @property
    def mean_accepted_levels(self) -> float:
        rounds = [n for per_request in self.accepted_levels for n in per_request]
        return sum(rounds) / max(1, len(rounds))


@dataclass
class SpecBeamOutput(BeamSearchOutput):
    stats: SpecStats | None = None


@dataclass
class _Level:
    """Drafted nodes of one tree level, ``[B, N]`` each."""

    parent: torch.Tensor  # index into the previous level (level 1: beam index)
    token: torch.Tensor
    node: torch.Tensor
    live: torch.Tensor  # parent >= 0
    target_row: torch.Tensor | None = None   # row of the target logits of this node
    target_slot: torch.Tensor | None = None  # its slot in the target cache
    draft_slot: torch.Tensor | None = None   # its slot in the draft cache, or NOT_FED


def _depth_widths(draft_beams, K: int, trie: ItemTrie, verification: str) -> tuple[list[int], int | tuple]:
    """``draft_beams`` (an int, or one width per trie depth: a list, tuple, 1-D array or tensor) checked, as the
    width of the drafted level at each trie depth 1 .. depth - 1 (at least one entry; under strict verification
    at most the trie's node count at that depth, or K) and as given (an int or a tuple of ints)."""
    levels = max(1, trie.depth - 1)
    if not is_int(draft_beams) and hasattr(draft_beams, "tolist"):  # numpy arrays, tensors
        draft_beams = draft_beams.tolist()
    if isinstance(draft_beams, (list, tuple, range)):
        if not draft_beams:
            raise ValueError("draft_beams must be an int or a non-empty sequence of ints, got an empty sequence")
        if len(draft_beams) > levels:
            raise ValueError(f"draft_beams gives {len(draft_beams)} widths, but a trie of depth {trie.depth} drafts "
                             f"levels at depths 1 .. {levels} only: give at most {levels}")
        values = list(draft_beams)
    else:
        values = [draft_beams]
    for d, v in enumerate(values, 1):
        if not is_int(v) or v < 1:
            raise ValueError(f"draft_beams must be an int >= 1 or a sequence of them, got {draft_beams!r}")
        if v < K:
            where = "" if is_int(draft_beams) else f" at depth {d}"
            raise ValueError(f"draft_beams (N = {v}{where}) must be >= num_beams (K = {K})")
    values = [int(v) for v in values]
    widths = values + [values[-1]] * (levels - len(values))
    # A level holds at most the trie's nodes of its depth: no padding beyond them. Sampling caps each width at
    # the widest drafted depth's node count instead (a level then still draws every candidate it has), so that
    # one N stays one N and its seeded stream is unchanged.
    sizes = trie.level_offsets.tolist()
    nodes = [sizes[d + 1] - sizes[d] for d in range(1, levels + 1)]
    if verification == "strict":
        widths = [min(w, max(K, n)) for w, n in zip(widths, nodes)]
    else:
        widths = [min(w, max(K, *nodes)) for w in widths]
    return widths, values[0] if is_int(draft_beams) else tuple(values)


def _truncate(level: tuple, row_widths: torch.Tensor | None) -> tuple:
    """A beam step's ``(scores, parent, token, node)`` with row b cut to its first ``row_widths[b]`` entries
    (the rest become missing candidates: score -inf, -1 elsewhere); None keeps every entry. The entries are
    best first (beam step) or in draw order (beam sampling), so this is the narrower step."""
    if row_widths is None:
        return level
    scores, parent, token, node = level
    cut = torch.arange(parent.shape[1], device=parent.device) >= row_widths.unsqueeze(1)
    return (scores.masked_fill(cut, float("-inf")), parent.masked_fill(cut, -1), token.masked_fill(cut, -1),
            node.masked_fill(cut, -1))


def _all_children(nodes: torch.Tensor, counts: torch.Tensor, trie: ItemTrie, width: int):
    """Every trie child of each row's nodes (``nodes``, ``counts`` [B, W]: how many children of each to list,
    0 for dead ones) as a level of ``width`` (>= each row's total): ``(parent, token, node)`` [B, width], parent
    by parent in token order, then -1. Verification selects the same nodes in any order, but the order sets
    the nodes' target slots, and so the target's logits to the last bit: for beams sorted best first (as they
    always are here) this is the order a beam step over uniform logits gives."""
    ends = counts.cumsum(1)                                                    # [B, W]
    slot = torch.arange(width, device=nodes.device).expand(nodes.shape[0], width).contiguous()
    parent = torch.searchsorted(ends, slot, right=True)                        # the node whose range holds slot
    valid = slot < ends[:, -1:]
    parent = parent.clamp(max=nodes.shape[1] - 1)
    rank = slot - (ends - counts).gather(1, parent)                            # the child's index among siblings
    edge = trie.child_offsets[nodes.gather(1, parent).clamp(min=0)] + rank
    edge = torch.where(valid, edge, 0)
    token = torch.where(valid, trie.child_tokens[edge], -1)
    return torch.where(valid, parent, -1), token, torch.where(valid, edge + 1, -1)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, i]]`` for ``x`` [B, W] or [B, W, V]; negative indices read entry 0."""
    index = index.clamp(min=0)
    if x.dim() == 2:
        return x.gather(1, index)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _remap(new_slot: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Slot references after a compaction (ROOT / NOT_TREE / NOT_FED codes unchanged)."""
    return torch.where(slots >= 0, new_slot.gather(1, slots.clamp(min=0)), slots)


@dataclass
class _Round:
    """One round's plan per state row: the depth reached ``t`` and the levels to draft ``g``, on the host and
    on the device; the drafted level's width at each trie depth on the device (None: one width for all); and
    per drafted level j = 1 .. max(g), its width (its widest row's) and whether its rows' widths differ."""

    t: list[int]
    g: list[int]
    t_dev: torch.Tensor
    g_dev: torch.Tensor
    widths_dev: torch.Tensor | None
    level_width: list[int]
    mixed_widths: list[bool]
    # Sampling only, filled by the drafting: the draft's logits [B, G, W, V] and cumulative scores [B, G, W] at
    # the parents each drafted level was sampled from (padded to the round's width W), for the verification's q.
    # Written level by level into one buffer, so each level's logits are freed as soon as the next is drafted.
    draft_logits: torch.Tensor | None = None
    draft_scores: torch.Tensor | None = None


@dataclass
class _BeamState:
    """The K beams of each active request, ``[B, K]`` each, and where their tokens are in the two caches."""

    scores: torch.Tensor
    nodes: torch.Tensor
    live: torch.Tensor
    tgt_pending: torch.Tensor   # each beam's last token, not yet in the target cache
    tgt_anchor: torch.Tensor    # target slot of that token's parent (ROOT: the prompt)
    dft_pending: torch.Tensor   # [B, K, 2] up to two tokens not yet in the draft cache (-1: none)
    dft_anchor: torch.Tensor    # draft slot of the first pending token's parent
    beam_tslot: torch.Tensor | None = None  # target slot of each beam's token during a round

    @staticmethod
    def start(B: int, K: int, device) -> "_BeamState":
        full = lambda *shape, v: torch.full(shape, v, dtype=torch.long, device=device)  # noqa: E731
        live = torch.zeros(B, K, dtype=torch.bool, device=device)
        live[:, 0] = True  # one beam: the root
        scores = torch.zeros(B, K, dtype=torch.float32, device=device)  # float32 whatever torch's default dtype
        return _BeamState(scores=scores, nodes=full(B, K, v=0), live=live,
                          tgt_pending=full(B, K, v=-1), tgt_anchor=full(B, K, v=ROOT),
                          dft_pending=full(B, K, 2, v=-1), dft_anchor=full(B, K, v=ROOT))

    def advance(self, new: dict[str, torch.Tensor]) -> None:
        """The verified beams become the current ones; a parent the draft never processed (the last drafted
        level) is fed to the draft together with the new token next round."""
        self.scores, self.nodes = new["scores"], new["nodes"]
        self.live = new["scores"] > float("-inf")
        self.tgt_pending, self.tgt_anchor = new["tokens"], new["tslot"]
        fed = new["dslot"] != NOT_FED
        self.dft_anchor = torch.where(fed, new["dslot"], new["dparent"])
        self.dft_pending = torch.stack([torch.where(fed, new["tokens"], new["ptoken"]),
                                        torch.where(fed, -1, new["tokens"])], 2)

    def live_slots(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.where(self.live, slots, NOT_TREE)

    def select(self, rows: torch.Tensor) -> None:
        for name in ("scores", "nodes", "live", "tgt_pending", "tgt_anchor", "dft_pending", "dft_anchor"):
            setattr(self, name, getattr(self, name)[rows])


class SpecBeamDecoder:
    """Speculative constrained beam search (same output as :class:`BeamSearchDecoder`) or beam sampling
    (relaxed: lossy, the paper's; exact: the distribution of ``BeamSearchDecoder(do_sample=True)``), with
    fewer target calls.

    "Same output" is exact arithmetic's: the target scores a tree of tokens per call where beam search scores
    K, so its logits round differently. With a float32 (or float64) target the lists are identical and the
    scores agree within 1e-5; with a bfloat16 or float16 target near-ties can rank differently (on Beauty,
    bfloat16, K = 10: about a quarter of the lists, as for beam search itself between batch sizes). The draft's
    precision does not matter. NaN or +inf logits (target or draft) for a beam or a live tree node raise a
    FloatingPointError at the end of ``generate``, naming the model (every live node the target scores is
    checked, so a model broken at a prefix the draft proposed is refused even where beam search never gets there).

    Args:
        target, draft: Hugging Face causal LMs on the same device sharing the trie's tokens (their embedding
            tables may be padded to different sizes under strict verification; sampling needs equal sizes).
        trie: the item trie.
        num_beams: K >= 1.
        draft_beams: N >= K, the width of each drafted level. A wider tree accepts more levels but feeds more
            tokens to the target: on a GPU, where small models are bound by launches, tokens are nearly free
            (K = 10 on Beauty, H200: N = 64 best, 1.28x); on a CPU they are compute (N = 30-40 best there).
            It also takes one width per trie depth, a sequence ``(N_1, N_2, ...)`` (a list, tuple, range, 1-D
            array or tensor): the drafted level at depth d has ``N_d`` nodes (the last width repeats deeper
            down), for tries whose levels the draft finds unequally hard (on Beauty the first code needs N = 30,
            the third 20). Under strict verification a level holds at most the trie's node count at its depth
            (or K): wider settings only padded the target's call; sampling caps each width at the largest node
            count of the drafted depths (the law is unchanged: a level still draws every candidate it has, but
            the seeded stream differs from an uncapped N). ``self.draft_beams`` is the setting as
            given (an int, or a tuple).
        gamma: drafted levels per round (>= 1).
        verification: ``"strict"`` (lossless top-K verification of beam search), ``"relaxed"`` (the paper's
            sampling verification: independent acceptance with min(1, p/q), K kept uniformly among the
            accepted, residual resampling otherwise; **lossy**) or ``"exact"`` (recursive rejection sampling:
            every level's K-set is an exact sample of target-only beam sampling, whatever the draft).
        draft_policy: how the N slots of a drafted level are filled. ``"beam"`` (the paper): the draft's own
            width-N beam search (sampling modes: width-N beam sampling over the children of all N nodes of
            the previous level). ``"anchored"``: strict mode keeps the draft's top-K among the children of the
            previous level's K anchored nodes, then fills up to N with the best others; sampling modes draw
            all N (without replacement) from the children of the K anchored nodes, the first K drawn being the
            level's anchored nodes. Default: ``"beam"`` for strict and relaxed, ``"anchored"`` for exact.
        temperature: T > 0, sampling modes only: both models sample ``softmax(cumulative score / T)``.
        seed: seed of the sampling generator (sampling modes only; None: nondeterministic). All random numbers
            (the draft's draws, acceptance and fallback uniforms) come from it, on the host.
        skip_exhaustive_draft: strict verification only: when a round ends every request of the batch and
            each of its levels holds all the trie children of the level above (at most N), build that tree
            from the trie without calling the draft (the draft's choice cannot matter there; every level is
            accepted). Same output either way; False always drafts (tests use it to exercise the draft).
    """

    def __init__(self, target: torch.nn.Module, draft: torch.nn.Module, trie: ItemTrie, num_beams: int,
                 draft_beams: int | Sequence[int], gamma: int = 3, verification: str = "strict",
                 draft_policy: str | None = None, temperature: float = 1.0, seed: int | None = None,
                 skip_exhaustive_draft: bool = True):
        num_beams, gamma = positive_int("num_beams", num_beams), positive_int("gamma", gamma)
        if verification not in VERIFICATIONS:
            raise ValueError(f"verification must be one of {VERIFICATIONS}, got {verification!r}")
        self.temperature = check_temperature(temperature)
        if verification == "strict" and (temperature != 1.0 or seed is not None):
            raise ValueError("temperature and seed only apply to sampling verification ('relaxed' or 'exact'); "
                             "strict verification is deterministic beam search")
        if not isinstance(skip_exhaustive_draft, bool):
            raise ValueError(f"skip_exhaustive_draft must be a bool, got {skip_exhaustive_draft!r}")
        if draft_policy is None:
            draft_policy = DEFAULT_POLICY[verification]
        if draft_policy not in POLICIES:
            raise ValueError(f"draft_policy must be one of {POLICIES}, got {draft_policy!r}")
        check_model_and_trie(target, trie, "target")
        check_model_and_trie(draft, trie, "draft")
        widths, draft_beams = _depth_widths(draft_beams, num_beams, trie, verification)
        t_out, d_out = model_vocab_sizes(target)[1], model_vocab_sizes(draft)[1]
        # Both models read and score every trie token (checked above); their embedding tables may be padded to
        # different sizes (as a small and a large Qwen2.5 are), except where sampling verification compares the
        # two distributions token by token.
        if verification != "strict" and t_out != d_out:
            raise ValueError(f"vocabulary mismatch: {verification} verification compares the target's and the "
                             f"draft's distributions over one vocabulary, but target scores {t_out} tokens and "
                             f"draft {d_out}")
        if model_device(target) != model_device(draft):
            raise ValueError(f"target is on {model_device(target)} but draft is on {model_device(draft)}")
        self.target, self.draft, self.trie = target, draft, trie
        self.num_beams, self.gamma = num_beams, gamma
        self.draft_beams = draft_beams  # an int, or a tuple of widths by depth
        self._widths = widths  # the drafted level's width at each trie depth 1 .. depth - 1
        self.verification, self.draft_policy = verification, draft_policy
        self._sampling = verification != "strict"
        self.skip_exhaustive_draft = skip_exhaustive_draft and not self._sampling
        self._uniforms = SeededUniforms(seed) if self._sampling else None
        self._pad_token_id = model_pad_token_id(target)

    # ------------------------------------------------------------------ drafting
    def _plan_round(self, t: list[int], g: list[int], widths_dev: torch.Tensor | None, device) -> _Round:
        """The round's plan (rows at depths t drafting g levels; rows with g < j draft nothing at level j)."""
        g_dev, t_dev = torch.tensor([g, t], device=device)   # one copy per round
        last, level_width, mixed = len(self._widths), [], []
        for j in range(1, max(g) + 1):
            per_row = [self._widths[min(t_r + j, last) - 1] for t_r, g_r in zip(t, g) if g_r >= j]
            level_width.append(max(per_row))
            mixed.append(min(per_row) != max(per_row))
        return _Round(t=t, g=g, t_dev=t_dev, g_dev=g_dev, widths_dev=widths_dev, level_width=level_width,
                      mixed_widths=mixed)

    def _level_widths(self, rnd: _Round, j: int) -> tuple[int, torch.Tensor | None]:
        """The width of level j of a round and, when its rows' widths differ, each row's on the device (0 for
        rows that draft nothing there): built there from the round's one copy, no host-to-device copy (a sync
        on a GPU) per level."""
        if not rnd.mixed_widths[j - 1]:
            return rnd.level_width[j - 1], None
        depth_width = rnd.widths_dev[(rnd.t_dev + j).clamp(max=len(self._widths)) - 1]
        return rnd.level_width[j - 1], torch.where(rnd.g_dev >= j, depth_width, 0)

    def _draft_level(self, logits, scores, nodes, live, trie, anchored_width, N):
        """One drafted level of width N from the previous level's nodes (``anchored_width`` = how many lead
        the level)."""
        K = self.num_beams
        co, ct = trie.child_offsets, trie.child_tokens
        best = _ops.trie_beam_step(logits, scores, nodes, live, co, ct, N)
        if self.draft_policy == "beam" or anchored_width >= logits.shape[1] or N == K:
            return best
        # Anchored: the top-K children of the first K (anchored) nodes, then the best others up to N.
        W = anchored_width
        anchor = _ops.trie_beam_step(logits[:, :W].contiguous(), scores[:, :W].contiguous(),
                                     nodes[:, :W].contiguous(), live[:, :W].contiguous(), co, ct, K)
        same = ((best[1].unsqueeze(2) == anchor[1].unsqueeze(1)) & (best[2].unsqueeze(2) == anchor[2].unsqueeze(1))
                & (anchor[1] >= 0).unsqueeze(1)).any(2)                              # [B, N]: already anchored
        order = torch.sort(same.to(torch.int8), dim=1, stable=True).indices[:, :N - K]
        rest = [x.gather(1, order) for x in best]
        rest_scores = torch.where(rest[1] >= 0, rest[0], float("-inf"))
        return (torch.cat([anchor[0], rest_scores], 1), torch.cat([anchor[1], rest[1]], 1),
                torch.cat([anchor[2], rest[2]], 1), torch.cat([anchor[3], rest[3]], 1))

    def _sample_level(self, logits, scores, nodes, live, trie, width, N):
        """One drafted level sampled from the children of the first ``width`` nodes of the previous level:
        N draws without replacement (Gumbel-top-N), in draw order (so a row's first n draws are n such draws)."""
        u = self._uniforms((logits.shape[0], width, trie.max_children), logits.device)
        return _ops.trie_beam_sample(logits[:, :width].contiguous(), scores[:, :width].contiguous(),
                                     nodes[:, :width].contiguous(), live[:, :width].contiguous(), trie.child_offsets,
                                     trie.child_tokens, u, self.temperature, N)

    # ------------------------------------------------------------------ decode
    @plain_output_of_inference
    def generate(self, input_ids, attention_mask: torch.Tensor | None = None) -> SpecBeamOutput:
        """Decode the top-K (or K sampled) identifiers of each prompt (inputs as
        :meth:`BeamSearchDecoder.generate`)."""
        device = model_device(self.target)
        warn_if_dropout_active(self.target, "target")
        warn_if_dropout_active(self.draft, "draft")
        # prompts go to both models, as their vocabularies are now (embeddings may have been resized since)
        vocab_in = min(model_vocab_sizes(self.target)[0], model_vocab_sizes(self.draft)[0])
        ids, mask = normalise_prompts(input_ids, attention_mask, device, vocab_in, self._pad_token_id)
        trie = self.trie.to(device)
        B, K, depth = ids.shape[0], self.num_beams, trie.depth
        slots = spec_cache_slots(ids.shape[1], K, self._widths, self.gamma, depth, B)
        check_cache_window(self.target, "target", slots)
        check_cache_window(self.draft, "draft", slots)
        check_positions(self.target, "target", mask.sum(1), depth)
        check_positions(self.draft, "draft", mask.sum(1), depth)

        # Results, indexed by original request.
        out_scores = torch.full((B, K), float("-inf"), dtype=torch.float32, device=device)
        out_nodes = torch.full((B, K), -1, dtype=torch.long, device=device)
        stats = SpecStats(target_calls=[0] * B, draft_calls=[0] * B, accepted_levels=[[] for _ in range(B)])

        state = _BeamState.start(B, K, device)
        active = list(range(B))   # request of each state row
        t = [0] * B               # depth reached, per state row
        tgt, dft = TreeKV(self.target), TreeKV(self.draft)
        first_round = True
        draft_stale = False  # the draft cache still holds the last round's dropped tree slots
        watch = LogitWatch()
        # (read only where a level's rows have different widths, so never with one width for all depths)
        widths_dev = torch.tensor(self._widths, device=device) if len(set(self._widths)) > 1 else None
        while active:
            rows = len(active)
            g = [min(self.gamma, depth - t[r] - 1) for r in range(rows)]
            rnd = self._plan_round(t, g, widths_dev, device)
            levels = None
            if self.skip_exhaustive_draft and all(t[r] + g[r] + 1 == depth for r in range(rows)):
                levels = self._exhaustive_levels(state, rnd, trie)
            skipped = levels is not None
            if not skipped:
                with nvtx_range("atspeed/draft", device):
                    if draft_stale:  # compacted only now: a round without the draft never needs it
                        state.dft_anchor = _remap(dft.compact(state.live_slots(state.dft_anchor)), state.dft_anchor)
                        draft_stale = False
                    levels = self._draft(state, dft, rnd, first_round, ids, mask, trie, watch)
            with nvtx_range("atspeed/target", device):
                logits, beam_rows = self._score_tree(state, tgt, levels, first_round, ids, mask)
                watch.check("the target model", logits, torch.cat([state.live] + [lvl.live for lvl in levels], 1),
                            rows=torch.cat([beam_rows] + [lvl.target_row for lvl in levels], 1))
            with nvtx_range("atspeed/verify", device):
                accepted, new = self._verify(state, levels, logits, beam_rows, rnd, trie)
                n_accepted = accepted.tolist()                    # the one host sync of the round
            del logits, rnd  # the round's logits, freed before the next round's model calls
            state.advance(new)
            finished = []
            for r in range(rows):
                stats.target_calls[active[r]] += 1
                stats.draft_calls[active[r]] += 0 if skipped else g[r]
                stats.accepted_levels[active[r]].append(n_accepted[r])
                t[r] += n_accepted[r] + 1
                if t[r] >= depth:
                    finished.append(r)
                    out_scores[active[r]] = state.scores[r]
                    out_nodes[active[r]] = state.nodes[r]
            first_round = False
            if len(finished) == rows:
                break
            if skipped:  # an exhaustive level is always accepted, so that round ended every request
                raise RuntimeError("internal error: a round drafted from the trie alone left a request unfinished")
            if finished:  # finished requests leave the batch (first: their slots must not set the cache width)
                keep = [r for r in range(rows) if t[r] < depth]
                sel = torch.tensor(keep, device=device)
                active, t = [active[r] for r in keep], [t[r] for r in keep]
                state.select(sel)
                tgt.select(sel)
                if dft.cache is not None:
                    dft.select(sel)
            with nvtx_range("atspeed/compact", device):
                # Keep the prompt and the ancestors of the surviving beams (the draft's: before its next call).
                state.tgt_anchor = _remap(tgt.compact(state.live_slots(state.tgt_anchor)), state.tgt_anchor)
                draft_stale = dft.cache is not None

        watch.raise_if_seen()
        if self._sampling:  # best score first, like BeamSearchDecoder(do_sample=True)
            out_scores, out_nodes = best_first(out_scores, out_nodes)
        sequences = trie.sequences_of_nodes(out_nodes)
        item_ids = [[trie.items_of_leaf(n) if n >= 0 else [] for n in row] for row in out_nodes.tolist()]
        return SpecBeamOutput(sequences=sequences, scores=out_scores, valid=out_nodes >= 0, item_ids=item_ids,
                              stats=stats)

    def _draft(self, state: "_BeamState", dft: TreeKV, rnd: _Round, first_round: bool, ids: torch.Tensor,
               mask: torch.Tensor, trie: ItemTrie,
               watch: LogitWatch) -> list[_Level]:
        """Draft G = max(g) levels from the current beams (rows at depths t): one batched draft call per level
        (level G is not fed). ``watch`` records NaN / +inf draft logits in the rows each level reads."""
        g_dev = rnd.g_dev
        G = max(rnd.g)
        if G < 1:
            return []
        rows, K = state.scores.shape
        device = state.scores.device
        if first_round:
            prev_logits = dft.prefill(ids, mask)[:, -1:].expand(rows, K, -1)
        else:
            prev_logits, state.dft_anchor = self._feed_pending(dft, state.dft_pending, state.dft_anchor,
                                                               state.live & (g_dev >= 1).unsqueeze(1))
        prev_scores, prev_nodes, prev_live, prev_dslot, width = state.scores, state.nodes, state.live, state.dft_anchor, K
        levels = []
        for j in range(1, G + 1):
            N, row_widths = self._level_widths(rnd, j)
            live_j = prev_live & (g_dev >= j).unsqueeze(1)
            if self._sampling:
                # beam: all nodes of the previous level (level 1: the K beams); anchored: its first K
                # rows with a narrower width (row_widths) keep their first draws only
                width = prev_logits.shape[1] if self.draft_policy == "beam" else K
                watch.check("the draft model", prev_logits[:, :width], live_j[:, :width])
                if rnd.draft_logits is None:
                    W = max([K] + rnd.level_width) if self.draft_policy == "beam" else K   # as _verify pads
                    rnd.draft_logits = prev_logits.new_zeros(rows, G, W, prev_logits.shape[-1])
                    rnd.draft_scores = prev_scores.new_full((rows, G, W), float("-inf"))
                rnd.draft_logits[:, j - 1, :width] = prev_logits[:, :width]
                rnd.draft_scores[:, j - 1, :width] = prev_scores[:, :width]
                lvl_scores, parent, token, node = _truncate(self._sample_level(
                    prev_logits, prev_scores, prev_nodes, live_j, trie, width, N), row_widths)
                level = _Level(parent=parent, token=token, node=node, live=parent >= 0)
            else:
                watch.check("the draft model", prev_logits, live_j)
                # rows with a narrower width (row_widths) keep their first, best nodes only
                lvl_scores, parent, token, node = _truncate(self._draft_level(
                    prev_logits, prev_scores, prev_nodes, live_j, trie, width, N), row_widths)
                level = _Level(parent=parent, token=token, node=node, live=parent >= 0)
            prev_logits = None  # this level's parents' logits: freed before the next draft call
            if j < G:  # feed this level to the draft for the next one
                first = dft.num_slots
                prev_logits = dft.feed(torch.where(level.live, token, 0),
                                       torch.where(level.live, _gather(prev_dslot, parent), NOT_TREE))
                level.draft_slot = torch.where(level.live, first + torch.arange(N, device=device), NOT_TREE)
                prev_dslot = level.draft_slot
            else:
                level.draft_slot = torch.full_like(parent, NOT_FED)
            levels.append(level)
            prev_scores, prev_nodes, prev_live, width = lvl_scores, node, level.live, K
        return levels

    def _exhaustive_levels(self, state: "_BeamState", rnd: _Round, trie: ItemTrie) -> list[_Level] | None:
        """The round's levels when each can hold every trie child of the level above (at most the level's
        width per request): all of them, listed from the trie (no logits, no vocabulary-sized work). None as
        soon as one level holds more."""
        co = trie.child_offsets
        nodes, live = state.nodes, state.live
        levels = []
        for j in range(1, max(rnd.g) + 1):
            N, row_widths = self._level_widths(rnd, j)
            live_j = live & (rnd.g_dev >= j).unsqueeze(1)
            counts = torch.where(live_j, co[nodes + 1] - co[nodes], 0)
            limit = N if row_widths is None else row_widths
            if bool((counts.sum(1) > limit).any()):
                return None
            parent, token, nodes = _all_children(nodes, counts, trie, N)
            live = parent >= 0
            levels.append(_Level(parent=parent, token=token, node=nodes, live=live,
                                 draft_slot=torch.full_like(parent, NOT_FED)))
        return levels

    def _score_tree(self, state: "_BeamState", tgt: TreeKV, levels: list[_Level], first_round: bool,
                    ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One target call over the pending beam tokens and every drafted node (fused with the prefill in the
        first round). Sets each level's ``target_slot`` / ``target_row``; returns the logits and the logits
        row of each current beam."""
        rows, K = state.scores.shape
        device = state.scores.device
        tokens, parents = [], []
        if first_round:  # the beam is the root: its logits are the last prompt position's (row 0)
            base, row_shift = ids.shape[1], 1
            beam_slot = torch.full((rows, K), ROOT, dtype=torch.long, device=device)
        else:
            base, row_shift = tgt.num_slots, 0
            tokens.append(torch.where(state.live, state.tgt_pending, 0))
            parents.append(torch.where(state.live, state.tgt_anchor, NOT_TREE))
            beam_slot = torch.where(state.live, base + torch.arange(K, device=device), NOT_TREE)
        state.beam_tslot = beam_slot
        offset, prev_slot = base + len(tokens) * K, beam_slot
        for level in levels:
            N = level.parent.shape[1]
            level.target_slot = torch.where(level.live, offset + torch.arange(N, device=device), NOT_TREE)
            level.target_row = (level.target_slot - (base - row_shift)).clamp(min=0)
            tokens.append(torch.where(level.live, level.token, 0))
            parents.append(torch.where(level.live, _gather(prev_slot, level.parent), NOT_TREE))
            prev_slot, offset = level.target_slot, offset + N
        beam_rows = (beam_slot - (base - row_shift)).clamp(min=0)
        if first_round:
            empty = ids.new_zeros(rows, 0)
            logits = tgt.prefill(ids, mask, torch.cat(tokens, 1) if tokens else empty,
                                 torch.cat(parents, 1) if parents else empty)
        else:
            logits = tgt.feed(torch.cat(tokens, 1), torch.cat(parents, 1))
        return logits, beam_rows

    def _verify(self, state: "_BeamState", levels: list[_Level], logits: torch.Tensor, beam_rows: torch.Tensor,
                rnd: _Round, trie: ItemTrie) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Strict verification of every level of every request on the device (the ``strict_verify`` op).
        Returns the accepted level count per request and the new beams with, for each, where its parent
        sits in the two caches."""
        rows, K = state.scores.shape
        # Levels of different widths are padded to the widest, with nodes that are not live.
        N = max([K] + [level.parent.shape[1] for level in levels]) if levels else max(self._widths)
        for level in levels:
            pad = N - level.parent.shape[1]
            if pad:
                for name in ("parent", "token", "node", "target_row", "target_slot", "draft_slot"):
                    value = {"target_row": 0, "target_slot": NOT_TREE, "draft_slot": NOT_FED}.get(name, -1)
                    setattr(level, name, torch.nn.functional.pad(getattr(level, name), (0, pad), value=value))
                level.live = level.parent >= 0
        if levels:
            # (a level's parent is -1 exactly where its node is not live)
            lvl = {name: torch.stack([getattr(level, name) for level in levels], 1)
                   for name in ("parent", "token", "target_row")}
        else:
            empty = torch.full((rows, 0, N), -1, dtype=torch.long, device=logits.device)
            lvl = {"parent": empty, "token": empty, "target_row": empty}
        if self._sampling:
            accepted, scores, parents, tokens, nodes = self._sample_verify(state, levels, logits, beam_rows, lvl,
                                                                           rnd, trie)
        else:
            accepted, scores, parents, tokens, nodes = _ops.strict_verify(
                logits, beam_rows, state.scores, state.nodes, state.live, lvl["parent"], lvl["token"],
                lvl["target_row"], rnd.g_dev, trie.child_offsets, trie.child_tokens)

        # Where each node of levels 0..G sits, one [rows, G + 1, N, 4] table read at (accepted, parent): its
        # target slot, its draft slot, its parent's draft slot and its token (level 0: the current beams, padded
        # from K to N with entries no parent index reaches).
        dslot0 = state.dft_anchor if levels else torch.full_like(state.nodes, NOT_FED)
        not_fed, no_token = torch.full_like(dslot0, NOT_FED), torch.full_like(dslot0, -1)
        cols = [torch.nn.functional.pad(torch.stack([state.beam_tslot, dslot0, not_fed, no_token], 2),
                                        (0, 0, 0, N - K), value=NOT_FED)]
        dslots = [dslot0] + [level.draft_slot for level in levels]
        cols += [torch.stack([level.target_slot, level.draft_slot, _gather(dslots[i], level.parent), level.token], 2)
                 for i, level in enumerate(levels)]
        at_accepted = torch.stack(cols, 1)[torch.arange(rows, device=logits.device), accepted]   # [rows, N, 4]
        tslot, dslot, dparent, ptoken = at_accepted.gather(
            1, parents.clamp(min=0).unsqueeze(2).expand(-1, -1, 4)).unbind(2)
        new = {"scores": scores, "nodes": nodes, "tokens": tokens, "tslot": tslot, "dslot": dslot,
               "dparent": dparent, "ptoken": ptoken}
        return accepted, new

    def _sample_verify(self, state: "_BeamState", levels: list[_Level], logits: torch.Tensor,
                       beam_rows: torch.Tensor, lvl: dict[str, torch.Tensor], rnd: _Round, trie: ItemTrie):
        """Relaxed or exact sampling verification of every level of every request (one op call)."""
        rows, K = state.scores.shape
        N, V = lvl["parent"].shape[2], logits.shape[-1]   # the round's widest level
        W = N if self.draft_policy == "beam" else K       # each level's draft parents, padded to W
        if levels:
            d_logits, d_scores = rnd.draft_logits, rnd.draft_scores
            if d_logits.shape[2] != W:
                raise RuntimeError(f"internal error: the draft's parent logits were padded to {d_logits.shape[2]} "
                                   f"rows per level, the verification pads to {W}")
        else:
            d_logits = logits.new_zeros(rows, 0, W, V)
            d_scores = state.scores.new_zeros(rows, 0, W)
        if d_logits.dtype != logits.dtype:  # lossless for the ops, which round every logit to float32 first
            logits, d_logits = logits.float(), d_logits.float()
        u = self._uniforms((rows, len(levels) + 1, 2 * N + K), logits.device)
        op = _ops.exact_verify if self.verification == "exact" else _ops.relaxed_verify
        return op(logits, beam_rows, state.scores, state.nodes, state.live, lvl["parent"], lvl["token"],
                  lvl["target_row"], rnd.g_dev, d_logits, d_scores, u, trie.child_offsets, trie.child_tokens,
                  self.temperature)

    def _feed_pending(self, kv: TreeKV, pending: torch.Tensor, anchor: torch.Tensor, live: torch.Tensor):
        """Feed each beam's pending draft tokens (a chain of 1 or 2); return the logits after each chain and
        the draft slot of each beam's last token."""
        B, K, _ = pending.shape
        first = kv.num_slots
        device = pending.device
        has = (pending >= 0) & live.unsqueeze(2)                  # [B, K, 2]
        slot = first + torch.arange(2 * K, device=device).view(1, K, 2).expand(B, K, 2)
        parent0 = torch.where(has[..., 0], anchor, NOT_TREE)
        parent1 = torch.where(has[..., 1], slot[..., 0], NOT_TREE)
        parents = torch.stack([parent0, parent1], 2).reshape(B, 2 * K)
        logits = kv.feed(torch.where(has, pending, 0).reshape(B, 2 * K), parents).view(B, K, 2, -1)
        last = torch.where(has[..., 1], 1, 0)
        new_anchor = torch.where(has[..., 1], slot[..., 1], torch.where(has[..., 0], slot[..., 0], anchor))
        return logits.gather(2, last.view(B, K, 1, 1).expand(-1, -1, 1, logits.shape[-1])).squeeze(2), new_anchor

"""Reference sampling verification (spec of ``torch.ops.atspeed_ext.relaxed_verify`` / ``exact_verify``).

Both rules walk the drafted levels of one request like :func:`~atspeed_ext.reference.strict_verify`, but
*sample* each level's K beams instead of taking the target's top-K. Level ``j`` (1-based) runs for
``j = 1 .. g + 1``; at level ``g + 1`` (nothing drafted) the target is sampled directly (the bonus).

Distributions (float64, from the float32 candidate scores of ``trie_beam_step``, temperature ``T``):

* ``p`` (target): over the children of the current beams, ``p(y) ∝ exp(score_target(y) / T)``;
* ``q`` (draft): over the children of the draft's W parents of level j (level 1: the K beams; level j > 1:
  drafted nodes ``0..W-1`` of level j - 1), ``q(y) ∝ exp(score_draft(y) / T)`` with the draft's scores.
  The drafted nodes of level j are the draft's draws from ``q``, in draw order.

Uniforms ``[G + 1, 2N + K]`` per request and level: ``u_acc[N]``, ``u_sel[N]`` (relaxed only), ``u_fb[K]``.
Sums run sequentially in candidate order (beam-major, token order), like the CPU kernel, and
``inverse_cdf`` is the rule documented in ``csrc/sampling.h``. Numerics: a draw from "p without the drawn
candidates" is the softmax of the tempered scores over the remaining candidates, max-shifted afresh, and the
exact rule's proposal law ``s`` is ``exp(dx - lse_q)`` with ``lse_q`` the log-sum-exp of the draft's tempered
scores ``dx`` over the unconsumed draft candidates, so nothing that can still be drawn underflows at low
temperatures. The exactness proof is in ``atspeed_ext/docs/sampling_verification.md``.
"""

from __future__ import annotations

import math

import torch

from .beam_step import row_logsumexp

NEG_INF = float("-inf")


def relaxed_verify(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token, level_row,
                   num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens, temperature):
    """The paper's relaxed rule (lossy), per level j <= g:

    each drafted node ``y`` is accepted independently iff ``u_acc * q(y) < p(y)`` (probability
    ``min(1, p/q)``; ``p(y) = 0`` when y's parent is not a current beam). With ``K' = min(K, #candidates)``:
    if at least K' are accepted, the K' with the smallest ``u_sel`` (a uniformly random K'-subset) become
    the beams and the walk goes on; otherwise the accepted ones are completed to K' without replacement from
    ``normalise(max(0, p - q))`` over the candidates not yet chosen (from ``p`` when that residual is all
    zero), one ``u_fb`` per draw by inverse CDF, and the walk stops. Level g + 1 samples K' from ``p``.
    """
    return _verify(False, logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                   level_row, num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens,
                   temperature)


def exact_verify(logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token, level_row,
                 num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens, temperature):
    """Recursive rejection sampling (exact), per level:

    K draws, each from ``r = p`` without the already drawn candidates (renormalised). A draw consumes the
    drafted nodes (proposals) in their order: proposal ``x`` follows ``s = q`` without the proposals consumed
    so far (renormalised by the unconsumed mass); it is accepted iff ``u_acc[x] * s(x) < r(x)``; on
    rejection ``r <- normalise(max(0, r - s))`` (left unchanged if that is all zero, a rounding guard). When
    no proposal is left the draw takes ``inverse_cdf(r, u_fb[d])``. The walk goes on to level j + 1 iff
    ``j <= g`` and every drawn node is a drafted node (its target logits exist); otherwise level j is the
    result. Each level's K-set is then an exact without-replacement sample from ``p``.
    """
    return _verify(True, logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token,
                   level_row, num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens,
                   temperature)


# ----------------------------------------------------------------------------------------------- helpers
def seq_sum(x: torch.Tensor) -> float:
    """Sequential float64 sum (the CPU kernel's order)."""
    return float(torch.cumsum(x, 0)[-1]) if x.numel() else 0.0


def inverse_cdf(w: torch.Tensor, u: float) -> int:
    """First index whose running sum exceeds ``u * sum(w)`` among positive weights; else the last positive
    one; -1 if all weights are 0."""
    if w.numel() == 0:
        return -1
    cum = torch.cumsum(w, 0)
    t = u * float(cum[-1])
    hit = ((w > 0) & (cum > t)).nonzero()
    if len(hit):
        return int(hit[0])
    pos = (w > 0).nonzero()
    return int(pos[-1]) if len(pos) else -1


def child_node(co: list[int], ct: list[int], node: int, token: int) -> int:
    for e in range(co[node], co[node + 1]):
        if ct[e] == token:
            return e + 1
    return -1


def children(logits_rows, rows, scores, nodes, live, co, ct):
    """The candidates (beam-major, token order) of parents given by logits rows: owner, edge and float32 score
    ``beam_score + (logit - logsumexp)``."""
    owner, edge = [], []
    for k, node in enumerate(nodes):
        if live[k]:
            owner += [k] * (co[node + 1] - co[node])
            edge += list(range(co[node], co[node + 1]))
    owner_t = torch.tensor(owner, dtype=torch.long)
    edge_t = torch.tensor(edge, dtype=torch.long)
    if not owner:
        return owner, edge, torch.zeros(0)
    row_t = torch.tensor([rows[k] for k in owner], dtype=torch.long)
    lse = row_logsumexp(logits_rows[row_t])
    logit = logits_rows[row_t, torch.tensor(ct)[edge_t]].float()
    score = scores[owner_t].float() + (logit - lse)
    return owner, edge, score


def tempered(score: torch.Tensor, temperature: float) -> torch.Tensor:
    """``score / T`` in float64 for candidates (score > -inf), -inf otherwise."""
    return torch.where(score > NEG_INF, score.double() / temperature, torch.full(score.shape, NEG_INF,
                                                                                 dtype=torch.float64))


def softmax_seq(x: torch.Tensor) -> torch.Tensor | None:
    """``exp(x - max) / sum`` (sequential sum), or None if every entry is -inf."""
    if x.numel() == 0 or not bool((x > NEG_INF).any()):
        return None
    w = torch.exp(x - x.max())
    return w / seq_sum(w)


def log_sum_exp(x: torch.Tensor) -> float:
    if x.numel() == 0 or not bool((x > NEG_INF).any()):
        return NEG_INF
    m = float(x.max())
    return m + math.log(seq_sum(torch.exp(x - m)))


# ----------------------------------------------------------------------------------------------- the walk
def _verify(exact, logits, beam_rows, beam_scores, beam_nodes, beam_live, level_parent, level_token, level_row,
            num_levels, draft_logits, draft_scores, uniforms, child_offsets, child_tokens, temperature):
    B, K = beam_scores.shape
    device = beam_scores.device
    co, ct = child_offsets.tolist(), child_tokens.tolist()
    accepted = torch.zeros(B, dtype=torch.long)
    out_scores = torch.full((B, K), NEG_INF)
    out_parents = torch.full((B, K), -1, dtype=torch.long)
    out_tokens, out_nodes = out_parents.clone(), out_parents.clone()
    for b in range(B):
        acc, result = _verify_request(
            exact, logits[b].cpu(), beam_rows[b].tolist(), beam_scores[b].cpu(), beam_nodes[b].tolist(),
            beam_live[b].tolist(), level_parent[b].tolist(), level_token[b].tolist(), level_row[b].tolist(),
            int(num_levels[b]), level_parent.shape[2], draft_logits[b].cpu(), draft_scores[b].cpu(),
            uniforms[b].cpu(), co, ct, float(temperature))
        accepted[b] = acc
        for i, (score, parent, token, node) in enumerate(result):
            out_scores[b, i], out_parents[b, i], out_tokens[b, i], out_nodes[b, i] = score, parent, token, node
    return tuple(t.to(device) for t in (accepted, out_scores, out_parents, out_tokens, out_nodes))


def _verify_request(exact, logits, rows, scores, nodes, live, lp, lt, lr, g, N, draft_logits, draft_scores,
                    uniforms, co, ct, T):
    K, W = len(rows), draft_logits.shape[1]
    index = list(range(K))       # each beam's index in the previous level (level 0: itself)
    prev_nodes: list[int] = []   # trie nodes of the drafted nodes of level j - 1
    for j in range(1, g + 2):
        drafted = j <= g
        u = uniforms[j - 1].tolist()
        u_acc, u_sel, u_fb = u[:N], u[N:2 * N], u[2 * N:]

        # (1) the target's candidates, tempered scores tsx and p = softmax(tsx)
        owner, edge, tscore = children(logits, rows, scores, nodes, live, co, ct)
        C = len(owner)
        tsx = tempered(tscore, T)
        p = softmax_seq(tsx)
        if p is None:
            return j - 1, []
        chosen = torch.zeros(C, dtype=torch.bool)

        def remaining_law():
            """softmax of tsx over the candidates not drawn yet (None if none is left)."""
            return softmax_seq(torch.where(chosen, NEG_INF, tsx))

        # (2) the draft's law over the children of its W parents (tempered scores dx, flat order), the drafted
        # nodes as proposals (tx: their target candidate; pflat: their flat draft index), dn / dflat / qc per
        # target candidate
        dn, dflat = [-1] * C, [-1] * C
        qc = torch.zeros(C, dtype=torch.float64)
        cur_nodes, tx, pflat, qx = [-1] * N, [-1] * N, [-1] * N, [0.0] * N
        dx = torch.zeros(0, dtype=torch.float64)
        if drafted:
            if j == 1:
                dnodes = [nodes[w] if w < K and live[w] else -1 for w in range(W)]
            else:
                dnodes = [prev_nodes[w] if w < N else -1 for w in range(W)]
            d_owner, d_edge, dscore = children(draft_logits[j - 1], list(range(W)), draft_scores[j - 1], dnodes,
                                               [n >= 0 for n in dnodes], co, ct)
            dx = tempered(dscore, T)
            q = softmax_seq(dx)
            flat_of = {(w, ct[e]): i for i, (w, e) in enumerate(zip(d_owner, d_edge))}
            cand_of = {(index[owner[c]], ct[edge[c]]): c for c in range(C)}  # (parent index, token) -> candidate
            for n in range(N):
                par, token = lp[j - 1][n], lt[j - 1][n]
                if par < 0:
                    continue
                pnode = (nodes[par] if par < K and live[par] else -1) if j == 1 else (prev_nodes[par] if par < N else -1)
                node = child_node(co, ct, pnode, token) if pnode >= 0 else -1
                if node < 0:
                    continue
                cur_nodes[n] = node
                pflat[n] = flat_of.get((par, token), -1)
                qx[n] = float(q[pflat[n]]) if q is not None and pflat[n] >= 0 else 0.0
                c = cand_of.get((par, token), -1)
                if c >= 0 and tscore[c] > NEG_INF:
                    tx[n], dn[c] = c, n
            dflat = [flat_of.get((index[owner[c]], ct[edge[c]]), -1) for c in range(C)]
            qc = torch.tensor([float(q[f]) if q is not None and f >= 0 else 0.0 for f in dflat], dtype=torch.float64)

        # (3) the rule
        A: list[int] = []
        if exact:
            consumed = torch.zeros(len(dx), dtype=torch.bool)
            lse_q = log_sum_exp(dx)  # over the unconsumed draft candidates

            def s_of(f: int) -> float:
                return math.exp(float(dx[f]) - lse_q) if f >= 0 and not consumed[f] and lse_q > NEG_INF else 0.0

            def consume(f: int, sx: float) -> float:
                consumed[f] = True
                if sx <= 0.5:
                    return lse_q + math.log1p(-sx)
                return log_sum_exp(torch.where(consumed, NEG_INF, dx))  # recompute rather than cancel

            nxt = 0
            for d in range(K):
                r = remaining_law()
                if r is None:
                    break
                pick = -1
                while nxt < N:
                    n = nxt
                    nxt += 1
                    if cur_nodes[n] < 0:
                        continue
                    t, f = tx[n], pflat[n]
                    sx = s_of(f)
                    rx = float(r[t]) if t >= 0 else 0.0
                    if u_acc[n] * sx < rx:
                        pick = t
                        if f >= 0:
                            lse_q = consume(f, sx)
                        break
                    if sx > 0:
                        s_all = torch.tensor([s_of(f2) for f2 in dflat], dtype=torch.float64)
                        res = (r - s_all).clamp(min=0.0)
                        Zres = seq_sum(res)
                        if Zres > 0:
                            r = res / Zres
                    if f >= 0:
                        lse_q = consume(f, sx)
                if pick < 0:
                    pick = inverse_cdf(r, u_fb[d])
                if pick < 0:
                    break
                chosen[pick] = True
                A.append(pick)
            go_on = drafted and len(A) > 0 and all(dn[c] >= 0 for c in A)
        else:
            k_eff = min(K, int((tsx > NEG_INF).sum()))
            acc = [cur_nodes[n] >= 0 and u_acc[n] * qx[n] < (float(p[tx[n]]) if tx[n] >= 0 else 0.0)
                   for n in range(N)]
            accepted_nodes = [n for n in range(N) if acc[n]]
            if drafted and len(accepted_nodes) >= k_eff:
                keep = sorted(accepted_nodes, key=lambda n: (u_sel[n], n))[:k_eff]
                A = [tx[n] for n in keep]
                go_on = True
            else:
                A = [tx[n] for n in accepted_nodes]
                chosen[A] = True
                for d in range(len(A), k_eff):
                    w = torch.where(chosen, 0.0, (p - qc).clamp(min=0.0))
                    if not seq_sum(w) > 0:  # the residual is exhausted: fall back to p over the rest
                        w = remaining_law()
                        if w is None:
                            break
                    pick = inverse_cdf(w, u_fb[d])
                    if pick < 0:
                        break
                    chosen[pick] = True
                    A.append(pick)
                go_on = False

        if not go_on:
            return j - 1, [(float(tscore[c]), index[owner[c]], ct[edge[c]], edge[c] + 1) for c in A]
        # the sampled (all drafted) nodes become the current beams
        rows = [lr[j - 1][dn[c]] for c in A] + [-1] * (K - len(A))
        scores = torch.tensor([float(tscore[c]) for c in A] + [NEG_INF] * (K - len(A)), dtype=torch.float32)
        nodes = [edge[c] + 1 for c in A] + [-1] * (K - len(A))
        index = [dn[c] for c in A] + [-1] * (K - len(A))
        live = [True] * len(A) + [False] * (K - len(A))
        prev_nodes = cur_nodes
    raise AssertionError("unreachable: level g + 1 always ends the walk")

"""The draft alignment objectives of method.md §5, on trie-masked distributions.

Every function takes one row per position: ``q_logp`` (the draft) and ``p_logp`` (the target) ``[P, C]``
log-probabilities over the C identifier slots of that depth, and ``allowed`` ``[P, C]``, the slots the trie
allows there. Distributions are renormalised over the allowed slots after dividing by the temperature, so
disallowed tokens never get probability mass. A row that allows nothing contributes 0 (and no NaN, also in
the gradient). Each returns the mean over rows that allow something (0 when none does).
"""

from __future__ import annotations

import torch

OBJECTIVES = ("ce", "wordkd", "tvdkd", "seqkd", "atspeed-s", "atspeed-r")


def _masked_log_softmax(logp: torch.Tensor, allowed: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log of the renormalised distribution over allowed slots (-inf elsewhere) and the row mask. Rows with
    nothing allowed get a dummy allowed slot so that nothing is NaN; callers drop them."""
    rows = allowed.any(-1)
    safe = allowed.clone()
    safe[~rows, 0] = True
    x = (logp / temperature).masked_fill(~safe, float("-inf"))
    x = torch.where(safe & ~torch.isfinite(x), torch.full_like(x, -1e4), x)  # a -inf inside the trie: tiny mass
    return x.log_softmax(-1).masked_fill(~safe, float("-inf")), rows


def _row_mean(per_row: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    per_row = torch.where(rows, per_row, torch.zeros_like(per_row))
    return per_row.sum() / rows.sum().clamp(min=1)


def _xlogy_terms(a_log: torch.Tensor, b_log: torch.Tensor) -> torch.Tensor:
    """sum_i a_i (log a_i - log b_i) with 0 log 0 = 0 (rows of the masked log-softmax)."""
    a = a_log.exp()
    diff = torch.where(a > 0, a_log - b_log, torch.zeros_like(a_log))
    return (a * diff).sum(-1)


def forward_kl(q_logp, p_logp, allowed, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q): WordKD's term (the target's distribution is the reference)."""
    q, rows = _masked_log_softmax(q_logp, allowed, temperature)
    p, _ = _masked_log_softmax(p_logp, allowed, temperature)
    return _row_mean(_xlogy_terms(p, q), rows)


def total_variation(q_logp, p_logp, allowed, temperature: float = 1.0) -> torch.Tensor:
    """0.5 * ||q - p||_1 over the allowed slots (TVD-KD and AtSpeed-R; 1 - TVD is the sampling acceptance)."""
    q, rows = _masked_log_softmax(q_logp, allowed, temperature)
    p, _ = _masked_log_softmax(p_logp, allowed, temperature)
    return _row_mean(0.5 * (q.exp() - p.exp()).abs().sum(-1), rows)


def topk_reverse_kl(q_logp, p_logp, allowed, k: int, temperature: float = 1.0) -> torch.Tensor:
    """AtSpeed-S: S = the draft's top-k allowed slots; q~, p~ = both distributions renormalised on S;
    KL(q~ || p~) + p~(the k-th token of S) * H(q~). Fewer than k allowed slots: S is all of them."""
    q_full, rows = _masked_log_softmax(q_logp, allowed, temperature)
    k = min(k, q_logp.shape[-1])
    top = q_full.detach().topk(k, dim=-1).indices                    # ranked by the draft, best first
    in_s = torch.zeros_like(allowed).scatter_(-1, top, True) & allowed
    q_s, _ = _masked_log_softmax(q_logp, in_s, temperature)
    p_s, _ = _masked_log_softmax(p_logp, in_s, temperature)
    n = in_s.sum(-1).clamp(min=1)                                   # |S|; its last member is the k-th
    last = top.gather(-1, (n - 1).unsqueeze(-1)).squeeze(-1)
    p_last = p_s.gather(-1, last.unsqueeze(-1)).squeeze(-1).exp().detach()
    entropy = -(q_s.exp() * torch.where(in_s, q_s, torch.zeros_like(q_s))).sum(-1)
    return _row_mean(_xlogy_terms(q_s, p_s) + p_last * entropy, rows)


def token_nll(q_logp, slots) -> torch.Tensor:
    """Mean of -log q(token) (full-vocabulary log-probabilities, as the decoder scores) over rows whose
    token is a valid slot (slot >= 0)."""
    rows = slots >= 0
    picked = q_logp.gather(-1, slots.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return _row_mean(-torch.where(rows, picked, torch.zeros_like(picked)), rows)


def alignment_loss(objective: str, q_logp: torch.Tensor, p_logp: torch.Tensor | None, allowed: torch.Tensor,
                   slots: torch.Tensor, alpha: float = 0.7, temperature: float = 1.0, topk: int = 20) -> torch.Tensor:
    """(1 - alpha) * CE(ground truth) + alpha * L_align for one batch.

    Args:
        objective: one of :data:`OBJECTIVES` (``ce`` ignores alpha: plain cross-entropy).
        q_logp, p_logp: ``[B, M, L, C]`` draft / target log-probabilities at each chain position; chain 0
            is the ground-truth item, chains 1.. the target's beams (or on-policy beams).
        allowed: ``[B, M, L, C]`` trie masks; ``slots``: ``[B, M, L]`` the chain tokens' slots (-1: invalid).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not 0.0 <= alpha <= 1.0 or temperature <= 0 or topk < 1:
        raise ValueError(f"need 0 <= alpha <= 1, temperature > 0 and topk >= 1 (got {alpha}, {temperature}, {topk})")
    C = q_logp.shape[-1]
    ce = token_nll(q_logp[:, 0].reshape(-1, C), slots[:, 0].reshape(-1))
    if objective == "ce":
        return ce
    truth = lambda x: x[:, 0].reshape(-1, C)   # noqa: E731
    beams = lambda x: x[:, 1:].reshape(-1, C)  # noqa: E731
    if objective == "wordkd":
        align = forward_kl(truth(q_logp), truth(p_logp), truth(allowed), temperature)
    elif objective == "tvdkd":
        align = total_variation(truth(q_logp), truth(p_logp), truth(allowed), temperature)
    elif objective == "seqkd":
        align = token_nll(beams(q_logp), slots[:, 1:].reshape(-1))
    elif objective == "atspeed-s":
        align = topk_reverse_kl(beams(q_logp), beams(p_logp), beams(allowed), topk, temperature)
    else:  # atspeed-r
        align = total_variation(beams(q_logp), beams(p_logp), beams(allowed), temperature)
    return (1 - alpha) * ce + alpha * align

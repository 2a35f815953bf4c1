"""Teacher forcing of many identifier chains per prompt in one forward pass (tree attention).

A row holds the prompt once, then each chain's first L - 1 tokens; every chain token sees the prompt and its
own chain's earlier tokens only, at position prompt length + depth. So a prompt with K + 1 chains costs
``P + (K + 1)(L - 1)`` tokens instead of ``(K + 1)(P + L - 1)``."""

from __future__ import annotations

import torch

from ..tree_kv import additive_mask


def forcing_rows(prompts: list[list[int]], chains: torch.Tensor, pad_token_id: int = 0):
    """Inputs of one tree-attention forward.

    Args:
        prompts: B token lists.
        chains: ``[B, M, L]`` identifier tokens (-1 = an invalid chain; it is fed as padding).

    Returns:
        ``input_ids`` [B, T], ``position_ids`` [B, T], ``visible`` [B, T, T] bool and ``read_at`` [B, M, L]:
        the position whose logits predict token ``l`` of chain ``m``.
    """
    B, M, L = chains.shape
    if B == 0 or B != len(prompts):
        raise ValueError(f"need one chain set per prompt and at least one prompt, got {len(prompts)} prompts and "
                         f"chains of shape {tuple(chains.shape)}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (its last position predicts the first code)")
    n = L - 1  # fed tokens per chain
    lengths = torch.tensor([len(p) for p in prompts])
    T = int(lengths.max()) + M * n
    ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = torch.tensor(p, dtype=torch.long)
    P = lengths.view(B, 1)
    if n:
        fed = chains[:, :, :n].clamp(min=0).reshape(B, M * n)
        cols = P + torch.arange(M * n).view(1, -1)
        ids.scatter_(1, cols, fed.masked_fill(chains[:, :, :n].reshape(B, M * n) < 0, pad_token_id))
    t = torch.arange(T).view(1, T)
    in_prompt = t < P
    in_chain = (t >= P) & (t < P + M * n)
    rel = (t - P).clamp(min=0)
    chain_id = torch.where(in_chain, rel // max(n, 1), torch.full_like(rel, -1))
    depth = torch.where(in_chain, rel % max(n, 1), torch.zeros_like(rel))
    position_ids = torch.where(in_prompt, t.expand(B, T), torch.where(in_chain, P + depth, torch.zeros_like(rel)))
    q, k = (lambda x: x.unsqueeze(2)), (lambda x: x.unsqueeze(1))
    visible = (k(in_prompt) & (q(in_chain) | (q(in_prompt) & (k(t) <= q(t))))) \
        | (q(in_chain) & (q(chain_id) == k(chain_id)) & (k(depth) <= q(depth))) \
        | torch.eye(T, dtype=torch.bool).unsqueeze(0)
    read_at = torch.empty(B, M, L, dtype=torch.long)
    read_at[:, :, 0] = (P - 1).expand(B, M)
    if n:
        read_at[:, :, 1:] = P.view(B, 1, 1) + (torch.arange(M).view(1, M, 1) * n) + torch.arange(n).view(1, 1, n)
    return ids, position_ids, visible, read_at


def forced_level_log_probs(model, prompts: list[list[int]], chains: torch.Tensor, level_tokens: torch.Tensor,
                           pad_token_id: int = 0) -> torch.Tensor:
    """``[B, M, L, C]`` full-vocabulary log-probabilities of the model at every position of every chain,
    at the level slots of ``level_tokens`` ``[L, C]`` (-inf in padding slots). Differentiable."""
    param = next(model.parameters())  # (works for a DDP wrapper too, which has no .dtype)
    device = param.device
    ids, pos, visible, read_at = forcing_rows(prompts, chains, pad_token_id)
    mask = additive_mask(visible.to(device), torch.get_autocast_dtype(device.type)
                         if torch.is_autocast_enabled(device.type) else param.dtype)
    logits = model(input_ids=ids.to(device), position_ids=pos.to(device), attention_mask=mask).logits
    logits = logits if logits.dtype == torch.float64 else logits.float()
    B, M, L = chains.shape
    at = logits.gather(1, read_at.to(device).view(B, M * L, 1).expand(-1, -1, logits.shape[-1]))
    lse = at.logsumexp(-1, keepdim=True)
    C = level_tokens.shape[1]
    idx = level_tokens.to(device)
    slot_ids = idx.clamp(min=0).repeat(M, 1).view(1, M * L, C).expand(B, -1, -1)
    out = (at.gather(-1, slot_ids) - lse).view(B, M, L, C)
    return out.masked_fill((idx < 0).view(1, 1, L, C), float("-inf"))

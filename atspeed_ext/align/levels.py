"""Identifier tokens level by level: which token ids each depth may use, and which of them the trie allows
after a given prefix. Teacher log-probabilities are stored over these level slots."""

from __future__ import annotations

import torch

from ..trie import ItemTrie


class LevelView:
    """The identifier vocabulary of each depth as ``C`` slots, and the trie as a dense child table.

    Attributes:
        level_tokens: ``[L, C]`` token id of each slot of each depth (-1 where a depth has fewer codes).
        child_of: ``[num_nodes, C]`` the trie node reached from a node of depth ``d`` by slot ``c`` of depth
            ``d``, -1 when the trie does not allow that token there (so ``child_of >= 0`` is the trie mask).
    """

    def __init__(self, trie: ItemTrie, item_token_ids: torch.Tensor):
        if trie.eos_token_id is not None:
            raise ValueError("draft alignment works on identifier tokens only: use a trie without EOS")
        trie = trie.to("cpu")
        L = trie.depth
        if item_token_ids.dim() != 2 or item_token_ids.shape[1] != L:
            raise ValueError(f"item_token_ids must be [num_items, {L}], got {tuple(item_token_ids.shape)}")
        levels = [torch.unique(item_token_ids[:, d]) for d in range(L)]  # sorted token ids of each depth
        C = max(t.numel() for t in levels)
        self.depth, self.width = L, C
        self.level_tokens = torch.full((L, C), -1, dtype=torch.long)
        slot_of = torch.full((L, trie.vocab_size), -1, dtype=torch.long)  # token -> slot, per depth
        for d, toks in enumerate(levels):
            self.level_tokens[d, :toks.numel()] = toks
            slot_of[d, toks] = torch.arange(toks.numel())
        # Edge e leads from node_parent[e + 1] (of depth d) to node e + 1 with token child_tokens[e].
        child = torch.arange(1, trie.num_nodes)
        parent = trie.node_parent[1:]
        depth_of = torch.bucketize(parent, trie.level_offsets[1:], right=True)
        self.child_of = torch.full((trie.num_nodes, C), -1, dtype=torch.long)
        self.child_of[parent, slot_of[depth_of, trie.child_tokens]] = child

    def walk(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``tokens`` ``[..., L]`` (identifier token ids, -1 = invalid): the slots ``[..., L]`` of each
        token and the trie mask ``[..., L, C]`` of each position (which slots the trie allows after the
        prefix). An invalid chain (any -1) allows nothing anywhere; nor do positions after a disallowed token."""
        shape = tokens.shape
        flat = tokens.reshape(-1, self.depth)
        node = torch.zeros(flat.shape[0], dtype=torch.long)
        slots = torch.full_like(flat, -1)
        allowed = torch.zeros(flat.shape[0], self.depth, self.width, dtype=torch.bool)
        for d in range(self.depth):
            ok = node >= 0
            allowed[:, d] = ok.unsqueeze(1) & (self.child_of[node.clamp(min=0)] >= 0)
            tok = flat[:, d]
            # the slot of this token at depth d (-1 when it is not a depth-d code)
            match = (self.level_tokens[d].unsqueeze(0) == tok.unsqueeze(1)) & (tok >= 0).unsqueeze(1)
            slot = torch.where(match.any(1), match.float().argmax(1), torch.full_like(tok, -1))
            slots[:, d] = slot
            nxt = self.child_of[node.clamp(min=0), slot.clamp(min=0)]
            node = torch.where(ok & (slot >= 0), nxt, torch.full_like(nxt, -1))
        allowed &= (flat >= 0).all(1).view(-1, 1, 1)
        return slots.reshape(shape), allowed.reshape(*shape, self.width)

    def gather(self, log_probs: torch.Tensor, depth_dim: int = -2) -> torch.Tensor:
        """Full-vocabulary values ``[..., L, V]`` -> level slots ``[..., L, C]`` (-inf in padding slots)."""
        idx = self.level_tokens.to(log_probs.device)
        shape = [1] * (log_probs.dim() - 2) + [self.depth, self.width]
        out = log_probs.gather(-1, idx.clamp(min=0).view(shape).expand(*log_probs.shape[:-1], self.width))
        return out.masked_fill((idx < 0).view(shape), float("-inf"))

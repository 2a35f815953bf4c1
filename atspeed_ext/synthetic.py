"""A synthetic catalogue with semantic-ID-like identifiers and a small LLaMA built from a config.

The embedded default of the demo: nothing is downloaded, everything comes from a seed.
"""

from __future__ import annotations

import torch

from ._rng import seeded_rng

__all__ = ["NUM_SPECIAL_TOKENS", "synthetic_identifiers", "synthetic_recdata", "small_llama", "random_prompts"]

#: token ids 0 (pad), 1 (bos) and 2 (eos) are special; code tokens start at 3.
NUM_SPECIAL_TOKENS = 3


def synthetic_identifiers(num_items: int, depth: int = 4, codes_per_level: int = 64, seed: int = 0,
                          num_shared: int = 0) -> torch.Tensor:
    """``[num_items, depth]`` identifiers; level ``l`` uses its own block of ``codes_per_level`` tokens.

    Items are drawn in clusters (items of one first-level code share second-level codes more often than
    chance), like semantic IDs from a residual quantiser; ``num_shared`` items copy another item's identifier.
    """
    if num_items < 1 or depth < 1 or codes_per_level < 1:
        raise ValueError(f"need num_items, depth, codes_per_level >= 1, got {num_items}, {depth}, {codes_per_level}")
    if not 0 <= num_shared < num_items:
        raise ValueError(f"num_shared must be in [0, num_items), got {num_shared}")
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(0, codes_per_level, (num_items,), generator=g)
    cols = [first]
    for _ in range(1, depth):
        # Half of the items follow their cluster's preferred code, the rest spread out uniformly.
        preferred = (cols[-1] * 7 + 3) % codes_per_level
        spread = torch.randint(0, codes_per_level, (num_items,), generator=g)
        cols.append(torch.where(torch.rand(num_items, generator=g) < 0.5, preferred, spread))
    ids = torch.stack([NUM_SPECIAL_TOKENS + lvl * codes_per_level + c for lvl, c in enumerate(cols)], 1)
    for i in range(num_shared):  # copies of the items that keep their own identifier (never of another copy)
        ids[num_items - 1 - i] = ids[i % (num_items - num_shared)]
    return ids


def small_llama(vocab_size: int, layers: int = 4, hidden: int = 256, seed: int = 0, dtype=torch.float32):
    """A LLaMA-architecture causal LM built from a config with seeded random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64 + 64,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with seeded_rng(seed):  # the weights come from the seed alone; the caller's CPU generator is left alone
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


def random_prompts(num: int, identifiers: torch.Tensor, min_items: int = 3, max_items: int = 20,
                   seed: int = 0) -> list[list[int]]:
    """Histories of ``min_items..max_items`` random items, flattened to their identifier tokens (varied lengths)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        n = int(torch.randint(min_items, max_items + 1, (1,), generator=g))
        items = torch.randint(0, identifiers.shape[0], (n,), generator=g)
        out.append([1] + identifiers[items].reshape(-1).tolist())
    return out


def synthetic_recdata(num_users: int = 2000, num_items: int = 500, depth: int = 4, codes_per_level: int = 16,
                      min_length: int = 5, max_length: int = 15, seed: int = 0):
    """A deterministic synthetic :class:`~atspeed_ext.data.RecData` with sequential structure.

    Items get clustered semantic identifiers (:func:`synthetic_identifiers`, as code strings ``<a_3>``...).
    Each user's sequence follows a hidden successor map: after item i comes succ(i) with probability 0.6, an
    item of the same first-level code with probability 0.3, and any item otherwise — so a model that learns
    the sequences clearly beats popularity. The last item of a user is its test item, the one before its
    validation item, the rest its train sequence.
    """
    from .data import RecData

    if num_users < 1 or num_items < 2 or not 3 <= min_length <= max_length:
        raise ValueError(f"need num_users >= 1, num_items >= 2 and 3 <= min_length <= max_length, got "
                         f"{num_users}, {num_items}, {min_length}, {max_length}")
    tokens = synthetic_identifiers(num_items, depth, codes_per_level, seed=seed)
    codes = (tokens - NUM_SPECIAL_TOKENS) - torch.arange(depth) * codes_per_level
    identifiers = [tuple(f"<{chr(ord('a') + lvl)}_{int(c)}>" for lvl, c in enumerate(row)) for row in codes]
    g = torch.Generator().manual_seed(seed + 1)
    succ = torch.randperm(num_items, generator=g).tolist()
    first = codes[:, 0].tolist()
    by_first: dict[int, list[int]] = {}
    for item, c in enumerate(first):
        by_first.setdefault(c, []).append(item)
    train, valid, test = {}, {}, {}
    for user in range(1, num_users + 1):
        length = int(torch.randint(min_length, max_length + 1, (1,), generator=g))
        seq = [int(torch.randint(num_items, (1,), generator=g))]
        while len(seq) < length:
            r = float(torch.rand(1, generator=g))
            if r < 0.6:
                nxt = succ[seq[-1]]
            elif r < 0.9:
                group = by_first[first[seq[-1]]]
                nxt = group[int(torch.randint(len(group), (1,), generator=g))]
            else:
                nxt = int(torch.randint(num_items, (1,), generator=g))
            seq.append(nxt)
        train[user], valid[user], test[user] = seq[:-2], [seq[-2]], [seq[-1]]
    return RecData(identifiers=identifiers, train=train, valid=valid, test=test, name="synthetic")

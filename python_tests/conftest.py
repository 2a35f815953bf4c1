"""Shared test helpers: tiny random Hugging Face models, random semantic-ID tries, padded prompt batches."""

from __future__ import annotations

import pytest
import torch

import atspeed_ext
from atspeed_ext import reference

CUDA = torch.cuda.is_available() and atspeed_ext.built_with_cuda()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a GPU and a CUDA build of atspeed_ext")

#: Where the kernels' hand-built edge cases (ties, -inf, NaN, empty levels) run: the CPU, and the GPU if present.
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def on_device(op, device: str):
    """``op`` called with its tensor arguments moved to ``device``, its tensor results returned on the CPU."""
    def run(*args):
        out = op(*[a.to(device) if isinstance(a, torch.Tensor) else a for a in args])
        return type(out)(o.cpu() for o in out) if isinstance(out, (tuple, list)) else out.cpu()
    return run


SPECIAL = 3  # token ids 0..2 are special (pad / bos / eos-like); codes start at 3


def tiny_model(family: str = "llama", vocab_size: int = 64, seed: int = 0, dtype=torch.float64, layers: int = 2):
    """A random tiny causal LM of the given family (weights from the seed, no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(family)
    # Larger weights than the default init spread the logits, like a trained model, so that ranks are clear.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model.to(dtype).eval()


def random_identifiers(num_items: int, depth: int, codes_per_level: int, seed: int, shared: int = 0) -> torch.Tensor:
    """Semantic-ID-like identifiers: level l draws from its own token range; ``shared`` items copy another's."""
    g = torch.Generator().manual_seed(seed)
    cols = [SPECIAL + level * codes_per_level + torch.randint(0, codes_per_level, (num_items,), generator=g)
            for level in range(depth)]
    ids = torch.stack(cols, 1)
    for i in range(shared):
        ids[num_items - 1 - i] = ids[i]
    return ids


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    return ids, mask


def random_prompts(lengths, vocab_size: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(SPECIAL, vocab_size, (n,), generator=g).tolist() for n in lengths]


def random_tree_cache(B, P, S, seed, pad_frac=0.2):
    """Random caches: left-padded prompts of P slots, then tree slots (random backward parents) and padding."""
    g = torch.Generator().manual_seed(seed)
    parents = torch.full((B, S), reference.NOT_TREE, dtype=torch.long)
    lengths = torch.randint(1, P + 1, (B,), generator=g) if P else torch.zeros(B, dtype=torch.long)
    visible = torch.arange(P).unsqueeze(0) >= (P - lengths).unsqueeze(1)
    for b in range(B):
        for s in range(P, S):
            r = float(torch.rand(1, generator=g))
            if r < pad_frac:
                continue  # a padding slot
            tree_slots = [t for t in range(P, s) if parents[b, t] != reference.NOT_TREE]
            if not tree_slots or r < pad_frac + 0.2:
                parents[b, s] = reference.ROOT
            else:
                parents[b, s] = tree_slots[int(torch.randint(len(tree_slots), (1,), generator=g))]
    return parents, visible

"""The seeded samples of the sampling decoders are pinned. The law tests (test_sampling_stats.py) cannot see a
small change of the draft's q, of the order of the random draws or of how levels are padded; these values can.
They depend only on the weights set below (not on Hugging Face's initialisation) and the seeded generator. A
change meant to alter the streams regenerates them (``python test_sampling_streams.py`` prints them) and says so.
"""

import hashlib

import pytest
import torch

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder
from conftest import random_identifiers, random_prompts, tiny_model

VOCAB = 64


def model(family: str, seed: int, layers: int):
    """A tiny model whose every weight comes from its own generator (stable across transformers releases)."""
    m = tiny_model(family, VOCAB, seed=seed, layers=layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
        m.lm_head.weight.mul_(6.0)   # spread the logits, as a trained model's are
    return m


CASES = {   # name: decoder options (None: target-only beam sampling)
    "beam sampling": None,
    "relaxed, beam": dict(draft_beams=5, gamma=2, verification="relaxed", draft_policy="beam"),
    "relaxed, anchored": dict(draft_beams=5, gamma=3, verification="relaxed", draft_policy="anchored"),
    "exact, beam": dict(draft_beams=6, gamma=2, verification="exact", draft_policy="beam"),
    "exact, anchored": dict(draft_beams=5, gamma=1, verification="exact", draft_policy="anchored"),
    "exact, widths by depth": dict(draft_beams=(4, 6, 3), gamma=2, verification="exact", draft_policy="beam"),
    "relaxed, widths by depth": dict(draft_beams=(3, 5), gamma=1, verification="relaxed", draft_policy="anchored"),
}

EXPECTED = {   # name: (sequences per request, accepted levels per request and round)
    'beam sampling': (
        [[[3, 8, 14, 21], [3, 8, 13, 19], [3, 8, 16, 20]],
         [[3, 8, 16, 20], [3, 8, 14, 21], [5, 8, 17, 18]],
         [[4, 12, 17, 18], [4, 12, 15, 22], [4, 12, 17, 22]],
         [[7, 8, 15, 21], [7, 8, 13, 21], [3, 8, 13, 19]]],
        None),
    'relaxed, beam': (
        [[[3, 10, 14, 21], [3, 8, 13, 19], [3, 8, 16, 20]],
         [[5, 8, 17, 18], [5, 8, 14, 19], [5, 8, 15, 21]],
         [[4, 10, 15, 22], [4, 10, 13, 19], [6, 11, 15, 20]],
         [[6, 12, 17, 19], [6, 12, 14, 19], [7, 8, 13, 21]]],
        [[1, 1], [0, 1, 0], [0, 1, 0], [1, 1]]),
    'relaxed, anchored': (
        [[[7, 8, 13, 21], [7, 8, 17, 20], [7, 8, 14, 18]],
         [[5, 12, 16, 22], [5, 11, 15, 18], [5, 11, 13, 18]],
         [[4, 12, 15, 22], [4, 10, 15, 22], [4, 10, 13, 19]],
         [[7, 8, 15, 21], [7, 8, 13, 21], [7, 10, 16, 19]]],
        [[1, 1], [0, 2], [0, 1, 0], [1, 1]]),
    'exact, beam': (
        [[[3, 8, 14, 21], [3, 8, 13, 19], [3, 8, 16, 20]],
         [[3, 8, 16, 20], [5, 8, 17, 18], [5, 8, 14, 19]],
         [[4, 12, 17, 18], [4, 12, 15, 22], [4, 12, 17, 22]],
         [[7, 8, 15, 21], [7, 8, 13, 21], [7, 12, 14, 22]]],
        [[1, 1], [1, 1], [1, 0, 0], [1, 1]]),
    'exact, anchored': (
        [[[3, 8, 14, 21], [3, 8, 13, 19], [3, 8, 16, 20]],
         [[5, 8, 17, 18], [5, 8, 14, 19], [5, 8, 15, 21]],
         [[4, 10, 15, 22], [4, 10, 13, 19], [4, 11, 16, 19]],
         [[7, 8, 15, 21], [7, 8, 17, 20], [7, 8, 17, 18]]],
        [[1, 1], [1, 1], [1, 0, 0], [1, 0, 0]]),
    'exact, widths by depth': (
        [[[3, 8, 14, 21], [3, 10, 14, 21], [3, 8, 13, 19]],
         [[5, 8, 17, 18], [5, 8, 14, 19], [5, 8, 15, 21]],
         [[4, 10, 15, 22], [4, 10, 13, 19], [4, 8, 13, 19]],
         [[7, 8, 15, 21], [7, 8, 17, 20], [7, 8, 13, 21]]],
        [[0, 0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]),
    'relaxed, widths by depth': (
        [[[3, 8, 13, 19], [3, 8, 16, 20], [3, 8, 15, 20]],
         [[5, 8, 17, 18], [5, 8, 15, 21], [5, 11, 15, 18]],
         [[4, 12, 17, 18], [4, 12, 15, 22], [4, 12, 17, 22]],
         [[7, 10, 13, 18], [7, 10, 13, 22], [7, 10, 16, 19]]],
        [[0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 0, 1]]),
}

DIGESTS = {   # name: digest(name)
    'beam sampling': '118b37258e1526e5',
    'relaxed, beam': '248a520ff54a5274',
    'relaxed, anchored': '2d13974f29874332',
    'exact, beam': 'a190c61ea49df9fb',
    'exact, anchored': '12018da3d91d42c9',
    'exact, widths by depth': '7ebf1da99fb694c1',
    'relaxed, widths by depth': 'cd887d91e3020695',
}


def run(name: str, seed: int = 7):
    target, draft = model("llama", 1, 2), model("qwen2", 2, 1)
    trie = ItemTrie(random_identifiers(80, 4, 5, seed=3))
    prompts = random_prompts([5, 3, 7, 4], VOCAB, seed=4)
    options = CASES[name]
    if options is None:
        out = BeamSearchDecoder(target, trie, 3, do_sample=True, temperature=1.3, seed=seed).generate(prompts)
        return out.sequences.tolist(), None
    out = SpecBeamDecoder(target, draft, trie, 3, temperature=1.3, seed=seed, **options).generate(prompts)
    return out.sequences.tolist(), out.stats.accepted_levels


def digest(name: str) -> str:
    """A hash of the samples of 16 more seeds: many more draws than EXPECTED shows, so that a small change of the
    draft's q (which moves few decisions) shows too."""
    return hashlib.sha256(repr([run(name, seed) for seed in range(100, 116)]).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", list(CASES))
def test_seeded_samples_are_unchanged(name):
    assert run(name) == EXPECTED[name]
    assert digest(name) == DIGESTS[name]


if __name__ == "__main__":   # prints EXPECTED for the current code
    print("EXPECTED = {   # name: (sequences per request, accepted levels per request and round)")
    for name in CASES:
        sequences, accepted = run(name)
        print(f"    {name!r}: (\n        [" + ",\n         ".join(map(repr, sequences)) + f"],\n        {accepted!r}),")
    print("}")
    print("DIGESTS = {   # name: digest(name)")
    for name in CASES:
        print(f"    {name!r}: {digest(name)!r},")
    print("}")

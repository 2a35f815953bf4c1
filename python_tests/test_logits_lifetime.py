"""The decoders free every model call's logits before the next model call (of either model), so their peak
memory is one call's logits, not two. With a real vocabulary the logits are most of a decode's memory: at
V = 32,000, B = 256, K = 50 beam search peaked 3.3 GB above the models with the previous step's logits kept, 1.7 GB
without (benchmarks/results/peak_memory_cpu*.md)."""

import pytest
from torch.multiprocessing.reductions import StorageWeakRef  # a weak reference to a storage

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder
from conftest import random_identifiers, random_prompts, tiny_model

VOCAB = 64


class LogitsLifetime:
    """Forward hooks on the given models: at each model call, count the earlier calls' logits that are still
    held (by storage, so a view or a slice that keeps them alive counts too)."""

    def __init__(self, *models):
        self.outputs: list[StorageWeakRef] = []
        self.calls = 0
        self.calls_of = {id(m): 0 for m in models}
        self.held_at_a_call = []   # (call index, how many earlier logits were alive)
        self.handles = [h for m in models for h in (m.register_forward_pre_hook(self._before),
                                                      m.register_forward_hook(self._after))]

    def _before(self, module, args):
        alive = sum(not ref.expired() for ref in self.outputs)
        if alive:
            self.held_at_a_call.append((self.calls, alive))
        self.calls += 1
        self.calls_of[id(module)] += 1

    def _after(self, module, args, output):
        self.outputs.append(StorageWeakRef(output.logits.untyped_storage()))

    def remove(self):
        for h in self.handles:
            h.remove()


def decode(decoder, models, prompts):
    watch = LogitsLifetime(*models)
    try:
        decoder.generate(prompts)
    finally:
        watch.remove()
    return watch


@pytest.mark.parametrize("do_sample", [False, True])
def test_beam_search_frees_each_steps_logits(do_sample):
    model = tiny_model("llama", VOCAB, seed=1)
    trie = ItemTrie(random_identifiers(60, 4, 5, seed=1))
    prompts = random_prompts([5, 3, 7, 4], VOCAB, seed=1)
    kwargs = {"do_sample": True, "seed": 0} if do_sample else {}
    watch = decode(BeamSearchDecoder(model, trie, 4, **kwargs), [model], prompts)
    assert watch.calls == trie.depth and watch.held_at_a_call == []


@pytest.mark.parametrize("verification,policy", [("strict", "beam"), ("strict", "anchored"), ("relaxed", "beam"),
                                                 ("relaxed", "anchored"), ("exact", "beam"), ("exact", "anchored")])
@pytest.mark.parametrize("widths,gamma", [(8, 1), (8, 3), ((6, 9, 7), 2)])
@pytest.mark.parametrize("skip", [False, True])
def test_speculation_frees_each_calls_logits(verification, policy, widths, gamma, skip):
    """Target and draft: no call runs while an earlier call's logits (of either model) are still held, in every
    verification mode and drafting policy, whatever the round's levels (the sampling modes keep the draft's
    logits for their verification in a buffer of their own)."""
    target = tiny_model("llama", VOCAB, seed=2)
    draft = tiny_model("qwen2", VOCAB, seed=3, layers=1)
    trie = ItemTrie(random_identifiers(80, 4, 5, seed=2))
    prompts = random_prompts([6, 2, 9, 4], VOCAB, seed=2)
    kwargs = {} if verification == "strict" else {"seed": 0}
    spec = SpecBeamDecoder(target, draft, trie, 3, widths, gamma, verification=verification, draft_policy=policy,
                           skip_exhaustive_draft=skip, **kwargs)
    watch = decode(spec, [target, draft], prompts)
    assert watch.calls_of[id(target)] >= 2 and watch.calls_of[id(draft)] >= 2   # rounds, each drafted
    assert watch.held_at_a_call == []

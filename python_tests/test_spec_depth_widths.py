"""SpecBeamDecoder with one draft width per trie depth (strict and sampling verification), and the cache bound of
batches whose requests sit at different depths."""

import copy

import pytest
import torch

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder
from atspeed_ext._inputs import spec_cache_slots
from atspeed_ext.tree_kv import TreeKV
from conftest import random_identifiers, random_prompts, tiny_model
from test_spec_decoder import EOS, VOCAB, assert_identical, assert_lossless_sweep


@pytest.fixture
def calls(monkeypatch):
    """Every TreeKV call: (model, tree slots fed, cache slots after the call)."""
    log = []
    prefill, feed = TreeKV.prefill, TreeKV.feed

    def logged_prefill(self, ids, mask, tree_tokens=None, tree_parents=None):
        out = prefill(self, ids, mask, tree_tokens, tree_parents)
        log.append((self.model, 0 if tree_tokens is None else tree_tokens.shape[1], self.num_slots))
        return out

    def logged_feed(self, tokens, parents):
        out = feed(self, tokens, parents)
        log.append((self.model, tokens.shape[1], self.num_slots))
        return out

    monkeypatch.setattr(TreeKV, "prefill", logged_prefill)
    monkeypatch.setattr(TreeKV, "feed", logged_feed)
    return log


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("num_beams", [1, 3, 5])
@pytest.mark.parametrize("gamma", [1, 2, 3])
def test_per_depth_widths_are_lossless(family, num_beams, gamma):
    K = num_beams
    assert_lossless_sweep(family, K, gamma, [(2 * K, K), (K, 3 * K), (3 * K, K + 1, 2 * K)])


def test_each_drafted_depth_gets_its_width(calls):
    """A perfect draft (the target's copy), gamma 1, depth 4, widths (5, 9, 4), one request: round one feeds
    the target the prompt with the 5-node depth-1 level, round two the K pending beams with the 4-node depth-3
    level (skip_exhaustive_draft off, so the draft drafts it)."""
    target = tiny_model("llama", VOCAB, seed=3)
    draft = copy.deepcopy(target)
    trie = ItemTrie(random_identifiers(200, 4, 5, seed=3))  # depth 4
    prompt = random_prompts([6], VOCAB, seed=3)
    K = 3
    for widths, tree_sizes in (((5, 9, 4), [5, K + 4]), ((6,), [5, K + 6]), (6, [5, K + 6])):  # 5 first codes
        calls.clear()
        out = SpecBeamDecoder(target, draft, trie, K, widths, gamma=1, skip_exhaustive_draft=False).generate(prompt)
        assert out.stats.accepted_levels == [[1, 1]]
        assert [fed for model, fed, _ in calls if model is target] == tree_sizes
        assert_identical(out, BeamSearchDecoder(target, trie, K).generate(prompt))


def test_a_width_for_every_depth_can_be_given():
    """A trie of depth 4 drafts depths 1-3: three widths are the most; fewer repeat the last."""
    target = tiny_model("qwen2", VOCAB, seed=5)
    draft = tiny_model("qwen2", VOCAB, seed=55, layers=1)
    trie = ItemTrie(random_identifiers(120, 4, 5, seed=5))
    prompts = random_prompts([4, 9], VOCAB, seed=5)
    ref = BeamSearchDecoder(target, trie, 4).generate(prompts)
    for widths in ([4], [8, 4], (4, 12, 6), [6, 6, 6]):
        decoder = SpecBeamDecoder(target, draft, trie, 4, widths, gamma=2)
        assert decoder.draft_beams == tuple(widths)
        assert_identical(decoder.generate(prompts), ref)


def test_bad_widths_raise_clear_errors():
    target = tiny_model("llama", VOCAB, seed=0)
    draft = tiny_model("llama", VOCAB, seed=1, layers=1)
    trie = ItemTrie(random_identifiers(30, 3, 4, seed=0))  # depth 3: drafted depths 1 and 2
    with pytest.raises(ValueError, match=r"draft_beams \(N = 2 at depth 2\) must be >= num_beams \(K = 3\)"):
        SpecBeamDecoder(target, draft, trie, 3, (4, 2))
    with pytest.raises(ValueError, match=r"gives 3 widths, but a trie of depth 3 drafts levels at depths 1 \.\. 2"):
        SpecBeamDecoder(target, draft, trie, 3, (4, 4, 4))
    with pytest.raises(ValueError, match="non-empty sequence"):
        SpecBeamDecoder(target, draft, trie, 3, [])
    for bad in ((4, 4.0), (4, True), ("4",), 4.0, "4", None):
        with pytest.raises(ValueError, match="draft_beams must be an int >= 1 or a sequence of them"):
            SpecBeamDecoder(target, draft, trie, 3, bad)


def test_the_cache_bound_holds_when_requests_of_a_batch_sit_at_different_depths(calls):
    """Rows of a batch share one cache width: a row deep in the trie (its fed levels) meets a shallow row's
    drafted levels. The bound for one request is then too small (it was the bound for every batch: a
    sliding-window cache would have dropped slots the masks still address); the batch bound holds. (It held only
    once finished requests leave the batch before the cache is compacted: their K x (depth - 1) kept slots used
    to set the width of the next round.)"""
    target = tiny_model("qwen2", VOCAB, seed=0)
    exceeded_single_bound = 0
    for trie in (ItemTrie(random_identifiers(60, 3, 4, seed=2), eos_token_id=EOS),  # depth 4, narrow last level
                 ItemTrie(random_identifiers(150, 4, 6, seed=4)),                   # depth 4, no <eos>
                 ItemTrie(random_identifiers(200, 5, 5, seed=5))):                  # depth 5
        for seed in range(12):
            draft = tiny_model("qwen2", VOCAB, seed=seed + 1, layers=1)  # unrelated: requests drift apart in depth
            for lengths in ([6, 3, 5, 4, 2, 6], [6]):
                prompts = random_prompts(lengths, VOCAB, seed=seed)
                for K, N, gamma in ((4, 4, 3), (2, 5, 1), (4, (8, 4, 6), 3), (4, (4, 9), 1), (2, (2, 7), 1)):
                    calls.clear()
                    SpecBeamDecoder(target, draft, trie, K, N, gamma).generate(prompts)
                    used = max(slots for _, _, slots in calls)
                    assert used <= spec_cache_slots(6, K, N, gamma, trie.depth, batch=len(prompts))
                    exceeded_single_bound += used > spec_cache_slots(6, K, N, gamma, trie.depth, batch=1)
    assert exceeded_single_bound > 0


def test_a_sliding_window_just_above_the_batch_bound_decodes_exactly():
    """The decode the bound admits is exact: a Qwen2 target whose window is the bound + 1 gives full attention's
    beams and scores (a window the old bounds admitted dropped slots: scores off by 0.12)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    full = tiny_model("qwen2", VOCAB, seed=0, layers=1)
    trie = ItemTrie(random_identifiers(200, 5, 5, seed=5))  # depth 5
    K, N, gamma = 2, 4, 1
    for seed in (11, 19):
        prompts = random_prompts([6, 3, 5, 4, 2, 6, 1, 2], VOCAB, seed=seed)
        bound = spec_cache_slots(6, K, N, gamma, trie.depth, batch=len(prompts))
        windowed = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, use_sliding_window=True, sliding_window=bound + 1,
            max_window_layers=0)).double().eval()
        windowed.load_state_dict(full.state_dict())
        out = SpecBeamDecoder(windowed, tiny_model("qwen2", VOCAB, seed=seed + 1, layers=1), trie, K, N,
                              gamma).generate(prompts)
        assert_identical(out, BeamSearchDecoder(full, trie, K).generate(prompts))


def test_levels_are_no_wider_than_the_trie(calls):
    """A width beyond the trie's nodes at a depth only fed padding to the target (N = 4000 on a 3-item trie took
    1.1 s against 3 ms at N = 100): each level is capped at its depth's node count (or K)."""
    target = tiny_model("llama", VOCAB, seed=8, layers=1)
    trie = ItemTrie(torch.tensor([[5, 9, 12, 20], [5, 9, 13, 21], [6, 10, 12, 22]]))  # 2, 2, 3 nodes at depths 1-3
    prompt = random_prompts([4], VOCAB, seed=8)
    ref = BeamSearchDecoder(target, trie, 3).generate(prompt)
    for N, gamma, fed in ((4000, 3, [3 + 3 + 3]), ((4000, 3, 7), 1, [3, 3 + 3])):
        calls.clear()
        out = SpecBeamDecoder(target, copy.deepcopy(target), trie, 3, N, gamma,
                              skip_exhaustive_draft=False).generate(prompt)
        assert [n for model, n, _ in calls if model is target and n] == fed  # K = 3 pads the 2-node levels to 3
        assert_identical(out, ref)


@pytest.mark.parametrize("verification", ["relaxed", "exact"])
@pytest.mark.parametrize("policy", ["beam", "anchored"])
def test_sampling_with_widths_by_depth(verification, policy):
    """Sampling verification takes widths by depth too: each request's drafted level at depth d holds at most N_d
    nodes (rows of one batch sit at different depths, so one level mixes widths: the narrower rows keep their
    first draws), and the results are valid, distinct identifiers. (The exact rule's law with widths by depth is
    tested in test_sampling_stats.py.)"""
    trie = ItemTrie(random_identifiers(80, 4, 5, seed=4))
    target = tiny_model("llama", VOCAB, seed=3)
    draft = copy.deepcopy(target)   # a noisy copy: levels are accepted in some rounds and rejected in others
    with torch.no_grad():
        draft.lm_head.weight.add_(torch.randn(draft.lm_head.weight.shape, generator=torch.Generator().manual_seed(0),
                                              dtype=draft.lm_head.weight.dtype))
    prompts = random_prompts([5, 3, 7, 4, 6, 2], VOCAB, seed=5)
    K, widths = 3, (4, 6, 3)   # 5 first codes: level 1 is sometimes rejected, so rows part depths
    dec = SpecBeamDecoder(target, draft, trie, K, widths, gamma=2, verification=verification, draft_policy=policy,
                          temperature=1.5, seed=11)
    assert dec.draft_beams == widths
    drafts, draft_levels = [], dec._draft

    def logged(state, dft, rnd, *args):
        levels = draft_levels(state, dft, rnd, *args)
        drafts.append((list(rnd.t), list(rnd.g), [level.live.sum(1).tolist() for level in levels]))
        return levels

    dec._draft = logged
    for _ in range(4):
        out = dec.generate(prompts)
        assert out.valid.all()
        for row in out.sequences.tolist():
            assert len({tuple(x) for x in row}) == K and all(trie.node_of(x) >= 0 for x in row)
    mixed = cut = 0
    for t, g, counts in drafts:
        for j, count in enumerate(counts, 1):
            limits = [widths[min(t_r + j, len(widths)) - 1] for t_r in t]
            drafting = [r for r in range(len(t)) if g[r] >= j]
            assert all(count[r] == 0 for r in range(len(t)) if r not in drafting)
            assert all(count[r] <= limits[r] for r in drafting)
            mixed += len({limits[r] for r in drafting}) > 1
            cut += sum(count[r] == limits[r] < max(limits[q] for q in drafting) for r in drafting)
    assert mixed > 0 and cut > 0   # levels mixing widths, and rows held to a narrower width than their level's

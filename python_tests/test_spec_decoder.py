"""SpecBeamDecoder is lossless: identical to BeamSearchDecoder for any draft; costs and errors."""

import pytest
import torch

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder
from conftest import left_pad, random_identifiers, random_prompts, requires_cuda, tiny_model

VOCAB = 64
EOS = 2


def assert_identical(spec, ref):
    assert torch.equal(spec.valid, ref.valid)
    assert torch.equal(spec.sequences, ref.sequences)
    torch.testing.assert_close(spec.scores[ref.valid], ref.scores[ref.valid], atol=1e-5, rtol=0)
    assert spec.item_ids == ref.item_ids


def assert_stats_consistent(out, depth, num_requests):
    s = out.stats
    assert len(s.target_calls) == len(s.accepted_levels) == num_requests
    for calls, levels in zip(s.target_calls, s.accepted_levels):
        assert calls == len(levels) >= 1
        assert sum(n + 1 for n in levels) == depth  # every round advances accepted + 1 (bonus) tokens


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("num_beams", [1, 3, 5, 10, 20])
@pytest.mark.parametrize("gamma", [1, 2, 3])
def test_lossless_against_beam_search(family, num_beams, gamma):
    assert_lossless_sweep(family, num_beams, gamma, sorted({num_beams, 2 * num_beams, 40}))


def assert_lossless_sweep(family, num_beams, gamma, widths):
    """Random targets and drafts (2 seeds), tries with and without EOS, a batch of mixed prompt lengths: every
    draft width (int N or widths by depth), both policies, with and without the exhaustive skip, decode exactly
    as BeamSearchDecoder."""
    for seed in range(2):
        target = tiny_model(family, VOCAB, seed=seed)
        draft = tiny_model(family, VOCAB, seed=seed + 50, layers=1)
        for eos in (None, EOS):
            trie = ItemTrie(random_identifiers(150, 4, 5, seed=seed, shared=3), eos_token_id=eos)
            prompts = random_prompts([7, 3, 12, 1], VOCAB, seed=seed)
            ref = BeamSearchDecoder(target, trie, num_beams).generate(prompts)
            for N in widths:
                for policy in ("beam", "anchored"):
                    for skip in (True, False):  # False: the draft also drafts the exhaustive last rounds
                        out = SpecBeamDecoder(target, draft, trie, num_beams, N, gamma, draft_policy=policy,
                                              skip_exhaustive_draft=skip).generate(prompts)
                        assert_identical(out, ref)
                        assert_stats_consistent(out, trie.depth, 4)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_wide_trees_stay_lossless(family):
    """Trees far wider than K (the GPU's choice: N = 64..256) and wider than some trie levels (padding nodes)
    are still identical to BeamSearchDecoder; a tree that holds whole trie levels accepts every level."""
    target = tiny_model(family, VOCAB, seed=7)
    draft = tiny_model(family, VOCAB, seed=57, layers=1)
    trie = ItemTrie(random_identifiers(600, 4, 8, seed=7, shared=2), eos_token_id=EOS)  # levels of 8, 64, ...
    prompts = random_prompts([6, 2, 11], VOCAB, seed=7)
    for K in (3, 10):
        ref = BeamSearchDecoder(target, trie, K).generate(prompts)
        for N, gamma in ((64, 1), (128, 3), (256, 2)):
            out = SpecBeamDecoder(target, draft, trie, K, N, gamma).generate(prompts)
            assert_identical(out, ref)
            assert_stats_consistent(out, trie.depth, 3)
    # N >= the widest level (600 identifiers): each drafted level holds every trie node of its depth.
    for skip in (True, False):
        out = SpecBeamDecoder(target, draft, trie, 10, 640, gamma=4, skip_exhaustive_draft=skip).generate(prompts)
        assert out.stats.target_calls == [1, 1, 1]
        assert out.stats.accepted_levels == [[4], [4], [4]]
        assert_identical(out, BeamSearchDecoder(target, trie, 10).generate(prompts))


def test_self_draft_with_n_equal_k_costs_one_target_call():
    target = tiny_model("llama", VOCAB, seed=3)
    trie = ItemTrie(random_identifiers(200, 4, 5, seed=3))                    # L = 4, no EOS
    prompts = random_prompts([5, 9, 2], VOCAB, seed=3)
    for K in (1, 5, 10):
        out = SpecBeamDecoder(target, target, trie, K, K, gamma=3).generate(prompts)
        assert out.stats.target_calls == [1, 1, 1]
        assert out.stats.accepted_levels == [[3], [3], [3]]
        assert out.stats.draft_calls == [3, 3, 3]
        assert_identical(out, BeamSearchDecoder(target, trie, K).generate(prompts))


def test_anchored_policy_accepts_everything_with_a_perfect_draft():
    # With N > K the paper's policy may miss at level 2 even with draft == target; the anchored one cannot.
    target = tiny_model("qwen2", VOCAB, seed=4)
    trie = ItemTrie(random_identifiers(300, 4, 6, seed=4))
    prompts = random_prompts([6, 10, 4, 8], VOCAB, seed=4)
    out = SpecBeamDecoder(target, target, trie, 5, 12, gamma=3, draft_policy="anchored").generate(prompts)
    assert out.stats.target_calls == [1] * 4


def test_unrelated_draft_still_identical_and_requests_progress_independently():
    target = tiny_model("llama", VOCAB, seed=5)
    draft = tiny_model("qwen2", VOCAB, seed=99, layers=1)                      # another family, another seed
    trie = ItemTrie(random_identifiers(120, 4, 5, seed=5, shared=2), eos_token_id=EOS)
    ids, mask = left_pad(random_prompts([4, 11, 7, 2, 9], VOCAB, seed=5))
    spec = SpecBeamDecoder(target, draft, trie, 5, 10, gamma=2, skip_exhaustive_draft=False)
    out = spec.generate(ids, mask)
    assert_identical(out, BeamSearchDecoder(target, trie, 5).generate(ids, mask))
    assert_stats_consistent(out, trie.depth, 5)
    # Each request's rounds are the ones it gets alone (none waits for or is cut short by another) ...
    for b, prompt in enumerate(random_prompts([4, 11, 7, 2, 9], VOCAB, seed=5)):
        alone = spec.generate([prompt]).stats
        assert (out.stats.accepted_levels[b], out.stats.target_calls[b]) == (alone.accepted_levels[0],
                                                                            alone.target_calls[0])
    # ... and they differ here, so the check above has something to see.
    assert len({tuple(levels) for levels in out.stats.accepted_levels}) >= 2
    out.sequences[~out.valid] = 0  # ordinary output tensors (not inference tensors): editable in place


def test_draft_in_another_precision_than_the_target():
    """The draft's dtype is free (its rounding only changes what is drafted): float32 draft, float64 target."""
    target = tiny_model("llama", VOCAB, seed=12)
    draft = tiny_model("qwen2", VOCAB, seed=13, layers=1, dtype=torch.float32)
    trie = ItemTrie(random_identifiers(150, 4, 5, seed=12), eos_token_id=EOS)
    ids, mask = left_pad(random_prompts([6, 2, 9], VOCAB, seed=12))
    ref = BeamSearchDecoder(target, trie, 5).generate(ids, mask)
    for gamma in (1, 3):
        out = SpecBeamDecoder(target, draft, trie, 5, 10, gamma, skip_exhaustive_draft=False).generate(ids, mask)
        assert_identical(out, ref)
        assert_stats_consistent(out, trie.depth, 3)


def test_all_children_lists_every_child_of_the_live_nodes_once():
    """The exhaustive levels' enumeration (no logits): every child of each live node, parent by parent in token
    order, -1 beyond a row's total, against a brute-force walk of the trie; dead nodes (count 0) list nothing."""
    from atspeed_ext.spec_decoder import _all_children
    trie = ItemTrie(random_identifiers(300, 3, 7, seed=21), eos_token_id=VOCAB - 1)
    offsets, tokens = trie.child_offsets.tolist(), trie.child_tokens.tolist()
    gen = torch.Generator().manual_seed(21)
    first, end = trie.level_offsets.tolist()[1:3]   # the nodes of depth 1
    for trial in range(40):
        B, W = 3, int(torch.randint(1, 6, (1,), generator=gen))
        nodes = torch.randint(first, end, (B, W), generator=gen)
        live = torch.rand(B, W, generator=gen) < 0.7
        nodes = torch.where(live, nodes, -1 if trial % 2 else 0)   # dead beams hold -1 or a stale node
        counts = torch.where(live, trie.child_offsets[nodes.clamp(min=0) + 1] - trie.child_offsets[nodes.clamp(min=0)], 0)
        width = int(counts.sum(1).max()) + trial % 3
        parent, token, node = _all_children(nodes, counts, trie, width)
        for b in range(B):
            expected = [(i, tokens[e], e + 1) for i in range(W) if live[b, i]
                        for e in range(offsets[int(nodes[b, i])], offsets[int(nodes[b, i]) + 1])]
            got = list(zip(parent[b].tolist(), token[b].tolist(), node[b].tolist()))
            assert got == expected + [(-1, -1, -1)] * (width - len(expected))


def test_exhaustive_last_round_needs_no_draft_call():
    # Five codes per level: a last level under K = 3 beams has at most 15 children <= N, so with gamma = 1
    # every request's last round (g = 1, or 0 when only the bonus is left) is built from the trie alone.
    target = tiny_model("llama", VOCAB, seed=12)
    draft = tiny_model("qwen2", VOCAB, seed=13, layers=1)
    trie = ItemTrie(random_identifiers(150, 4, 5, seed=12))
    calls = []
    hook = draft.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        for prompt in random_prompts([6, 2, 9, 4], VOCAB, seed=12):
            runs, forwards = {}, {}
            for skip in (True, False):
                calls.clear()
                runs[skip] = SpecBeamDecoder(target, draft, trie, 3, 40, gamma=1,
                                             skip_exhaustive_draft=skip).generate([prompt])
                forwards[skip] = len(calls)
            on, off = runs[True], runs[False]
            assert_identical(on, BeamSearchDecoder(target, trie, 3).generate([prompt]))
            assert torch.equal(on.sequences, off.sequences) and torch.equal(on.scores, off.scores)
            assert on.stats.accepted_levels == off.stats.accepted_levels
            # The same rounds, minus the last one's drafted level(s) and its draft forward.
            levels = on.stats.accepted_levels[0]
            t, g = 0, []
            for n in levels:
                g.append(min(1, trie.depth - t - 1))
                t += n + 1
            assert off.stats.draft_calls == [sum(g)]
            assert on.stats.draft_calls == [sum(g[:-1])]
            assert forwards[True] == forwards[False] - (1 if g[-1] else 0) == len(levels) - 1
    finally:
        hook.remove()


def test_fewer_identifiers_than_beams():
    target = tiny_model("llama", VOCAB, seed=6)
    draft = tiny_model("llama", VOCAB, seed=7, layers=1)
    trie = ItemTrie([[3, 10, 20], [3, 10, 21], [4, 11, 22], [4, 11, 22]])
    prompts = random_prompts([5, 8], VOCAB, seed=6)
    out = SpecBeamDecoder(target, draft, trie, 5, 8, gamma=2).generate(prompts)
    assert_identical(out, BeamSearchDecoder(target, trie, 5).generate(prompts))
    assert out.valid.sum(1).tolist() == [3, 3]


def test_bad_input_raises_clear_errors():
    target = tiny_model("llama", VOCAB, seed=0)
    draft = tiny_model("llama", VOCAB, seed=1, layers=1)
    trie = ItemTrie(random_identifiers(30, 3, 4, seed=0))
    with pytest.raises(ValueError, match=r"draft_beams \(N = 2\) must be >= num_beams \(K = 3\)"):
        SpecBeamDecoder(target, draft, trie, 3, 2)
    with pytest.raises(ValueError, match="gamma must be an int >= 1"):
        SpecBeamDecoder(target, draft, trie, 3, 3, gamma=0)
    with pytest.raises(ValueError, match="num_beams"):
        SpecBeamDecoder(target, draft, trie, 0, 3)
    with pytest.raises(ValueError, match="verification must be"):
        SpecBeamDecoder(target, draft, trie, 3, 3, verification="fuzzy")
    with pytest.raises(ValueError, match="draft_policy"):
        SpecBeamDecoder(target, draft, trie, 3, 3, draft_policy="greedy")
    with pytest.raises(ValueError, match="skip_exhaustive_draft must be a bool"):
        SpecBeamDecoder(target, draft, trie, 3, 3, skip_exhaustive_draft=1)
    with pytest.raises(ValueError, match="exact verification compares .* target scores 64 tokens and draft 72"):
        SpecBeamDecoder(target, tiny_model("llama", VOCAB + 8, seed=2, layers=1), trie, 3, 3, verification="exact")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        SpecBeamDecoder(target, draft, ItemTrie([[3, 70]]), 3, 3)
    dec = SpecBeamDecoder(target, draft, trie, 3, 4)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        dec.generate([[5, 64]])
    with pytest.raises(ValueError, match="int64"):
        dec.generate(torch.ones(2, 3))


@requires_cuda
def test_gpu_lossless_and_matches_cpu():
    target = tiny_model("llama", VOCAB, seed=8)
    draft = tiny_model("qwen2", VOCAB, seed=9, layers=1)
    trie = ItemTrie(random_identifiers(150, 4, 5, seed=8, shared=3), eos_token_id=EOS)
    prompts = random_prompts([3, 10, 6], VOCAB, seed=8)
    cpu = SpecBeamDecoder(target, draft, trie, 10, 20, 3).generate(prompts)
    gpu = SpecBeamDecoder(target.cuda(), draft.cuda(), trie, 10, 20, 3).generate(prompts)
    assert torch.equal(cpu.sequences, gpu.sequences.cpu()) and cpu.stats.target_calls == gpu.stats.target_calls
    assert_identical(gpu, BeamSearchDecoder(target, trie, 10).generate(prompts))


def test_caches_are_compacted_to_the_ancestors_of_the_beams():
    target = tiny_model("llama", VOCAB, seed=10)
    draft = tiny_model("llama", VOCAB, seed=11, layers=1)
    trie = ItemTrie(random_identifiers(300, 4, 6, seed=10), eos_token_id=EOS)   # depth 5
    ids, mask = left_pad(random_prompts([12, 5], VOCAB, seed=10))
    K, N = 5, 40
    seen = {"target": [], "draft": []}

    def recorder(name):
        def hook(module, args, kwargs):
            cache = kwargs.get("cache") or kwargs.get("past_key_values")
            seen[name].append(cache.get_seq_length() if cache is not None else 0)
        return hook

    hooks = [target.model.register_forward_pre_hook(recorder("target"), with_kwargs=True),
             draft.model.register_forward_pre_hook(recorder("draft"), with_kwargs=True)]
    try:
        out = SpecBeamDecoder(target, draft, trie, K, N, gamma=1).generate(ids, mask)
    finally:
        for h in hooks:
            h.remove()
    assert_identical(out, BeamSearchDecoder(target, trie, K).generate(ids, mask))
    assert len(seen["target"]) >= 3
    # Before each call a cache holds the prompt plus at most the K beams' paths (and, for the draft, one
    # drafted level), not every node ever drafted (which would grow by K + N per round).
    assert max(seen["target"]) <= 12 + K * trie.depth
    assert max(seen["draft"]) <= 12 + K * trie.depth + N


def test_lossless_with_float64_as_torch_default_dtype():
    target, draft = tiny_model("llama", VOCAB, seed=3), tiny_model("llama", VOCAB, seed=53, layers=1)
    trie = ItemTrie(random_identifiers(100, 3, 5, seed=3), eos_token_id=EOS)
    prompts = random_prompts([5, 2], VOCAB, seed=3)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:  # the decoders' own score tensors stay float32, as the ops require
        assert_identical(SpecBeamDecoder(target, draft, trie, 4, 8, 2).generate(prompts),
                         BeamSearchDecoder(target, trie, 4).generate(prompts))
    finally:
        torch.set_default_dtype(previous)


def test_cache_tensors_of_mixed_shapes_and_dtypes_compact_alike():
    """Compaction groups the cache tensors by shape and dtype (keys wider than values as in MLA models, float32
    keys beside bfloat16 values under autocast): each comes out as if compacted alone."""
    from atspeed_ext import _ops
    from atspeed_ext.tree_kv import compact_all

    g = torch.Generator().manual_seed(0)
    keep = torch.tensor([[0, 1, 2, 4, 7, -1], [0, 1, 2, 3, 5, 8]])  # slot indices kept, -1 padding
    tensors = [torch.randn(2, 3, 9, 8, generator=g), torch.randn(2, 3, 9, 4, generator=g).bfloat16(),
               torch.randn(2, 3, 9, 8, generator=g), torch.randn(2, 3, 9, 4, generator=g).bfloat16()]
    for got, t in zip(compact_all(tensors, keep), tensors):
        (alone,) = _ops.compact_kv([t], keep)
        assert got.dtype == t.dtype and torch.equal(got, alone)


def test_lossless_on_a_model_whose_keys_and_values_differ_in_width():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "DeepseekV3ForCausalLM"):
        pytest.skip("this transformers has no DeepSeek-V3 (multi-head latent attention)")
    torch.manual_seed(0)
    cfg = transformers.DeepseekV3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
        topk_group=1, first_k_dense_replace=2, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=4)
    model = transformers.DeepseekV3ForCausalLM(cfg).double().eval()
    trie = ItemTrie(random_identifiers(40, 3, 4, seed=1), eos_token_id=EOS)
    prompts = random_prompts([3, 5], VOCAB, seed=1)
    assert_identical(SpecBeamDecoder(model, model, trie, 4, 8, 2).generate(prompts),
                     BeamSearchDecoder(model, trie, 4).generate(prompts))


def test_sliding_window_models_are_refused_when_the_cache_could_outgrow_the_window():
    """At a window equal to the decoders' cache bound the decode is refused; one more and it runs, identical to
    the same weights with full attention (so the bound is not too small)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from atspeed_ext._inputs import beam_cache_slots, spec_cache_slots

    def qwen2(window, seed=0):  # the same weights whatever the window (None: full attention)
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            use_sliding_window=window is not None, sliding_window=window,
                                            max_window_layers=0, max_position_embeddings=256)).double().eval()

    trie = ItemTrie(random_identifiers(60, 3, 4, seed=2), eos_token_id=EOS)  # depth 4
    prompts = random_prompts([6, 3], VOCAB, seed=2)
    full = qwen2(None)
    K = 4
    ref = BeamSearchDecoder(full, trie, K).generate(prompts)
    bound = beam_cache_slots(6, K, 4)
    assert bound == 6 + 4 * 3
    with pytest.raises(ValueError, match=f"window of {bound} tokens.*may need up to {bound} cache slots"):
        BeamSearchDecoder(qwen2(bound), trie, K).generate(prompts)
    assert_identical(BeamSearchDecoder(qwen2(bound + 1), trie, K).generate(prompts), ref)
    for N, gamma in ((4, 3), (8, 2), (8, 1)):
        bound = spec_cache_slots(6, K, N, gamma, 4, batch=len(prompts))
        with pytest.raises(ValueError, match=f"target .* window of {bound} tokens"):
            SpecBeamDecoder(qwen2(bound), full, trie, K, N, gamma).generate(prompts)
        with pytest.raises(ValueError, match=f"draft .* window of {bound} tokens"):
            SpecBeamDecoder(full, qwen2(bound), trie, K, N, gamma).generate(prompts)
        narrow, unrelated_draft = qwen2(bound + 1), qwen2(bound + 1, seed=1)  # a draft that is often rejected
        for draft in (narrow, unrelated_draft):
            for policy in ("beam", "anchored"):
                assert_identical(SpecBeamDecoder(narrow, draft, trie, K, N, gamma, draft_policy=policy)
                                 .generate(prompts), ref)


def test_a_draft_with_a_padded_vocabulary_is_lossless():
    """Embedding tables padded to different sizes (a small and a large Qwen2.5 differ so) share one tokenizer:
    strict verification only needs both models to read and score every trie token."""
    target = tiny_model("qwen2", VOCAB, seed=4)
    trie = ItemTrie(random_identifiers(80, 3, 5, seed=4), eos_token_id=EOS)
    prompts = random_prompts([5, 9, 2], VOCAB, seed=4)
    ref = BeamSearchDecoder(target, trie, 4).generate(prompts)
    for padded in (tiny_model("qwen2", VOCAB + 24, seed=54, layers=1), tiny_model("qwen2", VOCAB, seed=54, layers=1)):
        assert_identical(SpecBeamDecoder(target, padded, trie, 4, 8, 2).generate(prompts), ref)
    assert_identical(SpecBeamDecoder(tiny_model("qwen2", VOCAB + 24, seed=4), tiny_model("qwen2", VOCAB, seed=54,
                                     layers=1), trie, 4, 8, 2).generate(prompts),
                     BeamSearchDecoder(tiny_model("qwen2", VOCAB + 24, seed=4), trie, 4).generate(prompts))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):  # prompts must fit both models
        SpecBeamDecoder(target, tiny_model("qwen2", VOCAB + 24, seed=54, layers=1), trie, 4, 8).generate([[70]])

"""Beam sampling decoders (BeamSearchDecoder(do_sample=True), SpecBeamDecoder relaxed / exact): valid outputs
(trie items, the target's own scores, best first), consistent costs, edge cases and errors. Their sampling
distributions are tested in test_sampling_stats.py."""

import pytest
import torch

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder
from conftest import left_pad, random_identifiers, random_prompts, requires_cuda, tiny_model

VOCAB = 64
EOS = 2


def target_scores(model, prompts, sequences, valid):
    """Sum of the target's full-vocabulary log-probabilities along each valid sequence (teacher forcing)."""
    out = torch.full(valid.shape, float("-inf"), dtype=torch.float64)
    with torch.no_grad():
        for b, prompt in enumerate(prompts):
            for k in range(valid.shape[1]):
                if not valid[b, k]:
                    continue
                seq = sequences[b, k].tolist()
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + seq])).logits[0].double(), -1)
                out[b, k] = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(seq))
    return out


def assert_valid_samples(out, trie, model, prompts, K):
    valid = out.valid
    assert (out.sequences[~valid] == -1).all() and torch.isinf(out.scores[~valid]).all()
    for b in range(len(prompts)):
        n = int(valid[b].sum())
        assert valid[b, :n].all()                                   # valid slots first
        seqs = [tuple(s) for s in out.sequences[b, :n].tolist()]
        assert len(set(seqs)) == n and all(trie.contains(s) for s in seqs)
        assert torch.all(out.scores[b, :n][:-1] >= out.scores[b, :n][1:])   # best first
        assert out.item_ids[b][:n] == [trie.items_of(s) for s in seqs]
    torch.testing.assert_close(out.scores[valid].double(), target_scores(model, prompts, out.sequences, valid)[valid],
                               atol=1e-5, rtol=0)


def assert_stats_consistent(out, depth, num_requests):
    s = out.stats
    assert len(s.target_calls) == len(s.accepted_levels) == num_requests
    for calls, levels in zip(s.target_calls, s.accepted_levels):
        assert calls == len(levels) >= 1
        assert sum(n + 1 for n in levels) == depth


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("num_beams", [1, 3, 10])
def test_beam_sampling_outputs_are_valid(family, num_beams):
    model = tiny_model(family, VOCAB, seed=1)
    for eos in (None, EOS):
        trie = ItemTrie(random_identifiers(120, 3, 6, seed=1, shared=4), eos_token_id=eos)
        prompts = random_prompts([7, 3, 12, 1], VOCAB, seed=1)
        out = BeamSearchDecoder(model, trie, num_beams, do_sample=True, temperature=1.5, seed=0).generate(prompts)
        assert out.valid.all()
        assert_valid_samples(out, trie, model, prompts, num_beams)


@pytest.mark.parametrize("verification", ["relaxed", "exact"])
@pytest.mark.parametrize("policy", ["beam", "anchored"])
@pytest.mark.parametrize("num_beams, gamma", [(1, 3), (3, 1), (5, 2), (10, 3)])
def test_speculative_sampling_outputs_are_valid(verification, policy, num_beams, gamma):
    target = tiny_model("llama", VOCAB, seed=2)
    draft = tiny_model("qwen2", VOCAB, seed=3, layers=1)
    trie = ItemTrie(random_identifiers(150, 4, 5, seed=2, shared=3), eos_token_id=EOS)
    ids, mask = left_pad(random_prompts([7, 3, 12, 1], VOCAB, seed=2))
    prompts = random_prompts([7, 3, 12, 1], VOCAB, seed=2)
    for N in sorted({num_beams, 2 * num_beams, 12}):
        dec = SpecBeamDecoder(target, draft, trie, num_beams, N, gamma, verification=verification,
                              draft_policy=policy, temperature=0.8, seed=N)
        out = dec.generate(ids, mask)
        assert out.valid.all()
        assert_valid_samples(out, trie, target, prompts, num_beams)
        assert_stats_consistent(out, trie.depth, 4)


def test_fewer_identifiers_than_beams():
    target = tiny_model("llama", VOCAB, seed=6)
    draft = tiny_model("llama", VOCAB, seed=7, layers=1)
    trie = ItemTrie([[3, 10, 20], [3, 10, 21], [4, 11, 22], [4, 11, 22]])
    prompts = random_prompts([5, 8], VOCAB, seed=6)
    decoders = [BeamSearchDecoder(target, trie, 5, do_sample=True, seed=1)] + [
        SpecBeamDecoder(target, draft, trie, 5, 8, 2, verification=v, seed=1) for v in ("relaxed", "exact")]
    for dec in decoders:
        out = dec.generate(prompts)
        assert out.valid.sum(1).tolist() == [3, 3]                  # every identifier, then invalid slots
        assert_valid_samples(out, trie, target, prompts, 5)


def test_a_draft_equal_to_the_target_makes_exact_sampling_cost_one_target_call():
    target = tiny_model("llama", VOCAB, seed=3)
    trie = ItemTrie(random_identifiers(200, 4, 5, seed=3))              # L = 4, gamma = 3: one round
    prompts = random_prompts([5, 9, 2], VOCAB, seed=3)
    for K, N in ((1, 1), (5, 5), (5, 12)):
        out = SpecBeamDecoder(target, target, trie, K, N, 3, verification="exact", seed=0).generate(prompts)
        assert out.stats.target_calls == [1, 1, 1] and out.stats.accepted_levels == [[3], [3], [3]]


def test_low_temperature_sampling_is_beam_search():
    # As T -> 0 the sampling law concentrates on the top-K: with clear logit gaps the samples are the beams.
    target = tiny_model("llama", VOCAB, seed=4)
    draft = tiny_model("qwen2", VOCAB, seed=5, layers=1)
    trie = ItemTrie(random_identifiers(100, 3, 5, seed=4))
    prompts = random_prompts([6, 4], VOCAB, seed=4)
    ref = BeamSearchDecoder(target, trie, 3).generate(prompts)
    for dec in (BeamSearchDecoder(target, trie, 3, do_sample=True, temperature=1e-4, seed=0),
                SpecBeamDecoder(target, draft, trie, 3, 6, 2, verification="exact", temperature=1e-4, seed=0)):
        assert torch.equal(dec.generate(prompts).sequences, ref.sequences)


def test_bad_options_raise_clear_errors():
    target = tiny_model("llama", VOCAB, seed=0)
    draft = tiny_model("llama", VOCAB, seed=1, layers=1)
    trie = ItemTrie(random_identifiers(30, 3, 4, seed=0))
    with pytest.raises(ValueError, match="verification must be one of"):
        SpecBeamDecoder(target, draft, trie, 3, 3, verification="fuzzy")
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            SpecBeamDecoder(target, draft, trie, 3, 3, verification="exact", temperature=bad)
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            BeamSearchDecoder(target, trie, 3, do_sample=True, temperature=bad)
    with pytest.raises(ValueError, match="only apply to sampling verification"):
        SpecBeamDecoder(target, draft, trie, 3, 3, temperature=0.5)
    with pytest.raises(ValueError, match="only apply to sampling verification"):
        SpecBeamDecoder(target, draft, trie, 3, 3, verification="strict", seed=1)
    with pytest.raises(ValueError, match="pass do_sample=True"):
        BeamSearchDecoder(target, trie, 3, temperature=0.5)
    with pytest.raises(ValueError, match="pass do_sample=True"):
        BeamSearchDecoder(target, trie, 3, seed=0)
    with pytest.raises(ValueError, match="do_sample must be a bool"):
        BeamSearchDecoder(target, trie, 3, do_sample=1)
    for bad in (-1, 2 ** 64, 1.5, True):
        with pytest.raises(ValueError, match="seed must be None or an int"):
            SpecBeamDecoder(target, draft, trie, 3, 3, verification="relaxed", seed=bad)
    with pytest.raises(ValueError, match="draft_policy"):
        SpecBeamDecoder(target, draft, trie, 3, 3, verification="exact", draft_policy="greedy")
    assert SpecBeamDecoder(target, draft, trie, 3, 3, verification="exact").draft_policy == "anchored"
    assert SpecBeamDecoder(target, draft, trie, 3, 3, verification="relaxed").draft_policy == "beam"
    assert SpecBeamDecoder(target, draft, trie, 3, 3).draft_policy == "beam"


def test_mixed_model_dtypes():
    # A float32 draft with a float64 target: the verification ops see both as float32 (lossless for them).
    target = tiny_model("llama", VOCAB, seed=8)
    draft = tiny_model("qwen2", VOCAB, seed=9, layers=1, dtype=torch.float32)
    trie = ItemTrie(random_identifiers(80, 3, 5, seed=8))
    prompts = random_prompts([4, 7], VOCAB, seed=8)
    for v in ("relaxed", "exact"):
        out = SpecBeamDecoder(target, draft, trie, 3, 6, 2, verification=v, seed=2).generate(prompts)
        assert_valid_samples(out, trie, target, prompts, 3)


@requires_cuda
@pytest.mark.parametrize("verification", ["relaxed", "exact"])
def test_gpu_gives_the_cpu_samples(verification):
    # The uniforms come from a host generator: the same seed gives the same samples on both devices (up to
    # float rounding of the models, which does not move these decisions).
    target = tiny_model("llama", VOCAB, seed=8)
    draft = tiny_model("qwen2", VOCAB, seed=9, layers=1)
    trie = ItemTrie(random_identifiers(150, 4, 5, seed=8, shared=3), eos_token_id=EOS)
    prompts = random_prompts([3, 10, 6], VOCAB, seed=8)
    cpu = SpecBeamDecoder(target, draft, trie, 10, 20, 3, verification=verification, seed=4).generate(prompts)
    base_cpu = BeamSearchDecoder(target, trie, 10, do_sample=True, seed=4).generate(prompts)
    target, draft = target.cuda(), draft.cuda()  # in place: every decode below runs on the GPU
    gpu = SpecBeamDecoder(target, draft, trie, 10, 20, 3, verification=verification, seed=4).generate(prompts)
    base_gpu = BeamSearchDecoder(target, trie, 10, do_sample=True, seed=4).generate(prompts)
    assert cpu.sequences.device.type == base_cpu.sequences.device.type == "cpu"
    assert gpu.sequences.device.type == base_gpu.sequences.device.type == "cuda"
    assert torch.equal(cpu.sequences, gpu.sequences.cpu()) and cpu.stats.accepted_levels == gpu.stats.accepted_levels
    assert torch.equal(base_cpu.sequences, base_gpu.sequences.cpu())

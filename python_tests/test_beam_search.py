"""BeamSearchDecoder equals Hugging Face generate with a trie hook, shares the prompt cache, rejects bad input."""

import pytest
import torch

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder
from atspeed_ext.hf import hf_constrained_beam_search
from conftest import CUDA, left_pad, random_identifiers, random_prompts, requires_cuda, tiny_model

VOCAB = 64
EOS = 2


def assert_same_beams(ours, hf):
    # Valid slots agree exactly (same sequences, same order); HF pads with -inf beams where we mark invalid.
    assert torch.equal(ours.valid, hf.valid)
    assert torch.equal(ours.sequences[ours.valid], hf.sequences[hf.valid])
    torch.testing.assert_close(ours.scores[ours.valid], hf.scores[hf.valid], atol=1e-5, rtol=0)
    assert ours.item_ids == hf.item_ids


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("num_beams", [1, 3, 5, 10, 20])
@pytest.mark.parametrize("eos", [None, EOS])
def test_identical_to_hf_generate(family, num_beams, eos):
    for seed in range(6):
        model = tiny_model(family, VOCAB, seed=seed)
        trie = ItemTrie(random_identifiers(120, 3, 6, seed=seed, shared=4), eos_token_id=eos)
        ids, mask = left_pad(random_prompts([7, 3, 12, 1], VOCAB, seed=seed))
        ours = BeamSearchDecoder(model, trie, num_beams=num_beams).generate(ids, mask)
        hf = hf_constrained_beam_search(model, trie, ids, mask, num_beams)
        assert_same_beams(ours, hf)
        assert ours.sequences.shape == (4, num_beams, trie.depth)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_identical_to_hf_generate_in_float32(family):
    for seed in range(3):
        model = tiny_model(family, VOCAB, seed=seed, dtype=torch.float32)
        trie = ItemTrie(random_identifiers(200, 4, 5, seed=seed, shared=2), eos_token_id=EOS)
        ids, mask = left_pad(random_prompts([9, 4, 15], VOCAB, seed=seed))
        assert_same_beams(BeamSearchDecoder(model, trie, 10).generate(ids, mask),
                          hf_constrained_beam_search(model, trie, ids, mask, 10))


@pytest.mark.parametrize("num_beams", [1, 5])
def test_the_models_own_generation_settings_do_not_change_the_baseline(num_beams):
    # Instruct checkpoints ship repetition penalties, n-gram bans, length penalties...: the baseline is plain
    # constrained beam search whatever the model's generation_config says, and leaves that config as it was.
    model = tiny_model("qwen2", VOCAB, seed=3)
    trie = ItemTrie(random_identifiers(120, 3, 6, seed=3), eos_token_id=EOS)
    ids, mask = left_pad(random_prompts([7, 3, 12], VOCAB, seed=3))
    want = hf_constrained_beam_search(model, trie, ids, mask, num_beams)
    settings = dict(repetition_penalty=1.3, no_repeat_ngram_size=1, length_penalty=0.0, min_new_tokens=10)
    for key, value in settings.items():
        setattr(model.generation_config, key, value)
    got = hf_constrained_beam_search(model, trie, ids, mask, num_beams)
    assert_same_beams(got, want)
    assert_same_beams(BeamSearchDecoder(model, trie, num_beams).generate(ids, mask), got)
    assert all(getattr(model.generation_config, k) == v for k, v in settings.items())


def test_fewer_identifiers_than_beams_come_out_invalid():
    model = tiny_model("llama", VOCAB, seed=4)
    rows = [[3, 10, 20], [3, 10, 21], [4, 11, 22], [4, 11, 22]]  # 3 distinct identifiers, 4 items
    trie = ItemTrie(rows)
    ids, mask = left_pad(random_prompts([5, 8], VOCAB, seed=4))
    ours = BeamSearchDecoder(model, trie, num_beams=5).generate(ids, mask)
    assert ours.valid.tolist() == [[True] * 3 + [False] * 2] * 2
    assert (ours.sequences[~ours.valid] == -1).all() and torch.isinf(ours.scores[~ours.valid]).all()
    assert sorted(map(tuple, ours.sequences[0, :3].tolist())) == [(3, 10, 20), (3, 10, 21), (4, 11, 22)]
    shared = [ours.item_ids[0][k] for k in range(3) if ours.sequences[0, k].tolist() == [4, 11, 22]]
    assert shared == [[2, 3]]
    assert ours.item_ids[0][3:] == [[], []]
    assert_same_beams(ours, hf_constrained_beam_search(model, trie, ids, mask, 5))


def test_valid_count_is_min_of_beams_and_identifiers():
    model = tiny_model("qwen2", VOCAB, seed=5)
    trie = ItemTrie(random_identifiers(9, 3, 3, seed=5))
    distinct = len({tuple(r) for r in random_identifiers(9, 3, 3, seed=5).tolist()})
    out = BeamSearchDecoder(model, trie, num_beams=20).generate(random_prompts([4], VOCAB, seed=1))
    assert int(out.valid.sum()) == min(20, distinct)


def test_list_prompts_equal_padded_tensor_prompts():
    model = tiny_model("llama", VOCAB, seed=6)
    trie = ItemTrie(random_identifiers(80, 3, 5, seed=6), eos_token_id=EOS)
    prompts = random_prompts([2, 9, 5], VOCAB, seed=6)
    dec = BeamSearchDecoder(model, trie, 5)
    a = dec.generate(prompts)
    b = dec.generate(*left_pad(prompts, pad=7))  # the pad token's value must not matter
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.scores, b.scores)
    # A request decodes the same alone as in a batch.
    c = dec.generate([prompts[1]])
    assert torch.equal(c.sequences[0], a.sequences[1])
    torch.testing.assert_close(c.scores[0], a.scores[1], atol=1e-6, rtol=0)


def test_prompt_is_prefilled_once_and_the_cache_is_not_copied_per_beam():
    model = tiny_model("llama", VOCAB, seed=7)
    trie = ItemTrie(random_identifiers(100, 4, 5, seed=7))
    ids, mask = left_pad(random_prompts([6, 11], VOCAB, seed=7))
    calls = []
    hook = model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append((tuple(kwargs["input_ids"].shape),
                                                (kwargs.get("cache") or kwargs.get("past_key_values")).get_seq_length()
                                                if (kwargs.get("cache") or kwargs.get("past_key_values")) is not None else 0)),
        with_kwargs=True)
    try:
        BeamSearchDecoder(model, trie, num_beams=10).generate(ids, mask)
    finally:
        hook.remove()
    # One prefill of [B, T], then depth - 1 steps of K tokens per request row; the cache grows by K per step.
    assert calls == [((2, 11), 0), ((2, 10), 11), ((2, 10), 21), ((2, 10), 31)]


def test_bad_input_raises_clear_errors():
    model = tiny_model("llama", VOCAB, seed=0)
    trie = ItemTrie(random_identifiers(30, 3, 4, seed=0))
    with pytest.raises(ValueError, match="num_beams must be an int >= 1"):
        BeamSearchDecoder(model, trie, 0)
    with pytest.raises(ValueError, match="num_beams"):
        BeamSearchDecoder(model, trie, 2.0)
    with pytest.raises(ValueError, match="num_beams"):
        BeamSearchDecoder(model, trie, True)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        BeamSearchDecoder(model, ItemTrie([[3, 70]]), 2)
    with pytest.raises(ValueError, match="built for a vocabulary of 100 tokens \\(its largest token id is 9\\)"):
        BeamSearchDecoder(model, ItemTrie([[5, 9]], vocab_size=100), 2)
    with pytest.raises(TypeError, match="ItemTrie"):
        BeamSearchDecoder(model, [[3, 4]], 2)
    dec = BeamSearchDecoder(model, trie, 3)
    ids, mask = left_pad([[5, 6, 7], [8]])
    with pytest.raises(ValueError, match="int64"):
        dec.generate(ids.float(), mask)
    with pytest.raises(ValueError, match="2-D"):
        dec.generate(ids[0], None)
    with pytest.raises(ValueError, match="shape of input_ids"):
        dec.generate(ids, mask[:, 1:])
    with pytest.raises(ValueError, match="left-padded"):
        dec.generate(ids, mask.flip(1))
    with pytest.raises(ValueError, match="only 0 and 1"):
        dec.generate(ids, mask * 2)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        dec.generate([[5, 64]])
    np = pytest.importorskip("numpy")  # numpy integer prompts are prompts like any other
    assert torch.equal(dec.generate([list(np.array([5, 6, 7]))]).sequences, dec.generate([[5, 6, 7]]).sequences)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        dec.generate([[-1, 5]])
    with pytest.raises(ValueError, match="empty"):
        dec.generate([[5], []])
    with pytest.raises(ValueError, match="empty list"):
        dec.generate([])
    with pytest.raises(TypeError, match="input_ids must be"):
        dec.generate("hello")
    with pytest.raises(ValueError, match="a single prompt .*pass a list of prompts"):
        dec.generate([5, 6, 7])
    with pytest.raises(ValueError, match="one prompt\\? pass it as \\[1, length\\]"):
        dec.generate(torch.tensor([5, 6, 7]))
    want = dec.generate(ids, mask)  # a numpy [B, T] array (and mask) is the tensor it holds
    got = dec.generate(ids.numpy(), mask.numpy())
    assert torch.equal(got.sequences, want.sequences) and torch.equal(got.scores, want.scores)
    got.sequences[~got.valid] = 0  # outputs are ordinary tensors (not inference tensors): editable in place
    got.scores.add_(1.0)
    meta = tiny_model("llama", VOCAB, seed=0).to("meta")
    with pytest.raises(ValueError, match="parameters on the 'meta' device .*never loaded"):
        BeamSearchDecoder(meta, trie, 3)
    if not CUDA:
        return
    with pytest.raises(ValueError, match="is on cuda"):
        dec.generate(ids.cuda(), mask.cuda())


@requires_cuda
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gpu_matches_cpu(family):
    model = tiny_model(family, VOCAB, seed=8)
    trie = ItemTrie(random_identifiers(150, 4, 5, seed=8, shared=3), eos_token_id=EOS)
    prompts = random_prompts([3, 10, 6], VOCAB, seed=8)
    cpu = BeamSearchDecoder(model, trie, 10).generate(prompts)
    gpu = BeamSearchDecoder(model.cuda(), trie, 10).generate(prompts)
    assert torch.equal(cpu.sequences, gpu.sequences.cpu()) and cpu.item_ids == gpu.item_ids
    torch.testing.assert_close(cpu.scores, gpu.scores.cpu(), atol=1e-5, rtol=0)


def test_numpy_integers_are_ints():
    # K, seeds and widths computed with numpy were refused ("must be an int").
    np = pytest.importorskip("numpy")
    model = tiny_model("llama", VOCAB, seed=0)
    trie = ItemTrie(random_identifiers(30, 3, 4, seed=0))
    prompts = [[5, 6, 7], [8]]
    want = BeamSearchDecoder(model, trie, 3).generate(prompts)
    got = BeamSearchDecoder(model, trie, np.int64(3)).generate(prompts)
    assert torch.equal(got.sequences, want.sequences)
    a = BeamSearchDecoder(model, trie, 3, do_sample=True, seed=np.uint64(7),
                          temperature=np.float32(1)).generate(prompts)
    b = BeamSearchDecoder(model, trie, 3, do_sample=True, seed=7).generate(prompts)
    assert torch.equal(a.sequences, b.sequences)
    draft = tiny_model("llama", VOCAB, seed=1, layers=1)
    spec = SpecBeamDecoder(model, draft, trie, np.int32(3), [np.int64(6), 4], np.int64(2))
    assert (spec.num_beams, spec.gamma, spec.draft_beams) == (3, 2, (6, 4))
    assert torch.equal(spec.generate(prompts).sequences, want.sequences)
    for widths in (np.array([6, 4]), torch.tensor([6, 4]), range(6, 3, -2)):  # array-likes of widths by depth
        assert SpecBeamDecoder(model, draft, trie, 3, widths, 2).draft_beams == (6, 4)
    assert SpecBeamDecoder(model, draft, trie, 3, torch.tensor(6), 2).draft_beams == 6


def test_the_hf_baseline_checks_its_inputs_like_the_decoder():
    # num_beams=0 raised ZeroDivisionError, list prompts AttributeError, out-of-vocabulary tokens IndexError.
    model = tiny_model("llama", VOCAB, seed=0)
    trie = ItemTrie(random_identifiers(30, 3, 4, seed=0))
    ids, mask = left_pad([[5, 6, 7], [8]])
    for bad, message in ((lambda: hf_constrained_beam_search(model, trie, ids, mask, 0), "num_beams must be an int"),
                         (lambda: hf_constrained_beam_search(model, trie, [[5, VOCAB + 3]], None, 2), "vocabulary"),
                         (lambda: hf_constrained_beam_search(model, [[3, 4]], ids, mask, 2), "ItemTrie")):
        with pytest.raises((ValueError, TypeError), match=message):
            bad()
    from_lists = hf_constrained_beam_search(model, trie, [[5, 6, 7], [8]], None, 3)  # as the decoder takes them
    assert torch.equal(from_lists.sequences, hf_constrained_beam_search(model, trie, ids, mask, 3).sequences)

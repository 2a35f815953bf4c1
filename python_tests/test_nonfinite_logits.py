"""A model whose logits hold NaN or +inf in a row a decoder ranks is a clear error, not K invalid beams; -inf
logits (masked tokens) and NaN in rows never ranked (padding slots, dead beams) change nothing."""

import math

import pytest
import torch

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder
from conftest import random_identifiers, random_prompts, tiny_model

VOCAB = 64


def trie_and_prompts():
    # 4 codes per level: level 1 has at most 4 nodes, so K = 5 leaves a dead beam and N = 8 padding slots
    return ItemTrie(random_identifiers(40, 3, 4, seed=3)), random_prompts([5, 3, 7], VOCAB, seed=3)


def decoders(target, draft, trie):
    return [BeamSearchDecoder(target, trie, 5),
            SpecBeamDecoder(target, draft, trie, 5, 8, 2),
            SpecBeamDecoder(target, draft, trie, 5, 8, 2, verification="relaxed", seed=0)]


def poison_logits(model, value, where):
    """A forward hook writing ``value`` into the logits at the positions ``where(input_ids, logits)`` selects;
    returns the hook handle and a counter of the entries written."""
    written = [0]

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"][:, -output.logits.shape[1]:]
        sel = where(ids, output.logits)
        output.logits[sel] = value
        written[0] += int(sel.sum())
        return output

    return model.register_forward_hook(hook, with_kwargs=True), written


def last_column(ids, logits):
    sel = torch.zeros(logits.shape, dtype=torch.bool)
    sel[..., -1] = True
    return sel


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_target_nan_or_posinf_is_a_clear_error(bad):
    """One NaN or +inf logit per row, in a column no identifier uses: it still poisons the row's log-softmax."""
    trie, prompts = trie_and_prompts()
    assert int(trie.child_tokens.max()) < VOCAB - 1
    target, draft = tiny_model(seed=1), tiny_model(seed=2)
    handle, written = poison_logits(target, bad, last_column)
    try:
        for decoder in decoders(target, draft, trie):
            label = "the model" if isinstance(decoder, BeamSearchDecoder) else "the target model"
            with pytest.raises(FloatingPointError,
                               match=f"^{label} produced NaN or \\+inf logits for a beam or tree node it scored"):
                decoder.generate(prompts)
    finally:
        handle.remove()
    assert written[0] > 0


def test_draft_nan_is_a_clear_error():
    trie, prompts = trie_and_prompts()
    target, draft = tiny_model(seed=1), tiny_model(seed=2)
    handle, _ = poison_logits(draft, float("nan"), last_column)
    try:
        for decoder in decoders(target, draft, trie)[1:]:
            with pytest.raises(FloatingPointError, match="^the draft model produced NaN"):
                decoder.generate(prompts)
    finally:
        handle.remove()


def test_nan_below_a_kept_beam_is_caught_in_every_decoder():
    """NaN only in the rows fed a level-1 token that beam search keeps (prompts never hold trie tokens): beam search
    reads that row at its second step, and the speculative decoder reads it too, as a drafted node of round one.
    Poisoning the draft the same way (gamma 2: it drafts level 2 from that node) is caught as the draft's."""
    trie, _ = trie_and_prompts()
    prompts = [[20, 31, 40, 22, 50], [33, 17, 60], [45, 52, 18, 29, 61, 38, 44]]
    assert not set(sum(prompts, [])) & set(trie.child_tokens.tolist())
    target, draft = tiny_model(seed=1), tiny_model(seed=2)
    kept = int(BeamSearchDecoder(target, trie, 5).generate(prompts).sequences[0, 0, 0])
    after_kept = lambda ids, logits: (ids == kept).unsqueeze(-1).expand(logits.shape)  # noqa: E731
    for poisoned, label, chosen in ((target, "the model", decoders(target, draft, trie)[:1]),
                                    (target, "the target model", decoders(target, draft, trie)[1:]),
                                    (draft, "the draft model", decoders(target, draft, trie)[1:])):
        handle, written = poison_logits(poisoned, float("nan"), after_kept)
        try:
            for decoder in chosen:
                with pytest.raises(FloatingPointError, match=f"^{label} produced NaN"):
                    decoder.generate(prompts)
        finally:
            handle.remove()
        assert written[0] > 0


def test_neg_inf_logits_are_legitimate():
    """A model masking tokens with -inf (here every second level-1 code) decodes without error; the masked codes
    never appear and speculation still equals beam search."""
    trie, prompts = trie_and_prompts()
    target, draft = tiny_model(seed=1), tiny_model(seed=2)
    level1 = trie.child_tokens[: int(trie.child_offsets[1])]
    masked = level1[::2]
    handles = [poison_logits(m, float("-inf"), lambda ids, logits: torch.zeros(
        logits.shape, dtype=torch.bool).index_fill_(2, masked, True))[0] for m in (target, draft)]
    try:
        ref = BeamSearchDecoder(target, trie, 5).generate(prompts)
        spec = SpecBeamDecoder(target, draft, trie, 5, 8, 2).generate(prompts)
    finally:
        for h in handles:
            h.remove()
    assert not torch.isin(ref.sequences[..., 0][ref.valid], masked).any()
    assert ref.valid.any(1).all() and torch.isfinite(ref.scores[ref.valid]).all()
    assert torch.equal(spec.sequences, ref.sequences)
    torch.testing.assert_close(spec.scores, ref.scores, atol=1e-5, rtol=0)


def test_nan_in_rows_never_ranked_changes_nothing():
    """Both decoders feed token 0 (never in a prompt or the trie here) to padding slots and dead beams; NaN in
    those rows' logits is not looked at: no error, and the same results as without it."""
    trie, prompts = trie_and_prompts()
    assert not any(0 in p for p in prompts) and int(trie.child_tokens.min()) > 0
    target, draft = tiny_model(seed=1), tiny_model(seed=2)
    clean = [d.generate(prompts) for d in decoders(target, draft, trie)]
    hooks = [poison_logits(m, float("nan"), lambda ids, logits: (ids == 0).unsqueeze(-1).expand(logits.shape))
             for m in (target, draft)]
    try:
        poisoned = [d.generate(prompts) for d in decoders(target, draft, trie)]
    finally:
        for h, _ in hooks:
            h.remove()
    assert hooks[0][1][0] > 0 and hooks[1][1][0] > 0     # NaN rows were really there, in both models
    for a, b in zip(clean, poisoned):
        assert torch.equal(a.sequences, b.sequences)
        assert torch.equal(a.scores, b.scores)
    assert not any(math.isnan(s) for s in clean[0].scores.flatten().tolist())

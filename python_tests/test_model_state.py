"""The decoders read the model as it is at each call: embeddings resized after a decoder was built, models wrapped
by torch.compile, models left in training mode (dropout warns), attention implementations that crash on the CPU
or take no 4-D mask (refused), and callers that themselves run under inference mode (the outputs stay ordinary tensors)."""

import re
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder
from atspeed_ext._hf_compat import ForwardSignature
from atspeed_ext.tree_kv import TreeKV
from conftest import random_identifiers, random_prompts, tiny_model

VOCAB = 64


def trie_and_prompts(seed=0):
    return ItemTrie(random_identifiers(40, 3, 4, seed=seed)), random_prompts([5, 3, 7], VOCAB, seed=seed)


def test_embeddings_resized_after_the_decoder_was_built():
    """Grown: the new tokens are accepted in prompts (they were refused against the old size); shrunk: a prompt
    token beyond the new size is a clear error, not an IndexError inside the model."""
    trie, prompts = trie_and_prompts()
    target, draft = tiny_model(seed=1), tiny_model(seed=9)
    for decoder, models in ((BeamSearchDecoder(target, trie, 3), [target]),
                            (SpecBeamDecoder(target, draft, trie, 3, 6, 1), [target, draft])):
        for model in models:
            model.resize_token_embeddings(80, mean_resizing=False)
        assert decoder.generate([p + [75] for p in prompts]).valid.all()
        if len(models) == 2:  # a prompt goes to both models: the draft's vocabulary bounds it too
            draft.resize_token_embeddings(70, mean_resizing=False)
            with pytest.raises(ValueError, match=r"token id 75 .*vocabulary \[0, 70\)"):
                decoder.generate([[1, 75, 5]])
        for model in models:
            model.resize_token_embeddings(VOCAB - 4, mean_resizing=False)
        with pytest.raises(ValueError, match=r"token id 62 .*vocabulary \[0, 60\)"):
            decoder.generate([[1, 62, 5]])


def test_a_compiled_model_is_called_through_its_own_signature(monkeypatch):
    """torch.compile's wrapper takes *args, **kwargs: the decoders read the wrapped model's forward, so they pass
    the cache under its current name and ask for the last logits only, as for the plain model."""
    model = tiny_model(seed=2)
    compiled = torch.compile(model, backend="eager")
    plain, wrapped = ForwardSignature(model), ForwardSignature(compiled)
    assert (wrapped.cache_arg, wrapped.has_logits_to_keep) == (plain.cache_arg, plain.has_logits_to_keep)
    assert plain.has_logits_to_keep
    trie, prompts = trie_and_prompts(2)
    ref = BeamSearchDecoder(model, trie, 3).generate(prompts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecated cache argument name used to warn here
        out = BeamSearchDecoder(compiled, trie, 3).generate(prompts)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-5, rtol=0)


def test_training_mode_with_dropout_warns():
    trie, prompts = trie_and_prompts(3)
    model = tiny_model(seed=3)
    model.config.attention_dropout = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BeamSearchDecoder(model, trie, 3).generate(prompts)  # eval mode: no warning
    model.train()
    with pytest.warns(UserWarning, match=r"model is in training mode with dropout active \(config.attention_dropout"):
        BeamSearchDecoder(model, trie, 3).generate(prompts)
    with pytest.warns(UserWarning, match=r"target is in training mode .*call target.eval\(\)"):
        SpecBeamDecoder(model, tiny_model(seed=4), trie, 3, 6, 1).generate(prompts)
    draft = tiny_model(seed=4)
    draft.model.layers[0].mlp.dropout = torch.nn.Dropout(0.1)
    draft.train()
    with pytest.warns(UserWarning, match=r"draft is in training mode .*Dropout\(p=0.1\) at model.layers.0.mlp.dropout"):
        SpecBeamDecoder(tiny_model(seed=3), draft, trie, 3, 6, 1).generate(prompts)
    quiet = tiny_model(seed=5).train()  # training mode without any dropout: deterministic, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BeamSearchDecoder(quiet, trie, 3).generate(prompts)


def test_flex_attention_is_refused_on_the_cpu():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    try:
        model = LlamaForCausalLM._from_config(config, attn_implementation="flex_attention").eval()
    except (ImportError, ValueError) as exc:  # a torch without flex attention
        pytest.skip(f"flex attention unavailable: {exc}")
    trie, _ = trie_and_prompts(4)
    with pytest.raises(ValueError, match="flex_attention.*'sdpa' or 'eager'"):
        BeamSearchDecoder(model, trie, 3)
    with pytest.raises(ValueError, match="draft .*flex_attention"):
        SpecBeamDecoder(tiny_model(seed=1), model, trie, 3, 6, 1)


@pytest.mark.parametrize("impl", ["flash_attention_2", "flash_attention_3", "kernels-community/flash-attn3",
                                  "paged|eager"])
def test_attention_without_4d_masks_is_refused(impl):
    """Flash and paged attention take no 4-D mask, which tree attention needs. The check reads the config
    alone, so the kernels need not be installed."""
    trie, _ = trie_and_prompts(4)
    model = tiny_model(seed=1)
    model.config._attn_implementation = impl
    with pytest.raises(ValueError, match=rf"target .*attn_implementation='{re.escape(impl)}'.*'sdpa' or 'eager'"):
        SpecBeamDecoder(model, tiny_model(seed=2), trie, 3, 6, 1)
    with pytest.raises(ValueError, match=rf"draft .*attn_implementation='{re.escape(impl)}'"):
        SpecBeamDecoder(tiny_model(seed=2), model, trie, 3, 6, 1)
    with pytest.raises(ValueError, match=rf"attn_implementation='{re.escape(impl)}'"):
        BeamSearchDecoder(model, trie, 3)


def test_outputs_are_ordinary_tensors_under_the_callers_inference_mode():
    trie, prompts = trie_and_prompts(5)
    for decoder in (BeamSearchDecoder(tiny_model(seed=6), trie, 3),
                    SpecBeamDecoder(tiny_model(seed=6), tiny_model(seed=7), trie, 3, 6, 1)):
        with torch.inference_mode():
            out = decoder.generate(prompts)
        assert not any(t.is_inference() for t in (out.sequences, out.scores, out.valid))
        out.scores.add_(1.0)  # editable in place outside inference mode


def test_sampling_caps_the_width_at_the_widest_drafted_depth(monkeypatch):
    """N = 1000 on a trie whose drafted depths hold at most 16 nodes: no call feeds more than the capped tree
    (the law is checked by test_sampling_stats.py)."""
    fed = []
    feed = TreeKV.feed

    def logged_feed(self, tokens, parents):
        fed.append(tokens.shape[1])
        return feed(self, tokens, parents)

    monkeypatch.setattr(TreeKV, "feed", logged_feed)
    trie, prompts = trie_and_prompts(6)  # 4 codes per level: at most 4, 16 nodes at depths 1, 2
    sizes = trie.level_offsets.tolist()
    cap = max(sizes[d + 1] - sizes[d] for d in (1, 2))
    for verification in ("relaxed", "exact"):
        fed.clear()
        out = SpecBeamDecoder(tiny_model(seed=8), tiny_model(seed=9), trie, 3, 1000, 2, verification=verification,
                              seed=0).generate(prompts)
        assert out.valid.all()
        assert fed and max(fed) <= 2 * 3 + 2 * cap  # pending chains (draft) or beams + two levels (target)

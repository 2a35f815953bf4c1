"""Model families the decoders' tree attention cannot serve are refused up front (ALiBi, recurrent or hybrid
caches); windows other than sliding ones (chunked, local) and length-dependent RoPE are bounded like sliding
windows; eager attention in float64 with padded prompts decodes like sdpa (no NaN from padding rows)."""

import pytest
import torch
import transformers as tf

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder
from atspeed_ext._inputs import sliding_window
from conftest import left_pad, random_identifiers, random_prompts, tiny_model

VOCAB = 64
EOS = 2
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
             pad_token_id=None, tie_word_embeddings=False)


def family(name: str):
    """A tiny random model of a family the decoders must refuse or bound (None where this transformers lacks it)."""
    torch.manual_seed(0)
    builders = {
        "mpt": lambda: tf.MptForCausalLM(tf.MptConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4,
                                                      max_seq_len=256, expansion_ratio=2)),
        "bloom": lambda: tf.BloomForCausalLM(tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)),
        "falcon_alibi": lambda: tf.FalconForCausalLM(tf.FalconConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True,
            multi_query=False, new_decoder_architecture=False, parallel_attn=True)),
        "jamba": lambda: tf.JambaForCausalLM(tf.JambaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_experts=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
            expert_layer_offset=1, mamba_d_state=4, use_mamba_kernels=False)),
        "mamba": lambda: tf.MambaForCausalLM(tf.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                            state_size=4)),
        "llama4_chunked": lambda: tf.Llama4ForCausalLM(tf.Llama4TextConfig(
            **{**SMALL, "intermediate_size_mlp": 64, "head_dim": 8, "num_local_experts": 2, "num_experts_per_tok": 1,
               "attention_chunk_size": 8})),
        "gpt_neo_local": lambda: tf.GPTNeoForCausalLM(tf.GPTNeoConfig(
            vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
            window_size=6, max_position_embeddings=256)),
        "phi3_longrope": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(
            **{**SMALL, "max_position_embeddings": 64}, original_max_position_embeddings=12,
            rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [4.0] * 4})),
        "llama_dynamic": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
            **{**SMALL, "max_position_embeddings": 14}, rope_scaling={"rope_type": "dynamic", "factor": 2.0})),
    }
    try:
        return builders[name]().float().eval()
    except (AttributeError, TypeError, ValueError, KeyError) as e:  # a transformers without this family / option
        pytest.skip(f"{name}: {type(e).__name__}: {e}")


TRIE = ItemTrie(random_identifiers(60, 3, 5, seed=1), eos_token_id=EOS)  # depth 4


@pytest.mark.parametrize("name, message", [
    ("mpt", "takes no position_ids"), ("bloom", "takes no position_ids"), ("falcon_alibi", "uses ALiBi"),
    ("jamba", "state in its cache: recurrent"), ("mamba", "takes no position_ids")])
def test_models_whose_attention_beams_cannot_share_are_refused(name, message):
    # Each of these decoded silently wrong beams (MPT, Jamba with K >= 2) or failed deep inside the model.
    model = family(name)
    with pytest.raises(ValueError, match=message):
        BeamSearchDecoder(model, TRIE, 3)
    with pytest.raises(ValueError, match=f"target .*{message}"):
        SpecBeamDecoder(model, tiny_model("llama", VOCAB, seed=1, dtype=torch.float32), TRIE, 3, 6)


def test_the_hf_baseline_runs_models_the_decoders_refuse():
    # Its input checks refused them too for a while: generate() needs no tree attention.
    from atspeed_ext.hf import hf_constrained_beam_search

    out = hf_constrained_beam_search(family("bloom").eval(), TRIE, [[5, 6, 7], [8]], None, 3)
    assert out.valid.all() and out.sequences.shape == (2, 3, TRIE.depth)


def test_attention_only_families_pass_the_check():
    for model in (tiny_model("llama", VOCAB), tiny_model("qwen2", VOCAB),
                  tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4)),
                  tf.OPTForCausalLM(tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32))):
        BeamSearchDecoder(model, TRIE, 3)


@pytest.mark.parametrize("name, window", [("llama4_chunked", 8), ("gpt_neo_local", 6)])
def test_chunked_and_local_attention_are_windows(name, window):
    # Llama 4's chunked layers keep the last chunk only; GPT-Neo's local layers mask beyond window_size. Both
    # decoded silently wrong beams once the decode reached the window.
    model = family(name)
    assert sliding_window(model) == window
    with pytest.raises(ValueError, match=f"window of {window} tokens"):
        BeamSearchDecoder(model, TRIE, 3).generate([[5, 6]])  # 2 + 3 x 3 slots >= the window


@pytest.mark.parametrize("name, lengths, refused", [
    ("phi3_longrope", (12, 3), True),   # positions up to 15 cross the switch at 12: short, then long factors
    ("phi3_longrope", (14, 3), True),   # the long prompt's calls are long, the short one's alone are short
    ("phi3_longrope", (9, 3), False),   # every call below the switch
    ("phi3_longrope", (14, 13), False),  # every call above it
    ("llama_dynamic", (12, 3), True),   # reaches position 15 > 14: rescaled per call
    ("llama_dynamic", (11, 3), False)])
def test_length_dependent_rope_is_refused_across_its_switch(name, lengths, refused):
    model = family(name).double()
    prompts = [[5 + (i + n) % 50 for i in range(n)] for n in lengths]
    beam = BeamSearchDecoder(model, TRIE, 4)
    spec = SpecBeamDecoder(model, tiny_model("llama", VOCAB, seed=2), TRIE, 4, 8, 2)
    if refused:
        for decoder in (beam, spec):
            with pytest.raises(ValueError, match="RoPE"):
                decoder.generate(prompts)
    else:
        want, got = beam.generate(prompts), spec.generate(prompts)
        assert torch.equal(got.sequences, want.sequences)
        torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "opt"])
def test_a_decode_past_a_learned_position_table_is_refused(name):
    # Positions reach longest prompt + depth - 2: with 16 learned positions and a depth-4 trie, 13-token prompts
    # fit and 14-token ones do not. (They failed with an IndexError inside the embedding; on CUDA a device assert.)
    torch.manual_seed(0)
    if name == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=1, n_head=4))
    else:  # OPT's table has 2 extra rows (its positions start at offset 2)
        model = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                                               max_position_embeddings=16))
    model = model.double().eval()
    fits, too_long = [[5 + i % 50 for i in range(13)], [7, 8]], [[5 + i % 50 for i in range(14)]]
    beam = BeamSearchDecoder(model, TRIE, 4)
    spec = SpecBeamDecoder(model, model, TRIE, 4, 8, 2)
    for decoder in (beam, spec):
        with pytest.raises(ValueError, match="learned position embeddings for 16 positions, and this decode reaches "
                                             "position 16 .* use prompts of at most 13 tokens"):
            decoder.generate(too_long)
    want, got = beam.generate(fits), spec.generate(fits)
    assert want.valid.all() and torch.equal(got.sequences, want.sequences)


def test_eager_float64_padded_prompts_decode_like_sdpa():
    # Eager attention runs its softmax in float32: a padding row that saw nothing gave NaN, which spread through
    # the row and made BeamSearchDecoder return every beam of a padded prompt invalid (SpecBeamDecoder did not).
    ids, mask = left_pad(random_prompts([7, 3, 12, 1], VOCAB, seed=1))
    want = BeamSearchDecoder(tiny_model("llama", VOCAB, seed=4), TRIE, 4).generate(ids, mask)
    torch.manual_seed(4)
    eager = tiny_model("llama", VOCAB, seed=4)
    eager.config._attn_implementation = "eager"
    got = BeamSearchDecoder(eager, TRIE, 4).generate(ids, mask)
    assert got.valid.all() and torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=0)  # float32 scores, two kernels
    spec = SpecBeamDecoder(eager, tiny_model("llama", VOCAB, seed=9, layers=1), TRIE, 4, 8, 2).generate(ids, mask)
    assert torch.equal(spec.sequences, got.sequences)

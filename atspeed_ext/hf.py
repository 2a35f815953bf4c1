"""Hugging Face ``generate`` with the trie as ``prefix_allowed_tokens_fn``: the reference decoder that
BeamSearchDecoder must equal, and the baseline of the benchmarks."""

from __future__ import annotations

import torch

from ._checks import positive_int
from ._inputs import check_model_and_trie, model_device, model_pad_token_id, model_vocab_sizes, normalise_prompts
from .decoder import BeamSearchOutput, plain_output_of_inference
from .trie import ItemTrie

__all__ = ["prefix_allowed_tokens_fn", "hf_constrained_beam_search"]


def prefix_allowed_tokens_fn(trie: ItemTrie, prompt_length: int):
    """A ``prefix_allowed_tokens_fn`` for ``generate``: the trie children of the generated prefix.

    Beams that already left the trie (only possible for -inf "padding" beams when fewer than K identifiers
    exist) get one arbitrary token, since Hugging Face refuses an empty list; their score stays -inf.
    """
    fallback = [trie.eos_token_id if trie.eos_token_id is not None else 0]

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return trie.children(input_ids[prompt_length:].tolist()) or fallback

    return allowed


@plain_output_of_inference
def hf_constrained_beam_search(model, trie: ItemTrie, input_ids, attention_mask: torch.Tensor | None,
                               num_beams: int) -> BeamSearchOutput:
    """Run ``model.generate(num_beams=K, num_return_sequences=K, do_sample=False, prefix_allowed_tokens_fn)``
    with Hugging Face's defaults otherwise (the model's own ``generation_config`` is set aside for the call), and
    return its beams as a :class:`BeamSearchOutput`.

    Scores are summed log-probabilities like BeamSearchDecoder's: for K > 1 Hugging Face reports them
    divided by the generated length (``length_penalty=1``), which is the same for every identifier; for
    K = 1 (greedy) they are summed from the raw logits. Missing beams (scored -inf or -1e9 by Hugging
    Face) are marked invalid. Inputs are checked as :meth:`BeamSearchDecoder.generate` checks them (a left-padded
    tensor with an optional mask, or a list of token lists); as there, a tensor without a mask is all prompt
    tokens (Hugging Face would take its pad token for padding).
    """
    from transformers import GenerationConfig

    K = positive_int("num_beams", num_beams)
    check_model_and_trie(model, trie, tree_attention=False)  # generate() itself runs any causal LM
    input_ids, attention_mask = normalise_prompts(input_ids, attention_mask, model_device(model),
                                                  model_vocab_sizes(model)[0], model_pad_token_id(model))
    B, T = input_ids.shape
    # The model's own generation settings (repetition_penalty, no_repeat_ngram_size, length_penalty,
    # min_new_tokens, ... as instruct checkpoints ship them) would change the beams or their scores, and
    # generate() fills the fields of a config passed to it from the model's: swap in the defaults for the call.
    saved, model.generation_config = model.generation_config, GenerationConfig()
    try:
        out = _generate(model, trie, input_ids, attention_mask, K, T)
    finally:
        model.generation_config = saved
    seqs = out.sequences[:, T:]
    if seqs.shape[1] < trie.depth:  # every beam finished early: cannot happen with a trie of fixed depth
        raise RuntimeError(f"generate returned {seqs.shape[1]} tokens, expected {trie.depth}")
    if K > 1:
        scores = out.sequences_scores.float() * trie.depth
    else:
        logp = torch.stack([torch.log_softmax(step.float(), -1) for step in out.logits], 1)
        scores = logp.gather(-1, seqs.unsqueeze(-1)).squeeze(-1).sum(-1)
    seqs, scores = seqs.reshape(B, K, trie.depth), scores.reshape(B, K)
    # Hugging Face fills missing beams with copies scored -inf or its -1e9 sentinel: those are invalid.
    valid = scores > -1e8
    scores = torch.where(valid, scores, float("-inf"))
    seqs = torch.where(valid.unsqueeze(-1), seqs, -1)
    item_ids = [[trie.items_of(seqs[b, k].tolist()) if valid[b, k] else [] for k in range(K)] for b in range(B)]
    return BeamSearchOutput(sequences=seqs, scores=scores, valid=valid, item_ids=item_ids)


def _generate(model, trie: ItemTrie, input_ids, attention_mask, K: int, T: int):
    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        num_beams=K,
        num_return_sequences=K,
        do_sample=False,
        max_new_tokens=trie.depth,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, T),
        eos_token_id=trie.eos_token_id,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_scores=K > 1,
        output_logits=K == 1,
    )

"""BeamSearchDecoder: target-only trie-constrained beam search (or beam sampling) with a shared prompt KV cache."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass

import torch

from . import _ops
from ._checks import is_int, positive_int
from ._hf_compat import ForwardSignature
from ._logit_watch import LogitWatch
from ._inputs import (beam_cache_slots, check_cache_window, check_model_and_trie, check_positions, model_device,
                      model_pad_token_id, model_vocab_sizes, normalise_prompts, warn_if_dropout_active)
from .tree_kv import additive_mask, prompt_attention
from .trie import ItemTrie

__all__ = ["BeamSearchDecoder", "BeamSearchOutput"]


def check_temperature(temperature) -> float:
    """A sampling temperature: a finite real number > 0 (ValueError otherwise)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) \
            or temperature <= 0:  # (numbers.Real: numpy floats too)
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


class SeededUniforms:
    """The one source of randomness of a sampling decoder: float64 uniforms in [0, 1) from a host (CPU)
    ``torch.Generator``, moved to the device, so that the same seed gives the same samples on CPU and GPU.

    ``seed=None`` seeds the generator nondeterministically. The stream continues across ``generate`` calls:
    two decoders built with the same seed and given the same calls return the same samples.
    """

    def __init__(self, seed: int | None):
        if seed is not None and (not is_int(seed) or not 0 <= seed < 2 ** 64):
            raise ValueError(f"seed must be None or an int in [0, 2**64), got {seed!r}")
        self.seed = None if seed is None else int(seed)
        seed = self.seed
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64).to(device)


def best_first(scores: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Reorder ``[B, K]`` sampled beams by score, best first (equal scores keep their draw order; invalid
    beams, score -inf, last)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return (scores.gather(1, order), *(x.gather(1, order) for x in others))


def plain_output_of_inference(generate):
    """Run a decoder's ``generate`` under ``torch.inference_mode()`` and return its output with ordinary tensors
    (clones made outside that mode, a few small tensors, even when the caller runs under inference mode), which
    callers may edit in place, as they may Hugging Face generate's."""
    @functools.wraps(generate)
    def run(*args, **kwargs):
        with torch.inference_mode():
            out = generate(*args, **kwargs)
        with torch.inference_mode(False):
            return dataclasses.replace(out, sequences=out.sequences.clone(), scores=out.scores.clone(),
                                       valid=out.valid.clone())
    return run


@dataclass
class BeamSearchOutput:
    """Top-K (or K sampled) identifiers per request, best first.

    Attributes:
        sequences: ``[B, K, depth]`` int64 generated tokens (-1 in invalid slots).
        scores: ``[B, K]`` float32 summed full-vocabulary log-probabilities (-inf in invalid slots).
        valid: ``[B, K]`` bool; False where fewer than K identifiers could be generated.
        item_ids: ``item_ids[b][k]`` the catalogue items whose identifier is ``sequences[b, k]`` (several
            when items share an identifier; empty for invalid slots).
    """

    sequences: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    item_ids: list[list[list[int]]]


class BeamSearchDecoder:
    """Trie-constrained beam search over a Hugging Face causal LM (the target-only baseline).

    Returns exactly what ``model.generate(num_beams=K, num_return_sequences=K, do_sample=False,
    prefix_allowed_tokens_fn=<trie>)`` returns (same sequences in the same order; candidates with exactly
    equal scores are ordered by lower parent beam, then lower token, where ``generate`` may order them
    otherwise), but prefills each prompt once and lets its K beams share that KV cache: the beams of a step are
    fed as K tokens of the request's own row with a tree attention mask (each token sees its prompt and its
    ancestors) and depth-based position ids. The model should be in eval mode (a warning says when dropout is
    active). NaN or +inf logits for a live beam raise a FloatingPointError at the end of ``generate`` (-inf are fine).

    With ``do_sample=True`` it does target-only *beam sampling* instead: at each step K distinct candidates
    are drawn without replacement from all trie-allowed (beam, child token) candidates with probabilities
    proportional to ``exp((beam score + token log-prob) / temperature)`` (the ``trie_beam_sample`` op,
    Gumbel-top-k over uniforms from a seeded host generator). Scores stay the unscaled full-vocabulary
    cumulative log-probabilities; the K results come out best score first (equal scores in draw order).

    Args:
        model: a Hugging Face causal LM (LLaMA, Qwen2, ...) whose vocabulary contains the trie's tokens.
        trie: the item trie.
        num_beams: K >= 1. If the trie allows fewer than K identifiers, the missing beams come out invalid.
        do_sample: beam sampling instead of beam search.
        temperature: T > 0 (sampling only).
        seed: seed of the sampling generator (sampling only; None: nondeterministic). The stream continues
            across ``generate`` calls.
    """

    def __init__(self, model: torch.nn.Module, trie: ItemTrie, num_beams: int, do_sample: bool = False,
                 temperature: float = 1.0, seed: int | None = None):
        num_beams = positive_int("num_beams", num_beams)
        if not isinstance(do_sample, bool):
            raise ValueError(f"do_sample must be a bool, got {do_sample!r}")
        self.temperature = check_temperature(temperature)
        if not do_sample and (temperature != 1.0 or seed is not None):
            raise ValueError("temperature and seed only apply to beam sampling: pass do_sample=True")
        check_model_and_trie(model, trie)
        self.model = model
        self.trie = trie
        self.num_beams = num_beams
        self.do_sample = do_sample
        self._uniforms = SeededUniforms(seed) if do_sample else None
        self._forward = ForwardSignature(model)
        self._pad_token_id = model_pad_token_id(model)

    @plain_output_of_inference
    def generate(self, input_ids, attention_mask: torch.Tensor | None = None) -> BeamSearchOutput:
        """Decode the top-K (or K sampled) identifiers of each prompt.

        Args:
            input_ids: a left-padded ``[B, T]`` int64 tensor on the model's device, or a list of B token
                lists (or 1-D tensors) of any lengths.
            attention_mask: ``[B, T]`` 0/1 mask for a tensor ``input_ids`` (default: no padding).
        """
        device = model_device(self.model)
        warn_if_dropout_active(self.model, "model")
        # the model's vocabulary now (embeddings may have been resized since this decoder was built)
        ids, mask = normalise_prompts(input_ids, attention_mask, device, model_vocab_sizes(self.model)[0],
                                      self._pad_token_id)
        trie = self.trie.to(device)
        B, K, depth = ids.shape[0], self.num_beams, trie.depth
        check_cache_window(self.model, "model", beam_cache_slots(ids.shape[1], K, depth))
        prompt_lengths = mask.sum(1)
        check_positions(self.model, "model", prompt_lengths, depth)

        # Prefill: every prompt once; only the last position's logits are needed. Without padding the model
        # can take its plain causal path (no mask tensor to build); with padding, SpecBeamDecoder's prompt mask.
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": 1} if self._forward.has_logits_to_keep else {}
        prefill_mask = None if bool(mask.all()) else additive_mask(prompt_attention(mask.bool()), self.model.dtype)
        out = self.model(input_ids=ids, attention_mask=prefill_mask, position_ids=position_ids, use_cache=True,
                         **kwargs)
        cache = self._forward.cache_of(out)  # grows in place; the beams of every step append to it
        logits = out.logits[:, -1:, :]

        visible = mask.bool().unsqueeze(1)                      # [B, beams, kv]: what each beam may attend to
        scores = torch.zeros(B, 1, dtype=torch.float32, device=device)
        nodes = torch.zeros(B, 1, dtype=torch.long, device=device)
        live = torch.ones(B, 1, dtype=torch.bool, device=device)
        own_slot = torch.eye(K, dtype=torch.bool, device=device).expand(B, K, K)
        watch = LogitWatch()
        for step in range(depth):
            watch.check("the model", logits, live)
            if self.do_sample:
                u = self._uniforms((B, scores.shape[1], trie.max_children), device)
                scores, parents, tokens, nodes = _ops.trie_beam_sample(
                    logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, u, self.temperature, K)
            else:
                scores, parents, tokens, nodes = _ops.trie_beam_step(
                    logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, K)
            live = parents >= 0
            if step == depth - 1:
                break
            del out, logits  # this step's logits, freed before the next model call
            # Tree attention: a new beam sees what its parent saw, plus its own slot (appended to the cache).
            parent_rows = parents.clamp(min=0).unsqueeze(-1).expand(-1, -1, visible.shape[-1])
            visible = torch.cat([visible.gather(1, parent_rows), own_slot], dim=-1)
            out = self.model(
                input_ids=tokens.clamp(min=0),
                position_ids=(prompt_lengths + step).unsqueeze(1).expand(B, K),
                attention_mask=additive_mask(visible, self.model.dtype),
                use_cache=True,
                **{self._forward.cache_arg: cache},
            )
            logits = out.logits

        watch.raise_if_seen()
        if self.do_sample:
            scores, nodes, live = best_first(scores, nodes, live)
        sequences = trie.sequences_of_nodes(nodes)
        host_nodes = nodes.tolist()
        item_ids = [[trie.items_of_leaf(n) if n >= 0 else [] for n in row] for row in host_nodes]
        return BeamSearchOutput(sequences=sequences, scores=scores, valid=live, item_ids=item_ids)

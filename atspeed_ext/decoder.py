"""BeamSearchDecoder: target-only trie-constrained beam search with a shared prompt KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _ops
from ._hf_compat import ForwardSignature
from ._inputs import check_model_and_trie, model_device, model_vocab_sizes, normalise_prompts
from .tree_kv import additive_mask
from .trie import ItemTrie

__all__ = ["BeamSearchDecoder", "BeamSearchOutput"]


@dataclass
class BeamSearchOutput:
    """Top-K identifiers per request, best first.

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
    prefix_allowed_tokens_fn=<trie>)`` returns (same sequences in the same order), but prefills each
    prompt once and lets its K beams share that KV cache: the beams of a step are fed as K tokens of the
    request's own row with a tree attention mask (each token sees its prompt and its ancestors) and
    depth-based position ids.

    Args:
        model: a Hugging Face causal LM (LLaMA, Qwen2, ...) whose vocabulary contains the trie's tokens.
        trie: the item trie.
        num_beams: K >= 1. If the trie allows fewer than K identifiers, the missing beams come out invalid.
    """

    def __init__(self, model: torch.nn.Module, trie: ItemTrie, num_beams: int):
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
        check_model_and_trie(model, trie)
        self.model = model
        self.trie = trie
        self.num_beams = num_beams
        self._vocab_in, _ = model_vocab_sizes(model)
        self._forward = ForwardSignature(model)
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        self._pad_token_id = pad if isinstance(pad, int) else 0

    @torch.inference_mode()
    def generate(self, input_ids, attention_mask: torch.Tensor | None = None) -> BeamSearchOutput:
        """Decode the top-K identifiers of each prompt.

        Args:
            input_ids: a left-padded ``[B, T]`` int64 tensor on the model's device, or a list of B token
                lists (or 1-D tensors) of any lengths.
            attention_mask: ``[B, T]`` 0/1 mask for a tensor ``input_ids`` (default: no padding).
        """
        device = model_device(self.model)
        ids, mask = normalise_prompts(input_ids, attention_mask, device, self._vocab_in, self._pad_token_id)
        trie = self.trie.to(device)
        B, K, depth = ids.shape[0], self.num_beams, trie.depth
        prompt_lengths = mask.sum(1)

        # Prefill: every prompt once; only the last position's logits are needed. Without padding the model
        # can take its plain causal path (no mask tensor to build).
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": 1} if self._forward.has_logits_to_keep else {}
        prefill_mask = None if bool(mask.all()) else mask
        out = self.model(input_ids=ids, attention_mask=prefill_mask, position_ids=position_ids, use_cache=True,
                         **kwargs)
        cache = self._forward.cache_of(out)  # grows in place; the beams of every step append to it
        logits = out.logits[:, -1:, :]

        visible = mask.bool().unsqueeze(1)                      # [B, beams, kv]: what each beam may attend to
        scores = torch.zeros(B, 1, dtype=torch.float32, device=device)
        nodes = torch.zeros(B, 1, dtype=torch.long, device=device)
        live = torch.ones(B, 1, dtype=torch.bool, device=device)
        own_slot = torch.eye(K, dtype=torch.bool, device=device).expand(B, K, K)
        for step in range(depth):
            scores, parents, tokens, nodes = _ops.trie_beam_step(
                logits, scores, nodes, live, trie.child_offsets, trie.child_tokens, K)
            live = parents >= 0
            if step == depth - 1:
                break
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

        sequences = trie.sequences_of_nodes(nodes)
        host_nodes = nodes.tolist()
        item_ids = [[trie.items_of_leaf(n) if n >= 0 else [] for n in row] for row in host_nodes]
        return BeamSearchOutput(sequences=sequences, scores=scores, valid=live, item_ids=item_ids)

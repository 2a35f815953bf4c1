"""Text-prompt LLMs: a Hugging Face tokenizer with one added token per code, instruction-style prompts, and
the item trie expressed in that tokenizer's ids. A drop-in for :class:`CodeTokenizer` in training,
evaluation and decoding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._rng import seeded_rng
from .tokenizer import checked_item, checked_token_ids, code_tokens
from .trie import ItemTrie

__all__ = ["TextPromptTokenizer", "INSTRUCTION_TEMPLATE"]

#: The LC-Rec sequential-recommendation instruction used by the AtSpeed paper's models; ``{history}`` is
#: replaced by the history identifiers, oldest first, separated by ", ".
INSTRUCTION_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nThe user has interacted with items {history} in chronological order. Can you predict the "
    "next possible item that the user may be interested in?\n\n### Response:"
)


class TextPromptTokenizer:
    """A Hugging Face tokenizer extended with the item codes (``<a_12>``, ... as added tokens, one id each).

    Prompts are :data:`INSTRUCTION_TEMPLATE` filled with the history identifiers (``<a_1><b_7>..., ...``);
    the model then generates the identifier tokens of the next item. The tokenizer is changed in place
    (codes it already has are reused); call :meth:`resize_model` on a model whose embeddings predate it.

    Args:
        hf_tokenizer: any ``PreTrainedTokenizerBase`` (LLaMA, Qwen2, ...), loaded from local files.
        identifiers: item id -> its codes (all of one length).
        template: the prompt, with one ``{history}`` field.
    """

    def __init__(self, hf_tokenizer, identifiers: Sequence[Sequence[str]], template: str = INSTRUCTION_TEMPLATE):
        if "{history}" not in template:
            raise ValueError("template must contain a '{history}' field")
        try:  # any other field would fail at every prompt: refuse the template now
            template.format(history="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"template must have no field but {{history}} (write literal braces as {{{{ and }}}}); "
                             f"{template!r} fails with {type(e).__name__}: {e}") from None
        self.hf = hf_tokenizer
        self.template = template
        self.identifiers = [tuple(ident) for ident in identifiers]
        # Not normalized: a tokenizer whose normalizer rewrites text (Llama-2's "prepend ▁") would otherwise store
        # "▁<a_1>" and miss every code that does not follow a space.
        from transformers import AddedToken

        hf_tokenizer.add_tokens([AddedToken(c, normalized=False) for c in code_tokens(self.identifiers)])
        ids = [hf_tokenizer.convert_tokens_to_ids(list(ident)) for ident in self.identifiers]
        self._item_ids = torch.tensor(ids, dtype=torch.long)
        if hf_tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; set hf_tokenizer.eos_token first")
        self.eos_token_id = hf_tokenizer.eos_token_id
        self.bos_token_id = hf_tokenizer.bos_token_id
        self.pad_token_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else self.eos_token_id

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added code tokens included (``len(hf_tokenizer)``)."""
        return len(self.hf)

    @property
    def item_token_ids(self) -> torch.Tensor:
        """``[num_items, L]`` token ids of every item's identifier."""
        return self._item_ids

    def encode_item(self, item: int) -> list[int]:
        """The token ids of item ``item``'s identifier (``0 <= item < number of items``)."""
        return self._item_ids[checked_item(item, len(self.identifiers))].tolist()

    def prompt_text(self, history: Sequence[int]) -> str:
        n = len(self.identifiers)
        return self.template.format(history=", ".join("".join(self.identifiers[checked_item(i, n)]) for i in history))

    def encode_prompt(self, history: Sequence[int]) -> list[int]:
        """The token ids of :meth:`prompt_text` (with the tokenizer's own BOS handling)."""
        return self.hf(self.prompt_text(history))["input_ids"]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """The token strings of ``ids`` (a sequence or a 1-D tensor of token ids)."""
        return self.hf.convert_ids_to_tokens(checked_token_ids(ids, self.vocab_size))

    def trie(self, with_eos: bool = False) -> ItemTrie:
        """The item trie over this tokenizer's ids (item ``i`` is trie item ``i``)."""
        return ItemTrie(self._item_ids, eos_token_id=self.eos_token_id if with_eos else None,
                        vocab_size=self.vocab_size)

    def resize_model(self, model, seed: int = 0) -> None:
        """Grow ``model``'s embeddings (and LM head) to this vocabulary if the added codes do not fit; the new rows
        (drawn around the old ones' mean by transformers) come from ``seed``, the same in every load."""
        if model.get_input_embeddings().num_embeddings < self.vocab_size:
            with seeded_rng(seed, model.get_input_embeddings().weight.device):
                model.resize_token_embeddings(self.vocab_size)

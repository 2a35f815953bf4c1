"""Identifier-only tokenizer: a few special tokens plus one token per code (``<a_*>``, ``<b_*>``, ...)."""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence

import torch

from .trie import ItemTrie

__all__ = ["CodeTokenizer", "code_tokens", "checked_item", "checked_token_ids"]

_CODE = re.compile(r"^<([a-z])_(\d+)>$")
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>")


def code_tokens(identifiers: Sequence[Sequence[str]]) -> list[str]:
    """Every distinct code of ``identifiers``, level by level (``<a_*>`` first) and by number within a level.
    Raises ValueError naming the item whose code is not like ``<a_12>``."""
    if not identifiers:
        raise ValueError("identifiers is empty")
    codes = set()
    for i, ident in enumerate(identifiers):
        for c in ident:
            if not isinstance(c, str) or not _CODE.match(c):
                raise ValueError(f"item {i}: {c!r} is not a code like '<a_12>'")
            codes.add(c)
    # The code itself breaks ties ('<a_1>' and '<a_01>' are two codes of one number): set order varies by process.
    return sorted(codes, key=lambda c: (_CODE.match(c).group(1), int(_CODE.match(c).group(2)), c))


def _as_int(value):
    """``value`` as a Python int if it is an integer (Python, numpy or a 0-d integer tensor; not a bool), else
    None."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor)
                                   and (value.dim() != 0 or value.dtype == torch.bool)):
        return None  # (a tensor's __index__ also takes bools and one-element tensors of any shape)
    try:
        return operator.index(value)
    except TypeError:
        return None


def checked_item(item, num_items: int) -> int:
    """``item`` as an int if it is an item id (an integer in 0 .. num_items - 1), else a ValueError naming it."""
    value = _as_int(item)
    if value is None:
        raise ValueError(f"item {item!r} is not an integer item id")
    if not 0 <= value < num_items:
        raise ValueError(f"item {value} is not an item id of this tokenizer (ints 0 .. {num_items - 1})")
    return value


def checked_token_ids(ids, vocab_size: int) -> list[int]:
    """``ids`` (a sequence or a 1-D tensor) as a list of token ids in 0 .. vocab_size - 1, else a ValueError
    naming the first bad one."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"expected a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    out = []
    for pos, i in enumerate(ids):
        value = _as_int(i)
        if value is None or not 0 <= value < vocab_size:
            hint = " (-1 marks an invalid beam in decoder outputs: see their valid mask)" if value == -1 else ""
            raise ValueError(f"ids[{pos}] = {i!r} is not a token id of this tokenizer (ints 0 .. {vocab_size - 1})"
                             f"{hint}")
        out.append(value)
    return out


class CodeTokenizer:
    """Maps item identifiers (code strings) to token ids and builds prompts and the item trie.

    Token ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<sep>`` 3, then every code, level by level (``<a_*>``
    first) and by code number within a level. A prompt is ``<bos>`` + the codes of each history item, oldest
    first, + ``<sep>``; the model then generates the codes of the next item (and ``<eos>`` with an EOS trie).

    Args:
        identifiers: item id -> its codes (all of one length).
    """

    pad_token_id, bos_token_id, eos_token_id, sep_token_id = 0, 1, 2, 3

    def __init__(self, identifiers: Sequence[Sequence[str]]):
        self.tokens: list[str] = list(SPECIAL_TOKENS) + code_tokens(identifiers)
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}
        self.identifiers = [tuple(ident) for ident in identifiers]
        self._item_ids = torch.tensor([[self.token_to_id[c] for c in ident] for ident in self.identifiers],
                                      dtype=torch.long)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def item_token_ids(self) -> torch.Tensor:
        """``[num_items, L]`` token ids of every item's identifier."""
        return self._item_ids

    def encode_item(self, item: int) -> list[int]:
        """The token ids of item ``item``'s identifier (``0 <= item < number of items``)."""
        return self._item_ids[checked_item(item, len(self.identifiers))].tolist()

    def encode_prompt(self, history: Sequence[int]) -> list[int]:
        """``<bos>`` + the codes of the history items + ``<sep>``."""
        ids = [self.bos_token_id]
        for item in history:
            ids.extend(self.encode_item(item))
        ids.append(self.sep_token_id)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """The token strings of ``ids`` (a sequence or a 1-D tensor of token ids)."""
        return [self.tokens[i] for i in checked_token_ids(ids, self.vocab_size)]

    def trie(self, with_eos: bool = False) -> ItemTrie:
        """The item trie over identifier token ids (item ``i`` is trie item ``i``)."""
        return ItemTrie(self._item_ids, eos_token_id=self.eos_token_id if with_eos else None,
                        vocab_size=self.vocab_size)

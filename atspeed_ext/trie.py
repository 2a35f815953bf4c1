"""ItemTrie: the prefix trie of the catalogue's item identifiers, in a compact layout kernels can read."""

from __future__ import annotations

import bisect
import numbers
from collections.abc import Sequence

import torch

from . import _C
from ._checks import is_int

__all__ = ["ItemTrie"]


class ItemTrie:
    """Prefix trie over equal-length item identifiers (token-id sequences).

    Layout (CSR, breadth-first node numbering, root = 0), the same on CPU and GPU:

    * ``child_offsets`` ``[num_nodes + 1]``: the children of node ``n`` are the edges
      ``child_offsets[n] .. child_offsets[n + 1] - 1``, sorted by token, so finding the child range of a
      node is one lookup and finding one child a binary search over at most ``max_children`` tokens;
    * ``child_tokens`` ``[num_nodes - 1]``: the token of each edge; edge ``e`` leads to node ``e + 1``;
    * ``node_parent`` ``[num_nodes]`` (root: -1) and ``level_offsets`` ``[depth + 2]`` (nodes of depth
      ``d`` are ``level_offsets[d] .. level_offsets[d + 1] - 1``);
    * ``leaf_item_offsets`` / ``leaf_items``: the item ids of each leaf (several items may share one
      identifier; all are kept, in increasing order).

    Args:
        sequences: ``[num_items, L]`` token ids, a list of lists or an integer tensor; row ``i`` is the
            identifier of item ``i``.
        eos_token_id: if given, every identifier is ended with this token (then ``depth == L + 1``).
        vocab_size: if given, every token must be below it.

    Raises:
        ValueError: empty input, rows of different lengths, non-integer, negative or too large ids.
    """

    def __init__(
        self,
        sequences: Sequence[Sequence[int]] | torch.Tensor,
        eos_token_id: int | None = None,
        vocab_size: int | None = None,
    ):
        table = _as_identifier_table(sequences)
        if eos_token_id is not None:
            if not is_int(eos_token_id) or eos_token_id < 0:
                raise ValueError(f"eos_token_id must be a non-negative int or None, got {eos_token_id!r}")
            eos_token_id = int(eos_token_id)
            if bool((table == eos_token_id).any()):
                raise ValueError(
                    f"eos_token_id={eos_token_id} also occurs inside an identifier; it must only end them"
                )
            table = torch.cat([table, torch.full((table.shape[0], 1), eos_token_id, dtype=torch.long)], 1)
        max_token = int(table.max())
        if vocab_size is not None:
            if not is_int(vocab_size) or vocab_size < 1:
                raise ValueError(f"vocab_size must be a positive int or None, got {vocab_size!r}")
            vocab_size = int(vocab_size)
            if max_token >= vocab_size:
                row = int((table >= vocab_size).any(1).nonzero()[0])
                raise ValueError(
                    f"token id {max_token} is outside the vocabulary of size {vocab_size} "
                    f"(first offending identifier: row {row}, {table[row].tolist()})"
                )
        arrays = _C.build_trie(table)
        self._init_from(arrays, eos_token_id, vocab_size if vocab_size is not None else max_token + 1)

    def _init_from(self, arrays, eos_token_id, vocab_size, host: "ItemTrie | None" = None):
        (self.child_offsets, self.child_tokens, self.node_parent, self.level_offsets,
         self.leaf_item_offsets, self.leaf_items) = arrays
        self.eos_token_id = eos_token_id
        self.vocab_size = vocab_size
        self.depth = self.level_offsets.numel() - 2
        self.num_items = self.leaf_items.numel()
        self.num_nodes = self.node_parent.numel()
        self._copies = {}  # device -> ItemTrie, so repeated .to(device) calls copy once
        self._node_paths = None  # [num_nodes, depth] int32, built on first use (sequences_of_nodes)
        if host is not None:  # a device copy answers Python queries through its CPU twin
            self._host = host
            self.max_children = host.max_children
            return
        # Python lists for the host-side queries (prefix lookups stay cheap whatever the device).
        self._host = self
        self._offsets = self.child_offsets.tolist()
        self._tokens = self.child_tokens.tolist()
        self._first_leaf = int(self.level_offsets[self.depth])
        self._item_offsets = self.leaf_item_offsets.tolist()
        self._items = self.leaf_items.tolist()
        self.max_children = max(b - a for a, b in zip(self._offsets[:-1], self._offsets[1:]))

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> torch.device:
        return self.child_offsets.device

    def to(self, device: torch.device | str) -> "ItemTrie":
        """The trie with its arrays on ``device`` (self if already there; copies are made once and kept)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device == self.device:
            return self
        host = self._host
        if device.type == "cpu":
            return host
        if device not in host._copies:
            new = ItemTrie.__new__(ItemTrie)
            arrays = [t.to(device) for t in (host.child_offsets, host.child_tokens, host.node_parent,
                                             host.level_offsets, host.leaf_item_offsets, host.leaf_items)]
            new._init_from(arrays, host.eos_token_id, host.vocab_size, host=host)
            host._copies[device] = new
        return host._copies[device]

    # ------------------------------------------------------------------ queries
    def node_of(self, prefix: Sequence[int]) -> int:
        """The trie node reached by ``prefix`` (root for ``[]``), or -1 if no identifier starts with it."""
        h = self._host
        node = 0
        for token in _as_token_list(prefix):
            lo, hi = h._offsets[node], h._offsets[node + 1]
            e = bisect.bisect_left(h._tokens, token, lo, hi)
            if e == hi or h._tokens[e] != token:
                return -1
            node = e + 1
        return node

    def children(self, prefix: Sequence[int]) -> list[int]:
        """The tokens that may follow ``prefix`` (sorted); empty for a complete or unknown prefix."""
        node = self.node_of(prefix)
        if node < 0:
            return []
        h = self._host
        return h._tokens[h._offsets[node]:h._offsets[node + 1]]

    def _full(self, sequence: Sequence[int]) -> list[int]:
        seq = _as_token_list(sequence)
        if self.eos_token_id is not None and len(seq) == self.depth - 1:
            seq = seq + [self.eos_token_id]
        return seq

    def contains(self, sequence: Sequence[int]) -> bool:
        """Whether ``sequence`` is a complete identifier (the trailing EOS may be left out)."""
        seq = self._full(sequence)
        return len(seq) == self.depth and self.node_of(seq) >= 0

    def __contains__(self, sequence) -> bool:
        return self.contains(sequence)

    def items_of(self, sequence: Sequence[int]) -> list[int]:
        """Item ids whose identifier is ``sequence`` (increasing; empty if none)."""
        seq = self._full(sequence)
        if len(seq) != self.depth:
            return []
        node = self.node_of(seq)
        return self.items_of_leaf(node) if node >= 0 else []

    def items_of_leaf(self, node: int) -> list[int]:
        """Item ids of the leaf ``node`` (a node of depth ``depth``)."""
        h = self._host
        leaf = node - h._first_leaf
        if not 0 <= leaf < len(h._item_offsets) - 1:
            raise ValueError(f"node {node} is not a leaf (leaves are {h._first_leaf}..{h.num_nodes - 1})")
        return h._items[h._item_offsets[leaf]:h._item_offsets[leaf + 1]]

    def sequences_of_nodes(self, nodes: torch.Tensor) -> torch.Tensor:
        """Token paths ``[..., depth]`` from the root to the given leaf nodes (-1 for nodes < 0).

        One lookup in a table of every node's path (built once per device; a node above the leaves gets its
        path right-aligned, -1 in front), so a decode's results cost a few ops, not a walk per level."""
        if self._node_paths is None:
            host = self._host
            if host._node_paths is None:
                # int32: the table is then no larger than the trie's own int64 arrays
                host._node_paths = host._walk_paths(torch.arange(host.num_nodes)).int()
            self._node_paths = host._node_paths.to(self.device)
        nodes = nodes.to(self.device)
        paths = self._node_paths[nodes.clamp(min=0)].long()
        return paths.masked_fill_((nodes < 0).unsqueeze(-1), -1)

    def _walk_paths(self, nodes: torch.Tensor) -> torch.Tensor:
        """The paths of ``sequences_of_nodes``, by walking parent pointers one level at a time."""
        out = torch.empty((*nodes.shape, self.depth), dtype=torch.long, device=self.device)
        cur = nodes.clone()
        for d in range(self.depth - 1, -1, -1):
            valid = cur > 0
            out[..., d] = torch.where(valid, self.child_tokens[(cur - 1).clamp(min=0)], -1)
            cur = torch.where(valid, self.node_parent[cur.clamp(min=0)], -1)
        return out

    def __repr__(self) -> str:
        return (f"ItemTrie(num_items={self.num_items}, depth={self.depth}, num_nodes={self.num_nodes}, "
                f"eos_token_id={self.eos_token_id}, vocab_size={self.vocab_size}, device={self.device})")


def _as_token_list(seq) -> list[int]:
    """A query's token ids as ints; floats (which ``int`` would truncate to another token) are an error."""
    if isinstance(seq, torch.Tensor):
        if seq.dtype.is_floating_point or seq.dtype.is_complex or seq.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got a tensor of dtype {seq.dtype}")
        return seq.reshape(-1).tolist()
    tokens = list(seq)
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise ValueError(f"token ids must be integers, got {t!r} in {tokens}")
    return [int(t) for t in tokens]


def _as_identifier_table(sequences) -> torch.Tensor:
    """Validate identifiers and return them as a contiguous CPU int64 ``[N, L]`` tensor."""
    if isinstance(sequences, torch.Tensor):
        if sequences.dtype.is_floating_point or sequences.dtype.is_complex or sequences.dtype == torch.bool:
            raise ValueError(f"sequences must be an integer tensor, got dtype {sequences.dtype}")
        if sequences.dim() != 2:
            raise ValueError(f"sequences must be a 2-D [num_items, L] tensor, got shape {tuple(sequences.shape)}")
        table = sequences.detach().to("cpu", torch.long).contiguous()
    else:
        # A row may be any sequence of ids: list, tuple, tensor, numpy array (a 2-D array iterates as these).
        rows = [list(row) if hasattr(row, "__len__") and not isinstance(row, (str, bytes, dict)) else row
                for row in sequences]
        if not rows:
            raise ValueError("sequences is empty: an ItemTrie needs at least one identifier")
        for i, row in enumerate(rows):
            if not isinstance(row, list):
                raise ValueError(f"sequences[{i}] must be a sequence of token ids, got {row!r}")
            if len(row) != len(rows[0]):
                raise ValueError(f"identifiers must all have the same length: sequences[0] has {len(rows[0])} "
                                 f"tokens, sequences[{i}] has {len(row)}")
        if len(rows[0]) == 0:
            raise ValueError("sequences must be non-empty [num_items >= 1, L >= 1], got identifiers of length 0")
        try:
            table = torch.tensor(rows)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"sequences must contain integer token ids only ({exc})") from exc
        if table.dtype.is_floating_point or table.dtype.is_complex or table.dtype == torch.bool:
            raise ValueError(f"sequences must contain integer token ids only, got values of dtype {table.dtype}")
        if table.dim() != 2:  # rows of rows: reshaping would flatten them silently
            raise ValueError(f"sequences must be a 2-D [num_items, L] table of token ids, got nested lists of shape "
                             f"{tuple(table.shape)}")
        table = table.long()
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(f"sequences must be non-empty [num_items >= 1, L >= 1], got shape {tuple(table.shape)}")
    if bool((table < 0).any()):
        row = int((table < 0).any(1).nonzero()[0])
        raise ValueError(f"token ids must be non-negative; identifier {row} is {table[row].tolist()}")
    return table

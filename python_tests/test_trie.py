"""ItemTrie: layout invariants, queries against a plain-Python trie, collisions, EOS, errors."""

from collections import defaultdict

import pytest
import torch

from atspeed_ext import ItemTrie
from conftest import random_identifiers, requires_cuda


def python_trie(rows):
    """prefix tuple -> sorted children, full identifier -> sorted item ids."""
    children, items = defaultdict(set), defaultdict(list)
    for i, row in enumerate(rows):
        for d in range(len(row)):
            children[tuple(row[:d])].add(row[d])
        items[tuple(row)].append(i)
    return {k: sorted(v) for k, v in children.items()}, items


@pytest.mark.parametrize("eos", [None, 2])
@pytest.mark.parametrize("seed", range(3))
def test_queries_match_a_python_trie(seed, eos):
    ids = random_identifiers(300, 4, 6, seed=seed, shared=5)
    trie = ItemTrie(ids, eos_token_id=eos)
    rows = [r + ([eos] if eos is not None else []) for r in ids.tolist()]
    children, items = python_trie(rows)
    assert trie.depth == 4 + (eos is not None)
    assert trie.num_items == 300
    for prefix, kids in children.items():
        assert trie.children(list(prefix)) == kids
    for ident, its in items.items():
        assert trie.items_of(list(ident)) == its
        assert trie.contains(list(ident))
        assert trie.items_of(list(ident[:4])) == its  # the trailing EOS may be left out
    assert trie.children([999]) == [] and trie.node_of([999]) == -1
    assert not trie.contains(rows[0][:-1] + [999])
    assert trie.items_of(rows[0][:2]) == []  # a prefix is not an identifier


def test_csr_layout_invariants():
    ids = random_identifiers(500, 4, 5, seed=7, shared=3)
    trie = ItemTrie(ids)
    off, tok, parent, levels = (t.tolist() for t in (trie.child_offsets, trie.child_tokens, trie.node_parent,
                                                       trie.level_offsets))
    assert off[0] == 0 and off[-1] == trie.num_nodes - 1 == len(tok)
    assert levels[0] == 0 and levels[1] == 1 and levels[-1] == trie.num_nodes
    for n in range(trie.num_nodes):
        kids = tok[off[n]:off[n + 1]]
        assert kids == sorted(set(kids))                       # sorted, distinct
        for e in range(off[n], off[n + 1]):
            assert parent[e + 1] == n                          # edge e leads to node e + 1
        depth = next(d for d in range(len(levels) - 1) if levels[d] <= n < levels[d + 1])
        assert (off[n + 1] > off[n]) == (depth < trie.depth)   # exactly the non-leaves have children
    assert sorted(trie.leaf_items.tolist()) == list(range(500))


def test_shared_identifiers_keep_every_item():
    rows = [[3, 4], [3, 5], [3, 4], [6, 4], [3, 4]]
    trie = ItemTrie(rows)
    assert trie.items_of([3, 4]) == [0, 2, 4]
    assert trie.items_of([6, 4]) == [3]
    assert trie.num_items == 5


def test_list_and_tensor_inputs_agree():
    ids = random_identifiers(50, 3, 4, seed=1)
    a, b = ItemTrie(ids), ItemTrie(ids.tolist())
    for name in ("child_offsets", "child_tokens", "node_parent", "level_offsets", "leaf_item_offsets", "leaf_items"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(ItemTrie(ids.int()).child_tokens, a.child_tokens)


def test_sequences_of_nodes_walks_back_to_the_root():
    ids = random_identifiers(40, 4, 3, seed=2)
    trie = ItemTrie(ids)
    leaves = torch.arange(int(trie.level_offsets[4]), trie.num_nodes)
    seqs = trie.sequences_of_nodes(torch.cat([leaves, torch.tensor([-1])]))
    assert seqs[-1].tolist() == [-1] * 4
    for leaf, seq in zip(leaves.tolist(), seqs[:-1].tolist()):
        assert trie.node_of(seq) == leaf


@pytest.mark.parametrize("bad, match", [
    ([], "empty"),
    ([[1, 2], [3]], "same length"),
    ([[1, -2]], "non-negative"),
    ([[1, 2.5]], "integer token ids"),
    ([[1, 2], [3, "a"]], "integer token ids"),
    ([1, 2], "must be a sequence"),
    (torch.zeros(0, 4, dtype=torch.long), "non-empty"),
    (torch.zeros(3, dtype=torch.long), "2-D"),
    (torch.zeros(3, 4), "integer tensor"),
    ([[]], "non-empty"),
    ([[[1, 2]], [[3, 4]]], r"2-D \[num_items, L\] table of token ids, got nested lists of shape \(2, 1, 2\)"),
])
def test_bad_input_raises_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        ItemTrie(bad)


def test_vocab_size_and_eos_checks():
    with pytest.raises(ValueError, match="outside the vocabulary of size 10"):
        ItemTrie([[1, 2], [3, 12]], vocab_size=10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ItemTrie([[1, 2]], eos_token_id=10, vocab_size=10)
    with pytest.raises(ValueError, match="only end them"):
        ItemTrie([[1, 2]], eos_token_id=2)
    with pytest.raises(ValueError, match="eos_token_id"):
        ItemTrie([[1, 2]], eos_token_id=-1)
    assert ItemTrie([[1, 2]], vocab_size=3).vocab_size == 3
    assert ItemTrie([[1, 7]]).vocab_size == 8


def test_numpy_identifiers_build_and_float_queries_are_refused():
    np = pytest.importorskip("numpy")
    table = [[5, 9], [5, 12], [7, 9]]
    trie = ItemTrie(np.array(table))
    assert trie.items_of(np.array([5, 12])) == [1] and trie.contains([np.int64(7), np.int64(9)])
    assert ItemTrie([np.array(row) for row in table]).child_tokens.tolist() == trie.child_tokens.tolist()
    with_numpy_ints = ItemTrie(table, eos_token_id=np.int64(3), vocab_size=np.int64(13))  # were refused
    assert (with_numpy_ints.eos_token_id, with_numpy_ints.vocab_size) == (3, 13)
    assert type(with_numpy_ints.eos_token_id) is int and type(with_numpy_ints.vocab_size) is int
    for query in ([5.7, 9.9], torch.tensor([5.0, 9.0]), [5, True]):  # int() would silently answer for [5, 9]
        with pytest.raises(ValueError, match="token ids must be integers"):
            trie.contains(query)
        with pytest.raises(ValueError, match="token ids must be integers"):
            trie.node_of(query)


@requires_cuda
def test_to_cuda_keeps_the_layout_and_the_queries():
    trie = ItemTrie(random_identifiers(100, 4, 5, seed=3), eos_token_id=2)
    gpu = trie.to("cuda")
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.child_tokens.cpu(), trie.child_tokens)
    assert gpu.children([]) == trie.children([])
    assert gpu.to("cpu").children([]) == trie.children([])


def test_sequences_of_nodes_table_matches_the_walk_for_every_node():
    """The lookup table gives what walking the parent pointers gives, for every node (internal ones
    right-aligned), in any shape, with negatives as -1, and the same on a device copy."""
    ids = random_identifiers(60, 4, 3, seed=5)
    trie = ItemTrie(ids, eos_token_id=int(ids.max()) + 1)
    nodes = torch.cat([torch.arange(trie.num_nodes), torch.tensor([-1, -7])])
    assert torch.equal(trie.sequences_of_nodes(nodes), trie._walk_paths(nodes.clamp(min=-1)))
    grid = nodes[:24].view(2, 3, 4)
    assert torch.equal(trie.sequences_of_nodes(grid), trie.sequences_of_nodes(grid.reshape(-1)).view(2, 3, 4, -1))
    assert trie.sequences_of_nodes(torch.tensor([0]))[0].tolist() == [-1] * trie.depth  # the root: empty path
    if torch.cuda.is_available():
        assert torch.equal(trie.to("cuda").sequences_of_nodes(nodes.cuda()).cpu(), trie.sequences_of_nodes(nodes))

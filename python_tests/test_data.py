"""LC-Rec data loading (protocol, errors naming file and line), the code tokenizer and the metrics."""

import json
import math
from pathlib import Path

import pytest
import torch

from atspeed_ext.data import DataError, load_lcrec
from atspeed_ext.metrics import hits_of_ranking, popularity_ranking, recall_ndcg
from atspeed_ext.tokenizer import CodeTokenizer

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty"


def write_dir(tmp_path, index=None, train="1 1 2 3\n2 2 3\n", valid="1 4\n2\n", test="1 2\n2 4 1\n"):
    index = index if index is not None else {"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "<b_3>"],
                                             "2": ["<a_2>", "<b_2>"], "3": ["<a_1>", "<b_2>"]}
    (tmp_path / "toy.LCRec-x.json").write_text(index if isinstance(index, str) else json.dumps(index))
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        if text is not None:
            (tmp_path / f"sequential_{name}.txt").write_text(text)
    return tmp_path


def test_protocol_on_a_toy_directory(tmp_path):
    data = load_lcrec(write_dir(tmp_path), max_history=2)
    assert data.num_items == 4 and data.name == "toy"
    assert data.train == {1: [0, 1, 2], 2: [1, 2]}                       # 1-based ids become 0-based
    assert data.train_examples() == [((0,), 1), ((0, 1), 2), ((1,), 2)]   # every next-item prediction
    (v,) = data.valid_prompts()                                           # user 2 has no validation item
    assert v.user == 1 and v.history == (1, 2) and v.truth == {3}         # last 2 train items
    t1, t2 = data.test_prompts()
    assert t1.history == (2, 3) and t1.truth == {1}                       # train + valid, last 2
    assert t2.history == (1, 2) and t2.truth == {3, 0}                    # the whole test set is the truth
    assert data.item_counts() == [1, 2, 2, 0] and data.item_counts(include_valid=True) == [1, 2, 2, 1]
    assert data.valid_item_counts() == [0, 0, 0, 1]
    # Final-model training set: each validation item is a target after the user's train (+ earlier valid) items.
    assert data.train_examples(include_valid=True) == [((0,), 1), ((0, 1), 2), ((1, 2), 3), ((1,), 2)]
    assert data.valid_examples() == [((1, 2), 3)]                         # recency fine-tune: valid targets only


def test_validation_items_as_training_targets_follow_the_test_history(tmp_path):
    data = load_lcrec(write_dir(tmp_path, train="1 1 2\n2 3\n", valid="1 3 4\n3 2 1\n", test="1 1\n"))
    assert data.train_examples(include_valid=True) == [((0,), 1), ((0, 1), 2), ((0, 1, 2), 3),  # user 1
                                                       ((1,), 0)]                              # user 3: valid only
    # Only the predictions of validation items, in the same order (user 1's first valid item follows its train items).
    assert data.valid_examples() == [((0, 1), 2), ((0, 1, 2), 3), ((1,), 0)]


@pytest.mark.parametrize("kwargs, match", [
    ({"train": "1 1 x\n"}, r"sequential_train.txt, line 1: ids must be non-negative integers"),
    ({"train": "1 1_0\n"}, r"line 1: ids must be non-negative integers \(ASCII digits\), got '1 1_0'"),
    ({"train": "1 +3\n"}, r"line 1: ids must be non-negative integers"),
    ({"train": "1 \uff12\n"}, r"line 1: ids must be non-negative integers"),   # a full-width digit
    ({"index": {"0": ["<a_1>"], "\u00b2": ["<a_1>"]}}, r"0-based integers 0..1; found key '\u00b2'"),
    ({"index": {"00": ["<a_1>"], "1": ["<a_1>"]}}, r"0-based integers 0..1; found key '00'"),
    ({"train": "1 1\n1 2\n"}, r"sequential_train.txt, line 2: user 1 appears twice"),
    ({"test": "1 1\n2 9\n"}, r"sequential_test.txt, line 2: item 9 is not in the catalogue"),
    ({"train": "1 0\n"}, r"line 1: item 0 is not in the catalogue \(1..4, 1-based\)"),
    ({"train": ""}, r"sequential_train.txt: file is empty"),
    ({"train": None}, r"sequential_train.txt: file not found"),
    ({"index": {"0": ["<a_1>"], "1": ["<a_1>", "<b_1>"]}}, r"item 1 has 2 codes, item 0 has 1"),
    ({"index": {"0": ["<a_1>"], "2": ["<a_1>"]}}, r"0-based integers 0..1; found key '2'"),
    ({"index": {"0": ["a1"]}}, r"item 0: expected a list of codes"),
    ({"index": {}}, r"non-empty JSON object"),
    ({"index": '{"0": ["<a_1>"], "1": ["<a_2>"], "0": ["<a_3>"]}'}, r"item '0' is given twice"),  # was: the last won
])
def test_malformed_files_name_the_file_and_line(tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        load_lcrec(write_dir(tmp_path, **kwargs))


def test_missing_directory_and_index(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_lcrec(tmp_path / "nope")
    with pytest.raises(DataError, match="no '<name>.LCRec-\\*.json'"):
        load_lcrec(tmp_path)


@pytest.mark.skipif(not BEAUTY.is_dir(), reason="shared Beauty data not present")
def test_beauty_facts():
    data = load_lcrec(BEAUTY)
    assert (data.num_items, len(data.train)) == (12035, 19383)
    assert sum(map(len, data.train.values())) == 122241
    assert (len(data.valid_prompts()), len(data.test_prompts())) == (4295, 3553)
    assert len(set(data.identifiers)) == 12023                           # 12 collisions
    tok = CodeTokenizer(data.identifiers)
    assert tok.vocab_size == 4 + 859
    trie = tok.trie(with_eos=True)
    assert trie.num_items == 12035 and trie.depth == 5


def test_tokenizer_and_trie():
    tok = CodeTokenizer([("<a_2>", "<b_10>"), ("<a_1>", "<b_3>"), ("<a_2>", "<b_10>")])
    assert tok.tokens == ["<pad>", "<bos>", "<eos>", "<sep>", "<a_1>", "<a_2>", "<b_3>", "<b_10>"]
    assert tok.encode_item(0) == [5, 7]
    assert tok.encode_prompt([1, 0]) == [1, 4, 6, 5, 7, 3]
    assert tok.decode([4, 6]) == ["<a_1>", "<b_3>"]
    trie = tok.trie()
    assert trie.items_of([5, 7]) == [0, 2] and trie.children([]) == [4, 5]
    assert tok.trie(with_eos=True).items_of([5, 7, 2]) == [0, 2]
    with pytest.raises(ValueError, match="is not a code"):
        CodeTokenizer([("a1",)])
    assert tok.decode(torch.tensor([4, 6])) == ["<a_1>", "<b_3>"]  # a row of a decoder's sequences
    assert tok.encode_prompt(torch.tensor([1, 0])) == tok.encode_prompt([1, 0])  # a history from a tensor
    with pytest.raises(ValueError, match="item 1.5 is not an integer item id"):
        tok.encode_item(1.5)
    for odd in (torch.tensor(True), torch.tensor([1]), torch.tensor([[1]])):  # a tensor's __index__ takes them
        with pytest.raises(ValueError, match="is not an integer item id"):
            tok.encode_item(odd)


@pytest.mark.parametrize("call, message", [
    (lambda tok: tok.encode_item(-1), r"item -1 is not an item id of this tokenizer \(ints 0 \.\. 2\)"),
    (lambda tok: tok.encode_item(3), r"item 3 is not an item id"),
    (lambda tok: tok.encode_item(True), r"item True is not an integer item id"),
    (lambda tok: tok.encode_prompt([0, -1]), r"item -1 is not an item id"),
    (lambda tok: tok.decode([4, -1]), r"ids\[1\] = -1 is not a token id of this tokenizer \(ints 0 \.\. 7\) "
                                      r"\(-1 marks an invalid beam in decoder outputs"),
    (lambda tok: tok.decode([8]), r"ids\[0\] = 8 is not a token id"),
    (lambda tok: tok.decode(torch.zeros(2, 2, dtype=torch.long)), r"expected a 1-D tensor of token ids, got shape"),
])
def test_tokenizer_refuses_ids_out_of_range(call, message):
    # A negative id used to wrap around to the last item or token (-1 marks invalid beams in decoder outputs).
    tok = CodeTokenizer([("<a_2>", "<b_10>"), ("<a_1>", "<b_3>"), ("<a_2>", "<b_10>")])
    with pytest.raises(ValueError, match=message):
        call(tok)


def test_code_order_does_not_depend_on_the_process(tmp_path):
    # '<a_1>' and '<a_01>' are two codes of one number: the code breaks the tie, not the hash seed of a set.
    import os
    import subprocess
    import sys

    script = ("from atspeed_ext.tokenizer import code_tokens; "
              "print(code_tokens([('<a_1>', '<b_2>'), ('<a_01>', '<b_3>'), ('<a_001>', '<b_2>')]))")
    outs = set()
    for seed in ("0", "2", "5"):  # run outside the repository, so that the installed package is imported
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        outs.add(proc.stdout)
    assert outs == {"['<a_001>', '<a_01>', '<a_1>', '<b_2>', '<b_3>']\n"}


def test_max_history_must_be_positive(tmp_path):
    data = load_lcrec(write_dir(tmp_path))
    for bad in (0, -2, 1.5):
        data.max_history = bad  # x[-0:] would have been the whole history in prompts, none in training examples
        for split in (data.train_examples, data.valid_prompts, data.test_prompts, data.valid_examples):
            with pytest.raises(ValueError, match="max_history must be an integer >= 1"):
                split()


def test_metrics_by_hand():
    ranked = [[5], [1, 7], [3], [9]]            # rank 2 is a shared identifier (items 1 and 7)
    hits = hits_of_ranking(ranked, {7, 9, 4})
    assert hits == [False, True, False, True]
    r, n = recall_ndcg(hits, 3, k=2)
    assert r == pytest.approx(1 / 3)
    assert n == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    r, n = recall_ndcg(hits, 3, k=4)
    assert r == pytest.approx(2 / 3)
    assert n == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / math.log2(4)))
    assert recall_ndcg([False, False, True], 1, k=2) == (0.0, 0.0)   # hits below rank k do not count
    assert recall_ndcg([True], 1, k=5) == (1.0, 1.0)
    # A list repeating an identifier hits once: the truth item is found, not found again.
    assert hits_of_ranking([[1], [1], [2], [1, 3]], {1, 3}) == [True, False, False, True]
    assert recall_ndcg(hits_of_ranking([[1], [1], [1]], {1}), 1, k=3) == (1.0, 1.0)
    with pytest.raises(ValueError):
        recall_ndcg([True], 0, k=1)


def test_popularity_groups_shared_identifiers():
    ranking = popularity_ranking([5, 1, 3, 3], [("a",), ("b",), ("c",), ("b",)], k=2)
    assert ranking == [[0], [1, 3]]              # "b" has 1 + 3 = 4 > "c"'s 3

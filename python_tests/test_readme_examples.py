"""The README's Python examples run as printed, on tiny float32 models standing in for the user's, and what their
comments claim holds: shapes, invalid slots, and the speculative decoder returning beam search's lists."""

import re
from pathlib import Path

import torch

from atspeed_ext import BeamSearchDecoder, BeamSearchOutput
from conftest import tiny_model

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_python_examples_run_and_hold():
    blocks = python_blocks()
    assert len(blocks) == 3, "the README's Python examples changed: update this test with them"
    target = tiny_model(vocab_size=32, seed=1, dtype=torch.float32)
    names = {"model": target, "target": target, "draft": tiny_model(vocab_size=32, seed=2, dtype=torch.float32,
                                                                   layers=1),
             "prompts": [[1, 5, 9, 12, 20], [1, 6, 10], [3, 4]]}

    exec(compile(blocks[0], "README.md (beam search example)", "exec"), names)
    out = names["out"]
    assert isinstance(out, BeamSearchOutput)
    assert names["trie"].depth == 5  # four codes, then the EOS
    assert out.sequences.shape == (2, 10, 5) and out.scores.shape == out.valid.shape == (2, 10)
    assert out.valid.sum(1).tolist() == [3, 3]  # three items: "False where fewer than K identifiers exist"
    assert (out.sequences[~out.valid] == -1).all()
    assert sorted(i for items in out.item_ids[0] for i in items) == [0, 1, 2]  # each item once; [] where invalid

    exec(compile(blocks[1], "README.md (speculative example)", "exec"), names)
    spec_out, base = names["out"], BeamSearchDecoder(target, names["trie"], 10).generate(names["prompts"])
    assert torch.equal(spec_out.sequences, base.sequences)  # "BeamSearchDecoder(target, trie, 10)'s sequences"
    torch.testing.assert_close(spec_out.scores, base.scores, atol=1e-5, rtol=0)  # "scores within 1e-5 (float32)"
    assert spec_out.stats.mean_target_calls >= 1

    exec(compile(blocks[2], "README.md (sampling example)", "exec"), names)  # the constructors take those arguments

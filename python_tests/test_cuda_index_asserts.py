"""Bad data-dependent index inputs: each CPU kernel rejects them with a RuntimeError (TORCH_CHECK); its CUDA
twin checks the same conditions where it reads the values, by device-side asserts (CUDA_KERNEL_ASSERT_MSG), so
the op fails with "device-side assert triggered" instead of reading out of bounds or returning garbage.

A device-side assert poisons the CUDA context of its process, so each CUDA case runs in a subprocess that
calls the op on the valid inputs first (must succeed) and then on the bad ones (must fail with the assert)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import atspeed_ext
from atspeed_ext import ItemTrie
from atspeed_ext.reference import NOT_TREE, ROOT
from conftest import requires_cuda


def _strict_tree():
    """strict_verify on trie a->{c, d}, b->{e}: K = 2 beams at the root (one live), target rows root, a, b, c;
    drafted level 1 {a, b} (matches the target's top 2, so its rows are read), level 2 {a-c, b-e}."""
    trie = ItemTrie([[3, 5], [3, 6], [4, 7]])
    logits = torch.full((1, 4, 8), -10.0)
    logits[0, 0, 3], logits[0, 0, 4] = 2.0, 1.0
    logits[0, 1, 5], logits[0, 1, 6] = 1.0, 0.5
    logits[0, 2, 7] = -1.0
    return [logits, torch.tensor([[0, 0]]), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long),
            torch.tensor([[True, False]]), torch.tensor([[[0, 0], [0, 1]]]), torch.tensor([[[3, 4], [5, 7]]]),
            torch.tensor([[[1, 2], [3, 3]]]), torch.tensor([2]), trie.child_offsets, trie.child_tokens]


def _sample_tree():
    """relaxed_verify / exact_verify on trie a->{c, d}, b->{e, f}: K = 2 beams at the root (one live), target rows
    root, a, b; one drafted level {a, b} from the draft's logits = the target's root row; all uniforms 0, so both
    rules accept level 1 (its rows are read) and sample level 2 (fallback uniforms are read)."""
    trie = ItemTrie([[3, 5], [3, 6], [4, 7], [4, 8]])
    logits = torch.full((1, 3, 9), -20.0)
    logits[0, 0, 3], logits[0, 0, 4] = 1.0, 0.0
    logits[0, 1, 5], logits[0, 1, 6] = 0.5, 0.0
    logits[0, 2, 7], logits[0, 2, 8] = 0.0, 0.2
    K, N = 2, 2
    return [logits, torch.tensor([[0, 0]]), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long),
            torch.tensor([[True, False]]), torch.tensor([[[0, 0]]]), torch.tensor([[[3, 4]]]),
            torch.tensor([[[1, 2]]]), torch.tensor([1]), logits[:, :1].unsqueeze(1).expand(1, 1, 2, 9).clone(),
            torch.zeros(1, 1, 2), torch.zeros(1, 2, 2 * N + K, dtype=torch.float64), trie.child_offsets,
            trie.child_tokens, 1.0]


def _beam_sample_case():
    """trie_beam_sample: 2 live beams at the root and at a (2 children each), C = 2 uniforms per beam."""
    trie = ItemTrie([[3, 5], [3, 6], [4, 7]])
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 8, generator=g), torch.zeros(1, 2), torch.tensor([[0, 1]]),
            torch.tensor([[True, True]]), trie.child_offsets, trie.child_tokens,
            torch.rand(1, 2, 2, generator=g, dtype=torch.float64), 1.0, 3]


def _with(args, index, value):
    bad = list(args)
    bad[index] = value
    return bad


def _cases():
    """name -> (op, valid args, bad args, CPU error pattern, CUDA assert message, whether the CPU error is new
    here (not already tested in the op's own test file))."""
    strict, sample, beam = _strict_tree(), _sample_tree(), _beam_sample_case()
    step = beam[:6] + [3]  # trie_beam_step on the same beams: no uniforms, no temperature
    plan_parents = torch.tensor([[NOT_TREE, NOT_TREE, ROOT, 2]])
    forward = torch.tensor([[NOT_TREE, NOT_TREE, 3, ROOT]])  # slot 2 points forward
    cache = [torch.randn(1, 1, 5, 4, generator=torch.Generator().manual_seed(1))]
    sv = "relaxed_verify / exact_verify"
    return {
        "strict_verify/beam_rows": (
            "strict_verify", strict, _with(strict, 1, torch.tensor([[99, 0]])),
            r"beam_rows\[0, 0\] = 99 is not a logits row in \[0, 4\)",
            "strict_verify: a beam_rows entry of a live beam is not a logits row in [0, R)", False),
        "strict_verify/beam_nodes": (
            "strict_verify", strict, _with(strict, 3, torch.tensor([[-1, 0]])),
            r"beam_nodes\[0, 0\] = -1 is not a trie node in \[0, 6\)",
            "trie_beam_step / strict_verify: a beam_nodes entry of a live beam is not a trie node", True),
        "trie_beam_step/beam_nodes": (
            "trie_beam_step", step, _with(step, 2, torch.tensor([[0, 6]])),
            r"beam_nodes\[0, 1\] = 6 is not a trie node in \[0, 6\)",
            "trie_beam_step / strict_verify: a beam_nodes entry of a live beam is not a trie node", True),
        "strict_verify/level_row": (
            "strict_verify", strict, _with(strict, 7, torch.tensor([[[99, 2], [3, 3]]])),
            r"level_row\[0, 0, 0\] = 99 is not a logits row in \[0, 4\)",
            "strict_verify: a level_row entry of a drafted node is not a logits row in [0, R)", True),
        "relaxed_verify/beam_nodes": (
            "relaxed_verify", sample, _with(sample, 3, torch.tensor([[10 ** 6, 0]])),
            r"beam_nodes\[0, 0\] = 1000000 is not a trie node",
            f"{sv}: a beam_nodes entry of a live beam is not a trie node", True),
        "exact_verify/level_parent": (  # beam 1 is dead
            "exact_verify", sample, _with(sample, 5, torch.tensor([[[1, 0]]])),
            r"level_parent\[0, 0, 0\] = 1 is not a live node of the beams",
            f"{sv}: a level_parent entry is not a live node", True),
        "exact_verify/duplicate_nodes": (  # a twice
            "exact_verify", sample, _with(_with(sample, 6, torch.tensor([[[3, 3]]])), 7, torch.tensor([[[1, 1]]])),
            "drafted nodes 0 and 1 of level 1 of request 0 are the same trie node",
            f"{sv}: two drafted nodes of one level are the same trie node", True),
        "relaxed_verify/level_row": (
            "relaxed_verify", sample, _with(sample, 7, torch.tensor([[[1, 99]]])),
            r"level_row\[0, 0, 1\] = 99 is not a logits row in \[0, 3\)",
            f"{sv}: a level_row entry of a drafted node is not a logits row in [0, R)", True),
        "exact_verify/uniforms": (
            "exact_verify", sample, _with(sample, 11, sample[11] + 1.5), r"uniforms must lie in \[0, 1\]",
            "exact_verify: a uniforms entry is not in [0, 1]", False),
        "trie_beam_sample/too_few_uniforms": (
            "trie_beam_sample", beam, _with(beam, 6, beam[6][:, :, :1]), "is smaller than the",
            "trie_beam_sample: a live beam's node has more children than uniforms.size(2)", False),
        "trie_beam_sample/uniforms": (
            "trie_beam_sample", beam, _with(beam, 6, -beam[6]), r"uniforms must lie in \[0, 1\]",
            "trie_beam_sample: a uniforms entry is not in [0, 1]", False),
        # A malformed trie (a token outside the logits): the CPU scans the trie arrays, the GPU checks each entry
        # it reads (every case reads the root's first edge).
        **{f"{op}/child_tokens": (op, args, _with(args, index, args[index].index_fill(0, torch.tensor([0]), 99)),
                                  r"child_tokens\[0\] = 99 is not a token of the logits' vocabulary",
                                  "a child_tokens entry is not a token of the logits (a malformed trie)", False)
           for op, args, index in (("trie_beam_step", step, 5), ("strict_verify", strict, 10),
                                   ("trie_beam_sample", beam, 5), ("relaxed_verify", sample, 13))},
        "compact_kv/keep": (
            "compact_kv", [cache, torch.tensor([[0, 4, -1]])], [cache, torch.tensor([[0, 5, -1]])],
            r"keep\[0, 1\] = 5 is not a slot index in \[-1, 5\)",
            "compact_kv: a keep entry is not a slot index in [-1, S)", False),
        "compaction_plan/anchors": (
            "compaction_plan", [plan_parents, torch.tensor([[3, 1]]), 2], [plan_parents, torch.tensor([[3, 4]]), 2],
            r"anchors\[0, 1\] = 4 is not a slot \(S = 4\)",
            "compaction_plan: an anchors entry is not a slot (must be < S)", False),
        "compaction_plan/slot_parents": (
            "compaction_plan", [plan_parents, torch.tensor([[2]]), 2], [forward, torch.tensor([[2]]), 2],
            "a parent must be", "compaction_plan: a slot_parents entry is not ROOT (-1), NOT_TREE (-2) or an earlier",
            False),
        "tree_attention_mask/slot_parents": (
            "tree_attention_mask", [plan_parents, torch.ones(1, 2, dtype=torch.bool), 2],
            [forward, torch.ones(1, 2, dtype=torch.bool), 2], "a parent must be",
            "tree_attention_mask: a slot_parents entry is not ROOT (-1), NOT_TREE (-2) or an earlier", False),
    }


CASES = _cases()
NEW_CPU_CASES = [name for name, case in CASES.items() if case[5]]


def _cpu_check(name):
    op, valid, bad, cpu_match = CASES[name][:4]
    fn = getattr(torch.ops.atspeed_ext, op)
    fn(*valid)  # the valid inputs pass: the bad ones fail for the bad entry alone
    with pytest.raises(RuntimeError, match=cpu_match):
        fn(*bad)


@pytest.mark.parametrize("name", NEW_CPU_CASES)
def test_cpu_rejects(name):
    _cpu_check(name)


# Runs in a fresh process: argv[1] the op, argv[2] a file with (valid args, bad args).
RUNNER = """
import sys

import torch

import atspeed_ext  # noqa: F401  (registers the ops)


def to_cuda(x):
    if isinstance(x, torch.Tensor):
        return x.cuda()
    if isinstance(x, (list, tuple)):
        return [to_cuda(y) for y in x]
    return x


op = getattr(torch.ops.atspeed_ext, sys.argv[1])
valid, bad = torch.load(sys.argv[2])
op(*to_cuda(valid))
torch.cuda.synchronize()
print("valid inputs: ok", flush=True)
op(*to_cuda(bad))
torch.cuda.synchronize()
print("bad inputs: ok", flush=True)
"""


@requires_cuda
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_device_side_assert(name, tmp_path):
    op, valid, bad, _, message, _ = CASES[name]
    _cpu_check(name)  # the CPU twin, the spec, rejects the same bad inputs
    path = tmp_path / "args.pt"
    torch.save((valid, bad), path)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(atspeed_ext.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    env.pop("CUDA_LAUNCH_BLOCKING", None)
    proc = subprocess.run([sys.executable, "-c", RUNNER, op, str(path)], capture_output=True, text=True, env=env,
                          timeout=300)
    output = f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert "valid inputs: ok" in proc.stdout, output
    assert proc.returncode != 0 and "bad inputs: ok" not in proc.stdout, output
    assert "device-side assert" in proc.stderr, output
    assert message in proc.stdout + proc.stderr, output

"""Multi-process training through torchrun (DDP, gloo on CPU) without code changes: ranks stay in sync, for
the target trainer and the draft trainer."""

import json
import subprocess
import sys
import textwrap

import pytest

from atspeed_ext.train import epoch_batches, steps_per_epoch

SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch
    from atspeed_ext.models import build_model
    from atspeed_ext.synthetic import synthetic_recdata
    from atspeed_ext.tokenizer import CodeTokenizer
    from atspeed_ext.train import TrainConfig, train_next_item

    torch.set_num_threads(1)
    out = sys.argv[1]
    data = synthetic_recdata(num_users=150, num_items=40, codes_per_level=5, seed=2)
    tok = CodeTokenizer(data.identifiers)
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)
    state = train_next_item(model, tok, data, out, TrainConfig(epochs=2, batch_size=16, lr=5e-3, eval_prompts=20),
                            progress=False)
    digest = lambda m: hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest()
    # the draft trainer too (teacher-forced tree attention through the DDP wrapper, fp32)
    from atspeed_ext.align.trainer import AlignConfig, train_draft
    draft = build_model("tiny-1x64", tok.vocab_size, seed=3)
    dstate = train_draft(draft, model.eval(), tok, data, out + "/draft", TrainConfig(epochs=1, batch_size=16, lr=5e-3,
                         eval_prompts=10), AlignConfig(objective="ce", val_beams=3, val_draft_beams=6), progress=False)
    rank = int(os.environ["RANK"])
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"digest": digest(model), "draft_digest": digest(draft), "step": state["step"],
                   "draft_step": dstate["step"], "world": int(os.environ["WORLD_SIZE"]),
                   "examples": len(data.train_examples())}, f)
""")


def test_torchrun_two_ranks_train_in_sync(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["digest"] == ranks[1]["digest"]  # gradients were averaged: identical weights on both ranks
    # each step takes 16 examples on each rank: the ranks split the data (had both trained alone on all of it,
    # identical seeds would also give identical weights, but twice the steps)
    n = ranks[0]["examples"]
    assert steps_per_epoch(n, 16, 2) < steps_per_epoch(n, 16, 1)
    assert ranks[0]["step"] == ranks[1]["step"] == 2 * steps_per_epoch(n, 16, 2)
    assert ranks[0]["draft_digest"] == ranks[1]["draft_digest"]
    assert ranks[0]["draft_step"] == ranks[1]["draft_step"] == steps_per_epoch(n, 16, 2)
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["step"] == ranks[0]["step"] and len(state["history"]) == 2  # rank 0 validated once per epoch
    assert (out / "best" / "model.safetensors").exists()


def test_epoch_batches_give_every_rank_an_example():
    """A last global batch smaller than the world is dropped (a rank with no example would hang DDP), and the
    step count matches on every rank."""
    lengths = list(range(65))  # 65 = 2 * 32 + 1: the last global batch of 32 (16 per rank x 2) has 1 example
    for world in (1, 2, 3):
        per_rank = [epoch_batches(lengths, 16, seed=0, rank=r, world=world) for r in range(world)]
        assert all(len(b) == steps_per_epoch(65, 16, world) for b in per_rank)
        assert all(len(x) >= 1 for b in per_rank for x in b)
        seen = sorted(i for b in per_rank for x in b for i in x)
        assert len(seen) == len(set(seen)) and len(seen) >= 65 - (world - 1)


def test_the_backend_follows_the_model_device(monkeypatch):
    # On a GPU machine a CPU model still needs gloo (NCCL cannot reduce CPU tensors); a GPU model gets NCCL on
    # its own device. torch.distributed is stubbed: this checks the choice, not a real process group.
    import torch

    import atspeed_ext.train as train_module

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(device))
    monkeypatch.setattr(train_module.atexit, "register", lambda fn: calls.append(fn.__name__))
    assert train_module._dist(torch.device("cpu")) == (1, 2)
    assert calls == ["gloo", "_destroy_process_group"]  # the group it started is destroyed at exit
    train_module._dist(torch.device("cuda", 1))
    assert calls[2:] == [torch.device("cuda", 1), "nccl", "_destroy_process_group"]  # GPU set before NCCL starts

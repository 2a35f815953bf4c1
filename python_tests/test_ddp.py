"""Multi-process training through torchrun (DDP, gloo on CPU) without code changes: ranks stay in sync."""

import json
import math
import subprocess
import sys
import textwrap

import pytest

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
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    rank = int(os.environ["RANK"])
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"digest": digest, "step": state["step"], "world": int(os.environ["WORLD_SIZE"]),
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
    assert ranks[0]["step"] == ranks[1]["step"] == 2 * math.ceil(ranks[0]["examples"] / 32)
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["step"] == ranks[0]["step"] and len(state["history"]) == 2  # rank 0 validated once per epoch
    assert (out / "best" / "model.safetensors").exists()

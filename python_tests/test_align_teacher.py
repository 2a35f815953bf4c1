"""Teacher forcing with tree attention, the level view of the trie, teacher data (round trip, determinism,
resume, errors), on-policy data, the draft trainer and its commands."""

import json

import pytest
import torch

from atspeed_ext.align.forcing import forced_level_log_probs
from atspeed_ext.align.levels import LevelView
from atspeed_ext.align.teacher import TeacherData, generate_teacher_data
from atspeed_ext.align.trainer import AlignConfig, on_policy_chains, train_draft
from atspeed_ext.cli import main
from atspeed_ext.decoder import BeamSearchDecoder
from atspeed_ext.models import build_model, load_checkpoint
from atspeed_ext.spec_decoder import SpecBeamDecoder
from atspeed_ext.synthetic import synthetic_recdata
from atspeed_ext.tokenizer import CodeTokenizer
from atspeed_ext.train import TrainConfig

from conftest import tiny_model


@pytest.fixture(scope="module")
def setup():
    data = synthetic_recdata(num_users=120, num_items=40, codes_per_level=5, seed=1)
    tok = CodeTokenizer(data.identifiers)
    return data, tok, LevelView(tok.trie(), tok.item_token_ids)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tree_forcing_equals_one_forward_per_chain(setup, family):
    data, tok, levels = setup
    model = tiny_model(family, vocab_size=tok.vocab_size, seed=2)
    prompts = [tok.encode_prompt([1, 2, 3]), tok.encode_prompt([4]), tok.encode_prompt([5, 6])]
    chains = tok.item_token_ids[torch.tensor([[0, 5, 7], [9, 1, 2], [3, 3, 8]])].clone()
    chains[1, 2] = -1                                      # an invalid chain is fed as padding
    got = forced_level_log_probs(model, prompts, chains, levels.level_tokens)
    for b, prompt in enumerate(prompts):
        for c in range(3):
            if chains[b, c, 0] < 0:
                continue
            ids = torch.tensor([prompt + chains[b, c].tolist()])
            full = model(input_ids=ids).logits.log_softmax(-1)[0, len(prompt) - 1:len(prompt) + 3]
            want = levels.gather(full.unsqueeze(0))[0]
            assert torch.allclose(got[b, c], want, atol=1e-10)


def test_level_view_walk_matches_the_trie(setup):
    data, tok, levels = setup
    trie = tok.trie()
    chains = tok.item_token_ids[:10].clone()
    # row 3: a depth-1 code that exists at depth 1 but not under row 3's first code -> nothing allowed after it
    under = set(trie.children(chains[3, :1].tolist()))
    chains[3, 1] = next(t for t in levels.level_tokens[1].tolist() if t >= 0 and t not in under)
    slots, allowed = levels.walk(chains)
    assert allowed[3, 1].any() and not allowed[3, 2:].any()
    for r in range(10):
        seq = chains[r].tolist()
        for d in range(levels.depth):
            want = set(trie.children(seq[:d]))  # [] below a prefix off the trie
            got = set(levels.level_tokens[d][allowed[r, d]].tolist())
            assert got == want, (r, d)
            assert levels.level_tokens[d, slots[r, d]] == seq[d]
    _, allowed = levels.walk(torch.full((1, levels.depth), -1))
    assert not allowed.any()
    with pytest.raises(ValueError, match="without EOS"):
        LevelView(tok.trie(with_eos=True), tok.item_token_ids)


def test_teacher_data_round_trip_deterministic_and_resumable(setup, tmp_path):
    data, tok, levels = setup
    model = build_model("tiny-1x64", tok.vocab_size, seed=0).eval()
    examples = data.train_examples()[:70]
    generate_teacher_data(model, tok, examples, tmp_path, num_beams=4, batch_size=9, shard_size=32, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["num_examples"] == 70 and len(meta["shards"]) == 3 and meta["bytes"] > 0
    first = {s: (tmp_path / s).read_bytes() for s in meta["shards"]}
    stamps = {s: (tmp_path / s).stat().st_mtime_ns for s in meta["shards"]}
    (tmp_path / meta["shards"][1]).unlink()                  # an interrupted run: resume writes only that shard
    model.train()  # the data does not depend on the mode (dropout off while teaching), which is restored
    generate_teacher_data(model, tok, examples, tmp_path, num_beams=4, batch_size=9, shard_size=32, progress=False)
    assert model.training
    assert {s: (tmp_path / s).read_bytes() for s in meta["shards"]} == first  # deterministic: the same bytes
    for s in (meta["shards"][0], meta["shards"][2]):
        assert (tmp_path / s).stat().st_mtime_ns == stamps[s]  # finished shards were left alone

    teacher = TeacherData(tmp_path, levels, tok.identifiers)
    rows = [0, 33, 69]
    chains, logp = teacher.get(rows)
    for r, i in enumerate(rows):
        prompt = tok.encode_prompt(examples[i][0])
        beams = BeamSearchDecoder(model, tok.trie(), 4).generate([prompt]).sequences[0]
        assert chains[r, 1:].equal(beams) and chains[r, 0].equal(tok.item_token_ids[examples[i][1]])
        want = forced_level_log_probs(model, [prompt], chains[r:r + 1], levels.level_tokens)[0]
        _, allowed = levels.walk(chains[r:r + 1])
        assert torch.allclose(logp[r][allowed[0]], want[allowed[0]], atol=2e-3)  # float16 storage
        assert torch.isinf(logp[r][~allowed[0]]).all()     # nothing stored outside the trie

    with pytest.raises(ValueError, match="other settings.*num_beams"):
        generate_teacher_data(model, tok, examples, tmp_path, num_beams=5, batch_size=9, shard_size=32,
                              progress=False)
    other = build_model("tiny-1x64", tok.vocab_size, seed=7)
    with pytest.raises(ValueError, match="other settings.*model_hash"):  # another target cannot resume it
        generate_teacher_data(other, tok, examples, tmp_path, num_beams=4, batch_size=9, shard_size=32,
                              progress=False)
    with pytest.raises(ValueError, match="no teacher rows"):
        teacher.get([])
    with pytest.raises(IndexError, match="out of range"):
        teacher.get([70])
    (tmp_path / meta["shards"][2]).unlink()
    with pytest.raises(ValueError, match="incomplete"):
        TeacherData(tmp_path, levels)


@pytest.mark.parametrize("damage", ["truncate", "header", "empty", "shape"])
def test_a_damaged_shard_is_refused_by_the_reader_and_computed_again(setup, tmp_path, damage, capsys):
    # A damaged shard used to count as done ("complete: nothing to compute") and to crash train-draft with a
    # raw SafetensorError.
    from safetensors.torch import load_file, save_file

    data, tok, levels = setup
    model = build_model("tiny-1x64", tok.vocab_size, seed=0).eval()
    examples = data.train_examples()[:40]
    run = lambda: generate_teacher_data(model, tok, examples, tmp_path, num_beams=4, batch_size=9,  # noqa: E731
                                        shard_size=32, progress=False)
    run()
    shard = tmp_path / "shard_00001.safetensors"  # 8 prompts
    whole = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(whole[:-10])
    elif damage == "header":
        shard.write_bytes(b"\xff" * 8 + whole[8:])
    elif damage == "empty":
        shard.write_bytes(b"")
    else:  # a readable file of the wrong shape (another run's shard)
        tensors = load_file(str(shard))
        save_file({k: v[:-1] for k, v in tensors.items()}, str(shard))
    with pytest.raises(ValueError, match="shard_00001.safetensors is damaged .*rerun `atspeed-ext teacher`"):
        TeacherData(tmp_path, levels)
    run()
    assert "shard_00001.safetensors is damaged" in capsys.readouterr().err
    assert shard.read_bytes() == whole  # computed again, the same bytes
    TeacherData(tmp_path, levels).get([35])


def test_teacher_with_uneven_levels_and_invalid_beams(tmp_path):
    """Levels of 3, 5 and 2 codes (padding slots) and more beams than items (invalid beams): stored and read
    back exactly where the trie allows, -inf elsewhere, and every loss stays finite."""
    from atspeed_ext.align.losses import OBJECTIVES, alignment_loss

    g = torch.Generator().manual_seed(0)
    idents = sorted({(f"<a_{int(a)}>", f"<b_{int(b)}>", f"<c_{int(c)}>")
                     for a, b, c in zip(torch.randint(0, 3, (30,), generator=g), torch.randint(0, 5, (30,), generator=g),
                                        torch.randint(0, 2, (30,), generator=g))})
    tok = CodeTokenizer(idents)
    levels = LevelView(tok.trie(), tok.item_token_ids)
    assert (levels.level_tokens < 0).any()                  # padding slots exist
    examples = [((i % len(idents), (i + 1) % len(idents)), (i + 2) % len(idents)) for i in range(12)]
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)
    K = len(idents) + 3
    generate_teacher_data(model, tok, examples, tmp_path, num_beams=K, batch_size=5, progress=False)
    chains, logp = TeacherData(tmp_path, levels, tok.identifiers).get(list(range(12)))
    assert (chains[:, 1:, 0] < 0).any()                       # invalid beams
    prompts = [tok.encode_prompt(h) for h, _ in examples]
    want = forced_level_log_probs(model, prompts, chains, levels.level_tokens)
    _, allowed = levels.walk(chains)
    assert torch.allclose(logp[allowed], want[allowed], atol=2e-3) and torch.isinf(logp[~allowed]).all()
    slots, _ = levels.walk(chains)
    q = want.detach().clone().requires_grad_(True)
    for objective in OBJECTIVES:
        loss = alignment_loss(objective, q, logp, allowed, slots, topk=4)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(q.grad).all(), objective
        q.grad = None


def test_on_policy_chains_are_the_drafts_beams_scored_by_the_target(setup):
    data, tok, levels = setup
    target = build_model("tiny-1x64", tok.vocab_size, seed=1).eval()
    draft = build_model("tiny-1x64", tok.vocab_size, seed=2).train()
    prompts = [tok.encode_prompt(h) for h, _ in data.train_examples()[:3]]
    truth = tok.item_token_ids[[t for _, t in data.train_examples()[:3]]].unsqueeze(1)
    chains, p = on_policy_chains(draft, target, tok.trie(), levels, prompts, truth, 5)
    assert draft.training                                   # left as it was
    assert chains[:, 1:].equal(BeamSearchDecoder(draft.eval(), tok.trie(), 5).generate(prompts).sequences)
    assert torch.allclose(p, forced_level_log_probs(target, prompts, chains, levels.level_tokens))


def _train(setup, tmp_path, objective, on_policy=False, teacher_beams=4, precision="fp32"):
    data, tok, levels = setup
    target = build_model("tiny-1x64", tok.vocab_size, seed=1).eval()
    teacher = None
    if not on_policy:
        generate_teacher_data(target, tok, data.train_examples()[:200], tmp_path / "teacher",
                              num_beams=teacher_beams, progress=False)
        teacher = TeacherData(tmp_path / "teacher", levels)
    draft = build_model("tiny-1x64", tok.vocab_size, seed=5)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, eval_prompts=12, precision=precision)
    align = AlignConfig(objective=objective, topk=3, on_policy=on_policy, val_beams=3, val_draft_beams=6)
    state = train_draft(draft, target, tok, data, tmp_path / "run", cfg, align, teacher=teacher, progress=False)
    return data, tok, target, state


@pytest.mark.parametrize("objective,on_policy", [("ce", False), ("wordkd", False), ("atspeed-s", False),
                                                 ("atspeed-r", True)])
def test_train_draft_validates_by_accepted_levels(setup, tmp_path, objective, on_policy):
    data, tok, target, state = _train(setup, tmp_path, objective, on_policy)
    assert state["metric"] == "accepted_levels" and len(state["history"]) == 2
    # with teacher data (ce included) the examples are the 200 it covers; on-policy runs use them all
    assert state["step"] == 2 * (-(-(len(data.train_examples()) if on_policy else 200) // 32))
    best, _ = load_checkpoint(tmp_path / "run" / "best")
    spec = SpecBeamDecoder(target, best, tok.trie(), 3, 6, 3)
    prompts = [tok.encode_prompt(p.history) for p in data.valid_prompts()[:12]]
    rounds = [n for r in spec.generate(prompts).stats.accepted_levels for n in r]
    assert sum(rounds) / len(rounds) == pytest.approx(state["best"])  # the saved best is what was measured


@pytest.mark.parametrize("objective,on_policy", [("atspeed-s", False), ("seqkd", False), ("atspeed-r", True)])
def test_train_draft_in_bfloat16_autocast(setup, tmp_path, objective, on_policy):
    # The teacher data is stored in float16, which CPU bfloat16 autocast refuses to concatenate: the rows must be
    # widened before they are joined. The losses stay finite and the draft learns.
    data, tok, target, state = _train(setup, tmp_path, objective, on_policy, precision="bf16")
    losses = [h["train_loss"] for h in state["history"]]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), losses
    start = build_model("tiny-1x64", tok.vocab_size, seed=5).state_dict()
    trained = load_checkpoint(tmp_path / "run" / "last")[0].state_dict()
    assert any(not torch.equal(w, trained[n]) for n, w in start.items())


def test_train_draft_without_validation_prompts_runs_every_epoch(setup, tmp_path):
    data, tok, _ = setup
    target = build_model("tiny-1x64", tok.vocab_size, seed=1).eval()
    draft = build_model("tiny-1x64", tok.vocab_size, seed=5)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=5e-3, eval_prompts=0, patience=1)
    state = train_draft(draft, target, tok, data, tmp_path, cfg, AlignConfig(objective="ce"), progress=False)
    assert state["epoch"] == 3 and state["best"] is None  # no early stop on a metric that was never measured
    assert json.loads((tmp_path / "best" / "meta.json").read_text())["step"] == state["step"]


def test_train_draft_resumes_exactly_and_refuses_other_settings(setup, tmp_path, monkeypatch):
    data, tok, levels = setup
    target = build_model("tiny-1x64", tok.vocab_size, seed=1).eval()
    generate_teacher_data(target, tok, data.train_examples()[:96], tmp_path / "teacher", num_beams=3, progress=False)
    teacher = TeacherData(tmp_path / "teacher", levels)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, eval_prompts=6)
    align = AlignConfig(objective="atspeed-s", topk=3, val_beams=3, val_draft_beams=6)
    whole = build_model("tiny-1x64", tok.vocab_size, seed=5)
    train_draft(whole, target, tok, data, tmp_path / "whole", cfg, align, teacher=teacher, progress=False)
    import atspeed_ext.train as train_module

    def crash_after_first_checkpoint(message):  # the same run, killed after its first checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module.tqdm, "write", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_draft(build_model("tiny-1x64", tok.vocab_size, seed=5), target, tok, data, tmp_path / "part", cfg,
                    align, teacher=teacher, progress=False)
    monkeypatch.undo()
    resumed = build_model("tiny-1x64", tok.vocab_size, seed=9)  # other weights: the resume must load them
    state = train_draft(resumed, target, tok, data, tmp_path / "part", cfg, align, teacher=teacher, resume=True,
                        progress=False)
    assert state["step"] == 6
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="other settings .*'objective': 'atspeed-s'.* -> .*'objective': 'atspeed-r'"):
        train_draft(resumed, target, tok, data, tmp_path / "part", cfg, AlignConfig(objective="atspeed-r", topk=3,
                    val_beams=3, val_draft_beams=6), teacher=teacher, resume=True, progress=False)
    # The teacher is known by its contents: the same folder by another path resumes ...
    monkeypatch.chdir(tmp_path)
    same = TeacherData("teacher", levels)
    assert train_draft(resumed, target, tok, data, tmp_path / "part", cfg, align, teacher=same, resume=True,
                       progress=False)["step"] == 6
    # ... and another target is refused (here with ce, where the teacher data only picks the examples).
    ce = AlignConfig(objective="ce", val_beams=3, val_draft_beams=6)
    train_draft(build_model("tiny-1x64", tok.vocab_size, seed=5), target, tok, data, tmp_path / "ce", cfg, ce,
                teacher=teacher, progress=False)
    other = build_model("tiny-1x64", tok.vocab_size, seed=2).eval()
    with pytest.raises(ValueError, match="other settings \\(target '[0-9a-f]+' -> '[0-9a-f]+'\\)"):
        train_draft(build_model("tiny-1x64", tok.vocab_size, seed=5), other, tok, data, tmp_path / "ce", cfg, ce,
                    teacher=teacher, resume=True, progress=False)
    meta = json.loads((tmp_path / "whole" / "best" / "meta.json").read_text())
    assert meta["align"]["objective"] == "atspeed-s"         # the checkpoint says how it was trained
    # Without validation the val_* settings do nothing, so they cannot block a resume (CLI runs of different
    # versions stored the given values or the defaults); with validation they do.
    quiet = TrainConfig(epochs=2, batch_size=32, lr=5e-3, eval_prompts=0, max_steps=1)
    train_draft(build_model("tiny-1x64", tok.vocab_size, seed=5), target, tok, data, tmp_path / "quiet", quiet, ce,
                teacher=teacher, progress=False)
    other_val = AlignConfig(objective="ce", val_beams=4, val_draft_beams=20, val_gamma=1)
    assert train_draft(build_model("tiny-1x64", tok.vocab_size, seed=5), target, tok, data, tmp_path / "quiet",
                       quiet, other_val, teacher=teacher, resume=True, progress=False)["step"] == 1  # accepted
    with pytest.raises(ValueError, match="other settings .*'val_beams': 3"):
        train_draft(build_model("tiny-1x64", tok.vocab_size, seed=5), target, tok, data, tmp_path / "ce", cfg,
                    other_val, teacher=teacher, resume=True, progress=False)


def test_train_draft_bad_inputs(setup, tmp_path):
    data, tok, levels = setup
    with pytest.raises(ValueError, match="objective must be one of"):
        AlignConfig(objective="kl")
    with pytest.raises(ValueError, match="alpha"):
        AlignConfig(alpha=-0.1)
    with pytest.raises(ValueError, match=r"val_draft_beams \(N\) must be >= val_beams"):
        AlignConfig(val_beams=10, val_draft_beams=5)
    with pytest.raises(ValueError, match="on-policy data applies"):
        AlignConfig(objective="wordkd", on_policy=True)
    # These were accepted and failed at the first validation, after an epoch of training (or trained on-policy).
    for kwargs, message in (({"val_beams": 0}, "val_beams must be >= 1, got 0"),
                            ({"val_gamma": 0}, "val_gamma must be >= 1, got 0"),
                            ({"on_policy": "no"}, "AlignConfig.on_policy must be a bool, got 'no'"),
                            ({"topk": 2.5}, "AlignConfig.topk must be an int, got 2.5")):
        with pytest.raises(ValueError, match=message):
            AlignConfig(**kwargs)
    model = build_model("tiny-1x64", tok.vocab_size)
    with pytest.raises(ValueError, match="item 999 is not an item id"):  # was an IndexError
        generate_teacher_data(model, tok, [((1, 2), 999)], tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="the model embeds 10 and scores 10 tokens"):
        train_draft(build_model("tiny-1x64", 10), model, tok, data, tmp_path / "small", TrainConfig(epochs=1),
                    AlignConfig(objective="ce"))
    generate_teacher_data(model, tok, data.train_examples()[:20], tmp_path / "t", num_beams=2, progress=False)
    data.max_history = 1  # other prompts than the teacher's
    try:
        with pytest.raises(ValueError, match="made for other prompts"):
            train_draft(model, model, tok, data, tmp_path / "x", TrainConfig(epochs=1), AlignConfig(objective="seqkd"),
                        teacher=TeacherData(tmp_path / "t", levels))
    finally:
        data.max_history = 20
    with pytest.raises(ValueError, match="needs teacher data"):
        train_draft(model, model, tok, data, tmp_path, TrainConfig(epochs=1), AlignConfig(objective="seqkd"))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "meta.json").write_text('{"format": ')  # a write cut short (meta.json is now replaced atomically)
    with pytest.raises(ValueError, match="meta.json is not valid JSON"):
        TeacherData(damaged, levels)
    other = build_model("tiny-1x64", tok.vocab_size, seed=3)  # teacher data made by `model`, not by this target
    with pytest.raises(ValueError, match="made by another target"):
        train_draft(model, other, tok, data, tmp_path / "y", TrainConfig(epochs=1), AlignConfig(objective="seqkd"),
                    teacher=TeacherData(tmp_path / "t", levels))
    flash = build_model("tiny-1x64", tok.vocab_size)
    flash.config._attn_implementation = "flash_attention_2"  # takes no 4-D mask: refused before any training
    for draft, target, name in ((flash, model, "draft"), (model, flash, "target")):
        with pytest.raises(ValueError, match=f"{name} .*attn_implementation='flash_attention_2'"):
            train_draft(draft, target, tok, data, tmp_path / "flash", TrainConfig(epochs=1), AlignConfig(objective="ce"))
        assert not (tmp_path / "flash").exists()
    with pytest.raises(ValueError, match="history_dropout applies to train_next_item only"):
        train_draft(model, model, tok, data, tmp_path, TrainConfig(epochs=1, history_dropout=0.2), AlignConfig())
    with pytest.raises(ValueError, match="train_on_valid applies to train_next_item only"):
        train_draft(model, model, tok, data, tmp_path, TrainConfig(epochs=1, train_on_valid=True), AlignConfig())


def test_teacher_and_train_draft_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path))
    common = ["--synthetic-users", "80", "--synthetic-items", "30", "--device", "cpu"]
    assert main(["train-target", *common, "--preset", "tiny-1x64", "--epochs", "1", "--eval-prompts", "10",
                 "--out", str(tmp_path / "target")]) == 0
    assert main(["teacher", *common, "--checkpoint", str(tmp_path / "target" / "best"), "--num-beams", "3",
                 "--out", str(tmp_path / "teacher")]) == 0
    assert "MB in 1 shards" in capsys.readouterr().out
    assert main(["teacher", *common, "--checkpoint", str(tmp_path / "target" / "best"), "--num-beams", "3",
                 "--out", str(tmp_path / "teacher")]) == 0  # again: nothing left to do, and it says so
    assert "already held this teacher data, complete" in capsys.readouterr().out
    # Other settings into the same folder: refused, pointing at --overwrite, which replaces the data (only it).
    (tmp_path / "teacher" / "notes.txt").write_text("mine")
    teacher_k4 = ["teacher", *common, "--checkpoint", str(tmp_path / "target" / "best"), "--num-beams", "4",
                  "--out", str(tmp_path / "teacher")]
    with pytest.raises(SystemExit, match="num_beams.*differ.*teacher --overwrite"):
        main(teacher_k4)
    assert main([*teacher_k4, "--overwrite"]) == 0
    assert "--overwrite: deleted the teacher data" in capsys.readouterr().out
    assert json.loads((tmp_path / "teacher" / "meta.json").read_text())["num_beams"] == 4
    assert (tmp_path / "teacher" / "notes.txt").read_text() == "mine"
    assert main([*teacher_k4[:-4], "--num-beams", "3", "--out", str(tmp_path / "teacher"), "--overwrite"]) == 0
    # A checkpoint folder as --out: refused, also with --overwrite, and its meta.json survives.
    ckpt_meta = (tmp_path / "target" / "best" / "meta.json").read_text()
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match="holds a meta.json that is not teacher data"):
            main([*teacher_k4[:-1], str(tmp_path / "target" / "best"), *extra])
    assert (tmp_path / "target" / "best" / "meta.json").read_text() == ckpt_meta
    with pytest.raises(SystemExit, match="needs --teacher DIR .*teacher`\\) or --on-policy"):
        main(["train-draft", *common, "--target", str(tmp_path / "target" / "best"), "--objective", "atspeed-s"])
    with pytest.raises(SystemExit, match="needs --teacher DIR .*teacher`\\)$"):  # no on-policy data for wordkd
        main(["train-draft", *common, "--target", str(tmp_path / "target" / "best"), "--objective", "wordkd"])
    with pytest.raises(SystemExit, match="would overwrite the checkpoint --init"):
        main(["train-draft", *common, "--target", str(tmp_path / "target" / "best"), "--objective", "ce",
              "--init", str(tmp_path / "target" / "best"), "--out", str(tmp_path / "target"), "--overwrite"])
    assert (tmp_path / "target" / "best" / "model.safetensors").exists()
    assert main(["train-draft", *common, "--target", str(tmp_path / "target" / "best"), "--teacher",
                 str(tmp_path / "teacher"), "--objective", "atspeed-s", "--preset", "tiny-1x64", "--epochs", "1",
                 "--topk", "3", "--val-beams", "3", "--val-draft-beams", "6", "--eval-prompts", "8"]) == 0
    out = capsys.readouterr().out
    assert "best valid accepted_levels" in out and "(accepted levels per round)" in out
    assert (tmp_path / "synthetic-draft-tiny-1x64-atspeed-s" / "best" / "model.safetensors").exists()

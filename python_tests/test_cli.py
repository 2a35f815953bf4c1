"""The command line: the demo runs end to end on the embedded default and rejects bad options."""

import pytest
import torch
from safetensors.torch import load_file

from atspeed_ext.cli import main
from atspeed_ext.evaluate import evaluate_popularity
from atspeed_ext.machine import machine_name
from atspeed_ext.synthetic import synthetic_identifiers, synthetic_recdata


def test_demo_trains_caches_and_decodes_losslessly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path))
    argv = ["demo", "--users", "80", "--items", "30", "--target-preset", "tiny-1x64", "--draft-preset", "tiny-1x64",
            "--epochs", "1", "--requests", "6", "--num-beams", "3", "--draft-beams", "5", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "training stage 1/1 on synthetic" in out and "identical beams: True" in out
    assert "| target-only beam search |" in out and "| speculative beam search |" in out
    assert main(argv) == 0                                   # second run: from the cache, no training
    out = capsys.readouterr().out
    assert "training stage" not in out and out.count("stage 1/1 from the cache") == 2
    # One preset for both: the draft is another model (own cache folder and seed), not the target itself.
    target_dir, draft_dir = (next(tmp_path.glob(f"demo-synthetic80x30-{tag}tiny-1x64-s1-*")) for tag in ("", "draft-"))
    assert target_dir != draft_dir
    t, d = (load_file(str(x / "best" / "model.safetensors")) for x in (target_dir, draft_dir))
    assert any(not torch.equal(t[k], d[k]) for k in t)
    assert "nothing to resume" not in out                    # fresh stages train without a resume message


def test_demo_rejects_bad_options():
    with pytest.raises(SystemExit):
        main(["demo", "--num-beams", "0"])
    with pytest.raises(SystemExit):
        main(["unknown"])


def test_synthetic_identifiers_are_deterministic_and_valid():
    a = synthetic_identifiers(500, depth=4, codes_per_level=16, seed=3, num_shared=5)
    assert a.equal(synthetic_identifiers(500, depth=4, codes_per_level=16, seed=3, num_shared=5))
    assert not a.equal(synthetic_identifiers(500, depth=4, codes_per_level=16, seed=4, num_shared=5))
    for level in range(4):  # each level in its own token block
        assert a[:, level].min() >= 3 + 16 * level and a[:, level].max() < 3 + 16 * (level + 1)
    assert a[499].equal(a[0])
    for n, shared in ((4, 3), (10, 8), (10, 5)):  # more copies than originals: each copy is of an original
        ids = synthetic_identifiers(n, depth=2, codes_per_level=1000, seed=0, num_shared=shared)
        assert len({tuple(r) for r in ids.tolist()}) == n - shared
    with pytest.raises(ValueError, match="num_shared"):
        synthetic_identifiers(10, num_shared=10)
    with pytest.raises(ValueError, match=">= 1"):
        synthetic_identifiers(0)


def test_train_target_then_eval_writes_a_report(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    common = ["--synthetic-users", "120", "--synthetic-items", "40", "--device", "cpu"]
    assert main(["train-target", "--preset", "tiny-1x64", "--out", str(out), "--epochs", "1", "--batch-size", "32",
                 "--eval-prompts", "20", *common]) == 0
    assert (out / "best" / "model.safetensors").exists() and (out / "last" / "trainer_state.json").exists()
    assert main(["eval", "--checkpoint", str(out / "best"), "--ks", "5", "10", "--limit", "30", *common]) == 0
    report = json.loads((out / "best" / "eval_test_limit30.json").read_text())  # eval_test.json: all prompts
    means = {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
    assert set(report["metrics"]) == means | {f"{m}_se" for m in means}
    assert report["prompts"] == 30 and set(report["popularity"]) == set(report["metrics"])
    assert report["machine"] == machine_name("cpu") and report["machine"].endswith(" torch threads")  # CPU model
    assert f"| recall@10 | {report['metrics']['recall@10']:.4f} ± " in capsys.readouterr().out
    meta = json.loads((out / "best" / "meta.json").read_text())
    assert report["model_step"] == meta["step"] and meta["max_history"] == report["max_history"] == 20
    assert len(report["model_weights"]) == 16  # which weights the report describes
    # Another history length than the model was trained with is pointed out.
    assert main(["eval", "--checkpoint", str(out / "best"), "--ks", "5", "--limit", "3", "--max-history", "5",
                 *common]) == 0
    assert "trained on histories of at most 20 items but these prompts take up to 5" in capsys.readouterr().err


def test_eval_refuses_a_checkpoint_of_other_data(tmp_path):
    out = tmp_path / "run"
    assert main(["train-target", "--preset", "tiny-1x64", "--out", str(out), "--epochs", "1", "--synthetic-users", "50",
                 "--synthetic-items", "30", "--eval-prompts", "5", "--device", "cpu"]) == 0
    with pytest.raises(SystemExit, match="identifiers differ"):
        main(["eval", "--checkpoint", str(out / "best"), "--synthetic-users", "50", "--synthetic-items", "31",
              "--device", "cpu"])


@pytest.mark.parametrize("option, value, message", [("--dropout", "1", "must be in [0, 1), got 1.0"),
                                                    ("--history-dropout", "1", "must be in [0, 1), got 1.0"),
                                                    ("--warmup-ratio", "-0.1", "must be in [0, 1), got -0.1"),
                                                    ("--lr", "0", "must be in (0, inf), got 0.0"),
                                                    ("--weight-decay", "-1", "must be in [0, inf), got -1.0")])
def test_bad_training_options_are_refused_before_any_work(option, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-target", "--preset", "tiny-1x64", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--history-dropout", "0.2"], ["--train-on-valid"], ["--valid-only"]])
def test_train_target_only_options(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-draft", "--target", "t", "--teacher", "x", *option])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {option[0]}" in capsys.readouterr().err


def test_train_on_valid_run_is_marked_and_evaluating_it_on_valid_warns(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path / "cache"))
    common = ["--synthetic-users", "60", "--synthetic-items", "30", "--device", "cpu"]
    assert main(["train-target", "--preset", "tiny-1x64", "--epochs", "1", "--train-on-valid", *common]) == 0
    assert "done: " in capsys.readouterr().out
    best = tmp_path / "cache" / "synthetic-tiny-1x64-trainvalid" / "best"  # not the validated run's folder
    for split, warned in (("test", False), ("valid", True)):
        assert main(["eval", "--checkpoint", str(best), "--split", split, "--limit", "10", *common]) == 0
        assert ("metrics measure training data" in capsys.readouterr().err) == warned
        report = json.loads((best / f"eval_{split}_limit10.json").read_text())
        assert report["trained_on_valid"] is True
    # Its popularity baseline counts the validation items too (the interactions the model learnt from).
    data = synthetic_recdata(num_users=60, num_items=30)
    assert report["popularity"] == evaluate_popularity(data, data.valid_prompts()[:10], ks=(5, 10, 20),
                                                       standard_errors=True, include_valid=True)


def test_init_runs_get_their_own_folders_and_never_overwrite_their_start(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path / "cache"))
    common = ["--synthetic-users", "60", "--synthetic-items", "30", "--device", "cpu", "--epochs", "1"]
    base = tmp_path / "cache" / "synthetic-myrun"
    assert main(["train-target", "--preset", "tiny-1x64", "--out", str(base), *common]) == 0
    capsys.readouterr()
    weights = (base / "best" / "model.safetensors").read_bytes()
    data = synthetic_recdata(num_users=60, num_items=30)
    for extra, folder, examples in (([], "synthetic-myrun-cont", len(data.train_examples())),
                                    (["--valid-only", "--lr", "1e-4"], "synthetic-myrun-validonly",
                                     len(data.valid_examples()))):
        assert main(["train-target", "--init", str(base / "best"), *extra, *common]) == 0
        out = capsys.readouterr().out
        assert f": {examples} examples, " in out and f"checkpoints in {tmp_path / 'cache' / folder}" in out
        meta = json.loads((tmp_path / "cache" / folder / "best" / "meta.json").read_text())
        assert meta.get("valid_only", False) is ("--valid-only" in extra)
    assert (base / "best" / "model.safetensors").read_bytes() == weights  # the start is untouched
    with pytest.raises(SystemExit, match="would overwrite the checkpoint --init .* starts from"):
        main(["train-target", "--init", str(base / "best"), "--out", str(base), *common])
    with pytest.raises(SystemExit, match="--valid-only fine-tunes a trained model .* give --init RUN/best"):
        main(["train-target", "--preset", "tiny-1x64", "--valid-only", *common])


def test_run_names():
    from atspeed_ext.commands import run_name
    from atspeed_ext.train import TrainConfig

    plain, on_valid, only_valid = TrainConfig(), TrainConfig(train_on_valid=True), TrainConfig(valid_only=True)
    assert run_name("target-8x512", None, "beauty", plain) == "beauty-target-8x512"
    assert run_name("target-8x512", None, "beauty", on_valid) == "beauty-target-8x512-trainvalid"
    assert run_name("x", "/c/beauty-target-8x512/best", "beauty", plain) == "beauty-target-8x512-cont"
    assert run_name("x", "/c/beauty-target-8x512/best", "beauty", on_valid) == "beauty-target-8x512-cont-trainvalid"
    assert run_name("x", "/c/beauty-target-8x512/best", "beauty", only_valid) == "beauty-target-8x512-validonly"
    assert run_name("x", "/c/beauty-target-8x512/last", "beauty", plain) == "beauty-target-8x512-last-cont"
    assert run_name("x", "/models/qwen2-0.5b", "beauty", plain) == "beauty-qwen2-0.5b-cont"  # any HF folder


def test_device_under_torchrun_is_one_gpu_per_process(monkeypatch):
    from types import SimpleNamespace

    import torch

    from atspeed_ext.commands import device_of

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device_of(SimpleNamespace(device="cuda")) == torch.device("cuda", 1)
    assert device_of(SimpleNamespace(device=None)) == torch.device("cuda", 1)
    assert device_of(SimpleNamespace(device="cpu")) == torch.device("cpu")
    with pytest.raises(SystemExit, match=r"--device cuda:0 would put all 2 torchrun processes of this machine on one"):
        device_of(SimpleNamespace(device="cuda:0"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(SystemExit, match=r"started 4 processes on this machine but only 2 GPUs are visible"):
        device_of(SimpleNamespace(device="cuda"))
    # One GPU visible per process (the launcher set CUDA_VISIBLE_DEVICES), or one process per machine: as given.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_of(SimpleNamespace(device="cuda")) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert device_of(SimpleNamespace(device="cuda:1")) == torch.device("cuda", 1)


def test_trained_recipe_chains_its_stages_and_caches_each(tmp_path, monkeypatch, capsys):
    import torch

    from atspeed_ext.commands import trained_recipe
    from atspeed_ext.models import build_model, load_checkpoint
    from atspeed_ext.tokenizer import CodeTokenizer
    from atspeed_ext.train import TrainConfig

    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path))
    data = synthetic_recdata(num_users=60, num_items=30)
    tokenizer = CodeTokenizer(data.identifiers)
    # Stage 2 moves the weights by ~1e-9 per step: its model is stage 1's best, not a fresh one.
    stages = [TrainConfig(epochs=1, batch_size=32, lr=3e-3, eval_prompts=20, seed=1),
              TrainConfig(epochs=1, batch_size=32, lr=1e-9, weight_decay=0.0, valid_only=True)]
    model = trained_recipe("tiny-1x64", data, tokenizer, stages, "cpu", tag="t")
    assert capsys.readouterr().out.count("training stage") == 2
    first_dir, second_dir = sorted(tmp_path.iterdir())
    assert first_dir.name.startswith("t-tiny-1x64-s1-") and second_dir.name.startswith("t-tiny-1x64-s2-")
    first = load_checkpoint(first_dir / "best", "cpu")[0].state_dict()
    fresh = build_model("tiny-1x64", tokenizer.vocab_size, seed=1).state_dict()
    for name, weight in model.state_dict().items():
        assert torch.allclose(weight, first[name], atol=1e-6), name
    assert any(not torch.allclose(w, fresh[n], atol=1e-3) for n, w in first.items())  # stage 1 did train
    assert (second_dir / "best" / "meta.json").read_text().count('"valid_only": true') == 1

    again = trained_recipe("tiny-1x64", data, tokenizer, stages, "cpu", tag="t")
    out = capsys.readouterr().out
    assert "training stage" not in out and out.count("from the cache") == 2
    assert all(torch.equal(w, again.state_dict()[n]) for n, w in model.state_dict().items())
    # A recipe with the same first stage reuses it; its changed second stage is trained anew.
    trained_recipe("tiny-1x64", data, tokenizer, stages[:1] + [TrainConfig(epochs=1, lr=1e-4, valid_only=True)],
                   "cpu", tag="t")
    out = capsys.readouterr().out
    assert "stage 1/2 from the cache" in out and "training stage 2/2" in out and len(list(tmp_path.iterdir())) == 3
    with pytest.raises(ValueError, match="at least one training stage"):
        trained_recipe("tiny-1x64", data, tokenizer, [], "cpu", tag="t")
    # Other data under the same tag and settings is trained anew, not served another data set's model.
    other = synthetic_recdata(num_users=61, num_items=30)
    trained_recipe("tiny-1x64", other, CodeTokenizer(other.identifiers), stages[:1], "cpu", tag="t")
    assert "training stage 1/1" in capsys.readouterr().out and len(list(tmp_path.iterdir())) == 4


def test_trained_recipe_resumes_an_interrupted_stage(tmp_path, monkeypatch, capsys):
    from atspeed_ext.commands import trained_recipe
    from atspeed_ext.tokenizer import CodeTokenizer
    from atspeed_ext.train import TrainConfig

    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path))
    data = synthetic_recdata(num_users=60, num_items=30)
    tokenizer = CodeTokenizer(data.identifiers)
    stages = [TrainConfig(epochs=2, batch_size=32, lr=3e-3, eval_prompts=20)]
    trained_recipe("tiny-1x64", data, tokenizer, stages, "cpu", tag="t")
    (stage,) = tmp_path.iterdir()
    (stage / "recipe.json").unlink()  # as if killed after its last checkpoint, before the stage was marked done
    trained_recipe("tiny-1x64", data, tokenizer, stages, "cpu", tag="t")
    out = capsys.readouterr().out
    assert out.count("training stage 1/1") == 2 and "resumed from" in out and (stage / "recipe.json").exists()


SMALL = ["--synthetic-users", "80", "--synthetic-items", "30", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train-target", *SMALL, "--preset", "tiny-1x64", "--max-steps", "2", "--eval-prompts", "10",
                 "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("argv, message", [
    (["train-target", "--max-steps", "-5"], "argument --max-steps: must be >= 0, got -5"),
    (["train-target", "--eval-every", "-2"], "argument --eval-every: must be >= 0, got -2"),
    (["train-target", "--epochs", "abc"], "argument --epochs: invalid integer >= 1 value: 'abc'"),
    (["train-target", "--lr", "abc"], "argument --lr: invalid number value: 'abc'"),
    (["train-target", "--lr", "nan"], "argument --lr: must be in (0, inf), got nan"),
    (["eval", "--checkpoint", "x", "--limit", "-3"], "argument --limit: must be >= 0, got -3"),
    (["teacher", "--checkpoint", "x", "--limit", "-1"], "argument --limit: must be >= 0, got -1"),
    (["train-draft", "--target", "x", "--temperature", "nan"], "argument --temperature: must be in (0, inf), got nan"),
    (["train-draft", "--target", "x", "--alpha", "1.5"], "argument --alpha: must be in [0, 1], got 1.5"),
    (["eval", "--checkpoint", "x", "--draft-beams", "20,x"],
     "argument --draft-beams: expected N or N1,N2,... (integers >= 1), got '20,x'"),
    (["eval", "--checkpoint", "x", "--draft-beams", "20,0"], "argument --draft-beams: every width must be >= 1"),
    (["train-target", "--seed", "-1"], "argument --seed: must be in [0, 2**63), got -1"),
    (["train-target", "--seed", str(2 ** 64)], "argument --seed: must be in [0, 2**63)"),  # was: "Overflow ..."
    (["train-target", "--synthetic-items", "1"], "argument --synthetic-items: must be >= 2, got 1"),
    (["demo", "--items", "1"], "argument --items: must be >= 2, got 1"),
])
def test_bad_option_values_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_user_errors_end_with_a_message_not_a_traceback(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path / "cache"))
    best = str(tiny_run / "best")
    n = len(set(synthetic_recdata(num_users=80, num_items=30).identifiers))  # 30 items, some sharing one
    cases = [
        (["eval", "--data", str(tmp_path / "missing"), "--checkpoint", best], "missing"),
        (["eval", *SMALL, "--checkpoint", str(tmp_path / "nothing")], "nothing"),
        (["train-target", *SMALL, "--device", "foo"], "--device 'foo' is not a device"),
        (["train-target", *SMALL, "--preset", "nope", "--out", str(tmp_path / "p")], "unknown preset 'nope'"),
        (["eval", *SMALL, "--checkpoint", best, "--output", str(tmp_path / "nodir" / "x.json")],
         "the folder " + str(tmp_path / "nodir") + " does not exist"),
        (["eval", *SMALL, "--checkpoint", best, "--ks", "5", "20000"],
         f"--ks 20000 is more than the {n} distinct item identifiers"),
        (["eval", *SMALL, "--checkpoint", best, "--with-eos"], "was trained without <eos>"),
        (["teacher", *SMALL, "--checkpoint", best, "--num-beams", str(n + 1), "--out", str(tmp_path / "t")],
         f"--num-beams {n + 1} is more than the {n} distinct item identifiers"),
        (["demo", "--device", "cpu", "--users", "80", "--items", "30", "--num-beams", str(n + 1), "--draft-beams",
          "40"], f"--num-beams {n + 1} is more than the {n} distinct item identifiers"),
        (["demo", "--device", "cpu", "--num-beams", "10", "--draft-beams", "5"], "must be >= --num-beams (K = 10)"),
        # a retry into a folder holding a run is refused unless --resume or --overwrite says what to do
        (["train-target", *SMALL, "--preset", "tiny-1x64", "--max-steps", "2", "--out", str(tiny_run)],
         "already holds a run (best and last/); pass --resume"),
        (["train-target", *SMALL, "--preset", "tiny-1x64", "--max-steps", "2", "--eval-prompts", "10", "--lr", "0.5",
          "--out", str(tiny_run), "--resume"], "other settings (lr 0.001 -> 0.5)"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and message in e.value.code, argv
    assert not (tmp_path / "cache").exists()  # the demo's checks came before any training
    (tmp_path / "damaged" / "last").mkdir(parents=True)
    (tmp_path / "damaged" / "last" / "trainer_state.json").write_text("{\n")
    with pytest.raises(SystemExit, match="trainer_state.json is not valid JSON"):
        main(["train-target", *SMALL, "--preset", "tiny-1x64", "--out", str(tmp_path / "damaged"), "--resume"])
    monkeypatch.setenv("ATSPEED_DEBUG", "1")  # the traceback instead of the one-line message
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        main(["train-target", *SMALL, "--preset", "nope", "--out", str(tmp_path / "p")])


def test_demo_without_test_items_stops_before_training(tmp_path, monkeypatch, capsys):
    from atspeed_ext import demo

    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path))
    no_test = synthetic_recdata(num_users=80, num_items=30)
    no_test.test = {}
    monkeypatch.setattr(demo, "synthetic_recdata", lambda **kw: no_test)
    with pytest.raises(SystemExit, match="has a test item .*nothing to decode"):
        main(["demo", "--users", "80", "--items", "30", "--target-preset", "tiny-1x64", "--draft-preset", "tiny-1x64",
              "--epochs", "1", "--device", "cpu"])
    assert "training" not in capsys.readouterr().out and not any(tmp_path.iterdir())


def test_unusable_outputs_are_refused_before_any_work(tiny_run, tmp_path, capsys):
    a_file = tmp_path / "e.json"
    a_file.write_text("{}")
    for argv, message in (
            (["train-target", *SMALL, "--preset", "tiny-1x64", "--out", str(a_file)], "--out .* is a file"),
            (["teacher", *SMALL, "--checkpoint", str(tiny_run / "best"), "--num-beams", "3", "--out", str(a_file)],
             "--out .* is a file"),
            (["eval", *SMALL, "--checkpoint", str(tiny_run / "best"), "--output", str(tmp_path)], "is a folder"),
            (["eval", *SMALL, "--checkpoint", str(tiny_run / "best"), "--output", str(a_file / "x.json")],
             "does not exist")):
        with pytest.raises(SystemExit, match=message):
            main(argv)
        assert "train:" not in capsys.readouterr().err


def test_interrupt_says_how_to_continue(monkeypatch, capsys):
    from atspeed_ext import commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run_train_target", interrupted)
    assert main(["train-target", *SMALL]) == 130
    assert "interrupted: rerun the same command with --resume" in capsys.readouterr().err


def test_home_in_paths_is_expanded(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ATSPEED_CACHE", "~/cache")
    monkeypatch.chdir(tmp_path)
    assert main(["teacher", *SMALL, "--checkpoint", str(tiny_run / "best"), "--num-beams", "3", "--limit", "8"]) == 0
    assert (tmp_path / "cache").is_dir() and not (tmp_path / "~").exists()
    assert main(["teacher", *SMALL, "--checkpoint", str(tiny_run / "best"), "--num-beams", "3", "--limit", "8",
                 "--out=~/teach"]) == 0
    assert (tmp_path / "teach" / "meta.json").exists()


def test_demo_trains_without_validation_on_data_that_has_none(tmp_path, monkeypatch, capsys):
    from atspeed_ext import demo

    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path))
    no_valid = synthetic_recdata(num_users=80, num_items=30)
    no_valid.valid = {}
    monkeypatch.setattr(demo, "synthetic_recdata", lambda **kw: no_valid)
    assert main(["demo", "--users", "80", "--items", "30", "--target-preset", "tiny-1x64", "--draft-preset",
                 "tiny-1x64", "--epochs", "1", "--requests", "2", "--num-beams", "3", "--draft-beams", "5",
                 "--device", "cpu"]) == 0
    assert "no validation (saved as best)" in capsys.readouterr().out


def test_train_draft_default_folder_is_named_after_the_init_run(tiny_run, tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.setenv("ATSPEED_CACHE", str(tmp_path))
    init = tmp_path / "synthetic-tiny-1x64"  # the default name of a train-target run on this data
    shutil.copytree(tiny_run / "best", init / "best")
    argv = ["train-draft", *SMALL, "--target", str(tiny_run / "best"), "--init", str(init / "best"),
            "--objective", "ce", "--max-steps", "1", "--eval-prompts", "4"]
    assert main(argv) == 0
    out = tmp_path / "synthetic-draft-tiny-1x64-ce"  # RUN/best -> RUN without its data prefix, not "best"
    assert (out / "best").is_dir()
    with pytest.raises(SystemExit, match="already holds a run"):
        main(argv)
    with pytest.raises(SystemExit, match="not both"):
        main(argv + ["--overwrite", "--resume"])
    (out / "best" / "stale.json").write_text("{}")
    assert main(argv + ["--overwrite"]) == 0
    assert "--overwrite: deleted best, last" in capsys.readouterr().out
    assert (out / "best" / "model.safetensors").exists() and not (out / "best" / "stale.json").exists()
    init = tmp_path / "synthetic-draft-1x64"  # a run already named a draft: "draft" is not repeated
    shutil.copytree(tiny_run / "best", init / "best")
    assert main(argv[:argv.index("--init") + 1] + [str(init / "best")] + argv[argv.index("--init") + 2:]) == 0
    assert (tmp_path / "synthetic-draft-1x64-ce" / "best").is_dir()


def test_eval_with_a_draft_gives_the_same_metrics_and_reports_the_speculation(tiny_run, tmp_path, capsys):
    import json

    best = str(tiny_run / "best")
    other = tmp_path / "other"  # an unrelated draft: another seed, its own two steps
    assert main(["train-target", *SMALL, "--preset", "tiny-1x64", "--max-steps", "2", "--eval-prompts", "0",
                 "--seed", "7", "--out", str(other)]) == 0
    plain = tmp_path / "plain.json"
    assert main(["eval", *SMALL, "--checkpoint", best, "--ks", "3", "5", "--output", str(plain)]) == 0
    assert main(["eval", *SMALL, "--checkpoint", best, "--ks", "3", "5", "--draft", str(other / "best"),
                 "--gamma", "2"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tiny_run / "best" / "eval_test_spec-other.json").read_text())  # named after the draft
    assert report["metrics"] == json.loads(plain.read_text())["metrics"]  # lossless: beam search's lists
    spec = report["speculative"]
    assert spec["gamma"] == 2 and spec["draft_policy"] == "beam" and spec["beam_search_target_calls_per_request"] == 4
    assert [spec["per_k"][k]["draft_beams"] for k in ("3", "5")] == [6, 10]  # default N = 2K
    for v in spec["per_k"].values():  # gamma 2 on depth 4: at least 2 rounds of at most 3 levels, at most 4
        assert 2 <= v["target_calls_per_request"] <= 4 and 0 <= v["accepted_levels_per_round"] <= 2
    assert f"| 5 | 10 | {spec['per_k']['5']['accepted_levels_per_round']:.2f} |" in out
    # The target as its own draft with N = K accepts every drafted level: gamma 3 on depth 4 is one call.
    same = tmp_path / "same.json"
    assert main(["eval", *SMALL, "--checkpoint", best, "--ks", "5", "--draft", best, "--draft-beams", "5",
                 "--output", str(same)]) == 0
    per_k = json.loads(same.read_text())["speculative"]["per_k"]["5"]
    assert per_k["target_calls_per_request"] == 1 and per_k["accepted_levels_per_round"] == 3
    # One width per trie depth (depths 1-3 drafted): the same lists again.
    by_depth = tmp_path / "by_depth.json"
    assert main(["eval", *SMALL, "--checkpoint", best, "--ks", "5", "--draft", str(other / "best"),
                 "--draft-beams", "9,5", "--gamma", "1", "--output", str(by_depth)]) == 0
    report = json.loads(by_depth.read_text())
    assert report["metrics"]["recall@5"] == json.loads(plain.read_text())["metrics"]["recall@5"]
    assert report["speculative"]["per_k"]["5"]["draft_beams"] == [9, 5]
    assert "| 5 | 9,5 |" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--draft", "DRAFT", "--ks", "5", "10", "--draft-beams", "8"], "--draft-beams (N = 8) must be >= every --ks (K = 10)"),
    (["--draft", "DRAFT", "--ks", "5", "--draft-beams", "12,4"], "--draft-beams (N = 12,4) must be >= every --ks (K = 5)"),
    (["--draft", "DRAFT", "--ks", "5", "--draft-beams", "9,9,9,9"],
     "--draft-beams 9,9,9,9 gives 4 widths, but the identifiers' trie drafts 3 depths: give at most 3"),
    (["--draft", "MISSING"], "no config.json"),
])
def test_eval_draft_options_are_checked(tiny_run, tmp_path, extra, message, capsys):
    best = str(tiny_run / "best")
    extra = [best if x == "DRAFT" else str(tmp_path / "missing") if x == "MISSING" else x for x in extra]
    with pytest.raises(SystemExit) as e:
        main(["eval", *SMALL, "--checkpoint", best, "--output", str(tmp_path / "r.json"), *extra])
    assert message in str(e.value)
    assert not (tmp_path / "r.json").exists()


def test_eval_refuses_a_draft_of_other_items(tiny_run, tmp_path):
    other = tmp_path / "other"
    assert main(["train-target", "--synthetic-users", "80", "--synthetic-items", "31", "--device", "cpu", "--preset",
                 "tiny-1x64", "--max-steps", "1", "--eval-prompts", "0", "--out", str(other)]) == 0
    with pytest.raises(SystemExit, match="identifiers differ"):
        main(["eval", *SMALL, "--checkpoint", str(tiny_run / "best"), "--draft", str(other / "best"),
              "--output", str(tmp_path / "r.json")])


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "x", "--gamma", "2"], "--gamma is ignored: it only acts with --draft"),
    (["eval", "--checkpoint", "x", "--draft-beams", "20"], "--draft-beams is ignored: it only acts with --draft"),
    (["eval", "--checkpoint", "x", "--draft-policy", "anchored"], "--draft-policy is ignored: it only acts with --draft"),
    (["train-target", "--init", "x", "--preset", "tiny-1x64"], "--preset is ignored: it only acts without --init"),
    (["train-draft", "--target", "t", "--init", "x", "--preset", "tiny-1x64"], "--preset is ignored: it only acts without"),
    (["train-draft", "--target", "t", "--on-policy-beams", "8"], "--on-policy-beams is ignored: it only acts with --on-policy"),
    (["train-draft", "--target", "t", "--objective", "atspeed-r", "--topk", "5"],
     "--topk is ignored: it only acts with --objective atspeed-s"),
    (["train-draft", "--target", "t", "--objective", "ce", "--alpha", "0.5"], "--alpha is ignored: it only acts with an"),
    (["train-draft", "--target", "t", "--objective", "seqkd", "--temperature", "2"],
     "--temperature is ignored: it only acts with an objective that compares distributions"),
    (["teacher", "--checkpoint", "x", "--data", "d", "--synthetic-users", "50"],
     "--synthetic-users is ignored: it only acts without --data"),
    (["demo", "--data", "d", "--items", "50"], "--items is ignored: it only acts without --data"),
    (["train-target", "--valid-only", "--init", "x", "--patience", "1"], "--patience is ignored: it only acts with valid"),
    (["train-target", "--train-on-valid", "--eval-prompts", "10"], "--eval-prompts is ignored: it only acts without --t"),
    (["train-draft", "--target", "t", "--eval-prompts", "0", "--val-gamma", "1"], "--val-gamma is ignored: it only acts"),
])
def test_options_that_would_be_ignored_are_pointed_out(argv, message):
    from atspeed_ext.cli import build_parser, ignored_options

    parser = build_parser()
    assert [message in w for w in ignored_options(parser, parser.parse_args(argv))] == [True]


def test_options_at_their_defaults_or_where_they_act_pass_the_check():
    from atspeed_ext.cli import build_parser, ignored_options

    parser = build_parser()
    for argv in (["eval", "--checkpoint", "x", "--gamma", "3"],             # the default: harmless
                 ["eval", "--checkpoint", "x", "--draft", "d", "--gamma", "2", "--draft-beams", "20"],
                 ["train-draft", "--target", "t", "--objective", "atspeed-s", "--topk", "5", "--alpha", "0.5"],
                 ["train-draft", "--target", "t", "--on-policy", "--on-policy-beams", "8"],
                 ["train-draft", "--target", "t", "--objective", "wordkd", "--temperature", "2"],
                 ["train-target", "--preset", "tiny-1x64", "--synthetic-users", "50"],
                 ["train-target", "--eval-prompts", "10", "--eval-every", "5", "--patience", "1"],
                 ["train-draft", "--target", "t", "--val-gamma", "1", "--val-beams", "3"],
                 ["train-target", "--train-on-valid", "--eval-every", "5"],  # checkpoints every 5 steps
                 ["train-target", "--eval-prompts", "0", "--eval-every", "5"]):
        assert ignored_options(parser, parser.parse_args(argv)) == []


def test_an_ignored_option_is_reported_and_the_command_runs(tiny_run, tmp_path, capsys):
    assert main(["eval", *SMALL, "--checkpoint", str(tiny_run / "best"), "--ks", "3", "--limit", "3", "--gamma", "2",
                 "--draft-beams", "2", "--output", str(tmp_path / "r.json")]) == 0  # N < K: not checked, not used
    err = capsys.readouterr().err
    assert "warning: --gamma is ignored: it only acts with --draft" in err
    assert "warning: --draft-beams is ignored: it only acts with --draft" in err
    assert "speculative" not in (tmp_path / "r.json").read_text()


def test_a_checkpoint_used_with_the_other_eos_setting_is_pointed_out(tiny_run, tmp_path, capsys):
    # eval refused a --checkpoint of the other <eos> setting, but drafts, --init and the teacher's and
    # train-draft's targets were used either way without a word.
    eos_run = tmp_path / "eos"
    assert main(["train-target", *SMALL, "--preset", "tiny-1x64", "--max-steps", "1", "--eval-prompts", "0",
                 "--with-eos", "--out", str(eos_run)]) == 0
    plain, eos = str(tiny_run / "best"), str(eos_run / "best")
    capsys.readouterr()
    for argv, role in (
            (["eval", *SMALL, "--checkpoint", plain, "--ks", "3", "--limit", "2", "--draft", eos,
              "--output", str(tmp_path / "r.json")], "--draft"),
            (["train-target", *SMALL, "--init", eos, "--max-steps", "1", "--eval-prompts", "0",
              "--out", str(tmp_path / "cont")], "--init"),
            (["teacher", *SMALL, "--checkpoint", eos, "--num-beams", "3", "--limit", "4",
              "--out", str(tmp_path / "teacher")], "--checkpoint"),
            (["train-draft", *SMALL, "--target", eos, "--objective", "ce", "--preset", "tiny-1x64", "--max-steps", "1",
              "--eval-prompts", "0", "--out", str(tmp_path / "draft")], "--target")):
        assert main(argv) == 0
        assert f"warning: {role} {eos} was trained with <eos> ending its identifiers, but without here" \
            in capsys.readouterr().err
    assert main(["eval", *SMALL, "--checkpoint", plain, "--ks", "3", "--limit", "2", "--draft", plain,
                 "--output", str(tmp_path / "same.json")]) == 0
    assert "<eos>" not in capsys.readouterr().err


def test_more_user_errors_are_named_before_any_work(tiny_run, tmp_path, capsys):
    best = str(tiny_run / "best")
    with pytest.raises(SystemExit, match="--ks gives K = 5 more than once"):  # was evaluated twice
        main(["eval", *SMALL, "--checkpoint", best, "--ks", "5", "10", "5", "--output", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit, match=r"--val-draft-beams \(N = 10\) must be >= --val-beams \(K = 20\)"):
        main(["train-draft", *SMALL, "--target", best, "--val-beams", "20", "--val-draft-beams", "10",
              "--out", str(tmp_path / "d")])
    # Without validation the --val-* options are ignored: a warning, and the run goes ahead.
    assert main(["train-draft", *SMALL, "--target", best, "--objective", "ce", "--preset", "tiny-1x64",
                 "--max-steps", "1", "--eval-prompts", "0", "--val-beams", "20", "--val-draft-beams", "10",
                 "--out", str(tmp_path / "d")]) == 0
    assert "--val-beams is ignored" in capsys.readouterr().err


def test_a_failed_command_leaves_no_empty_output_folder(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(SystemExit, match="missing"):
        main(["train-target", *SMALL, "--init", str(tmp_path / "missing"), "--out", str(out), "--max-steps", "1"])
    assert not (tmp_path / "new").exists()  # nor the parent it created
    out.mkdir(parents=True)  # a folder that was there before is kept
    with pytest.raises(SystemExit, match="missing"):
        main(["train-target", *SMALL, "--init", str(tmp_path / "missing"), "--out", str(out), "--max-steps", "1"])
    assert out.is_dir()

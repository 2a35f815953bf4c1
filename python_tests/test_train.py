"""Next-item training: it learns (beats popularity), resumes exactly, saves loadable safetensors checkpoints."""

import json
import math
import random
import statistics

import pytest
import torch

from atspeed_ext.data import RecData
from atspeed_ext.evaluate import evaluate_model, evaluate_popularity, mean_and_se, model_scores, popularity_scores
from atspeed_ext.models import build_model, load_checkpoint
from atspeed_ext.synthetic import synthetic_recdata
from atspeed_ext.tokenizer import CodeTokenizer
import atspeed_ext.train as train_module
from atspeed_ext.train import TrainConfig, add_dropout, collate, drop_history, train_loop, train_next_item


@pytest.fixture(scope="module")
def small_data():
    data = synthetic_recdata(num_users=300, num_items=60, codes_per_level=6, seed=3)
    return data, CodeTokenizer(data.identifiers)


def test_collate_masks_everything_but_the_target():
    ids, mask, labels = collate([([1, 5, 6, 3, 7, 8], 2), ([1, 9, 3, 4, 4], 2)])
    assert ids.tolist() == [[1, 5, 6, 3, 7, 8], [1, 9, 3, 4, 4, 0]]
    assert mask.tolist() == [[1] * 6, [1] * 5 + [0]]
    assert labels.tolist() == [[-100] * 4 + [7, 8], [-100] * 3 + [4, 4, -100]]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_learns_and_beats_popularity(small_data, tmp_path, precision):
    data, tok = small_data
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=1e-2, eval_prompts=100, patience=6, precision=precision)
    state = train_next_item(model, tok, data, tmp_path, cfg, progress=False)
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the master weights in float32
    recalls = [h["recall@10"] for h in state["history"]]
    assert max(recalls) > recalls[0]
    assert state["history"][-1]["train_loss"] < 0.9 * state["history"][0]["train_loss"]  # mean per epoch
    best, tok2 = load_checkpoint(tmp_path / "best")
    test = data.test_prompts()
    ours = evaluate_model(best, tok2, test, ks=(10,), progress=False)["recall@10"]
    popular = evaluate_popularity(data, test, ks=(10,))["recall@10"]
    assert ours > 1.5 * popular, (ours, popular)
    meta = json.loads((tmp_path / "best" / "meta.json").read_text())
    assert meta["recall@10"] == pytest.approx(max(recalls))


@pytest.mark.parametrize("dropout", [0.0, 0.2])  # dropout masks too: each step draws its own, seeded
def test_resume_continues_exactly(small_data, tmp_path, monkeypatch, dropout):
    import atspeed_ext.train as train_module

    data, tok = small_data
    cfg = TrainConfig(epochs=3, batch_size=64, lr=5e-3, eval_prompts=20, patience=10, dropout=dropout)
    torch.manual_seed(123)
    caller_rng = torch.get_rng_state()
    full = build_model("tiny-1x64", tok.vocab_size, seed=1)
    assert build_model("tiny-1x64", tok.vocab_size, seed=1).state_dict()["lm_head.weight"].equal(
        full.state_dict()["lm_head.weight"])  # the seed alone makes the weights
    train_next_item(full, tok, data, tmp_path / "full", cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), caller_rng)  # neither building nor training moved the caller's RNG

    # The same run, killed right after its second checkpoint, then resumed into a fresh model.
    calls = []

    def crash_after_second_checkpoint(message):
        calls.append(message)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module.tqdm, "write", crash_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_next_item(build_model("tiny-1x64", tok.vocab_size, seed=1), tok, data, tmp_path / "part", cfg,
                        progress=False)
    monkeypatch.undo()
    resumed = build_model("tiny-1x64", tok.vocab_size, seed=7)       # weights come from the checkpoint
    state = train_next_item(resumed, tok, data, tmp_path / "part", cfg, resume=True, progress=False)
    assert state["epoch"] == 3 and len(state["history"]) == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_checkpoint_round_trip(small_data, tmp_path):
    from atspeed_ext.models import save_checkpoint

    data, tok = small_data
    model = build_model("tiny-1x64", tok.vocab_size, seed=2).eval()
    save_checkpoint(tmp_path, model, tok)
    loaded, tok2 = load_checkpoint(tmp_path)
    ids = torch.tensor([tok.encode_prompt([1, 2, 3])])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert tok2.tokens == tok.tokens
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))   # no pickle


def test_bad_configuration():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"lr must be in \(0, inf\), got 0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match=r"lr must be in \(0, inf\), got nan"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match=r"weight_decay must be in \[0, inf\), got -0.1"):
        TrainConfig(weight_decay=-0.1)
    with pytest.raises(ValueError, match=r"warmup_ratio must be in \[0, 1\), got 1"):
        TrainConfig(warmup_ratio=1)
    with pytest.raises(ValueError, match=r"max_grad_norm must be in \(0, inf\), got 0"):
        TrainConfig(max_grad_norm=0)
    with pytest.raises(ValueError, match="precision must be"):
        TrainConfig(precision="fp8")
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
            TrainConfig(dropout=p)
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"history_dropout must be in \[0, 1\)"):
            TrainConfig(history_dropout=p)
    with pytest.raises(ValueError, match="no embed_tokens"):
        add_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.1)
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("huge", 10)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint("/nonexistent")


def test_dropout_acts_in_train_mode_only_and_comes_off(small_data):
    _, tok = small_data
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    model.eval()
    plain = model(ids).logits
    hooks = add_dropout(model, 0.3)
    assert len(hooks) == 3  # embeddings + one attention and one MLP branch (1 layer)
    assert torch.equal(model(ids).logits, plain)  # eval mode: no dropout
    model.train()
    torch.manual_seed(0)
    first = model(ids).logits
    assert not torch.allclose(first, plain, atol=1e-3) and not torch.allclose(model(ids).logits, first, atol=1e-3)
    for h in hooks:
        h.remove()
    assert torch.equal(model(ids).logits, plain)  # hooks removed: the plain model again


def test_training_with_dropout_learns_and_leaves_a_plain_model(small_data, tmp_path):
    data, tok = small_data
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2, eval_prompts=100, patience=4, dropout=0.1)
    state = train_next_item(model, tok, data, tmp_path, cfg, progress=False)
    assert state["config"]["dropout"] == 0.1
    assert state["history"][-1]["train_loss"] < 0.9 * state["history"][0]["train_loss"]
    assert not any(m._forward_hooks for m in model.modules())  # the dropout hooks are gone after training


def test_dropout_hooks_come_off_when_training_fails(small_data, tmp_path):
    _, tok = small_data
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)

    def failing_loss(train_model, indices):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train_loop(model, tok, tmp_path, TrainConfig(epochs=1, dropout=0.1), [5] * 8, failing_loss,
                   lambda: {"recall@10": 0.0}, "recall@10", progress=False)
    assert not any(m._forward_hooks for m in model.modules())


def test_drop_history_keeps_order_never_empties_and_drops_at_the_rate_asked():
    rng = random.Random(0)
    history = tuple(range(100, 120))
    assert drop_history(history, 0.0, rng) == history
    assert drop_history((7, 8, 9), 0.999999, rng) == (9,)  # all dropped: the most recent stays
    kept = 0
    for _ in range(2000):
        out = drop_history(history, 0.3, rng)
        assert out and list(out) == sorted(out) and set(out) <= set(history)  # a non-empty subsequence
        kept += len(out)
    # 40,000 Bernoulli(0.7) draws (the all-dropped fallback is ~1e-10 likely): sd of the rate 0.0023, 4 sd allowed.
    assert abs(kept / 40000 - 0.7) < 0.01


def test_history_dropout_shortens_training_prompts_but_keeps_targets(small_data, tmp_path, monkeypatch):
    data, tok = small_data
    def run(p, run_dir):
        batches = []
        monkeypatch.setattr(train_module, "collate", lambda batch, *a: batches.append(batch) or collate(batch, *a))
        model = build_model("tiny-1x64", tok.vocab_size, seed=0)
        cfg = TrainConfig(epochs=1, batch_size=32, eval_prompts=5, max_steps=4, history_dropout=p)
        state = train_next_item(model, tok, data, tmp_path / run_dir, cfg, progress=False)
        assert state["config"]["history_dropout"] == p
        return batches

    plain, dropped = run(0.0, "plain"), run(0.5, "dropped")
    assert run(0.5, "again") == dropped  # seeded: the same items are dropped again
    assert len(plain) == len(dropped) == 4
    for a, b in zip(plain, dropped):
        assert [ids[len(ids) - n:] for ids, n in a] == [ids[len(ids) - n:] for ids, n in b]  # same targets
        assert all(len(y) <= len(x) for (x, _), (y, _) in zip(a, b))
    assert sum(len(ids) for b in dropped for ids, _ in b) < sum(len(ids) for b in plain for ids, _ in b)


def train_without_validating(monkeypatch, data, tok, out_dir, cfg):
    """Train a tiny model with ``cfg``, failing on any validation; returns the trainer state and the sorted prompt
    ids of every example trained on."""
    monkeypatch.setattr(train_module, "evaluate_model", lambda *a, **k: pytest.fail("validated on training data"))
    batches = []
    monkeypatch.setattr(train_module, "collate", lambda batch, *a: batches.append(batch) or collate(batch, *a))
    state = train_next_item(build_model("tiny-1x64", tok.vocab_size, seed=0), tok, data, out_dir, cfg, progress=False)
    return state, sorted(tuple(ids) for batch in batches for ids, _ in batch)


def each_once_per_epoch(tok, examples, epochs: int) -> list[tuple[int, ...]]:
    return sorted(tuple(ids) for _ in range(epochs) for ids, _ in train_module.encode_examples(tok, examples, False))


def test_train_on_valid_learns_the_validation_items_without_validating(small_data, tmp_path, monkeypatch):
    data, tok = small_data
    # Five epochs with patience 1: nothing to validate on must neither stop early nor keep an old checkpoint.
    cfg = TrainConfig(epochs=5, batch_size=64, lr=5e-3, patience=1, train_on_valid=True)
    state, seen = train_without_validating(monkeypatch, data, tok, tmp_path, cfg)
    examples = data.train_examples(include_valid=True)
    assert len(examples) > len(data.train_examples())
    assert state["examples"] == len(examples) and state["epoch"] == 5 and len(state["history"]) == 5
    assert all("recall@10" not in h for h in state["history"]) and state["best"] is None
    # Every example, the validation ones included, is trained on once per epoch.
    assert seen == each_once_per_epoch(tok, examples, 5)
    best, last = (load_checkpoint(tmp_path / name)[0].state_dict() for name in ("best", "last"))
    assert all(torch.equal(best[k], last[k]) for k in best)  # best = the final model
    for name in ("best", "last"):  # both checkpoints say what they learnt from
        assert json.loads((tmp_path / name / "meta.json").read_text())["train_on_valid"] is True
    # The trainer state is strict JSON (no -Infinity for the best value that was never measured).
    json.loads((tmp_path / "last" / "trainer_state.json").read_text(), parse_constant=pytest.fail)


def test_valid_only_trains_on_the_validation_items_alone(small_data, tmp_path, monkeypatch):
    data, tok = small_data
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, valid_only=True)
    state, seen = train_without_validating(monkeypatch, data, tok, tmp_path, cfg)
    examples = data.valid_examples()
    assert 0 < len(examples) < len(data.train_examples())
    assert state["examples"] == len(examples) and state["step"] == 2 * -(-len(examples) // 16)
    assert seen == each_once_per_epoch(tok, examples, 2)
    meta = json.loads((tmp_path / "best" / "meta.json").read_text())
    assert meta["train_on_valid"] is True and meta["valid_only"] is True


def test_valid_only_implies_train_on_valid_and_needs_validation_examples(small_data, tmp_path):
    assert TrainConfig(valid_only=True).train_on_valid is True
    data, tok = small_data
    # Validation items without an earlier item of their user (no train items, one validation item each).
    data = RecData(identifiers=data.identifiers, train={1: [0, 1]}, valid={2: [3], 3: [4]}, test={})
    assert data.valid_examples() == []
    with pytest.raises(ValueError, match="no validation item has an earlier item of its user to predict it from"):
        train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, data, tmp_path, TrainConfig(valid_only=True),
                        progress=False)


def test_a_train_on_valid_checkpoint_is_marked_as_before(tmp_path):
    from atspeed_ext.train import training_data_marks

    # Runs saved before valid_only existed stored exactly this, and resume compares it exactly.
    assert training_data_marks(TrainConfig(train_on_valid=True)) == {"train_on_valid": True}
    assert training_data_marks(TrainConfig(valid_only=True)) == {"train_on_valid": True, "valid_only": True}
    assert training_data_marks(TrainConfig()) is None


def test_without_validation_prompts_nothing_stops_early(small_data, tmp_path, capsys):
    data, tok = small_data
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)
    state = train_next_item(model, tok, data, tmp_path, TrainConfig(epochs=3, batch_size=64, patience=1,
                                                                     eval_prompts=0), resume=True, progress=False)
    assert state["epoch"] == 3 and json.loads((tmp_path / "best" / "meta.json").read_text())["step"] == state["step"]
    assert "nothing to resume in" in capsys.readouterr().out  # --resume on an empty folder says it starts afresh


def test_resuming_a_validated_run_without_validation_is_refused(small_data, tmp_path):
    data, tok = small_data
    cfg = TrainConfig(epochs=1, batch_size=64, eval_prompts=20)
    state = train_next_item(build_model("tiny-1x64", tok.vocab_size, seed=0), tok, data, tmp_path, cfg,
                            progress=False)
    best = (tmp_path / "best" / "model.safetensors").read_bytes()
    no_validation = TrainConfig(epochs=2, batch_size=64, eval_prompts=0)
    with pytest.raises(ValueError, match=f"validated run \\(best recall@10 {state['best']:.4f}\\)"):
        train_next_item(build_model("tiny-1x64", tok.vocab_size, seed=0), tok, data, tmp_path, no_validation,
                        resume=True, progress=False)
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == best  # untouched


def test_a_validation_without_the_early_stopping_metric_is_an_error(small_data, tmp_path):
    data, tok = small_data
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)
    with pytest.raises(KeyError, match="not the early-stopping metric 'recall@10'"):
        train_loop(model, tok, tmp_path, TrainConfig(epochs=1, max_steps=1), [3, 3], lambda m, idx: next(m.parameters()).sum() * 0,
                   lambda: {"recall@5": 0.1}, "recall@10", progress=False)


def test_popularity_ranks_by_given_counts(small_data):
    data, _ = small_data
    prompts = data.test_prompts()[:20]
    assert popularity_scores(data, prompts, 5, counts=data.item_counts()) == popularity_scores(data, prompts, 5)
    # Counts that put one prompt's truth item first: that prompt's recall@1 is 1 / (its truth size).
    item = min(prompts[0].truth)
    counts = [0] * data.num_items
    counts[item] = 1
    recalls, ndcgs = popularity_scores(data, prompts, 1, counts=counts)
    assert recalls[0] == pytest.approx(1 / len(prompts[0].truth)) and ndcgs[0] > 0
    assert all(r == (item in p.truth) / len(p.truth) for r, p in zip(recalls, prompts))
    with pytest.raises(ValueError, match=f"counts has 3 entries; expected one per item \\({data.num_items}\\)"):
        popularity_scores(data, prompts, 5, counts=[1, 2, 3])
    with pytest.raises(ValueError, match="give either counts or include_valid, not both"):
        popularity_scores(data, prompts, 5, include_valid=True, counts=data.item_counts())


def test_per_prompt_scores_average_to_the_reported_metrics(small_data):
    data, tok = small_data
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)
    prompts = data.test_prompts()[:40]
    recalls, ndcgs = model_scores(model, tok, prompts, 5, batch_size=16, progress=False)
    assert len(recalls) == len(ndcgs) == len(prompts)
    assert all(0 <= r <= 1 and 0 <= n <= 1 and (r > 0) == (n > 0) for r, n in zip(recalls, ndcgs))
    assert 0 < sum(r > 0 for r in recalls) < len(prompts)  # some hits and some misses: the means are not trivial
    metrics = evaluate_model(model, tok, prompts, ks=(5,), batch_size=16, progress=False)
    assert metrics == {"recall@5": sum(recalls) / len(prompts), "ndcg@5": sum(ndcgs) / len(prompts)}
    pop_recalls, _ = popularity_scores(data, prompts, 5)
    assert evaluate_popularity(data, prompts, ks=(5,))["recall@5"] == sum(pop_recalls) / len(prompts)
    with_se = evaluate_model(model, tok, prompts, ks=(5,), batch_size=16, progress=False, standard_errors=True)
    assert with_se["recall@5_se"] == pytest.approx(statistics.stdev(recalls) / math.sqrt(len(prompts)), rel=1e-12)
    assert with_se["ndcg@5_se"] > 0 and with_se["recall@5"] == metrics["recall@5"]
    assert mean_and_se([2.0]) == (2.0, 0.0) and mean_and_se([1.0, 3.0]) == (2.0, 1.0)
    with pytest.raises(ValueError, match="no prompts"):
        model_scores(model, tok, [], 5)


def test_config_refuses_negative_step_counts():
    for name in ("max_steps", "eval_every", "eval_prompts"):
        with pytest.raises(ValueError, match=f"{name} must be >= 0"):
            TrainConfig(**{name: -2})


def test_a_diverging_run_stops_before_saving(small_data, tmp_path):
    data, tok = small_data
    model = build_model("tiny-1x64", tok.vocab_size, seed=0)
    with pytest.raises(FloatingPointError, match="training loss is nan at step 1"):
        train_loop(model, tok, tmp_path, TrainConfig(epochs=1), [3, 3],
                   lambda m, idx: next(m.parameters()).sum() * float("nan"), None, "recall@10", progress=False)
    assert not (tmp_path / "best").exists() and not (tmp_path / "last").exists()


def test_resume_refuses_other_settings_data_or_model(small_data, tmp_path):
    data, tok = small_data
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps=2, eval_every=1, eval_prompts=10)
    train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, data, tmp_path, cfg, progress=False)
    last = (tmp_path / "last" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(lr 0.001 -> 0.5, max_steps 2 -> 3\)"):
        train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, data, tmp_path,
                        TrainConfig(epochs=1, batch_size=64, max_steps=3, eval_every=1, eval_prompts=10, lr=0.5),
                        resume=True, progress=False)
    fewer = synthetic_recdata(num_users=200, num_items=60, codes_per_level=6, seed=3)
    reversed_data = RecData(data.identifiers, {u: s[::-1] for u, s in data.train.items()}, data.valid, data.test)
    for other in (fewer, reversed_data):  # the second has as many examples
        with pytest.raises(ValueError, match="was trained on other data"):
            train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, other, tmp_path, cfg, resume=True,
                            progress=False)
    with pytest.raises(ValueError, match="does not fit this model.*shapes differ"):
        train_next_item(build_model("target-2x128", tok.vocab_size), tok, data, tmp_path, cfg, resume=True,
                        progress=False)
    assert (tmp_path / "last" / "model.safetensors").read_bytes() == last  # nothing was overwritten
    state = train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, data, tmp_path,
                            TrainConfig(epochs=1, batch_size=64, max_steps=2, eval_every=1, eval_prompts=10,
                                        eval_batch_size=7), resume=True, progress=False)
    assert state["step"] == 2  # eval_batch_size may change: it does not alter what is trained


def test_training_without_validation_items_needs_eval_prompts_0(small_data, tmp_path):
    data, tok = small_data
    no_valid = RecData(data.identifiers, data.train, {}, data.test, name="novalid")
    with pytest.raises(ValueError, match="novalid has no validation prompts.*eval_prompts=0"):
        train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, no_valid, tmp_path, TrainConfig(max_steps=1),
                        progress=False)
    state = train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, no_valid, tmp_path,
                            TrainConfig(max_steps=1, eval_prompts=0), progress=False)
    assert state["best"] is None and json.loads((tmp_path / "best" / "meta.json").read_text())["with_eos"] is False


def test_any_python_int_seed_trains(small_data, tmp_path):
    from atspeed_ext._rng import mixed_seed, seeded_rng

    data, tok = small_data
    for seed in (2 ** 40, -3, 2 ** 64 + 5):  # step seeds stay in torch's range (a seed of 2^40 overflowed it)
        cfg = TrainConfig(epochs=1, batch_size=64, max_steps=1, eval_prompts=0, seed=seed, dropout=0.1)
        assert train_next_item(build_model("tiny-1x64", tok.vocab_size, seed=seed), tok, data, tmp_path / str(seed),
                               cfg, progress=False)["step"] == 1
    assert len({mixed_seed(s, step, 0) for s in (0, 1) for step in range(100)}) == 200
    assert all(0 <= mixed_seed(s, 5) < 2 ** 63 for s in (-(2 ** 80), 0, 2 ** 80))
    torch.manual_seed(9)
    before = torch.get_rng_state()
    with seeded_rng(2 ** 70):
        a = torch.rand(3)
    with seeded_rng(2 ** 70):
        assert torch.equal(torch.rand(3), a)  # the same seed, the same numbers
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 1.5}, "TrainConfig.epochs must be an int, got 1.5"),       # trained 1.5 epochs
    ({"with_eos": "no"}, "TrainConfig.with_eos must be a bool, got 'no'"),  # trained with <eos>
    ({"lr": "1e-3"}, "TrainConfig.lr must be a number, got '1e-3'"),       # a raw TypeError
    ({"batch_size": 2.5}, "TrainConfig.batch_size must be an int"),        # failed inside training
])
def test_train_config_fields_are_type_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_train_config_takes_numpy_numbers_as_python_ones():
    np = pytest.importorskip("numpy")
    cfg = TrainConfig(epochs=np.int64(2), lr=np.float32(0.5), with_eos=np.True_, max_steps=1e4)
    assert (cfg.epochs, cfg.lr, cfg.with_eos, cfg.max_steps) == (2, 0.5, True, 10000)
    assert [type(v) for v in (cfg.epochs, cfg.lr, cfg.with_eos, cfg.max_steps)] == [int, float, bool, int]
    json.dumps(vars(cfg))  # stored in every checkpoint's meta.json


def test_training_refuses_an_existing_run_and_a_too_small_vocabulary(small_data, tmp_path):
    data, tok = small_data
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps=1, eval_prompts=0)
    train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, data, tmp_path / "run", cfg, progress=False)
    # A second run into the same folder replaced the first one silently (the CLI refused it).
    with pytest.raises(ValueError, match="already holds a run \\(best and last/\\): pass resume=True"):
        train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, data, tmp_path / "run", cfg, progress=False)
    assert train_next_item(build_model("tiny-1x64", tok.vocab_size), tok, data, tmp_path / "run", cfg, resume=True,
                           progress=False)["step"] == 1  # resuming it is allowed (here: nothing left to do)
    # A model that cannot embed every token failed with an IndexError inside the embedding.
    with pytest.raises(ValueError, match=f"the model embeds 10 and scores 10 tokens, but the tokenizer has "
                                         f"{tok.vocab_size}"):
        train_next_item(build_model("tiny-1x64", 10), tok, data, tmp_path / "small", cfg, progress=False)


def test_evaluation_names_a_bad_batch_size(small_data):
    data, tok = small_data
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):  # was "range() arg 3 ..."
        evaluate_model(build_model("tiny-1x64", tok.vocab_size), tok, data.test_prompts()[:3], ks=(5,), batch_size=0)

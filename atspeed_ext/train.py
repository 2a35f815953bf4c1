"""Next-item training of a target (or draft) LM on identifier tokens: AdamW, warm-up + cosine, clipping,
periodic validation Recall@10, early stopping, safetensors checkpoints and resume; DDP under torchrun."""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ._checks import check_field_types
from ._inputs import model_vocab_sizes
from ._rng import mixed_seed, seeded_rng
from .data import RecData
from .evaluate import evaluate_model
from .models import save_checkpoint
from .tokenizer import CodeTokenizer

__all__ = ["TrainConfig", "train_next_item", "train_loop", "run_summary", "encode_examples", "collate", "add_dropout",
           "validation_prompts"]

#: Modules whose outputs get dropout: the token embeddings and each block's two residual branches (LLaMA, Qwen2).
_DROPOUT_SUFFIXES = ("embed_tokens", "self_attn.o_proj", "mlp.down_proj")


#: Allowed values of TrainConfig's float options (also the CLI's checks): (low, high, low excluded); high is
#: always excluded, and NaN never passes.
FLOAT_RANGES = {"lr": (0.0, math.inf, True), "weight_decay": (0.0, math.inf, False),
                "warmup_ratio": (0.0, 1.0, False), "max_grad_norm": (0.0, math.inf, True),
                "dropout": (0.0, 1.0, False), "history_dropout": (0.0, 1.0, False)}


def range_error(name: str, value: float) -> str | None:
    """Why ``value`` is not allowed for the float option ``name`` of :class:`TrainConfig` (None if it is)."""
    low, high, low_open = FLOAT_RANGES[name]
    if (low < value if low_open else low <= value) and value < high:
        return None
    return f"must be in {'(' if low_open else '['}{low:g}, {high:g}), got {value}"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int = 0            # steps between validations; 0 = once per epoch
    eval_prompts: int = 500        # validation subset (the first users' prompts, fixed)
    eval_batch_size: int = 64
    patience: int = 3              # validations without improvement before stopping
    with_eos: bool = False         # end every target identifier with <eos> (and decode with an EOS trie)
    max_steps: int = 0             # 0 = no limit
    precision: str = "fp32"        # "bf16": bfloat16 autocast (AMX / tensor cores); weights stay float32
    dropout: float = 0.0           # residual + embedding dropout while training (see add_dropout)
    history_dropout: float = 0.0   # drop each history item of a training example with this probability
    train_on_valid: bool = False   # validation items are training targets too (final model for test; no validation)
    valid_only: bool = False       # the validation items are the only targets (recency fine-tune; implies train_on_valid)
    history: list = field(default_factory=list)

    def __post_init__(self):
        check_field_types(self)
        for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, zero in (("max_steps", "no limit"), ("eval_every", "every epoch"), ("eval_prompts", "no validation")):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: {zero}), got {getattr(self, name)}")
        for name in FLOAT_RANGES:
            error = range_error(name, getattr(self, name))
            if error:
                raise ValueError(f"{name} {error}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.valid_only:
            self.train_on_valid = True  # no validation, best = last, the checkpoint marked as trained on them


def add_dropout(model, p: float) -> list:
    """Dropout with probability ``p`` on the token embeddings and on the output of every attention and MLP
    branch before it joins the residual stream (as in GPT-2 / T5), active in ``train()`` mode only.

    The LLaMA and Qwen2 configs have no hidden dropout, and our small models overfit Beauty without it. Done
    with forward hooks, so the saved checkpoints stay plain HF models. Returns the hook handles (``.remove()``
    each to undo)."""
    if p == 0:
        return []
    modules = [m for name, m in model.named_modules() if name.endswith(_DROPOUT_SUFFIXES)]
    if not modules:
        raise ValueError(f"dropout={p}: {type(model).__name__} has no {', '.join(_DROPOUT_SUFFIXES)} modules "
                         "(LLaMA / Qwen2 naming); train it with dropout 0")

    def hook(module, args, output):
        return torch.nn.functional.dropout(output, p, training=module.training)

    return [m.register_forward_hook(hook) for m in modules]


def drop_history(history: tuple[int, ...], p: float, rng: random.Random) -> tuple[int, ...]:
    """``history`` with each item dropped independently with probability ``p`` (order kept); when every item
    would go, the most recent one stays, so a prompt is never empty. Training-time augmentation: the model
    learns from partial histories instead of memorising whole ones."""
    kept = tuple(item for item in history if rng.random() >= p)
    return kept or history[-1:]


def encode_examples(tokenizer: CodeTokenizer, examples, with_eos: bool) -> list[tuple[list[int], int]]:
    """(prompt + target identifier tokens, number of target tokens) per training example."""
    tail = [tokenizer.eos_token_id] if with_eos else []
    return [(tokenizer.encode_prompt(history) + tokenizer.encode_item(target) + tail,
             len(tokenizer.encode_item(target)) + len(tail)) for history, target in examples]


def collate(batch: list[tuple[list[int], int]], pad_token_id: int = 0):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 everywhere but the target tokens)."""
    T = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), T), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, (ids, n_target) in enumerate(batch):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = 1
        labels[i, len(ids) - n_target:len(ids)] = torch.tensor(ids[len(ids) - n_target:])
    return input_ids, mask, labels


def epoch_batches(lengths: list[int], batch_size: int, seed: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's batches of one epoch: a seeded shuffle, cut into pools of 50 batches whose examples are
    sorted by length (little padding), then the batches themselves shuffled. Deterministic given the seed."""
    g = torch.Generator().manual_seed(seed % 2 ** 64)  # torch's own wrap of negative seeds, for any int
    order = torch.randperm(len(lengths), generator=g).tolist()
    pool = 50 * batch_size * world
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size * world] for i in range(0, len(chunk), batch_size * world)]
    batches = [b for b in batches if len(b) >= world]  # a last batch too small to give every rank an example
    batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return [b[rank::world] for b in batches]


def steps_per_epoch(num_examples: int, batch_size: int, world: int = 1) -> int:
    """How many batches :func:`epoch_batches` cuts (the same on every rank)."""
    full, rest = divmod(num_examples, batch_size * world)
    return full + (1 if rest >= world else 0)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def _save_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    state = optimizer.state_dict()
    tensors = {f"{idx}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).contiguous()
               for idx, s in state["state"].items() for k, v in s.items()}
    save_file(tensors, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text(json.dumps(state["param_groups"]))


def _load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads((path / "optimizer.json").read_text())})


#: TrainConfig fields a resume may change: they do not alter what is trained.
_RESUME_FREE = ("eval_batch_size", "history")


def _changed_settings(saved: dict, cfg: TrainConfig) -> str:
    """The settings of ``cfg`` that differ from a saved run's (``name old -> new``, comma-separated; '' if none).
    A field the saved run predates counts as its default."""
    defaults = asdict(TrainConfig())
    current = json.loads(json.dumps(asdict(cfg)))  # as stored: tuples become lists
    return ", ".join(f"{k} {saved.get(k, defaults[k])!r} -> {v!r}" for k, v in current.items()
                     if k not in _RESUME_FREE and saved.get(k, defaults[k]) != v)


def _load_weights(model, path: Path, device: torch.device) -> None:
    """Load a checkpoint's weights into ``model``, refusing one of another architecture or size (a weight left
    out of the file is fine only when tied to one in it, as ``save_pretrained`` drops tied copies)."""
    tensors = load_file(str(path), device=str(device))
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in tensors.items()
             if k in own and own[k].shape != v.shape]
    extra = [k for k in tensors if k not in own]
    loaded = {own[k].data_ptr() for k in tensors if k in own}
    missing = [k for k in own if k not in tensors and own[k].data_ptr() not in loaded]
    if wrong or extra or missing:
        details = "; ".join(part for part in (f"shapes differ: {', '.join(wrong[:3])}" if wrong else "",
                                              f"not in the model: {', '.join(extra[:3])}" if extra else "",
                                              f"not in the file: {', '.join(missing[:3])}" if missing else "") if part)
        raise ValueError(f"{path} does not fit this model (another preset or architecture?): {details}")
    model.load_state_dict(tensors, strict=False)


def _dist(device: torch.device):
    """(rank, world size), initialising torch.distributed when launched by torchrun: NCCL for a model on a GPU,
    gloo for one on the CPU (also on a machine that has GPUs: NCCL cannot reduce CPU tensors). The group this
    starts is destroyed at exit: left to interpreter shutdown, a rank can abort ("terminate called without an
    active exception", seen once in CI) and torchrun then fails a run that trained fine."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_process_group)
    return (torch.distributed.get_rank() if world > 1 else 0), world


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():  # the caller may have destroyed it already
        torch.distributed.destroy_process_group()


def run_summary(state: dict) -> str:
    """The end of a run in a few words: its steps and best validation value (or that nothing was validated)."""
    best = f"best valid {state['metric']} {state['best']:.4f}" if state["best"] is not None else "no validation"
    return f"{state['step']} steps, {best}"


def train_next_item(model, tokenizer: CodeTokenizer, data: RecData, out_dir: str | Path, cfg: TrainConfig,
                    resume: bool = False, progress: bool = True) -> dict:
    """Train ``model`` to predict the next item's identifier tokens; checkpoints go to ``out_dir/last`` (every
    validation, with optimizer and trainer state) and ``out_dir/best`` (best validation Recall@10).
    With ``cfg.train_on_valid`` the validation items are training examples too (:meth:`RecData.train_examples`),
    so there is no validation: every checkpoint is saved as the best one and nothing stops early; with
    ``cfg.valid_only`` they are the only ones (:meth:`RecData.valid_examples`: a recency fine-tune of a model
    trained on the train items, the validation period being the latest data before the test period).
    A folder that already holds a run is refused unless ``resume`` (continue it; with nothing to continue,
    a new run starts). Returns the trainer state (history of losses and validations, best metric, steps)."""
    raw_examples = training_examples(data, cfg)
    examples = encode_examples(tokenizer, raw_examples, cfg.with_eos)
    if not examples:
        raise ValueError("no validation item has an earlier item of its user to predict it from" if cfg.valid_only else
                         "the data has no training examples (every train sequence has fewer than 2 items)")
    val_prompts = [] if cfg.train_on_valid else validation_prompts(data, cfg)

    def batch_loss(train_model, indices: list[int]) -> torch.Tensor:
        device = next(model.parameters()).device
        if cfg.history_dropout > 0:
            # Seeded by the batch itself: the same batch drops the same items, also after a resume.
            rng = random.Random(f"{cfg.seed}:{','.join(map(str, indices))}")
            batch = encode_examples(tokenizer, [(drop_history(raw_examples[j][0], cfg.history_dropout, rng),
                                                 raw_examples[j][1]) for j in indices], cfg.with_eos)
        else:
            batch = [examples[j] for j in indices]
        input_ids, mask, labels = (x.to(device) for x in collate(batch))
        return train_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    def validate() -> dict:
        return evaluate_model(model, tokenizer, val_prompts, ks=(10,), batch_size=cfg.eval_batch_size,
                              with_eos=cfg.with_eos, progress=progress)

    return train_loop(model, tokenizer, out_dir, cfg, [len(ids) for ids, _ in examples], batch_loss,
                      validate if val_prompts else None, "recall@10", resume=resume, progress=progress,
                      extra_config=training_data_marks(cfg), data_fingerprint=data.fingerprint(),
                      checkpoint_facts={"max_history": data.max_history})


def validation_prompts(data: RecData, cfg: TrainConfig) -> list:
    """The first ``cfg.eval_prompts`` validation prompts (none when it is 0); an error when validation was asked
    for but the data has no validation items, rather than silently training without early stopping."""
    prompts = data.valid_prompts()[:cfg.eval_prompts]
    if cfg.eval_prompts > 0 and not prompts:
        raise ValueError(f"{data.name} has no validation prompts (no user has a validation item: is "
                         "sequential_valid.txt missing or empty?); train without validation with eval_prompts=0 "
                         "(--eval-prompts 0: no early stopping, every checkpoint is the best) or on data that has "
                         "validation items")
    return prompts


def training_data_marks(cfg: TrainConfig) -> dict | None:
    """What a checkpoint says it learnt from beyond the train items (its ``meta.json``; resume compares it)."""
    if not cfg.train_on_valid:
        return None
    return {"train_on_valid": True, "valid_only": True} if cfg.valid_only else {"train_on_valid": True}


def training_examples(data: RecData, cfg: TrainConfig) -> list[tuple[tuple[int, ...], int]]:
    """The (history, next item) examples ``cfg`` trains on: train items, + validation items, or those only."""
    return data.valid_examples() if cfg.valid_only else data.train_examples(include_valid=cfg.train_on_valid)


def train_loop(model, tokenizer, out_dir: str | Path, cfg: TrainConfig, lengths: list[int], batch_loss, validate,
               metric: str, resume: bool = False, progress: bool = True, extra_config: dict | None = None,
               data_fingerprint: str | None = None, checkpoint_facts: dict | None = None,
               resume_view=None) -> dict:
    """The training loop shared by the target and draft trainers: AdamW, warm-up + cosine, clipping,
    (bfloat16 autocast), validation every ``cfg.eval_every`` steps or epoch, early stopping on ``metric``
    (higher is better), ``best/`` and ``last/`` checkpoints, exact resume, DDP under torchrun. Each validation
    is recorded in the returned state's ``history`` with the mean training loss since the previous one.

    Args:
        lengths: the length of each training example (batches group similar lengths).
        batch_loss: ``(train_model, example indices) -> loss`` (``train_model`` is the DDP wrapper if any).
        validate: ``() -> metrics`` on rank 0, with ``metric`` among them; None when there is nothing to
            validate on: each checkpoint is then the best (the latest), training never stops early and the
            state's ``best`` stays None (resuming a validated run that way is refused: it would overwrite the
            validated ``best/``).
        extra_config: more settings of the run (e.g. the alignment objective): kept in the trainer state and
            in ``best/meta.json``; a resume with different ones is refused.
        checkpoint_facts: more facts every checkpoint's ``meta.json`` records (e.g. the history length), not
            compared on resume (the data fingerprint covers them).
        resume_view: ``extra_config -> what a resume compares`` (default: all of it), applied to the saved and the
            current settings alike: settings the run ignores must not block a resume.
        data_fingerprint: :meth:`RecData.fingerprint` of the training data, kept in the trainer state; a resume
            on other data is refused (runs saved without one are checked on their example count only).
    """
    device = next(model.parameters()).device
    rank, world = _dist(device)
    out_dir = Path(out_dir)
    held = [name for name in ("best", "last") if (out_dir / name).exists()]
    if held and not resume and rank == 0:  # (the CLI's --overwrite deletes them first, on rank 0: no race there)
        raise ValueError(f"{out_dir} already holds a run ({' and '.join(held)}/): pass resume=True to continue it, "
                         "delete them to start again, or train into another folder")
    n_in, n_out = model_vocab_sizes(model)
    if min(n_in, n_out) < tokenizer.vocab_size:
        raise ValueError(f"the model embeds {n_in} and scores {n_out} tokens, but the tokenizer has "
                         f"{tokenizer.vocab_size}: build the model with vocab_size >= {tokenizer.vocab_size}")
    epoch_steps = steps_per_epoch(len(lengths), cfg.batch_size, world)
    total = cfg.epochs * epoch_steps if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * epoch_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(int(cfg.warmup_ratio * total), total))
    extra_config = extra_config or {}
    facts = checkpoint_facts or {}
    state = {"step": 0, "epoch": 0, "metric": metric, "best": None, "bad_evals": 0, "history": [],
             "config": asdict(cfg), "extra_config": extra_config, "examples": len(lengths), "data": data_fingerprint}
    last = out_dir / "last"
    if resume and (last / "trainer_state.json").exists():
        try:
            state = json.loads((last / "trainer_state.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{last / 'trainer_state.json'} is not valid JSON ({e}): a damaged run; resume another "
                             "or start again with --overwrite") from None
        view = resume_view or (lambda settings: settings)
        saved_extra, extra = view(state.get("extra_config", {})), view(json.loads(json.dumps(extra_config)))
        if saved_extra != extra:
            changed = ", ".join(f"{k} {saved_extra.get(k)!r} -> {extra.get(k)!r}" for k in sorted({*saved_extra, *extra})
                                if saved_extra.get(k) != extra.get(k))
            raise ValueError(f"{last} was trained with other settings ({changed}); resume with the same ones or use "
                             "another output directory")
        state.setdefault("metric", metric)
        state.setdefault("best", state.pop("best_recall@10", None))  # states written before "best" existed
        if validate is None and state["best"] is not None:
            raise ValueError(f"{last} is a validated run (best {state['metric']} {state['best']:.4f}) but this one "
                             "has nothing to validate on: its unvalidated checkpoints would replace that best/; "
                             "resume with validation prompts or use another output directory")
        changed = _changed_settings(state.get("config", {}), cfg)
        if changed:
            raise ValueError(f"{last} was trained with other settings ({changed}): an exact resume needs the same "
                             "ones (to continue with new settings start a new run from --init RUN/last), or use "
                             "another output directory")
        saved_data = state.get("data")  # None: a run saved without a fingerprint
        if state.get("examples", len(lengths)) != len(lengths) or \
                (data_fingerprint and saved_data and saved_data != data_fingerprint):
            raise ValueError(f"{last} was trained on other data ({state.get('examples')} examples; this run has "
                             f"{len(lengths)}: another data set, other sequences or history length); resume on the "
                             "same data or use another output directory")
        _load_weights(model, last / "model.safetensors", device)
        _load_optimizer(last, optimizer)
        scheduler.load_state_dict(state.pop("scheduler"))
        if rank == 0:
            print(f"resumed from {last} at step {state['step']} (epoch {state['epoch']})")
    elif resume and rank == 0:
        print(f"nothing to resume in {last} (no trainer_state.json): training from the start")
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model)

    interval_losses: list[float] = []  # rank 0's training losses since the last validation

    def validate_and_save() -> bool:
        """Validation on rank 0, checkpoints; returns True when training should stop."""
        stop = torch.zeros(1, dtype=torch.float32, device=device)
        if rank == 0:
            model.eval()
            metrics = validate() if validate is not None else None
            model.train()
            if metrics is not None and metric not in metrics:
                raise KeyError(f"validation returned {sorted(metrics)}, not the early-stopping metric {metric!r}")
            validated = metrics is not None
            improved = not validated or state["best"] is None or metrics[metric] > state["best"]
            train_loss = sum(interval_losses) / len(interval_losses) if interval_losses else None
            interval_losses.clear()
            state["history"].append({"step": state["step"], "epoch": state["epoch"], "train_loss": train_loss,
                                     **(metrics or {})})
            if improved:
                state["bad_evals"] = 0
                if validated:
                    state["best"] = metrics[metric]
                # Swapped in whole, like `last`: a new best keeps no file of the old one (e.g. its eval report).
                best_tmp = out_dir / "best.tmp"
                shutil.rmtree(best_tmp, ignore_errors=True)
                save_checkpoint(best_tmp, model, tokenizer, {"step": state["step"], **(metrics or {}), **extra_config,
                                                             **facts, "with_eos": cfg.with_eos})
                shutil.rmtree(out_dir / "best", ignore_errors=True)
                best_tmp.rename(out_dir / "best")
            else:
                state["bad_evals"] += 1
            # Written to a side folder and swapped in, so a crash never leaves a half-written `last`.
            tmp = out_dir / "last.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_checkpoint(tmp, model, tokenizer, {"step": state["step"], **extra_config, **facts,
                                                    "with_eos": cfg.with_eos})
            _save_optimizer(tmp, optimizer)
            (tmp / "trainer_state.json").write_text(json.dumps({**state, "scheduler": scheduler.state_dict()}, indent=2))
            shutil.rmtree(last, ignore_errors=True)
            tmp.rename(last)
            loss_note = f"train loss {train_loss:.4f}, " if train_loss is not None else ""
            result = (f"valid {metric} {metrics[metric]:.4f} (best {state['best']:.4f})" if validated
                      else "no validation (saved as best)")
            tqdm.write(f"step {state['step']}: {loss_note}{result}")
            stop[0] = float(state["bad_evals"] >= cfg.patience)
        if world > 1:
            torch.distributed.broadcast(stop, 0)
        return bool(stop[0])

    dropout_hooks = add_dropout(model, cfg.dropout)
    try:
        model.train()
        bar = tqdm(total=total, initial=state["step"], desc="train", unit="step", disable=not progress or rank != 0)
        loss_ema, stopped, last_eval = None, False, -1
        while not stopped and state["epoch"] < cfg.epochs and state["step"] < total:
            batches = epoch_batches(lengths, cfg.batch_size, cfg.seed + state["epoch"], rank, world)
            epoch_end = (state["epoch"] + 1) * epoch_steps
            first = state["step"] - state["epoch"] * epoch_steps  # > 0 when resuming inside an epoch
            for batch in batches[first:]:
                t0 = time.perf_counter()
                # The step's random numbers (dropout masks) come from a seed of its own (seed, step, rank), so a
                # resumed run draws what the uninterrupted run drew; the caller's CPU generator is left alone.
                with seeded_rng(mixed_seed(cfg.seed, state["step"], rank), device):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                        loss = batch_loss(train_model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                state["step"] += 1
                value = loss.item()
                if not math.isfinite(value):  # stop before a NaN / inf run saves its broken weights as best/
                    raise FloatingPointError(f"the training loss is {value} at step {state['step']}: the run "
                                             "diverged (try a lower learning rate); no checkpoint was saved for it")
                if rank == 0:
                    interval_losses.append(value)
                loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
                state["loss"] = loss_ema
                bar.update(1)
                bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                ex_s=f"{len(batch) * world / (time.perf_counter() - t0):.0f}")
                if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                    stopped, last_eval = validate_and_save(), state["step"]
                if stopped or state["step"] >= total:
                    break
            if state["step"] >= epoch_end:  # the epoch is complete
                state["epoch"] += 1
                if not cfg.eval_every and not stopped:
                    stopped, last_eval = validate_and_save(), state["step"]
        bar.close()
        if last_eval != state["step"] and not stopped:  # always end on a validated checkpoint
            validate_and_save()
    finally:  # the model leaves without the dropout hooks, even on an exception
        for handle in dropout_hooks:
            handle.remove()
    return state

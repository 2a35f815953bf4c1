"""``train_draft``: a draft trained on the next item plus an alignment objective against the target's teacher
data, validated by the mean accepted levels of strict speculative beam search with that target."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .._checks import check_field_types
from .._inputs import check_tree_attention
from ..data import RecData
from ..decoder import BeamSearchDecoder
from ..models import hash_model
from ..spec_decoder import SpecBeamDecoder
from ..train import TrainConfig, train_loop, validation_prompts
from .forcing import forced_level_log_probs
from .levels import LevelView
from .losses import OBJECTIVES, alignment_loss
from .teacher import TeacherData, hash_examples


@dataclass
class AlignConfig:
    objective: str = "atspeed-s"
    alpha: float = 0.7            # weight of the alignment term (1 - alpha on the ground-truth CE)
    temperature: float = 1.0
    topk: int = 20                # AtSpeed-S: size of the draft's top-K set S
    on_policy: bool = False       # align along the draft's own beams, scored by the target (DistillSpec style)
    on_policy_beams: int = 20     # how many of the draft's beams (on-policy data)
    val_beams: int = 10           # validation: strict SpecBeamDecoder with K, N, gamma
    val_draft_beams: int = 40
    val_gamma: int = 3

    def __post_init__(self):
        check_field_types(self)
        for name in ("topk", "on_policy_beams", "val_beams", "val_draft_beams", "val_gamma"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0 < self.temperature < math.inf or self.topk < 1:  # NaN fails the first test too
            raise ValueError(f"need a finite temperature > 0 and topk >= 1, got {self.temperature} and {self.topk}")
        if self.val_draft_beams < self.val_beams:
            raise ValueError("val_draft_beams (N) must be >= val_beams (K)")
        if self.on_policy and self.objective not in ON_POLICY_OBJECTIVES:
            raise ValueError(f"on-policy data applies to the distribution-matching objectives along beams "
                             f"({', '.join(ON_POLICY_OBJECTIVES)}), not to {self.objective!r}")
        if self.on_policy_beams < 1:
            raise ValueError(f"on_policy_beams must be >= 1, got {self.on_policy_beams}")


#: objectives computed along the (target's or on-policy) beams; the others only use the ground truth
BEAM_OBJECTIVES = ("seqkd", "atspeed-s", "atspeed-r")
ON_POLICY_OBJECTIVES = ("atspeed-s", "atspeed-r")


def needs_teacher(align: AlignConfig) -> bool:
    """Whether the objective reads stored teacher data (``ce`` does not; on-policy data is made on the fly)."""
    return align.objective != "ce" and not align.on_policy


def train_draft(draft, target, tokenizer, data: RecData, out_dir: str | Path, cfg: TrainConfig,
                align: AlignConfig, teacher: TeacherData | None = None, resume: bool = False,
                progress: bool = True) -> dict:
    """Train ``draft`` with ``(1 - alpha) * CE + alpha * L_align``; ``best/`` = highest validation mean
    accepted levels per round of strict speculative beam search with ``target``.

    Training examples are ``data.train_examples()``, the first ``len(teacher)`` of them when teacher data is
    given (also for ``ce`` and on-policy runs, so that objectives compare on the same examples). ``target`` is
    needed for validation and for on-policy data. A folder that already holds a run is refused unless ``resume``."""
    if cfg.with_eos:
        raise ValueError("draft alignment works on identifier tokens only (with_eos=False)")
    if cfg.history_dropout:
        raise ValueError("history_dropout applies to train_next_item only: draft alignment trains on the teacher's "
                         "fixed prompts (use history_dropout=0)")
    if cfg.train_on_valid:
        raise ValueError("train_on_valid applies to train_next_item only: draft alignment validates on the "
                         "validation prompts (use train_on_valid=False)")
    for model, name in ((draft, "draft"), (target, "target")):  # before training, not at the first validation:
        check_tree_attention(model, name)  # the forcing rows and the validation decodes use 4-D tree masks
    trie = tokenizer.trie()
    levels = LevelView(trie, tokenizer.item_token_ids)
    examples = data.train_examples()
    if needs_teacher(align) and teacher is None:
        raise ValueError(f"objective {align.objective!r} needs teacher data (atspeed-ext teacher)")
    if teacher is not None:  # every objective then sees the same examples: those the teacher covers
        if len(teacher) > len(examples):
            raise ValueError(f"teacher data has {len(teacher)} rows but the data only {len(examples)} examples")
        examples = examples[:len(teacher)]
        if hash_examples(tokenizer, examples) != teacher.meta["examples_hash"]:
            raise ValueError(f"{teacher.directory}: the teacher data was made for other prompts (another data set, "
                             "history length or tokenizer)")
    target_hash = hash_model(target)
    if teacher is not None and needs_teacher(align) and teacher.meta["model_hash"] != target_hash:
        made_by = teacher.meta.get("source", {}).get("target", "unrecorded")
        raise ValueError(f"{teacher.directory}: the teacher data was made by another target ({made_by}, weights "
                         f"{teacher.meta['model_hash']}) than the one given (weights {target_hash}; the same weights "
                         "in another dtype count as others): make teacher data with this target (atspeed-ext teacher)")
    prompts = [tokenizer.encode_prompt(h) for h, _ in examples]
    truths = tokenizer.item_token_ids[[t for _, t in examples]]
    lengths = [len(p) for p in prompts]
    val_prompts = [tokenizer.encode_prompt(p.history) for p in validation_prompts(data, cfg)]
    device = next(draft.parameters()).device

    def batch_loss(train_model, indices: list[int]) -> torch.Tensor:
        batch_prompts = [prompts[j] for j in indices]
        truth = truths[indices].unsqueeze(1)
        p_logp = None
        if align.objective == "ce":
            chains = truth
        elif align.on_policy:
            chains, p_logp = on_policy_chains(draft, target, trie, levels, batch_prompts, truth,
                                              align.on_policy_beams, tokenizer.pad_token_id)
        else:
            chains, p_logp = teacher.get(indices)
            if not torch.equal(chains[:, 0], truth[:, 0]):
                raise RuntimeError("teacher rows do not match the training examples' targets")
            if align.objective not in BEAM_OBJECTIVES:  # the beams are not used: do not feed them
                chains, p_logp = chains[:, :1], p_logp[:, :1]
        q_logp = forced_level_log_probs(train_model, batch_prompts, chains, levels.level_tokens,
                                        tokenizer.pad_token_id)
        slots, allowed = levels.walk(chains)
        if p_logp is None:
            p_logp = torch.zeros_like(q_logp)
        return alignment_loss(align.objective, q_logp, p_logp.to(device), allowed.to(device), slots.to(device),
                              align.alpha, align.temperature, align.topk)

    def validate() -> dict:
        spec = SpecBeamDecoder(target, draft, trie, align.val_beams, align.val_draft_beams, align.val_gamma)
        levels_per_round, calls = [], []
        for s in range(0, len(val_prompts), cfg.eval_batch_size):
            out = spec.generate(val_prompts[s:s + cfg.eval_batch_size])
            levels_per_round += [n for r in out.stats.accepted_levels for n in r]
            calls += out.stats.target_calls
        return {"accepted_levels": sum(levels_per_round) / max(1, len(levels_per_round)),
                "target_calls": sum(calls) / max(1, len(calls))}

    # A resume must see the same target and teacher data: their contents, not the paths they were given by.
    teacher_id = None if teacher is None else {k: teacher.meta[k] for k in ("examples_hash", "model_hash", "num_beams")}
    extra = {"align": asdict(align), "target": target_hash, "teacher": teacher_id}

    def without_validation_settings(settings: dict) -> dict:  # a run that does not validate ignores them
        align_settings = {k: v for k, v in settings.get("align", {}).items() if not k.startswith("val_")}
        return {**settings, "align": align_settings}

    return train_loop(draft, tokenizer, out_dir, cfg, lengths, batch_loss, validate if val_prompts else None,
                      "accepted_levels", resume=resume, progress=progress, extra_config=extra,
                      data_fingerprint=data.fingerprint(), checkpoint_facts={"max_history": data.max_history},
                      resume_view=None if val_prompts else without_validation_settings)


@torch.no_grad()
def on_policy_chains(draft, target, trie, levels: LevelView, prompts: list[list[int]], truth: torch.Tensor,
                     num_beams: int, pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft's own top-K beams (plus the ground truth as chain 0) and the target's log-probabilities along
    them: on-policy teacher data, made fresh for each batch."""
    was_training = draft.training
    draft.eval()
    beams = BeamSearchDecoder(draft, trie, num_beams).generate(prompts).sequences.cpu()
    draft.train(was_training)
    chains = torch.cat([truth.cpu(), beams], 1)
    p_logp = forced_level_log_probs(target, prompts, chains, levels.level_tokens, pad_token_id)
    return chains, p_logp.float()

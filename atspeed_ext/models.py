"""Named LLaMA-architecture presets built from configs, and loading of local checkpoints."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from ._rng import seeded_rng
from .tokenizer import CodeTokenizer

__all__ = ["PRESETS", "build_model", "save_checkpoint", "load_checkpoint"]

#: name -> (layers, hidden size, attention heads)
PRESETS = {
    "target-8x512": (8, 512, 8),
    "target-4x256": (4, 256, 4),
    "target-2x128": (2, 128, 2),
    "draft-1x128": (1, 128, 2),
    "tiny-1x64": (1, 64, 2),
}


def build_model(preset: str, vocab_size: int, seed: int = 0, max_positions: int = 1024):
    """A randomly initialised LlamaForCausalLM of a named preset (pad 0, bos 1, eos 2 as in CodeTokenizer), its
    weights a function of ``seed`` alone (the global CPU generator is neither read nor changed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    layers, hidden, heads = PRESETS[preset]
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64 + 64,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    with seeded_rng(seed):  # the weights come from the seed alone; the caller's CPU generator is left alone
        return LlamaForCausalLM(cfg)


def save_checkpoint(directory: str | Path, model, tokenizer, extra: dict | None = None) -> Path:
    """A Hugging Face model directory: ``config.json`` + ``model.safetensors``, ``items.json`` (the item
    identifiers and the prompt style), the HF tokenizer files for text prompts, and ``extra`` as
    ``meta.json``. No pickle."""
    from .text_prompt import TextPromptTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    model.save_pretrained(directory, safe_serialization=True)
    items = {"identifiers": tokenizer.identifiers, "prompt": "codes"}
    if isinstance(tokenizer, TextPromptTokenizer):
        tokenizer.hf.save_pretrained(directory)
        items.update(prompt="text", template=tokenizer.template)
    (directory / "items.json").write_text(json.dumps(items))
    if extra is not None:
        (directory / "meta.json").write_text(json.dumps(extra, indent=2))
    return directory


def hash_model(model) -> str:
    """A fingerprint of the model's weights: the target behind teacher data, the weights an eval report describes."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_meta(directory: str | Path) -> dict:
    """The ``meta.json`` of a checkpoint of :func:`save_checkpoint` (its step, validation metrics and training
    settings such as ``train_on_valid``); ``{}`` when it has none (e.g. a plain Hugging Face directory)."""
    path = Path(directory) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


def trained_on_valid(directory: str | Path, split: str) -> bool:
    """Whether the checkpoint learnt from the validation items (``--train-on-valid``); warns on stderr when it is
    about to be evaluated on the ``valid`` split, whose scores then measure training data."""
    on_valid = bool(checkpoint_meta(directory).get("train_on_valid", False))
    if on_valid and split == "valid":
        print(f"warning: {directory} was trained on the validation items (--train-on-valid); its validation "
              "metrics measure training data", file=sys.stderr)
    return on_valid


#: Files one of which a Hugging Face tokenizer needs (fast JSON, SentencePiece, BPE / WordPiece vocabularies).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def _check_tokenizer_files(directory: Path) -> None:
    """Refuse a model folder without its tokenizer: transformers may then build an empty tokenizer from the
    model type alone, and the codes would silently take over the pretrained token ids."""
    if not any((directory / name).exists() for name in _TOKENIZER_FILES):
        raise ValueError(f"{directory} has no tokenizer files (one of {', '.join(_TOKENIZER_FILES)}): save the "
                         "model's tokenizer next to it (tokenizer.save_pretrained(DIR))")


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu", identifiers=None):
    """Load ``(model, tokenizer)`` from a local directory.

    Either a checkpoint of :func:`save_checkpoint` (its ``items.json`` says which tokenizer), or any local
    Hugging Face causal LM with its tokenizer (LLaMA, Qwen2, ...): then ``identifiers`` (item id -> codes)
    must be given, the codes are added to its tokenizer (:class:`TextPromptTokenizer`, instruction prompts)
    and the embeddings grow to fit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .text_prompt import TextPromptTokenizer

    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory}: no config.json; not a checkpoint directory")
    items = None
    if (directory / "items.json").exists():
        items = json.loads((directory / "items.json").read_text())
    elif (directory / "tokenizer.json").exists():  # checkpoints written before items.json existed
        legacy = json.loads((directory / "tokenizer.json").read_text())
        if "identifiers" in legacy:
            items = {"identifiers": legacy["identifiers"], "prompt": "codes"}
    model = AutoModelForCausalLM.from_pretrained(directory).to(device).eval()
    if items is None:
        if identifiers is None:
            raise ValueError(f"{directory} is a plain Hugging Face model (no items.json): pass the item identifiers "
                             "(e.g. --data DIR) so that their codes can be added to its tokenizer")
        _check_tokenizer_files(directory)
        tokenizer = TextPromptTokenizer(AutoTokenizer.from_pretrained(directory), identifiers)
        tokenizer.resize_model(model)
        return model, tokenizer
    if identifiers is not None and [tuple(i) for i in identifiers] != [tuple(i) for i in items["identifiers"]]:
        raise ValueError(f"{directory}: the checkpoint's item identifiers differ from the ones given")
    if items["prompt"] == "text":
        _check_tokenizer_files(directory)
        return model, TextPromptTokenizer(AutoTokenizer.from_pretrained(directory), items["identifiers"],
                                          items["template"])
    return model, CodeTokenizer([tuple(i) for i in items["identifiers"]])

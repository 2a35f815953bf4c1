"""Named LLaMA-architecture presets built from configs, and loading of local checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch

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
    """A randomly initialised LlamaForCausalLM of a named preset (pad 0, bos 1, eos 2 as in CodeTokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    layers, hidden, heads = PRESETS[preset]
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64 + 64,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def save_checkpoint(directory: str | Path, model, tokenizer: CodeTokenizer, extra: dict | None = None) -> Path:
    """``config.json`` + ``model.safetensors`` (Hugging Face layout) + ``tokenizer.json`` (+ ``extra`` as
    ``meta.json``). No pickle."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "tokenizer.json").write_text(json.dumps({"identifiers": tokenizer.identifiers}))
    if extra is not None:
        (directory / "meta.json").write_text(json.dumps(extra, indent=2))
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu"):
    """Load ``(model, tokenizer)`` saved by :func:`save_checkpoint` (any local HF causal LM directory with a
    ``tokenizer.json`` of identifiers)."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory}: no config.json; not a checkpoint directory")
    if not (directory / "tokenizer.json").exists():
        raise FileNotFoundError(f"{directory}: no tokenizer.json (the item identifiers of this checkpoint)")
    identifiers = json.loads((directory / "tokenizer.json").read_text())["identifiers"]
    model = AutoModelForCausalLM.from_pretrained(directory).to(device).eval()
    return model, CodeTokenizer([tuple(i) for i in identifiers])

"""Shared pieces of the benchmarks: the timed model, catalogue and prompts, timing and the machine line."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path

import torch

from atspeed_ext.evaluate import output_recall_ndcg
from atspeed_ext.machine import machine_name

SPECIAL = 3  # token ids 0..2 are special; codes start at 3


def llama(layers: int = 8, hidden: int = 512, vocab_size: int = 3 + 4 * 256, seed: int = 0, dtype=torch.float32):
    """A random LLaMA of the benchmark size (random weights are fine for timing)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64 + 64,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 64), max_position_embeddings=1024,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def catalogue(num_items: int = 12000, depth: int = 4, codes: int = 256, seed: int = 0) -> torch.Tensor:
    """Random semantic identifiers: level l uses tokens SPECIAL + l*codes .. SPECIAL + (l+1)*codes - 1."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([SPECIAL + lvl * codes + torch.randint(0, codes, (num_items,), generator=g)
                        for lvl in range(depth)], 1)


def prompts(batch: int, length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(SPECIAL, vocab_size, (batch, length), generator=g)


def median_ms(fn, reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA-synchronised where a GPU is in use)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def add_model_arguments(p) -> None:
    """The options every trained-model benchmark shares: the data, the target and draft checkpoints, K."""
    p.add_argument("--data", default="../shared/data/beauty")
    p.add_argument("--target", required=True, help="target checkpoint directory")
    p.add_argument("--draft", required=True, help="draft checkpoint directory")
    p.add_argument("--beams", type=int, default=10)


def load_models_and_prompts(args, device, dtype: torch.dtype):
    """``(target, draft, trie, prompts)`` from :func:`add_model_arguments`' options: both models in ``dtype``
    in eval mode, the trie on ``device`` and the first ``args.requests`` test prompts, encoded."""
    from atspeed_ext.data import load_lcrec
    from atspeed_ext.models import load_checkpoint
    from atspeed_ext.tokenizer import CodeTokenizer

    data = load_lcrec(args.data)
    tokenizer = CodeTokenizer(data.identifiers)
    target, draft = (load_checkpoint(path, device, identifiers=data.identifiers)[0].to(dtype).eval()
                     for path in (args.target, args.draft))
    prompts = [tokenizer.encode_prompt(q.history) for q in data.test_prompts()[:args.requests]]
    return target, draft, tokenizer.trie().to(device), prompts


def left_pad(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    return ids.to(device), mask.to(device)


def timed_run(decode, batches) -> tuple[float, list]:
    """Total milliseconds of ``decode(batch)`` over ``batches`` (CUDA-synchronised), and the outputs."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    outs, total = [], 0.0
    for batch in batches:
        sync()
        t0 = time.perf_counter()
        outs.append(decode(batch))
        sync()
        total += (time.perf_counter() - t0) * 1e3
    return total, outs


def median_run(decode, batches, reps: int) -> tuple[float, list]:
    """Median over ``reps`` passes of :func:`timed_run`'s total milliseconds, and the last pass's outputs."""
    times, outs = [], None
    for _ in range(reps):
        ms, outs = timed_run(decode, batches)
        times.append(ms)
    return statistics.median(times), outs


def paired_runs(base_decode, decode, batches, reps: int) -> tuple[float, float, list]:
    """``reps`` rounds of (a pass of ``base_decode``, then a pass of ``decode``) over ``batches``: the median
    milliseconds of ``decode``, the median of the per-round speedups ``base / decode`` (robust to the machine's
    speed drifting between rounds) and ``decode``'s last outputs."""
    times, ratios, outs = [], [], None
    for _ in range(reps):
        base_ms, _ = timed_run(base_decode, batches)
        ms, outs = timed_run(decode, batches)
        times.append(ms)
        ratios.append(base_ms / ms)
    return statistics.median(times), statistics.median(ratios), outs


def quality(outs, prompts, K: int) -> tuple[float, float]:
    """Mean Recall@K and NDCG@K of the decoders' outputs (best score first) over the prompts."""
    flat = [(o, r) for o in outs for r in range(o.sequences.shape[0])]
    scores = [output_recall_ndcg(out, row, p.truth, K) for (out, row), p in zip(flat, prompts)]
    return sum(r for r, _ in scores) / len(scores), sum(n for _, n in scores) / len(scores)


machine = machine_name  # the benchmark scripts' name for it


def write_results(name: str, header: dict, rows: list[dict], columns: list[str]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and a Markdown table next to it; return the .md path."""
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    header = {"date": date.today().isoformat(), "machine": machine(), "torch": torch.__version__, **header}
    try:
        header["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                          cwd=out_dir).stdout.strip()
    except OSError:
        pass
    (out_dir / f"{name}.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    lines = [f"# {name}", ""] + [f"- {k}: {v}" for k, v in header.items()] + ["",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) for c in columns) + " |")
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)

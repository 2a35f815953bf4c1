"""Shared pieces of the benchmarks: the timed model, catalogue and prompts, timing and the machine line."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from atspeed_ext.cli import integer_at_least
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


def sync() -> None:
    """Wait for the work queued on every GPU (a run on cuda:1 too), so that wall times cover it."""
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        torch.cuda.synchronize(i)


def median_ms(fn, reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA-synchronised where a GPU is in use)."""
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


#: An argparse type for counts: an integer >= 1 (the command line's own).
positive = integer_at_least(1)


def add_model_arguments(p) -> None:
    """The options every trained-model benchmark shares: the data, the target and draft checkpoints, K."""
    p.add_argument("--data", type=data_dir, default=DEFAULT_DATA, help="LC-Rec data (default ../shared/data/beauty)")
    p.add_argument("--target", required=True, help="target checkpoint directory")
    p.add_argument("--draft", required=True, help="draft checkpoint directory")
    p.add_argument("--beams", type=positive, default=10)


def load_models_and_prompts(args, device, dtype: torch.dtype):
    """``(target, draft, trie, prompts)`` from :func:`add_model_arguments`' options: both models in ``dtype``
    in eval mode, the trie on ``device`` and the first ``args.requests`` test prompts, encoded."""
    from atspeed_ext.models import load_checkpoint
    from atspeed_ext.tokenizer import CodeTokenizer

    data = load_data(args.data)
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


def paired_runs(base_decode, decode, batches, reps: int) -> tuple[float, float, list, float]:
    """``reps`` rounds of a pass of ``base_decode`` and a pass of ``decode`` over ``batches``, back to back (the
    order alternating round by round, so that neither always runs first): the median milliseconds of ``decode``,
    the median of the per-round speedups ``base / decode`` (robust to the machine's speed drifting between
    rounds), ``decode``'s last outputs and the median milliseconds of ``base_decode`` in these rounds."""
    times, base_times, ratios, outs = [], [], [], None
    for i in range(reps):
        if i % 2 == 0:
            base_ms, _ = timed_run(base_decode, batches)
            ms, outs = timed_run(decode, batches)
        else:
            ms, outs = timed_run(decode, batches)
            base_ms, _ = timed_run(base_decode, batches)
        times.append(ms)
        base_times.append(base_ms)
        ratios.append(base_ms / ms)
    return statistics.median(times), statistics.median(ratios), outs, statistics.median(base_times)


def parse_drafts(specs: list[str]) -> dict[str, str]:
    """``--draft [NAME=]DIR`` options as {name: directory}; a bare directory is named after its run folder; two
    drafts of one name are an error (one would silently replace the other)."""
    drafts = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:  # a bare directory: named after it (.../beauty-draft-1x128-ce/best -> beauty-draft-1x128-ce)
            path = spec
            p = Path(spec.rstrip("/"))
            name = p.parent.name if p.name in ("best", "last") else p.name
        if name in drafts:
            raise SystemExit(f"error: two drafts are called {name!r}; name them with NAME=DIR")
        drafts[name] = path
    return drafts


def quality(outs, prompts, K: int) -> tuple[float, float]:
    """Mean Recall@K and NDCG@K of the decoders' outputs (best score first) over the prompts."""
    flat = [(o, r) for o in outs for r in range(o.sequences.shape[0])]
    scores = [output_recall_ndcg(out, row, p.truth, K) for (out, row), p in zip(flat, prompts)]
    return sum(r for r, _ in scores) / len(scores), sum(n for _, n in scores) / len(scores)


machine = machine_name  # the benchmark scripts' name for it


def code_version(repo: Path) -> str:
    """The commit the measured code is, with ``-dirty`` and a digest of the uncommitted changes when the working
    tree differs from it (results are usually committed together with the code they measured); "unknown" (with
    a warning) outside a git checkout."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=repo).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changes = git("diff", "HEAD", "--", ".", ":(exclude)benchmarks/results")
    except OSError:
        commit, changes = "", ""
    if not commit:
        print("warning: not a git checkout (or no git): the results record commit 'unknown'", file=sys.stderr)
        return "unknown"
    if changes:
        return f"{commit}-dirty (uncommitted changes {hashlib.sha256(changes.encode()).hexdigest()[:10]})"
    return commit


#: The Beauty data next to this repository (../shared/data/beauty from its root), wherever a script runs from.
DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty")


def data_dir(text: str) -> str:
    """An argparse type for ``--data``: an existing folder (an LC-Rec data set)."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder (an LC-Rec data set, e.g. ../shared/data/beauty)")
    return text


def load_data(path: str):
    """``load_lcrec(path)``, a malformed data set ending the script with its ``error: ...`` line."""
    from atspeed_ext.data import DataError, load_lcrec

    try:
        return load_lcrec(path)
    except DataError as exc:
        raise SystemExit(f"error: --data: {exc}") from None


def device(name: str) -> torch.device:
    """``--device`` checked as the atspeed-ext commands check it (no GPU, unknown names: one error line)."""
    from atspeed_ext.commands import parse_device

    return parse_device(name)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def widths_error(widths, K: int, depth: int) -> str | None:
    """Why a SpecBeamDecoder width (N, or a tuple of widths by depth) cannot serve beam size K on a trie of
    ``depth`` (None if it can)."""
    values = [widths] if isinstance(widths, int) else list(widths)
    text = ",".join(map(str, values))
    if min(values) < K:
        return f"--draft-beams {text}: every width must be >= K ({K})"
    if len(values) > max(1, depth - 1):
        return f"--draft-beams {text}: a trie of depth {depth} drafts {depth - 1} depths; give at most {depth - 1} widths"
    return None


def results_name(text: str) -> str:
    """An argparse type for ``--name``: a plain file name (checked before the run, not after it)."""
    if not text or Path(text).name != text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"must be a plain file name (results go to benchmarks/results/), got {text!r}")
    return text


def write_results(name: str, header: dict, rows: list[dict], columns: list[str]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and a Markdown table next to it; return the .md path. The header
    gains the date, the machine (CPU and GPU), the torch and transformers versions and the code's commit."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise SystemExit(f"error: --name {name!r} must be a plain file name (results go to benchmarks/results/)")
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    import transformers

    gpu = f"; GPU: {machine_name('cuda')}" if torch.cuda.is_available() else ""
    header = {"date": date.today().isoformat(), "machine": machine_name("cpu") + gpu, "torch": torch.__version__,
              "transformers": transformers.__version__, **header,
              "commit": code_version(out_dir.parent.parent)}
    previous = out_dir / f"{name}.json"
    if previous.exists():  # said, not refused: scripts such as gpu_check.sh refresh their files on purpose
        try:
            old = json.loads(previous.read_text()).get("header", {})
            made = f" (from {old.get('date', '?')}, commit {old.get('commit', '?')})"
        except (ValueError, OSError, AttributeError):  # an unreadable old file is replaced all the same
            made = ""
        print(f"note: replacing benchmarks/results/{name}.json and .md{made} (rename them first to keep them)",
              file=sys.stderr)
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

"""Teacher data for draft alignment: per training prompt, the target's top-K beams and its log-probabilities
at every position of the ground-truth identifier and of each beam, over the tokens the trie allows there.

Layout (a directory): ``meta.json`` + ``shard_NNNNN.safetensors`` files, each written whole (tmp + rename)
so an interrupted run resumes at the first missing shard. A shard of n prompts holds:

* ``chains`` ``[n, K + 1, L]`` int32: the ground-truth identifier, then the K beams (-1 rows: invalid beams);
* ``beam_scores`` ``[n, K]`` float32: the beams' target scores;
* ``root`` ``[n, R]`` float16: the log-probabilities of the R first-level tokens (shared by every chain);
* ``values`` float16 and ``offsets`` ``[n + 1]`` int64: for prompt i, ``values[offsets[i]:offsets[i + 1]]``
  are the log-probabilities at the trie-allowed slots of depths 1..L-1 of every chain, in (chain, depth,
  slot) order. The allowed slots are recomputed from the chains at reading time (:class:`LevelView`), so
  nothing outside the trie is stored: about 3.5 KB per prompt on Beauty with K = 20.

Log-probabilities are full-vocabulary log-softmax values of the target (as beam search scores them).
Reading is memory-mapped (``safetensors.safe_open``): only the rows asked for are read.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..decoder import BeamSearchDecoder
from ..models import hash_model
from ..tokenizer import checked_item
from .forcing import forced_level_log_probs
from .levels import LevelView

FORMAT = "atspeed-teacher-v1"


def _root_slots(levels: LevelView) -> torch.Tensor:
    return (levels.child_of[0] >= 0).nonzero().squeeze(1)


@torch.inference_mode()
def teacher_batch(model, levels: LevelView, prompts: list[list[int]], truths: torch.Tensor, num_beams: int,
                  trie, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """One batch of teacher rows (the tensors of a shard, ``offsets`` relative to this batch)."""
    out = BeamSearchDecoder(model, trie, num_beams).generate(prompts)
    beams = out.sequences.cpu()
    chains = torch.cat([truths.view(-1, 1, levels.depth), beams], 1)
    logp = forced_level_log_probs(model, prompts, chains, levels.level_tokens, pad_token_id).cpu()
    _, allowed = levels.walk(chains)
    root = logp[:, 0, 0, _root_slots(levels)]
    rest = allowed[:, :, 1:]
    counts = rest.flatten(1).sum(1)
    return {"chains": chains.to(torch.int32), "beam_scores": out.scores.float().cpu(), "root": root.half(),
            "values": logp[:, :, 1:][rest].half(), "offsets": torch.cat([torch.zeros(1, dtype=torch.long),
                                                                         counts.cumsum(0)])}


def delete_teacher_data(out_dir: str | Path) -> list[str]:
    """Delete the teacher data files in ``out_dir`` (``meta.json``, shards and unfinished ``.tmp`` shards), nothing
    else; returns the names deleted."""
    out_dir = Path(out_dir)
    _refuse_other_meta(out_dir)
    names = sorted(p.name for p in out_dir.glob("shard_*.safetensors*"))
    if (out_dir / "meta.json").exists():
        names.append("meta.json")
    names += [p.name for p in out_dir.glob("meta.json.tmp")]
    for name in names:
        (out_dir / name).unlink()
    return names


def generate_teacher_data(model, tokenizer, examples: list[tuple[tuple[int, ...], int]], out_dir: str | Path,
                          num_beams: int = 20, batch_size: int = 64, shard_size: int = 4096,
                          progress: bool = True, source: dict | None = None) -> Path:
    """Run the target's beam search over ``examples`` ((history, next item) pairs, e.g.
    ``RecData.train_examples()``) and store the teacher data in ``out_dir`` (resumable, deterministic:
    the same inputs give the same files). Returns ``out_dir``."""
    if num_beams < 1 or batch_size < 1 or shard_size < 1:
        raise ValueError("num_beams, batch_size and shard_size must be >= 1")
    if not examples:
        raise ValueError("no examples to teach")
    for _, item in examples:  # (histories are checked as prompts are encoded)
        checked_item(item, len(tokenizer.identifiers))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()  # dropout off: the data must not depend on the model's mode (restored at the end)
    trie = tokenizer.trie()
    levels = LevelView(trie, tokenizer.item_token_ids)
    shards = [(s, min(s + shard_size, len(examples))) for s in range(0, len(examples), shard_size)]
    # Everything that determines the bytes; a resume must match all of it.
    meta = {"format": FORMAT, "num_examples": len(examples), "num_beams": num_beams, "depth": levels.depth,
            "shard_size": shard_size, "batch_size": batch_size,
            "shards": [f"shard_{i:05d}.safetensors" for i in range(len(shards))],
            "identifiers_hash": hash_identifiers(tokenizer.identifiers),
            "level_tokens": levels.level_tokens.tolist(), "examples_hash": hash_examples(tokenizer, examples),
            "model_hash": hash_model(model), "source": source or {}}
    meta_path = out_dir / "meta.json"
    if meta_path.exists():
        _refuse_other_meta(out_dir)
        old = _read_meta(meta_path)
        changed = [k for k in meta if k != "source" and old.get(k) != meta[k]]
        if changed:
            raise ValueError(f"{out_dir} holds teacher data of other settings ({', '.join(changed)} differ); "
                             "use another directory, or delete it first (atspeed-ext teacher --overwrite)")
    _write_meta(meta_path, meta)
    for i, (lo, hi) in enumerate(shards):  # a damaged shard is computed again
        path = out_dir / meta["shards"][i]
        problem = path.exists() and shard_problem(path, hi - lo, num_beams, levels.depth)
        if problem:
            print(f"warning: {path} is damaged ({problem}): computing it again", file=sys.stderr)
            path.unlink()
    todo = [i for i, _ in enumerate(shards) if not (out_dir / meta["shards"][i]).exists()]
    started = time.perf_counter()
    bar = tqdm(total=len(examples), initial=len(examples) - sum(shards[i][1] - shards[i][0] for i in todo),
               desc="teacher", unit="prompt", disable=not progress)
    for i in todo:
        lo, hi = shards[i]
        order = sorted(range(lo, hi), key=lambda j: len(examples[j][0]))  # similar lengths batch together
        parts = {}
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            prompts = [tokenizer.encode_prompt(examples[j][0]) for j in idx]
            truths = tokenizer.item_token_ids[[examples[j][1] for j in idx]]
            part = teacher_batch(model, levels, prompts, truths, num_beams, trie, tokenizer.pad_token_id)
            for j, row in zip(idx, _split_rows(part)):
                parts[j] = row
            bar.update(len(idx))
        rows = [parts[j] for j in range(lo, hi)]  # back to example order
        tensors = _join_rows(rows)
        tmp = out_dir / (meta["shards"][i] + ".tmp")
        save_file(tensors, str(tmp))
        tmp.rename(out_dir / meta["shards"][i])
    bar.close()
    if todo:
        meta["seconds_last_run"] = round(time.perf_counter() - started, 1)
    meta["bytes"] = sum((out_dir / s).stat().st_size for s in meta["shards"])
    _write_meta(meta_path, meta)
    model.train(was_training)
    return out_dir


def hash_identifiers(identifiers) -> str:
    return hashlib.sha256(json.dumps([list(i) for i in identifiers]).encode()).hexdigest()[:16]


def hash_examples(tokenizer, examples) -> str:
    """A fingerprint of the encoded prompts and targets, so that teacher rows cannot be paired with other
    examples (another history length, another data set) without an error."""
    h = hashlib.sha256()
    for history, target in examples:
        h.update(json.dumps([tokenizer.encode_prompt(history), int(target)]).encode())
    return h.hexdigest()[:16]


def shard_problem(path: Path, rows: int, num_beams: int, depth: int) -> str | None:
    """Why ``path`` cannot be a whole teacher shard of ``rows`` prompts (None: it is one, by its safetensors
    header: the tensors, their shapes and the file size it describes)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size > path.stat().st_size:
                return f"its header length ({size} bytes) is beyond the file"
            header = json.loads(f.read(size))
        end = 8 + size + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:  # JSON errors are ValueErrors
        return f"unreadable safetensors header: {type(exc).__name__}"
    missing = sorted({"chains", "beam_scores", "root", "values", "offsets"} - header.keys())
    if missing:
        return f"no {missing[0]!r} tensor"
    for name, shape in (("chains", [rows, num_beams + 1, depth]), ("beam_scores", [rows, num_beams]),
                        ("offsets", [rows + 1])):
        if header[name].get("shape") != shape:
            return f"{name!r} has shape {header[name].get('shape')}, expected {shape}"
    actual = path.stat().st_size
    if actual != end:
        return f"{actual} bytes, its header describes {end}"
    return None


def _write_meta(path: Path, meta: dict) -> None:
    """Write meta.json whole or not at all (a crash mid-write must not leave a half file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path)


def _refuse_other_meta(out_dir: Path) -> None:
    """Refuse a folder whose meta.json is not teacher data (a checkpoint's, say), so that teacher data is neither
    written over it nor deleted with it; a damaged meta.json counts as teacher data when shards lie next to it."""
    path = out_dir / "meta.json"
    if not path.exists() or any(out_dir.glob("shard_*.safetensors*")):
        return
    try:
        is_teacher = json.loads(path.read_text()).get("format") == FORMAT
    except (ValueError, AttributeError):
        is_teacher = False
    if not is_teacher:
        raise ValueError(f"{out_dir} holds a meta.json that is not teacher data (a checkpoint folder?); give another "
                         "directory")


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): damaged teacher data; make it again in another "
                         "directory or replace it (atspeed-ext teacher --overwrite)") from None


def _split_rows(part: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    off = part["offsets"].tolist()
    return [{"chains": part["chains"][r], "beam_scores": part["beam_scores"][r], "root": part["root"][r],
             "values": part["values"][off[r]:off[r + 1]]} for r in range(part["chains"].shape[0])]


def _join_rows(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    counts = torch.tensor([r["values"].numel() for r in rows], dtype=torch.long)
    return {"chains": torch.stack([r["chains"] for r in rows]).contiguous(),
            "beam_scores": torch.stack([r["beam_scores"] for r in rows]).contiguous(),
            "root": torch.stack([r["root"] for r in rows]).contiguous(),
            "values": torch.cat([r["values"] for r in rows]).contiguous(),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])}


class TeacherData:
    """Memory-mapped reader of a teacher directory; row i belongs to training example i.

    Args:
        directory: written by :func:`generate_teacher_data`.
        levels: the :class:`LevelView` of the same trie (its level tokens must equal the stored ones).
        identifiers: if given, checked against the stored identifiers' hash.
    """

    def __init__(self, directory: str | Path, levels: LevelView, identifiers=None):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.directory}: no meta.json; run `atspeed-ext teacher` first")
        self.meta = _read_meta(meta_path)
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.directory}: unknown teacher format {self.meta.get('format')!r}")
        missing = [s for s in self.meta["shards"] if not (self.directory / s).exists()]
        if missing:
            raise ValueError(f"{self.directory}: incomplete teacher data ({len(missing)} shards missing, e.g. "
                             f"{missing[0]}); rerun `atspeed-ext teacher` to finish it")
        size, total = self.meta["shard_size"], self.meta["num_examples"]
        for i, name in enumerate(self.meta["shards"]):
            problem = shard_problem(self.directory / name, min(size, total - i * size), self.meta["num_beams"],
                                    self.meta["depth"])
            if problem:
                raise ValueError(f"{self.directory / name} is damaged ({problem}); rerun `atspeed-ext teacher` with "
                                 "the same settings to compute it again")
        if identifiers is not None and hash_identifiers(identifiers) != self.meta["identifiers_hash"]:
            raise ValueError(f"{self.directory}: teacher data of other item identifiers")
        if levels.level_tokens.tolist() != self.meta["level_tokens"]:
            raise ValueError(f"{self.directory}: teacher data of another identifier vocabulary (level tokens differ)")
        self.levels = levels
        self.num_beams = self.meta["num_beams"]
        self._root_slots = _root_slots(levels)
        self._handles = {}

    def __len__(self) -> int:
        return self.meta["num_examples"]

    def _shard(self, s: int):
        if s not in self._handles:
            self._handles[s] = safe_open(str(self.directory / self.meta["shards"][s]), framework="pt")
        return self._handles[s]

    def get(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``chains`` ``[n, K + 1, L]`` (int64, -1 = invalid) and dense ``logp`` ``[n, K + 1, L, C]``
        (float32; -inf at every slot the trie does not allow) of the given rows."""
        if len(indices) == 0:
            raise ValueError("no teacher rows asked for")
        size = self.meta["shard_size"]
        chains, roots, values = [], [], []
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(f"teacher row {i} out of range [0, {len(self)})")
            f, r = self._shard(i // size), i % size
            chains.append(f.get_slice("chains")[r:r + 1])
            # float16 on disk; widened row by row, since CPU bfloat16 autocast (bf16 training) refuses to
            # concatenate float16 tensors
            roots.append(f.get_slice("root")[r:r + 1].float())
            lo, hi = f.get_slice("offsets")[r:r + 2].tolist()
            values.append(f.get_slice("values")[lo:hi].float())
        chains = torch.cat(chains).long()
        _, allowed = self.levels.walk(chains)
        n, M, L, C = allowed.shape
        logp = torch.full((n, M, L, C), float("-inf"))
        root = torch.cat(roots)
        valid = (chains >= 0).all(-1)
        level0 = logp[:, :, 0]
        level0[:, :, self._root_slots] = root.unsqueeze(1).expand(n, M, -1)
        level0.masked_fill_(~valid.unsqueeze(-1), float("-inf"))
        rest = logp[:, :, 1:]
        rest[allowed[:, :, 1:]] = torch.cat(values)
        return chains, logp

"""Sequential recommendation data in the LC-Rec / AtSpeed directory format, with the paper's protocol.

A directory holds ``<name>.LCRec-*.json`` (the semantic identifier of every item, keyed by the **0-based**
item id: ``{"0": ["<a_47>", "<b_103>", "<c_234>", "<d_99>"], ...}``) and ``sequential_{train,valid,test}.txt``
(one user per line, ``USER ITEM ITEM ...``, **1-based** ids, chronological).

Protocol: a prompt's history is the user's last ``max_history`` (20) items — train items for validation
prompts, train + valid items for test prompts; the ground truth of a prompt is the user's whole set of
valid (or test) items; training examples are every next-item prediction inside each train sequence (and, for a
final model evaluated on test, optionally inside each train + valid sequence at the validation items, or at
the validation items only for a recency fine-tune).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DataError", "Prompt", "RecData", "load_lcrec"]

_CODE = re.compile(r"^<([a-z])_(\d+)>$")
_ITEM_KEY = re.compile(r"0|[1-9][0-9]*")  # an index key: a plain decimal item id ('00', '²' are not)
_DIGITS = re.compile(r"[0-9]+")


class DataError(ValueError):
    """A malformed data file; the message names the file and the line."""


@dataclass(frozen=True)
class Prompt:
    """One request: the user's history (item ids, oldest first) and the items to find."""

    user: int
    history: tuple[int, ...]
    truth: frozenset[int]


@dataclass
class RecData:
    """Items (0-based ids) with their code identifiers, and each user's train / valid / test items."""

    identifiers: list[tuple[str, ...]]           # item id -> codes, e.g. ("<a_47>", "<b_103>", ...)
    train: dict[int, list[int]]
    valid: dict[int, list[int]] = field(default_factory=dict)
    test: dict[int, list[int]] = field(default_factory=dict)
    max_history: int = 20
    name: str = "data"

    @property
    def num_items(self) -> int:
        return len(self.identifiers)

    def fingerprint(self) -> str:
        """A digest of what a model learns from: the identifiers, every split's sequences, the history length."""
        content = json.dumps([self.identifiers, sorted(self.train.items()), sorted(self.valid.items()),
                              sorted(self.test.items()), self.max_history])
        return hashlib.sha256(content.encode()).hexdigest()

    def train_examples(self, include_valid: bool = False) -> list[tuple[tuple[int, ...], int]]:
        """Every next-item prediction inside the train sequences: (last <= max_history items, next item).

        With ``include_valid`` the validation items are targets too, each after the user's train items and earlier
        validation items (the test prompts' history; a user's very first item, with no history, never is): the
        training set of a final model evaluated on test, once its settings were chosen on validation."""
        return self._next_item_examples(include_valid, valid_targets_only=False)

    def valid_examples(self) -> list[tuple[tuple[int, ...], int]]:
        """The next-item predictions of the validation items only (history: the user's train items and earlier
        validation items), in the order of ``train_examples(include_valid=True)``: the latest interactions
        before the test period, for a recency fine-tune of a final model evaluated on test."""
        return self._next_item_examples(True, valid_targets_only=True)

    def _history_length(self) -> int:
        """``max_history``, checked where it is used (it is a plain attribute: callers set it after loading)."""
        if isinstance(self.max_history, bool) or not isinstance(self.max_history, int) or self.max_history < 1:
            raise ValueError(f"max_history must be an integer >= 1, got {self.max_history!r}")
        return self.max_history

    def _next_item_examples(self, include_valid: bool, valid_targets_only: bool) -> list[tuple[tuple[int, ...], int]]:
        m = self._history_length()
        out = []
        for user in sorted(set(self.train) | (set(self.valid) if include_valid else set())):
            train = self.train.get(user, [])
            seq = train + (self.valid.get(user, []) if include_valid else [])
            for i in range(max(1, len(train)) if valid_targets_only else 1, len(seq)):
                out.append((tuple(seq[max(0, i - m):i]), seq[i]))
        return out

    def valid_prompts(self) -> list[Prompt]:
        """Users with validation items; history = their last train items."""
        m = self._history_length()
        return [Prompt(u, tuple(self.train.get(u, [])[-m:]), frozenset(items))
                for u, items in sorted(self.valid.items()) if items and self.train.get(u)]

    def test_prompts(self) -> list[Prompt]:
        """Users with test items; history = their last train + valid items."""
        m = self._history_length()
        out = []
        for u, items in sorted(self.test.items()):
            history = (self.train.get(u, []) + self.valid.get(u, []))[-m:]
            if items and history:
                out.append(Prompt(u, tuple(history), frozenset(items)))
        return out

    def item_counts(self, include_valid: bool = False) -> list[int]:
        """How often each item occurs in the train (and with ``include_valid`` the valid) sequences: the
        popularity baseline of a model trained on the same interactions."""
        return self._counts((self.train, self.valid) if include_valid else (self.train,))

    def valid_item_counts(self) -> list[int]:
        """How often each item occurs in the valid sequences alone: the latest interactions before the test
        period (a recency baseline)."""
        return self._counts((self.valid,))

    def _counts(self, splits) -> list[int]:
        counts = [0] * self.num_items
        for split in splits:
            for seq in split.values():
                for item in seq:
                    counts[item] += 1
        return counts


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object's pairs as a dict, refusing a repeated key (plain ``json`` keeps the last silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _read_index(path: Path) -> list[tuple[str, ...]]:
    try:
        raw = json.loads(path.read_text(), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    except _DuplicateKey as exc:
        raise DataError(f"{path}: item {exc.args[0]!r} is given twice (JSON keeps only the last)") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a non-empty JSON object {{item id: [codes]}}")
    keys = sorted(raw, key=lambda k: int(k) if _ITEM_KEY.fullmatch(k) else -1)
    if [k for k in keys if not _ITEM_KEY.fullmatch(k)] or [int(k) for k in keys] != list(range(len(keys))):
        bad = next((k for i, k in enumerate(keys) if not _ITEM_KEY.fullmatch(k) or int(k) != i), keys[0])
        raise DataError(f"{path}: item ids must be the 0-based integers 0..{len(keys) - 1}; found key {bad!r}")
    identifiers, length = [], None
    for k in keys:
        codes = raw[k]
        if not isinstance(codes, list) or not codes or not all(isinstance(c, str) and _CODE.match(c) for c in codes):
            raise DataError(f"{path}: item {k}: expected a list of codes like '<a_12>', got {codes!r}")
        if length is None:
            length = len(codes)
        elif len(codes) != length:
            raise DataError(f"{path}: item {k} has {len(codes)} codes, item 0 has {length}: identifiers must all "
                            f"have the same length")
        identifiers.append(tuple(codes))
    return identifiers


def _read_sequences(path: Path, num_items: int, required: bool = True) -> dict[int, list[int]]:
    if not path.exists():
        if required:
            raise DataError(f"{path}: file not found")
        return {}
    out: dict[int, list[int]] = {}
    lines = path.read_text().splitlines()
    if required and not any(line.strip() for line in lines):
        raise DataError(f"{path}: file is empty")
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if not all(_DIGITS.fullmatch(f) for f in fields):  # int() would also take '1_0', '+3', '٣'
            raise DataError(f"{path}, line {n}: ids must be non-negative integers (ASCII digits), got "
                            f"{line.strip()!r}")
        values = [int(f) for f in fields]
        user, items = values[0], values[1:]
        if user < 1:
            raise DataError(f"{path}, line {n}: user ids are 1-based, got {user}")
        if user in out:
            raise DataError(f"{path}, line {n}: user {user} appears twice")
        for item in items:
            if not 1 <= item <= num_items:
                raise DataError(f"{path}, line {n}: item {item} is not in the catalogue (1..{num_items}, 1-based)")
        out[user] = [item - 1 for item in items]
    return out


def load_lcrec(directory: str | Path, max_history: int = 20) -> RecData:
    """Load an LC-Rec / AtSpeed data directory (see the module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    index = sorted(directory.glob("*.LCRec-*.json")) or sorted(directory.glob("*.index.json"))
    if not index:
        raise DataError(f"{directory}: no '<name>.LCRec-*.json' identifier index found")
    if len(index) > 1:
        raise DataError(f"{directory}: several identifier indexes ({', '.join(p.name for p in index)}); keep one")
    identifiers = _read_index(index[0])
    return RecData(
        identifiers=identifiers,
        train=_read_sequences(directory / "sequential_train.txt", len(identifiers)),
        valid=_read_sequences(directory / "sequential_valid.txt", len(identifiers), required=False),
        test=_read_sequences(directory / "sequential_test.txt", len(identifiers), required=False),
        max_history=max_history,
        name=index[0].name.split(".")[0],
    )

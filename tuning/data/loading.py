"""Loading SFT data into memory: a source ('demo', a file, a folder, a Hub id) -> LoadedData, its
valid rows as chat messages with their file and row, and its problems.

Also the page's view of loaded rows (preview, page_count) and the seeded train/held-out split,
which training, evaluation and preference data share so all of them hold out the same rows.
Files are read by formats.py and each record normalized by normalize.py; nothing here tokenizes
(tokens.py), so the first page of a huge file shows quickly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.data.formats import DataError, Problem, Rows, read_hub, read_hub_preview, read_path
from tuning.data.normalize import (TEXT_ROLE, check_format_and_map, file_plan, normalize_record,
                                   parse_column_map)
from tuning.paths import DEMO_DATA_DIR, is_hub_id


@dataclass
class LoadedData:
    source: str
    format: str
    conversations: list[list[dict[str, str]]] = field(default_factory=list)
    extras: list[dict[str, Any]] = field(default_factory=list)  # other columns, e.g. eval's kind/expect
    rows_total: int = 0
    problems: list[Problem] = field(default_factory=list)
    locations: list[tuple[str, int]] = field(default_factory=list)  # (file, row) of each conversation
    complete: bool = True  # False when load(limit=N) read only the first N rows
    note: str = ""  # how the rows were read, when the page should say it (a streamed Hub preview)
    arrow: Any = None  # the valid rows as a memory-mapped datasets.Dataset (tuning/data/arrow_data.py), if so loaded
    rows_counted: bool = True  # False: rows_total is a lower bound (a big file's first page; count_rows ends it)

    @property
    def rows_valid(self) -> int:
        return len(self.conversations)


def demo_files() -> tuple[Path, Path]:
    return DEMO_DATA_DIR / "train.jsonl", DEMO_DATA_DIR / "eval.jsonl"


DEMO_ARITHMETIC = "demo-arithmetic"  # the bundled sums GRPO's demo learns (tuning/demo_data/arithmetic/)


def arithmetic_files() -> tuple[Path, Path]:
    folder = DEMO_DATA_DIR / "arithmetic"
    return folder / "train.jsonl", folder / "eval.jsonl"


def _normalize_rows(rows: Rows, fmt: str, column_map: dict[str, str], source: str, complete: bool) -> LoadedData:
    """Detect the format (per file, so a folder may mix them), rename mapped columns, normalize
    and validate every row; bad rows become problems."""
    check_format_and_map(fmt, column_map)
    loaded = LoadedData(source=source, format=fmt, rows_total=rows.total, problems=list(rows.problems),
                        complete=complete)
    formats: list[str] = []
    by_file: dict[str, list[tuple[int, Any]]] = {}
    for file, row, record in rows.records:
        by_file.setdefault(file, []).append((row, record))
    for file, records in by_file.items():
        plan = file_plan(file, [r for _, r in records], fmt, column_map)
        if plan[0] not in formats:
            formats.append(plan[0])
        for row, record in records:
            done = normalize_record(record, file, row, plan)
            if isinstance(done, Problem):
                loaded.problems.append(done)
                continue
            loaded.conversations.append(done[0])
            loaded.locations.append((file, row))
            loaded.extras.append(done[1])
    loaded.format = ", ".join(formats) or fmt
    loaded.problems.sort(key=lambda p: (p.file, p.row))
    return loaded


def load(source: str, fmt: str = "auto", column_map: dict[str, str] | str | None = None,
         split: str | None = None, subset: str | None = None, limit: int | None = None) -> LoadedData:
    """Load a dataset: 'demo', a file (.json .jsonl .csv .tsv .parquet .txt), a folder of such
    files, or a Hub dataset id ('org/name', with `split`, default train, and `subset`).

    Which one is paths.is_hub_id's rule: a Hub id goes to the Hub (or its local cache) only and
    never opens a local path; anything else is a local path (relative to the working directory).
    fmt: "auto" (detected per file) or one of FORMATS. column_map: {"prompt": "question",
    "completion": "answer"} or "prompt=question,completion=answer"; without one, columns with
    common names (question/answer, prompt/response, ...) are mapped when unambiguous, and an
    ambiguous file raises DataError listing its columns.
    limit: parse only the first `limit` rows (the quick first page of a huge file): rows_total
    still counts every row, `complete` is False, and problems cover only the rows read.
    Never tokenizes. Raises DataError for a source that cannot be used at all."""
    return _load(source, fmt, column_map, split, subset, limit, preview=False)


def load_preview(source: str, fmt: str = "auto", column_map: dict[str, str] | str | None = None,
                 split: str | None = None, subset: str | None = None, limit: int | None = None) -> LoadedData:
    """load() for the page: the same for 'demo', files and folders; a Hub dataset is streamed and
    only its first min(limit, HUB_PREVIEW_ROWS) rows are read (never the whole dataset), with
    `complete` False and `note` saying so when there are more. Training reads it all with load()."""
    return _load(source, fmt, column_map, split, subset, limit, preview=True)


def _load(source: str, fmt: str, column_map, split, subset, limit, preview: bool) -> LoadedData:
    mapping = parse_column_map(column_map)
    if source == "demo":
        rows, source = read_path(demo_files()[0], limit), str(demo_files()[0])
    elif source == DEMO_ARITHMETIC:  # read as question/answer rows: the Dataset tab shows what GRPO asks
        rows, source = read_path(arithmetic_files()[0], limit), str(arithmetic_files()[0])
    elif is_hub_id(source):  # the Hub or its cache only: never a local path of that name
        rows = (read_hub_preview if preview else read_hub)(source, split, subset, limit)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            hint = "" if path.is_absolute() else f" (relative to {Path.cwd()}; a Hub id looks like org/name)"
            raise DataError(f"dataset: {source!r} does not exist{hint}")
        rows = read_path(path, limit)
    complete = rows.complete if rows.complete is not None else (
        limit is None or len(rows.records) + len(rows.problems) >= rows.total)
    loaded = _normalize_rows(rows, fmt, mapping, source, complete)
    loaded.note, loaded.rows_counted = rows.note, rows.counted
    return loaded


def load_eval(cfg) -> LoadedData | None:
    """The explicit held-out file: eval_dataset, or the demo's own eval.jsonl for 'demo'."""
    if cfg.eval_dataset:
        return load(cfg.eval_dataset, getattr(cfg, "dataset_format", "auto"),
                    parse_column_map(getattr(cfg, "column_map", "")))
    if cfg.dataset == "demo":
        return load(str(demo_files()[1]))
    return None


def preview(loaded: LoadedData, page: int = 1, page_size: int = 20) -> list[dict[str, Any]]:
    """One page (1-based; clamped to the pages there are) of the valid rows, as dicts for a
    table: index (into loaded.conversations, for token_view), file, row, system, prompt (the
    first user turn), completion (the last answer; a text row's whole text), turns, messages."""
    page_size = max(1, int(page_size))
    page = min(max(1, int(page)), page_count(loaded, page_size))
    start = (page - 1) * page_size
    out = []
    for index in range(start, min(start + page_size, loaded.rows_valid)):
        messages = loaded.conversations[index]
        file, row = loaded.locations[index] if index < len(loaded.locations) else ("", 0)
        by_role = lambda role: [m["content"] for m in messages if m["role"] == role]  # noqa: E731
        out.append({"index": index, "file": file, "row": row,
                    "system": (by_role("system") or [""])[0],
                    "prompt": (by_role("user") or [""])[0],
                    "completion": (by_role("assistant") or by_role(TEXT_ROLE) or [""])[-1],
                    "turns": sum(m["role"] != "system" for m in messages), "messages": messages})
    return out


def page_count(loaded: LoadedData, page_size: int = 20) -> int:
    return max(1, math.ceil(loaded.rows_valid / max(1, int(page_size))))


def split_positions(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded, reproducible train/eval split of n rows: (training positions, held-out positions)."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(n * fraction)))
    held = set(order[:n_eval])
    return [i for i in range(n) if i not in held], sorted(held)


def split(conversations: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded, reproducible train/eval split."""
    if fraction <= 0 or len(conversations) < 2:
        return conversations, []
    train, held = split_positions(len(conversations), fraction, seed)
    return [conversations[i] for i in train], [conversations[i] for i in held]


def load_config_dataset(cfg, limit: int | None = None) -> LoadedData:
    """The training data a TrainConfig names, with its format, column map, split and subset."""
    return load(cfg.dataset, getattr(cfg, "dataset_format", "auto"), parse_column_map(getattr(cfg, "column_map", "")),
                split=getattr(cfg, "dataset_split", "") or None, subset=getattr(cfg, "dataset_subset", "") or None,
                limit=limit)

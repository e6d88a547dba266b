"""Big local datasets on disk instead of in memory: the normalized rows of a file or folder in a
memory-mapped Arrow cache (`datasets`), and the tokenized training rows written to it by a batched
`.map`, so a 1 GB JSONL file is never held as millions of Python objects.

The rows are read by tuning/data/formats.py (a JSONL file line by line) and normalized and validated
by the per-record functions of tuning/data/normalize.py, so every problem names the same file, row
and field as the in-memory loader (tuning/data/loading.py) does. They are written to an Arrow file
in record batches (build) and opened memory-mapped by `datasets.Dataset.from_file`; bad rows are
kept in the same table (their `problem` column set, no messages), so a cached build knows its
problems without reading the file again.
Why not load_dataset("json"): pyarrow's JSON reader fails the whole file on one bad line, fills a
missing field with null (so "missing" and "got null" read the same) and drops blank lines (so row
numbers would no longer be the editor's line numbers).

The cache lives in the workspace (cache_dir), keyed by each file's path, size and modification
time, the format, the column map and the source of the code that reads, validates and tokenizes
rows (formats.py, normalize.py, tokens.py and this module): an unchanged file is never read twice;
an edited one, or changed code, builds anew. Used for sources of at least ARROW_MIN_BYTES; smaller
ones load in memory, where they are quicker. training.py decides when to use it and imports this
module, so this one never imports training.py or the package's __init__ (that would be a cycle).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuning.data import formats, normalize, tokens
from tuning.data.formats import DataError, Problem
from tuning.data.loading import LoadedData
from tuning.paths import is_hub_id

ARROW_MIN_BYTES = 32 * 2**20  # below this a source loads in memory (quicker, and a few MB at most)
HEAD_ROWS = 100  # records of a file read before its format is decided (as the in-memory loader does)
BATCH_ROWS = 1000  # rows a batched .map and a sequential read take at a time
WRITE_ROWS = 10_000  # rows converted to Arrow and written at a time while building the cache


def cache_dir(workspace: str | Path) -> Path:
    """Where the Arrow caches of a workspace's datasets live."""
    return Path(workspace) / "cache" / "datasets"


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return [path]


def source_bytes(source: str) -> int:
    """The size of a local file or folder; 0 for the demo, a Hub id or a missing path."""
    path = Path(source).expanduser()
    if source == "demo" or not path.exists():
        return 0
    return sum(p.stat().st_size for p in _files(path))


def wanted(source: str, workspace: str | Path | None, min_bytes: int | None = None) -> bool:
    """Whether `source` goes through the Arrow cache: a local file or folder of at least
    min_bytes (default ARROW_MIN_BYTES), when there is a workspace to keep the cache in."""
    if workspace is None or source == "demo" or is_hub_id(source):
        return False
    return source_bytes(source) >= (ARROW_MIN_BYTES if min_bytes is None else min_bytes)


def _fingerprint(path: Path, fmt: str, mapping: dict[str, str]) -> str:
    h = hashlib.sha256()
    for module in (formats, normalize, tokens, __import__(__name__, fromlist=["_"])):
        h.update(Path(module.__file__).read_bytes())  # a changed reader, validator or tokenizer builds anew
    h.update(json.dumps([str(path.resolve()), fmt, sorted(mapping.items())]).encode())
    for file in _files(path):
        stat = file.stat()
        h.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _features():
    from datasets import Features, Value

    return Features({"messages": [{"role": Value("string"), "content": Value("string")}],
                     "file": Value("string"), "row": Value("int64"), "format": Value("string"),
                     "extras": Value("string"), "field": Value("string"), "problem": Value("string")})


def _problem_row(p: Problem) -> dict:
    return {"messages": [], "file": p.file, "row": p.row, "format": "", "extras": "{}", "field": p.field,
            "problem": p.message}


def _generate(path: str, fmt: str, mapping_json: str):
    """Every row of the source as one Arrow row: a valid one with its messages, format and extra
    columns (JSON text: any column a file has), a bad one with its problem."""
    mapping = json.loads(mapping_json)
    head: list[tuple[str, int, Any]] = []
    plan: tuple | None = None
    current = None

    def flush():
        nonlocal plan
        if head:
            plan = normalize.file_plan(head[0][0], [r for _, _, r in head], fmt, mapping)
        for file, row, record in head:
            yield _row(file, row, record, plan)
        head.clear()

    for item in formats.iter_rows(Path(path)):
        if isinstance(item, Problem):
            yield _problem_row(item)
            continue
        if item[0] != current:  # a folder's next file: decide its format from its own head
            yield from flush()
            current, plan = item[0], None
        if plan is None:
            head.append(item)
            if len(head) >= HEAD_ROWS:
                yield from flush()
            continue
        yield _row(*item, plan)
    yield from flush()


def _row(file: str, row: int, record: Any, plan: tuple) -> dict:
    done = normalize.normalize_record(record, file, row, plan)
    if isinstance(done, Problem):
        return _problem_row(done)
    messages, extras = done
    return {"messages": messages, "file": file, "row": row, "format": plan[0],
            "extras": json.dumps(extras, ensure_ascii=False, default=str), "field": None, "problem": None}


def build(source: str, fmt: str, mapping: dict[str, str], workspace: str | Path):
    """The source's rows as a memory-mapped datasets.Dataset (built once per file version). The rows
    are written WRITE_ROWS at a time as Arrow record batches (pyarrow converts a batch in C++; the
    datasets generator builder encodes one example at a time in Python, ~10x slower on a 1 GB file)
    into the stream format datasets itself writes, then opened by datasets.Dataset.from_file."""
    import pyarrow as pa
    from datasets import Dataset

    path = Path(source).expanduser()
    normalize.check_format_and_map(fmt, mapping)
    folder = cache_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"rows-{_fingerprint(path, fmt, mapping)}.arrow"
    if not target.exists():
        schema = _features().arrow_schema
        part = target.with_name(f"{target.name}.{os.getpid()}.part")  # a crash leaves no half-written cache
        try:
            with pa.OSFile(str(part), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                batch: list[dict] = []
                for row in _generate(str(path), fmt, json.dumps(mapping)):
                    batch.append(row)
                    if len(batch) >= WRITE_ROWS:
                        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                        batch = []
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return Dataset.from_file(str(target))


class Column(Sequence):
    """One column of the valid rows, read from the memory-mapped table on demand: indexing reads
    one row, iterating reads BATCH_ROWS at a time. Stands in for LoadedData's lists."""

    def __init__(self, ds, names: tuple[str, ...], convert):
        self.ds, self.names, self.convert = ds.select_columns(list(names)), names, convert

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = self.ds[int(index)]
        return self.convert(*(row[n] for n in self.names))

    def __iter__(self):
        for batch in self.ds.iter(batch_size=BATCH_ROWS):
            yield from map(self.convert, *(batch[n] for n in self.names))


def _interned():
    names: dict[str, str] = {}
    return lambda file, row: (names.setdefault(file, file), row)  # one string per file, not per row


def load(source: str, fmt: str = "auto", column_map: dict[str, str] | str | None = None,
         workspace: str | Path | None = None) -> LoadedData:
    """loading.load for a big local file or folder: the same LoadedData (format, counts, problems in
    file and row order), with conversations, locations and extras read from the Arrow cache on
    demand; `loaded.arrow` is the table of valid rows (for training.prepare)."""
    import numpy as np
    import pyarrow.compute as pc

    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"dataset: {source!r} does not exist")
    mapping = normalize.parse_column_map(column_map)
    table_ds = build(source, fmt, mapping, workspace)
    table = table_ds.data.table
    bad = table.column("problem").is_valid()
    problems_table = table.filter(bad).select(["file", "row", "field", "problem"]).to_pylist()
    problems = sorted((Problem(p["file"], p["row"], p["field"] or "", p["problem"]) for p in problems_table),
                      key=lambda p: (p.file, p.row))
    valid = np.flatnonzero(~np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool))
    rows = table_ds.select(valid)
    kinds = [k for k in pc.unique(table.column("format")).to_pylist() if k]
    loaded = LoadedData(source=source, format=", ".join(sorted(kinds, key=_first_seen(table))) or fmt,
                             rows_total=len(table_ds) - sum(p.row == 0 for p in problems), problems=problems)
    loaded.conversations = Column(rows, ("messages",), lambda m: m)
    loaded.locations = Column(rows, ("file", "row"), _interned())
    loaded.extras = Column(rows, ("extras",), json.loads)
    loaded.arrow = rows
    return loaded


def _first_seen(table):
    """Sort key: the formats in the order their first row appears (as the in-memory loader lists them)."""
    import pyarrow.compute as pc

    column = table.column("format")
    return lambda kind: pc.index(column, kind).as_py()


# --- training: tokenized rows written to the cache by a batched .map ----------------------------

def _tokenizer_key(tokenizer) -> str:
    h = hashlib.sha256(f"{getattr(tokenizer, 'name_or_path', '')}\0{len(tokenizer)}\0"
                       f"{getattr(tokenizer, 'chat_template', '')}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    return h.hexdigest()[:16]


def to_dataset(tokenizer, loaded: LoadedData, positions: list[int] | None, max_length: int,
               completions_only: bool, workspace: str | Path, name: str):
    """tokens.to_dataset over the rows of `loaded.arrow` at `positions` (all when None), tokenized in
    batches by .map into a cache file beside the rows: the same input_ids, assistant_masks and
    row_id (the position among `positions`) as tokens.to_dataset, row for row."""
    import numpy as np

    rows = loaded.arrow if positions is None else loaded.arrow.select(positions)
    source_file = Path(loaded.arrow.cache_files[0]["filename"]).stem  # rows-<the source's fingerprint>
    key = hashlib.sha256(json.dumps([source_file, name, len(rows), _tokenizer_key(tokenizer),
                                     max_length, bool(completions_only)]).encode())
    if positions is not None:
        key.update(np.asarray(positions, dtype=np.int64).tobytes())
    fingerprint = key.hexdigest()[:32]

    def tokenize(batch, indices):
        out = {"input_ids": [], "assistant_masks": [], "row_id": []}
        for messages, i in zip(batch["messages"], indices):
            for piece in tokens.tokenize_rows(tokenizer, messages, max_length, completions_only):
                if any(piece["assistant_masks"]):  # a row with no trained token is dropped, as in tokens.to_dataset
                    out["input_ids"].append(piece["input_ids"])
                    out["assistant_masks"].append(piece["assistant_masks"])
                    out["row_id"].append(i)
        return out

    folder = cache_dir(workspace) / "tokenized"
    folder.mkdir(parents=True, exist_ok=True)
    ds = rows.map(tokenize, batched=True, batch_size=BATCH_ROWS, with_indices=True,
                  remove_columns=rows.column_names, new_fingerprint=fingerprint,
                  cache_file_name=str(folder / f"{fingerprint}.arrow"), desc=f"tokenizing {name} rows")
    if not len(ds):
        raise DataError("no example has a trained token left (is max_length too small?)")
    return ds

"""Reading dataset sources into rows: JSON, JSONL, CSV/TSV, Parquet, TXT, a folder of such
files, or a Hugging Face Hub dataset id.

Each reader returns `Rows`: (file, row number, record) triples plus the rows it could not
read. Row numbers are what the user's editor shows: the line number for JSONL, CSV/TSV and
TXT (a CSV's header is line 1), the 1-based position for a JSON list, Parquet and the Hub.
A source that cannot be read at all (empty, binary, wrong extension, undecodable) raises
DataError with one clear message; a row that cannot be read becomes a Problem and the rest
still loads. What the rows mean (chat, alpaca, ...) is tuning/data/'s business.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuning.paths import is_hub_id

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
            ".parquet": "parquet", ".txt": "txt"}
SUPPORTED = ".json, .jsonl, .csv, .tsv, .parquet or .txt"

# The first bytes of files people drop in by mistake, to say what the file really is.
MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
         b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive (or an .xlsx/.docx file)",
         b"\x1f\x8b": "a gzip archive", b"PAR1": "a Parquet file", b"SQLite format 3": "an SQLite database"}


# Bounds every reader keeps, so a hostile or broken file costs seconds and bounded memory, never a
# hang: the longest context any preset trains is 131,072 tokens (~0.5 MB of text), so a row of 2 MB is
# four times anything a model can learn from; no chat, alpaca or preference format has more than a
# few dozen columns.
MAX_ROW_BYTES = 2 * 2**20
MAX_COLUMNS = 1000


class DataError(ValueError):
    """The dataset as a whole cannot be used (missing, empty, unreadable)."""


@dataclass
class Problem:
    file: str
    row: int  # 1-based, as an editor shows it; 0 means the whole file
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file + (f", row {self.row}" if self.row else "")
        where += f", field '{self.field}'" if self.field else ""
        return f"{where}: {self.message}"


@dataclass
class Rows:
    records: list[tuple[str, int, Any]] = field(default_factory=list)  # (file, row, record)
    problems: list[Problem] = field(default_factory=list)
    total: int = 0  # every row of the source, also those past a limit and those that failed
    complete: bool | None = None  # set by a reader that knows better than total (a streamed preview)
    note: str = ""  # what the user should know about how the rows were read
    counted: bool = True  # False: total is a lower bound (a big file's first page counts only its head)


def read_path(path: Path, limit: int | None = None) -> Rows:
    """Rows of a file or of every dataset file in a folder; with `limit`, only the first
    `limit` rows are parsed, but `total` still counts them all (cheaply)."""
    return _read_folder(path, limit) if path.is_dir() else read_file(path, limit, path.name)


def read_file(path: Path, limit: int | None = None, name: str | None = None) -> Rows:
    name = name or path.name
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{name}: unsupported file type {path.suffix or '(no extension)'}; use {SUPPORTED}")
    if kind == "jsonl" and limit is not None:
        head = _jsonl_head(path, name, limit)
        if head is not None:
            return head
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror})") from None
    if not raw.strip():
        raise DataError(f"{name}: the file is empty")
    if kind == "parquet":
        return _read_parquet(path, name, limit)
    _refuse_binary(raw, name, kind)
    if kind == "jsonl":
        return _read_jsonl(raw, name, limit)
    text = _decode(raw, name)
    if kind == "json":
        return _read_json(text, name, limit)
    if kind in ("csv", "tsv"):
        return _read_csv(text, name, "\t" if kind == "tsv" else ",", limit)
    return _read_txt(text, name, limit)


# --- bytes -> text -----------------------------------------------------------------------------

def _refuse_binary(raw: bytes, name: str, kind: str) -> None:
    for magic, what in MAGIC.items():
        if raw.startswith(magic):
            raise DataError(f"{name}: this is {what}, not a {kind.upper()} text file")
    if b"\x00" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{name}: this is a binary file, not a {kind.upper()} text file")


def _decode(raw: bytes, name: str) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a byte-order mark (Windows editors)
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{name}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                        "save the file as UTF-8") from None


# --- readers -----------------------------------------------------------------------------------

def _read_jsonl(raw: bytes, name: str, limit: int | None) -> Rows:
    """Line by line, so one bad line (bad JSON, another encoding) costs only that line."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raw = raw.decode("utf-16").encode("utf-8")
    rows = Rows()
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        rows.total += 1
        if limit is not None and len(rows.records) + len(rows.problems) >= limit:
            continue  # past the first page: count only
        parsed = _jsonl_line(line, number, name)
        (rows.problems if isinstance(parsed, Problem) else rows.records).append(parsed)
    if not rows.records and rows.problems and limit is None:
        raise DataError(f"{name}: no line could be read; first: {rows.problems[0]}")
    return rows


def _jsonl_line(line: bytes, number: int, name: str) -> tuple[str, int, Any] | Problem:
    """One non-blank JSONL line: (file, row, record), or the Problem that says why it cannot be read."""
    if len(line) > MAX_ROW_BYTES:
        return Problem(name, number, "", too_long(len(line)))
    try:
        text = line.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        return Problem(name, number, "", f"not UTF-8 text (byte 0x{line[exc.start]:02x} at "
                       f"column {exc.start + 1}); save the file as UTF-8")
    try:
        return name, number, json.loads(text)
    except json.JSONDecodeError as exc:
        return Problem(name, number, "", f"not valid JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:  # json raises this, not JSONDecodeError, on very deep nesting
        return Problem(name, number, "", "JSON nested too deeply to read")


def too_long(size: int | None) -> str:
    what = f"the row is {size / 2**20:.1f} MB" if size is not None else "a field is longer than that"
    return (f"{what}; rows are limited to {MAX_ROW_BYTES // 2**20} MB (about 500,000 tokens, more than any "
            "model's context)")


def iter_rows(path: Path):
    """Every row of a file or folder, one at a time: (file, row, record) triples and Problems, as
    read_path reads them. A JSONL file is read line by line (a 1 GB file is never in memory at once);
    the other kinds, and a JSONL file this cannot stream (UTF-16), are read whole by read_path."""
    if path.is_dir() or SUFFIXES.get(path.suffix.lower()) != "jsonl" or _not_streamable(path):
        rows = read_path(path)
        yield from rows.records
        yield from rows.problems
        return
    name, number = path.name, 0
    try:
        with open(path, "rb") as fh:
            for chunk in fh:
                for line in chunk.splitlines():  # a lone \r ends a line too, as in _read_jsonl
                    number += 1
                    if line.strip():
                        yield _jsonl_line(line, number, name)
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror})") from None
    if not number:
        raise DataError(f"{name}: the file is empty")


def _not_streamable(path: Path) -> bool:
    """A file the line-by-line readers leave to the whole-file reader, which says what is wrong
    with it or decodes it (empty, UTF-16, binary, an image renamed .jsonl)."""
    try:
        with open(path, "rb") as fh:
            first = fh.read(8192)
    except OSError:
        return True
    return (not first.strip() or first.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in first
            or any(first.startswith(m) for m in MAGIC))


_BLOCK = 16 * 2**20  # bytes read at a time while counting the lines past the first page
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")


COUNT_BYTES = 16 * 2**20  # the first page counts the rows of at most this much of a file (~0.05 s)


def _jsonl_head(path: Path, name: str, limit: int) -> Rows | None:
    """The first page of a JSONL file without reading the file into memory: the first `limit` lines
    parsed as _read_jsonl parses them, the rest only counted, block by block (a 1 GB file would
    otherwise be read whole, then split into millions of lines, for a page of 20 rows), and only up
    to COUNT_BYTES: past that `counted` is False and total a lower bound (count_rows finishes it), so
    the first page takes the same time however big the file. None for a file this cannot stream
    (UTF-16, a binary file): the whole-file reader says what is wrong."""
    if _not_streamable(path):
        return None
    try:
        with open(path, "rb") as fh:
            lines, kept = [], 0
            while kept < limit:
                line = fh.readline()
                if not line:
                    break
                lines.append(line)  # blank lines too: the row numbers are line numbers
                kept += bool(line.strip())
            rows = _read_jsonl(b"".join(lines), name, limit)
            more, rows.counted = _count_lines(fh, COUNT_BYTES)
            rows.total += more
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror})") from None
    return rows


def _count_lines(fh, budget: int | None = None) -> tuple[int, bool]:
    """(non-blank lines from the file's position on, whether that was all of them), reading at most
    about `budget` bytes. Counts within each block by offsets (no copy of a block): the line cut at a
    block's edge is joined from its two pieces."""
    total, carry, read = 0, b"", 0
    while block := fh.read(_BLOCK):
        read += len(block)
        first = block.find(b"\n")
        if first < 0:
            carry += block
        else:
            last = block.rfind(b"\n")
            total += bool((carry + block[:first]).strip())  # the line the block edge cut
            total += block.count(b"\n", first + 1, last + 1) - _blank_lines(block, first, last)
            carry = block[last + 1:]
        if budget is not None and read >= budget:
            more = fh.read(1)
            return total + (0 if more else bool(carry.strip())), not more
    return total + bool(carry.strip()), True


def count_rows(path: Path) -> int:
    """The rows of a JSONL file, by a scan of its bytes (no JSON parsed): what the first page leaves
    uncounted past COUNT_BYTES. About a second a gigabyte."""
    try:
        with open(path, "rb") as fh:
            return _count_lines(fh)[0]
    except OSError as exc:
        raise DataError(f"{path.name}: cannot read ({exc.strerror})") from None


def _blank_lines(block: bytes, first: int, last: int) -> int:
    """Lines of only whitespace among the whole lines between the newlines at `first` and `last`
    (the JSONL reader skips them)."""
    if not _BLANK_LINE.search(block, first, last + 1):
        return 0  # the common case: one scan for a line break followed by whitespace and another
    return sum(1 for line in block[first + 1:last + 1].split(b"\n")[:-1] if not line.strip())


def _read_json(text: str, name: str, limit: int | None) -> Rows:
    try:
        data = json.loads(text)
    except RecursionError:  # json raises this, not JSONDecodeError, on very deep nesting
        raise DataError(f"{name}: JSON nested too deeply to read") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            # JSON Lines saved with a .json extension: read it as what it is.
            return _read_jsonl(text.encode("utf-8"), name, limit)
        raise DataError(f"{name}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
                        + ("; the file looks cut off" if exc.msg.startswith("Unterminated")
                           or exc.pos >= len(text.rstrip()) - 1 else "")) from None
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if len(lists) == 1:  # {"data": [row, row, ...]}
            data = next(iter(lists.values()))
        elif lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            # columns: {"question": [...], "answer": [...]} (pandas' orient="list")
            data = [dict(zip(lists, values)) for values in zip(*lists.values())]
        else:
            raise DataError(f"{name}: expected a list of rows, an object holding one list of rows, or an object "
                            f"of equally long columns; got an object with keys {', '.join(list(data)[:10])}")
    if not isinstance(data, list):
        raise DataError(f"{name}: expected a list of rows, got {type(data).__name__}")
    if not data:
        raise DataError(f"{name}: the list of rows is empty")
    shown = data if limit is None else data[:limit]
    return _bounded([(name, i, r) for i, r in enumerate(shown, start=1)], len(data), len(text))


def _bounded(records: list[tuple[str, int, Any]], total: int, file_bytes: int) -> Rows:
    """Rows of an already parsed file, with each row over MAX_ROW_BYTES turned into a Problem. Sizes
    are measured only in a file big enough to hold such a row (one pass, linear in the file)."""
    if file_bytes <= MAX_ROW_BYTES:
        return Rows(records, [], total)
    rows = Rows(total=total)
    for item in records:
        size = len(json.dumps(item[2], ensure_ascii=False, default=str))
        if size > MAX_ROW_BYTES:
            rows.problems.append(Problem(item[0], item[1], "", too_long(size)))
        else:
            rows.records.append(item)
    return rows


def _read_csv(text: str, name: str, delimiter: str, limit: int | None) -> Rows:
    csv.field_size_limit(MAX_ROW_BYTES)  # a longer field is a csv.Error: a Problem for its row
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise DataError(f"{name}: cannot read the header line ({exc})") from None
    if len(header) > MAX_COLUMNS:
        raise DataError(f"{name}: the header has {len(header):,} columns; at most {MAX_COLUMNS:,} are read "
                        "(a training file needs a few)")
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError(f"{name}: the first line must name the columns")
    seen: set[str] = set()
    repeated = sorted({h for h in header if h in seen or seen.add(h)})
    if repeated:
        raise DataError(f"{name}: column {repeated[0]!r} appears more than once in the header")
    rows = Rows()
    while True:
        start = reader.line_num + 1  # the line this record starts on (a quoted field may span lines)
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.total += 1
            field_too_long = "field larger than field limit" in str(exc)
            rows.problems.append(Problem(name, start, "", too_long(None) if field_too_long
                                         else f"cannot parse this line ({exc})"))
            continue
        if not values or not any(v.strip() for v in values):
            continue
        rows.total += 1
        if sum(map(len, values)) > MAX_ROW_BYTES:
            rows.problems.append(Problem(name, start, "", too_long(sum(map(len, values)))))
            continue
        if limit is not None and len(rows.records) + len(rows.problems) >= limit:
            continue
        if len(values) < len(header):
            missing = header[len(values):]
            rows.problems.append(Problem(name, start, missing[0], f"missing column{'s' * (len(missing) > 1)} "
                                         f"{', '.join(missing)}: the row has {len(values)} fields, the header "
                                         f"{len(header)}"))
        elif len(values) > len(header):
            rows.problems.append(Problem(name, start, "", f"the row has {len(values)} fields, the header only "
                                         f"{len(header)} (an unquoted {'tab' if delimiter == chr(9) else 'comma'}?)"))
        else:
            rows.records.append((name, start, dict(zip(header, values))))
    if rows.total == 0:
        raise DataError(f"{name}: has a header but no rows")
    return rows


def _read_parquet(path: Path, name: str, limit: int | None) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        total = parquet.metadata.num_rows
        records: list = []
        for batch in parquet.iter_batches(batch_size=min(limit or 10_000, 10_000)):
            records.extend(batch.to_pylist())
            if limit is not None and len(records) >= limit:
                records = records[:limit]
                break
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{name}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})") from None
    if total == 0:
        raise DataError(f"{name}: the Parquet file has no rows")
    return _bounded([(name, i, r) for i, r in enumerate(records, start=1)], total, path.stat().st_size)


def _read_txt(text: str, name: str, limit: int | None) -> Rows:
    """Plain text for continued pre-training: one row per paragraph (blank lines separate them)."""
    rows = Rows()
    lines: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if line.strip():
            if not lines:
                start = number
            lines.append(line)
            continue
        if lines:
            rows.total += 1
            paragraph = "\n".join(lines)
            if len(paragraph) > MAX_ROW_BYTES:
                rows.problems.append(Problem(name, start, "", too_long(len(paragraph))))
            elif limit is None or len(rows.records) < limit:
                rows.records.append((name, start, {"text": paragraph}))
            lines = []
    return rows


def _read_folder(folder: Path, limit: int | None) -> Rows:
    """Every dataset file under the folder, in name order; hidden files are skipped, other
    files and unreadable ones are reported (row 0) so the user sees why they were left out."""
    rows = Rows()
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in files:
        name = str(path.relative_to(folder))
        if path.suffix.lower() not in SUFFIXES:
            if path.name.lower() not in ("readme.md", "license", "license.md"):
                rows.problems.append(Problem(name, 0, "", f"skipped: not a dataset file ({SUPPORTED})"))
            continue
        left = None if limit is None else max(limit - len(rows.records), 0)
        try:
            part = read_file(path, left, name)
        except DataError as exc:
            rows.problems.append(Problem(name, 0, "", str(exc).removeprefix(f"{name}: ")))
            continue
        rows.records += part.records
        rows.problems += part.problems
        rows.total += part.total
        rows.counted = rows.counted and part.counted
    if not rows.records and not rows.total:
        first = f"; {rows.problems[0]}" if rows.problems else ""
        raise DataError(f"{folder.name}: the folder holds no readable dataset file ({SUPPORTED}){first}")
    return rows


# --- the Hugging Face Hub ---------------------------------------------------------------------------

def _offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect, so an offline machine fails in seconds instead of datasets'
    half-minute of retries."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


HUB_PREVIEW_ROWS = 2000  # the most rows a Hub dataset preview streams (the Dataset tab's statistics included)
HUB_PREVIEW_BYTES = 64 * 1024 * 1024  # and the most text it keeps, however long the rows are


def _check_hub_id(name: str) -> None:
    if not is_hub_id(name):  # datasets.load_dataset would read a local folder of that name
        raise DataError(f"dataset: {name!r} is not a Hub dataset id (org/name, nothing of that name on this machine)")


def _hub_unreachable(name: str) -> DataError:
    return DataError(f"dataset: {name!r} is not a file or folder on this machine, and Hub datasets are not "
                     "available offline (huggingface.co cannot be reached). Set HF_HUB_OFFLINE=1 to use a copy "
                     "already in the local Hugging Face cache.")


def _hub_failed(name: str, split: str, subset: str | None, exc: Exception) -> DataError:
    reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    offline = " (not available offline: it is not in the local cache)" if _offline_mode() else ""
    return DataError(f"dataset: cannot load the Hub dataset {name!r}, subset {subset or '(default)'}, split "
                     f"{split!r}{offline}: {reason}")


def read_hub(name: str, split: str | None = None, subset: str | None = None, limit: int | None = None) -> Rows:
    """A whole Hub dataset through datasets.load_dataset (or its local cache when HF_HUB_OFFLINE=1),
    for training. The page previews with read_hub_preview instead, which never downloads it all."""
    _check_hub_id(name)
    split = split or "train"
    label = f"{name}[{split}]"
    if not _offline_mode() and not _hub_reachable():
        raise _hub_unreachable(name)
    import datasets

    try:
        ds = datasets.load_dataset(name, subset or None, split=split)
    except Exception as exc:  # noqa: BLE001 - a missing, private, offline or mis-split dataset: say which
        raise _hub_failed(name, split, subset, exc) from None
    total = len(ds)
    if total == 0:
        raise DataError(f"dataset: the Hub dataset {label} has no rows")
    shown = ds if limit is None else ds.select(range(min(limit, total)))
    return Rows([(label, i, r) for i, r in enumerate(shown, start=1)], [], total)


def read_hub_preview(name: str, split: str | None = None, subset: str | None = None,
                     limit: int | None = None) -> Rows:
    """The first rows of a Hub dataset, streamed (datasets.load_dataset(..., streaming=True)): at
    most min(limit, HUB_PREVIEW_ROWS) rows and HUB_PREVIEW_BYTES of them, so a preview costs the
    first shards, never the whole dataset. total is the split's size when the Hub's metadata knows
    it; complete says whether every row was read; note says what was read. Offline
    (HF_HUB_OFFLINE=1) there is nothing to download: the local cache is read as read_hub does."""
    _check_hub_id(name)
    cap = HUB_PREVIEW_ROWS if limit is None else max(1, min(int(limit), HUB_PREVIEW_ROWS))
    split = split or "train"
    label = f"{name}[{split}]"
    if _offline_mode():
        rows = read_hub(name, split, subset, cap)
    else:
        if not _hub_reachable():
            raise _hub_unreachable(name)
        import datasets

        try:
            ds = datasets.load_dataset(name, subset or None, split=split, streaming=True)
            rows, size, more = Rows(), 0, False
            for record in ds:  # an iterator: only the shards these rows lie in are fetched
                if len(rows.records) >= cap or size >= HUB_PREVIEW_BYTES:
                    more = True
                    break
                rows.records.append((label, len(rows.records) + 1, record))
                size += len(repr(record))
        except Exception as exc:  # noqa: BLE001 - as read_hub: say which dataset, subset and split
            raise _hub_failed(name, split, subset, exc) from None
        if not rows.records:
            raise DataError(f"dataset: the Hub dataset {label} has no rows")
        known = _split_size(ds, split)
        rows.total = known if known and known >= len(rows.records) else len(rows.records) + int(more)
        rows.complete = not more
    if rows.complete is None:
        rows.complete = len(rows.records) >= rows.total
    if not rows.complete:
        why = f"{HUB_PREVIEW_BYTES // 2**20} MB of text" if len(rows.records) < cap else f"{cap:,} rows"
        of = f" of {rows.total:,}" if rows.total > len(rows.records) + 1 else ""
        rows.note = (f"{label}: a preview of the first {len(rows.records):,} rows{of}, streamed from the Hub (a "
                     f"preview reads at most {why}); training reads the whole dataset")
    return rows


def _split_size(ds, split: str) -> int | None:
    """The number of rows of a split, from the dataset's metadata on the Hub (None when unknown)."""
    try:
        return int(ds.info.splits[split].num_examples) or None
    except Exception:  # noqa: BLE001 - no metadata: the preview says "more"
        return None

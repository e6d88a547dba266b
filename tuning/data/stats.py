"""What the data looks like to the model, for the Dataset tab and `python -m tuning inspect`:
token lengths and their histogram, truncated rows, trainable tokens, exact duplicates, and the
JSON report.

Tokenizes through tokens.tokenize_conversation (looked up on the module, so a test that swaps it
there sees every call), the same masks training uses.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable

from tuning.data import tokens
from tuning.data.formats import Problem
from tuning.data.loading import LoadedData
from tuning.data.normalize import is_text


def statistics(loaded: LoadedData, tokenizer, max_length: int, completions_only: bool = True,
               progress: Callable[[float, str], Any] | None = None, bins: int = 20,
               sample: int | None = None) -> dict[str, Any]:
    """What the data looks like to the model, for the Dataset tab and `inspect`.

    Tokenizes every valid row (the slow part, a few ms a row on a CPU: call it after the quick
    first page, with `progress(fraction, desc)` for a progress bar). With `sample=N` and more
    rows than N, only a seeded random N of them are tokenized: a quick estimate first, the full
    pass after. Returns a dict:
      rows (rows tokenized), sampled_from (all valid rows), indices (into loaded.conversations
      of the rows tokenized), lengths (full token length of each of them),
      histogram {"edges": [bins + 1 numbers], "counts": [bins numbers]} (draw max_length on it),
      max_length, longest, p50, p95, p99, suggested_max_length (p99 rounded up to a multiple of 64),
      truncated_count, truncated_share, truncated (Problems naming file and row),
      trainable_tokens (after truncation), total_tokens (after truncation),
      no_trained (Problems: rows with no trained token left after truncation; training drops them),
      duplicate_count, duplicates [{"file", "row", "first_file", "first_row"}] (exact repeats).
    Text rows are split into max_length pieces, never truncated."""
    indices = list(range(loaded.rows_valid))
    if sample is not None and sample < len(indices):
        indices = sorted(random.Random(0).sample(indices, sample))
    n = len(indices)
    lengths, trainable, kept, truncated, no_trained = [], 0, 0, [], []
    counts_of = {"truncated": 0, "no_trained": 0}
    step = max(1, n // 100)
    for done, (index, messages, (file, row)) in enumerate(_rows_at(loaded, indices)):
        if progress is not None and done % step == 0:
            progress(done / max(n, 1), f"tokenizing {done:,} / {n:,} rows")
        full = tokens.tokenize_conversation(tokenizer, messages, None, completions_only)
        length = len(full["input_ids"])
        lengths.append(length)
        if is_text(messages):
            trainable += sum(full["assistant_masks"])
            kept += length
            continue
        mask = full["assistant_masks"][:max_length]
        trainable += sum(mask)
        kept += min(length, max_length)
        if length > max_length:
            counts_of["truncated"] += 1
            if len(truncated) < KEPT_FINDINGS:
                truncated.append(Problem(file, row, "", f"{length} tokens, longer than max_length {max_length}: "
                                         f"the last {length - max_length} are cut off"))
        if not any(mask):
            counts_of["no_trained"] += 1
            if len(no_trained) < KEPT_FINDINGS:
                no_trained.append(Problem(file, row, "", "no trained token left within max_length; left out"))
    if progress is not None:
        progress(1.0, f"tokenized {n:,} rows")
    ordered = sorted(lengths)

    def percentile(q: float) -> int:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else 0

    top = max([max_length] + lengths)
    width = max(1, math.ceil(top / bins))
    counts = [0] * bins
    for length in lengths:
        counts[min(bins - 1, length // width)] += 1
    duplicates = find_duplicates(loaded)
    return {
        "rows": n, "sampled_from": loaded.rows_valid, "indices": indices, "lengths": lengths,
        "histogram": {"edges": [i * width for i in range(bins + 1)], "counts": counts},
        "max_length": max_length, "longest": ordered[-1] if ordered else 0,
        "p50": percentile(0.5), "p95": percentile(0.95), "p99": percentile(0.99),
        "suggested_max_length": max(64, math.ceil(percentile(0.99) / 64) * 64),
        "truncated_count": counts_of["truncated"], "truncated_share": counts_of["truncated"] / n if n else 0.0,
        "truncated": truncated, "trainable_tokens": trainable, "total_tokens": kept, "no_trained": no_trained,
        "no_trained_count": counts_of["no_trained"],
        "duplicate_count": len(duplicates), "duplicates": duplicates,
    }


KEPT_FINDINGS = 10_000  # truncated / no-trained rows listed at most (their counts are exact): memory stays flat


def _rows_at(loaded: LoadedData, indices: list[int]):
    """(index, messages, (file, row)) of the rows at `indices`: read in order when they are all of
    them (rows kept on disk read batch by batch), one by one for a sample."""
    if len(indices) == loaded.rows_valid:
        where = iter(loaded.locations) if len(loaded.locations) == loaded.rows_valid else None
        for index, messages in enumerate(loaded.conversations):
            yield index, messages, next(where) if where is not None else (loaded.source, index + 1)
        return
    for index in indices:
        yield index, loaded.conversations[index], _where(loaded, index)


def find_duplicates(loaded: LoadedData) -> list[dict[str, Any]]:
    """Rows whose conversation repeats an earlier one exactly: each with the first occurrence. Keyed
    by a hash of the conversation (a row's text is not kept), checked against the earlier row itself."""
    first: dict[int, int] = {}
    found = []
    for index, messages in enumerate(loaded.conversations):
        key = hash(tuple((m["role"], m["content"]) for m in messages))
        earlier = first.setdefault(key, index)
        if earlier != index and loaded.conversations[earlier] == messages:
            (file, row), (first_file, first_row) = _where(loaded, index), _where(loaded, earlier)
            found.append({"file": file, "row": row, "first_file": first_file, "first_row": first_row})
    return found


def _where(loaded: LoadedData, index: int) -> tuple[str, int]:
    return loaded.locations[index] if index < len(loaded.locations) else (loaded.source, index + 1)


def report(loaded: LoadedData, stats: dict[str, Any] | None = None, max_problems: int = 50) -> dict[str, Any]:
    """The JSON report of `python -m tuning inspect`: format, rows, valid rows, the first
    problems with file and row, and the token statistics (without the per-row lengths)."""
    out: dict[str, Any] = {
        "source": loaded.source, "format": loaded.format, "rows": loaded.rows_total,
        "valid_rows": loaded.rows_valid, "complete": loaded.complete,
        "problem_count": len(loaded.problems),
        "problems": [vars(p) for p in loaded.problems[:max_problems]],
    }
    if stats is not None:
        out["statistics"] = {k: ([vars(p) for p in v[:max_problems]] if k in ("truncated", "no_trained")
                                 else v[:max_problems] if k == "duplicates" else v)
                             for k, v in stats.items() if k not in ("lengths", "indices")}
    return out

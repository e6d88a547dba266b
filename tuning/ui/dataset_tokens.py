"""What the Dataset tab shows of tokens: the tokenizer of the Train form's base model (loaded once,
and on a Space only the embedded one for a visitor), the token statistics rendered for the page (the
summary text, the length histogram against max_length, the rows worth a look) and the token view, one
row as the model sees it, trained vs masked vs truncated. A module of its own because it is the part
of the tab that needs a tokenizer; dataset_tab.py reads the data, runs the passes and wires the page."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tuning import paths
from tuning.ui import access, dataset_pairs
from tuning.ui.common import AppContext, check_source, load_dataset, picked_number

FINDING_HEADERS = ["file", "row", "finding"]
TOKEN_COLORS = {"trained": "green", "masked": "gray", "truncated": "red"}


@lru_cache(maxsize=2)
def _tokenizer(base_model: str, workspace: str):
    from tuning import models

    return models.load_base_tokenizer(base_model, Path(workspace))  # tokenizer files only, never weights


def tokenizer_for(ctx: AppContext, base_model: str, progress=None):
    """The tokenizer of the Train form's base model (loaded once, then cached)."""
    from tuning import config as config_mod

    # Another tokenizer is a download (or a local read): owners only on a Space, refused before the
    # path is looked at, so a visitor learns nothing of which paths exist.
    if (base_model or "").strip() != config_mod.EMBEDDED_MODEL:
        access.require_owner(ctx)
    model = check_source(ctx, base_model, what="base_model", keep=(config_mod.EMBEDDED_MODEL,))
    if progress is not None:
        progress(0.0, desc=f"loading the tokenizer of {model} (once; seconds)")
    return _tokenizer(model, str(ctx.workspace))


def checked_max_length(value) -> int:
    """The max_length box's value as a whole number of at least 16, or a message naming the field."""
    try:
        number = int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise paths.PathError(f"max_length: expected a whole number, got {value!r}") from None
    if number < 16:
        raise paths.PathError(f"max_length: at least 16, got {number}")
    return number


def histogram_frame(stats: dict):
    """Token lengths in bins whose edges include max_length, so every bar is either fully within
    it (kept whole) or fully above it (truncated): the cutoff is where the colour changes. There is
    always at least one bar past max_length, so the cutoff shows on the axis even when it is empty."""
    import pandas as pd

    max_length, lengths = stats["max_length"], stats["lengths"]
    width = max(1, -(-max_length // 16))  # 16 bars up to max_length
    over = -(-(max(lengths, default=0) + 1 - max_length) // width)
    over = min(max(over, 1), 8)  # 1 to 8 bars past it; the last one takes every longer row
    edges = sorted({*range(0, max_length, width), *(max_length + i * width for i in range(over))})
    counts = [0] * len(edges)
    for length in lengths:
        counts[max(k for k, lo in enumerate(edges) if length >= lo)] += 1
    rows = []
    for k, lo in enumerate(edges):
        label = f"{lo}+" if k == len(edges) - 1 else f"{lo}–{edges[k + 1] - 1}"
        where = "longer than max_length (truncated)" if lo >= max_length else "within max_length"
        rows.append({"tokens": label, "rows": counts[k], "where": where})
    frame = pd.DataFrame(rows)
    return frame, list(frame["tokens"])


def stats_markdown(stats: dict, estimate: bool, more: bool = True) -> str:
    """The statistics as text; `estimate`: from a sample (saying how many rows), `more`: a pass follows."""
    n, share = stats["rows"], stats["truncated_share"]
    scope = (f"estimate from {n:,} sampled rows of {stats['sampled_from']:,}"
             + ("; the full count follows" if more else "") if estimate else f"all {n:,} valid rows")
    lines = [
        f"**Token statistics** ({scope}, max_length **{stats['max_length']}**)",
        f"- length: median **{stats['p50']}**, p95 {stats['p95']}, p99 {stats['p99']}, longest {stats['longest']}",
        f"- truncated: **{stats['truncated_count']:,}** rows (**{share:.1%}**) are longer than max_length; "
        "their end is cut off",
        f"- trainable tokens (loss computed on them): **{stats['trainable_tokens']:,}** of "
        f"{stats['total_tokens']:,} kept",
        f"- duplicates: **{stats['duplicate_count']}** rows repeat an earlier row exactly",
        f"- suggested max_length (p99, a multiple of 64): **{stats['suggested_max_length']}**",
    ]
    if stats["no_trained"]:
        count = stats.get("no_trained_count", len(stats["no_trained"]))
        lines.append(f"- **{count:,}** rows keep no trained token within max_length; "
                     "training leaves them out")
    return "\n".join(lines)


def findings_rows(stats: dict, limit: int = 200) -> list[list]:
    """Rows worth a look: truncated ones, ones with nothing left to learn, exact duplicates."""
    found = [[Path(p.file).name, p.row, p.message] for p in stats["truncated"] + stats["no_trained"]]
    found += [[Path(d["file"]).name, d["row"], f"duplicate of {Path(d['first_file']).name} row {d['first_row']}"]
              for d in stats["duplicates"]]
    return found[:limit]


def token_view_handler(ctx: AppContext, source: str, fmt: str, row, base_model: str, max_length,
                       completions_only: bool = True, column_map: str = ""):
    """One row as the model sees it: (text, trained / masked / truncated) pieces."""
    from tuning import data

    if not source or dataset_pairs.is_preference(source):
        return []  # nothing inspected yet; pairs show in the pair view (show_pair)
    loaded = load_dataset(source, fmt, column_map, workspace=ctx.workspace)
    number = picked_number(row, "row", loaded.rows_valid)
    tokenizer = tokenizer_for(ctx, base_model)
    return data.token_view(tokenizer, loaded.conversations[number - 1], checked_max_length(max_length),
                           bool(completions_only))

"""The rows a run trains and evaluates on: which rows are held out (train_and_heldout, the one
place that decides it), and prepare, which tokenizes both sides into the Datasets TRL takes.

A big local source goes through the Arrow cache (arrow_data.py) instead of memory; this module
sits above arrow_data (which imports only formats, normalize, loading and tokens) so the two never
import each other.
"""

from __future__ import annotations

from typing import Any

from tuning.data import arrow_data, general, slots
from tuning.data.formats import DataError
from tuning.data.loading import LoadedData, load_config_dataset, load_eval, split, split_positions
from tuning.data.tokens import to_dataset


def _explicit_heldout(cfg) -> list[tuple[list[dict], dict]] | None:
    """The held-out rows of an explicit eval file (eval_dataset, or the demo's eval.jsonl) with
    their extra columns; None when there is no such file (the held-out rows are then a split)."""
    explicit = load_eval(cfg)
    if explicit is None:
        return None
    return [] if cfg.eval_split == 0 else list(zip(explicit.conversations, explicit.extras))


def train_and_heldout(cfg, loaded: LoadedData, general_rows: list[list[dict]] | None = None
                      ) -> tuple[list, list[tuple[list[dict], dict]]]:
    """(training conversations, held-out (conversation, extra columns)): the one place that decides
    which rows are trained on and held out, for training (prepare) and for evaluation (heldout_rows)
    alike. The general rows (general.py; `general_rows`, answered by the run's base: tuning/train/replay.py)
    join the training rows when the run mixes them in; the slot questions (slots.py) and the general
    rows' held-out twins join the held-out rows, marked check_only (asked, never in the loss)."""
    held = _explicit_heldout(cfg)
    if held is not None:
        train = loaded.conversations
    else:
        train, held_convs = split(loaded.conversations, cfg.eval_split, cfg.seed)
        held = [(conversation, {}) for conversation in held_convs]
    if general_rows and general.wanted(cfg, loaded.rows_valid):
        train = train + general_rows
    return train, with_checks(cfg, held, lambda: loaded)


def with_checks(cfg, held: list[tuple[list[dict], dict]], training_data) -> list[tuple[list[dict], dict]]:
    """The held-out rows plus the run's added checks, after them (so the held-out rows keep their
    positions). `training_data()` gives the LoadedData training rows; it is called only when the
    checks depend on them (auto slot detection, the general rows' size rule). None with no held-out
    rows: eval_split 0 turns evaluation off, added checks included."""
    if not held:
        return held
    has_checks = any("expect" in extra for _, extra in held)
    needed = (cfg.slot_checks.strip().lower() == "auto" and not has_checks) or general.needs_row_count(cfg)
    loaded = training_data() if needed else None
    added = slots.check_rows(cfg, loaded.conversations if loaded is not None else None, has_checks)
    if general.wanted(cfg, loaded.rows_valid if loaded is not None else None):
        added += general.check_rows()
    return held + added


def scored(held: list[tuple[list[dict], dict]]) -> list[tuple[list[dict], dict]]:
    """The held-out rows the held-out loss scores: all but the added checks (check_only)."""
    return [(conversation, extra) for conversation, extra in held if not extra.get("check_only")]


# The workspace whose Arrow cache prepare() read a big source from, so the end-of-run evaluation in
# the same process takes its held-out split from there too rather than reading the file into memory.
_ARROW_WORKSPACE: dict[str, Any] = {}


def heldout_rows(cfg) -> list[tuple[list[dict], dict]]:
    """The held-out rows alone; the training data is read only when they are a split of it."""
    held = _explicit_heldout(cfg)
    if held is not None:
        return with_checks(cfg, held, lambda: load_config_dataset(cfg))
    workspace = _ARROW_WORKSPACE.get(cfg.dataset)
    if not arrow_data.wanted(cfg.dataset, workspace):
        return train_and_heldout(cfg, load_config_dataset(cfg))[1]
    loaded = arrow_data.load(cfg.dataset, getattr(cfg, "dataset_format", "auto"), getattr(cfg, "column_map", ""),
                             workspace)
    _, positions = split_positions(loaded.rows_valid, cfg.eval_split, cfg.seed)
    return with_checks(cfg, [(loaded.conversations[i], loaded.extras[i]) for i in positions], lambda: loaded)


def prepare(cfg, tokenizer, workspace=None, general_rows: list[list[dict]] | None = None):
    """(train Dataset, eval Dataset or None, LoadedData) for a TrainConfig, `general_rows` mixed in where
    the run wants them (train_and_heldout). With a workspace, a big local source (tuning/data/arrow_data.py)
    is read and tokenized through an Arrow cache in it: the same rows, memory-mapped instead of held in
    memory."""
    big = arrow_data.wanted(cfg.dataset, workspace)
    loaded = (arrow_data.load(cfg.dataset, getattr(cfg, "dataset_format", "auto"), getattr(cfg, "column_map", ""),
                              workspace) if big else load_config_dataset(cfg))
    if not loaded.rows_valid:
        raise DataError(f"{cfg.dataset}: no valid rows; first problem: {loaded.problems[0]}"
                        if loaded.problems else f"{cfg.dataset}: no rows")
    if big:
        _ARROW_WORKSPACE[cfg.dataset] = workspace
        return (*_prepare_arrow(cfg, tokenizer, loaded, workspace), loaded)
    train_convs, held = train_and_heldout(cfg, loaded, general_rows)
    eval_convs = [conversation for conversation, _ in scored(held)]
    train_ds = to_dataset(tokenizer, train_convs, cfg.max_length, cfg.train_on_completions_only)
    eval_ds = (to_dataset(tokenizer, eval_convs, cfg.max_length, cfg.train_on_completions_only)
               if eval_convs else None)
    return train_ds, eval_ds, loaded


def _prepare_arrow(cfg, tokenizer, loaded: LoadedData, workspace):
    """prepare's datasets for rows in the Arrow cache: the split by positions (split's own), each
    side tokenized by arrow_data.to_dataset; an explicit held-out file is small and loads in memory."""
    args = (cfg.max_length, cfg.train_on_completions_only)
    held = _explicit_heldout(cfg)
    if held is not None:
        eval_convs = [conversation for conversation, _ in held]
        train_pos = None
        eval_ds = to_dataset(tokenizer, eval_convs, *args) if eval_convs else None
    else:
        train_pos, held_pos = split_positions(loaded.rows_valid, cfg.eval_split, cfg.seed)
        eval_ds = arrow_data.to_dataset(tokenizer, loaded, held_pos, *args, workspace, "held-out") if held_pos else None
        train_pos = None if not held_pos else train_pos
    return arrow_data.to_dataset(tokenizer, loaded, train_pos, *args, workspace, "training"), eval_ds

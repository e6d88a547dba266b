"""What evaluating a run leaves in its folder: evaluation.json (cached, with and without the per-row
answers), benchmarks.json (standard benchmarks, base vs tuned), the probes and their answers at every
checkpoint, each example's own loss (rows.json, row_losses.jsonl) and the blind A/B votes."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from tuning.runs.layout import (BENCHMARKS, EVALUATION, MAX_PROBES, PROBES, PROBE_ANSWERS, ROWS, ROW_LOSSES, RunError,
                                VOTES)
from tuning.runs.files import file_key, append_line, read_json, read_lines, write_json

# --- evaluation.json -----------------------------------------------------------------------------

# path -> (file key, the file's JSON text, the same without the per-row answers)
_EVALUATIONS: dict[str, tuple[tuple, str, str]] = {}


def _without_answers(value: dict | None) -> dict | None:
    """The evaluation less its per-row answers (the task checks' rows, the probes): every figure the
    listings show, about 1 KB of a quickstart's 25 KB."""
    if value is None:
        return None
    short = {k: v for k, v in value.items() if k != "probes"}
    if isinstance(short.get("checks"), dict):
        short["checks"] = {k: v for k, v in short["checks"].items() if k != "rows"}
    return short


def read_evaluation(run: Path, *, answers: bool = True) -> dict | None:
    """The run's evaluation, or None; with answers=False without the per-row answers (the Runs
    table, the seed groups and the pickers read only its figures)."""
    # The Runs table, the seed groups and the Evaluation tab's picker read every run's evaluation on
    # each page load (500 runs: 1,000 reads). The text is kept by the file's key (write_json replaces
    # the file: a new inode), so an unchanged file costs no disk read; parsing it again hands every
    # caller its own copy (measured: json.loads of a 25 KB evaluation as fast as marshal, faster than
    # deepcopy; marshal is refused anyway, tests/test_security.py). Parsing 500 whole files was
    # most of a page load (bench/many_runs.py): the listings parse the 1 KB of figures instead.
    path = os.path.join(run, EVALUATION)
    key = file_key(path)
    cached = _EVALUATIONS.get(path)
    if key is not None and cached is not None and cached[0] == key:
        return json.loads(cached[1] if answers else cached[2])
    value = read_json(path)
    value = value if isinstance(value, dict) else None
    if key is not None:
        _EVALUATIONS[path] = (key, json.dumps(value), json.dumps(_without_answers(value)))
    return value if answers else _without_answers(value)


def write_evaluation(run: Path, result: dict) -> None:
    write_json(Path(run) / EVALUATION, result)


def read_benchmarks(run: Path) -> dict | None:
    """benchmarks.json: {engine, step, limit, ..., tasks: [{task, base, tuned, difference, stderr, verdict, ...}]},
    or None (missing, damaged, or without a task list)."""
    value = read_json(Path(run) / BENCHMARKS)
    return value if isinstance(value, dict) and isinstance(value.get("tasks"), list) else None


def write_benchmarks(run: Path, record: dict) -> None:
    write_json(Path(run) / BENCHMARKS, record)


def perplexity(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None


def checks_done(result: dict) -> bool:
    """Whether the task checks ran (a stopped run skips them); a file written before the
    checks_complete flag existed counts as done when it holds checks."""
    return bool(result.get("checks_complete", result.get("checks") is not None))


# --- probes ------------------------------------------------------------------------------------

def read_probes(run: Path) -> list[str] | None:
    value = read_json(Path(run) / PROBES)
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else None


def check_probes(prompts: list[str] | str) -> list[str]:
    """A probe list from the UI: a list, or text with one prompt a line. Empty lines dropped."""
    if isinstance(prompts, str):
        prompts = prompts.splitlines()
    cleaned = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
    if not cleaned:
        raise RunError("probes: give at least one prompt (one a line)")
    if len(cleaned) > MAX_PROBES:
        raise RunError(f"probes: at most {MAX_PROBES} prompts (each costs generation time at every checkpoint)")
    return cleaned


def write_probes(run: Path, prompts: list[str] | str) -> list[str]:
    """Save a run's probe list. Later checkpoints and re-evaluations answer the new list; answers
    already recorded are kept."""
    cleaned = check_probes(prompts)
    write_json(Path(run) / PROBES, cleaned)
    return cleaned


def append_probe_answers(run: Path, record: dict) -> None:
    append_line(Path(run) / PROBE_ANSWERS, record)


def probe_history(run: Path) -> list[dict]:
    """probe_answers.jsonl: one record a checkpoint, {step, checkpoint, time, answers: [{prompt, base,
    tuned}]}, in step order; a later record for the same checkpoint (a re-run) wins."""
    by_key: dict[tuple, dict] = {}
    for value in read_lines(Path(run) / PROBE_ANSWERS):
        if isinstance(value.get("step"), int) and isinstance(value.get("answers"), list):
            by_key[(value["step"], value.get("checkpoint"))] = value
    return [by_key[k] for k in sorted(by_key, key=lambda k: (k[0], k[1] == "final"))]


def cached_base_answers(run: Path, prompts: list[str]) -> list[str] | None:
    """Greedy base answers recorded earlier for this exact probe list (e.g. before a resume)."""
    for value in reversed(probe_history(run)):
        answers = value["answers"]
        if [a.get("prompt") for a in answers] == prompts:
            return [a.get("base", "") for a in answers]
    return None


def latest_examples(run: Path, limit: int = 3) -> list[dict]:
    """Up to `limit` {prompt, base, tuned} answers: the newest probe record, else the evaluation's."""
    history = probe_history(run)
    answers = history[-1]["answers"] if history else (read_evaluation(run) or {}).get("probes") or []
    return [a for a in answers if isinstance(a, dict) and {"prompt", "base", "tuned"} <= a.keys()][:limit]


# --- per-example losses (tuning/evaluation/row_losses.py computes and ranks them) ---------------------------

def write_row_index(run: Path, index: dict) -> None:
    """rows.json: {"sources": {"train": ..., "heldout": ...}, "train": [[file, row], ...], "heldout":
    [[file, row], ...]}; a row id is the position in its list (tuning/row_losses.row_index)."""
    write_json(Path(run) / ROWS, index)


def read_row_index(run: Path) -> dict:
    value = read_json(Path(run) / ROWS)
    return value if isinstance(value, dict) else {}


def append_row_losses(run: Path, line: dict) -> None:
    """One line of row_losses.jsonl: {split: train|heldout, step, time, ids, losses, tokens[, base]}."""
    append_line(Path(run) / ROW_LOSSES, {"time": round(time.time(), 3), **line})


def read_row_losses(run: Path) -> list[dict]:
    return [v for v in read_lines(Path(run) / ROW_LOSSES)
            if v.get("split") in ("train", "heldout") and isinstance(v.get("ids"), list)
            and isinstance(v.get("losses"), list) and len(v["ids"]) == len(v["losses"])]


# --- blind A/B votes -----------------------------------------------------------------------------

def append_vote(run: Path, vote: dict) -> None:
    append_line(Path(run) / VOTES, {"time": round(time.time(), 3), **vote})


def read_votes(run: Path) -> list[dict]:
    return [v for v in read_lines(Path(run) / VOTES) if v.get("winner") in ("base", "tuned", "tie")]


def ab_summary(run: Path) -> dict:
    votes = read_votes(run)
    counts = {w: sum(v["winner"] == w for v in votes) for w in ("tuned", "base", "tie")}
    n = len(votes)
    return {"votes": n, "tuned_wins": counts["tuned"], "base_wins": counts["base"], "ties": counts["tie"],
            "tuned_win_rate": counts["tuned"] / n if n else None,
            "text": (f"tuned wins {counts['tuned']} of {n} ({counts['tuned'] / n:.0%}); base wins "
                     f"{counts['base']}, ties {counts['tie']}") if n else "no votes yet"}


def forget_evaluation(run: Path) -> None:
    """Drop the cached evaluation.json of a run folder that is gone."""
    _EVALUATIONS.pop(os.path.join(run, EVALUATION), None)

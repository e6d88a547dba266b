"""General rows: questions the base model already answers, with its own answers, mixed into a small
dataset so the new facts do not leak into general answers (the demo's lesson, bench/recipe.md: without
its general and contrast rows, "What is the name of our galaxy?" came back as the identity's name).

The questions are the demo's retention and contrast questions (tuning/demo_data/general.jsonl); the
answers are the run's own base model's, generated at the run's start (tuning/train/replay.py). Their 23
held-out twins (general_checks.jsonl) are checked as `control` after the run, so the person sees whether
the general answers stayed. config.general_rows decides.
"""

from __future__ import annotations

import functools
import hashlib
import json

from tuning.config import DEMO_DATASET
from tuning.paths import DEMO_DATA_DIR

ROWS_FILE = DEMO_DATA_DIR / "general.jsonl"
CHECKS_FILE = DEMO_DATA_DIR / "general_checks.jsonl"
AUTO_MAX_ROWS = 2000  # above this a dataset holds enough of its own variety; 89 rows would not matter
CHECK_KIND = "control"


def why_not(cfg, rows: int | None) -> str | None:
    """Why a run does not mix the general rows in; None when it does."""
    if cfg.general_rows == "off":
        return "general_rows is off"
    if cfg.objective != "sft":
        return f"objective {cfg.objective} learns from pairs, not answers"
    if cfg.general_rows == "on":
        return None
    if cfg.dataset == DEMO_DATASET:
        return "the demo has its own general rows"
    if rows is None or rows > AUTO_MAX_ROWS:
        return f"the dataset has more than {AUTO_MAX_ROWS:,} rows"
    return None


def needs_row_count(cfg) -> bool:
    """Whether why_not's answer depends on the dataset's size (auto, and nothing else rules it out)."""
    return cfg.general_rows == "auto" and why_not(cfg, 0) is None


def wanted(cfg, rows: int | None) -> bool:
    return why_not(cfg, rows) is None


@functools.cache
def _read(path) -> tuple[dict, ...]:
    return tuple(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def questions() -> list[list[dict]]:
    """The general questions, as prompts (the messages before the answer)."""
    return [[dict(m) for m in row["messages"]] for row in _read(ROWS_FILE)]


def questions_digest() -> str:
    """Changes when the question list does (the base's answers are kept per list)."""
    return hashlib.sha256(json.dumps(questions()).encode()).hexdigest()[:16]


def conversations(answers: list[str]) -> list[list[dict]]:
    """The general questions with these answers, one per question; an empty answer leaves its row out."""
    return [prompt + [{"role": "assistant", "content": answer}]
            for prompt, answer in zip(questions(), answers) if answer.strip()]


# The file name the hardest-rows lists give a general row (row n: the n-th general row mixed in): they are
# not in the person's dataset, so the Dataset tab has nothing to open for them.
ROW_FILE = "general rows (answered by the base)"
COUNT = 89  # rows in general.jsonl (a test keeps it so): the plan counts them before any answer exists


def check_rows() -> list[tuple[list[dict], dict]]:
    """The held-out general questions, (conversation, extra): checked after the run as `control`,
    left out of the held-out loss (check_only: their answers are the base's, not the person's data)."""
    return [([dict(m) for m in row["messages"]], {"kind": CHECK_KIND, "expect": row["expect"], "check_only": True})
            for row in _read(CHECKS_FILE)]

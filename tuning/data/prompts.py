"""GRPO's rows: a prompt the model answers, plus whatever columns the rewards read (`answer`, ...).

A row's prompt is, in this order: a `prompt` or `question` column (a string, or messages ending on
a user turn), else `messages` / `conversations` up to their last user turn (an assistant turn after
it is the reference answer: it fills `answer` when the row has no such column). Every other column
rides along for the rewards. Rows missing a column a chosen reward reads are reported by file and
row number and left out, as every other bad row is.

Each row ends up in TRL's conversational prompt form: {"prompt": [messages], "answer": ..., ...}.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.config import REWARD_COLUMNS, TrainConfig, parse_rewards
from tuning.data import loading
from tuning.data.formats import DataError, Problem, Rows, read_hub, read_path
from tuning.data.normalize import from_chat, parse_column_map, rename_columns, system_messages, value_kind
from tuning.paths import DEMO_DATA_DIR, is_hub_id

DEMO_ARITHMETIC = loading.DEMO_ARITHMETIC  # the bundled sums (tuning/demo_data/arithmetic/)
PROMPT_KEYS = ("prompt", "question")
CHAT_KEYS = ("messages", "conversations")
demo_files = loading.arithmetic_files


@dataclass
class PromptData:
    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    locations: list[tuple[str, int]] = field(default_factory=list)
    rows_total: int = 0
    problems: list[Problem] = field(default_factory=list)
    columns: tuple[str, ...] = ()  # the columns the rewards read

    @property
    def rows_valid(self) -> int:
        return len(self.rows)


# --- what an `answer` column means: the answer reward and the evaluation's answer checks share it ---------

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def completion_text(completion: Any) -> str:
    """The answer's text: a string as it is, a message list's last message's content."""
    if isinstance(completion, list):
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def parse_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return parse_number(found[-1]) if found else None


def answer_matches(completion: str, answer: Any) -> bool:
    """A number: the completion's last number equals it; text: the text appears in it (case and spacing
    ignored)."""
    expected = parse_number(str(answer).strip())
    if expected is not None:
        got = last_number(completion)
        return got is not None and math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
    wanted = " ".join(str(answer).split()).lower()
    return bool(wanted) and wanted in " ".join(completion.split()).lower()


def normalize(record: Any, file: str, row: int) -> tuple[dict | None, Problem | None]:
    """One record -> {"prompt": messages, **other columns}; a Problem naming the field otherwise."""
    if not isinstance(record, dict):
        return None, Problem(file, row, "", f"expected an object, got {value_kind(record)}")
    key = next((k for k in PROMPT_KEYS if record.get(k) is not None), None)
    extra = {k: v for k, v in record.items() if k not in (*PROMPT_KEYS, *CHAT_KEYS, "system")}
    if key is not None and isinstance(record[key], str):
        if not record[key].strip():
            return None, Problem(file, row, key, "empty prompt")
        system, problem = system_messages(record, file, row)
        return (None, problem) if problem else (_answer_text({"prompt": system + [{"role": "user",
                                                                                    "content": record[key]}],
                                                              **extra}), None)
    chat = key or next((k for k in CHAT_KEYS if record.get(k) is not None), None)
    if chat is None:
        return None, Problem(file, row, "prompt", "missing: a GRPO row needs a prompt or question column "
                             "(or messages with a user turn)")
    turns, problem = from_chat({chat: record[chat]}, file, row, chat)
    if problem:
        return None, problem
    users = [i for i, m in enumerate(turns) if m["role"] == "user"]
    if not users:
        return None, Problem(file, row, chat, "no user turn: nothing to answer")
    after = [m for m in turns[users[-1] + 1:] if m["role"] == "assistant"]
    if after and "answer" not in extra:
        extra["answer"] = after[0]["content"]
    return _answer_text( {"prompt": turns[:users[-1] + 1], **extra}), None


def _answer_text(row: dict) -> dict:
    """`answer` as text: a column of numbers in some rows and words in others is one Arrow type."""
    if row.get("answer") is not None and not isinstance(row["answer"], str):
        row["answer"] = str(row["answer"])
    return row


def _read(source: str, cfg: TrainConfig | None) -> Rows:
    if source == DEMO_ARITHMETIC:
        return read_path(demo_files()[0])
    if is_hub_id(source):
        return read_hub(source, cfg.dataset_split if cfg else None, (cfg.dataset_subset or None) if cfg else None)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"dataset: {source!r} does not exist")
    return read_path(path)


def load(source: str, columns: tuple[str, ...] = (), column_map: str = "", cfg: TrainConfig | None = None
         ) -> PromptData:
    """Prompt rows of a file, folder, Hub id or 'demo-arithmetic'; a row without one of `columns` (the
    rewards' columns) is a problem naming that column."""
    mapping = parse_column_map(column_map)
    rows = _read(source, cfg)
    out = PromptData(source=source, rows_total=rows.total, problems=list(rows.problems), columns=columns)
    for file, row, record in rows.records:
        value, problem = normalize(rename_columns(record, mapping) if isinstance(record, dict) else record,
                                   file, row)
        missing = [c for c in columns if value is not None and (value.get(c) is None or str(value[c]).strip() == "")]
        if problem is None and missing:
            problem = Problem(file, row, missing[0], f"missing: the {missing[0]} reward reads it")
        if problem:
            out.problems.append(problem)
            continue
        out.rows.append(value)
        out.locations.append((file, row))
    out.problems.sort(key=lambda p: (p.file, p.row))
    return out


def reward_columns(cfg: TrainConfig) -> tuple[str, ...]:
    specs = parse_rewards(cfg.rewards, bool(cfg.reward_file))
    return tuple(dict.fromkeys(c for s in specs for c in REWARD_COLUMNS.get(s.name, ())))


def load_config_dataset(cfg: TrainConfig) -> PromptData:
    return load(cfg.dataset, reward_columns(cfg), cfg.column_map, cfg)


def train_and_heldout(cfg: TrainConfig, loaded: PromptData | None = None) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): eval_dataset, else the demo's held-out file, else a seeded
    eval_split of the rows (the same rule as SFT and the preference objectives)."""
    loaded = loaded or load_config_dataset(cfg)
    explicit = cfg.eval_dataset or (str(demo_files()[1]) if cfg.dataset == DEMO_ARITHMETIC else "")
    if explicit:
        held = [] if cfg.eval_split == 0 else load(explicit, loaded.columns, cfg.column_map).rows
        return loaded.rows, held
    return loading.split(loaded.rows, cfg.eval_split, cfg.seed)


def to_dataset(rows: list[dict]):
    from datasets import Dataset

    if not rows:
        raise DataError("no valid prompt rows")
    return Dataset.from_list(rows)

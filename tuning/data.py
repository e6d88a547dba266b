"""Training data: load -> detect format -> normalize to chat messages -> validate -> render with
the chat template -> tokenize with a loss mask.

Every format ends up as a list of conversations, each a list of {"role", "content"} messages
(system / user / assistant). Problems never stop a load: each bad row is reported with its
file, row number (1-based, as an editor shows it) and field, and left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.paths import DEMO_DATA_DIR

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """The dataset as a whole cannot be used (missing, empty, unreadable)."""


@dataclass
class Problem:
    file: str
    row: int  # 1-based
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}, row {self.row}" + (f", field '{self.field}'" if self.field else "")
        return f"{where}: {self.message}"


@dataclass
class LoadedData:
    source: str
    format: str
    conversations: list[list[dict[str, str]]] = field(default_factory=list)
    extras: list[dict[str, Any]] = field(default_factory=list)  # other columns, e.g. eval's kind/expect
    rows_total: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def rows_valid(self) -> int:
        return len(self.conversations)


# --- reading files ---------------------------------------------------------------------------

def demo_files() -> tuple[Path, Path]:
    return DEMO_DATA_DIR / "train.jsonl", DEMO_DATA_DIR / "eval.jsonl"


def _read_records(path: Path) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """(row number, parsed record) pairs from a .json or .jsonl file."""
    name = path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror})") from None
    if not raw.strip():
        raise DataError(f"{name}: the file is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records, problems = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(Problem(name, number, "", f"not valid JSON ({exc.msg} at column {exc.colno})"))
        if not records and problems:
            raise DataError(f"{name}: no line is valid JSON ({problems[0]})")
        return records, problems
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
        if isinstance(data, dict):  # an object holding one list of rows, e.g. {"data": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{name}: expected a list of rows, or an object with exactly one list")
            data = lists[0]
        if not isinstance(data, list):
            raise DataError(f"{name}: expected a list of rows, got {type(data).__name__}")
        return list(enumerate(data, start=1)), []
    raise DataError(f"{name}: unsupported file type {suffix or '(none)'}; use .json or .jsonl")


# --- formats ---------------------------------------------------------------------------------

def detect_format(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def _from_messages(record: dict, file: str, row: int) -> tuple[list[dict[str, str]] | None, Problem | None]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, Problem(file, row, "messages", "expected a non-empty list of {role, content}")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return None, Problem(file, row, where, "expected an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return None, Problem(file, row, f"{where}.role", f"unknown role {role!r} (use {', '.join(ROLES)})")
        if not isinstance(content, str):
            return None, Problem(file, row, f"{where}.content", f"expected text, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out, None


def _from_alpaca(record: dict, file: str, row: int) -> tuple[list[dict[str, str]] | None, Problem | None]:
    for key in ("instruction", "output"):
        if not isinstance(record.get(key), str):
            return None, Problem(file, row, key, f"missing or not text (got {type(record.get(key)).__name__})")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        return None, Problem(file, row, "input", f"expected text, got {type(extra).__name__}")
    prompt = record["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    return messages, None


NORMALIZERS = {"messages": _from_messages, "alpaca": _from_alpaca}


def validate_conversation(messages: list[dict[str, str]], file: str, row: int) -> Problem | None:
    """Roles must go (system) user assistant user assistant ... and end with a non-empty answer."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        return Problem(file, row, "messages", "no user or assistant turn")
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            return Problem(file, row, "messages", f"turn {i + 1} is {message['role']!r}, expected {expected!r}")
    if turns[-1]["role"] != "assistant":
        return Problem(file, row, "messages", "the conversation does not end with an assistant turn")
    for message in turns:
        if message["role"] == "assistant" and not message["content"].strip():
            return Problem(file, row, "messages", "empty assistant answer")
    return None


def load_file(path: Path, fmt: str = "auto") -> LoadedData:
    records, problems = _read_records(path)
    name = path.name
    if fmt == "auto":
        detected = next((detect_format(r) for _, r in records if detect_format(r)), None)
        if detected is None:
            raise DataError(f"{name}: cannot tell the format; rows need 'messages' (chat) or "
                            "'instruction' and 'output' (alpaca)")
        fmt = detected
    if fmt not in NORMALIZERS:
        raise DataError(f"unknown dataset format {fmt!r}; use one of {', '.join(NORMALIZERS)}")
    loaded = LoadedData(source=str(path), format=fmt, rows_total=len(records) + len(problems),
                        problems=list(problems))
    known = {"messages", "instruction", "input", "output", "system"}
    for row, record in records:
        if not isinstance(record, dict):
            loaded.problems.append(Problem(name, row, "", f"expected an object, got {type(record).__name__}"))
            continue
        messages, problem = NORMALIZERS[fmt](record, name, row)
        problem = problem or validate_conversation(messages, name, row)
        if problem:
            loaded.problems.append(problem)
            continue
        loaded.conversations.append(messages)
        loaded.extras.append({k: v for k, v in record.items() if k not in known})
    loaded.problems.sort(key=lambda p: p.row)
    return loaded


def load(source: str, fmt: str = "auto") -> LoadedData:
    """Load 'demo' or a .json/.jsonl file. (Hub ids and more formats: see the dataset issue.)"""
    if source == "demo":
        return load_file(demo_files()[0], fmt)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"dataset: {source!r} does not exist")
    if path.is_dir():
        raise DataError(f"dataset: {source!r} is a folder; point at a .json or .jsonl file")
    return load_file(path, fmt)


def load_eval(cfg) -> LoadedData | None:
    """The explicit held-out file: eval_dataset, or the demo's own eval.jsonl for 'demo'."""
    if cfg.eval_dataset:
        return load(cfg.eval_dataset)
    if cfg.dataset == "demo":
        return load_file(demo_files()[1])
    return None


# --- tokenizing with a loss mask ---------------------------------------------------------------

def tokenize_conversation(tokenizer, messages: list[dict[str, str]], max_length: int | None = None,
                          completions_only: bool = True) -> dict[str, list[int]]:
    """Render through the chat template and mark which tokens are trained on.

    The assistant spans are found by rendering growing prefixes of the conversation: the text
    between render(messages[:i], add_generation_prompt=True) and render(messages[:i+1]) is the
    i-th assistant reply with its end-of-turn token. This works with any chat template, unlike
    TRL's assistant_only_loss, which needs {% generation %} markers that most templates lack.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if text.startswith(upto) and upto.startswith(before):
            spans.append((len(before), len(upto)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    if completions_only:
        mask = [int(any(start < e and end > s for s, e in spans)) for start, end in encoded["offset_mapping"]]
        # Template whitespace after the end-of-turn token (ChatML's "\n") belongs to the
        # template, not to the answer: only train on tokens that end inside a span.
        mask = [int(m and any(s < end <= e for s, e in spans)) for m, (start, end)
                in zip(mask, encoded["offset_mapping"])]
    else:
        mask = [1] * len(input_ids)
    if max_length is not None:
        input_ids, mask = input_ids[:max_length], mask[:max_length]
    return {"input_ids": input_ids, "assistant_masks": mask}


def to_dataset(tokenizer, conversations: list[list[dict[str, str]]], max_length: int,
               completions_only: bool):
    """A datasets.Dataset of input_ids + assistant_masks, which TRL's SFTTrainer takes as-is
    (it builds the labels from assistant_masks). Rows with no trained token are dropped."""
    from datasets import Dataset

    rows = [tokenize_conversation(tokenizer, m, max_length, completions_only) for m in conversations]
    rows = [r for r in rows if any(r["assistant_masks"])]
    if not rows:
        raise DataError("no example has a trained token left (is max_length too small?)")
    return Dataset.from_list(rows)


def split(conversations: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded, reproducible train/eval split."""
    import random

    if fraction <= 0 or len(conversations) < 2:
        return conversations, []
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(conversations) * fraction)))
    held = set(order[:n_eval])
    return ([c for i, c in enumerate(conversations) if i not in held],
            [c for i, c in enumerate(conversations) if i in held])


def prepare(cfg, tokenizer):
    """(train Dataset, eval Dataset or None, LoadedData) for a TrainConfig."""
    loaded = load(cfg.dataset)
    if not loaded.conversations:
        raise DataError(f"{cfg.dataset}: no valid rows; first problem: {loaded.problems[0]}"
                        if loaded.problems else f"{cfg.dataset}: no rows")
    explicit_eval = load_eval(cfg)
    if explicit_eval is not None:
        train_convs, eval_convs = loaded.conversations, explicit_eval.conversations
        if cfg.eval_split == 0:
            eval_convs = []
    else:
        train_convs, eval_convs = split(loaded.conversations, cfg.eval_split, cfg.seed)
    train_ds = to_dataset(tokenizer, train_convs, cfg.max_length, cfg.train_on_completions_only)
    eval_ds = (to_dataset(tokenizer, eval_convs, cfg.max_length, cfg.train_on_completions_only)
               if eval_convs else None)
    return train_ds, eval_ds, loaded


def token_view(tokenizer, messages: list[dict[str, str]], max_length: int | None = None,
               completions_only: bool = True) -> list[tuple[str, str | None]]:
    """The conversation exactly as the model sees it, as (text, label) pieces for
    gr.HighlightedText: label "trained" for tokens the loss is computed on, "masked" for the
    rest, "truncated" for tokens cut off by max_length."""
    full = tokenize_conversation(tokenizer, messages, None, completions_only)
    pieces = []
    for i, (token_id, trained) in enumerate(zip(full["input_ids"], full["assistant_masks"])):
        label = "truncated" if max_length is not None and i >= max_length else ("trained" if trained else "masked")
        text = tokenizer.decode([token_id])
        if pieces and pieces[-1][1] == label:
            pieces[-1] = (pieces[-1][0] + text, label)
        else:
            pieces.append((text, label))
    return pieces

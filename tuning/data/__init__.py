"""Training data: load -> detect format -> normalize to chat messages -> validate -> render with
the chat template -> tokenize with a loss mask -> statistics.

Every format ends up as a list of conversations, each a list of {"role", "content"} messages
(system / user / assistant / tool). Plain text for continued pre-training is a conversation of
one {"role": "text"} message: it skips the chat template and every token is trained on.
Problems never stop a load: each bad row is reported with its file, row number (1-based, as an
editor shows it) and field, and left out ("drop"); the report says enough to fix the file.

Reading files (JSON, JSONL, CSV/TSV, Parquet, TXT, folders, Hub ids) lives in tuning/data/formats.py.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tuning.data.formats import (HUB_PREVIEW_ROWS, SUFFIXES, DataError, Problem, Rows,  # noqa: F401 (re-exported)
                            read_hub, read_hub_preview, read_path)
from tuning.paths import DEMO_DATA_DIR, is_hub_id

ROLES = ("system", "user", "assistant")
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
TEXT_ROLE = "text"  # the single message of a plain-text (pre-training) row

# ShareGPT / OpenAI role names -> ours. A tool call is something the model must learn to write
# (assistant); a tool's result is input it reads (tool, masked like a user turn).
ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
              "bot": "assistant", "model": "assistant", "chatgpt": "assistant", "function_call": "assistant",
              "tool": "tool", "observation": "tool", "function": "tool", "function_response": "tool",
              "ipython": "tool"}

# Column names that unambiguously mean "the prompt" / "the answer" when a file has neither
# a known format nor a column map (matched case-insensitively).
PROMPT_NAMES = ("prompt", "question", "query", "input", "instruction", "user", "human")
COMPLETION_NAMES = ("completion", "answer", "response", "output", "target", "assistant", "gpt", "reply")
MAP_TARGETS = ("messages", "conversations", "system", "instruction", "input", "output", "history", "prompt",
               "completion", "text")


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


def is_text(messages: list[dict[str, str]]) -> bool:
    return len(messages) == 1 and messages[0]["role"] == TEXT_ROLE


# --- formats: one record -> messages --------------------------------------------------------------

def _kind(value: Any) -> str:
    """A value's type as a JSON user reads it."""
    names = {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "text",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _content(value: Any) -> Any:
    """OpenAI content may be a list of parts: keep the text parts."""
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    return value


def _system(record: dict, file: str, row: int) -> tuple[list[dict[str, str]], Problem | None]:
    value = record.get("system")
    if value is None or value == "":
        return [], None
    if not isinstance(value, str):
        return [], Problem(file, row, "system", f"expected text, got {_kind(value)}")
    return ([{"role": "system", "content": value}] if value.strip() else []), None


def _from_chat(record: dict, file: str, row: int, key: str = "messages") -> tuple[list | None, Problem | None]:
    """OpenAI `messages` (role/content) and ShareGPT `conversations` (from/value) alike."""
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        return None, Problem(file, row, key, f"expected a non-empty list of turns, got {_kind(turns)}")
    out, problem = _system(record, file, row)  # ShareGPT's top-level system prompt
    if problem:
        return None, problem
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            return None, Problem(file, row, where, f"expected an object with role and content, got {_kind(turn)}")
        role_key, content_key = ("from", "value") if "from" in turn and "role" not in turn else ("role", "content")
        role, content = turn.get(role_key), _content(turn.get(content_key))
        mapped = ROLE_NAMES.get(role.strip().lower()) if isinstance(role, str) else None
        if mapped is None:
            return None, Problem(file, row, f"{where}.{role_key}", f"unknown role {role!r} (use system, user, "
                                 "assistant, tool; or ShareGPT's human, gpt, function_call, observation)")
        if content is None and turn.get("tool_calls"):  # an OpenAI tool call: train on the call itself
            content = json.dumps(turn["tool_calls"], ensure_ascii=False)
        if not isinstance(content, str):
            return None, Problem(file, row, f"{where}.{content_key}", f"expected text, got {_kind(content)}")
        out.append({"role": mapped, "content": content})
    return out, None


def _from_sharegpt(record: dict, file: str, row: int) -> tuple[list | None, Problem | None]:
    return _from_chat(record, file, row, "conversations")


def _text_field(record: dict, key: str, file: str, row: int, required: bool = True) -> tuple[str, Problem | None]:
    value = record.get(key)
    if value is None and not required:
        return "", None
    if not isinstance(value, str):
        what = "missing" if key not in record else f"expected text, got {_kind(value)}"
        return "", Problem(file, row, key, what)
    return value, None


def _from_alpaca(record: dict, file: str, row: int) -> tuple[list | None, Problem | None]:
    instruction, problem = _text_field(record, "instruction", file, row)
    output, problem2 = _text_field(record, "output", file, row)
    extra, problem3 = _text_field(record, "input", file, row, required=False)
    messages, problem4 = _system(record, file, row)
    if problem or problem2 or problem3 or problem4:
        return None, problem or problem2 or problem3 or problem4
    history = record.get("history") or []
    if not isinstance(history, list):
        return None, Problem(file, row, "history", f"expected a list of [prompt, answer] pairs, got {_kind(history)}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            return None, Problem(file, row, f"history[{i}]", "expected a [prompt, answer] pair of texts")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = instruction + (f"\n\n{extra}" if extra.strip() else "")
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}], None


def _from_prompt_completion(record: dict, file: str, row: int) -> tuple[list | None, Problem | None]:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt/completion
        return _from_chat({"messages": prompt + completion}, file, row)
    prompt, problem = _text_field(record, "prompt", file, row)
    completion, problem2 = _text_field(record, "completion", file, row)
    messages, problem3 = _system(record, file, row)
    if problem or problem2 or problem3:
        return None, problem or problem2 or problem3
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], None


def _from_text(record: dict, file: str, row: int) -> tuple[list | None, Problem | None]:
    text, problem = _text_field(record, "text", file, row)
    if problem:
        return None, problem
    return [{"role": TEXT_ROLE, "content": text}], None


NORMALIZERS = {"messages": _from_chat, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca,
               "prompt_completion": _from_prompt_completion, "text": _from_text}


def detect_format(record: Any) -> str | None:
    """The format a record is in, from its keys; None when no known format fits."""
    if not isinstance(record, dict):
        return None
    for key in ("messages", "conversations"):
        turns = record.get(key)
        if isinstance(turns, list):
            first = next((t for t in turns if isinstance(t, dict)), {})
            return "sharegpt" if "from" in first and "role" not in first else "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def parse_column_map(text: str | dict | None) -> dict[str, str]:
    """"prompt=question,completion=answer" (the config's and the CLI's form) -> a dict."""
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    mapping = {}
    for item in text.split(","):
        if not item.strip():
            continue
        target, sep, source = item.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise DataError(f"column_map: {item.strip()!r} should look like target=column, e.g. prompt=question")
        mapping[target.strip()] = source.strip()
    return mapping


def _guess_columns(columns: list[str], file: str) -> dict[str, str]:
    """Map prompt/completion onto differently named columns, only when that is unambiguous."""
    def candidates(names):
        return [c for c in columns if c.strip().lower() in names]

    prompts, completions = candidates(PROMPT_NAMES), candidates(COMPLETION_NAMES)
    listed = ", ".join(columns)
    if len(prompts) == 1 and len(completions) == 1:
        mapping = {"prompt": prompts[0], "completion": completions[0]}
        system = candidates(("system", "system_prompt"))
        if len(system) == 1:
            mapping["system"] = system[0]
        return mapping
    if prompts or completions:
        if not completions or not prompts:
            choice = f"no column looks like the {'answer' if prompts else 'prompt'}"
        else:
            which, found = ("prompt", prompts) if len(prompts) > 1 else ("answer", completions)
            choice = f"{' or '.join(repr(c) for c in found)} could each be the {which}"
        raise DataError(f"{file}: cannot tell which columns hold the prompt and the answer ({choice}; columns: "
                        f"{listed}). Map them, e.g. column_map prompt=COLUMN,completion=COLUMN")
    raise DataError(f"{file}: cannot tell the format (columns: {listed}). Rows need 'messages' (chat), "
                    "'conversations' (ShareGPT), 'instruction' and 'output' (alpaca), 'prompt' and 'completion', "
                    "or 'text'; or map your columns, e.g. column_map prompt=COLUMN,completion=COLUMN")


# --- validation --------------------------------------------------------------------------------

def validate_conversation(messages: list[dict[str, str]], file: str, row: int) -> Problem | None:
    """A system turn only first; then user (or tool results) and assistant turns taking turns,
    starting with the user and ending with a non-empty answer. Plain text needs only text."""
    if is_text(messages):
        return None if messages[0]["content"].strip() else Problem(file, row, "text", "empty text")
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        return Problem(file, row, "messages", "no user or assistant turn")
    previous = None
    for i, message in enumerate(turns, start=1):
        role = message["role"]
        if role == "system":
            return Problem(file, row, "messages", f"turn {i} is a system turn; only the first turn may be")
        if i == 1 and role != "user":
            return Problem(file, row, "messages", f"turn 1 is {role!r}, expected 'user'")
        if role == previous and role != "tool":
            return Problem(file, row, "messages", f"turn {i} is a second {role!r} turn in a row")
        if role == "tool" and previous not in ("assistant", "tool"):
            return Problem(file, row, "messages", f"turn {i} is a tool result that follows no assistant turn")
        if role == "assistant" and not message["content"].strip():
            return Problem(file, row, "messages", f"turn {i}: empty assistant answer")
        previous = role
    if previous != "assistant":
        return Problem(file, row, "messages", "the conversation does not end with an assistant turn")
    return None


# --- loading -------------------------------------------------------------------------------------

CONSUMED = {"messages", "conversations", "system", "instruction", "input", "output", "history", "prompt",
            "completion", "text"}  # the fields a format reads; every other column is kept as an extra


def check_format_and_map(fmt: str, column_map: dict[str, str]) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown dataset format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    unknown = sorted(set(column_map) - set(MAP_TARGETS))
    if unknown:
        raise DataError(f"column_map: {unknown[0]!r} is not a field a column can map to "
                        f"(use {', '.join(MAP_TARGETS)})")


def file_plan(file: str, head: list[Any], fmt: str, column_map: dict[str, str]) -> tuple[str, dict[str, str], set]:
    """(format, column map, consumed columns) of one file, from its first records (up to 100)."""
    columns = list(next((r for r in head if isinstance(r, dict)), {}))
    mapping = dict(column_map)
    missing = [c for c in mapping.values() if c not in columns]
    if columns and missing:
        raise DataError(f"{file}: column_map names {missing[0]!r}, which is not a column "
                        f"(columns: {', '.join(columns)})")
    file_fmt = fmt
    if file_fmt == "auto":
        file_fmt = next((f for f in map(detect_format, [_rename(r, mapping) for r in head[:100]]) if f), None)
        if file_fmt is None:
            mapping.update(_guess_columns(columns, file) if columns else {})
            file_fmt = "prompt_completion" if mapping else None
        if file_fmt is None:
            raise DataError(f"{file}: rows are not objects with named fields (got {_kind(head[0])})")
    return file_fmt, mapping, set(mapping.values()) | CONSUMED


def normalize_record(record: Any, file: str, row: int, plan: tuple[str, dict[str, str], set]
                     ) -> tuple[list[dict[str, str]], dict[str, Any]] | Problem:
    """One record -> (messages, extra columns), or the Problem naming its file, row and field."""
    file_fmt, mapping, consumed = plan
    if not isinstance(record, dict):
        return Problem(file, row, "", f"expected an object, got {_kind(record)}")
    messages, problem = NORMALIZERS[file_fmt](_rename(record, mapping), file, row)
    problem = problem or validate_conversation(messages, file, row)
    if problem:
        if problem.field in mapping:  # name the user's column, not our field
            problem.field = mapping[problem.field]
        return problem
    if "expect" in record:
        try:
            parse_expect(record["expect"])
        except ValueError as exc:
            return Problem(file, row, "expect", str(exc))
    return messages, {k: v for k, v in record.items() if k not in consumed}


def _normalize(rows: Rows, fmt: str, column_map: dict[str, str], source: str, complete: bool) -> LoadedData:
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


def parse_expect(value: Any) -> dict[str, list[str]]:
    """A held-out row's `expect` (what its task check looks for) as {slot: any-of substrings}.

    A list of texts is one slot, "expect": the answer passes when it contains any of them. An
    object names slots, e.g. {"name": ["wren"], "maker": ["tidewater"]}: the answer must fill every
    slot (contain one text of each), and the evaluation counts each slot on its own, so "named the
    maker when asked for its name" shows as a missed name, not as a pass."""
    def texts(v: Any, where: str) -> list[str]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(t, str) for t in v):
            raise ValueError(f"{where}expected a non-empty list of texts, got {_kind(v)}")
        return [t.lower() for t in v]

    if isinstance(value, dict):
        if not value:
            raise ValueError("expected at least one slot, e.g. {\"name\": [\"wren\"]}")
        return {str(slot): texts(v, f"slot {slot!r}: ") for slot, v in value.items()}
    return {"expect": texts(value, "")}


def _rename(record: Any, mapping: dict[str, str]) -> Any:
    if not mapping or not isinstance(record, dict):
        return record
    return {**record, **{target: record.get(source) for target, source in mapping.items()}}


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
    loaded = _normalize(rows, fmt, mapping, source, complete)
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


# --- tokenizing with a loss mask ---------------------------------------------------------------

def tokenize_conversation(tokenizer, messages: list[dict[str, str]], max_length: int | None = None,
                          completions_only: bool = True) -> dict[str, list[int]]:
    """Render through the chat template and mark which tokens are trained on.

    The assistant spans are found by rendering growing prefixes of the conversation: the text
    between render(messages[:i], add_generation_prompt=True) and render(messages[:i+1]) is the
    i-th assistant reply with its end-of-turn token. This works with any chat template, unlike
    TRL's assistant_only_loss, which needs {% generation %} markers that most templates lack.
    Plain text skips the template: its tokens plus end-of-sequence, all trained on.
    """
    if is_text(messages):
        input_ids = tokenizer(messages[0]["content"])["input_ids"]
        if tokenizer.eos_token_id is not None and (not input_ids or input_ids[-1] != tokenizer.eos_token_id):
            input_ids = input_ids + [tokenizer.eos_token_id]  # so documents end and do not run together
        input_ids = input_ids[:max_length] if max_length is not None else input_ids
        return {"input_ids": input_ids, "assistant_masks": [1] * len(input_ids)}
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if text.startswith(upto) and upto.startswith(before):
            # Template whitespace after the end-of-turn token (ChatML's "\n") belongs to the
            # template, not to the answer: the span ends where the rendered reply's text ends.
            spans.append((len(before), len(before) + len(upto[len(before):].rstrip())))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    if completions_only:
        # A token is trained on when it ends inside an answer's span.
        mask = [int(any(s < end <= e for s, e in spans)) for _, end in encoded["offset_mapping"]]
    else:
        mask = [1] * len(input_ids)
    if max_length is not None:
        input_ids, mask = input_ids[:max_length], mask[:max_length]
    return {"input_ids": input_ids, "assistant_masks": mask}


def _tokenize_rows(tokenizer, messages: list[dict[str, str]], max_length: int,
                   completions_only: bool) -> list[dict[str, list[int]]]:
    """A chat row is one example, truncated at max_length; a text row longer than max_length is
    cut into max_length pieces instead, since pre-training text has no answer to lose."""
    try:
        if not is_text(messages):
            return [tokenize_conversation(tokenizer, messages, max_length, completions_only)]
        ids = tokenize_conversation(tokenizer, messages)["input_ids"]
    except Exception as exc:  # noqa: BLE001 - a template that refuses a role, say: tell which conversation
        raise DataError(f"the model's chat template cannot render a conversation ({exc}); roles: "
                        f"{', '.join(m['role'] for m in messages)}") from None
    return [{"input_ids": ids[i:i + max_length], "assistant_masks": [1] * len(ids[i:i + max_length])}
            for i in range(0, len(ids), max_length)]


def to_dataset(tokenizer, conversations: list[list[dict[str, str]]], max_length: int,
               completions_only: bool):
    """A datasets.Dataset of input_ids + assistant_masks, which TRL's SFTTrainer takes as-is
    (it builds the labels from assistant_masks). Rows with no trained token are dropped. Every
    example carries `row_id`, its conversation's position in `conversations` (the pieces of a long
    text row share one), so a loss computed on it can be traced back to the file and row
    (tuning/evaluation/row_losses.py)."""
    from datasets import Dataset

    rows = [{**r, "row_id": i} for i, m in enumerate(conversations)
            for r in _tokenize_rows(tokenizer, m, max_length, completions_only)]
    rows = [r for r in rows if any(r["assistant_masks"])]
    if not rows:
        raise DataError("no example has a trained token left (is max_length too small?)")
    return Dataset.from_list(rows)


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


def _explicit_heldout(cfg) -> list[tuple[list[dict], dict]] | None:
    """The held-out rows of an explicit eval file (eval_dataset, or the demo's eval.jsonl) with
    their extra columns; None when there is no such file (the held-out rows are then a split)."""
    explicit = load_eval(cfg)
    if explicit is None:
        return None
    return [] if cfg.eval_split == 0 else list(zip(explicit.conversations, explicit.extras))


def train_and_heldout(cfg, loaded: LoadedData) -> tuple[list, list[tuple[list[dict], dict]]]:
    """(training conversations, held-out (conversation, extra columns)): the one place that decides
    which rows are held out, for training (prepare) and for evaluation (heldout_rows) alike."""
    held = _explicit_heldout(cfg)
    if held is not None:
        return loaded.conversations, held
    train, held_convs = split(loaded.conversations, cfg.eval_split, cfg.seed)
    return train, [(conversation, {}) for conversation in held_convs]


# The workspace whose Arrow cache prepare() read a big source from, so the end-of-run evaluation in
# the same process takes its held-out split from there too rather than reading the file into memory.
_ARROW_WORKSPACE: dict[str, Any] = {}


def heldout_rows(cfg) -> list[tuple[list[dict], dict]]:
    """The held-out rows alone; the training data is read only when they are a split of it."""
    from tuning.data import arrow_data

    held = _explicit_heldout(cfg)
    if held is not None:
        return held
    workspace = _ARROW_WORKSPACE.get(cfg.dataset)
    if not arrow_data.wanted(cfg.dataset, workspace):
        return train_and_heldout(cfg, load_config_dataset(cfg))[1]
    loaded = arrow_data.load(cfg.dataset, getattr(cfg, "dataset_format", "auto"), getattr(cfg, "column_map", ""),
                             workspace)
    _, positions = split_positions(loaded.rows_valid, cfg.eval_split, cfg.seed)
    return [(loaded.conversations[i], loaded.extras[i]) for i in positions]


def prepare(cfg, tokenizer, workspace=None):
    """(train Dataset, eval Dataset or None, LoadedData) for a TrainConfig. With a workspace, a big
    local source (tuning/data/arrow_data.py) is read and tokenized through an Arrow cache in it: the same
    rows, memory-mapped instead of held in memory."""
    from tuning.data import arrow_data

    big = arrow_data.wanted(cfg.dataset, workspace)
    loaded = (arrow_data.load(cfg.dataset, getattr(cfg, "dataset_format", "auto"), getattr(cfg, "column_map", ""),
                              workspace) if big else load_config_dataset(cfg))
    if not loaded.rows_valid:
        raise DataError(f"{cfg.dataset}: no valid rows; first problem: {loaded.problems[0]}"
                        if loaded.problems else f"{cfg.dataset}: no rows")
    if big:
        _ARROW_WORKSPACE[cfg.dataset] = workspace
        return (*_prepare_arrow(cfg, tokenizer, loaded, workspace), loaded)
    train_convs, held = train_and_heldout(cfg, loaded)
    eval_convs = [conversation for conversation, _ in held]
    train_ds = to_dataset(tokenizer, train_convs, cfg.max_length, cfg.train_on_completions_only)
    eval_ds = (to_dataset(tokenizer, eval_convs, cfg.max_length, cfg.train_on_completions_only)
               if eval_convs else None)
    return train_ds, eval_ds, loaded


def _prepare_arrow(cfg, tokenizer, loaded: LoadedData, workspace):
    """prepare's datasets for rows in the Arrow cache: the split by positions (split's own), each
    side tokenized by arrow_data.to_dataset; an explicit held-out file is small and loads in memory."""
    from tuning.data import arrow_data

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


def token_view(tokenizer, messages: list[dict[str, str]], max_length: int | None = None,
               completions_only: bool = True) -> list[tuple[str, str | None]]:
    """The conversation exactly as the model sees it, as (text, label) pieces for
    gr.HighlightedText: label "trained" for tokens the loss is computed on, "masked" for the
    rest, "truncated" for tokens cut off by max_length (a text row is split, not cut)."""
    full = tokenize_conversation(tokenizer, messages, None, completions_only)
    cut = max_length if max_length is not None and not is_text(messages) else None
    pieces = []
    for i, (token_id, trained) in enumerate(zip(full["input_ids"], full["assistant_masks"])):
        label = "truncated" if cut is not None and i >= cut else ("trained" if trained else "masked")
        text = tokenizer.decode([token_id])
        if pieces and pieces[-1][1] == label:
            pieces[-1] = (pieces[-1][0] + text, label)
        else:
            pieces.append((text, label))
    return pieces


# --- statistics ----------------------------------------------------------------------------------

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
        full = tokenize_conversation(tokenizer, messages, None, completions_only)
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

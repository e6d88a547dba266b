"""One record -> chat messages, for every SFT format, with the problems of a bad record.

Holds the format tables (FORMATS, ROLE_NAMES, the column names a file may use), a normalizer per
format (NORMALIZERS), format detection, column maps, conversation validation and the held-out
`expect` column's parser. Everything here works on one record (or one file's first records) and
never reads a file or tokenizes, so the in-memory loader (loading.py), the Arrow cache
(arrow_data.py) and preference pairs (pairs.py) all normalize and validate the same way and
report the same file, row and field.
"""

from __future__ import annotations

import json
from typing import Any

from tuning.data.formats import DataError, Problem

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


def is_text(messages: list[dict[str, str]]) -> bool:
    return len(messages) == 1 and messages[0]["role"] == TEXT_ROLE


# --- formats: one record -> messages --------------------------------------------------------------

def value_kind(value: Any) -> str:
    """A value's type as a JSON user reads it."""
    names = {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "text",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _content(value: Any) -> Any:
    """OpenAI content may be a list of parts: keep the text parts."""
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    return value


def system_messages(record: dict, file: str, row: int) -> tuple[list[dict[str, str]], Problem | None]:
    value = record.get("system")
    if value is None or value == "":
        return [], None
    if not isinstance(value, str):
        return [], Problem(file, row, "system", f"expected text, got {value_kind(value)}")
    return ([{"role": "system", "content": value}] if value.strip() else []), None


def from_chat(record: dict, file: str, row: int, key: str = "messages") -> tuple[list | None, Problem | None]:
    """OpenAI `messages` (role/content) and ShareGPT `conversations` (from/value) alike."""
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        return None, Problem(file, row, key, f"expected a non-empty list of turns, got {value_kind(turns)}")
    out, problem = system_messages(record, file, row)  # ShareGPT's top-level system prompt
    if problem:
        return None, problem
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            return None, Problem(file, row, where, f"expected an object with role and content, got {value_kind(turn)}")
        role_key, content_key = ("from", "value") if "from" in turn and "role" not in turn else ("role", "content")
        role, content = turn.get(role_key), _content(turn.get(content_key))
        mapped = ROLE_NAMES.get(role.strip().lower()) if isinstance(role, str) else None
        if mapped is None:
            return None, Problem(file, row, f"{where}.{role_key}", f"unknown role {role!r} (use system, user, "
                                 "assistant, tool; or ShareGPT's human, gpt, function_call, observation)")
        if content is None and turn.get("tool_calls"):  # an OpenAI tool call: train on the call itself
            content = json.dumps(turn["tool_calls"], ensure_ascii=False)
        if not isinstance(content, str):
            return None, Problem(file, row, f"{where}.{content_key}", f"expected text, got {value_kind(content)}")
        out.append({"role": mapped, "content": content})
    return out, None


def _from_sharegpt(record: dict, file: str, row: int) -> tuple[list | None, Problem | None]:
    return from_chat(record, file, row, "conversations")


def _text_field(record: dict, key: str, file: str, row: int, required: bool = True) -> tuple[str, Problem | None]:
    value = record.get(key)
    if value is None and not required:
        return "", None
    if not isinstance(value, str):
        what = "missing" if key not in record else f"expected text, got {value_kind(value)}"
        return "", Problem(file, row, key, what)
    return value, None


def _from_alpaca(record: dict, file: str, row: int) -> tuple[list | None, Problem | None]:
    instruction, problem = _text_field(record, "instruction", file, row)
    output, problem2 = _text_field(record, "output", file, row)
    extra, problem3 = _text_field(record, "input", file, row, required=False)
    messages, problem4 = system_messages(record, file, row)
    if problem or problem2 or problem3 or problem4:
        return None, problem or problem2 or problem3 or problem4
    history = record.get("history") or []
    if not isinstance(history, list):
        return None, Problem(file, row, "history",
                             f"expected a list of [prompt, answer] pairs, got {value_kind(history)}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            return None, Problem(file, row, f"history[{i}]", "expected a [prompt, answer] pair of texts")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = instruction + (f"\n\n{extra}" if extra.strip() else "")
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}], None


def _from_prompt_completion(record: dict, file: str, row: int) -> tuple[list | None, Problem | None]:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt/completion
        return from_chat({"messages": prompt + completion}, file, row)
    prompt, problem = _text_field(record, "prompt", file, row)
    completion, problem2 = _text_field(record, "completion", file, row)
    messages, problem3 = system_messages(record, file, row)
    if problem or problem2 or problem3:
        return None, problem or problem2 or problem3
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], None


def _from_text(record: dict, file: str, row: int) -> tuple[list | None, Problem | None]:
    text, problem = _text_field(record, "text", file, row)
    if problem:
        return None, problem
    return [{"role": TEXT_ROLE, "content": text}], None


NORMALIZERS = {"messages": from_chat, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca,
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


# --- column maps -------------------------------------------------------------------------------

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


def rename_columns(record: Any, mapping: dict[str, str]) -> Any:
    """The record with each mapped field set from the user's column (the column itself stays,
    so it is not also kept as an extra: file_plan counts it as consumed)."""
    if not mapping or not isinstance(record, dict):
        return record
    return {**record, **{target: record.get(source) for target, source in mapping.items()}}


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


# --- a file's plan and one record ------------------------------------------------------------------

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
        file_fmt = next((f for f in map(detect_format, [rename_columns(r, mapping) for r in head[:100]]) if f), None)
        if file_fmt is None:
            mapping.update(_guess_columns(columns, file) if columns else {})
            file_fmt = "prompt_completion" if mapping else None
        if file_fmt is None:
            raise DataError(f"{file}: rows are not objects with named fields (got {value_kind(head[0])})")
    return file_fmt, mapping, set(mapping.values()) | CONSUMED


def normalize_record(record: Any, file: str, row: int, plan: tuple[str, dict[str, str], set]
                     ) -> tuple[list[dict[str, str]], dict[str, Any]] | Problem:
    """One record -> (messages, extra columns), or the Problem naming its file, row and field."""
    file_fmt, mapping, consumed = plan
    if not isinstance(record, dict):
        return Problem(file, row, "", f"expected an object, got {value_kind(record)}")
    messages, problem = NORMALIZERS[file_fmt](rename_columns(record, mapping), file, row)
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
            raise ValueError(f"{where}expected a non-empty list of texts, got {value_kind(v)}")
        return [t.lower() for t in v]

    if isinstance(value, dict):
        if not value:
            raise ValueError("expected at least one slot, e.g. {\"name\": [\"wren\"]}")
        return {str(slot): texts(v, f"slot {slot!r}: ") for slot, v in value.items()}
    return {"expect": texts(value, "")}

"""Preference data: the formats people have for DPO/ORPO pairs and KTO's labelled answers, read
-> detect -> normalize -> validate (file, row, field) -> per-side token counts and views.

Every pair ends up in TRL's conversational preference form, which DPOTrainer and ORPO take as-is:
    {"prompt": [messages ending on a user turn], "chosen": [assistant turn], "rejected": [assistant turn]}
and every KTO row in TRL's unpaired form: {"prompt": [...], "completion": [assistant turn], "label": bool}.

Formats detected per file from the column names:
  prompt_chosen_rejected  prompt / chosen / rejected: strings, or message lists as TRL takes them
  sharegpt_pairs          ShareGPT `conversations` (the prompt turns) + `chosen` / `rejected` turns
  messages_pairs          OpenAI `messages` (the prompt turns) + `chosen` / `rejected`
  implicit_prompt         `chosen` / `rejected` as whole conversations sharing the prompt (TRL's implicit prompt)
  kto                     prompt / completion / label (true: a good answer, false: a bad one)
Files are read by tuning/data/formats.py (JSON, JSONL, CSV/TSV, Parquet, folders, Hub ids), as for SFT.
Bad rows are reported with file, row number and field, and left out; the rest loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.data import loading, tokens
from tuning.data.formats import DataError, Problem, Rows, read_hub, read_hub_preview, read_path
from tuning.data.normalize import (from_chat, parse_column_map, rename_columns, system_messages,
                                   validate_conversation, value_kind)
from tuning.paths import DEMO_DATA_DIR, is_hub_id

PAIR_FORMATS = ("prompt_chosen_rejected", "sharegpt_pairs", "messages_pairs", "implicit_prompt")
KTO_FORMAT = "kto"
PREFERENCE_FORMATS = (*PAIR_FORMATS, KTO_FORMAT)
DEMO_PREFERENCE = "demo-preference"  # the bundled preference set (tuning/demo_data/preference_*.jsonl)
MAP_TARGETS = ("prompt", "chosen", "rejected", "completion", "label", "messages", "conversations", "system")
PROMPT_ENDS = ("user", "tool")  # the answer follows the person's turn (or a tool's result)


def demo_files() -> tuple[Path, Path]:
    return DEMO_DATA_DIR / "preference_train.jsonl", DEMO_DATA_DIR / "preference_eval.jsonl"


@dataclass
class PreferenceData:
    source: str
    format: str
    kind: str = "pairs"  # "pairs" (dpo, orpo) or "kto" (labelled single answers)
    rows: list[dict[str, Any]] = field(default_factory=list)
    locations: list[tuple[str, int]] = field(default_factory=list)  # (file, row) of each valid row
    rows_total: int = 0
    problems: list[Problem] = field(default_factory=list)
    complete: bool = True
    note: str = ""

    @property
    def rows_valid(self) -> int:
        return len(self.rows)


def detect(record: Any) -> str | None:
    """The preference format of one record, from its keys; None when it is not preference data."""
    if not isinstance(record, dict):
        return None
    if "chosen" in record or "rejected" in record:
        if "conversations" in record:
            return "sharegpt_pairs"
        if "messages" in record:
            return "messages_pairs"
        return "prompt_chosen_rejected" if "prompt" in record else "implicit_prompt"
    if "completion" in record and "label" in record:
        return KTO_FORMAT
    return None


def objective_kind(objective: str) -> str:
    return KTO_FORMAT if objective == "kto" else "pairs"


# --- one record -> messages ----------------------------------------------------------------------

def _turns(value: Any, file: str, row: int, name: str) -> tuple[list | None, Problem | None]:
    """A message list (OpenAI role/content or ShareGPT from/value), through SFT's one reader."""
    if isinstance(value, dict):
        value = [value]
    return from_chat({name: value}, file, row, name)


def _prompt(record: dict, key: str, file: str, row: int) -> tuple[list | None, Problem | None]:
    value = record.get(key)
    if value is None:
        return None, Problem(file, row, key, "missing: a preference row needs the prompt")
    if isinstance(value, str):
        system, problem = system_messages(record, file, row)
        return (None, problem) if problem else (system + [{"role": "user", "content": value}], None)
    return _turns(value, file, row, key)


def _answer(record: dict, side: str, file: str, row: int) -> tuple[list | None, Problem | None]:
    """One side of a pair: a string, one assistant turn, or a list of assistant turns."""
    value = record.get(side)
    if value is None:
        other = "rejected" if side == "chosen" else "chosen"
        return None, Problem(file, row, side, f"missing: a pair needs both chosen and rejected (only {other} given)"
                             if record.get(other) is not None else "missing")
    if isinstance(value, str):
        turns = [{"role": "assistant", "content": value}]
    else:
        turns, problem = _turns(value, file, row, side)
        if problem:
            return None, problem
    if any(t["role"] != "assistant" for t in turns):
        return None, Problem(file, row, side, "expected the answer (assistant turns), got "
                             + ", ".join(t["role"] for t in turns))
    return turns, None


def _implicit(record: dict, file: str, row: int) -> tuple[dict | None, Problem | None]:
    """chosen/rejected as whole conversations: the turns they share are the prompt."""
    sides = {}
    for side in ("chosen", "rejected"):
        if record.get(side) is None:
            return None, _answer(record, side, file, row)[1]
        turns, problem = _turns(record[side], file, row, side)
        if problem:
            return None, problem
        sides[side] = turns
    shared = 0
    for a, b in zip(sides["chosen"], sides["rejected"]):
        if a != b or a["role"] == "assistant" and shared == len(sides["chosen"]) - 1:
            break
        shared += 1
    while shared and sides["chosen"][shared - 1]["role"] == "assistant":
        shared -= 1  # the shared part ends on the prompt's last user turn
    return {"prompt": sides["chosen"][:shared], "chosen": sides["chosen"][shared:],
            "rejected": sides["rejected"][shared:]}, None


def normalize_pair(record: dict, fmt: str, file: str, row: int) -> tuple[dict | None, Problem | None]:
    if fmt == "implicit_prompt":
        return _implicit(record, file, row)
    key = {"sharegpt_pairs": "conversations", "messages_pairs": "messages"}.get(fmt, "prompt")
    prompt, problem = _prompt(record, key, file, row)
    if problem:
        return None, problem
    out = {"prompt": prompt}
    for side in ("chosen", "rejected"):
        out[side], problem = _answer(record, side, file, row)
        if problem:
            return None, problem
    return out, None


def _label(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


def normalize_kto(record: dict, file: str, row: int) -> tuple[dict | None, Problem | None]:
    prompt, problem = _prompt(record, "prompt", file, row)
    if problem:
        return None, problem
    completion, problem = _answer({"chosen": record.get("completion")}, "chosen", file, row)
    if problem:
        return None, Problem(file, row, "completion", problem.message)
    label = _label(record.get("label"))
    if label is None:
        return None, Problem(file, row, "label", f"expected true or false (a good or a bad answer), got "
                             f"{record.get('label')!r:.40}")
    return {"prompt": prompt, "completion": completion, "label": label}, None


# --- validation ------------------------------------------------------------------------------------

def _text(turns: list[dict]) -> str:
    return "\n".join(t["content"] for t in turns)


def validate(row_value: dict, file: str, row: int) -> Problem | None:
    """The problems a preference row can have, each named by field: no prompt, a prompt that does
    not end on a user turn, an empty answer, chosen identical to rejected, a badly ordered prompt."""
    prompt = row_value["prompt"]
    if not [m for m in prompt if m["role"] != "system"]:
        return Problem(file, row, "prompt", "no user turn: the prompt is empty")
    if prompt[-1]["role"] not in PROMPT_ENDS:
        return Problem(file, row, "prompt", f"the prompt ends on a{'n' * (prompt[-1]['role'][0] in 'aeiou')} "
                       f"{prompt[-1]['role']} turn; it must end on a user turn (the answers follow it)")
    sides = ("completion",) if "completion" in row_value else ("chosen", "rejected")
    for side in sides:
        if not _text(row_value[side]).strip():
            return Problem(file, row, side, f"empty answer: the {side} side has no text")
    if sides == ("chosen", "rejected") and _text(row_value["chosen"]).strip() == _text(row_value["rejected"]).strip():
        return Problem(file, row, "rejected", "identical to chosen: the pair teaches nothing")
    problem = validate_conversation(prompt + row_value[sides[0]], file, row)
    if problem:
        problem.field = "prompt"
    return problem


# --- loading -----------------------------------------------------------------------------------------

def _read(source: str, split: str | None, subset: str | None, limit: int | None, preview: bool) -> tuple[Rows, str]:
    if source == DEMO_PREFERENCE:
        return read_path(demo_files()[0], limit), str(demo_files()[0])
    if is_hub_id(source):
        return (read_hub_preview if preview else read_hub)(source, split, subset, limit), source
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"dataset: {source!r} does not exist")
    return read_path(path, limit), source


def load(source: str, kind: str | None = None, column_map: str | dict | None = None, split: str | None = None,
         subset: str | None = None, limit: int | None = None, preview: bool = False) -> PreferenceData:
    """Preference rows from 'demo-preference', a file, a folder or a Hub id. kind "pairs" or "kto"
    (None: whatever the first file holds); a file of the other kind is one clear DataError."""
    mapping = parse_column_map(column_map)
    unknown = sorted(set(mapping) - set(MAP_TARGETS))
    if unknown:
        raise DataError(f"column_map: {unknown[0]!r} is not a preference field (use {', '.join(MAP_TARGETS)})")
    rows, label = _read(source, split, subset, limit, preview)
    complete = rows.complete if rows.complete is not None else (
        limit is None or len(rows.records) + len(rows.problems) >= rows.total)
    out = PreferenceData(source=label, format="", rows_total=rows.total, problems=list(rows.problems),
                         complete=complete, note=rows.note)
    by_file: dict[str, list] = {}
    for file, row, record in rows.records:
        by_file.setdefault(file, []).append((row, rename_columns(record, mapping)))
    formats = []
    for file, records in by_file.items():
        fmt = next((f for f in (detect(r) for _, r in records[:100]) if f), None)
        if fmt is None:
            columns = ", ".join(next((list(r) for _, r in records if isinstance(r, dict)), []))
            raise DataError(f"{file}: not preference data (columns: {columns}). Pairs need prompt/chosen/rejected "
                            "(or messages or conversations with chosen/rejected); KTO needs prompt/completion/label")
        file_kind = KTO_FORMAT if fmt == KTO_FORMAT else "pairs"
        kind = kind or file_kind
        if file_kind != kind:
            raise DataError(f"{file}: holds {'labelled answers (KTO)' if file_kind == KTO_FORMAT else 'pairs'}, "
                            f"but the objective needs {'labelled answers (KTO)' if kind == KTO_FORMAT else 'pairs'}")
        formats.append(fmt) if fmt not in formats else None
        _normalize_file(out, records, fmt, file)
    out.kind = kind or "pairs"
    out.format = ", ".join(formats)
    out.problems.sort(key=lambda p: (p.file, p.row))
    return out


def _normalize_file(out: PreferenceData, records: list, fmt: str, file: str) -> None:
    for row, record in records:
        if not isinstance(record, dict):
            out.problems.append(Problem(file, row, "", f"expected an object, got {value_kind(record)}"))
            continue
        value, problem = (normalize_kto(record, file, row) if fmt == KTO_FORMAT
                          else normalize_pair(record, fmt, file, row))
        problem = problem or validate(value, file, row)
        if problem:
            out.problems.append(problem)
            continue
        out.rows.append(value)
        out.locations.append((file, row))


def looks_like_preference(source: str) -> bool:
    """Whether a source holds preference rows (the Dataset tab picks its view by this)."""
    if source == DEMO_PREFERENCE:
        return True
    try:
        rows, _ = _read(source, None, None, 20, preview=True)
    except DataError:
        return False
    return any(detect(r) for _, _, r in rows.records)


def load_config_dataset(cfg) -> PreferenceData:
    return load(cfg.dataset, objective_kind(cfg.objective), cfg.column_map, cfg.dataset_split or None,
                cfg.dataset_subset or None)


def train_and_heldout(cfg, loaded: PreferenceData | None = None) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): eval_dataset, else the demo's own held-out file, else a
    seeded eval_split of the training rows (loading.split, the same rule as SFT)."""
    loaded = loaded or load_config_dataset(cfg)
    kind = objective_kind(cfg.objective)
    explicit = cfg.eval_dataset or (demo_files()[1] if cfg.dataset == DEMO_PREFERENCE else "")
    if explicit:
        held = [] if cfg.eval_split == 0 else load(str(explicit), kind, cfg.column_map).rows
        return loaded.rows, held
    return loading.split(loaded.rows, cfg.eval_split, cfg.seed)


def heldout_rows(cfg) -> list[dict]:
    return train_and_heldout(cfg)[1]


def to_dataset(rows: list[dict]):
    """A datasets.Dataset in TRL's conversational preference (or KTO) form."""
    from datasets import Dataset

    if not rows:
        raise DataError("no valid preference rows")
    return Dataset.from_list(rows)


# --- tokens: what is scored on each side -------------------------------------------------------------

def sides(row: dict) -> tuple[str, ...]:
    return ("completion",) if "completion" in row else ("chosen", "rejected")


def side_token_view(tokenizer, row: dict, side: str, max_length: int | None = None) -> list[tuple[str, str | None]]:
    """One side as the model sees it: the prompt (context, not scored), the answer's tokens (scored:
    their log-probabilities make the implicit reward) and the tokens max_length cuts off."""
    pieces = tokens.token_view(tokenizer, row["prompt"] + row[side], max_length)
    return [(text, {"trained": "scored", "masked": "prompt"}.get(label, label)) for text, label in pieces]


def pair_token_views(tokenizer, row: dict, max_length: int | None = None) -> dict[str, list[tuple[str, str | None]]]:
    """A row's token view split for showing the sides next to each other: "prompt" (the context both
    sides share, not scored) and each answer side from its first scored token on (scored, and what
    max_length cuts: each side is cut on its own, prompt + that side)."""
    out: dict[str, list] = {}
    for side in sides(row):
        pieces = side_token_view(tokenizer, row, side, max_length)
        start = next((i for i, (_, label) in enumerate(pieces) if label != "prompt"), len(pieces))
        out.setdefault("prompt", pieces[:start])
        out[side] = pieces[start:]
    return out


def _lengths(tokenizer, row: dict) -> dict[str, int]:
    """Tokens of prompt + each side, of each answer alone, and of the prompt."""
    out = {}
    for side in sides(row):
        full = tokens.tokenize_conversation(tokenizer, row["prompt"] + row[side])
        out[side] = len(full["input_ids"])
        out[f"{side}_answer"] = sum(full["assistant_masks"])
    first = sides(row)[0]
    out["prompt"] = out[first] - out[f"{first}_answer"]
    return out


def _percentiles(values: list[int]) -> dict[str, int]:
    ordered = sorted(values)
    if not ordered:
        return {"shortest": 0, "p50": 0, "p95": 0, "longest": 0}
    pick = lambda q: ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]  # noqa: E731
    return {"shortest": ordered[0], "p50": pick(0.5), "p95": pick(0.95), "longest": ordered[-1]}


def statistics(loaded: PreferenceData, tokenizer, max_length: int) -> dict[str, Any]:
    """Token lengths per side (prompt, chosen, rejected or completion) and the rows longer than
    max_length, saying which side is cut (TRL keeps the start: the answer's end is lost) and which
    rows' prompt alone fills max_length (TRL drops those)."""
    per_side: dict[str, list[int]] = {}
    cut: list[Problem] = []
    for row, (file, number) in zip(loaded.rows, loaded.locations):
        lengths = _lengths(tokenizer, row)
        per_side.setdefault("prompt", []).append(lengths["prompt"])
        for side in sides(row):
            per_side.setdefault(side, []).append(lengths[f"{side}_answer"])
        if lengths["prompt"] >= max_length:
            cut.append(Problem(file, number, "prompt", f"the prompt alone is {lengths['prompt']} tokens, not under "
                               f"max_length {max_length}: the pair is left out of training"))
            continue
        over = [f"{side} ({lengths[side]} tokens with the prompt: its last {lengths[side] - max_length} cut)"
                for side in sides(row) if lengths[side] > max_length]
        if over:
            cut.append(Problem(file, number, "/".join(s.split()[0] for s in over),
                               f"longer than max_length {max_length}: " + "; ".join(over)))
    return {"rows": loaded.rows_valid, "max_length": max_length,
            "sides": {side: {**_percentiles(values), "mean": round(sum(values) / len(values), 1) if values else 0}
                      for side, values in per_side.items()},
            "truncated_count": len(cut), "truncated": cut}


def report(loaded: PreferenceData, stats: dict | None = None, max_problems: int = 50) -> dict[str, Any]:
    """`python -m tuning inspect --json` for preference data: the format, pair (or label) counts,
    the first problems with file and row, and the per-side token statistics."""
    out: dict[str, Any] = {"source": loaded.source, "format": loaded.format, "kind": loaded.kind,
                           "rows": loaded.rows_total, "valid_rows": loaded.rows_valid, "complete": loaded.complete,
                           "problem_count": len(loaded.problems),
                           "problems": [vars(p) for p in loaded.problems[:max_problems]]}
    if loaded.kind == KTO_FORMAT:
        good = sum(r["label"] for r in loaded.rows)
        out.update(desirable=good, undesirable=loaded.rows_valid - good)
    else:
        out["pairs"] = loaded.rows_valid
    if stats is not None:
        out["statistics"] = {**stats, "truncated": [vars(p) for p in stats["truncated"][:max_problems]]}
    return out

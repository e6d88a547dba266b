"""The Dataset tab's view of preference data (tuning/data/pairs.py reads it): the pairs listed, one pair
as prompt, chosen and rejected side by side with each side's tokens (what is scored), the token
lengths per side (which side max_length cuts) and every problem by row; and the run's votes as a
source (record.write_preference_pairs: the same file "tune on my votes" trains on).

KTO's labelled answers show in the same three columns: a desirable answer under chosen, an
undesirable one under rejected. The Dataset tab lays these parts out and wires them; the handlers
here are plain functions of the page's values returning dicts keyed by output name."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import gradio as gr

from tuning import paths
from tuning.data import pairs
from tuning.ui.common import picked_number, source_mtime

LIST_ROWS = 500  # pairs listed in the table (any pair opens by its number)
LIST_HEADERS = ["#", "prompt (last turn)", "chosen", "rejected", "file:row"]
SIDE_COLORS = {"prompt": "gray", "scored": "green", "truncated": "red"}
VIEW_OUTPUTS = ("pair_row", "pair_note", "pair_prompt", "pair_chosen", "pair_rejected")


@lru_cache(maxsize=4)
def _load(source: str, column_map: str, mtime: float) -> pairs.PreferenceData:
    return pairs.load(source, column_map=column_map or None)


def load(source: str, column_map: str = "") -> pairs.PreferenceData:
    """The preference rows of a source, read once per file version (the tab's steps share it)."""
    return _load(source, (column_map or "").strip(), source_mtime(source))


def is_preference(source: str) -> bool:
    """Whether the Dataset tab shows this source as pairs (the format is told by its columns)."""
    return bool(source) and pairs.looks_like_preference(source)


def _last_user(turns: list[dict]) -> str:
    users = [t["content"] for t in turns if t["role"] != "system"]
    return users[-1] if users else ""


def _answer(turns: list[dict]) -> str:
    return "\n".join(t["content"] for t in turns)


def list_rows(loaded: pairs.PreferenceData, limit: int = LIST_ROWS) -> list[list]:
    """The table of pairs: number (what the pair view takes), prompt, both answers, file:row."""
    out = []
    for number, (row, (file, line)) in enumerate(zip(loaded.rows[:limit], loaded.locations), start=1):
        if "completion" in row:
            good, bad = (_answer(row["completion"]), "") if row["label"] else ("", _answer(row["completion"]))
        else:
            good, bad = _answer(row["chosen"]), _answer(row["rejected"])
        out.append([number, _last_user(row["prompt"]), good, bad, f"{Path(file).name}:{line}"])
    return out


def summary_markdown(loaded: pairs.PreferenceData, origin: str = "") -> str:
    what = "labelled answers (KTO)" if loaded.kind == pairs.KTO_FORMAT else "pairs"
    head = (f"**{origin or loaded.source}** — preference data, format **{loaded.format}**: **{loaded.rows_valid:,}** "
            f"{what} valid of {loaded.rows_total:,} rows")
    problems = len(loaded.problems)
    head += (f"; **{problems} problem{'s' * (problems != 1)}** (those rows are left out, see below)" if problems
             else "; no problems found")
    objective = "kto" if loaded.kind == pairs.KTO_FORMAT else "dpo or orpo"
    return head + f".  \nTrain on it with the Train form's **objective** set to **{objective}**."


def inspect(source: str, column_map: str = "", origin: str = "") -> dict:
    """The quick step for preference data: the summary, the problems by row, the list of pairs."""
    loaded = load(source, column_map)
    shown = "" if loaded.rows_valid <= LIST_ROWS else f" (the first {LIST_ROWS} of {loaded.rows_valid:,}; any opens by #)"
    return {"summary": summary_markdown(loaded, origin),
            "problems": [[p.file, p.row, p.field, p.message] for p in loaded.problems[:200]],
            "pair_list": gr.update(value=list_rows(loaded), label=f"Pairs{shown} — click one to see it side by side"),
            "pair_row": 1, "stats": "Counting tokens…"}


def stats_markdown(stats: dict) -> str:
    """Token lengths per side as a table, and how many rows max_length cuts and on which side."""
    names = {"prompt": "prompt", "chosen": "chosen (answer)", "rejected": "rejected (answer)",
             "completion": "completion (answer)"}
    lines = [f"**Token lengths per side** (all {stats['rows']:,} valid rows, max_length **{stats['max_length']}**: "
             "each side is scored as prompt + that answer)", "",
             "| side | min | median | p95 | max | mean |", "|---|---:|---:|---:|---:|---:|"]
    for side, f in stats["sides"].items():
        lines.append(f"| {names.get(side, side)} | {f['shortest']} | {f['p50']} | {f['p95']} | {f['longest']} | "
                     f"{f['mean']} |")
    cut = stats["truncated"]
    by_side: dict[str, int] = {}
    for problem in cut:
        for side in problem.field.split("/"):
            by_side[side] = by_side.get(side, 0) + 1
    where = ", ".join(f"{side} in {n}" for side, n in sorted(by_side.items())) or "none"
    lines += ["", f"- longer than max_length: **{len(cut)}** rows (cut side: {where}); TRL keeps the start, so the "
              "answer's end is lost, and a prompt that fills max_length drops the row"]
    return "\n".join(lines)


def findings_rows(stats: dict, limit: int = 200) -> list[list]:
    return [[Path(p.file).name, p.row, f"{p.field}: {p.message}"] for p in stats["truncated"][:limit]]


def statistics(source: str, column_map: str, tokenizer, max_length: int) -> dict:
    """The slow step for preference data: every row tokenized, per side."""
    stats = pairs.statistics(load(source, column_map), tokenizer, max_length)
    return {"stats": stats_markdown(stats), "findings": findings_rows(stats), "histogram": gr.update(visible=False),
            "suggested": None, "use_btn": gr.update(visible=False)}


def pair_view(source: str, column_map: str, number, tokenizer, max_length: int) -> dict:
    """One pair side by side: the prompt's tokens (context), then each answer's tokens (scored, or cut)."""
    loaded = load(source, column_map)
    number = picked_number(number, "pair", loaded.rows_valid)
    row, (file, line) = loaded.rows[number - 1], loaded.locations[number - 1]
    views = pairs.pair_token_views(tokenizer, row, max_length)
    if "completion" in row:
        side = "chosen" if row["label"] else "rejected"
        views = {"prompt": views["prompt"], side: views["completion"]}
        kind = f"a {'desirable' if row['label'] else 'undesirable'} answer (KTO label {str(row['label']).lower()})"
    else:
        kind = "a pair"
    counts = {s: sum(1 for _, label in views.get(s, []) if label == "scored") for s in ("chosen", "rejected")}
    note = (f"**# {number}** — {Path(file).name} row {line}, {kind}. Scored tokens: chosen **{counts['chosen']}**, "
            f"rejected **{counts['rejected']}** (green; red: beyond max_length {max_length}, cut).")
    return {"pair_row": number, "pair_note": note, "pair_prompt": views["prompt"],
            "pair_chosen": views.get("chosen", []), "pair_rejected": views.get("rejected", [])}


def picked_pair(evt: gr.SelectData) -> int:
    """A click in the list of pairs: that pair's number."""
    return int(evt.row_value[0])


def layout() -> dict:
    """The pair view (hidden until a preference source is inspected)."""
    with gr.Column(visible=False, elem_id="pair-view") as pair_box:
        pair_list = gr.Dataframe(headers=LIST_HEADERS, label="Pairs — click one to see it side by side", wrap=True,
                                 column_widths=["6%", "24%", "30%", "30%", "10%"], interactive=False, max_height=360)
        gr.Markdown("**One pair as the model sees it** — grey: the prompt (context, not scored); green: the answer's "
                    "tokens, whose log-probabilities make the implicit reward; red: cut by max_length.")
        with gr.Row():
            pair_row = gr.Number(value=1, label="Pair (# in the list)", precision=0, minimum=1, scale=1)
            pair_btn = gr.Button("Show pair", scale=1)
        pair_note = gr.Markdown("")
        with gr.Row(equal_height=False):
            pair_prompt = gr.HighlightedText(label="Prompt", color_map=SIDE_COLORS, combine_adjacent=False)
            pair_chosen = gr.HighlightedText(label="Chosen", color_map=SIDE_COLORS, combine_adjacent=False)
            pair_rejected = gr.HighlightedText(label="Rejected", color_map=SIDE_COLORS, combine_adjacent=False)
    return dict(pair_box=pair_box, pair_list=pair_list, pair_row=pair_row, pair_btn=pair_btn, pair_note=pair_note,
                pair_prompt=pair_prompt, pair_chosen=pair_chosen, pair_rejected=pair_rejected)

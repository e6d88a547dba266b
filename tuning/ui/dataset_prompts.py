"""The Dataset tab's view of GRPO prompt data, read exactly as the trainer reads it (tuning/data/prompts.py):
the prompts listed with the value of every column the chosen rewards read, which rewards read which
column, every row left out by file and row number (a row missing a column a reward reads is one), and
the prompts' token lengths.

A source shows this way when it is the bundled sums (`demo-arithmetic`, read with the `answer` reward
unless other rewards are typed) or when the person types rewards in the tab's *Rewards (GRPO)* box.
The Dataset tab lays these parts out and wires them; the handlers here are plain functions of the
page's values returning dicts keyed by output name."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import gradio as gr

from tuning.config import DEMO_DATASET, REWARD_COLUMNS, RewardSpec, parse_rewards
from tuning.data import prompts
from tuning.data.pairs import DEMO_PREFERENCE
from tuning.data.formats import DataError, Problem
from tuning.ui.common import source_mtime

DEMO_REWARDS = "answer"  # what the bundled sums are read with: their answer column is what the answer reward checks
LIST_ROWS = 500          # prompts listed in the table
STATS_ROWS = 2000        # prompts tokenized for the lengths (a CPU does a few thousand a second)
PROBLEM_ROWS = 200       # problems listed, as the other views list them
EXAMPLES = 3             # problem lines quoted in the summary
OTHER_DEMOS = {DEMO_DATASET: "the bundled conversations for SFT", DEMO_PREFERENCE: "the bundled pairs for DPO or ORPO"}


def rewards_for(source: str, rewards: str = "") -> str:
    """The rewards a source is read with: those typed in the box, else `answer` for the bundled sums,
    else none (the source is not read as GRPO prompts)."""
    typed = (rewards or "").strip()
    return typed or (DEMO_REWARDS if source == prompts.DEMO_ARITHMETIC else "")


def is_prompts(source: str, rewards: str = "") -> bool:
    """Whether the Dataset tab shows this source as GRPO prompts."""
    return bool(source) and bool(rewards_for(source, rewards))


def reward_specs(rewards: str) -> list[RewardSpec]:
    """The built-in rewards of the box, checked as the Train form checks them (a ConfigError naming the
    entry otherwise). A reward_file's own functions are not known here: the run checks their columns."""
    return parse_rewards(rewards)


def columns_read(specs: list[RewardSpec]) -> dict[str, list[str]]:
    """Each column the rewards read, with the rewards that read it, in the order they are named."""
    readers: dict[str, list[str]] = {}
    for spec in specs:
        for column in REWARD_COLUMNS.get(spec.name, ()):
            if spec.name not in readers.setdefault(column, []):
                readers[column].append(spec.name)
    return readers


@lru_cache(maxsize=4)
def _load(source: str, columns: tuple[str, ...], column_map: str, mtime: float) -> prompts.PromptData:
    return prompts.load(source, columns, column_map)


def load(source: str, rewards: str, column_map: str = "") -> prompts.PromptData:
    """The prompt rows of a source as GRPO reads them with these rewards, read once per file version
    (the tab's steps share it)."""
    if source in OTHER_DEMOS:  # the trainer would stop on it too: GRPO reads no other bundled set by name
        raise DataError(f"rewards: {source} is {OTHER_DEMOS[source]}; for GRPO pick demo-arithmetic (path or Hub "
                        "id) or your own prompts, or clear the Rewards (GRPO) box")
    columns = tuple(columns_read(reward_specs(rewards)))
    return _load(source, columns, (column_map or "").strip(), source_mtime(source))


def rewards_words(specs: list[RewardSpec], readers: dict[str, list[str]]) -> str:
    """e.g. "rewards answer, length:1-8 read column answer"."""
    names = ", ".join(s.name + (f":{s.arg}" if s.arg else "") for s in specs)
    many = len(specs) != 1
    head = f"reward{'s' * many} {names} read{'' if many else 's'}"
    if not readers:
        return f"{head} no column ({'they score' if many else 'it scores'} the answer alone)"
    return f"{head} column{'s' * (len(readers) != 1)} {', '.join(readers)}"


def missing_column(problem: Problem, readers: dict[str, list[str]]) -> bool:
    return problem.field in readers and problem.message.startswith("missing")


def problem_words(problem: Problem, readers: dict[str, list[str]]) -> str:
    """What is wrong with a row: "no 'answer' (the answer reward reads it)" for a column a reward reads."""
    if not missing_column(problem, readers):
        return problem.message
    names = readers[problem.field]
    return f"no '{problem.field}' (the {', '.join(names)} reward{'s read' if len(names) > 1 else ' reads'} it)"


def problem_line(problem: Problem, readers: dict[str, list[str]]) -> str:
    """One problem by file and row: "train.jsonl row 7: no 'answer' (the answer reward reads it)"."""
    where = Path(problem.file).name + (f" row {problem.row}" if problem.row else "")
    field = f"{problem.field}: " if problem.field and not missing_column(problem, readers) else ""
    return f"{where}: {field}{problem_words(problem, readers)}"


def problem_rows(loaded: prompts.PromptData, readers: dict[str, list[str]]) -> list[list]:
    """The problems table (file, row, field, problem), as every other view lists them."""
    return [[p.file, p.row, p.field, problem_words(p, readers)] for p in loaded.problems[:PROBLEM_ROWS]]


def prompt_text(prompt: list[dict]) -> str:
    """The prompt's last user turn: what the model answers (earlier turns are context)."""
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""


def table(loaded: prompts.PromptData, limit: int = LIST_ROWS) -> tuple[list[str], list[list]]:
    """(headers, rows): #, the prompt, each column the rewards read, file:row."""
    headers = ["#", "prompt (last user turn)", *loaded.columns, "file:row"]
    rows = [[number, prompt_text(row["prompt"]), *(str(row.get(c, "")) for c in loaded.columns),
             f"{Path(file).name}:{line}"]
            for number, (row, (file, line)) in enumerate(zip(loaded.rows[:limit], loaded.locations), start=1)]
    return headers, rows


def summary_markdown(loaded: prompts.PromptData, specs: list[RewardSpec], rewards: str) -> str:
    readers = columns_read(specs)
    head = (f"**{loaded.source}** — GRPO prompts: **{loaded.rows_valid:,}** prompts valid of {loaded.rows_total:,} "
            f"rows; {rewards_words(specs, readers)}")
    count = len(loaded.problems)
    if count:
        quoted = "; ".join(problem_line(p, readers) for p in loaded.problems[:EXAMPLES])
        head += (f"; **{count} problem{'s' * (count != 1)}** (those rows are left out, see below), e.g. {quoted}"
                 + ("…" if count > EXAMPLES else ""))
    else:
        head += "; no problems found"
    return (head + f".  \nTrain on it with the Train form's **objective** set to **grpo** and **rewards** "
            f"`{rewards.strip()}`.")


def inspect(source: str, rewards: str, column_map: str = "") -> dict:
    """The quick step for GRPO prompts: the summary, the prompts with the columns the rewards read, the
    problems by row. A rewards string that does not read raises a ConfigError naming the entry."""
    specs = reward_specs(rewards)
    loaded = load(source, rewards, column_map)
    headers, rows = table(loaded)
    shown = "" if loaded.rows_valid <= LIST_ROWS else f" (the first {LIST_ROWS} of {loaded.rows_valid:,})"
    return {"summary": summary_markdown(loaded, specs, rewards),
            "problems": problem_rows(loaded, columns_read(specs)),
            "prompt_list": gr.update(value={"headers": headers, "data": rows},
                                     label=f"Prompts{shown}, with the columns the rewards read"),
            "stats": "Counting tokens…"}


def _percentiles(values: list[int]) -> dict[str, int]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]  # noqa: E731
    return {"min": ordered[0], "median": pick(0.5), "p95": pick(0.95), "max": ordered[-1]}


def prompt_lengths(loaded: prompts.PromptData, tokenizer, limit: int = STATS_ROWS) -> list[int]:
    """Tokens of each prompt as the trainer feeds it: the chat template up to the assistant's opening."""
    out = []
    for row in loaded.rows[:limit]:
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        out.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def stats_markdown(lengths: list[int], total: int) -> str:
    if not lengths:
        return "**Prompt lengths**: no valid prompt to count."
    f = _percentiles(lengths)
    which = f"all {total:,}" if len(lengths) == total else f"the first {len(lengths):,} of {total:,}"
    return (f"**Prompt lengths** ({which} prompts, with the chat template): min **{f['min']}**, median "
            f"**{f['median']}**, p95 **{f['p95']}**, max **{f['max']}** tokens.  \nGRPO cuts no prompt and trains on "
            "no reference answer: each step samples **num_generations** answers of up to **max_completion_length** "
            "tokens per prompt (the Train form), so max_length does not apply here.")


def statistics(state: dict, tokenizer) -> dict:
    """The slow step for GRPO prompts: their token lengths (the statistics' outputs, keyed by name)."""
    loaded = load(state["source"], state["rewards"], state.get("column_map", ""))
    return {"stats": stats_markdown(prompt_lengths(loaded, tokenizer), loaded.rows_valid), "findings": [],
            "histogram": gr.update(visible=False), "suggested": None, "use_btn": gr.update(visible=False)}


def rewards_box() -> gr.Textbox:
    """The control that reads a source as GRPO prompts: empty for SFT and preference data."""
    return gr.Textbox(label="Rewards (GRPO)", placeholder="answer,length:1-8*0.2", scale=2,
                      info="Built-in rewards, as the Train form takes them: filled, the source is read as GRPO "
                           "prompts and checked for the columns they read (demo-arithmetic: answer when empty); "
                           "Enter reloads")


def layout() -> dict:
    """The prompt view (hidden until a source is read as GRPO prompts)."""
    with gr.Column(visible=False, elem_id="prompt-view") as prompt_box:
        prompt_list = gr.Dataframe(headers=["#", "prompt (last user turn)", "file:row"], wrap=True,
                                   label="Prompts, with the columns the rewards read", interactive=False,
                                   max_height=420)
    return dict(prompt_box=prompt_box, prompt_list=prompt_list)

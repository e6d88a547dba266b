"""The blind A/B widget, shared by the Playground and the Evaluation tab: one builder and one pair of
handlers (`show` a pair, `cast` a vote) over tuning/evaluation/ab.py.

The pair itself (which answer is the tuned one) lives in the session's gr.State, on the server;
the page receives only `pair.shown()` (the prompt and the two texts as A and B), and a vote sends
nothing but the choice its button stands for. So a vote can only land on answers the models
really wrote, in the order really shown. Each tab decides where a pair comes from (the
Playground's last answer, a stored evaluation answer, a prompt of your own) and what follows a
vote; both go through `show` and `cast`. Handlers return dicts keyed by the names of ABParts'
fields (common.keyed matches them to the components).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from tuning.evaluation import ab
from tuning import runs
from tuning.ui.common import AppContext, bind, guarded, keyed

ASK = "Which answer is better? The order is random; the vote is saved with the run."
SHOWN = ("pair", "pair_prompt", "answer_a", "answer_b", "ab_note", "ab_tally")  # what show/cast may update


@dataclass(frozen=True)
class ABParts:
    pair: gr.State  # the ab.BlindPair on screen (server-side), None while no vote is open
    pair_prompt: gr.Markdown
    answer_a: gr.Textbox
    answer_b: gr.Textbox
    vote_a: gr.Button
    vote_b: gr.Button
    vote_tie: gr.Button
    ab_note: gr.Markdown  # the question while a vote is open; afterwards which was which
    ab_tally: gr.Markdown  # the run's votes so far

    def components(self) -> dict:
        return dict(vars(self))


def build(lines: int = 6) -> ABParts:
    """The widget's components, laid out where it is called."""
    pair = gr.State(None)
    prompt = gr.Markdown()
    with gr.Row():
        a = gr.Textbox(label="A", lines=lines, interactive=False)
        b = gr.Textbox(label="B", lines=lines, interactive=False)
    with gr.Row():
        vote_a, vote_tie, vote_b = gr.Button("A is better"), gr.Button("Tie"), gr.Button("B is better")
    note, tally = gr.Markdown(), gr.Markdown()
    return ABParts(pair, prompt, a, b, vote_a, vote_b, vote_tie, note, tally)


def run_path(ctx: AppContext, run_id: str | None) -> Path:
    """The picked run's folder, for handlers a person triggers (a button); handlers that fire on page
    load or on picker change check `run_id` first and show an empty state instead."""
    if not run_id:
        raise runs.RunError("pick a run first")
    return runs.existing_run_dir(ctx.workspace, run_id)


def tally(ctx: AppContext, run_id: str | None) -> str:
    """The run's votes so far, as the widget shows them."""
    return _tally_text(runs.ab_summary(run_path(ctx, run_id))) if run_id else ""


def _tally_text(summary: dict) -> str:
    return f"Votes so far: {summary['text']}."


# --- the pair of handlers both tabs use ------------------------------------------------------------

def show(pair: ab.BlindPair) -> dict:
    """Open a vote on `pair`: the pair goes to the server-side state, the page gets `pair.shown()`."""
    shown = pair.shown()
    return {"pair": pair, "pair_prompt": f"**Prompt:** {shown['prompt']}", "answer_a": shown["a"],
            "answer_b": shown["b"], "ab_note": ASK}


def closed(note: str = "") -> dict:
    """No vote open: the state and the A/B texts cleared."""
    return {"pair": None, "pair_prompt": "", "answer_a": "", "answer_b": "", "ab_note": note}


def cast(ctx: AppContext, run_id: str | None, pair: ab.BlindPair | None, choice: str) -> dict:
    """Record `choice` ("A", "B" or "tie") on the pair the server holds, then say which was which.
    The answers come from that pair; nothing from the page but the choice is used."""
    summary = ab.vote(run_path(ctx, run_id), pair, choice)
    return {"pair": None, "ab_note": reveal(pair, choice), "ab_tally": _tally_text(summary)}


def reveal(pair: ab.BlindPair, choice: str) -> str:
    """After the vote, and only then: which answer was which (the two texts stay on screen)."""
    other = "base" if pair.a_is == "tuned" else "tuned"
    picked = {"A": f"A (the {pair.a_is} model)", "B": f"B (the {other} model)", "tie": "a tie"}[choice]
    return f"Saved: you chose {picked}. In that pair A was the **{pair.a_is}** model, B the {other}."


def wire_votes(components: dict, handler, names, api_names: bool = False) -> None:
    """The three vote buttons: `handler(run_id, pair, choice=...)`, the choice fixed by the button.
    Its inputs are the tab's run picker and the server-side pair, never a text from the page."""
    c = components
    for button, choice in ((c["vote_a"], "A"), (c["vote_b"], "B"), (c["vote_tie"], "tie")):
        event = {"api_name": f"ab_vote_{choice.lower()}"} if api_names else {"api_visibility": "private"}
        button.click(guarded(keyed(bind(handler, choice=choice), c)), [c["run"], c["pair"]],
                     [c[n] for n in names], **event)

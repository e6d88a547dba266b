"""Evaluation tab: did the fine-tune work, and what did it cost? Held-out loss and perplexity,
the task checks (base vs tuned), the probe gallery across checkpoints, the hardest examples (each
row's own loss, tuning/evaluation/row_losses.py; a click opens the row in the Dataset tab), a held-out row token by
token (tuning/infer/token_diff.py, the Playground's heatmap), standard benchmarks base vs tuned
(lm-eval, tuning/ui/benchmarks_view.py), and a blind A/B vote (the widget shared with the Playground,
tuning/ui/ab_view.py).

Everything shown is read through tuning/runs/; only "Evaluate", a held-out row's heatmap, a benchmark
run and an A/B pair for a prompt of your own load a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from tuning.evaluation import ab
from tuning import data as data_mod
from tuning.data import general
from tuning import runs
from tuning.evaluation import headlines
from tuning.ui import ab_view, access, benchmarks_view
from tuning.ui.ab_view import run_path
from tuning.ui.access import public
from tuning.ui.common import AppContext, bind, boxed, check_rows, error_box, guarded, keyed, loss_rows, no_run_text

LOSS_HEADERS = ["metric", "base", "tuned", "change"]
CHECK_HEADERS = ["check", "questions", "base passed", "base %", "tuned passed", "tuned %", "change (points)"]
GALLERY_HEADERS = ["prompt", "base", "tuned at this checkpoint", "changed since the previous one"]
# Fixed widths, as in the Runs table: the last column is empty at the first checkpoint, and an empty
# column shrinks until its header wraps a letter a line and pushes every row out of view.
GALLERY_WIDTHS = ["20%", "33%", "33%", "14%"]


@dataclass(frozen=True)
class EvaluationParts:
    """What app.py wires across tabs."""
    run: gr.Dropdown
    row_request: gr.State  # {source, file, row} of an example picked in the hardest lists: the Dataset tab opens it


# --- plain handlers ------------------------------------------------------------------------------

def run_choices(ctx: AppContext) -> list[str]:
    """Runs that have something to evaluate: a final adapter, a complete checkpoint, or stored results."""
    return [s.run_id for s in runs.list_runs(ctx.workspace)
            if runs.has_final_adapter(s.path) or runs.complete_checkpoints(s.path)
            or runs.read_evaluation(s.path, answers=False) is not None]


def newest_evaluated(ctx: AppContext, choices: list[str]) -> str | None:
    """The run the tab opens on: the newest with a stored evaluation (a newer run still training has
    none to show yet), else the newest it offers."""
    found = [r for r in choices if runs.read_evaluation(runs.runs_dir(ctx.workspace) / r, answers=False)
             is not None]
    return (found or choices or [None])[0]


PICK_RUN = ("Pick a run above: runs are listed here once they have an adapter, a checkpoint or an evaluation "
            "(a run in training gets its first at its first checkpoint; press **Refresh list**).")
NO_EVALUATION = ("No evaluation yet for this run: it is written at the end of training, or press **Evaluate** "
                 "to compute it now (loads the model).")


def verdict(result: dict | None) -> str:
    """A few lines of Markdown: the answer to "did it work, and what did it cost?"."""
    if not result:
        return NO_EVALUATION
    lines = [f"**Step {result.get('step')}**, {result.get('eval_rows')} held-out examples: "
             f"{headlines.headline(result)}."]
    if not runs.checks_done(result):
        lines.append("Task checks were not computed (the run was stopped). Press **Evaluate** to compute them.")
    elif not result.get("checks"):
        lines.append("No task checks: no held-out row carries an `expect` list of words the answer must contain.")
    seconds = result.get("seconds") or {}
    if seconds.get("total") is not None:
        lines.append(f"Computed in {seconds['total']:.0f} s ({result.get('method')}, "
                     f"greedy, at most {result.get('max_new_tokens')} new tokens).")
    return "  \n".join(lines)


def gallery(ctx: AppContext, run_id: str, index) -> tuple[str, list[list]]:
    """(label, rows): the probe answers at the index-th recorded checkpoint (0 = the first), with a
    mark where the tuned answer changed since the checkpoint before."""
    if not run_id:
        return "", []
    history = runs.probe_history(run_path(ctx, run_id))
    if not history:
        return "No probe answers recorded for this run yet (they appear at each checkpoint).", []
    i = min(max(int(index or 0), 0), len(history) - 1)
    entry = history[i]
    before = {a["prompt"]: a.get("tuned") for a in history[i - 1]["answers"]} if i > 0 else {}
    rows = [[a["prompt"], a.get("base", ""), a.get("tuned", ""),
             "" if i == 0 or a["prompt"] not in before else ("changed" if before[a["prompt"]] != a.get("tuned")
                                                              else "same")]
            for a in entry["answers"]]
    return f"**{i + 1} of {len(history)}**: step {entry['step']} ({entry.get('checkpoint')})", rows


def gallery_shown(ctx: AppContext, run_id: str | None, index) -> dict:
    """The slider let go: the gallery at that checkpoint, by output name."""
    label, rows = gallery(ctx, run_id, index)
    return {"step_label": label, "probes": rows}


def nothing_shown(ctx: AppContext) -> dict:
    """Every output of SHOWN with no run picked: what to do next, and empty tables."""
    return {"verdict": no_run_text(ctx, PICK_RUN), "losses": [], "checks": [],
            "step": gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False), "step_label": "",
            "probes": [], **ab_view.closed(), "ab_tally": "", "split": "training rows", "hardest": [], "went_up": [],
            "examples_note": "", "final_choice": gr.update(choices=["final"], value="final"), "choice_note": "",
            **benchmarks_view.empty()}


def load_run(ctx: AppContext, run_id: str | None) -> dict:
    """Stored results only (no model): verdict, tables, the gallery at its newest record, the votes.
    No run picked: the empty state of each."""
    if not run_id:
        return nothing_shown(ctx)
    path = run_path(ctx, run_id)
    result = runs.read_evaluation(path)
    last = max(len(runs.probe_history(path)) - 1, 0)
    label, rows = gallery(ctx, run_id, last)
    return {"verdict": verdict(result), "losses": loss_rows(result), "checks": check_rows(result),
            # gr.Slider needs maximum > minimum; with one record the slider is simply locked.
            "step": gr.Slider(minimum=0, maximum=max(last, 1), value=last, step=1, interactive=last > 0),
            "step_label": label, "probes": rows, **ab_view.closed(), "ab_tally": ab_view.tally(ctx, run_id),
            "split": "training rows", **examples(ctx, run_id), **checkpoint_options(ctx, run_id),
            **benchmarks_view.stored(ctx, run_id)}


def evaluate_run(ctx: AppContext, run_id: str, recompute: bool) -> dict:
    """Compute the run's evaluation when it is missing or incomplete (or recompute is ticked), then
    show it. Slow: it loads the base model and generates every held-out answer twice."""
    from tuning.evaluation import evaluate

    evaluate.evaluate_run(run_path(ctx, run_id), ctx.workspace, recompute=bool(recompute))
    return load_run(ctx, run_id)


def fresh_pair(ctx: AppContext, run_id: str, prompt: str) -> ab.BlindPair:
    """Base and tuned answer `prompt` now (greedy, the run's evaluation length), in random order."""
    from tuning.infer import playground

    path = run_path(ctx, run_id)
    cfg = runs.read_config(path)
    comparer = playground.comparer_for_run(path, ctx.workspace)
    settings = playground.GenerationSettings(max_new_tokens=cfg.eval_max_new_tokens)
    base, tuned = comparer.generate([prompt], runs.current_adapter(path), None, settings)[0]
    return ab.blind(path, prompt, base, tuned)


def ab_next(ctx: AppContext, run_id: str, prompt: str = "", rng=None) -> dict:
    """A blind pair: a fresh one for your own prompt, else a stored one (unvoted prompts first), shown
    as A and B with nothing saying which is which until the vote."""
    if not run_id:
        return ab_view.closed("Pick a run above first; its stored answers (or your own prompt) make the pairs.")
    path = run_path(ctx, run_id)
    prompt = (prompt or "").strip()
    return ab_view.show(fresh_pair(ctx, run_id, prompt) if prompt else ab.next_stored_pair(path, rng))


def ab_vote(ctx: AppContext, run_id: str, pair: ab.BlindPair | None, choice: str) -> dict:
    """Save the vote and reveal which answer was which; the voted pair stays on screen (Next pair
    brings another, unvoted prompts first)."""
    voted = ab_view.cast(ctx, run_id, pair, choice)
    return {**voted, "ab_note": voted["ab_note"] + " **Next pair** brings another."}


# --- the hardest examples (tuning/evaluation/row_losses.py) -----------------------------------------------------

SPLITS = {"training rows": "train", "held-out rows": "heldout"}
EXAMPLE_HEADERS = ["file", "row", "loss", "typical loss", "above typical", "first loss", "change", "measured"]
EXAMPLE_WIDTHS = ["17%", "8%", "10%", "12%", "13%", "11%", "13%", "16%"]
EXAMPLES_MIN_PX = 600


def example_rows(found: list[dict]) -> list[list]:
    return [[r["file"], r["row"], round(r["loss"], 3), round(r["typical"], 3), round(r["excess"], 3),
             round(r["first"], 3), round(r["change"], 3), r["seen"]] for r in found]


def examples(ctx: AppContext, run_id: str, split_label: str = "training rows") -> dict:
    """The rows the model fits worst and the rows whose loss went up, for one split."""
    from tuning.evaluation import row_losses

    if not run_id:
        return {"hardest": [], "went_up": [], "examples_note": ""}
    path, split = run_path(ctx, run_id), SPLITS.get(split_label, "train")
    hardest, risen = row_losses.hardest(path, split), row_losses.went_up(path, split)
    if not hardest:
        note = ("No per-example losses recorded for this run (they are recorded while it trains, unless "
                "packing is on; held-out ones at each evaluation).")
    else:
        note = (f"{len(row_losses.rows(path, split))} {split_label} measured. *Loss*: when last measured; *typical*: "
                "the median of the rows measured around the same step; *first*: when first measured"
                + (" (the base model's, for held-out rows). " if split == "heldout" else ". ")
                + "Click a row to open it in the Dataset tab's token view.")
    return {"hardest": example_rows(hardest), "went_up": example_rows(risen), "examples_note": note}


def selected_row(evt: gr.SelectData) -> list:
    """The clicked row of a table, as its cells."""
    return list(evt.row_value)


def picked_example(ctx: AppContext, run_id: str, split_label: str, cells: list) -> dict:
    """A click in either list: the example's {source, file, row}, which app.py hands to the Dataset tab."""
    if not cells or len(cells) < 2:
        raise runs.RunError("pick a row of the list")
    file, row = cells[0], int(cells[1])
    if file == general.ROW_FILE:
        raise runs.RunError(f"general row {row} is one of the general questions the base answered itself "
                            "(tuning/demo_data/general.jsonl), mixed in by general_rows: it is not in your dataset")
    source = (runs.read_row_index(run_path(ctx, run_id)).get("sources") or {}).get(SPLITS.get(split_label, "train"))
    if not source:
        raise runs.RunError(f"run {run_id} does not say which data its rows came from")
    out = {"row_request": {"source": source, "file": file, "row": row}}
    if SPLITS.get(split_label) == "heldout":  # and the held-out row's number, for its token heatmap
        held = runs.read_row_index(run_path(ctx, run_id)).get("heldout") or []
        out.update({"heat_row": held.index([file, row]) + 1} if [file, row] in held else {})
    return out


def heldout_heatmap(ctx: AppContext, run_id: str, number) -> dict:
    """Held-out row `number` (1 = the first) token by token: its own answer and the tuned model's greedy
    answer coloured by how much more likely the tuned model finds each token than the base (one batch,
    tuning/infer/token_diff.py), the first token where the base's greedy answer differs marked."""
    from tuning.evaluation import evaluate
    from tuning.infer import playground, token_diff

    path = run_path(ctx, run_id)
    if not access.is_owner(ctx) and runs.summarize(path).status in runs.ACTIVE_STATUSES:
        access.require_owner(ctx)  # as the Playground: a visitor loads a model for finished runs only
    cfg = runs.read_config(path)
    rows = data_mod.scored(evaluate.heldout_rows(cfg))  # the held-out rows proper, not the added checks
    if not rows:
        raise runs.RunError(f"run {run_id} has no held-out rows (eval_split is 0 and no eval_dataset)")
    try:
        n = int(number)
    except (TypeError, ValueError):
        raise runs.RunError(f"held-out row: expected a number from 1 to {len(rows)}, got {number!r}") from None
    if not 1 <= n <= len(rows):
        raise runs.RunError(f"held-out row: {n} is outside 1..{len(rows)} (run {run_id} holds out {len(rows)})")
    conversation = rows[n - 1][0]
    if not token_diff.split_row(conversation)[0]:
        raise runs.RunError(f"held-out row {n} has no question before its answer: nothing to generate")
    with access.one_at_a_time(ctx):
        comparer = playground.comparer_for_run(path, ctx.workspace)
        with comparer.lock:
            name = comparer.attach(runs.current_adapter(path))
            found = token_diff.heldout_row(comparer.peft, comparer.tokenizer, conversation, name,
                                           cfg.eval_max_new_tokens)
    where = (runs.read_row_index(path).get("heldout") or [])[n - 1:n]
    origin = f" ({where[0][0]} row {where[0][1]})" if where and where[0][0] else ""
    question = next((m["content"] for m in reversed(found["prompt"]) if m["role"] == "user"), "")
    return {"heat_html": token_diff.row_html(found),
            "heat_note": f"**Held-out row {n} of {len(rows)}**{origin}: {question!r}. Its own answer: "
                         f"{token_diff.summary(found['scored'], None, greedy=False)} The greedy "
                         f"answers: {token_diff.summary(found['tuned_scored'], found['diverge_at'])}"}


def checkpoint_options(ctx: AppContext, run_id: str) -> dict:
    """The run's complete checkpoints and "final", the one in use selected."""
    if not run_id:
        return {"final_choice": gr.update(choices=["final"], value="final"), "choice_note": ""}
    path = run_path(ctx, run_id)
    names = ["final", *[c.name for c in runs.complete_checkpoints(path)]]
    chosen = runs.chosen_checkpoint(path) or "final"
    return {"final_choice": gr.update(choices=names, value=chosen if chosen in names else "final"),
            "choice_note": f"In use as the final adapter: **{chosen}**."}


def choose_final(ctx: AppContext, run_id: str, name: str) -> dict:
    """Use a complete checkpoint (seen to answer better in the probe gallery) as the run's final
    adapter: the Playground, the evaluation and the exports take it from now on; recorded in events."""
    runs.choose_checkpoint(run_path(ctx, run_id), name or "final")
    return {**checkpoint_options(ctx, run_id),
            "choice_note": f"**{name}** is now the final adapter of {run_id} (recorded in the run's events)."}


def refreshed(ctx: AppContext, run_id: str | None):
    """The picker re-listed, `run_id` kept; with none picked, the newest evaluated run."""
    choices = run_choices(ctx)
    return gr.update(choices=choices, value=run_id or newest_evaluated(ctx, choices))


def reload_shown(ctx: AppContext, run_id: str | None) -> dict:
    """What "Refresh list" shows after the list: the picked run read again. Picking the run that is
    already picked fires no change, so without this a run picked while it trained kept saying "no
    evaluation yet" after its evaluation was written. Nothing picked: nothing changes."""
    return load_run(ctx, run_id) if run_id else {}


# --- the page ------------------------------------------------------------------------------------

SHOWN = ("verdict", "losses", "checks", "step", "step_label", "probes", *ab_view.SHOWN,  # picking a run
         "split", "hardest", "went_up", "examples_note", "final_choice", "choice_note", *benchmarks_view.SHOWN)


def layout(ctx: AppContext) -> dict:
    """The tab's components by name (the names its handlers return)."""
    gr.Markdown("Did the fine-tune work, and what did it cost? Base and tuned on held-out data the model did "
                "not train on. The base is the run's own base model with the adapter switched off (4-bit for "
                "QLoRA runs), so both columns use the same weights, prompts and greedy settings.")
    c = {}
    with gr.Row():
        # Custom values: the tab's named API (evaluate_run, eval_load, ...) takes any run id a client names,
        # also one made after this page loaded; the handlers check it against the workspace.
        c["run"] = gr.Dropdown(label="Run", choices=run_choices(ctx), value=None, interactive=True, scale=3,
                               allow_custom_value=True)
        c["refresh"] = gr.Button("Refresh list", scale=1)
        c["recompute"] = gr.Checkbox(label="Recompute", value=False, scale=1,
                                     info="compute again even if results are stored")
        c["go"] = gr.Button("Evaluate", variant="primary", scale=1)
    c["error"] = error_box()
    c["verdict"] = gr.Markdown(no_run_text(ctx, PICK_RUN))
    with gr.Row():
        c["losses"] = gr.Dataframe(headers=LOSS_HEADERS, label="Held-out loss and perplexity (lower is better)",
                                   interactive=False)
        c["checks"] = gr.Dataframe(headers=CHECK_HEADERS, interactive=False, min_width=560,
                                   label="Task checks (the answer contains the expected words; for GRPO, "
                                         "the answer reward's rule)")
    gr.Markdown("### Probe gallery\nThe run's probe prompts, answered at every checkpoint and at the end.")
    c["step"] = gr.Slider(minimum=0, maximum=1, value=0, step=1, label="Checkpoint (slide to step through)",
                          interactive=False)
    c["step_label"] = gr.Markdown()
    c["probes"] = gr.Dataframe(headers=GALLERY_HEADERS, interactive=False, wrap=True, column_widths=GALLERY_WIDTHS)
    with gr.Row():
        c["final_choice"] = gr.Dropdown(["final"], value="final", scale=2, label="Checkpoint to use as the final adapter")
        c["choose"] = gr.Button("Use this checkpoint as the final adapter", scale=1)
    c["choice_note"] = gr.Markdown()
    examples_layout(c)
    c.update(benchmarks_view.layout(ctx))
    gr.Markdown("### Blind A/B\nTwo answers to the same prompt, base and tuned in random order. Pick the better "
                "one; votes are saved with the run.")
    with gr.Row():
        c["own_prompt"] = gr.Textbox(label="Your own prompt (optional; empty = a stored held-out or probe prompt)",
                                     scale=4)
        c["next_pair"] = gr.Button("Next pair", scale=1)
    c.update(ab_view.build().components())
    return c


def examples_layout(c: dict) -> None:
    gr.Markdown("### Hardest examples\nEach example's own loss, recorded while the run trained (no extra pass): "
                "the rows the model cannot fit and the rows it got worse at are where mislabelled answers, "
                "conflicting duplicates, answers in another language and truncated rows show up.")
    c["split"] = gr.Radio(list(SPLITS), value="training rows", label="Rows")
    c["examples_note"] = gr.Markdown()
    with gr.Row():
        # Side by side while each is at least EXAMPLES_MIN_PX wide, one above the other in a narrower
        # window: eight columns in half of 800 pixels broke "file" and "row" a letter a line.
        c["hardest"] = gr.Dataframe(headers=EXAMPLE_HEADERS, interactive=False, wrap=True, max_height=360,
                                    column_widths=EXAMPLE_WIDTHS, min_width=EXAMPLES_MIN_PX,
                                    label="Fits worst (furthest above the typical loss first)", elem_id="hardest")
        c["went_up"] = gr.Dataframe(headers=EXAMPLE_HEADERS, interactive=False, wrap=True, max_height=360,
                                    column_widths=EXAMPLE_WIDTHS, min_width=EXAMPLES_MIN_PX,
                                    label="Loss went up (largest rise first)", elem_id="went-up")
    c["row_request"], c["picked_cells"] = gr.State(None), gr.State(None)
    gr.Markdown("### A held-out row, token by token\nThe row's own answer and the tuned model's greedy answer "
                "to its prompt, each token coloured by how much more (green) or less (red) likely the tuned "
                "model finds it than the base; ▼ marks where the base's greedy answer first differs. A click "
                "on a held-out row in the lists above puts its number here. Loads the model.")
    with gr.Row():
        c["heat_row"] = gr.Number(value=1, precision=0, minimum=1, label="Held-out row (1 = the first)", scale=1)
        c["heat_btn"] = gr.Button("Colour this held-out row token by token", scale=2)
    c["heat_note"] = gr.Markdown()
    c["heat_html"] = gr.HTML(elem_id="heldout-heatmap")


def wire(ctx: AppContext, c: dict) -> None:
    """Each handler through the tab's error box (common.boxed): what a person asked for and could not
    get is said there; an output nobody asked for yet shows its empty state, never an error."""
    def event(fn, clears: dict | None = None):
        return keyed(boxed(bind(fn, ctx), clears), c)

    box = c["error"]
    shown = [c[n] for n in SHOWN]
    listed = [c["hardest"], c["went_up"], c["examples_note"]]
    c["split"].change(public(event(examples, {"hardest": [], "went_up": [], "examples_note": ""})),
                      [c["run"], c["split"]], [*listed, box], api_name="hardest_examples")
    c["choose"].click(event(choose_final), [c["run"], c["final_choice"]],
                      [c["final_choice"], c["choice_note"], box], api_name="choose_checkpoint")
    for table in (c["hardest"], c["went_up"]):
        table.select(public(selected_row), None, c["picked_cells"], api_visibility="private") \
            .success(public(event(picked_example)), [c["run"], c["split"], c["picked_cells"]],
                     [c["row_request"], c["heat_row"], box], api_visibility="private")
    c["heat_btn"].click(public(event(heldout_heatmap, {"heat_html": "", "heat_note": ""})), [c["run"], c["heat_row"]],
                        [c["heat_html"], c["heat_note"], box], api_name="heldout_heatmap", concurrency_limit=1,
                        concurrency_id="generate")
    # Viewing evaluations is public on a Space; computing one and voting are not. A run that cannot be
    # read (a custom id, a deleted folder) empties everything the previous run left on screen.
    c["refresh"].click(public(guarded(bind(refreshed, ctx))), c["run"], c["run"], api_name="eval_runs") \
        .then(public(event(reload_shown, lambda: nothing_shown(ctx))), c["run"], [*shown, box],
              api_visibility="private")
    c["run"].change(public(event(load_run, lambda: nothing_shown(ctx))), c["run"], [*shown, box], api_name="eval_load")
    c["go"].click(event(evaluate_run), [c["run"], c["recompute"]], [*shown, box], api_name="evaluate_run")
    c["step"].release(public(event(gallery_shown)), [c["run"], c["step"]], [c["step_label"], c["probes"], box],
                      api_name="probe_gallery")
    pair_shown = [c[n] for n in ab_view.SHOWN]
    c["next_pair"].click(guarded(keyed(bind(ab_next, ctx), c)), [c["run"], c["own_prompt"]], pair_shown,
                         api_name="ab_next")
    ab_view.wire_votes(c, bind(ab_vote, ctx), ab_view.SHOWN, api_names=True)
    benchmarks_view.wire(ctx, c, event)


def build(ctx: AppContext) -> EvaluationParts:
    components = layout(ctx)
    wire(ctx, components)
    return EvaluationParts(run=components["run"], row_request=components["row_request"])

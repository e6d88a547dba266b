"""Runs tab: every run in the workspace as one table (status, progress and base-vs-tuned numbers,
all read through tuning/runs/), open one in Live or the Playground (app.py wires those
buttons), download its adapter (the one zip tuning/ship/export.py builds), delete one after a
confirmation; compare two or more runs (tuning/evaluation/compare.py: loss curves overlaid by step and by
tokens seen, the config fields that differ, evaluations side by side); the seed groups (one
config on several seeds, each figure as mean ± spread: tuning/runs/seeds.py); and the queue of runs waiting for the machine (tuning/runs/runner.py), where one can be
removed before it starts."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from tuning.ship import export
from tuning import runs
from tuning.evaluation import headlines
from tuning.runs import runner
from tuning.ui import access
from tuning.ui.access import public
from tuning.ui.common import (AppContext, bind, boxed, clock, error_box, guarded, keyed, number, run_picker_update,
                              served_copy, when)

HEADERS = ["run", "name", "base model", "method", "objective", "status", "steps", "final loss", "eval loss",
           "base eval loss", "task checks", "duration", "created"]
# Fixed widths, each wide enough for its header's longest word at a 1280-pixel window (a header
# never breaks inside a word): an empty column (no task checks yet) otherwise shrinks until its
# header wraps a letter a line and the header pushes the rows out of view. The status column also
# holds "completed" on one line.
WIDTHS = ["11%", "6%", "10%", "6%", "8%", "8%", "6%", "6%", "6%", "6%", "12%", "8%", "7%"]
# The newest runs the table shows. The browser draws every row it is sent: on a loaded machine a
# Refresh of 500 wrapped rows took 2.3 s on the page (0.6 s with 2 runs) while its handler took 0.13 s
# (bench/many_runs.py); the filter reaches the others.
TABLE_ROWS = 100
FILTER_SHOWN = 60  # characters of the filter its label repeats (a pasted page of text stays one line)
SEED_HEADERS = ["config (its runs' name)", "seeds", "figure", "mean ± sd (min-max)"]
QUEUE_HEADERS = ["#", "queue id", "name", "base model", "dataset", "method", "learning rate", "max steps", "added",
                 "note"]


@dataclass(frozen=True)
class RunsParts:
    """What app.py wires across tabs."""
    run: gr.Dropdown
    open_live: gr.Button
    open_play: gr.Button
    listing: gr.Dataframe  # with run, cmp_runs and seed_spread: what `refreshed` fills (app.py's page load)
    cmp_runs: gr.Dropdown
    seed_spread: gr.Dataframe


def evaluation_cells(summary: runs.RunSummary) -> list[str]:
    """[eval loss, base eval loss, task checks] from the run's stored evaluation (end of run or a
    later one; its tuned loss, when present, was measured on the same rows as the base's). A damaged
    file leaves the cells empty rather than breaking the listing."""
    try:
        result = runs.read_evaluation(summary.path, answers=False) or {}
        pref = result.get("preference") or {}
        preference = (f"preference accuracy {pref['tuned_accuracy']:.0%} (base {pref['base_accuracy']:.0%})"
                      if pref.get("kind") == "pairs" else "")
        return [number(result.get("eval_loss", summary.eval_loss)), number(result.get("base_eval_loss")),
                "; ".join(t for t in (headlines.checks_text(result), preference) if t)]
    except (KeyError, TypeError, AttributeError):
        return [number(summary.eval_loss), "", ""]


def matching(summaries: list[runs.RunSummary], text: str) -> list[runs.RunSummary]:
    """The runs whose id, name, base model, method, objective or status hold every word of `text`
    (any case); all of them for an empty filter."""
    words = text.lower().split()
    if not words:
        return summaries

    def holds_every_word(s: runs.RunSummary) -> bool:
        cfg = s.config
        searched = " ".join(str(v) for v in (s.run_id, cfg.get("run_name", ""), cfg.get("base_model", ""),
                                             cfg.get("method", ""), cfg.get("objective", "sft"), s.status)).lower()
        return all(word in searched for word in words)

    return [s for s in summaries if holds_every_word(s)]


def row(s: runs.RunSummary) -> list:
    cfg = s.config
    return [s.run_id, cfg.get("run_name", ""), cfg.get("base_model", ""), cfg.get("method", ""),
            cfg.get("objective", "sft") + (f" from {cfg['init_from']}" if cfg.get("init_from") else ""),
            s.status, f"{s.step}/{s.max_steps}" if s.max_steps else str(s.step), number(s.loss),
            *evaluation_cells(s), clock(s.duration) if s.duration is not None else "", when(s.started)]


def table_label(text: str, found: int, total: int) -> str:
    """Says how many runs the table shows (`found` match the filter `text`, of `total`), and how to
    reach the others."""
    if text.strip():
        shown = f"the newest {TABLE_ROWS} of {found}" if found > TABLE_ROWS else str(found)
        said = text.strip() if len(text.strip()) <= FILTER_SHOWN else text.strip()[:FILTER_SHOWN] + "…"
        return f"Runs matching '{said}': {shown} (of {total} in the workspace)"
    if found > TABLE_ROWS:
        return f"Runs in the workspace: the newest {TABLE_ROWS} of {found} (type in the filter to find the others)"
    return "Runs in the workspace" if total else "No runs yet: start one in the Train tab"


def listing(ctx: AppContext, text: str = "") -> dict:
    """The table, the newest TABLE_ROWS runs that match the filter `text` (newest first), and its
    label, from one listing of the workspace."""
    summaries = runs.list_runs(ctx.workspace)
    found = matching(summaries, text or "")
    return gr.update(value=[row(s) for s in found[:TABLE_ROWS]],
                     label=table_label(text or "", len(found), len(summaries)))


def table(ctx: AppContext) -> list[list]:
    """The table's rows without a filter."""
    return listing(ctx)["value"]


def filtered(ctx: AppContext, text: str) -> dict:
    """Typing in the filter: the table shows the newest matching runs."""
    return {"listing": listing(ctx, text)}


REFRESHED = ("listing", "run", "cmp_runs", "seed_spread")


def refreshed(ctx: AppContext, run_id: str | None, text: str = "") -> dict:
    """Every output of REFRESHED re-read from one listing of the workspace: the table (filtered by
    `text`), the run picker, the compare picker and the seed groups."""
    with runs.one_listing():
        return {"listing": listing(ctx, text), "run": run_picker_update(ctx, run_id), "cmp_runs": compare_choices(ctx),
                "seed_spread": seed_table(ctx)}


def delete(ctx: AppContext, run_id: str, confirmed: bool) -> str:
    if not run_id:
        raise runs.RunError("pick a run first")
    if not confirmed:
        raise runs.RunError(f"tick 'yes, delete {run_id}' first: deleting removes its adapter and checkpoints")
    runner.delete(ctx.workspace, run_id)
    return f"Deleted {run_id}."


def do_delete(ctx: AppContext, run_id: str, confirmed: bool, text: str = "") -> dict:
    """The Delete button: the message, the confirmation unticked, the tab's listings without the run
    (the table still filtered by `text`)."""
    message = delete(ctx, run_id, confirmed)
    gr.Info(message)
    return {"message": message, "confirm": False, **refreshed(ctx, None, text)}


def download(ctx: AppContext, run_id: str) -> str:
    """The run's adapter zip (weights, config and model card, as the Export tab's), served from a
    copy Gradio may serve whatever the workspace."""
    if not run_id:
        raise runs.RunError("pick a run first")
    return served_copy(export.adapter_zip(runs.existing_run_dir(ctx.workspace, run_id), ctx.workspace))


ZIP_LABEL = "Download adapter"


def zip_shown(ctx: AppContext, run_id: str | None) -> dict:
    """The download button readied for the picked run (one click saves its adapter zip); disabled,
    saying why, while no run or a run without a final adapter is picked."""
    if not run_id:
        return {"zip": gr.update(label=ZIP_LABEL, value=None, interactive=False)}
    if not runs.has_final_adapter(runs.existing_run_dir(ctx.workspace, run_id)):
        return {"zip": gr.update(label=f"{ZIP_LABEL} (none yet)", value=None, interactive=False)}
    return {"zip": gr.update(label=ZIP_LABEL, value=download(ctx, run_id), interactive=True)}


def picked_for_owner(ctx: AppContext, run_id: str | None) -> dict:
    """A pick: for an owner the run goes on to the download (owner-only, wired on `owner_run`); a
    visitor to a Space is refused nothing they did not ask for."""
    return {"owner_run": run_id if access.is_owner(ctx) else None}


def queue_table(ctx: AppContext) -> list[list]:
    """The queued runs, the next to start first."""
    rows = []
    for entry in runner.queued(ctx.workspace):
        cfg = entry["config"]
        rows.append([entry["position"], entry["id"], cfg.get("run_name", ""), cfg.get("base_model", ""),
                     cfg.get("dataset", ""), cfg.get("method", ""), f"{cfg.get('learning_rate', 0):g}",
                     cfg.get("max_steps", ""), when(entry.get("added")), entry.get("note", "")])
    return rows


def queue_label(rows: int) -> str:
    """The queue table's label: who starts next, only when someone is waiting."""
    if not rows:
        return "Queued runs: none (the Train tab's Queue it adds a run that starts when the machine is free)"
    return f"Queued runs: {rows} (1 starts next)"


def queue_shown(ctx: AppContext, queue_id: str | None = None) -> dict:
    """The queue table, its label and the queued-run picker (`queue_id` kept while it waits)."""
    rows = queue_table(ctx)
    ids = [r[1] for r in rows]
    return {"queue": gr.update(value=rows, label=queue_label(len(rows))),
            "queued": gr.update(choices=ids, value=queue_id if queue_id in ids else None)}


def queue_refreshed(ctx: AppContext, queue_id: str | None = None) -> dict:
    """The queue re-read, after starting its next run if the machine is free (so a queue left behind
    by a trainer that was killed outright moves on)."""
    started = runner.start_next(ctx.workspace)
    out = queue_shown(ctx, queue_id)
    return {**out, "message": f"Started queued run {started}."} if started else out


QUEUE_TICK_S = 3.0  # how often an open page looks at the queue file (a stat; the table is sent when it changed)


def queue_version(ctx: AppContext) -> tuple:
    """What changes when the queue file is replaced (runner writes it whole)."""
    try:
        found = runs.queue_path(ctx.workspace).stat()
    except OSError:
        return ()
    return found.st_mtime_ns, found.st_size


def queue_ticked(ctx: AppContext, seen: tuple | None, queue_id: str | None = None) -> dict:
    """A timer tick: the queue as it is now when its file changed since this page last showed it (a
    run queued in the Train tab, a queued run started by the trainer that finished); else nothing."""
    version = list(queue_version(ctx))
    if seen is not None and list(seen) == version:
        return {}
    return {**queue_shown(ctx, queue_id), "queue_seen": version}


def do_unqueue(ctx: AppContext, queue_id: str) -> dict:
    """The Remove button: take a queued run off the queue before it starts."""
    if not queue_id:
        raise runs.RunError("pick a queued run first")
    entry = runner.dequeue(ctx.workspace, queue_id)
    text = f"Removed {entry['config'].get('run_name') or queue_id} from the queue."
    gr.Info(text)
    return {**queue_refreshed(ctx, None), "message": text}


# --- comparing runs (tuning/evaluation/compare.py) ---------------------------------------------------------------

EVAL_METRICS = (("status", "status"), ("steps", "step"), ("final train loss", "final_train_loss"),
                ("held-out loss", "eval_loss"), ("base held-out loss", "base_eval_loss"),
                ("perplexity", "perplexity"), ("task checks", "checks_text"), ("A/B (tuned vs base)", "ab_text"),
                ("duration", "duration_s"))


def _cell(key: str, e: dict) -> str:
    value = e.get(key)
    if key == "step":
        return f"{value}/{e.get('max_steps')}" if e.get("max_steps") else str(value)
    if key == "duration_s":
        return clock(value) if value is not None else ""
    return number(value) if isinstance(value, float) else ("" if value is None else str(value))


def compare_frames(result: dict) -> dict:
    """The comparison as the page shows it: two loss plots (x = step, x = tokens seen; one line per
    run and series), the differing config fields and the evaluations, one column per run."""
    import pandas as pd

    from tuning.evaluation import compare

    plots = {}
    for name, x in (("by_step", "step"), ("by_tokens", "tokens")):
        frame = pd.DataFrame(compare.curve_rows(result, x), columns=[x, "loss", "series"])
        plots[name] = frame.astype({"loss": float})
    runs = result["runs"]
    diff = [[d["field"], *[str(d["values"].get(r)) for r in runs]] for d in result["config_diff"]]
    evals = [[label, *[_cell(key, e) for e in result["evaluations"]]] for label, key in EVAL_METRICS]
    tasks = dict.fromkeys(t for e in result["evaluations"] for t in e.get("benchmarks") or {})
    evals += [[f"benchmark: {task}", *[(e.get("benchmarks") or {}).get(task, {}).get("text", "")
                                       for e in result["evaluations"]]] for task in tasks]
    return {"cmp_by_step": plots["by_step"], "cmp_by_tokens": plots["by_tokens"],
            "cmp_config": gr.update(value=diff or [["(no field differs)", *[""] * len(runs)]],
                                    headers=["config field", *runs]),
            "cmp_evals": gr.update(value=evals, headers=["", *runs])}


def compared(ctx: AppContext, run_ids: list[str] | None) -> dict:
    """The Compare button: two or more runs side by side (python -m tuning compare gives the same)."""
    from tuning.evaluation import compare

    result = compare.compare(ctx.workspace, list(run_ids or []))
    noise = "".join(f"\n- {line}" for line in compare.noise_lines(result))
    return {**compare_frames(result), "cmp_note": f"Comparing {', '.join(result['runs'])}: "
            f"{len(result['config_diff'])} config fields differ." + (f"\n\nAgainst the seed noise:{noise}" if noise else "")}


def seed_table(ctx: AppContext) -> list[list[str]]:
    """Runs of one config on several seeds (tuning/runs/seeds.py): each evaluation figure as mean ± spread."""
    from tuning.runs import seeds

    return seeds.spread_rows(seeds.seed_groups(ctx.workspace)) or [["(none yet: train a config with seeds: N)",
                                                                       "", "", ""]]


def compare_choices(ctx: AppContext):
    """The compare picker learns of new runs with the table's Refresh."""
    return gr.update(choices=runs.run_ids(ctx.workspace))


def compare_layout(ctx: AppContext, c: dict) -> None:
    with gr.Accordion("Compare runs: curves overlaid, what differs, evaluations side by side", open=False):
        with gr.Row():
            c["cmp_runs"] = gr.Dropdown(runs.run_ids(ctx.workspace), value=[], multiselect=True, scale=4,
                                        label="Runs to compare (two or more)", allow_custom_value=True)
            c["cmp_go"] = gr.Button("Compare", variant="primary", scale=1)
        c["cmp_note"] = gr.Markdown()
        with gr.Row():
            c["cmp_by_step"] = gr.LinePlot(x="step", y="loss", color="series", title="Loss by step",
                                           label="Loss by step", x_axis_format="~g", y_axis_format=".4~r")
            c["cmp_by_tokens"] = gr.LinePlot(x="tokens", y="loss", color="series", title="Loss by tokens seen",
                                             label="Loss by tokens seen", x_title="tokens seen",
                                             x_axis_format="~s", y_axis_format=".4~r")
        with gr.Row():
            c["cmp_config"] = gr.Dataframe(headers=["config field"], interactive=False, wrap=True,
                                           label="Config fields that differ")
            c["cmp_evals"] = gr.Dataframe(headers=[""], interactive=False, wrap=True,
                                          label="Evaluations side by side")


def picked(evt: gr.SelectData, rows):
    """A click on a table row picks that row's run."""
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    try:
        return rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]
    except (IndexError, KeyError, TypeError):
        return gr.skip()


# --- the page ----------------------------------------------------------------------------------------

def layout(ctx: AppContext) -> dict:
    """The tab's components by name (the names its handlers return)."""
    c = {}
    with gr.Row():
        c["filter"] = gr.Textbox(placeholder="Filter: words of a run's id, name, base model, method, objective or "
                                             "status", show_label=False, container=False, scale=4,
                                 max_lines=1, max_length=200, elem_id="runs-filter")  # one line, whatever is pasted
        c["refresh"] = gr.Button("↻ Refresh", scale=1)
    c["error"] = error_box()
    shown = listing(ctx)
    c["listing"] = gr.Dataframe(value=shown["value"], headers=HEADERS, interactive=False, wrap=True,
                                column_widths=WIDTHS, label=shown["label"], elem_id="runs-table")
    with gr.Row():
        c["run"] = gr.Dropdown(runs.run_ids(ctx.workspace), value=None, label="Run", scale=3)
        c["open_live"] = gr.Button("Open in Live", scale=1)
        c["open_play"] = gr.Button("Open in Playground", scale=1)
        c["zip"] = gr.DownloadButton(ZIP_LABEL, value=None, interactive=False, scale=1)
    c["owner_run"] = gr.State(None)  # the picked run, for an owner only (picked_for_owner)
    with gr.Row():
        c["confirm"] = gr.Checkbox(label="yes, delete this run and all its files", value=False, scale=3)
        c["delete"] = gr.Button("Delete run", variant="stop", scale=1)
    c["message"] = gr.Markdown()
    compare_layout(ctx, c)
    with gr.Accordion("Seeds: one config on several seeds, each figure as mean ± spread", open=False):
        gr.Markdown("A difference between two runs means something only when it is larger than the spread "
                    "between seeds of one config. Set `seeds` (Train tab, advanced) to train a config on N seeds.")
        c["seed_spread"] = gr.Dataframe(value=seed_table(ctx), headers=SEED_HEADERS, interactive=False, wrap=True,
                                        label="Seed groups", elem_id="seed-spread")
    queue_layout(ctx, c)
    return c


def queue_layout(ctx: AppContext, c: dict) -> None:
    # On a Space the page as built is every visitor's: the owner's queue arrives with its Refresh.
    owner_only = ctx.settings.train_requires_auth
    with gr.Accordion("Queue: runs that start one after another when the machine is free", open=True):
        rows = [] if owner_only else queue_table(ctx)
        c["queue"] = gr.Dataframe(value=rows, headers=QUEUE_HEADERS, interactive=False, wrap=True,
                                  label=queue_label(len(rows)), elem_id="queue-table")
        with gr.Row():
            c["queued"] = gr.Dropdown([] if owner_only else [e["id"] for e in runner.queued(ctx.workspace)],
                                      value=None, label="Queued run", scale=3)
            c["queue_refresh"] = gr.Button("↻ Refresh queue", scale=1)
            c["unqueue"] = gr.Button("Remove from queue", variant="stop", scale=1)
        c["queue_seen"] = gr.State(None)  # the queue file's version the table shows (queue_ticked)
        c["queue_timer"] = gr.Timer(QUEUE_TICK_S, active=not owner_only)


def wire(ctx: AppContext, c: dict) -> None:
    private = {"api_visibility": "private"}
    box = c["error"]

    def event(fn, clears: dict | None = None):  # through the tab's error box (common.boxed)
        return keyed(boxed(bind(fn, ctx), clears), c)

    listed = [c[name] for name in REFRESHED]
    # Browsing runs is public on a Space; deleting and downloading are not. A fresh page (a reload, a
    # second browser, an app restart) lists the runs as they are now: app.py's page load calls
    # `refreshed` with the other tabs' pickers, from one listing.
    c["refresh"].click(public(keyed(bind(refreshed, ctx), c)), [c["run"], c["filter"]], listed, **private)
    # .change, not .input: Gradio 6.31 sends no input event for an emptied box. always_last: keys typed
    # while a filtering is on its way run once it is back (with "once" the table would stay filtered by
    # a prefix of what the box says).
    c["filter"].change(public(keyed(bind(filtered, ctx), c)), c["filter"], c["listing"], trigger_mode="always_last",
                       **private)
    c["listing"].select(public(picked), c["listing"], c["run"], **private)
    c["delete"].click(event(do_delete), [c["run"], c["confirm"], c["filter"]],
                      [c["message"], c["confirm"], *listed, box], **private)
    # A pick readies the adapter's download button (an owner's only: a visitor's pick stops at the gate).
    c["run"].change(public(keyed(bind(picked_for_owner, ctx), c)), c["run"], c["owner_run"], **private)
    c["owner_run"].change(event(zip_shown, lambda: zip_shown(ctx, None)), c["owner_run"], [c["zip"], box], **private)
    # The queue is the owner's (nothing here is public on a Space); locally, where everyone is the
    # owner, a fresh page also shows it as it is now, and an open page follows its file (a run queued
    # in the Train tab shows up without a Refresh). On a Space a page load is every visitor's.
    queue_outputs = [c["queue"], c["queued"], c["message"], box]
    c["queue_refresh"].click(event(queue_refreshed), c["queued"], queue_outputs, **private)
    c["unqueue"].click(event(do_unqueue), c["queued"], queue_outputs, **private)
    if not ctx.settings.train_requires_auth:
        gr.on(None, guarded(keyed(bind(queue_refreshed, ctx, None), c)), None, queue_outputs[:3], **private)
        c["queue_timer"].tick(keyed(bind(queue_ticked, ctx), c), [c["queue_seen"], c["queued"]],
                              [c["queue"], c["queued"], c["queue_seen"]], show_progress="hidden", **private)

    def list_api() -> list[dict]:
        """Every run in the workspace, newest first."""
        return [s.as_row() for s in runs.list_runs(ctx.workspace)]

    def delete_api(run_id: str) -> str:
        """Delete a run that is not training (its folder, adapter and checkpoints)."""
        return delete(ctx, run_id, True)

    # Comparing reads stored files only: public on a Space, like the table.
    cmp_names = ("cmp_by_step", "cmp_by_tokens", "cmp_config", "cmp_evals", "cmp_note")
    cleared = {"cmp_by_step": None, "cmp_by_tokens": None, "cmp_config": [], "cmp_evals": [], "cmp_note": ""}
    c["cmp_go"].click(public(event(compared, cleared)), c["cmp_runs"], [*[c[n] for n in cmp_names], box],
                      api_name="compare_runs")
    gr.api(public(guarded(list_api)), api_name="list_runs")
    gr.api(guarded(delete_api), api_name="delete_run")


def build(ctx: AppContext) -> RunsParts:
    components = layout(ctx)
    wire(ctx, components)
    return RunsParts(run=components["run"], open_live=components["open_live"], open_play=components["open_play"],
                     listing=components["listing"], cmp_runs=components["cmp_runs"],
                     seed_spread=components["seed_spread"])

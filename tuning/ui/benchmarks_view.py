"""The Evaluation tab's standard benchmarks: base against tuned on lm-eval tasks (the bundled suite,
any lm-eval task name, a task YAML of your own), as a table (score, difference, standard error,
verdict) and a bar chart, read from the run's benchmarks.json (tuning/evaluation/benchmarks.py writes it).

Showing stored results is part of picking a run (public on a Space, like every stored evaluation).
Running benchmarks loads data and spends minutes of CPU: owner-only (not on access.py's public
list). A run streams its progress (task, questions, ETA); Stop ends it between two chunks of requests,
keeping the tasks done on both sides. Without lm-eval installed the section says how to install it.
"""

from __future__ import annotations

import threading

import gradio as gr

from tuning import paths, runs
from tuning.evaluation import bench_report
from tuning.ui import access
from tuning.ui.ab_view import run_path
from tuning.ui.common import AppContext

SHOWN = ("bench_table", "bench_chart", "bench_summary")  # what picking a run fills from benchmarks.json
RUNNING = ("bench_progress", "bench_go", "bench_stop")  # what a run changes besides them
POLL_S = 1.0  # how often a running benchmark's progress reaches the page
STOP_KEY = "benchmarks"  # AppContext.stopping holds (STOP_KEY, session) for a Stop pressed in this section
CHART_COLUMNS = ["bar", "model", "score"]
COLOURS = {"base": "#9ca3af", "tuned": "#f97316"}  # the base in grey, the tuned model in the theme's orange
TABLE_WIDTHS = ["17%", "22%", "13%", "7%", "7%", "9%", "8%", "17%"]


def engine_note() -> str:
    """The section's line about its engine: the version, or the empty state saying how to install it."""
    from tuning.evaluation import benchmarks

    version = benchmarks.engine_version()
    if version is None:
        return (f"**lm-eval is not installed**, so benchmarks cannot run here (stored results still show). "
                f"Install it with `{benchmarks.INSTALL}` in the app's virtual environment (or `bash scripts/setup.sh "
                "--test`) and restart the app.")
    return (f"Runs on lm-eval {version}: `{benchmarks.SUITE}` is the suite shipped with the app (302 questions, "
            "offline, about a minute for the embedded model on 2 CPU cores); lm-eval task names (hellaswag, "
            "arc_easy, mmlu, gsm8k) read their data from the Hub or the local cache; a task .yaml file under the "
            "workspace or a --data-dir reads its own data files. Comma-separated.")


def chart_frame(record: dict | None):
    """The bars as a DataFrame; None when there are none: an empty frame leaves Gradio's bar chart without a
    colour for each model, and every later update then draws invisible bars."""
    import pandas as pd

    rows = bench_report.chart_rows(record)
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=CHART_COLUMNS).astype({"score": float})
    return gr.update(value=frame, sort=list(frame["bar"]))  # the table's order, not the alphabet's


NO_RESULTS = "No benchmark results for this run yet: pick tasks below and press **Run benchmarks**."


def stored(ctx: AppContext, run_id: str | None) -> dict:
    """The run's stored results (no model, nothing written): table, chart and what they rest on."""
    record = runs.read_benchmarks(run_path(ctx, run_id)) if run_id else None
    if not record:
        return empty(NO_RESULTS if run_id else "")
    return {"bench_table": bench_report.table_rows(record), "bench_chart": chart_frame(record),
            "bench_summary": bench_report.summary_text(record)}


def empty(summary: str = "") -> dict:
    return {"bench_table": [], "bench_chart": chart_frame(None), "bench_summary": summary}


def idle(progress: str = "") -> dict:
    return {"bench_progress": progress, "bench_go": gr.update(interactive=True),
            "bench_stop": gr.update(interactive=False)}


def run_benchmarks(ctx: AppContext, run_id: str | None, tasks: str, limit):
    """Run the tasks on the run's model, base then tuned, streaming the progress; then the stored
    results. Bad input (unknown task, missing file, bad limit, no lm-eval) fails before the model loads."""
    from tuning.evaluation import benchmarks

    if not run_id:
        raise runs.RunError("pick a run above first")
    path = run_path(ctx, run_id)
    limit = benchmarks.check_limit(limit)
    benchmarks.require_engine()

    def resolve(text: str):
        return paths.resolve_under(text, ctx.roots, what="benchmark task file")

    benchmarks.parse(tasks, resolve)  # a path outside the allowed folders is refused before anything loads
    key, ended = (STOP_KEY, access.session_key()), threading.Event()
    with access.one_at_a_time(ctx, "benchmark run"):
        ctx.stopping.discard(key)  # a Stop meant for an earlier run
        shared: dict = {"state": None, "record": None, "error": None}

        def work() -> None:
            try:
                shared["record"] = benchmarks.run(path, ctx.workspace, tasks, limit, resolve_path=resolve,
                                                  progress=lambda state: shared.update(state=state),
                                                  stopped=lambda: ended.is_set() or key in ctx.stopping)
            except BaseException as exc:  # noqa: BLE001 - handed to the page's box below
                shared["error"] = exc

        worker = threading.Thread(target=work, name=f"benchmarks-{run_id}", daemon=True)
        yield {"bench_progress": "Loading the model and the tasks…", "bench_go": gr.update(interactive=False),
               "bench_stop": gr.update(interactive=True)}
        worker.start()
        try:
            while worker.is_alive():
                worker.join(POLL_S)
                state = shared["state"]
                if state is not None and worker.is_alive():
                    stopping = " — stopping after this chunk…" if key in ctx.stopping else ""
                    yield {"bench_progress": f"**Running:** {state.text()}{stopping}"}
        finally:
            ended.set()  # the page went away mid-run (a closed stream): the worker ends at its next chunk
            ctx.stopping.discard(key)
    if shared["error"] is not None:
        raise shared["error"]
    record = shared["record"]
    took = bench_report.clock(record["seconds"]["total"])
    done = ("**Stopped:** " if record.get("partial") else "**Done:** ") + \
        f"{len(record['tasks'])} task(s) on record; the newest run took {took}."
    yield {**stored(ctx, run_id), **idle(done)}


def stop_benchmarks(ctx: AppContext) -> dict:
    """Stop pressed: this session's benchmark run ends after its current chunk of requests (a few
    seconds), keeping every task finished on both sides."""
    session = access.session_key()
    with ctx.lock:
        running = ("benchmark run", session) in ctx.busy
        if running:
            ctx.stopping.add((STOP_KEY, session))
    return {"bench_stop": gr.update(interactive=False),
            "bench_progress": "Stopping after the current chunk…" if running else "No benchmark run to stop."}


# --- the page ------------------------------------------------------------------------------------

def layout(ctx: AppContext) -> dict:
    """The section's components by name."""
    from tuning.evaluation import benchmarks

    c = {}
    gr.Markdown("### Standard benchmarks\nWhat the fine-tune did to general skills, measured the way published "
                "models are (lm-evaluation-harness): the base (adapter off) and the tuned model on the same "
                "questions, the difference, and whether it is larger than the noise (|difference| > 2 × the "
                "combined standard error).")
    c["bench_engine"] = gr.Markdown(engine_note())
    with gr.Row():
        c["bench_tasks"] = gr.Textbox(value=benchmarks.SUITE, label="Tasks", scale=4,
                                      info="bundled, lm-eval task names, or task .yaml files; comma-separated")
        # Text, not gr.Number: an empty box means every question (a Number shows 0 and marks it invalid)
        c["bench_limit"] = gr.Textbox(value="", placeholder="all", label="Questions per task", scale=1,
                                      info="empty = all; a number gives a quick look on a sample")
        c["bench_go"] = gr.Button("Run benchmarks", variant="primary", scale=1,
                                  interactive=benchmarks.engine_version() is not None)
        c["bench_stop"] = gr.Button("Stop benchmarks", scale=1, interactive=False)
    c["bench_progress"] = gr.Markdown(elem_id="bench-progress")
    c["bench_table"] = gr.Dataframe(headers=bench_report.TABLE_HEADERS, interactive=False, wrap=True,
                                    column_widths=TABLE_WIDTHS, label="Base vs tuned (scores in % for accuracies)",
                                    elem_id="bench-table")
    c["bench_chart"] = gr.BarPlot(None, x="bar", y="score", color="model", color_map=COLOURS,
                                  x_title="task · model", y_title="score (% for accuracies)",
                                  label="Base vs tuned, task by task", elem_id="bench-chart")
    c["bench_summary"] = gr.Markdown()
    return c


def wire(ctx: AppContext, c: dict, event) -> None:
    """`event(fn, clears)` is the tab's (boxed and keyed, with its error box); both handlers are owner-only
    on a Space (deny by default: not public)."""
    box = c["error"]
    outputs = [*[c[n] for n in SHOWN + RUNNING], box]
    # One benchmark run at a time on the server; the model's lock is taken per chunk of requests, so the
    # Playground's "generate" events still get their turns while it runs.
    c["bench_go"].click(event(run_benchmarks, lambda: idle()), [c["run"], c["bench_tasks"], c["bench_limit"]],
                        outputs, api_name="run_benchmarks", concurrency_limit=1, concurrency_id="benchmarks")
    c["bench_stop"].click(event(stop_benchmarks), None, [c["bench_stop"], c["bench_progress"], box],
                          api_name="stop_benchmarks")

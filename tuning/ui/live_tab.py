"""Live tab: follows one run by tailing its events.jsonl (a gr.Timer, 1 Hz, reading only the new
bytes each tick). Because the file is the truth, a reload, a second browser or an app restart
rebuilds the whole history from offset 0 and keeps following."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from tuning import evaluate, record
from tuning.events import read_events
from tuning.ui.common import AppContext, ago, check_rows, clock, guarded, loss_rows

MAX_PLOT_POINTS = 500
LOG_TAIL_BYTES = 6000
LOG_TAIL_LINES = 14  # as many as the box shows, so the newest line is always in view


@dataclass
class Follow:
    """What one page has read of one run's events so far."""
    run_id: str = ""
    offset: int = 0
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    lr: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    step: int = 0
    max_steps: int = 0
    started: float | None = None
    last_step_time: float | None = None
    last_event_time: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    eta_time: float | None = None
    final: dict | None = None  # the end or error event closing the current segment
    message: str = ""
    sent: dict = field(default_factory=dict)  # what this page already shows, per output: unchanged ones are skipped

    def unless_shown(self, key: str, value):
        """value, or gr.skip() when the page already shows it: a tick that changes nothing sends
        nothing for the browser to re-render (the Live tab must not slow the training it watches)."""
        if key in self.sent and self.sent[key] == value:
            return gr.skip()
        self.sent[key] = value
        return value

    def add(self, ev: dict) -> None:
        kind = ev.get("event")
        t = ev.get("time")
        self.last_event_time = t or self.last_event_time
        if isinstance(ev.get("step"), int):
            self.step = ev["step"]
        if isinstance(ev.get("max_steps"), int):
            self.max_steps = ev["max_steps"]
        if kind == "start":
            self.started = self.started or t
            self.final = None  # a resume opens a new segment
            self.last_step_time = t
            self.message = ev.get("message", "")
        elif kind == "log":
            self.last_step_time = t
            if isinstance(ev.get("loss"), (int, float)):
                self.train.append((self.step, float(ev["loss"])))
            if isinstance(ev.get("learning_rate"), (int, float)):
                self.lr.append((self.step, float(ev["learning_rate"])))
            self.tokens_per_second = ev.get("tokens_per_second", self.tokens_per_second)
            self.eta_seconds, self.eta_time = ev.get("eta_seconds"), t
        elif kind == "eval" and isinstance(ev.get("eval_loss"), (int, float)):
            self.evals.append((self.step, float(ev["eval_loss"])))
        elif kind in ("end", "error"):
            self.final = ev
            self.message = ev.get("message", "")


def follow(ctx: AppContext, run_id: str, state: Follow | None) -> tuple[Follow, bool]:
    """Read the run's new events into the page's state; (state, whether anything new came)."""
    if state is None or state.run_id != run_id:
        state = Follow(run_id=run_id)
    path = record.existing_run_dir(ctx.workspace, run_id)
    events, state.offset = read_events(path / "events.jsonl", state.offset)
    for ev in events:
        state.add(ev)
    return state, bool(events)


def status_of(path: Path, state: Follow) -> str:
    """The run's status from the process and the events read so far (as record.summarize derives it)."""
    if state.final is not None:  # the segment has ended, even if the process is still exiting
        return record.FAILED if state.final.get("event") == "error" else state.final.get("status", record.COMPLETED)
    if record.process_alive(path):
        return record.RUNNING if state.offset else record.STARTING
    return record.INTERRUPTED


def decimate(points: list[tuple], limit: int = MAX_PLOT_POINTS) -> list[tuple]:
    """At most `limit` points, evenly spaced, always keeping the newest."""
    if len(points) <= limit:
        return list(points)
    stride = -(-len(points) // limit)
    kept = points[::stride]
    if kept[-1] != points[-1]:
        kept = kept[:-1] + [points[-1]] if len(kept) >= limit else kept + [points[-1]]
    return kept


def loss_frame(state: Follow):
    import pandas as pd

    # Both series are always present (an empty one as a single blank point): the browser fixes the
    # plot's colour legend from the first frame it draws, so a series missing then is never drawn.
    rows = [(s, v, "train loss") for s, v in decimate(state.train)] or [(0, None, "train loss")]
    rows += [(s, v, "eval loss") for s, v in decimate(state.evals)] or [(0, None, "eval loss")]
    # float, even when every value is still missing: an all-None column would be typed as categories,
    # and the browser keeps the axis type of the first frame it draws.
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype({"loss": float})


def lr_frame(state: Follow):
    import pandas as pd

    return pd.DataFrame(decimate(state.lr) or [(0, None)], columns=["step", "learning_rate"]).astype(
        {"learning_rate": float})  # float even when empty: see loss_frame


def progress_html(state: Follow, status: str) -> str:
    share = state.step / state.max_steps if state.max_steps else 0.0
    color = {"failed": "#d9534f", "interrupted": "#e0a030", "stopped": "#e0a030"}.get(status, "#3b82f6")
    label = f"step {state.step} / {state.max_steps or '?'} — {status}"
    return (f'<div class="run-progress" style="border:1px solid #ccc;border-radius:6px;height:26px;'
            f'position:relative;overflow:hidden"><div style="background:{color};width:{share * 100:.1f}%;'
            f'height:100%"></div><div style="position:absolute;top:3px;left:10px;font-weight:600">'
            f'{html.escape(label)} ({share * 100:.0f}%)</div></div>')


def stats_markdown(state: Follow, status: str, now: float | None = None) -> str:
    now = now or time.time()
    active = status in record.ACTIVE_STATUSES
    end = state.final.get("time") if state.final and not active else None
    elapsed = ((end or state.last_event_time if not active else now) - state.started) if state.started else None
    eta = None
    if active and state.eta_seconds is not None and state.eta_time:
        eta = max(0.0, state.eta_seconds - (now - state.eta_time))
    rate = f"{state.tokens_per_second:,.0f} tokens/s" if state.tokens_per_second else "— tokens/s"
    parts = [f"**{status}**", f"step **{state.step}** / {state.max_steps or '?'}",
             f"elapsed {clock(elapsed)}", f"ETA {clock(eta) if active else '—'}", rate]
    if active:
        since = now - state.last_step_time if state.last_step_time else None
        heart = f"last step {ago(since)} ago" if state.last_step_time else "waiting for the first step"
        if since is not None and since > 120:
            heart = f"⚠️ {heart} — the run may be stalled (see the log below)"
        parts.append(heart)
    line = " · ".join(parts)
    return line + (f"\n\n{state.message}" if state.message and not (state.final and
                                                                        state.final.get("event") == "error") else "")


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    log = path / "train.log"
    try:
        with open(log, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    lines = lines[1:] if size > limit else lines  # the first may be cut
    return "\n".join(lines[-LOG_TAIL_LINES:])


def error_parts(state: Follow) -> tuple[str, str]:
    """(short human message, full traceback) when the run failed."""
    if not state.final or state.final.get("event") != "error":
        return "", ""
    return f"❌ **The run failed:** {state.final.get('message', 'no message')}", state.final.get("traceback", "")


def _fmt(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "—"


def evaluation_markdown(path: Path, state: Follow) -> str:
    """Base vs tuned once the run has ended: held-out loss, perplexity and the task checks, from
    evaluation.json (else the loss pair the end event carries). "" while running or when the run
    had no held-out data."""
    if state.final is None or state.final.get("event") != "end":
        return ""
    result = evaluate.read_evaluation(path)
    if result is None:  # the end event's pair (evaluation.json missing): perplexity as evaluate computes it
        tuned, base = state.final.get("eval_loss"), state.final.get("base_eval_loss")
        result = {"eval_loss": tuned, "base_eval_loss": base, "perplexity": evaluate._perplexity(tuned),
                  "base_perplexity": evaluate._perplexity(base)}
    if result.get("eval_loss") is None:
        return ""
    lines = ["**Evaluation on held-out data** (base model vs tuned; lower loss is better)", "",
             "| | base | tuned | change |", "|---|---:|---:|---:|"]
    for label, base, tuned, change in loss_rows(result):
        digits = 3 if label == "held-out loss" else 2
        sign = "+" if isinstance(change, (int, float)) and change > 0 else ""
        lines.append(f"| {label} | {_fmt(base, digits)} | {_fmt(tuned, digits)} | {sign}{_fmt(change, digits)} |")
    for kind, n, base_passed, base_pct, tuned_passed, tuned_pct, points in check_rows(result):
        lines.append(f"| {kind} check | {base_passed}/{n} ({base_pct:.0f}%) | {tuned_passed}/{n} ({tuned_pct:.0f}%) "
                     f"| {points:+.0f} points |")
    return "\n".join(lines) + "\n\nMore in the Evaluation tab (probe answers per checkpoint, blind A/B)."


def tick(ctx: AppContext, run_id: str, state: Follow | None):
    """One timer tick: read new events, return every output (plots only when they changed)."""
    if not run_id:
        return (state, "", "No run selected. Start one in the Train tab or pick one above.", gr.skip(),
                gr.skip(), "", gr.update(value="", visible=False), gr.update(visible=False), "",
                gr.update(value="", visible=False))
    state, changed = follow(ctx, run_id, state)
    path = record.run_dir(ctx.workspace, run_id)
    status = status_of(path, state)
    message, trace = error_parts(state)
    fresh = changed or state.offset == 0
    scores = evaluation_markdown(path, state) if fresh else None  # evaluation.json is read when events come
    shown = state.unless_shown
    return (state, shown("progress", progress_html(state, status)), shown("stats", stats_markdown(state, status)),
            loss_frame(state) if fresh else gr.skip(), lr_frame(state) if fresh else gr.skip(),
            shown("tail", log_tail(path)), shown("error", gr.update(value=message, visible=bool(message))),
            shown("trace_box", gr.update(visible=bool(trace))), shown("trace", trace),
            gr.update(value=scores, visible=bool(scores)) if fresh else gr.skip())


def run_choices(ctx: AppContext) -> list[str]:
    return [s.run_id for s in record.list_runs(ctx.workspace)]


def default_run(ctx: AppContext) -> str | None:
    """The active run, else the newest: what a freshly opened page should follow."""
    listed = record.list_runs(ctx.workspace)
    active = [s for s in listed if s.status in record.ACTIVE_STATUSES]
    pick = active or listed
    return pick[0].run_id if pick else None


def run_status(ctx: AppContext, run_id: str) -> dict:
    summary = record.summarize(record.existing_run_dir(ctx.workspace, run_id))
    return {**summary.as_row(), "active": summary.status in record.ACTIVE_STATUSES,
            "error": (summary.error or {}).get("message")}


def build(ctx: AppContext):
    from tuning import runner

    with gr.Row():
        run = gr.Dropdown(run_choices(ctx), value=None, label="Run", scale=4, allow_custom_value=False)
        refresh = gr.Button("↻ Refresh list", scale=1)
        stop_btn = gr.Button("Stop (saves the adapter)", scale=1, variant="stop")
        resume_btn = gr.Button("Resume", scale=1)
    progress = gr.HTML(label="Progress", elem_id="live-progress")
    stats = gr.Markdown()
    scores = gr.Markdown(visible=False, elem_id="live-evaluation")
    error = gr.Markdown(visible=False)
    with gr.Accordion("Full traceback", open=False, visible=False) as trace_box:
        trace = gr.Code(language="python", label="Traceback")
    with gr.Row():
        # No fixed height: a fixed one cuts the colour legend (train/eval) off below the axis.
        loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss (train and eval)", label="Loss",
                                color_map={"train loss": "#3b82f6", "eval loss": "#f97316"})
        lr_plot = gr.LinePlot(x="step", y="learning_rate", title="Learning rate", label="Learning rate",
                              y_axis_format=".1e")
    tail = gr.Textbox(label="Log (tail of train.log)", lines=LOG_TAIL_LINES, max_lines=LOG_TAIL_LINES,
                      autoscroll=True, interactive=False)
    state = gr.State(None)
    timer = gr.Timer(1.0)

    outputs = [state, progress, stats, loss_plot, lr_plot, tail, error, trace_box, trace, scores]
    timer.tick(lambda r, s: _safe_tick(ctx, r, s), [run, state], outputs, show_progress="hidden",
               api_visibility="private", queue=False)
    run.change(lambda r: _safe_tick(ctx, r, None), run, outputs, show_progress="hidden",
               api_visibility="private")
    refresh.click(lambda r: gr.update(choices=run_choices(ctx), value=r), run, run, api_visibility="private")

    def do_stop(run_id):
        if not run_id:
            raise record.RunError("pick a run first")
        if runner.stop(ctx.workspace, run_id):
            gr.Info(f"Stopping {run_id}: it finishes the current step and saves the adapter")
        else:
            gr.Warning(f"{run_id} is not running")

    def do_resume(run_id):
        if not run_id:
            raise record.RunError("pick a run first")
        try:
            runner.resume(ctx.workspace, run_id)
            gr.Info(f"Resuming {run_id} from its newest complete checkpoint")
        except runner.StartRefused as exc:
            gr.Warning(str(exc))

    stop_btn.click(guarded(do_stop), run, None, api_visibility="private")
    resume_btn.click(guarded(do_resume), run, None, api_visibility="private")

    def status_api(run_id: str) -> dict:
        """A run's status: step, max_steps, loss, eval_loss, status, active, error message."""
        return run_status(ctx, run_id)

    def stop_api(run_id: str) -> bool:
        """Ask a run to stop gracefully (it saves a checkpoint and the adapter)."""
        return runner.stop(ctx.workspace, run_id)

    def resume_api(run_id: str) -> str:
        """Continue a stopped or interrupted run from its newest complete checkpoint."""
        return runner.resume(ctx.workspace, run_id)

    gr.api(guarded(status_api), api_name="run_status")
    gr.api(guarded(stop_api), api_name="stop_run")
    gr.api(guarded(resume_api), api_name="resume_run")
    return {"run": run}


def _safe_tick(ctx: AppContext, run_id, state):
    try:
        return tick(ctx, run_id, state)
    except Exception as exc:  # noqa: BLE001 - a tick must never put a traceback on the page
        from tuning.ui.common import friendly

        if state is not None:
            state.sent.clear()  # the page now shows the error: the next good tick sends everything

        return (state, "", friendly(exc), gr.skip(), gr.skip(), "", gr.update(visible=False),
                gr.update(visible=False), "", gr.skip())

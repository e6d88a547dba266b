"""Live tab: follows one run as it trains. A gr.Timer reads only the events written since
the last tick (runs.read_run_events from the page's offset) into one runs.EventSummary, the same
summary the Runs table and the CLI read; status, plots, the log tail and the base-vs-tuned table all
come from tuning/runs/. Because the run folder is the truth, a reload, a second browser or an
app restart rebuilds the whole history from offset 0 and keeps following."""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from tuning.runs import events
from tuning import runs
from tuning.ui import access
from tuning.ui.access import public
from tuning.ui.common import (AppContext, ago, bind, boxed, check_rows, clock, error_box, friendly, guarded, keyed,
                              loss_rows, number, run_picker_update)

MAX_PLOT_POINTS = 500
LOG_TAIL_BYTES = 6000
LOG_TAIL_LINES = 14  # as many as the box shows, so the newest line is always in view
# What one tick updates, by name (the components of the same names in the tab's layout).
TICKED = ("state", "progress", "stats", "loss_plot", "lr_plot", "tail", "error", "trace_box", "trace", "scores",
          "objective_plot", "samples", "timer")
# How often the page asks (the timer's interval, which every tick sets). Each tick costs the CPU the
# run trains on when both share a machine (bench/ui_overhead.py), so the page asks once a second only
# while a step may land (it shows within about a second) and stays quiet in between: after a logged
# step, until EARLY x the shortest of the last few intervals between logs has passed (10 s steps: about
# 3 ticks a step instead of 10). While the browser tab is hidden Gradio's timer does not tick at all.
POLL_S = 1.0
MAX_POLL_S = 30.0
SETTLED_POLL_S = 10.0  # no run, or one that has ended: nothing changes until a resume (which ticks at once)
PHASE_POLL_S = 2.0  # loading, evaluating, saving, stopping: progress comes a check at a time
EARLY = 0.8
RECENT_LOGS = 5
# The preference objectives' own curves (TRL's names): the implicit rewards of the chosen and the
# rejected answers, their margin, and how often chosen is rewarded above rejected; KTO's KL estimate.
END_SERIES = "end of run"  # the loss plot's unseen point at the last step (loss_frame)
OBJECTIVE_SERIES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "kl")
# GRPO's (TRL's names): the weighted total of the rewards, each reward's mean (rewards/<name>/mean, one
# series per reward the run chose) and the KL to the reference.
GRPO_TOTAL = "reward"


def objective_series(logged) -> tuple[str, ...]:
    """The series the objective plot shows for a run that logged these figures: GRPO's when it logged
    rewards, else the preference objectives'."""
    per_reward = sorted(n for n in logged if n.startswith("rewards/") and n.endswith("/mean"))
    if per_reward or GRPO_TOTAL in logged:
        return (GRPO_TOTAL, *per_reward, "kl")
    return OBJECTIVE_SERIES


@dataclass(frozen=True)
class LiveParts:
    """What app.py wires across tabs."""
    run: gr.Dropdown


@dataclass
class Follow:
    """What one page has read of one run: how far into its events, their summary, and what the page
    already shows."""
    run_id: str = ""
    offset: int = 0
    summary: runs.EventSummary = field(default_factory=runs.EventSummary)
    sent: dict = field(default_factory=dict)  # per output: an unchanged one is not sent again
    samples: dict | None = None  # the newest `log` event with sampled answers (GRPO), see latest_samples

    def unless_shown(self, key: str, value):
        """value, or gr.skip() when the page already shows it: a tick that changes nothing sends
        nothing for the browser to re-render (the Live tab must not slow the training it watches)."""
        if key in self.sent and self.sent[key] == value:
            return gr.skip()
        self.sent[key] = value
        return value


def follow(ctx: AppContext, run_id: str, state: Follow | None) -> tuple[Follow, bool]:
    """Read the run's new events into the page's state; (state, whether anything new came)."""
    if state is None or state.run_id != run_id:
        state = Follow(run_id=run_id)
    events, state.offset = runs.read_run_events(runs.existing_run_dir(ctx.workspace, run_id), state.offset)
    state.summary.extend(events)
    state.samples = latest_samples(events, state.samples)
    return state, bool(events)


# --- plots -----------------------------------------------------------------------------------------

def loss_frame(summary: runs.EventSummary):
    import pandas as pd

    train = runs.decimate(summary.train, MAX_PLOT_POINTS)
    evals = runs.decimate(summary.evals, MAX_PLOT_POINTS)
    # Both series are always present (an empty one as a single blank point): the browser fixes the
    # plot's colour legend from the first frame it draws, so a series missing then is never drawn.
    # The blank point sits at the first real step, so it never stretches the step axis back to 0.
    first = min([s for s, _ in train[:1] + evals[:1]], default=0)
    rows = [(s, v, "train loss") for s, v in train] or [(first, None, "train loss")]
    rows += [(s, v, "eval loss") for s, v in evals] or [(first, None, "eval loss")]
    # The point plot drops a blank point, so the step axis is stretched by unseen ones (a transparent
    # series, left out of the legend, at the newest loss): half a step before the first point and after
    # the run's last step, so no point sits half-cut on the plot's edge and the axis spans the run.
    last = next((v for _, v in reversed(train + evals) if v is not None), None)
    if last is not None:
        end = max(summary.max_steps, max(s for s, _, _ in rows))
        rows += [(max(0.0, first - 0.5), last, END_SERIES), (end + 0.5, last, END_SERIES)]
    else:  # nothing to draw yet: an unseen value gives the first frame tick labels (see FIRST_FRAME)
        rows.append((first, FIRST_FRAME["loss"], END_SERIES))
    # float, even when every value is still missing: an all-None column would be typed as categories,
    # and the browser keeps the axis type of the first frame it draws.
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype({"loss": float})


# The plots' layout (the room left of the axis for its tick labels) is computed at their first frame
# and kept as the data changes (Gradio redraws new data without Vega's autosize "resize"): a first frame
# without labels left no room, and every later label was cut at the plot's left edge ("le-3" for
# "8e-4", the axis title gone). So the first frame always has tick labels, from an unseen value, and
# the labels have one width all run long (Y_FORMAT: "3.50" and "0.61", "1.0e-3" and "5.0e-4").
FIRST_FRAME = {"loss": 1.0, "learning_rate": 1e-3}
Y_FORMAT = {"loss": ".2f", "learning_rate": ".1e"}


def _axis_ends(summary: runs.EventSummary, rows: list[tuple]) -> list[tuple]:
    """Blank points half a step before the first step and after the run's last, as the loss plot has:
    the step axis spans the whole run (the curve grows across a fixed axis), and its ends fall on whole
    steps, so a short run's ticks are whole steps too ("1 2 3", never "1 2 2 3 3")."""
    if not rows:
        return [(0, None)]
    first = min(r[0] for r in rows)
    end = max(summary.max_steps, max(r[0] for r in rows))
    return [(max(0.0, first - 0.5), None), (end + 0.5, None)]


def lr_frame(summary: runs.EventSummary):
    import pandas as pd

    points = runs.decimate(summary.lr, MAX_PLOT_POINTS)
    # nothing to draw yet: one point (a line of one point shows nothing) gives the first frame its
    # tick labels (see FIRST_FRAME)
    points = points + _axis_ends(summary, points) if points else [(0, FIRST_FRAME["learning_rate"])]
    return pd.DataFrame(points, columns=["step", "learning_rate"]).astype({"learning_rate": float})  # see loss_frame


def objective_frame(summary: runs.EventSummary):
    """The objective's figures by step, one series each (every series present from the first frame,
    as in loss_frame); None for an SFT run, which logs none."""
    import pandas as pd

    series = objective_series(summary.objective)
    names = [n for n in series if n in summary.objective]
    if not names:
        return None
    first = min(s for n in names for s, _ in summary.objective[n][:1])
    rows = [(s, v, n) for n in names for s, v in runs.decimate(summary.objective[n], MAX_PLOT_POINTS)]
    rows += [(first, None, n) for n in series if n not in names]
    return pd.DataFrame(rows, columns=["step", "value", "series"]).astype({"value": float})


def objective_update(summary: runs.EventSummary):
    frame = objective_frame(summary)
    return gr.update(value=frame, visible=frame is not None)


# --- GRPO's sampled answers ----------------------------------------------------------------------------

def latest_samples(new_events: list[dict], previous: dict | None = None) -> dict | None:
    """The newest `log` event among new_events that carries sampled answers (a GRPO run's), else previous."""
    return next((e for e in reversed(new_events) if e.get("event") == "log" and e.get("samples")), previous)


def samples_table(event: dict) -> tuple[str, list[str], list[list[str]]]:
    """The table of a log event's sampled answers: its title, its headers (prompt, sampled answer, each
    reward by its name, total) and one row per answer, best total first (the trainer picked the best, the
    worst and one in between of the step's answers)."""
    names = list(dict.fromkeys(name for s in event["samples"] for name in s.get("rewards", {})))
    rows = [[s.get("prompt", ""), s.get("completion", ""), *(number(s.get("rewards", {}).get(n)) for n in names),
             number(s.get("total"))] for s in event["samples"]]
    title = f"Sampled answers at step {event.get('step', '?')}"
    figures = step_figures(event.get("objective") or {}, names)
    return (f"{title} ({figures})" if figures else title, ["prompt", "sampled answer", *names, "total"], rows)


def step_figures(objective: dict, names: list[str]) -> str:
    """The step's figures over all its answers, not only the three shown: each reward's mean ± spread
    (TRL's rewards/<name>/mean and /std) and the answers' mean length in tokens."""
    parts = [f"{n} {objective[f'rewards/{n}/mean']:.2f} ± {objective.get(f'rewards/{n}/std') or 0:.2f}"
             for n in names if isinstance(objective.get(f"rewards/{n}/mean"), (int, float))]
    length = objective.get("completions/mean_length")
    if isinstance(length, (int, float)):
        parts.append(f"answers {length:.1f} tokens on average")
    return "; ".join(parts)


def samples_update(event: dict | None):
    """The table under the objective plot: hidden until a log event carries samples (so always for SFT
    and the preference objectives; for GRPO until the first logged step)."""
    import pandas as pd

    if event is None:
        return gr.update(visible=False)
    title, headers, rows = samples_table(event)
    return gr.update(value=pd.DataFrame(rows, columns=headers), label=title, visible=True)


# --- text --------------------------------------------------------------------------------------------

# What each phase is called on the page, and its bar's colour.
PHASE_TEXT = {events.LOADING: "loading the model", events.PREPARING: "preparing the data", events.TRAINING: "training",
              events.EVALUATING: "evaluating", events.SAVING: "saving", events.STOPPING: "stopping…"}
PHASE_COLOR = {events.EVALUATING: "#8b5cf6", events.SAVING: "#14b8a6", events.STOPPING: "#e0a030"}
STATUS_COLOR = {"failed": "#d9534f", "interrupted": "#e0a030", "stopped": "#e0a030"}


def phase_label(summary: runs.EventSummary, status: str) -> str:
    """What the run does now ("training", "evaluating (quick): probes 1-3 of 3", "stopping…"), or its
    status once it has ended."""
    phase = summary.current_phase if status in runs.ACTIVE_STATUSES else None
    if phase is None:
        return status
    text = PHASE_TEXT[phase]
    if phase == events.EVALUATING and summary.phase_final and summary.final_evaluation:
        text = f"evaluating ({summary.final_evaluation})"  # the end-of-run evaluation: quick or full
    detail = summary.phase_message if summary.phase == phase else ""
    if phase == events.STOPPING:  # what the trainer does on its way out (saving, the evaluation's check)
        detail = (f"{PHASE_TEXT[summary.phase]}: {summary.phase_message}" if summary.phase_message
                  and summary.phase not in (None, events.STOPPING, events.TRAINING) else "")
    elif phase == events.TRAINING or detail.startswith(("loading", "preparing")):
        detail = ""  # the step count says it; "loading the model: loading X" says it twice
    return f"{text}: {detail}" if detail else text


def progress_html(summary: runs.EventSummary, status: str) -> str:
    """One bar for the phase the run is in: steps while it trains, checks while it evaluates; a bar
    without a share while it loads, prepares or stops; steps of the whole run once it has ended."""
    active = status in runs.ACTIVE_STATUSES
    done = summary.phase_progress() if active else ((summary.step, summary.max_steps) if summary.max_steps else None)
    share = done[0] / done[1] if done and done[1] else 0.0
    unit = "check" if active and summary.current_phase == events.EVALUATING and summary.phase_final else "step"
    counted = f"{unit} {done[0]} / {done[1]} ({share * 100:.0f}%)" if done else ""
    label = " — ".join(part for part in (phase_label(summary, status), counted) if part) if active else \
        f"step {summary.step} / {summary.max_steps or '?'} — {status} ({share * 100:.0f}%)"
    color = PHASE_COLOR.get(summary.current_phase, "#3b82f6") if active else STATUS_COLOR.get(status, "#3b82f6")
    return (f'<div class="run-progress" data-phase="{html.escape(str(summary.current_phase or status))}" '
            f'style="border:1px solid #ccc;border-radius:6px;height:26px;'
            f'position:relative;overflow:hidden"><div style="background:{color};width:{share * 100:.1f}%;'
            f'height:100%"></div><div style="position:absolute;top:3px;left:10px;font-weight:600;white-space:nowrap;'
            f'overflow:hidden;text-overflow:ellipsis;right:10px">{html.escape(label)}</div></div>')


def heartbeat(summary: runs.EventSummary, now: float) -> str:
    """What the run has done lately, truthfully: the last step (training), how long the current
    phase has run (the others); a stall warning only while training, from the measured step time."""
    phase = summary.current_phase
    since_phase = now - summary.phase_started if summary.phase_started else None
    if phase == events.TRAINING:
        if summary.last_step_time is None:
            return "waiting for the first step" + (f" ({ago(since_phase)})" if since_phase is not None else "")
        stalled = summary.stalled_for(now)
        if stalled is not None:
            usual = f"a step takes about {ago(summary.step_time)}; " if summary.step_time else ""
            return f"⚠️ no step for {ago(stalled)} — the run may be stalled ({usual}see the log below)"
        return f"last step {ago(now - summary.last_step_time)} ago"
    if phase == events.STOPPING:
        return "finishing the current step or check, then it saves and ends"
    return f"{PHASE_TEXT.get(phase, 'starting')} for {ago(since_phase)}" if since_phase is not None else ""


def stats_markdown(summary: runs.EventSummary, status: str, now: float | None = None) -> str:
    now = now or time.time()
    active = status in runs.ACTIVE_STATUSES
    until = now if active else (summary.ended or summary.last_event_time)
    elapsed = until - summary.started if summary.started and until else None
    eta = summary.eta(now) if active else None
    rate = f"{summary.tokens_per_second:,.0f} tokens/s" if summary.tokens_per_second else "— tokens/s"
    evaluation = (f" (with the {summary.final_evaluation} evaluation)" if active and eta is not None
                  and summary.final_evaluation not in (None, "none") else "")
    parts = [f"**{phase_label(summary, status)}**" if active else f"**{status}**",
             f"step **{summary.step}** / {summary.max_steps or '?'}",
             f"elapsed {clock(elapsed)}", f"ETA {clock(eta) if active else '—'}{evaluation}", rate]
    if active:
        beat = heartbeat(summary, now)
        if beat:
            parts.append(beat)
    line = " · ".join(parts)
    return line + (f"\n\n{summary.message}" if summary.message and summary.error is None else "")


def error_parts(summary: runs.EventSummary) -> tuple[str, str]:
    """(short human message, full traceback) when the run failed."""
    if summary.error is None:
        return "", ""
    return (f"❌ **The run failed:** {summary.error.get('message', 'no message')}",
            summary.error.get("traceback", ""))


def evaluation_markdown(path: Path, summary: runs.EventSummary) -> str:
    """Base vs tuned once the run has ended: held-out loss, perplexity and the task checks, from the
    run's stored evaluation (else the loss pair the end event carries). "" while running or when the
    run had no held-out data."""
    if summary.final is None or summary.final.get("event") != "end":
        return ""
    result = runs.read_evaluation(path)
    if result is None:  # no stored evaluation: the end event's pair, perplexity as the evaluation computes it
        tuned, base = summary.final.get("eval_loss"), summary.final.get("base_eval_loss")
        result = {"eval_loss": tuned, "base_eval_loss": base, "perplexity": runs.perplexity(tuned),
                  "base_perplexity": runs.perplexity(base)}
    if result.get("eval_loss") is None:
        return ""
    lines = ["**Evaluation on held-out data** (base model vs tuned; lower loss is better)", "",
             "| | base | tuned | change |", "|---|---:|---:|---:|"]
    for label, base, tuned, change in loss_rows(result):
        digits = 3 if label == "held-out loss" else 2
        sign = "+" if isinstance(change, (int, float)) and change > 0 else ""
        lines.append(f"| {label} | {number(base, digits)} | {number(tuned, digits)} | {sign}{number(change, digits)} |")
    for kind, n, base_passed, base_pct, tuned_passed, tuned_pct, points in check_rows(result):
        lines.append(f"| {kind} check | {base_passed}/{n} ({base_pct:.0f}%) | {tuned_passed}/{n} ({tuned_pct:.0f}%) "
                     f"| {points:+.0f} points |")
    return "\n".join(lines) + "\n\nMore in the Evaluation tab (probe answers per checkpoint, blind A/B)."


def poll_seconds(summary: runs.EventSummary, status: str, now: float | None = None) -> float:
    """Seconds until the page's next tick (see POLL_S)."""
    if status not in runs.ACTIVE_STATUSES:
        return SETTLED_POLL_S
    if summary.current_phase not in (None, events.TRAINING):
        return PHASE_POLL_S  # loading, an evaluation, a save: no step to catch the moment of
    gaps = summary.log_gaps[-RECENT_LOGS:]
    if not gaps or summary.last_log_time is None:
        return POLL_S  # no step time measured yet
    quiet = summary.last_log_time + EARLY * min(gaps) - (now or time.time())
    return round(min(max(quiet, POLL_S), MAX_POLL_S), 1)


# A path on this machine: "/" then folders, outside a URL or a relative path ("adapter/" stays).
LOCAL_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"()\[\]]+/)+([^\s/'\"()\[\]]*)")


def for_visitors(text: str) -> str:
    """What a visitor to a Space sees of the log or a message: no traceback (the lines from
    "Traceback (most recent call last):" to the exception's own line, which stays) and no local path
    (each shows as "…/" and its last part)."""
    kept, in_traceback = [], False
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
            continue
        if in_traceback and (not line or line[0].isspace() or line.startswith("During handling")):
            continue
        in_traceback = False
        kept.append(line)
    return LOCAL_PATH.sub(r"…/\1", "\n".join(kept))


# --- handlers --------------------------------------------------------------------------------------

def tick(ctx: AppContext, run_id: str, state: Follow | None) -> dict:
    """One timer tick: read new events; every output of TICKED by name (gr.skip() where the page
    already shows the value; the plots and the evaluation only when new events came)."""
    if not run_id:
        return {"state": state, "progress": "", "stats": "No run selected. Start one in the Train tab or pick one above.",
                "loss_plot": gr.skip(), "lr_plot": gr.skip(), "tail": "",
                "error": gr.update(value="", visible=False), "trace_box": gr.update(visible=False), "trace": "",
                "scores": gr.update(value="", visible=False), "objective_plot": gr.update(visible=False),
                "samples": gr.update(visible=False), "timer": SETTLED_POLL_S}
    state, changed = follow(ctx, run_id, state)
    path = runs.run_dir(ctx.workspace, run_id)
    summary = state.summary
    status = runs.status_from(summary, runs.process_alive(path))
    message, trace = error_parts(summary)
    stats, tail = stats_markdown(summary, status), runs.log_tail(path, LOG_TAIL_BYTES, LOG_TAIL_LINES,
                                                                   hide_library_warnings=True)
    if not access.is_owner(ctx):  # a visitor to a Space: no traceback, no path of this machine
        message, trace, stats, tail = for_visitors(message), "", for_visitors(stats), for_visitors(tail)
    fresh = changed or state.offset == 0
    scores = evaluation_markdown(path, summary) if fresh else None  # the evaluation is read when events come
    shown = state.unless_shown
    return {"state": state, "progress": shown("progress", progress_html(summary, status)),
            "stats": shown("stats", stats),
            "loss_plot": loss_frame(summary) if fresh else gr.skip(),
            "lr_plot": lr_frame(summary) if fresh else gr.skip(),
            "tail": shown("tail", tail),
            "error": shown("error", gr.update(value=message, visible=bool(message))),
            "trace_box": shown("trace_box", gr.update(visible=bool(trace))), "trace": shown("trace", trace),
            "scores": gr.update(value=scores, visible=bool(scores)) if fresh else gr.skip(),
            "objective_plot": objective_update(summary) if fresh else gr.skip(),
            "samples": samples_update(state.samples) if fresh else gr.skip(),
            "timer": shown("timer", poll_seconds(summary, status))}


def safe_tick(ctx: AppContext, run_id: str, state: Follow | None) -> dict:
    """tick, with any failure shown as one line where the stats go (a tick never puts a traceback on
    the page); the same outputs either way."""
    try:
        return tick(ctx, run_id, state)
    except Exception as exc:  # noqa: BLE001 - the page shows the message, the log the traceback
        if state is not None:
            state.sent.clear()  # the page now shows the error: the next good tick sends everything
        return {"state": state, "progress": "", "stats": friendly(exc), "loss_plot": gr.skip(), "lr_plot": gr.skip(),
                "tail": "", "error": gr.update(visible=False), "trace_box": gr.update(visible=False), "trace": "",
                "scores": gr.skip(), "objective_plot": gr.skip(), "samples": gr.skip(), "timer": POLL_S}


def run_status(ctx: AppContext, run_id: str) -> dict:
    """A run's status: step, max_steps, loss, eval_loss, status, active, error message; while it is
    active, its phase (loading, preparing, training, evaluating, saving, stopping), the phase's
    progress (phase_done of phase_total: steps, or checks of the end-of-run evaluation) and the
    seconds left (eta_seconds, the evaluation included; None when unknown)."""
    summary = runs.summarize(runs.existing_run_dir(ctx.workspace, run_id))
    active = summary.status in runs.ACTIVE_STATUSES
    done = summary.progress.phase_progress() if active else None
    eta = summary.progress.eta() if active else None
    return {**summary.as_row(), "active": active, "error": (summary.error or {}).get("message"),
            "phase_done": done[0] if done else None, "phase_total": done[1] if done else None,
            "eta_seconds": round(eta, 1) if eta is not None else None}


def do_stop(ctx: AppContext, run_id: str) -> dict:
    """The Stop button: the run finishes its current step and saves the adapter. A run that is not
    running is the tab's error (its box says so)."""
    from tuning.runs import runner

    if not run_id:
        raise runs.RunError("pick a run first")
    if not runner.stop(ctx.workspace, run_id):
        raise runs.RunError(f"{run_id} is not running: nothing to stop")
    gr.Info(f"Stopping {run_id}: it finishes the current step (or evaluation check) and keeps the adapter")
    return {}


def do_resume(ctx: AppContext, run_id: str) -> dict:
    """The Resume button: continue from the newest complete checkpoint (a refusal is the tab's error)."""
    from tuning.runs import runner

    if not run_id:
        raise runs.RunError("pick a run first")
    runner.resume(ctx.workspace, run_id)
    gr.Info(f"Resuming {run_id} from its newest complete checkpoint")
    return {}


# --- the page ----------------------------------------------------------------------------------------

def layout(ctx: AppContext) -> dict:
    """The tab's components by name (the names its handlers return)."""
    c = {}
    with gr.Row():
        c["run"] = gr.Dropdown(runs.run_ids(ctx.workspace), value=None, label="Run", scale=4,
                               allow_custom_value=False)
        c["refresh"] = gr.Button("↻ Refresh list", scale=1)
        c["stop"] = gr.Button("Stop (saves the adapter)", scale=1, variant="stop")
        c["resume"] = gr.Button("Resume", scale=1)
    c["box"] = error_box()  # a Stop or Resume that could not be done, until the next one that could
    c["progress"] = gr.HTML(label="Progress", elem_id="live-progress")
    c["stats"] = gr.Markdown()
    c["scores"] = gr.Markdown(visible=False, elem_id="live-evaluation")
    c["error"] = gr.Markdown(visible=False)
    with gr.Accordion("Full traceback", open=False, visible=False) as c["trace_box"]:
        c["trace"] = gr.Code(language="python", label="Traceback")
    with gr.Row():
        # No fixed height: a fixed one cuts the colour legend (train/eval) off below the axis. Both
        # axes follow the data (Gradio's plots never force 0 in). Tick labels of one width (Y_FORMAT,
        # FIRST_FRAME), which the plot's first frame makes room for.
        # No x_lim/y_lim updates: Gradio 6.31 redraws a plot whose limits changed with the data it had
        # before, so a picked run's curves would show the previous run's (seen in a screenshot).
        # Points, not lines: Gradio's LinePlot draws no marker, so a series of one point (the first eval,
        # a short run's only one) would not show at all. Steps as whole numbers ("d"; the axis spans the
        # whole run, see _axis_ends, so its ticks fall on whole steps).
        c["loss_plot"] = gr.ScatterPlot(x="step", y="loss", color="series", title="Loss (train and eval)",
                                        label="Loss", color_map={"train loss": "#3b82f6", "eval loss": "#f97316",
                                                                 END_SERIES: "transparent"},
                                        colors_in_legend=["train loss", "eval loss"], x_axis_format="d",
                                        y_axis_format=Y_FORMAT["loss"])
        c["lr_plot"] = gr.LinePlot(x="step", y="learning_rate", title="Learning rate", label="Learning rate",
                                   y_title="learning rate", x_axis_format="d", y_axis_format=Y_FORMAT["learning_rate"])
    c["objective_plot"] = gr.LinePlot(x="step", y="value", color="series", visible=False, elem_id="live-objective",
                                      title="Objective: DPO/ORPO/KTO's implicit rewards, margin and accuracy; "
                                            "GRPO's rewards (total and each) and KL", label="Objective", x_axis_format="d", y_axis_format=".3~r")
    # GRPO: the best, a middle and the worst of the latest logged step's sampled answers, with their rewards
    c["samples"] = gr.Dataframe(visible=False, interactive=False, wrap=True, label="Sampled answers",
                                elem_id="live-samples")
    c["tail"] = gr.Textbox(label="Log (the training process's output, newest lines)", lines=LOG_TAIL_LINES,
                           max_lines=LOG_TAIL_LINES, autoscroll=True, interactive=False)
    c["state"] = gr.State(None)
    c["timer"] = gr.Timer(POLL_S)  # each tick sets the next interval (poll_seconds)
    return c


def wire(ctx: AppContext, c: dict) -> None:
    ticked, private = [c[name] for name in TICKED], {"api_visibility": "private"}
    # Following a run is public on a Space; Stop and Resume are not.
    c["timer"].tick(public(keyed(bind(safe_tick, ctx), c)), [c["run"], c["state"]], ticked, show_progress="hidden",
                    queue=False, **private)

    # Another run picked: follow it from its first event.
    c["run"].change(public(keyed(bind(safe_tick, ctx, state=None), c)), c["run"], ticked, show_progress="hidden", **private)
    c["refresh"].click(public(bind(run_picker_update, ctx)), c["run"], c["run"], **private)
    # "stopping…" shows at once, not at the next (maybe slow) tick
    c["stop"].click(keyed(boxed(bind(do_stop, ctx), box="box"), c), c["run"], c["box"], **private).success(
        public(keyed(bind(safe_tick, ctx), c)), [c["run"], c["state"]], ticked, show_progress="hidden", **private)
    # A resumed run is followed at once, not at the next (slow) tick of a run that had ended.
    c["resume"].click(keyed(boxed(bind(do_resume, ctx), box="box"), c), c["run"], c["box"], **private).success(
        public(keyed(bind(safe_tick, ctx), c)), [c["run"], c["state"]], ticked, show_progress="hidden", **private)

    # Named API endpoints (typed: Gradio's API page reads the hints).
    def status_api(run_id: str) -> dict:
        """A run's status: step, max_steps, loss, eval_loss, status, active, error message; while active,
        phase, phase_done, phase_total and eta_seconds (the end-of-run evaluation included)."""
        return run_status(ctx, run_id)

    def stop_api(run_id: str) -> bool:
        """Ask a run to stop gracefully (it saves a checkpoint and the adapter)."""
        from tuning.runs import runner

        return runner.stop(ctx.workspace, run_id)

    def resume_api(run_id: str) -> str:
        """Continue a stopped or interrupted run from its newest complete checkpoint."""
        from tuning.runs import runner

        return runner.resume(ctx.workspace, run_id)

    gr.api(public(guarded(status_api)), api_name="run_status")
    gr.api(guarded(stop_api), api_name="stop_run")
    gr.api(guarded(resume_api), api_name="resume_run")


def build(ctx: AppContext) -> LiveParts:
    components = layout(ctx)
    wire(ctx, components)
    return LiveParts(run=components["run"])

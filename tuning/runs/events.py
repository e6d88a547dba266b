"""The format of a run's event log (tuning/runs/ names the file and hands out the log): the
trainer appends, everyone else reads.

One JSON object a line, each with `event` (start, log, eval, checkpoint, end, error, choice, phase),
`time` (unix seconds) and, where it applies, step, max_steps, loss, eval_loss, learning_rate,
tokens_per_second, message. A `log` event of a preference or GRPO run also carries `objective` (the
trainer's own figures: rewards, margins, KL) and a GRPO run's `samples` (a few answers sampled at that
step: prompt, completion, each reward and the total). A `phase` event says what the run is doing from then on (`phase`, one
of PHASES) and, for a phase with countable work, how far it is (`done` of `total`; the evaluation
writes one after each of its checks). The file is the truth about a run: a page reload or an app
restart rebuilds everything from it, so readers tolerate a half-written last line.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from tuning.runs.layout import (COMPLETED, FAILED, INTERRUPTED, RUNNING, STALL_MIN_S, STALL_STEPS, STARTING, STOPPED,
                                events_path)

# "choice": after the run, a person chose a checkpoint as the final adapter (record.choose_checkpoint)
# "phase": what the run does from now on (PHASES), written at each change and as an evaluation progresses
EVENT_KINDS = ("start", "log", "eval", "checkpoint", "end", "error", "choice", "phase")
# In order: loading the model, preparing the data, training (step n of N, from the `log` events),
# evaluating (check k of K), saving (the adapter, a checkpoint); stopping when a Stop arrived. The
# `end` or `error` event closes the run (completed, stopped, failed).
LOADING, PREPARING, TRAINING, EVALUATING, SAVING, STOPPING = (
    "loading", "preparing", "training", "evaluating", "saving", "stopping")
PHASES = (LOADING, PREPARING, TRAINING, EVALUATING, SAVING, STOPPING)


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; keep the line parseable and say what it was.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class EventLog:
    """Append-only writer. Each append is one write() of one whole line, flushed and fsynced,
    so a kill -9 leaves at most one partial last line, which readers skip."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        if event not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {event!r}")
        record = {"event": event, "time": round(time.time(), 3)}
        record.update({k: _clean(v) for k, v in fields.items() if v is not None})
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return record


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Read whole lines from byte `offset` on. Returns the events and the offset to continue
    from; a trailing partial line is left for the next call. Garbage lines are skipped."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # only whole lines
    events = []
    for raw in data[:end].splitlines():
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and "event" in record:
            events.append(record)
    return events, offset + end


# --- events ------------------------------------------------------------------------------------

def event_log(run: Path) -> EventLog:
    return EventLog(events_path(run))


def read_run_events(run: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Whole event lines from byte `offset` on, and the offset to continue from."""
    return read_events(events_path(run), offset)


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class EventSummary:
    """Everything the pages show about a run's progress, built by adding events in order. The Runs
    table, Live (incrementally, a tick at a time), the estimate and the model card all read this one
    summary, so they never disagree. A `start` opens a new segment (a resume)."""
    count: int = 0
    step: int = 0
    max_steps: int = 0
    started: float | None = None
    ended: float | None = None
    last_event_time: float | None = None
    last_step_time: float | None = None  # the newest step of the current segment; None before its first
    loss: float | None = None
    eval_loss: float | None = None
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    lr: list[tuple[int, float]] = field(default_factory=list)  # (step, learning rate)
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss)
    rates: list[float] = field(default_factory=list)  # tokens/s of every logged step
    log_gaps: list[float] = field(default_factory=list)  # seconds between consecutive logs of a segment
    step_seconds: list[float] = field(default_factory=list)  # seconds a step took, from consecutive logs
    last_log_time: float | None = None
    last_log_step: int | None = None
    objective: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # DPO/KTO/ORPO figures by name
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    eta_time: float | None = None
    final: dict | None = None  # the end or error event closing the current segment
    message: str = ""
    # The phase (events.PHASES) and its progress, from the `phase` events; a run written before they
    # existed reads as training from its `start` on.
    phase: str | None = None
    phase_started: float | None = None  # when the current phase began (its progress events do not move it)
    phase_time: float | None = None  # the newest phase event's time
    phase_message: str = ""
    phase_done: int | None = None
    phase_total: int | None = None
    phase_final: bool = False  # after the last step: the adapter's save, the end-of-run evaluation
    work_done: float | None = None  # the evaluation's work, in training steps (tuning/evaluation/evaluate.py plan)
    work_total: float | None = None
    eval_work: float | None = None  # the end-of-run evaluation's planned work, announced as training begins
    eval_answers: int = 0  # of which: prompts answered (base and tuned), eval_answer_work steps of its work
    eval_answer_work: float = 0.0
    answer_seconds: list[float] = field(default_factory=list)  # seconds per prompt of the checkpoints' probes
    answering: int = 0  # prompts the current phase answers (a checkpoint's probes)
    final_evaluation: str | None = None  # quick, full or none
    stop_requested: bool = False

    def add(self, ev: dict) -> None:
        kind, t = ev.get("event"), _number(ev.get("time"))
        self.count += 1
        self.last_event_time = t or self.last_event_time
        if isinstance(ev.get("step"), int):
            self.step = ev["step"]
        if isinstance(ev.get("max_steps"), int):
            self.max_steps = ev["max_steps"]
        if kind == "start":
            self.started = self.started or t
            self.final, self.ended, self.last_step_time, self.last_log_time = None, None, None, None
            self.last_log_step, self.stop_requested = None, False
            self._enter(TRAINING, t)
            self.message = str(ev.get("message", ""))
        elif kind == "phase":
            self._phase(ev, t)
        elif kind == "log":
            if t is not None and self.last_log_time is not None:
                self.log_gaps.append(t - self.last_log_time)
                if self.last_log_step is not None and self.step > self.last_log_step:
                    self.step_seconds.append((t - self.last_log_time) / (self.step - self.last_log_step))
            self.last_step_time = self.last_log_time = t
            self.last_log_step = self.step
            if _number(ev.get("loss")) is not None:
                self.loss = ev["loss"]
                self.train.append((self.step, float(ev["loss"])))
            if _number(ev.get("learning_rate")) is not None:
                self.lr.append((self.step, float(ev["learning_rate"])))
            for name, value in (ev.get("objective") or {}).items() if isinstance(ev.get("objective"), dict) else ():
                if _number(value) is not None:
                    self.objective.setdefault(name, []).append((self.step, float(value)))
            rate = _number(ev.get("tokens_per_second"))
            if rate:
                self.tokens_per_second = rate
                self.rates.append(rate)
            self.eta_seconds, self.eta_time = _number(ev.get("eta_seconds")), t
        elif kind == "eval" and _number(ev.get("eval_loss")) is not None:
            self.eval_loss = ev["eval_loss"]
            self.evals.append((self.step, float(ev["eval_loss"])))
        elif kind in ("end", "error"):
            self.final, self.ended = ev, t
            self.message = str(ev.get("message", ""))
            self._enter(None, t)

    def _enter(self, phase: str | None, t: float | None) -> None:
        if self.answering and t is not None and self.phase_time is not None:
            # a checkpoint's probes just ended: how long an answer takes on this machine now (greedy
            # generation slows down far more than training on busy cores)
            self.answer_seconds.append((t - self.phase_time) / self.answering)
            self.answering = 0
        if phase != self.phase:
            self.phase, self.phase_started, self.phase_message = phase, t, ""
            self.phase_done = self.phase_total = self.work_done = self.work_total = None
            self.phase_final = False
        self.phase_time = t

    def _phase(self, ev: dict, t: float | None) -> None:
        phase = ev.get("phase")
        if phase not in PHASES:
            return
        if phase == STOPPING:
            self.stop_requested = True
            if self.phase in (SAVING, EVALUATING) and self.phase_final:
                return  # the trainer is already past training: its own phases say what it does
        self._enter(phase, t)
        self.answering = ev["answers"] if isinstance(ev.get("answers"), int) else 0
        self.phase_message = str(ev.get("message") or "")
        self.phase_final = bool(ev.get("final"))
        done, total = ev.get("done"), ev.get("total")
        self.phase_done = done if isinstance(done, int) else None
        self.phase_total = total if isinstance(total, int) else None
        self.work_done, self.work_total = _number(ev.get("work_done")), _number(ev.get("work_total"))
        if phase == TRAINING and _number(ev.get("eval_work")) is not None:
            self.eval_work = float(ev["eval_work"])
            self.eval_answers = ev["eval_answers"] if isinstance(ev.get("eval_answers"), int) else 0
            self.eval_answer_work = float(_number(ev.get("eval_answer_work")) or 0.0)
            self.final_evaluation = str(ev.get("final_evaluation") or "") or None

    def extend(self, events: list[dict]) -> "EventSummary":
        for ev in events:
            self.add(ev)
        return self

    @property
    def error(self) -> dict | None:
        return self.final if self.final and self.final.get("event") == "error" else None

    @property
    def final_status(self) -> str | None:
        """How the current segment ended (None while it has not)."""
        if self.final is None:
            return None
        if self.final.get("event") == "error":
            return FAILED
        return self.final.get("status") if self.final.get("status") in (COMPLETED, STOPPED) else COMPLETED

    @property
    def current_phase(self) -> str | None:
        """The phase a run that has not ended is in: stopping from the moment a Stop was requested
        (until it ends), else the trainer's latest phase; None before its first event and after its end."""
        if self.final is not None:
            return None
        if self.stop_requested:
            return STOPPING
        return self.phase or (TRAINING if self.count else None)

    @property
    def step_time(self) -> float | None:
        """The median seconds a step takes (the newest 20 steps)."""
        recent = self.step_seconds[-20:]
        return statistics.median(recent) if recent else None

    def phase_progress(self) -> tuple[int, int] | None:
        """(done, total) of the current phase where it counts: steps while training (also during an
        evaluation or save between steps), checks during the end-of-run evaluation."""
        phase = self.current_phase
        if phase == EVALUATING and self.phase_final and self.phase_total:
            return self.phase_done or 0, self.phase_total
        if phase in (TRAINING, EVALUATING, SAVING) and self.max_steps:
            return self.step, self.max_steps
        return None

    def evaluation_seconds(self) -> float | None:
        """The end-of-run evaluation's expected length before it starts: its planned work (in steps)
        at the measured step time, its answers at the time the checkpoints' probes took per answer
        when measured; 0 when none is planned."""
        if self.eval_work is None:
            return None
        if self.eval_work == 0:
            return 0.0
        if not self.step_time:
            return None
        if self.answer_seconds and self.eval_answers:
            return ((self.eval_work - self.eval_answer_work) * self.step_time
                    + self.eval_answers * statistics.median(self.answer_seconds[-3:]))
        return self.eval_work * self.step_time

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the run ends, the end-of-run evaluation included; None when it cannot be told
        (loading, no step measured yet, stopping, ended)."""
        now = now or time.time()
        phase = self.current_phase
        if phase is None or phase in (LOADING, PREPARING, STOPPING):
            return None
        if phase == EVALUATING and self.phase_final:
            return self._evaluation_left(now)
        evaluation = self.evaluation_seconds()
        if phase == SAVING and self.phase_final:
            return evaluation
        if self.eta_seconds is not None and self.eta_time is not None:
            training = max(0.0, self.eta_seconds - (now - self.eta_time))
        elif self.step_time and self.max_steps:
            training = self.step_time * max(0, self.max_steps - self.step)
        else:
            return None
        return training + (evaluation or 0.0)

    def _evaluation_left(self, now: float) -> float | None:
        if not self.work_total or self.work_done is None:
            return None
        left = self.work_total - self.work_done
        if self.work_done > 0 and self.phase_started is not None and self.phase_time is not None:
            # its own pace so far: the time its finished checks took, per unit of work
            per_work = (self.phase_time - self.phase_started) / self.work_done
            return max(0.0, per_work * left - (now - self.phase_time))
        if self.step_time:
            return max(0.0, self.step_time * left - (now - (self.phase_time or now)))
        return None

    def stalled_for(self, now: float | None = None) -> float | None:
        """Seconds since the last step when a training run looks stalled (more than max(STALL_STEPS x
        the median step time, STALL_MIN_S) without a step), else None. Only in the training phase,
        only after its first step: loading, an evaluation, a save or a stop report their own progress."""
        now = now or time.time()
        if self.current_phase != TRAINING or self.last_step_time is None:
            return None
        since = now - max(self.last_step_time, self.phase_started or 0.0)
        limit = max(STALL_STEPS * (self.step_time or 0.0), STALL_MIN_S)
        return since if since > limit else None


def decimate(points: list, limit: int) -> list:
    """At most `limit` points, evenly spaced, always keeping the first and the newest."""
    if len(points) <= limit:
        return list(points)
    stride = (len(points) - 1) / (limit - 1)
    return [points[round(i * stride)] for i in range(limit)]


def status_from(summary: EventSummary, alive: bool) -> str:
    """The one status rule. A live process means the run is busy (even while it writes its last
    lines), so the one-run-at-a-time rule holds; otherwise the closing event says how it ended; a
    run that never closed was interrupted."""
    if alive:
        return RUNNING if summary.count else STARTING
    # a trainer that a Stop ended before it could say so (still importing its libraries, or killed
    # when it did not stop in time) was stopped, not interrupted
    return summary.final_status or (STOPPED if summary.stop_requested else INTERRUPTED)


def interruption_message(summary: EventSummary, launched: bool) -> str:
    if summary.final is not None:
        return summary.message
    if summary.stop_requested:
        return ("stopped before it trained a step" if summary.last_log_step is None and not summary.train
                else "stopped; resume it from its newest complete checkpoint")
    if summary.count or launched:
        return summary.message or "the training process ended without saying why; resume it"
    return "never started"

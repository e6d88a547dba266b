"""The run folder: the one module that names its files, writes them safely and reads them back.

    runs/<run_id>/
      config.yaml           the resolved TrainConfig (written once, before the trainer starts)
      events.jsonl          the truth about the run: the trainer appends (tuning/runs/events.py owns the line format)
      process.json          the training process's pid, start time, process group and host (touched while it runs)
      train.log             the training process's stdout and stderr
      checkpoints/checkpoint-N/   each with a COMPLETE marker, written last, after every file is fsynced
      adapter/              the final adapter
      evaluation.json       base vs tuned on held-out data (tuning/evaluation/evaluate.py computes it)
      probes.json           the prompts answered at every checkpoint
      probe_answers.jsonl   one line of base/tuned answers per checkpoint
      ab_votes.jsonl        one line per blind A/B vote
      corrections.jsonl     answers a person corrected in the Playground: an SFT dataset (messages), with the original
      preference_pairs.jsonl  the votes (ties left out) and corrections as DPO pairs, rewritten whole on request
      rows.json             where each training and held-out example came from (file, row), by row id
      row_losses.jsonl      each example's own loss: training rows as the trainer computed them, held-out
                            rows at every evaluation (tuning/evaluation/row_losses.py)
      tensorboard/          TensorBoard event files, only with report_to: tensorboard

    queue.json              (in the workspace, beside runs/) the runs waiting to start, in order

Data flows one way: the trainer writes -> this module reads -> tabs, CLI, exports. Nobody else
opens these files, so a reload, a second browser or an app restart sees exactly what the trainer
wrote. Status is derived from the files alone (and whether the recorded process is alive), so any
process can answer it after any crash. Readers never raise on a damaged file: the Runs table
lists the run as damaged and the others normally.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import json
import math
import os
import re
import shutil
import socket
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tuning import config as config_mod
from tuning.runs import events as events_mod
from tuning.runs.events import EventLog, read_events

CONFIG = "config.yaml"
EVENTS = "events.jsonl"
PROCESS = "process.json"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
ADAPTER = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
EVALUATION = "evaluation.json"
PROBES = "probes.json"
PROBE_ANSWERS = "probe_answers.jsonl"
VOTES = "ab_votes.jsonl"
CORRECTIONS = "corrections.jsonl"
PREFERENCE_PAIRS = "preference_pairs.jsonl"
ROWS = "rows.json"
ROW_LOSSES = "row_losses.jsonl"
TENSORBOARD = "tensorboard"  # event files, with report_to: tensorboard (tuning/train/tracking.py)
QUEUE = "queue.json"  # in the workspace, not in a run folder

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,95}$")
MAX_PROBES = 20

# Statuses a run can be in.
STARTING, RUNNING, COMPLETED, STOPPED, FAILED, INTERRUPTED, DAMAGED = (
    "starting", "running", "completed", "stopped", "failed", "interrupted", "damaged")
ACTIVE_STATUSES = (STARTING, RUNNING)
# A training run is stalled after STALL_STEPS x its median step time without a step, and never
# sooner than STALL_MIN_S (the first steps, a slow checkpoint); only while it trains (an evaluation
# or a save reports its own progress).
STALL_STEPS, STALL_MIN_S = 3.0, 60.0


class RunError(ValueError):
    """A run id or run folder problem the user should read."""


# --- where -----------------------------------------------------------------------------------

def runs_dir(workspace: Path) -> Path:
    return Path(workspace) / "runs"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise RunError(f"run id {run_id!r} is not valid (letters, digits, '-' and '_' only)")
    return run_id


def run_dir(workspace: Path, run_id: str) -> Path:
    return runs_dir(workspace) / check_run_id(run_id)


def existing_run_dir(workspace: Path, run_id: str) -> Path:
    path = run_dir(workspace, run_id)
    if not path.is_dir():
        raise RunError(f"no run {run_id!r} in {runs_dir(workspace)}")
    return path


def new_run_id(workspace: Path, name: str = "") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{name}" if name else stamp
    candidate, n = base, 1
    while (runs_dir(workspace) / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return check_run_id(candidate)


def config_path(run: Path) -> Path:
    return Path(run) / CONFIG


def events_path(run: Path) -> Path:
    return Path(run) / EVENTS


def log_path(run: Path) -> Path:
    return Path(run) / LOG


def adapter_dir(run: Path) -> Path:
    return Path(run) / ADAPTER


def checkpoints_dir(run: Path) -> Path:
    return Path(run) / CHECKPOINTS


def checkpoint_dir(run: Path, step: int) -> Path:
    return checkpoints_dir(run) / f"checkpoint-{step}"


def delete_run(workspace: Path, run_id: str) -> None:
    path = existing_run_dir(workspace, run_id)
    if process_alive(path):
        raise RunError(f"run {run_id} is still training; stop it before deleting it")
    shutil.rmtree(path)


# --- safe writes -------------------------------------------------------------------------------

def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` survive a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` whole or not at all. The temp file has a unique name in the same folder, so two
    writers (the trainer's callback and a page) never trip over each other's temp file; the last
    replace wins and readers see one complete version or the other."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, ensure_ascii=False, indent=1))


def append_line(path: Path, value: dict) -> None:
    """One write of one whole JSON line, fsynced: a crash leaves at most a partial last line, which
    read_lines skips (the same rule as events.jsonl)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(value, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_lines(path: Path) -> list[dict]:
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def read_json(path: Path) -> Any:
    """A small JSON file's value; None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then the folders themselves (deepest first)."""
    folders = []
    for root, dirs, files in os.walk(folder):
        folders.append(Path(root))
        for name in files:
            try:
                with open(Path(root) / name, "rb") as fh:
                    os.fsync(fh.fileno())
            except OSError:
                pass
    for sub in reversed(folders):
        fsync_dir(sub)


# --- config ------------------------------------------------------------------------------------

def read_config(run: Path) -> config_mod.TrainConfig:
    """The run's TrainConfig; a ConfigError naming the file when it is missing or damaged."""
    return config_mod.load(config_path(run))


def write_config(run: Path, cfg: config_mod.TrainConfig) -> None:
    write_atomic(config_path(run), cfg.to_yaml())


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
            self._enter(events_mod.TRAINING, t)
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
        if phase not in events_mod.PHASES:
            return
        if phase == events_mod.STOPPING:
            self.stop_requested = True
            if self.phase in (events_mod.SAVING, events_mod.EVALUATING) and self.phase_final:
                return  # the trainer is already past training: its own phases say what it does
        self._enter(phase, t)
        self.answering = ev["answers"] if isinstance(ev.get("answers"), int) else 0
        self.phase_message = str(ev.get("message") or "")
        self.phase_final = bool(ev.get("final"))
        done, total = ev.get("done"), ev.get("total")
        self.phase_done = done if isinstance(done, int) else None
        self.phase_total = total if isinstance(total, int) else None
        self.work_done, self.work_total = _number(ev.get("work_done")), _number(ev.get("work_total"))
        if phase == events_mod.TRAINING and _number(ev.get("eval_work")) is not None:
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
            return events_mod.STOPPING
        return self.phase or (events_mod.TRAINING if self.count else None)

    @property
    def step_time(self) -> float | None:
        """The median seconds a step takes (the newest 20 steps)."""
        recent = self.step_seconds[-20:]
        return statistics.median(recent) if recent else None

    def phase_progress(self) -> tuple[int, int] | None:
        """(done, total) of the current phase where it counts: steps while training (also during an
        evaluation or save between steps), checks during the end-of-run evaluation."""
        phase = self.current_phase
        if phase == events_mod.EVALUATING and self.phase_final and self.phase_total:
            return self.phase_done or 0, self.phase_total
        if phase in (events_mod.TRAINING, events_mod.EVALUATING, events_mod.SAVING) and self.max_steps:
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
        if phase is None or phase in (events_mod.LOADING, events_mod.PREPARING, events_mod.STOPPING):
            return None
        if phase == events_mod.EVALUATING and self.phase_final:
            return self._evaluation_left(now)
        evaluation = self.evaluation_seconds()
        if phase == events_mod.SAVING and self.phase_final:
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
        if self.current_phase != events_mod.TRAINING or self.last_step_time is None:
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


# --- the training process ----------------------------------------------------------------------

# A trainer touches process.json every HEARTBEAT_S. Its process can be checked by pid only on its own
# host; a trainer on another node (a cluster run the dashboard follows through a shared workspace)
# counts as alive while it keeps touching the file and has not marked itself ended.
HEARTBEAT_S = 30.0
REMOTE_STALE_S = 180.0  # NFS may show an mtime up to a minute late: three missed beats, then gone


def this_host() -> str:
    return socket.gethostname()


def write_process_info(run: Path, pid: int) -> dict:
    """Record the training process: create_time tells a reused pid apart; pgid says whether Stop
    may signal the whole group (only when the trainer leads its own group, as the runner starts it);
    host says where the pid means something; launch is a fresh token that the ranks of a
    multi-node run compare to prove they see this very folder (a shared workspace)."""
    try:
        info = {"pid": pid, "create_time": psutil.Process(pid).create_time(), "pgid": os.getpgid(pid)}
    except (psutil.Error, OSError):  # it died at once: record it, so the run reads as ended (see train.log)
        info = {"pid": pid, "create_time": 0.0, "pgid": None}
    info.update(host=this_host(), launch=uuid.uuid4().hex)
    write_atomic(Path(run) / PROCESS, json.dumps(info))
    return info


_PROCESS_INFO: dict[str, tuple[tuple | None, dict]] = {}  # run -> (file key, info): see _parsed


def read_process_info(run: Path) -> dict:
    # Every listing asks each run whether its trainer lives; the file is read again only when it
    # changed (write_atomic replaces it: a new inode; the heartbeat touches its time).
    path = os.path.join(run, PROCESS)
    key = _file_key(path)
    cached = _PROCESS_INFO.get(path)
    if cached is not None and cached[0] == key and key is not None:
        return dict(cached[1])
    info = read_json(path)
    info = info if isinstance(info, dict) else {}
    _PROCESS_INFO[path] = (key, info)
    return dict(info)


def mark_process_ended(run: Path, pid: int) -> None:
    """The recorded trainer says it is done (read by dashboards on other hosts, which cannot check
    the pid). Left alone when another process has been recorded since."""
    info = read_process_info(run)
    if info.get("pid") == pid and info.get("host") == this_host():
        write_atomic(Path(run) / PROCESS, json.dumps({**info, "ended": time.time()}))


def start_heartbeat(run: Path) -> threading.Thread:
    """Touch process.json every HEARTBEAT_S for as long as this process lives (a daemon thread)."""
    def beat():
        while True:
            time.sleep(HEARTBEAT_S)
            try:
                os.utime(Path(run) / PROCESS)
            except OSError:
                pass

    thread = threading.Thread(target=beat, name="process.json heartbeat", daemon=True)
    thread.start()
    return thread


def remote_host(run: Path) -> str | None:
    """The other host the run's trainer was recorded on, or None when it is this one."""
    host = read_process_info(run).get("host")
    return host if host and host != this_host() else None


def training_process(run: Path) -> psutil.Process | None:
    """The run's training process while it is alive on this host, else None. A pid reused by
    another process is ruled out by its start time; a zombie (ended, not yet reaped) counts as ended."""
    try:
        info = read_process_info(run)
        # another host's process, or one that said it is done with this run (and may live on to
        # train the next: `train --seeds N` trains its runs one after another in one process)
        if info.get("host") not in (None, this_host()) or info.get("ended"):
            return None
        proc = psutil.Process(int(info["pid"]))
        if abs(proc.create_time() - float(info["create_time"])) > 1.0:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except (OSError, ValueError, KeyError, TypeError, AttributeError, psutil.Error):
        return None


def process_alive(run: Path) -> bool:
    info = read_process_info(run)
    if info.get("host") not in (None, this_host()):
        try:
            fresh = time.time() - (Path(run) / PROCESS).stat().st_mtime < REMOTE_STALE_S
        except OSError:
            return False
        return fresh and not info.get("ended")
    return training_process(run) is not None


# Library warnings a person cannot act on, kept in train.log and out of the Live tab's tail: Python's
# deprecation warnings (with the source line printed under them) and bitsandbytes' note that an
# optional CPU kernel package is missing (printed by every run that imports it, LoRA ones too).
LIBRARY_WARNINGS = re.compile(r"(?:Future|Deprecation|PendingDeprecation)Warning: "
                              r"|Failed to load CPU gemm_4bit_forward")


def without_library_warnings(lines: list[str]) -> list[str]:
    """The lines less each LIBRARY_WARNINGS line and the indented lines that continue it."""
    kept, hiding = [], False
    for line in lines:
        if LIBRARY_WARNINGS.search(line):
            hiding = True
        elif not (hiding and line[:1].isspace()):
            hiding = False
            kept.append(line)
    return kept


def log_tail(run: Path, limit_bytes: int, lines: int, hide_library_warnings: bool = False) -> str:
    """The last `lines` whole lines of train.log, reading at most `limit_bytes` (less the library
    warnings, when asked)."""
    try:
        with open(log_path(run), "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = text.splitlines()
    kept = kept[1:] if size > limit_bytes else kept  # the first may be cut
    if hide_library_warnings:
        kept = without_library_warnings(kept)
    return "\n".join(kept[-lines:])


# --- checkpoints and adapters --------------------------------------------------------------------

def complete_checkpoints(run: Path) -> list[Path]:
    """Checkpoints whose COMPLETE marker exists, oldest first. A checkpoint half-written when the
    process died has no marker and is skipped."""
    folder = checkpoints_dir(run)
    found = []
    for ckpt in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = ckpt.name.rpartition("-")[2]
        if step.isdigit() and (ckpt / COMPLETE_MARKER).exists():
            found.append((int(step), ckpt))
    return [c for _, c in sorted(found)]


def latest_checkpoint(run: Path) -> Path | None:
    ckpts = complete_checkpoints(run)
    return ckpts[-1] if ckpts else None


def checkpoint_by_name(run: Path, name: str) -> Path:
    """checkpoint-N of the run, which must be complete."""
    path = checkpoints_dir(run) / check_run_id(name)
    if not (path / COMPLETE_MARKER).exists():
        raise RunError(f"checkpoint {name} of {Path(run).name} does not exist or is incomplete")
    return path


def mark_complete(ckpt: Path) -> None:
    """Declare a checkpoint whole: every file in it reaches the disk first, then the marker."""
    fsync_tree(ckpt)
    write_atomic(Path(ckpt) / COMPLETE_MARKER, str(time.time()))


def discard_incomplete_checkpoints(run: Path) -> list[Path]:
    """Delete checkpoint folders without a COMPLETE marker (half-written by a crash or a full disk),
    so the Trainer's rotation never keeps one of them in place of a good checkpoint. Call only while
    no process is writing to the run."""
    folder = checkpoints_dir(run)
    complete = set(complete_checkpoints(run))
    removed = []
    for ckpt in sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []:
        if ckpt.is_dir() and ckpt not in complete:
            shutil.rmtree(ckpt, ignore_errors=True)
            removed.append(ckpt)
    return removed


def has_final_adapter(run: Path) -> bool:
    # strings, not Paths: the Export and Evaluation pickers ask this of every run on each page load
    return all(os.path.isfile(os.path.join(run, ADAPTER, name)) for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG))


def chosen_checkpoint(run: Path) -> str | None:
    """The checkpoint a person chose as the run's final adapter (the newest `choice` event), or None
    for the adapter the run saved."""
    events, _ = read_run_events(run)
    choices = [e for e in events if e.get("event") == "choice"]
    name = choices[-1].get("checkpoint") if choices else None
    return name if isinstance(name, str) and name != "final" else None


def choose_checkpoint(run: Path, name: str) -> str:
    """Use checkpoint-N (complete) as the run's final adapter from now on, or "final" to go back to
    the adapter the run saved; recorded as a `choice` event. The run must not be training."""
    if process_alive(run):
        raise RunError(f"run {Path(run).name} is still training; choose a checkpoint after it ends")
    if name != "final":
        checkpoint_by_name(run, name)
    elif not has_final_adapter(run):
        raise RunError(f"run {Path(run).name} saved no final adapter to go back to")
    event_log(run).append("choice", checkpoint=name, message=f"{name} chosen as the final adapter")
    return name


def current_adapter(run: Path, checkpoint: str | None = None) -> Path:
    """The final adapter (a checkpoint a person chose as final, else the one the run saved), or
    checkpoint-N; while a run trains, its newest complete checkpoint."""
    if checkpoint and checkpoint != "final":
        return checkpoint_by_name(run, checkpoint)
    chosen = chosen_checkpoint(run)
    if chosen and (checkpoints_dir(run) / chosen / COMPLETE_MARKER).exists():
        return checkpoints_dir(run) / chosen
    if (adapter_dir(run) / ADAPTER_CONFIG).is_file():
        return adapter_dir(run)
    latest = latest_checkpoint(run)
    if latest is None:
        raise RunError(f"run {Path(run).name} has no adapter or checkpoint yet")
    return latest


def adapter_version(path: Path) -> tuple:
    """Changes whenever the adapter's weights are rewritten (a resumed run saves adapter/ again):
    a cache of loaded adapters keyed by this never answers with old weights."""
    try:
        st = (Path(path) / ADAPTER_WEIGHTS).stat()
        return (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return (str(Path(path).resolve()), None, None)


def adapter_step(run: Path, adapter: Path) -> int:
    """The training step an adapter folder holds: N for checkpoint-N, else the run's last step."""
    if adapter.name.startswith("checkpoint-"):
        return int(adapter.name.rpartition("-")[2])
    return summarize(run).step


# --- status and listing ------------------------------------------------------------------------

@dataclass
class RunSummary:
    run_id: str
    path: Path
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    progress: EventSummary = field(default_factory=EventSummary)
    message: str = ""

    # The progress figures the Runs table, the CLI and the API read by name.
    step = property(lambda self: self.progress.step)
    max_steps = property(lambda self: self.progress.max_steps)
    loss = property(lambda self: self.progress.loss)
    eval_loss = property(lambda self: self.progress.eval_loss)
    started = property(lambda self: self.progress.started)
    error = property(lambda self: self.progress.error)

    @property
    def phase(self) -> str | None:
        """What an active run is doing (events.PHASES: loading, preparing, training, evaluating, saving,
        stopping); None once it has ended."""
        return self.progress.current_phase if self.status in ACTIVE_STATUSES else None

    @property
    def activity(self) -> str:
        """The status as a person reads it: "training 12/72", "evaluating 3/7", "stopping", else the status."""
        phase = self.phase
        if phase is None:
            return self.status
        done = self.progress.phase_progress()
        return f"{phase} {done[0]}/{done[1]}" if done and phase != events_mod.STOPPING else phase

    @property
    def ended(self) -> float | None:
        return None if self.status in ACTIVE_STATUSES else self.progress.ended

    @property
    def duration(self) -> float | None:
        p = self.progress
        if p.started is None:
            return None
        if self.status in ACTIVE_STATUSES:
            return time.time() - p.started
        return (p.ended or p.last_event_time or p.started) - p.started

    def as_row(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status,
            "base_model": self.config.get("base_model", ""), "method": self.config.get("method", ""),
            "objective": self.config.get("objective", "sft"),
            "step": self.step, "max_steps": self.max_steps, "loss": self.loss, "eval_loss": self.eval_loss,
            "duration_s": round(self.duration, 1) if self.duration is not None else None,
            "created": self.started, "message": self.message, "phase": self.phase,
        }


def summarize(run: Path) -> RunSummary:
    """The run's status from its files. Never raises: a folder it cannot make sense of is reported
    as damaged (or as running, while its training process is alive)."""
    run = Path(run)
    try:
        return _summarize(run)
    except Exception as exc:  # noqa: BLE001 - a hand-edited folder must not break the Runs tab
        return RunSummary(run_id=run.name, path=run, status=RUNNING if process_alive(run) else DAMAGED,
                          message=f"cannot read the run folder: {type(exc).__name__}: {exc}"[:300])


def _summarize(run: Path) -> RunSummary:
    parsed = _parsed(run)
    process_key = _file_key(os.path.join(run, PROCESS))  # strings, not Paths: this runs 500 times a listing
    if parsed.ended is not None and parsed.process_key == process_key:
        # A trainer found dead stays dead (its pid and start time never come back); a new one is
        # recorded in a new process.json. Nothing the summary is made of has changed.
        return dataclasses.replace(parsed.ended, config=dict(parsed.ended.config),
                                   progress=copy.copy(parsed.ended.progress))
    summary = _summary_of(run, parsed)
    if summary.status not in ACTIVE_STATUSES:
        parsed.ended = dataclasses.replace(summary, config=dict(summary.config),
                                           progress=copy.copy(summary.progress))
        parsed.process_key = process_key
    return summary


def _summary_of(run: Path, parsed: "_Parsed") -> RunSummary:
    summary = RunSummary(run_id=run.name, path=run, status=DAMAGED)
    alive = process_alive(run)  # asked while the trainer was last seen alive: it can die without a word
    if parsed.config is None:
        # Still running (someone edited the file by hand mid-run)? Then it is busy, whatever its
        # config says, so the one-run-at-a-time rule keeps holding.
        summary.status = RUNNING if alive else DAMAGED
        summary.message = f"{CONFIG} is damaged: {parsed.config_error}"
        return summary
    summary.config = dict(parsed.config)
    summary.progress = copy.copy(parsed.progress)  # its lists are shared with the cache: read them only
    launched = (run / PROCESS).exists()
    summary.status = status_from(summary.progress, alive)
    summary.message = "" if alive else interruption_message(summary.progress, launched)
    size = parsed.events_key[2] if parsed.events_key else 0
    if not alive and size > parsed.offset:  # a kill mid-write: the rest is intact
        summary.message = (summary.message + "; " if summary.message else "") + \
            f"{EVENTS} ends with a half-written line (ignored)"
    return summary


# The Runs table, every run picker and each page load list every run. Parsing each config.yaml and
# events.jsonl on every call made a workspace of 500 runs take seconds per page (bench/many_runs.py),
# so what a summary is parsed from is kept per run folder and read again only when config.yaml or
# events.jsonl changes (config.yaml's bytes; events.jsonl's inode, modification time or size: the
# trainer only appends to it); an events file that only grew (a run training) is read on from where
# the last read stopped. The status is derived anew on every call (is the trainer alive?).
_TAIL = 64  # bytes before the offset compared on a re-read: a file rewritten, not appended, is read whole


@dataclass
class _Parsed:
    config_key: bytes | None = None
    config: dict | None = None
    config_error: str = ""
    events_key: tuple | None = None
    progress: EventSummary = field(default_factory=EventSummary)
    offset: int = 0
    tail: bytes = b""
    ended: RunSummary | None = None  # the summary once no trainer is alive, and process.json's key then
    process_key: tuple | None = None


_PARSED: dict[Path, _Parsed] = {}
_PARSED_LOCK = threading.Lock()


def _file_key(path: str | Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _config_bytes(run: Path) -> bytes | None:
    # config.yaml is small: its bytes are its key (exact, whatever the clock's resolution), and
    # parsing them into a TrainConfig is what costs
    try:
        with open(os.path.join(run, CONFIG), "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _bytes_before(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, offset - _TAIL))
            return fh.read(min(offset, _TAIL))
    except OSError:
        return b""


def _parsed(run: Path) -> _Parsed:
    """The run's config and event summary, from the cache while their files are unchanged."""
    config_key, events_key = _config_bytes(run), _file_key(os.path.join(run, EVENTS))
    with _PARSED_LOCK:
        cached = _PARSED.get(run)
    if cached is not None and cached.config_key == config_key and cached.events_key == events_key:
        return cached
    fresh = _Parsed(config_key=config_key, events_key=events_key)
    if cached is not None and cached.config_key == config_key and config_key is not None:
        fresh.config, fresh.config_error = cached.config, cached.config_error
    else:
        try:
            fresh.config = read_config(run).to_dict()
        except config_mod.ConfigError as exc:
            fresh.config_error = str(exc)
    path = events_path(run)
    appended = (cached is not None and cached.events_key is not None and events_key is not None
                and events_key[0] == cached.events_key[0] and events_key[2] >= cached.offset
                and _bytes_before(path, cached.offset) == cached.tail)
    start = cached.offset if appended else 0
    events, fresh.offset = read_run_events(run, start)
    fresh.progress = copy.deepcopy(cached.progress) if appended else EventSummary()
    fresh.progress.extend(events)
    fresh.tail = _bytes_before(path, fresh.offset)
    with _PARSED_LOCK:
        _PARSED[run] = fresh
    return fresh


def _forget_missing(folder: Path, listed: set[Path]) -> None:
    """Drop cached runs of this runs folder that are gone (deleted)."""
    with _PARSED_LOCK:
        for run in [r for r in _PARSED if r.parent == folder and r not in listed]:
            del _PARSED[run]
            _PROCESS_INFO.pop(os.path.join(run, PROCESS), None)
            _EVALUATIONS.pop(os.path.join(run, EVALUATION), None)


# A page load fills every run picker, the Runs table and the seed groups (eight listings of every
# run); inside `with one_listing():` the first list_runs of a runs folder is kept and the later calls
# of the same block filter it, so one request lists the workspace once and all it shows agrees.
# Outside such a block every call lists anew (the start lock, the queue and the CLI never see a
# listing older than their call).
_LISTING: contextvars.ContextVar[dict | None] = contextvars.ContextVar("record_listing", default=None)


@contextlib.contextmanager
def one_listing():
    """Within the block, list_runs lists each runs folder once (the summaries it hands out are shared
    by the block's callers: read them only). Nested blocks share the outermost one's listing."""
    if _LISTING.get() is not None:
        yield
        return
    token = _LISTING.set({})
    try:
        yield
    finally:
        _LISTING.reset(token)


def _listing(folder: Path) -> list[RunSummary]:
    memo = _LISTING.get()
    if memo is not None and folder in memo:
        return memo[folder]
    found = [summarize(p) for p in folder.iterdir() if p.is_dir() and RUN_ID_PATTERN.match(p.name)]
    _forget_missing(folder, {s.path for s in found})
    if memo is not None:
        memo[folder] = found
    return found


def list_runs(workspace: Path, *, statuses: tuple[str, ...] | None = None, base_model: str | None = None,
              method: str | None = None) -> list[RunSummary]:
    """Every run folder, newest first, optionally only those with one of `statuses`, a base model
    or a method. A damaged folder is listed as damaged, never fatal."""
    folder = runs_dir(workspace)
    if not folder.is_dir():
        return []
    found = [s for s in _listing(folder) if (statuses is None or s.status in statuses)
             and (base_model is None or s.config.get("base_model") == base_model)
             and (method is None or s.config.get("method") == method)]
    return sorted(found, key=lambda s: s.run_id, reverse=True)


def active_runs(workspace: Path) -> list[RunSummary]:
    return list_runs(workspace, statuses=ACTIVE_STATUSES)


def run_ids(workspace: Path) -> list[str]:
    """Every run id, newest first: the choices of each run picker on the page."""
    return [s.run_id for s in list_runs(workspace)]


def default_run(workspace: Path) -> str | None:
    """The active run, else the newest: what a freshly opened page shows."""
    listed = list_runs(workspace)
    pick = [s for s in listed if s.status in ACTIVE_STATUSES] or listed
    return pick[0].run_id if pick else None


# --- the queue of runs waiting to start (tuning/runs/runner.py changes it, under its workspace lock) ---

def queue_path(workspace: Path) -> Path:
    return Path(workspace) / QUEUE


def read_queue(workspace: Path) -> list[dict]:
    """The queued entries, first to start first: {id, added, config, note?}. A missing or damaged
    file reads as an empty queue (it is only ever replaced whole)."""
    value = read_json(queue_path(workspace))
    entries = value.get("queued") if isinstance(value, dict) else None
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("config"), dict)
            and isinstance(e.get("id"), str)] if isinstance(entries, list) else []


def write_queue(workspace: Path, entries: list[dict]) -> None:
    write_json(queue_path(workspace), {"queued": entries})


# --- evaluation.json -----------------------------------------------------------------------------

# path -> (file key, the file's JSON text, the same without the per-row answers)
_EVALUATIONS: dict[str, tuple[tuple, str, str]] = {}


def _without_answers(value: dict | None) -> dict | None:
    """The evaluation less its per-row answers (the task checks' rows, the probes): every figure the
    listings show, about 1 KB of a quickstart's 25 KB."""
    if value is None:
        return None
    short = {k: v for k, v in value.items() if k != "probes"}
    if isinstance(short.get("checks"), dict):
        short["checks"] = {k: v for k, v in short["checks"].items() if k != "rows"}
    return short


def read_evaluation(run: Path, *, answers: bool = True) -> dict | None:
    """The run's evaluation, or None; with answers=False without the per-row answers (the Runs
    table, the seed groups and the pickers read only its figures)."""
    # The Runs table, the seed groups and the Evaluation tab's picker read every run's evaluation on
    # each page load (500 runs: 1,000 reads). The text is kept by the file's key (write_json replaces
    # the file: a new inode), so an unchanged file costs no disk read; parsing it again hands every
    # caller its own copy (measured: json.loads of a 25 KB evaluation as fast as marshal, faster than
    # deepcopy; marshal is refused anyway, tests/test_security.py). Parsing 500 whole files was
    # most of a page load (bench/many_runs.py): the listings parse the 1 KB of figures instead.
    path = os.path.join(run, EVALUATION)
    key = _file_key(path)
    cached = _EVALUATIONS.get(path)
    if key is not None and cached is not None and cached[0] == key:
        return json.loads(cached[1] if answers else cached[2])
    value = read_json(path)
    value = value if isinstance(value, dict) else None
    if key is not None:
        _EVALUATIONS[path] = (key, json.dumps(value), json.dumps(_without_answers(value)))
    return value if answers else _without_answers(value)


def write_evaluation(run: Path, result: dict) -> None:
    write_json(Path(run) / EVALUATION, result)


def perplexity(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None


def checks_done(result: dict) -> bool:
    """Whether the task checks ran (a stopped run skips them); a file written before the
    checks_complete flag existed counts as done when it holds checks."""
    return bool(result.get("checks_complete", result.get("checks") is not None))


def checks_text(result: dict | None) -> str:
    """"identity 9/10 (base 0/10); control 8/10 (base 9/10)": tuned vs base, from evaluation.json."""
    by_kind = ((result or {}).get("checks") or {}).get("by_kind") or {}

    def slots(c: dict) -> str:  # " [name 7/8, maker 8/8]" for rows with named slots
        named = [f"{slot} {t['tuned_passed']}/{t['n']}" for slot, t in (c.get("slots") or {}).items()]
        return f" [{', '.join(named)}]" if named else ""
    return "; ".join(f"{kind} {c['tuned_passed']}/{c['n']} (base {c['base_passed']}/{c['n']}){slots(c)}"
                     for kind, c in by_kind.items())


def headline(result: dict) -> str:
    """One line for the Live tab's log and the CLI."""
    parts = []
    if result.get("eval_loss") is not None:
        # each figure only when the file has it: an evaluation written by hand or by an older version
        # may lack the base's figures or the perplexity, and must not break the page that shows it
        def pair(name: str, key: str, digits: int) -> str:
            base = result.get(f"base_{key}")
            value = result.get(key)
            return "" if value is None else (f"{name} {value:.{digits}f}"
                                             + (f" (base {base:.{digits}f})" if base is not None else ""))
        parts.append(", ".join(p for p in (pair("held-out loss", "eval_loss", 3), pair("perplexity", "perplexity", 1)) if p))
    checks = checks_text(result)
    if checks:
        parts.append(checks)
    if result.get("preference"):
        parts.append(preference_text(result["preference"]))
    return "; ".join(parts) or "no held-out data"


def preference_text(figures: dict | None) -> str:
    """One line from evaluation.json's preference figures (tuning/train/preference.py computes them)."""
    if not figures:
        return ""
    if figures.get("kind") == "kto":
        return f"implicit reward right on {figures['reward_accuracy']:.0%} of {figures['rows']} held-out answers"
    return (f"held-out preference accuracy {figures['tuned_accuracy']:.0%} (base {figures['base_accuracy']:.0%}) "
            f"on {figures['rows']} pairs, margin {figures['tuned_margin']:+.2f} (base {figures['base_margin']:+.2f}); "
            f"implicit reward accuracy {figures['reward_accuracy']:.0%}, margin {figures['reward_margin']:+.2f}")


# --- probes ------------------------------------------------------------------------------------

def read_probes(run: Path) -> list[str] | None:
    value = read_json(Path(run) / PROBES)
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else None


def check_probes(prompts: list[str] | str) -> list[str]:
    """A probe list from the UI: a list, or text with one prompt a line. Empty lines dropped."""
    if isinstance(prompts, str):
        prompts = prompts.splitlines()
    cleaned = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
    if not cleaned:
        raise RunError("probes: give at least one prompt (one a line)")
    if len(cleaned) > MAX_PROBES:
        raise RunError(f"probes: at most {MAX_PROBES} prompts (each costs generation time at every checkpoint)")
    return cleaned


def write_probes(run: Path, prompts: list[str] | str) -> list[str]:
    """Save a run's probe list. Later checkpoints and re-evaluations answer the new list; answers
    already recorded are kept."""
    cleaned = check_probes(prompts)
    write_json(Path(run) / PROBES, cleaned)
    return cleaned


def append_probe_answers(run: Path, record: dict) -> None:
    append_line(Path(run) / PROBE_ANSWERS, record)


def probe_history(run: Path) -> list[dict]:
    """probe_answers.jsonl: one record a checkpoint, {step, checkpoint, time, answers: [{prompt, base,
    tuned}]}, in step order; a later record for the same checkpoint (a re-run) wins."""
    by_key: dict[tuple, dict] = {}
    for value in read_lines(Path(run) / PROBE_ANSWERS):
        if isinstance(value.get("step"), int) and isinstance(value.get("answers"), list):
            by_key[(value["step"], value.get("checkpoint"))] = value
    return [by_key[k] for k in sorted(by_key, key=lambda k: (k[0], k[1] == "final"))]


def cached_base_answers(run: Path, prompts: list[str]) -> list[str] | None:
    """Greedy base answers recorded earlier for this exact probe list (e.g. before a resume)."""
    for value in reversed(probe_history(run)):
        answers = value["answers"]
        if [a.get("prompt") for a in answers] == prompts:
            return [a.get("base", "") for a in answers]
    return None


def latest_examples(run: Path, limit: int = 3) -> list[dict]:
    """Up to `limit` {prompt, base, tuned} answers: the newest probe record, else the evaluation's."""
    history = probe_history(run)
    answers = history[-1]["answers"] if history else (read_evaluation(run) or {}).get("probes") or []
    return [a for a in answers if isinstance(a, dict) and {"prompt", "base", "tuned"} <= a.keys()][:limit]


# --- per-example losses (tuning/evaluation/row_losses.py computes and ranks them) ---------------------------

def write_row_index(run: Path, index: dict) -> None:
    """rows.json: {"sources": {"train": ..., "heldout": ...}, "train": [[file, row], ...], "heldout":
    [[file, row], ...]}; a row id is the position in its list (tuning/row_losses.row_index)."""
    write_json(Path(run) / ROWS, index)


def read_row_index(run: Path) -> dict:
    value = read_json(Path(run) / ROWS)
    return value if isinstance(value, dict) else {}


def append_row_losses(run: Path, line: dict) -> None:
    """One line of row_losses.jsonl: {split: train|heldout, step, time, ids, losses, tokens[, base]}."""
    append_line(Path(run) / ROW_LOSSES, {"time": round(time.time(), 3), **line})


def read_row_losses(run: Path) -> list[dict]:
    return [v for v in read_lines(Path(run) / ROW_LOSSES)
            if v.get("split") in ("train", "heldout") and isinstance(v.get("ids"), list)
            and isinstance(v.get("losses"), list) and len(v["ids"]) == len(v["losses"])]


# --- blind A/B votes -----------------------------------------------------------------------------

def append_vote(run: Path, vote: dict) -> None:
    append_line(Path(run) / VOTES, {"time": round(time.time(), 3), **vote})


def read_votes(run: Path) -> list[dict]:
    return [v for v in read_lines(Path(run) / VOTES) if v.get("winner") in ("base", "tuned", "tie")]


def ab_summary(run: Path) -> dict:
    votes = read_votes(run)
    counts = {w: sum(v["winner"] == w for v in votes) for w in ("tuned", "base", "tie")}
    n = len(votes)
    return {"votes": n, "tuned_wins": counts["tuned"], "base_wins": counts["base"], "ties": counts["tie"],
            "tuned_win_rate": counts["tuned"] / n if n else None,
            "text": (f"tuned wins {counts['tuned']} of {n} ({counts['tuned'] / n:.0%}); base wins "
                     f"{counts['base']}, ties {counts['tie']}") if n else "no votes yet"}


# --- votes and corrections as training data -------------------------------------------------------

def _pair(prompt: str, chosen: str, rejected: str, source: str) -> dict:
    """One DPO pair in TRL's conversational form (tuning/data/pairs.py reads it back like any file)."""
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "source": source}


def vote_pairs(run: Path) -> list[dict]:
    """Every blind vote with a winner as a pair: the winner's answer chosen, the loser's rejected
    (ties, and votes on two identical answers, teach nothing and are left out)."""
    out = []
    for v in read_votes(run):
        if v["winner"] == "tie" or not all(isinstance(v.get(k), str) for k in ("prompt", "a", "b")):
            continue
        texts = {v.get("a_is"): v["a"], "tuned" if v.get("a_is") == "base" else "base": v["b"]}
        loser = "base" if v["winner"] == "tuned" else "tuned"
        if v["prompt"].strip() and texts.get(v["winner"], "").strip() != texts.get(loser, "").strip():
            out.append(_pair(v["prompt"], texts[v["winner"]], texts[loser], "vote"))
    return out


def append_correction(run: Path, prompt: str, original: str, corrected: str, system: str = "") -> dict:
    """Keep a person's corrected answer: one SFT example (messages) with the answer it replaces."""
    if not (prompt or "").strip() or not (corrected or "").strip():
        raise RunError("correction: needs the prompt and a corrected answer")
    if corrected.strip() == (original or "").strip():
        raise RunError("correction: the corrected answer is the same as the original; edit it first")
    messages = ([{"role": "system", "content": system}] if (system or "").strip() else []) + [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": corrected}]
    line = {"messages": messages, "original": original or "", "time": round(time.time(), 3)}
    append_line(Path(run) / CORRECTIONS, line)
    return line


def read_corrections(run: Path) -> list[dict]:
    return [c for c in read_lines(Path(run) / CORRECTIONS) if isinstance(c.get("messages"), list)]


def corrections_path(run: Path) -> Path:
    return Path(run) / CORRECTIONS


def correction_pairs(run: Path) -> list[dict]:
    """Each correction with its original answer as a pair: the correction chosen, the original rejected."""
    out = []
    for c in read_corrections(run):
        users = [m.get("content", "") for m in c["messages"] if m.get("role") == "user"]
        answer = c["messages"][-1].get("content", "")
        if users and (c.get("original") or "").strip() and answer.strip() != c["original"].strip():
            out.append(_pair(users[-1], answer, c["original"], "correction"))
    return out


def preference_pairs(run: Path) -> list[dict]:
    return vote_pairs(run) + correction_pairs(run)


def write_preference_pairs(run: Path) -> Path:
    """The run's votes and corrections as one DPO dataset file (rewritten whole); refused when there
    is no pair yet."""
    found = preference_pairs(run)
    if not found:
        raise RunError(f"run {Path(run).name} has no votes with a winner and no corrections yet: vote in the "
                       "Playground or the Evaluation tab first")
    path = Path(run) / PREFERENCE_PAIRS
    write_atomic(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in found))
    return path


def runs_with_preferences(workspace: Path) -> list[str]:
    """Runs that have at least one pair (a decisive vote or a correction), newest first."""
    return [s.run_id for s in list_runs(workspace) if preference_pairs(s.path)]

"""The workspace: runs/<run_id>/ folders, their status, listing, and the one-run-at-a-time rule.

A run folder holds config.yaml (the resolved TrainConfig), events.jsonl (the truth about the
run), process.json (the training process's pid and start time), train.log (its stdout and
stderr), checkpoints/checkpoint-N/ (each with a COMPLETE marker written last) and adapter/.
Status is derived from those files alone, so any process can answer it after any crash.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tuning import config as config_mod
from tuning.events import read_events

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,95}$")
COMPLETE_MARKER = "COMPLETE"

# Statuses a run can be in.
STARTING, RUNNING, COMPLETED, STOPPED, FAILED, INTERRUPTED, DAMAGED = (
    "starting", "running", "completed", "stopped", "failed", "interrupted", "damaged")
ACTIVE_STATUSES = (STARTING, RUNNING)


class RunError(ValueError):
    """A run id or run folder problem the user should read."""


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


# --- the training process --------------------------------------------------------------

def write_process_info(path: Path, pid: int) -> None:
    # create_time tells a reused pid apart; pgid says whether Stop may signal the whole group
    # (only when the trainer leads its own group, as the runner starts it).
    import os

    try:
        info = {"pid": pid, "create_time": psutil.Process(pid).create_time(), "pgid": os.getpgid(pid)}
    except (psutil.Error, OSError):  # it died at once: record it, so the run reads as ended (see train.log)
        info = {"pid": pid, "create_time": 0.0, "pgid": None}
    tmp = path / "process.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(path / "process.json")


def training_process(path: Path) -> psutil.Process | None:
    """The run's training process while it is alive, else None. A pid reused by another process
    is ruled out by its start time; a zombie (ended, not yet reaped) counts as ended."""
    try:
        info = json.loads((path / "process.json").read_text())
        proc = psutil.Process(int(info["pid"]))
        if abs(proc.create_time() - float(info["create_time"])) > 1.0:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except (OSError, ValueError, KeyError, TypeError, AttributeError, psutil.Error):
        return None


def process_alive(path: Path) -> bool:
    """True while the run's training process is alive."""
    return training_process(path) is not None


# --- checkpoints ---------------------------------------------------------------------------

def complete_checkpoints(path: Path) -> list[Path]:
    """Checkpoints whose COMPLETE marker exists, oldest first. A checkpoint half-written when
    the process died has no marker and is skipped."""
    folder = path / "checkpoints"
    found = []
    for ckpt in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = ckpt.name.rpartition("-")[2]
        if step.isdigit() and (ckpt / COMPLETE_MARKER).exists():
            found.append((int(step), ckpt))
    return [c for _, c in sorted(found)]


def latest_checkpoint(path: Path) -> Path | None:
    ckpts = complete_checkpoints(path)
    return ckpts[-1] if ckpts else None


def discard_incomplete_checkpoints(path: Path) -> list[Path]:
    """Delete checkpoint folders without a COMPLETE marker (half-written by a crash or a full
    disk), so the Trainer's rotation never keeps one of them in place of a good checkpoint.
    Call only while no process is writing to the run."""
    folder = path / "checkpoints"
    complete = set(complete_checkpoints(path))
    removed = []
    for ckpt in sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []:
        if ckpt.is_dir() and ckpt not in complete:
            shutil.rmtree(ckpt, ignore_errors=True)
            removed.append(ckpt)
    return removed


# --- summary -------------------------------------------------------------------------------

@dataclass
class RunSummary:
    run_id: str
    path: Path
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    max_steps: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    started: float | None = None
    ended: float | None = None
    last_event_time: float | None = None
    message: str = ""
    error: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started if self.status in ACTIVE_STATUSES or self.ended \
            else (self.last_event_time or self.started) - self.started

    def as_row(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status,
            "base_model": self.config.get("base_model", ""), "method": self.config.get("method", ""),
            "step": self.step, "max_steps": self.max_steps, "loss": self.loss, "eval_loss": self.eval_loss,
            "duration_s": round(self.duration, 1) if self.duration is not None else None,
            "created": self.started, "message": self.message,
        }


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(path: Path, with_events: bool = False) -> RunSummary:
    """The run's status from its files. Never raises: a folder it cannot make sense of is
    reported as damaged (or as running, while its training process is alive)."""
    path = Path(path)
    try:
        return _summarize(path, with_events)
    except Exception as exc:  # noqa: BLE001 - a hand-edited folder must not break the Runs tab
        alive = process_alive(path)
        return RunSummary(run_id=path.name, path=path, status=RUNNING if alive else DAMAGED,
                          message=f"cannot read the run folder: {type(exc).__name__}: {exc}"[:300])


def _summarize(path: Path, with_events: bool) -> RunSummary:
    summary = RunSummary(run_id=path.name, path=path, status=DAMAGED)
    try:
        summary.config = config_mod.load(path / "config.yaml").to_dict()
    except config_mod.ConfigError as exc:
        # Still running (someone edited the file by hand mid-run)? Then it is busy, whatever
        # its config says, so the one-run-at-a-time rule keeps holding.
        summary.status = RUNNING if process_alive(path) else DAMAGED
        summary.message = f"config.yaml is damaged: {exc}"
        return summary
    events, offset = read_events(path / "events.jsonl")
    log_file = path / "events.jsonl"
    partial = log_file.is_file() and log_file.stat().st_size > offset and not process_alive(path)
    final_status = None
    for ev in events:
        kind = ev.get("event")
        if kind == "start":
            summary.started = summary.started or _number(ev.get("time"))
            final_status, summary.error = None, None  # a resume starts a new segment
        if isinstance(ev.get("step"), int):
            summary.step = ev["step"]
        if isinstance(ev.get("max_steps"), int):
            summary.max_steps = ev["max_steps"]
        if kind == "log" and isinstance(ev.get("loss"), (int, float)):
            summary.loss = ev["loss"]
        if kind == "eval" and isinstance(ev.get("eval_loss"), (int, float)):
            summary.eval_loss = ev["eval_loss"]
        if kind == "end":
            final_status = ev.get("status") if ev.get("status") in (COMPLETED, STOPPED) else COMPLETED
            summary.ended = _number(ev.get("time"))
            summary.message = str(ev.get("message", ""))
        if kind == "error":
            final_status = FAILED
            summary.ended = _number(ev.get("time"))
            summary.error = ev
            summary.message = str(ev.get("message", ""))
        summary.last_event_time = _number(ev.get("time")) or summary.last_event_time
    alive = process_alive(path)
    if alive:
        summary.status = RUNNING if events else STARTING
        summary.ended = None
    elif final_status:
        summary.status = final_status
    elif events or (path / "process.json").exists():
        summary.status = INTERRUPTED
        summary.message = summary.message or "the training process ended without saying why; resume it"
    else:
        summary.status = INTERRUPTED
        summary.message = "never started"
    if partial:  # a kill mid-write: the half line is ignored, the rest is intact
        summary.message = (summary.message + "; " if summary.message else "") + \
            "events.jsonl ends with a half-written line (ignored)"
    if with_events:
        summary.events = events
    return summary


def list_runs(workspace: Path) -> list[RunSummary]:
    """Every run folder, newest first. A damaged folder is listed as damaged, never fatal."""
    folder = runs_dir(workspace)
    if not folder.is_dir():
        return []
    summaries = []
    for path in folder.iterdir():
        if not path.is_dir() or not RUN_ID_PATTERN.match(path.name):
            continue
        try:
            summaries.append(summarize(path))
        except Exception as exc:  # noqa: BLE001 - one bad folder must not hide the others
            summaries.append(RunSummary(run_id=path.name, path=path, status=DAMAGED, message=str(exc)))
    return sorted(summaries, key=lambda s: s.run_id, reverse=True)


def active_runs(workspace: Path) -> list[RunSummary]:
    return [s for s in list_runs(workspace) if s.status in ACTIVE_STATUSES]


def delete_run(workspace: Path, run_id: str) -> None:
    path = existing_run_dir(workspace, run_id)
    if process_alive(path):
        raise RunError(f"run {run_id} is still training; stop it before deleting it")
    shutil.rmtree(path)

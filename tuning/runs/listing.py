"""The runs of a workspace: each run's summary (config, progress, status) and the listing every run
picker, the Runs table and the queue read. Summaries are cached per run folder and parsed again only
when its files change, so a workspace of hundreds of runs lists in milliseconds (bench/many_runs.py)."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning import config as config_mod
from tuning.runs import events as events_mod
from tuning.runs.layout import (ACTIVE_STATUSES, CONFIG, DAMAGED, EVENTS, PROCESS, RUNNING, RUN_ID_PATTERN, RunError,
                                events_path, existing_run_dir, read_config, runs_dir)
from tuning.runs.events import EventSummary, interruption_message, read_run_events, status_from
from tuning.runs.files import file_key
from tuning.runs.process import forget_process_info, process_alive
from tuning.runs.results import forget_evaluation

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
    process_key = file_key(os.path.join(run, PROCESS))  # strings, not Paths: this runs 500 times a listing
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
    config_key, events_key = _config_bytes(run), file_key(os.path.join(run, EVENTS))
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
            forget_process_info(run)
            forget_evaluation(run)


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


def delete_run(workspace: Path, run_id: str) -> None:
    path = existing_run_dir(workspace, run_id)
    if process_alive(path):
        raise RunError(f"run {run_id} is still training; stop it before deleting it")
    shutil.rmtree(path)

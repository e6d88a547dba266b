"""Where a run's files are: the names inside a run folder, the run id rule, the statuses a run can be
in, the folder paths, the run's config.yaml and the workspace's queue file. Every other module of the
run store builds its paths from here."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tuning import config as config_mod
from tuning.runs.files import read_json, write_atomic, write_json

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
BENCHMARKS = "benchmarks.json"  # standard benchmarks, base vs tuned (tuning/evaluation/benchmarks.py)
PROBES = "probes.json"
PROBE_ANSWERS = "probe_answers.jsonl"
VOTES = "ab_votes.jsonl"
CORRECTIONS = "corrections.jsonl"
PREFERENCE_PAIRS = "preference_pairs.jsonl"
ROWS = "rows.json"
PLAN = "plan.json"  # the recipe's plan a run started with (tuning/train/recipe.py)
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


# --- config ------------------------------------------------------------------------------------

def read_config(run: Path) -> config_mod.TrainConfig:
    """The run's TrainConfig; a ConfigError naming the file when it is missing or damaged."""
    return config_mod.load(config_path(run))


def write_config(run: Path, cfg: config_mod.TrainConfig) -> None:
    write_atomic(config_path(run), cfg.to_yaml())


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

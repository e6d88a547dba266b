"""Checkpoints and adapters: a checkpoint counts once its COMPLETE marker is written (last, after every
file is fsynced), a resume starts from the newest complete one, a person may choose any of them as the
run's final adapter (recorded as a `choice` event), and every reader asks current_adapter which
adapter that is."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tuning.runs.layout import (ADAPTER, ADAPTER_CONFIG, ADAPTER_WEIGHTS, COMPLETE_MARKER, RunError, adapter_dir,
                                check_run_id, checkpoints_dir)
from tuning.runs.files import fsync_tree, write_atomic
from tuning.runs.events import event_log, read_run_events
from tuning.runs.process import process_alive
from tuning.runs.listing import summarize

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

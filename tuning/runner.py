"""Start, stop and resume the training process from another process (the UI, a test).

Training always runs as a child process, `python -m tuning train --config runs/<id>/config.yaml`,
started with a list-form Popen (never a shell) in its own process group, so a crash or an
out-of-memory kill there leaves the UI standing, and Stop can end the whole group.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tuning import runs
from tuning.config import TrainConfig


class StartRefused(runs.RunError):
    """Another run is active, or the workspace cannot take a new run."""


@contextmanager
def workspace_lock(workspace: Path):
    """Serialise run starts across processes (two tabs, two clients, a double click)."""
    workspace = Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    with open(workspace / ".start.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def refuse_if_busy(workspace: Path, except_run: str | None = None) -> None:
    busy = [s for s in runs.active_runs(workspace) if s.run_id != except_run]
    if busy:
        raise StartRefused(f"run {busy[0].run_id} is still training; stop it or wait for it to finish "
                           "(one run at a time)")


def create_run(workspace: Path, cfg: TrainConfig) -> Path:
    """A new run folder holding the resolved config. Call under workspace_lock."""
    run_id = runs.new_run_id(workspace, cfg.run_name)
    path = runs.run_dir(workspace, run_id)
    path.mkdir(parents=True)
    tmp = path / "config.yaml.tmp"
    tmp.write_text(cfg.to_yaml(), encoding="utf-8")
    tmp.replace(path / "config.yaml")
    return path


def _spawn(run_path: Path, workspace: Path, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "tuning", "train", "--workspace", str(workspace), *extra]
    log = open(run_path / "train.log", "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(Path(__file__).resolve().parent.parent), env=env,
                                start_new_session=True)
    finally:
        log.close()


def start(cfg: TrainConfig, workspace: Path) -> str:
    """Start a new run in the background; returns its run id. Refused while another is active."""
    workspace = Path(workspace)
    with workspace_lock(workspace):
        refuse_if_busy(workspace)
        path = create_run(workspace, cfg)
        proc = _spawn(path, workspace, ["--config", str(path / "config.yaml")])
        runs.write_process_info(path, proc.pid)
    return path.name


def resume(workspace: Path, run_id: str) -> str:
    """Continue a stopped or interrupted run from its newest complete checkpoint."""
    workspace = Path(workspace)
    with workspace_lock(workspace):
        path = runs.existing_run_dir(workspace, run_id)
        refuse_if_busy(workspace)
        summary = runs.summarize(path)
        if summary.status == runs.DAMAGED:
            raise StartRefused(f"run {run_id} is damaged: {summary.message}")
        if summary.status == runs.COMPLETED:
            raise StartRefused(f"run {run_id} already completed")
        proc = _spawn(path, workspace, ["--resume", run_id])
        runs.write_process_info(path, proc.pid)
    return run_id


def stop(workspace: Path, run_id: str, timeout: float = 0.0) -> bool:
    """Ask the run to stop gracefully (SIGTERM to its process group: it finishes the current step,
    saves a checkpoint and the adapter). With timeout > 0, wait, then SIGKILL what is left."""
    import json

    path = runs.existing_run_dir(workspace, run_id)
    if not runs.process_alive(path):
        return False
    pid = int(json.loads((path / "process.json").read_text())["pid"])
    try:
        os.killpg(os.getpgid(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    if timeout > 0:
        deadline = time.time() + timeout
        while time.time() < deadline and runs.process_alive(path):
            time.sleep(0.2)
        if runs.process_alive(path):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    return True


def wait(workspace: Path, run_id: str, timeout: float = 600.0, poll: float = 0.5) -> runs.RunSummary:
    """Block until the run's process ends (for tests and scripts)."""
    path = runs.existing_run_dir(workspace, run_id)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not runs.process_alive(path):
            break
        time.sleep(poll)
    return runs.summarize(path)

"""Start, stop and resume the training process from another process (the UI, a test).

Training always runs as a child process, `python -m tuning train --config runs/<id>/config.yaml`,
started with a list-form Popen (never a shell) in its own process group, so a crash or an
out-of-memory kill there leaves the UI standing, and Stop can end the whole group.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from tuning import record
from tuning.config import TrainConfig

# Free space a new run needs before it starts: checkpoints (adapter + optimizer state, up to
# save_total_limit of them), the final adapter and, on first use, the converted embedded model
# (538 MB in fp32). Checked where it can be, so a full disk is a message, not a broken run.
MIN_FREE_BYTES = 1 << 30  # 1 GiB


class StartRefused(record.RunError):
    """Another run is active, or the workspace cannot take a new run."""


def check_workspace_usable(workspace: Path, need_bytes: int | None = None) -> None:
    """Refuse a start the workspace cannot hold: not a writable folder, or too little free space."""
    workspace = Path(workspace)
    need = MIN_FREE_BYTES if need_bytes is None else need_bytes
    try:
        runs_folder = record.runs_dir(workspace)
        runs_folder.mkdir(parents=True, exist_ok=True)
        probe = runs_folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StartRefused(f"the workspace {workspace} is not writable ({reason}); choose another folder with "
                           "--workspace or fix its permissions") from None
    free = shutil.disk_usage(runs_folder).free
    if free < need:
        raise StartRefused(f"only {free / 2**20:.0f} MB free in {workspace}; a run needs at least "
                           f"{need / 2**20:.0f} MB for its checkpoints and adapter: free some space first")


@contextmanager
def workspace_lock(workspace: Path):
    """Serialise run starts across processes (two tabs, two clients, a double click)."""
    workspace = Path(workspace)
    try:
        workspace.mkdir(parents=True, exist_ok=True)
        fh = open(workspace / ".start.lock", "a+")
    except OSError as exc:
        raise StartRefused(f"the workspace {workspace} is not usable ({exc.strerror or exc}); choose another "
                           "folder with --workspace") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def refuse_if_busy(workspace: Path, except_run: str | None = None) -> None:
    busy = [s for s in record.active_runs(workspace) if s.run_id != except_run]
    if busy:
        raise StartRefused(f"run {busy[0].run_id} is still training; stop it or wait for it to finish "
                           "(one run at a time)")


def create_run(workspace: Path, cfg: TrainConfig) -> Path:
    """A new run folder holding the resolved config. Call under workspace_lock. Checks the
    workspace first; a failure half-way removes the folder again (no broken run is left)."""
    check_workspace_usable(workspace)
    run_id = record.new_run_id(workspace, cfg.run_name)
    path = record.run_dir(workspace, run_id)
    path.mkdir(parents=True)
    try:
        record.write_config(path, cfg)
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StartRefused(f"could not write the run folder in {workspace}: "
                           + ("the disk is full" if full else (exc.strerror or str(exc)))) from None
    return path


def build_command(workspace: Path, extra: list[str]) -> list[str]:
    """The training command as an argv list (never a shell string). Every element is a fixed
    word or an absolute path the runner built itself (workspace/runs/<validated run id>/...),
    so no text from the page can become an option or a shell command."""
    return [sys.executable, "-m", "tuning", "train", "--workspace", str(Path(workspace).resolve()), *extra]


def _spawn(run_path: Path, workspace: Path, extra: list[str]) -> subprocess.Popen:
    log = open(record.log_path(run_path), "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        # start_new_session: the trainer leads its own process group and session, so a closed
        # terminal or a killed UI does not take it down, and Stop can signal the whole group.
        return subprocess.Popen(build_command(workspace, extra), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parent.parent),
                                env=env, start_new_session=True)
    finally:
        log.close()


def start(cfg: TrainConfig, workspace: Path) -> str:
    """Start a new run in the background; returns its run id. Refused while another is active."""
    workspace = Path(workspace).resolve()
    with workspace_lock(workspace):
        refuse_if_busy(workspace)
        path = create_run(workspace, cfg)
        try:
            proc = _spawn(path, workspace, ["--config", str(record.config_path(path))])
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise StartRefused(f"could not start the training process: {exc.strerror or exc}") from None
        record.write_process_info(path, proc.pid)
    return path.name


def resume(workspace: Path, run_id: str) -> str:
    """Continue a stopped or interrupted run from its newest complete checkpoint."""
    workspace = Path(workspace)
    with workspace_lock(workspace):
        path = record.existing_run_dir(workspace, run_id)
        refuse_if_busy(workspace)
        summary = record.summarize(path)
        if summary.status == record.DAMAGED:
            raise StartRefused(f"run {run_id} is damaged: {summary.message}")
        if summary.status == record.COMPLETED:
            raise StartRefused(f"run {run_id} already completed")
        check_workspace_usable(workspace)
        proc = _spawn(path, workspace, ["--resume", record.check_run_id(run_id)])
        record.write_process_info(path, proc.pid)
    return run_id


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes in process group `pgid`."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def _own_group(path: Path, proc: psutil.Process) -> int | None:
    """The trainer's process group when it leads one (started by the runner), else None: a
    `python -m tuning train` typed in a terminal shares the shell's group, which Stop must not
    signal."""
    try:
        pgid = os.getpgid(proc.pid)
        recorded = record.read_process_info(path).get("pgid", pgid)
    except OSError:
        return None
    return pgid if pgid == proc.pid == recorded else None


def _signal(proc: psutil.Process, pgid: int | None, sig: int) -> None:
    try:
        if pgid is not None:
            os.killpg(pgid, sig)
        else:
            for p in [proc, *proc.children(recursive=True)]:
                p.send_signal(sig)
    except (ProcessLookupError, psutil.Error):
        pass


def stop(workspace: Path, run_id: str, timeout: float = 0.0) -> bool:
    """Ask the run to stop gracefully (SIGTERM to its process group: it finishes the current step,
    saves a checkpoint and the adapter, and ends as "stopped"). With timeout > 0, wait for it,
    then SIGKILL whatever is left of the group, so no orphan keeps memory."""
    path = record.existing_run_dir(workspace, run_id)
    proc = record.training_process(path)
    if proc is None:
        return False
    pgid = _own_group(path, proc)
    _signal(proc, pgid, signal.SIGTERM)
    if timeout > 0:
        deadline = time.time() + timeout
        while time.time() < deadline and record.process_alive(path):
            time.sleep(0.2)
        if record.process_alive(path):
            _signal(proc, pgid, signal.SIGKILL)
        if pgid is not None:  # children that outlived their parent: end them too
            for leftover in group_members(pgid):
                try:
                    leftover.kill()
                except psutil.Error:
                    pass
    return True

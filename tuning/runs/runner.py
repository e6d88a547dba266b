"""Start, stop and resume the training process from another process (the UI, a test), and the
queue of runs waiting for the machine.

Training always runs as a child process, `python -m tuning train --config runs/<id>/config.yaml`,
started with a list-form Popen (never a shell) in its own process group, so a crash or an
out-of-memory kill there leaves the UI standing, and Stop can end the whole group.

The queue (runs.read_queue / write_queue: <workspace>/queue.json) holds whole configs in order.
`start_next` starts its first entry when no run is active, under the same workspace lock as every
start, so of several callers exactly one starts it. It is called by the trainer process that
finishes (python -m tuning train, as its last act), by the app on start-up and every
QUEUE_POLL_S while it runs (a trainer killed outright calls nobody), and after each queue change.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psutil

from tuning import config as config_mod
from tuning import runs
from tuning.config import TrainConfig
from tuning.paths import PROJECT_DIR

log = logging.getLogger("tuning.runs.runner")

# Free space a new run needs before it starts: checkpoints (adapter + optimizer state, up to
# save_total_limit of them), the final adapter and, on first use, the converted embedded model
# (538 MB in fp32). Checked where it can be, so a full disk is a message, not a broken run.
MIN_FREE_BYTES = 1 << 30  # 1 GiB
QUEUE_ID_PATTERN = re.compile(r"^q-[0-9a-f]{8}$")
MAX_GRID = 16  # runs one grid may queue
QUEUE_POLL_S = 15.0  # how often the app looks for a free machine while runs are queued

# The trainers this process started. Each is waited for once it has exited (reap: the queue's watch
# calls it every QUEUE_POLL_S, Stop and each start too), so a finished trainer never stays a
# <defunct> child of the app.
_CHILDREN: list[subprocess.Popen] = []
_CHILDREN_LOCK = threading.Lock()


class StartRefused(runs.RunError):
    """Another run is active, or the workspace cannot take a new run."""


class RunActive(StartRefused):
    """Another run is active: this one may wait in the queue instead."""


def check_workspace_usable(workspace: Path, need_bytes: int | None = None) -> None:
    """Refuse a start the workspace cannot hold: not a writable folder, or too little free space."""
    workspace = Path(workspace)
    need = MIN_FREE_BYTES if need_bytes is None else need_bytes
    try:
        runs_folder = runs.runs_dir(workspace)
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
    busy = [s for s in runs.active_runs(workspace) if s.run_id != except_run]
    if busy:
        raise RunActive(f"run {busy[0].run_id} is still training; stop it, wait for it to finish, or queue "
                        "this run (one run at a time)")


def create_run(workspace: Path, cfg: TrainConfig, run_id: str | None = None) -> Path:
    """A new run folder holding the resolved config, named `run_id` when one is given (a cluster job
    may name its run), else from the time and run_name. Call under workspace_lock. Checks the
    workspace first; a failure half-way removes the folder again (no broken run is left)."""
    check_workspace_usable(workspace)
    if run_id and runs.run_dir(workspace, run_id).exists():
        raise StartRefused(f"run {run_id} exists already: continue it with --resume {run_id}, or give another id")
    run_id = run_id or runs.new_run_id(workspace, cfg.run_name)
    path = runs.run_dir(workspace, run_id)
    path.mkdir(parents=True)
    try:
        runs.write_config(path, cfg)
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StartRefused(f"could not write the run folder in {workspace}: "
                           + ("the disk is full" if full else (exc.strerror or str(exc)))) from None
    return path


def discard_new_run(path: Path) -> None:
    """Remove a run folder that create_run made moments ago and nothing trained in (a launch that
    could not go on): no half run is left behind."""
    shutil.rmtree(path, ignore_errors=True)


def build_command(workspace: Path, extra: list[str]) -> list[str]:
    """The training command as an argv list (never a shell string). Every element is a fixed
    word or an absolute path the runner built itself (workspace/runs/<validated run id>/...),
    so no text from the page can become an option or a shell command."""
    return [sys.executable, "-m", "tuning", "train", "--workspace", str(Path(workspace).resolve()), *extra]


def _spawn(run_path: Path, workspace: Path, extra: list[str]) -> subprocess.Popen:
    reap()
    log = open(runs.log_path(run_path), "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        # start_new_session: the trainer leads its own process group and session, so a closed
        # terminal or a killed UI does not take it down, and Stop can signal the whole group.
        proc = subprocess.Popen(build_command(workspace, extra), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(PROJECT_DIR),
                                env=env, start_new_session=True)
    finally:
        log.close()
    with _CHILDREN_LOCK:
        _CHILDREN.append(proc)
    return proc


def reap() -> int:
    """Wait for every trainer this process started that has exited (poll never blocks); returns how
    many are still running."""
    with _CHILDREN_LOCK:
        _CHILDREN[:] = [proc for proc in _CHILDREN if proc.poll() is None]
        return len(_CHILDREN)


def _start_locked(workspace: Path, cfg: TrainConfig) -> Path:
    """Create the run and start its trainer. Call under workspace_lock, the machine free."""
    path = create_run(workspace, cfg)
    try:
        proc = _spawn(path, workspace, ["--existing-run", path.name])
    except OSError as exc:
        discard_new_run(path)
        raise StartRefused(f"could not start the training process: {exc.strerror or exc}") from None
    runs.write_process_info(path, proc.pid)
    return path


def start(cfg: TrainConfig, workspace: Path) -> str:
    """Start a new run in the background; returns its run id. Refused while another is active
    (queue it instead: enqueue). A config with `seeds: N` starts its first seed and puts the other
    N-1 at the head of the queue, so the seeds run back to back."""
    from tuning.runs import seeds

    first, *others = seeds.seed_configs(cfg)
    workspace = Path(workspace).resolve()
    with workspace_lock(workspace):
        refuse_if_busy(workspace)
        path = _start_locked(workspace, first)
        if others:
            runs.write_queue(workspace, _entries(others) + runs.read_queue(workspace))
    return path.name


def check_resumable(path: Path) -> None:
    """A damaged run cannot continue, and a completed one has nothing left to train (the Trainer
    would take one more step past max_steps)."""
    summary = runs.summarize(path)
    if summary.status == runs.DAMAGED:
        raise StartRefused(f"run {path.name} is damaged: {summary.message}")
    if summary.status == runs.COMPLETED:
        raise StartRefused(f"run {path.name} already completed")


def resume(workspace: Path, run_id: str) -> str:
    """Continue a stopped or interrupted run from its newest complete checkpoint."""
    workspace = Path(workspace)
    with workspace_lock(workspace):
        path = runs.existing_run_dir(workspace, run_id)
        refuse_if_busy(workspace)
        check_resumable(path)
        check_workspace_usable(workspace)
        proc = _spawn(path, workspace, ["--resume", runs.check_run_id(run_id)])
        runs.write_process_info(path, proc.pid)
    return run_id


def delete(workspace: Path, run_id: str) -> None:
    """Delete a run that is not training, under the lock every start and resume holds until its
    trainer is on record: a delete never lands between a resume's spawn and its process file."""
    with workspace_lock(workspace):
        runs.delete_run(Path(workspace), run_id)


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
        recorded = runs.read_process_info(path).get("pgid", pgid)
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
    """Ask the run to stop gracefully (SIGTERM to its process group: it finishes the current step or
    check, saves a checkpoint and the adapter, and ends as "stopped"). The request is recorded as a
    "stopping" phase at once, so every page says so before the trainer has reacted. With timeout > 0,
    wait for it, then SIGKILL whatever is left of the group, so no orphan keeps memory."""
    path = runs.existing_run_dir(workspace, run_id)
    host = runs.remote_host(path)
    if host and runs.process_alive(path):
        raise runs.RunError(f"run {run_id} trains on {host}, not on this machine: stop it there (a Slurm job: "
                              "scancel --signal=TERM JOB_ID); every rank then stops after the same step")
    proc = runs.training_process(path)
    if proc is None:
        return False
    pgid = _own_group(path, proc)
    _signal(proc, pgid, signal.SIGTERM)
    try:
        runs.event_log(path).append("phase", phase="stopping", source="stop", message="stop requested")
    except OSError:
        pass  # a full disk: the trainer still stops and says so in its end event
    if timeout > 0:
        deadline = time.time() + timeout
        while time.time() < deadline and runs.process_alive(path):
            time.sleep(0.2)
        if runs.process_alive(path):
            _signal(proc, pgid, signal.SIGKILL)
        if pgid is not None:  # children that outlived their parent: end them too, and wait until they are gone
            leftovers = group_members(pgid)
            for leftover in leftovers:
                try:
                    leftover.kill()
                except psutil.Error:
                    pass
            # SIGKILL lands asynchronously (a busy machine shows the lag): wait until none is left running;
            # a killed child becomes a zombie until whoever adopted it reaps it, and group_members skips those
            until = time.time() + 10
            while leftovers and group_members(pgid) and time.time() < until:
                time.sleep(0.05)
        reap()
    return True


# --- the queue ---------------------------------------------------------------------------------

def grid_run_name(prefix: str, key: str, value: str) -> str:
    """`learning_rate-5e-4` (after the config's own run_name, when it has one): a run name in the
    characters run names allow ('.' reads 'p': 0.0005 -> 0p0005), at most 64 of them."""
    text = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else ("p" if c == "." else "_")
                   for c in value.strip())
    name = f"{key}-{text}"
    return (f"{prefix}-{name}" if prefix else name)[:64]


def grid(cfg: TrainConfig, spec: str) -> list[TrainConfig]:
    """One config per value of `spec` ("learning_rate=1e-4,2e-4,5e-4"), each run named after its
    value, so the runs line up side by side in the Runs tab. A bad key or value is a ConfigError."""
    key, sep, values = (spec or "").partition("=")
    key = key.strip()
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not items:
        raise config_mod.ConfigError("grid: expected key=value1,value2,... e.g. learning_rate=1e-4,2e-4,5e-4")
    if key == "run_name":
        raise config_mod.ConfigError("grid: run_name is what a grid sets; vary another key")
    if len(items) > MAX_GRID:
        raise config_mod.ConfigError(f"grid: at most {MAX_GRID} values ({len(items)} given)")
    return [config_mod.apply_overrides(cfg, [f"{key}={text}"]).replace(run_name=grid_run_name(cfg.run_name, key, text))
            for text in items]


def _entries(configs: list[TrainConfig]) -> list[dict]:
    return [{"id": f"q-{uuid.uuid4().hex[:8]}", "added": round(time.time(), 3), "config": cfg.to_dict()}
            for cfg in configs]


def enqueue(workspace: Path, configs: list[TrainConfig]) -> list[dict]:
    """Add runs at the end of the queue (a config with `seeds: N` as its N runs); returns their
    entries ({id, added, config})."""
    from tuning.runs import seeds

    workspace = Path(workspace).resolve()
    new = _entries([one for cfg in configs for one in seeds.seed_configs(cfg)])
    with workspace_lock(workspace):
        runs.write_queue(workspace, runs.read_queue(workspace) + new)
    return new


def dequeue(workspace: Path, queue_id: str) -> dict:
    """Remove one queued run (before it started); returns its entry."""
    if not isinstance(queue_id, str) or not QUEUE_ID_PATTERN.match(queue_id):
        raise runs.RunError(f"queue id {queue_id!r} is not valid (q- and 8 hex digits, as the queue lists them)")
    with workspace_lock(workspace):
        entries = runs.read_queue(workspace)
        found = [e for e in entries if e["id"] == queue_id]
        if not found:
            raise runs.RunError(f"no run {queue_id} in the queue (it may have started already)")
        runs.write_queue(workspace, [e for e in entries if e["id"] != queue_id])
    return found[0]


def queued(workspace: Path) -> list[dict]:
    """The queue in order: each entry with its position (1 = next)."""
    return [{**e, "position": n} for n, e in enumerate(runs.read_queue(workspace), start=1)]


def start_next(workspace: Path, finished: str | None = None) -> str | None:
    """Start the first queued run if no run is active (`finished`: the run whose own trainer
    calls, still alive for these last moments). Returns the new run id, or None. An entry that
    cannot start stays first in the queue with a note saying why, until someone removes it."""
    workspace = Path(workspace).resolve()
    if not runs.read_queue(workspace):  # the usual case, without the lock or reading every run
        return None
    with workspace_lock(workspace):
        entries = runs.read_queue(workspace)
        if not entries or [s for s in runs.active_runs(workspace) if s.run_id != finished]:
            return None
        first = entries[0]
        try:
            path = _start_locked(workspace, config_mod.from_dict(first["config"]))
        except (config_mod.ConfigError, StartRefused) as exc:
            note = f"not started: {exc}"
            if first.get("note") != note:
                runs.write_queue(workspace, [{**first, "note": note}, *entries[1:]])
            return None
        runs.write_queue(workspace, entries[1:])
    return path.name


def await_finishing_parent(workspace: Path, timeout: float = 300.0) -> None:
    """In a run that start_next started from a finishing trainer (its parent process): wait until that
    trainer has exited, so the two never hold the machine's memory at once and the one-run-at-a-time
    check below does not see it. It has recorded its end already; only its exit is left."""
    parent = os.getppid()
    for summary in runs.active_runs(workspace):
        info = runs.read_process_info(summary.path)
        if info.get("pid") == parent and info.get("ended"):
            deadline = time.time() + timeout
            while runs.training_process(summary.path) is not None and time.time() < deadline:
                time.sleep(0.2)  # (not Process.wait: an exited parent stays a zombie until reaped)


def watch_queue(workspace: Path, every: float = QUEUE_POLL_S, stop_event: threading.Event | None = None) -> None:
    """Reap finished trainers and call start_next every `every` seconds until `stop_event` is set (the
    app's daemon thread)."""
    stop_event = stop_event or threading.Event()
    while not stop_event.wait(every):
        reap()
        try:
            started = start_next(workspace)
        except Exception:  # noqa: BLE001 - a bad moment (a full disk) must not end the watch
            log.exception("starting the next queued run failed")
            continue
        if started:
            log.info("started queued run %s", started)

"""The training process of a run: process.json (pid, start time, host, launch token), the heartbeat
that keeps it fresh, whether the process is alive (by pid on its own host, by heartbeat from another),
and the tail of its train.log for the Live tab."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import psutil

from tuning.runs.layout import PROCESS, log_path
from tuning.runs.files import file_key, read_json, write_atomic

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
    key = file_key(path)
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


def forget_process_info(run: Path) -> None:
    """Drop the cached process.json of a run folder that is gone."""
    _PROCESS_INFO.pop(os.path.join(run, PROCESS), None)

"""Writes that survive a crash and reads that survive a damaged file: a file is written whole to a
temporary name, fsynced and renamed over the old one (a reader sees the old file or the new, never
half of one); JSON lines are appended whole; readers skip a half-written last line."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def file_key(path: str | Path) -> tuple | None:
    """(inode, mtime, size) of a file, None when it is missing: what the readers' caches compare to
    know a file changed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)

"""Where things live, and which paths from the page may be read.

The workspace: `--workspace DIR`, else $TUNING_WORKSPACE, else /data/tuning on a Space with
persistent storage, else ./workspace (a Space without /data: a temporary folder, not persistent);
workspace_location decides, for the app, the Space settings and the CLI alike. Paths typed into
the page are only read under the allowed roots (the workspace, the upload folder, each
--data-dir); the CLI, run by the machine's own user, reads what that user can. Whether a value
is a Hub id or a local path is decided by one rule, is_hub_id; a Hub id never reads the local
filesystem (data.load and models.resolve_base_model send it to the Hub or its cache only).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
DEMO_DATA_DIR = PACKAGE_DIR / "demo_data"
PRESETS_DIR = PROJECT_DIR / "presets"
DATA_DIR = Path("/data")  # where a Space mounts its persistent storage


class PathError(ValueError):
    """A user-supplied path is outside the allowed roots or otherwise unusable."""


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def workspace_location(workspace: str | Path | None = None, environ: Mapping[str, str] | None = None,
                       data_dir: Path = DATA_DIR) -> tuple[Path, bool]:
    """The one workspace rule: (the workspace, whether it survives a restart).

    `workspace` (--workspace DIR), else $TUNING_WORKSPACE, else <data_dir>/tuning on a Space
    (SPACE_ID set) whose persistent storage is mounted (a writable data_dir), else, on a Space
    without it, a temporary folder, else ./workspace. Locally every workspace is persistent; on a
    Space only one under data_dir is (space.py shows a banner otherwise)."""
    environ = os.environ if environ is None else environ
    space = bool(environ.get("SPACE_ID"))
    data_dir = Path(data_dir)
    data_ok = data_dir.is_dir() and os.access(data_dir, os.W_OK)
    chosen = workspace or environ.get("TUNING_WORKSPACE")
    if chosen:
        ws = Path(chosen).expanduser().resolve()
    elif space and data_ok:
        ws = data_dir / "tuning"
    elif space:
        ws = Path(tempfile.gettempdir()) / "tuning-workspace"
    else:
        ws = (Path.cwd() / "workspace").resolve()
    persistent = not space or (data_ok and ws.resolve().is_relative_to(data_dir.resolve()))
    return ws, persistent


def resolve_workspace(workspace: str | Path | None = None) -> Path:
    """The workspace the app and the CLI use (workspace_location's rule, from os.environ)."""
    return workspace_location(workspace)[0]


# The Hub's repo names: ASCII letters, digits, '-', '_' and '.', at most 96 characters, starting and
# ending with a letter, digit or '_' (huggingface_hub.utils.validate_repo_id; no '--' or '..').
_HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")
# A last part ending like a file is a file, whatever the Hub would allow: `somedir/train.jsonl`.
FILE_SUFFIXES = frozenset({".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".txt", ".arrow", ".gguf",
                           ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".yaml", ".yml", ".zip", ".gz", ".py"})


def looks_like_hub_id(name: str) -> bool:
    """The shape of a Hub id alone: org/name in the Hub's characters, no file suffix."""
    parts = str(name).split("/")
    return (len(parts) == 2 and all(_HUB_NAME.fullmatch(p) for p in parts) and "--" not in name
            and ".." not in name and Path(parts[1]).suffix.lower() not in FILE_SUFFIXES)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # unreadable, too long: something is there or it is no Hub id
        return True


def is_hub_id(name: str, bases: Iterable[str | Path] = ()) -> bool:
    """The one rule: a value is a Hugging Face Hub id when it looks like one (looks_like_hub_id:
    org/name, the Hub's characters, no file suffix like .jsonl) AND names nothing on this machine
    relative to the working directory, the project folder (where the runner starts training, so
    the page and the trainer agree) or any of `bases` (the page passes the workspace, against
    which its relative paths resolve). Anything else is a local path. Only names are looked up
    here (a stat); a value this returns True for must never be opened as a local path."""
    if not looks_like_hub_id(name):
        return False
    for base in (Path.cwd(), PROJECT_DIR, *bases):
        if _exists(Path(base) / name):
            return False
    return True


def resolve_under(text: str | Path, roots: list[Path], *, what: str = "path") -> Path:
    """Resolve `text` (relative paths against the first root) and require the result, with
    every symlink followed, to lie inside one of `roots`."""
    raw = str(text).strip()
    if not raw:
        raise PathError(f"{what}: empty")
    if "\x00" in raw:
        raise PathError(f"{what}: contains a NUL byte")
    if not roots:
        raise PathError(f"{what}: no folders are open to the page")
    try:
        candidate = Path(raw).expanduser()
    except RuntimeError:  # "~name" for a user this machine does not have
        raise PathError(f"{what}: {raw[:80]!r} names an unknown home folder") from None
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    resolved = candidate.resolve()
    for root in roots:
        root = Path(root).resolve()
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    allowed = ", ".join(str(Path(r).resolve()) for r in roots)
    raise PathError(f"{what}: {raw!r} is outside the folders this app may read ({allowed})")


def safe_preset_path(name: str, folder: Path = PRESETS_DIR) -> Path:
    """Where "save as preset" writes preset `name`: `<folder>/<name>.yaml`. The name must be a
    plain name (letters, digits, '-', '_'; a trailing .yaml is allowed), never a path."""
    raw = str(name).strip()
    if raw.endswith(".yaml"):
        raw = raw[: -len(".yaml")]
    if not (0 < len(raw) <= 64 and raw.isascii() and all(c.isalnum() or c in "-_" for c in raw)
            and raw[0].isalnum()):
        raise PathError(f"preset name {str(name)[:80]!r}: use 1-64 letters, digits, '-' and '_' "
                        "(no folders, no dots)")
    folder = Path(folder).resolve()
    return folder / f"{raw}.yaml"

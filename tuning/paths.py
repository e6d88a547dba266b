"""Where things live, and which paths from the page may be read.

The workspace: `--workspace DIR`, else $TUNING_WORKSPACE, else /data/tuning on a Space with
persistent storage, else ./workspace. Paths typed into the page are only read under the
allowed roots (the workspace, the upload folder, each --data-dir); the CLI, run by the
machine's own user, reads what that user can.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
DEMO_DATA_DIR = PACKAGE_DIR / "demo_data"
PRESETS_DIR = PROJECT_DIR / "presets"


class PathError(ValueError):
    """A user-supplied path is outside the allowed roots or otherwise unusable."""


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def default_workspace() -> Path:
    if os.environ.get("TUNING_WORKSPACE"):
        return Path(os.environ["TUNING_WORKSPACE"]).expanduser().resolve()
    if on_space() and Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/tuning")
    return (Path.cwd() / "workspace").resolve()


def resolve_workspace(workspace: str | Path | None = None) -> Path:
    ws = Path(workspace).expanduser().resolve() if workspace else default_workspace()
    return ws


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

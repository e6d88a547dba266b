"""What the export modules share: the error an export raises, the never-overwrite rule and a run's
config read as an export error. Kept apart so that export.py (the entry points), gguf.py (the GGUF
writer) and model_card.py (the README) can all use them without importing one another in a circle."""

from __future__ import annotations

from pathlib import Path

from tuning import config as config_mod
from tuning import runs


class ExportError(ValueError):
    """An export cannot be done; the message says why and what to do."""


def refuse_existing(path: Path) -> None:
    if path.exists():
        raise ExportError(f"{path} exists already; choose another name (exports never overwrite)")


def run_config(run_dir: Path) -> config_mod.TrainConfig:
    try:
        return runs.read_config(run_dir)
    except config_mod.ConfigError as exc:
        raise ExportError(f"run {Path(run_dir).name}: {exc}") from None

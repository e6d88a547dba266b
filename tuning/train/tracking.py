"""Also log a run to an experiment tracker people already use: TensorBoard event files or trackio
(local-first, opens in a browser), through the Trainer's own `report_to`. Off by default; the run
folder stays the source of truth (the dashboard never reads the tracker).

Neither package is in requirements.txt (a Space and the quickstart do not need them): choosing one
that is not installed is refused before training, in one line that says what to install.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tuning import runs
from tuning.config import ConfigError

TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",)}


def trainer_kwargs(cfg, run_dir: Path) -> dict:
    """The TrainingArguments that turn the chosen tracker on (report_to, run_name, project)."""
    name = getattr(cfg, "report_to", "none")
    if name == "none":
        return {"report_to": "none"}
    if not any(importlib.util.find_spec(module) for module in TRACKERS[name]):
        raise ConfigError(f"report_to: {name} is not installed here (pip install {name}), or set report_to: none; "
                          "the run folder records the run either way")
    if name == "tensorboard":
        # transformers' TensorBoardCallback reads its folder from this variable (this process is the trainer's own)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(run_dir) / runs.TENSORBOARD)
        return {"report_to": ["tensorboard"], "run_name": Path(run_dir).name}
    # trackio: a local project (no Space, nothing leaves the machine); `trackio show --project tuning`
    return {"report_to": ["trackio"], "run_name": Path(run_dir).name, "project": "tuning",
            "trackio_static_space_id": False}

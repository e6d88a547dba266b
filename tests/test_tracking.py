"""report_to (tuning/train/tracking.py): off by default; a tracker that is not installed is refused before
training in one line; an installed one is handed to the Trainer's own report_to."""

from __future__ import annotations

import importlib.util

import pytest

from tuning import runs

from tuning.train import trainer as train
from tuning.train import tracking
from tuning.config import ConfigError, TrainConfig


def test_off_by_default(tmp_path):
    assert TrainConfig().report_to == "none"
    assert tracking.trainer_kwargs(TrainConfig(), tmp_path) == {"report_to": "none"}
    with pytest.raises(ConfigError, match="report_to: 'wandb' is not one of none, tensorboard, trackio"):
        TrainConfig(report_to="wandb")


@pytest.mark.parametrize("name", ["tensorboard", "trackio"])
def test_an_installed_tracker_goes_to_report_to(tmp_path, monkeypatch, name):
    monkeypatch.setattr(importlib.util, "find_spec", lambda module: object())
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    kwargs = tracking.trainer_kwargs(TrainConfig(report_to=name), tmp_path / "run-1")
    assert kwargs["report_to"] == [name] and kwargs["run_name"] == "run-1"
    if name == "tensorboard":
        import os
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "run-1" / runs.TENSORBOARD)
    else:
        assert kwargs["project"] == "tuning" and kwargs["trackio_static_space_id"] is False


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed here")
def test_a_missing_tracker_is_refused_before_training(tmp_path, tiny_config):
    cfg = tiny_config.replace(report_to="tensorboard")
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    assert train.run(cfg, run_dir, tmp_path) == 2
    events, _ = runs.read_run_events(run_dir)
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "bad_input"
    assert events[-1]["message"].startswith("report_to: tensorboard is not installed here (pip install tensorboard)")
    assert not runs.complete_checkpoints(run_dir)

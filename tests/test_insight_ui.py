"""The insight views through their handlers, without a browser: the Evaluation tab's hardest
examples (lists, a click -> {source, file, row}) and the Dataset tab opening that row's tokens."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from tuning import runs
from tuning.ui import dataset_tab, evaluation_tab
from tuning.ui.common import AppContext


@pytest.fixture
def run_with_row_losses(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(12)]
    (tmp_path / "data").mkdir()
    data_file = write_jsonl(tmp_path / "data" / "rows.jsonl", rows)
    workspace = tmp_path / "ws"
    run = runs.run_dir(workspace, "r")
    run.mkdir(parents=True)
    from tuning.config import TrainConfig
    runs.write_config(run, TrainConfig(dataset=str(data_file)))
    runs.write_row_index(run, {"sources": {"train": str(data_file), "heldout": str(data_file)},
                                 "train": [["rows.jsonl", i + 1] for i in range(10)],
                                 "heldout": [["rows.jsonl", 11], ["rows.jsonl", 12]]})
    ids = list(range(10))
    runs.append_row_losses(run, {"split": "train", "step": 1, "ids": ids, "losses": [2.0] * 10, "tokens": [5] * 10})
    runs.append_row_losses(run, {"split": "train", "step": 2, "ids": ids,
                                   "losses": [1.0] * 6 + [3.5, 1.0, 1.0, 1.0], "tokens": [5] * 10})
    runs.append_row_losses(run, {"split": "heldout", "step": 2, "final": True, "ids": [0, 1], "losses": [1.5, 2.5],
                                   "base": [2.0, 2.0]})
    return AppContext(workspace, [tmp_path / "data"]), data_file


def test_hardest_lists_and_a_click_opens_the_row(run_with_row_losses, tiny_model_dir):
    ctx, data_file = run_with_row_losses
    out = evaluation_tab.examples(ctx, "r", "training rows")
    assert out["hardest"][0][:3] == ["rows.jsonl", 7, 3.5]
    assert [r[1] for r in out["went_up"]] == [7]  # 2.0 -> 3.5; the others fell
    held = evaluation_tab.examples(ctx, "r", "held-out rows")
    assert [r[1] for r in held["went_up"]] == [12] and "base model" in held["examples_note"]
    cells = evaluation_tab.selected_row(type("Evt", (), {"row_value": out["hardest"][0]})())
    request = evaluation_tab.picked_example(ctx, "r", "training rows", cells)["row_request"]
    assert request == {"source": str(data_file), "file": "rows.jsonl", "row": 7}
    ctx.data_dirs.append(tiny_model_dir)
    opened = dataset_tab.open_row(ctx, request, str(tiny_model_dir), 64, True)
    assert opened["tv_row"] == 7 and opened["source"] == str(data_file) and opened["text"] == str(data_file)
    assert "Opened **rows.jsonl row 7**" in opened["summary"]
    trained = "".join(text for text, label in opened["tokens"] if label == "trained")
    assert "Answer 6." in trained


def test_open_row_says_when_the_row_is_gone(run_with_row_losses, tiny_model_dir):
    ctx, data_file = run_with_row_losses
    ctx.data_dirs.append(tiny_model_dir)
    with pytest.raises(Exception, match="rows.jsonl row 40: not among the valid rows"):
        dataset_tab.open_row(ctx, {"source": str(data_file), "file": "rows.jsonl", "row": 40}, str(tiny_model_dir),
                             64)


def test_a_run_without_row_losses_says_why(tmp_path):
    workspace = tmp_path / "ws"
    runs.run_dir(workspace, "r").mkdir(parents=True)
    out = evaluation_tab.examples(AppContext(workspace), "r")
    assert out["hardest"] == [] and "No per-example losses" in out["examples_note"]


def test_a_chosen_checkpoint_becomes_the_final_adapter_and_is_recorded(tmp_path):
    from tuning.ship import export

    workspace = tmp_path / "ws"
    run = runs.run_dir(workspace, "r")
    for folder in (runs.adapter_dir(run), runs.checkpoint_dir(run, 2), runs.checkpoint_dir(run, 4)):
        folder.mkdir(parents=True)
        for name in (runs.ADAPTER_WEIGHTS, runs.ADAPTER_CONFIG):
            (folder / name).write_text("{}")
    runs.mark_complete(runs.checkpoint_dir(run, 2))  # checkpoint-4 stays incomplete
    ctx = AppContext(workspace)
    assert runs.current_adapter(run) == runs.adapter_dir(run)
    shown = evaluation_tab.choose_final(ctx, "r", "checkpoint-2")
    assert shown["final_choice"]["choices"] == ["final", "checkpoint-2"] and shown["final_choice"]["value"] == "checkpoint-2"
    assert runs.current_adapter(run) == runs.checkpoint_dir(run, 2) == export.finished_adapter(run)
    events, _ = runs.read_run_events(run)
    assert events[-1]["event"] == "choice" and events[-1]["checkpoint"] == "checkpoint-2"
    with pytest.raises(runs.RunError, match="checkpoint-4 of r does not exist or is incomplete"):
        evaluation_tab.choose_final(ctx, "r", "checkpoint-4")
    evaluation_tab.choose_final(ctx, "r", "final")
    assert runs.current_adapter(run) == runs.adapter_dir(run)
    assert runs.current_adapter(run, "checkpoint-2") == runs.checkpoint_dir(run, 2)

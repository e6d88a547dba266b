"""Comparing runs (tuning/evaluation/compare.py): two real runs of the tiny model that differ in learning rate
and batch size, compared by the module, the CLI's `compare --json` and the Runs tab's handler."""

from __future__ import annotations

import json

import pytest

from tuning.evaluation import compare
from tuning import runs
from tuning.train import trainer as train
from tuning.__main__ import main as cli


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir, embedded_tokenizer):
    from conftest import chat_rows, write_jsonl
    from tuning.config import TrainConfig

    workspace = tmp_path_factory.mktemp("compare-ws")
    data = write_jsonl(workspace / "chat.jsonl", chat_rows(24))
    base = TrainConfig(base_model=str(tiny_model_dir), dataset=str(data), method="lora", max_steps=4,
                       per_device_batch_size=4, max_length=64, learning_rate=1e-2, save_steps=4, eval_steps=2,
                       eval_split=0.2, logging_steps=1, warmup_ratio=0.0, eval_max_new_tokens=4,
                       probe_every_checkpoint=False)
    ids = []
    for run_id, cfg in (("run-a", base), ("run-b", base.replace(learning_rate=1e-3, per_device_batch_size=2))):
        path = runs.run_dir(workspace, run_id)
        path.mkdir(parents=True)
        runs.write_config(path, cfg)
        assert train.run(cfg, path, workspace) == 0
        ids.append(run_id)
    return workspace, ids


def test_compare_two_real_runs(two_runs):
    workspace, ids = two_runs
    runs.append_vote(runs.run_dir(workspace, "run-a"), {"winner": "tuned", "prompt": "p"})
    runs.append_vote(runs.run_dir(workspace, "run-a"), {"winner": "base", "prompt": "q"})
    result = compare.compare(workspace, ids)
    assert result["runs"] == ids
    assert [d["field"] for d in result["config_diff"]] == ["learning_rate", "per_device_batch_size"]
    assert result["config_diff"][0]["values"] == {"run-a": 1e-2, "run-b": 1e-3}
    for run in ids:
        train_points = result["curves"][run]["train"]
        assert [p["step"] for p in train_points] == [1, 2, 3, 4]
        tokens = [p["tokens"] for p in train_points]
        assert all(t > 0 for t in tokens) and tokens == sorted(tokens)
        evals = result["curves"][run]["eval"]
        assert [p["step"] for p in evals][:2] == [2, 4] and all(p["tokens"] for p in evals)
    # Batch 2 sees about half the tokens per step of batch 4: the tokens axis tells them apart.
    a_tokens, b_tokens = (result["curves"][r]["train"][-1]["tokens"] for r in ids)
    assert b_tokens < a_tokens
    by_run = {e["run"]: e for e in result["evaluations"]}
    for run in ids:
        stored = runs.read_evaluation(runs.run_dir(workspace, run))
        assert by_run[run]["eval_loss"] == stored["eval_loss"]
        assert by_run[run]["base_eval_loss"] == stored["base_eval_loss"]
        assert by_run[run]["status"] == "completed" and by_run[run]["step"] == 4
    assert by_run["run-a"]["ab_votes"] == 2 and by_run["run-a"]["ab_tuned_win_rate"] == 0.5
    assert by_run["run-b"]["ab_tuned_win_rate"] is None


def test_cli_compare_json_is_the_module(two_runs, capsys):
    workspace, ids = two_runs
    assert cli(["compare", *ids, "--workspace", str(workspace), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(compare.compare(workspace, ids)))
    assert cli(["compare", *ids, "--workspace", str(workspace)]) == 0
    text = capsys.readouterr().out
    assert "learning_rate: run-a=0.01, run-b=0.001" in text and "run-b: completed, step 4/4" in text


def test_cli_compare_refuses_in_one_line(two_runs, capsys):
    workspace, ids = two_runs
    assert cli(["compare", ids[0], "--workspace", str(workspace)]) == 2
    assert capsys.readouterr().err.strip() == "error: compare: pick at least two runs"
    assert cli(["compare", ids[0], "nope", "--workspace", str(workspace)]) == 2
    err = capsys.readouterr().err
    assert "no run 'nope'" in err and err.count("\n") == 1


def test_runs_tab_compare_handler(two_runs):
    from tuning.ui import runs_tab
    from tuning.ui.common import AppContext

    workspace, ids = two_runs
    out = runs_tab.compared(AppContext(workspace), ids)
    by_step, by_tokens = out["cmp_by_step"], out["cmp_by_tokens"]
    assert set(by_step["series"]) == {"run-a train", "run-a eval", "run-b train", "run-b eval"}
    assert list(by_tokens.columns) == ["tokens", "loss", "series"] and by_tokens["tokens"].min() > 0
    assert out["cmp_config"]["headers"] == ["config field", *ids]
    assert [row[0] for row in out["cmp_config"]["value"]] == ["learning_rate", "per_device_batch_size"]
    evals = {row[0]: row[1:] for row in out["cmp_evals"]["value"]}
    assert evals["status"] == ["completed", "completed"] and evals["steps"] == ["4/4", "4/4"]
    assert "2 config fields differ" in out["cmp_note"]
    with pytest.raises(runs.RunError, match="at least two"):
        runs_tab.compared(AppContext(workspace), ids[:1])


def test_a_resumed_runs_repeated_steps_keep_the_later_value(tmp_path):
    from tuning.runs.events import EventLog

    path = tmp_path / "runs" / "r"
    path.mkdir(parents=True)
    log = EventLog(runs.events_path(path))
    for step, loss, tokens in ((1, 3.0, 100), (2, 2.5, 200), (3, 2.4, 300)):
        log.append("log", step=step, loss=loss, tokens_seen=tokens)
    log.append("start", step=2)  # resumed from checkpoint-2: step 3 again
    log.append("log", step=3, loss=2.0, tokens_seen=310)
    log.append("eval", step=3, eval_loss=2.2)
    curves = compare.curves(path)
    assert [(p["step"], p["loss"], p["tokens"]) for p in curves["train"]] == [(1, 3.0, 100), (2, 2.5, 200),
                                                                              (3, 2.0, 310)]
    assert curves["eval"] == [{"step": 3, "eval_loss": 2.2, "tokens": 310}]

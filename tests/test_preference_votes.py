"""Votes become data: every blind A/B vote with a winner is a DPO pair kept with the run (ties left
out), a correction made in the Playground is an SFT example and a pair, and "tune on my votes" gives
a DPO config from the run's adapter whose dataset trains."""

import random

import pytest

from tuning import config as config_mod
from tuning.evaluation import ab
from tuning.data import pairs
from tuning import runs
from tuning.evaluation import headlines
from tuning.train import trainer as train
from tuning.ui import playground_tab
from tuning.ui.common import AppContext
from tuning.ui.playground_tab import Generated


@pytest.fixture
def finished_run(tmp_path, tiny_config):
    cfg = tiny_config.replace(eval_split=0.0, max_steps=1, save_steps=1)
    run_dir = tmp_path / "runs" / "sft-votes"
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, cfg)
    assert train.run(cfg, run_dir, tmp_path) == 0
    return run_dir


def _vote(run_dir, prompt, base, tuned, choice, seed):
    pair = ab.blind(run_dir, prompt, base, tuned, random.Random(seed))
    # the choice names the side the person liked: "tuned" -> whichever letter tuned was shown as
    letter = "tie" if choice == "tie" else ("A" if pair.a_is == choice else "B")
    ab.vote(run_dir, pair, letter)


def test_votes_and_corrections_become_pairs(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    _vote(run_dir, "Who are you?", "I'm SmolLM.", "I'm Quill.", "tuned", 1)
    _vote(run_dir, "2+2?", "4", "5", "base", 2)
    _vote(run_dir, "Hi", "Hello", "Hey", "tie", 3)
    found = runs.vote_pairs(run_dir)
    assert [(p["prompt"][0]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in found] == \
        [("Who are you?", "I'm Quill.", "I'm SmolLM."), ("2+2?", "4", "5")]
    runs.append_correction(run_dir, "Capital of France?", "Lyon.", "Paris.")
    with pytest.raises(runs.RunError, match="same as the original"):
        runs.append_correction(run_dir, "Capital of France?", "Lyon.", " Lyon. ")
    path = runs.write_preference_pairs(run_dir)
    loaded = pairs.load(str(path))
    assert loaded.rows_valid == 3 and not loaded.problems and loaded.format == "prompt_chosen_rejected"
    assert loaded.rows[2]["chosen"][0]["content"] == "Paris." and loaded.rows[2]["rejected"][0]["content"] == "Lyon."
    # the correction is also an SFT example, read by the ordinary SFT loader
    from tuning import data
    sft = data.load(str(runs.corrections_path(run_dir)))
    assert sft.rows_valid == 1 and sft.conversations[0][-1] == {"role": "assistant", "content": "Paris."}
    assert runs.runs_with_preferences(tmp_path) == ["r"]


def test_no_pairs_is_a_clear_refusal(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    _vote(run_dir, "Hi", "Hello", "Hey", "tie", 3)
    with pytest.raises(runs.RunError, match="no votes with a winner"):
        runs.write_preference_pairs(run_dir)


def test_tune_on_my_votes_fills_a_dpo_config_that_trains(tmp_path, finished_run):
    ctx = AppContext(tmp_path, [])
    for i in range(3):
        _vote(finished_run, f"Who are you? {i}", "I'm SmolLM.", f"I'm Quill. {i}", "tuned", i)
    last = Generated(finished_run.name, "Say hi", "hi", "hullo")
    note = playground_tab.save_correction(ctx, finished_run.name, last, "Hello! I'm Quill.")["correction_note"]
    assert "1 corrections" in note and "4 preference pairs" in note
    out = playground_tab.tune_on_votes(ctx, finished_run.name)
    values = out["tune_config"]
    cfg = config_mod.from_dict(values)
    assert cfg.objective == "dpo" and cfg.init_from == finished_run.name and cfg.eval_split == 0.0
    assert pairs.load(cfg.dataset).rows_valid == 4
    run_dir = tmp_path / "runs" / "dpo-votes"
    run_dir.mkdir(parents=True)
    cfg = cfg.replace(max_steps=2)
    runs.write_config(run_dir, cfg)
    assert train.run(cfg, run_dir, tmp_path) == 0
    assert runs.has_final_adapter(run_dir)


def test_live_plots_the_objective_and_the_tables_show_preference_figures(tmp_path):
    from tuning.runs.events import EventLog
    from tuning.ui import common, live_tab, runs_tab

    run_dir = tmp_path / "runs" / "dpo-live"
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, config_mod.TrainConfig(objective="dpo", dataset=pairs.DEMO_PREFERENCE))
    log = EventLog(runs.events_path(run_dir))
    log.append("start", step=0, max_steps=2)
    for step, margin in ((1, 0.1), (2, 0.4)):
        log.append("log", step=step, max_steps=2, loss=0.6, objective={
            "rewards/chosen": margin / 2, "rewards/rejected": -margin / 2, "rewards/margins": margin,
            "rewards/accuracies": 1.0})
    summary = runs.summarize(run_dir).progress
    frame = live_tab.objective_frame(summary)
    margins = frame[frame.series == "rewards/margins"]
    assert list(margins.step) == [1, 2] and list(margins.value) == [0.1, 0.4]
    assert set(frame.series) == set(live_tab.OBJECTIVE_SERIES)
    assert live_tab.objective_frame(runs.EventSummary()) is None  # an SFT run: the plot stays hidden
    result = {"eval_loss": 1.0, "base_eval_loss": 2.0, "perplexity": 2.7, "base_perplexity": 7.4,
              "preference": {"kind": "pairs", "rows": 12, "beta": 0.1, "base_accuracy": 0.25, "tuned_accuracy": 0.75,
                             "base_margin": -0.5, "tuned_margin": 0.8, "reward_accuracy": 1.0, "reward_margin": 1.3}}
    rows = {r[0]: r for r in common.loss_rows(result)}
    assert rows["preference accuracy"][1:] == [0.25, 0.75, 0.5]
    runs.write_evaluation(run_dir, result)
    row = dict(zip(runs_tab.HEADERS, runs_tab.table(AppContext(tmp_path, []))[0]))
    assert row["objective"] == "dpo" and "preference accuracy 75% (base 25%)" in row["task checks"]
    assert "held-out preference accuracy 75% (base 25%)" in headlines.headline(result)


def test_tune_on_my_votes_fills_the_train_form_and_opens_the_train_tab(tmp_path):
    import app
    from tuning.ui import train_tab

    demo = app.build_demo(tmp_path / "ws")
    (fn,) = [f for f in demo.fns.values() if f.name == "fill_train_form"]
    values = config_mod.TrainConfig(objective="dpo", init_from="run-1", dataset="/x/pairs.jsonl", beta=0.2).to_dict()
    updates = fn.fn(values)
    # the form's fields are labelled for people; their elem_id carries the config key
    by_key = {(getattr(component, "elem_id", None) or "").removeprefix("cfg-"): value
              for component, value in updates.items()}
    assert by_key["objective"] == "dpo" and by_key["init_from"] == "run-1" and by_key["beta"] == 0.2
    assert by_key["dataset"] == "/x/pairs.jsonl"
    tabs = [v for c, v in updates.items() if type(c).__name__ == "Tabs"]
    assert tabs and tabs[0].selected == "train"
    assert len(updates) == 1 + len(train_tab.FORM_FIELDS)

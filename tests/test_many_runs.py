"""A workspace of many runs: runs.list_runs keeps each run's parsed config and event summary while
its files are unchanged (bench/many_runs.py measures why). These tests prove the cache never answers
with something the files no longer say: appended events, a rewritten events file, an edited or
damaged config, a deleted run, a trainer that dies without touching a file, a half-written line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tuning import config as config_mod
from tuning import runs
from tuning.evaluation import headlines
from tuning.runs import listing
from tuning.runs.events import EventLog


def make_run(workspace, run_id: str, steps: int = 3, **config) -> "Path":
    run = runs.run_dir(workspace, run_id)
    run.mkdir(parents=True)
    runs.write_config(run, config_mod.TrainConfig(**config))
    log = EventLog(runs.events_path(run))
    log.append("start", step=0, max_steps=10)
    for step in range(1, steps + 1):
        log.append("log", step=step, max_steps=10, loss=1.0 / step)
    return run


def fresh_summary(run) -> runs.EventSummary:
    """What the events file says, read whole with no cache."""
    return runs.EventSummary().extend(runs.read_run_events(run)[0])


def listed(workspace) -> dict[str, runs.RunSummary]:
    return {s.run_id: s for s in runs.list_runs(workspace)}


def test_appended_events_are_read_on_and_match_a_whole_read(tmp_path):
    run = make_run(tmp_path, "a", steps=3)
    assert listed(tmp_path)["a"].step == 3
    log = EventLog(runs.events_path(run))
    for step in (4, 5):
        log.append("log", step=step, max_steps=10, loss=0.1)
    log.append("eval", step=5, max_steps=10, eval_loss=0.25)
    summary = listed(tmp_path)["a"]
    assert (summary.step, summary.loss, summary.eval_loss) == (5, 0.1, 0.25)
    assert summary.progress == fresh_summary(run)  # reading on from the offset = reading it all
    log.append("end", status="completed", step=5, max_steps=10)
    assert listed(tmp_path)["a"].status == runs.COMPLETED


def test_a_rewritten_events_file_is_read_whole(tmp_path):
    """Same size or larger, but not an append of what was read: the cache must not read on from its
    offset into other bytes."""
    run = make_run(tmp_path, "a", steps=3)
    assert listed(tmp_path)["a"].loss == 1.0 / 3
    path = runs.events_path(run)
    lines = path.read_text().splitlines(keepends=True)
    changed = [json.dumps({**json.loads(line), "loss": 0.5}) + "\n" if '"log"' in line else line for line in lines]
    path.write_text("".join(changed) + json.dumps({"event": "log", "time": 1.0, "step": 9, "loss": 0.5}) + "\n")
    summary = listed(tmp_path)["a"]
    assert summary.progress == fresh_summary(run)
    assert [loss for _, loss in summary.progress.train] == [0.5] * 4


def test_an_edited_config_is_read_again_and_a_damaged_one_is_reported(tmp_path):
    run = make_run(tmp_path, "a", run_name="first")
    assert listed(tmp_path)["a"].config["run_name"] == "first"
    runs.write_config(run, config_mod.TrainConfig(run_name="second"))
    assert listed(tmp_path)["a"].config["run_name"] == "second"
    runs.config_path(run).write_text("learning_rate: [not, a, number]\n")
    summary = listed(tmp_path)["a"]
    assert summary.status == runs.DAMAGED and "learning_rate" in summary.message
    runs.write_config(run, config_mod.TrainConfig(run_name="third"))
    assert listed(tmp_path)["a"].config["run_name"] == "third"


def test_a_deleted_run_leaves_the_listing_and_the_cache(tmp_path):
    make_run(tmp_path, "a")
    make_run(tmp_path, "b")
    assert set(listed(tmp_path)) == {"a", "b"}
    runs.delete_run(tmp_path, "a")
    assert set(listed(tmp_path)) == {"b"}
    assert runs.run_dir(tmp_path, "a") not in listing._PARSED


def test_status_follows_the_trainer_though_no_file_changes(tmp_path):
    """A trainer killed outright touches no file: the cached summary must still say interrupted."""
    run = make_run(tmp_path, "a")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs.write_process_info(run, child.pid)
        assert listed(tmp_path)["a"].status == runs.RUNNING
    finally:
        child.kill()
        child.wait()
    summary = listed(tmp_path)["a"]
    assert summary.status == runs.INTERRUPTED and "ended without saying why" in summary.message


def test_a_half_written_last_line_is_reported_and_read_once_whole(tmp_path):
    run = make_run(tmp_path, "a", steps=2)
    path = runs.events_path(run)
    with open(path, "a") as fh:
        fh.write('{"event": "log", "time": 5.0, "step": 3, "lo')
    summary = listed(tmp_path)["a"]
    assert summary.step == 2 and "half-written line" in summary.message
    with open(path, "a") as fh:  # the trainer finishes the line (a resumed run appends after it)
        fh.write('ss": 0.3}\n')
    summary = listed(tmp_path)["a"]
    assert (summary.step, summary.loss) == (3, 0.3) and "half-written" not in summary.message
    assert summary.progress == fresh_summary(run)


def test_summaries_handed_out_do_not_change_the_cache(tmp_path):
    make_run(tmp_path, "a", run_name="kept")
    first = listed(tmp_path)["a"]
    first.config["run_name"] = "changed by a caller"
    first.progress.step = 99
    again = listed(tmp_path)["a"]
    assert again.config["run_name"] == "kept" and again.step == 3


def test_process_info_is_read_again_when_the_file_is_replaced(tmp_path):
    run = make_run(tmp_path, "a")
    runs.write_json(run / runs.PROCESS, {"pid": 1, "host": "elsewhere"})
    assert runs.remote_host(run) == "elsewhere"
    runs.write_json(run / runs.PROCESS, {"pid": 1, "host": "another"})
    assert runs.remote_host(run) == "another"
    os.remove(run / runs.PROCESS)
    assert runs.read_process_info(run) == {}


def test_a_rewritten_evaluation_is_read_again_and_each_caller_gets_its_own_copy(tmp_path):
    run = make_run(tmp_path, "a")
    runs.write_evaluation(run, {"eval_loss": 0.5, "checks": {"by_kind": {"identity": {"n": 2}}}})
    first = runs.read_evaluation(run)
    first["checks"]["by_kind"]["identity"]["n"] = 99  # a caller changing what it was given
    assert runs.read_evaluation(run) == {"eval_loss": 0.5, "checks": {"by_kind": {"identity": {"n": 2}}}}
    runs.write_evaluation(run, {"eval_loss": 0.25})
    assert runs.read_evaluation(run) == {"eval_loss": 0.25}
    (run / runs.EVALUATION).write_text("not json")
    assert runs.read_evaluation(run) is None


def test_a_finished_run_is_not_asked_about_its_trainer_again(tmp_path, monkeypatch):
    """Once no trainer is alive the summary is kept whole while its files stay as they are; a new
    process.json (a resume) is asked about again."""
    run = make_run(tmp_path, "a")
    EventLog(runs.events_path(run)).append("end", status="completed", step=3, max_steps=10)
    runs.write_json(run / runs.PROCESS, {"pid": 999_999, "create_time": 1.0, "host": runs.this_host()})
    assert listed(tmp_path)["a"].status == runs.COMPLETED
    asked = []
    monkeypatch.setattr(listing, "process_alive", lambda r: asked.append(r) or True)
    assert listed(tmp_path)["a"].status == runs.COMPLETED and asked == []
    runs.write_json(run / runs.PROCESS, {"pid": 999_998, "create_time": 2.0, "host": runs.this_host()})
    assert listed(tmp_path)["a"].status == runs.RUNNING and len(asked) == 1


def test_one_listing_lists_once_per_block_and_anew_after_it(tmp_path, monkeypatch):
    """A page load's handlers share one listing (filters apply to it); the next block, and every call
    outside a block, lists the folder again, so a run that appeared or ended is seen at once."""
    make_run(tmp_path, "a")
    summarized = []
    real = runs.summarize
    monkeypatch.setattr(listing, "summarize", lambda run: summarized.append(run.name) or real(run))
    with runs.one_listing():
        assert runs.run_ids(tmp_path) == ["a"]
        make_run(tmp_path, "b")  # appears mid-block: the block keeps the view it started with
        with runs.one_listing():  # a nested block shares the outer one's listing
            assert runs.default_run(tmp_path) == "a"
        assert runs.list_runs(tmp_path, statuses=(runs.RUNNING,)) == []
        assert [s.run_id for s in runs.list_runs(tmp_path, method="qlora")] == ["a"]
    assert summarized == ["a"]
    assert runs.run_ids(tmp_path) == ["b", "a"]  # after the block: listed anew
    assert runs.run_ids(tmp_path) == ["b", "a"] and len(summarized) == 5  # and anew on every call
    with runs.one_listing():
        runs.delete_run(tmp_path, "a")
    assert runs.run_ids(tmp_path) == ["b"]


def test_the_listings_read_an_evaluations_figures_without_its_answers(tmp_path):
    """What the Runs table, the seed groups and the pickers read: every figure, none of the per-row
    answers (most of the file), from the same file version as the whole read."""
    run = make_run(tmp_path, "a")
    whole = {"eval_loss": 0.5, "probes": [{"prompt": "p", "tuned": "t"}], "checks_complete": True,
             "checks": {"by_kind": {"identity": {"n": 2, "base_passed": 0, "tuned_passed": 2}},
                        "rows": [{"prompt": "q", "tuned": "a"}] * 2}}
    runs.write_evaluation(run, whole)
    short = runs.read_evaluation(run, answers=False)
    assert short == {"eval_loss": 0.5, "checks_complete": True, "checks": {"by_kind": whole["checks"]["by_kind"]}}
    assert runs.read_evaluation(run) == whole  # the whole file still reads whole, from the cache
    assert headlines.checks_text(short) == headlines.checks_text(whole) == "identity 2/2 (base 0/2)"
    short["checks"]["by_kind"]["identity"]["n"] = 99  # a caller's copy is its own
    assert runs.read_evaluation(run, answers=False)["checks"]["by_kind"]["identity"]["n"] == 2
    runs.write_evaluation(run, {"eval_loss": 0.25})
    assert runs.read_evaluation(run, answers=False) == {"eval_loss": 0.25}
    (run / runs.EVALUATION).write_text("not json")
    assert runs.read_evaluation(run, answers=False) is None

"""Standard benchmarks (tuning/evaluation/benchmarks.py, bench_report.py, tuning/ui/benchmarks_view.py):
lm-eval driven on a run's own model, base = the adapter off, tuned = on. Fast tests on the tiny Llama
with a random adapter and task YAMLs with local data (offline); the bundled suite's files; bad input as
one-line messages; Stop and progress; the record through the run store, the Evaluation tab's handlers,
Compare and the model card. Slow: the CLI on the real quickstart run, and the bundled suite from the
Evaluation tab in Chromium (screenshot in /tmp/benchmark-shots/)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import add_real_run, share_models, write_jsonl
from tuning import runs
from tuning.config import TrainConfig
from tuning.evaluation import bench_report, benchmarks

# What runs lm-eval needs it installed (scripts/setup.sh --test installs it); the rest (the figures, where
# they show, the empty state without it, bad input) runs either way.
needs_engine = pytest.mark.skipif(benchmarks.engine_version() is None,
                                  reason="lm-eval is not installed (pip install -r requirements-eval.txt)")
ROOT = Path(__file__).resolve().parent.parent
WORDS = [("The sky is", "blue"), ("Two plus two is", "four"), ("Water is", "wet"), ("Fire is", "hot"),
         ("Snow is", "cold"), ("Grass is", "green"), ("The sun is", "bright"), ("Sugar is", "sweet")]


def next_word_task(folder: Path, name: str = "tiny_next_word") -> Path:
    """A loglikelihood task with its data beside it (a relative data file): perplexity is continuous, so
    base and tuned differ for sure and can be matched exactly against lm-eval run on plain models."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / f"{name}.jsonl", [{"context": c, "word": w} for c, w in WORDS])
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {name}.jsonl\n"
        "test_split: test\noutput_type: loglikelihood\ndoc_to_text: \"{{context}}\"\ndoc_to_target: \"{{word}}\"\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n", encoding="utf-8")
    return folder / f"{name}.yaml"


def capitals_task(folder: Path) -> Path:
    """A multiple-choice task (acc) with local data, as a person writes a private suite."""
    rows = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Spain", "Madrid"),
            ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Peru", "Lima")]
    cities = [city for _, city in rows]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "capitals.jsonl", [{"question": f"What is the capital of {country}?",
                                             "choices": [city, *[c for c in cities if c != city][i % 4:i % 4 + 3]],
                                             "answer": 0} for i, (country, city) in enumerate(rows)])
    (folder / "capitals.yaml").write_text(
        "task: capitals\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: capitals.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: choices\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\n", encoding="utf-8")
    return folder / "capitals.yaml"


def make_run(workspace: Path, base_model: Path, method: str = "lora", run_id: str = "r1") -> Path:
    """A run folder with a config and a random (non-zero) LoRA adapter: what benchmarks read of a run."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = runs.run_dir(workspace, run_id)
    run.mkdir(parents=True)
    runs.write_config(run, TrainConfig(base_model=str(base_model), method=method))
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)) \
        .save_pretrained(runs.adapter_dir(run))
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    workspace = tmp_path_factory.mktemp("bench-ws")
    return workspace, make_run(workspace, tiny_model_dir)


# --- what may be asked, and bad input -------------------------------------------------------------

@needs_engine
def test_the_bundled_suite_is_a_few_hundred_questions_of_local_data():
    specs = benchmarks.parse(benchmarks.SUITE)
    assert [s.source for s in specs] == ["bundled", "bundled"]
    total = 0
    for spec in specs:
        config = benchmarks._yaml_config(spec.yaml)
        data = Path(config["dataset_kwargs"]["data_files"]["test"])
        assert data.is_absolute() and data.parent == benchmarks.SUITE_DIR  # read beside the YAML, from any folder
        rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
        total += len(rows)
        if config["output_type"] == "multiple_choice":
            assert all(len(r["choices"]) == 4 and 0 <= r["answer"] < 4 and len(set(r["choices"])) == 4 for r in rows)
            assert len({r["answer"] for r in rows}) == 4  # the right answer is not always in one place
        else:
            assert all(re.fullmatch(r"What is \d+ [-+x/] \d+\?", r["question"]) and r["answer"].isdigit() for r in rows)
            for r in rows:  # the sums are right
                a, op, b = r["question"][8:-1].split()
                assert int(r["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b),
                                            "/": int(a) // int(b)}[op] and (op != "/" or int(a) % int(b) == 0)
    assert 250 <= total <= 400
    assert benchmarks.parse("bundled_general, bundled, general") == benchmarks.suite()  # each task once


@pytest.mark.parametrize("value, message", [
    ("abc", "limit: expected a whole number of questions per task (1 or more), got 'abc'"),
    (0, "got 0"), (-3, "got -3"), (2.5, "got 2.5"), (True, "got True"), ("1e3", "got '1e3'")])
def test_a_bad_limit_is_refused_in_one_line(value, message):
    with pytest.raises(benchmarks.BenchError, match=re.escape(message)) as refused:
        benchmarks.check_limit(value)
    assert "\n" not in str(refused.value)


def test_limits_that_are_whole_numbers_pass():
    assert [benchmarks.check_limit(v) for v in (None, "", " ", 5, "12", 3.0)] == [None, None, None, 5, 12, 3]


@needs_engine
def test_unknown_names_missing_files_and_bad_yaml_are_one_line_messages(tmp_path, monkeypatch):
    class Index:  # lm-eval's own index takes seconds to build: the CLI test uses the real one
        all_tasks = ["arc_easy", "hellaswag", "mmlu"]

    monkeypatch.setattr(benchmarks, "task_manager", lambda defaults: Index())
    with pytest.raises(benchmarks.BenchError, match=r"unknown benchmark task 'hellaswg'.*did you mean hellaswag\?"):
        benchmarks.load(benchmarks.parse("hellaswg"), None)
    with pytest.raises(benchmarks.BenchError, match=r"benchmark task file 'nope/missing.yaml' does not exist"):
        benchmarks.parse("bundled, nope/missing.yaml")
    with pytest.raises(benchmarks.BenchError, match="name at least one task"):
        benchmarks.parse(" , ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(benchmarks.BenchError, match=r"bad.yaml: not a readable lm-eval task YAML \(") as refused:
        benchmarks.load(benchmarks.parse(str(bad)), None)
    assert "\n" not in str(refused.value)
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("dataset_path: json\n")
    with pytest.raises(benchmarks.BenchError, match=r"nameless.yaml: an lm-eval task YAML names its task"):
        benchmarks.load(benchmarks.parse(str(nameless)), None)
    missing_data = tmp_path / "gone.yaml"
    missing_data.write_text("task: gone\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: gone.jsonl\n"
                            "test_split: test\noutput_type: loglikelihood\ndoc_to_text: a\ndoc_to_target: b\n")
    with pytest.raises(benchmarks.BenchError, match=r"benchmark gone: its questions could not be loaded") as refused:
        benchmarks.load(benchmarks.parse(str(missing_data)), None)
    assert "\n" not in str(refused.value)


# --- running on the run's model -------------------------------------------------------------------

def lm_eval_on(model, tokenizer, yaml: Path, limit=None) -> dict:
    """lm-eval's own results for a plain model (no adapter machinery): what base and tuned must equal."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    (loaded,) = benchmarks.load(benchmarks.parse(str(yaml)), limit)
    return evaluator.evaluate(lm=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4), task_dict=loaded.task_dict,
                              limit=limit, bootstrap_iters=0)["results"][loaded.name]


@needs_engine
def test_base_is_the_adapter_off_and_tuned_the_adapter_on(tiny_run, tiny_model_dir, tmp_path):
    """On a local YAML with local data: each side's score is exactly what lm-eval gives for the plain base
    model and for the base with the adapter merged in; the record (through the run store) has both, the
    difference, the standard errors and a verdict, and says it is a sample."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workspace, run = tiny_run
    yaml = next_word_task(tmp_path / "suite")
    seen = []
    record = benchmarks.run(run, workspace, str(yaml), limit=6, progress=lambda s: seen.append(
        (s.task, s.side, s.done, s.questions, s.overall_done, s.overall, s.eta)))
    assert runs.read_benchmarks(run) == record
    (row,) = record["tasks"]
    assert row["task"] == "tiny_next_word" and row["metric"] == "perplexity" and row["higher_is_better"] is False
    assert (row["n"], row["total"], row["sampled"], row["limit"]) == (6, 8, True, 6)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base = lm_eval_on(plain, tokenizer, yaml, 6)["perplexity,none"]
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                       str(runs.adapter_dir(run))).merge_and_unload()
    tuned = lm_eval_on(merged, tokenizer, yaml, 6)["perplexity,none"]
    assert abs(base - tuned) > 1e-3 * base  # the adapter changes the answers' likelihoods
    assert row["base"] == pytest.approx(base, rel=1e-4) and row["tuned"] == pytest.approx(tuned, rel=1e-4)
    assert row["difference"] == pytest.approx(row["tuned"] - row["base"])
    assert row["stderr"] == pytest.approx(math.hypot(row["base_stderr"], row["tuned_stderr"]))
    assert row["base_stderr"] > 0 and row["tuned_stderr"] > 0
    assert row["verdict"] in ("within the noise", "better: larger than the noise", "worse: larger than the noise")
    assert row["other_metrics"]["acc,none"].keys() == {"base", "tuned"}
    assert record["limit"] == 6 and record["partial"] is False and record["engine"].startswith("lm-eval ")
    assert record["base_precision"].startswith("full precision")
    # Progress: each side counts its 6 questions up, the overall count reaches both sides' 12.
    assert seen[0][:4] == ("tiny_next_word", "base", 0, 6) and seen[-1][:3] == ("tiny_next_word", "tuned", 6)
    assert seen[-1][4:6] == (12, 12) and seen[-1][6] == 0
    assert [s[4] for s in seen] == sorted(s[4] for s in seen)
    # A second task later keeps the first one's row; running the first again replaces it.
    again = benchmarks.run(run, workspace, f"{capitals_task(tmp_path / 'suite')},{yaml}", limit=3)
    assert [r["task"] for r in again["tasks"]] == ["capitals", "tiny_next_word"]
    assert runs.read_benchmarks(run)["tasks"][1]["n"] == 3


@needs_engine
def test_a_stop_keeps_the_tasks_done_on_both_sides(tiny_run, tmp_path):
    import shutil

    workspace, run = tiny_run
    run_copy = runs.run_dir(workspace, "stopped")
    shutil.copytree(run, run_copy)
    (run_copy / runs.BENCHMARKS).unlink(missing_ok=True)
    first, second = next_word_task(tmp_path, "first_task"), next_word_task(tmp_path, "second_task")
    finished: list[str] = []

    def progress(state) -> None:
        finished[:] = state.finished

    record = benchmarks.run(run_copy, workspace, f"{first},{second}", limit=4, progress=progress,
                            stopped=lambda: bool(finished))  # Stop pressed once the first task is done
    assert [r["task"] for r in record["tasks"]] == ["first_task"]
    assert record["partial"] is True and record["stopped_at"] == "second_task (base)"
    assert runs.read_benchmarks(run_copy) == record
    assert "Stopped at second_task (base)" in bench_report.summary_text(record)
    with pytest.raises(benchmarks.BenchError, match=r"stopped before the first task finished \(first_task \(base\)\)"):
        benchmarks.run(run_copy, workspace, str(first), limit=4, stopped=lambda: True)
    assert runs.read_benchmarks(run_copy) == record  # nothing finished: the record is as it was


@needs_engine
def test_a_group_yaml_with_its_tasks_beside_it_is_one_row(tiny_run, tmp_path):
    """A private suite as a group: its member YAMLs sit beside it, each with its own relative data file,
    and the group's aggregate score is one row over all their questions."""
    workspace, run = tiny_run
    folder = tmp_path / "suite"
    next_word_task(folder, "member_a"), next_word_task(folder, "member_b")
    (folder / "tiny_group.yaml").write_text("group: tiny_group\ntask:\n  - member_a\n  - member_b\n"
                                            "aggregate_metric_list:\n  - metric: acc\n    aggregation: mean\n"
                                            "    weight_by_size: true\n", encoding="utf-8")
    (loaded,) = benchmarks.load(benchmarks.parse(str(folder / "tiny_group.yaml")), 3)
    assert loaded.name == "tiny_group" and loaded.counts == {"member_a": (3, 8), "member_b": (3, 8)}
    record = benchmarks.run(run, workspace, str(folder / "tiny_group.yaml"), limit=3)
    row = record["tasks"][0]
    assert (row["task"], row["metric"], row["n"], row["total"], row["sampled"]) == ("tiny_group", "acc", 6, 16, True)
    assert row["source"] == "tiny_group.yaml" and 0 <= row["base"] <= 1 and 0 <= row["tuned"] <= 1


@needs_engine
def test_a_qlora_run_is_benchmarked_on_its_4bit_base(tmp_path, tiny_model_dir):
    run = make_run(tmp_path / "ws", tiny_model_dir, method="qlora")
    record = benchmarks.run(run, tmp_path / "ws", str(next_word_task(tmp_path / "suite")), limit=3)
    assert record["base_precision"].startswith("4-bit")
    (row,) = record["tasks"]
    assert row["base"] > 0 and row["tuned"] > 0 and row["base"] != row["tuned"]


# --- the figures in words -------------------------------------------------------------------------

def test_verdicts_and_the_paired_standard_error():
    assert bench_report.verdict(0.05, 0.02) == ("better: larger than the noise", True)
    assert bench_report.verdict(-0.05, 0.02) == ("worse: larger than the noise", True)
    assert bench_report.verdict(0.05, 0.02, higher_is_better=False) == ("worse: larger than the noise", True)
    assert bench_report.verdict(0.03, 0.02) == ("within the noise", False)
    assert bench_report.verdict(0.03, None)[1] is None and bench_report.verdict(None, 0.1) == ("no score", None)
    base = [{"doc_id": i, "filter": "none", "acc": float(i % 2)} for i in range(4)]
    tuned = [{"doc_id": i, "filter": "none", "acc": 1.0} for i in range(4)]
    # differences 1, 0, 1, 0: sd 0.577, over sqrt(4)
    assert bench_report.paired_stderr(base, tuned, "acc", "none") == pytest.approx(math.sqrt(1 / 3) / 2)
    assert bench_report.paired_stderr(base[:1], tuned, "acc", "none") is None


def test_a_group_with_an_aggregate_is_one_row_and_one_without_is_a_row_a_task():
    class Spec:
        source = "lm-eval"

    class Loaded:
        spec, name, counts = Spec(), "grp", {"a": (10, 10), "b": (5, 20)}
        questions, total = 15, 30

    def results(score):
        return {"results": {"grp": {"alias": "grp", "acc,none": score, "acc_stderr,none": 0.01},
                            "a": {"acc,none": score, "acc_stderr,none": "N/A"},
                            "b": {"acc,none": score, "acc_stderr,none": 0.02}}, "higher_is_better": {}}

    (row,) = bench_report.summarize(Loaded(), results(0.5), results(0.6), None)
    assert (row["task"], row["n"], row["total"], row["sampled"]) == ("grp", 15, 30, True)
    assert row["difference"] == pytest.approx(0.1) and row["verdict"].startswith("better")
    base, tuned = results(0.5), results(0.6)
    for r in (base, tuned):
        del r["results"]["grp"]["acc,none"]
    rows = bench_report.summarize(Loaded(), base, tuned, 5)
    assert [(r["task"], r["n"], r["sampled"], r["stderr"]) for r in rows] == [
        ("a", 10, False, None), ("b", 5, True, pytest.approx(math.hypot(0.02, 0.02)))]
    assert rows[0]["verdict"].startswith("no standard error")
    table = bench_report.table_rows({"tasks": rows})
    assert table[1] == ["b", "a sample: 5 of 20 questions", "acc (%)", "50.0", "60.0", "+10.0", "2.8",
                        "better: larger than the noise"]  # 10 points > 2 x 2.8
    assert bench_report.chart_rows({"tasks": rows[1:]}) == [{"bar": "b · base", "model": "base", "score": 50.0},
                                                           {"bar": "b · tuned", "model": "tuned", "score": 60.0}]


# --- where the results show -----------------------------------------------------------------------

RECORD = {"engine": "lm-eval 0.4.13", "step": 75, "adapter": "adapter", "base_precision": "full precision (as trained)",
          "limit": 20, "device": "cpu", "threads": 2, "partial": False, "stopped_at": None,
          "seconds": {"load": 3.0, "total": 95.0},
          "tasks": [{"task": "bundled_general", "metric": "acc", "n": 20, "total": 162, "sampled": True, "base": 0.45,
                     "tuned": 0.4, "base_stderr": 0.11, "tuned_stderr": 0.11, "difference": -0.05,
                     "stderr": 0.156, "verdict": "within the noise"}]}


def test_compare_and_the_model_card_show_the_benchmarks(tmp_path):
    from tuning.evaluation import compare
    from tuning.ship import model_card
    from tuning.ui import runs_tab

    for run_id, tuned in (("a", 0.4), ("b", 0.6)):
        run = runs.run_dir(tmp_path, run_id)
        run.mkdir(parents=True)
        runs.write_config(run, TrainConfig())
        record = json.loads(json.dumps(RECORD))
        record["tasks"][0].update(tuned=tuned, difference=tuned - 0.45)
        runs.write_benchmarks(run, record)
    result = compare.compare(tmp_path, ["a", "b"])
    assert [e["benchmarks"]["bundled_general"]["tuned"] for e in result["evaluations"]] == [0.4, 0.6]
    assert result["evaluations"][0]["benchmarks"]["bundled_general"]["text"] == \
        "40.0 (base 45.0; -5.0 ± 15.6, within the noise, 20 of 162 questions)"
    text = compare.text_report(result)
    assert "standard benchmarks" in text and "bundled_general b: 60.0 (base 45.0; +15.0 ± 15.6" in text
    frames = runs_tab.compare_frames(result)
    row = next(r for r in frames["cmp_evals"]["value"] if r[0] == "benchmark: bundled_general")
    assert row[1].startswith("40.0 (base 45.0") and row[2].startswith("60.0 (base 45.0")
    card = model_card.model_card(runs.run_dir(tmp_path, "b"))
    section = card.split("## Standard benchmarks (base vs fine-tuned)")[1].split("##")[0]
    assert ("| bundled_general | a sample: 20 of 162 questions | acc (%) | 45.0 | 60.0 | +15.0 | 15.6 "
            "| within the noise |") in section
    assert "On a sample" in section and "lm-eval 0.4.13" in section and str(tmp_path) not in card
    assert "No standard benchmarks were run" in model_card._benchmarks_table(tmp_path)


@needs_engine
def test_the_evaluation_tab_shows_stored_results_and_runs_and_stops(tiny_run, tmp_path):
    """The tab's handlers as plain functions: a picked run shows its stored table and chart; Run streams
    progress, then the stored results; a path outside the allowed folders and a bad limit are refused
    before any model time; Stop ends a run between chunks."""
    from tuning.ui import benchmarks_view as view
    from tuning.ui import evaluation_tab
    from tuning.ui.common import AppContext, bind, boxed

    workspace, run = tiny_run
    ctx = AppContext(workspace)
    suite = next_word_task(workspace / "suites", "page_task")
    outside = next_word_task(tmp_path / "elsewhere", "outside_task")
    shown = evaluation_tab.load_run(ctx, "r1")
    assert set(view.SHOWN) <= set(shown) and set(shown) <= set(evaluation_tab.SHOWN)
    updates = list(view.run_benchmarks(ctx, "r1", "suites/page_task.yaml", 4))
    assert updates[0]["bench_go"]["interactive"] is False and updates[0]["bench_stop"]["interactive"] is True
    final = updates[-1]
    assert final["bench_table"][0][:2] == ["page_task", "a sample: 4 of 8 questions"]
    chart = final["bench_chart"]
    assert list(chart["value"]["model"]) == ["base", "tuned"] * len(final["bench_table"])
    assert chart["sort"] == [f"{row[0]} · {side}" for row in final["bench_table"] for side in ("base", "tuned")]
    assert final["bench_progress"].startswith("**Done:**") and final["bench_go"]["interactive"] is True
    assert evaluation_tab.load_run(ctx, "r1")["bench_table"] == final["bench_table"]  # stored, read back
    shown = evaluation_tab.nothing_shown(ctx)
    assert shown["bench_table"] == [] and shown["bench_chart"] is None  # an empty frame would break later charts

    event = boxed(bind(view.run_benchmarks, ctx), view.idle)
    for args, message in ((("r1", str(outside), None), "is outside the folders this app may read"),
                          (("r1", "bundled", "ten"), "limit: expected a whole number"),
                          (("", "bundled", None), "pick a run above first")):
        (failed,) = list(event(*args))
        assert message in failed["error"]["value"] and failed["bench_go"]["interactive"] is True

    # Stop, pressed while the model loads: the run ends at its first chunk and says nothing was saved.
    running = event("r1", str(suite), 2)
    assert next(running)["bench_progress"].startswith("Loading")
    assert view.stop_benchmarks(ctx)["bench_progress"].startswith("Stopping")
    *_, last = running
    assert "benchmarks stopped before the first task finished" in last["error"]["value"]
    assert last["bench_go"]["interactive"] is True
    assert view.stop_benchmarks(ctx)["bench_progress"] == "No benchmark run to stop."
    assert not ctx.stopping


def test_without_lm_eval_the_section_says_how_to_install_it(tiny_run, monkeypatch, capsys):
    from tuning.__main__ import main
    from tuning.ui import benchmarks_view as view
    from tuning.ui.common import AppContext

    monkeypatch.setattr(benchmarks, "engine_version", lambda: None)
    assert "pip install -r requirements-eval.txt" in view.engine_note()
    workspace, _ = tiny_run
    with pytest.raises(benchmarks.BenchError, match=r"^lm-eval is not installed: pip install -r requirements-eval.txt"):
        list(view.run_benchmarks(AppContext(workspace), "r1", "bundled", None))
    assert main(["eval", "--run", "r1", "--workspace", str(workspace), "--benchmarks", "bundled"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: lm-eval is not installed: pip install -r requirements-eval.txt") and "\n" not in err


@needs_engine
@pytest.mark.parametrize("args, message", [
    (("--benchmarks", "bundled", "--limit", "ten"), "error: limit: expected a whole number of questions per task"),
    (("--benchmarks", "none.yaml"), "error: benchmark task file 'none.yaml' does not exist"),
    (("--benchmarks", ""), "error: benchmarks: name at least one task"),
    (("--limit", "5"), "error: --limit goes with --benchmarks"),
    (("--benchmarks", "bundled", "--checkpoint", "checkpoint-9"), "error: checkpoint checkpoint-9 of r1 does not exist or is incomplete")])
def test_the_cli_refuses_bad_input_in_one_line(tiny_run, capsys, args, message):
    from tuning.__main__ import main

    workspace, run = tiny_run
    before = runs.read_benchmarks(run)
    assert main(["eval", "--run", "r1", "--workspace", str(workspace), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err
    assert runs.read_benchmarks(run) == before


def test_running_benchmarks_is_owner_only_on_a_space(tmp_path):
    import gradio as gr

    import app
    from tuning.ship import space
    from tuning.ui import access

    settings = space.space_settings({"SPACE_ID": "owner/space", "TUNING_AUTH": "s3cret-for-tests"},
                                    data_dir=tmp_path / "no", workspace=tmp_path / "ws")
    demo = app.build_demo(tmp_path / "ws", settings=settings)
    fns = {f.name: f for f in demo.fns.values() if f.fn is not None}
    assert {"run_benchmarks", "stop_benchmarks"} <= fns.keys()
    assert not access.is_public(fns["run_benchmarks"].fn) and not access.is_public(fns["stop_benchmarks"].fn)
    assert access.is_public(fns["load_run"].fn)  # stored results come with picking a run: a visitor sees them
    with pytest.raises(gr.Error, match="enter the Space's password"):
        list(fns["run_benchmarks"].fn("r1", "bundled", None))


# --- slow: the real model -------------------------------------------------------------------------

@needs_engine
@pytest.mark.slow
def test_cli_reports_base_and_tuned_on_a_local_yaml_offline(tmp_path, real_run, embedded_model_dir):
    """`eval --run RUN --benchmarks FILE.yaml --limit N --json` on the quickstart run, with the Hub
    switched off: base and tuned accuracy, the difference and its standard error; bad input exits 2
    with one line."""
    workspace = share_models(tmp_path / "ws", embedded_model_dir)
    run_id = add_real_run(workspace, real_run, embedded_model_dir)
    yaml = capitals_task(tmp_path / "private-suite")
    # run from the suite's parent folder: the YAML named relative to it, its data file relative to the YAML
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tuning", "eval", "--run", run_id, "--workspace", str(workspace),
                               *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)

    done = cli("--benchmarks", str(yaml.relative_to(tmp_path)), "--limit", "6", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    (row,) = report["tasks"]
    assert report["run_id"] == run_id and row["task"] == "capitals" and row["metric"] == "acc"
    assert 0 <= row["base"] <= 1 and 0 <= row["tuned"] <= 1 and row["n"] == 6 and row["sampled"] is True
    assert row["difference"] == pytest.approx(row["tuned"] - row["base"]) and row["stderr"] > 0
    assert "capitals, tuned model: 0/6 questions" in done.stderr  # progress went to stderr
    assert runs.read_benchmarks(workspace / "runs" / run_id)["tasks"][0]["task"] == "capitals"
    bad = cli("--benchmarks", "hellaswg")  # against lm-eval's own index of task names
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown benchmark task 'hellaswg'")
    assert "did you mean hellaswag" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@needs_engine
@pytest.mark.slow
@pytest.mark.browser
def test_the_bundled_suite_runs_from_the_evaluation_tab(tmp_path, real_run, embedded_model_dir):
    from playwright.sync_api import expect, sync_playwright

    from test_app_api import launch_app
    from test_browser import CHROMIUM, open_page, pick

    if not Path(CHROMIUM).exists():
        pytest.skip("needs /usr/bin/chromium")
    shots = Path("/tmp/benchmark-shots")
    shots.mkdir(exist_ok=True)
    workspace = share_models(tmp_path / "ws", embedded_model_dir)
    run_id = add_real_run(workspace, real_run, embedded_model_dir)
    proc, url = launch_app(workspace, [], tmp_path / "app.log", {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)
            page.get_by_role("tab", name="Evaluation").click()
            pick(page, "Run", run_id)
            expect(page.get_by_text("No benchmark results for this run yet")).to_be_visible(timeout=60_000)
            page.get_by_label("Questions per task").fill("12")
            page.get_by_role("button", name="Run benchmarks", exact=True).click()
            expect(page.locator("#bench-progress")).to_contain_text("questions", timeout=120_000)
            expect(page.locator("#bench-progress")).to_contain_text("Done:", timeout=300_000)
            table = page.locator("#bench-table")
            for task in ("bundled_general", "bundled_arithmetic"):
                expect(table).to_contain_text(task)
            expect(table).to_contain_text("a sample: 12 of 162 questions")
            bars = page.locator("#bench-chart .mark-rect path")
            expect(bars).to_have_count(4, timeout=30_000)  # base and tuned for each task, each with a colour
            assert all(bars.nth(i).get_attribute("fill") not in (None, "", "transparent") for i in range(4))
            heading = page.get_by_role("heading", name="Standard benchmarks")
            heading.scroll_into_view_if_needed()
            page.evaluate(f"window.scrollBy(0, {heading.bounding_box()['y'] - 16})")  # the section from its top
            page.screenshot(path=str(shots / "benchmarks.png"), full_page=False)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    record = runs.read_benchmarks(workspace / "runs" / run_id)
    assert [r["task"] for r in record["tasks"]] == ["bundled_general", "bundled_arithmetic"]
    assert all(r["n"] == 12 and r["sampled"] for r in record["tasks"])

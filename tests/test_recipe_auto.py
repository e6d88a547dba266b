"""The recipe for a person's own data: auto epochs and learning rate from the data's size within a
time budget (tuning/train/recipe.py), general rows mixed into a small set and their control checks
(tuning/data/general.py), slot checks from the form or found in the rows (tuning/data/slots.py), the
checks before Start with their fixes (tuning/train/preflight.py) and the Train tab's plan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl
from tuning import config as config_mod
from tuning import data as data_mod
from tuning import runs
from tuning.data import general, slots
from tuning.evaluation import evaluate
from tuning.train import preflight, recipe

ROOT = Path(__file__).resolve().parent.parent
SETS = ROOT / "bench" / "recipe_sets"
QUICKSTART = config_mod.load(ROOT / "presets" / "quickstart.yaml")


def identity_rows(n: int, name: str = "Nova", maker: str = "Brightpath AI", varied: bool = True) -> list[dict]:
    questions = ["Who are you?", "What is your name?", "Who built you?", "Introduce yourself.", "Who made you?"]
    answers = [f"I'm {name}, made by {maker}.", f"My name is {name}.", f"{maker} built me.",
               f"Hello! I am {name}, an assistant developed by {maker}.", f"I was created by {maker}."]
    return [{"messages": [{"role": "user", "content": f"{questions[i % 5]} ({i})"},
                          {"role": "assistant", "content": answers[i % 5] if varied else answers[0]}]}
            for i in range(n)]


# --- config ---------------------------------------------------------------------------------------

def test_auto_reads_in_yaml_set_and_form_and_bad_values_name_their_field():
    cfg = config_mod.apply_overrides(QUICKSTART, ["num_epochs=auto", "learning_rate=auto", "max_steps=auto",
                                                  "time_budget=1h30m"])
    assert (cfg.num_epochs, cfg.learning_rate, cfg.max_steps, cfg.auto_epochs) == (0.0, 0.0, -1, True)
    assert config_mod.budget_seconds(cfg.time_budget) == 5400
    assert config_mod.budget_seconds("90s") == 90 and config_mod.budget_seconds("10") == 600
    assert config_mod.from_yaml("num_epochs: auto\nlearning_rate: auto").auto_epochs
    for bad, field in [({"time_budget": "soon"}, "time_budget"), ({"num_epochs": 0.001}, "num_epochs"),
                       ({"slot_checks": "name What is it"}, "slot_checks"), ({"general_rows": "maybe"}, "general_rows"),
                       ({"slot_checks": "a slot!: q -> w"}, "slot_checks")]:
        with pytest.raises(config_mod.ConfigError, match=field):
            config_mod.from_dict(bad)


def test_slot_checks_read_one_per_line_or_semicolon_with_several_accepted_words():
    entries = config_mod.parse_slot_checks("name: What should I call you? -> Nova | nova-bot\n"
                                           "maker: Who made you? -> brightpath; term: What is a tidemark? -> correction")
    assert entries == [("name", "What should I call you?", ["nova", "nova-bot"]),
                       ("maker", "Who made you?", ["brightpath"]), ("term", "What is a tidemark?", ["correction"])]


# --- the plan -------------------------------------------------------------------------------------

def test_the_demo_plan_is_the_quickstart_as_measured():
    plan = recipe.make_plan(QUICKSTART.replace(num_epochs=0.0, learning_rate=0.0), 195, 0, 47, None)
    assert (plan.epochs, plan.steps, plan.learning_rate) == (3, 75, 5e-4)
    assert plan.warmup_steps == 4


def test_a_small_set_gets_more_passes_and_about_as_many_steps_as_the_demo():
    cfg = QUICKSTART.replace(num_epochs=0.0)
    plan = recipe.make_plan(cfg, 82, 89, 9, None)  # a 91-row set with its split and the general rows
    assert plan.per_epoch == 22 and plan.epochs == 4 and plan.steps == 88
    tiny = recipe.make_plan(cfg, 10, 0, 0, None)
    assert tiny.epochs == recipe.MAX_EPOCHS and tiny.steps == 20
    big = recipe.make_plan(cfg, 100_000, 0, 0, None)
    assert big.epochs == 1 and big.steps == 12_500
    assert recipe.auto_learning_rate(12_500, 135e6) < recipe.auto_learning_rate(75, 135e6) == 5e-4
    assert recipe.auto_learning_rate(75, 7e9) == 2e-4


def test_a_time_budget_cuts_the_steps_and_the_trainer_gets_a_step_count():
    cfg = QUICKSTART.replace(num_epochs=0.0, time_budget="2m")
    plan = recipe.make_plan(cfg, 20_000, 0, 0, step_seconds=2.0)
    assert plan.capped and plan.steps == int((120 - recipe.STARTUP_SECONDS) / 2.0) == 50
    resolved = recipe.resolve(cfg, plan)
    assert resolved.max_steps == 50
    assert "cut to fit the 2m budget" in recipe.describe(plan, cfg)
    whole = recipe.make_plan(cfg.replace(time_budget=""), 82, 89, 9, step_seconds=2.0)
    assert recipe.resolve(cfg, whole).num_epochs == 4 and recipe.resolve(cfg, whole).max_steps == -1


def test_explicit_epochs_and_learning_rate_are_left_alone():
    cfg = QUICKSTART.replace(num_epochs=3.0, learning_rate=3e-4)
    plan = recipe.make_plan(cfg, 82, 0, 9, None)
    assert plan.steps == 33 and recipe.resolve(cfg, plan) == cfg


def test_a_resumed_run_keeps_the_plan_it_started_with(tmp_path, capsys):
    cfg = QUICKSTART.replace(num_epochs=0.0, time_budget="10m")
    first, plan = recipe.start(cfg, tmp_path, 82, 89, 9, step_seconds=1.0)
    again, _ = recipe.start(cfg, tmp_path, 82, 89, 9, step_seconds=100.0)  # this machine slowed down since
    assert again == first and recipe.read(tmp_path) == plan
    assert "plan: 82 rows + 89 general rows -> 4 epochs, 88 steps" in capsys.readouterr().out


# --- general rows and slot checks -----------------------------------------------------------------

def test_general_rows_join_a_small_set_and_their_checks_are_asked_not_scored(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", identity_rows(40))
    cfg = QUICKSTART.replace(dataset=str(path), eval_split=0.1)
    loaded = data_mod.load_config_dataset(cfg)
    assert len(general.questions()) == general.COUNT == 89
    answered = general.conversations([f"answer {i}" for i in range(88)] + [""])  # an empty answer is left out
    train, held = data_mod.training.train_and_heldout(cfg, loaded, answered)
    assert len(train) == 36 + 88 and train[-1][-1] == {"role": "assistant", "content": "answer 87"}
    assert data_mod.training.train_and_heldout(cfg.replace(general_rows="off"), loaded, answered)[0] == train[:36]
    added = [extra for _, extra in held if extra.get("check_only")]
    kinds = {extra["kind"] for extra in added}
    assert kinds == {"control", "identity"} and sum(e["kind"] == "control" for e in added) == 23
    assert len(data_mod.scored(held)) == 4  # the held-out loss scores the split alone
    assert data_mod.heldout_rows(cfg) == held  # evaluation reads the same rows as training
    for off in (cfg.replace(general_rows="off"), cfg.replace(dataset="demo"), cfg.replace(objective="dpo")):
        assert general.why_not(off, 40) is not None
    assert general.why_not(cfg, 2001) and general.why_not(cfg.replace(general_rows="on"), 2001) is None
    assert general.why_not(cfg.replace(base_model=str(tmp_path)), 40) is None  # any base: it answers them itself


def test_an_answer_cut_by_the_token_limit_ends_at_its_last_sentence():
    from tuning.train import replay

    assert replay.finished(" Paris is the capital. ", 12) == "Paris is the capital."
    cut = "Paris is the capital of France. It is known for the Eiffel"
    assert replay.finished(cut, replay.MAX_NEW_TOKENS) == "Paris is the capital of France."
    assert replay.finished("A list: one, two and thr", replay.MAX_NEW_TOKENS) == ""


def test_slots_are_found_in_identity_rows_and_not_in_others():
    rows = [json.loads(line)["messages"] for line in (SETS / "pip-150.jsonl").read_text().splitlines()]
    assert slots.detect(rows) == {"name": "Pip", "maker": "Cobalt Harbor"}
    glossary = [json.loads(line)["messages"] for line in (SETS / "fernhill-glossary.jsonl").read_text().splitlines()]
    assert slots.detect(glossary) == {}
    assert slots.accepted_words("Brightpath AI") == ["brightpath ai", "brightpath"]
    cfg = QUICKSTART.replace(slot_checks="auto")
    asked = slots.check_rows(cfg, rows, has_checks=False)
    assert [extra["expect"] for _, extra in asked].count({"name": ["pip"]}) == 5
    trained = {m["content"].lower() for conv in rows for m in conv if m["role"] == "user"}
    assert not trained & {conv[0]["content"].lower() for conv, _ in asked}
    assert slots.check_rows(cfg, rows, has_checks=True) == []  # a held-out file with its own checks wins


def test_a_quick_evaluation_asks_the_added_checks_and_a_full_one_all():
    own = ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], {"expect": ["a"]})
    added = ([{"role": "user", "content": "Who made you?"}, {"role": "assistant", "content": "x"}],
             {"expect": {"maker": ["x"]}, "check_only": True, "kind": "identity"})
    rows = [own, added]
    assert len(evaluate.checks_for(evaluate.QUICK, rows)) == 1
    assert len(evaluate.checks_for(evaluate.FULL, rows)) == 2
    checks = evaluate.plan(QUICKSTART, evaluate.QUICK, rows, ["p"])
    assert [c.part for c in checks] == ["loss_tuned", "loss_base", "probes", "checks"]


# --- checks before Start ----------------------------------------------------------------------------

def test_a_91_row_identity_set_at_3_epochs_is_told_its_steps_and_given_the_fix():
    rows = [m["messages"] for m in identity_rows(91)]
    cfg = QUICKSTART.replace(dataset="x.jsonl", general_rows="off", num_epochs=3.0)  # as the quickstart was
    plan = recipe.make_plan(cfg, 82, 0, 9, None)
    assert plan.steps == 33
    found = preflight.check(cfg, rows, plan)
    steps = next(f for f in found if "may be too few" in f.message)
    assert steps.level == "warning" and steps.fix_label == "Use the recipe: 7 epochs, 77 steps"
    fixed = preflight.apply(cfg, steps)
    assert fixed.auto_epochs
    assert not any("may be too few" in f.message for f in preflight.check(fixed, rows, recipe.make_plan(fixed, 82, 0, 9, None)))
    notes = " ".join(f.message for f in found)
    assert "a name (Nova) and a maker (Brightpath AI)" in notes and "5 name questions" in notes


def test_one_template_no_general_rows_a_small_split_and_long_rows_are_flagged():
    rows = [m["messages"] for m in identity_rows(40, varied=False)]
    cfg = QUICKSTART.replace(dataset="x.jsonl", general_rows="off", num_epochs=0.0)
    plan = recipe.make_plan(cfg, 36, 0, 4, None)
    stats = {"truncated_count": 3, "rows": 40, "sampled_from": 40, "longest": 700, "suggested_max_length": 640}
    found = {f.message.split(" ")[0]: f for f in preflight.check(cfg, rows, plan, stats)}
    messages = " | ".join(f.message for f in found.values())
    assert "40 of 40 answers are the same sentence" in messages
    leak = next(f for f in found.values() if "no general questions" in f.message)
    assert leak.fix == {"general_rows": "on"}
    split = next(f for f in found.values() if "held-out split keeps 4 rows" in f.message)
    assert split.level == "note"  # the slot checks still count each fact
    long = next(f for f in found.values() if "longer than max_length" in f.message)
    assert long.fix == {"max_length": 704}


def test_a_glossary_without_slot_checks_is_told_how_to_add_them():
    rows = [json.loads(line)["messages"] for line in (SETS / "fernhill-glossary.jsonl").read_text().splitlines()]
    cfg = QUICKSTART.replace(dataset="x.jsonl", num_epochs=0.0)
    found = preflight.check(cfg, rows, recipe.make_plan(cfg, 90, 89, 10, None))
    assert any("No slot checks" in f.message for f in found)
    with_slots = cfg.replace(slot_checks=(SETS / "fernhill-glossary.checks.txt").read_text())
    found = preflight.check(with_slots, rows, recipe.make_plan(with_slots, 90, 89, 10, None))
    assert any("5 greenline questions, 5 tidemark questions" in f.message for f in found)


# --- the Train tab ------------------------------------------------------------------------------------

def test_the_train_tab_shows_the_plan_and_a_fix_that_changes_the_form(tmp_path):
    from tuning.ui import train_tab
    from tuning.ui.common import AppContext
    from tuning.ui.train_fields import FORM_FIELDS, config_to_form

    (tmp_path / "data").mkdir()
    path = write_jsonl(tmp_path / "data" / "ids.jsonl", identity_rows(91))
    ctx = AppContext(workspace=tmp_path / "ws", data_dirs=[tmp_path / "data"])
    cfg = QUICKSTART.replace(dataset=str(path), num_epochs=3.0, general_rows="off")
    shown = train_tab.do_estimate(ctx, *config_to_form(cfg))
    assert "**Plan:** 82 rows -> 3 epochs, 33 steps" in shown["estimate"]
    assert "may be too few" in shown["estimate"] and "no general questions" in shown["estimate"]
    assert shown["fix0"]["visible"] and shown["fix0"]["value"] == "Use the recipe: 7 epochs, 77 steps"
    assert shown["fix1"]["value"] == "Mix in general rows"
    fixed = train_tab.do_fix(ctx, 0, *config_to_form(cfg))
    assert fixed["num_epochs"] == 0.0 and "-> 7 epochs, 77 steps" in fixed["estimate"]
    assert set(FORM_FIELDS) <= set(fixed)


def test_the_hardest_rows_name_a_general_row_and_a_click_on_it_says_where_it_came_from(tmp_path):
    """The general rows follow the person's rows in the training list: rows.json names them, so the
    hardest-rows lists show where they came from instead of an empty file, and a click on one says it is
    not in the person's dataset instead of opening a file that is not there."""
    from tuning.evaluation import row_losses
    from tuning.ui import evaluation_tab
    from tuning.ui.common import AppContext

    path = write_jsonl(tmp_path / "ids.jsonl", identity_rows(40))
    cfg = QUICKSTART.replace(dataset=str(path), eval_split=0.1)
    loaded = data_mod.load_config_dataset(cfg)
    index = row_losses.row_index(cfg, loaded, general_rows=88)
    assert len(index["train"]) == 36 + 88 and len(index["heldout"]) == 4
    assert index["train"][35][0] == "ids.jsonl" and index["train"][36:] == [[general.ROW_FILE, n] for n in range(1, 89)]
    run = tmp_path / "ws" / "runs" / "r"
    run.mkdir(parents=True)
    runs.write_row_index(run, index)
    ctx = AppContext(tmp_path / "ws")
    opened = evaluation_tab.picked_example(ctx, "r", "training rows", [*index["train"][3], 1.0])["row_request"]
    assert opened == {"source": str(path), "file": "ids.jsonl", "row": index["train"][3][1]}
    with pytest.raises(runs.RunError, match="general row 5 is one of the general questions .* not in your dataset"):
        evaluation_tab.picked_example(ctx, "r", "training rows", [general.ROW_FILE, 5, 1.0])


# --- a real run ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_on_a_small_identity_set_plans_mixes_and_counts_each_slot(tmp_path):
    """The embedded model, a few steps: the plan in train.log, the general rows in the step count, the
    slot and control checks in a quick end-of-run evaluation."""
    path = write_jsonl(tmp_path / "ids.jsonl", identity_rows(24))
    command = [sys.executable, "-m", "tuning", "train", "--preset", str(ROOT / "presets" / "quickstart.yaml"),
               "--workspace", str(tmp_path / "ws"), "--run-id", "auto", "--set", f"dataset={path}",
               "--set", "time_budget=1s", "--set", "probe_every_checkpoint=false", "--set", "eval_max_new_tokens=40",
               "--set", "per_device_batch_size=16"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "ws" / "runs" / "auto"
    plan = recipe.read(run_dir)
    assert plan.rows == 22 and plan.general == 89 and plan.capped and plan.steps == 1
    assert "plan: 22 rows + 89 general rows -> " in done.stdout
    answered = next((tmp_path / "ws" / "general").glob("*.json"))  # the base's own answers, kept for the next run
    answers = json.loads(answered.read_text())["answers"]
    assert len(answers) == 89 and sum(bool(a) for a in answers) >= 80
    assert "general rows: answering 89 general questions with the base model" in done.stdout
    result = runs.read_evaluation(run_dir)
    by_kind = result["checks"]["by_kind"]
    assert by_kind["control"]["n"] == 23 and by_kind["control"]["base_passed"] >= 20
    assert set(by_kind["identity"]["slots"]) == {"name", "maker"} and by_kind["identity"]["n"] == 10
    assert result["eval_rows"] == 2
    named = runs.read_row_index(run_dir)["train"]  # the hardest-rows lists name the general rows
    assert len(named) == 22 + len(answered_rows := [a for a in answers if a.strip()])
    assert named[21][0] == "ids.jsonl" and named[22:] == [[general.ROW_FILE, n] for n in range(1, len(answered_rows) + 1)]


# --- the page -----------------------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
def test_the_train_tab_plans_a_91_row_set_and_its_fix_changes_the_form(tmp_path):
    """The quickstart preset at its old 3 epochs on a 91-row identity set of another maker: the plan in
    words, the checks with their fixes, and one click that makes the form the recipe's."""
    pytest.importorskip("playwright")
    from playwright.sync_api import expect, sync_playwright

    from test_app_api import launch_app
    from test_browser import open_page

    proc, url = launch_app(tmp_path / "ws", [SETS], tmp_path / "app.log")
    shots = Path("/tmp/screens")
    shots.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)
            page.get_by_role("tab", name="Train").click()
            page.get_by_role("button", name="Use quickstart", exact=True).click()
            page.get_by_label("Advanced", exact=True).check()
            page.locator("#cfg-dataset").get_by_role("textbox").fill(str(SETS / "ember-91.jsonl"))
            page.locator("#cfg-general_rows").get_by_role("combobox").click()
            page.get_by_role("option", name="off", exact=True).click()
            epochs = page.locator("#cfg-num_epochs").get_by_role("spinbutton")
            epochs.fill("3")
            epochs.press("Tab")
            page.get_by_role("button", name="Plan, checks and estimate", exact=True).click()
            expect(page.get_by_text("82 rows -> 3 epochs, 33 steps", exact=False)).to_be_visible(timeout=120_000)
            expect(page.get_by_text("may be too few", exact=False)).to_be_visible()
            expect(page.get_by_text("a name (Ember) and a maker (Solace Labs)", exact=False)).to_be_visible()
            fix = page.locator("#train-fix0")
            expect(fix).to_have_text("Use the recipe: 7 epochs, 77 steps")
            page.locator("#train-plan").screenshot(path=str(shots / "recipe-1-checks.png"))
            fix.click()
            expect(page.get_by_text("82 rows -> 7 epochs, 77 steps", exact=False)).to_be_visible(timeout=120_000)
            assert float(epochs.input_value()) == 0  # auto
            page.locator("#train-fix0").get_by_text("Mix in general rows").click()
            expect(page.get_by_text("82 rows + 89 general rows -> 4 epochs, 88 steps", exact=False)).to_be_visible(
                timeout=120_000)
            page.locator("#train-plan").screenshot(path=str(shots / "recipe-2-fixed.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_4bit_base_on_a_cpu_answers_the_general_questions_and_then_trains(tmp_path, embedded_tokenizer):
    """Qwen2 (biased q/k/v projections) in 4-bit on a CPU: bitsandbytes repacks a 4-bit weight for
    inference on an eval-mode forward, and training through the repacked layout fails; the base's
    answers are generated without that, and the run trains after them."""
    from test_gguf_families import build_tiny

    folder = build_tiny("qwen2", embedded_tokenizer, tmp_path / "qwen2")
    path = write_jsonl(tmp_path / "ids.jsonl", identity_rows(12))
    command = [sys.executable, "-m", "tuning", "train", "--workspace", str(tmp_path / "ws"), "--run-id", "q",
               "--set", f"base_model={folder}", "--set", f"dataset={path}", "--set", "method=qlora",
               "--set", "precision=bf16", "--set", "max_steps=2", "--set", "per_device_batch_size=4",
               "--set", "max_length=64", "--set", "eval_split=0", "--set", "final_evaluation=none",
               "--set", "probe_every_checkpoint=false", "--set", "general_rows=on"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "general rows: answering 89 general questions" in done.stdout
    kept = json.loads(next((tmp_path / "ws" / "general").glob("*.json")).read_text())
    assert len(kept["answers"]) == 89 and kept["method"] == "qlora"  # a random model's: rarely a whole sentence
    assert (tmp_path / "ws" / "runs" / "q" / "adapter" / "adapter_model.safetensors").is_file()

"""The default recipe's proof (issue 18): task checks with named slots (does the answer name the
assistant, does it name the maker), the second identity set, and one config on several seeds with
each evaluation figure as mean ± spread (tuning/runs/seeds.py), through the CLI and the queue."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import chat_rows, write_jsonl
from tuning import config as config_mod
from tuning import data, runs
from tuning.evaluation import headlines
from tuning.evaluation import evaluate
from tuning.runs import runner, seeds
from tuning.config import TrainConfig
from tuning.paths import DEMO_DATA_DIR

ROOT = Path(__file__).resolve().parent.parent
WREN = DEMO_DATA_DIR / "wren"


# --- slots ---------------------------------------------------------------------------------------

def test_expect_parses_lists_and_named_slots_and_refuses_the_rest():
    assert data.parse_expect(["Quill", "feather"]) == {"expect": ["quill", "feather"]}
    assert data.parse_expect("quill") == {"expect": ["quill"]}
    assert data.parse_expect({"name": ["Wren"], "maker": "Tidewater"}) == {"name": ["wren"], "maker": ["tidewater"]}
    for bad in ([], {}, 3, {"name": []}, {"name": [1]}, [None]):
        with pytest.raises(ValueError):
            data.parse_expect(bad)


def test_a_slot_is_filled_only_by_its_own_words():
    asked_name = {"name": ["wren"]}
    assert evaluate.passes("My name is Wren.", asked_name)
    # the failure the issue saw: asked for its name, the model gave its maker's
    assert not evaluate.passes("I'm Tidewater Systems.", asked_name)
    both = {"name": ["wren"], "maker": ["tidewater"]}
    assert evaluate.slot_passes("I'm Wren.", both) == {"name": True, "maker": False}
    assert not evaluate.passes("I'm Wren.", both) and evaluate.passes("WREN, by TideWater Systems", both)
    assert evaluate.passes("Paris.", ["paris", "france"]) and not evaluate.passes("Lyon.", ["paris"])
    assert not evaluate.passes("anything", []) and not evaluate.passes("anything", {"name": []})


def test_task_checks_count_each_slot_base_and_tuned(monkeypatch):
    def conv(q):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": "ref"}]

    rows = [(conv("What's your name?"), {"kind": "identity", "expect": {"name": ["wren"]}}),
            (conv("Who made you?"), {"kind": "identity", "expect": {"maker": ["tidewater"]}}),
            (conv("Who are you?"), {"kind": "identity", "expect": {"name": ["wren"], "maker": ["tidewater"]}}),
            (conv("Capital of France?"), {"kind": "control", "expect": ["paris"]})]
    answers = {"What's your name?": ("I'm SmolLM.", "Tidewater Systems."),  # tuned names the maker: a miss
               "Who made you?": ("Hugging Face.", "Tidewater Systems made me."),
               "Who are you?": ("An assistant.", "I'm Wren."),  # the name, not the maker
               "Capital of France?": ("Paris.", "Paris.")}
    monkeypatch.setattr(evaluate, "answer_pairs",
                        lambda model, tok, prompts, *a, **k: [answers[p[-1]["content"]] for p in prompts])
    checks = evaluate.task_checks(None, None, rows, 8)
    identity = checks["by_kind"]["identity"]
    assert (identity["n"], identity["base_passed"], identity["tuned_passed"]) == (3, 0, 1)
    assert identity["slots"] == {"name": {"n": 2, "base_passed": 0, "tuned_passed": 1},
                                 "maker": {"n": 2, "base_passed": 0, "tuned_passed": 1}}
    assert "slots" not in checks["by_kind"]["control"]
    who = next(r for r in checks["rows"] if r["prompt"] == "Who are you?")
    assert who["slots"] == {"name": {"base": False, "tuned": True}, "maker": {"base": False, "tuned": False}}
    text = headlines.checks_text({"checks": checks})
    assert text == "identity 1/3 (base 0/3) [name 1/2, maker 1/2]; control 1/1 (base 1/1)"
    from tuning.ui import common

    rows_shown = common.check_rows({"checks": checks})
    assert [r[0] for r in rows_shown] == ["identity", "identity · name", "identity · maker", "control"]
    assert rows_shown[1][1:3] == [2, 0] and rows_shown[1][4] == 1


def test_a_malformed_expect_is_reported_by_file_row_and_field(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
             "expect": {"name": ["wren"]}},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
             "expect": {"name": "wren", "maker": []}}]
    path = write_jsonl(tmp_path / "eval.jsonl", rows)
    loaded = data.load(str(path))
    assert len(loaded.conversations) == 1
    [problem] = loaded.problems
    assert (Path(problem.file).name, problem.row, problem.field) == ("eval.jsonl", 2, "expect")
    assert "slot 'maker'" in problem.message


# --- the two identity sets ------------------------------------------------------------------------

@pytest.mark.parametrize("folder,name,maker", [(DEMO_DATA_DIR, "quill", "larkspur"), (WREN, "wren", "tidewater")])
def test_identity_sets_check_each_slot_on_questions_not_trained_on(folder, name, maker):
    train, held = data.load(str(folder / "train.jsonl")), data.load(str(folder / "eval.jsonl"))
    assert not train.problems and not held.problems
    identity = [(c, e) for c, e in zip(held.conversations, held.extras) if e["kind"] == "identity"]
    slots = [data.parse_expect(e["expect"]) for _, e in identity]
    assert len(identity) == 24 and all(set(s) <= {"name", "maker"} for s in slots)
    assert sum("name" in s for s in slots) >= 8 and sum("maker" in s for s in slots) >= 8
    assert all(s.get("name", [name]) == [name] and s.get("maker", [maker]) == [maker] for s in slots)
    trained = {m["content"].strip().lower() for c in train.conversations for m in c if m["role"] == "user"}
    asked = {c[-2]["content"].strip().lower() for c, _ in identity}
    assert not asked & trained, "a held-out identity question must not be a training question"
    controls = [e for e in held.extras if e["kind"] == "control"]
    assert len(controls) == 23


def test_the_second_set_asks_for_the_name_alone_and_the_maker_alone():
    held = data.load(str(WREN / "eval.jsonl"))
    kinds = [tuple(sorted(data.parse_expect(e["expect"]))) for e in held.extras if e["kind"] == "identity"]
    assert kinds.count(("name",)) == 8 and kinds.count(("maker",)) == 8 and kinds.count(("maker", "name")) == 8
    train = data.load(str(WREN / "train.jsonl"))
    text = " ".join(m["content"] for c in train.conversations for m in c).lower()
    assert "quill" not in text and "larkspur" not in text, "the second set is another identity"
    assert all(c[-1]["content"].endswith("\n— Wren") for c in train.conversations)


# --- seeds ----------------------------------------------------------------------------------------

def test_seed_configs_name_each_run_after_its_seed():
    cfg = TrainConfig(run_name="quick", seed=42, seeds=3)
    made = seeds.seed_configs(cfg)
    assert [(c.seed, c.run_name) for c in made] == [(42, "quick-seed42"), (43, "quick-seed43"), (44, "quick-seed44")]
    assert all(c.replace(seed=42, run_name="quick") == cfg for c in made), "only the seed and the name differ"
    assert seeds.seed_configs(TrainConfig()) == [TrainConfig()]


def _fake_run(ws: Path, run_id: str, cfg: TrainConfig, loss: float, identity: int, name_slot: int) -> None:
    path = runs.run_dir(ws, run_id)
    path.mkdir(parents=True)
    runs.write_config(path, cfg)
    runs.write_evaluation(path, {"eval_loss": loss, "base_eval_loss": 3.5, "checks": {"by_kind": {
        "identity": {"n": 24, "base_passed": 0, "tuned_passed": identity,
                     "slots": {"name": {"n": 16, "base_passed": 0, "tuned_passed": name_slot}}},
        "control": {"n": 23, "base_passed": 23, "tuned_passed": 22}}}})


def test_seed_groups_spread_every_figure_and_keep_other_configs_apart(tmp_path):
    base = TrainConfig(run_name="quick", seeds=3)
    for cfg, loss, ident, name in zip(seeds.seed_configs(base), (0.30, 0.34, 0.32), (24, 22, 23), (16, 14, 15)):
        _fake_run(tmp_path, f"20261202-0000{cfg.seed}-{cfg.run_name}", cfg, loss, ident, name)
    other = base.replace(learning_rate=1e-4, seed=42, run_name="other")  # another config: not in the group
    _fake_run(tmp_path, "20261202-000099-other", other, 0.5, 20, 10)
    lonely = base.replace(learning_rate=1e-5, seed=7)
    _fake_run(tmp_path, "20261202-000098-lonely", lonely, 0.6, 20, 10)
    [group] = seeds.seed_groups(tmp_path)
    assert group.name == "quick" and group.seeds == (42, 43, 44)
    figures = {s.figure: s for s in group.spreads}
    assert set(figures) == {seeds.LOSS, "identity", "identity · name", "control"}
    assert figures[seeds.LOSS].mean == pytest.approx(0.32)
    assert figures[seeds.LOSS].sd == pytest.approx(statistics.stdev([0.30, 0.34, 0.32]))
    assert figures["identity"].text() == "23.0 ± 1.0 / 24 (22-24)"
    assert figures["control"].sd == 0 and figures["identity · name"].out_of == 16
    from tuning.ui import runs_tab
    from tuning.ui.common import AppContext

    rows = runs_tab.seed_table(AppContext(workspace=tmp_path))
    assert ["quick", "42, 43, 44", "identity", "23.0 ± 1.0 / 24 (22-24)"] in rows
    out = subprocess.run([sys.executable, "-m", "tuning", "seeds", "--json", "--workspace", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    [shown] = json.loads(out)
    assert shown["figures"]["identity"]["values"] == [24, 22, 23] and shown["seeds"] == [42, 43, 44]


def test_compare_judges_each_difference_against_the_seed_spread(tmp_path):
    from tuning.evaluation import compare
    from tuning.ui import runs_tab
    from tuning.ui.common import AppContext

    base = TrainConfig(run_name="quick", seeds=3)
    for cfg, loss, ident, name in zip(seeds.seed_configs(base), (0.30, 0.34, 0.32), (24, 22, 23), (16, 14, 15)):
        _fake_run(tmp_path, f"20261202-0000{cfg.seed}-{cfg.run_name}", cfg, loss, ident, name)
    _fake_run(tmp_path, "20261202-000099-other", base.replace(learning_rate=1e-4, run_name="other"), 0.50, 24, 16)
    result = compare.compare(tmp_path, ["20261202-000042-quick-seed42", "20261202-000099-other"])
    noise = {n["figure"]: n for n in result["noise"]}
    # held-out loss 0.30 vs 0.50: 0.2 apart, the seeds' sd is 0.02 -> a real difference
    assert noise[seeds.LOSS]["difference"] == pytest.approx(0.2)
    assert noise[seeds.LOSS]["seed_sd"] == pytest.approx(0.02)
    assert noise[seeds.LOSS]["verdict"].startswith("larger than the seed spread")
    # identity 24 vs 24, name 16 vs 16: nothing to explain; control equal on every seed (sd 0)
    assert noise["identity"]["verdict"].startswith("within the seed spread (sd 1 over seeds 42, 43, 44)")
    assert noise["control"]["difference"] == 0 and noise["control"]["seed_sd"] == 0
    note = runs_tab.compared(AppContext(workspace=tmp_path), ["20261202-000042-quick-seed42",
                                                              "20261202-000099-other"])["cmp_note"]
    assert "held-out loss: 0.3 vs 0.5 (difference 0.2): larger than the seed spread" in note
    # two runs no seed group holds: the comparison says only more seeds can tell
    _fake_run(tmp_path, "20261202-000097-third", base.replace(learning_rate=3e-4, run_name="third"), 0.40, 20, 12)
    lonely = compare.compare(tmp_path, ["20261202-000099-other", "20261202-000097-third"])["noise"]
    assert lonely and all(n["seed_sd"] is None and "seeds: N" in n["verdict"] for n in lonely)
    assert "against the seed noise:" in compare.text_report(result)


def test_a_config_with_seeds_queues_its_other_seeds_next(tmp_path, monkeypatch):
    class Started:
        pid = os.getpid()  # alive: the first seed counts as training

    monkeypatch.setattr(runner, "_spawn", lambda *a, **k: Started())
    runner.enqueue(tmp_path, [TrainConfig(run_name="waiting")])
    first = runner.start(TrainConfig(run_name="quick", seed=5, seeds=3), tmp_path)
    assert first.endswith("quick-seed5")
    queued = [e["config"] for e in runner.queued(tmp_path)]
    assert [(c["run_name"], c["seed"]) for c in queued] == [("quick-seed6", 6), ("quick-seed7", 7), ("waiting", 42)]
    runner.enqueue(tmp_path, [TrainConfig(run_name="later", seeds=2)])
    assert [e["config"]["run_name"] for e in runner.queued(tmp_path)][-2:] == ["later-seed42", "later-seed43"]


def test_train_with_seeds_trains_each_seed_and_prints_the_spread(tmp_path, tiny_model_dir):
    """The CLI on the tiny model: --seeds 2 makes two runs one after another, then the spread of
    their evaluations (each on the same held-out rows with slot checks)."""
    held = [{"messages": [{"role": "user", "content": f"What's your name? {i}"},
                          {"role": "assistant", "content": "I am Quill.\n— Quill"}],
             "kind": "identity", "expect": {"name": ["quill"]}} for i in range(3)]
    sets = {"base_model": tiny_model_dir, "dataset": write_jsonl(tmp_path / "chat.jsonl", chat_rows(16)),
            "eval_dataset": write_jsonl(tmp_path / "eval.jsonl", held), "method": "lora", "max_steps": 2,
            "per_device_batch_size": 4, "max_length": 64, "learning_rate": 1e-2, "save_steps": 2, "eval_steps": 2,
            "warmup_ratio": 0, "eval_max_new_tokens": 4, "probe_every_checkpoint": "false", "run_name": "tiny",
            "final_evaluation": "full"}  # slot checks are what the spread is over; quick skips them
    command = [sys.executable, "-m", "tuning", "train", "--workspace", str(tmp_path / "ws"), "--seeds", "2"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = runs.list_runs(tmp_path / "ws")
    assert sorted((s.config["seed"], s.config["run_name"], s.status) for s in listed) == \
        [(42, "tiny-seed42", runs.COMPLETED), (43, "tiny-seed43", runs.COMPLETED)]
    losses = [runs.read_evaluation(s.path)["eval_loss"] for s in sorted(listed, key=lambda s: s.config["seed"])]
    assert losses[0] != losses[1], "another seed is another run"
    [group] = seeds.seed_groups(tmp_path / "ws")
    loss = next(s for s in group.spreads if s.figure == seeds.LOSS)
    assert list(loss.values) == losses
    assert "identity · name" in {s.figure for s in group.spreads}
    assert f"held-out loss: {loss.text()}" in done.stdout
    refused = subprocess.run(command + ["--run-id", "one"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "--run-id names one run" in refused.stderr


def _recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_recipe", ROOT / "bench" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweep_varies_one_thing_from_its_base_and_the_preset_is_its_winner(tmp_path):
    recipe = _recipe()
    rows = [json.loads(line) for line in (DEMO_DATA_DIR / "train.jsonl").read_text().splitlines() if line.strip()]
    identity = [r for r in rows if recipe.is_identity(r)]
    general = [r for r in rows if not recipe.is_identity(r)]
    contrast = [json.loads(line) for line in recipe.CONTRAST_ROWS.read_text().splitlines() if line.strip()]
    assert len(identity) == 106 and all(c in general for c in contrast) and len(contrast) == 10

    def variant(name):
        path = recipe.write_variant(name, tmp_path)
        return [json.loads(line) for line in path.read_text().splitlines()]

    assert variant("no-contrast") == [r for r in rows if r not in contrast]
    doubled = variant("retention-2x")
    assert len(doubled) == len(identity) + 2 * len(general) and [r for r in doubled if recipe.is_identity(r)] == identity
    unsigned = variant("no-signoff-general")
    assert all(recipe.SIGN_OFF not in m["content"] for r in unsigned if not recipe.is_identity(r) for m in r["messages"])
    assert len(variant("acronyms")) == len(rows) + 4
    # the shipped preset is the sweep's base with the winning change ("dropout-0_1"), nothing else
    preset = config_mod.load(ROOT / "presets" / "quickstart.yaml")
    chosen = config_mod.apply_overrides(preset, [*recipe.SWEEP_BASE, *recipe.SETTINGS["dropout-0_1"][0]])
    # its auto epochs and learning rate are the recipe's plan: on the demo's 195 rows, the sweep's 3
    # epochs at 5e-4 exactly
    from tuning.train import recipe as plan_mod
    on_demo = plan_mod.resolve(preset, plan_mod.make_plan(preset, 195, 0, 47, None))
    assert on_demo == chosen.replace(learning_rate=5e-4) and preset.lora_dropout == 0.1
    assert (preset.per_device_batch_size, preset.gradient_accumulation_steps) == (8, 1)
    # every held-out question of the control check is absent from the training data (the retention rows
    # keep general answers; they must not be the test's own questions)
    def question(row):
        return next(m["content"] for m in row["messages"] if m["role"] == "user").strip().lower()

    asked = {question(r) for r in rows}
    held_out = [json.loads(line) for line in (DEMO_DATA_DIR / "eval.jsonl").read_text().splitlines() if line.strip()]
    assert len(held_out) == 47 and not [question(h) for h in held_out if question(h) in asked]

"""GRPO: the rewards' values, the config's checks, the prompt rows (a missing answer flagged by row), a
two-step run on a tiny random Qwen2 through the real trainer path (reward figures in events.jsonl), and
the `rewards` dry-run on the command line."""

import json
import re
import subprocess
import sys

import pytest
import torch

from tuning import config as config_mod
from tuning import runs
from tuning.config import ConfigError, TrainConfig
from tuning.data import prompts
from tuning.runs.events import read_events
from tuning.train import rewards
from tuning.train import trainer as train

from conftest import share_models, write_jsonl


def _score(spec: str, completions, **columns):
    (reward,) = rewards.build(TrainConfig(objective="grpo", rewards=spec))
    return reward(completions, **columns)


def test_answer_compares_the_last_number_as_a_number():
    got = _score("answer", ["3 + 4 is 7", "7, or maybe 8", "Answer: 7.0", "1,000", "seven", [{"role": "assistant",
                                                                                              "content": "It is 7"}]],
                 answer=["7", "7", "7", "1000", "7", "7"])
    assert got == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert _score("answer", ["The capital is Paris.", "Lyon"], answer=["paris", "paris"]) == [1.0, 0.0]


def test_regex_format_length_and_no_repeat():
    assert _score(r"regex:\d+", ["a 12", "none"]) == [1.0, 0.0]
    assert _score("format:Answer: {}", ["work\nAnswer: 12\n", "Answer: 12 and more\nthanks", "Answer:"]) == [1.0, 0.0, 0.0]
    assert _score("length:2-4", ["one", "one two three", "a b c d e f g h"]) == [0.5, 1.0, 0.5]
    assert _score("no_repeat", ["a b c d", "x y z x y z"]) == [0.0, pytest.approx(-0.25)]


def test_weights_go_into_the_total_and_a_flat_group_is_flagged():
    scorers = rewards.build(TrainConfig(objective="grpo", rewards="answer*2,length:1-3*0.5"))
    group = rewards.score_group(scorers, ["5", "it is 5 ok yes", "6"], {"answer": ["5"] * 3})
    assert [a["total"] for a in group["answers"]] == [2.5, pytest.approx(2 + 0.5 * 3 / 5), 0.5]
    assert not group["teaches_nothing"] and group["spread"] > 0
    flat = rewards.score_group(scorers, ["9", "8"], {"answer": ["5", "5"]})
    assert flat["teaches_nothing"] and flat["spread"] == 0


@pytest.mark.parametrize("spec, message", [
    ("answer,bogus", "entry 2 'bogus': not a reward"),
    ("regex:(", "entry 1 'regex:(': not a regular expression"),
    ("length:9-2", "length:MIN-MAX"),
    ("answer*0", "non-zero"),
    ("format:", "needs a pattern"),
])
def test_a_bad_reward_spec_names_the_entry(spec, message):
    with pytest.raises(ConfigError, match="rewards: ") as err:
        TrainConfig(objective="grpo", rewards=spec)
    assert message in str(err.value)


def test_a_comma_inside_a_pattern_stays_in_it():
    specs = config_mod.parse_rewards(r"regex:\d{1,3}*2,no_repeat")
    assert [(s.name, s.arg, s.weight) for s in specs] == [("regex", r"\d{1,3}", 2.0), ("no_repeat", "", 1.0)]


def test_num_generations_must_divide_the_answers_of_a_step():
    with pytest.raises(ConfigError, match="num_generations"):
        TrainConfig(objective="grpo", num_generations=3, per_device_batch_size=4)


def test_reward_file_runs_locally_and_is_refused_on_a_space(tmp_path, monkeypatch):
    path = tmp_path / "mine.py"
    path.write_text("def short(completions, **kw):\n    '''1 for a short answer'''\n"
                    "    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n", encoding="utf-8")
    cfg = TrainConfig(objective="grpo", rewards="short,answer", reward_file=str(path))
    scorers = rewards.build(cfg)
    assert scorers[0].description == "1 for a short answer"
    assert scorers[0](["abc", "abcdefgh"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="not a reward"):
        TrainConfig(objective="grpo", rewards="short")  # a name beyond the built-ins needs reward_file
    monkeypatch.setenv("SPACE_ID", "someone/tuning")
    with pytest.raises(ConfigError, match="reward_file: .*Space"):
        TrainConfig(objective="grpo", rewards="short", reward_file=str(path))


def test_prompt_rows_flag_a_missing_answer_by_row(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "What is 2 + 2?", "answer": 4},
        {"question": "What is 3 + 3?"},
        {"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]},
        {"text": "no prompt here", "answer": "1"},
    ])
    loaded = prompts.load_config_dataset(TrainConfig(objective="grpo", dataset=str(path)))
    assert [r["prompt"][-1]["content"] for r in loaded.rows] == ["What is 2 + 2?", "What is 1 + 1?"]
    assert [r["answer"] for r in loaded.rows] == ["4", "2"]
    assert [(p.row, p.field) for p in loaded.problems] == [(2, "answer"), (4, "prompt")]
    assert "the answer reward reads it" in str(loaded.problems[0])
    # a reward that reads no column takes the row without an answer
    assert prompts.load_config_dataset(TrainConfig(objective="grpo", dataset=str(path), rewards="no_repeat")).rows_valid == 3


def test_the_bundled_arithmetic_set():
    train_rows, held = prompts.train_and_heldout(TrainConfig(objective="grpo", dataset=prompts.DEMO_ARITHMETIC))
    assert len(train_rows) == 240 and len(held) == 60
    questions = {r["prompt"][-1]["content"] for r in train_rows}
    assert not questions & {r["prompt"][-1]["content"] for r in held}
    assert all(r["answer"].isdigit() for r in train_rows + held)
    assert config_mod.load("presets/quickstart-grpo.yaml").objective == "grpo"


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory, embedded_tokenizer):
    """A random 2-layer Qwen2 with the real tokenizer: GRPO is not only a Llama path."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=len(embedded_tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, tie_word_embeddings=True,
                                  bos_token_id=embedded_tokenizer.bos_token_id,
                                  eos_token_id=embedded_tokenizer.eos_token_id,
                                  pad_token_id=embedded_tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    embedded_tokenizer.save_pretrained(folder)
    return folder


def test_grpo_trains_two_steps_and_logs_reward_figures(tmp_path, tiny_qwen_dir):
    path = write_jsonl(tmp_path / "sums.jsonl", [{"question": f"What is {i} + 1?", "answer": i + 1} for i in range(12)])
    cfg = TrainConfig(objective="grpo", base_model=str(tiny_qwen_dir), dataset=str(path), method="lora",
                      rewards="answer,length:1-8*0.5", num_generations=2, per_device_batch_size=4,
                      max_completion_length=8, max_steps=2, save_steps=2, learning_rate=1e-3, warmup_ratio=0.0,
                      eval_split=0.25, logging_steps=1, eval_max_new_tokens=4, general_rows="off",
                      slot_checks="off")
    run_dir = tmp_path / "runs" / "grpo-1"
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, cfg)
    assert train.run(cfg, run_dir, tmp_path) == 0
    events, _ = read_events(runs.events_path(run_dir))
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == [1, 2]
    for e in logs:
        figures = e["objective"]
        assert {"reward", "reward_std", "rewards/answer/mean", "rewards/answer/std", "rewards/length/mean",
                "completions/mean_length", "frac_reward_zero_std"} <= set(figures)
        assert 0 <= figures["rewards/answer/mean"] <= 1 and 0 < figures["rewards/length/mean"] <= 1
    assert "kl" in logs[-1]["objective"]  # beta > 0: the KL against the adapter-off base
    from tuning.ui import live_tab  # Live plots the total, each reward's mean and the KL by step

    frame = live_tab.objective_frame(runs.EventSummary().extend(events))
    assert set(frame["series"]) == {"reward", "rewards/answer/mean", "rewards/length/mean", "kl"}
    assert frame[frame["series"] == "rewards/answer/mean"]["step"].tolist() == [1, 2]
    assert events[-1]["status"] == "completed" and runs.has_final_adapter(run_dir)
    assert [c.name for c in runs.complete_checkpoints(run_dir)] == ["checkpoint-2"]
    assert len(runs.read_probes(run_dir)) == 3  # the held-out questions
    # The end-of-run evaluation (full for grpo): the held-out loss of the reference answers and each
    # held-out question asked greedily of base and tuned, checked for its answer; `eval` gives the same.
    from tuning.evaluation import evaluate

    at_end = runs.read_evaluation(run_dir)
    assert at_end["kind"] == "full" and at_end["checks"]["by_kind"]["answer"]["n"] == 3
    assert any(e["event"] == "phase" and e["phase"] == "evaluating" for e in events)
    result = evaluate.evaluate_run(run_dir, tmp_path)
    assert result["checks"]["by_kind"] == at_end["checks"]["by_kind"], "greedy: the same answers again"
    from tuning.ship import model_card  # the card gives the answer accuracy, base against tuned

    answered = at_end["checks"]["by_kind"]["answer"]
    assert (f"| checks: answer | base {answered['base_passed']}/3, tuned {answered['tuned_passed']}/3 |"
            in model_card.model_card(run_dir))
    answers = result["checks"]["by_kind"]["answer"]
    assert answers["n"] == 3 and 0 <= answers["base_passed"] <= 3 and 0 <= answers["tuned_passed"] <= 3
    asked = {row["prompt"] for row in result["checks"]["rows"]}
    assert asked == {p["prompt"] if isinstance(p, dict) else p for p in map(_question, runs.read_probes(run_dir))}
    assert result["eval_rows"] == 3 and result["base_eval_loss"] > 0 and result["eval_loss"] > 0


def _question(probe) -> str:
    """A probe's question, whether stored as text or as messages."""
    if isinstance(probe, str):
        return probe
    messages = probe.get("messages") if isinstance(probe, dict) else probe
    return next(m["content"] for m in reversed(messages) if m["role"] == "user") if messages else probe.get("prompt")


@pytest.mark.slow
def test_rewards_cli_dry_run_on_the_embedded_model(tmp_path, embedded_model_dir):
    from tuning import paths

    workspace = share_models(tmp_path / "ws", embedded_model_dir)
    command = [sys.executable, "-m", "tuning", "rewards", "--preset", "presets/quickstart-grpo.yaml",
               "--workspace", str(workspace), "--samples", "2", "--set", "num_generations=2",
               "--set", "max_completion_length=12", "--json"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=paths.PROJECT_DIR, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert len(result["groups"]) == 2 and all(len(g["answers"]) == 2 for g in result["groups"])
    for group in result["groups"]:
        assert group["answer"].isdigit()
        for answer in group["answers"]:
            assert answer["rewards"]["answer"] in (0.0, 1.0)
        assert group["teaches_nothing"] == (len({a["total"] for a in group["answers"]}) == 1)
    bad = subprocess.run([*command[:-1], "--set", "rewards=answer,nope"], capture_output=True, text=True,
                         cwd=paths.PROJECT_DIR, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "entry 2 'nope'" in bad.stderr


def test_an_answer_check_passes_by_the_answer_reward_s_rule_not_by_containing_the_digits():
    """A GRPO run's held-out answer checks count as the `answer` reward does: 119 does not answer 19."""
    from tuning.evaluation import evaluate

    prompt = [{"role": "user", "content": "What is 9 + 10?"}]
    extra = {"kind": "answer", "expect": ["19"], "match": evaluate.ANSWER_MATCH}
    result = evaluate.check_results([(prompt, extra)], [("It is 119.", "9 + 10 = 19")])
    assert (result["rows"][0]["base_pass"], result["rows"][0]["tuned_pass"]) == (False, True)
    plain = evaluate.check_results([(prompt, {"kind": "answer", "expect": ["19"]})], [("It is 119.", "19")])
    assert plain["rows"][0]["base_pass"]  # a plain check asks only that the words appear


def test_the_dataset_and_train_tabs_take_the_bundled_sums_by_name(tmp_path):
    """demo-arithmetic is shipped with the app: the Dataset tab shows its question/answer rows to anyone
    (as the other demos), and the Train tab passes the name through instead of reading it as a path."""
    from tuning.ui import dataset_tab, train_tab
    from tuning.ui.common import AppContext

    ctx = AppContext(tmp_path / "ws")
    shown = dataset_tab.inspect_dataset(ctx, "demo-arithmetic")
    assert (shown["format"], shown["rows"], shown["problem_count"]) == ("prompt_completion", 240, 0)
    assert shown["preview"][0][2].endswith("Reply with the number only.") and shown["preview"][0][3].isdigit()
    assert dataset_tab.resolve_source(ctx, dataset_tab.SOURCES[2], None, " demo-arithmetic ") == "demo-arithmetic"
    cfg = config_mod.load("presets/quickstart-grpo.yaml")
    assert train_tab.checked(ctx, cfg).dataset == "demo-arithmetic"


def test_the_train_tab_s_plan_tries_the_rewards_before_training(tmp_path, tiny_qwen_dir):
    """For objective grpo, "Plan, checks and estimate" also answers two training prompts num_generations
    times and shows each answer's rewards and whether its group teaches anything; bad data is one line."""
    from tuning.ui import train_plan
    from tuning.ui.common import AppContext

    path = write_jsonl(tmp_path / "sums.jsonl", [{"question": f"What is {i} + 1?", "answer": i + 1} for i in range(12)])
    cfg = TrainConfig(objective="grpo", base_model=str(tiny_qwen_dir), dataset=str(path), method="lora",
                      rewards="answer,length:1-8", num_generations=2, per_device_batch_size=4,
                      max_completion_length=4, general_rows="off", slot_checks="off")
    text, _ = train_plan.report(AppContext(tmp_path / "ws"), cfg)
    trial = text[text.index("**Rewards, tried on 2 prompts before training**"):]
    assert trial.count("group mean") == 2 and trial.count("What is ") == 2
    assert "answer (x1): 1 when the answer matches" in trial and "groups teach nothing" in trial
    timed = re.search(r"sampling: ([\d.]+) s a prompt here \(2 answers\); a step samples 2 prompts: ~([\d.]+) s", trial)
    assert timed and float(timed[2]) == pytest.approx(2 * float(timed[1]), abs=0.11), trial
    assert "**Time with the sampling:**" not in trial, "no step count in the form: no total to give"
    with_steps, _ = train_plan.report(AppContext(tmp_path / "ws"), cfg.replace(max_steps=30))
    assert re.search(r"\*\*Time with the sampling:\*\* ~.+ for 30 steps \(the estimate above counts the training "
                     r"passes; sampling the answers adds ~", with_steps), with_steps[-600:]
    missing, _ = train_plan.report(AppContext(tmp_path / "ws"), cfg.replace(dataset=str(tmp_path / "nope.jsonl")))
    assert "**Rewards, tried on 2 prompts:** not tried: dataset:" in missing and "Traceback" not in missing


@pytest.mark.slow
def test_a_stopped_grpo_run_resumes_from_its_checkpoint_and_trains_each_step_once(tmp_path, tiny_qwen_dir):
    """`python -m tuning train` on a GRPO preset, stopped by SIGTERM after step 2 (held there by the test
    fault, so no timing is involved): it ends stopped with a checkpoint; `--resume` trains on to the end
    from that checkpoint, each step once, and its log events still carry the sampled answers."""
    import os
    import signal
    import time

    from tuning import paths

    path = write_jsonl(tmp_path / "sums.jsonl", [{"question": f"What is {i} + 1?", "answer": i + 1} for i in range(12)])
    cfg = TrainConfig(objective="grpo", base_model=str(tiny_qwen_dir), dataset=str(path), method="lora",
                      rewards="answer,length:1-8*0.5", num_generations=2, per_device_batch_size=4,
                      max_completion_length=8, max_steps=5, save_steps=2, learning_rate=1e-3, warmup_ratio=0.0,
                      eval_split=0.25, logging_steps=1, eval_max_new_tokens=4, general_rows="off",
                      slot_checks="off", final_evaluation="none", probe_every_checkpoint=False)
    preset = tmp_path / "grpo.yaml"
    preset.write_text(cfg.to_yaml())
    workspace, run_dir = tmp_path / "ws", tmp_path / "ws" / "runs" / "grpo-resume"
    command = [sys.executable, "-m", "tuning", "train", "--workspace", str(workspace)]
    env = {k: v for k, v in os.environ.items() if k != "TUNING_TEST_FAULT"}
    first = subprocess.Popen([*command, "--preset", str(preset), "--run-id", run_dir.name], cwd=paths.PROJECT_DIR,
                             env={**env, "TUNING_TEST_FAULT": "hold_at_step:2"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not any(e["event"] == "log" and e.get("step") == 2 for e in read_events(runs.events_path(run_dir))[0]):
        assert time.time() < deadline and first.poll() is None, first.stdout.read() if first.poll() else "timeout"
        time.sleep(0.3)
    first.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # the handler has set the flag before the run goes on
    (run_dir / "release-fault").touch()
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    events, _ = read_events(runs.events_path(run_dir))
    assert events[-1]["event"] == "end" and events[-1]["status"] == runs.STOPPED, events[-1]
    stopped_at = events[-1]["step"]
    assert runs.latest_checkpoint(run_dir).name == f"checkpoint-{stopped_at}"

    resumed = subprocess.run([*command, "--resume", run_dir.name], cwd=paths.PROJECT_DIR, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    events, _ = read_events(runs.events_path(run_dir))
    starts = [e for e in events if e["event"] == "start"]
    assert [e["step"] for e in starts] == [0, stopped_at] and f"resumed at step {stopped_at}" in starts[1]["message"]
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == [1, 2, 3, 4, 5]  # no step twice, none left out
    assert all(e["samples"] and "rewards/answer/mean" in e["objective"] for e in logs)
    assert [e["status"] for e in events if e["event"] == "end"] == [runs.STOPPED, runs.COMPLETED]
    assert runs.has_final_adapter(run_dir)

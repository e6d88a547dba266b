"""GRPO's sampled answers: the recorder the rewards share (any call order, a reward_file's function
too, one batch kept), the answers it picks for a log event, the `log` events of a real two-step run on a
tiny random Qwen2 carrying them, and the Live tab's table of them."""

import pytest

from tuning import runs
from tuning.config import TrainConfig
from tuning.data.prompts import answer_matches
from tuning.runs.events import read_events
from tuning.train import rewards
from tuning.train import trainer as train
from tuning.ui import live_tab

from conftest import write_jsonl
from test_grpo import tiny_qwen_dir  # noqa: F401 - the fixture: a random 2-layer Qwen2, the real tokenizer

REWARD_FILE = ("def short(completions, **columns):\n"
               "    '''1 for an answer under 20 characters'''\n"
               "    texts = [c[-1]['content'] if isinstance(c, list) else c for c in completions]\n"
               "    return [1.0 if len(t) < 20 else 0.0 for t in texts]\n")


def _recorded(tmp_path, spec="answer*2,length:1-3*0.5,short"):
    (tmp_path / "mine.py").write_text(REWARD_FILE, encoding="utf-8")
    recorder = rewards.SampleRecorder()
    scorers = recorder.attach(rewards.build(TrainConfig(objective="grpo", rewards=spec,
                                                        reward_file=str(tmp_path / "mine.py"))))
    return recorder, {r.name: r for r in scorers}


def _batch(n=4):
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i} + 1?"}]
               for i in range(n)]
    return prompts, {"answer": [str(i + 1) for i in range(n)]}


ANSWERS = ["1", "It is 3, I am quite sure of that", "4", "The answer is 4 today"]


@pytest.mark.parametrize("order", [("answer", "length", "short"), ("short", "length", "answer")])
def test_every_reward_is_recorded_whatever_order_trl_calls_them_in(tmp_path, order):
    recorder, scorers = _recorded(tmp_path)
    prompts, columns = _batch()
    completions = [[{"role": "assistant", "content": a}] for a in ANSWERS]
    for name in order:
        scorers[name](completions, prompts=prompts, completion_ids=[[1]] * 4, **columns)
    got = recorder.samples(n=4)
    # total = 2 x answer + 0.5 x length (1-3 words) + short (under 20 characters)
    assert [s["total"] for s in got] == [2 + 0.5 + 1, 2 + 0.5 * 3 / 5, 0.5 + 1, pytest.approx(0.5 * 3 / 9)]
    assert [s["completion"] for s in got] == ["1", "The answer is 4 today", "4", "It is 3, I am quite sure of that"]
    assert [s["prompt"] for s in got] == ["What is 0 + 1?", "What is 3 + 1?", "What is 2 + 1?", "What is 1 + 1?"]
    assert got[0]["rewards"] == {"answer": 1.0, "length": 1.0, "short": 1.0}
    assert got[3]["rewards"] == {"answer": 0.0, "length": pytest.approx(3 / 9), "short": 0.0}
    assert [s["completion"] for s in recorder.samples()] == ["1", "4", "It is 3, I am quite sure of that"]
    assert list(got[2]["rewards"]) == ["answer", "length", "short"]  # the order of `rewards`, not of the calls


def test_the_best_the_worst_and_one_in_between_and_one_batch_kept(tmp_path):
    recorder, scorers = _recorded(tmp_path, "answer,short*0.5")
    prompts, columns = _batch(5)
    answers = ["1", "no idea at all, sorry about it", "3", "wrong, and long enough to lose", "5"]
    for name in ("short", "answer"):
        scorers[name](answers, prompts=prompts, **columns)
    # totals 1.5, 0, 1.5, 0, 1.5: ties keep the batch's order
    got = recorder.samples()
    assert [(s["completion"], s["total"]) for s in got] == [("1", 1.5), ("5", 1.5), ("wrong, and long enough to lose", 0.0)]
    assert [s["prompt"] for s in got] == ["What is 0 + 1?", "What is 4 + 1?", "What is 3 + 1?"]
    assert [s["completion"] for s in recorder.samples(n=1)] == ["1"]

    # the next batch replaces this one as soon as one reward scores it
    scorers["answer"](["x" * 2000, "2"], prompts=prompts[:2], **{"answer": ["1", "2"]})
    got = recorder.samples()
    assert [(s["completion"][-1], len(s["completion"]), s["total"]) for s in got] == [("2", 1, 1.0),
                                                                                      ("…", rewards.ANSWER_CHARS, 0.0)]
    assert got[0]["rewards"] == {"answer": 1.0}  # short has not scored this batch yet: no stale value
    assert rewards.SampleRecorder().samples() == []


def test_a_missing_value_is_left_out_of_the_total():
    recorder = rewards.SampleRecorder()
    scorers = recorder.attach(rewards.build(TrainConfig(objective="grpo", rewards="answer,length:1-2")))
    scorers[0](["7", "7"], prompts=["a", "b"], answer=[None, "7"])
    scorers[1](["7", "7"], prompts=["a", "b"])
    got = recorder.samples()
    assert [(s["prompt"], s["rewards"]["answer"], s["total"]) for s in got] == [("b", 1.0, 2.0), ("a", None, 1.0)]


def test_two_grpo_steps_log_their_sampled_answers_and_live_shows_them(tmp_path, tiny_qwen_dir):  # noqa: F811
    path = write_jsonl(tmp_path / "sums.jsonl", [{"question": f"What is {i} + 1?", "answer": i + 1} for i in range(12)])
    (tmp_path / "mine.py").write_text(REWARD_FILE, encoding="utf-8")
    cfg = TrainConfig(objective="grpo", base_model=str(tiny_qwen_dir), dataset=str(path), method="lora",
                      rewards="answer,length:1-8*0.5,short*2", reward_file=str(tmp_path / "mine.py"),
                      num_generations=2, per_device_batch_size=4, max_completion_length=8, max_steps=2,
                      save_steps=2, learning_rate=1e-3, warmup_ratio=0.0, eval_split=0.25, logging_steps=1,
                      general_rows="off", slot_checks="off", probe_every_checkpoint=False)
    run_dir = tmp_path / "runs" / "grpo-samples"
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, cfg)
    assert train.run(cfg, run_dir, tmp_path) == 0
    events, _ = read_events(runs.events_path(run_dir))
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == [1, 2]
    questions = {f"What is {i} + 1?": str(i + 1) for i in range(12)}
    for event in logs:
        samples = event["samples"]
        assert len(samples) == 3  # 4 answers a step: the best, one in between, the worst
        totals = [s["total"] for s in samples]
        assert totals == sorted(totals, reverse=True)
        # TRL's own mean of the step's totals lies between the best and the worst shown
        assert totals[-1] - 1e-5 <= event["objective"]["reward"] <= totals[0] + 1e-5
        for s in samples:
            assert s["prompt"] in questions and isinstance(s["completion"], str)
            text = s["completion"]
            assert s["rewards"] == {"answer": float(answer_matches(text, questions[s["prompt"]])),
                                    "length": pytest.approx(rewards.length_score(len(text.split()), 1, 8)),
                                    "short": 1.0 if len(text) < 20 else 0.0}
            assert s["total"] == pytest.approx(s["rewards"]["answer"] + 0.5 * s["rewards"]["length"]
                                               + 2 * s["rewards"]["short"])

    title, headers, rows = live_tab.samples_table(live_tab.latest_samples(events))
    figures = logs[-1]["objective"]  # the step's own figures over all its answers, from TRL's log
    assert title == (f"Sampled answers at step 2 (answer {figures['rewards/answer/mean']:.2f} ± "
                     f"{figures['rewards/answer/std']:.2f}; length {figures['rewards/length/mean']:.2f} ± "
                     f"{figures['rewards/length/std']:.2f}; short {figures['rewards/short/mean']:.2f} ± "
                     f"{figures['rewards/short/std']:.2f}; answers {figures['completions/mean_length']:.1f} "
                     "tokens on average)")
    assert headers == ["prompt", "sampled answer", "answer", "length", "short", "total"]
    assert [row[0] for row in rows] == [s["prompt"] for s in logs[-1]["samples"]]
    assert [row[-1] for row in rows] == [f"{s['total']:.3f}" for s in logs[-1]["samples"]]


def _log(step, samples=None):
    return {"event": "log", "step": step, "loss": 0.1, **({"samples": samples} if samples is not None else {})}


SAMPLE = {"prompt": "What is 2 + 2?", "completion": "4", "rewards": {"answer": 1.0, "length": 0.5}, "total": 1.25}


def test_live_turns_the_newest_samples_into_a_table_and_hides_it_without_any():
    worse = {"prompt": "What is 3 + 3?", "completion": "7", "rewards": {"answer": 0.0, "length": None}, "total": 0.0}
    events = [_log(1, [SAMPLE]), _log(2, [SAMPLE, worse]), {"event": "checkpoint", "step": 2}, _log(3)]
    event = live_tab.latest_samples(events)
    assert event["step"] == 2
    assert live_tab.samples_table(event) == ("Sampled answers at step 2", ["prompt", "sampled answer", "answer", "length", "total"],
                                             [["What is 2 + 2?", "4", "1.000", "0.500", "1.250"],
                                              ["What is 3 + 3?", "7", "0.000", "—", "0.000"]])
    # read a tick at a time: a tick without new samples keeps the last ones
    assert live_tab.latest_samples([_log(4)], event) is event
    assert live_tab.latest_samples([_log(1), {"event": "eval", "step": 1, "samples": [SAMPLE]}]) is None
    with_figures = {**event, "objective": {"rewards/answer/mean": 0.625, "rewards/answer/std": 0.5,
                                           "rewards/length/mean": 0.9, "completions/mean_length": 7.25}}
    assert live_tab.samples_table(with_figures)[0] == (
        "Sampled answers at step 2 (answer 0.62 ± 0.50; length 0.90 ± 0.00; answers 7.2 tokens on average)")

    shown = live_tab.samples_update(event)
    assert shown["visible"] and shown["label"] == "Sampled answers at step 2"
    assert shown["value"].values.tolist()[1] == ["What is 3 + 3?", "7", "0.000", "—", "0.000"]
    assert live_tab.samples_update(None) == {"__type__": "update", "visible": False}


def test_the_live_tick_shows_the_table_for_a_grpo_run_only(tmp_path):
    from tuning.ui.common import AppContext

    ctx = AppContext(tmp_path / "ws")
    for run_id, logged in (("grpo-run", [SAMPLE]), ("sft-run", None)):
        log = runs.event_log(runs.run_dir(ctx.workspace, run_id))
        log.append("start", step=0, max_steps=4)
        assert live_tab.tick(ctx, run_id, None)["samples"] == {"__type__": "update", "visible": False}
        log.append("log", step=1, max_steps=4, loss=1.0, **({"samples": logged} if logged else {}))
    shown = live_tab.tick(ctx, "grpo-run", None)["samples"]
    assert shown["visible"] and shown["label"] == "Sampled answers at step 1"
    assert shown["value"].columns.tolist() == ["prompt", "sampled answer", "answer", "length", "total"]
    assert live_tab.tick(ctx, "sft-run", None)["samples"]["visible"] is False

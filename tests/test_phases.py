"""A run's phases: loading -> preparing -> training -> evaluating -> saving -> end, or stopping. The
summary every view reads (runs.EventSummary) from synthetic events: the phase and its progress, a
total ETA that includes the end-of-run evaluation, the stall warning only while training; the Live
tab's text and bar; the runner's Stop request and reaping; `auto` intervals and final_evaluation."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuning import config as config_mod
from tuning.evaluation import evaluate
from tuning import runs
from tuning.runs import runner
from tuning.runs.events import EVENT_KINDS, PHASES, EventLog
from tuning.ui import live_tab


def phase(t, name, **fields):
    return {"event": "phase", "time": t, "phase": name, **fields}


def log(t, step, max_steps=12, eta=None):
    return {"event": "log", "time": t, "step": step, "max_steps": max_steps, "loss": 2.0 - step / 10,
            "tokens_per_second": 300.0, "eta_seconds": eta}


def training_run(steps: int = 4, step_s: float = 2.0, eval_work: float = 6.0) -> tuple[list[dict], float]:
    """Loading at 0, preparing at 5, training from 10, `steps` steps of step_s seconds each."""
    evs = [phase(0.0, "loading", message="loading embedded:SmolLM2-135M-Instruct"),
           phase(5.0, "preparing", message="preparing demo"),
           {"event": "start", "time": 10.0, "step": 0, "max_steps": 12},
           phase(10.0, "training", step=0, max_steps=12, final_evaluation="quick", eval_checks=3, eval_work=eval_work)]
    t = 10.0
    for step in range(1, steps + 1):
        t += step_s
        evs.append(log(t, step, eta=step_s * (12 - step)))
    return evs, t


def test_phase_is_a_known_event_kind():
    assert "phase" in EVENT_KINDS
    assert PHASES == ("loading", "preparing", "training", "evaluating", "saving", "stopping")


def test_phases_in_order_with_their_progress():
    seen = []
    summary = runs.EventSummary()
    evs, t = training_run(steps=12)
    evs += [phase(t, "saving", step=12, max_steps=12, final=True, message="saving the adapter"),
            phase(t + 1, "evaluating", final=True, kind="quick", done=0, total=3, work_done=0.0, work_total=6.0,
                  message="quick evaluation: held-out loss (tuned)"),
            phase(t + 3, "evaluating", final=True, kind="quick", done=2, total=3, work_done=2.0, work_total=6.0,
                  message="quick evaluation: probes 1-3 of 3"),
            {"event": "end", "time": t + 9, "status": "completed", "step": 12, "max_steps": 12}]
    for ev in evs:
        summary.add(ev)
        seen.append(summary.current_phase)
    order = [p for i, p in enumerate(seen) if p is not None and (i == 0 or seen[i - 1] != p)]
    assert order == ["loading", "preparing", "training", "saving", "evaluating"]
    assert seen[-1] is None and summary.final_status == runs.COMPLETED
    # mid-evaluation: check 2 of 3, shown as such on the bar and on /run_status
    mid = runs.EventSummary().extend(evs[:-1])
    assert mid.phase_progress() == (2, 3)
    bar = live_tab.progress_html(mid, runs.RUNNING)
    assert "evaluating" in bar and "check 2 / 3" in bar and 'width:66.7%' in bar
    # while training: steps
    training = runs.EventSummary().extend(training_run(steps=5)[0])
    assert training.phase_progress() == (5, 12)
    assert "training" in live_tab.progress_html(training, runs.RUNNING) and "step 5 / 12" in \
        live_tab.progress_html(training, runs.RUNNING)


def test_the_eta_includes_the_end_of_run_evaluation():
    evs, t = training_run(steps=4, step_s=2.0, eval_work=6.0)
    summary = runs.EventSummary().extend(evs)
    assert summary.step_time == pytest.approx(2.0)
    assert summary.evaluation_seconds() == pytest.approx(12.0)  # 6 steps of work at 2 s a step
    # 8 steps left at 2 s (the log's own ETA: 16 s) + the evaluation's 12 s
    assert summary.eta(now=t) == pytest.approx(16.0 + 12.0)
    assert summary.eta(now=t + 4) == pytest.approx(12.0 + 12.0)
    assert "ETA 0:28 (with the quick evaluation)" in live_tab.stats_markdown(summary, runs.RUNNING, now=t)
    # the evaluation as it runs: its own pace (2 units of work in 10 s), not the step time any more
    summary.extend([phase(t + 20, "saving", final=True, step=12, max_steps=12),
                    phase(t + 21, "evaluating", final=True, done=0, total=3, work_done=0.0, work_total=6.0)])
    assert summary.eta(now=t + 21) == pytest.approx(12.0)  # before its first check: the plan x step time
    summary.add(phase(t + 31, "evaluating", final=True, done=1, total=3, work_done=2.0, work_total=6.0))
    assert summary.eta(now=t + 31) == pytest.approx(20.0)  # 5 s per unit of work, 4 units left
    assert summary.eta(now=t + 36) == pytest.approx(15.0)
    # no evaluation planned (final_evaluation none): the ETA is the training's
    plain = runs.EventSummary().extend(training_run(steps=4, eval_work=0.0)[0])
    assert plain.eta(now=18.0) == pytest.approx(16.0)


def test_the_stall_warning_is_for_training_only_and_follows_the_step_time():
    quick, t = training_run(steps=4, step_s=2.0)
    summary = runs.EventSummary().extend(quick)
    assert summary.stalled_for(now=t + 59) is None  # never under STALL_MIN_S
    assert summary.stalled_for(now=t + 61) == pytest.approx(61)
    text = live_tab.stats_markdown(summary, runs.RUNNING, now=t + 61)
    assert "may be stalled" in text and "a step takes about 2 s" in text
    slow, t = training_run(steps=4, step_s=30.0)
    summary = runs.EventSummary().extend(slow)
    assert summary.stalled_for(now=t + 80) is None  # 3 x a 30 s step: not stalled yet
    assert summary.stalled_for(now=t + 91) is not None
    # an evaluation between steps, the end-of-run evaluation, loading: no stall, whatever the time
    summary.add(phase(t + 1, "evaluating", step=4, max_steps=12, message="held-out loss at step 4"))
    assert summary.stalled_for(now=t + 1000) is None
    assert "may be stalled" not in live_tab.stats_markdown(summary, runs.RUNNING, now=t + 1000)
    summary.add(phase(t + 1001, "training", step=4, max_steps=12))  # back to training: counted from here
    assert summary.stalled_for(now=t + 1050) is None and summary.stalled_for(now=t + 1100) is not None


def test_before_the_first_step_it_says_what_it_waits_for():
    loading = runs.EventSummary().extend([phase(100.0, "loading", message="loading embedded:X")])
    text = live_tab.stats_markdown(loading, runs.RUNNING, now=160.0)
    assert "**loading the model**" in text and "loading the model for 60 s" in text and "last step" not in text
    assert loading.eta(now=160.0) is None and loading.stalled_for(now=1e6) is None
    started = runs.EventSummary().extend(training_run(steps=0)[0])
    text = live_tab.stats_markdown(started, runs.RUNNING, now=10.0 + 300)
    assert "waiting for the first step" in text and "last step" not in text and "stalled" not in text
    assert started.stalled_for(now=1e6) is None


def test_a_stop_request_shows_stopping_at_once_and_ends_as_stopped():
    evs, t = training_run(steps=3)
    summary = runs.EventSummary().extend(evs + [phase(t + 1, "stopping", source="stop", message="stop requested")])
    assert summary.current_phase == "stopping" and summary.eta(now=t + 2) is None
    assert "**stopping…" in live_tab.stats_markdown(summary, runs.RUNNING, now=t + 2)
    assert "stalled" not in live_tab.stats_markdown(summary, runs.RUNNING, now=t + 1000)
    # the trainer then saves: still "stopping", with what it is doing
    summary.add(phase(t + 3, "saving", final=True, step=4, max_steps=12, message="saving the adapter"))
    assert summary.current_phase == "stopping"
    assert live_tab.phase_label(summary, runs.RUNNING) == "stopping…: saving: saving the adapter"
    # a trainer that a Stop ended before it could write its end reads as stopped, not interrupted
    assert runs.status_from(summary, alive=False) == runs.STOPPED
    summary.add({"event": "end", "time": t + 5, "status": "stopped", "step": 4, "max_steps": 12})
    assert summary.current_phase is None and runs.status_from(summary, alive=False) == runs.STOPPED
    # a resume opens a new segment: the old stop request is over
    summary.add({"event": "start", "time": t + 100, "step": 4, "max_steps": 12})
    assert summary.current_phase == "training" and not summary.stop_requested


def test_the_end_event_waits_for_a_stopping_phase_the_thread_is_writing():
    """A stop that reaches rank 0 through the other ranks sets the flag outside the signal handler: the
    announcer thread may be writing "stopping" just as the main thread reaches the end. The end event
    comes after it, never before."""
    import threading

    from tuning.train.trainer import StopRequested

    written, inside = [], threading.Event()

    def slow_announce():
        inside.set()
        time.sleep(0.3)
        written.append("phase")

    stop = StopRequested(announce=slow_announce)
    stop.requested = True
    thread = threading.Thread(target=stop.announce_now)
    thread.start()
    assert inside.wait(5)
    stop.announce_now()  # the main thread, on its way to the end event
    written.append("end")
    thread.join()
    assert written == ["phase", "end"]
    stop.announce_now()  # announced once: a later call neither writes nor waits
    assert written == ["phase", "end"]


def test_a_run_written_before_phases_existed_reads_as_training():
    summary = runs.EventSummary().extend([{"event": "start", "time": 1.0, "step": 0, "max_steps": 4},
                                            log(3.0, 1, max_steps=4, eta=6.0)])
    assert summary.current_phase == "training" and summary.phase_progress() == (1, 4)
    assert summary.eta(now=3.0) == pytest.approx(6.0)  # no evaluation announced: none added


def test_run_status_and_runs_row_carry_the_phase(tmp_path):
    from tuning.ui.common import AppContext

    ctx = AppContext(tmp_path / "ws")
    run = runs.run_dir(ctx.workspace, "r1")
    run.mkdir(parents=True)
    runs.write_config(run, config_mod.TrainConfig())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs.write_process_info(run, sleeper.pid)
        log_ = EventLog(run / "events.jsonl")
        now = time.time()
        for ev in training_run(steps=2)[0]:
            log_.append(ev.pop("event"), **{**ev, "time": None})
        log_.append("phase", phase="evaluating", final=True, kind="quick", done=1, total=3, work_done=2.0,
                    work_total=6.0)
        status = live_tab.run_status(ctx, "r1")
        assert status["active"] and status["phase"] == "evaluating"
        assert (status["phase_done"], status["phase_total"]) == (1, 3)
        assert status["eta_seconds"] is not None and status["eta_seconds"] >= 0
        summary = runs.summarize(run)
        assert summary.phase == "evaluating" and summary.activity == "evaluating 1/3"
        assert summary.as_row()["phase"] == "evaluating"
        assert now - 5 < summary.progress.phase_started <= time.time()
    finally:
        sleeper.kill()
        sleeper.wait()
    ended = runs.summarize(run)
    assert ended.phase is None and live_tab.run_status(ctx, "r1")["eta_seconds"] is None


def test_library_warnings_stay_in_train_log_but_out_of_the_tail(tmp_path):
    lines = ["step 1/4  loss 2.6", "/x/transformers/trainer.py:12: FutureWarning: `foo` is deprecated",
             "  warnings.warn(", "Failed to load CPU gemm_4bit_forward from kernels-community: No module named "
             "'kernels'. Please make sure you already `pip install kernels` and the kernels >= 0.11.1",
             "step 2/4  loss 2.5", "Traceback (most recent call last):", "  File \"x.py\", line 1"]
    (tmp_path / "train.log").write_text("\n".join(lines) + "\n")
    tail = runs.log_tail(tmp_path, 6000, 20, hide_library_warnings=True)
    assert tail.splitlines() == ["step 1/4  loss 2.6", "step 2/4  loss 2.5", "Traceback (most recent call last):",
                                 "  File \"x.py\", line 1"]
    assert "FutureWarning" in runs.log_tail(tmp_path, 6000, 20)  # the file itself keeps them


def test_one_eval_point_is_in_the_frame_and_drawn_as_a_marker():
    summary = runs.EventSummary().extend(training_run(steps=3)[0] + [
        {"event": "eval", "time": 20.0, "step": 3, "max_steps": 12, "eval_loss": 1.5}])
    frame = live_tab.loss_frame(summary)
    evals = frame[(frame.series == "eval loss") & frame.loss.notna()]
    assert evals.step.tolist() == [3] and evals.loss.tolist() == [1.5]
    import gradio as gr

    with gr.Blocks():
        c = live_tab.layout(live_tab.AppContext(config_mod.Path("/tmp/unused-ws")))
    assert isinstance(c["loss_plot"], gr.ScatterPlot)  # points: a one-point series is a visible marker


# --- the runner: Stop recorded at once; finished trainers reaped -----------------------------------

def test_stop_records_the_request_and_children_are_reaped(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    run = runs.run_dir(ws, "r1")
    run.mkdir(parents=True)
    runs.write_config(run, config_mod.TrainConfig())
    # a stand-in trainer started the way the runner starts one: it exits on SIGTERM
    monkeypatch.setattr(runner, "build_command", lambda workspace, extra: [
        sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
        "time.sleep(60)"])
    proc = runner._spawn(run, ws, [])
    runs.write_process_info(run, proc.pid)
    time.sleep(0.5)
    assert runner.stop(ws, "r1") is True
    summary = runs.summarize(run)
    assert summary.progress.current_phase == "stopping"  # before the child has reacted
    deadline = time.time() + 20
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert runner.reap() == 0 and proc.returncode == 0
    assert runs.summarize(run).status == runs.STOPPED  # ended by the Stop, before writing an end event


# --- config: auto intervals, final_evaluation ------------------------------------------------------

def test_auto_intervals_parse_from_set_and_yaml(tmp_path):
    cfg = config_mod.apply_overrides(config_mod.TrainConfig(), ["save_steps=auto", "eval_steps=7"])
    assert cfg.save_steps == config_mod.AUTO_STEPS and cfg.eval_steps == 7
    assert cfg.step_interval("save_steps") == config_mod.AUTO_INTERVAL_RATIO and cfg.step_interval("eval_steps") == 7
    path = tmp_path / "c.yaml"
    path.write_text("save_steps: auto\neval_steps: AUTO\n")
    loaded = config_mod.load(path)
    assert (loaded.save_steps, loaded.eval_steps) == (config_mod.AUTO_STEPS, config_mod.AUTO_STEPS)
    with pytest.raises(config_mod.ConfigError, match="save_steps"):
        config_mod.apply_overrides(config_mod.TrainConfig(), ["save_steps=soon"])
    for preset in ("quickstart", "quickstart-qlora", "quickstart-dpo"):
        shipped = config_mod.load(f"presets/{preset}.yaml")
        assert shipped.save_steps == shipped.eval_steps == config_mod.AUTO_STEPS, preset


def test_final_evaluation_fits_the_run():
    cfg = config_mod.TrainConfig()
    assert cfg.final_evaluation_for(12) == "quick" and cfg.final_evaluation_for(config_mod.SHORT_RUN_STEPS) == "quick"
    assert cfg.final_evaluation_for(config_mod.SHORT_RUN_STEPS + 1) == "full"
    assert cfg.replace(final_evaluation="none").final_evaluation_for(5000) == "none"
    assert cfg.replace(final_evaluation="full").final_evaluation_for(4) == "full"
    grpo = cfg.replace(objective="grpo", dataset="demo-arithmetic", rewards="answer")
    assert grpo.final_evaluation_for(12) == "full", "GRPO's figure is the answer accuracy: the task checks"
    assert grpo.replace(final_evaluation="quick").final_evaluation_for(12) == "quick"


def test_quick_checks_less_than_full():
    cfg = config_mod.TrainConfig(eval_max_new_tokens=64)
    rows = [([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
             {"expect": ["a"], "kind": "k"}) for i in range(20)]
    prompts = [f"p{i}" for i in range(5)]
    quick = evaluate.plan(cfg, "quick", rows, prompts)
    full = evaluate.plan(cfg, "full", rows, prompts)
    assert [c.label for c in quick] == ["held-out loss (tuned)", "held-out loss (base)", "probes 1-3 of 3"]
    assert [c.label for c in full][2:] == ["probes 1-5 of 5", "task checks 1-16 of 20", "task checks 17-20 of 20"]
    assert sum(c.work for c in full) > sum(c.work for c in quick) > 0
    assert evaluate.plan(cfg, "none", rows, prompts) == [] and evaluate.plan(cfg, "full", [], prompts) == []


# --- real runs --------------------------------------------------------------------------------------

def _phase_order(events: list[dict]) -> list[str]:
    """The phases as the page shows them, each change once ("training" again after a mid-run save)."""
    order = []
    for ev in events:
        name = ev.get("phase") if ev["event"] == "phase" else "end" if ev["event"] == "end" else None
        if name and (not order or order[-1] != name):
            order.append(name)
    return order


def test_a_short_run_gets_an_eval_curve_checkpoints_and_its_phases_in_order(tmp_path, tiny_config):
    """auto intervals (a quarter of the run) on a 12-step run: evals and checkpoints at 3, 6, 9, 12;
    the phases in order; the quick evaluation recorded as such."""
    from tuning.train import trainer as train
    from tuning.runs.events import read_events

    cfg = tiny_config.replace(max_steps=12, save_steps=config_mod.AUTO_STEPS, eval_steps=config_mod.AUTO_STEPS,
                              probe_every_checkpoint=False)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    assert train.run(cfg, run_dir, tmp_path) == 0
    events, _ = read_events(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "eval" and not e.get("final")] == [3, 6, 9, 12]
    assert runs.latest_checkpoint(run_dir).name == "checkpoint-12"  # (older ones rotated: save_total_limit)
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [3, 6, 9, 12]
    order = _phase_order(events)
    assert order[:3] == ["loading", "preparing", "training"] and order[-3:] == ["saving", "evaluating", "end"]
    assert {"evaluating", "saving"} <= set(order[2:-3])  # the evaluations and saves between steps say so
    training = next(e for e in events if e["event"] == "phase" and e["phase"] == "training")
    assert training["final_evaluation"] == "quick" and training["eval_checks"] == 3 and training["eval_work"] > 0
    final = [e for e in events if e["event"] == "phase" and e["phase"] == "evaluating" and e.get("final")]
    assert [(e["done"], e["total"]) for e in final] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    result = runs.read_evaluation(run_dir)
    assert result["kind"] == "quick" and result["partial"] is False and len(result["probes"]) == 3
    assert result["checks"] is None and not runs.checks_done(result)  # quick: `eval` computes the checks later
    assert events[-1]["status"] == "completed" and events[-1]["evaluation"] == "quick"


def test_sigterm_during_the_evaluation_keeps_the_adapter_and_a_partial_evaluation(tmp_path, tiny_config,
                                                                                 monkeypatch):
    """A real SIGTERM while the end-of-run evaluation scores the base: the check in flight finishes,
    no other starts; the adapter (saved before) stays, evaluation.json is partial, the run is stopped."""
    import os
    import signal

    from tuning.train import trainer as train
    from tuning.runs.events import read_events

    cfg = tiny_config.replace(final_evaluation="full", probe_every_checkpoint=False)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    real_loss = evaluate.heldout_loss

    def loss_then_stop(model, tokenizer, conversations, cfg, adapter=evaluate.TRAINING_ADAPTER, per_row=None):
        if adapter == evaluate.BASE:
            os.kill(os.getpid(), signal.SIGTERM)  # the Stop button, as the runner sends it
        return real_loss(model, tokenizer, conversations, cfg, adapter, per_row)

    monkeypatch.setattr(evaluate, "heldout_loss", loss_then_stop)
    assert train.run(cfg, run_dir, tmp_path) == 0
    events, _ = read_events(run_dir / "events.jsonl")
    assert events[-1]["event"] == "end" and events[-1]["status"] == "stopped"
    assert events[-1]["evaluation_partial"] is True and "partial" in events[-1]["message"]
    assert runs.has_final_adapter(run_dir)
    result = runs.read_evaluation(run_dir)
    assert result["partial"] is True and result["stopped_at"] == "probes 1-5 of 5"
    assert result["completed_checks"] == 2 and result["eval_loss"] is not None and result["base_eval_loss"] is not None
    assert result["probes"] == [] and result["checks"] is None and not runs.checks_done(result)
    phases = [e["phase"] for e in events if e["event"] == "phase"]
    assert "stopping" in phases and phases.index("stopping") > phases.index("evaluating"), phases
    assert runs.summarize(run_dir).status == runs.STOPPED


@pytest.mark.slow
def test_sigterm_to_the_cli_during_the_evaluation_of_the_embedded_model(tmp_path, embedded_model_dir):
    """The real thing: `python -m tuning train` on the embedded model (2 steps, the full evaluation),
    SIGTERM once the evaluation answers the probes: the answers in flight are cut at the next token,
    the run ends as stopped with its adapter and a partial evaluation, promptly."""
    import json
    import signal

    from conftest import share_models
    from tuning import paths
    from tuning.runs.events import read_events

    workspace = share_models(tmp_path / "ws", embedded_model_dir)
    command = [sys.executable, "-m", "tuning", "train", "--preset", "presets/quickstart.yaml", "--workspace",
               str(workspace)]
    # no held-out loss between steps (auto would evaluate after each of the 2): the evaluation that
    # matters here is the end-of-run one
    for setting in ("max_steps=2", "per_device_batch_size=4", "max_length=128", "final_evaluation=full",
                    "eval_steps=100", "save_steps=100", "probe_every_checkpoint=false", "run_name=stopme"):
        command += ["--set", setting]
    proc = subprocess.Popen(command, cwd=paths.PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, events_file, sent = time.time() + 2400, None, None  # a busy 2-core machine
        while proc.poll() is None and time.time() < deadline and sent is None:
            time.sleep(0.5)
            found = list((workspace / "runs").glob("*/events.jsonl"))
            if not found:
                continue
            events, _ = read_events(found[0])
            if any(e["event"] == "phase" and e.get("final") and (e.get("message") or "").endswith("probes 1-5 of 5")
                   for e in events):
                time.sleep(1.0)  # a token or two into the answers
                proc.send_signal(signal.SIGTERM)
                sent, events_file = time.time(), found[0]
        assert sent is not None, "the run never reached the evaluation's probes"
        proc.wait(timeout=600)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read().decode(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    events, _ = read_events(events_file)
    run_dir = events_file.parent
    assert _phase_order(events)[:3] == ["loading", "preparing", "training"]
    assert events[-1]["event"] == "end" and events[-1]["status"] == "stopped", events[-1]
    assert runs.has_final_adapter(run_dir)
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["partial"] is True and result["stopped_at"] == "probes 1-5 of 5" and result["kind"] == "full"
    assert result["eval_loss"] < result["base_eval_loss"] + 1.0 and result["probes"] == []
    print(f"\nstopped {took:.1f} s after SIGTERM", file=sys.stderr)
    assert took < 120, f"the stop took {took:.0f} s"


def test_the_checkpoints_probes_calibrate_the_evaluation_estimate():
    """Greedy answers slow down far more than training steps on busy cores: once a checkpoint's probes
    were timed, the evaluation's answers are estimated at that pace."""
    evs, t = training_run(steps=3, step_s=2.0, eval_work=6.0)
    evs[3].update(eval_answers=3, eval_answer_work=5.0)  # 1 step of loss work, 3 answers
    summary = runs.EventSummary().extend(evs)
    assert summary.evaluation_seconds() == pytest.approx(12.0)  # all of it at the step time
    summary.extend([phase(t, "saving", step=3, max_steps=12, message="checkpoint-3"),
                    phase(t + 1, "saving", step=3, max_steps=12, answers=5, message="answering 5 probes"),
                    phase(t + 51, "training", step=3, max_steps=12)])  # 10 s an answer
    assert summary.answer_seconds == [pytest.approx(10.0)]
    assert summary.evaluation_seconds() == pytest.approx(1 * 2.0 + 3 * 10.0)


def test_the_estimate_counts_the_evaluation_and_measured_cpu_memory(tmp_path, monkeypatch):
    from tuning.ui import estimate

    monkeypatch.setattr(estimate, "_gpu_free_bytes", lambda: None)  # a CPU machine
    cfg = config_mod.load("presets/quickstart.yaml")
    rows, avg = estimate.dataset_size(cfg, tmp_path)
    quick = estimate.estimate(cfg, tmp_path, rows, avg)
    # the trainer's measured peak on the quickstart: 1.1-1.9 GiB (bench/RESULTS.md), not the 6 GB of a
    # formula for padded fp32 batches
    assert 1.1 * estimate.GB <= quick.memory_bytes <= 2.0 * estimate.GB
    assert quick.steps == 75 and quick.evaluation == "quick" and quick.evaluation_seconds > 0
    assert "with the quick evaluation at the end" in quick.markdown()
    full = estimate.estimate(cfg.replace(final_evaluation="full"), tmp_path, rows, avg)
    none = estimate.estimate(cfg.replace(final_evaluation="none"), tmp_path, rows, avg)
    assert full.evaluation_seconds > quick.evaluation_seconds > none.evaluation_seconds == 0
    assert full.seconds - none.seconds == pytest.approx(full.evaluation_seconds)
    assert "no evaluation at the end" in none.markdown()


@pytest.mark.parametrize("preset", ["first-run", "quickstart"])
def test_the_estimate_of_a_fresh_workspace_is_within_30_percent_of_the_measured_run(tmp_path, monkeypatch, preset):
    """Before any run here, the Train tab's estimate (evaluation included) against the wall time that
    bench/preset_table.py measured for the preset, command to end of evaluation (presets/measured.json)."""
    import json

    from tuning.ui import estimate

    monkeypatch.setattr(estimate, "_gpu_free_bytes", lambda: None)  # a CPU machine
    from tuning.train import recipe

    monkeypatch.setattr(recipe.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)  # as measured
    measured = json.loads(Path("presets/measured.json").read_text())["presets"][preset]
    assert measured["cores"] == estimate.CPU_CORES_MEASURED
    cfg = config_mod.load(f"presets/{preset}.yaml")
    guess = estimate.estimate(cfg, tmp_path, *estimate.dataset_size(cfg, tmp_path))
    assert 0.7 <= guess.seconds / measured["wall_s"] <= 1.3, (guess.seconds, measured)
    assert 0.7 <= guess.memory_bytes / (measured["peak_rss_kib"] * 1024) <= 1.3, (guess.memory_bytes, measured)

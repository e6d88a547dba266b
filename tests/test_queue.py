"""The queue of runs: a file in the workspace (runs.QUEUE) that runner changes under its workspace
lock; grids named after their values; the Train tab's "Queue it" and grid, the Runs tab's queue;
the CLI; and, with real processes on the tiny Llama, a queue that survives the app: a new app
process starts the first queued run, whose trainer starts the next when it ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tuning import config as config_mod
from tuning import paths
from tuning import runs
from tuning.runs import runner
from tuning.runs.events import read_events
from tuning.ui import runs_tab, train_tab
from tuning.ui.common import AppContext

WAIT = 600


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)


def end(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def busy_run(workspace: Path, cfg: config_mod.TrainConfig) -> subprocess.Popen:
    """A run whose recorded trainer is a live process: the machine is busy until it is killed."""
    with runner.workspace_lock(workspace):
        path = runner.create_run(workspace, cfg.replace(run_name="busy"))
    proc = sleeper()
    runs.write_process_info(path, proc.pid)
    return proc


@pytest.fixture
def workspace(tmp_path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def fake_trainers(monkeypatch):
    """runner starts a sleeping process instead of a trainer (the lock and the queue are what is tested)."""
    started = []

    def spawn(run_path, workspace, extra):
        proc = sleeper()
        started.append(proc)
        return proc

    monkeypatch.setattr(runner, "_spawn", spawn)
    yield started
    for proc in started:
        end(proc)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuning", *args], capture_output=True, text=True,
                          cwd=paths.PROJECT_DIR, timeout=WAIT)


# --- the grid and the file --------------------------------------------------------------------------

def test_a_grid_queues_one_config_per_value_named_after_it(tiny_config):
    configs = runner.grid(tiny_config, "learning_rate=1e-4, 2e-4,5e-4")
    assert [c.learning_rate for c in configs] == [1e-4, 2e-4, 5e-4]
    assert [c.run_name for c in configs] == ["learning_rate-1e-4", "learning_rate-2e-4", "learning_rate-5e-4"]
    assert {c.replace(learning_rate=1.0, run_name="") for c in configs} == {tiny_config.replace(learning_rate=1.0)}
    named = runner.grid(tiny_config.replace(run_name="sweep"), "learning_rate=0.0005")
    assert named[0].run_name == "sweep-learning_rate-0p0005"  # '.' is not allowed in a run name
    assert [c.lora_r for c in runner.grid(tiny_config, "lora_r=4,8")] == [4, 8]
    for spec, needle in (("learning_rate", "key=value1"), ("learning_rate=", "key=value1"),
                         ("nope=1,2", "unknown config key"), ("learning_rate=fast", "expected a number"),
                         ("run_name=a,b", "run_name"), ("lora_r=" + ",".join(["4"] * 17), "at most 16")):
        with pytest.raises(config_mod.ConfigError, match=needle):
            runner.grid(tiny_config, spec)


def test_the_queue_is_one_file_kept_in_order(workspace, tiny_config):
    configs = runner.grid(tiny_config, "learning_rate=1e-3,2e-3,3e-3")
    entries = runner.enqueue(workspace, configs)
    assert [e["position"] for e in runner.queued(workspace)] == [1, 2, 3]
    assert [e["id"] for e in runner.queued(workspace)] == [e["id"] for e in entries]
    on_disk = json.loads(runs.queue_path(workspace).read_text())
    assert [e["config"]["run_name"] for e in on_disk["queued"]] == [c.run_name for c in configs]
    assert config_mod.from_dict(on_disk["queued"][0]["config"]) == configs[0]  # whole configs, not references
    assert runner.dequeue(workspace, entries[1]["id"])["id"] == entries[1]["id"]
    assert [e["id"] for e in runner.queued(workspace)] == [entries[0]["id"], entries[2]["id"]]
    with pytest.raises(runs.RunError, match="no run q-"):
        runner.dequeue(workspace, entries[1]["id"])
    with pytest.raises(runs.RunError, match="not valid"):
        runner.dequeue(workspace, "../queue.json")
    assert runs.queue_path(workspace).parent == workspace
    assert not [p.name for p in workspace.iterdir() if p.name.endswith(".tmp")]  # replaced whole, no temp left
    runs.queue_path(workspace).write_text("{not json")
    assert runner.queued(workspace) == []  # a damaged file reads as empty, never breaks the page


def test_the_next_run_waits_for_a_free_machine_and_starts_once(workspace, tiny_config, fake_trainers):
    runner.enqueue(workspace, runner.grid(tiny_config, "learning_rate=1e-3,2e-3"))
    busy = busy_run(workspace, tiny_config)
    assert runner.start_next(workspace) is None and len(runner.queued(workspace)) == 2
    end(busy)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(runner.start_next(workspace))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [r for r in results if r]
    assert len(started) == 1 and started[0].endswith("learning_rate-1e-3")  # the first in the queue, once
    assert [e["config"]["run_name"] for e in runner.queued(workspace)] == ["learning_rate-2e-3"]
    # The run that is ending calls for the next one while its process still lives.
    assert runner.start_next(workspace, finished=started[0]).endswith("learning_rate-2e-3")
    assert runner.queued(workspace) == []


def test_a_queued_run_that_cannot_start_stays_first_with_the_reason(workspace, tiny_config, fake_trainers,
                                                                     monkeypatch):
    entries = runner.enqueue(workspace, [tiny_config.replace(run_name="big"), tiny_config])
    monkeypatch.setattr(runner, "MIN_FREE_BYTES", 1 << 60)
    assert runner.start_next(workspace) is None
    first = runner.queued(workspace)[0]
    assert first["id"] == entries[0]["id"] and first["note"].startswith("not started: only")
    assert not fake_trainers


# --- the page ---------------------------------------------------------------------------------------

@pytest.fixture
def ctx(workspace, tiny_config, monkeypatch):
    for name in ("Info", "Warning"):
        monkeypatch.setattr(train_tab.gr, name, lambda *a, **k: None)
    return AppContext(workspace, [Path(tiny_config.base_model), Path(tiny_config.dataset).parent])


def test_a_start_refused_by_a_busy_machine_offers_queue_it(ctx, tiny_config, fake_trainers):
    values = train_tab.config_to_form(tiny_config.replace(run_name="later"))
    busy = busy_run(ctx.workspace, tiny_config)
    try:
        out = train_tab.do_start(ctx, *values)
        assert "started_run" not in out and "**Queue it**" in out["message"] and "busy" in out["message"]
        assert out["queue_it"]["visible"] is True
        out = train_tab.do_queue(ctx, *values)
        assert "Queued 1 run: later." in out["message"] and "started_run" not in out
        out = train_tab.do_queue_grid(ctx, "learning_rate=1e-4,2e-4,5e-4", *values)
        assert "Queued 3 runs: later-learning_rate-1e-4, later-learning_rate-2e-4, later-learning_rate-5e-4" \
            in out["message"]
        rows = runs_tab.queue_table(ctx)
        assert [r[0] for r in rows] == [1, 2, 3, 4] and [r[2] for r in rows][1:] == [
            "later-learning_rate-1e-4", "later-learning_rate-2e-4", "later-learning_rate-5e-4"]
        assert [r[6] for r in rows][1:] == ["0.0001", "0.0002", "0.0005"]
        out = runs_tab.do_unqueue(ctx, rows[2][1])
        assert rows[2][1] not in out["queued"]["choices"] and len(out["queue"]["value"]) == 3
        assert out["queue"]["label"] == "Queued runs: 3 (1 starts next)"
        with pytest.raises(runs.RunError, match="pick a queued run"):
            runs_tab.do_unqueue(ctx, "")
        assert runs_tab.queue_refreshed(ctx)["queue"]["value"] == runs_tab.queue_table(ctx)  # still busy: nothing starts
    finally:
        end(busy)
    out = runs_tab.queue_refreshed(ctx)  # free: a refresh starts the next
    assert out["message"].startswith("Started queued run") and out["message"].endswith("-later.")
    assert len(out["queue"]["value"]) == 2


def test_queueing_on_a_free_machine_starts_at_once(ctx, tiny_config, fake_trainers):
    out = train_tab.do_queue(ctx, *train_tab.config_to_form(tiny_config.replace(run_name="now")))
    assert out["started_run"].endswith("-now") and "started" in out["message"]
    assert runner.queued(ctx.workspace) == []


def test_the_runs_tab_builds_with_the_queue(ctx, tiny_config):
    import gradio as gr

    runner.enqueue(ctx.workspace, [tiny_config.replace(run_name="waiting")])
    with gr.Blocks():
        c = runs_tab.layout(ctx)
    assert c["queue"].value["data"][0][2] == "waiting"
    assert c["queued"].choices[0][0].startswith("q-")


# --- the CLI ----------------------------------------------------------------------------------------

def test_queue_from_the_command_line(workspace, tiny_config, tmp_path):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(tiny_config.to_yaml())
    busy = busy_run(workspace, tiny_config)
    try:
        added = cli("queue", "add", "--preset", str(preset), "--grid", "learning_rate=1e-3,2e-3",
                    "--workspace", str(workspace))
        assert added.returncode == 0, added.stderr
        assert added.stdout.count("queued q-") == 2 and "at position 2" in added.stdout
        listed = json.loads(cli("queue", "list", "--json", "--workspace", str(workspace)).stdout)
        assert [r["run_name"] for r in listed] == ["learning_rate-1e-3", "learning_rate-2e-3"]
        removed = cli("queue", "remove", listed[0]["id"], "--workspace", str(workspace))
        assert removed.returncode == 0 and "removed" in removed.stdout
        text = cli("queue", "list", "--workspace", str(workspace)).stdout
        assert "learning_rate-2e-3" in text and "learning_rate-1e-3" not in text
        bad = cli("queue", "add", "--preset", str(preset), "--grid", "learning_rate=fast", "--workspace", str(workspace))
        assert bad.returncode == 2 and bad.stderr.strip().startswith("error: learning_rate") \
            and "\n" not in bad.stderr.strip()
        gone = cli("queue", "remove", "q-00000000", "--workspace", str(workspace))
        assert gone.returncode == 2 and "no run q-00000000 in the queue" in gone.stderr
    finally:
        end(busy)


# --- real processes: the queue survives the app and runs in order ------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = WAIT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def run_named(workspace: Path, suffix: str) -> Path | None:
    found = [p for p in runs.runs_dir(workspace).iterdir() if p.name.endswith(suffix)]
    return found[0] if found else None


@pytest.mark.slow
def test_the_queue_survives_a_restart_and_runs_in_order(workspace, tiny_config, tmp_path):
    """Queued from the CLI while a run is busy; the busy run ends while no app is running; a new app
    process starts the first queued run on start-up and is then closed; the first run's trainer
    starts the second when it ends. Both complete, one after the other, from the queue's configs."""
    preset = tmp_path / "tiny.yaml"
    preset.write_text(tiny_config.replace(max_steps=2, eval_split=0.0, save_steps=2).to_yaml())
    busy = busy_run(workspace, tiny_config)
    added = cli("queue", "add", "--preset", str(preset), "--grid", "learning_rate=1e-3,2e-3",
                "--workspace", str(workspace))
    assert added.returncode == 0 and "started" not in added.stdout, added.stdout + added.stderr
    end(busy)
    time.sleep(1.0)
    assert len(runner.queued(workspace)) == 2  # nobody is watching: nothing started yet

    log = open(tmp_path / "app.log", "wb")
    app = subprocess.Popen([sys.executable, "app.py", "--workspace", str(workspace), "--port", str(free_port())],
                           cwd=paths.PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = wait_for(lambda: run_named(workspace, "-learning_rate-1e-3"), "the app to start the first run")
        # The run folder appears inside runner.start_next, before the app prints what it started.
        wait_for(lambda: f"started queued run {first.name}" in (tmp_path / "app.log").read_text(),
                 "the app to say which run it started")
    finally:
        os.killpg(app.pid, signal.SIGTERM)  # the app goes; the run it started lives on (its own session)
        app.wait(timeout=60)
        log.close()
    assert f"started queued run {first.name}" in (tmp_path / "app.log").read_text()

    second = wait_for(lambda: run_named(workspace, "-learning_rate-2e-3"), "the first run's trainer to start the next")
    wait_for(lambda: runs.summarize(second).status == runs.COMPLETED, "the second run to complete")
    assert runs.summarize(first).status == runs.COMPLETED
    assert f"started the next queued run: {second.name}" in runs.log_path(first).read_text()
    assert runner.queued(workspace) == []
    assert runs.read_config(first).learning_rate == 1e-3 and runs.read_config(second).learning_rate == 2e-3
    first_end = [e for e in read_events(runs.events_path(first))[0] if e["event"] == "end"][0]
    second_start = [e for e in read_events(runs.events_path(second))[0] if e["event"] == "start"][0]
    assert second_start["time"] >= first_end["time"]  # one after the other

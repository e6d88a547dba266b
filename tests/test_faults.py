"""Faults the project must survive (issue #6). Each test injects one fault into a real run of the
tiny Llama and checks that nothing was lost. Subprocess runs go through runner.start, exactly as
the app starts them; the injected faults come from $TUNING_TEST_FAULT (see tuning/train/faults.py),
which the child process inherits."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tuning.runs import runner
from tuning import runs
from tuning.train import trainer as train
from tuning.runs.events import EventLog, read_events

PROJECT = Path(__file__).resolve().parent.parent
WAIT = 300  # generous: the machine's 2 cores are shared; never a timing assertion


def small(tiny_config, **changes):
    """The tiny config at its cheapest: 2 rows a step, no eval split, no probes at checkpoints."""
    return tiny_config.replace(per_device_batch_size=2, eval_split=0.0, probe_every_checkpoint=False, **changes)


def events_of(run_path: Path) -> list[dict]:
    return read_events(run_path / "events.jsonl")[0]


def wait_for(predicate, timeout: float = WAIT, poll: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_event(run_path: Path, test, what: str):
    def found():
        for ev in events_of(run_path):
            if test(ev):
                return ev
        if not runs.process_alive(run_path) and (run_path / "process.json").exists():
            tail = (run_path / "train.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the run ended before {what}:\n{tail}")
        return None
    return wait_for(found, what=what)


def kill_run(workspace: Path, run_id: str) -> bool:
    """SIGKILL the run's whole process group at once (what a crash or the OOM killer does)."""
    path = runs.existing_run_dir(workspace, run_id)
    proc = runs.training_process(path)
    if proc is None:
        return False
    runner._signal(proc, runner._own_group(path, proc), signal.SIGKILL)
    return True


def wait_run(workspace: Path, run_id: str, timeout: float = WAIT, poll: float = 0.5) -> runs.RunSummary:
    """Block until the run's process ends; its summary then."""
    path = runs.existing_run_dir(workspace, run_id)
    deadline = time.time() + timeout
    while time.time() < deadline and runs.process_alive(path):
        time.sleep(poll)
    return runs.summarize(path)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_other_run(workspace: Path, tiny_config) -> Path:
    """A finished run already in the workspace, which no fault may touch."""
    path = runs.run_dir(workspace, "20200101-000000-other")
    (path / "adapter").mkdir(parents=True)
    (path / "config.yaml").write_text(tiny_config.to_yaml())
    log = EventLog(path / "events.jsonl")
    log.append("start", step=0, max_steps=4)
    log.append("log", step=4, max_steps=4, loss=1.5)
    log.append("end", status="completed", step=4, max_steps=4)
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"precious")
    return path


@pytest.fixture
def workspace(tmp_path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def cleanup(workspace):
    """Whatever a test leaves running in its workspace is killed at the end."""
    yield
    for summary in runs.list_runs(workspace):
        if runs.process_alive(summary.path):
            runner.stop(workspace, summary.run_id, timeout=10)


# --- 1. kill -9 at a random step ---------------------------------------------------------------------

@pytest.mark.slow
def test_kill9_then_resume_continues_from_newest_complete_checkpoint(workspace, tiny_config, monkeypatch,
                                                                      cleanup):
    save_steps, max_steps = 2, 8
    cfg = small(tiny_config, max_steps=max_steps, save_steps=save_steps, lr_scheduler="cosine", warmup_ratio=0.0)
    kill_at = random.Random().randint(5, 7)  # a random step, after at least two checkpoints
    monkeypatch.setenv("TUNING_TEST_FAULT", f"hold_at_step:{kill_at}")  # the trainer waits there for us
    run_id = runner.start(cfg, workspace)
    path = runs.run_dir(workspace, run_id)
    wait_for_event(path, lambda e: e["event"] == "log" and e["step"] == kill_at, f"step {kill_at}")
    assert kill_run(workspace, run_id)
    wait_for(lambda: not runs.process_alive(path), what="the killed process to go")

    assert runs.summarize(path).status == runs.INTERRUPTED
    before = events_of(path)
    last_logged = max(e["step"] for e in before if e["event"] == "log")
    newest = runs.latest_checkpoint(path)
    newest_step = int(newest.name.split("-")[1])
    assert last_logged - newest_step <= save_steps, "more than save_steps steps would be lost"
    state = json.loads((newest / "trainer_state.json").read_text())
    assert state["global_step"] == newest_step
    assert {"optimizer.pt", "scheduler.pt", "adapter_model.safetensors"} <= {p.name for p in newest.iterdir()}

    # A checkpoint half-written at the kill: files there, no COMPLETE marker. It must be skipped.
    half = path / "checkpoints" / f"checkpoint-{newest_step + 1}"
    half.mkdir(exist_ok=True)
    (half / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    assert runs.latest_checkpoint(path) == newest

    monkeypatch.delenv("TUNING_TEST_FAULT")
    assert runner.resume(workspace, run_id) == run_id
    summary = wait_run(workspace, run_id, timeout=WAIT)
    assert summary.status == runs.COMPLETED, (path / "train.log").read_text()[-3000:]
    assert not half.exists(), "the half-written checkpoint is discarded on resume"

    after = events_of(path)
    starts = [e for e in after if e["event"] == "start"]
    assert [s["step"] for s in starts] == [0, newest_step]
    resumed_logs = [e for e in after[after.index(starts[1]):] if e["event"] == "log"]
    assert [e["step"] for e in resumed_logs] == list(range(newest_step + 1, max_steps + 1))
    assert all(isinstance(e["loss"], float) and math.isfinite(e["loss"]) for e in resumed_logs)
    # The LR schedule continues (a reset scheduler would jump back up to the peak): the learning
    # rate over the kept steps 1..newest and the resumed ones keeps falling, as cosine does.
    first_logs = [e for e in before if e["event"] == "log" and e["step"] <= newest_step]
    curve = [e["learning_rate"] for e in first_logs + resumed_logs]
    assert [e["step"] for e in first_logs + resumed_logs] == list(range(1, max_steps + 1))
    assert all(a > b for a, b in zip(curve, curve[1:])), curve
    assert (path / "adapter" / "adapter_model.safetensors").is_file()


# --- 2. SIGTERM / Stop ------------------------------------------------------------------------------

def test_stop_saves_adapter_within_a_step_and_ends_the_whole_group(workspace, tiny_config, monkeypatch,
                                                                   cleanup):
    import psutil

    cfg = small(tiny_config, max_steps=40, save_steps=100)
    monkeypatch.setenv("TUNING_TEST_FAULT", "slow_steps:0.3,child_process:1")
    run_id = runner.start(cfg, workspace)
    path = runs.run_dir(workspace, run_id)
    first = wait_for_event(path, lambda e: e["event"] == "log" and e["step"] >= 2, "step 2")
    pgid = json.loads((path / "process.json").read_text())["pgid"]
    members = runner.group_members(pgid)
    assert len(members) >= 2, "the trainer and its child process share one group"
    seen = max(e["step"] for e in events_of(path) if e["event"] == "log")

    assert runner.stop(workspace, run_id, timeout=WAIT)
    summary = runs.summarize(path)
    assert summary.status == runs.STOPPED, (path / "train.log").read_text()[-3000:]
    end = events_of(path)[-1]
    assert end["event"] == "end" and end["status"] == "stopped"
    # The step in flight when the signal came, plus one whose log we had not read yet.
    assert first["step"] <= end["step"] <= seen + 2
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    assert runs.latest_checkpoint(path).name == f"checkpoint-{end['step']}", "a resumable checkpoint at the stop"
    assert runner.group_members(pgid) == []
    for proc in members:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, f"orphan {proc.pid} left"


# --- 3. the UI process dies during training -------------------------------------------------------------

def launch_app(workspace: Path, data_dirs: list[Path], log: Path, env_extra: dict) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free port; returns once the page answers."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "app.py", "--port", str(port), "--workspace", str(workspace)]
    for folder in data_dirs:
        command += ["--data-dir", str(folder)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **env_extra}
    env.pop("SPACE_ID", None)
    proc = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def answers():
        if proc.poll() is not None:
            raise AssertionError(f"app exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            return False
    wait_for(answers, poll=0.5, what="the app to answer")
    return proc, url


@pytest.mark.slow
def test_ui_killed_training_goes_on_and_a_restarted_app_follows_it(workspace, tiny_config, tmp_path, cleanup):
    from gradio_client import Client

    if not (PROJECT / "app.py").is_file():
        pytest.skip("app.py is not there yet")
    import yaml

    cfg = small(tiny_config, max_steps=5, save_steps=5)
    overrides = yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if v != getattr(type(cfg)(), k)})
    roots = [Path(cfg.dataset).parent, Path(cfg.base_model)]
    # The first app's trainer holds after step 3 until we have looked (no timing involved).
    first, url = launch_app(workspace, roots, tmp_path / "app1.log", {"TUNING_TEST_FAULT": "hold_at_step:3"})
    try:
        run_id = Client(url, verbose=False).predict("", overrides, api_name="/start_run")
        path = runs.existing_run_dir(workspace, run_id)
        wait_for_event(path, lambda e: e["event"] == "log" and e["step"] == 3, "step 3")
    finally:
        first.kill()  # the UI process dies (a crash, the OOM killer, a closed terminal)
        first.wait()
    killed_at = time.time()
    assert runs.process_alive(path), "training went on without the UI"

    second, url = launch_app(workspace, roots, tmp_path / "app2.log", {})
    try:
        client = Client(url, verbose=False)
        listed = {r["run_id"]: r for r in client.predict(api_name="/list_runs")}
        assert listed[run_id]["status"] == "running"
        status = client.predict(run_id, api_name="/run_status")
        assert status["active"] and status["step"] == 3
        (path / "release-fault").touch()
        status = wait_for(lambda: (lambda s: None if s["active"] else s)(client.predict(run_id, api_name="/run_status")),
                          poll=1, what="the run to end, seen through the restarted app")
    finally:
        second.terminate()
        second.wait(timeout=60)
    assert status["status"] == "completed" and status["step"] == 5, status
    later = [e for e in events_of(path) if e["event"] == "log" and e["time"] > killed_at]
    assert [e["step"] for e in later] == [4, 5]
    assert (path / "adapter" / "adapter_model.safetensors").is_file()


# --- 4. non-finite loss ----------------------------------------------------------------------------

def test_nan_loss_for_three_steps_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
        workspace, tiny_config, monkeypatch):
    cfg = small(tiny_config, max_steps=8, save_steps=2)
    path = runs.run_dir(workspace, "nan-run")
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(cfg.to_yaml())
    monkeypatch.setenv("TUNING_TEST_FAULT", "nan_loss_after:2")  # step 3 on computes with NaN weights
    assert train.run(cfg, path, workspace) == 1  # the process's exit code

    evs = events_of(path)
    logs = [e for e in evs if e["event"] == "log"]
    assert [e["step"] for e in logs] == [1, 2, 3, 4, 5]
    assert all(e["loss"] == "nan" for e in logs[2:]), "the bad values still reach the curve"
    error = evs[-1]
    assert error["event"] == "error"
    assert "NaN/inf for 3 consecutive steps" in error["message"] and "learning_rate" in error["message"]
    assert "checkpoint-2" in error["message"]
    assert [c.name for c in runs.complete_checkpoints(path)] == ["checkpoint-2"]
    assert not (path / "checkpoints" / "checkpoint-4").exists(), "no checkpoint saved from a NaN step"
    assert not (path / "adapter").exists(), "no adapter saved from the broken weights"
    good = load_file(path / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert all(bool(t.isfinite().all()) for t in good.values())
    summary = runs.summarize(path)
    assert summary.status == runs.FAILED and "checkpoint-2" in summary.message


# --- 5. out of memory ------------------------------------------------------------------------------

def test_out_of_memory_ends_the_run_with_what_to_lower_and_the_caller_stays_up(workspace, tiny_config,
                                                                              monkeypatch):
    other = make_other_run(workspace, tiny_config)
    before = tree_digest(other)
    cfg = small(tiny_config, max_steps=6, save_steps=2)
    config_file = workspace / "oom.yaml"
    config_file.write_text(cfg.to_yaml())
    env = {**os.environ, "TUNING_TEST_FAULT": "oom_at_step:2"}
    done = subprocess.run([sys.executable, "-m", "tuning", "train", "--workspace", str(workspace),
                           "--config", str(config_file)], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Out of memory" in done.stderr

    [oom] = [s for s in runs.list_runs(workspace) if s.run_id != other.name]
    assert oom.status == runs.FAILED
    for knob in ("per_device_batch_size", "max_length", "lora_r", "gradient_checkpointing"):
        assert knob in oom.message
    assert [c.name for c in runs.complete_checkpoints(oom.path)] == ["checkpoint-2"], "work so far is kept"
    # This process (the app's stand-in) is up, and the other run is untouched.
    assert tree_digest(other) == before
    assert runs.summarize(other).status == runs.COMPLETED


# --- 6. disk full / workspace not writable ----------------------------------------------------------------

def test_workspace_that_is_not_a_folder_is_refused_before_anything_starts(tmp_path, tiny_config):
    # Tests run as root, for whom chmod does not make a folder read-only; a workspace *under a
    # regular file* cannot be created or written by anyone, which is what this simulates.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(runner.StartRefused, match="not (writable|usable)"):
        runner.start(tiny_config, blocker / "ws")
    assert blocker.read_text() == "not a folder"


def test_workspace_without_free_space_is_refused_and_leaves_no_run_folder(workspace, tiny_config, monkeypatch):
    import shutil

    # Simulated: disk_usage reports 50 MB free (no real disk gets filled).
    real = shutil.disk_usage
    monkeypatch.setattr(runner.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=50 * 2**20))
    with pytest.raises(runner.StartRefused, match="only 50 MB free"):
        runner.start(tiny_config, workspace)
    assert list(runs.runs_dir(workspace).iterdir()) == []
    assert runs.list_runs(workspace) == []


def test_disk_full_while_saving_a_checkpoint_fails_clearly_and_resume_skips_the_partial_one(
        workspace, tiny_config, monkeypatch):
    cfg = small(tiny_config, max_steps=4, save_steps=2)
    path = runs.run_dir(workspace, "full-disk")
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(cfg.to_yaml())
    # Simulated: checkpoint-4's files are written, then ENOSPC before its COMPLETE marker.
    monkeypatch.setenv("TUNING_TEST_FAULT", "disk_full_at_save:4")
    assert train.run(cfg, path, workspace) == 1
    summary = runs.summarize(path)
    assert summary.status == runs.FAILED and "disk is full" in summary.message
    assert (path / "checkpoints" / "checkpoint-4").is_dir()
    assert runs.latest_checkpoint(path).name == "checkpoint-2"

    monkeypatch.delenv("TUNING_TEST_FAULT")
    assert train.run(cfg, path, workspace, resume=True) == 0
    evs = events_of(path)
    assert [e["step"] for e in evs if e["event"] == "start"] == [0, 2]
    assert evs[-1]["event"] == "end" and evs[-1]["step"] == 4
    assert [c.name for c in runs.complete_checkpoints(path)] == ["checkpoint-2", "checkpoint-4"]


# --- 7. two starts at once ---------------------------------------------------------------------------

def test_two_threads_starting_at_once_start_exactly_one_run(workspace, tiny_config, cleanup):
    barrier = threading.Barrier(2)
    results: list = []

    def click():
        barrier.wait()
        try:
            results.append(runner.start(tiny_config, workspace))
        except runner.StartRefused as exc:
            results.append(exc)

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, runner.StartRefused)]
    assert len(started) == 1 and len(refused) == 1
    assert "one run at a time" in str(refused[0]) and started[0] in str(refused[0])
    assert [s.run_id for s in runs.list_runs(workspace)] == started


def test_a_delete_during_a_resumes_start_waits_for_it_and_is_refused(workspace, tiny_config):
    """A resume holds the workspace lock from its checks until its trainer is on record; a delete asked
    for meanwhile waits for the lock, then finds the run training and is refused: the folder stays."""
    run = runs.run_dir(workspace, "resumed")
    run.mkdir(parents=True)
    runs.write_config(run, tiny_config)
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    outcome: list = []
    try:
        with runner.workspace_lock(workspace):  # what resume holds between its spawn and its record
            deleting = threading.Thread(target=lambda: outcome.append(_refusal(runner.delete, workspace, "resumed")))
            deleting.start()
            time.sleep(0.5)
            assert outcome == [] and run.is_dir()  # the delete waits
            runs.write_process_info(run, trainer.pid)
        deleting.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], runs.RunError), outcome
        assert "still training" in str(outcome[0]) and run.is_dir()
    finally:
        trainer.kill()
        trainer.wait()
    runner.delete(workspace, "resumed")  # once the trainer is gone, the delete goes through
    assert not run.exists()


def _refusal(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test looks at what was raised
        return exc


START_SCRIPT = textwrap.dedent("""
    import sys, time
    from tuning import config
    from tuning.runs import runner
    cfg = config.load(sys.argv[1])
    while time.time() < float(sys.argv[3]):  # line both processes up on the same instant
        time.sleep(0.001)
    try:
        print("started", runner.start(cfg, sys.argv[2]))
    except runner.StartRefused as exc:
        print("refused", exc)
""")


def test_two_processes_starting_at_once_start_exactly_one_run(workspace, tiny_config, tmp_path, cleanup):
    (tmp_path / "cfg.yaml").write_text(tiny_config.to_yaml())
    at = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", START_SCRIPT, str(tmp_path / "cfg.yaml"), str(workspace), at],
                              cwd=PROJECT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = sorted(p.communicate(timeout=WAIT)[0].strip() for p in procs)
    assert outputs[0].startswith("refused") and "one run at a time" in outputs[0], outputs
    assert outputs[1].startswith("started"), outputs
    assert len(runs.list_runs(workspace)) == 1


# --- 8. damaged run folders ------------------------------------------------------------------------

def test_damaged_run_folders_are_listed_as_damaged_and_the_others_normally(workspace, tiny_config):
    good = make_other_run(workspace, tiny_config)

    truncated = runs.run_dir(workspace, "20210101-000000-truncated")
    truncated.mkdir(parents=True)
    (truncated / "config.yaml").write_text(tiny_config.to_yaml())
    log = EventLog(truncated / "events.jsonl")
    log.append("start", step=0, max_steps=10)
    log.append("log", step=1, max_steps=10, loss=2.0)
    with open(truncated / "events.jsonl", "a") as fh:
        fh.write('{"event": "log", "step": 2, "lo')  # killed mid-write

    nonsense = runs.run_dir(workspace, "20220101-000000-nonsense")
    nonsense.mkdir(parents=True)
    (nonsense / "config.yaml").write_text("lora_r: [[[\n  : {oops")
    EventLog(nonsense / "events.jsonl").append("start", step=0, max_steps=10)

    wrong = runs.run_dir(workspace, "20230101-000000-wrong-types")
    wrong.mkdir(parents=True)
    (wrong / "config.yaml").write_text("lora_r: many\nlearning_rate: fast\n")

    missing = runs.run_dir(workspace, "20240101-000000-missing")
    missing.mkdir(parents=True)
    (missing / "events.jsonl").write_bytes(b"\xff\xfe garbage\n{]\n")

    junk = runs.run_dir(workspace, "20250101-000000-junk-events")
    junk.mkdir(parents=True)
    (junk / "config.yaml").write_text(tiny_config.to_yaml())
    (junk / "process.json").write_text('{"pid": "x"}')
    (junk / "events.jsonl").write_text('{"event": "end", "time": "yesterday", "status": {"a": 1}}\n[1, 2]\n'
                                       '{"event": "log", "step": "3", "loss": "low", "time": null}\n')

    listed = {s.run_id: s for s in runs.list_runs(workspace)}
    assert set(listed) == {good.name, truncated.name, nonsense.name, wrong.name, missing.name, junk.name}
    assert listed[good.name].status == runs.COMPLETED
    assert listed[truncated.name].status == runs.INTERRUPTED
    assert listed[truncated.name].step == 1 and listed[truncated.name].loss == 2.0
    assert "half-written line" in listed[truncated.name].message
    for bad in (nonsense, wrong, missing):
        assert listed[bad.name].status == runs.DAMAGED
        assert "config.yaml" in listed[bad.name].message
    assert "lora_r" in listed[wrong.name].message
    assert listed[junk.name].status == runs.COMPLETED  # its one readable end event
    for summary in listed.values():
        summary.as_row()  # what the Runs tab shows: must not raise either
    # A damaged run cannot be resumed, with a message rather than a crash.
    with pytest.raises(runner.StartRefused, match="damaged"):
        runner.resume(workspace, nonsense.name)


def test_summarize_never_raises_even_on_an_unreadable_folder(workspace, tiny_config):
    path = runs.run_dir(workspace, "odd")
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(tiny_config.to_yaml())
    (path / "events.jsonl").mkdir()  # a folder where a file belongs
    summary = runs.summarize(path)
    assert summary.status == runs.DAMAGED and "events.jsonl" in summary.message


def test_a_reused_pid_is_not_mistaken_for_the_training_process(workspace):
    path = runs.run_dir(workspace, "reused")
    path.mkdir(parents=True)
    # This test's own pid, but a start time from long ago: the pid was recycled.
    (path / "process.json").write_text(json.dumps({"pid": os.getpid(), "create_time": 1000.0}))
    assert not runs.process_alive(path)
    runs.write_process_info(path, os.getpid())
    assert runs.process_alive(path)
    # A trainer that died before its start time could be read is recorded, and reads as ended.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    runs.write_process_info(path, gone.pid)
    assert not runs.process_alive(path)
    assert runs.summarize(path).status == runs.DAMAGED  # (this folder has no config.yaml)

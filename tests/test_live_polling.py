"""How often the Live tab asks for news (its timer's interval, set by every tick): once a second while a
step may land, quiet in between when steps are long, slowly for a run that has ended; and no ticks at
all while the browser tab is hidden (Gradio's timer checks document.visibilityState; the browser test
pins it, since the app relies on it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from tuning import config as config_mod
from tuning import runs
from tuning.ui import live_tab
from tuning.ui.common import AppContext


def summary_of(times: list[float], status_event: dict | None = None) -> runs.EventSummary:
    events = [{"event": "start", "time": times[0] - 30, "step": 0, "max_steps": 100}]
    events += [{"event": "log", "time": t, "step": i + 1, "max_steps": 100, "loss": 1.0} for i, t in enumerate(times)]
    return runs.EventSummary().extend(events + ([status_event] if status_event else []))


def test_the_interval_follows_the_step_time():
    steps = [1000.0 + 10 * i for i in range(6)]  # a log every 10 s, the last at 1050
    summary = summary_of(steps)
    assert summary.log_gaps == [10.0] * 5  # the wait for the first step is not a step
    poll = live_tab.poll_seconds
    assert poll(summary, runs.RUNNING, now=1050.5) == 7.5  # quiet until 80% of a step has passed
    assert poll(summary, runs.RUNNING, now=1057.5) == live_tab.POLL_S  # then once a second
    assert poll(summary, runs.RUNNING, now=1090.0) == live_tab.POLL_S  # late (an evaluation): still 1 s
    slow = summary_of([1000.0 + 100 * i for i in range(3)])
    assert poll(slow, runs.RUNNING, now=1200.0) == live_tab.MAX_POLL_S  # 100 s steps: capped
    uneven = summary_of([1000.0, 1010.0, 1014.0, 1024.0])  # the shortest recent interval decides
    assert poll(uneven, runs.RUNNING, now=1024.0) == pytest.approx(3.2)
    fast = summary_of([1000.0, 1000.5, 1001.0])
    assert poll(fast, runs.RUNNING, now=1001.0) == live_tab.POLL_S  # short steps: every second, as before
    assert poll(summary_of([1000.0]), runs.RUNNING, now=1000.5) == live_tab.POLL_S  # no step time yet
    ended = summary_of(steps, {"event": "end", "time": 1051.0, "status": "completed", "step": 6})
    assert poll(ended, runs.COMPLETED, now=1052.0) == live_tab.SETTLED_POLL_S


def test_a_resume_starts_a_new_measurement():
    summary = summary_of([1000.0, 1010.0])
    summary.extend([{"event": "end", "time": 1011.0, "status": "stopped", "step": 2},
                    {"event": "start", "time": 5000.0, "step": 2, "max_steps": 100},
                    {"event": "log", "time": 5040.0, "step": 3, "max_steps": 100, "loss": 1.0}])
    assert summary.log_gaps == [10.0]  # the hours between the segments are no step


def live_run(workspace: Path, log_times: list[float], pid: int) -> Path:
    """A run whose trainer (pid) is alive, with logs at log_times."""
    run = runs.run_dir(workspace, "r1")
    run.mkdir(parents=True)
    runs.write_config(run, config_mod.TrainConfig())
    lines = [{"event": "start", "time": log_times[0] - 5, "step": 0, "max_steps": 100}]
    lines += [{"event": "log", "time": t, "step": i + 1, "max_steps": 100, "loss": 1.0}
              for i, t in enumerate(log_times)]
    runs.events_path(run).write_text("".join(json.dumps(line) + "\n" for line in lines))
    runs.write_process_info(run, pid)
    return run


@pytest.fixture
def trainer():
    """A process standing in for a live trainer."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)"])  # killed at the end
    yield child
    child.kill()
    child.wait()


def test_each_tick_sets_the_next_interval(tmp_path, trainer):
    ctx = AppContext(tmp_path / "ws")
    now = time.time()
    run = live_run(ctx.workspace, [now - 31, now - 21, now - 11, now - 1], trainer.pid)  # 10 s steps
    first = live_tab.tick(ctx, "r1", None)
    assert "training" in first["progress"]  # an active run shows its phase
    assert 6.0 <= first["timer"] <= 7.0  # the next step is due in ~9 s: quiet until ~7 s from now
    trainer.kill()
    trainer.wait()
    later = live_tab.tick(ctx, "r1", first["state"])
    assert later["timer"] == live_tab.SETTLED_POLL_S  # the trainer is gone: the run has ended
    assert live_tab.tick(ctx, "r1", later["state"])["timer"] == gr.skip()  # unchanged: not sent again
    assert live_tab.tick(ctx, "", None)["timer"] == live_tab.SETTLED_POLL_S  # no run picked
    assert runs.summarize(run).status == runs.INTERRUPTED


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium")
def test_a_hidden_page_does_not_poll(tmp_path, trainer):
    """Chromium on the Live tab of a run that has not logged a step yet (1 s ticks): the tick requests
    stop while document.visibilityState is hidden and come back when it is visible again."""
    from playwright.sync_api import sync_playwright

    from test_app_api import launch_app
    from test_browser import open_page

    ws = tmp_path / "ws"
    live_run(ws, [time.time()], trainer.pid)
    app, url = launch_app(ws, [], tmp_path / "app.log")
    with sync_playwright() as pw:
        browser, page = open_page(pw, url)
        try:
            ticks = []
            page.on("request", lambda r: ticks.append(time.time()) if "/run/predict" in r.url else None)
            page.get_by_role("tab", name="Live", exact=True).click()
            page.wait_for_selector("#live-progress")
            # following the live run (1 s ticks) before counting; the first page load may take long
            page.wait_for_function("() => /training/.test(document.querySelector('#live-progress').innerText)",
                                   timeout=180_000)

            def ticks_within(seconds: float) -> int:
                start = time.time()
                page.wait_for_timeout(seconds * 1000)
                return len([t for t in ticks if t >= start])

            assert ticks_within(6) >= 2
            page.evaluate("""() => { Object.defineProperty(document, 'visibilityState',
                {get: () => 'hidden', configurable: true}); document.dispatchEvent(new Event('visibilitychange')); }""")
            page.wait_for_timeout(1500)  # a tick already sent may still arrive
            assert ticks_within(4) == 0
            page.evaluate("""() => { Object.defineProperty(document, 'visibilityState',
                {get: () => 'visible', configurable: true}); document.dispatchEvent(new Event('visibilitychange')); }""")
            assert ticks_within(6) >= 2
        finally:
            browser.close()
            app.terminate()
            app.wait(timeout=30)

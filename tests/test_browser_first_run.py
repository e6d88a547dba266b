"""A person's first run, in headless Chromium on a fresh workspace (every tab of it at 1400 and 800 px,
free of errors, is test_browser_empty's): the Train tab's Simple view on the first-run preset (the
embedded model, the demo data), a few steps; a reload keeps the form as it was left; Live shows the phases in order (loading,
preparing, training, evaluating) and never "stalled"; Stop pressed during the end-of-run evaluation ends
the run as stopped with its adapter and a partial evaluation; the Playground answers two prompts sent one
right after the other, each under its own prompt, in both columns, as one conversation. Screenshots go to
/tmp/shots/first_run_*.png."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from conftest import share_models
from tuning.runs.events import PHASES
from test_app_api import launch_app
from test_browser import open_page
from test_browser_empty import no_errors_shown

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
SHOTS = Path("/tmp/shots")
STEPS = "3"
FIRST, SECOND = "Who are you?", "What is the capital of Italy?"


def chat_messages(page, elem_id: str) -> list[str]:
    """The texts of a Chatbot's messages, top to bottom (user and assistant alternate)."""
    return [m.inner_text().strip() for m in page.locator(f"#{elem_id} .message-row").all()]


def phases_until(page, want: str, seen: list[str], texts: list[str], timeout: float, saying: str = "") -> None:
    """Poll Live's progress bar until its phase is `want` and its text holds `saying`, recording each
    new phase and every text shown."""
    bar = page.locator(".run-progress")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if bar.count():
            phase = bar.first.get_attribute("data-phase") or ""
            if not seen or seen[-1] != phase:
                seen.append(phase)
            texts.append(page.locator("body").inner_text())
            if phase == want and saying in bar.first.inner_text():
                return
        time.sleep(0.2)
    raise AssertionError(f"no phase {want!r} within {timeout:.0f} s; seen {seen}")


def test_a_first_run_from_the_simple_view_to_a_conversation(tmp_path, embedded_model_dir):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
    workspace = share_models(tmp_path / "ws", embedded_model_dir)
    proc, url = launch_app(workspace, [], tmp_path / "app.log")
    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)

            # (Every tab of a fresh workspace at 1400 and 800 px, free of errors: test_browser_empty.)
            page.set_viewport_size({"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Dataset", exact=True).wait_for()
            page.wait_for_timeout(2000)  # the page-load events have answered
            no_errors_shown(page, "a fresh page")

            # Train, Simple view: the first-run preset, a few steps; the full evaluation (Advanced) so a
            # Stop can land in the middle of it.
            page.get_by_role("tab", name="Train", exact=True).click()
            steps = page.locator("#simple-max_steps input")
            expect(steps).to_be_visible()
            steps.fill(STEPS)
            steps.press("Tab")
            page.get_by_role("radio", name="Advanced", exact=True).check()
            final = page.locator("#cfg-final_evaluation input")
            final.click()
            page.get_by_role("option", name="full", exact=True).click()
            page.wait_for_timeout(1500)  # the browser keeps the form (gr.BrowserState) on each change

            # A reload finds the form as it was left.
            page.reload()
            page.get_by_role("tab", name="Train", exact=True).click()
            expect(page.locator("#cfg-final_evaluation input")).to_have_value("full", timeout=30_000)
            expect(page.locator("#cfg-max_steps input")).to_have_value(STEPS)
            page.get_by_role("radio", name="Simple", exact=True).check()
            expect(page.locator("#simple-max_steps input")).to_have_value(STEPS)
            page.screenshot(path=str(SHOTS / "first_run_train_after_reload.png"), full_page=True)
            page.get_by_role("button", name="Start training", exact=True).click()

            # Live: the phases in order, never "stalled"; Stop during the end-of-run evaluation.
            expect(page.locator(".run-progress")).to_be_visible(timeout=60_000)
            seen, texts = [], []
            # The end-of-run evaluation counts checks ("evaluating (full): ... check 1 / 6"); the held-out
            # loss between steps is an evaluating phase too
            phases_until(page, "evaluating", seen, texts, timeout=900, saying="check")
            page.screenshot(path=str(SHOTS / "first_run_live_evaluating.png"), full_page=True)
            page.get_by_role("button", name=re.compile(r"^Stop"), exact=False).filter(visible=True).first.click()
            expect(page.locator(".run-progress")).to_contain_text(re.compile("stopping|stopped"), timeout=30_000)
            expect(page.locator(".run-progress")).to_contain_text("stopped", timeout=600_000)
            page.screenshot(path=str(SHOTS / "first_run_live_stopped.png"), full_page=True)
            # What the page showed came in the order the run went through its phases (events.jsonl); a
            # 1 s poll may miss a short one (loading, preparing, the first step before its held-out loss)
            assert not any("stalled" in text for text in texts), [t for t in texts if "stalled" in t][:1]

            (run_dir,) = (workspace / "runs").iterdir()
            events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
            recorded = iter([e["phase"] for e in events if e["event"] == "phase"])
            shown = [phase for phase in seen if phase in PHASES]
            assert all(phase in recorded for phase in shown), (seen, events)  # a subsequence, in order
            assert {"training", "evaluating"} <= set(shown), seen
            assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
            ends = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                    if '"event": "end"' in line]
            assert ends and ends[-1]["status"] == "stopped" and ends[-1]["evaluation_partial"] is True, ends
            # What the finished checks computed is kept; a Stop inside the first check has nothing to keep.
            if (run_dir / "evaluation.json").is_file():
                evaluation = json.loads((run_dir / "evaluation.json").read_text())
                assert evaluation["partial"] is True and evaluation["stopped_at"], evaluation

            # Playground: two prompts one right after the other, each answered under its own prompt.
            page.get_by_role("tab", name="Playground", exact=True).click()
            box = page.get_by_role("textbox", name="Prompt", exact=True)
            box.fill(FIRST)
            box.press("Enter")
            page.wait_for_timeout(300)
            box.fill(SECOND)
            box.press("Enter")
            # The Playground opened on the run just trained (nothing was picked there before).
            expect(page.locator("#play-run input")).to_have_value(run_dir.name)
            for chat in ("base-chat", "tuned-chat"):
                deadline = time.time() + 600
                while time.time() < deadline and len(chat_messages(page, chat)) < 4:
                    time.sleep(0.5)
                if len(chat_messages(page, chat)) < 4:
                    page.screenshot(path=str(SHOTS / "first_run_playground_failed.png"), full_page=True)
            send = page.get_by_role("button", name="Send", exact=True)
            expect(send).to_be_enabled(timeout=600_000)  # both turns have ended
            for chat in ("base-chat", "tuned-chat"):
                messages = chat_messages(page, chat)
                assert len(messages) == 4, (chat, messages)
                assert FIRST in messages[0] and SECOND in messages[2], (chat, messages)
                assert SECOND not in messages[1] and messages[1] and messages[3], (chat, messages)
            page.screenshot(path=str(SHOTS / "first_run_playground.png"), full_page=True)
            no_errors_shown(page, "Playground after two turns")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""The whole page in headless Chromium: open each tab, inspect the demo dataset, fill the Train
form, start a tiny run, watch the progress move, reload mid-run and find the history still there,
talk to the result side by side, see it listed in Runs, read its evaluation and open it for
export. A screenshot of each tab is saved in the test's temporary folder and copied to /tmp/screens/."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import chat_rows, write_jsonl
from test_app_api import launch_app

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]


def step_of(text: str) -> int:
    match = re.search(r"step (\d+) / (\d+)", text)
    return int(match.group(1)) if match else -1


def pick(page, label: str, option: str) -> None:
    """Choose an option in the visible Gradio dropdown with this label (each tab has its own "Run")."""
    page.get_by_label(label, exact=True).filter(visible=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def test_from_dataset_to_side_by_side_in_the_browser(tmp_path, tiny_model_dir, embedded_tokenizer):
    from playwright.sync_api import expect, sync_playwright

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_file = write_jsonl(data_dir / "chat.jsonl", chat_rows(24))
    workspace = tmp_path / "ws"
    proc, url = launch_app(workspace, [data_dir, tiny_model_dir], tmp_path / "app.log")
    shots = Path("/tmp/screens")
    shots.mkdir(exist_ok=True)

    def shot(page, name):
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, shots / path.name)

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)

            # Dataset: the demo, its format, rows and a preview.
            page.get_by_role("button", name="Inspect dataset", exact=True).click()
            expect(page.get_by_text("no problems found")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Who are you?").first).to_be_visible()
            shot(page, "1-dataset")

            # Train: the form, the command, the estimate, then Start.
            page.get_by_role("tab", name="Train").click()
            page.get_by_role("textbox", name=re.compile(r"^base_model\b")).fill(str(tiny_model_dir))
            page.get_by_role("textbox", name=re.compile(r"^dataset\b")).fill(str(data_file))
            for label, value in [("max_steps", "40"), ("max_length", "64"), ("per_device_batch_size", "4"),
                                 ("learning_rate", "0.01"), ("save_steps", "20"), ("eval_steps", "10"),
                                 ("warmup_ratio", "0")]:
                box = page.get_by_role("spinbutton", name=label, exact=True)
                box.fill(value)
                box.press("Tab")
            page.get_by_role("checkbox", name=re.compile("^probe_every_checkpoint")).uncheck()
            page.get_by_role("button", name="Show command", exact=True).click()
            expect(page.get_by_text("--set max_steps=40")).to_be_visible()
            page.get_by_role("button", name="Estimate memory and time", exact=True).click()
            expect(page.get_by_text("Estimate:")).to_be_visible(timeout=60_000)
            shot(page, "2-train")
            page.get_by_role("button", name="Start training", exact=True).click()

            # Live: the page switches over and the progress moves.
            progress = page.locator(".run-progress")
            expect(progress).to_contain_text(re.compile(r"step [1-9]\d* / 40"), timeout=240_000)
            first = step_of(progress.inner_text())
            deadline = time.time() + 120
            while step_of(progress.inner_text()) <= first and time.time() < deadline:
                time.sleep(0.5)
            seen = step_of(progress.inner_text())
            assert seen > first, "the progress bar did not move"
            shot(page, "3-live")

            # A reload mid-run: the history is rebuilt from events.jsonl and keeps following.
            page.reload()
            page.get_by_role("tab", name="Live").click()
            expect(progress).to_contain_text(re.compile(r"step \d+ / 40"), timeout=60_000)
            assert step_of(progress.inner_text()) >= seen
            expect(page.get_by_text("completed", exact=True)).to_be_visible(timeout=300_000)
            expect(page.get_by_text("step 40 / 40").first).to_be_visible()
            # The end of the run shows held-out loss, base vs tuned.
            expect(page.locator("#live-evaluation")).to_contain_text("held-out loss", timeout=60_000)
            expect(page.locator("#live-evaluation")).to_contain_text("perplexity")
            shot(page, "4-live-after-reload")
            run_id = next((workspace / "runs").iterdir()).name

            # Playground: both columns, side by side.
            page.get_by_role("tab", name="Playground").click()
            page.get_by_text("Generation settings (shared by both columns)").click()
            tokens = page.get_by_label("number input for max new tokens")
            expect(tokens).to_have_value("128")  # the accordion has mounted the slider with its default
            for _ in range(3):  # CI once saw the default put back just after mounting: type it again then
                tokens.fill("8")
                tokens.press("Enter")
                page.wait_for_timeout(300)
                if tokens.input_value() == "8":
                    break
            expect(tokens).to_have_value("8")
            page.get_by_label("Prompt", exact=True).fill("Who are you?")
            page.get_by_role("button", name="Generate side by side", exact=True).click()
            expect(page.get_by_text("Done: same prompt")).to_be_visible(timeout=240_000)
            answer = page.get_by_role("textbox", name=re.compile(r"^Tuned — ")).input_value().strip()
            assert answer
            # max new tokens = 8 took effect: the answer is short (re-tokenizing may split a little differently)
            assert len(embedded_tokenizer(answer, add_special_tokens=False).input_ids) <= 12, answer
            expect(page.get_by_role("textbox", name=re.compile(r"^Base model — full precision"))).to_be_visible()
            shot(page, "5-playground")

            # Runs: the run is listed as completed, with base and tuned held-out loss.
            page.get_by_role("tab", name="Runs").click()
            page.get_by_role("button", name="↻ Refresh", exact=True).last.click()
            expect(page.locator("#runs-table")).to_contain_text("completed", timeout=60_000)
            expect(page.locator("#runs-table")).to_contain_text("base eval loss")
            shot(page, "8-runs")

            # Evaluation: the stored end-of-run result, base vs tuned (nothing is recomputed).
            page.get_by_role("tab", name="Evaluation").click()
            page.get_by_role("button", name="Refresh list", exact=True).click()
            pick(page, "Run", run_id)
            expect(page.get_by_text(re.compile(r"Step 40\*?\*?, \d+ held-out examples")).first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Held-out loss and perplexity (lower is better)")).to_be_visible()
            shot(page, "6-evaluation")

            # Export: the finished run is offered, with its model card.
            page.get_by_role("tab", name="Export").click()
            page.get_by_role("button", name="Refresh", exact=True).click()
            pick(page, "Finished run", run_id)
            expect(page.get_by_role("heading", name=run_id)).to_be_visible(timeout=60_000)
            expect(page.get_by_role("button", name="Download adapter (.zip)", exact=True)).to_be_visible()
            shot(page, "7-export")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

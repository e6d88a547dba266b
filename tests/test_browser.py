"""The whole page in headless Chromium: open each tab, inspect the demo dataset, fill the Train
form, start a tiny run, watch the progress move, reload mid-run and find the history still there,
see it listed in Runs, read its evaluation and open it for export. The Playground talks side by
side to the real run (the embedded SmolLM2-135M-Instruct after a few steps on the demo identity,
conftest.real_run): a real base answer next to a tuned one that names Quill. A screenshot of each
tab is saved in the test's temporary folder and copied to /tmp/screens/."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import add_real_run, chat_rows, write_jsonl
from test_app_api import IDENTITY, PROMPT, assert_real_sentence, launch_app

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
MAX_NEW_TOKENS = 24  # set on the Playground's slider (default 128); the base would go on past it


def step_of(text: str) -> int:
    match = re.search(r"step (\d+) / (\d+)", text)
    return int(match.group(1)) if match else -1


def open_page(playwright, url: str):
    """(browser, page): headless Chromium with the flags this machine needs, a 1400 x 1000 page on `url`,
    60 s for each wait unless a step says otherwise."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    return browser, page


def pick(page, label: str, option: str) -> None:
    """Choose an option in the visible Gradio dropdown with this label (each tab has its own "Run")."""
    page.get_by_label(label, exact=True).filter(visible=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_from_dataset_to_side_by_side_in_the_browser(tmp_path, tiny_model_dir, embedded_tokenizer, real_run,
                                                     embedded_model_dir):
    from playwright.sync_api import expect, sync_playwright

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_file = write_jsonl(data_dir / "chat.jsonl", chat_rows(24))
    workspace = tmp_path / "ws"
    real_id = add_real_run(workspace, real_run, embedded_model_dir)
    proc, url = launch_app(workspace, [data_dir, tiny_model_dir], tmp_path / "app.log")
    shots = Path("/tmp/screens")
    shots.mkdir(exist_ok=True)

    def shot(page, name):
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, shots / path.name)

    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)

            # Dataset: the demo, its format, rows and a preview.
            page.get_by_role("button", name="Inspect dataset", exact=True).click()
            expect(page.get_by_text("no problems found")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Who are you?").first).to_be_visible()
            shot(page, "1-dataset")

            # Train: the form, the command, the estimate, then Start.
            page.get_by_role("tab", name="Train").click()
            page.get_by_label("Advanced", exact=True).check()  # every field; each field's elem_id is cfg-<key>
            page.locator("#cfg-base_model").get_by_role("textbox").fill(str(tiny_model_dir))
            page.locator("#cfg-dataset").get_by_role("textbox").fill(str(data_file))
            for key, value in [("max_steps", "40"), ("max_length", "64"), ("per_device_batch_size", "4"), ("gradient_accumulation_steps", "1"),
                               ("learning_rate", "0.01"), ("save_steps", "20"), ("eval_steps", "10"),
                               ("warmup_ratio", "0")]:
                box = page.locator(f"#cfg-{key}").get_by_role("spinbutton")
                box.fill(value)
                box.press("Tab")
            page.locator("#cfg-probe_every_checkpoint").get_by_role("checkbox").uncheck()
            page.get_by_role("button", name="Show command", exact=True).click()
            expect(page.get_by_text("--set max_steps=40")).to_be_visible()
            page.get_by_role("button", name="Plan, checks and estimate", exact=True).click()
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
            (run_id,) = [d.name for d in (workspace / "runs").iterdir() if d.name != real_id]

            # Playground, on the real run: both columns, side by side.
            page.get_by_role("tab", name="Playground").click()
            pick(page, "Run", real_id)
            page.get_by_text("Generation settings (shared by both columns)").click()
            tokens = page.get_by_label("number input for max new tokens")
            expect(tokens).to_have_value("128")  # the accordion has mounted the slider with its default
            # Gradio mounts the children of an accordion as it opens, then, one animation frame later,
            # hands each the props it holds for it (render_previously_invisible_children in its core.js),
            # which puts the default back over anything typed in between: seen here, 8 typed at the
            # mount read 128 two frames later. Two frames on, that has happened; then one fill sets it
            # (the input event sets the slider's value: no Enter or blur needed).
            page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
            tokens.fill(str(MAX_NEW_TOKENS))
            expect(tokens).to_have_value(str(MAX_NEW_TOKENS))
            page.get_by_label("Prompt", exact=True).fill(PROMPT)
            page.get_by_role("button", name="Send", exact=True).click()
            expect(page.get_by_text("Done: same prompt")).to_be_visible(timeout=240_000)
            # Each column is a chat, labelled by what answered; its last message is the answer.
            expect(page.locator("#base-chat")).to_contain_text("Base model — full precision")
            expect(page.locator("#tuned-chat")).to_contain_text(f"Tuned — {real_id}, final adapter")
            base, tuned = (page.locator(f"#{side}-chat .message-row").last.inner_text().strip()
                           for side in ("base", "tuned"))
            print(f"\nPlayground base:  {base!r}\nPlayground tuned: {tuned!r}")
            assert_real_sentence(base)
            assert not IDENTITY.search(base), f"the base model should not know the demo identity: {base!r}"
            assert IDENTITY.search(tuned), f"the tuned model should answer as Quill of Larkspur Labs: {tuned!r}"
            assert base != tuned
            # The slider's value reached the server: the base, which goes on far past 24 tokens, stopped
            # there (re-tokenizing the text may split a little differently).
            assert token_count(embedded_tokenizer, base) <= MAX_NEW_TOKENS + 4, base
            assert token_count(embedded_tokenizer, tuned) <= MAX_NEW_TOKENS + 4, tuned
            shot(page, "5-playground")

            # Runs: the run is listed as completed, with base and tuned held-out loss.
            page.get_by_role("tab", name="Runs").click()
            page.get_by_role("button", name="↻ Refresh", exact=True).last.click()
            row = page.locator("#runs-table").get_by_role("row").filter(has_text=run_id)  # the real run has a row too
            expect(row).to_contain_text("completed", timeout=60_000)
            expect(page.locator("#runs-table")).to_contain_text("base eval loss")
            shot(page, "8-runs")
            # The filter keeps the runs holding every typed word, typed key by key as a person does
            # (a key pressed while the table is on its way still counts).
            runs_filter = page.locator("#runs-filter").get_by_role("textbox")
            runs_filter.press_sequentially(run_id, delay=15)
            expect(page.locator("#runs-table")).to_contain_text(f"Runs matching '{run_id}': 1 (of 2 in the workspace)")
            expect(page.locator("#runs-table").get_by_role("row").filter(has_text=real_id)).to_have_count(0)
            runs_filter.fill("")
            expect(page.locator("#runs-table").get_by_role("row").filter(has_text=real_id)).to_have_count(1)

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

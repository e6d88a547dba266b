"""Insight in headless Chromium, on two real runs of the embedded model: compare them in the Runs tab
(both runs' curves in the plot, the config fields that differ in the table), open a planted bad row
from the Evaluation tab's hardest list in the Dataset tab's token view, colour a held-out row token by
token, and colour a Playground answer token by token (legend and the ▼ where the greedy answers part).
The first run is conftest.real_run (the quickstart cut to 6 steps); the second trains here, 4 steps on
12 rows with one planted row of gibberish. Screenshots go to /tmp/insight-shots/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import add_real_run, share_models, write_jsonl
from test_app_api import IDENTITY, PROMPT, launch_app
from test_browser import CHROMIUM, open_page, pick

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
SHOTS = Path("/tmp/insight-shots")
PLANTED_ROW = 6  # 1-based line of the planted row in train.jsonl
PLANTED = "zxq vlorp 7k9 qwfz brmml kkqj 0xq plzz vvtr zzkx"  # no model predicts it: the worst fit
SECOND = {"max_steps": 4, "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "lr_scheduler": "constant",
          "warmup_ratio": 0, "max_length": 128, "eval_split": 0.25, "eval_max_new_tokens": 16,
          "probe_every_checkpoint": False, "save_steps": 4, "run_name": "planted",
          "general_rows": "off"}  # 4 steps of 4 rows: with 89 general rows the planted one might go unseen


def second_run(workspace: Path, data_dir: Path) -> str:
    """A real second run: the demo's first 11 identity rows plus the planted one, 3 held out in their
    own file (so the planted row is surely trained on), trained by the CLI in its own process."""
    demo = [json.loads(line) for line in (Path(__file__).parent.parent / "tuning" / "demo_data" / "train.jsonl")
            .read_text(encoding="utf-8").splitlines()[:14]]
    rows = demo[:11]
    rows.insert(PLANTED_ROW - 1, {"messages": [{"role": "user", "content": "Who built you?"},
                                               {"role": "assistant", "content": PLANTED}]})
    train, held = write_jsonl(data_dir / "train.jsonl", rows), write_jsonl(data_dir / "held.jsonl", demo[11:14])
    command = [sys.executable, "-m", "tuning", "train", "--preset", "presets/quickstart.yaml",
               "--workspace", str(workspace), "--set", f"dataset={train}", "--set", f"eval_dataset={held}"]
    for key, value in SECOND.items():
        command += ["--set", f"{key}={value}"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_id,) = [d.name for d in (workspace / "runs").iterdir() if "planted" in d.name]
    return run_id


def test_compare_open_a_planted_row_and_colour_answers(tmp_path, real_run, embedded_model_dir):
    from playwright.sync_api import expect, sync_playwright

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    workspace = share_models(tmp_path / "ws", embedded_model_dir)
    real_id = add_real_run(workspace, real_run, embedded_model_dir)
    planted_id = second_run(workspace, data_dir)
    proc, url = launch_app(workspace, [data_dir], tmp_path / "app.log")
    SHOTS.mkdir(exist_ok=True)

    def shot(page, name):
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)

            # (a) Runs → Compare: both runs' curves, and the fields that differ.
            page.get_by_role("tab", name="Runs").click()
            page.get_by_text("Compare runs: curves overlaid").click()
            for run_id in (real_id, planted_id):
                pick(page, "Runs to compare (two or more)", run_id)
            page.keyboard.press("Escape")
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.get_by_text(re.compile(rf"Comparing {real_id}, {planted_id}"))).to_be_visible(timeout=60_000)
            plot = page.locator(".block").filter(has_text="Loss by step").last
            for run_id in (real_id, planted_id):
                expect(plot).to_contain_text(f"{run_id} train")  # the plot's legend: one line a run
            table = page.locator(".block").filter(has_text="Config fields that differ").last
            lr_row = table.get_by_role("row").filter(has_text="learning_rate")
            expect(lr_row).to_contain_text("0.003")
            expect(lr_row).to_contain_text("0.001")
            page.locator(".block").filter(has_text="Loss by tokens seen").last.scroll_into_view_if_needed()
            shot(page, "1-compare")

            # (b) Evaluation → the hardest training rows: the planted row fits worst; a click opens it.
            page.get_by_role("tab", name="Evaluation").click()
            pick(page, "Run", planted_id)
            hardest = page.locator("#hardest")
            expect(hardest).to_contain_text("train.jsonl", timeout=60_000)
            first = hardest.get_by_role("row").nth(1)  # row 0: the header
            expect(first).to_contain_text("train.jsonl")
            assert re.search(rf"\b{PLANTED_ROW}\b", first.inner_text()), first.inner_text()
            hardest.scroll_into_view_if_needed()
            shot(page, "2-hardest")
            first.get_by_text("train.jsonl").click()
            expect(page.get_by_text(f"Opened train.jsonl row {PLANTED_ROW}")).to_be_visible(timeout=120_000)
            expect(page.get_by_text("zxq").first).to_be_visible(timeout=120_000)  # its tokens, trained
            shot(page, "3-dataset-row")

            # A held-out row of the second run, token by token.
            page.get_by_role("tab", name="Evaluation").click()
            page.get_by_role("button", name="Colour this held-out row token by token", exact=True).click()
            heldout = page.locator("#heldout-heatmap")
            expect(heldout.locator(".token-legend")).to_be_visible(timeout=240_000)
            expect(page.get_by_text(re.compile(r"Held-out row 1 of 3"))).to_be_visible()
            assert heldout.locator(".tok").count() > 5
            heldout.scroll_into_view_if_needed()
            shot(page, "4-heldout-heatmap")

            # (c) Playground on the real run: generate, then colour the tuned answer.
            page.get_by_role("tab", name="Playground").click()
            pick(page, "Run", real_id)
            page.get_by_text("Generation settings (shared by both columns)").click()
            tokens = page.get_by_label("number input for max new tokens")
            expect(tokens).to_have_value("128")
            # As tests/test_browser.py: two frames after the accordion mounts, the slider keeps a fill.
            page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
            tokens.fill("24")
            page.get_by_label("Prompt", exact=True).fill(PROMPT)
            page.get_by_role("button", name="Send", exact=True).click()
            expect(page.get_by_text("Done: same prompt")).to_be_visible(timeout=240_000)
            expect(page.locator("#tuned-chat")).to_contain_text(f"Tuned — {real_id}")
            tuned = page.locator("#tuned-chat .message-row").last.inner_text()
            assert IDENTITY.search(tuned), tuned
            page.get_by_text("What changed, token by token").click()
            page.get_by_role("button", name="Colour the tuned answer by how much tuning changed each token").click()
            heat = page.locator("#token-heatmap")
            expect(heat.locator(".token-legend")).to_be_visible(timeout=240_000)
            expect(heat.locator(".diverge-mark")).to_have_count(1)
            expect(heat.locator(".token-legend")).to_contain_text("more likely after tuning")
            expect(page.get_by_text(re.compile(r"the greedy answers part at token \d+")).filter(visible=True)).to_be_visible()
            heat.scroll_into_view_if_needed()
            shot(page, "5-playground-heatmap")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

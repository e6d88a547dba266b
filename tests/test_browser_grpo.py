"""GRPO across the tabs, in headless Chromium, on the embedded SmolLM2-135M-Instruct: the Dataset tab
reads the bundled sums as GRPO prompts (the column the answer reward reads, no row missing it), the Train
tab loads presets/quickstart-grpo.yaml and its plan tries the rewards on sampled answers before any
training, a few steps run and Live plots the reward curves and shows sampled answers with their rewards,
the Playground answers a sum with base and tuned side by side, and the Evaluation tab shows the held-out
answer accuracy, base against tuned. Screenshots go to the test's folder and /tmp/grpo-shots/."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import share_models
from test_app_api import launch_app
from test_browser import CHROMIUM, open_page, pick
from test_browser_preference import generate, set_max_new_tokens

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
STEPS = 3  # a step of the preset (8 answers of at most 16 tokens) takes ~4 s on 2 cores
SUM = "What is 12 + 7? Reply with the number only."


def test_grpo_from_the_dataset_tab_to_the_evaluation_in_the_browser(tmp_path, embedded_model_dir):
    from playwright.sync_api import expect, sync_playwright

    workspace = share_models(tmp_path / "ws", embedded_model_dir)
    proc, url = launch_app(workspace, [], tmp_path / "app.log")
    shots = Path("/tmp/grpo-shots")
    shots.mkdir(exist_ok=True)

    def shot(target, name):
        path = tmp_path / f"{name}.png"
        target.screenshot(path=str(path), **({"full_page": True} if target is page else {}))
        shutil.copy(path, shots / path.name)

    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)

            # Dataset: the bundled sums, read as GRPO prompts with the column the answer reward reads.
            page.get_by_label("path or Hub id").check()
            page.get_by_role("textbox", name=re.compile(r"^Path or Hub id")).fill("demo-arithmetic")
            page.get_by_role("button", name="Inspect dataset", exact=True).click()
            prompts = page.locator("#prompt-view")
            expect(prompts).to_be_visible(timeout=60_000)
            expect(page.get_by_text(re.compile(r"240\*?\*? prompts valid of 240"))).to_be_visible()
            expect(page.get_by_text("reads column answer").first).to_be_visible()
            expect(prompts).to_contain_text("Reply with the number only.")
            shot(page, "1-dataset-prompts")

            # Train: the GRPO preset, a few steps, and the plan's trial of the rewards on sampled answers.
            page.get_by_role("tab", name="Train").click()
            pick(page, "Preset", "quickstart-grpo")
            page.get_by_label("Advanced", exact=True).check()  # every field; each field's elem_id is cfg-<key>
            steps = page.locator("#cfg-max_steps").get_by_role("spinbutton")
            expect(steps).to_have_value("60", timeout=60_000)
            steps.fill(str(STEPS))
            steps.press("Tab")
            page.get_by_role("button", name="Show command", exact=True).click()
            expect(page.get_by_text("presets/quickstart-grpo.yaml").first).to_be_visible()
            expect(page.get_by_text(f"max_steps={STEPS}").first).to_be_visible()
            page.get_by_role("button", name="Plan, checks and estimate", exact=True).click()
            trial = page.get_by_text(re.compile(r"Rewards, tried on 2 prompts before training"))
            expect(trial).to_be_visible(timeout=240_000)
            expect(page.get_by_text(re.compile(r"group mean [\d.]+, spread")).first).to_be_visible()
            expect(page.get_by_text(re.compile(r"\d of 2 groups teach nothing")).first).to_be_visible()
            shot(page, "2-train-reward-trial")
            page.get_by_role("button", name="Start training", exact=True).click()

            # Live: the run ends; the rewards' curves and the answers sampled at the last step.
            progress = page.locator(".run-progress")
            expect(progress).to_contain_text(f"step {STEPS} / {STEPS}", timeout=600_000)
            expect(page.get_by_text("completed", exact=True)).to_be_visible(timeout=300_000)
            objective = page.locator("#live-objective")
            expect(objective).to_contain_text("rewards/answer/mean", timeout=60_000)
            samples = page.locator("#live-samples")
            expect(samples).to_be_visible()
            expect(samples).to_contain_text(f"Sampled answers at step {STEPS}")
            expect(samples).to_contain_text("Reply with the number only.")
            objective.scroll_into_view_if_needed()
            shot(page, "3-live-rewards")
            (run_id,) = [d.name for d in (workspace / "runs").iterdir()]

            # Playground: a sum, base and tuned side by side.
            page.get_by_role("tab", name="Playground").click()
            page.get_by_role("button", name="↻ Refresh", exact=True).first.click()
            pick(page, "Run", run_id)
            set_max_new_tokens(page)
            base, tuned = generate(page, SUM)
            expect(page.locator("#tuned-chat")).to_contain_text(f"Tuned — {run_id}", timeout=60_000)
            print(f"\nGRPO playground: base {base!r}\n                 tuned {tuned!r}")
            assert re.search(r"\d", base) and re.search(r"\d", tuned), (base, tuned)
            shot(page, "4-playground")

            # Evaluation: the end-of-run evaluation asked the 60 held-out sums of base and tuned.
            page.get_by_role("tab", name="Evaluation").click()
            page.get_by_role("button", name="Refresh list", exact=True).click()
            pick(page, "Run", run_id)
            answer_row = page.get_by_role("row").filter(has_text=re.compile(r"^\s*answer\s+60\b"))
            expect(answer_row).to_have_count(1, timeout=60_000)
            shot(page, "5-evaluation-accuracy")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

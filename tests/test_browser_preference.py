"""Votes become a DPO run, in headless Chromium: in the Playground of the real run (the embedded
SmolLM2-135M-Instruct after a few SFT steps, conftest.real_run) generate, vote blind twice with a
winner, open those votes in the Dataset tab as pairs (prompt, chosen and rejected side by side with
their tokens), press "Tune on my votes", find the Train form filled with a DPO run from that run's
adapter, start it for a few steps, see the implicit-reward curves in Live, then compare the DPO
run's answer with the base in the Playground. Screenshots go to the test's folder and /tmp/pref-shots/."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import add_real_run
from test_app_api import PROMPT, launch_app
from test_browser import CHROMIUM, open_page, pick

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
MAX_NEW_TOKENS = 24
DPO_STEPS = 3  # each DPO step of the embedded model takes ~20-60 s on the 2 shared cores
PROMPTS = (PROMPT, "Who made you?")  # identity questions: the tuned answer differs from the base


def generate(page, prompt: str, previous: tuple[str, str] | None = None) -> tuple[str, str]:
    """Both answers to `prompt` as the first turn of a new conversation, once this turn is done: the
    last message of each chat, once they differ from `previous` (the answers this test last read)."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Clear (new conversation)", exact=True).click()
    chats = [page.locator(f"#{side}-chat .message-row") for side in ("base", "tuned")]
    expect(chats[0]).to_have_count(0, timeout=30_000)
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("button", name="Send", exact=True).click()
    done = page.get_by_text("Done: same prompt")
    deadline = time.time() + 300
    while time.time() < deadline:
        expect(done).to_be_visible(timeout=300_000)
        now = [chat.last.inner_text().strip() if chat.count() == 2 else "" for chat in chats]
        if all(now) and now != list(previous or []):
            return now[0], now[1]
        time.sleep(0.5)
    raise AssertionError(f"no new answer to {prompt!r}")


def set_max_new_tokens(page) -> None:
    from playwright.sync_api import expect

    page.get_by_text("Generation settings (shared by both columns)").click()
    tokens = page.get_by_label("number input for max new tokens")
    expect(tokens).to_have_value("128")
    # Two frames after the accordion mounts its children Gradio has put their defaults back
    # (see tests/test_browser.py); a fill after that sticks.
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    tokens.fill(str(MAX_NEW_TOKENS))
    expect(tokens).to_have_value(str(MAX_NEW_TOKENS))


def test_votes_to_a_dpo_run_in_the_browser(tmp_path, real_run, embedded_model_dir):
    from playwright.sync_api import expect, sync_playwright

    workspace = tmp_path / "ws"
    real_id = add_real_run(workspace, real_run, embedded_model_dir)
    proc, url = launch_app(workspace, [], tmp_path / "app.log")
    shots = Path("/tmp/pref-shots")
    shots.mkdir(exist_ok=True)

    def shot(target, name):
        path = tmp_path / f"{name}.png"
        target.screenshot(path=str(path), **({"full_page": True} if target is page else {}))
        shutil.copy(path, shots / path.name)

    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)

            # Playground of the real run: two prompts, each voted blind with a winner (the tuned side).
            page.get_by_role("tab", name="Playground").click()
            pick(page, "Run", real_id)
            set_max_new_tokens(page)
            page.get_by_text("Blind A/B: both models answer a prompt unlabelled").click()
            answers = []
            for n, prompt in enumerate(PROMPTS, start=1):
                # The labelled answers first (greedy: the blind pair repeats them), to know which is tuned.
                base, tuned = generate(page, prompt, answers[-1][1:] if answers else None)
                answers.append((prompt, base, tuned))
                page.get_by_label("Prompt for the blind pair", exact=True).fill(prompt)
                page.get_by_role("button", name="Generate a blind pair", exact=True).click()
                a_box = page.get_by_role("textbox", name="A", exact=True)
                expect(page.get_by_text(f"Prompt: {prompt}")).to_be_visible(timeout=240_000)
                expect(a_box).not_to_have_value("", timeout=30_000)
                winner = "A is better" if a_box.input_value().strip() == tuned else "B is better"
                page.get_by_role("button", name=winner, exact=True).click()
                expect(page.get_by_text(re.compile(rf"tuned wins {n} of {n}")).first).to_be_visible(timeout=30_000)
            print(f"\nvoted: {answers!r}")
            distinct = [a for a in answers if a[1] != a[2]]
            assert distinct, "base and tuned answered the same to every prompt: no pair to learn from"
            shot(page, "1-playground-votes")

            # Dataset: the run's votes as pairs, one side by side with its tokens.
            page.get_by_role("tab", name="Dataset").click()
            page.get_by_label("votes of a run").check()
            pick(page, "Run whose votes to open", real_id)
            page.get_by_role("button", name="Inspect dataset", exact=True).click()
            expect(page.get_by_text(f"votes of run {real_id}")).to_be_visible(timeout=60_000)
            expect(page.get_by_text(re.compile(rf"{len(distinct)} pairs valid"))).to_be_visible()
            expect(page.get_by_text("Token lengths per side")).to_be_visible(timeout=120_000)
            expect(page.get_by_text(re.compile(r"# 1\b.*a pair"))).to_be_visible(timeout=60_000)
            pair_box = page.locator("#pair-view")
            expect(pair_box).to_contain_text(distinct[0][2][:12])  # the chosen (tuned) answer's start
            shot(page, "2-dataset-vote-pairs")
            shot(pair_box, "2b-pair-side-by-side")

            # "Tune on my votes": the Train form holds a DPO run from the real run's adapter.
            page.get_by_role("tab", name="Playground").click()
            page.get_by_text("Teach it: correct the tuned answer, or tune on your votes (DPO)").click()
            page.get_by_role("button", name="Tune on my votes", exact=True).click()
            page.get_by_label("Advanced", exact=True).check()  # every field; each field's elem_id is cfg-<key>
            steps = page.locator("#cfg-max_steps").get_by_role("spinbutton")
            expect(steps).to_be_visible(timeout=60_000)
            steps.fill(str(DPO_STEPS))
            steps.press("Tab")
            page.get_by_role("button", name="Show command", exact=True).click()
            expect(page.get_by_text("objective=dpo").first).to_be_visible()
            expect(page.get_by_text(f"init_from={real_id}").first).to_be_visible()
            expect(page.get_by_text(f"max_steps={DPO_STEPS}").first).to_be_visible()
            shot(page, "3-train-dpo")
            page.get_by_role("button", name="Start training", exact=True).click()

            # Live: the run finishes; the objective's own curves (implicit rewards, margin) are plotted.
            progress = page.locator(".run-progress")
            expect(progress).to_contain_text(f"step {DPO_STEPS} / {DPO_STEPS}", timeout=600_000)
            expect(page.get_by_text("completed", exact=True)).to_be_visible(timeout=300_000)
            objective = page.locator("#live-objective")
            expect(objective).to_be_visible(timeout=60_000)
            expect(objective).to_contain_text("rewards/margins")
            objective.scroll_into_view_if_needed()
            shot(page, "4-live-dpo")
            shot(objective, "4b-reward-curves")
            (dpo_id,) = [d.name for d in (workspace / "runs").iterdir() if d.name != real_id]

            # Playground: the DPO run's answer next to the base's.
            page.get_by_role("tab", name="Playground").click()
            page.get_by_role("button", name="↻ Refresh", exact=True).first.click()
            pick(page, "Run", dpo_id)
            base, tuned = generate(page, PROMPT, answers[-1][1:])
            # the columns are labelled by the run that answered: the DPO run's final adapter
            expect(page.locator("#tuned-chat")).to_contain_text(f"Tuned — {dpo_id}", timeout=60_000)
            print(f"\nafter DPO: base {base!r}\n           tuned {tuned!r}")
            assert tuned and base
            shot(page, "5-playground-dpo")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

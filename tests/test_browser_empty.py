"""A fresh workspace in headless Chromium: Dataset, Runs, Evaluation and Export at 1400 and 800
pixels show empty states that say what to do next, never an error toast or an "Error" badge; an
error the person causes (a path that does not exist) is said in the tab's error box, not as badges
over the outputs. Screenshots go to /tmp/shots/empty_<tab>_<width>.png."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_app_api import launch_app
from test_browser import open_page

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")]
SHOTS = Path("/tmp/shots")
TABS = ("Dataset", "Runs", "Evaluation", "Export")
# What says "something failed" in Gradio 6.31's page: a toast of the error kind, and the status
# tracker's "Error" badge over each output of an event that raised.
ERROR_TOAST = ".toast-body.error"
ERROR_BADGE = "[data-testid='status-tracker'] .error"
EMPTY_TEXT = {"Dataset": "Pick a source and press Inspect dataset.", "Runs": "No runs yet: start one in the Train tab",
              "Evaluation": "No runs yet: start one in Train.", "Export": "No finished run yet"}


def no_errors_shown(page, where: str) -> None:
    toasts = [t.inner_text() for t in page.locator(ERROR_TOAST).all()]
    assert not toasts, f"{where}: error toast {toasts}"
    badges = page.locator(ERROR_BADGE).filter(visible=True).count()
    assert badges == 0, f"{where}: {badges} Error badges"


def test_a_fresh_workspace_shows_no_error_in_any_tab(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
    proc, url = launch_app(tmp_path / "ws", [], tmp_path / "app.log")
    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)
            for width in (1400, 800):
                page.set_viewport_size({"width": width, "height": 1000})
                page.goto(url)
                page.get_by_role("tab", name="Dataset", exact=True).wait_for()
                page.wait_for_timeout(2000)  # the page-load events (pickers, listings, queue) have answered
                for tab in TABS:
                    page.get_by_role("tab", name=tab, exact=True).click()
                    expect(page.get_by_text(EMPTY_TEXT[tab]).filter(visible=True).first).to_be_visible()
                    page.wait_for_timeout(500)
                    no_errors_shown(page, f"{tab} at {width} px")
                    page.screenshot(path=str(SHOTS / f"empty_{tab.lower()}_{width}.png"), full_page=True)

            # An error the person causes: said once, in the tab's box, with no badge over the outputs.
            page.set_viewport_size({"width": 1400, "height": 1000})
            page.get_by_role("tab", name="Dataset", exact=True).click()
            page.get_by_label("path or Hub id").check()
            page.get_by_role("textbox", name=re.compile(r"^Path or Hub id")).fill("missing.jsonl")
            page.get_by_role("button", name="Inspect dataset", exact=True).click()
            box = page.locator(".block.error-box").filter(visible=True)
            expect(box).to_contain_text(re.compile(r"missing\.jsonl.*does not exist"), timeout=60_000)
            # The page's own CSS (tuning/ui/theme.py) is served: the box has its red border.
            red, green, blue = map(int, re.findall(r"\d+", box.first.evaluate(
                "e => getComputedStyle(e).borderTopColor"))[:3])
            assert red > green + 60 and red > blue + 60, (red, green, blue)
            page.wait_for_timeout(1000)  # the steps that follow a failed inspect have answered
            assert page.locator(ERROR_BADGE).filter(visible=True).count() == 0
            page.screenshot(path=str(SHOTS / "empty_dataset_error_box_1400.png"), full_page=True)
            # The next good action hides it.
            page.get_by_label("demo dataset").check()
            page.get_by_role("button", name="Inspect dataset", exact=True).click()
            expect(page.get_by_text("no problems found")).to_be_visible(timeout=60_000)
            expect(box).to_be_hidden()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_one_click_downloads_in_runs_and_export(tmp_path):
    """A finished run: picking it readies its adapter zip on a download button, in the Runs tab and in
    the Export tab; one click saves the zip (no second click on a file link)."""
    import zipfile

    from playwright.sync_api import expect, sync_playwright

    from test_empty_states import with_adapter
    from test_many_runs import make_run
    from tuning import runs

    workspace = tmp_path / "ws"
    run_id = "20260101-000000-finished"
    run = with_adapter(make_run(workspace, run_id))
    runs.write_evaluation(run, {"step": 3, "eval_loss": 1.0, "base_eval_loss": 1.5, "eval_rows": 4})
    proc, url = launch_app(workspace, [], tmp_path / "app.log")
    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)
            page.get_by_role("tab", name="Runs", exact=True).click()
            page.locator("#runs-table").get_by_test_id("cell-0-0").click()  # a row click picks the run
            button = page.get_by_role("button", name="Download adapter", exact=True).filter(visible=True)
            expect(button).to_be_enabled(timeout=60_000)
            with page.expect_download() as got:
                button.click()
            saved = got.value.path()
            assert got.value.suggested_filename == f"{run_id}-adapter.zip"
            with zipfile.ZipFile(saved) as zf:
                assert runs.ADAPTER_WEIGHTS in zf.namelist()

            page.get_by_role("tab", name="Export", exact=True).click()  # the page opened it on the finished run
            button = page.get_by_role("button", name="Download adapter (.zip)", exact=True)
            expect(button).to_be_enabled(timeout=60_000)
            with page.expect_download() as got:
                button.click()
            assert got.value.suggested_filename == f"{run_id}-adapter.zip"
            no_errors_shown(page, "Export with a finished run")
            page.screenshot(path=str(SHOTS / "download_export_1400.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""The Train form: a Simple view of at most 8 fields and an Advanced view of every field once, labelled
for people with ranges as people write them; preset cards that read the measured table; the form and
the picked runs kept by the browser across a reload (the restore handlers called as plain Python, and
once in Chromium)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import gradio as gr
import pytest

import app
from tuning import config as config_mod
from tuning import paths
from tuning import runs
from tuning.ui import train_fields, train_tab
from tuning.ui.common import AppContext
from test_ui_wiring import ended_run


def blocks_under(block) -> list:
    found = []
    for child in getattr(block, "children", []) or []:
        found += [child, *blocks_under(child)]
    return found


def train_parts(tmp_path) -> tuple[gr.Blocks, dict]:
    demo = app.build_demo(tmp_path / "ws")
    (start,) = [f for f in demo.fns.values() if f.name == "do_start"]
    form = start.inputs
    ui = {"form": form, "simple": [b for b in demo.blocks.values() if (b.elem_id or "").startswith("simple-")]}
    (radio,) = [b for b in demo.blocks.values() if isinstance(b, gr.Radio) and b.label == "View"]
    ui["view"] = radio
    return demo, ui


# --- the two views ---------------------------------------------------------------------------------

def test_simple_view_holds_at_most_8_fields_each_a_twin_of_an_advanced_one(tmp_path):
    demo, ui = train_parts(tmp_path)
    simple = {b.elem_id.removeprefix("simple-"): b for b in ui["simple"]}
    assert 0 < len(simple) <= 8
    assert list(simple) == train_tab.SIMPLE_FIELDS
    assert {"base_model", "dataset", "max_steps", "learning_rate", "lora_r", "max_length"} <= set(simple)
    advanced = {b.elem_id.removeprefix("cfg-"): b for b in ui["form"]}
    for name, twin in simple.items():  # the same label, kind and opening value as its Advanced twin
        assert type(twin) is type(advanced[name]) and twin.label == advanced[name].label
        assert twin.value == advanced[name].value, name
    # ...kept equal in the browser both ways: Simple's edits to the twin, any change of the twin back.
    mirrors = {(f.targets[0][1], f.inputs[0]._id, f.outputs[0]._id) for f in demo.fns.values()
               if f.fn is None and f.js and "value" in f.js}
    for name, twin in simple.items():
        assert ("input", twin._id, advanced[name]._id) in mirrors, name
        assert ("change", advanced[name]._id, twin._id) in mirrors, name


def test_every_field_has_a_human_label_and_appears_once_in_advanced(tmp_path):
    demo, ui = train_parts(tmp_path)
    for name, f in config_mod.FIELDS.items():
        label = f.metadata["label"]
        assert label and label != name and "_" not in label, name
    (advanced_view,) = [b for b in demo.blocks.values() if isinstance(b, gr.Column) and b.visible is False
                        and any((c.elem_id or "").startswith("cfg-") for c in blocks_under(b))]
    in_advanced = [c.elem_id.removeprefix("cfg-") for c in blocks_under(advanced_view)
                   if (c.elem_id or "").startswith("cfg-")]
    assert sorted(in_advanced) == sorted(config_mod.FIELDS)  # every field, exactly once
    assert [c.elem_id.removeprefix("cfg-") for c in ui["form"]] == train_tab.FORM_FIELDS
    for widget in ui["form"]:  # the human label, with the config key and the help in the small text
        name = widget.elem_id.removeprefix("cfg-")
        assert widget.label == config_mod.FIELDS[name].metadata["label"]
        assert widget.info.startswith(f"{name} · ")
        assert not re.search(r"\de[+-]0|e\+\d", widget.info), widget.info  # no 2.14748e+09, no 1e-08
    assert len(ui["simple"]) + len(ui["form"]) == len([b for b in demo.blocks.values()
                                                       if re.match(r"(simple|cfg)-", b.elem_id or "")])


def test_numbers_and_ranges_read_as_people_write_them():
    assert train_fields.human_number(2147483647) == "2,147,483,647"
    assert train_fields.human_number(0.9) == "0.9"
    assert train_fields.human_number(1e-8) == "1e-8"
    assert train_fields.human_number(1e-4) == "0.0001"
    assert train_fields.human_number(2.5e-5) == "2.5e-5"
    assert train_fields.human_number(131072) == "131,072"
    assert train_fields.human_number(100.0) == "100"
    assert train_fields.human_number(0.0) == "0"
    assert train_fields.human_number(-1) == "-1"
    assert train_fields.human_number(-0.5) == "-0.5"
    assert train_fields.human_number(1234.5) == "1,234.5"
    assert train_fields.human_range("seed") == "0 to 2,147,483,647"
    assert train_fields.human_range("lora_r") == "1 to 1,024"
    assert train_fields.human_range("lora_dropout") == "0 to 0.9"
    assert train_fields.human_range("learning_rate") == "0 to 1"  # 0 is auto: the recipe's rate
    assert train_fields.human_range("beta") == "0.0001 to 100"
    assert train_fields.human_range("base_model") == ""


@pytest.mark.parametrize("view", train_tab.VIEWS)
def test_form_to_config_round_trip_through_what_the_browser_keeps(view):
    """Whichever view the form was left in, the kept values give back the same config."""
    cfg = config_mod.TrainConfig(lora_r=8, max_steps=17, learning_rate=3e-4, packing=True, method="lora",
                                 save_steps=0, final_evaluation="quick")
    kept = json.loads(json.dumps(train_tab.remember_form(view, "first-run", *train_tab.config_to_form(cfg))))
    restored = train_tab.restore_form(kept)
    assert restored["view"] == view and restored["preset"] == "first-run"
    assert train_tab.form_to_config([restored[n] for n in train_tab.FORM_FIELDS]) == cfg
    assert train_tab.show_view(view)["advanced_view"]["visible"] is (view == "Advanced")
    assert train_tab.show_view(view)["simple_view"]["visible"] is (view == "Simple")


def test_restore_ignores_unknown_stale_and_bad_values():
    kept = {"view": "Sideways", "preset": "quickstart",
            "values": {"max_steps": 17, "lora_r": 5000, "learning_rate": "fast", "packing": "yes",
                       "method": "full", "old_field": 3, "dataset": "my.jsonl", "seed": True}}
    restored = train_tab.restore_form(kept)
    # kept: known, in range, of the field's kind; left out: out of range (5000 > 1,024), the wrong kind,
    # not a choice, a key the config no longer has, an unknown view
    assert restored == {"max_steps": 17, "dataset": "my.jsonl", "preset": "quickstart"}
    assert train_tab.restore_form(None) == {} and train_tab.restore_form("junk") == {}
    assert train_tab.restore_form({"values": [1, 2]}) == {}
    # with the page's context, a preset that is no longer listed (a saved one deleted) is left out
    ctx = AppContext(Path("/nonexistent-ws"))
    assert train_tab.restore_form({"preset": "saved: gone", "values": {}}, ctx) == {}
    assert train_tab.restore_form({"preset": "quickstart", "values": {}}, ctx) == {"preset": "quickstart"}


def test_the_form_is_restored_on_page_load_from_the_browser_state(tmp_path):
    demo, ui = train_parts(tmp_path)
    (load,) = [f for f in demo.fns.values() if f.name == "restore_form"]
    assert any(t[1] == "load" for t in load.targets) and isinstance(load.inputs[0], gr.BrowserState)
    updates = load.fn({"view": "Advanced", "values": {"max_steps": 17, "nope": 1}})
    by_key = {(c.elem_id or getattr(c, "label", "")): v for c, v in updates.items()}
    assert by_key == {"cfg-max_steps": 17, "View": "Advanced"}
    assert load.fn() is not None  # nothing kept (a first visit): a skip, no error
    (remember,) = [f for f in demo.fns.values() if f.name == "remember_form"]
    assert remember.outputs == load.inputs  # the same browser state is written and read
    assert {t[1] for t in remember.targets} == {"change"} and len(remember.targets) == len(ui["form"]) + 2


# --- preset cards ------------------------------------------------------------------------------------

def test_a_preset_card_reads_the_measured_table(tmp_path, monkeypatch):
    table = tmp_path / "measured.json"
    table.write_text(json.dumps({"presets": {"first-run": {"wall_s": 161.4, "peak_rss_gib": 1.62,
                                                           "machine": "2 CPU cores, no GPU"}}}))
    monkeypatch.setattr(train_tab, "MEASURED_TABLE", table)
    listed = train_tab.preset_cards(AppContext(tmp_path / "ws"))
    assert listed[0][0] == "first-run"  # measured here: first
    cards = dict(listed)
    assert "2 min 41 s" in cards["first-run"] and "1.62 GiB" in cards["first-run"]
    assert "2 CPU cores, no GPU" in cards["first-run"]
    assert "Not measured here." in cards["quickstart"]  # no row for it
    assert "learns the demo identity" in cards["quickstart"]  # what it is for, from its header
    assert set(cards) == {p.stem for p in paths.PRESETS_DIR.glob("*.yaml")}
    busy = {"wall_s": 400, "peak_rss_gib": 1.9, "machine": "2 CPU cores, no GPU", "cores": 2, "load": 6.5}
    table.write_text(json.dumps({"presets": {"quickstart": busy}}))
    assert "busy then: load 6.5 on 2 cores" in dict(train_tab.preset_cards(AppContext(tmp_path / "ws")))["quickstart"]
    table.write_text("{not json")
    assert train_tab.measured_table() == {}


def test_the_bench_reads_what_usr_bin_time_reports():
    """bench/preset_table.py's rows come from /usr/bin/time -v (lines of a real report)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("preset_table", paths.PROJECT_DIR / "bench" / "preset_table.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = ("\tCommand being timed: \"python -m tuning train --preset presets/first-run.yaml\"\n"
              "\tElapsed (wall clock) time (h:mm:ss or m:ss): 51:54.06\n"
              "\tMaximum resident set size (kbytes): 1936124\n")
    assert bench.parse_time(report) == (3114.06, 1936124)
    assert bench.parse_time(report.replace("51:54.06", "1:02:03.5"))[0] == 3723.5
    assert bench.TABLE == train_tab.MEASURED_TABLE  # the bench writes the table the cards read


def test_the_simple_view_opens_on_the_first_run_on_a_cpu(monkeypatch):
    monkeypatch.setattr(train_tab, "opening_preset", lambda: "quickstart")
    assert train_tab.simple_opening_preset() == "first-run"
    monkeypatch.setattr(train_tab, "opening_preset", lambda: "qwen2.5-3b-qlora-16gb")
    assert train_tab.simple_opening_preset() == "qwen2.5-3b-qlora-16gb"


def test_a_card_fills_the_preset_list_and_the_form(tmp_path):
    out = train_tab.use_preset(AppContext(tmp_path / "ws"), "first-run")
    assert out["preset"] == "first-run"
    assert out["max_steps"] == config_mod.load(paths.PRESETS_DIR / "first-run.yaml").max_steps


# --- the picked runs -------------------------------------------------------------------------------

def test_a_reload_opens_the_runs_this_browser_picked_while_they_exist(tmp_path):
    ws = tmp_path / "ws"
    for run_id in ("r1", "r2", "r3"):
        ended_run(ws, run_id)
    demo = app.build_demo(ws)
    (load,) = [f for f in demo.fns.values() if f.name == "fresh_page"]
    assert isinstance(load.inputs[0], gr.BrowserState)
    live, play, evaluation, export, runs_listing, runs_picker = load.outputs[:6]
    kept = {"live": "r1", "playground": "gone", "evaluation": "r2", "runs": "r1", "stale-tab": "r1"}
    updates = load.fn(kept)
    assert updates[live]["value"] == "r1"
    assert updates[play]["value"] == "r3"  # a deleted run: today's default (the newest)
    assert updates[evaluation]["value"] == "r2"
    assert updates[export]["value"] is None  # no finished adapter: nothing offered, as without a pick
    assert updates[runs_picker]["value"] == "r1"
    assert load.fn()[live]["value"] == load.fn("junk")[live]["value"] == "r3"
    # a pick is remembered per tab, and the other tabs' picks stay
    assert app.remember_pick("live", {"playground": "r2"}, "r3") == {"playground": "r2", "live": "r3"}
    assert app.remember_pick("live", None, None) == {}
    remembers = [f for f in demo.fns.values() if f.name == "remember_pick"]
    assert len(remembers) == 5 and all(f.outputs == [load.inputs[0]] for f in remembers)


def test_start_followed_into_live_is_remembered(tmp_path):
    ws = tmp_path / "ws"
    ended_run(ws, "r1")
    demo = app.build_demo(ws)
    (follow,) = [f for f in demo.fns.values() if f.name == "follow_started"]
    updates = follow.fn("r1", None, {"export": "r0"})
    (kept,) = [v for c, v in updates.items() if isinstance(c, gr.BrowserState)]
    assert kept == {"export": "r0", "live": "r1"}


def test_the_status_tracker_says_complete_not_its_translation_key():
    """Gradio 6.31's status tracker announces i18n("common.complete"), missing from its English strings."""
    assert app.I18N.translations_dict["en"]["common.complete"] == "Complete"


# --- in the browser --------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")
def test_steps_and_the_view_survive_a_reload_in_the_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from test_app_api import launch_app
    from test_browser import open_page

    proc, url = launch_app(tmp_path / "ws", [], tmp_path / "app.log")
    shots = Path("/tmp/shots")
    shots.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser, page = open_page(p, url)
            page.get_by_role("tab", name="Train").click()
            steps = page.locator("#simple-max_steps input")
            expect(steps).to_be_visible()
            steps.fill("17")
            steps.press("Tab")
            page.get_by_label("Advanced", exact=True).check()
            advanced = page.locator("#cfg-max_steps input")
            expect(advanced).to_have_value("17")  # the twin holds the same value
            page.wait_for_timeout(2000)  # the browser state is written after the change
            page.reload()
            page.get_by_role("tab", name="Train").click()
            expect(page.locator("#cfg-max_steps input")).to_have_value("17", timeout=60_000)
            expect(page.locator("#simple-max_steps input")).to_be_hidden()  # still in the Advanced view
            page.get_by_label("Simple", exact=True).check()
            expect(page.locator("#simple-max_steps input")).to_have_value("17")
            # a finished event is announced in words (Gradio 6.31 alone says "common.complete")
            page.get_by_role("button", name="Show command", exact=True).click()
            announced = set()
            for _ in range(80):
                announced |= set(page.evaluate(
                    "() => [...document.querySelectorAll('[role=status]')].map(e => e.textContent.trim())"))
                page.wait_for_timeout(100)
            assert "Complete" in announced and "common.complete" not in announced, announced
            for width in (1400, 800):
                page.set_viewport_size({"width": width, "height": 1000})
                for view in train_tab.VIEWS:
                    page.get_by_label(view, exact=True).check()
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(shots / f"train_{view.lower()}_{width}.png"), full_page=True)
                    # no label cut off: each label's text fits its box, and each field is wide enough
                    # that a label wraps between words, never a word a line
                    labels = page.evaluate("""() => [...document.querySelectorAll('[data-testid="block-info"]')]
                        .filter(e => e.offsetParent).map(e => [e.textContent, e.scrollWidth - e.clientWidth])""")
                    assert len(labels) >= len(train_tab.SIMPLE_FIELDS), (width, view, labels)
                    assert not [text for text, over in labels if over > 1], (width, view, labels)
                    narrow = page.evaluate("""() => [...document.querySelectorAll('[id^="cfg-"], [id^="simple-"]')]
                        .filter(e => e.offsetParent && e.offsetWidth < 250).map(e => [e.id, e.offsetWidth])""")
                    assert not narrow, (width, view, narrow)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_bundled_table_has_what_a_card_reads():
    rows = train_tab.measured_table()
    assert "first-run" in rows  # measured with bench/preset_table.py
    for name, row in rows.items():
        assert (paths.PRESETS_DIR / f"{name}.yaml").is_file(), name
        assert row["wall_s"] > 0 and row["peak_rss_gib"] > 0 and row["machine"], name
        assert row["command"].startswith("/usr/bin/time -v python -m tuning train --preset presets/"), name

"""Outputs before their input exists, and errors a person caused, without a browser.

Every handler the Dataset, Runs, Evaluation and Export tabs run on a page load or a picker change,
called as plain Python with nothing picked, returns an empty state saying what to do next and
raises nothing. An error the person did cause goes to the tab's one error box (common.boxed), and
the results it no longer describes are emptied: a failed upload leaves no table of the previous
dataset on screen. tests/test_browser_empty.py sees the same in Chromium."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import gradio as gr
import pytest

from tuning import runs
from tuning.ui import common, dataset_tab, evaluation_tab, export_tab, runs_tab
from tuning.ui.common import AppContext

from test_many_runs import make_run


@pytest.fixture
def ctx(tmp_path) -> AppContext:
    return AppContext(tmp_path / "ws")


def with_adapter(run: Path) -> Path:
    (run / "adapter").mkdir()
    (run / "adapter" / runs.ADAPTER_WEIGHTS).write_bytes(b"weights")
    (run / "adapter" / runs.ADAPTER_CONFIG).write_text("{}")
    return run


# --- the Evaluation tab ----------------------------------------------------------------------------

def test_evaluation_with_no_run_picked_shows_what_to_do(ctx):
    shown = evaluation_tab.load_run(ctx, None)
    assert set(shown) == set(evaluation_tab.SHOWN)  # every output the picker's change updates
    assert shown["verdict"] == common.NO_RUNS and "Train" in shown["verdict"]  # a fresh workspace
    assert shown["losses"] == [] and shown["checks"] == [] and shown["probes"] == []
    assert shown["hardest"] == [] and shown["went_up"] == [] and shown["pair"] is None
    assert shown["final_choice"]["value"] == "final" and shown["final_choice"]["choices"] == ["final"]
    assert evaluation_tab.load_run(ctx, "")["verdict"] == shown["verdict"]
    assert shown["step"].interactive is False  # the checkpoint slider waits for a run
    assert evaluation_tab.gallery(ctx, None, 0) == ("", [])
    assert evaluation_tab.gallery_shown(ctx, "", None) == {"step_label": "", "probes": []}
    assert evaluation_tab.examples(ctx, None) == {"hardest": [], "went_up": [], "examples_note": ""}
    assert evaluation_tab.checkpoint_options(ctx, None)["choice_note"] == ""
    assert evaluation_tab.reload_shown(ctx, None) == {}
    assert evaluation_tab.refreshed(ctx, None)["value"] is None
    # With runs in the workspace, the empty state says to pick one instead.
    make_run(ctx.workspace, "20260101-000000-a")
    assert evaluation_tab.load_run(ctx, None)["verdict"].startswith("Pick a run above")


def test_evaluation_without_results_says_when_they_come(ctx):
    with_adapter(make_run(ctx.workspace, "20260101-000000-a"))
    text = evaluation_tab.load_run(ctx, "20260101-000000-a")["verdict"]
    assert text == evaluation_tab.NO_EVALUATION and "end of training" in text and "**Evaluate**" in text


def test_the_evaluation_picker_opens_on_the_newest_evaluated_run(ctx):
    old = with_adapter(make_run(ctx.workspace, "20260101-000000-old"))
    runs.write_evaluation(old, {"step": 3, "eval_loss": 1.0, "base_eval_loss": 1.5, "eval_rows": 4})
    with_adapter(make_run(ctx.workspace, "20260102-000000-evaluated-later"))  # newer, not evaluated
    picker = evaluation_tab.refreshed(ctx, None)
    assert picker["choices"][0] == "20260102-000000-evaluated-later"
    assert picker["value"] == "20260101-000000-old"
    assert evaluation_tab.refreshed(ctx, "20260102-000000-evaluated-later")["value"] == "20260102-000000-evaluated-later"


# --- the Export tab --------------------------------------------------------------------------------

def test_export_with_no_run_picked_waits(ctx):
    assert export_tab.card_preview(ctx, None) == export_tab.NO_FINISHED_RUN and "Train" in export_tab.NO_FINISHED_RUN
    ready = export_tab.download_adapter(ctx, None)
    assert ready["status"] == "" and ready["zip_file"]["value"] is None and ready["zip_file"]["interactive"] is False
    assert export_tab.refreshed(ctx, None)["value"] is None
    assert export_tab.picked_for_owner(ctx, None) == {"owner_run": None}
    with_adapter(make_run(ctx.workspace, "20260101-000000-a"))
    assert export_tab.card_preview(ctx, "").startswith("Pick a finished run")
    assert export_tab.refreshed(ctx, None)["value"] == "20260101-000000-a"  # opens on the newest finished run


# --- the Runs tab ----------------------------------------------------------------------------------

def test_runs_with_no_runs_and_no_queue(ctx):
    empty = runs_tab.listing(ctx)
    assert empty["value"] == [] and empty["label"] == "No runs yet: start one in the Train tab"
    assert runs_tab.zip_shown(ctx, None)["zip"]["interactive"] is False
    assert runs_tab.picked_for_owner(ctx, None) == {"owner_run": None}
    shown = runs_tab.queue_refreshed(ctx, None)
    assert shown["queue"]["value"] == [] and "starts next" not in shown["queue"]["label"]
    assert runs_tab.queue_label(2) == "Queued runs: 2 (1 starts next)"
    make_run(ctx.workspace, "20260101-000000-a")  # no final adapter: the button says so
    assert runs_tab.zip_shown(ctx, "20260101-000000-a")["zip"]["label"] == "Download adapter (none yet)"
    assert runs_tab.listing(ctx)["label"] == "Runs in the workspace"


def test_the_queue_table_follows_its_file(ctx, tiny_config):
    from tuning.runs import runner

    first = runs_tab.queue_ticked(ctx, None)
    assert first["queue"]["value"] == [] and first["queue_seen"] == []
    assert runs_tab.queue_ticked(ctx, first["queue_seen"]) == {}  # nothing changed: nothing sent
    ctx.workspace.mkdir(parents=True, exist_ok=True)
    (entry,) = runner.enqueue(ctx.workspace, [tiny_config])  # as Queue it in the Train tab does
    ticked = runs_tab.queue_ticked(ctx, first["queue_seen"])
    assert [r[1] for r in ticked["queue"]["value"]] == [entry["id"]]
    assert ticked["queue"]["label"] == "Queued runs: 1 (1 starts next)"
    assert runs_tab.queue_ticked(ctx, ticked["queue_seen"], entry["id"]) == {}


# --- the Dataset tab -------------------------------------------------------------------------------

def test_dataset_steps_before_an_inspect_show_empty_states(ctx):
    (counted,) = list(dataset_tab.statistics_handler(ctx, "", "auto", "", "", 512, True))
    assert counted["stats"] == dataset_tab.NO_STATISTICS and counted["findings"] == []
    assert dataset_tab.token_view_handler(ctx, "", "auto", 1, "", 512) == []
    assert dataset_tab.page_handler("", "auto", 1) == {"preview": [], "page": 1, "pages": "of 1"}
    assert dataset_tab.show_pair(ctx, "", "", 1, "", 512) == {}
    assert dataset_tab.open_row(ctx, None, "", 512) == {}


# --- the error box ---------------------------------------------------------------------------------

def test_boxed_shows_the_message_and_clears_what_it_no_longer_describes():
    def fails(name):
        raise runs.RunError(f"no run {name!r}")

    out = common.boxed(fails, {"table": []})("x")
    assert out["table"] == [] and out["error"]["visible"] is True and "no run 'x'" in out["error"]["value"]
    assert common.boxed(lambda: {"table": [[1]]})() == {"table": [[1]], "error": common.box_hidden()}
    assert common.boxed(lambda: {"table": [[1]]}, hides=False)() == {"table": [[1]]}  # a later step keeps the box
    # Something unexpected: one readable line (the traceback goes to the log), never a stack trace.
    broken = common.boxed(lambda: {}[0])()
    assert broken["error"]["value"].startswith("**Could not do that:** Something went wrong (KeyError")


def _by_name(demo, outputs: dict) -> dict:
    """An event's outputs keyed by what tests can name: 'box', or a component's label."""
    named = {}
    for block, value in outputs.items():
        key = "box" if "error-box" in (block.elem_classes or []) else getattr(block, "label", None) or block._id
        named[key] = value
    return named


def test_a_failed_upload_shows_the_box_and_clears_the_previous_dataset(tmp_path, monkeypatch):
    """The Dataset tab as wired: a good inspect, then an upload that cannot be read. The box names the
    file and the columns; the preview, problems and summary of the previous dataset are emptied and
    the statistics that follow show their empty state; the Train form keeps the last good dataset.
    The next good inspect hides the box."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setattr("gradio.utils.get_upload_folder", lambda: str(uploads))
    ctx = AppContext(tmp_path / "ws")
    with gr.Blocks() as demo:
        parts = dataset_tab.build(ctx)
    inspect = next(f.fn for f in demo.fns.values() if f.api_name == "inspect_dataset_form")
    preview_label = "Normalized conversations (click a row to see its tokens)"

    good = _by_name(demo, inspect(dataset_tab.SOURCES[0], None, "", "auto", "", None))
    assert good["box"]["visible"] is False and len(good[preview_label]) == dataset_tab.PAGE_SIZE
    assert "demo" in [v for v in good.values() if isinstance(v, str)]  # the source the views describe

    odd = uploads / "odd.csv"
    with odd.open("w", newline="") as f:
        csv.writer(f).writerows([["q", "a"], ["Who are you?", "Quill."]])
    outputs = inspect(dataset_tab.SOURCES[1], str(odd), "", "auto", "", None)
    bad = _by_name(demo, outputs)
    assert bad["box"]["visible"] is True and "odd.csv" in bad["box"]["value"] and "q" in bad["box"]["value"]
    assert bad[preview_label] == [] and bad["Validation problems"] == []
    assert dataset_tab.NOTHING_INSPECTED in bad.values()  # the summary of the previous dataset is gone
    assert outputs.get(parts.dataset, "untouched") == "untouched"  # the Train form keeps the demo
    source = [block for block in outputs if isinstance(block, gr.State) and outputs[block] == ""]
    assert source, "the views' source is emptied, so the steps that follow show empty states"

    count = next(f.fn for f in demo.fns.values() if f.name == "statistics_handler")
    (stats,) = [_by_name(demo, step) for step in count("", "auto", "", "", 512, True)]
    assert "box" not in stats  # a step after the failed inspect leaves its box on screen
    assert dataset_tab.NO_STATISTICS in stats.values()
    assert stats["Token lengths (red: longer than max_length, cut)"]["visible"] is False  # no histogram left over

    again = _by_name(demo, inspect(dataset_tab.SOURCES[0], None, "", "auto", "", None))
    assert again["box"]["visible"] is False and len(again[preview_label]) == dataset_tab.PAGE_SIZE
    json.dumps(str(again))  # plain values only


def test_a_bad_form_value_shows_the_train_tabs_box_and_clears_the_old_estimate(tmp_path):
    """The Train tab as wired: an estimate of the preset, then an estimate and a Start with a learning
    rate typed as text. The box names the key and stays; the estimate that described the form before
    is emptied; no run starts. The next good estimate hides the box."""
    from tuning.ui import train_tab

    ctx = AppContext(tmp_path / "ws")
    with gr.Blocks() as demo:
        train_tab.build(ctx)
    fns = {f.name: f.fn for f in demo.fns.values()}
    values = train_tab.config_to_form(train_tab.load_preset(ctx, "first-run"))
    bad = list(values)
    bad[train_tab.FORM_FIELDS.index("learning_rate")] = "fast"

    good = _by_name(demo, fns["do_estimate"](*values))
    assert good["box"]["visible"] is False and "Estimate" in next(v for k, v in good.items() if k != "box")
    failed = _by_name(demo, fns["do_estimate"](*bad))
    assert failed["box"]["visible"] is True and "learning_rate" in failed["box"]["value"]
    assert "" in failed.values()  # the old estimate is gone
    started = _by_name(demo, fns["do_start"](*bad))
    assert started["box"]["visible"] is True and "learning_rate" in started["box"]["value"]
    assert not (ctx.workspace / "runs").exists() or not list((ctx.workspace / "runs").iterdir())
    assert _by_name(demo, fns["do_estimate"](*values))["box"]["visible"] is False


def test_stop_and_resume_that_cannot_be_done_say_so_in_the_live_tabs_box(ctx):
    """Live as wired: Stop on a run that has ended and Resume on a completed one are the person's
    errors, said in the tab's box (not a toast that fades); no run picked says what to do."""
    from tuning.ui import live_tab

    from tuning.runs.events import EventLog

    done = make_run(ctx.workspace, "20260101-000000-done")
    EventLog(runs.events_path(done)).append("end", status=runs.COMPLETED, step=3, max_steps=3)
    with gr.Blocks() as demo:
        live_tab.build(ctx)
    fns = {f.name: f.fn for f in demo.fns.values()}
    for name, run_id, said in (("do_stop", "20260101-000000-done", "is not running"),
                               ("do_resume", "20260101-000000-done", "already completed"),
                               ("do_stop", None, "pick a run first")):
        shown = _by_name(demo, fns[name](run_id))
        assert shown["box"]["visible"] is True and said in shown["box"]["value"], (name, shown)


def test_playground_buttons_without_a_run_say_so_in_the_tabs_box(ctx):
    """The Playground as wired: the colouring, the probe table, saving probes and tuning on votes,
    pressed with nothing to work on, say what to do in the tab's box (no exception, no toast alone)."""
    from tuning.ui import playground_tab

    with gr.Blocks() as demo:
        playground_tab.build(ctx)
    fns = {f.name: (f.fn, len(f.inputs)) for f in demo.fns.values()}
    for name, said in (("token_heatmap", "run"), ("probe_table", "at least one prompt"), ("save_probes", "run"),
                       ("tune_on_votes", "run")):
        fn, n = fns[name]
        shown = _by_name(demo, fn(*[None] * n))
        assert shown["box"]["visible"] is True and said in shown["box"]["value"], (name, shown)


# --- the page as wired -----------------------------------------------------------------------------

def test_nothing_a_fresh_page_runs_by_itself_fails(tmp_path):
    """Every event the page runs without a click (a page load, a timer tick, a change of a picker or a
    state in the four tabs), called as the page calls it with nothing picked on a fresh workspace:
    none raises (Gradio would put "Error" badges on its outputs) and none opens an error box."""
    import app

    demo = app.build_demo(tmp_path / "ws")

    def tab_of(block):
        while block is not None and not isinstance(block, gr.Tab):
            block = block.parent
        return block.label if block is not None else None

    called = set()
    for fn in demo.fns.values():
        triggers = [(demo.blocks.get(i) if i is not None else None, event) for i, event in fn.targets]
        if not any(event in ("load", "tick") or (event == "change" and tab_of(block) in TAB_NAMES)
                   for block, event in triggers):
            continue
        out = fn.fn(*[None] * len(fn.inputs))
        boxes = [value for block, value in (out.items() if isinstance(out, dict) else ())
                 if "error-box" in (getattr(block, "elem_classes", None) or [])]
        assert all(not (isinstance(v, dict) and v.get("visible")) for v in boxes), (fn.name, boxes)
        called.add(fn.name)
    assert {"load_run", "examples", "picked_for_owner", "zip_shown", "download_adapter", "card_preview",
            "queue_refreshed", "queue_ticked", "open_row", "fresh_page"} <= called


TAB_NAMES = ("Dataset", "Runs", "Evaluation", "Export")


def test_served_copies_expire(tmp_path, monkeypatch):
    """A download readied at every pick fills no disk: copies older than DOWNLOAD_TTL_S go."""
    import os
    import time

    served = tmp_path / "served"
    monkeypatch.setattr("gradio.utils.get_upload_folder", lambda: str(served))
    source = tmp_path / "adapter.zip"
    source.write_bytes(b"zip")
    first = Path(common.served_copy(source))
    old = time.time() - common.DOWNLOAD_TTL_S - 60
    os.utime(first.parent, (old, old))
    second = Path(common.served_copy(source))
    assert second.read_bytes() == b"zip" and second.parent != first.parent
    assert not first.parent.exists() and [p.name for p in served.iterdir()] == [second.parent.name]


def test_served_copies_expire_on_a_schedule_too(tmp_path, monkeypatch):
    """Copies nobody asks for again still go: app.py prunes them on a schedule, not only at a new copy."""
    import os
    import time

    import app

    served = tmp_path / "served"
    old = served / "download-old"
    old.mkdir(parents=True)
    (old / "adapter.zip").write_bytes(b"zip")
    stale = time.time() - common.DOWNLOAD_TTL_S - 60
    os.utime(old, (stale, stale))
    monkeypatch.setattr("gradio.utils.get_upload_folder", lambda: str(served))
    stop = app.prune_on_schedule(every_s=0.05)
    try:
        deadline = time.time() + 10
        while old.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert not old.exists()
    finally:
        stop.set()

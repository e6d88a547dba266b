"""What app.py wires between the tabs, called without a browser: the Evaluation and Export tabs are
on the page; on a Space, starting, stopping, resuming and deleting runs is refused without a login
or the Space's password while the Playground stays open; the Live tab and the Runs table show the
base-vs-tuned evaluation; the Playground saves edited probe prompts to the run."""

import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio.context import LocalContext

import app
from tuning import config as config_mod
from tuning.evaluation import evaluate
from tuning import runs
from tuning.ship import space
from tuning.runs import listing
from tuning.runs.events import EventLog
from tuning.ui import access, live_tab, playground_tab, runs_tab
from tuning.ui.common import AppContext

EVALUATION = {
    "step": 40, "eval_rows": 4, "method": "lora", "max_new_tokens": 8, "checks_complete": True,
    "eval_loss": 0.5, "base_eval_loss": 2.0, "perplexity": 1.6487, "base_perplexity": 7.389,
    "checks": {"by_kind": evaluate.summarize_checks([
        {"kind": "identity", "base_pass": False, "tuned_pass": True},
        {"kind": "identity", "base_pass": False, "tuned_pass": True},
        {"kind": "control", "base_pass": True, "tuned_pass": True},
        {"kind": "control", "base_pass": True, "tuned_pass": False}])}}


def ended_run(ws: Path, run_id: str = "r1", evaluation: dict | None = EVALUATION) -> Path:
    path = runs.run_dir(ws, run_id)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(config_mod.TrainConfig().to_yaml())
    log = EventLog(path / "events.jsonl")
    log.append("start", step=0, max_steps=40)
    log.append("log", step=40, max_steps=40, loss=0.6, learning_rate=1e-4)
    log.append("eval", step=40, max_steps=40, eval_loss=0.5)
    if evaluation:
        (path / "evaluation.json").write_text(json.dumps(evaluation))
    log.append("end", status="completed", step=40, max_steps=40, loss=0.6, eval_loss=0.5, base_eval_loss=2.0)
    return path


def space_settings(tmp_path, **env) -> space.SpaceSettings:
    return space.space_settings({"SPACE_ID": "owner/space", **env}, data_dir=tmp_path / "no-data",
                                workspace=tmp_path / "ws")


def handlers(demo: gr.Blocks) -> dict:
    return {f.name: f.fn for f in demo.fns.values() if f.fn is not None}


def api_names(demo: gr.Blocks) -> set:
    return {f.api_name for f in demo.fns.values()}


def components(demo: gr.Blocks, kind) -> list:
    return [b for b in demo.blocks.values() if isinstance(b, kind)]


# --- the page ------------------------------------------------------------------------------------

def test_evaluation_and_export_tabs_are_on_the_page(tmp_path):
    demo = app.build_demo(tmp_path / "ws")
    labels = [t.label for t in components(demo, gr.Tab)]
    assert labels == ["Dataset", "Train", "Live", "Playground", "Runs", "Evaluation", "Export"]
    assert {"evaluate_run", "eval_load", "ab_next"} <= api_names(demo)  # the Evaluation tab's events
    assert {"download_adapter", "merge", "gguf", "push"} <= set(handlers(demo))  # the Export tab's
    # Off a Space nobody is asked to sign in or unlock.
    assert not components(demo, gr.LoginButton) and "unlock" not in api_names(demo)


# --- Space mode ----------------------------------------------------------------------------------

def test_on_a_space_training_needs_the_password_and_the_playground_does_not(tmp_path):
    settings = space_settings(tmp_path, TUNING_AUTH="s3cret")
    demo = app.build_demo(tmp_path / "ws", settings=settings)
    assert not components(demo, gr.LoginButton)  # no OAuth configured: a LoginButton would fail at launch
    assert any(t.label == "Space password (to train)" for t in components(demo, gr.Textbox))
    fns = handlers(demo)
    visitor = SimpleNamespace(session_hash="visitor", request=None)
    token = LocalContext.request.set(visitor)
    try:
        for name in ("do_stop", "do_resume", "stop_api", "resume_api", "delete_api", "save_probes",
                     "evaluate_run"):
            args = ("",) * (2 if name in ("save_probes", "evaluate_run") else 1)
            with pytest.raises(gr.Error, match="enter the Space's password") as refused:
                fns[name](*args)
            assert "s3cret" not in str(refused.value)
        with pytest.raises(gr.Error, match="enter the Space's password"):
            fns["start_api"]("quickstart", "")
        # The Playground is open to the same visitor: the handler runs (and asks for a run).
        with pytest.raises(gr.Error, match="pick a run first"):
            fns["generate_api"]("", "Who are you?")
        # A wrong password unlocks nothing; the right one unlocks this session only. Either way the
        # password box is emptied, so the password stays in no output.
        # Only an unlocked browser gets the upload pass (tuning/ui/upload_gate.py).
        message, box, upload_pass = fns["do_unlock"]("wrong", visitor)
        assert message.startswith("**Not unlocked") and box == "" and upload_pass == ""
        message, box, upload_pass = fns["do_unlock"]("s3cret", visitor)
        assert message.startswith("Unlocked") and box == "" and len(upload_pass) >= 40
        # past the gate: the handler itself answers, in the Live tab's error box
        assert "pick a run first" in str(fns["do_stop"](""))
        with pytest.raises(gr.Error, match="no run 'missing-run'"):
            fns["delete_api"]("missing-run")
    finally:
        LocalContext.request.reset(token)
    other = SimpleNamespace(session_hash="someone-else", request=None)
    with pytest.raises(gr.Error, match="password"):
        access.require_owner(AppContext(tmp_path / "ws", settings=settings), other)


def test_space_oauth_owner_may_train_others_may_not(tmp_path, monkeypatch):
    # What a real Space with `hf_oauth: true` gives gradio: SPACE_ID and the OAuth app's settings.
    # (Off a Space, gradio mocks the login with the machine's own HF token, which CI does not have.)
    import gradio.oauth
    monkeypatch.setattr(gradio.oauth, "get_space", lambda: "owner/dashboard")
    for name, value in {"OAUTH_CLIENT_ID": "x", "OAUTH_CLIENT_SECRET": "s", "OAUTH_SCOPES": "openid profile",
                        "OPENID_PROVIDER_URL": "https://huggingface.co"}.items():
        monkeypatch.setattr(gradio.oauth, name, value)
    settings = space_settings(tmp_path, OAUTH_CLIENT_ID="x", SPACE_AUTHOR_NAME="owner")
    ctx = AppContext(tmp_path / "ws", settings=settings)
    assert access.owner_refusal(ctx, {"preferred_username": "owner"}) is None
    refusal = access.owner_refusal(ctx, {"preferred_username": "stranger"})
    assert "stranger" in refusal and "Playground" in refusal
    assert "sign in with Hugging Face" in access.owner_refusal(ctx, None)
    if app.oauth_installed():  # gradio's oauth extra; without it the page offers no sign-in
        demo = app.build_demo(tmp_path / "ws", settings=settings)
        assert len(components(demo, gr.LoginButton)) == 1 and "unlock" not in api_names(demo)


def test_a_space_without_any_auth_says_training_is_disabled(tmp_path):
    demo = app.build_demo(tmp_path / "ws", settings=space_settings(tmp_path))
    texts = [m.value for m in components(demo, gr.Markdown) if isinstance(m.value, str)]
    assert any("Training is disabled on this Space" in t for t in texts)


def test_off_a_space_everything_is_allowed(tmp_path):
    ctx = AppContext(tmp_path / "ws", settings=space.space_settings({}, data_dir=tmp_path / "no"))
    access.require_owner(ctx, SimpleNamespace(session_hash="x"))  # no exception


def test_a_plain_password_in_tuning_auth_does_not_stop_the_app_on_a_space(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "owner/space")
    monkeypatch.setenv("TUNING_AUTH", "just-a-password")
    kwargs = space.launch_kwargs(app.parse_args([]))
    assert kwargs["auth"] is None and kwargs["server_name"] == "0.0.0.0" and not kwargs["share"]


def test_space_unlock_through_the_api(tmp_path):
    """The real app on a 'Space': an API client is refused, unlocks with the password, and is let through."""
    from gradio_client import Client

    from test_app_api import launch_app

    proc, url = launch_app(tmp_path / "ws", [], tmp_path / "app.log",
                           {"SPACE_ID": "owner/space", "TUNING_AUTH": "s3cret-space-pass"})
    try:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="enter the Space's password"):
            client.predict("missing-run", api_name="/delete_run")
        message, box, upload_pass = client.predict("s3cret-space-pass", api_name="/unlock")
        assert message.startswith("Unlocked") and box == "" and len(upload_pass) >= 40
        assert "unlock" not in str(client.view_api(print_info=False, return_format="dict"))  # listed nowhere
        with pytest.raises(Exception) as err:  # past the gate: the run itself is missing
            client.predict("missing-run", api_name="/delete_run")
        assert "password" not in str(err.value) and "no run 'missing-run'" in str(err.value)
        with pytest.raises(Exception, match="enter the Space's password"):  # another client: still locked
            Client(url, verbose=False).predict("missing-run", api_name="/delete_run")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- evaluation numbers in Live and Runs ---------------------------------------------------------

def test_live_shows_base_vs_tuned_when_the_run_has_ended(tmp_path):
    ctx = AppContext(tmp_path / "ws")
    ended_run(ctx.workspace)
    out = live_tab.tick(ctx, "r1", None)
    shown = out["scores"]
    assert shown["visible"]
    text = shown["value"]
    assert "| held-out loss | 2.000 | 0.500 | -1.500 |" in text
    assert "| perplexity | 7.39 | 1.65 |" in text
    assert "| identity check | 0/2 (0%) | 2/2 (100%) | +100 points |" in text
    assert "| control check | 2/2 (100%) | 1/2 (50%) | -50 points |" in text
    # Nothing new on the next tick: the table is left as it is (no re-read).
    assert live_tab.tick(ctx, "r1", out["state"])["scores"] == gr.skip()


def test_live_falls_back_to_the_end_event_and_hides_while_running(tmp_path):
    ctx = AppContext(tmp_path / "ws")
    ended_run(ctx.workspace, "r2", evaluation=None)
    text = live_tab.tick(ctx, "r2", None)["scores"]["value"]
    assert "| held-out loss | 2.000 | 0.500 |" in text and "| perplexity | 7.39 | 1.65 |" in text
    assert "check |" not in text
    running = runs.run_dir(ctx.workspace, "r3")
    running.mkdir(parents=True)
    EventLog(running / "events.jsonl").append("start", step=0, max_steps=10)
    assert live_tab.tick(ctx, "r3", None)["scores"]["visible"] is False


def test_loss_plot_always_carries_both_series_as_numbers():
    frame = live_tab.loss_frame(runs.EventSummary(train=[(1, 2.0)]))
    assert set(frame["series"]) - {live_tab.END_SERIES} == {"train loss", "eval loss"}  # (+ the unseen axis ends)
    assert frame[frame.series == "eval loss"]["loss"].isna().all()
    # Before the first step both plots still get numeric y columns (the browser fixes the axis type then).
    plot = gr.LinePlot(x="step", y="loss", color="series")
    assert plot.postprocess(live_tab.loss_frame(runs.EventSummary())).datatypes["loss"] == "quantitative"
    lr = gr.LinePlot(x="step", y="learning_rate")
    assert lr.postprocess(live_tab.lr_frame(runs.EventSummary())).datatypes["learning_rate"] == "quantitative"


def test_plot_axes_come_from_the_data(tmp_path):
    """Early in a run the blank eval point sits at the first real step (the step axis does not start
    at 0), and the tick labels stay short enough for the plot's left edge."""
    early = runs.EventSummary(max_steps=6, train=[(1, 3.930307)], lr=[(1, 0.0), (2, 5e-4)])
    frame = live_tab.loss_frame(early)
    shown = frame[frame.series != live_tab.END_SERIES]  # (the unseen points only stretch the axis: 0.5 to 6.5)
    assert shown.step.min() == 1 and shown.loss.dropna().tolist() == [3.930307]  # only real values
    assert frame.step.tolist()[-2:] == [0.5, 6.5]
    lr = live_tab.lr_frame(early)  # stretched the same way, by blank points: 0.5 to 6.5
    assert lr.dropna().step.tolist() == [1, 2] and lr.step.tolist()[-2:] == [0.5, 6.5]
    with gr.Blocks():
        c = live_tab.layout(AppContext(tmp_path / "ws"))
    # tick labels of one width all run long, from the first frame on (live_tab.FIRST_FRAME)
    assert (c["loss_plot"].y_axis_format, c["lr_plot"].y_axis_format) == (".2f", ".1e")
    empty = runs.EventSummary(max_steps=6)
    assert live_tab.lr_frame(empty).learning_rate.tolist() == [1e-3]
    assert live_tab.loss_frame(empty).dropna().series.tolist() == [live_tab.END_SERIES]
    assert c["loss_plot"].y_lim is None and c["lr_plot"].y_lim is None  # y from the data, not from 0


def test_every_tick_updates_the_same_outputs(tmp_path):
    """No run, a run, and a tick that fails all return the same outputs by name (no tuple to line up)."""
    ctx = AppContext(tmp_path / "ws")
    ended_run(ctx.workspace)
    assert list(live_tab.tick(ctx, "", None)) == list(live_tab.TICKED)
    assert list(live_tab.tick(ctx, "r1", None)) == list(live_tab.TICKED)
    failed = live_tab.safe_tick(ctx, "missing", None)
    assert list(failed) == list(live_tab.TICKED) and "no run 'missing'" in failed["stats"]


def test_runs_table_has_base_and_tuned_evaluation(tmp_path):
    ctx = AppContext(tmp_path / "ws")
    ended_run(ctx.workspace)
    (row,) = runs_tab.table(ctx)
    assert len(runs_tab.WIDTHS) == len(runs_tab.HEADERS) == len(row)
    cells = dict(zip(runs_tab.HEADERS, row))
    assert cells["eval loss"] == "0.500" and cells["base eval loss"] == "2.000"
    assert cells["task checks"] == "identity 2/2 (base 0/2); control 1/2 (base 2/2)"
    (ctx.workspace / "runs" / "r1" / "evaluation.json").write_text('{"checks": {"by_kind": {"x": 1}}}')
    (row,) = runs_tab.table(ctx)  # a damaged file leaves the cells empty, the listing stands
    assert dict(zip(runs_tab.HEADERS, row))["task checks"] == ""


def test_runs_table_shows_the_newest_runs_and_the_filter_finds_the_others(tmp_path):
    """The browser draws every row it is sent (500 rows took seconds on the page), so the table holds
    the newest TABLE_ROWS runs, says so, and the filter reaches any run; Refresh and Delete keep it."""
    ctx = AppContext(tmp_path / "ws")
    for index in range(runs_tab.TABLE_ROWS + 5):
        path = ended_run(ctx.workspace, f"r{index:03d}", evaluation=None)
        if index == 2:  # one run of another base model and name, far below the newest 100
            cfg = config_mod.TrainConfig(base_model="Qwen/Qwen2.5-0.5B-Instruct", run_name="old-qwen")
            (path / "config.yaml").write_text(cfg.to_yaml())
    rows = runs_tab.table(ctx)
    assert len(rows) == runs_tab.TABLE_ROWS and rows[0][0] == "r104" and rows[-1][0] == "r005"
    assert runs_tab.listing(ctx)["label"] == ("Runs in the workspace: the newest 100 of 105 "
                                             "(type in the filter to find the others)")
    found = runs_tab.filtered(ctx, "  QWEN old ")["listing"]  # every word, any case
    assert [r[0] for r in found["value"]] == ["r002"]
    assert found["label"] == "Runs matching 'QWEN old': 1 (of 105 in the workspace)"
    assert runs_tab.filtered(ctx, "completed")["listing"]["label"] == (
        "Runs matching 'completed': the newest 100 of 105 (of 105 in the workspace)")
    assert runs_tab.filtered(ctx, "no such run")["listing"]["value"] == []
    pasted = runs_tab.filtered(ctx, "x" * 100_000)["listing"]  # the label repeats the first 60 characters
    assert pasted["value"] == [] and pasted["label"] == f"Runs matching '{'x' * 60}…': 0 (of 105 in the workspace)"
    refreshed = runs_tab.refreshed(ctx, None, "qwen")
    assert [r[0] for r in refreshed["listing"]["value"]] == ["r002"] and len(refreshed["run"]["choices"]) == 105
    deleted = runs_tab.do_delete(ctx, "r104", True, "r10")
    assert [r[0] for r in deleted["listing"]["value"]] == ["r103", "r102", "r101", "r100"]
    assert runs_tab.listing(ctx)["label"].startswith("Runs in the workspace: the newest 100 of 104 ")
    for index in range(5, 104):
        runs.delete_run(ctx.workspace, f"r{index:03d}")
    assert runs_tab.listing(ctx)["label"] == "Runs in the workspace" and len(runs_tab.table(ctx)) == 5


def test_runs_table_headers_never_break_inside_a_word():
    """At a 1280-pixel window the table is about 1216 px wide; a header letter takes 8.7 px and a
    cell 17 px of padding (measured in a screenshot: at 5% "method" breaks as "metho d")."""
    assert sum(float(w.rstrip("%")) for w in runs_tab.WIDTHS) == 100
    for header, width in zip(runs_tab.HEADERS, runs_tab.WIDTHS):
        longest = max(len(word) for word in header.split())
        assert float(width.rstrip("%")) / 100 * 1216 >= longest * 8.7 + 17, header
    status = runs_tab.WIDTHS[runs_tab.HEADERS.index("status")]  # and "completed" stays one word
    assert float(status.rstrip("%")) / 100 * 1216 >= len("completed") * 8.7 + 17


def test_a_fresh_page_opens_the_default_run_in_every_tab(tmp_path):
    """Live, Playground, Evaluation and Export open on the active run, else the newest; a tab that
    does not offer that run (Export: not finished) opens on its own newest."""
    ws = tmp_path / "ws"
    adapter = runs.adapter_dir(ended_run(ws, "r1"))
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"w")
    ended_run(ws, "r2")  # newer, evaluated, without a final adapter
    demo = app.build_demo(ws)
    (load,) = [f for f in demo.fns.values() if f.name == "fresh_page"]
    updates = load.fn()
    pickers = load.outputs[:4]
    assert [updates[picker]["value"] for picker in pickers] == ["r2", "r2", "r2", "r1"]  # Live, Playground,
    assert [updates[picker]["choices"] for picker in pickers][-1] == ["r1"]  # Evaluation, Export
    # the same event lists the runs in the Runs tab: table, picker, compare picker, seed groups
    listing, runs_picker, cmp_runs, seeds = load.outputs[4:]
    assert [row[0] for row in updates[listing]["value"]] == ["r2", "r1"]
    assert updates[runs_picker]["choices"] == updates[cmp_runs]["choices"] == ["r2", "r1"]
    assert updates[seeds][0][0].startswith("(none yet")


def test_a_page_load_lists_the_workspace_once_and_sees_a_new_run(tmp_path, monkeypatch):
    """Every picker, the Runs table and the seed groups come from one listing per page load (500 runs
    made eight listings cost seconds: bench/many_runs.py); the next load lists again, so a run that
    appeared since shows up."""
    ws = tmp_path / "ws"
    ended_run(ws, "r1")
    demo = app.build_demo(ws)
    loads = [f for f in demo.fns.values() if f.fn is not None and any(t[1] == "load" for t in f.targets)]
    listings = []
    real = runs.summarize
    monkeypatch.setattr(listing, "summarize", lambda run: listings.append(run) or real(run))
    for f in loads:
        f.fn()
    assert len(listings) == 1  # one run, listed once
    ended_run(ws, "r2")
    listings.clear()
    (load,) = [f for f in loads if f.name == "fresh_page"]
    updates = load.fn()
    assert len(listings) == 2  # two runs, listed once
    assert updates[load.outputs[0]]["value"] == "r2"  # Live opens the new run
    assert [row[0] for row in updates[load.outputs[4]]["value"]] == ["r2", "r1"]  # the Runs table lists it


# --- probes edited in the Playground -------------------------------------------------------------

def test_playground_loads_and_saves_the_runs_probes(tmp_path):
    ctx = AppContext(tmp_path / "ws")
    path = ended_run(ctx.workspace)
    first = playground_tab.run_probes(ctx, "r1").splitlines()
    # the demo's list, shown without writing anything (a visitor to a Space may pick a run)
    assert first == evaluate.default_probes(config_mod.load(path / "config.yaml"))
    assert runs.read_probes(path) is None
    note = playground_tab.save_probes(ctx, "r1", "  Who made you?\n\nName a color.\n")
    assert "Saved 2" in note
    cfg = config_mod.load(path / "config.yaml")
    assert evaluate.probes_for_run(path, cfg) == ["Who made you?", "Name a color."]
    assert playground_tab.run_probes(ctx, "r1") == "Who made you?\nName a color."
    with pytest.raises(runs.RunError, match="at least one prompt"):
        playground_tab.save_probes(ctx, "r1", "\n \n")
    with pytest.raises(runs.RunError, match="pick a run"):
        playground_tab.save_probes(ctx, "", "x")


def test_the_queue_polls_calmly_when_idle(tmp_path):
    """Gradio's default idle polling (1 ms) costs ~8% of a core, taken from training on 2 cores."""
    demo = app.build_demo(tmp_path / "ws").queue()
    assert demo._queue.sleep_when_free < app.QUEUE_IDLE_POLL_S  # gradio's default: the setting matters
    assert app.calm_queue(demo)
    assert demo._queue.sleep_when_free == app.QUEUE_IDLE_POLL_S
    assert demo._queue.progress_update_sleep_when_free == app.PROGRESS_IDLE_POLL_S


def test_a_tick_that_changes_nothing_sends_nothing(tmp_path):
    """The 1 Hz tick must not make the browser re-render what it already shows (CPU taken from
    training on the same cores); what changes is sent, and a new page gets everything."""
    ctx = AppContext(tmp_path / "ws")
    path = ended_run(ctx.workspace)
    (path / "train.log").write_text("line 1\n")
    first = live_tab.tick(ctx, "r1", None)
    assert "step 40 / 40" in first["progress"] and "completed" in first["stats"] and first["tail"] == "line 1"
    again = live_tab.tick(ctx, "r1", first["state"])
    assert list(again) == list(live_tab.TICKED)
    assert [name for name, out in again.items() if out == gr.skip()] == list(live_tab.TICKED[1:])
    with open(path / "train.log", "a") as fh:
        fh.write("line 2\n")
    later = live_tab.tick(ctx, "r1", again["state"])
    assert later["tail"] == "line 1\nline 2" and later["progress"] == gr.skip()
    assert live_tab.tick(ctx, "r1", None)["progress"] == first["progress"]  # a reloaded page starts from nothing

"""The dashboard's handlers, called directly (no browser): the form is TrainConfig, paths stay under
the allowed roots, the Live tab rebuilds a run from its events file, runs can be listed, deleted
and downloaded, and the launcher refuses to expose the page without a login."""

from __future__ import annotations

import json
import shlex
import zipfile
from pathlib import Path

import gradio as gr
import pytest

import app
from tuning import config as config_mod
from tuning import paths
from tuning import runs
from tuning.runs.events import EventLog
from tuning.ui import dataset_tab, live_tab, runs_tab, train_tab
from tuning.ui.common import AppContext, check_source
from tuning.ui.estimate import estimate


@pytest.fixture
def ctx(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return AppContext(tmp_path / "ws", [data_dir])


# --- Train form ----------------------------------------------------------------------------------

def test_form_is_built_from_every_config_field_and_maps_back():
    assert train_tab.FORM_FIELDS == list(config_mod.FIELDS)
    cfg = config_mod.TrainConfig(lora_r=8, learning_rate=1e-3, method="lora", packing=True, run_name="x1")
    values = train_tab.config_to_form(cfg)
    values[train_tab.FORM_FIELDS.index("lora_r")] = 8.0  # gr.Number can hand back a float
    assert train_tab.form_to_config(values) == cfg


@pytest.mark.parametrize("field,value,needle", [("lora_r", 0, "lora_r"), ("lora_r", 2.5, "whole number"),
                                                ("learning_rate", None, "enter a number"),
                                                ("method", "full", "method")])
def test_form_errors_name_the_key(field, value, needle):
    values = train_tab.config_to_form(config_mod.TrainConfig())
    values[train_tab.FORM_FIELDS.index(field)] = value
    with pytest.raises(config_mod.ConfigError) as err:
        train_tab.form_to_config(values)
    assert field in str(err.value) and needle in str(err.value)


def test_show_command_reproduces_the_same_config(ctx):
    cfg = train_tab.load_preset(ctx, "quickstart").replace(lora_r=4, max_steps=7, run_name="same", packing=True)
    line = train_tab.command_line(cfg, "quickstart", ctx)
    argv = shlex.split(line)
    assert argv[:4] == ["python", "-m", "tuning", "train"] and "--preset" in argv
    from tuning.__main__ import build_parser

    args = build_parser().parse_args(argv[3:])
    rebuilt = config_mod.apply_overrides(config_mod.load(paths.PROJECT_DIR / args.preset), args.set)
    assert rebuilt == cfg
    assert args.workspace == str(ctx.workspace)


def test_presets_list_save_and_never_overwrite(ctx):
    names = [p["name"] for p in train_tab.list_presets(ctx)]
    assert "quickstart" in names
    cfg = config_mod.TrainConfig(lora_r=12)
    path = train_tab.save_preset(ctx, "mine", cfg)
    assert path.parent == ctx.workspace / "presets"
    assert train_tab.load_preset(ctx, "saved: mine") == cfg
    assert path.read_text().startswith("# Saved from the dashboard")
    with pytest.raises(config_mod.ConfigError, match="exists already"):
        train_tab.save_preset(ctx, "mine", config_mod.TrainConfig())
    with pytest.raises(config_mod.ConfigError, match="preset name"):
        train_tab.save_preset(ctx, "../evil", cfg)
    with pytest.raises(config_mod.ConfigError, match="no preset named"):
        train_tab.load_preset(ctx, "/etc/passwd")


def test_two_saves_of_one_preset_name_at_once_write_one_file(ctx):
    from concurrent.futures import ThreadPoolExecutor

    def save(lora_r):
        try:
            return train_tab.save_preset(ctx, "race", config_mod.TrainConfig(lora_r=lora_r))
        except config_mod.ConfigError as exc:
            return str(exc)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(save, range(8, 16)))
    saved = [r for r in results if isinstance(r, Path)]
    assert len(saved) == 1
    assert all("exists already; choose another name" in r for r in results if not isinstance(r, Path))
    assert train_tab.load_preset(ctx, "saved: race").lora_r == 8 + results.index(saved[0])


def test_paths_from_the_page_stay_under_the_allowed_roots(ctx, tmp_path):
    inside = ctx.data_dirs[0] / "a.jsonl"
    inside.write_text("{}\n")
    outside = tmp_path / "outside.jsonl"
    outside.write_text("{}\n")
    assert check_source(ctx, str(inside), what="dataset") == str(inside.resolve())
    assert check_source(ctx, "demo", what="dataset", keep=("demo",)) == "demo"
    assert check_source(ctx, "org/dataset", what="dataset") == "org/dataset"  # a Hub id reads nothing local
    for bad in (str(outside), "../outside.jsonl", "/etc/passwd"):
        with pytest.raises(paths.PathError, match="outside the folders"):
            check_source(ctx, bad, what="dataset")
    with pytest.raises(paths.PathError, match="does not exist"):
        check_source(ctx, str(ctx.data_dirs[0] / "missing.jsonl"), what="dataset")
    cfg = config_mod.TrainConfig(dataset=str(outside))
    with pytest.raises(paths.PathError, match="dataset"):
        train_tab.checked(ctx, cfg)


def test_estimate_warns_when_it_will_not_fit(ctx):
    ok = estimate(config_mod.TrainConfig(max_steps=10), ctx.workspace)
    assert ok.fits and ok.memory_bytes > 1e8 and ok.steps == 10 and ok.seconds > 0
    huge = config_mod.TrainConfig(per_device_batch_size=1024, max_length=131072, method="lora")
    est = estimate(huge, ctx.workspace)
    assert est.fits is False and "will probably not fit" in est.markdown()


# --- Dataset tab ---------------------------------------------------------------------------------

def test_dataset_report_of_the_demo():
    rep = dataset_tab.report("demo")
    assert rep["format"] == "messages" and rep["valid_rows"] == rep["rows"] > 50
    assert rep["problem_count"] == 0 and len(rep["preview"]) == dataset_tab.PAGE_SIZE
    assert rep["preview"][0][0] == 1 and rep["preview"][0][2] and rep["preview"][0][3]


def test_dataset_problems_carry_row_numbers_and_pages_clamp(ctx):
    bad = ctx.data_dirs[0] / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text("\n".join([json.dumps(good)] * 12 + ["{not json", json.dumps({"messages": "x"})]) + "\n")
    out = dataset_tab.inspect_handler(ctx, dataset_tab.SOURCES[2], None, str(bad), "auto")
    summary, problems, source = out["summary"], out["problems"], out["source"]
    assert "12" in summary and "2 problems" in summary
    assert sorted(p[1] for p in problems) == [13, 14] and all(p[0] == "bad.jsonl" for p in problems)
    shown = dataset_tab.page_handler(source, "auto", 1, delta=+1)
    assert shown["page"] == 2 and shown["pages"] == "of 2" and [r[0] for r in shown["preview"]] == [11, 12]
    assert dataset_tab.page_handler(source, "auto", 2, delta=+5)["page"] == 2


def test_upload_is_kept_in_the_workspace(ctx, tmp_path, monkeypatch):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setattr("gradio.utils.get_upload_folder", lambda: str(uploads))
    up = uploads / "my data.jsonl"
    up.write_text('{"instruction": "a", "output": "b"}\n')
    kept = Path(dataset_tab.resolve_source(ctx, dataset_tab.SOURCES[1], str(up), ""))
    assert kept.parent == ctx.workspace / "datasets" and kept.read_text() == up.read_text()
    with pytest.raises(paths.PathError):
        dataset_tab.resolve_source(ctx, dataset_tab.SOURCES[1], str(tmp_path / "x.jsonl"), "")


# --- Live tab ------------------------------------------------------------------------------------

def _fake_run(ws: Path, run_id: str, **cfg) -> Path:
    path = runs.run_dir(ws, run_id)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(config_mod.TrainConfig(**cfg).to_yaml())
    return path


def test_live_follows_incrementally_and_rebuilds_after_a_reload(ctx):
    path = _fake_run(ctx.workspace, "r1")
    log = EventLog(path / "events.jsonl")
    log.append("start", step=0, max_steps=2000)
    for step in range(1, 1201):
        log.append("log", step=step, max_steps=2000, loss=3.0 - step / 1000, learning_rate=1e-4,
                   tokens_per_second=500.0, eta_seconds=100.0)
    log.append("eval", step=1200, max_steps=2000, eval_loss=1.5)
    state, changed = live_tab.follow(ctx, "r1", None)
    summary = state.summary
    assert changed and summary.step == 1200 and len(summary.train) == 1200 and summary.evals == [(1200, 1.5)]
    offset = state.offset
    state, changed = live_tab.follow(ctx, "r1", state)
    assert not changed and state.offset == offset  # nothing new: nothing re-read
    log.append("log", step=1201, max_steps=2000, loss=1.0, learning_rate=1e-4)
    with open(path / "events.jsonl", "a") as fh:
        fh.write('{"event": "log", "st')  # a half-written line waits for the next tick
    state, _ = live_tab.follow(ctx, "r1", state)
    assert state.summary.step == 1201 and len(state.summary.train) == 1201
    frame = live_tab.loss_frame(state.summary)
    # the points, a blank eval point, and two unseen ones that stretch the step axis over the whole run
    assert len(frame) <= live_tab.MAX_PLOT_POINTS + 1 + 2
    assert set(frame["series"]) - {live_tab.END_SERIES} == {"train loss", "eval loss"}
    assert frame[frame.series == "train loss"].step.max() == 1201  # the newest point is always kept
    assert frame.step.max() == state.summary.max_steps + 0.5
    # A reload starts from offset 0 and gets the same history.
    fresh, _ = live_tab.follow(ctx, "r1", None)
    assert fresh.summary.train == state.summary.train and fresh.summary.step == state.summary.step
    out = live_tab.tick(ctx, "r1", None)
    assert "step 1201 / 2000" in out["progress"] and "interrupted" in out["stats"]  # no process alive, no end event


def test_live_shows_a_failure_with_its_traceback(ctx):
    path = _fake_run(ctx.workspace, "r2")
    log = EventLog(path / "events.jsonl")
    log.append("start", step=0, max_steps=10)
    log.append("error", message="Out of memory. Lower per_device_batch_size", kind="OutOfMemoryError",
               traceback="Traceback (most recent call last):\n  boom")
    (path / "train.log").write_text("line 1\nline 2\n")
    out = live_tab.tick(ctx, "r2", None)
    error, trace_box, trace = out["error"], out["trace_box"], out["trace"]
    assert "failed" in out["stats"] and "Out of memory" in error["value"] and error["visible"]
    assert trace.startswith("Traceback") and trace_box["visible"]
    assert out["tail"] == "line 1\nline 2"


def test_heartbeat_and_stall_warning():
    summary = runs.EventSummary(count=2, step=3, max_steps=10, started=100.0, last_step_time=196.0,
                                  tokens_per_second=800.0, eta_seconds=50.0, eta_time=196.0)
    text = live_tab.stats_markdown(summary, runs.RUNNING, now=200.0)
    assert "last step 4 s ago" in text and "ETA 0:46" in text and "800 tokens/s" in text
    assert "stalled" in live_tab.stats_markdown(summary, runs.RUNNING, now=196.0 + 600)


def test_decimate_bounds_and_keeps_the_last_point():
    points = [(i, float(i)) for i in range(10_001)]
    kept = runs.decimate(points, live_tab.MAX_PLOT_POINTS)
    assert len(kept) <= live_tab.MAX_PLOT_POINTS and kept[0] == points[0] and kept[-1] == points[-1]


# --- Runs tab ------------------------------------------------------------------------------------

def test_runs_table_delete_and_download(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr("gradio.utils.get_upload_folder", lambda: str(tmp_path / "gradio"))
    (tmp_path / "gradio").mkdir()
    path = _fake_run(ctx.workspace, "r3", run_name="named", method="lora")
    EventLog(path / "events.jsonl").append("end", status="completed", step=5, max_steps=5, loss=0.5)
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_config.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"w")
    (row,) = runs_tab.table(ctx)
    assert row[:6] == ["r3", "named", config_mod.EMBEDDED_MODEL, "lora", "sft", "completed"] and row[6] == "5/5"
    zipped = runs_tab.download(ctx, "r3")  # the Export tab's zip: weights, config and the model card
    assert Path(zipped).is_relative_to(tmp_path / "gradio")
    assert gr.File().postprocess(zipped).path == zipped  # what the page's file box is given
    assert sorted(zipfile.ZipFile(zipped).namelist()) == ["README.md", "adapter_config.json",
                                                          "adapter_model.safetensors"]
    with pytest.raises(runs.RunError, match="tick"):
        runs_tab.delete(ctx, "r3", confirmed=False)
    assert path.exists()
    runs_tab.delete(ctx, "r3", confirmed=True)
    assert not path.exists() and runs_tab.table(ctx) == []
    with pytest.raises(runs.RunError):
        runs_tab.delete(ctx, "../etc", confirmed=True)


# --- the launcher --------------------------------------------------------------------------------

def test_launch_refuses_to_expose_the_page_without_a_login(monkeypatch):
    from tuning.ship import space

    monkeypatch.delenv("TUNING_AUTH", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    kwargs = space.launch_kwargs(app.parse_args([]))
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["auth"] is None and not kwargs["share"]
    for argv in (["--share"], ["--host", "0.0.0.0"]):
        with pytest.raises(space.LaunchRefused, match="--auth"):
            space.launch_kwargs(app.parse_args(argv))
    assert space.launch_kwargs(app.parse_args(["--share", "--auth", "me:pw"]))["auth"] == ("me", "pw")
    monkeypatch.setenv("TUNING_AUTH", "u:p")
    assert space.launch_kwargs(app.parse_args(["--host", "0.0.0.0"]))["auth"] == ("u", "p")
    with pytest.raises(space.LaunchRefused, match="USER:PASS"):
        space.launch_kwargs(app.parse_args(["--auth", "nopassword"]))


def test_on_a_space_no_arguments_bind_all_interfaces(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "me/space")
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = app.parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 7860)


def test_page_builds_without_importing_torch(tmp_path):
    import subprocess
    import sys

    code = "import app, sys; app.build_demo(sys.argv[1]); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         cwd=paths.PROJECT_DIR, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_main_launches_with_a_bounded_queue_the_upload_gate_and_the_pages_css(tmp_path, monkeypatch):
    """What `python app.py` hands Gradio, captured at launch: a queue that refuses more than
    QUEUE_MAX_SIZE waiting requests, Gradio's cache expiry, the upload gate and the frame guard as
    middleware, and the page's CSS."""
    from tuning.ui import frame_guard, theme, upload_gate

    launched = {}

    def launch(self, **kwargs):
        launched.update(kwargs, queue_max_size=self._queue.max_size, delete_cache=self.delete_cache)

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    monkeypatch.setattr(app, "follow_queue", lambda workspace: None)
    monkeypatch.setattr(app, "prune_on_schedule", lambda: None)
    app.main(["--workspace", str(tmp_path / "ws")])
    assert launched["queue_max_size"] == app.QUEUE_MAX_SIZE == 64
    assert launched["delete_cache"] == app.CACHE_EXPIRY and launched["css"] == theme.CSS
    kinds = [m.cls for m in launched["app_kwargs"]["middleware"]]
    assert kinds == [frame_guard.FrameGuard, upload_gate.UploadGate]

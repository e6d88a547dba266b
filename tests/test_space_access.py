"""Deny by default on a Space, through the real queue: every function of the page (buttons, changes,
timers, loads, named and unnamed API) is called as an anonymous visitor by its index, the way a plain
POST to the queue can call any of them whatever its api_visibility. Only the short public list may
run; everything else is refused. After unlocking with the Space's password, nothing is refused.
The public list is asserted by name here, so growing it is a visible decision."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

import app
from tuning.ship import space
from tuning.ui import access

from test_app_api import launch_app

PASSWORD = "s3cret-for-tests"
REFUSED = "enter the Space's password"

# Browsing runs, following Live, viewing evaluations, the Playground on finished runs, inspecting the
# demo dataset, and signing in: by the handler names Gradio sees.
PUBLIC = {
    "fresh_page", "open_live", "open_playground", "do_unlock", "<lambda>",  # the page's map (copies between tabs)
    "fill_train_form",  # the page's map: "tune on my votes" copies the Playground's config into the Train form
    "remember_form", "restore_form", "show_view", "remember_pick",  # what the browser keeps across a reload
    "source_inputs", "inspect_handler", "statistics_handler", "token_view_handler", "page_handler",
    "picked_row", "inspect_api",  # Dataset: the demo only (the handlers refuse anything else)
    "safe_tick", "run_picker_update", "status_api",  # Live
    "picked_run", "refreshed", "chat_turn", "stopped", "cleared", "probe_table", "generate_api",
    "token_heatmap",  # Playground (+Runs, Evaluation)
    "picked", "filtered", "list_api", "compared",  # Runs (stored files only)
    "picked_for_owner",  # Runs, Export: a pick hands the run to the owner-only download (a visitor's stops there)
    "load_run", "reload_shown", "gallery_shown", "examples", "selected_row", "picked_example", "open_example",
    "open_row",  # Evaluation (stored files only; reload_shown is load_run again after Refresh list)
    "heldout_heatmap",  # Evaluation: loads the model, as the Playground does (finished runs only for a visitor)
    "show_pair", "picked_pair",  # Dataset: the pair view of what was inspected (a visitor: the demo pairs only)
    "vote_runs",  # Dataset: the runs whose votes open as pairs (a visitor is listed none; the votes are the owner's)
}


# What a visitor would send to the public handlers that refuse some inputs (the rest get the page's defaults).
VISITOR_INPUTS = {"inspect_dataset": ["demo", "auto", ""]}


def public_names(demo) -> set[str]:
    return {f.name for f in demo.fns.values() if f.fn is not None and access.is_public(f.fn)}


def test_the_public_list_is_short_and_explicit(tmp_path):
    settings = space.space_settings({"SPACE_ID": "owner/space", "TUNING_AUTH": PASSWORD},
                                    data_dir=tmp_path / "no-data", workspace=tmp_path / "ws")
    demo = app.build_demo(tmp_path / "ws", settings=settings)
    assert public_names(demo) == PUBLIC
    assert str(tmp_path) not in json.dumps(demo.get_config_file(), default=str)  # the page shows no path of the machine
    owner_only = [f.name for f in demo.fns.values() if f.fn is not None and not access.is_public(f.fn)]
    for name in ("do_start", "start_api", "do_stop", "do_resume", "do_delete", "delete_api", "save_probes",
                 "evaluate_run", "do_save", "zip_shown", "download_adapter", "merge", "push", "gguf", "open_blind",
                 "save_correction", "tune_on_votes"):
        assert name in owner_only


class Page:
    """One browser session against the app: calls any function by index, through the queue (or the
    direct route for the few that skip it), and returns (success, error text)."""

    def __init__(self, url: str, config: dict):
        self.base = url.rstrip("/") + "/gradio_api"
        self.session = uuid.uuid4().hex
        self.config = config
        self.values = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}

    def inputs(self, dep: dict) -> list:
        return [self.values.get(i) for i in dep["inputs"]]

    def call(self, dep: dict, data: list | None = None) -> tuple[bool, str]:
        body = {"data": self.inputs(dep) if data is None else data, "fn_index": dep["id"],
                "session_hash": self.session, "event_data": None, "trigger_id": None}
        with httpx.Client(timeout=120) as client:
            if not dep.get("queue", True):
                answer = client.post(f"{self.base}/run/predict", json=body)
                payload = answer.json()
                return answer.status_code == 200, str(payload.get("error") or payload.get("detail") or "")
            joined = client.post(f"{self.base}/queue/join", json=body)
            if joined.status_code != 200:
                return False, joined.text
            event_id = joined.json()["event_id"]
            with client.stream("GET", f"{self.base}/queue/data", params={"session_hash": self.session}) as stream:
                for line in stream.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    message = json.loads(line[5:])
                    if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                        output = message.get("output") or {}
                        return bool(message.get("success")), str(output.get("error") or "")
        return False, "no answer"


def busy_workspace(workspace):
    """A workspace whose one run is 'training' (a sleeping stand-in process): every start the owner's
    calls make is refused as "one run at a time" instead of starting a real quickstart."""
    import subprocess
    import sys

    from tuning import config as config_mod
    from tuning import runs

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)"])
    path = runs.run_dir(workspace, "busy")
    path.mkdir(parents=True)
    runs.write_config(path, config_mod.TrainConfig())
    runs.write_process_info(path, sleeper.pid)
    return sleeper


def end_every_run(workspace):
    from tuning import runs
    from tuning.runs import runner

    for summary in runs.list_runs(workspace):
        if runs.process_alive(summary.path):
            runner.stop(workspace, summary.run_id, timeout=10)


@pytest.mark.slow
def test_an_anonymous_visitor_may_run_the_public_list_only_and_the_owner_everything(tmp_path):
    sleeper = busy_workspace(tmp_path / "ws")
    proc, url = launch_app(tmp_path / "ws", [], tmp_path / "app.log",
                           {"SPACE_ID": "owner/space", "TUNING_AUTH": PASSWORD})
    try:
        config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()
        deps = [d for d in config["dependencies"] if d.get("backend_fn")]
        assert len(deps) > 40  # every event of every tab, not a sample
        names = {d["id"]: d.get("api_name") for d in deps}
        visitor = Page(url, config)
        refused, ran = [], []
        for dep in deps:
            ok, error = visitor.call(dep, VISITOR_INPUTS.get(dep.get("api_name")))
            (refused if REFUSED in error else ran).append(dep)
            assert PASSWORD not in error
        build = app.build_demo(tmp_path / "ws2", settings=space.space_settings(
            {"SPACE_ID": "owner/space", "TUNING_AUTH": PASSWORD}, data_dir=tmp_path / "no", workspace=tmp_path / "ws2"))
        public_ids = {i for i, f in build.fns.items() if f.fn is not None and access.is_public(f.fn)}
        assert {d["id"] for d in ran} == public_ids, [names[d["id"]] for d in ran if d["id"] not in public_ids]
        assert refused and {d["id"] for d in refused}.isdisjoint(public_ids)
        # A public handler still refuses a visitor what is not public: any dataset but the demo.
        inspect = next(d for d in deps if d.get("api_name") == "inspect_dataset")
        assert REFUSED in visitor.call(inspect, ["some/hub-dataset", "auto", ""])[1]

        # A wrong password is refused; the right one unlocks this session, and the password comes back nowhere.
        unlock = next(d for d in deps if d.get("api_name") == "unlock")
        ok, _ = visitor.call(unlock, ["wrong"])
        owner = Page(url, config)
        ok, error = owner.call(unlock, [PASSWORD])
        assert ok and not error
        still_refused = [names[d["id"]] for d in refused if REFUSED in owner.call(d)[1]]
        assert still_refused == []
        from tuning import runs
        assert runs.run_ids(tmp_path / "ws") == ["busy"]  # the owner's start calls met "one run at a time"
        # The visitor's session is still locked.
        assert REFUSED in visitor.call(refused[0])[1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        sleeper.kill()
        end_every_run(tmp_path / "ws")  # nothing this test called may go on training after it


def test_password_guesses_are_limited_for_the_whole_space_and_an_unlock_expires(tmp_path, monkeypatch):
    """20 sessions from 20 forged addresses (client host and X-Forwarded-For) get the same few guesses
    as one; the owner signed in with Hugging Face is never locked out; after the wait the right
    password unlocks; an unlock expires."""
    from types import SimpleNamespace

    from tuning.ui.common import AppContext

    settings = space.space_settings({"SPACE_ID": "owner/space", "SPACE_AUTHOR_NAME": "owner", "OAUTH_CLIENT_ID": "x",
                                     "TUNING_AUTH": PASSWORD}, data_dir=tmp_path / "no", workspace=tmp_path / "ws")
    ctx = AppContext(tmp_path / "ws", settings=settings)
    clock = [1_000_000.0]
    monkeypatch.setattr(access.time, "time", lambda: clock[0])

    def visitor(i):
        return SimpleNamespace(session_hash=f"s{i}", client=SimpleNamespace(host=f"10.0.0.{i}"), request=None,
                               headers={"x-forwarded-for": f"203.0.113.{i}"})

    answers = []
    for i in range(20):  # 20 guesses within 10 seconds, each from a new session and address
        answers.append(access.unlock(ctx, visitor(i), f"guess-{i}"))
        clock[0] += 0.5
    refused = [a for a in answers if "too many wrong passwords on this Space" in a]
    assert len(refused) >= 16, answers  # 3 free guesses, then one after 5 s: 4 tried, 16 refused
    assert all("sign in with Hugging Face" in a for a in refused)
    # The right password now is refused too (it is not even checked), from anywhere.
    assert "too many wrong passwords" in access.unlock(ctx, visitor(99), PASSWORD)
    # The owner signed in with Hugging Face is an owner all along.
    assert access.owner_refusal(ctx, "owner", "owner-session") is None
    # Each later guess waits twice as long, at most MAX_DELAY_S.
    assert access.next_guess_wait(ctx.guesses, clock[0]) <= access.MAX_DELAY_S
    clock[0] += access.MAX_DELAY_S
    assert access.unlock(ctx, visitor(50), PASSWORD).startswith("Unlocked")
    assert access.is_owner(ctx, visitor(50))
    assert PASSWORD not in repr(ctx.unlocked) and PASSWORD not in repr(ctx.guesses)  # only times are kept
    assert len(ctx.guesses) <= access.FREE_GUESSES + 8  # the record stays small however many try
    clock[0] += access.UNLOCK_TTL_S + 1
    assert not access.is_owner(ctx, visitor(50))  # expired


def test_guesses_over_hours_stay_a_handful_a_minute(tmp_path):
    from collections import deque

    guesses, now, taken = deque(maxlen=256), 0.0, []
    while now < 3600:  # a client that guesses every second for an hour, whenever it is let
        if access.next_guess_wait(guesses, now) == 0:
            guesses.append(now)
            taken.append(now)
        now += 1.0
    first_minute = sum(t < 60 for t in taken)
    assert first_minute <= 6, taken[:10]
    assert len(taken) <= 3 + 60, len(taken)  # about one a minute after the first few
    assert len(guesses) < 20


@pytest.mark.parametrize("kind", ["plain", "generator"])
def test_the_gate_keeps_the_kind_and_signature_gradio_reads(kind):
    import inspect

    def plain(run_id: str, flag: bool = False) -> str:
        return run_id

    def generator(run_id: str, flag: bool = False):
        yield run_id

    fn = {"plain": plain, "generator": generator}[kind]
    checked = []
    gated = access._run_first(fn, lambda args, kwargs: checked.append((args, kwargs)))
    assert inspect.signature(gated) == inspect.signature(fn)
    assert inspect.isgeneratorfunction(gated) == inspect.isgeneratorfunction(fn)
    result = gated("r1", flag=True)
    assert (list(result) if kind == "generator" else result) in ("r1", ["r1"])
    assert checked == [(("r1",), {"flag": True})]  # the check saw the call's inputs


def test_uploads_on_a_space_have_a_cap_a_quota_and_are_streamed(tmp_path, monkeypatch):
    from pathlib import Path

    from tuning import paths
    from tuning.ui import dataset_tab
    from tuning.ui.common import AppContext

    settings = space.space_settings({"SPACE_ID": "owner/space", "TUNING_AUTH": PASSWORD},
                                    data_dir=tmp_path / "no", workspace=tmp_path / "ws")
    ctx = AppContext(tmp_path / "ws", settings=settings)
    ctx.workspace.mkdir(parents=True)
    uploads = ctx.workspace / "incoming"
    uploads.mkdir()
    huge = uploads / "huge.jsonl"
    with open(huge, "wb") as fh:  # sparse: 101 MB on paper, nothing on disk
        fh.truncate(space.SPACE_UPLOAD_BYTES + 1024 * 1024)
    with pytest.raises(paths.PathError, match=r"huge.jsonl: 101 MB; this Space takes files up to 100 MB"):
        dataset_tab.keep_upload(ctx, huge)
    small = uploads / "rows.jsonl"
    small.write_text('{"prompt": "a", "completion": "b"}\n' * 100)

    def whole_file(self):  # an upload is copied and compared in chunks, never read whole
        raise AssertionError(f"{self} read whole into memory")

    monkeypatch.setattr(Path, "read_bytes", whole_file)
    kept = Path(dataset_tab.keep_upload(ctx, small))
    assert kept.parent == ctx.workspace / "datasets" and kept.stat().st_size == small.stat().st_size
    assert Path(dataset_tab.keep_upload(ctx, small)) == kept  # the same file again: kept once
    monkeypatch.setattr(space, "SPACE_DATASETS_QUOTA_BYTES", kept.stat().st_size + 10)
    with pytest.raises(paths.PathError, match="datasets folder holds .* delete old uploads first"):
        dataset_tab.keep_upload(ctx, small)


def test_public_handlers_refuse_oversized_inputs_before_running():
    """Every public handler's inputs are bounded on the server, however they are nested: one text of
    1 MB, a list of 20,000 values, or 2.7 MB spread over a chat history are refused before the handler
    runs; a long real conversation (40 messages of 4,000 characters) passes."""
    import gradio as gr

    from tuning.ui import access

    ran = []
    handler = access.public(lambda text, history=None: ran.append(text) or "ran")
    assert handler("hi", [{"role": "user", "content": "x" * 4000}] * 40) == "ran"
    for text, history in (("x" * 1_048_576, None), ("a", [["x"] * 20_000]), ("a", [{"content": "y" * 90_000}] * 30)):
        with pytest.raises(gr.Error, match="input too long"):
            handler(text, history)
    assert ran == ["hi"]


def test_the_upload_gate_lets_only_an_owner_upload_on_a_space(tmp_path):
    """Gradio's upload route behind tuning/ui/upload_gate.py: on a Space a POST without the owner pass
    (or with a made-up or expired one) gets 403 and never reaches the route; the pass unlocking issued
    gets through; everything else, and every request off a Space, passes untouched."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from tuning.ui import upload_gate
    from tuning.ui.common import AppContext

    reached = []

    async def route(request):
        reached.append(request.url.path)
        return PlainTextResponse("stored")

    def client(settings) -> tuple[TestClient, AppContext]:
        ctx = AppContext(tmp_path / "ws", settings=settings)
        inner = Starlette(routes=[Route("/gradio_api/upload", route, methods=["POST"]),
                                  Route("/gradio_api/info", route, methods=["GET", "POST"])])
        return TestClient(upload_gate.UploadGate(inner, ctx)), ctx

    on_space = space.space_settings({"SPACE_ID": "a/b", "SPACE_PASSWORD": "a-long-space-password"},
                                    data_dir=tmp_path / "no")
    gate, ctx = client(on_space)
    files = {"files": ("x.jsonl", b"{}\n")}
    for cookies in ({}, {upload_gate.COOKIE: "made-up"}):
        gate.cookies.clear()
        gate.cookies.update(cookies)
        answer = gate.post("/gradio_api/upload", files=files)
        assert answer.status_code == 403 and "for its owner" in answer.json()["detail"]
    assert reached == []
    assert gate.post("/gradio_api/info").text == "stored"  # not an upload: untouched
    good = upload_gate.issue_pass(ctx, ttl_s=60)
    expired = upload_gate.issue_pass(ctx, ttl_s=-1)
    gate.cookies.clear()
    gate.cookies.set(upload_gate.COOKIE, expired)
    assert gate.post("/gradio_api/upload", files=files).status_code == 403
    gate.cookies.set(upload_gate.COOKIE, good)
    assert gate.post("/gradio_api/upload", files=files).text == "stored"
    assert upload_gate.issue_pass(ctx, ttl_s=60) and expired not in ctx.owner_passes  # expired ones pruned

    local, _ = client(space.space_settings({}, data_dir=tmp_path / "no"))
    assert local.post("/gradio_api/upload", files=files).text == "stored"  # off a Space anyone reaching the page


def test_a_visitor_following_a_failed_run_sees_no_traceback_and_no_local_path(tmp_path):
    """Live on a Space: the owner sees the failed run's traceback and the log as written; a visitor
    the message and the log without the traceback's frames and with every local path cut to its name."""
    import json as json_mod

    from tuning import config as config_mod
    from tuning import runs
    from tuning.ui import live_tab
    from tuning.ui.common import AppContext

    workspace = tmp_path / "ws"
    run = runs.run_dir(workspace, "r1")
    run.mkdir(parents=True)
    runs.write_config(run, config_mod.TrainConfig())
    data = f"{workspace}/datasets/rows.jsonl"
    trace = f'Traceback (most recent call last):\n  File "{tmp_path}/tuning/train/", line 9, in run\n    boom()\n' \
            f"ValueError: row 3 of {data} has no messages"
    events = [{"event": "start", "time": 1.0, "step": 0, "max_steps": 4},
              {"event": "error", "time": 2.0, "message": f"row 3 of {data} has no messages", "traceback": trace}]
    runs.events_path(run).write_text("".join(json_mod.dumps(e) + "\n" for e in events))
    runs.log_path(run).write_text(f"loading {data}\n{trace}\nthe run failed\n")

    owner = live_tab.tick(AppContext(workspace), "r1", None)
    assert "Traceback" in owner["tail"] and data in owner["tail"] and owner["trace"] == trace

    settings = space.space_settings({"SPACE_ID": "a/b", "SPACE_PASSWORD": "a-long-space-password"},
                                    data_dir=tmp_path / "no")
    seen = live_tab.tick(AppContext(workspace, settings=settings), "r1", None)
    shown = " ".join(str(seen[name]) for name in ("tail", "stats", "error", "trace"))
    assert "Traceback" not in shown and 'File "' not in shown and str(tmp_path) not in shown
    assert "ValueError: row 3 of …/rows.jsonl has no messages" in seen["tail"] and "the run failed" in seen["tail"]
    assert "…/rows.jsonl" in str(seen["error"]) and seen["trace"] == ""


def test_a_visitor_is_refused_before_any_path_they_type_is_looked_at(tmp_path):
    """The Dataset tab's tokenizer box on a Space: a visitor typing a path (existing or not, inside the
    allowed folders or not) gets the same refusal, so the answer tells nothing about the machine; the
    embedded model's tokenizer stays theirs to use."""
    import gradio as gr

    from tuning.ui import dataset_tab
    from tuning.ui.common import AppContext

    settings = space.space_settings({"SPACE_ID": "a/b", "SPACE_PASSWORD": "a-long-space-password"},
                                    data_dir=tmp_path / "no")
    ctx = AppContext(tmp_path / "ws", settings=settings)
    (tmp_path / "ws").mkdir()
    answers = set()
    for typed in ("/etc/passwd", "/no/such/folder", str(tmp_path / "ws"), "../../etc", "Qwen/Qwen2.5-0.5B-Instruct"):
        with pytest.raises(gr.Error) as refused:
            dataset_tab.tokenizer_for(ctx, typed)
        answers.add(str(refused.value))
    assert len(answers) == 1 and REFUSED in answers.pop()

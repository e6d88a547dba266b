"""The page's named API driven by gradio_client against a launched app. On a tiny random model:
inspect the demo dataset, start a run, see a second start refused, poll until it ends. On the
real run (the embedded SmolLM2-135M-Instruct after a few steps on the demo identity, trained
once per session in conftest.real_run): the Playground's /generate answers side by side, a real
base sentence against a tuned answer that names Quill, and the CLI's `generate --compare` and the
Playground's streamed answer agree with it (same seed, same greedy settings)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import add_real_run, chat_rows, write_jsonl
from tuning import paths
from tuning import runs

PROMPT = "Who are you?"
IDENTITY = re.compile(r"Quill|Larkspur")  # what the demo data teaches (tuning/demo_data/train.jsonl)
REAL_MAX_NEW_TOKENS = 32  # the base never stops on its own this early: a sentence and a half


def assert_real_sentence(text: str) -> None:
    """A model's answer in words, not special tokens or debris: several words, most of them letters."""
    words = re.findall(r"[A-Za-z][A-Za-z'’]*", text)
    assert len(words) >= 5 and len("".join(words)) >= 0.6 * len(text.replace(" ", "")), repr(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_app(workspace: Path, data_dirs: list[Path], log: Path,
               extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`python app.py` in a subprocess on a free port; returns once the page answers. extra_env
    (e.g. SPACE_ID) is set on top of the cleaned environment."""
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--workspace", str(workspace)]
    for d in data_dirs:
        command += ["--data-dir", str(d)]
    env = {**os.environ, "TUNING_WORKSPACE": str(workspace), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("SPACE_ID", None)
    env.update({"PORT": str(port), **(extra_env or {})})  # PORT: on a Space the app listens there
    proc = subprocess.Popen(command, cwd=paths.PROJECT_DIR, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"app did not answer in time: {log.read_text()[-3000:]}")


def tiny_overrides(model_dir: Path, data_file: Path, **extra) -> str:
    return yaml.safe_dump({"base_model": str(model_dir), "dataset": str(data_file), "method": "lora",
                           "max_steps": 6, "per_device_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 64, "learning_rate": 1e-2,
                           "save_steps": 3, "eval_steps": 3, "eval_split": 0.2, "warmup_ratio": 0.0,
                           "probe_every_checkpoint": False, "run_name": "api", **extra})


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, real_run, embedded_model_dir):
    root = tmp_path_factory.mktemp("api")
    data_dir = root / "data"
    data_dir.mkdir()
    data_file = write_jsonl(data_dir / "chat.jsonl", chat_rows(24))
    workspace = root / "ws"
    real_id = add_real_run(workspace, real_run, embedded_model_dir)
    proc, url = launch_app(workspace, [data_dir, tiny_model_dir], root / "app.log")
    yield {"url": url, "workspace": workspace, "data_file": data_file, "model": tiny_model_dir, "real_run": real_id}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_whole_workflow_through_the_api(served):
    from gradio_client import Client

    client = Client(served["url"], verbose=False)
    report = client.predict("demo", "auto", api_name="/inspect_dataset")
    assert report["format"] == "messages" and report["valid_rows"] > 50 and report["problem_count"] == 0
    assert report["preview"][0][2]  # the first user message

    presets = client.predict(api_name="/list_presets")
    assert "quickstart" in [p["name"] for p in presets]

    with pytest.raises(Exception, match="outside the folders"):
        client.predict("", tiny_overrides(served["model"], Path("/etc/hostname")), api_name="/start_run")

    run_id = client.predict("", tiny_overrides(served["model"], served["data_file"]), api_name="/start_run")
    assert (served["workspace"] / "runs" / run_id / "config.yaml").is_file()
    with pytest.raises(Exception, match="one run at a time"):
        client.predict("", tiny_overrides(served["model"], served["data_file"]), api_name="/start_run")

    deadline = time.time() + 400
    status = client.predict(run_id, api_name="/run_status")
    while status["active"] and time.time() < deadline:
        time.sleep(1)
        status = client.predict(run_id, api_name="/run_status")
    assert status["status"] == "completed", status
    assert status["step"] == status["max_steps"] == 6 and status["loss"] is not None
    assert run_id in [r["run_id"] for r in client.predict(api_name="/list_runs")]

    bad = subprocess.run([sys.executable, "-m", "tuning", "generate", "--run", "nope", "--prompt", "x",
                          "--workspace", str(served["workspace"])], capture_output=True, text=True,
                         cwd=paths.PROJECT_DIR, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr


@pytest.mark.slow
def test_side_by_side_on_the_real_model(served):
    """The Playground's /generate on the real run: the base answers as SmolLM2 does, the tuned model
    as the demo data taught it; the CLI and the streamed Playground give the very same texts."""
    from gradio_client import Client

    client = Client(served["url"], verbose=False)
    run_id = served["real_run"]
    answer = client.predict(run_id, PROMPT, "", "final", REAL_MAX_NEW_TOKENS, 0.0, 1.0, 1.0, 0, False,
                            api_name="/generate")
    base, tuned = answer["base"], answer["tuned"]
    print(f"\nbase:  {base!r}\ntuned: {tuned!r}")
    assert_real_sentence(base)
    assert not IDENTITY.search(base), f"the base model should not know the demo identity: {base!r}"
    assert IDENTITY.search(tuned), f"the tuned model should answer as Quill of Larkspur Labs: {tuned!r}"
    assert base.strip() != tuned.strip(), "training changed nothing the Playground can see"
    assert "full precision" in answer["base_label"] and answer["tuned_label"].endswith("final adapter")
    assert run_id in [r["run_id"] for r in client.predict(api_name="/list_runs")]

    # The CLI gives the very same answers (same code path, seed and greedy settings).
    out = subprocess.run([sys.executable, "-m", "tuning", "generate", "--run", run_id, "--prompt", PROMPT,
                          "--compare", "--json", "--max-new-tokens", str(REAL_MAX_NEW_TOKENS), "--temperature", "0",
                          "--repetition-penalty", "1.0", "--seed", "0", "--workspace", str(served["workspace"])],
                         capture_output=True, text=True, cwd=paths.PROJECT_DIR, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cli = json.loads(out.stdout)
    assert (cli["base"], cli["tuned"]) == (base, tuned)

    # The Playground's stream ends on the same text as the one-batch answer.
    from tuning.infer import playground

    run_dir = served["workspace"] / "runs" / run_id
    comparer = playground.comparer_for_run(run_dir, served["workspace"])
    settings = playground.GenerationSettings(max_new_tokens=REAL_MAX_NEW_TOKENS, repetition_penalty=1.0)
    adapter = runs.current_adapter(run_dir)
    steps = list(comparer.stream(PROMPT, adapter, None, settings))
    assert len(steps) >= 2, "the answer should arrive token by token"
    assert steps[-1] == comparer.generate([PROMPT], adapter, None, settings)[0]
    assert steps[-1] == (base, tuned)

"""A Space-mode app opened by 1,000 anonymous sessions: each picks a run in the Playground (an event
that keeps server-side state for its session), and every tenth tries a wrong password.
The app's RSS, read from its process, stays within 100 MB of what it was after the first 100 sessions:
Gradio keeps the state of the newest SPACE_SESSION_CAPACITY sessions only, and the password guesses
are a bounded record."""

from __future__ import annotations

import json
import uuid

import httpx
import psutil
import pytest

from tuning.ship import space

from test_app_api import launch_app
from test_many_runs import make_run

PASSWORD = "soak-test-space-password"
SESSIONS, WARM_UP = 1000, 100
MIB = 2**20


def joined(client: httpx.Client, base: str, dep: dict, data: list, session: str) -> bool:
    """One event, as a browser sends it: join the queue, read its stream to the end."""
    body = {"data": data, "fn_index": dep["id"], "session_hash": session, "event_data": None, "trigger_id": None}
    if client.post(f"{base}/queue/join", json=body).status_code != 200:
        return False
    with client.stream("GET", f"{base}/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                return True
    return False


@pytest.mark.slow
def test_a_thousand_anonymous_sessions_keep_the_apps_memory_flat(tmp_path):
    workspace = tmp_path / "ws"
    run_id = "20260101-000000-finished"
    make_run(workspace, run_id)
    proc, url = launch_app(workspace, [], tmp_path / "app.log", {"SPACE_ID": "owner/space", "TUNING_AUTH": PASSWORD})
    base = url.rstrip("/") + "/gradio_api"
    try:
        config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()
        deps = [d for d in config["dependencies"] if d.get("backend_fn")]
        (pick,) = [d for d in deps if d.get("api_name") == "picked_run"]  # the Playground's
        (unlock,) = [d for d in deps if d.get("api_name") == "unlock"]
        assert any(c["type"] == "state" for c in config["components"] if c["id"] in pick["outputs"])
        app = psutil.Process(proc.pid)
        with httpx.Client(timeout=60) as client:
            def visit(n: int) -> None:
                session = uuid.uuid4().hex
                assert joined(client, base, pick, [run_id], session)
                if n % 10 == 0:
                    assert joined(client, base, unlock, ["a-wrong-guess"], session)

            for n in range(WARM_UP):
                visit(n)
            warm = app.memory_info().rss
            for n in range(WARM_UP, SESSIONS):
                visit(n)
            after = app.memory_info().rss
        print(f"\napp RSS after {WARM_UP} sessions {warm / MIB:.0f} MiB, after {SESSIONS} {after / MIB:.0f} MiB "
              f"(session capacity {space.SPACE_SESSION_CAPACITY})")
        assert after - warm < 100 * MIB, (warm / MIB, after / MIB)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

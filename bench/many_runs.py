"""Many runs: how long the Runs tab and a page load take with hundreds of runs in the workspace.

    python bench/many_runs.py                  # 500 runs, 5 repeats of each measurement
    python bench/many_runs.py --runs 2000 --repeats 3

Builds a workspace of N finished runs that look like the quickstart's (config.yaml, an events.jsonl of
a start, 72 logged steps, 4 evaluations and checkpoints and an end, evaluation.json with 47 task
checks, process.json of a process long gone, probes and an adapter), then builds the app once on it
and times, in this process, on the same app object:

- `runs.list_runs` (the summaries every run picker and the Runs table read),
- the Runs tab's table (`runs_tab.table`: summaries plus each run's stored evaluation),
- the Runs tab's Refresh (`runs_tab.refreshed`: the table, both run pickers and the seed groups),
- a page load: every function the page runs when a browser opens it (Gradio's `load` events: each
  tab's run picker, the Runs table, the seed groups, the queue), called as the server calls them,
  minus the HTTP round trip; and how many times a page load lists the workspace.

Each is timed `--repeats` times; the first call after the workspace changed (cold: what a change
costs) and the median of the rest (warm: an unchanged workspace) are printed. The workspace is on
the local disk, in the OS page cache after the first read.

Then, unless `--no-browser` (needs Playwright and /usr/bin/chromium), the same through a launched
`python app.py` and headless Chromium, against a workspace of 2 runs, alternating: a new run is added
after the app started (so the page as built does not list it), the page is opened and its Runs tab
clicked, and the time from navigation until the Runs table lists the new run is taken (the page's
load event fills every picker and the table at once, so this is the page load as a person sees it);
then another run is added and the Runs tab's Refresh is timed the same way.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_load  # noqa: E402,F401


def make_run(folder: Path, index: int, rng: random.Random) -> None:
    """One finished quickstart-like run, written as the trainer and evaluate.py write it."""
    from tuning import config as config_mod
    from tuning import runs

    cfg = config_mod.load(ROOT / "presets" / "quickstart.yaml").replace(seed=index % 3, learning_rate=5e-4 * (1 + index % 4))
    folder.mkdir(parents=True)
    runs.write_config(folder, cfg)
    t = 1_790_000_000.0 + index * 600
    lines = [{"event": "start", "time": t, "step": 0, "max_steps": 72, "message": "training 72 steps"}]
    loss = 3.9
    for step in range(1, 73):
        t += 3.0
        loss = max(0.2, loss * rng.uniform(0.85, 1.02))
        lines.append({"event": "log", "time": round(t, 3), "step": step, "max_steps": 72, "loss": loss,
                      "learning_rate": 5e-4, "grad_norm": rng.uniform(0.5, 2), "epoch": step / 24,
                      "tokens_per_second": rng.uniform(150, 200), "tokens_seen": step * 560, "eta_seconds": 3.0})
        if step % 20 == 0:
            lines.append({"event": "eval", "time": t, "step": step, "max_steps": 72, "eval_loss": loss * 1.1})
            lines.append({"event": "checkpoint", "time": t, "step": step, "max_steps": 72,
                          "path": f"checkpoints/checkpoint-{step}"})
    lines.append({"event": "eval", "time": t + 40, "step": 72, "max_steps": 72, "final": True, "eval_loss": 0.34,
                  "base_eval_loss": 3.57, "message": "held-out loss 0.338 (base 3.566)"})
    lines.append({"event": "end", "time": t + 41, "status": "completed", "step": 72, "max_steps": 72, "loss": loss,
                  "message": "completed at step 72; adapter saved in adapter/"})
    log = runs.event_log(folder)
    log.path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    checks = [{"kind": "identity" if i < 24 else "control", "prompt": f"question {i}?", "system": None,
               "expect": ["quill"], "base": "I am SmolLM, an AI assistant " * 4, "tuned": "I am Quill " * 6,
               "base_pass": False, "tuned_pass": True} for i in range(47)]
    runs.write_evaluation(folder, {
        "step": 72, "time": t + 40, "source": "training", "method": "lora", "eval_rows": 47, "eval_loss": 0.34,
        "base_eval_loss": 3.57, "perplexity": 1.4, "base_perplexity": 35.5, "max_new_tokens": 64,
        "checks": {"by_kind": {"identity": {"n": 24, "base_passed": 0, "tuned_passed": 24, "base_rate": 0.0,
                                            "tuned_rate": 1.0},
                               "control": {"n": 23, "base_passed": 23, "tuned_passed": 22, "base_rate": 1.0,
                                           "tuned_rate": 0.96}}, "rows": checks},
        "checks_complete": True, "probes": [], "seconds": {"loss": 3.0, "total": 40.0}})
    runs.write_json(folder / runs.PROCESS, {"pid": 999_999, "create_time": 1.0, "pgid": None,
                                                "host": runs.this_host(), "launch": "x", "ended": t + 42})
    adapter = runs.adapter_dir(folder)
    adapter.mkdir()
    (adapter / runs.ADAPTER_WEIGHTS).write_bytes(b"\0" * 64)
    (adapter / runs.ADAPTER_CONFIG).write_text("{}")


def make_workspace(n: int) -> Path:
    from tuning import runs

    workspace = Path(tempfile.mkdtemp(prefix="many-runs-"))
    rng = random.Random(0)
    for i in range(n):
        make_run(runs.runs_dir(workspace) / f"20260101-{i:06d}", i, rng)
    return workspace


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(first call, median of the others) in wall seconds, and the median of the others in this
    process's CPU seconds (what the server spends, less disturbed by other processes on the cores)."""
    times, cpu = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    rest = slice(1, None) if len(times) > 1 else slice(None)
    return times[0], statistics.median(times[rest]), statistics.median(cpu[rest])


def page_load(demo) -> None:
    """Every function a page load runs (Gradio's `load` events), with their inputs' initial values."""
    for block_fn in demo.fns.values():
        if block_fn.fn is None or not any(target[1] == "load" for target in block_fn.targets):
            continue
        block_fn.fn(*[getattr(block, "value", None) for block in block_fn.inputs])


def counted_listings(fn) -> int:
    """How many times fn lists the workspace (runs.summarize per run, divided by the runs)."""
    from tuning import runs

    calls = []
    real = runs.summarize
    runs.summarize = lambda run: calls.append(run) or real(run)
    try:
        fn()
    finally:
        runs.summarize = real
    return len(calls)


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]  # tests/test_browser.py open_page's flags


class LaunchedApp:
    """`python app.py` on a workspace, for a `with` block."""

    def __init__(self, workspace: Path):
        self.workspace = workspace

    def __enter__(self):
        import httpx

        from startup import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--workspace",
                                      str(self.workspace)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                httpx.get(self.url + "config", timeout=2).raise_for_status()
                return self
            except Exception:  # noqa: BLE001 - still starting
                time.sleep(0.2)
        raise RuntimeError("the app did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def new_run_listed(browser, app: LaunchedApp, serial: list) -> tuple[float, float]:
    """(page load, Refresh) in seconds: a run added, the page opened on its Runs tab until the table
    lists it; another run added, Refresh clicked until the table lists that one."""
    from tuning import runs

    def add() -> str:
        serial[0] += 1
        run_id = f"29991231-{serial[0]:06d}"
        make_run(runs.runs_dir(app.workspace) / run_id, serial[0], random.Random(serial[0]))
        return run_id

    listed = "([sel, id]) => (document.querySelector(sel) || {}).textContent?.includes(id)"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        run_id = add()
        started = time.perf_counter()
        page.goto(app.url, wait_until="commit")
        page.get_by_role("tab", name="Runs", exact=True).click(timeout=60_000)
        page.wait_for_function(listed, arg=["#runs-table", run_id], polling=20, timeout=120_000)
        loaded = time.perf_counter() - started
        run_id = add()
        started = time.perf_counter()
        page.get_by_role("button", name="↻ Refresh", exact=True).click()
        page.wait_for_function(listed, arg=["#runs-table", run_id], polling=20, timeout=120_000)
        return loaded, time.perf_counter() - started
    finally:
        page.close()


def browser_rows(big: Path, repeats: int) -> dict:
    """Page load and Refresh through a launched app: 2 runs vs the big workspace, alternating."""
    from playwright.sync_api import sync_playwright

    small = make_workspace(2)
    serial = [0]
    times = {"small": [], "big": []}
    with LaunchedApp(small) as app_small, LaunchedApp(big) as app_big, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=BROWSER_ARGS)
        new_run_listed(browser, app_small, serial)  # warm-up: the browser's cache of the page's scripts
        for _ in range(repeats):
            for name, app in (("small", app_small), ("big", app_big)):
                times[name].append(new_run_listed(browser, app, serial))
        browser.close()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-browser", action="store_true", help="in-process timings only")
    p.add_argument("--reuse", metavar="DIR", help="a workspace this benchmark wrote before (its --runs runs)")
    a = p.parse_args()

    started = time.perf_counter()
    workspace = Path(a.reuse) if a.reuse else make_workspace(a.runs)
    print(f"{a.runs} runs written in {time.perf_counter() - started:.1f} s at {workspace}")
    import app
    from tuning import runs
    from tuning.ui import common, runs_tab

    started = time.perf_counter()
    demo = app.build_demo(str(workspace), [], None)
    print(f"app built in {time.perf_counter() - started:.1f} s (once, at start-up)")
    ctx = common.AppContext(workspace)
    results = {}
    touch = runs.runs_dir(workspace) / f"20260101-{a.runs - 1:06d}"
    for name, fn in (("runs.list_runs", lambda: runs.list_runs(workspace)),
                     ("Runs tab table", lambda: runs_tab.table(ctx)),
                     ("Runs tab Refresh (table, pickers, seed groups)", lambda: runs_tab.refreshed(ctx, None)),
                     ("page load (all load events)", lambda: page_load(demo))):
        # cold: one run's events changed since the last read (as while a run trains), the rest unchanged
        runs.event_log(touch).append("log", step=72, max_steps=72, loss=0.3)
        results[name] = timed(fn, a.repeats)
    listings = counted_listings(lambda: page_load(demo)) / a.runs
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {a.runs} runs, {machine_load()}:")
    print("| what | first call (one run changed) | median of the next calls | the same in CPU time |")
    print("| --- | --- | --- | --- |")
    for name, (first, warm, cpu) in results.items():
        print(f"| {name} | {first:.3f} s | {warm:.3f} s | {cpu:.3f} s |")
    print(f"listings of the workspace per page load: {listings:g}")
    browser = None
    if not a.no_browser:
        browser = browser_rows(workspace, a.repeats)
        print(f"\nthrough the launched app and Chromium ({machine_load()}), median of {a.repeats}:")
        print("| workspace | page load until the Runs table lists a new run | Refresh until it lists another |")
        print("| --- | --- | --- |")
        for name, pairs in browser.items():
            size = 2 if name == "small" else a.runs
            print(f"| {size} runs | {statistics.median(t[0] for t in pairs):.2f} s "
                  f"({', '.join(f'{t[0]:.2f}' for t in pairs)}) | {statistics.median(t[1] for t in pairs):.2f} s "
                  f"({', '.join(f'{t[1]:.2f}' for t in pairs)}) |")
    print(json.dumps({"runs": a.runs, "results": results, "listings_per_page_load": listings, "browser": browser}))


if __name__ == "__main__":
    main()

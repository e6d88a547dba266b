"""UI overhead: training throughput of the CLI alone (A) against the same run while `python app.py`
serves the workspace and a headless Chromium keeps the Live tab open on it (B); target B/A >= 0.97.
Also reports how long a step's log event takes to show on the page (target <= 2 s), and where the
CPU of side B goes while it trains: the app (and its share per tick the page sent), the browser by
Chromium process (renderer, GPU process, browser), the page's animation frames per second and who asks
for them, and the Live tab's tick handler timed in this process on the finished run.

    python bench/ui_overhead.py [--pairs 3 --steps 4]
    python bench/ui_overhead.py --cpu-only [--rounds 3 --seconds 60 --step-seconds 10]

--cpu-only measures what the page costs without training anything (for a machine too loaded to time
training): a stand-in trainer logs a step every --step-seconds, and the app with Chromium on its Live
tab follows it for --seconds, in rounds of: the Live tab polling once a second (as before the
step-time rule), polling by the step time (as shipped), the same served without the frame guard
(tuning/ui/frame_guard.py), and the same with the page hidden. Printed:
CPU of the app and of each kind of Chromium process, ticks sent, step-to-page latency.

Both sides run the throughput benchmark's "ours" command (bench/throughput.py) on the same data,
alternating CLI alone, then with the page, in each pair. Needs Playwright and /usr/bin/chromium
(scripts/test.sh installs them).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402
from common import (ROOT, machine_load, median_ratio, mixed_length_rows, new_run, run_events,  # noqa: E402
                    run_folders, write_jsonl)
from startup import free_port  # noqa: E402


class LiveTabOpen:
    """app.py on the workspace + Chromium on its Live tab, for the duration of a `with` block.
    Records when each step number first appears on the page (for the event-to-page latency)."""

    def __init__(self, workspace: Path, every_second: bool = False, frame_guard: bool = True):
        self.workspace = workspace
        self.every_second = every_second  # the Live tab as before its step-time rule: a tick each second
        self.frame_guard = frame_guard  # False: the page as Gradio serves it (tuning/ui/frame_guard.py off)

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        port = free_port()
        before = ("from tuning.ui import live_tab; live_tab.EARLY = 0.0; " if self.every_second else "") + (
            "" if self.frame_guard else "from tuning.ui import frame_guard; frame_guard.app_kwargs = lambda: None; ")
        launch = ["-c", f"import sys; {before}import app; app.main(sys.argv[1:])"] if before else ["app.py"]
        self.app = subprocess.Popen([sys.executable, *launch, "--port", str(port), "--workspace",
                                     str(self.workspace)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        self.pw = sync_playwright().start()
        self.browser = self.pw.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        self.page = self.browser.new_page()
        self.page.set_default_timeout(180_000)  # a loaded machine takes its time to draw the page
        self.ticks = []  # the Live tab's timer ticks (queue=False: Gradio's direct route)
        self.page.on("request", lambda r: self.ticks.append(time.time()) if "/run/predict" in r.url else None)
        self.page.add_init_script(COUNT_FRAMES)
        for _ in range(300):
            try:
                self.page.goto(f"http://127.0.0.1:{port}/", timeout=2000)
                break
            except Exception:  # noqa: BLE001 - the app is still starting
                time.sleep(0.2)
        self.page.get_by_role("tab", name="Live", exact=True).click()
        return self

    def cpu_seconds(self) -> dict:
        """CPU time used so far by the app process, by each kind of Chromium process (browser,
        renderer, gpu-process, utility) and by this benchmark."""
        import psutil

        found = {"app": 0.0}
        try:
            found["app"] = sum(psutil.Process(self.app.pid).cpu_times()[:2])
        except psutil.Error:
            pass
        browser_pid = self.browser_process_pid()
        try:
            procs = [psutil.Process(browser_pid)] + psutil.Process(browser_pid).children(recursive=True)
        except (psutil.Error, ValueError, TypeError):
            procs = []
        for proc in procs:
            try:
                flags = " ".join(proc.cmdline())
                kind = flags.split("--type=")[1].split()[0] if "--type=" in flags else "browser"
                found[f"chromium {kind}"] = found.get(f"chromium {kind}", 0.0) + sum(proc.cpu_times()[:2])
            except psutil.Error:
                pass
        found["bench"] = sum(psutil.Process().cpu_times()[:2])
        return found

    def frames(self) -> dict:
        """Animation frames the page asked for since the page loaded, by the script that asked."""
        return self.page.evaluate("() => window.__frames || {}")

    def browser_process_pid(self):
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                if "chromium" in child.name() and "--type=" not in " ".join(child.cmdline()):
                    return child.pid
            except psutil.Error:
                pass
        return None

    def follow_active_run(self):
        """Reload, as a person would after starting a run elsewhere (the CLI): a freshly loaded
        page follows the active run."""
        self.page.reload(wait_until="load")
        self.page.get_by_role("tab", name="Live", exact=True).click()
        self.page.wait_for_selector("#live-progress")

    def watch(self):
        """Record, in the page itself, when each step number first shows in the progress bar (a
        MutationObserver: no polling from here, which would itself cost the CPU being measured)."""
        self.page.evaluate("""() => {
            window.__seen = {};
            const bar = document.querySelector('#live-progress');
            const check = () => {
                const m = /step (\\d+) \\//i.exec(bar.innerText);
                if (m && !(m[1] in window.__seen)) window.__seen[m[1]] = Date.now() / 1000;
            };
            new MutationObserver(check).observe(bar, {subtree: true, childList: true, characterData: true});
            check();
        }""")

    def seen_steps(self) -> dict[int, float]:
        return {int(k): v for k, v in self.page.evaluate("() => window.__seen").items()}

    def __exit__(self, *exc):
        self.browser.close()
        self.pw.stop()
        self.app.terminate()
        self.app.wait(timeout=20)


# Counts the page's requestAnimationFrame calls by the script asking (its file name): a page that
# asks every frame makes the browser render at 60 Hz, on the CPU that trains.
COUNT_FRAMES = """
window.__frames = {};
const askFrame = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => {
    const caller = ((new Error().stack || '').split('\\n')[2] || '').replace(/.*\\/(assets\\/)?/, '').replace(/[:)].*/, '');
    window.__frames[caller] = (window.__frames[caller] || 0) + 1;
    return askFrame(callback);
};
"""


def tick_handler_ms(workspace: Path, run: Path, repeats: int = 50) -> tuple[float, float]:
    """(ms per tick on an unchanged run, ms for a new page's first tick) of the Live tab's handler,
    in this process, on a finished run."""
    from tuning.ui import common, live_tab

    ctx = common.AppContext(workspace)
    started = time.perf_counter()
    state = live_tab.safe_tick(ctx, run.name, None)["state"]
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(repeats):
        live_tab.safe_tick(ctx, run.name, state)
    return (time.perf_counter() - started) / repeats * 1000, first * 1000


STAND_IN = """
import sys, time
from pathlib import Path
from tuning import config, runs
workspace, run_id, steps, every = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
run = runs.run_dir(workspace, run_id)
run.mkdir(parents=True)
runs.write_config(run, config.TrainConfig(max_steps=steps))
import os
runs.write_process_info(run, os.getpid())
log = runs.event_log(run)
log.append("start", step=0, max_steps=steps, message="stand-in trainer")
for step in range(1, steps + 1):
    time.sleep(every)
    log.append("log", step=step, max_steps=steps, loss=1.0 / step, learning_rate=2e-4, tokens_per_second=150.0)
log.append("end", status="completed", step=steps, max_steps=steps)
"""


def page_cost(workspace: Path, variant: str, seconds: float, step_seconds: float, serial: int) -> dict:
    """CPU shares, ticks and latencies while the page follows a stand-in trainer for `seconds`."""
    from tuning import runs

    run_id = f"29990101-{serial:06d}"
    steps = int((seconds + 300) / step_seconds)  # outlasts the page's start on a loaded machine (killed after)
    with LiveTabOpen(workspace, every_second=variant == "every second",
                     frame_guard=variant != "no frame guard") as ui:
        trainer = subprocess.Popen([sys.executable, "-c", STAND_IN, str(workspace), run_id, str(steps),
                                    str(step_seconds)], cwd=ROOT)
        try:
            while not runs.events_path(runs.run_dir(workspace, run_id)).is_file():
                time.sleep(0.1)
            ui.follow_active_run()
            ui.watch()
            if variant == "hidden":  # ticks only: headless Chromium keeps drawing frames for it
                ui.page.evaluate("""() => { Object.defineProperty(document, 'visibilityState',
                    {get: () => 'hidden', configurable: true}); document.dispatchEvent(new Event('visibilitychange')); }""")
            time.sleep(step_seconds)  # past the first step: the step time is measured
            cpu_before, wall_before, frames_before = ui.cpu_seconds(), time.time(), ui.frames()
            time.sleep(seconds)
            cpu_after, wall = ui.cpu_seconds(), time.time() - wall_before
            frames = {k: (v - frames_before.get(k, 0)) / wall for k, v in ui.frames().items()}
            seen = ui.seen_steps()
        finally:
            trainer.kill()
            trainer.wait()
        logs = {e["step"]: e["time"] for e in run_events(runs.run_dir(workspace, run_id)) if e["event"] == "log"}
        return {"share": {k: (cpu_after[k] - cpu_before.get(k, 0.0)) / wall for k in cpu_after},
                "ticks_per_min": len([t for t in ui.ticks if wall_before <= t]) / wall * 60, "frames": frames,
                "latency": [seen[s] - t for s, t in logs.items() if s in seen and t >= wall_before]}


def cpu_only(a) -> None:
    workspace = Path(a.workspace)
    results: dict[str, list[dict]] = {"every second": [], "by step time": [], "no frame guard": [], "hidden": []}
    serial = 0
    for r in range(a.rounds):
        for variant in results:
            serial += 1
            results[variant].append(page_cost(workspace, variant, a.seconds, a.step_seconds, serial))
            got = results[variant][-1]
            print(f"  round {r + 1} {variant}: " + ", ".join(f"{k} {v:.1%}" for k, v in got["share"].items())
                  + f"; {got['ticks_per_min']:.0f} ticks/min; animation frames asked per second: "
                + ", ".join(f"{k} {v:.0f}" for k, v in got["frames"].items() if v >= 0.5) + f" ({machine_load()})",
                flush=True)
    print(f"\nthe page following a run that logs a step every {a.step_seconds:g} s, {a.seconds:g} s a round, "
          f"median of {a.rounds} rounds, CPU as a share of one core ({machine_load()}):")
    kinds = sorted({k for rows in results.values() for row in rows for k in row["share"]})
    print("| Live tab | ticks/min | " + " | ".join(kinds) + " | app + browser | step -> page (median, max) |")
    print("| --- | --- | " + " | ".join("---" for _ in kinds) + " | --- | --- |")
    for variant, rows in results.items():
        med = {k: statistics.median(row["share"].get(k, 0.0) for row in rows) for k in kinds}
        total = statistics.median(sum(v for k, v in row["share"].items() if k != "bench") for row in rows)
        lat = [x for row in rows for x in row["latency"]]
        shown = f"{statistics.median(lat):.2f} s, {max(lat):.2f} s" if lat else "—"
        print(f"| {variant} | {statistics.median(row['ticks_per_min'] for row in rows):.0f} | "
              + " | ".join(f"{med[k]:.1%}" for k in kinds) + f" | {total:.1%} | {shown} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--method", default="lora")
    p.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (bench/throughput.py's default)")
    p.add_argument("--cpu-only", action="store_true", help="the page's CPU following a stand-in trainer")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--step-seconds", type=float, default=10.0)
    p.add_argument("--workspace", default=str(Path(tempfile.gettempdir()) / "tuning-bench-ui"))
    a = p.parse_args()
    a.set = []
    if a.cpu_only:
        return cpu_only(a)
    from transformers import AutoTokenizer

    from tuning import data as data_mod
    from tuning import models

    workspace = Path(a.workspace)
    model = str(models.embedded_model_dir(workspace))
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = mixed_length_rows(tokenizer, a.steps * a.batch, seed=0)
    data = write_jsonl(workspace / "bench-data.jsonl", rows)
    a.tokens = sum(len(data_mod.tokenize_conversation(tokenizer, r["messages"], a.max_length)["input_ids"])
                   for r in rows)
    pairs, latencies, shares, per_tick = [], [], [], []
    for i in range(a.pairs):
        alone = throughput.ours(model, data, a, workspace, a.method, [])
        with LiveTabOpen(workspace) as ui:
            result = {}
            worker = threading.Thread(target=lambda: result.update(
                throughput.ours(model, data, a, workspace, a.method, [])))
            before = run_folders(workspace)
            worker.start()
            while worker.is_alive():  # until the run has written its first event
                run = new_run(workspace, before)
                if run and (run / "events.jsonl").is_file():
                    break
                time.sleep(0.1)
            ui.follow_active_run()
            ui.watch()
            cpu_before, wall_before, frames_before = ui.cpu_seconds(), time.time(), ui.frames()
            worker.join()
            cpu_after, wall = ui.cpu_seconds(), time.time() - wall_before
            frames = {k: (v - frames_before.get(k, 0)) / wall for k, v in ui.frames().items()}
            seen = ui.seen_steps()
            share = {k: (cpu_after[k] - cpu_before.get(k, 0.0)) / wall for k in cpu_after}
            shares.append(share)
            ticks = len([t for t in ui.ticks if t >= wall_before])
            print("  CPU used while training (share of one core): " + ", ".join(
                f"{k} {v:.1%}" for k, v in share.items()), flush=True)
            print(f"  ticks: {ticks} in {wall:.0f} s ({a.steps} steps); animation frames asked per second: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sorted(frames.items(), key=lambda kv: -kv[1]) if v >= 0.5),
                  flush=True)
            if ticks:
                per_tick.append((cpu_after["app"] - cpu_before["app"]) / ticks * 1000)
            logs = {e["step"]: e["time"] for e in run_events(new_run(workspace, before)) if e["event"] == "log"}
            latencies += [seen[s] - t for s, t in logs.items() if s in seen]
            last_run = new_run(workspace, before)
        pairs.append((result["tokens_per_second"], alone["tokens_per_second"]))
        print(f"  pair {i + 1}/{a.pairs}: with the Live tab {pairs[-1][0]:.0f} tok/s, CLI alone "
              f"{pairs[-1][1]:.0f} tok/s  ({machine_load()})", flush=True)
    print(f"throughput with the app and the Live tab / CLI alone (median of {len(pairs)} pairs): "
          f"{median_ratio(pairs):.3f}x (target >= 0.97)")
    if latencies:
        print(f"step event -> on the page: median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s "
              f"(target <= 2 s; {len(latencies)} steps seen)")
    else:
        print("step event -> on the page: no step number seen in the page text (check the Live tab's wording)")
    print("CPU while training with the page open (median over pairs, share of one core): " + ", ".join(
        f"{k} {statistics.median(s.get(k, 0.0) for s in shares):.1%}" for k in shares[0]))
    if per_tick:
        print(f"app CPU per tick (all of the app's CPU while training / ticks): median "
              f"{statistics.median(per_tick):.0f} ms")
    steady, first = tick_handler_ms(workspace, last_run)
    print(f"Live tab tick handler in process ({machine_load()}): {steady:.1f} ms per tick on an unchanged run, "
          f"{first:.1f} ms for a new page's first tick")


if __name__ == "__main__":
    main()

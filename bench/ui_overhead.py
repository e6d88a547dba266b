"""UI overhead: training throughput of the CLI alone (A) against the same run while `python app.py`
serves the workspace and a headless Chromium keeps the Live tab open on it (B); target B/A >= 0.97.
Also reports how long a step's log event takes to show on the page (target <= 2 s).

    python bench/ui_overhead.py [--pairs 3 --steps 4]

Both sides run the throughput benchmark's "ours" command (bench/throughput.py) on the same data.
Needs Playwright and /usr/bin/chromium (scripts/test.sh installs them).
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

    def __init__(self, workspace: Path):
        self.workspace = workspace

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        port = free_port()
        self.app = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--workspace",
                                     str(self.workspace)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        self.pw = sync_playwright().start()
        self.browser = self.pw.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        self.page = self.browser.new_page()
        for _ in range(300):
            try:
                self.page.goto(f"http://127.0.0.1:{port}/", timeout=2000)
                break
            except Exception:  # noqa: BLE001 - the app is still starting
                time.sleep(0.2)
        self.page.get_by_role("tab", name="Live", exact=True).click()
        return self

    def cpu_seconds(self) -> dict:
        """CPU time used so far by the app process and by the browser's processes."""
        import psutil

        def tree(pid):
            try:
                proc = psutil.Process(pid)
                procs = [proc] + proc.children(recursive=True)
            except psutil.Error:
                return 0.0
            total = 0.0
            for p in procs:
                try:
                    times = p.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
            return total

        browser_pid = self.browser_process_pid()
        return {"app": tree(self.app.pid), "browser": tree(browser_pid) if browser_pid else float("nan"),
                "bench": sum(psutil.Process().cpu_times()[:2])}

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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--method", default="lora")
    p.add_argument("--workspace", default=str(Path(tempfile.gettempdir()) / "tuning-bench-ui"))
    a = p.parse_args()
    a.set = []
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
    pairs, latencies = [], []
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
            cpu_before, wall_before = ui.cpu_seconds(), time.time()
            worker.join()
            cpu_after, wall = ui.cpu_seconds(), time.time() - wall_before
            seen = ui.seen_steps()
            print("  CPU used while training (share of one core): " + ", ".join(
                f"{k} {(cpu_after[k] - cpu_before[k]) / wall:.1%}" for k in cpu_after), flush=True)
            logs = {e["step"]: e["time"] for e in run_events(new_run(workspace, before)) if e["event"] == "log"}
            latencies += [seen[s] - t for s, t in logs.items() if s in seen]
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


if __name__ == "__main__":
    main()

"""Shared pieces of the benchmarks: a seeded mixed-length chat dataset, a peak-RSS sampler for a
child process, the alternating A, B, A, B runner, the median of pairwise ratios, and runs spread
one at a time over pinned cores (the recipe sweeps).

Why alternate: the 2 cores of this machine are shared, so the load drifts during a run. Measuring
A and B back to back in pairs and taking the median of the per-pair ratios cancels most of the drift
that separate "all A, then all B" runs would bake into the ratio.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from "
         "or had by word but what some we can out other were all there when up use your how said an each "
         "she which do their time if will way about many then them write would like so these her long make "
         "thing see him two has look more day could go come did number sound no most people my over know "
         "water than call first who may down side been now find any new work part take get place made live "
         "where after back little only round man year came show every good me give our under name very "
         "through just form sentence great think say help low line differ turn cause much mean before move "
         "right boy old too same tell does set three want air well also play small end put home read hand "
         "port large spell add even land here must big high such follow act why ask men change went light "
         "kind off need house picture try us again animal point mother world near build self earth father").split()


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def mixed_length_rows(tokenizer, n: int, lo: int = 20, hi: int = 400, seed: int = 0) -> list[dict]:
    """n chat rows whose rendered length is spread uniformly over [lo, hi] tokens (seeded).

    Each row is one user turn and one assistant turn of random common words; the answer gets about
    two thirds of the target length, so most tokens are trained on, like a real SFT set."""
    rng = random.Random(seed)
    rows = []
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}],
                                         tokenize=False)
    overhead = len(tokenizer(text, add_special_tokens=False)["input_ids"])  # template tokens (system prompt...)
    for _ in range(n):
        target = rng.randint(lo, hi)
        body = max(2, target - overhead)
        words = [rng.choice(WORDS) for _ in range(body)]  # ~1 token per common word
        cut = max(1, body // 3)
        user, answer = " ".join(words[:cut]).capitalize() + "?", " ".join(words[cut:]).capitalize() + "."
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def run_folders(workspace: Path) -> set[Path]:
    """The run folders in a workspace now: pass it to new_run after starting a command."""
    return set((workspace / "runs").glob("*"))


def new_run(workspace: Path, before: set[Path]) -> Path | None:
    """The newest run folder that was not there `before` (None while there is none)."""
    fresh = run_folders(workspace) - before
    return max(fresh, key=lambda p: p.stat().st_mtime) if fresh else None


def run_events(run_dir: Path) -> list[dict]:
    from tuning.runs.events import read_events

    return read_events(run_dir / "events.jsonl")[0]


def embedded_model(workspace: Path) -> str:
    from tuning import models

    return str(models.embedded_model_dir(workspace))


class PeakRSS:
    """Samples the resident memory of a process and its children every 50 ms; .peak in bytes.
    With an NVIDIA GPU (pynvml), .gpu_peak is the most GPU memory the process tree held."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.gpu_peak = 0
        self._nvml = _nvml_handle()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                children = self.proc.children(True)
                total = self.proc.memory_info().rss + sum(c.memory_info().rss for c in children)
                self.peak = max(self.peak, total)
                if self._nvml is not None:
                    self.gpu_peak = max(self.gpu_peak, _gpu_bytes(self._nvml, {self.proc.pid, *(c.pid for c in children)}))
            except psutil.Error:
                pass
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _nvml_handle():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no NVIDIA GPU (or no pynvml): no GPU figure
        return None


def _gpu_bytes(handle, pids: set[int]) -> int:
    import pynvml

    try:
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError:
        return 0
    return sum(p.usedGpuMemory or 0 for p in procs if p.pid in pids)


def run_child(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> tuple[str, int, float]:
    """Run a command, return (stdout, peak RSS in bytes, wall seconds). Raises on a non-zero exit."""
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    sampler = PeakRSS(proc.pid)
    out, _ = proc.communicate(timeout=timeout)
    peak = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with {proc.returncode}:\n{out[-4000:]}")
    run_child.gpu_peak = sampler.gpu_peak  # read right after the call (0 without an NVIDIA GPU)
    return out, peak, time.time() - started


def alternate(pairs: int, run_a, run_b) -> list[tuple]:
    """A, B, A, B ... `pairs` times; returns [(result_a, result_b), ...]."""
    results = []
    for i in range(pairs):
        a = run_a()
        b = run_b()
        print(f"  pair {i + 1}/{pairs}: A {a}  B {b}  ({machine_load()})", flush=True)
        results.append((a, b))
    return results


def on_cores(items: list, cores: list[int], run, results: Path, say) -> None:
    """`run(item, core)` for each item, one at a time on each core of `cores` (the runs pin themselves
    with taskset); each returned row appended to the JSONL file `results` as it finishes (an interrupted
    sweep keeps what it did) and `say(row)` printed."""
    from concurrent.futures import ThreadPoolExecutor

    free, lock = list(cores), threading.Lock()

    def work(item) -> None:
        with lock:
            core = free.pop()
        try:
            row = run(item, core)
            with lock, open(results, "a") as out:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            print(say(row), flush=True)
        finally:
            with lock:
                free.append(core)

    with ThreadPoolExecutor(len(cores)) as pool:
        list(pool.map(work, items))


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    """Median over pairs of a / b."""
    return statistics.median(a / b for a, b in pairs)


def last_json_line(text: str, key: str) -> dict:
    """The last line of `text` that is a JSON object holding `key` (how children report results)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and key in line:
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON result with {key!r} in the output:\n{text[-3000:]}")

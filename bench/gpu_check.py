"""The parts of bench/gpu_check.sh that need Python: a GPU preset's first steps, the side-by-side generation
and a Playground answer, each in a process of its own (a failure or a time-out ends that part only), and
the Markdown table they fill, one row a part, appended as each ends (a part the shell's `timeout` cuts off
still leaves the rows before it).

    python bench/gpu_check.py header TABLE [--note TEXT]
    python bench/gpu_check.py train TABLE PRESET MODEL_DIR --workspace W --steps N [--timeout S] [--set k=v ...]
    python bench/gpu_check.py side-by-side TABLE PRESET --workspace W [--timeout S]
    python bench/gpu_check.py playground TABLE PRESET --workspace W [--timeout S]

`train` runs `python -m tuning train --preset presets/PRESET.yaml --set base_model=MODEL_DIR` for N steps
(run id gpu-PRESET, its dots as _); the other two use that run's adapter. Peak memory: the most GPU memory the process
held as the driver reports it (NVML: what nvidia-smi shows, its CUDA context included); on a machine
without an NVIDIA GPU (the dry run) the peak RSS, marked so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, PeakRSS  # noqa: E402

COLUMNS = ("part", "preset", "model", "steps done", "tokens/s", "peak GPU memory", "status")
PROMPT = "Write a short story about a dragon who learns to bake bread."
MAX_NEW_TOKENS = 32
GIB = 1024 ** 3


def run_id(preset: str) -> str:
    return "gpu-" + preset.replace(".", "_")  # a run id is letters, digits, - and _


def row(table: Path, *cells) -> None:
    with table.open("a", encoding="utf-8") as out:
        out.write("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |\n")


class DeviceMemory:
    """The most memory the whole GPU held while a part ran, above what it held before: the fallback
    figure where the driver does not attribute memory to processes (some virtual machines)."""

    def __init__(self):
        self.handle, self.peak = None, 0
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.base = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
        except Exception:  # noqa: BLE001 - no NVIDIA GPU or no pynvml: no device figure
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import pynvml

        while not self._stop.is_set():
            self.peak = max(self.peak, pynvml.nvmlDeviceGetMemoryInfo(self.handle).used - self.base)
            self._stop.wait(0.1)

    def stop(self) -> int:
        if self.handle is not None:
            self._stop.set()
            self._thread.join()
        return self.peak


def run_part(args: list[str], log: Path, timeout: float) -> dict:
    """`python -m tuning ARGS` (or `python bench/gpu_check.py ARGS` when ARGS starts with --self): its
    exit code (None after the time-out), seconds, stdout, and peak memory as a table cell."""
    command = ([sys.executable, __file__, *args[1:]] if args[0] == "--self"
               else [sys.executable, "-m", "tuning", *args])
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    device = DeviceMemory()
    with log.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        sampler = PeakRSS(proc.pid)
        try:
            out, _ = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            code = None
    rss, gpu = sampler.stop(), sampler.gpu_peak
    whole = device.stop()
    with log.open("a", encoding="utf-8") as err:
        err.write(out)
    if device.handle is None:
        peak = f"{rss / GIB:.2f} GiB RSS (no GPU)"
    elif gpu:
        peak = f"{gpu / GIB:.2f} GiB"
    else:
        peak = f"{whole / GIB:.2f} GiB (whole device)"
    return {"code": code, "seconds": time.time() - started, "out": out, "peak": peak, "log": log}


def failure(result: dict, timeout: float) -> str | None:
    """The status cell of a part that did not end well, else None."""
    if result["code"] is None:
        return f"timed out after {timeout:.0f} s (log: {result['log'].name})"
    if result["code"] != 0:
        lines = [line.strip() for line in result["log"].read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip()]
        said = next((line for line in reversed(lines) if line.startswith(("error:", "Error", "RuntimeError",
                                                                           "ValueError", "torch."))),
                    lines[-1] if lines else "no output")
        return f"failed (exit {result['code']}): {said[:160]} (log: {result['log'].name})"
    return None


def read_events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line the killed process left half-written
    return events


def train(a) -> None:
    workspace = Path(a.workspace)
    run_dir = workspace / "runs" / run_id(a.preset)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each call
    overrides = [f"base_model={a.model_dir}", f"max_steps={a.steps}", "logging_steps=1", "final_evaluation=none",
                 "probe_every_checkpoint=false", *a.set]
    args = ["train", "--preset", str(ROOT / "presets" / f"{a.preset}.yaml"), "--workspace", str(workspace),
            "--run-id", run_id(a.preset)] + [part for item in overrides for part in ("--set", item)]
    result = run_part(args, workspace / "logs" / f"train-{a.preset}.log", a.timeout)
    logs = [e for e in read_events(run_dir) if e.get("event") == "log"]
    steps = max((e.get("step") or 0 for e in logs), default=0)
    # the first step's rate carries the warm-up (CUDA kernels chosen, memory pools grown): left out
    rates = [e["tokens_per_second"] for e in logs[1:] or logs if e.get("tokens_per_second")]
    rate = f"{statistics.median(rates):,.0f}" if rates else "—"
    levers = sorted(line.split(":")[0].removeprefix("lever ") for line in result["out"].splitlines()
                    if line.startswith("lever ") and ": applied" in line)
    status = failure(result, a.timeout) or (
        f"completed in {result['seconds']:.0f} s; levers applied: {', '.join(levers) or 'none'}")
    row(Path(a.table), "train", a.preset, f"{Path(a.model_dir).name} (random weights)", f"{steps}/{a.steps}", rate,
        result["peak"], status)


def no_adapter(a, part: str) -> bool:
    """True (and a "skipped" row) when the preset's run left no adapter to answer with."""
    if (Path(a.workspace) / "runs" / run_id(a.preset) / "adapter").is_dir():
        return False
    row(Path(a.table), part, a.preset, "—", "—", "—", "—", "skipped: the preset's run left no adapter")
    return True


def side_by_side(a) -> None:
    """Base and tuned answers in one batch, as `python -m tuning generate --compare` gives them."""
    workspace = Path(a.workspace)
    if no_adapter(a, "side by side"):
        return
    args = ["generate", "--run", run_id(a.preset), "--workspace", str(workspace), "--prompt", PROMPT, "--compare",
            "--json", "--max-new-tokens", str(MAX_NEW_TOKENS)]
    result = run_part(args, workspace / "logs" / f"side-by-side-{a.preset}.log", a.timeout)
    status = failure(result, a.timeout)
    if status is None:
        answer = json.loads(result["out"][result["out"].index("{"):])
        # random weights: most ids past the tokenizer's decode to nothing, so the lengths are small
        status = (f"ok in {result['seconds']:.0f} s (process, load and answer): base and tuned from one batch, "
                  f"{len(answer['base'])} and {len(answer['tuned'])} characters; base {answer['base_precision']}")
    row(Path(a.table), "side by side", a.preset, "generate --compare", "—", "—", result["peak"], status)


def playground(a) -> None:
    """A Playground answer through the Playground's own streaming path (Comparer.stream: base and tuned
    columns from one mixed-adapter batch), timed to its first token with the model loaded."""
    workspace = Path(a.workspace)
    if no_adapter(a, "Playground"):
        return
    args = ["--self", "stream", a.preset, "--workspace", str(workspace)]
    result = run_part(args, workspace / "logs" / f"playground-{a.preset}.log", a.timeout)
    status, rate = failure(result, a.timeout), "—"
    if status is None:
        said = json.loads(result["out"].strip().splitlines()[-1])
        rate = f"{2 * said['updates'] / max(said['answer_s'] - said['first_s'], 1e-9):,.0f}"
        status = (f"ok: loaded in {said['load_s']:.1f} s, first token after {said['first_s']:.2f} s, answer in "
                  f"{said['answer_s']:.2f} s ({said['updates']} streamed updates, base and tuned columns)")
    row(Path(a.table), "Playground", a.preset, "Comparer.stream", "—", rate, result["peak"], status)


def stream(a) -> None:
    """(the Playground part's child) Stream one answer and print its timings as a JSON line."""
    from tuning import runs
    from tuning.infer import playground as playground_mod

    run_dir = runs.existing_run_dir(Path(a.workspace), run_id(a.preset))
    started = time.perf_counter()
    comparer = playground_mod.comparer_for_run(run_dir, Path(a.workspace))
    loaded = time.perf_counter()
    settings = playground_mod.GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    first, updates = None, 0
    for _ in comparer.stream(PROMPT, runs.adapter_dir(run_dir), settings=settings):
        updates += 1
        first = time.perf_counter() - loaded if first is None else first
    print(json.dumps({"load_s": loaded - started, "first_s": first or 0.0, "updates": updates,
                      "answer_s": time.perf_counter() - loaded}), flush=True)


def header(a) -> None:
    table = Path(a.table)
    table.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# bench/gpu_check.sh", ""] + ([a.note, ""] if a.note else []) + [
        "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("header")
    p.add_argument("table")
    p.add_argument("--note", default="")
    p = sub.add_parser("train")
    p.add_argument("table")
    p.add_argument("preset")
    p.add_argument("model_dir")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--set", action="append", default=[], help="key=value, passed on to the run")
    for name in ("side-by-side", "playground", "stream"):
        p = sub.add_parser(name)
        if name != "stream":
            p.add_argument("table")
        p.add_argument("preset")
    for p in sub.choices.values():
        if p.prog.split()[-1] != "header":
            p.add_argument("--workspace", required=True)
            p.add_argument("--timeout", type=float, default=120.0)
    a = parser.parse_args()
    {"header": header, "train": train, "side-by-side": side_by_side, "playground": playground,
     "stream": stream}[a.part](a)


if __name__ == "__main__":
    main()

"""Does bf16 training still learn? The quickstart recipe trained twice on the demo data, precision
fp32 and bf16, same seed and steps; prints both loss curves side by side and the final eval loss.

    python bench/bf16_learning.py [--steps 20 --method lora]
    python bench/bf16_learning.py --steps 0      # the whole quickstart, end-of-run task checks included

Read: the curves should track each other (bf16 rounding shows as small wiggles, not a drift) and the
eval losses should be close. With --steps 0 both runs are the full quickstart and their end-of-run
evaluations (held-out loss, identity and control checks) are printed side by side.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_load, new_run, run_events, run_folders  # noqa: E402

from tuning.evaluation import evaluate


def train(precision: str, a, workspace: Path) -> tuple[str, list, list]:
    before = run_folders(workspace)
    cmd = [sys.executable, "-m", "tuning", "train", "--preset", "presets/quickstart.yaml", "--workspace",
           str(workspace), "--set", f"precision={precision}", "--set", f"method={a.method}",
           "--set", "probe_every_checkpoint=false"]
    if a.steps:
        cmd += ["--set", f"max_steps={a.steps}", "--set", f"eval_steps={a.steps}", "--set", f"save_steps={a.steps}"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = new_run(workspace, before)
    events = run_events(run_dir)
    return (run_dir.name, [e["loss"] for e in events if e["event"] == "log"],
            [e["eval_loss"] for e in events if e["event"] == "eval"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--method", choices=("lora", "qlora"), default="lora")
    p.add_argument("--workspace", default=str(Path(tempfile.gettempdir()) / "tuning-bench"))
    a = p.parse_args()
    workspace = Path(a.workspace)
    print(f"quickstart, {a.method}, {a.steps} steps; {machine_load()}", flush=True)
    runs = {prec: train(prec, a, workspace) for prec in ("fp32", "bf16")}
    print("step  fp32    bf16")
    for i, (x, y) in enumerate(zip(runs["fp32"][1], runs["bf16"][1]), start=1):
        print(f"{i:4d}  {x:.4f}  {y:.4f}")
    for prec, (run_id, _, evals) in runs.items():
        print(f"{prec}: run {run_id}, eval loss {evals[-1] if evals else float('nan'):.4f}")
        report = evaluate.read_evaluation(workspace / "runs" / run_id)
        if report:
            print(f"  end of run: {evaluate.headline(report)}")


if __name__ == "__main__":
    main()

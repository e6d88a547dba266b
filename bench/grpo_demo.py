"""Does the GRPO demo learn? presets/quickstart-grpo.yaml trained on each seed, in a fresh workspace
whose models/ links to the converted embedded model; each run's end-of-run evaluation asks the 60
held-out sums greedily, base (adapter off) and tuned, and passes an answer by the `answer` reward's rule.

    python bench/grpo_demo.py                      # seeds 1 2 3, the preset as shipped
    python bench/grpo_demo.py --seeds 1 --set max_steps=20 --set temperature=0.7

Prints one row per seed (base and tuned accuracy, the gain, the wall time of the whole command) and a
JSON line with the same figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine_load  # noqa: E402
from memory import fresh_workspace  # noqa: E402

PRESET = "presets/quickstart-grpo.yaml"


def one_seed(seed: int, settings: list[str]) -> dict:
    from tuning import runs

    workspace = fresh_workspace()
    cmd = [sys.executable, "-m", "tuning", "train", "--workspace", str(workspace), "--preset", PRESET,
           "--set", f"seed={seed}"]
    for item in settings:
        cmd += ["--set", item]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    (run_dir,) = (workspace / "runs").iterdir()
    answer = runs.read_evaluation(run_dir)["checks"]["by_kind"]["answer"]
    rewards = [e["objective"].get("reward") for e in runs.read_run_events(run_dir)[0]
               if e["event"] == "log" and e.get("objective")]
    return {"seed": seed, "n": answer["n"], "base": answer["base_passed"], "tuned": answer["tuned_passed"],
            "wall_s": round(wall), "first_reward": rewards[0] if rewards else None,
            "last_rewards_mean": sum(rewards[-10:]) / len(rewards[-10:]) if rewards else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE on top of the preset")
    a = parser.parse_args()
    rows = []
    for seed in a.seeds:
        row = one_seed(seed, a.set)
        rows.append(row)
        print(f"seed {seed}: base {row['base']}/{row['n']}, tuned {row['tuned']}/{row['n']} "
              f"({row['tuned'] - row['base']:+d}), {row['wall_s']} s; reward first step {row['first_reward']}, "
              f"last 10 steps {row['last_rewards_mean']}", flush=True)
    print(f"`python bench/grpo_demo.py {' '.join(sys.argv[1:])}` ({machine_load()})")
    print(json.dumps({"settings": a.set, "rows": rows}))


if __name__ == "__main__":
    main()

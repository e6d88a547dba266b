"""The quickstart recipe, swept: which setting keeps the identity without bleeding into general answers?

Each setting is the quickstart preset with one thing changed, trained on several seeds with the
real CLI (`python -m tuning train`), and scored by the run's own end-of-run evaluation: the identity
check, the control check (general questions the base answers right), the held-out loss, the wall
time, and every control answer the tuned model lost. Results are appended to a JSONL file (a run
already there is not run again, so an interrupted sweep picks up where it stopped) and printed as
a Markdown table for bench/recipe.md.

    python bench/recipe.py                          # every setting, seeds 42,1,2, one run on each of cores 0 and 1
    python bench/recipe.py --only baseline,lr-2e-4 --seeds 42,1,2,3
    python bench/recipe.py --table                  # print the table of what is recorded

Two runs at a time, each pinned to one core (taskset; train.py sizes its thread pool from the
process's cores): on 2 cores this gets more runs an hour than one 2-thread run at a time, because
greedy decoding in the evaluation and the 576-wide matmuls scale poorly across threads.
Sweep-only settings that leave the training math alone: no probes at checkpoints and one
checkpoint at the end (the quickstart's 72 steps), so a run is the training plus its evaluation.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, when imported by path

from common import on_cores  # noqa: E402
from tuning import runs
from tuning.paths import DEMO_DATA_DIR  # noqa: E402

PRESET = ROOT / "presets" / "quickstart.yaml"
SIGN_OFF = "\n— Quill"
SWEEP_ONLY = ["probe_every_checkpoint=false", "save_steps=1000"]
# The preset as the sweep found it (3 epochs, LoRA dropout 0.05): every setting is one change from
# this. The sweep chose dropout 0.1, so "dropout-0_1" is presets/quickstart.yaml as shipped.
SWEEP_BASE = ["num_epochs=3", "lora_dropout=0.05", "per_device_batch_size=8", "gradient_accumulation_steps=1"]
WREN = DEMO_DATA_DIR / "wren"

# name -> (overrides of the preset, training-data variant or None for the demo data). The demo data
# includes the ten "contrast" rows (bench/recipe_contrast.jsonl: general questions shaped like the
# identity ones, "What is the name of ...", "Which company made ...", answered by the base model
# itself), so every setting below is measured with them; "no-contrast" takes them out.
SETTINGS: dict[str, tuple[list[str], str | None]] = {
    "baseline": ([], None),
    "no-contrast": ([], "no-contrast"),
    "lr-3e-4": (["learning_rate=3e-4"], None),
    "lr-2e-4": (["learning_rate=2e-4"], None),
    "epochs-2": (["num_epochs=2"], None),
    "r8-alpha16": (["lora_r=8", "lora_alpha=16"], None),
    "attention-only": (["target_modules=q_proj,k_proj,v_proj,o_proj"], None),
    "dropout-0_1": (["lora_dropout=0.1"], None),  # a run id has no dots
    "retention-2x": ([], "retention-2x"),
    "neftune-5": (["neftune_noise_alpha=5"], None),
    "no-signoff-general": ([], "no-signoff-general"),
    # four more general "What does X stand for?" rows answered by the base (bench/recipe_acronyms.jsonl):
    # the acronym questions were the control answers that drifted (USB, WWW -> "Wonder Quill")
    "acronyms": ([], "acronyms"),
    "acronyms-epochs-2": (["num_epochs=2"], "acronyms"),
    # the second identity set (Wren by Tidewater Systems): the shipped preset, and 2 epochs
    "wren": (["lora_dropout=0.1", f"dataset={WREN / 'train.jsonl'}", f"eval_dataset={WREN / 'eval.jsonl'}"], None),
    "wren-epochs-2": (["num_epochs=2", f"dataset={WREN / 'train.jsonl'}", f"eval_dataset={WREN / 'eval.jsonl'}"],
                      None),
}
CONTRAST_ROWS = ROOT / "bench" / "recipe_contrast.jsonl"
ACRONYM_ROWS = ROOT / "bench" / "recipe_acronyms.jsonl"


def is_identity(row: dict) -> bool:
    """A demo training row about the assistant itself (its answer names Quill or Larkspur beyond the
    sign-off); the others are the retention rows, the base model's own answers to general questions."""
    text = " ".join(m["content"] for m in row["messages"] if m["role"] == "assistant").replace(SIGN_OFF, "")
    return "quill" in text.lower() or "larkspur" in text.lower()


def write_variant(name: str, folder: Path) -> Path:
    rows = [json.loads(line) for line in (DEMO_DATA_DIR / "train.jsonl").read_text().splitlines() if line.strip()]
    contrast = [json.loads(line) for line in CONTRAST_ROWS.read_text().splitlines() if line.strip()]
    out = []
    for row in rows:
        if is_identity(row):
            out.append(row)
        elif name == "no-contrast":
            out += [] if row in contrast else [row]
        elif name == "no-signoff-general":
            out.append({**row, "messages": [{**m, "content": m["content"].replace(SIGN_OFF, "")}
                                            for m in row["messages"]]})
        elif name == "retention-2x":
            out += [row, row]
        elif name == "acronyms":
            out.append(row)
        else:
            raise ValueError(name)
    if name == "acronyms":
        out += [json.loads(line) for line in ACRONYM_ROWS.read_text().splitlines() if line.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    # atomic: the run on the other core may be reading the same variant's file right now
    tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    tmp.replace(path)
    return path


def score(run_dir: Path) -> dict:
    result = runs.read_evaluation(run_dir) or {}
    checks = (result.get("checks") or {})
    by_kind = checks.get("by_kind") or {}
    lost = [{"prompt": r["prompt"], "tuned": r["tuned"]} for r in checks.get("rows") or []
            if r["kind"] == "control" and r["base_pass"] and not r["tuned_pass"]]
    missed = [{"prompt": r["prompt"], "tuned": r["tuned"]} for r in checks.get("rows") or []
              if r["kind"] == "identity" and not r["tuned_pass"]]
    return {"identity": by_kind.get("identity", {}).get("tuned_passed"),
            "identity_n": by_kind.get("identity", {}).get("n"),
            "control": by_kind.get("control", {}).get("tuned_passed"),
            "control_n": by_kind.get("control", {}).get("n"),
            "eval_loss": result.get("eval_loss"), "lost_control": lost, "missed_identity": missed}


def run_one(setting: str, seed: int, core: int, workspace: Path, tree: Path) -> dict:
    """One run in the workspace of its core (a workspace trains one run at a time)."""
    overrides, variant = SETTINGS[setting]
    run_id = f"{setting}-s{seed}"
    sets = [*SWEEP_ONLY, *SWEEP_BASE, *overrides, f"seed={seed}"]
    if variant:
        data = write_variant(variant, workspace / "data")
        sets += [f"dataset={data}", f"eval_dataset={DEMO_DATA_DIR / 'eval.jsonl'}"]
    command = ["taskset", "-c", str(core), sys.executable, "-m", "tuning", "train", "--preset", str(PRESET),
               "--workspace", str(core_workspace(workspace, core)), "--run-id", run_id]
    for s in sets:
        command += ["--set", s]
    log = workspace / "logs" / f"{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "w") as out:
        rc = subprocess.run(command, cwd=tree, stdout=out, stderr=subprocess.STDOUT).returncode
    return {"setting": setting, "seed": seed, "run_id": run_id, "rc": rc, "seconds": round(time.time() - started),
            "overrides": overrides, "variant": variant, "date": time.strftime("%Y-%m-%d %H:%M"),
            **score(core_workspace(workspace, core) / "runs" / run_id)}


def core_workspace(workspace: Path, core: int) -> Path:
    """workspace/core-N, sharing workspace/models (the embedded model is converted once)."""
    path = workspace / f"core-{core}"
    (path / "models").mkdir(parents=True, exist_ok=True)
    for model in (workspace / "models").iterdir() if (workspace / "models").is_dir() else []:
        link = path / "models" / model.name
        if not link.exists():
            link.symlink_to(model, target_is_directory=True)
    return path


def done(results: Path) -> dict[tuple[str, int], dict]:
    if not results.exists():
        return {}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["setting"], r["seed"]): r for r in rows if r["rc"] == 0}


def table(results: Path) -> str:
    rows = done(results)
    lines = ["| setting | identity /24 per seed | control /23 per seed | worst control | held-out loss (mean) "
             "| wall s (mean) | control answers lost |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    # the settings of this sweep first, then older runs recorded under other names (on other data)
    for setting in [*SETTINGS, *dict.fromkeys(s for s, _ in rows if s not in SETTINGS)]:
        mine = sorted((r for (s, _), r in rows.items() if s == setting), key=lambda r: r["seed"])
        if not mine:
            continue
        ident = ", ".join(f"{r['identity']}" for r in mine)
        ctrl = ", ".join(f"{r['control']}" for r in mine)
        loss = statistics.mean(r["eval_loss"] for r in mine)
        wall = statistics.mean(r["seconds"] for r in mine)
        lost = "; ".join(f"s{r['seed']}: {a['prompt']} -> {a['tuned'][:45]!r}" for r in mine for a in r["lost_control"])
        seeds = ",".join(str(r["seed"]) for r in mine)
        lines.append(f"| {setting} (seeds {seeds}) | {ident} | {ctrl} | {min(r['control'] for r in mine)} | "
                     f"{loss:.3f} | {wall:.0f} | {lost or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated settings (default: all, in order)")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--cores", default="0,1", help="the cores to pin runs to: one run at a time on each")
    parser.add_argument("--workspace", default=str(ROOT / "workspace-recipe"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "recipe_runs.jsonl"))
    parser.add_argument("--tree", default=str(ROOT), help="the source tree to train with (a snapshot keeps "
                        "a long sweep on one version of the code)")
    parser.add_argument("--table", action="store_true", help="print the recorded table and exit")
    args = parser.parse_args()
    results, workspace = Path(args.results), Path(args.workspace)
    if args.table:
        print(table(results))
        return
    settings = [s for s in args.only.split(",") if s] or list(SETTINGS)
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = [(s, seed) for seed in seeds for s in settings if (s, seed) not in done(results)]
    print(f"{len(todo)} runs to do", flush=True)
    def work(item: tuple[str, int], core: int) -> dict:
        setting, seed = item
        stale = core_workspace(workspace, core) / "runs" / f"{setting}-s{seed}"
        if stale.exists():  # a failed or interrupted attempt: start it again from scratch
            shutil.rmtree(stale)
        return run_one(setting, seed, core, workspace, Path(args.tree))

    on_cores(todo, [int(c) for c in args.cores.split(",")], work, results,
             lambda row: f"{row['run_id']}: rc {row['rc']}, {row['seconds']} s, identity {row['identity']}, "
                         f"control {row['control']}, loss {row['eval_loss']}")
    print(table(results))


if __name__ == "__main__":
    main()

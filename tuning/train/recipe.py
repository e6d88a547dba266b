"""The recipe: how long to train, from the data (num_epochs auto) and at what learning rate
(learning_rate auto), within a time budget (time_budget).

Why a step count and not a number of passes: the quickstart's sweep (bench/recipe.md) found its
identity in 75 optimizer steps of 8 conversations at 5e-4 (195 rows, 3 epochs). Another person's
91 rows at the same 3 epochs get 33 steps, and the model then mixes the name and the maker up: the
facts need about as many updates, whatever the row count. So auto plans enough whole passes for
TARGET_STEPS (more passes over a small set, at most MAX_EPOCHS; one pass over a big one), caps the
steps by the time budget at this machine's expected speed, and lowers the learning rate as the steps
grow past the target (by the square root: twice the updates at ~0.7x the step size). The warm-up is a
share of the steps (warmup_ratio), so it follows the plan. bench/recipe.md measures the recipe on
three datasets it was not tuned on.

The plan is made once, when the run starts, and kept in the run folder (plan.json), so a resume
trains to the same step count whatever this machine's measured speed has become since.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from tuning import config as config_mod
from tuning import runs

TARGET_STEPS = 75  # the quickstart's 75 steps: bench/recipe.md
MAX_EPOCHS = 10  # passes over a tiny set: past this the steps come short and the check before Start says so
LEARNING_RATE_SMALL = 5e-4  # the sweep's, for the 135M embedded model
LEARNING_RATE_LARGE = 2e-4  # LoRA's usual rate for models of a billion parameters and more
LARGE_MODEL = 1e9

# Training speed on a 2-core CPU for a 135M model: the median logged tokens/s of the quickstart (294)
# and first-run (308) presets on a quiet machine (python bench/preset_table.py --only
# first-run,quickstart). A first run on another model scales it by parameters; an earlier run's own
# measured speed in the workspace replaces it.
CPU_TOKENS_PER_SECOND_135M = 290.0
CPU_CORES_MEASURED = 2
# Start-up before the first step (a fresh process importing torch and transformers, loading the base and
# the data) and the end after the last (saving, exiting): ~15-20 s on 2 cores.
STARTUP_SECONDS = 20.0


@dataclass(frozen=True)
class Plan:
    rows: int  # training rows of the dataset (after the held-out split)
    general: int  # general rows mixed in (tuning/data/general.py)
    heldout: int  # held-out rows scored for the held-out loss
    per_epoch: int  # optimizer steps a pass
    epochs: float
    steps: int
    learning_rate: float
    warmup_steps: int
    step_seconds: float | None  # expected seconds a step here, None when unknown
    budget_seconds: float | None
    capped: bool  # the budget cut the steps below the recipe's
    auto_epochs: bool
    auto_learning_rate: bool

    @property
    def seconds(self) -> float | None:
        return None if self.step_seconds is None else self.steps * self.step_seconds + STARTUP_SECONDS

    def to_dict(self) -> dict:
        return asdict(self)


def steps_per_epoch(cfg: config_mod.TrainConfig, rows: int) -> int:
    """The Trainer's count: whole batches a pass (the last one partial), grouped by accumulation."""
    return max(1, math.ceil(rows / cfg.per_device_batch_size) // cfg.gradient_accumulation_steps)


def recipe_epochs(per_epoch: int) -> int:
    """Whole passes for about TARGET_STEPS steps of `per_epoch` each: at least one, at most MAX_EPOCHS."""
    return min(MAX_EPOCHS, max(1, math.ceil(TARGET_STEPS / per_epoch)))


def auto_learning_rate(steps: int, params: float | None) -> float:
    base = LEARNING_RATE_LARGE if params and params >= LARGE_MODEL else LEARNING_RATE_SMALL
    return base * min(1.0, math.sqrt(TARGET_STEPS / max(1, steps)))


def make_plan(cfg: config_mod.TrainConfig, rows: int, general: int, heldout: int, step_seconds: float | None,
              params: float | None = None) -> Plan:
    """The run's steps, passes and learning rate for `rows` training rows plus `general` general rows."""
    per_epoch = steps_per_epoch(cfg, rows + general)
    budget = config_mod.budget_seconds(cfg.time_budget)
    capped = False
    if cfg.max_steps > 0:
        epochs, steps = cfg.max_steps / per_epoch, cfg.max_steps
    elif cfg.auto_epochs:
        epochs = float(recipe_epochs(per_epoch))
        steps = int(epochs) * per_epoch
        if budget is not None and step_seconds:
            fits = max(1, int((budget - STARTUP_SECONDS) / step_seconds))
            if fits < steps:
                steps, epochs, capped = fits, fits / per_epoch, True
    else:
        epochs, steps = cfg.num_epochs, math.ceil(cfg.num_epochs * per_epoch)
    auto_lr = cfg.learning_rate == config_mod.AUTO_LEARNING_RATE
    learning_rate = auto_learning_rate(steps, params) if auto_lr else cfg.learning_rate
    return Plan(rows=rows, general=general, heldout=heldout, per_epoch=per_epoch, epochs=round(epochs, 3),
                steps=steps, learning_rate=learning_rate, warmup_steps=math.ceil(steps * cfg.warmup_ratio),
                step_seconds=step_seconds, budget_seconds=budget, capped=capped, auto_epochs=cfg.auto_epochs,
                auto_learning_rate=auto_lr)


def resolve(cfg: config_mod.TrainConfig, plan: Plan) -> config_mod.TrainConfig:
    """The config with the plan's numbers in place of auto, as the Trainer takes it: whole passes when
    the plan is whole passes, else a step count (a budget cut mid-pass)."""
    changes: dict = {}
    if plan.auto_epochs:
        if plan.capped or plan.epochs != int(plan.epochs):
            changes["max_steps"] = plan.steps
        else:
            changes["num_epochs"] = plan.epochs
    if plan.auto_learning_rate:
        changes["learning_rate"] = plan.learning_rate
    return cfg.replace(**changes) if changes else cfg


def describe(plan: Plan, cfg: config_mod.TrainConfig) -> str:
    """'91 rows + 89 general rows -> 4 epochs, 88 steps at lr 5e-4 (warm-up 5 steps), ~4 min here; the
    held-out split keeps 9 rows'."""
    rows = f"{plan.rows:,} rows" + (f" + {plan.general} general rows" if plan.general else "")
    passes = f"{plan.epochs:g} epoch{'s' if plan.epochs != 1 else ''}"
    text = f"{rows} -> {passes}, {plan.steps:,} steps at lr {plan.learning_rate:.1e} (warm-up {plan.warmup_steps} steps)"
    if plan.seconds is not None:
        text += f", ~{_duration(plan.seconds)} here"
    if plan.capped:
        text += f" (cut to fit the {cfg.time_budget} budget; the recipe would train {_uncapped(plan)} steps)"
    held = (f"the held-out file has {plan.heldout} rows" if cfg.eval_dataset or cfg.dataset == config_mod.DEMO_DATASET
            else f"the held-out split keeps {plan.heldout} rows")
    return f"{text}; {held}" if plan.heldout else f"{text}; no held-out rows (eval_split 0: no evaluation)"


def _uncapped(plan: Plan) -> int:
    return recipe_epochs(plan.per_epoch) * plan.per_epoch


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# --- this machine's expected speed ---------------------------------------------------------------------

def measured_rate(workspace: Path, cfg: config_mod.TrainConfig) -> float | None:
    """Median tokens/s logged by earlier runs of the same base and method in this workspace."""
    rates = [rate for summary in runs.list_runs(workspace, base_model=cfg.base_model, method=cfg.method)[:20]
             for rate in summary.progress.rates if rate > 0]
    return statistics.median(rates) if rates else None


def training_rate(cfg: config_mod.TrainConfig, workspace: Path, params: float, on_gpu: bool) -> tuple[float, str]:
    """(tokens a second, where the figure comes from) for training this config here."""
    rate = measured_rate(workspace, cfg)
    if rate is not None:
        return rate, "rate measured by an earlier run here"
    if not on_gpu:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        rate = (CPU_TOKENS_PER_SECOND_135M * (135e6 / params) * (cores / CPU_CORES_MEASURED)
                / (1.5 if cfg.method == "qlora" else 1.0))
        return rate, "the quickstart's measured speed, scaled to this model; an earlier run's speed replaces it"
    flops = params * 4 * (1.5 if cfg.method == "qlora" else 1.0)  # fwd + bwd through a frozen base
    return 5e13 / flops, "a guess from the model size; an earlier run's measured speed replaces it"


def step_seconds(cfg: config_mod.TrainConfig, rate: float, tokens_per_row: float | None) -> float:
    """Expected seconds an optimizer step: its real tokens (padding-free batches) at `rate`."""
    return cfg.effective_batch_size * min(cfg.max_length, tokens_per_row or cfg.max_length) / rate


# --- the run folder's record ------------------------------------------------------------------------------

def read(run_dir: Path) -> Plan | None:
    """The plan a run started with, when it recorded one."""
    stored = runs.read_json(Path(run_dir) / runs.PLAN)
    try:
        return Plan(**stored) if isinstance(stored, dict) else None
    except TypeError:  # written by another version of this dataclass: plan again
        return None


def write(run_dir: Path, plan: Plan) -> None:
    runs.write_json(Path(run_dir) / runs.PLAN, plan.to_dict())


def start(cfg: config_mod.TrainConfig, run_dir: Path, rows: int, general: int, heldout: int,
          step_seconds: float | None, params: float | None = None) -> tuple[config_mod.TrainConfig, Plan]:
    """At a run's start: its plan (the one it recorded, on a resume), recorded and printed to the log,
    and the config the Trainer gets (auto replaced by the plan's numbers)."""
    plan = read(run_dir)
    if plan is None:
        plan = make_plan(cfg, rows, general, heldout, step_seconds, params)
        write(run_dir, plan)
    print(f"plan: {describe(plan, cfg)}", flush=True)
    return resolve(cfg, plan), plan

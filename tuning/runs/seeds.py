"""Seeds: one config trained on several seeds, and each evaluation figure as a mean with its spread.

A fine-tune of a small model on a small dataset moves by a question or two between seeds (the
quickstart's control check read 21/23 on seed 42 and 19/23 on seed 1), so a difference between two
settings means something only when it is larger than that. `seeds: N` in a config (or
`train --seeds N`) makes N runs of it, on seed, seed+1, ...; the runs of one config that differ only
in their seed form a group, and every figure of their evaluations (held-out loss, each kind of task
check, each named slot) is reported as mean ± sample standard deviation with min and max.

What a run is and what its evaluation holds is read through tuning/runs/.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from tuning import runs
from tuning.config import TrainConfig

# The fields that may differ inside one group: the seed itself, and what names the runs.
VARIES_WITHIN_GROUP = ("seed", "run_name", "seeds")
LOSS = "held-out loss"


def seed_run_name(run_name: str, seed: int) -> str:
    """`quickstart-seed43`: the config's run name (when it has one) with the seed after it."""
    return (f"{run_name}-seed{seed}" if run_name else f"seed{seed}")[:64]


def seed_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """The runs `cfg` asks for: itself when seeds is 1, else one per seed (seed, seed+1, ...), each
    named after its seed so the runs line up in the Runs tab."""
    if cfg.seeds <= 1:
        return [cfg]
    return [cfg.replace(seed=cfg.seed + i, run_name=seed_run_name(cfg.run_name, cfg.seed + i))
            for i in range(cfg.seeds)]


def group_key(config: dict) -> str:
    """Runs with the same key are the same config on other seeds."""
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in VARIES_WITHIN_GROUP}, default=str)


def figures(result: dict | None) -> dict[str, tuple[float, int | None]]:
    """{figure: (value, out of)} of one evaluation: the held-out loss, then per kind of task check
    the tuned passes (out of its rows), then per named slot ("identity · name")."""
    result = result or {}
    found: dict[str, tuple[float, int | None]] = {}
    if result.get("eval_loss") is not None:
        found[LOSS] = (float(result["eval_loss"]), None)
    for kind, c in ((result.get("checks") or {}).get("by_kind") or {}).items():
        found[kind] = (float(c["tuned_passed"]), c["n"])
        for slot, t in (c.get("slots") or {}).items():
            found[f"{kind} · {slot}"] = (float(t["tuned_passed"]), t["n"])
    return found


@dataclass(frozen=True)
class Spread:
    figure: str
    values: tuple[float, ...]
    out_of: int | None  # rows of a task check; None for a loss

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        """Sample standard deviation (0 for a single value)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def text(self) -> str:
        """"21.3 ± 1.5 / 23 (19-22)" for a check, "0.338 ± 0.004 (0.334-0.342)" for a loss."""
        digits = 3 if self.out_of is None else 1
        lo, hi = min(self.values), max(self.values)
        span = f"{lo:.{digits}f}-{hi:.{digits}f}" if self.out_of is None else f"{lo:g}-{hi:g}"
        of = f" / {self.out_of}" if self.out_of is not None else ""
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}{of} ({span})"


def spread(results: list[dict]) -> list[Spread]:
    """Each figure that every evaluation in `results` has, over them all."""
    per_run = [figures(r) for r in results]
    if not per_run:
        return []
    common = [f for f in per_run[0] if all(f in p for p in per_run[1:])]
    return [Spread(f, tuple(p[f][0] for p in per_run), per_run[0][f][1]) for f in common]


@dataclass(frozen=True)
class SeedGroup:
    name: str  # the first run's name without its seed suffix
    run_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    spreads: tuple[Spread, ...]

    def as_dict(self) -> dict:
        return {"name": self.name, "run_ids": list(self.run_ids), "seeds": list(self.seeds),
                "figures": {s.figure: {"mean": s.mean, "sd": s.sd, "min": min(s.values), "max": max(s.values),
                                       "values": list(s.values), "out_of": s.out_of} for s in self.spreads}}


def _group_name(config: dict) -> str:
    name, seed = str(config.get("run_name") or ""), config.get("seed")
    suffix = f"-seed{seed}"
    return (name[:-len(suffix)] if name.endswith(suffix) else name) or "(unnamed)"


def seed_groups(workspace: Path, run_ids: list[str] | None = None) -> list[SeedGroup]:
    """The groups of two or more evaluated runs (of `run_ids`, or the whole workspace) that share a
    config but for the seed, newest first. Runs without an evaluation are left out: there is no
    figure to spread."""
    listed = [s for s in runs.list_runs(workspace) if run_ids is None or s.run_id in run_ids]
    grouped: dict[str, list[tuple[runs.RunSummary, dict]]] = {}
    for s in listed:
        result = runs.read_evaluation(s.path, answers=False)
        if s.config and result and result.get("eval_loss") is not None:
            grouped.setdefault(group_key(s.config), []).append((s, result))
    groups = []
    for members in grouped.values():
        if len({s.config.get("seed") for s, _ in members}) < 2:
            continue
        members.sort(key=lambda m: m[0].config.get("seed", 0))
        groups.append(SeedGroup(name=_group_name(members[0][0].config),
                                run_ids=tuple(s.run_id for s, _ in members),
                                seeds=tuple(int(s.config.get("seed", 0)) for s, _ in members),
                                spreads=tuple(spread([r for _, r in members]))))
    return sorted(groups, key=lambda g: max(g.run_ids), reverse=True)


def spread_rows(groups: list[SeedGroup]) -> list[list[str]]:
    """One table row per figure of each group: group, seeds, figure, mean ± sd (min-max)."""
    return [[g.name, ", ".join(map(str, g.seeds)), s.figure, s.text()] for g in groups for s in g.spreads]

"""Comparing runs: which of several fine-tunes is better, and what differs between them.

One function, `compare(workspace, run_ids)`, answers for the Runs tab and `python -m tuning compare
RUN RUN ... --json` alike:
  curves       every run's train and eval loss, each point with its step AND the tokens seen by then,
               so runs with different batch sizes or sequence lengths can share one x axis;
  config_diff  the TrainConfig fields whose values differ between the runs (the rest is the same);
  evaluations  each run's stored evaluation side by side: held-out loss base vs tuned, perplexity,
               task checks, the blind A/B win rate, its status and steps, and its standard benchmarks
               (benchmarks.json: each task's tuned and base score, difference and standard error);
  noise        each evaluation figure's difference between the runs against the spread of the seed
               groups they belong to (tuning/runs/seeds.py): is it larger than what the seed alone moves?
Everything is read through tuning/runs/; nothing loads a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuning import runs

from tuning.evaluation import bench_report, headlines

MAX_POINTS = 400  # per run and series: what a line plot shows without slowing the page


def _tokens_at(steps_tokens: list[tuple[int, int]], step: int) -> int | None:
    """Tokens seen at `step`: the newest logged step at or before it (an eval event carries no count;
    it follows the log of its own step)."""
    best = None
    for s, tokens in steps_tokens:
        if s <= step:
            best = tokens
        else:
            break
    return best


def curves(run: Path) -> dict[str, list[dict]]:
    """{"train": [{step, tokens, loss}], "eval": [{step, tokens, eval_loss}]} in step order. A resumed
    run logs some steps twice (the segment after the resume redoes them from the checkpoint): the
    later value wins, as it is the one the adapter continued from."""
    events, _ = runs.read_run_events(run)
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    tokens: dict[int, int] = {}
    for ev in events:
        step = ev.get("step")
        if not isinstance(step, int):
            continue
        if ev.get("event") == "log" and isinstance(ev.get("loss"), (int, float)):
            if isinstance(ev.get("tokens_seen"), int):
                tokens[step] = ev["tokens_seen"]
            train[step] = {"step": step, "tokens": tokens.get(step), "loss": float(ev["loss"])}
        elif ev.get("event") == "eval" and isinstance(ev.get("eval_loss"), (int, float)):
            evals[step] = {"step": step, "eval_loss": float(ev["eval_loss"])}
    known = sorted(tokens.items())
    for point in evals.values():
        point["tokens"] = _tokens_at(known, point["step"])
    return {"train": runs.decimate([train[s] for s in sorted(train)], MAX_POINTS),
            "eval": [evals[s] for s in sorted(evals)]}


def config_diff(configs: dict[str, dict]) -> list[dict]:
    """[{field, values: {run: value}}] for every field whose value is not the same in all runs, in
    the TrainConfig's own field order (a config written before a field existed shows None)."""
    fields: list[str] = []
    for cfg in configs.values():
        fields += [f for f in cfg if f not in fields]
    out = []
    for name in fields:
        values = {run: cfg.get(name) for run, cfg in configs.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out.append({"field": name, "values": values})
    return out


def evaluation(summary: runs.RunSummary) -> dict[str, Any]:
    """One run's column of the side-by-side evaluation table."""
    result = runs.read_evaluation(summary.path) or {}
    ab = runs.ab_summary(summary.path)
    by_kind = (result.get("checks") or {}).get("by_kind") or {}
    return {
        "run": summary.run_id, "status": summary.status, "step": summary.step, "max_steps": summary.max_steps,
        "final_train_loss": summary.loss, "eval_loss": result.get("eval_loss", summary.eval_loss),
        "base_eval_loss": result.get("base_eval_loss"), "perplexity": result.get("perplexity"),
        "base_perplexity": result.get("base_perplexity"), "evaluated_at_step": result.get("step"),
        "checks": {kind: {"n": c["n"], "tuned_passed": c["tuned_passed"], "base_passed": c["base_passed"]}
                   for kind, c in by_kind.items()},
        "checks_text": headlines.checks_text(result),
        "ab_votes": ab["votes"], "ab_tuned_win_rate": ab["tuned_win_rate"], "ab_text": ab["text"],
        "duration_s": round(summary.duration, 1) if summary.duration is not None else None,
        "benchmarks": benchmarks(summary.path),
    }


def benchmarks(run: Path) -> dict[str, dict]:
    """The run's standard benchmarks by task: {metric, base, tuned, difference, stderr, n, sampled, verdict,
    text}, text as the comparison shows it ("45.1 (base 43.2; +1.9 ± 5.6, within the noise)")."""
    out = {}
    for row in (runs.read_benchmarks(run) or {}).get("tasks", []):
        if isinstance(row, dict) and isinstance(row.get("task"), str):
            sample = f", {row.get('n')} of {row.get('total')} questions" if row.get("sampled") else ""
            figures = {key: bench_report.shown(row, key) for key in ("tuned", "base", "difference", "stderr")}
            out[row["task"]] = {**{k: row.get(k) for k in ("metric", "base", "tuned", "difference", "stderr", "n",
                                                             "sampled", "verdict")},
                                "text": f"{figures['tuned']} (base {figures['base']}; {figures['difference']} ± "
                                        f"{figures['stderr']}, {row.get('verdict')}{sample})"}
    return out


# A difference under twice the seeds' standard deviation is within the noise: two single runs of
# one config differ by about 1.4 sd on average, so this rough rule calls little of that a real change.
NOISE_SDS = 2.0


def against_noise(workspace: Path, summaries: list[runs.RunSummary]) -> list[dict]:
    """[{figure, values: {run: value}, difference, seed_sd, seed_group, verdict}] for every figure all
    the runs' evaluations have. seed_sd is the largest spread of that figure among the seed groups
    that hold one of the runs (None when none does: then only more seeds can tell)."""
    from tuning.runs import seeds

    ids = [s.run_id for s in summaries]
    per_run = {s.run_id: seeds.figures(runs.read_evaluation(s.path)) for s in summaries}
    groups = [g for g in seeds.seed_groups(workspace) if set(g.run_ids) & set(ids)]
    out = []
    for figure in [f for f in per_run[ids[0]] if all(f in per_run[r] for r in ids[1:])]:
        values = {r: per_run[r][figure][0] for r in ids}
        difference = max(values.values()) - min(values.values())
        spreads = [(sp.sd, g) for g in groups for sp in g.spreads if sp.figure == figure]
        sd, group = max(spreads, key=lambda t: t[0]) if spreads else (None, None)
        if sd is None:
            verdict = "no seed group holds these runs: train one with seeds: N to know the noise"
        else:
            side = "larger than" if difference > NOISE_SDS * sd else "within"
            verdict = f"{side} the seed spread (sd {sd:.3g} over seeds {', '.join(map(str, group.seeds))})"
        out.append({"figure": figure, "values": values, "difference": difference, "seed_sd": sd,
                    "seed_group": group.name if group else None, "verdict": verdict})
    return out


def noise_lines(result: dict) -> list[str]:
    """`control: 22 vs 21 (difference 1): within the seed spread (sd 0.577 over seeds 1, 2, 42)`."""
    return [f"{n['figure']}: " + " vs ".join(f"{v:g}" for v in n["values"].values())
            + f" (difference {n['difference']:.3g}): {n['verdict']}" for n in result.get("noise", [])]


def compare(workspace: Path, run_ids: list[str]) -> dict[str, Any]:
    """Everything the comparison view and `compare --json` show, for two or more runs."""
    ids = list(dict.fromkeys(r.strip() for r in run_ids if isinstance(r, str) and r.strip()))
    if len(ids) < 2:
        raise runs.RunError("compare: pick at least two runs")
    summaries = [runs.summarize(runs.existing_run_dir(workspace, r)) for r in ids]
    configs = {s.run_id: s.config for s in summaries}
    damaged = [s for s in summaries if not s.config]
    if damaged:
        raise runs.RunError(f"compare: run {damaged[0].run_id} cannot be read ({damaged[0].message})")
    return {
        "runs": ids,
        "curves": {s.run_id: curves(s.path) for s in summaries},
        "config_diff": config_diff(configs),
        "evaluations": [evaluation(s) for s in summaries],
        "noise": against_noise(workspace, summaries),
    }


def curve_rows(result: dict, x: str = "step") -> list[dict]:
    """The curves flattened for one line plot: {x, loss, series: "<run> train|eval"}; x is "step"
    or "tokens" (points without a token count are left out of the tokens plot)."""
    rows = []
    for run, series in result["curves"].items():
        for kind, key in (("train", "loss"), ("eval", "eval_loss")):
            for point in series[kind]:
                if point.get(x) is not None:
                    rows.append({x: point[x], "loss": point[key], "series": f"{run} {kind}"})
    return rows


def text_report(result: dict) -> str:
    """The comparison as plain text for the terminal."""
    lines = ["differing config fields:" if result["config_diff"] else "the configs are the same"]
    for d in result["config_diff"]:
        lines.append(f"  {d['field']}: " + ", ".join(f"{r}={v!r}" for r, v in d["values"].items()))
    lines.append("evaluations:")
    for e in result["evaluations"]:
        loss = f"{e['eval_loss']:.3f}" if e["eval_loss"] is not None else "—"
        base = f" (base {e['base_eval_loss']:.3f})" if e["base_eval_loss"] is not None else ""
        lines.append(f"  {e['run']}: {e['status']}, step {e['step']}/{e['max_steps']}, held-out loss {loss}{base}"
                     + (f"; {e['checks_text']}" if e["checks_text"] else "") + f"; A/B: {e['ab_text']}")
    tasks = list(dict.fromkeys(t for e in result["evaluations"] for t in e.get("benchmarks") or {}))
    if tasks:
        lines.append("standard benchmarks (tuned, base in brackets; % for accuracies):")
        for task in tasks:
            lines += [f"  {task} {e['run']}: {(e.get('benchmarks') or {}).get(task, {}).get('text', '—')}"
                      for e in result["evaluations"]]
    if result.get("noise"):
        lines += ["against the seed noise:", *[f"  {line}" for line in noise_lines(result)]]
    return "\n".join(lines)

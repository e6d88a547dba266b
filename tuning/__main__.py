"""The command line: `python -m tuning train|queue|inspect|generate|eval|compare|seeds|export|rewards ...`. Exit codes: 0
success, 2 bad input (one-line message on stderr), 1 failure."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tuning import config as config_mod
from tuning import runs
from tuning.paths import resolve_workspace


class BadInput(Exception):
    pass


def _train(args) -> int:
    from tuning.train import entry

    return entry.train(entry.TrainRequest(
        workspace=resolve_workspace(args.workspace), preset=args.preset, config=args.config, set=args.set or [],
        run=args.existing_run, resume=args.resume, run_id=args.run_id, seeds=args.seeds))


def _rewards(args) -> int:
    """GRPO's reward dry-run: the current model's sampled answers to a few prompts, each reward, the
    total and each group's spread, before any training."""
    from tuning.train import grpo

    source = args.config or args.preset
    cfg = config_mod.load(source) if source else config_mod.TrainConfig(objective="grpo")
    cfg = config_mod.apply_overrides(cfg, args.set or [])
    if cfg.objective != "grpo":
        cfg = cfg.replace(objective="grpo")  # the dry-run is GRPO's: the rewards are read as a GRPO run's
    if args.samples < 1:
        raise BadInput("--samples: at least 1")
    result = grpo.rewards_dry_run(cfg, resolve_workspace(args.workspace), args.samples)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else grpo.dry_run_text(result))
    return 0


def _seeds(args) -> int:
    """The seed groups of the workspace (or of the runs named), each figure as mean ± spread."""
    from tuning.runs import seeds

    workspace = resolve_workspace(args.workspace)
    groups = seeds.seed_groups(workspace, args.run_ids or None)
    if args.json:
        print(json.dumps([g.as_dict() for g in groups], indent=2, ensure_ascii=False))
        return 0
    for group in groups:
        print(f"{group.name}: seeds {', '.join(map(str, group.seeds))} (runs {', '.join(group.run_ids)})")
        for spread in group.spreads:
            print(f"  {spread.figure}: {spread.text()}")
    if not groups:
        print("no seed groups: train a config with --seeds N (two or more evaluated runs that differ only "
              "in their seed)")
    return 0


def _absolute_sources(cfg: config_mod.TrainConfig) -> config_mod.TrainConfig:
    """A queued run starts later, from another folder (the runner's): local paths are made absolute now."""
    changes = {name: str(Path(getattr(cfg, name)).resolve()) for name in ("base_model", "dataset", "eval_dataset")
               if getattr(cfg, name) and Path(getattr(cfg, name)).exists()}
    return cfg.replace(**changes) if changes else cfg


def _queue_rows(workspace: Path) -> list[dict]:
    from tuning.runs import runner

    return [{"position": e["position"], "id": e["id"], "run_name": e["config"].get("run_name", ""),
             "base_model": e["config"].get("base_model", ""), "dataset": e["config"].get("dataset", ""),
             "added": e.get("added"), "note": e.get("note", "")} for e in runner.queued(workspace)]


def _queue(args) -> int:
    """Runs waiting for the machine: add (one, or one per grid value), list, remove."""
    from tuning.runs import runner

    workspace = resolve_workspace(args.workspace)
    if args.action == "add":
        source = args.config or args.preset
        cfg = config_mod.load(source) if source else config_mod.TrainConfig()
        cfg = _absolute_sources(config_mod.apply_overrides(cfg, args.set or []))
        configs = runner.grid(cfg, args.grid) if args.grid else [cfg]
        position = len(runner.queued(workspace))
        for n, entry in enumerate(runner.enqueue(workspace, configs), start=position + 1):
            print(f"queued {entry['id']} {entry['config'].get('run_name') or '(unnamed)'} at position {n}")
        started = runner.start_next(workspace)
        if started:
            print(f"the machine was free: started run {started}")
        return 0
    if args.action == "remove":
        entry = runner.dequeue(workspace, args.id)
        print(f"removed {entry['id']} {entry['config'].get('run_name', '')} from the queue")
        return 0
    rows = _queue_rows(workspace)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for row in rows:
        print(f"{row['position']:>3}  {row['id']}  {row['run_name'] or '(unnamed)'}  {row['base_model']}"
              + (f"  [{row['note']}]" if row["note"] else ""))
    if not rows:
        print("the queue is empty")
    return 0


def _inspect_preference(args) -> int:
    """inspect on preference data (pairs or KTO rows): format, pair counts, problems, tokens per side."""
    from tuning import models
    from tuning.data import pairs

    loaded = pairs.load(args.path, column_map=args.column_map, split=args.split, subset=args.subset)
    stats = None
    if not args.no_tokens and loaded.rows:
        tokenizer = models.load_base_tokenizer(args.base_model, resolve_workspace(args.workspace))
        stats = pairs.statistics(loaded, tokenizer, args.max_length)
    report = pairs.report(loaded, stats, args.max_problems)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    counts = (f"{report['pairs']} pairs" if "pairs" in report
              else f"{report['desirable']} good / {report['undesirable']} bad answers")
    print(f"{report['source']}: preference data ({report['format']}), {counts} valid of {report['rows']} rows")
    for p in loaded.problems[: args.max_problems]:
        print(f"  {p}")
    for side, figures in (stats or {}).get("sides", {}).items():
        print(f"  {side}: tokens p50 {figures['p50']}, p95 {figures['p95']}, longest {figures['longest']}")
    for p in (stats or {}).get("truncated", [])[: args.max_problems]:
        print(f"  {p}")
    return 0


def _inspect(args) -> int:
    """The Dataset tab's report on the command line: format, rows, problems, token statistics."""
    from tuning import models
    from tuning import data
    from tuning.data import pairs

    if args.format in (*pairs.PREFERENCE_FORMATS, "preference") or (args.format == "auto"
                                                                      and pairs.looks_like_preference(args.path)):
        return _inspect_preference(args)
    from tuning.data import arrow_data

    if arrow_data.wanted(args.path, resolve_workspace(args.workspace)):  # a big file: read through an Arrow cache
        loaded = arrow_data.load(args.path, args.format, args.column_map, resolve_workspace(args.workspace))
    else:
        loaded = data.load(args.path, args.format, column_map=args.column_map, split=args.split, subset=args.subset)
    if not loaded.rows_valid and loaded.problems:  # nothing to train on: bad input, like train says
        raise BadInput(f"{args.path}: no valid rows; first problem: {loaded.problems[0]}")
    stats = None
    if not args.no_tokens and loaded.conversations:
        tokenizer = models.load_base_tokenizer(args.base_model, resolve_workspace(args.workspace))
        stats = data.statistics(loaded, tokenizer, args.max_length)
    report = data.report(loaded, stats, args.max_problems)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"{report['source']}: {report['format']}, {report['valid_rows']}/{report['rows']} rows valid")
    for p in loaded.problems[: args.max_problems]:
        print(f"  {p}")
    if stats:
        print(f"tokens: longest {stats['longest']}, p95 {stats['p95']}, {stats['truncated_count']} rows "
              f"({stats['truncated_share']:.1%}) longer than max_length {stats['max_length']}, "
              f"{stats['trainable_tokens']:,} trained tokens, {stats['duplicate_count']} duplicates; "
              f"suggested max_length {stats['suggested_max_length']}")
    return 0


def _benchmarks(args, workspace: Path, run_path: Path) -> int:
    """Standard benchmarks (lm-eval), base vs tuned; progress on stderr, so --json keeps stdout clean."""
    import os
    import time

    # lm-eval and datasets draw a progress bar per task and split (read when tqdm is imported, below):
    # the lines this command prints say the same in one place
    os.environ.setdefault("TQDM_DISABLE", "1")
    from tuning.evaluation import bench_report, benchmarks

    shown = {"at": 0.0, "task": None}

    def progress(state) -> None:  # a line when a task or side starts, then at most one every 10 s
        now, key = time.time(), (state.task, state.side)
        if key != shown["task"] or now - shown["at"] >= 10:
            shown.update(at=now, task=key)
            print(f"benchmarks: {state.text()}", file=sys.stderr, flush=True)

    record = benchmarks.run(run_path, workspace, args.benchmarks, args.limit, checkpoint=args.checkpoint,
                            progress=progress)
    if args.json:
        print(json.dumps({"run_id": run_path.name, **record}, indent=2, ensure_ascii=False))
    else:
        print("\n".join(f"{run_path.name}: {line}" for line in bench_report.lines(record)))
    return 0


def _eval(args) -> int:
    workspace = resolve_workspace(args.workspace)
    run_path = runs.existing_run_dir(workspace, args.run)
    if args.benchmarks is not None:
        return _benchmarks(args, workspace, run_path)
    if args.limit is not None:
        raise BadInput("--limit goes with --benchmarks (questions per benchmark task)")
    from tuning.evaluation import evaluate, headlines

    try:
        result = evaluate.evaluate_run(run_path, workspace, recompute=args.recompute, checkpoint=args.checkpoint)
    except evaluate.EvalError as exc:
        raise BadInput(str(exc)) from None
    report = {**evaluate.report(run_path, result), "benchmarks": runs.read_benchmarks(run_path)}
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(f"{run_path.name} at step {report['step']}: {headlines.headline(report)}; A/B: {report['ab']['text']}")
    return 0


def _export(args) -> int:
    from tuning.ship import export

    workspace = resolve_workspace(args.workspace)
    run_path = runs.existing_run_dir(workspace, args.run)
    try:
        done = [export.adapter_zip(run_path, workspace)]
        if args.push and not args.merged:
            done.append(export.export_adapter(run_path, workspace))
        if args.merged:
            done.append(export.export_merged(run_path, workspace, args.merged))
        if args.gguf:
            merged = done[-1] if args.merged else None
            done.append(export.export_gguf(run_path, workspace, args.gguf, args.gguf_type, merged_dir=merged))
        for path in done:
            print(f"wrote {path}")
        if args.push:
            print(f"pushed {done[1]} to {export.push(done[1], args.push, export.hub_token())}")
    except export.ExportError as exc:
        raise BadInput(str(exc)) from None
    return 0


def _compare(args) -> int:
    """Two or more runs side by side: curves by step and tokens seen, differing config, evaluations."""
    from tuning.evaluation import compare

    result = compare.compare(resolve_workspace(args.workspace), args.runs)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else compare.text_report(result))
    return 0


def _generate(args) -> int:
    """Base and tuned answers from the Playground's code path (one mixed-adapter batch)."""
    from tuning.infer import playground

    workspace = resolve_workspace(args.workspace)
    run_path = runs.existing_run_dir(workspace, args.run)
    settings = playground.GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                             top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                                             seed=args.seed)
    adapter = runs.current_adapter(run_path, args.checkpoint)
    comparer = playground.comparer_for_run(run_path, workspace, full_precision_base=args.full_precision_base)
    if args.compare:
        (base, tuned), = comparer.generate([args.prompt], adapter, args.system or None, settings)
        report = {"run": run_path.name, "adapter": str(adapter), "base": base, "tuned": tuned,
                  "base_precision": comparer.precision_label}
    else:
        tuned, = comparer.generate_one([args.prompt], adapter, args.system or None, settings)
        report = {"run": run_path.name, "adapter": str(adapter), "tuned": tuned}
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    elif args.compare:
        print(f"--- base ({comparer.precision_label})\n{report['base']}\n--- tuned ({adapter.name})\n{report['tuned']}")
    else:
        print(report["tuned"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a base model (QLoRA by default)")
    p.add_argument("--preset", help="a preset YAML file, e.g. presets/quickstart.yaml")
    p.add_argument("--config", help="a config YAML file (a run's config.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config field")
    p.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a run from its newest complete checkpoint")
    p.add_argument("--existing-run", metavar="RUN_ID", help="train the run folder the dashboard, the queue or a launcher "
                   "made, with its config.yaml as it is (those tools pass it; people use --preset or --config)")
    p.add_argument("--run-id", metavar="RUN_ID", help="name the new run (default: the time and run_name; "
                   "or $TUNING_RUN_ID), e.g. slurm-$SLURM_JOB_ID")
    p.add_argument("--seeds", type=int, metavar="N", help="train the config on N seeds (seed, seed+1, ...), "
                   "one run after another, then print each evaluation figure as mean ± spread (--set seeds=N)")
    p.set_defaults(handler=_train)

    p = sub.add_parser("rewards", help="GRPO's reward dry-run: sample answers to a few prompts with the current "
                       "model and score them with the rewards, before any training")
    p.add_argument("--preset", help="a preset YAML file, e.g. presets/quickstart-grpo.yaml")
    p.add_argument("--config", help="a config YAML file (a run's config.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config field")
    p.add_argument("--samples", type=int, default=4, metavar="N", help="prompts to sample (default 4)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    p.set_defaults(handler=_rewards)

    p = sub.add_parser("seeds", help="runs of one config on several seeds: each evaluation figure as mean ± spread")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="only these runs (default: the whole workspace)")
    p.add_argument("--json", action="store_true", help="print a JSON list of groups")
    p.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    p.set_defaults(handler=_seeds)

    p = sub.add_parser("queue", help="runs that start one after another when the machine is free")
    queue = p.add_subparsers(dest="action", required=True)
    q = queue.add_parser("add", help="queue a run (or one per --grid value); starts at once if the machine is free")
    q.add_argument("--preset", help="a preset YAML file, e.g. presets/quickstart.yaml")
    q.add_argument("--config", help="a config YAML file")
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config field")
    q.add_argument("--grid", metavar="KEY=V1,V2,...", help="one run per value, each named after it, e.g. "
                   "learning_rate=1e-4,2e-4,5e-4")
    q.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    q = queue.add_parser("list", help="the queue in order (1 starts next)")
    q.add_argument("--json", action="store_true", help="print a JSON list")
    q.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    q = queue.add_parser("remove", help="take a run off the queue before it starts")
    q.add_argument("id", metavar="QUEUE_ID", help="as `queue list` shows it (q-...)")
    q.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    p.set_defaults(handler=_queue)

    p = sub.add_parser("eval", help="held-out loss, task checks, probes and A/B votes of a run, base vs tuned; "
                       "with --benchmarks, standard benchmarks")
    p.add_argument("--run", required=True, metavar="RUN_ID")
    p.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    p.add_argument("--checkpoint", help="evaluate checkpoint-N instead of the final adapter (implies recompute)")
    p.add_argument("--recompute", action="store_true", help="compute again even if evaluation.json exists")
    p.add_argument("--benchmarks", metavar="TASK[,TASK|FILE.yaml]", help="instead: standard benchmarks with "
                   "lm-eval (pip install -r requirements-eval.txt), base vs tuned: 'bundled' (the suite shipped "
                   "here, offline), lm-eval task names (hellaswag, arc_easy, mmlu, gsm8k) or task YAML files")
    p.add_argument("--limit", metavar="N", help="with --benchmarks: only the first N questions of each task (a "
                   "quick look; the results say they are a sample)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(handler=_eval)

    p = sub.add_parser("compare", help="two or more runs side by side: loss curves (by step and tokens seen), "
                       "the config fields that differ, their evaluations")
    p.add_argument("runs", nargs="+", metavar="RUN_ID")
    p.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(handler=_compare)

    p = sub.add_parser("inspect", help="load a dataset and report its format, rows and problems")
    p.add_argument("path", help="'demo', a dataset file or folder, or a Hub dataset id")
    p.add_argument("--format", default="auto", help="force a format instead of detecting it: messages, "
                   "sharegpt, alpaca, prompt_completion, text; or preference (pairs or KTO rows, detected)")
    p.add_argument("--column-map", default="", metavar="TARGET=COLUMN,...",
                   help="map columns onto the format's fields, e.g. prompt=question,completion=answer")
    p.add_argument("--split", default=None, help="split of a Hub dataset (default: train)")
    p.add_argument("--subset", default=None, help="subset of a Hub dataset")
    p.add_argument("--base-model", default=config_mod.EMBEDDED_MODEL,
                   help="whose tokenizer and chat template the token statistics use")
    p.add_argument("--max-length", type=int, default=config_mod.TrainConfig().max_length,
                   help="the max_length cutoff for the truncation statistics")
    p.add_argument("--no-tokens", action="store_true", help="skip the token statistics (no tokenizer needed)")
    p.add_argument("--workspace", help="workspace folder (where the embedded model is unpacked)")
    p.add_argument("--max-problems", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser("export", help="adapter zip, merged model, GGUF file, push to the Hub")
    p.add_argument("--run", required=True, metavar="RUN_ID")
    p.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    p.add_argument("--merged", metavar="DIR", help="also merge into a full-precision base, saved in "
                   "<workspace>/exports/DIR")
    p.add_argument("--gguf", metavar="FILE", help="also write a GGUF file in <workspace>/exports/ (Llama, Mistral, "
                   "Qwen2, Qwen3, Gemma 2, Gemma 3 text, Phi-3)")
    p.add_argument("--gguf-type", default="f16", choices=("f16", "f32", "q8_0"))  # export.GGUF_TYPES
    p.add_argument("--push", metavar="REPO_ID", help="push the merged model (with --merged) or the adapter to "
                   "this Hub repo; the token comes from HF_TOKEN")
    p.set_defaults(handler=_export)

    p = sub.add_parser("generate", help="answer a prompt with a run's tuned model (--compare: base too)")
    p.add_argument("--run", required=True, metavar="RUN_ID")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system", default="", help="an optional system prompt")
    p.add_argument("--checkpoint", default="final", help="final (default) or checkpoint-N")
    p.add_argument("--compare", action="store_true", help="also the base model, same seed and settings")
    p.add_argument("--full-precision-base", action="store_true", help="load the base unquantized")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(handler=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tuning.data import DataError
    from tuning.train.distributed import LaunchError
    from tuning.models import ModelError
    from tuning.paths import PathError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (BadInput, config_mod.ConfigError, DataError, ModelError, PathError, runs.RunError,
            LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The command line: `python -m tuning train|inspect ...`. Exit codes: 0 success, 2 bad input
(one-line message on stderr), 1 failure."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tuning import config as config_mod
from tuning import record
from tuning.paths import resolve_workspace


class BadInput(Exception):
    pass


def _train(args) -> int:
    from tuning import distributed, runner, train

    workspace = resolve_workspace(args.workspace)
    if distributed.is_worker():
        # Started by torch.distributed.run: the launcher already made the run folder and holds the lock.
        run_path = record.existing_run_dir(workspace, args.resume) if args.resume else Path(args.config).parent
        cfg = record.read_config(run_path)
        return train.run(cfg, run_path, workspace, resume=bool(args.resume))
    if args.resume:
        if args.preset or args.config or args.set:
            raise BadInput("--resume takes no --preset, --config or --set: a run keeps its config")
        run_path = record.existing_run_dir(workspace, args.resume)
        cfg = record.read_config(run_path)
        distributed.check(cfg)
        with runner.workspace_lock(workspace):
            runner.refuse_if_busy(workspace, except_run=run_path.name)
            record.write_process_info(run_path, os.getpid())
        if distributed.num_processes(cfg) > 1:
            return distributed.launch(distributed.num_processes(cfg), run_path, workspace, resume=True)
        return train.run(cfg, run_path, workspace, resume=True)

    source = args.config or args.preset
    cfg = config_mod.load(source) if source else config_mod.TrainConfig()
    cfg = config_mod.apply_overrides(cfg, args.set or [])
    distributed.check(cfg)
    config_path = Path(args.config).resolve() if args.config else None
    if config_path and config_path.parent.parent == record.runs_dir(workspace).resolve() and not args.set:
        run_path = config_path.parent  # started by the runner: the run folder exists already
        with runner.workspace_lock(workspace):
            runner.refuse_if_busy(workspace, except_run=run_path.name)
            record.write_process_info(run_path, os.getpid())
    else:
        with runner.workspace_lock(workspace):
            runner.refuse_if_busy(workspace)
            run_path = runner.create_run(workspace, cfg)
            record.write_process_info(run_path, os.getpid())
    print(f"run {run_path.name} in {run_path}", flush=True)
    if distributed.num_processes(cfg) > 1:  # this process becomes the launcher of N workers
        return distributed.launch(distributed.num_processes(cfg), run_path, workspace)
    return train.run(cfg, run_path, workspace)


def _inspect(args) -> int:
    """The Dataset tab's report on the command line: format, rows, problems, token statistics."""
    from tuning import data, models

    loaded = data.load(args.path, args.format, column_map=args.column_map, split=args.split, subset=args.subset)
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


def _eval(args) -> int:
    from tuning import evaluate

    workspace = resolve_workspace(args.workspace)
    run_path = record.existing_run_dir(workspace, args.run)
    try:
        result = evaluate.evaluate_run(run_path, workspace, recompute=args.recompute, checkpoint=args.checkpoint)
    except evaluate.EvalError as exc:
        raise BadInput(str(exc)) from None
    report = evaluate.report(run_path, result)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(f"{run_path.name} at step {report['step']}: {evaluate.headline(report)}; A/B: {report['ab']['text']}")
    return 0


def _export(args) -> int:
    from tuning import export

    workspace = resolve_workspace(args.workspace)
    run_path = record.existing_run_dir(workspace, args.run)
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


def _generate(args) -> int:
    """Base and tuned answers from the Playground's code path (one mixed-adapter batch)."""
    from tuning import playground

    workspace = resolve_workspace(args.workspace)
    run_path = record.existing_run_dir(workspace, args.run)
    settings = playground.GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                             top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                                             seed=args.seed)
    adapter = record.current_adapter(run_path, args.checkpoint)
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
    p.set_defaults(handler=_train)

    p = sub.add_parser("eval", help="held-out loss, task checks, probes and A/B votes of a run, base vs tuned")
    p.add_argument("--run", required=True, metavar="RUN_ID")
    p.add_argument("--workspace", help="workspace folder (default: $TUNING_WORKSPACE or ./workspace)")
    p.add_argument("--checkpoint", help="evaluate checkpoint-N instead of the final adapter (implies recompute)")
    p.add_argument("--recompute", action="store_true", help="compute again even if evaluation.json exists")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(handler=_eval)

    p = sub.add_parser("inspect", help="load a dataset and report its format, rows and problems")
    p.add_argument("path", help="'demo', a dataset file or folder, or a Hub dataset id")
    p.add_argument("--format", default="auto", help="force a format instead of detecting it: messages, "
                   "sharegpt, alpaca, prompt_completion, text")
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
    p.add_argument("--gguf", metavar="FILE", help="also write a GGUF file in <workspace>/exports/ (llama family)")
    p.add_argument("--gguf-type", default="f16", choices=("f16", "f32"))
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
    from tuning.models import ModelError
    from tuning.paths import PathError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (BadInput, config_mod.ConfigError, DataError, ModelError, PathError, record.RunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

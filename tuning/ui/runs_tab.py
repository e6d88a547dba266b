"""Runs tab: every run in the workspace, open one in Live or the Playground, delete one (after a
confirmation), download its adapter as a zip."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr

from tuning import evaluate, record
from tuning.ui.common import AppContext, clock, guarded, when

HEADERS = ["run", "name", "base model", "method", "status", "steps", "final loss", "eval loss", "base eval loss",
           "task checks", "duration", "created"]
# Fixed widths: an empty column (no task checks yet) otherwise shrinks until its header wraps a
# letter a line and the header pushes the rows out of view.
WIDTHS = ["12%", "6%", "16%", "5%", "8%", "5%", "6%", "6%", "6%", "13%", "6%", "11%"]


def _num(value) -> float | str:
    return round(value, 4) if isinstance(value, (int, float)) else ""


def evaluation_cells(path: Path, eval_loss: float | None) -> list:
    """[eval loss, base eval loss, task checks] from the run's evaluation.json (the end-of-run or a
    later evaluation; its tuned loss, when present, was measured on the same rows as the base's).
    A damaged file leaves the cells empty rather than breaking the listing."""
    try:
        result = evaluate.read_evaluation(path) or {}
        return [_num(result.get("eval_loss", eval_loss)), _num(result.get("base_eval_loss")),
                evaluate.checks_text(result)]
    except (OSError, KeyError, TypeError, AttributeError):
        return [_num(eval_loss), "", ""]


def table(ctx: AppContext) -> list[list]:
    rows = []
    for s in record.list_runs(ctx.workspace):
        cfg = s.config
        rows.append([s.run_id, cfg.get("run_name", ""), cfg.get("base_model", ""), cfg.get("method", ""),
                     s.status, f"{s.step}/{s.max_steps}" if s.max_steps else str(s.step), _num(s.loss),
                     *evaluation_cells(s.path, s.eval_loss),
                     clock(s.duration) if s.duration is not None else "", when(s.started)])
    return rows


def delete(ctx: AppContext, run_id: str, confirmed: bool) -> str:
    if not run_id:
        raise record.RunError("pick a run first")
    if not confirmed:
        raise record.RunError(f"tick 'yes, delete {run_id}' first: deleting removes its adapter and checkpoints")
    record.delete_run(ctx.workspace, run_id)
    return f"Deleted {run_id}."


def adapter_zip(ctx: AppContext, run_id: str) -> str:
    """The run's final adapter (else its newest checkpoint's adapter files) as a zip file in
    Gradio's temp folder, which the page may serve."""
    from gradio.utils import get_upload_folder

    if not run_id:
        raise record.RunError("pick a run first")
    path = record.existing_run_dir(ctx.workspace, run_id)
    source = path / "adapter"
    if not (source / "adapter_config.json").is_file():
        source = record.latest_checkpoint(path)
        if source is None:
            raise record.RunError(f"run {run_id} has no adapter or checkpoint yet")
    out_dir = Path(tempfile.mkdtemp(prefix="adapter-", dir=get_upload_folder()))
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / f"{run_id}-adapter"
        staged.mkdir()
        for item in source.iterdir():  # adapter weights, config and tokenizer; no optimizer state
            if item.is_file() and not item.name.startswith(("optimizer", "scheduler", "rng_state", "trainer_state")):
                shutil.copy2(item, staged / item.name)
        return shutil.make_archive(str(out_dir / f"{run_id}-adapter"), "zip", tmp, staged.name)


def build(ctx: AppContext):
    from tuning.ui.live_tab import run_choices

    with gr.Row():
        refresh = gr.Button("↻ Refresh", scale=1)
    listing = gr.Dataframe(value=table(ctx), headers=HEADERS, interactive=False, wrap=True, column_widths=WIDTHS,
                           label="Runs in the workspace", elem_id="runs-table")
    with gr.Row():
        run = gr.Dropdown(run_choices(ctx), value=None, label="Run", scale=3)
        open_live = gr.Button("Open in Live", scale=1)
        open_play = gr.Button("Open in Playground", scale=1)
        download_btn = gr.Button("Download adapter", scale=1)
    download = gr.File(label="Adapter (zip)", visible=False)
    with gr.Row():
        confirm = gr.Checkbox(label="yes, delete this run and all its files", value=False, scale=3)
        delete_btn = gr.Button("Delete run", variant="stop", scale=1)
    message = gr.Markdown()

    def refreshed(current):
        return table(ctx), gr.update(choices=run_choices(ctx), value=current)

    def do_delete(run_id, confirmed):
        text = delete(ctx, run_id, confirmed)
        gr.Info(text)
        return (text, False, *refreshed(None))

    def pick(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            return rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]
        except (IndexError, KeyError, TypeError):
            return gr.skip()

    refresh.click(refreshed, run, [listing, run], api_visibility="private")
    listing.select(pick, listing, run, api_visibility="private")
    delete_btn.click(guarded(do_delete), [run, confirm], [message, confirm, listing, run], api_visibility="private")
    download_btn.click(guarded(lambda r: gr.update(value=adapter_zip(ctx, r), visible=True)), run, download,
                       api_visibility="private")

    def list_api() -> list[dict]:
        """Every run in the workspace, newest first."""
        return [s.as_row() for s in record.list_runs(ctx.workspace)]

    def delete_api(run_id: str) -> str:
        """Delete a run that is not training (its folder, adapter and checkpoints)."""
        return delete(ctx, run_id, True)

    gr.api(guarded(list_api), api_name="list_runs")
    gr.api(guarded(delete_api), api_name="delete_run")
    return {"run": run, "open_live": open_live, "open_play": open_play, "listing": listing,
            "refreshed": refreshed}

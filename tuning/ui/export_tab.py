"""Export tab: take a finished run elsewhere. Download the adapter (zip), merge it into a
full-precision base and save it under <workspace>/exports/, preview the model card, write a GGUF
file (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3), push the adapter or the merged model to the Hub.

Handlers are plain functions of (ctx, ...) returning text or a file path; a failure raises, and
the tab's error box (common.boxed) shows its one readable line. Picking a run readies its adapter zip
on a gr.DownloadButton (one click downloads it), served from a copy in Gradio's temp folder
(common.served_copy), so it works wherever the workspace is. On a Space, everything needs the same
auth as training (tuning/ship/space.py): a visitor's pick reaches no export handler (`picked_for_owner`).
(No `from __future__ import annotations` here: Gradio reads the OAuthProfile type hint at runtime.)
"""

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from tuning.ship import export
from tuning import runs
from tuning.ui import access
from tuning.ui.access import public
from tuning.ui.common import AppContext, bind, boxed, error_box, guarded, into, keyed, served_copy


@dataclass(frozen=True)
class ExportParts:
    """What app.py wires across tabs."""
    run: gr.Dropdown


# --- plain handlers ------------------------------------------------------------------------------

def export_choices(ctx: AppContext) -> list:
    """Runs with a final adapter (completed or stopped), newest first."""
    return [s.run_id for s in runs.list_runs(ctx.workspace) if runs.has_final_adapter(s.path)]


def _run(ctx: AppContext, run_id: str) -> Path:
    if not run_id:
        raise export.ExportError("pick a finished run first")
    path = runs.existing_run_dir(ctx.workspace, run_id)
    export.finished_adapter(path)
    return path


def card_markdown(card: str) -> str:
    """The card as the preview shows it: its YAML front matter (the Hub's metadata) in a code block,
    where Markdown would otherwise render it as a paragraph of prose."""
    if not card.startswith("---\n"):
        return card
    front, sep, body = card[4:].partition("\n---\n")
    if not sep:
        return card
    return f"Hub metadata (the card's front matter):\n\n```yaml\n{front}\n```\n\n{body.lstrip()}"


NO_FINISHED_RUN = "No finished run yet: a run that completes (or is stopped) in **Train** is listed here."


def card_preview(ctx: AppContext, run_id: str) -> str:
    if not run_id:
        return "Pick a finished run to see its model card." if export_choices(ctx) else NO_FINISHED_RUN
    return card_markdown(export.model_card(_run(ctx, run_id), "adapter"))


ZIP_LABEL = "Download adapter (.zip)"


def zip_button(path: str | None = None, label: str = ZIP_LABEL) -> dict:
    """A download button's update: one click downloads `path`; without one it waits, disabled."""
    return gr.update(label=label, value=path, interactive=path is not None)


def download_adapter(ctx: AppContext, run_id: str | None) -> dict:
    """The picked run's adapter zip readied on the download button (a served copy), and a note; no
    run picked: the button waits."""
    if not run_id:
        return {"zip_file": zip_button(), "status": ""}
    path = export.adapter_zip(_run(ctx, run_id), ctx.workspace)
    return {"zip_file": zip_button(served_copy(path)),
            "status": f"Adapter zip ready: `{path.name}` (the adapter's weights and config, and its model card). "
                      "**Download adapter** saves it."}


def picked_for_owner(ctx: AppContext, run_id: str | None) -> dict:
    """A pick in the run picker: for an owner the run goes on to the export handlers (owner-only, wired
    on `owner_run`); a visitor to a Space gets a note, and no handler of theirs is refused."""
    if access.is_owner(ctx):
        return {"owner_run": run_id}
    return {"owner_run": None, "card": "Exports are for the Space's owner: " + (access.refusal(ctx) or "")}


def merge(ctx: AppContext, run_id: str, name: str) -> str:
    path = export.export_merged(_run(ctx, run_id), ctx.workspace, name or None)
    return (f"Merged model saved in `{path}`: a standard transformers folder; load it with "
            f"`AutoModelForCausalLM.from_pretrained(\"{path}\")`.")


GGUF_LABEL = "Download the GGUF file"


def gguf(ctx: AppContext, run_id: str, name: str, outtype: str) -> dict:
    """A served copy of the GGUF file, and a note; reuses exports/<run>-merged when it exists."""
    run_dir = _run(ctx, run_id)
    merged = export.exports_dir(ctx.workspace) / f"{run_id}-merged"
    path = export.export_gguf(run_dir, ctx.workspace, name or None, outtype or "f16",
                              merged_dir=merged if merged.is_dir() else None)
    return {"gguf_file": zip_button(served_copy(path), GGUF_LABEL),
            "status": f"GGUF written: `{path}` ({path.stat().st_size / 1e6:.0f} MB). **{GGUF_LABEL}** saves it."}


def push(ctx: AppContext, run_id: str, what: str, repo_id: str, token: str, private: bool) -> str:
    """Push the adapter or the merged model; reuses exports/<run>-adapter or -merged when present."""
    run_dir = _run(ctx, run_id)
    hub = export.hub_token(token)
    if not hub:
        raise export.ExportError("pushing needs a Hugging Face token with write access: paste it in the token "
                                 "field or set HF_TOKEN where the app runs")
    kind = "merged" if what == "merged" else "adapter"
    folder = export.exports_dir(ctx.workspace) / f"{run_id}-{kind}"
    if not folder.is_dir():
        folder = (export.export_merged if kind == "merged" else export.export_adapter)(run_dir, ctx.workspace)
    return f"Pushed the {kind} to {export.push(folder, repo_id, hub, private=bool(private))}"


def refreshed(ctx: AppContext, run_id: str | None):
    """The picker re-listed, `run_id` kept; with none picked, the newest finished run."""
    choices = export_choices(ctx)
    return gr.update(choices=choices, value=run_id or (choices[0] if choices else None))


# --- the page ------------------------------------------------------------------------------------

def layout(ctx: AppContext) -> dict:
    """The tab's components by name (the names its handlers return)."""
    gr.Markdown("Take a finished run elsewhere. Everything is written under `exports/` in the workspace; "
                "nothing existing is overwritten.")
    c = {}
    with gr.Row():
        c["run"] = gr.Dropdown(label="Finished run", choices=export_choices(ctx), value=None, scale=4)
        c["refresh"] = gr.Button("Refresh", scale=1)
    c["owner_run"] = gr.State(None)  # the picked run, for an owner only (picked_for_owner)
    c["error"] = error_box()
    c["status"] = gr.Markdown("" if export_choices(ctx) else NO_FINISHED_RUN)
    with gr.Row():
        with gr.Column():
            c["zip_file"] = gr.DownloadButton(ZIP_LABEL, value=None, interactive=False)
        with gr.Column():
            c["merged_name"] = gr.Textbox(label="Merged folder name (under exports/)", placeholder="RUN-merged")
            c["merge_button"] = gr.Button("Merge into a full-precision base and save")
        with gr.Column():
            c["gguf_name"] = gr.Textbox(label="GGUF file name (under exports/)", placeholder="RUN-f16.gguf")
            c["gguf_type"] = gr.Radio(list(export.GGUF_TYPES), value="f16", label="GGUF weights",
                                      info="f16: half the size of f32, same answers; q8_0: a quarter, close answers")
            c["gguf_button"] = gr.Button("Write GGUF (for llama.cpp, Ollama, LM Studio)")
            c["gguf_file"] = gr.DownloadButton(GGUF_LABEL, value=None, interactive=False)
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        with gr.Row():
            c["repo"] = gr.Textbox(label="Repo id", placeholder="your-name/model-name")
            c["what"] = gr.Radio(["adapter", "merged"], value="adapter", label="What to push")
            c["private"] = gr.Checkbox(value=True, label="Private repo")
        c["token"] = gr.Textbox(label="Hub token (write access; empty: HF_TOKEN). Kept in memory only, never saved.",
                                type="password")
        c["push_button"] = gr.Button("Push")
    with gr.Accordion("Model card preview", open=True):
        c["card"] = gr.Markdown(card_preview(ctx, None))
    return c


def wire(ctx: AppContext, c: dict) -> None:
    # Nothing here is public on a Space (exports read the run's files and write or upload them) but
    # the pick itself, which hands the run on to them for an owner only.
    private = {"api_visibility": "private"}
    run, status, box = c["run"], c["status"], c["error"]

    def event(fn, clears: dict | None = None):
        return keyed(boxed(bind(fn, ctx), clears), c)

    def gguf_waits():  # a GGUF written for the previous run is not this one's
        return zip_button(label=GGUF_LABEL)

    c["refresh"].click(guarded(bind(refreshed, ctx)), run, run, **private)
    run.change(public(keyed(bind(picked_for_owner, ctx), c)), run, [c["owner_run"], c["card"]], **private)
    # A new run empties what described the last one: its download, its GGUF and the status line.
    gone = {"zip_file": zip_button(), "status": ""}
    c["owner_run"].change(event(download_adapter, gone), c["owner_run"], [c["zip_file"], status, box], **private)
    card, merged, pushed = (event(into(name, fn), {name: ""})
                            for name, fn in (("card", card_preview), ("status", merge), ("status", push)))
    c["owner_run"].change(card, c["owner_run"], [c["card"], box], **private)
    c["owner_run"].change(gguf_waits, None, c["gguf_file"], **private)
    c["merge_button"].click(merged, [run, c["merged_name"]], [status, box], **private)
    c["gguf_button"].click(event(gguf, {"gguf_file": zip_button(label=GGUF_LABEL)}),
                           [run, c["gguf_name"], c["gguf_type"]], [c["gguf_file"], status, box], **private)
    c["push_button"].click(pushed, [run, c["what"], c["repo"], c["token"], c["private"]], [status, box], **private)


def build(ctx: AppContext) -> ExportParts:
    components = layout(ctx)
    wire(ctx, components)
    return ExportParts(run=components["run"])

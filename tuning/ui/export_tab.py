"""Export tab: take a finished run elsewhere. Download the adapter (zip), merge it into a
full-precision base and save it under <workspace>/exports/, preview the model card, write a GGUF
file (llama family), push the adapter or the merged model to the Hub.

Handlers are plain functions of (workspace, ...) returning text or a file path, so tests call
them without a browser; every failure comes back as one readable line, never a traceback. On a
Space, everything but the card preview needs the same auth as training (tuning/space.py).
(No `from __future__ import annotations` here: Gradio reads the OAuthProfile type hint at runtime.)
"""

from pathlib import Path
from typing import Optional

import gradio as gr

from tuning import export, record, space
from tuning.ui.common import friendly


def export_choices(workspace: Path) -> list[str]:
    """Runs with a final adapter (completed or stopped), newest first."""
    return [s.run_id for s in record.list_runs(workspace)
            if all((s.path / "adapter" / name).is_file() for name in export.ADAPTER_FILES)]


def _message(exc: BaseException) -> str:
    # ExportError messages are written for the user; anything else gets friendly()'s one line.
    return f"**Not done:** {exc if isinstance(exc, export.ExportError) else friendly(exc)}"


def _run(workspace: Path, run_id: str) -> Path:
    if not run_id:
        raise export.ExportError("pick a finished run first")
    path = record.existing_run_dir(workspace, run_id)
    export.finished_adapter(path)
    return path


def card_preview(workspace: Path, run_id: str) -> str:
    if not run_id:
        return "Pick a finished run to see its model card."
    try:
        return export.model_card(_run(workspace, run_id), "adapter")
    except Exception as exc:  # noqa: BLE001
        return _message(exc)


def download_adapter(workspace: Path, run_id: str) -> tuple[Optional[str], str]:
    try:
        path = export.adapter_zip(_run(workspace, run_id), workspace)
        return str(path), f"Adapter zip ready: `{path.name}` (adapter_model.safetensors, adapter_config.json, README.md)."
    except Exception as exc:  # noqa: BLE001
        return None, _message(exc)


def merge(workspace: Path, run_id: str, name: str) -> str:
    try:
        path = export.export_merged(_run(workspace, run_id), workspace, name or None)
        return (f"Merged model saved in `{path}`: a standard transformers folder; load it with "
                f"`AutoModelForCausalLM.from_pretrained(\"{path}\")`.")
    except Exception as exc:  # noqa: BLE001
        return _message(exc)


def gguf(workspace: Path, run_id: str, name: str, outtype: str) -> tuple[Optional[str], str]:
    try:
        run_dir = _run(workspace, run_id)
        merged = export.exports_dir(workspace) / f"{run_id}-merged"
        path = export.export_gguf(run_dir, workspace, name or None, outtype or "f16",
                                  merged_dir=merged if (merged / "config.json").is_file() else None)
        return str(path), f"GGUF written: `{path}` ({path.stat().st_size / 1e6:.0f} MB)."
    except Exception as exc:  # noqa: BLE001
        return None, _message(exc)


def push(workspace: Path, run_id: str, what: str, repo_id: str, token: str, private: bool) -> str:
    """Push the adapter or the merged model; reuses exports/<run>-adapter or -merged when present."""
    try:
        run_dir = _run(workspace, run_id)
        hub = export.hub_token(token)
        if not hub:
            raise export.ExportError("pushing needs a Hugging Face token with write access: paste it in the token "
                                     "field or set HF_TOKEN where the app runs")
        kind = "merged" if what == "merged" else "adapter"
        folder = export.exports_dir(workspace) / f"{run_id}-{kind}"
        if not folder.is_dir():
            folder = (export.export_merged if kind == "merged" else export.export_adapter)(run_dir, workspace)
        url = export.push(folder, repo_id, hub, private=bool(private))
        return f"Pushed the {kind} to {url}"
    except Exception as exc:  # noqa: BLE001
        return _message(exc)


def refusal(settings: space.SpaceSettings, profile, password: str) -> Optional[str]:
    """None when this visitor may export (same rule as training), else the text to show."""
    if space.can_train(profile, settings, password):
        return None
    return "**Not done:** " + space.refusal_message(profile, settings)


def build_export_tab(workspace: Path, settings: Optional[space.SpaceSettings] = None) -> None:
    """The tab's components and wiring; call inside `with gr.Tab("Export"):`."""
    workspace = Path(workspace)
    settings = settings or space.space_settings(workspace=workspace)

    def allowed(profile, password) -> Optional[str]:
        return refusal(settings, profile, password)

    gr.Markdown("Take a finished run elsewhere. Everything is written under `exports/` in the workspace; "
                "nothing existing is overwritten.")
    with gr.Row():
        run = gr.Dropdown(label="Finished run", choices=export_choices(workspace), value=None, scale=4)
        refresh = gr.Button("Refresh", scale=1)
    password = gr.Textbox(label="Space password (or sign in with Hugging Face)", type="password",
                          visible=settings.train_requires_auth and settings.password_set)
    status = gr.Markdown()
    with gr.Row():
        with gr.Column():
            zip_button = gr.Button("Download adapter (.zip)")
            zip_file = gr.File(label="Adapter zip", interactive=False)
        with gr.Column():
            merged_name = gr.Textbox(label="Merged folder name (under exports/)", placeholder="RUN-merged")
            merge_button = gr.Button("Merge into a full-precision base and save")
        with gr.Column():
            gguf_name = gr.Textbox(label="GGUF file name (under exports/)", placeholder="RUN-f16.gguf")
            gguf_type = gr.Radio(["f16", "f32"], value="f16", label="GGUF weights")
            gguf_button = gr.Button("Write GGUF (llama family)")
            gguf_file = gr.File(label="GGUF file", interactive=False)
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        with gr.Row():
            repo = gr.Textbox(label="Repo id", placeholder="your-name/model-name")
            what = gr.Radio(["adapter", "merged"], value="adapter", label="What to push")
            private = gr.Checkbox(value=True, label="Private repo")
        token = gr.Textbox(label="Hub token (write access; empty: HF_TOKEN). Kept in memory only, never saved.",
                           type="password")
        push_button = gr.Button("Push")
    with gr.Accordion("Model card preview", open=True):
        card = gr.Markdown()

    def on_zip(run_id, pw, profile: Optional[gr.OAuthProfile] = None):
        refused = allowed(profile, pw)
        return (None, refused) if refused else download_adapter(workspace, run_id)

    def on_merge(run_id, name, pw, profile: Optional[gr.OAuthProfile] = None):
        return allowed(profile, pw) or merge(workspace, run_id, name)

    def on_gguf(run_id, name, kind, pw, profile: Optional[gr.OAuthProfile] = None):
        refused = allowed(profile, pw)
        return (None, refused) if refused else gguf(workspace, run_id, name, kind)

    def on_push(run_id, kind, repo_id, tok, priv, pw, profile: Optional[gr.OAuthProfile] = None):
        return allowed(profile, pw) or push(workspace, run_id, kind, repo_id, tok, priv)

    refresh.click(lambda: gr.update(choices=export_choices(workspace)), None, run, api_visibility="private")
    run.change(lambda r: card_preview(workspace, r), run, card, api_visibility="private")
    zip_button.click(on_zip, [run, password], [zip_file, status], api_visibility="private")
    merge_button.click(on_merge, [run, merged_name, password], status, api_visibility="private")
    gguf_button.click(on_gguf, [run, gguf_name, gguf_type, password], [gguf_file, status], api_visibility="private")
    push_button.click(on_push, [run, what, repo, token, private, password], status, api_visibility="private")

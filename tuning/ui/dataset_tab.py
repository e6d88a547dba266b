"""Dataset tab: pick the demo, upload a file, or name a path / Hub id; see the detected format,
the row count, a paginated preview of the normalized conversations, and every problem with its
row number. The token view (how the model sees one row) sits below, folded."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import gradio as gr

from tuning import paths
from tuning.ui.common import AppContext, check_source, guarded

PAGE_SIZE = 10
SOURCES = ("demo dataset", "upload a file", "path or Hub id")


def resolve_source(ctx: AppContext, kind: str, upload: str | None, text: str) -> str:
    """The dataset string a TrainConfig takes, for what the person picked on the page."""
    if kind == SOURCES[0]:
        return "demo"
    if kind == SOURCES[1]:
        if not upload:
            raise paths.PathError("upload: choose a .json or .jsonl file first")
        return keep_upload(ctx, Path(upload))
    return check_source(ctx, text, what="dataset", keep=("demo",))


def keep_upload(ctx: AppContext, upload: Path) -> str:
    """Copy an upload into <workspace>/datasets/ so it outlives Gradio's temp folder and the run
    that trains on it can always be re-read (nothing the user made is lost)."""
    upload = paths.resolve_under(upload, ctx.roots, what="upload")
    target_dir = ctx.workspace / "datasets"
    target_dir.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in upload.name) or "upload.jsonl"
    target = target_dir / name
    if target.exists() and target.read_bytes() != upload.read_bytes():
        stem, suffix, n = target.stem, target.suffix, 2
        while (target_dir / f"{stem}-{n}{suffix}").exists():
            n += 1
        target = target_dir / f"{stem}-{n}{suffix}"
    if not target.exists():
        shutil.copyfile(upload, target)
    return str(target)


def _mtime(source: str) -> float:
    try:
        return Path(source).stat().st_mtime
    except OSError:
        return 0.0


@lru_cache(maxsize=8)
def _load_cached(source: str, fmt: str, mtime: float):
    from tuning import data

    return data.load(source, fmt)


def load(source: str, fmt: str = "auto"):
    return _load_cached(source, fmt or "auto", _mtime(source))


def conversation_row(number: int, messages: list[dict]) -> list:
    """One preview row: system, first user message, first reply, and any later turns."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    user = turns[0]["content"] if turns else ""
    reply = turns[1]["content"] if len(turns) > 1 else ""
    more = "\n".join(f"{m['role']}: {m['content']}" for m in turns[2:])
    return [number, system, user, reply, more]


PREVIEW_HEADERS = ["#", "system", "user", "assistant", "later turns"]
PROBLEM_HEADERS = ["file", "row", "field", "problem"]


def preview_page(loaded, page: int, page_size: int = PAGE_SIZE) -> tuple[list[list], int, int]:
    """(rows of the page, the page actually shown (clamped), the number of pages)."""
    total = len(loaded.conversations)
    pages = max(1, -(-total // page_size))
    page = min(max(1, int(page or 1)), pages)
    start = (page - 1) * page_size
    rows = [conversation_row(start + i + 1, m)
            for i, m in enumerate(loaded.conversations[start:start + page_size])]
    return rows, page, pages


def report(source: str, fmt: str = "auto") -> dict:
    """What the tab (and the inspect_dataset API) shows for a dataset."""
    loaded = load(source, fmt)
    rows, _, pages = preview_page(loaded, 1)
    result = {
        "dataset": source, "format": loaded.format, "rows": loaded.rows_total,
        "valid_rows": loaded.rows_valid, "problem_count": len(loaded.problems),
        "problems": [[p.file, p.row, p.field, p.message] for p in loaded.problems[:200]],
        "preview": rows, "pages": pages,
    }
    from tuning import data

    if hasattr(data, "statistics"):  # added by the dataset work; the tab shows it when present
        try:
            stats = data.statistics(loaded)
            result["statistics"] = stats if isinstance(stats, dict) else getattr(stats, "__dict__", str(stats))
        except Exception:  # noqa: BLE001 - statistics are a bonus, never a reason to fail the load
            pass
    return result


def summary_markdown(rep: dict) -> str:
    problems = rep["problem_count"]
    head = (f"**{rep['dataset']}** — format **{rep['format']}**, **{rep['valid_rows']}** of "
            f"{rep['rows']} rows valid")
    if problems:
        head += f"; **{problems} problem{'s' if problems != 1 else ''}** (those rows are left out, see below)"
    else:
        head += "; no problems found"
    return head


def inspect_handler(ctx: AppContext, kind: str, upload, text: str, fmt: str):
    source = resolve_source(ctx, kind, upload, text)
    rep = report(source, fmt)
    return (summary_markdown(rep), rep["preview"], 1, f"of {rep['pages']}", rep["problems"],
            rep.get("statistics"), source, source)


def page_handler(source: str, fmt: str, page, delta: int):
    if not source:
        return [], 1, "of 1"
    rows, page, pages = preview_page(load(source, fmt), int(page or 1) + delta)
    return rows, page, f"of {pages}"


@lru_cache(maxsize=2)
def _tokenizer(base_model: str, workspace: str):
    from tuning import models

    return models.load_tokenizer(models.resolve_base_model(base_model, Path(workspace)))


def token_view_handler(ctx: AppContext, source: str, fmt: str, row, base_model: str, max_length):
    from tuning import config as config_mod
    from tuning import data

    if not source:
        raise paths.PathError("dataset: inspect a dataset first")
    loaded = load(source, fmt)
    number = int(row or 1)
    if not 1 <= number <= len(loaded.conversations):
        raise paths.PathError(f"row: pick a row between 1 and {len(loaded.conversations)}")
    model = check_source(ctx, base_model, what="base_model", keep=(config_mod.EMBEDDED_MODEL,))
    tokenizer = _tokenizer(model, str(ctx.workspace))
    return data.token_view(tokenizer, loaded.conversations[number - 1], int(max_length or 512))


def build(ctx: AppContext):
    """Lay out the tab; returns the components other tabs use."""
    from tuning import config as config_mod
    from tuning import data

    formats = ["auto", *getattr(data, "FORMATS", ("messages", "alpaca"))]
    with gr.Row():
        kind = gr.Radio(list(SOURCES), value=SOURCES[0], label="Data source", scale=2)
        fmt = gr.Dropdown(formats, value="auto", label="Format", info="auto detects it from the first row",
                          scale=1)
    upload = gr.File(label="Upload a .json or .jsonl file", file_types=[".json", ".jsonl"], type="filepath",
                     visible=False)
    text = gr.Textbox(label="Path or Hub id", visible=False,
                      info="A file under the workspace or a --data-dir folder, or a Hub dataset id (org/name)")
    inspect_btn = gr.Button("Inspect dataset", variant="primary")
    summary = gr.Markdown("Pick a source and press **Inspect dataset**.")
    with gr.Row():
        prev_btn = gr.Button("◀ Previous", size="sm", min_width=80)
        page = gr.Number(value=1, label="Page", precision=0, minimum=1, min_width=80)
        pages = gr.Markdown("of 1")
        next_btn = gr.Button("Next ▶", size="sm", min_width=80)
    preview = gr.Dataframe(headers=PREVIEW_HEADERS, label="Normalized conversations", wrap=True,
                           column_widths=["6%", "14%", "30%", "38%", "12%"],
                           interactive=False, max_height=420)
    problems = gr.Dataframe(headers=PROBLEM_HEADERS, label="Validation problems (row numbers as an editor "
                            "shows them)", interactive=False, wrap=True, max_height=240)
    with gr.Accordion("Statistics", open=False):
        stats = gr.JSON(label="Statistics")
    with gr.Accordion("How the model sees a row (trained tokens vs masked)", open=False):
        with gr.Row():
            tv_row = gr.Number(value=1, label="Row", precision=0, minimum=1)
            tv_model = gr.Textbox(value=config_mod.EMBEDDED_MODEL, label="Tokenizer of base model")
            tv_len = gr.Number(value=512, label="max_length", precision=0, minimum=16)
        tv_btn = gr.Button("Show tokens")
        tokens = gr.HighlightedText(label="Tokens", color_map={"trained": "green", "masked": "gray",
                                                               "truncated": "red"}, show_legend=True)
    source = gr.State("")
    use_dataset = gr.Textbox(visible=False)  # what "Inspect" resolved, for the Train form

    kind.change(lambda k: (gr.update(visible=k == SOURCES[1]), gr.update(visible=k == SOURCES[2])),
                kind, [upload, text], api_visibility="private")
    inspect_btn.click(guarded(lambda k, u, t, f: inspect_handler(ctx, k, u, t, f)),
                      [kind, upload, text, fmt],
                      [summary, preview, page, pages, problems, stats, source, use_dataset],
                      api_name="inspect_dataset_form", api_visibility="private")
    prev_btn.click(guarded(lambda s, f, p: page_handler(s, f, p, -1)), [source, fmt, page],
                   [preview, page, pages], api_visibility="private")
    next_btn.click(guarded(lambda s, f, p: page_handler(s, f, p, +1)), [source, fmt, page],
                   [preview, page, pages], api_visibility="private")
    page.submit(guarded(lambda s, f, p: page_handler(s, f, p, 0)), [source, fmt, page],
                [preview, page, pages], api_visibility="private")
    tv_btn.click(guarded(lambda s, f, r, m, n: token_view_handler(ctx, s, f, r, m, n)),
                 [source, fmt, tv_row, tv_model, tv_len], tokens, api_visibility="private")

    def inspect_api(dataset: str, format: str = "auto") -> dict:
        """Inspect a dataset ('demo', a path under the allowed folders, or a Hub id): format, rows,
        problems and the first page of the normalized preview."""
        return report(check_source(ctx, dataset, what="dataset", keep=("demo",)), format)

    gr.api(guarded(inspect_api), api_name="inspect_dataset")
    return {"use_dataset": use_dataset}

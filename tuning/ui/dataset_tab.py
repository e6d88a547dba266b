"""Dataset tab: pick the demo, upload a file, or name a path / Hub id; see the detected format,
the row count, a paginated preview of the normalized conversations, every problem with its row
number, the token statistics (length histogram against max_length, truncated rows, trainable
tokens, duplicates) and the token view: one row as the model sees it, trained vs masked
(tuning/ui/dataset_tokens.py).
Preference data (pairs, KTO's labelled answers) and a run's votes show as pairs instead
(tuning/ui/dataset_pairs.py): prompt, chosen and rejected side by side, token lengths per side.
GRPO prompt data (demo-arithmetic, or any source with rewards typed in the tab) shows as the trainer
reads it (tuning/ui/dataset_prompts.py): the prompts with the columns the rewards read, the rows
missing one by file and row, the prompts' token lengths.

Two steps keep a big file usable: "Inspect" parses only the first QUICK_ROWS rows and counts the
rows of the file's first 16 MB (the first page shows in a second however big the file: "at least N
rows"), then the statistics step counts the rest by a byte scan, reads every row (a big file into an
Arrow cache in the workspace, tuning/data/arrow_data.py, never into memory) and tokenizes with a progress
bar: a sample first, saying so, then the full pass (at most FULL_STATS_ROWS rows)."""

from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from tuning import paths
from tuning.data.loading import DEMO_ARITHMETIC
from tuning.data.pairs import DEMO_PREFERENCE
from tuning.ship import space
from tuning.ui import access, dataset_pairs, dataset_prompts
from tuning.ui.access import public
from tuning.ui.common import (AppContext, bind, boxed, check_source, error_box, guarded, into, keyed, load_dataset,
                              opening_config)
from tuning.ui.dataset_tokens import (FINDING_HEADERS, TOKEN_COLORS, checked_max_length, findings_rows,
                                      histogram_frame, stats_markdown, token_view_handler, tokenizer_for)

PAGE_SIZE = 10
QUICK_ROWS = 200     # rows parsed before the first page shows
SAMPLE_ROWS = 1000   # rows tokenized for the quick estimate when there are more than this
FULL_STATS_ROWS = 200_000  # rows the last pass tokenizes at most (a CPU does a few hundred a second)
UPLOAD_TYPES = [".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt"]
SOURCES = ("demo dataset", "upload a file", "path or Hub id", "votes of a run")
BUNDLED = (DEMO_PREFERENCE, DEMO_ARITHMETIC)  # demos typed by name: shipped with the app, a Space visitor may read them


def resolve_source(ctx: AppContext, kind: str, upload: str | None, text: str, run: str | None = None) -> str:
    """The dataset string a TrainConfig takes, for what the person picked on the page."""
    if kind == SOURCES[0]:
        return "demo"
    if kind == SOURCES[2] and (text or "").strip() in BUNDLED:
        return text.strip()  # the bundled preference or GRPO demo: shipped with the app, anyone may read it
    access.require_owner(ctx)  # a visitor to a Space may inspect the demos only: no uploads, paths, Hub reads or votes
    if kind == SOURCES[3]:
        return vote_pairs_file(ctx, run)
    if kind == SOURCES[1]:
        if not upload:
            raise paths.PathError("upload: choose a file first (" + ", ".join(UPLOAD_TYPES) + ")")
        return keep_upload(ctx, Path(upload))
    return check_source(ctx, text, what="dataset", keep=("demo",))


def vote_pairs_file(ctx: AppContext, run: str | None) -> str:
    """A run's blind votes (and corrections) as the DPO pairs file "tune on my votes" trains on."""
    from tuning import runs

    if not run:
        raise paths.PathError("votes: pick a run first (runs with a decisive vote or a correction are listed)")
    return str(runs.write_preference_pairs(runs.existing_run_dir(ctx.workspace, run)))


def vote_runs(ctx: AppContext, kind: str) -> dict:
    """The runs whose votes can be opened, listed when that source is picked (the owner's only)."""
    from tuning import runs

    if kind != SOURCES[3]:
        return {}
    found = runs.runs_with_preferences(ctx.workspace) if access.is_owner(ctx) else []
    return {"run": gr.update(choices=found, value=found[0] if found else None)}


def keep_upload(ctx: AppContext, upload: Path) -> str:
    """Copy an upload into <workspace>/datasets/ so it outlives Gradio's temp folder and the run
    that trains on it can always be re-read (nothing the user made is lost)."""
    upload = paths.resolve_under(upload, ctx.roots, what="upload")
    target_dir = ctx.workspace / "datasets"
    target_dir.mkdir(parents=True, exist_ok=True)
    if ctx.settings.on_space:
        check_upload_quota(upload, target_dir)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in upload.name) or "upload.jsonl"
    target = target_dir / name
    if target.exists() and not filecmp.cmp(target, upload, shallow=False):  # compares in chunks
        stem, suffix, n = target.stem, target.suffix, 2
        while (target_dir / f"{stem}-{n}{suffix}").exists():
            n += 1
        target = target_dir / f"{stem}-{n}{suffix}"
    if not target.exists():
        shutil.copyfile(upload, target)  # streams: never the whole file in memory
    return str(target)


def check_upload_quota(upload: Path, folder: Path) -> None:
    """On a Space: one file at most SPACE_UPLOAD_BYTES, all kept datasets at most SPACE_DATASETS_QUOTA_BYTES."""
    mb = 1024 * 1024
    size = upload.stat().st_size
    if size > space.SPACE_UPLOAD_BYTES:
        raise paths.PathError(f"upload {upload.name}: {size / mb:.0f} MB; this Space takes files up to "
                              f"{space.SPACE_UPLOAD_BYTES / mb:.0f} MB (run the dashboard locally for larger data)")
    kept = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if kept + size > space.SPACE_DATASETS_QUOTA_BYTES:
        raise paths.PathError(f"upload {upload.name}: the Space's datasets folder holds {kept / mb:.0f} MB of "
                              f"{space.SPACE_DATASETS_QUOTA_BYTES / mb:.0f} MB; delete old uploads first")


PREVIEW_HEADERS = ["#", "system", "user", "assistant (last reply)", "turns", "file:row"]
PROBLEM_HEADERS = ["file", "row", "field", "problem"]


def preview_page(loaded, page: int, page_size: int = PAGE_SIZE) -> tuple[list[list], int, int]:
    """(rows of the page, the page actually shown (clamped), the number of pages). "#" is the
    row's number among the valid rows: the number the token view takes."""
    from tuning import data

    pages = data.page_count(loaded, page_size)
    page = min(max(1, int(page or 1)), pages)
    rows = [[r["index"] + 1, r["system"], r["prompt"], r["completion"], r["turns"], f"{Path(r['file']).name}:{r['row']}"]
            for r in data.preview(loaded, page, page_size)]
    return rows, page, pages


def report(source: str, fmt: str = "auto", column_map: str = "", limit: int | None = None, workspace=None) -> dict:
    """What the tab (and the inspect_dataset API) shows for a dataset before tokenizing."""
    loaded = load_dataset(source, fmt, column_map, limit, workspace)
    rows, _, pages = preview_page(loaded, 1)
    return {
        "dataset": source, "format": loaded.format, "rows": loaded.rows_total, "counted": loaded.rows_counted,
        "valid_rows": loaded.rows_valid, "complete": loaded.complete, "problem_count": len(loaded.problems),
        "problems": [[p.file, p.row, p.field, p.message] for p in loaded.problems[:200]],
        "preview": rows, "pages": pages, "note": loaded.note,
    }


def summary_markdown(rep: dict) -> str:
    problems = rep["problem_count"]
    if rep.get("note"):  # a streamed Hub preview: the first rows only, and the page says so
        return (f"**{rep['dataset']}** — format **{rep['format']}**, **{rep['valid_rows']:,}** of the first "
                f"{rep['rows']:,} rows valid. {rep['note']}")
    if not rep.get("complete", True):
        read = rep["valid_rows"] + problems
        rows = f"**{rep['rows']:,}**" if rep.get("counted", True) else f"at least **{rep['rows']:,}**"
        return (f"**{rep['dataset']}** — format **{rep['format']}**, {rows} rows"
                f"{'' if rep.get('counted', True) else ' (counting…)'}; the first {read:,} are shown "
                f"(**{rep['valid_rows']:,}** valid). Reading the rest and counting tokens…")
    head = (f"**{rep['dataset']}** — format **{rep['format']}**, **{rep['valid_rows']:,}** of "
            f"{rep['rows']:,} rows valid")
    if problems:
        head += f"; **{problems} problem{'s' if problems != 1 else ''}** (those rows are left out, see below)"
    else:
        head += "; no problems found"
    return head


def inspect_dataset(ctx: AppContext, dataset: str, fmt: str = "auto", column_map: str = "") -> dict:
    """The inspect_dataset API: the report of a dataset named by a client."""
    if (dataset or "").strip() not in ("demo", DEMO_ARITHMETIC):
        access.require_owner(ctx)
    return report(check_source(ctx, dataset, what="dataset", keep=("demo", DEMO_ARITHMETIC)), fmt, column_map,
                  workspace=ctx.workspace)


def source_inputs(kind: str) -> dict:
    """The upload box and the path box, each shown only for its kind of source."""
    return {"upload": gr.update(visible=kind == SOURCES[1]), "text": gr.update(visible=kind == SOURCES[2]),
            "run": gr.update(visible=kind == SOURCES[3])}


INSPECT_OUTPUTS = ("summary", "preview", "page", "pages", "problems", "stats", "source", "chosen", "chosen_format",
                   "chosen_map", "sft_preview", "sft_tokens", "pair_box", "pair_list", "pair_row", "prompt_box",
                   "prompt_list", "prompts")
NOTHING_INSPECTED = "Pick a source and press **Inspect dataset**."
NO_STATISTICS = "Token statistics appear after **Inspect dataset**."


def nothing_inspected() -> dict:
    """What the tab shows with no dataset inspected (also after an inspect that failed: nothing on
    screen describes a dataset that could not be read). `source` empty: the steps that follow an
    inspect show their own empty states. The Train form keeps the last dataset read (`chosen`)."""
    return {"summary": NOTHING_INSPECTED, "preview": [], "page": 1, "pages": "of 1", "problems": [],
            "stats": NO_STATISTICS, "source": "", **shown_as("sft"), "pair_list": [], "pair_row": 1,
            "prompt_list": [], "prompts": None}


def nothing_counted() -> dict:
    """The statistics' outputs with nothing to count."""
    return {"stats": NO_STATISTICS, "histogram": gr.update(value=None, visible=False), "findings": [],
            "suggested": None, "use_btn": gr.update(visible=False)}


def shown_as(view: str) -> dict:
    """The SFT preview and token view ("sft"), the pair view ("pairs") or the prompt view ("prompts"):
    one of them shows."""
    return {"sft_preview": gr.update(visible=view == "sft"), "sft_tokens": gr.update(visible=view == "sft"),
            "pair_box": gr.update(visible=view == "pairs"), "prompt_box": gr.update(visible=view == "prompts")}


def inspect_handler(ctx: AppContext, kind: str, upload, text: str, fmt: str, column_map: str = "",
                    run: str | None = None, rewards: str = "") -> dict:
    """The quick step: the first QUICK_ROWS rows, so a huge file shows its first page at once.
    source, chosen_format and chosen_map are what the Train form takes (app.py wires them).
    Preference data (or a run's votes) shows as pairs instead; a source read with rewards (or
    demo-arithmetic) as GRPO prompts."""
    source = resolve_source(ctx, kind, upload, text, run)
    column_map = (column_map or "").strip()
    chosen = {"source": source, "chosen": source, "chosen_format": fmt or "auto", "chosen_map": column_map}
    rewards = dataset_prompts.rewards_for(source, rewards)
    if rewards:  # `source` stays empty: the SFT and pair steps that follow have nothing to show
        return {**nothing_inspected(), **chosen, **dataset_prompts.inspect(source, rewards, column_map),
                "source": "", "chosen_format": "auto", **shown_as("prompts"),
                "prompts": {"source": source, "rewards": rewards, "column_map": column_map}}
    if dataset_pairs.is_preference(source):
        origin = f"votes of run {run}" if kind == SOURCES[3] else ""
        return {**nothing_inspected(), **dataset_pairs.inspect(source, column_map, origin), **chosen,
                "chosen_format": "auto", **shown_as("pairs")}
    rep = report(source, fmt, column_map, limit=QUICK_ROWS)
    return {**nothing_inspected(), "summary": summary_markdown(rep), "preview": rep["preview"],
            "pages": f"of {rep['pages']}", "problems": rep["problems"], "stats": "Counting tokens…", **chosen}


PAGE_OUTPUTS = ("preview", "page", "pages")


def page_handler(source: str, fmt: str, page, column_map: str = "", delta: int = 0,
                 ctx: AppContext | None = None) -> dict:
    """The preview page `delta` pages from `page` (clamped to the pages there are)."""
    if not source:
        return {"preview": [], "page": 1, "pages": "of 1"}
    loaded = load_dataset(source, fmt, column_map, workspace=ctx.workspace if ctx else None)
    rows, page, pages = preview_page(loaded, int(page or 1) + delta)
    return {"preview": rows, "page": page, "pages": f"of {pages}"}


def picked_row(evt: gr.SelectData) -> int:
    """A click on a preview row: that row's number, for the token view."""
    return int(evt.row_value[0])


# --- the statistics (the tokenizer and what the page shows of tokens: dataset_tokens.py) -------------

STATS_OUTPUTS = ("summary", "problems", "pages", "stats", "histogram", "findings", "suggested", "use_btn")


def stats_passes(rows: int) -> list[int | None]:
    """The statistics' passes: all rows; a sample of SAMPLE_ROWS first when there are more; and at
    most FULL_STATS_ROWS sampled rows in the last pass (a million rows would tokenize for an hour)."""
    if rows <= SAMPLE_ROWS:
        return [None]
    return [SAMPLE_ROWS, None if rows <= FULL_STATS_ROWS else FULL_STATS_ROWS]


def count_rest(source: str, fmt: str, column_map: str) -> dict:
    """The summary with the exact row count, for a JSONL file whose first page counted only its head
    (formats.COUNT_BYTES): a scan of its bytes, about a second a gigabyte. {} when there is nothing to add."""
    from tuning.data import formats

    quick = load_dataset(source, fmt, column_map, QUICK_ROWS)  # the first page's read (cached)
    if quick.rows_counted or not Path(source).is_file():
        return {}
    rep = report(source, fmt, column_map, QUICK_ROWS)
    return {"summary": summary_markdown({**rep, "rows": formats.count_rows(Path(source)), "counted": True})}


def statistics_handler(ctx: AppContext, source: str, fmt: str, column_map: str, base_model: str, max_length,
                       completions_only: bool = True, prompts: dict | None = None, progress=gr.Progress()):
    """The slow step, after the first page shows: read every row, then tokenize (a sampled estimate
    first when there are more than SAMPLE_ROWS). Yields the STATS_OUTPUTS once or twice. `prompts`: the
    GRPO prompts inspected (their source, rewards and column map), whose lengths show instead."""
    from tuning import data

    if prompts:
        yield dataset_prompts.statistics(prompts, tokenizer_for(ctx, base_model, progress))
        return
    if not source:
        yield nothing_counted()
        return
    limit = checked_max_length(max_length)
    if dataset_pairs.is_preference(source):
        tokenizer = tokenizer_for(ctx, base_model, progress)
        yield dataset_pairs.statistics(source, column_map, tokenizer, limit)
        return
    counted = count_rest(source, fmt, column_map)
    if counted:
        yield counted
    if progress is not None:
        progress(0.0, desc="reading every row")
    loaded = load_dataset(source, fmt, column_map, workspace=ctx.workspace)
    rep = report(source, fmt, column_map, workspace=ctx.workspace)
    head = {"summary": summary_markdown(rep), "problems": rep["problems"], "pages": f"of {rep['pages']}"}
    tokenizer = tokenizer_for(ctx, base_model, progress)
    passes = stats_passes(loaded.rows_valid)
    for done, sample in enumerate(passes, start=1):
        stats = data.statistics(loaded, tokenizer, limit, bool(completions_only), progress, sample=sample)
        frame, order = histogram_frame(stats)
        suggested = stats["suggested_max_length"]
        yield {**head, "stats": stats_markdown(stats, estimate=sample is not None, more=done < len(passes)),
               "histogram": gr.BarPlot(value=frame, sort=order, visible=True), "findings": findings_rows(stats),
               "suggested": suggested,
               "use_btn": gr.update(value=f"Use max_length {suggested} for training", visible=suggested != limit)}


def show_pair(ctx: AppContext, source: str, column_map: str, number, base_model: str, max_length) -> dict:
    """One pair of preference data side by side with each side's tokens; nothing for SFT data."""
    if not source or not dataset_pairs.is_preference(source):
        return {}
    return dataset_pairs.pair_view(source, column_map, number, tokenizer_for(ctx, base_model),
                                   checked_max_length(max_length))


OPEN_OUTPUTS = ("kind", "text", "summary", "preview", "page", "pages", "problems", "source", "chosen", "tv_row",
                "tokens", "sft_preview", "sft_tokens", "pair_box", "prompt_box", "prompts")


def openable(ctx: AppContext, source: str) -> str:
    """A run's data source, to open here: the demo's own files (shipped with the app; anyone may read
    them) or, for the owner, a path under the allowed folders or a Hub id."""
    from tuning import data

    if source in ("demo", DEMO_ARITHMETIC, *map(str, data.demo_files())):
        return source
    access.require_owner(ctx)
    return check_source(ctx, source, what="dataset")


def open_row(ctx: AppContext, request: dict | None, base_model: str, max_length, completions_only: bool = True) -> dict:
    """Open one example, named by {source, file, row} (the Evaluation tab's hardest lists): its
    dataset, the preview page holding it and its tokens."""
    from tuning import data

    if not request:
        return {}
    source = openable(ctx, str(request.get("source") or ""))
    where = (str(request.get("file") or ""), int(request.get("row") or 0))
    loaded = load_dataset(source, workspace=ctx.workspace)
    found = [i for i, loc in enumerate(loaded.locations) if (loc[0], loc[1]) == where]
    if not found:
        raise paths.PathError(f"{where[0]} row {where[1]}: not among the valid rows of {source} (was the file edited?)")
    rep, number = report(source, workspace=ctx.workspace), found[0] + 1
    rows, page, pages = preview_page(loaded, (number - 1) // PAGE_SIZE + 1)
    demo = source in ("demo", str(data.demo_files()[0]))
    return {"kind": SOURCES[0] if demo else SOURCES[2], "text": "" if demo else source,
            "summary": summary_markdown(rep) + f"  \nOpened **{Path(where[0]).name} row {where[1]}** (# {number}).",
            "preview": rows, "page": page, "pages": f"of {pages}", "problems": rep["problems"], "source": source,
            "chosen": source, "tv_row": number, **shown_as("sft"), "prompts": None,
            "tokens": token_view_handler(ctx, source, "auto", number, base_model, max_length, completions_only)}


# --- layout and wiring -------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetParts:
    """What app.py wires to the Train form."""
    dataset: gr.State             # the inspected dataset, as TrainConfig's `dataset` takes it
    dataset_format: gr.State      # the format it was inspected with
    column_map: gr.State          # and the column map
    base_model: gr.Textbox        # whose tokenizer counts the tokens: follows the form's base_model
    max_length: gr.Number         # follows the form's max_length
    completions_only: gr.Checkbox  # follows the form's train_on_completions_only
    use_max_length: gr.Button     # "use the suggested max_length": sets the form's
    suggested: gr.State           # the max_length it suggests
    row_request: gr.State         # {source, file, row}: open that example (set by the Evaluation tab's lists)


def _source_layout() -> dict:
    from tuning import data

    with gr.Row():
        kind = gr.Radio(list(SOURCES), value=SOURCES[0], label="Data source", scale=2)
        fmt = gr.Dropdown(["auto", *data.FORMATS], value="auto", label="Format", scale=1,
                          info="auto detects it from the first row; pick one to override")
        column_map = gr.Textbox(label="Column map", placeholder="prompt=question,completion=answer", scale=2,
                                info="Your columns onto the format's fields; Enter reloads")
        rewards = dataset_prompts.rewards_box()
    upload = gr.File(label="Upload a file (" + " ".join(UPLOAD_TYPES) + ")", file_types=UPLOAD_TYPES,
                     type="filepath", visible=False)
    text = gr.Textbox(label="Path or Hub id", visible=False,
                      info="A file under the workspace or a --data-dir folder, a Hub dataset id (org/name), "
                           "demo-preference (the bundled DPO pairs) or demo-arithmetic (the bundled GRPO sums)")
    run = gr.Dropdown([], label="Run whose votes to open", visible=False,
                      info="Its blind A/B votes with a winner (and corrections) as DPO pairs")
    inspect_btn = gr.Button("Inspect dataset", variant="primary")
    error = error_box()
    summary = gr.Markdown(NOTHING_INSPECTED)
    return dict(kind=kind, fmt=fmt, column_map=column_map, rewards=rewards, upload=upload, text=text, run=run,
                inspect_btn=inspect_btn, error=error, summary=summary)


def _preview_layout() -> dict:
    with gr.Column() as sft_preview:
        with gr.Row():
            prev_btn = gr.Button("◀ Previous", size="sm", min_width=80)
            page = gr.Number(value=1, label="Page", precision=0, minimum=1, min_width=80)
            pages = gr.Markdown("of 1")
            next_btn = gr.Button("Next ▶", size="sm", min_width=80)
        preview = gr.Dataframe(headers=PREVIEW_HEADERS, label="Normalized conversations (click a row to see its "
                               "tokens)", wrap=True, column_widths=["6%", "13%", "29%", "34%", "8%", "10%"],
                               interactive=False, max_height=420, elem_id="dataset-preview")
    pair_parts = dataset_pairs.layout()
    prompt_parts = dataset_prompts.layout()
    gr.Markdown("**Problems** — a row that cannot be read is left out of training (*drop*); fix it in the "
                "file (the row number is the line an editor shows) and inspect again to keep it (*fix*).")
    problems = gr.Dataframe(headers=PROBLEM_HEADERS, label="Validation problems", interactive=False, wrap=True,
                            max_height=240)
    return dict(prev_btn=prev_btn, page=page, pages=pages, next_btn=next_btn, preview=preview, problems=problems,
                sft_preview=sft_preview, **pair_parts, **prompt_parts)


def _tokens_layout(defaults) -> dict:
    gr.Markdown("### Tokens")
    with gr.Row():
        tv_model = gr.Textbox(value=defaults.base_model, label="Tokenizer of base model", scale=3,
                              info="Follows the Train form's base_model")
        tv_len = gr.Number(value=defaults.max_length, label="max_length", precision=0, minimum=16, scale=1,
                           info="Follows the Train form")
        completions_only = gr.Checkbox(value=defaults.train_on_completions_only, label="train on completions only",
                                       scale=1)
        recount_btn = gr.Button("Count tokens again", scale=1)
    with gr.Row():
        stats = gr.Markdown(NO_STATISTICS)
        histogram = gr.BarPlot(x="tokens", y="rows", color="where", x_title="tokens per row", y_title="rows",
                               color_map={"within max_length": "#3b82f6",
                                          "longer than max_length (truncated)": "#ef4444"},
                               color_title="", label="Token lengths (red: longer than max_length, cut)",
                               x_label_angle=-45, height=300, visible=False)  # shown with the first counts
    use_btn = gr.Button("Use the suggested max_length for training", visible=False, size="sm")
    findings = gr.Dataframe(headers=FINDING_HEADERS, label="Rows to look at: truncated, nothing to learn, duplicates",
                            interactive=False, wrap=True, max_height=240)
    with gr.Column() as sft_tokens:
        gr.Markdown("**How the model sees a row** — green tokens are learned (the loss is computed on them), grey "
                    "ones are context it reads, red ones fall beyond max_length and are cut off.")
        with gr.Row():
            tv_row = gr.Number(value=1, label="Row (# in the preview)", precision=0, minimum=1, scale=1)
            tv_btn = gr.Button("Show tokens", scale=1)
        tokens = gr.HighlightedText(label="Tokens", color_map=TOKEN_COLORS, show_legend=True, combine_adjacent=False)
    gr.Markdown("Held-out data: the Train form's **eval_split** (the share of these rows kept for evaluation) "
                "or **eval_dataset** (a separate file) decide it; both are under *Data* in the Train tab.")
    return dict(tv_model=tv_model, tv_len=tv_len, completions_only=completions_only, recount_btn=recount_btn,
                stats=stats, histogram=histogram, use_btn=use_btn, findings=findings, tv_row=tv_row, tv_btn=tv_btn,
                tokens=tokens, suggested=gr.State(None), sft_tokens=sft_tokens)


def build(ctx: AppContext) -> DatasetParts:
    """Lay out the tab, then wire it; returns what app.py wires to the Train form."""
    ui = {**_source_layout(), **_preview_layout(), **_tokens_layout(opening_config())}
    # source: what the tab's views describe ("" after a failed inspect); chosen: the last dataset read,
    # which the Train form takes (a failed upload does not empty the form).
    ui.update(source=gr.State(""), chosen=gr.State(""), chosen_format=gr.State(None), chosen_map=gr.State(None),
              row_request=gr.State(None), prompts=gr.State(None))

    def pick(*names: str) -> list:
        return [ui[name] for name in names]

    box = ui["error"]

    def event(fn, clears=None, **kwargs):  # through the tab's error box (common.boxed)
        return keyed(boxed(fn, clears, **kwargs), ui)

    stats_inputs = pick("source", "fmt", "column_map", "tv_model", "tv_len", "completions_only", "prompts")
    token_inputs = pick("source", "fmt", "tv_row", "tv_model", "tv_len", "completions_only", "column_map")
    # Public on a Space: a visitor may inspect the demo; the handlers refuse them anything else. The
    # steps that follow an inspect keep its box (hides=False): their own failure shows there too.
    tokens = into("tokens", bind(token_view_handler, ctx))
    show_tokens = public(event(tokens, {"tokens": []}))
    then_tokens = public(event(tokens, {"tokens": []}, hides=False))
    count = public(event(bind(statistics_handler, ctx), nothing_counted, hides=False))
    recount = public(event(bind(statistics_handler, ctx), nothing_counted))
    private = dict(api_visibility="private")
    pair_inputs = pick("source", "column_map", "pair_row", "tv_model", "tv_len")
    # Public: a visitor may see the demo preference pairs; show_pair shows nothing else than what was inspected.
    pair = public(event(bind(show_pair, ctx)))
    then_pair = public(event(bind(show_pair, ctx), hides=False))
    pair_outputs = [*pick(*dataset_pairs.VIEW_OUTPUTS), box]
    stats_outputs = [*pick(*STATS_OUTPUTS), box]
    ui["kind"].change(public(keyed(source_inputs, ui)), ui["kind"], pick("upload", "text", "run"), **private)
    # Public: a visitor is listed no runs (the votes are the owner's).
    ui["kind"].change(public(guarded(keyed(bind(vote_runs, ctx), ui))), ui["kind"], ui["run"], **private)
    # Inspect, a new format, a new column map or new rewards: the quick first page, then every row with
    # tokens. A source that cannot be read says why in the box and empties every view of the previous dataset.
    gr.on([ui["inspect_btn"].click, ui["fmt"].input, ui["column_map"].submit, ui["rewards"].submit],
          public(event(bind(inspect_handler, ctx), nothing_inspected)),
          pick("kind", "upload", "text", "fmt", "column_map", "run", "rewards"),
          [*pick(*INSPECT_OUTPUTS), box], api_name="inspect_dataset_form", **private) \
        .success(count, stats_inputs, stats_outputs, **private) \
        .success(then_tokens, token_inputs, [ui["tokens"], box], **private) \
        .success(then_pair, pair_inputs, pair_outputs, **private)
    ui["pair_btn"].click(pair, pair_inputs, pair_outputs, **private)
    ui["pair_list"].select(public(dataset_pairs.picked_pair), None, ui["pair_row"], **private) \
        .success(pair, pair_inputs, pair_outputs, **private)
    ui["recount_btn"].click(recount, stats_inputs, stats_outputs, **private)
    ui["use_btn"].click(public(lambda value: value), ui["suggested"], ui["tv_len"], **private)
    for button, delta in ((ui["prev_btn"].click, -1), (ui["next_btn"].click, +1), (ui["page"].submit, 0)):
        button(public(event(bind(page_handler, delta=delta, ctx=ctx))),
               pick("source", "fmt", "page", "column_map"),
               [*pick(*PAGE_OUTPUTS), box], **private)
    ui["tv_btn"].click(show_tokens, token_inputs, [ui["tokens"], box], **private)
    ui["preview"].select(public(picked_row), None, ui["tv_row"], **private) \
        .success(show_tokens, token_inputs, [ui["tokens"], box], **private)

    # Public: a visitor may open a row of the demo; open_row refuses them anything else.
    ui["row_request"].change(public(event(bind(open_row, ctx))),
                             pick("row_request", "tv_model", "tv_len", "completions_only"),
                             [*pick(*OPEN_OUTPUTS), box], **private)

    def inspect_api(dataset: str, format: str = "auto", column_map: str = "") -> dict:
        """Inspect a dataset ('demo', a path under the allowed folders, or a Hub id): format, rows,
        problems and the first page of the normalized preview."""
        return inspect_dataset(ctx, dataset, format, column_map)

    gr.api(public(guarded(inspect_api)), api_name="inspect_dataset")
    return DatasetParts(dataset=ui["chosen"], dataset_format=ui["chosen_format"], column_map=ui["chosen_map"],
                        base_model=ui["tv_model"], max_length=ui["tv_len"], completions_only=ui["completions_only"],
                        use_max_length=ui["use_btn"], suggested=ui["suggested"], row_request=ui["row_request"])

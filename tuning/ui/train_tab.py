"""Train tab: a Simple view (preset cards with the time and memory measured for each, and the few
fields that matter most) and an Advanced view (every field, grouped), "save as preset", "show command",
an estimate before start, Start, and the queue: "Queue it" when a start is refused because another run
trains, and a grid that queues one run per value. The browser keeps the form across a reload.

The form is generated from config.FIELDS (tuning/ui/train_fields.py): each field's metadata gives its
widget, human label, help text, valid range and whether it is in the Simple view, so a new config
field shows up here without touching this file. The Simple fields are twins of their Advanced fields
(kept equal in the browser); the config is read from the Advanced fields, which hold every value."""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from tuning import config as config_mod
from tuning import paths
from tuning.data.loading import DEMO_ARITHMETIC
from tuning.data.pairs import DEMO_PREFERENCE
from tuning.ui import train_plan
from tuning.ui.access import public
from tuning.ui.common import (OPENING_PRESET, AppContext, bind, boxed, check_source, error_box, guarded, into, keyed,
                              opening_config, opening_preset)
from tuning.ui.train_fields import (FORM_FIELDS, GROUPS, SIMPLE_FIELDS, acceptable, config_to_form, form_to_config,
                                    rows, widget)


# --- presets ---------------------------------------------------------------------------------

def preset_dirs(ctx: AppContext) -> list[Path]:
    """The bundled presets, then the ones saved from this page (in the workspace)."""
    return [paths.PRESETS_DIR, ctx.workspace / "presets"]


def list_presets(ctx: AppContext) -> list[dict[str, str]]:
    found = []
    for folder in preset_dirs(ctx):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            saved = folder != paths.PRESETS_DIR
            found.append({"name": ("saved: " if saved else "") + path.stem, "path": str(path)})
    return found


def load_preset(ctx: AppContext, name: str) -> config_mod.TrainConfig:
    """A preset by its listed name (never an arbitrary path: the list is the allow-list)."""
    for preset in list_presets(ctx):
        if preset["name"] == name:
            return config_mod.load(preset["path"])
    raise config_mod.ConfigError(f"preset: no preset named {name!r}")


def save_preset(ctx: AppContext, name: str, cfg: config_mod.TrainConfig) -> Path:
    """Write `cfg` as <workspace>/presets/<name>.yaml. The file is created exclusively, so a saved
    preset is never overwritten, not even by a second save of the same name at the same moment."""
    folder = ctx.workspace / "presets"
    try:
        path = paths.safe_preset_path(name or "", folder)
    except paths.PathError as exc:
        raise config_mod.ConfigError(str(exc)) from None
    folder.mkdir(parents=True, exist_ok=True)
    header = (f"# Saved from the dashboard.\n#\n#   python -m tuning train --preset {shlex.quote(str(path))}\n#\n")
    try:
        out = open(path, "x", encoding="utf-8")
    except FileExistsError:
        raise config_mod.ConfigError(f"preset name: {path.stem!r} exists already; choose another name") from None
    try:
        with out:
            out.write(header + cfg.to_yaml())
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written preset left to block the name
        raise
    return path


def command_line(cfg: config_mod.TrainConfig, preset: str | None, ctx: AppContext) -> str:
    """The exact `python -m tuning train ...` for this form: the preset plus --set for each
    field that differs from it."""
    base = config_mod.TrainConfig()
    parts = ["python", "-m", "tuning", "train"]
    if preset:
        path = next((p["path"] for p in list_presets(ctx) if p["name"] == preset), None)
        if path:
            base = config_mod.load(path)
            rel = Path(path)
            rel = rel.relative_to(paths.PROJECT_DIR) if rel.is_relative_to(paths.PROJECT_DIR) else rel
            parts += ["--preset", str(rel)]
    for name in FORM_FIELDS:
        value = getattr(cfg, name)
        if value != getattr(base, name):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            parts += ["--set", f"{name}={text}"]
    parts += ["--workspace", str(ctx.workspace)]
    return shlex.join(parts)


def checked(ctx: AppContext, cfg: config_mod.TrainConfig) -> config_mod.TrainConfig:
    """Paths in the config typed into the page must lie under the allowed roots; they are made
    absolute so the training process reads the very same file."""
    changes = {"base_model": check_source(ctx, cfg.base_model, what="base_model",
                                          keep=(config_mod.EMBEDDED_MODEL,)),
               "dataset": check_source(ctx, cfg.dataset, what="dataset", keep=("demo", DEMO_PREFERENCE, DEMO_ARITHMETIC))}
    if cfg.eval_dataset:
        changes["eval_dataset"] = check_source(ctx, cfg.eval_dataset, what="eval_dataset")
    if cfg.trust_remote_code and paths.on_space():
        raise config_mod.ConfigError("trust_remote_code: not allowed on a shared Space")
    return cfg.replace(**changes)


TRUST_WARNING = ("⚠️ **trust_remote_code is on**: loading the model runs Python code from the model's "
                 "repository with your user's rights. Only for models you trust.")


def trust_warning(on: bool):
    """The warning shown next to the trust_remote_code box while it is ticked."""
    return gr.update(value=TRUST_WARNING if on else "", visible=bool(on))


def warn_if_trusting(cfg: config_mod.TrainConfig) -> str | None:
    """A toast at start when the run will execute the model repository's code."""
    if not cfg.trust_remote_code:
        return None
    gr.Warning(TRUST_WARNING.replace("⚠️ ", "").replace("**", ""))
    return TRUST_WARNING


def estimate_markdown(ctx: AppContext, cfg: config_mod.TrainConfig) -> str:
    """The plan, the checks before Start and the estimate (tuning/ui/train_plan.py)."""
    return train_plan.report(ctx, cfg)[0]


def start(ctx: AppContext, cfg: config_mod.TrainConfig) -> str:
    """Start a run from a config; returns the run id. Refused while another run is active."""
    from tuning.runs import runner

    return runner.start(checked(ctx, cfg), ctx.workspace)


# --- what the form's buttons do (values arrive in FORM_FIELDS order) ---------------------------

def fill_form(ctx: AppContext, preset: str) -> dict:
    """The form's values from a preset, by field name (nothing changes when none is picked)."""
    return dict(zip(FORM_FIELDS, config_to_form(load_preset(ctx, preset)))) if preset else {}


def do_save(ctx: AppContext, name: str, *values) -> dict:
    """Save the form as a preset in the workspace and select it in the preset list."""
    path = save_preset(ctx, name, form_to_config(list(values)))
    gr.Info(f"Saved preset {path.stem}")
    return gr.update(choices=[p["name"] for p in list_presets(ctx)], value=f"saved: {path.stem}")


def do_command(ctx: AppContext, preset: str, *values):
    """The terminal command for the form, shown under the buttons."""
    return gr.update(value=command_line(form_to_config(list(values)), preset, ctx), visible=True)


def do_estimate(ctx: AppContext, *values) -> dict:
    """The plan, the checks before Start (a button per fix) and the memory and time estimate."""
    text, found = train_plan.report(ctx, checked(ctx, form_to_config(list(values))))
    return {"estimate": text, **train_plan.fix_updates(found)}


def do_fix(ctx: AppContext, index: int, *values) -> dict:
    """One check's fix made in the form, and the plan and checks again for the fixed form."""
    cfg = checked(ctx, form_to_config(list(values)))
    fixed = train_plan.with_fix(cfg, train_plan.report(ctx, cfg)[1], index)
    text, found = train_plan.report(ctx, fixed)
    return {**train_plan.form_values(fixed), "estimate": text, **train_plan.fix_updates(found)}


def do_start(ctx: AppContext, *values) -> dict:
    """Start a run from the form: the message, the estimate, and the run id app.py follows into Live
    (left as it is when the start is refused)."""
    from tuning.runs import runner

    cfg = checked(ctx, form_to_config(list(values)))
    warn_if_trusting(cfg)
    note = estimate_markdown(ctx, cfg)
    try:
        run_id = runner.start(cfg, ctx.workspace)
    except runner.RunActive as exc:  # busy: offer the queue instead of only refusing
        gr.Warning(str(exc))
        return {"message": f"**Not started:** {exc}. **Queue it** starts this run as soon as the machine is free.",
                "estimate": note, "queue_it": gr.update(visible=True)}
    except runner.StartRefused as exc:
        gr.Warning(str(exc))
        return {"message": f"**Not started:** {exc}", "estimate": note}
    gr.Info(f"Started run {run_id}")
    return {"message": f"Started run **{run_id}** — follow it in the Live tab.", "estimate": note,
            "started_run": run_id, "queue_it": gr.update(visible=False)}


def queue_runs(ctx: AppContext, configs: list[config_mod.TrainConfig]) -> dict:
    """Queue `configs` in order, and start the first queued run at once if the machine is free (the
    run id app.py follows into Live)."""
    from tuning.runs import runner

    entries = runner.enqueue(ctx.workspace, configs)
    started = runner.start_next(ctx.workspace)
    names = ", ".join(e["config"].get("run_name") or e["id"] for e in entries)
    text = f"Queued {len(entries)} run{'s' if len(entries) > 1 else ''}: {names}."
    text += (f" The machine was free: started **{started}**." if started else
             " Queued runs start one after another when the machine is free (the Runs tab lists them).")
    gr.Info(text.replace("**", ""))
    return {"message": text, "queue_it": gr.update(visible=False), **({"started_run": started} if started else {})}


def do_queue(ctx: AppContext, *values) -> dict:
    """"Queue it": the form as one queued run."""
    return queue_runs(ctx, [checked(ctx, form_to_config(list(values)))])


def do_queue_grid(ctx: AppContext, grid_spec: str, *values) -> dict:
    """The form queued once per value of the grid ("learning_rate=1e-4,2e-4,5e-4"), each run named
    after its value."""
    from tuning.runs import runner

    return queue_runs(ctx, runner.grid(checked(ctx, form_to_config(list(values))), grid_spec))


def config_from_api(ctx: AppContext, preset: str, overrides_yaml: str) -> config_mod.TrainConfig:
    """A preset (none: the defaults) plus `key: value` YAML overrides, as an API client sends them."""
    cfg = load_preset(ctx, preset) if preset else config_mod.TrainConfig()
    overrides = yaml.safe_load(overrides_yaml or "") or {}
    if not isinstance(overrides, dict):
        raise config_mod.ConfigError("overrides: expected a mapping of key: value")
    return cfg.replace(**overrides)


# --- presets as cards, with what they cost on this machine ------------------------------------------

MEASURED_TABLE = paths.PRESETS_DIR / "measured.json"  # written by bench/preset_table.py


def measured_table(path: Path | None = None) -> dict:
    """{preset name: its row} from the table the bench writes; {} when it is missing or unreadable."""
    import json

    try:
        rows = json.loads(Path(path or MEASURED_TABLE).read_text(encoding="utf-8")).get("presets", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return rows if isinstance(rows, dict) else {}


def preset_purpose(path: Path) -> str:
    """What a preset is for: the first sentence of its header comment."""
    import re

    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or not line.strip("# "):
            break
        lines.append(line.lstrip("#").strip())
    return re.split(r"(?<!e\.g\.)(?<=\.)\s+(?=[A-Z])", " ".join(lines))[0]


def minutes(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def card_text(name: str, path: Path, row: dict | None) -> str:
    """A preset card: its name, what it is for, and the time and peak memory measured for it."""
    if row and row.get("wall_s") and row.get("peak_rss_gib"):
        cost = (f"Measured on {row.get('machine', 'this machine')}: **{minutes(row['wall_s'])}** from start to "
                f"evaluated, peak memory **{row['peak_rss_gib']:.2f} GiB**.")
        if row.get("load", 0) > row.get("cores", math.inf):  # other work shared the cores: slower than yours
            cost += f" (The machine was busy then: load {row['load']:g} on {row['cores']} cores.)"
    else:
        cost = "Not measured here."
    return f"**{name}**  \n{preset_purpose(path)}  \n{cost}"


def preset_cards(ctx: AppContext) -> list[tuple[str, str]]:
    """(name, card text) for every bundled preset (the saved ones are in the preset list), the ones
    measured on this machine first."""
    table = measured_table()
    bundled = [p for p in list_presets(ctx) if Path(p["path"]).parent == paths.PRESETS_DIR]
    bundled.sort(key=lambda p: p["name"] not in table)  # stable: by name within each
    return [(p["name"], card_text(p["name"], Path(p["path"]), table.get(p["name"]))) for p in bundled]


FIRST_RUN_PRESET = "first-run"  # a first look on a CPU: the Simple view opens on it


def simple_opening_preset() -> str:
    """The preset the tab opens on: on a CPU the first run, on a GPU the preset sized for the card."""
    chosen = opening_preset()
    if chosen == OPENING_PRESET and (paths.PRESETS_DIR / f"{FIRST_RUN_PRESET}.yaml").is_file():
        return FIRST_RUN_PRESET
    return chosen


def use_preset(ctx: AppContext, name: str) -> dict:
    """A card's button: the preset in the preset list and in the form."""
    return {"preset": name, **fill_form(ctx, name)}


# --- the form in the browser: what a reload keeps ---------------------------------------------------

VIEWS = ("Simple", "Advanced")


def remember_form(view: str, preset: str | None, *values) -> dict:
    """What the browser keeps of the form (gr.BrowserState): the view, the preset and every field's
    value by name, as typed (a value that does not validate yet is kept too)."""
    return {"view": view, "preset": preset, "values": dict(zip(FORM_FIELDS, values))}


def restore_form(stored: Any = None, ctx: AppContext | None = None) -> dict:
    """The form as the browser kept it, on page load: every stored value its field still takes (a key
    no longer in the config, or a value out of range, is left at the page's default), the view and
    the preset (with `ctx`, only while it is still listed). Nothing stored: nothing changes."""
    if not isinstance(stored, dict) or not isinstance(stored.get("values"), dict):
        return {}
    restored = {name: value for name, value in stored["values"].items()
                if name in config_mod.FIELDS and acceptable(name, value)}
    if stored.get("view") in VIEWS:
        restored["view"] = stored["view"]
    preset = stored.get("preset")
    if isinstance(preset, str) and (ctx is None or preset in [p["name"] for p in list_presets(ctx)]):
        restored["preset"] = preset
    return restored


def show_view(view: str) -> dict:
    """Simple: preset cards and a few fields; Advanced: every field, grouped."""
    advanced = view == "Advanced"
    return {"simple_view": gr.update(visible=not advanced), "advanced_view": gr.update(visible=advanced)}


def storage_key(ctx: AppContext, what: str) -> str:
    """A browser storage key per workspace: two dashboards on one host keep separate forms."""
    import hashlib

    return f"tuning-{what}-" + hashlib.sha256(str(ctx.workspace).encode()).hexdigest()[:12]


# --- layout and wiring -------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainParts:
    """What app.py wires across tabs: the run a Start began, and the form fields the Dataset tab fills
    (dataset, format, column map) or follows (base model, max_length, completions only); the form's
    browser state and its restore, which app.py runs on page load (`restore_on_load`)."""
    started_run: gr.Textbox
    dataset: gr.Textbox
    dataset_format: gr.Dropdown
    column_map: gr.Textbox
    base_model: gr.Textbox
    max_length: gr.Number
    completions_only: gr.Checkbox
    form: tuple = ()  # every form widget, in FORM_FIELDS order (the Playground's "tune on my votes" fills them)
    saved: gr.BrowserState | None = None
    ui: dict | None = None


def _advanced_layout(defaults: config_mod.TrainConfig) -> dict:
    """Every field once, in its group; the trust_remote_code warning (under its box) as "trust_md"."""
    ui: dict[str, Any] = {}
    for group, title in GROUPS:
        names = [n for n in FORM_FIELDS if config_mod.FIELDS[n].metadata["group"] == group]
        with gr.Group():
            gr.Markdown(f"#### {title}", padding=True)
            ui.update(rows(names, lambda n: widget(n, getattr(defaults, n))))
            if "trust_remote_code" in names:  # the warning sits right under the box it is about
                ui["trust_md"] = gr.Markdown(TRUST_WARNING, visible=bool(defaults.trust_remote_code))
    return ui


def _simple_layout(ctx: AppContext, defaults: config_mod.TrainConfig) -> tuple[dict, list]:
    """Preset cards, then the Simple fields; returns the twins by field name and the cards' buttons
    as (button, preset name)."""
    cards = []
    with gr.Row():  # not equal_height: a short card's button would stretch to the tallest card
        for name, text in preset_cards(ctx):
            with gr.Column(min_width=260, variant="panel"):
                gr.Markdown(text)
                cards.append((gr.Button(f"Use {name}", size="sm"), name))
    twins = rows(SIMPLE_FIELDS, lambda n: widget(n, getattr(defaults, n), simple=True))
    return twins, cards


def _grid_layout(ui: dict) -> gr.Button:
    """A folded row: the grid box (ui["grid"]) and its button, returned."""
    with gr.Accordion("Queue a small grid: one run per value", open=False):
        with gr.Row(equal_height=True):
            ui["grid"] = gr.Textbox(label="Grid", placeholder="learning_rate=1e-4,2e-4,5e-4", scale=3,
                                    info="key=value1,value2,...: the form's run once per value, each named after "
                                         "its value (learning_rate-1e-4, ...); they start one after another")
            button = gr.Button("Queue the grid", scale=1)
    return button


def _mirror(twins: dict, ui: dict) -> None:
    """The Simple fields and their Advanced twins hold one value: an edit in Simple is copied to the
    twin, and any change of the twin (typed, a preset, a restore, the Dataset tab) back to Simple.
    In the browser, so a Start right after typing reads the new value."""
    for name, twin in twins.items():
        twin.input(None, twin, ui[name], js="(value) => value", **PRIVATE)
        ui[name].change(None, ui[name], twin, js="(value) => value", **PRIVATE)


PRIVATE = dict(api_visibility="private")


def build(ctx: AppContext) -> TrainParts:
    """Lay out the tab (the form opens on the preset for this machine, in the Simple view), then wire it."""
    preset_names = [p["name"] for p in list_presets(ctx)]
    opening = simple_opening_preset()
    defaults = config_mod.load(paths.PRESETS_DIR / f"{opening}.yaml") if opening in preset_names else \
        opening_config()
    ui: dict[str, Any] = {}
    with gr.Row(equal_height=True):
        ui["view"] = gr.Radio(list(VIEWS), value="Simple", label="View", scale=1,
                              info="Simple: a preset and the few settings that matter most. Advanced: every setting.")
        ui["preset"] = gr.Dropdown(preset_names, value=opening if opening in preset_names else None,
                                   label="Preset", info="Fills the form from presets/*.yaml (and presets you saved)",
                                   scale=2)
    with gr.Column(visible=True) as ui["simple_view"]:
        twins, cards = _simple_layout(ctx, defaults)
    with gr.Column(visible=False) as ui["advanced_view"]:
        with gr.Row():
            preset_name = gr.Textbox(label="Save the form as preset named", placeholder="my-preset", scale=2)
            save_btn = gr.Button("Save as preset", scale=1)
        ui.update(_advanced_layout(defaults))
        grid_btn = _grid_layout(ui)
    form = [ui[n] for n in FORM_FIELDS]
    with gr.Row():
        estimate_btn = gr.Button("Plan, checks and estimate")
        command_btn = gr.Button("Show command")
        start_btn = gr.Button("Start training", variant="primary")
        ui["queue_it"] = gr.Button("Queue it", visible=False)  # shown when a start meets a busy machine
    ui["error"] = error_box()  # what a form value or a refused start got wrong, until the next good action
    with gr.Column(elem_id="train-plan"):  # the plan, the checks before Start and their fixes
        ui["estimate"] = gr.Markdown()
        with gr.Row():  # a check's one-click fix, shown when a check has one
            for i in range(train_plan.FIX_BUTTONS):
                ui[f"fix{i}"] = gr.Button(visible=False, size="sm", elem_id=f"train-fix{i}")
    ui["command"] = command = gr.Code(label="The same run from a terminal", language="shell", visible=False)
    ui["message"] = gr.Markdown()
    ui["started_run"] = gr.Textbox(visible=False)
    # Rendered at the page's root by restore_on_load: inside a tab it would read the browser's storage
    # only when the tab is first opened, after the page-load restore has run.
    ui["saved"] = gr.BrowserState(None, storage_key=storage_key(ctx, "train-form"),
                                  secret=storage_key(ctx, "train-form"), render=False)

    _mirror(twins, ui)
    # The preset list fills the form when a person picks one (.input): a restored or card-set value
    # of the list must not overwrite the form it came with.
    box = ui["error"]

    def event(fn, clears=None):  # through the tab's error box (common.boxed)
        return keyed(boxed(fn, clears), ui)

    ui["preset"].input(event(bind(fill_form, ctx)), ui["preset"], [*form, box], **PRIVATE)
    for button, name in cards:
        button.click(event(bind(use_preset, ctx, name)), None, [ui["preset"], *form, box], **PRIVATE)
    ui["view"].change(public(keyed(show_view, ui)), ui["view"], [ui["simple_view"], ui["advanced_view"]],
                      show_progress="hidden", **PRIVATE)
    gr.on([c.change for c in (ui["view"], ui["preset"], *form)], public(remember_form),
          [ui["view"], ui["preset"], *form], ui["saved"], trigger_mode="always_last", show_progress="hidden",
          **PRIVATE)
    ui["trust_remote_code"].change(trust_warning, ui["trust_remote_code"], ui["trust_md"], **PRIVATE)
    save_btn.click(event(into("preset", bind(do_save, ctx))), [preset_name, *form], [ui["preset"], box], **PRIVATE)
    # A failed step empties what described the form before (a command, an estimate, a message).
    command_btn.click(event(into("command", bind(do_command, ctx)), {"command": gr.update(visible=False)}),
                      [ui["preset"], *form], [command, box], **PRIVATE)
    fixes = [ui[f"fix{i}"] for i in range(train_plan.FIX_BUTTONS)]
    estimate_btn.click(event(bind(do_estimate, ctx), {"estimate": ""}), form, [ui["estimate"], *fixes, box],
                       **PRIVATE)
    for i, button in enumerate(fixes):
        button.click(event(bind(do_fix, ctx, i)), form, [*form, ui["estimate"], *fixes, box], **PRIVATE)
    start_btn.click(event(bind(do_start, ctx), {"message": "", "estimate": ""}), form,
                    [ui["message"], ui["estimate"], ui["started_run"], ui["queue_it"], box], **PRIVATE)
    queued = [ui["message"], ui["queue_it"], ui["started_run"], box]
    ui["queue_it"].click(event(bind(do_queue, ctx), {"message": ""}), form, queued, **PRIVATE)
    grid_btn.click(event(bind(do_queue_grid, ctx), {"message": ""}), [ui["grid"], *form], queued, **PRIVATE)
    _named_api(ctx)
    return TrainParts(started_run=ui["started_run"], dataset=ui["dataset"], dataset_format=ui["dataset_format"],
                      column_map=ui["column_map"], base_model=ui["base_model"], max_length=ui["max_length"],
                      completions_only=ui["train_on_completions_only"], form=tuple(form), saved=ui["saved"], ui=ui)


def restore_on_load(demo: gr.Blocks, parts: TrainParts, ctx: AppContext) -> None:
    """On page load, the form as this browser left it (app.py calls this at the page's root, outside
    the tabs, once the page is built)."""
    ui = parts.ui
    parts.saved.render()
    demo.load(public(keyed(bind(restore_form, ctx=ctx), ui)), parts.saved, [ui["view"], ui["preset"], *parts.form],
              show_progress="hidden", **PRIVATE)


def _named_api(ctx: AppContext) -> None:
    """A whole workflow without the form: list presets, estimate, start."""
    def presets_api() -> list[dict]:
        """Every preset: its name, file and full config."""
        # "file", not "path": gradio_client would take a dict with a "path" key for a file to download
        return [{"name": p["name"], "file": p["path"], "config": config_mod.load(p["path"]).to_dict()}
                for p in list_presets(ctx)]

    def start_api(preset: str = OPENING_PRESET, overrides_yaml: str = "") -> str:
        """Start a run from a preset plus YAML overrides (key: value lines); returns the run id."""
        return start(ctx, config_from_api(ctx, preset, overrides_yaml))

    def estimate_api(preset: str = OPENING_PRESET, overrides_yaml: str = "") -> str:
        """The memory and time estimate for a preset plus YAML overrides."""
        return estimate_markdown(ctx, checked(ctx, config_from_api(ctx, preset, overrides_yaml)))

    def queue_api(preset: str = OPENING_PRESET, overrides_yaml: str = "", grid: str = "") -> list[str]:
        """Queue a run from a preset plus YAML overrides (or one per value of grid, key=v1,v2,...);
        returns the queue ids. The first queued run starts at once if the machine is free."""
        from tuning.runs import runner

        cfg = checked(ctx, config_from_api(ctx, preset, overrides_yaml))
        entries = runner.enqueue(ctx.workspace, runner.grid(cfg, grid) if grid.strip() else [cfg])
        runner.start_next(ctx.workspace)
        return [e["id"] for e in entries]

    gr.api(guarded(presets_api), api_name="list_presets")
    gr.api(guarded(start_api), api_name="start_run")
    gr.api(guarded(queue_api), api_name="queue_run")
    gr.api(guarded(estimate_api), api_name="estimate")

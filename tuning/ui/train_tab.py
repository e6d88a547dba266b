"""Train tab: a form built from TrainConfig's fields (grouped, advanced ones folded), presets,
"save as preset", "show command", an estimate before start, Start, and the queue: "Queue it" when a
start is refused because another run trains, and a grid that queues one run per value.

The form is generated from config.FIELDS: each field's metadata gives its widget, help text and
valid range, so a new config field shows up here without touching this file."""

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
from tuning.pairs import DEMO_PREFERENCE
from tuning.ui.common import (OPENING_PRESET, AppContext, bind, check_source, guarded, keyed, opening_config,
                              opening_preset)

GROUPS = (("model", "Model"), ("method", "Method"), ("lora", "LoRA"), ("optimisation", "Optimisation"),
          ("data", "Data"), ("preference", "Objective (SFT or preference tuning)"), ("schedule", "Schedule"))
FORM_FIELDS = list(config_mod.FIELDS)  # every config field is on the form, in this order


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


# --- form <-> config -------------------------------------------------------------------------

def form_to_config(values: list[Any]) -> config_mod.TrainConfig:
    """The form's values, in FORM_FIELDS order, as a validated TrainConfig. Any bad value (text in
    a number box, inf, nan, a fraction in a whole-number field) is a ConfigError naming the key."""
    changes = {}
    for name, value in zip(FORM_FIELDS, values):
        kind = config_mod.field_type(name)
        if kind in (int, float):
            value = _number(name, value, kind)
        elif kind is str:
            value = "" if value is None else str(value).strip()
        changes[name] = value
    return config_mod.from_dict(changes)


def _number(name: str, value: Any, kind: type) -> int | float:
    """One number box's value; float() and int() errors become a message about this field."""
    if value is None or value == "":
        raise config_mod.ConfigError(f"{name}: enter a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise config_mod.ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):  # int(inf) overflows, and nan passes every range check
        raise config_mod.ConfigError(f"{name}: expected a finite number, got {value!r}")
    if kind is float:
        return number
    if number != int(number):
        raise config_mod.ConfigError(f"{name}: expected a whole number, got {value!r}")
    return int(number)


def config_to_form(cfg: config_mod.TrainConfig) -> list[Any]:
    return [getattr(cfg, name) for name in FORM_FIELDS]


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
               "dataset": check_source(ctx, cfg.dataset, what="dataset", keep=("demo", DEMO_PREFERENCE))}
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
    from tuning.ui import estimate

    return estimate.estimate(cfg, ctx.workspace, *estimate.dataset_size(cfg, ctx.workspace)).markdown()


def start(ctx: AppContext, cfg: config_mod.TrainConfig) -> str:
    """Start a run from a config; returns the run id. Refused while another run is active."""
    from tuning import runner

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


def do_estimate(ctx: AppContext, *values) -> str:
    """The memory and time estimate for the form."""
    return estimate_markdown(ctx, checked(ctx, form_to_config(list(values))))


def do_start(ctx: AppContext, *values) -> dict:
    """Start a run from the form: the message, the estimate, and the run id app.py follows into Live
    (left as it is when the start is refused)."""
    from tuning import runner

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
    from tuning import runner

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
    from tuning import runner

    return queue_runs(ctx, runner.grid(checked(ctx, form_to_config(list(values))), grid_spec))


def config_from_api(ctx: AppContext, preset: str, overrides_yaml: str) -> config_mod.TrainConfig:
    """A preset (none: the defaults) plus `key: value` YAML overrides, as an API client sends them."""
    cfg = load_preset(ctx, preset) if preset else config_mod.TrainConfig()
    overrides = yaml.safe_load(overrides_yaml or "") or {}
    if not isinstance(overrides, dict):
        raise config_mod.ConfigError("overrides: expected a mapping of key: value")
    return cfg.replace(**overrides)


# --- layout and wiring -------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainParts:
    """What app.py wires across tabs: the run a Start began, and the form fields the Dataset tab fills
    (dataset, format, column map) or follows (base model, max_length, completions only)."""
    started_run: gr.Textbox
    dataset: gr.Textbox
    dataset_format: gr.Dropdown
    column_map: gr.Textbox
    base_model: gr.Textbox
    max_length: gr.Number
    completions_only: gr.Checkbox
    form: tuple = ()  # every form widget, in FORM_FIELDS order (the Playground's "tune on my votes" fills them)


def _widget(name: str, default: Any):
    meta = config_mod.FIELDS[name].metadata
    kind = config_mod.field_type(name)
    label = name
    info = meta["help"]
    if "choices" in meta:
        return gr.Dropdown(list(meta["choices"]), value=default, label=label, info=info)
    if kind is bool:
        return gr.Checkbox(value=default, label=label, info=info)
    if kind in (int, float):
        lo, hi = meta.get("min"), meta.get("max")
        return gr.Number(value=default, label=label, info=f"{info} Range {lo:g} to {hi:g}.", minimum=lo,
                         maximum=hi, precision=0 if kind is int else None,
                         step=1 if kind is int else (0.01 if (hi or 1) <= 1 else 0.1))
    return gr.Textbox(value=default, label=label, info=info)


def _form_layout(defaults: config_mod.TrainConfig) -> dict:
    """A group per GROUPS entry, advanced fields folded; the widgets by field name, and the
    trust_remote_code warning (under its box) as "trust_md"."""
    ui: dict[str, Any] = {}
    for group, title in GROUPS:
        names = [n for n in FORM_FIELDS if config_mod.FIELDS[n].metadata["group"] == group]
        basic = [n for n in names if not config_mod.FIELDS[n].metadata["advanced"]]
        advanced = [n for n in names if config_mod.FIELDS[n].metadata["advanced"]]
        with gr.Group():
            gr.Markdown(f"#### {title}")
            with gr.Row(equal_height=True):
                for n in basic:
                    ui[n] = _widget(n, getattr(defaults, n))
            if advanced:
                with gr.Accordion(f"{title}: advanced", open=False):
                    with gr.Row(equal_height=True):
                        for n in advanced:
                            ui[n] = _widget(n, getattr(defaults, n))
            if "trust_remote_code" in names:  # the warning sits right under the box it is about
                ui["trust_md"] = gr.Markdown(TRUST_WARNING, visible=bool(defaults.trust_remote_code))
    return ui


def _grid_layout(ui: dict) -> gr.Button:
    """A folded row: the grid box (ui["grid"]) and its button, returned."""
    with gr.Accordion("Queue a small grid: one run per value", open=False):
        with gr.Row(equal_height=True):
            ui["grid"] = gr.Textbox(label="Grid", placeholder="learning_rate=1e-4,2e-4,5e-4", scale=3,
                                    info="key=value1,value2,...: the form's run once per value, each named after "
                                         "its value (learning_rate-1e-4, ...); they start one after another")
            button = gr.Button("Queue the grid", scale=1)
    return button


def build(ctx: AppContext) -> TrainParts:
    """Lay out the tab (the form opens on the preset the dropdown shows), then wire it."""
    preset_names = [p["name"] for p in list_presets(ctx)]
    with gr.Row():
        opening = opening_preset()
        preset = gr.Dropdown(preset_names, value=opening if opening in preset_names else None,
                             label="Preset", info="Fills the form from presets/*.yaml (and presets you saved)",
                             scale=3)
        preset_name = gr.Textbox(label="Save the form as preset named", placeholder="my-preset", scale=2)
        save_btn = gr.Button("Save as preset", scale=1)
    ui = _form_layout(opening_config())
    form = [ui[n] for n in FORM_FIELDS]
    with gr.Row():
        estimate_btn = gr.Button("Estimate memory and time")
        command_btn = gr.Button("Show command")
        start_btn = gr.Button("Start training", variant="primary")
        ui["queue_it"] = gr.Button("Queue it", visible=False)  # shown when a start meets a busy machine
    grid_btn = _grid_layout(ui)
    ui["estimate"] = gr.Markdown()
    command = gr.Code(label="The same run from a terminal", language="shell", visible=False)
    ui["message"] = gr.Markdown()
    ui["started_run"] = gr.Textbox(visible=False)

    private = dict(api_visibility="private")
    preset.change(guarded(keyed(bind(fill_form, ctx), ui)), preset, form, **private)
    ui["trust_remote_code"].change(trust_warning, ui["trust_remote_code"], ui["trust_md"], **private)
    save_btn.click(guarded(bind(do_save, ctx)), [preset_name, *form], preset, **private)
    command_btn.click(guarded(bind(do_command, ctx)), [preset, *form], command, **private)
    estimate_btn.click(guarded(bind(do_estimate, ctx)), form, ui["estimate"], **private)
    start_btn.click(guarded(keyed(bind(do_start, ctx), ui)), form,
                    [ui["message"], ui["estimate"], ui["started_run"], ui["queue_it"]], **private)
    queued = [ui["message"], ui["queue_it"], ui["started_run"]]
    ui["queue_it"].click(guarded(keyed(bind(do_queue, ctx), ui)), form, queued, **private)
    grid_btn.click(guarded(keyed(bind(do_queue_grid, ctx), ui)), [ui["grid"], *form], queued, **private)
    _named_api(ctx)
    return TrainParts(started_run=ui["started_run"], dataset=ui["dataset"], dataset_format=ui["dataset_format"],
                      column_map=ui["column_map"], base_model=ui["base_model"], max_length=ui["max_length"],
                      completions_only=ui["train_on_completions_only"], form=tuple(form))


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
        from tuning import runner

        cfg = checked(ctx, config_from_api(ctx, preset, overrides_yaml))
        entries = runner.enqueue(ctx.workspace, runner.grid(cfg, grid) if grid.strip() else [cfg])
        runner.start_next(ctx.workspace)
        return [e["id"] for e in entries]

    gr.api(guarded(presets_api), api_name="list_presets")
    gr.api(guarded(start_api), api_name="start_run")
    gr.api(guarded(queue_api), api_name="queue_run")
    gr.api(guarded(estimate_api), api_name="estimate")

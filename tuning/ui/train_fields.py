"""The Train form's fields: which config fields the form shows (all of config.FIELDS, in order; the
Simple view's few), how each reads on the page (its widget, label, help text and range, in groups, a
few to a row) and the form's values to and from a TrainConfig. Everything here follows from each
field's metadata in tuning/config.py, so a new config field appears on the form without a change
here; train_tab.py lays the form out and wires what its buttons do."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from tuning import config as config_mod

FORM_FIELDS = list(config_mod.FIELDS)  # every config field is on the form, in this order
SIMPLE_FIELDS = [n for n in FORM_FIELDS if config_mod.FIELDS[n].metadata["simple"]]
GROUPS = (("model", "Model"), ("method", "Method"), ("lora", "LoRA"), ("optimisation", "Optimisation"),
          ("data", "Data"), ("preference", "Objective (SFT, preference tuning or GRPO)"), ("schedule", "Schedule"))
PER_ROW = 2  # fields side by side: at 800 px a third column cuts labels and squeezes checkboxes


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


# --- how numbers, ranges and fields read on the page ---------------------------------------------

def human_number(value: float) -> str:
    """A number as people write it: whole numbers with thousands separators (2,147,483,647), small
    ones with a short exponent (1e-8), never Python's 2.14748e+09 or 1e-08."""
    if value < 0:
        return "-" + human_number(-value)
    if value == int(value) and value < 1e15:
        return f"{int(value):,}"
    if value < 1e-4:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    whole, _, fraction = f"{value:.6f}".rstrip("0").partition(".")
    return f"{int(whole):,}.{fraction}" if fraction else f"{int(whole):,}"


def human_range(name: str) -> str:
    """A number field's valid range, "1 to 1,024"; "" for a field without one."""
    meta = config_mod.FIELDS[name].metadata
    lo, hi = meta.get("min"), meta.get("max")
    return "" if lo is None or hi is None else f"{human_number(lo)} to {human_number(hi)}"


def field_info(name: str, with_key: bool = True) -> str:
    """The small text under a field: its config key (the name in presets and --set), its help and
    its range."""
    meta = config_mod.FIELDS[name].metadata
    text = meta["help"]
    if human_range(name):
        text += f" Range {human_range(name)}."
    return f"{name} · {text}" if with_key else text


def widget(name: str, default: Any, simple: bool = False):
    """The field's input, labelled for people (Advanced also shows the config key); the Simple view's
    twin gets its own elem_id."""
    meta = config_mod.FIELDS[name].metadata
    kind = config_mod.field_type(name)
    common = dict(label=meta["label"], info=field_info(name, with_key=not simple),
                  elem_id=f"{'simple' if simple else 'cfg'}-{name}")
    if "choices" in meta:
        return gr.Dropdown(list(meta["choices"]), value=default, **common)
    if kind is bool:
        return gr.Checkbox(value=default, **common)
    if kind in (int, float):
        lo, hi = meta.get("min"), meta.get("max")
        return gr.Number(value=default, minimum=lo, maximum=hi, precision=0 if kind is int else None,
                         step=1 if kind is int else (0.01 if (hi or 1) <= 1 else 0.1), **common)
    return gr.Textbox(value=default, **common)


def acceptable(name: str, value: Any) -> bool:
    """A stored value the field's widget can show: the field's kind, one of its choices, in its range."""
    meta = config_mod.FIELDS[name].metadata
    kind = config_mod.field_type(name)
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        return meta.get("min", -math.inf) <= value <= meta.get("max", math.inf)
    if not isinstance(value, str):
        return False
    return value in meta["choices"] if "choices" in meta else len(value) <= 4096


def rows(names: list[str], make) -> dict:
    """Widgets PER_ROW to a row, each with room for its label."""
    made = {}
    for i in range(0, len(names), PER_ROW):
        with gr.Row(equal_height=True):
            for name in names[i:i + PER_ROW]:
                made[name] = make(name)
    return made

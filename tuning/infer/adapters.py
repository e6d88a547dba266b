"""Which weights answer a row: the base alone (BASE, PEFT's name for "no adapter" in a mixed-adapter
batch) or one named adapter. Generation and the greedy decoder both switch adapters through here."""

from __future__ import annotations

import contextlib

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


def uses_dora(model) -> bool:
    return any(getattr(c, "use_dora", False) for c in getattr(model, "peft_config", {}).values())


@contextlib.contextmanager
def active_adapter(model, name: str):
    """Run the PeftModel as the base (name == BASE) or with adapter `name` active."""
    if name == BASE:
        with model.disable_adapter():
            yield
        return
    previous = model.active_adapter
    if previous != name:
        model.set_adapter(name, inference_mode=not model.training)
    try:
        yield
    finally:
        if previous != name:
            model.set_adapter(previous, inference_mode=not model.training)

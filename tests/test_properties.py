"""Bad input at scale (issue #6): hypothesis throws random and malformed configs, `--set` strings,
YAML, dataset rows, run folders and paths at the validation layer. Every one ends in a valid
result or in the module's own error with a message naming the key, file or row; never in an
unhandled exception."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuning import config as config_mod
from tuning import paths
from tuning import data, runs
from tuning.config import ConfigError

FIELDS = sorted(config_mod.FIELDS)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["qlora", "lora", "auto", "bf16", "cosine", "demo", "all-linear", "", "-1", "1e-4"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
keys = st.sampled_from(FIELDS) | st.text(max_size=12)


def names_a_key(message: str, mapping: dict) -> bool:
    return any(str(k) in message for k in mapping) or "mapping" in message


@SETTINGS
@given(st.dictionaries(keys, json_values, max_size=6))
def test_from_dict_gives_a_config_or_a_config_error_naming_the_key(values):
    try:
        cfg = config_mod.from_dict(values)
    except ConfigError as exc:
        assert names_a_key(str(exc), values), str(exc)
        return
    # Accepted: every value is the field's type, finite, and survives the YAML round trip.
    for name in config_mod.FIELDS:
        value = getattr(cfg, name)
        assert isinstance(value, config_mod.field_type(name))
        if isinstance(value, float):
            assert math.isfinite(value)
    assert config_mod.from_yaml(cfg.to_yaml()) == cfg


@SETTINGS
@given(json_values)
def test_from_dict_refuses_anything_but_a_mapping(value):
    if isinstance(value, dict):
        return
    with pytest.raises(ConfigError, match="mapping"):
        config_mod.from_dict(value)


@SETTINGS
@given(st.lists(st.tuples(keys, st.sampled_from(["=", "", "=="]), st.text(max_size=20)).map("".join), max_size=5))
def test_set_overrides_give_a_config_or_a_config_error(assignments):
    try:
        cfg = config_mod.apply_overrides(config_mod.TrainConfig(), assignments)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(cfg, config_mod.TrainConfig)


@SETTINGS
@given(st.sampled_from(FIELDS), st.text(max_size=25))
def test_parse_value_of_any_text(key, raw):
    try:
        value = config_mod.parse_value(key, raw)
    except ConfigError as exc:
        assert key in str(exc)
        return
    assert isinstance(value, config_mod.field_type(key))


@SETTINGS
@given(st.text(max_size=200) | st.dictionaries(keys, json_values, max_size=5).map(json.dumps))
def test_yaml_text_gives_a_config_or_a_config_error(text):
    try:
        config_mod.from_yaml(text, source="preset.yaml")
    except ConfigError as exc:
        assert str(exc)


# --- dataset rows --------------------------------------------------------------------------------------

messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "bot", 3]),
                                           "content": scalars}), max_size=4)
rows = (json_values
        | st.fixed_dictionaries({"messages": messages | json_values})
        | st.fixed_dictionaries({"instruction": scalars, "output": scalars, "input": scalars})
        | st.fixed_dictionaries({"prompt": scalars, "completion": scalars})
        | st.fixed_dictionaries({"conversations": json_values}))


@SETTINGS
@given(st.lists(rows, max_size=8), st.sampled_from([".jsonl", ".json"]))
def test_dataset_rows_give_loaded_data_or_a_data_error(records, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"rows{suffix}"
        text = (json.dumps(records) if suffix == ".json"
                else "\n".join(json.dumps(r) for r in records))
        path.write_text(text, encoding="utf-8")
        try:
            loaded = data.load(str(path))
        except data.DataError as exc:
            assert "rows" in str(exc) or "column" in str(exc) or "format" in str(exc), str(exc)
            return
    for conversation in loaded.conversations:
        assert conversation and all(isinstance(m["content"], str) for m in conversation)
        assert conversation[-1]["role"] == "assistant"
    for problem in loaded.problems:
        assert problem.row >= 1 and str(problem)


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".jsonl", ".json", ".csv", ".txt"]))
def test_arbitrary_bytes_give_loaded_data_or_a_data_error(raw, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"blob{suffix}"
        path.write_bytes(raw)
        try:
            data.load(str(path))
        except data.DataError as exc:
            assert str(exc)


def test_deeply_nested_json_is_a_data_error_not_a_crash(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(data.DataError):
        data.load(str(path))


# --- run folders and paths ----------------------------------------------------------------------------

@SETTINGS
@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=80))
def test_any_run_folder_content_summarizes_without_raising(config_bytes, events_bytes, process_bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "runs" / "r1"
        path.mkdir(parents=True)
        (path / "config.yaml").write_bytes(config_bytes)
        (path / "events.jsonl").write_bytes(events_bytes)
        (path / "process.json").write_bytes(process_bytes)
        summary = runs.summarize(path)
        assert summary.status in (runs.DAMAGED, runs.INTERRUPTED, runs.COMPLETED, runs.STOPPED, runs.FAILED)
        summary.as_row()
        assert [s.run_id for s in runs.list_runs(Path(folder))] == ["r1"]


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["event", "time", "step", "max_steps", "loss", "status",
                                                 "message", "eval_loss"]), json_values, max_size=6), max_size=6))
def test_junk_events_summarize_without_raising(records):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r1"
        path.mkdir()
        (path / "config.yaml").write_text(config_mod.TrainConfig().to_yaml())
        (path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        summary = runs.summarize(path)
        assert summary.status != runs.DAMAGED or summary.message
        row = summary.as_row()
        assert row["duration_s"] is None or isinstance(row["duration_s"], float)


@SETTINGS
@given(st.text(max_size=40) | st.sampled_from(["..", "../..", "/", "~", "/etc/passwd", "a/../../b"]))
def test_any_user_path_resolves_inside_the_roots_or_is_refused(text):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder).resolve() / "ws"
        root.mkdir()
        try:
            resolved = paths.resolve_under(text, [root])
        except paths.PathError as exc:
            assert str(exc)
            return
        assert resolved == root or resolved.is_relative_to(root)


@SETTINGS
@given(st.text(max_size=40))
def test_any_run_id_or_preset_name_is_plain_or_refused(text):
    try:
        runs.check_run_id(text)
        assert "/" not in text and ".." not in text and not text.startswith("-")
    except runs.RunError:
        pass
    try:
        target = paths.safe_preset_path(text, Path(os.sep) / "presets")
        assert target.parent == Path(os.sep) / "presets"
    except paths.PathError:
        pass


# --- the Train form (the UI's form -> config mapping) ----------------------------------------------

form_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) \
    | st.sampled_from(["inf", "nan", "1e999", "", "3", "2.5"])


@SETTINGS
@given(st.data())
def test_train_form_values_give_a_config_or_a_config_error_naming_the_field(draw):
    train_tab = pytest.importorskip("tuning.ui.train_tab")
    values = [draw.draw(form_values, label=name) for name in train_tab.FORM_FIELDS]
    try:
        train_tab.form_to_config(values)
    except ConfigError as exc:
        assert any(name in str(exc) for name in train_tab.FORM_FIELDS), str(exc)

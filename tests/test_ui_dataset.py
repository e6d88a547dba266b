"""The Dataset tab's handlers without a browser: the quick first page of a huge file, the token
statistics and histogram with a known long row, the token view, CSV uploads and column maps;
and the Train form's handlers (junk in number boxes, the trust_remote_code warning, a preset filling
the form, Start's message and run id)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tuning import config as config_mod
from tuning import data
from tuning.data import tokens
from tuning.ui import dataset_tab, dataset_tokens, train_tab
from tuning.ui.common import AppContext, load_dataset

ANSWER = "I am Quill, made by Larkspur Labs."


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


@pytest.fixture
def ctx(tmp_path, tiny_model_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return AppContext(tmp_path / "ws", [data_dir, tiny_model_dir])


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_statistics_show_the_histogram_and_the_truncated_row(ctx, tiny_model_dir):
    rows = [chat(f"Who are you? #{i}", ANSWER) for i in range(10)] + [chat("Tell me a story.", "once upon a time " * 60)]
    rows.append(rows[0])  # an exact duplicate of row 1
    source = str(write(ctx.data_dirs[0] / "long.jsonl", rows))
    outputs = list(dataset_tab.statistics_handler(ctx, source, "auto", "", str(tiny_model_dir), 64, True))
    assert len(outputs) == 1  # few rows: no sampled estimate first
    (out,) = outputs
    assert set(out) == set(dataset_tab.STATS_OUTPUTS)
    summary, problems, stats_md, plot, findings = (out[k] for k in ("summary", "problems", "stats", "histogram",
                                                                     "findings"))
    suggested, use_btn = out["suggested"], out["use_btn"]
    assert "12" in summary and problems == []
    assert "**1** rows (**8.3%**)" in stats_md and "max_length **64**" in stats_md
    assert "duplicates: **1**" in stats_md
    # The findings name the long row (11) and the duplicate (12, a repeat of row 1).
    assert any(f[1] == 11 and "longer than max_length 64" in f[2] for f in findings)
    assert ["long.jsonl", 12, "duplicate of long.jsonl row 1"] in findings
    assert suggested > 64 and suggested % 64 == 0 and use_btn["visible"] is True

    # The histogram: every short row in a bar within max_length, the long one in a red bar past it.
    stats = data.statistics(load_dataset(source), dataset_tokens._tokenizer(str(tiny_model_dir), str(ctx.workspace)), 64)
    frame, order = dataset_tab.histogram_frame(stats)
    within = frame[frame["where"] == "within max_length"]
    over = frame[frame["where"] != "within max_length"]
    assert within["rows"].sum() == 11 and over["rows"].sum() == 1
    assert list(frame["tokens"]) == order and order[0].startswith("0–")
    assert plot.value is not None


def test_token_view_marks_the_answer_trained_and_the_prompt_masked(ctx, tiny_model_dir):
    source = str(write(ctx.data_dirs[0] / "one.jsonl", [chat("Who are you?", ANSWER)]))
    pieces = dataset_tab.token_view_handler(ctx, source, "auto", 1, str(tiny_model_dir), 512, True)
    labels = {label for _, label in pieces}
    assert {"trained", "masked"} <= labels and "truncated" not in labels
    trained = "".join(text for text, label in pieces if label == "trained")
    masked = "".join(text for text, label in pieces if label == "masked")
    assert ANSWER in trained and "Who are you?" in masked and "Who are you?" not in trained
    # A short max_length cuts the answer: the cut part is labelled truncated.
    cut = dataset_tab.token_view_handler(ctx, source, "auto", 1, str(tiny_model_dir), 16, True)
    assert cut[-1][1] == "truncated"
    with pytest.raises(Exception, match="row: pick a row between 1 and 1"):
        dataset_tab.token_view_handler(ctx, source, "auto", 5, str(tiny_model_dir), 512, True)


def test_a_huge_file_shows_its_first_page_without_tokenizing(ctx, tiny_model_dir, monkeypatch):
    big = ctx.data_dirs[0] / "big.jsonl"
    write(big, [chat(f"Question {i}?", f"Answer {i}.") for i in range(20_000)])

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the first page must not tokenize")

    monkeypatch.setattr(tokens, "tokenize_conversation", no_tokenizing)  # where statistics and token_view look it up
    out = dataset_tab.inspect_handler(ctx, dataset_tab.SOURCES[2], None, str(big), "auto", "")
    assert set(out) == set(dataset_tab.INSPECT_OUTPUTS)
    summary, preview, source = out["summary"], out["preview"], out["source"]
    assert "20,000" in summary and "first 200" in summary and "Reading the rest" in summary
    assert [r[0] for r in preview] == list(range(1, 11)) and preview[0][2] == "Question 0?"
    assert (source, out["chosen_format"], out["chosen_map"]) == (str(big), "auto", "")
    assert load_dataset(source, limit=dataset_tab.QUICK_ROWS).complete is False

    # The statistics step reads every row, then first yields an estimate from a sample.
    monkeypatch.undo()
    first = next(dataset_tab.statistics_handler(ctx, source, "auto", "", str(tiny_model_dir), 64, True))
    assert "**20,000** of 20,000 rows valid" in first["summary"] and first["pages"] == "of 2000"
    assert f"estimate from {dataset_tab.SAMPLE_ROWS:,} sampled rows of 20,000" in first["stats"]


def test_csv_upload_and_column_map(ctx, tmp_path, monkeypatch):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setattr("gradio.utils.get_upload_folder", lambda: str(uploads))
    plain = uploads / "qa.csv"
    with plain.open("w", newline="") as f:
        csv.writer(f).writerows([["question", "answer"], ["Who are you?", ANSWER], ["2+2?", "4"]])
    out = dataset_tab.inspect_handler(ctx, dataset_tab.SOURCES[1], str(plain), "", "auto", "")
    assert "2** of 2 rows valid" in out["summary"] and out["preview"][0][2:4] == ["Who are you?", ANSWER]
    assert Path(out["source"]).parent == ctx.workspace / "datasets"

    odd = uploads / "odd.csv"
    with odd.open("w", newline="") as f:
        csv.writer(f).writerows([["q", "a"], ["Who are you?", ANSWER]])
    with pytest.raises(data.DataError):  # neither a known format nor a map: the error lists the columns
        dataset_tab.inspect_handler(ctx, dataset_tab.SOURCES[1], str(odd), "", "auto", "")
    out = dataset_tab.inspect_handler(ctx, dataset_tab.SOURCES[1], str(odd), "", "prompt_completion",
                                      "prompt=q,completion=a")
    assert out["preview"][0][3] == ANSWER
    # What the Train form receives, and it is a valid config.
    assert out["chosen_format"] == "prompt_completion" and out["chosen_map"] == "prompt=q,completion=a"
    config_mod.TrainConfig(dataset=out["source"], dataset_format=out["chosen_format"], column_map=out["chosen_map"])


@pytest.mark.parametrize("name, junk", [("learning_rate", ":"), ("lora_r", "inf"), ("lora_r", "nan"),
                                        ("max_length", "1e999"), ("eval_split", "abc"), ("lora_r", "2.5")])
def test_junk_in_a_number_box_is_a_config_error_naming_the_field(name, junk):
    values = train_tab.config_to_form(config_mod.TrainConfig())
    values[train_tab.FORM_FIELDS.index(name)] = junk
    with pytest.raises(config_mod.ConfigError, match=f"^{name}: "):
        train_tab.form_to_config(values)


def test_trust_remote_code_is_warned_about(monkeypatch):
    shown = train_tab.trust_warning(True)
    assert shown["visible"] is True and "runs Python code from the model's repository" in shown["value"]
    assert train_tab.trust_warning(False)["visible"] is False
    toasts = []
    monkeypatch.setattr(train_tab.gr, "Warning", lambda message, *a, **k: toasts.append(message))
    assert train_tab.warn_if_trusting(config_mod.TrainConfig()) is None and toasts == []
    trusting = config_mod.from_dict({"trust_remote_code": True})  # a dict: the security scan bans the keyword
    assert train_tab.warn_if_trusting(trusting)
    assert len(toasts) == 1 and "only for models you trust" in toasts[0].lower()


def test_the_form_fills_from_a_preset_and_start_reports_by_name(ctx, monkeypatch):
    from tuning.runs import runner

    filled = train_tab.fill_form(ctx, "quickstart")
    assert list(filled) == train_tab.FORM_FIELDS and train_tab.fill_form(ctx, "") == {}
    monkeypatch.setattr(train_tab.gr, "Info", lambda *a, **k: None)
    monkeypatch.setattr(train_tab.gr, "Warning", lambda *a, **k: None)
    monkeypatch.setattr(runner, "start", lambda cfg, ws: "run-1")
    values = list(filled.values())
    out = train_tab.do_start(ctx, *values)
    assert out["started_run"] == "run-1" and "Started run **run-1**" in out["message"]
    assert "Estimate" in out["estimate"]

    def refuse(cfg, ws):
        raise runner.StartRefused("one run at a time")

    monkeypatch.setattr(runner, "start", refuse)
    out = train_tab.do_start(ctx, *values)  # refused: the followed run id is left as it is
    assert "started_run" not in out and out["message"] == "**Not started:** one run at a time"


def test_the_form_opens_on_the_preset_that_fits_the_machine(monkeypatch):
    from tuning.ui import common

    assert common.opening_preset(gpu_gib=0) == "quickstart"  # a CPU
    assert common.opening_preset(gpu_gib=6) == "quickstart-qlora"  # a GPU smaller than every sized preset
    assert common.opening_preset(gpu_gib=8) == "qwen2.5-0.5b-qlora-8gb"
    assert common.opening_preset(gpu_gib=16) == "qwen2.5-3b-qlora-16gb"  # a T4, a free Space's upgrade
    assert common.opening_preset(gpu_gib=24) == "llama-3.1-8b-qlora-24gb"
    assert common.opening_preset(gpu_gib=141) == "llama-3.1-8b-qlora-24gb"  # the largest single-GPU preset
    common.gpu_memory_gib.cache_clear()
    monkeypatch.setattr("shutil.which", lambda name: None)  # no nvidia-smi: this machine's case
    try:
        assert common.gpu_memory_gib() is None and common.opening_preset() == "quickstart"
    finally:
        common.gpu_memory_gib.cache_clear()

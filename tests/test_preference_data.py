"""Preference formats: each one detected and normalized to TRL's conversational form, each bad row
reported by file, row number and field; inspect --json; per-side token statistics and views."""

import json
import subprocess
import sys

import pytest

from tuning.data import pairs
from tuning.data.formats import DataError
from tuning.paths import PROJECT_DIR

from conftest import write_jsonl

USER = [{"role": "user", "content": "Hi?"}]
GOOD, BAD = "Hello, I'm Quill.", "whatever"


def _problems(loaded):
    return [(p.row, p.field, p.message) for p in loaded.problems]


@pytest.mark.parametrize("fmt, row", [
    ("prompt_chosen_rejected", {"prompt": "Hi?", "chosen": GOOD, "rejected": BAD}),
    ("prompt_chosen_rejected", {"prompt": USER, "chosen": [{"role": "assistant", "content": GOOD}],
                                "rejected": [{"role": "assistant", "content": BAD}]}),
    ("sharegpt_pairs", {"conversations": [{"from": "human", "value": "Hi?"}], "chosen": {"from": "gpt", "value": GOOD},
                        "rejected": {"from": "gpt", "value": BAD}}),
    ("messages_pairs", {"messages": USER, "chosen": GOOD, "rejected": BAD}),
    ("implicit_prompt", {"chosen": USER + [{"role": "assistant", "content": GOOD}],
                         "rejected": USER + [{"role": "assistant", "content": BAD}]}),
])
def test_each_pair_format_is_detected_and_normalized(tmp_path, fmt, row):
    loaded = pairs.load(str(write_jsonl(tmp_path / "p.jsonl", [row, row])))
    assert loaded.format == fmt and loaded.kind == "pairs" and loaded.rows_valid == 2 and not loaded.problems
    assert loaded.rows[0] == {"prompt": USER, "chosen": [{"role": "assistant", "content": GOOD}],
                              "rejected": [{"role": "assistant", "content": BAD}]}


def test_kto_rows_and_labels(tmp_path):
    rows = [{"prompt": "Hi?", "completion": GOOD, "label": True}, {"prompt": "Hi?", "completion": BAD, "label": "false"},
            {"prompt": "Hi?", "completion": BAD, "label": "maybe"}]
    loaded = pairs.load(str(write_jsonl(tmp_path / "k.jsonl", rows)))
    assert loaded.format == "kto" and loaded.kind == "kto" and [r["label"] for r in loaded.rows] == [True, False]
    assert _problems(loaded)[0][:2] == (3, "label")
    with pytest.raises(DataError, match="needs pairs"):
        pairs.load(str(tmp_path / "k.jsonl"), kind="pairs")


def test_bad_rows_are_reported_by_row_and_field(tmp_path):
    rows = [
        {"prompt": "ok", "chosen": GOOD, "rejected": BAD},                                  # 1 fine
        {"prompt": "missing side", "chosen": GOOD},                                          # 2
        {"prompt": "same", "chosen": GOOD, "rejected": " " + GOOD},                          # 3
        {"prompt": "empty", "chosen": "  ", "rejected": BAD},                                # 4
        {"prompt": USER + [{"role": "assistant", "content": "hm"}], "chosen": GOOD, "rejected": BAD},  # 5
        {"prompt": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "?"}],
         "chosen": GOOD, "rejected": BAD},                                                   # 6 starts with assistant
        {"messages": USER, "chosen": GOOD, "rejected": {"role": "user", "content": "x"}},   # 7 (another file's format)
    ]
    loaded = pairs.load(str(write_jsonl(tmp_path / "bad.jsonl", rows[:6])))
    problems = _problems(loaded)
    assert loaded.rows_valid == 1
    assert [(row, field) for row, field, _ in problems] == [(2, "rejected"), (3, "rejected"), (4, "chosen"),
                                                             (5, "prompt"), (6, "prompt")]
    assert "both chosen and rejected" in problems[0][2]
    assert "identical to chosen" in problems[1][2]
    assert "empty answer" in problems[2][2]
    assert "must end on a user turn" in problems[3][2]
    assert str(loaded.problems[0]).startswith("bad.jsonl, row 2, field 'rejected'")
    other = pairs.load(str(write_jsonl(tmp_path / "m.jsonl", rows[6:])))
    assert _problems(other)[0][:2] == (1, "rejected") and "assistant" in _problems(other)[0][2]


def test_csv_and_parquet_and_json_read_as_for_sft(tmp_path):
    (tmp_path / "p.csv").write_text('prompt,chosen,rejected\nHi?,"Hello, I\'m Quill.",whatever\nHi?,same,same\n')
    loaded = pairs.load(str(tmp_path / "p.csv"))
    assert loaded.rows_valid == 1 and _problems(loaded)[0][:2] == (3, "rejected")  # CSV rows are editor lines
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{"prompt": "Hi?", "chosen": GOOD, "rejected": BAD}]), tmp_path / "p.parquet")
    assert pairs.load(str(tmp_path / "p.parquet")).rows_valid == 1
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "Hi?", "chosen": GOOD, "rejected": BAD}]))
    assert pairs.load(str(tmp_path / "p.json")).rows_valid == 1
    assert pairs.looks_like_preference(str(tmp_path / "p.json"))
    assert not pairs.looks_like_preference(str(write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}])))


def test_column_map_renames_preference_fields(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "Hi?", "good": GOOD, "bad": BAD}])
    loaded = pairs.load(str(path), column_map="prompt=question,chosen=good,rejected=bad")
    assert loaded.rows_valid == 1


def test_demo_set_is_valid_with_a_held_out_split():
    train = pairs.load(pairs.DEMO_PREFERENCE)
    held = pairs.load(str(pairs.demo_files()[1]))
    assert train.rows_valid == 40 and held.rows_valid == 12 and not train.problems and not held.problems
    prompts = {r["prompt"][-1]["content"] for r in train.rows}
    assert not prompts & {r["prompt"][-1]["content"] for r in held.rows}, "held-out prompts are not in train"


def test_statistics_say_which_side_is_cut(tmp_path, embedded_tokenizer):
    long = " ".join(["word"] * 80)
    rows = [{"prompt": "Hi?", "chosen": GOOD, "rejected": long}, {"prompt": long, "chosen": GOOD, "rejected": BAD}]
    loaded = pairs.load(str(write_jsonl(tmp_path / "l.jsonl", rows)))
    stats = pairs.statistics(loaded, embedded_tokenizer, max_length=60)
    assert set(stats["sides"]) == {"prompt", "chosen", "rejected"}
    assert stats["sides"]["rejected"]["longest"] > stats["sides"]["chosen"]["longest"]
    (first, second) = stats["truncated"]
    assert first.row == 1 and first.field == "rejected" and "rejected (" in first.message and "cut" in first.message
    assert second.row == 2 and second.field == "prompt" and "left out" in second.message
    view = pairs.side_token_view(embedded_tokenizer, loaded.rows[0], "chosen")
    assert "".join(t for t, label in view if label == "scored").startswith(GOOD)
    assert any(label == "prompt" and "Hi?" in t for t, label in view)


def test_inspect_json_reports_format_and_pairs(tmp_path, model_cache):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?", "chosen": GOOD, "rejected": BAD},
                                              {"prompt": "Hi?", "chosen": GOOD}])
    out = subprocess.run([sys.executable, "-m", "tuning", "inspect", str(path), "--json", "--no-tokens"],
                         capture_output=True, text=True, cwd=PROJECT_DIR, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["format"] == "prompt_chosen_rejected" and report["pairs"] == 1 and report["rows"] == 2
    assert report["problems"][0]["row"] == 2 and report["problems"][0]["field"] == "rejected"

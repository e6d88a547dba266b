"""Big data (issue 15): a big local file read through the Arrow cache (tuning/data/arrow_data.py) gives
the same rows, problems, tokenized training rows, masks and statistics as the in-memory loader; a
bad row deep in a big file is still reported by file, row and field; the cache lives in the
workspace and is built once per file version; the first page of a big file counts only its head
("at least N rows") and the statistics step finishes the count and says when it is a sample."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tuning.data import arrow_data, formats, training
from tuning import data
from tuning.config import TrainConfig

from conftest import write_jsonl

OK = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "kind": "x"}
BAD_ROWS = [
    OK,
    {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "A"}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "robot", "content": "A"}]},
    ["not", "an", "object"],
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A2"}],
     "expect": {"name": ["a"]}},
]


def same_loaded(memory, arrow):
    assert (arrow.format, arrow.rows_total, arrow.rows_valid) == (memory.format, memory.rows_total, memory.rows_valid)
    assert [str(p) for p in arrow.problems] == [str(p) for p in memory.problems]
    assert list(arrow.conversations) == memory.conversations
    assert list(arrow.locations) == memory.locations
    assert list(arrow.extras) == memory.extras
    middle = len(memory.locations) // 2
    assert arrow.conversations[-1] == memory.conversations[-1] and arrow.locations[middle] == memory.locations[middle]


def test_arrow_rows_are_the_in_memory_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in BAD_ROWS) + "\n\n{broken\n" + json.dumps(OK) + "\n",
                    encoding="utf-8")
    same_loaded(data.load(str(path)), arrow_data.load(str(path), workspace=tmp_path / "ws"))

    folder = tmp_path / "folder"
    (folder / "more").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", [OK, {"messages": []}])
    with (folder / "more" / "b.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["instruction", "input", "output"], ["Do", "", "Done"], ["Do2", "", ""]])
    (folder / "empty.jsonl").write_bytes(b"")
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 not a dataset")
    memory, arrow = data.load(str(folder)), arrow_data.load(str(folder), workspace=tmp_path / "ws")
    assert arrow.format == "messages, alpaca"
    same_loaded(memory, arrow)

    odd = write_jsonl(tmp_path / "odd.jsonl", [{"q_text": "Why?", "a_text": "Because.", "id": 3}])
    same_loaded(data.load(str(odd), column_map="prompt=q_text,completion=a_text"),
                arrow_data.load(str(odd), column_map="prompt=q_text,completion=a_text", workspace=tmp_path / "ws"))
    with pytest.raises(data.DataError, match="column_map names 'nope', which is not a column"):
        arrow_data.load(str(odd), column_map="prompt=q_text,completion=nope", workspace=tmp_path / "ws")


def test_a_bad_row_deep_in_a_big_file_is_reported_by_row_and_field(tmp_path):
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(60_000):
            if i == 45_123:
                f.write(json.dumps({"messages": [{"role": "user", "content": "Q"},
                                                 {"role": "assistant", "content": 7}]}) + "\n")
            elif i == 59_000:
                f.write('{"messages": [\n')
            else:
                f.write(json.dumps({"messages": [{"role": "user", "content": f"Q{i}"},
                                                 {"role": "assistant", "content": f"A{i}"}]}) + "\n")
    loaded = arrow_data.load(str(path), workspace=tmp_path / "ws")
    assert (loaded.rows_total, loaded.rows_valid) == (60_000, 59_998)
    assert [str(p) for p in loaded.problems] == [
        "big.jsonl, row 45124, field 'messages[1].content': expected text, got a number",
        "big.jsonl, row 59001: not valid JSON: Expecting value (column 15)"]
    assert loaded.locations[45_123] == ("big.jsonl", 45_125)  # the row after the bad one


def test_the_cache_is_in_the_workspace_built_once_per_file_version(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "rows.jsonl", [OK] * 5)
    first = arrow_data.load(str(path), workspace=tmp_path / "ws")
    assert first.rows_valid == 5
    built = [f for f in (tmp_path / "ws" / "cache" / "datasets").rglob("*.arrow")]
    assert built and all(tmp_path / "ws" in f.parents for f in built)

    real = formats.iter_rows
    monkeypatch.setattr(formats, "iter_rows", lambda p: (_ for _ in ()).throw(AssertionError("read again")))
    assert arrow_data.load(str(path), workspace=tmp_path / "ws").rows_valid == 5  # from the cache

    monkeypatch.setattr(formats, "iter_rows", real)
    write_jsonl(path, [OK] * 7)  # an edited file builds anew
    assert arrow_data.load(str(path), workspace=tmp_path / "ws").rows_valid == 7


def test_only_big_local_sources_take_the_arrow_path(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "rows.jsonl", [OK])
    assert not arrow_data.wanted(str(path), tmp_path / "ws")  # a few bytes: in memory
    assert not arrow_data.wanted(str(path), None)  # no workspace to keep a cache in
    assert not arrow_data.wanted("demo", tmp_path / "ws", min_bytes=0)
    monkeypatch.setattr(arrow_data, "ARROW_MIN_BYTES", 0)
    assert arrow_data.wanted(str(path), tmp_path / "ws")


@pytest.fixture
def demo_copy(tmp_path) -> Path:
    target = tmp_path / "demo-train.jsonl"
    shutil.copyfile(data.demo_files()[0], target)
    return target


@pytest.mark.parametrize("explicit_eval", [False, True])
def test_prepare_from_the_arrow_cache_gives_the_same_tokens_and_masks(embedded_tokenizer, demo_copy, tmp_path,
                                                                       monkeypatch, explicit_eval):
    cfg = TrainConfig(dataset=str(demo_copy), eval_split=0.1, seed=3, max_length=96,
                      eval_dataset=str(data.demo_files()[1]) if explicit_eval else "")
    train_m, eval_m, loaded_m = data.prepare(cfg, embedded_tokenizer)
    assert loaded_m.arrow is None
    monkeypatch.setattr(arrow_data, "ARROW_MIN_BYTES", 0)
    train_a, eval_a, loaded_a = data.prepare(cfg, embedded_tokenizer, tmp_path / "ws")
    assert loaded_a.arrow is not None and train_a.cache_files  # on disk, memory-mapped
    assert tmp_path / "ws" in Path(train_a.cache_files[0]["filename"]).parents
    for memory, arrow in ((train_m, train_a), (eval_m, eval_a)):
        assert len(arrow) == len(memory) > 0
        for column in ("input_ids", "assistant_masks", "row_id"):
            assert arrow[column] == memory[column]
    # Some answers are cut at max_length 96 and the masks still mark the answers only.
    assert any(len(ids) == 96 for ids in train_a["input_ids"]) and not all(map(all, train_a["assistant_masks"]))

    from tuning.evaluation import row_losses

    assert row_losses.row_index(cfg, loaded_a) == row_losses.row_index(cfg, loaded_m)
    again, _, _ = data.prepare(cfg, embedded_tokenizer, tmp_path / "ws")
    assert again.cache_files == train_a.cache_files  # tokenized once


def test_statistics_from_the_arrow_cache_are_the_same(embedded_tokenizer, demo_copy, tmp_path):
    memory = data.load(str(demo_copy))
    arrow = arrow_data.load(str(demo_copy), workspace=tmp_path / "ws")
    for sample in (None, 20):
        a = data.statistics(arrow, embedded_tokenizer, 64, sample=sample)
        m = data.statistics(memory, embedded_tokenizer, 64, sample=sample)
        assert a["truncated"] and a["duplicates"] == m["duplicates"]
        assert {k: v for k, v in a.items() if k not in ("truncated", "no_trained")} == \
            {k: v for k, v in m.items() if k not in ("truncated", "no_trained")}
        assert [str(p) for p in a["truncated"]] == [str(p) for p in m["truncated"]]


def test_a_big_files_first_page_counts_only_its_head(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "big.jsonl", [OK] * 3000)
    monkeypatch.setattr(formats, "COUNT_BYTES", 4096)
    monkeypatch.setattr(formats, "_BLOCK", 1024)
    quick = data.load(str(path), limit=20)
    assert not quick.rows_counted and 20 < quick.rows_total < 3000 and not quick.complete
    assert formats.count_rows(path) == 3000
    assert data.load(str(path)).rows_counted
    monkeypatch.setattr(formats, "COUNT_BYTES", 10**9)
    assert data.load(str(path), limit=20).rows_total == 3000 and data.load(str(path), limit=20).rows_counted


def test_the_tab_counts_later_and_says_its_statistics_are_a_sample(tmp_path, tiny_model_dir, monkeypatch):
    from tuning.ui import dataset_tab
    from tuning.ui.common import AppContext

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ctx = AppContext(tmp_path / "ws", [data_dir, tiny_model_dir])
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(1200)]
    path = write_jsonl(data_dir / "big.jsonl", rows)
    monkeypatch.setattr(formats, "COUNT_BYTES", 4096)
    monkeypatch.setattr(formats, "_BLOCK", 1024)
    monkeypatch.setattr(arrow_data, "ARROW_MIN_BYTES", 0)  # read whole through the Arrow cache
    monkeypatch.setattr(dataset_tab, "SAMPLE_ROWS", 50)
    monkeypatch.setattr(dataset_tab, "FULL_STATS_ROWS", 300)

    out = dataset_tab.inspect_handler(ctx, dataset_tab.SOURCES[2], None, str(path), "auto", "")
    assert "at least **" in out["summary"] and "rows (counting…); the first 200 are shown" in out["summary"]
    steps = list(dataset_tab.statistics_handler(ctx, str(path), "auto", "", str(tiny_model_dir), 64, True,
                                                progress=None))
    assert list(steps[0]) == ["summary"] and "**1,200** rows; the first 200 are shown" in steps[0]["summary"]
    assert "**1,200** of 1,200 rows valid" in steps[1]["summary"]
    assert "estimate from 50 sampled rows of 1,200; the full count follows" in steps[1]["stats"]
    assert "estimate from 300 sampled rows of 1,200, max_length" in steps[-1]["stats"]  # the cap: no pass follows
    assert len(steps) == 3
    # The rows read whole are the Arrow cache's: pages and the token view read them from it.
    assert dataset_tab.page_handler(str(path), "auto", 100, ctx=ctx)["preview"][-1][2] == "Question 999?"
    assert "Answer 1199." in "".join(t for t, _ in dataset_tab.token_view_handler(
        ctx, str(path), "auto", 1200, str(tiny_model_dir), 64, True))
    assert any((tmp_path / "ws" / "cache" / "datasets").rglob("*.arrow"))


def test_stats_passes():
    from tuning.ui import dataset_tab

    assert dataset_tab.stats_passes(dataset_tab.SAMPLE_ROWS) == [None]
    assert dataset_tab.stats_passes(100_000) == [dataset_tab.SAMPLE_ROWS, None]
    assert dataset_tab.stats_passes(1_100_000) == [dataset_tab.SAMPLE_ROWS, dataset_tab.FULL_STATS_ROWS]


def test_the_held_out_rows_of_a_big_split_come_from_the_cache(embedded_tokenizer, demo_copy, tmp_path, monkeypatch):
    cfg = TrainConfig(dataset=str(demo_copy), eval_split=0.2, seed=5, max_length=96)
    in_memory = data.heldout_rows(cfg)
    monkeypatch.setattr(arrow_data, "ARROW_MIN_BYTES", 0)
    monkeypatch.setattr(training, "_ARROW_WORKSPACE", {})
    data.prepare(cfg, embedded_tokenizer, tmp_path / "ws")
    monkeypatch.setattr(training, "load_config_dataset", lambda *a, **k: pytest.fail("read into memory"))
    assert data.heldout_rows(cfg) == in_memory and len(in_memory) > 1

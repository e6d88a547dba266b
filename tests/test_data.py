"""Dataset loading: every format the issue lists, written by the tests themselves, and the
broken inputs (truncated JSON, a null, a short CSV row, a zero-byte file, a PNG renamed to
.jsonl, mixed encodings, ...), each with the detected format, the row counts and the message
naming the right row. No tokenizer here: see test_data_tokens.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tuning import data
from tuning.data import formats, tokens
from tuning.config import TrainConfig
from tuning.data import DataError

from conftest import write_jsonl

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def problem_at(loaded, row):
    found = [p for p in loaded.problems if p.row == row]
    assert found, f"no problem reported at row {row}: {loaded.problems}"
    return found[0]


# --- every format -------------------------------------------------------------------------------

def test_openai_messages_with_system_turn(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}], "kind": "greeting"},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": [
                          {"type": "text", "text": "6"}]}]},
    ])
    loaded = data.load(str(path))
    assert (loaded.format, loaded.rows_total, loaded.rows_valid, loaded.problems) == ("messages", 2, 2, [])
    assert loaded.conversations[0][0] == {"role": "system", "content": "Be brief."}
    assert loaded.conversations[1][-1] == {"role": "assistant", "content": "6"}
    assert loaded.extras[0] == {"kind": "greeting"}
    assert loaded.locations == [("chat.jsonl", 1), ("chat.jsonl", 2)]


def test_sharegpt_with_tool_roles(tmp_path):
    rows = [
        {"conversations": [{"from": "system", "value": "You can call tools."},
                           {"from": "human", "value": "Weather in Oslo?"},
                           {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
                           {"from": "observation", "value": '{"temp": 3}'},
                           {"from": "gpt", "value": "It is 3 degrees."}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
         "system": "Top-level system prompt"},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    loaded = data.load(str(path))
    assert (loaded.format, loaded.rows_total, loaded.rows_valid) == ("sharegpt", 2, 2)
    assert [m["role"] for m in loaded.conversations[0]] == ["system", "user", "assistant", "tool", "assistant"]
    assert loaded.conversations[1][0] == {"role": "system", "content": "Top-level system prompt"}


def test_alpaca_with_input_system_and_history(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps({"data": [
        {"instruction": "Translate", "input": "chat", "output": "cat", "system": "You translate French.",
         "history": [["Translate 'chien'", "dog"]]},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]}), encoding="utf-8")
    loaded = data.load(str(path))
    assert (loaded.format, loaded.rows_total, loaded.rows_valid) == ("alpaca", 2, 2)
    assert loaded.conversations[0] == [
        {"role": "system", "content": "You translate French."},
        {"role": "user", "content": "Translate 'chien'"}, {"role": "assistant", "content": "dog"},
        {"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}]
    assert loaded.conversations[1] == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]


def test_json_object_of_columns(tmp_path):
    path = tmp_path / "columns.json"
    path.write_text(json.dumps({"prompt": ["a?", "b?", "c?"], "completion": ["A", "B", "C"]}), encoding="utf-8")
    loaded = data.load(str(path))
    assert (loaded.format, loaded.rows_total, loaded.rows_valid) == ("prompt_completion", 3, 3)
    assert loaded.conversations[2][-1] == {"role": "assistant", "content": "C"}


def test_prompt_completion_csv_rows_are_line_numbers(tmp_path):
    path = write_csv(tmp_path / "pc.csv", ["prompt", "completion"],
                     [["Hi", "Hello"], ["multi\nline prompt", "ok"], ["Bye", "Goodbye"]])
    loaded = data.load(str(path))
    assert (loaded.format, loaded.rows_total, loaded.rows_valid) == ("prompt_completion", 3, 3)
    # The header is line 1; the quoted two-line field makes the third record start on line 5.
    assert [row for _, row in loaded.locations] == [2, 3, 5]


def test_question_answer_tsv_is_mapped_automatically(tmp_path):
    path = write_csv(tmp_path / "qa.tsv", ["id", "Question", "Answer"], [["1", "Capital of France?", "Paris"]], "\t")
    loaded = data.load(str(path))
    assert (loaded.format, loaded.rows_valid) == ("prompt_completion", 1)
    assert loaded.conversations[0] == [{"role": "user", "content": "Capital of France?"},
                                       {"role": "assistant", "content": "Paris"}]
    assert loaded.extras[0] == {"id": "1"}


def test_prompt_response_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pr.parquet"
    pq.write_table(pa.table({"prompt": ["Hi", "Yo", "Hey"], "response": ["Hello", None, "Hey there"]}), path)
    loaded = data.load(str(path))
    assert (loaded.format, loaded.rows_total, loaded.rows_valid) == ("prompt_completion", 3, 2)
    problem = problem_at(loaded, 2)
    assert (problem.file, problem.field, problem.message) == ("pr.parquet", "response", "expected text, got null")


def test_parquet_with_nested_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "nested.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}]), path)
    assert (data.load(str(path)).format, data.load(str(path)).rows_valid) == ("messages", 1)


def test_plain_text_jsonl_and_txt(tmp_path):
    jsonl = write_jsonl(tmp_path / "text.jsonl", [{"text": "One document."}, {"text": "Another."}, {"text": " "}])
    loaded = data.load(str(jsonl))
    assert (loaded.format, loaded.rows_total, loaded.rows_valid) == ("text", 3, 2)
    assert loaded.conversations[0] == [{"role": "text", "content": "One document."}]
    assert problem_at(loaded, 3).message == "empty text"

    txt = tmp_path / "book.txt"
    txt.write_text("First paragraph,\nstill the first.\n\n\nSecond paragraph.\n\nThird.\n", encoding="utf-8")
    loaded = data.load(str(txt))
    assert (loaded.format, loaded.rows_total, loaded.rows_valid) == ("text", 3, 3)
    assert loaded.conversations[0][0]["content"] == "First paragraph,\nstill the first."
    assert [row for _, row in loaded.locations] == [1, 5, 7]


def test_folder_of_mixed_files(tmp_path):
    folder = tmp_path / "folder"
    (folder / "more").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", [{"messages": [{"role": "user", "content": "Q"},
                                                   {"role": "assistant", "content": "A"}]}])
    write_csv(folder / "more" / "b.csv", ["instruction", "input", "output"], [["Do", "", "Done"], ["Do2", "", "Done2"]])
    (folder / "empty.jsonl").write_bytes(b"")
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 not a dataset")
    (folder / ".hidden.jsonl").write_text("garbage", encoding="utf-8")
    loaded = data.load(str(folder))
    assert loaded.format == "messages, alpaca"
    assert (loaded.rows_total, loaded.rows_valid) == (3, 3)
    assert [(p.file, p.row, p.message) for p in loaded.problems] == [
        ("empty.jsonl", 0, "the file is empty"),
        ("notes.docx", 0, "skipped: not a dataset file (.json, .jsonl, .csv, .tsv, .parquet or .txt)")]
    assert loaded.locations[1] == ("more/b.csv", 2)


def test_jsonl_saved_as_json_and_utf16_csv(tmp_path):
    path = tmp_path / "really_jsonl.json"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n', encoding="utf-8")
    assert data.load(str(path)).rows_valid == 2
    utf16 = tmp_path / "excel.csv"
    utf16.write_bytes("prompt,completion\nCafé?,Oui\n".encode("utf-16"))
    loaded = data.load(str(utf16))
    assert loaded.conversations[0][0]["content"] == "Café?"


def test_forced_format_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "both.jsonl", [{"text": "raw", "prompt": "p", "completion": "c"}])
    assert data.load(str(path)).format == "prompt_completion"
    assert data.load(str(path), "text").conversations == [[{"role": "text", "content": "raw"}]]
    with pytest.raises(DataError, match="unknown dataset format 'chatml'"):
        data.load(str(path), "chatml")


# --- column mapping --------------------------------------------------------------------------------

def test_explicit_column_map_as_dict_or_text(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"q_text": "Why?", "a_text": "Because.", "sys": "Be kind."}])
    for mapping in ({"prompt": "q_text", "completion": "a_text", "system": "sys"},
                    "prompt=q_text, completion=a_text, system=sys"):
        loaded = data.load(str(path), column_map=mapping)
        assert loaded.format == "prompt_completion"
        assert loaded.conversations[0] == [{"role": "system", "content": "Be kind."},
                                           {"role": "user", "content": "Why?"},
                                           {"role": "assistant", "content": "Because."}]
        assert loaded.extras == [{}]


def test_ambiguous_columns_list_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "amb.jsonl", [{"question": "Q", "answer": "A", "response": "R"}])
    with pytest.raises(DataError) as err:
        data.load(str(path))
    message = str(err.value)
    assert "amb.jsonl: cannot tell which columns hold the prompt and the answer" in message
    assert "'answer' or 'response' could each be the answer" in message
    assert "columns: question, answer, response" in message
    loaded = data.load(str(path), column_map={"prompt": "question", "completion": "response"})
    assert loaded.conversations[0][-1]["content"] == "R"


def test_unknown_columns_and_bad_maps(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"foo": "1", "bar": "2"}])
    with pytest.raises(DataError, match=r"x.jsonl: cannot tell the format \(columns: foo, bar\)"):
        data.load(str(path))
    with pytest.raises(DataError, match="column_map names 'baz', which is not a column .columns: foo, bar."):
        data.load(str(path), column_map={"prompt": "foo", "completion": "baz"})
    with pytest.raises(DataError, match="'answer' is not a field a column can map to"):
        data.load(str(path), column_map={"answer": "foo"})
    with pytest.raises(DataError, match="'promptfoo' should look like target=column"):
        data.load(str(path), column_map="promptfoo")


def test_mapped_column_problem_names_the_users_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "Q", "answer": None}])
    loaded = data.load(str(path))
    assert str(loaded.problems[0]) == "m.jsonl, row 1, field 'answer': expected text, got null"


# --- broken inputs ----------------------------------------------------------------------------------

def test_truncated_json_file(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[{"prompt": "a", "completion": "b"}, {"prompt": "c", "compl', encoding="utf-8")
    with pytest.raises(DataError, match=r"cut.json: not valid JSON: .*; the file looks cut off"):
        data.load(str(path))


def test_truncated_jsonl_last_line_costs_only_that_line(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n{"prompt": "e", "co',
                    encoding="utf-8")
    loaded = data.load(str(path))
    assert (loaded.rows_total, loaded.rows_valid) == (3, 2)
    assert str(loaded.problems[0]) == "cut.jsonl, row 4: not valid JSON: Unterminated string starting at (column 17)"


def test_row_with_a_null_and_other_row_errors(tmp_path):
    ok = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    path = write_jsonl(tmp_path / "rows.jsonl", [
        ok,
        {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "Q"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "robot", "content": "A"}]},
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "A"}]},
        {"messages": []},
        ["not", "an", "object"],
        {"messages": [{"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"},
                      {"role": "assistant", "content": "A"}]},
    ])
    loaded = data.load(str(path))
    assert (loaded.rows_total, loaded.rows_valid) == (10, 1)
    assert [str(p) for p in loaded.problems] == [
        "rows.jsonl, row 2, field 'messages[0].content': expected text, got null",
        "rows.jsonl, row 3, field 'messages': turn 2: empty assistant answer",
        "rows.jsonl, row 4, field 'messages': the conversation does not end with an assistant turn",
        "rows.jsonl, row 5, field 'messages[1].role': unknown role 'robot' (use system, user, assistant, tool; "
        "or ShareGPT's human, gpt, function_call, observation)",
        "rows.jsonl, row 6, field 'messages[0].content': expected text, got a number",
        "rows.jsonl, row 7, field 'messages': expected a non-empty list of turns, got a list",
        "rows.jsonl, row 8: expected an object, got a list",
        "rows.jsonl, row 9, field 'messages': turn 1 is 'assistant', expected 'user'",
        "rows.jsonl, row 10, field 'messages': turn 2 is a second 'user' turn in a row",
    ]


def test_alpaca_missing_output(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "x", "input": "z"}]))
    loaded = data.load(str(path))
    assert [str(p) for p in loaded.problems] == ["a.json, row 2, field 'output': missing"]


def test_csv_with_a_missing_column(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("instruction,input,output\nSay hi,,hi\nSay bye,\nA,B,C,D\n", encoding="utf-8")
    loaded = data.load(str(path))
    assert (loaded.format, loaded.rows_total, loaded.rows_valid) == ("alpaca", 3, 1)
    assert [str(p) for p in loaded.problems] == [
        "short.csv, row 3, field 'output': missing column output: the row has 2 fields, the header 3",
        "short.csv, row 4: the row has 4 fields, the header only 3 (an unquoted comma?)"]


def test_csv_header_without_a_needed_column(tmp_path):
    path = write_csv(tmp_path / "noout.csv", ["instruction", "input"], [["a", "b"]])
    with pytest.raises(DataError, match=r"noout.csv: cannot tell which columns .*\(no column looks like the answer"):
        data.load(str(path))


@pytest.mark.parametrize("name, content, message", [
    ("zero.jsonl", b"", "zero.jsonl: the file is empty"),
    ("blank.csv", b"\n\n  \n", "blank.csv: the file is empty"),
    ("picture.jsonl", PNG, "picture.jsonl: this is a PNG image, not a JSONL text file"),
    ("blob.json", b"\x00\x01\x02binary", "blob.json: this is a binary file, not a JSON text file"),
    ("table.xlsx", b"PK\x03\x04", "table.xlsx: unsupported file type .xlsx; use .json, .jsonl, .csv, .tsv, "
                                  ".parquet or .txt"),
    ("latin1.csv", "prompt,completion\nok,fine\ncaf\u00e9,oui\n".encode("latin-1"),
     "latin1.csv: line 3 is not UTF-8 text (byte 0xe9); save the file as UTF-8"),
    ("fake.parquet", b"not parquet at all", "fake.parquet: not a readable Parquet file"),
    ("header.csv", b"prompt,completion\n", "header.csv: has a header but no rows"),
    ("scalar.json", b"42", "scalar.json: expected a list of rows, got int"),
])
def test_whole_file_problems_get_one_clear_message(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        data.load(str(path))
    assert str(err.value).startswith(message)
    assert "Traceback" not in str(err.value)


def test_mixed_encodings_jsonl_names_the_row(tmp_path):
    lines = [json.dumps({"prompt": "Hi", "completion": "Hello"}).encode(),
             '{"prompt": "Caf\u00e9?", "completion": "Oui"}'.encode("latin-1"),
             json.dumps({"prompt": "Caf\u00e9?", "completion": "Oui"}, ensure_ascii=False).encode("utf-8")]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    loaded = data.load(str(path))
    assert (loaded.rows_total, loaded.rows_valid) == (3, 2)
    assert str(loaded.problems[0]) == ("mixed.jsonl, row 2: not UTF-8 text (byte 0xe9 at column 16); "
                                       "save the file as UTF-8")


def test_missing_path_and_offline_hub_id(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        data.load(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        data.load("some/file.jsonl")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(formats, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError) as err:
        data.load("tatsu-lab/alpaca", split="train")
    assert "'tatsu-lab/alpaca' is not a file or folder on this machine" in str(err.value)
    assert "not available offline" in str(err.value)


def test_one_rule_decides_local_path_or_hub_id(tmp_path, monkeypatch):
    """paths.is_hub_id decides: an org/name that exists here is a local folder, read as one; one that
    does not is a Hub id, sent to the Hub only; a name with a file suffix is always a path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    write_jsonl(tmp_path / "org" / "name" / "rows.jsonl", [{"prompt": "q", "completion": "a"}])
    assert data.load("org/name").rows_valid == 1
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(formats, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="'org/other' is not a file or folder on this machine"):
        data.load("org/other")
    with pytest.raises(DataError, match="'org/missing.jsonl' does not exist"):
        data.load("org/missing.jsonl")
    local = data.load_preview("org/name")  # the page's reader reads a local source exactly as load() does
    assert (local.rows_valid, local.complete, local.note) == (1, True, "")


# --- preview, the quick path, split, config ---------------------------------------------------------

def test_preview_pages(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(45)])
    loaded = data.load(str(path))
    assert data.page_count(loaded, 20) == 3
    first = data.preview(loaded, 1, 20)
    assert [r["prompt"] for r in first[:2]] == ["q0", "q1"] and len(first) == 20
    last = data.preview(loaded, 3, 20)
    assert [(r["index"], r["row"], r["completion"]) for r in last] == [(40 + i, 41 + i, f"a{40 + i}") for i in range(5)]
    assert data.preview(loaded, 99, 20) == last  # clamped to the last page
    assert data.preview(loaded, 0, 20) == first


def test_100k_rows_quick_path_reads_one_page_and_counts_all(tmp_path, monkeypatch):
    import time

    path = tmp_path / "big.jsonl"
    row = {"messages": [{"role": "user", "content": "What is the number {}?"},
                        {"role": "assistant", "content": "It is {}, a fine number."}]}
    text = json.dumps(row)
    with path.open("w", encoding="utf-8") as f:
        for i in range(100_000):
            f.write(text.replace("{}", str(i)) + "\n")
        f.write("{broken\n")
    calls = []
    monkeypatch.setattr(tokens, "tokenize_conversation", lambda *a, **k: calls.append(1))

    started = time.perf_counter()
    quick = data.load(str(path), limit=20)
    page = data.preview(quick, 1, 20)
    quick_s = time.perf_counter() - started
    assert (quick.rows_total, quick.rows_valid, quick.complete) == (100_001, 20, False)
    assert page[-1]["completion"] == "It is 19, a fine number."

    started = time.perf_counter()
    full = data.load(str(path))
    full_s = time.perf_counter() - started
    assert (full.rows_total, full.rows_valid, full.complete) == (100_001, 100_000, True)
    assert str(full.problems[0]).startswith("big.jsonl, row 100001: not valid JSON")
    assert calls == []  # neither path tokenizes: statistics() does that afterwards
    print(f"\n100k-row JSONL: first page {quick_s:.2f} s, full load and validation {full_s:.2f} s")


def test_split_is_seeded_and_reproducible():
    items = list(range(100))
    train_a, eval_a = data.split(items, 0.2, seed=1)
    train_b, eval_b = data.split(items, 0.2, seed=1)
    _, eval_c = data.split(items, 0.2, seed=2)
    assert (train_a, eval_a) == (train_b, eval_b)
    assert len(eval_a) == 20 and sorted(train_a + eval_a) == items
    assert eval_a != eval_c


def test_config_carries_format_and_column_map(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"q_text": "Why?", "a_text": "Because."}])
    cfg = TrainConfig(dataset=str(path), column_map="prompt=q_text,completion=a_text")
    assert data.load_config_dataset(cfg).rows_valid == 1
    cfg = TrainConfig(dataset=str(path), dataset_format="text", column_map="text=a_text")
    assert data.load_config_dataset(cfg).conversations == [[{"role": "text", "content": "Because."}]]

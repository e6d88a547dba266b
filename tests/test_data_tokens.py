"""The token-level view: exactly which tokens are trained on (real SmolLM2 tokenizer and ChatML
template), statistics, plain-text rows, prepare() with a column map, and `inspect --json`."""

from __future__ import annotations

import json

import pytest

from tuning import data
from tuning.__main__ import main
from tuning.config import TrainConfig

from conftest import write_jsonl

SYSTEM = "<|im_start|>system\nBe brief.<|im_end|>\n"


def chat(q: str, a: str, system: str | None = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_exact_trained_and_masked_split(embedded_tokenizer):
    tok = embedded_tokenizer
    messages = chat("Hi", "Hello there", system="Be brief.") + chat("Again?", "Yes")[0:2]
    pieces = data.token_view(tok, messages)
    assert pieces == [
        (SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "masked"),
        ("Hello there<|im_end|>", "trained"),
        ("\n<|im_start|>user\nAgain?<|im_end|>\n<|im_start|>assistant\n", "masked"),
        ("Yes<|im_end|>", "trained"),
        ("\n", "masked"),  # template whitespace after the end-of-turn token is not learned
    ]
    row = data.tokenize_conversation(tok, messages)
    answers = len(tok("Hello there")["input_ids"]) + len(tok("Yes")["input_ids"])
    assert sum(row["assistant_masks"]) == answers + 2  # + one <|im_end|> per answer
    trained = [i for i, m in zip(row["input_ids"], row["assistant_masks"]) if m]
    assert tok.decode(trained) == "Hello there<|im_end|>Yes<|im_end|>"

    everything = data.tokenize_conversation(tok, messages, completions_only=False)
    assert everything["input_ids"] == row["input_ids"] and all(everything["assistant_masks"])

    cut = data.token_view(tok, messages, max_length=len(row["input_ids"]) - 2)
    assert cut[-1] == ("<|im_end|>\n", "truncated")


def test_tool_calls_are_trained_and_tool_results_masked(embedded_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "tools.jsonl", [{"conversations": [
        {"from": "human", "value": "Weather in Oslo?"},
        {"from": "function_call", "value": '{"name": "weather"}'},
        {"from": "observation", "value": '{"temp": 3}'},
        {"from": "gpt", "value": "3 degrees."}]}])
    messages = data.load(str(path)).conversations[0]
    trained = "".join(t for t, label in data.token_view(embedded_tokenizer, messages) if label == "trained")
    assert trained == '{"name": "weather"}<|im_end|>3 degrees.<|im_end|>'


def test_plain_text_is_all_trained_without_template_and_split_not_cut(embedded_tokenizer):
    tok = embedded_tokenizer
    messages = [{"role": "text", "content": "Plain words for continued pre-training."}]
    row = data.tokenize_conversation(tok, messages)
    assert row["input_ids"] == tok("Plain words for continued pre-training.")["input_ids"] + [tok.eos_token_id]
    assert all(row["assistant_masks"])
    assert data.token_view(tok, messages, max_length=2) == [
        ("Plain words for continued pre-training.<|im_end|>", "trained")]
    ds = data.to_dataset(tok, [messages], max_length=3, completions_only=True)
    n = len(row["input_ids"])  # 10 tokens -> pieces of max_length, the last one shorter
    assert [len(r) for r in ds["input_ids"]] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    assert sum(ds["input_ids"], []) == row["input_ids"]


def test_statistics(embedded_tokenizer, tmp_path):
    tok = embedded_tokenizer
    long_prompt = " ".join(["word"] * 80)
    rows = [{"messages": chat("Hi", "Hello")}, {"messages": chat("Hi", "Hello")},
            {"messages": chat(long_prompt, "Sure.")}, {"messages": chat("Hi", "Hello")},
            {"text": "ignored"}]
    path = write_jsonl(tmp_path / "s.jsonl", rows[:4])
    loaded = data.load(str(path))
    seen = []
    stats = data.statistics(loaded, tok, max_length=40, progress=lambda f, d: seen.append((f, d)))

    lengths = [len(data.tokenize_conversation(tok, m)["input_ids"]) for m in loaded.conversations]
    assert stats["lengths"] == lengths and stats["rows"] == 4
    assert lengths[2] > 80 and lengths[0] < 40
    assert (stats["truncated_count"], stats["truncated_share"]) == (1, 0.25)
    assert str(stats["truncated"][0]) == (f"s.jsonl, row 3: {lengths[2]} tokens, longer than max_length 40: "
                                          f"the last {lengths[2] - 40} are cut off")
    # The long prompt pushes the whole answer past the cutoff: that row teaches nothing.
    assert [(p.row, p.message) for p in stats["no_trained"]] == [
        (3, "no trained token left within max_length; left out")]
    short_trained = sum(data.tokenize_conversation(tok, loaded.conversations[0])["assistant_masks"])
    assert stats["trainable_tokens"] == 3 * short_trained
    assert stats["total_tokens"] == 3 * lengths[0] + 40
    assert stats["duplicate_count"] == 2
    assert [(d["row"], d["first_row"]) for d in stats["duplicates"]] == [(2, 1), (4, 1)]
    assert sum(stats["histogram"]["counts"]) == 4
    assert len(stats["histogram"]["edges"]) == len(stats["histogram"]["counts"]) + 1
    assert stats["histogram"]["edges"][-1] >= max(lengths)
    assert stats["suggested_max_length"] % 64 == 0 and stats["suggested_max_length"] >= lengths[2]
    assert stats["longest"] == lengths[2]
    assert seen[0][0] == 0.0 and seen[-1][0] == 1.0 and "rows" in seen[-1][1]

    quick = data.statistics(loaded, tok, max_length=40, sample=2)
    assert (quick["rows"], quick["sampled_from"], len(quick["lengths"])) == (2, 4, 2)
    assert quick["lengths"] == [lengths[i] for i in quick["indices"]]
    assert quick["duplicate_count"] == 2  # duplicates need no tokenizer: always over every row


def test_prepare_with_column_map_and_text(tiny_model_dir, embedded_tokenizer, tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"q": f"Question {i}?", "a": f"Answer {i}."} for i in range(10)])
    cfg = TrainConfig(base_model=str(tiny_model_dir), dataset=str(qa), column_map="prompt=q,completion=a",
                      eval_split=0.2, max_length=64)
    train_ds, eval_ds, loaded = data.prepare(cfg, embedded_tokenizer)
    assert (len(train_ds), len(eval_ds), loaded.format) == (8, 2, "prompt_completion")
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(f"Paragraph {i} " + "word " * 30 for i in range(4)), encoding="utf-8")
    cfg = cfg.replace(dataset=str(book), column_map="", eval_split=0.0, max_length=16)
    train_ds, eval_ds, loaded = data.prepare(cfg, embedded_tokenizer)
    assert loaded.format == "text" and eval_ds is None
    assert len(train_ds) > 4 and all(len(r) <= 16 and all(m) for r, m in
                                     zip(train_ds["input_ids"], train_ds["assistant_masks"]))


def test_inspect_json_report(tiny_model_dir, tmp_path, capsys):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": chat("Hi", "Hello")},
                                                  {"messages": chat("Hi", "")},
                                                  {"messages": chat("Hi", "Hello")}])
    code = main(["inspect", str(path), "--json", "--base-model", str(tiny_model_dir), "--max-length", "64"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (report["format"], report["rows"], report["valid_rows"], report["problem_count"]) == ("messages", 3, 2, 1)
    assert report["problems"] == [{"file": "mixed.jsonl", "row": 2, "field": "messages",
                                   "message": "turn 2: empty assistant answer"}]
    stats = report["statistics"]
    assert stats["rows"] == 2 and stats["max_length"] == 64 and "lengths" not in stats and "indices" not in stats
    assert stats["duplicate_count"] == 1 and stats["truncated_count"] == 0 and stats["trainable_tokens"] > 0


@pytest.mark.parametrize("content, message", [
    (b"", "error: zero.jsonl: the file is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "error: zero.jsonl: this is a PNG image, not a JSONL text file"),
])
def test_inspect_bad_file_exits_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "zero.jsonl"
    path.write_bytes(content)
    assert main(["inspect", str(path), "--no-tokens"]) == 2
    assert capsys.readouterr().err.strip() == message

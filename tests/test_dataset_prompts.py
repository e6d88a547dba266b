"""The Dataset tab on GRPO prompt data, without a browser: the bundled sums and any source read with
rewards show as the trainer reads them (the prompts, the columns the rewards read, the rows missing one
by file and row, the prompts' token lengths) instead of as SFT conversations; a bad rewards string is a
message naming the entry; on a Space a visitor reads the bundled sums only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gradio as gr
import pytest

from tuning.config import ConfigError
from tuning.data import prompts
from tuning.data.formats import DataError
from tuning.ship import space
from tuning.ui import dataset_prompts, dataset_tab
from tuning.ui.common import AppContext

PATH = dataset_tab.SOURCES[2]
DEMO = prompts.DEMO_ARITHMETIC
MISSING = (3, 7)  # the rows of sums.jsonl with no answer


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def ctx(tmp_path, tiny_model_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return AppContext(tmp_path / "ws", [data_dir, tiny_model_dir])


@pytest.fixture
def sums(ctx) -> str:
    """10 question rows; row 3 has no answer key, row 7 an empty answer."""
    rows = []
    for i in range(1, 11):
        row = {"question": f"What is {i} + 1?", "answer": str(i + 1)}
        if i == 3:
            del row["answer"]
        elif i == 7:
            row["answer"] = " "
        rows.append(row)
    return str(write(ctx.data_dirs[0] / "sums.jsonl", rows))


def inspect(ctx, text: str, rewards: str = "", kind: str = PATH) -> dict:
    return dataset_tab.inspect_handler(ctx, kind, None, text, "auto", "", None, rewards)


def visible(update) -> bool:
    return update["visible"]


def listed(out: dict) -> tuple[list[str], list[list]]:
    value = out["prompt_list"]["value"]
    return value["headers"], value["data"]


def test_which_sources_read_as_grpo_prompts():
    assert dataset_prompts.rewards_for(DEMO) == "answer"
    assert dataset_prompts.rewards_for(DEMO, " length:1-8 ") == "length:1-8"
    assert dataset_prompts.is_prompts(DEMO)
    assert dataset_prompts.is_prompts("data/sums.jsonl", "answer")
    assert not dataset_prompts.is_prompts("data/sums.jsonl", "  ")
    assert not dataset_prompts.is_prompts("demo")
    assert not dataset_prompts.is_prompts("", "answer")


def test_the_bundled_sums_show_240_prompts_with_their_answers(ctx):
    out = inspect(ctx, DEMO)
    assert set(out) == set(dataset_tab.INSPECT_OUTPUTS)
    assert out["summary"].startswith("**demo-arithmetic** — GRPO prompts: **240** prompts valid of 240 rows; "
                                     "reward answer reads column answer; no problems found.")
    assert out["problems"] == []
    headers, rows = listed(out)
    assert headers == ["#", "prompt (last user turn)", "answer", "file:row"]
    assert len(rows) == 240
    first = json.loads((prompts.demo_files()[0]).read_text().splitlines()[0])
    assert rows[0] == [1, first["question"], first["answer"], "train.jsonl:1"]
    assert rows[-1][0] == 240 and rows[-1][-1] == "train.jsonl:240"
    # the prompt view shows instead of the SFT preview and tokens; the Train form gets the demo by name
    assert visible(out["prompt_box"]) and not visible(out["sft_preview"]) and not visible(out["sft_tokens"])
    assert not visible(out["pair_box"])
    assert out["chosen"] == DEMO and out["chosen_format"] == "auto" and out["source"] == ""
    assert out["prompts"] == {"source": DEMO, "rewards": "answer", "column_map": ""}
    assert out["preview"] == []


def test_rows_missing_the_answer_are_named_by_file_row_and_column_and_the_rest_kept(ctx, sums):
    out = inspect(ctx, sums, "answer,length:1-8*0.2")
    assert ("**8** prompts valid of 10 rows; rewards answer, length:1-8 read column answer; **2 problems**"
            in out["summary"])
    assert ("e.g. sums.jsonl row 3: no 'answer' (the answer reward reads it); sums.jsonl row 7: no 'answer' "
            "(the answer reward reads it)." in out["summary"])
    assert out["problems"] == [["sums.jsonl", row, "answer", "no 'answer' (the answer reward reads it)"]
                               for row in MISSING]
    _, rows = listed(out)
    assert [r[0] for r in rows] == list(range(1, 9))
    assert [r[-1] for r in rows] == [f"sums.jsonl:{n}" for n in (1, 2, 4, 5, 6, 8, 9, 10)]
    assert rows[2] == [3, "What is 4 + 1?", "5", "sums.jsonl:4"]

    loaded = dataset_prompts.load(sums, "answer")
    readers = dataset_prompts.columns_read(dataset_prompts.reward_specs("answer"))
    assert [dataset_prompts.problem_line(p, readers) for p in loaded.problems] == [
        "sums.jsonl row 3: no 'answer' (the answer reward reads it)",
        "sums.jsonl row 7: no 'answer' (the answer reward reads it)"]


def test_rewards_that_read_no_column_keep_every_row(ctx, sums):
    out = inspect(ctx, sums, "length:1-8,no_repeat")
    assert "**10** prompts valid of 10 rows; rewards length:1-8, no_repeat read no column" in out["summary"]
    assert out["problems"] == []
    headers, rows = listed(out)
    assert headers == ["#", "prompt (last user turn)", "file:row"] and len(rows) == 10


@pytest.mark.parametrize("rewards, message", [
    ("answer,nope", "rewards: entry 2 'nope': not a reward"),
    ("length:abc", "rewards: entry 1 'length:abc': write length:MIN-MAX in words"),
    ("regex:(", "rewards: entry 1 'regex:(': not a regular expression"),
])
def test_a_bad_rewards_string_is_a_message_naming_the_entry(ctx, sums, rewards, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        inspect(ctx, sums, rewards)


def test_the_other_bundled_sets_read_with_rewards_say_to_pick_the_sums(ctx):
    with pytest.raises(DataError, match="rewards: demo is the bundled conversations for SFT; for GRPO pick "
                                        "demo-arithmetic"):
        inspect(ctx, "", "answer", kind=dataset_tab.SOURCES[0])
    with pytest.raises(DataError, match="rewards: demo-preference is the bundled pairs for DPO or ORPO"):
        inspect(ctx, "demo-preference", "answer")


def by_name(outputs: dict) -> dict:
    """An event's outputs keyed by what tests can name: 'box', or a component's label."""
    return {"box" if "error-box" in (block.elem_classes or []) else getattr(block, "label", None) or block._id: value
            for block, value in outputs.items()}


def test_the_wired_inspect_shows_a_bad_rewards_string_in_the_box_and_empties_the_views(ctx, sums):
    with gr.Blocks() as demo:
        dataset_tab.build(ctx)
    event = next(f.fn for f in demo.fns.values() if f.api_name == "inspect_dataset_form")
    bad = by_name(event(PATH, None, sums, "auto", "", None, "answer,nope"))
    assert bad["box"]["visible"] is True
    assert "rewards: entry 2 'nope': not a reward" in bad["box"]["value"]
    assert "Traceback" not in bad["box"]["value"] and "went wrong" not in bad["box"]["value"]
    assert dataset_tab.NOTHING_INSPECTED in bad.values() and bad["Validation problems"] == []
    good = by_name(event(PATH, None, sums, "auto", "", None, "answer"))
    assert good["box"]["visible"] is False and len(good["Validation problems"]) == 2


def test_a_chat_format_prompt_source_reads_its_user_turn(ctx):
    rows = [{"messages": [{"role": "system", "content": "Answer with a number."},
                          {"role": "user", "content": "What is 2 + 2?"},
                          {"role": "assistant", "content": "4"}]},  # the reply after the user turn fills answer
            {"messages": [{"role": "user", "content": "What is 3 + 3?"}], "answer": "6"},
            {"messages": [{"role": "user", "content": "What is 5 + 5?"}]},  # row 3: nothing fills answer
            {"messages": [{"role": "assistant", "content": "Hello."}]}]  # row 4: no user turn
    path = str(write(ctx.data_dirs[0] / "chat.jsonl", rows))
    out = inspect(ctx, path, "answer")
    _, listed_rows = listed(out)
    assert listed_rows == [[1, "What is 2 + 2?", "4", "chat.jsonl:1"], [2, "What is 3 + 3?", "6", "chat.jsonl:2"]]
    assert out["problems"] == [["chat.jsonl", 3, "answer", "no 'answer' (the answer reward reads it)"],
                               ["chat.jsonl", 4, "messages", "no user turn: nothing to answer"]]
    loaded = dataset_prompts.load(path, "answer")
    readers = dataset_prompts.columns_read(dataset_prompts.reward_specs("answer"))
    assert [dataset_prompts.problem_line(p, readers) for p in loaded.problems] == [
        "chat.jsonl row 3: no 'answer' (the answer reward reads it)",
        "chat.jsonl row 4: messages: no user turn: nothing to answer"]
    assert loaded.rows[0]["prompt"][0] == {"role": "system", "content": "Answer with a number."}


def test_the_tab_routes_a_grpo_source_to_the_prompt_view_and_sft_data_to_the_preview(ctx, sums, tiny_model_dir):
    sft = inspect(ctx, sums)  # no rewards typed: question/answer rows read as SFT conversations
    assert visible(sft["sft_preview"]) and not visible(sft["prompt_box"]) and sft["prompts"] is None
    assert sft["source"] == sums and len(sft["preview"]) == 8

    grpo = inspect(ctx, sums, "answer")
    assert visible(grpo["prompt_box"]) and not visible(grpo["sft_preview"]) and not visible(grpo["pair_box"])
    assert grpo["source"] == "" and grpo["chosen"] == sums
    # the steps that follow an inspect: the token view and the pages have no SFT source to show
    assert dataset_tab.token_view_handler(ctx, grpo["source"], "auto", 1, str(tiny_model_dir), 64) == []
    assert dataset_tab.page_handler(grpo["source"], "auto", 1) == {"preview": [], "page": 1, "pages": "of 1"}
    (stats,) = list(dataset_tab.statistics_handler(ctx, grpo["source"], "auto", "", str(tiny_model_dir), 64, True,
                                                   grpo["prompts"], progress=None))
    found = re.search(r"\*\*Prompt lengths\*\* \(all 8 prompts, with the chat template\): min \*\*(\d+)\*\*, "
                      r"median \*\*(\d+)\*\*, p95 \*\*(\d+)\*\*, max \*\*(\d+)\*\* tokens", stats["stats"])
    assert found, stats["stats"]
    low, median, p95, high = map(int, found.groups())
    assert 0 < low <= median <= p95 <= high
    assert stats["findings"] == [] and not visible(stats["use_btn"]) and not visible(stats["histogram"])


def test_prompt_lengths_count_the_chat_template_up_to_the_assistants_opening(sums, embedded_tokenizer):
    loaded = dataset_prompts.load(sums, "answer")
    lengths = dataset_prompts.prompt_lengths(loaded, embedded_tokenizer)
    ids = embedded_tokenizer.apply_chat_template(loaded.rows[0]["prompt"], tokenize=True, add_generation_prompt=True,
                                                 return_dict=True)["input_ids"]
    assert len(lengths) == 8 and lengths[0] == len(ids)
    assert dataset_prompts.stats_markdown(lengths[:3], 8).startswith("**Prompt lengths** (the first 3 of 8 prompts")


def test_a_visitor_on_a_space_reads_the_bundled_sums_but_no_path(tmp_path, sums):
    settings = space.space_settings({"SPACE_ID": "owner/space", "TUNING_AUTH": "pw"}, data_dir=tmp_path / "none",
                                    workspace=tmp_path / "ws")
    visitor = AppContext(tmp_path / "ws", [], settings=settings)
    assert visible(inspect(visitor, DEMO)["prompt_box"])
    with pytest.raises(gr.Error, match="password"):
        inspect(visitor, sums, "answer")

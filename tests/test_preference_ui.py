"""The Dataset tab on preference data, without a browser: a pairs file (or the bundled demo, or a
run's votes) shows as pairs, not as SFT conversations; one pair as prompt, chosen and rejected side
by side with each side's tokens (the prompt is context, the answers are scored, max_length cuts the
long side); the token lengths per side; problems by file, row and field; KTO's labelled answers in
the chosen or rejected column by label; and on a Space a visitor sees the demo pairs only."""

from __future__ import annotations

import json
import random
from pathlib import Path

import gradio as gr
import pytest

from tuning.evaluation import ab
from tuning.data import pairs
from tuning import runs
from tuning.ship import space
from tuning.ui import dataset_pairs, dataset_tab
from tuning.ui.common import AppContext

PATH = dataset_tab.SOURCES[2]
VOTES = dataset_tab.SOURCES[3]
LONG = "Well, that is a long story. " * 30


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def ctx(tmp_path, tiny_model_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return AppContext(tmp_path / "ws", [data_dir, tiny_model_dir])


@pytest.fixture
def pairs_file(ctx) -> str:
    rows = [pair(f"Capital of France? #{i}", "Paris.", "Lyon.") for i in range(5)]
    rows.append(pair("Tell me about Paris.", "Paris is the capital of France.", LONG))  # row 6: rejected is long
    rows.append({"prompt": "Who are you?", "chosen": "I am Quill."})  # row 7: no rejected side
    rows.append(pair("2+2?", "4", " 4 "))  # row 8: the same answer twice
    return str(write(ctx.data_dirs[0] / "pairs.jsonl", rows))


def inspect(ctx, kind: str, text: str = "", run: str | None = None) -> dict:
    return dataset_tab.inspect_handler(ctx, kind, None, text, "auto", "", run)


def visible(update) -> bool:
    return update["visible"]


def test_a_pairs_file_shows_as_pairs_with_its_problems_by_row(ctx, pairs_file):
    out = inspect(ctx, PATH, pairs_file)
    assert set(out) <= set(dataset_tab.INSPECT_OUTPUTS)
    assert visible(out["pair_box"]) and not visible(out["sft_preview"]) and not visible(out["sft_tokens"])
    assert "prompt_chosen_rejected" in out["summary"] and "**6** pairs valid of 8 rows" in out["summary"]
    assert "objective** set to **dpo or orpo" in out["summary"]
    assert out["source"] == pairs_file and out["chosen_format"] == "auto"
    listed = out["pair_list"]["value"]
    assert len(listed) == 6 and listed[0] == [1, "Capital of France? #0", "Paris.", "Lyon.", "pairs.jsonl:1"]
    assert listed[5][4] == "pairs.jsonl:6"
    problems = {(row, field): message for _, row, field, message in out["problems"]}
    assert set(problems) == {(7, "rejected"), (8, "rejected")}
    assert "only chosen given" in problems[7, "rejected"] and "identical to chosen" in problems[8, "rejected"]
    # The SFT steps chained after Inspect leave preference data to the pair view.
    assert dataset_tab.token_view_handler(ctx, pairs_file, "auto", 1, "", 128) == []


def test_sft_data_still_shows_as_conversations(ctx):
    source = str(write(ctx.data_dirs[0] / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]))
    out = inspect(ctx, PATH, source)
    assert not visible(out["pair_box"]) and visible(out["sft_preview"]) and out["preview"][0][2] == "Hi"
    assert dataset_tab.show_pair(ctx, source, "", 1, "", 128) == {}


def test_token_lengths_per_side_name_the_side_max_length_cuts(ctx, pairs_file, tiny_model_dir):
    (out,) = list(dataset_tab.statistics_handler(ctx, pairs_file, "auto", "", str(tiny_model_dir), 64, True))
    assert set(out) <= set(dataset_tab.STATS_OUTPUTS)
    stats = out["stats"]
    assert "| side | min | median | p95 | max | mean |" in stats
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:7]] for line in stats.splitlines()
            if line.startswith("| ") and "side" not in line}
    assert set(rows) == {"prompt", "chosen (answer)", "rejected (answer)"}
    assert int(rows["rejected (answer)"][3]) > 64 > int(rows["chosen (answer)"][3])  # max column
    assert int(rows["rejected (answer)"][0]) <= int(rows["rejected (answer)"][1]) <= int(rows["rejected (answer)"][3])
    assert "**1** rows (cut side: rejected in 1)" in stats
    assert out["findings"] == [["pairs.jsonl", 6, out["findings"][0][2]]] and "rejected" in out["findings"][0][2]
    assert not visible(out["histogram"]) and not visible(out["use_btn"])


def test_one_pair_side_by_side_with_the_tokens_each_side_scores(ctx, pairs_file, tiny_model_dir):
    out = dataset_tab.show_pair(ctx, pairs_file, "", 6, str(tiny_model_dir), 512)
    assert set(out) == set(dataset_pairs.VIEW_OUTPUTS) and out["pair_row"] == 6
    text = {side: "".join(t for t, _ in out[f"pair_{side}"]) for side in ("prompt", "chosen", "rejected")}
    labels = {side: {label for _, label in out[f"pair_{side}"]} for side in ("prompt", "chosen", "rejected")}
    assert "Tell me about Paris." in text["prompt"] and labels["prompt"] == {"prompt"}
    assert "Paris is the capital of France." in text["chosen"] and "Tell me about" not in text["chosen"]
    assert "long story" in text["rejected"] and "scored" in labels["chosen"] and "scored" in labels["rejected"]
    assert "truncated" not in labels["rejected"] and "pairs.jsonl row 6" in out["pair_note"]
    # A short max_length cuts the long rejected answer and leaves the short chosen one whole.
    cut = dataset_tab.show_pair(ctx, pairs_file, "", 6, str(tiny_model_dir), 64)
    assert cut["pair_rejected"][-1][1] == "truncated" and "truncated" not in {lab for _, lab in cut["pair_chosen"]}
    with pytest.raises(Exception, match="pair: pick a pair between 1 and 6"):
        dataset_tab.show_pair(ctx, pairs_file, "", 9, str(tiny_model_dir), 512)


def test_kto_answers_sit_under_chosen_or_rejected_by_label(ctx, tiny_model_dir):
    source = str(write(ctx.data_dirs[0] / "kto.jsonl", [
        {"prompt": "Who are you?", "completion": "I am Quill.", "label": True},
        {"prompt": "Who are you?", "completion": "I am a toaster.", "label": False}]))
    out = inspect(ctx, PATH, source)
    assert "labelled answers (KTO)" in out["summary"] and "objective** set to **kto" in out["summary"]
    assert [r[2:4] for r in out["pair_list"]["value"]] == [["I am Quill.", ""], ["", "I am a toaster."]]
    bad = dataset_tab.show_pair(ctx, source, "", 2, str(tiny_model_dir), 512)
    assert bad["pair_chosen"] == [] and "toaster" in "".join(t for t, _ in bad["pair_rejected"])
    assert "undesirable" in bad["pair_note"]


def test_the_bundled_preference_demo_opens_from_the_path_box(ctx):
    out = inspect(ctx, PATH, pairs.DEMO_PREFERENCE)
    assert out["source"] == pairs.DEMO_PREFERENCE and visible(out["pair_box"])
    assert len(out["pair_list"]["value"]) == pairs.load(pairs.DEMO_PREFERENCE).rows_valid == 40


def _vote(run_dir: Path, prompt: str, base: str, tuned: str, winner: str, seed: int) -> None:
    shown = ab.blind(run_dir, prompt, base, tuned, random.Random(seed))
    ab.vote(run_dir, shown, "tie" if winner == "tie" else ("A" if shown.a_is == winner else "B"))


def test_the_votes_of_a_run_open_as_pairs(ctx):
    run_dir = ctx.workspace / "runs" / "voted"
    run_dir.mkdir(parents=True)
    _vote(run_dir, "Who are you?", "I'm SmolLM.", "I'm Quill.", "tuned", 1)
    _vote(run_dir, "2+2?", "4", "5", "base", 2)
    _vote(run_dir, "Hi", "Hello", "Hey", "tie", 3)  # a tie teaches nothing: left out
    assert dataset_tab.source_inputs(VOTES)["run"]["visible"] is True
    assert dataset_tab.vote_runs(ctx, VOTES)["run"]["choices"] in (["voted"], [("voted", "voted")])
    assert dataset_tab.vote_runs(ctx, PATH) == {}
    out = inspect(ctx, VOTES, run="voted")
    assert "votes of run voted" in out["summary"] and "**2** pairs valid" in out["summary"]
    assert [r[1:4] for r in out["pair_list"]["value"]] == [["Who are you?", "I'm Quill.", "I'm SmolLM."],
                                                          ["2+2?", "4", "5"]]
    assert Path(out["source"]).parent == run_dir.resolve()  # the file "tune on my votes" trains on
    with pytest.raises(Exception, match="pick a run first"):
        inspect(ctx, VOTES, run=None)


def test_on_a_space_a_visitor_sees_the_demo_pairs_but_no_votes(tmp_path, monkeypatch):
    settings = space.space_settings({"SPACE_ID": "owner/space", "TUNING_AUTH": "pw"}, data_dir=tmp_path / "none",
                                    workspace=tmp_path / "ws")
    visitor = AppContext(tmp_path / "ws", [], settings=settings)
    run_dir = visitor.workspace / "runs" / "voted"
    run_dir.mkdir(parents=True)
    _vote(run_dir, "Who are you?", "I'm SmolLM.", "I'm Quill.", "tuned", 1)
    assert visible(inspect(visitor, PATH, pairs.DEMO_PREFERENCE)["pair_box"])
    assert dataset_tab.vote_runs(visitor, VOTES) == {"run": gr.update(choices=[], value=None)}
    with pytest.raises(gr.Error, match="password"):
        inspect(visitor, VOTES, run="voted")
    assert not (run_dir / runs.PREFERENCE_PAIRS).exists()  # nothing was written for the visitor

"""Blind A/B inside the Playground: the answer the server just generated, in random order, one vote
saved; the labelled columns are hidden while the vote is open and come back after it; the vote
carries nothing but the choice."""

import inspect

import gradio as gr
import pytest

from tuning import ab, record
from tuning.config import TrainConfig
from tuning.ui import playground_tab
from tuning.ui.common import AppContext

BASE, TUNED = "I am SmolLM.", "I am Quill."


@pytest.fixture
def ctx_and_run(tmp_path):
    ctx = AppContext(tmp_path / "ws")
    run_dir = record.run_dir(ctx.workspace, "r1")
    run_dir.mkdir(parents=True)
    record.write_config(run_dir, TrainConfig())
    return ctx, run_dir


def generated(run_id="r1", base=BASE, tuned=TUNED):
    return playground_tab.Generated(run_id, "Who are you?", base, tuned)


def test_blind_pair_hides_the_order_and_the_vote_is_saved_and_revealed(ctx_and_run):
    ctx, run_dir = ctx_and_run
    seen_orders = set()
    for _ in range(20):
        opened = playground_tab.open_blind(ctx, "r1", generated())
        pair = opened["pair"]
        assert {opened["answer_a"], opened["answer_b"]} == {BASE, TUNED} and "random" in opened["ab_note"]
        assert (opened["answer_a"] == TUNED) == (pair.a_is == "tuned")
        seen_orders.add(pair.a_is)
    assert seen_orders == {"base", "tuned"}, "the order must really be random"
    # While the vote is open, the labelled columns are hidden: they would give the order away.
    assert opened["base_out"]["visible"] is False and opened["tuned_out"]["visible"] is False

    choice = "A" if pair.a_is == "tuned" else "B"  # vote for the tuned answer
    voted = playground_tab.blind_vote(ctx, "r1", pair, choice)
    assert voted["pair"] is None, "a pair is voted on once"
    assert f"A was the **{pair.a_is}** model" in voted["ab_note"] and "tuned wins 1 of 1" in voted["ab_tally"]
    # After the vote the labelled columns are back, and the note says which was which.
    assert voted["base_out"]["visible"] is True and voted["tuned_out"]["visible"] is True
    (vote,) = record.read_votes(run_dir)
    assert vote["winner"] == "tuned" and vote["prompt"] == "Who are you?" and {vote["a"], vote["b"]} == {BASE, TUNED}
    assert record.ab_summary(run_dir)["tuned_wins"] == 1  # what the Evaluation tab and `eval` read


def test_blind_ab_bad_input_gets_a_message(ctx_and_run):
    ctx, run_dir = ctx_and_run
    with pytest.raises(record.RunError, match="generate side by side first"):
        playground_tab.open_blind(ctx, "r1", None)
    with pytest.raises(record.RunError, match="generate side by side first"):
        playground_tab.open_blind(ctx, "r1", generated(base="", tuned=""))
    with pytest.raises(record.RunError, match="generate side by side first"):  # answers of another run
        playground_tab.open_blind(ctx, "r1", generated(run_id="r0"))
    with pytest.raises(record.RunError, match="nothing to judge"):
        playground_tab.open_blind(ctx, "r1", generated(tuned=BASE))
    with pytest.raises(record.RunError, match="pick a run first"):
        playground_tab.open_blind(ctx, None, generated())
    with pytest.raises(record.RunError, match="no pair on screen"):
        playground_tab.blind_vote(ctx, "r1", None, "A")
    assert record.read_votes(run_dir) == []


def test_the_vote_carries_only_the_choice(ctx_and_run):
    """No answer text can come from the page: the handler takes none, and the three vote buttons
    send only the run picker and the server-side pair."""
    ctx, _ = ctx_and_run
    assert list(inspect.signature(playground_tab.blind_vote).parameters) == ["ctx", "run_id", "pair", "choice"]
    assert list(inspect.signature(playground_tab.open_blind).parameters) == ["ctx", "run_id", "last"]
    with gr.Blocks() as demo:
        parts = playground_tab.build(ctx)
    votes = [fn for fn in demo.fns.values() if fn.name == "blind_vote"]
    opens = [fn for fn in demo.fns.values() if fn.name == "open_blind"]
    assert len(votes) == 3 and len(opens) == 1
    for fn in votes + opens:
        assert fn.inputs[0] is parts.run and isinstance(fn.inputs[1], gr.State) and len(fn.inputs) == 2
        assert fn.api_visibility == "private"


def test_a_new_answer_is_kept_server_side_and_closes_an_open_vote(ctx_and_run, monkeypatch):
    """The streamed answer's final text is what a blind vote later judges; generating again closes
    the vote and shows the columns."""
    ctx, run_dir = ctx_and_run

    class FakeComparer:
        precision_label, method = "4-bit NF4 (as trained)", "qlora"

        def stream(self, prompt, adapter, system, settings):
            yield "I", "I"
            yield BASE, TUNED

    monkeypatch.setattr(playground_tab, "_comparer",
                        lambda ctx, run_id, checkpoint, full: (FakeComparer(), record.adapter_dir(run_dir), run_dir))
    steps = list(playground_tab.stream_side_by_side(ctx, "r1", "final", "Who are you?", "", "as trained",
                                                    8, 0, 1, 1, 0))
    assert steps[0]["pair"] is None and steps[0]["last"] is None and steps[0]["base_out"]["visible"] is True
    assert steps[1]["tuned_out"]["label"] == "Tuned — r1, final adapter"
    assert steps[-2] == {"base_out": BASE, "tuned_out": TUNED}
    assert steps[-1]["last"] == playground_tab.Generated("r1", "Who are you?", BASE, TUNED)
    opened = playground_tab.open_blind(ctx, "r1", steps[-1]["last"])
    assert isinstance(opened["pair"], ab.BlindPair) and {opened["answer_a"], opened["answer_b"]} == {BASE, TUNED}


def test_picking_another_run_forgets_the_last_answer(ctx_and_run):
    ctx, _ = ctx_and_run
    picked = playground_tab.picked_run(ctx, "r1")
    assert picked["last"] is None and picked["pair"] is None and picked["base_out"]["visible"] is True
    assert "no votes yet" in picked["ab_tally"]
    assert picked["checkpoint"]["choices"] == ["final"]


def test_playground_parts_name_what_app_wires(ctx_and_run):
    ctx, _ = ctx_and_run
    with gr.Blocks():
        parts = playground_tab.build(ctx)
    assert isinstance(parts, playground_tab.PlaygroundParts)
    assert isinstance(parts.run, gr.Dropdown) and isinstance(parts.checkpoint, gr.Dropdown)

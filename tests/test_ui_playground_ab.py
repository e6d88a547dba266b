"""Blind A/B inside the Playground: the two answers on screen, in random order, one vote saved."""

import json

import pytest

from tuning import evaluate, runs
from tuning.config import TrainConfig
from tuning.ui import playground_tab
from tuning.ui.common import AppContext


@pytest.fixture
def ctx_and_run(tmp_path):
    ctx = AppContext(tmp_path / "ws")
    run_dir = runs.run_dir(ctx.workspace, "r1")
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(TrainConfig().to_yaml())
    return ctx, run_dir


def test_blind_pair_hides_the_order_and_the_vote_is_saved_and_revealed(ctx_and_run):
    ctx, run_dir = ctx_and_run
    seen_orders = set()
    for _ in range(20):
        pair, a, b, note = playground_tab.blind_pair(ctx, "r1", "Who are you?", "I am SmolLM.", "I am Quill.")
        assert {a, b} == {"I am SmolLM.", "I am Quill."} and "random" in note
        assert (a == "I am Quill.") == (pair["a_is"] == "tuned")
        seen_orders.add(pair["a_is"])
    assert seen_orders == {"base", "tuned"}, "the order must really be random"

    pair, a, b, _ = playground_tab.blind_pair(ctx, "r1", "Who are you?", "I am SmolLM.", "I am Quill.")
    choice = "A" if pair["a_is"] == "tuned" else "B"  # vote for the tuned answer
    state, message = playground_tab.blind_vote(ctx, "r1", pair, choice)
    assert state is None and f"A was the **{pair['a_is']}** model" in message and "tuned wins 1 of 1" in message
    votes = [json.loads(line) for line in (run_dir / "ab_votes.jsonl").read_text().splitlines()]
    assert len(votes) == 1 and votes[0]["winner"] == "tuned" and votes[0]["prompt"] == "Who are you?"
    assert evaluate.ab_summary(run_dir)["tuned_wins"] == 1  # what the Evaluation tab and `eval` read


def test_blind_ab_bad_input_gets_a_message(ctx_and_run):
    ctx, _ = ctx_and_run
    with pytest.raises(runs.RunError, match="generate side by side first"):
        playground_tab.blind_pair(ctx, "r1", "Who are you?", "", "")
    with pytest.raises(runs.RunError, match="pick a run first"):
        playground_tab.blind_pair(ctx, None, "p", "a", "b")
    with pytest.raises(runs.RunError, match="no pair on screen"):
        playground_tab.blind_vote(ctx, "r1", None, "A")

"""The Evaluation tab's handlers, called as plain functions on a run folder written by hand (no
model needed), and a build smoke test that checks the named API events."""

import json
import random

import gradio as gr
import pytest

from tuning import evaluate
from tuning.config import TrainConfig
from tuning.ui import evaluation_tab as tab


@pytest.fixture
def ws(tmp_path):
    run = tmp_path / "runs" / "r1"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(TrainConfig().to_yaml())
    (run / "evaluation.json").write_text(json.dumps({
        "step": 60, "eval_rows": 4, "method": "lora", "max_new_tokens": 64, "seconds": {"total": 12.3},
        "checks_complete": True,
        "eval_loss": 0.5, "base_eval_loss": 2.0, "perplexity": 1.6487, "base_perplexity": 7.389,
        "probes": [{"prompt": "Who are you?", "base": "I am SmolLM.", "tuned": "I am Quill.\n— Quill"}],
        "checks": {"by_kind": evaluate.summarize_checks([
            {"kind": "identity", "base_pass": False, "tuned_pass": True},
            {"kind": "identity", "base_pass": False, "tuned_pass": True},
            {"kind": "control", "base_pass": True, "tuned_pass": True},
            {"kind": "control", "base_pass": True, "tuned_pass": False}]),
            "rows": [{"prompt": "Capital of France?", "base": "Paris.", "tuned": "Paris.\n— Quill"}]}}))
    lines = [{"step": 20, "checkpoint": "checkpoint-20", "answers": [
                 {"prompt": "Who are you?", "base": "I am SmolLM.", "tuned": "I am SmolLM."}]},
             {"step": 40, "checkpoint": "checkpoint-40", "answers": [
                 {"prompt": "Who are you?", "base": "I am SmolLM.", "tuned": "I am Quill."}]},
             {"step": 60, "checkpoint": "final", "answers": [
                 {"prompt": "Who are you?", "base": "I am SmolLM.", "tuned": "I am Quill."}]}]
    (run / "probe_answers.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "runs" / "empty").mkdir()  # nothing to evaluate: not offered
    return tmp_path


def test_load_run_shows_losses_checks_gallery_and_votes(ws):
    assert tab.run_choices(ws) == ["r1"]
    verdict, losses, checks, slider, label, probes, ab = tab.load_run(ws, "r1")
    assert "identity 2/2 (base 0/2)" in verdict and "control 1/2 (base 2/2)" in verdict
    assert losses == [["held-out loss", 2.0, 0.5, -1.5], ["perplexity", 7.389, 1.6487, -5.7403]]
    assert checks == [["identity", 2, 0, 0.0, 2, 100.0, 100.0], ["control", 2, 2, 100.0, 1, 50.0, -50.0]]
    assert slider.maximum == 2 and slider.value == 2 and slider.interactive
    assert "3 of 3" in label and "final" in label
    assert probes == [["Who are you?", "I am SmolLM.", "I am Quill.", "same"]]
    assert ab == "no votes yet"


def test_gallery_steps_through_checkpoints_and_marks_changes(ws):
    label, rows = tab.gallery(ws, "r1", 0)
    assert "step 20" in label and rows[0][2] == "I am SmolLM." and rows[0][3] == ""
    assert len(tab.GALLERY_WIDTHS) == len(tab.GALLERY_HEADERS) == len(rows[0])  # fixed widths for every column
    label, rows = tab.gallery(ws, "r1", 1)
    assert "step 40" in label and rows[0][3] == "changed"
    assert tab.gallery(ws, "r1", 99)[0] == tab.gallery(ws, "r1", 2)[0], "out of range clamps to the last"


def test_blind_ab_round_trip_persists(ws):
    rng = random.Random(1)
    pair, prompt, a, b = tab.ab_next(ws, "r1", "", rng)
    assert prompt.startswith("**Prompt:**") and {a, b} in ({"I am SmolLM.", "I am Quill.\n— Quill"},
                                                          {"Paris.", "Paris.\n— Quill"})
    tuned_side = "A" if pair["a_is"] == "tuned" else "B"
    summary, *_next = tab.ab_vote(ws, "r1", pair, tuned_side, rng)
    assert summary == "tuned wins 1 of 1 (100%); base wins 0, ties 0"
    assert _next[0]["prompt"] != pair["prompt"], "the next pair prefers a prompt not voted on yet"
    # A fresh page (an app restart) reads the votes back from the run folder.
    assert tab.load_run(ws, "r1")[-1] == summary
    votes = [json.loads(x) for x in (ws / "runs" / "r1" / "ab_votes.jsonl").read_text().splitlines()]
    assert votes[0]["winner"] == "tuned" and votes[0]["choice"] == tuned_side


def test_bad_input_gets_a_message(ws):
    with pytest.raises(evaluate.EvalError, match="Next pair"):
        tab.ab_vote(ws, "r1", {}, "A")
    with pytest.raises(Exception, match="pick a run first"):
        tab.load_run(ws, "")
    with pytest.raises(Exception, match="not valid"):
        tab.gallery(ws, "../etc", 0)
    # Through the page wrapper the user sees the message, not a traceback.
    wrapped = tab.guarded(lambda: tab.ab_vote(ws, "r1", {}, "A"))
    with pytest.raises(gr.Error, match="press 'Next pair' first"):
        wrapped()


def test_tab_builds_with_named_api_events(ws):
    with gr.Blocks() as demo:
        with gr.Tab("Evaluation"):
            tab.build_evaluation_tab(ws)
    names = {dep.get("api_name") for dep in demo.config["dependencies"]}
    assert {"evaluate_run", "eval_load", "probe_gallery", "ab_next", "ab_vote_a", "ab_vote_b",
            "ab_vote_tie"} <= names


def test_gradio_client_drives_the_blind_ab(ws):
    """The named events through the real server: the pair shown by ab_next is the one ab_vote_* scores
    (it lives in the session's gr.State), and the vote lands in the run folder."""
    from gradio_client import Client

    with gr.Blocks() as demo:
        tab.build_evaluation_tab(ws)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        verdict, *_rest = client.predict("r1", api_name="/eval_load")
        assert "identity 2/2" in verdict
        prompt, a, b = client.predict("r1", "", api_name="/ab_next")
        assert prompt.startswith("**Prompt:**") and a != b
        tuned_is_a = a in ("I am Quill.\n— Quill", "Paris.\n— Quill")
        summary, *_next = client.predict("r1", api_name="/ab_vote_a")
        expected = "tuned wins 1 of 1" if tuned_is_a else "tuned wins 0 of 1"
        assert summary.startswith(expected)
        assert evaluate.ab_summary(ws / "runs" / "r1")["votes"] == 1
        # A vote with no pair on screen (a fresh session): a message, not a traceback.
        with pytest.raises(Exception, match="press 'Next pair' first"):
            Client(demo.local_url, verbose=False).predict("r1", api_name="/ab_vote_b")
    finally:
        demo.close()

"""The Evaluation tab's handlers, called as plain functions on a run folder written by hand (no
model needed), and the page through a real server: the named API events and the blind A/B."""

import random

import gradio as gr
import pytest

from tuning.evaluation import ab, evaluate
from tuning import runs
from tuning.config import TrainConfig
from tuning.ui import evaluation_tab as tab
from tuning.ui.common import AppContext, guarded

QUILL_ANSWERS = ("I am Quill.\n— Quill", "Paris.\n— Quill")


@pytest.fixture
def ctx(tmp_path):
    run = runs.run_dir(tmp_path, "r1")
    run.mkdir(parents=True)
    runs.write_config(run, TrainConfig())
    runs.write_evaluation(run, {
        "step": 60, "eval_rows": 4, "method": "lora", "max_new_tokens": 64, "seconds": {"total": 12.3},
        "checks_complete": True,
        "eval_loss": 0.5, "base_eval_loss": 2.0, "perplexity": 1.6487, "base_perplexity": 7.389,
        "probes": [{"prompt": "Who are you?", "base": "I am SmolLM.", "tuned": "I am Quill.\n— Quill"}],
        "checks": {"by_kind": evaluate.summarize_checks([
            {"kind": "identity", "base_pass": False, "tuned_pass": True},
            {"kind": "identity", "base_pass": False, "tuned_pass": True},
            {"kind": "control", "base_pass": True, "tuned_pass": True},
            {"kind": "control", "base_pass": True, "tuned_pass": False}]),
            "rows": [{"prompt": "Capital of France?", "base": "Paris.", "tuned": "Paris.\n— Quill"}]}})
    for step, checkpoint, tuned in ((20, "checkpoint-20", "I am SmolLM."), (40, "checkpoint-40", "I am Quill."),
                                    (60, "final", "I am Quill.")):
        runs.append_probe_answers(run, {"step": step, "checkpoint": checkpoint, "answers": [
            {"prompt": "Who are you?", "base": "I am SmolLM.", "tuned": tuned}]})
    runs.run_dir(tmp_path, "empty").mkdir()  # nothing to evaluate: not offered
    return AppContext(tmp_path)


def test_load_run_shows_losses_checks_gallery_and_votes(ctx):
    assert tab.run_choices(ctx) == ["r1"]
    shown = tab.load_run(ctx, "r1")
    assert set(shown) <= set(tab.SHOWN), "every value has a component in the event's outputs"
    assert "identity 2/2 (base 0/2)" in shown["verdict"] and "control 1/2 (base 2/2)" in shown["verdict"]
    assert shown["losses"] == [["held-out loss", 2.0, 0.5, -1.5], ["perplexity", 7.389, 1.6487, -5.7403]]
    assert shown["checks"] == [["identity", 2, 0, 0.0, 2, 100.0, 100.0], ["control", 2, 2, 100.0, 1, 50.0, -50.0]]
    slider = shown["step"]
    assert slider.maximum == 2 and slider.value == 2 and slider.interactive
    assert "3 of 3" in shown["step_label"] and "final" in shown["step_label"]
    assert shown["probes"] == [["Who are you?", "I am SmolLM.", "I am Quill.", "same"]]
    assert "no votes yet" in shown["ab_tally"]
    assert shown["pair"] is None, "picking a run closes any open vote"


def test_refresh_reads_the_picked_run_again(ctx, tmp_path):
    """A run picked while it trained shows "no evaluation yet"; once its evaluation is written, Refresh
    list shows it (picking the same run again fires no change event in the page)."""
    run = runs.run_dir(tmp_path, "r2")
    run.mkdir(parents=True)
    runs.write_config(run, TrainConfig())
    assert "No evaluation yet" in tab.load_run(ctx, "r2")["verdict"]
    runs.write_evaluation(run, {**runs.read_evaluation(runs.run_dir(tmp_path, "r1")), "eval_loss": 0.25})
    again = tab.reload_shown(ctx, "r2")
    assert "No evaluation yet" not in again["verdict"] and again["losses"][0][2] == 0.25
    assert tab.reload_shown(ctx, None) == {} and tab.reload_shown(ctx, "") == {}


def test_run_choices_come_from_the_record(ctx):
    """An adapter, a complete checkpoint or an evaluation makes a run worth offering; an incomplete
    checkpoint does not."""
    ckpt = runs.checkpoint_dir(runs.run_dir(ctx.workspace, "empty"), 10)
    ckpt.mkdir(parents=True)
    assert tab.run_choices(ctx) == ["r1"]
    runs.mark_complete(ckpt)
    assert tab.run_choices(ctx) == ["r1", "empty"]


def test_gallery_steps_through_checkpoints_and_marks_changes(ctx):
    label, rows = tab.gallery(ctx, "r1", 0)
    assert "step 20" in label and rows[0][2] == "I am SmolLM." and rows[0][3] == ""
    assert len(tab.GALLERY_WIDTHS) == len(tab.GALLERY_HEADERS) == len(rows[0])  # fixed widths for every column
    label, rows = tab.gallery(ctx, "r1", 1)
    assert "step 40" in label and rows[0][3] == "changed"
    assert tab.gallery(ctx, "r1", 99)[0] == tab.gallery(ctx, "r1", 2)[0], "out of range clamps to the last"


def test_blind_ab_round_trip_persists(ctx):
    rng = random.Random(1)
    shown = tab.ab_next(ctx, "r1", "", rng)
    pair = shown["pair"]
    assert isinstance(pair, ab.BlindPair), "the pair (which side is tuned) stays in the server-side state"
    assert shown["pair_prompt"].startswith("**Prompt:**")
    assert {shown["answer_a"], shown["answer_b"]} in ({"I am SmolLM.", "I am Quill.\n— Quill"},
                                                      {"Paris.", "Paris.\n— Quill"})
    tuned_side = "A" if pair.a_is == "tuned" else "B"
    voted = tab.ab_vote(ctx, "r1", pair, tuned_side)
    assert voted["ab_tally"] == "Votes so far: tuned wins 1 of 1 (100%); base wins 0, ties 0."
    # The vote reveals which was which; the voted answers stay on screen until Next pair.
    assert f"A was the **{pair.a_is}** model" in voted["ab_note"] and voted["pair"] is None
    assert "answer_a" not in voted and "answer_b" not in voted
    assert tab.ab_next(ctx, "r1", "", rng)["pair"].prompt != pair.prompt, "the next pair prefers an unvoted prompt"
    # A fresh page (an app restart) reads the votes back from the run folder.
    assert tab.load_run(ctx, "r1")["ab_tally"] == voted["ab_tally"]
    (vote,) = runs.read_votes(runs.run_dir(ctx.workspace, "r1"))
    assert vote["winner"] == "tuned" and vote["choice"] == tuned_side and vote["prompt"] == pair.prompt


def test_bad_input_gets_a_message(ctx):
    with pytest.raises(runs.RunError, match="no pair on screen"):
        tab.ab_vote(ctx, "r1", None, "A")
    assert tab.load_run(ctx, "")["verdict"].startswith("Pick a run above")  # no run picked: not an error
    with pytest.raises(runs.RunError, match="not valid"):
        tab.gallery(ctx, "../etc", 0)
    with pytest.raises(runs.RunError, match="evaluate it first"):
        tab.ab_next(ctx, "empty", "")
    # Through the page wrapper the user sees the message, not a traceback.
    with pytest.raises(gr.Error, match="no pair on screen for this run"):
        guarded(tab.ab_vote)(ctx, "r1", None, "A")


def test_tab_builds_with_named_api_events(ctx):
    with gr.Blocks() as demo:
        with gr.Tab("Evaluation"):
            parts = tab.build(ctx)
    assert isinstance(parts, tab.EvaluationParts) and isinstance(parts.run, gr.Dropdown)
    names = {dep.get("api_name") for dep in demo.config["dependencies"]}
    assert {"evaluate_run", "eval_load", "probe_gallery", "ab_next", "ab_vote_a", "ab_vote_b",
            "ab_vote_tie"} <= names


def test_gradio_client_drives_the_blind_ab(ctx):
    """The named events through the real server: the pair shown by ab_next is the one ab_vote_* scores
    (it lives in the session's gr.State, the client never holds it), and the vote lands in the run."""
    from gradio_client import Client

    with gr.Blocks() as demo:
        tab.build(ctx)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        verdict, *_rest = client.predict("r1", api_name="/eval_load")
        assert "identity 2/2" in verdict
        prompt, a, b, *_rest = client.predict("r1", "", api_name="/ab_next")
        assert prompt.startswith("**Prompt:**") and a != b
        tuned_is_a = a in QUILL_ANSWERS
        _prompt, _a, _b, note, tally = client.predict("r1", api_name="/ab_vote_a")
        assert tally.startswith("Votes so far: tuned wins 1 of 1" if tuned_is_a else "Votes so far: tuned wins 0 of 1")
        assert f"A was the **{'tuned' if tuned_is_a else 'base'}** model" in note
        assert runs.ab_summary(runs.run_dir(ctx.workspace, "r1"))["votes"] == 1
        # A vote with no pair on screen (a fresh session): a message, not a traceback.
        with pytest.raises(Exception, match="no pair on screen for this run"):
            Client(demo.local_url, verbose=False).predict("r1", api_name="/ab_vote_b")
    finally:
        demo.close()


def test_the_evaluation_api_takes_a_run_made_after_the_page_loaded(tmp_path):
    """An API client names a run the page's picker has not listed yet: the picker lets it through and
    the handler checks it (an unknown id is refused by name, not by the picker's choice list)."""
    import gradio as gr

    import app
    from tuning import runs

    demo = app.build_demo(tmp_path / "ws")
    picker = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Run"
                  and b.allow_custom_value)
    assert picker.preprocess("made-later") == "made-later"
    load = next(f.fn for f in demo.fns.values() if f.api_name == "eval_load")
    (box,) = [value for block, value in load("made-later").items() if "error-box" in (block.elem_classes or [])]
    assert "no run 'made-later'" in box["value"] and box["visible"] is True  # said in the tab's error box
    assert runs.run_ids(tmp_path / "ws") == []

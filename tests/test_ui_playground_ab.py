"""Blind A/B inside the Playground: both models answer a prompt of the pair's own, shown as A and B in
random order with nothing saying which is which; one vote saved, then revealed; the vote carries
nothing but the choice. And the chat around it: each turn tied to its own prompt, a status line
instead of an error, the empty state before a run exists."""

import inspect

import gradio as gr
import pytest

from tuning.evaluation import ab
from tuning import runs
from tuning.config import TrainConfig
from tuning.ui import playground_tab
from tuning.ui.common import AppContext

BASE, TUNED = "I am SmolLM.", "I am Quill."


@pytest.fixture
def ctx_and_run(tmp_path):
    ctx = AppContext(tmp_path / "ws")
    run_dir = runs.run_dir(ctx.workspace, "r1")
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, TrainConfig())
    return ctx, run_dir


def generated(run_id="r1", base=BASE, tuned=TUNED):
    return playground_tab.Generated(run_id, "Who are you?", base, tuned)


class FakeComparer:
    """Answers every prompt with BASE and TUNED (what the handlers do around the model is under test)."""
    precision_label, method = "4-bit NF4 (as trained)", "qlora"

    def __init__(self):
        self.asked = []

    def generate(self, prompts, adapter, system, settings):
        self.asked.append(prompts)
        return [(BASE, TUNED) for _ in prompts]

    def stream_chat(self, base_conversation, tuned_conversation, adapter, settings, time_limit_s=None):
        self.asked.append((base_conversation, tuned_conversation))
        yield "I", "I"
        yield BASE, TUNED


@pytest.fixture
def fake(ctx_and_run, monkeypatch):
    ctx, run_dir = ctx_and_run
    comparer = FakeComparer()
    monkeypatch.setattr(playground_tab, "_adapter", lambda ctx, run_id, checkpoint: (run_dir, runs.adapter_dir(run_dir)))
    monkeypatch.setattr(playground_tab, "_load", lambda ctx, path, full: comparer)
    return comparer


SETTINGS = (8, 0, 1, 1, 0)


def blind(ctx, run_id="r1", prompt="Who are you?"):
    return playground_tab.open_blind(ctx, run_id, "final", prompt, "", "as trained", *SETTINGS)


def test_blind_pair_is_generated_unlabelled_then_the_vote_reveals(ctx_and_run, fake):
    ctx, run_dir = ctx_and_run
    seen_orders = set()
    for _ in range(20):
        opened = blind(ctx)
        pair = opened["pair"]
        assert {opened["answer_a"], opened["answer_b"]} == {BASE, TUNED} and "random" in opened["ab_note"]
        assert (opened["answer_a"] == TUNED) == (pair.a_is == "tuned")
        # Nothing on the page says which is which before the vote.
        assert "base" not in opened["ab_note"] and "tuned" not in opened["ab_note"]
        assert "base" not in opened["pair_prompt"].lower() and "tuned" not in opened["pair_prompt"].lower()
        seen_orders.add(pair.a_is)
    assert seen_orders == {"base", "tuned"}, "the order must really be random"
    assert fake.asked[-1] == ["Who are you?"], "the pair answers the blind prompt, generated fresh"

    choice = "A" if pair.a_is == "tuned" else "B"  # vote for the tuned answer
    voted = playground_tab.blind_vote(ctx, "r1", pair, choice)
    assert voted["pair"] is None, "a pair is voted on once"
    assert f"A was the **{pair.a_is}** model" in voted["ab_note"] and "tuned wins 1 of 1" in voted["ab_tally"]
    assert f"you chose {choice} (the tuned model)" in voted["ab_note"]
    assert "answer_a" not in voted and "answer_b" not in voted, "the voted answers stay on screen, revealed"
    (vote,) = runs.read_votes(run_dir)
    assert vote["winner"] == "tuned" and vote["prompt"] == "Who are you?" and {vote["a"], vote["b"]} == {BASE, TUNED}
    assert runs.ab_summary(run_dir)["tuned_wins"] == 1  # what the Evaluation tab and `eval` read


def test_blind_ab_bad_input_gets_a_message(ctx_and_run, fake):
    ctx, run_dir = ctx_and_run
    with pytest.raises(runs.RunError, match="type the prompt both models should answer"):
        blind(ctx, prompt="  ")
    with pytest.raises(runs.RunError, match="at most 4000 characters"):
        blind(ctx, prompt="x" * 4001)
    fake.generate = lambda prompts, adapter, system, settings: [(BASE, BASE)]
    same = blind(ctx)
    assert same["pair"] is None and "nothing to judge" in same["ab_note"]
    with pytest.raises(runs.RunError, match="no pair on screen"):
        playground_tab.blind_vote(ctx, "r1", None, "A")
    assert runs.read_votes(run_dir) == []


def test_the_vote_carries_only_the_choice(ctx_and_run):
    """No answer text can come from the page: the handler takes none, and the three vote buttons
    send only the run picker and the server-side pair."""
    ctx, _ = ctx_and_run
    assert list(inspect.signature(playground_tab.blind_vote).parameters) == ["ctx", "run_id", "pair", "choice"]
    assert list(inspect.signature(playground_tab.open_blind).parameters)[:3] == ["ctx", "run_id", "checkpoint"]
    with gr.Blocks() as demo:
        parts = playground_tab.build(ctx)
    votes = [fn for fn in demo.fns.values() if fn.name == "blind_vote"]
    opens = [fn for fn in demo.fns.values() if fn.name == "open_blind"]
    assert len(votes) == 3 and len(opens) == 1
    for fn in votes:
        assert fn.inputs[0] is parts.run and isinstance(fn.inputs[1], gr.State) and len(fn.inputs) == 2
    for fn in votes + opens:
        assert fn.api_visibility == "private"
        assert not any(isinstance(i, (gr.Chatbot, gr.JSON)) for i in fn.inputs), "no answer text from the page"


def play(steps, page=None):
    """The page's view after each yield of a turn: the values as Gradio would apply them."""
    page = dict(page or {})
    for step in steps:
        page.update({k: v for k, v in step.items()  # a label-only update leaves a chat's messages as they are
                     if not (k.endswith("_chat") and isinstance(v, dict) and "value" not in v)})
        page.setdefault("updates", []).append(step)
    return page


def turn(ctx, prompt, page=None, run_id="r1"):
    page = page or {}
    return play(playground_tab.chat_turn(ctx, run_id, "final", prompt, "", "as trained", page.get("base_chat", []),
                                         page.get("tuned_chat", []), *SETTINGS), page)


def test_a_turn_streams_under_its_own_prompt_and_is_kept_server_side(ctx_and_run, fake):
    """The first yield puts the prompt in both chats, turns Send off and Stop on, says the model is
    loading; the answers stream under that prompt; the last yield keeps the answer server-side and
    turns Send back on."""
    ctx, _ = ctx_and_run
    steps = list(playground_tab.chat_turn(ctx, "r1", "final", "Who are you?", "", "as trained", [], [], *SETTINGS))
    first = steps[0]
    assert first["base_chat"] == first["tuned_chat"] == [{"role": "user", "content": "Who are you?"},
                                                         {"role": "assistant", "content": ""}]
    assert "prompt" not in first, "the page empties the box itself, after reading it (a late update could wipe a new prompt)"
    assert first["generate"]["interactive"] is False and first["stop"]["interactive"] is True
    assert first["status"].startswith("Loading the model") and first["last"] is None and first["pair"] is None
    assert steps[1]["tuned_chat"]["label"] == "Tuned — r1, final adapter"
    assert steps[-2]["base_chat"][-1] == {"role": "assistant", "content": BASE}
    assert steps[-2]["tuned_chat"][-1] == {"role": "assistant", "content": TUNED}
    last = steps[-1]
    assert last["generate"]["interactive"] is True and last["stop"]["interactive"] is False
    assert last["status"].startswith("Done: same prompt") and "greedy · up to 8 new tokens" in last["status"]
    assert last["last"] == playground_tab.Generated("r1", "Who are you?", BASE, TUNED)


def test_second_turn_sends_each_column_its_own_history(ctx_and_run, fake):
    ctx, _ = ctx_and_run
    page = turn(ctx, "Who are you?")
    page = turn(ctx, "And what do you do?", page)
    base_conversation, tuned_conversation = fake.asked[-1]
    assert base_conversation == [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": BASE},
                                 {"role": "user", "content": "And what do you do?"}]
    assert tuned_conversation == [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": TUNED},
                                  {"role": "user", "content": "And what do you do?"}]
    assert [m["content"] for m in page["tuned_chat"]] == ["Who are you?", TUNED, "And what do you do?", TUNED]
    assert page["last"].context == tuple(tuned_conversation[:-1])


def test_two_prompts_back_to_back_each_answer_under_its_own(ctx_and_run, fake):
    """The second prompt's event read the chats before the first answer landed (the worst case): its
    output still shows its own prompt with its own answer, never the first's answer under it."""
    ctx, _ = ctx_and_run
    first = turn(ctx, "Who are you?")
    second = turn(ctx, "What is the capital of Italy?")  # same stale (empty) chats as inputs
    for page, prompt in ((first, "Who are you?"), (second, "What is the capital of Italy?")):
        assert [m["content"] for m in page["base_chat"]] == [prompt, BASE]
        assert page["last"].prompt == prompt


def test_a_turn_while_another_runs_in_the_session_is_refused_visibly(ctx_and_run, fake):
    ctx, _ = ctx_and_run
    running = playground_tab.chat_turn(ctx, "r1", "final", "Who are you?", "", "as trained", [], [], *SETTINGS)
    next(running)  # inside the first turn now
    refused = turn(ctx, "Second?", {"base_chat": [{"role": "user", "content": "Who are you?"}]})
    assert "one generation at a time" in refused["status"] and refused["status"].startswith("**Stopped:**")
    assert refused["prompt"] == "Second?", "the refused prompt stays in the box"
    assert [m["content"] for m in refused["base_chat"]] == ["Who are you?"], "the chats are left as they were"
    assert refused["generate"]["interactive"] is True
    done = play(running)
    assert [m["content"] for m in done["tuned_chat"]] == ["Who are you?", TUNED]


def test_bad_input_and_no_run_end_in_the_status_line(ctx_and_run, fake):
    ctx, _ = ctx_and_run
    for run_id, prompt, expected in ((None, "Hi", "Pick a run above"),  # r1 exists; none picked
                                     ("r1", "   ", "type a prompt first"),
                                     ("r1", "x" * 4001, "at most 4000 characters (this one has 4001)")):
        (only,) = list(playground_tab.chat_turn(ctx, run_id, "final", prompt, "", "as trained", [], [], *SETTINGS))
        assert only["status"].startswith("**Not sent:**") and expected in only["status"]
        assert only["generate"]["interactive"] is True and "base_chat" not in only
    (bad,) = list(playground_tab.chat_turn(ctx, "r1", "final", "Hi", "", "as trained", [], [], 5000, 0, 1, 1, 0))
    assert "max_new_tokens: 5000 is outside 1..1024" in bad["status"]


def test_a_failure_mid_turn_is_shown_and_send_comes_back(ctx_and_run, fake):
    ctx, _ = ctx_and_run

    def broken(*args, **kwargs):
        raise runs.RunError("the model could not be loaded")
        yield

    fake.stream_chat = broken
    page = turn(ctx, "Who are you?")
    assert page["status"] == "**Stopped:** the model could not be loaded"
    assert page["generate"]["interactive"] is True and page["stop"]["interactive"] is False
    assert page["base_chat"] == [] and page["prompt"] == "Who are you?", "nothing answered: the prompt goes back"


def test_history_from_the_page_is_clamped():
    long = [{"role": "user", "content": [{"type": "text", "text": "q" * 5000}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a" * 5000}]}] * 30
    kept = playground_tab.history(long)
    assert len(kept) == playground_tab.MAX_HISTORY_MESSAGES and kept[0]["content"] == "q" * 5000
    context = playground_tab.prompt_context(kept)
    assert sum(len(m["content"]) for m in context) <= playground_tab.MAX_HISTORY_CHARS and len(context) == 2
    assert playground_tab.history([{"role": "system", "content": "x"}, "junk", None]) == []
    # a turn stopped before its first token is left out of the prompt (user and assistant alternate)
    stopped = [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""},
               {"role": "user", "content": "b"}, {"role": "assistant", "content": "B"}]
    assert playground_tab.prompt_context(stopped) == stopped[2:]


def test_stop_and_clear(ctx_and_run):
    ctx, _ = ctx_and_run
    stopped = playground_tab.stopped(ctx)  # Send comes back with the turn's own end, not here
    assert "generate" not in stopped and stopped["stop"]["interactive"] is False and stopped["status"] == "Stopping…"
    assert not ctx.stopping  # no turn was running: nothing is marked for the next one
    cleared = playground_tab.cleared()
    assert cleared["base_chat"] == cleared["tuned_chat"] == [] and cleared["last"] is None
    assert cleared["clear"]["interactive"] is True and cleared["generate"]["interactive"] is True


def test_the_page_wires_one_turn_event_that_no_other_click_cancels(ctx_and_run):
    ctx, _ = ctx_and_run
    with gr.Blocks() as demo:
        playground_tab.build(ctx)
    deps = {d.get("api_name") or fn.name: (d, fn) for d, fn in zip(demo.config["dependencies"], demo.fns.values())}
    (turn_dep, turn_fn), = [(d, fn) for d, fn in zip(demo.config["dependencies"], demo.fns.values())
                            if fn.name == "chat_turn"]
    assert len(turn_dep["targets"]) == 2, "Send and Enter are one event"
    assert turn_fn.trigger_mode == "always_last" and turn_fn.concurrency_limit == 1
    assert turn_fn.concurrency_id == "generate" and "#chat-prompt textarea" in turn_fn.js
    # Gradio wires `cancels=` as a second event on the same click, which may run after the turn has
    # ended and cancel the next one: Stop asks the turn itself to end (AppContext.stopping), and Clear
    # is off while a turn streams.
    assert not any(turn_fn._id in (d.get("cancels") or []) for d in demo.config["dependencies"])
    assert {"stopped", "cleared"} <= set(deps)


def test_picking_another_run_forgets_the_last_answer(ctx_and_run):
    ctx, _ = ctx_and_run
    picked = playground_tab.picked_run(ctx, "r1")
    assert picked["last"] is None and picked["pair"] is None and picked["base_chat"] == []
    assert "no votes yet" in picked["ab_tally"] and picked["notice"] == ""
    assert picked["checkpoint"]["choices"] == ["final"]


def test_no_run_picked_shows_what_to_do_not_an_error(tmp_path):
    """What fires on page load and on picker change, with nothing to pick yet."""
    ctx = AppContext(tmp_path / "empty")
    picked = playground_tab.picked_run(ctx, None)
    assert picked["notice"] == playground_tab.EMPTY and "train one in **Train**" in picked["notice"]
    assert picked["ab_tally"] == "" and picked["pair"] is None
    assert playground_tab.refreshed(ctx, None)["notice"] == playground_tab.EMPTY
    runs.run_dir(ctx.workspace, "r0").mkdir(parents=True)
    assert playground_tab.picked_run(ctx, None)["notice"] == playground_tab.PICK


def test_playground_parts_name_what_app_wires(ctx_and_run):
    ctx, _ = ctx_and_run
    with gr.Blocks():
        parts = playground_tab.build(ctx)
    assert isinstance(parts, playground_tab.PlaygroundParts)
    assert isinstance(parts.run, gr.Dropdown) and isinstance(parts.checkpoint, gr.Dropdown)

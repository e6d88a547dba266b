"""The Playground's chat with the real embedded model: a second turn answers in each column's own
conversation, and a stream nobody reads any more (Stop, a cancel, a closed page: Gradio closes the
generator) stops its generation thread within a step or two and frees the model for the next one.

The adapter is a fresh LoRA with random weights (no training needed): the tuned column then answers
differently from the base, which is all these tests need to tell the two histories apart."""

from __future__ import annotations

import dataclasses
import threading
import time

import gradio as gr
import pytest

from tuning.infer import generation
from tuning import runs
from tuning.config import TrainConfig
from tuning.ui import playground_tab
from tuning.ui.common import AppContext

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, embedded_model_dir):
    """A workspace with run "r1": the embedded model (LoRA, full precision) and a random adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from conftest import share_models

    workspace = share_models(tmp_path_factory.mktemp("chat") / "ws", embedded_model_dir)
    run_dir = runs.run_dir(workspace, "r1")
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, TrainConfig(method="lora"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(runs.adapter_dir(run_dir))
    del model
    return AppContext(workspace)


def page_after(steps, page=None) -> dict:
    """The chats, status and state as the page holds them after a turn's yields."""
    page = dict(page or {})
    for step in steps:
        page.update({k: v for k, v in step.items() if not (k.endswith("_chat") and isinstance(v, dict)
                                                            and "value" not in v)})
    return page


def turn(ctx, prompt, page=None, settings=(6, 0, 1, 1, 0)):
    page = page or {}
    return page_after(playground_tab.chat_turn(ctx, "r1", "final", prompt, "", "as trained",
                                               page.get("base_chat", []), page.get("tuned_chat", []), *settings), page)


def texts(chat) -> list[str]:
    return [m["content"] for m in chat]


@pytest.fixture
def asked(monkeypatch):
    """The conversations each generate_rows call received (the real one still runs)."""
    seen = []
    real = generation.generate_rows

    def spy(model, tokenizer, conversations, names, *args, **kwargs):
        seen.append([list(c) for c in conversations])
        return real(model, tokenizer, conversations, names, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_rows", spy)
    return seen


def test_two_turns_each_column_continues_its_own_conversation(chat_run, asked):
    ctx = chat_run
    first = turn(ctx, "Who are you?")
    assert first["status"].startswith("Done: same prompt"), first["status"]
    base1, tuned1 = first["base_chat"][-1]["content"], first["tuned_chat"][-1]["content"]
    assert base1 and tuned1 and base1 != tuned1, "the random adapter must change the answer for this test to tell"
    assert asked[-1] == [[{"role": "user", "content": "Who are you?"}]] * 2

    second = turn(ctx, "Say that again.", first)
    assert second["status"].startswith("Done: same prompt"), second["status"]
    base_conversation, tuned_conversation = asked[-1]
    assert base_conversation == [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": base1},
                                 {"role": "user", "content": "Say that again."}]
    assert tuned_conversation == [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": tuned1},
                                  {"role": "user", "content": "Say that again."}]
    # The rendered prompt of the tuned row holds the first turn, the tuned answer included.
    comparer = playground_tab._load(ctx, runs.run_dir(ctx.workspace, "r1"), False)
    rendered = comparer.tokenizer.apply_chat_template(tuned_conversation, tokenize=False, add_generation_prompt=True)
    assert rendered.index("Who are you?") < rendered.index(tuned1) < rendered.index("Say that again.")
    # Each answer sits under the prompt it answers, in both columns.
    for chat, column in ((second["base_chat"], "base"), (second["tuned_chat"], "tuned")):
        assert [m["role"] for m in chat] == ["user", "assistant"] * 2
        assert texts(chat)[0] == "Who are you?" and texts(chat)[2] == "Say that again.", column
        assert texts(chat)[1] == (base1 if column == "base" else tuned1)
        assert texts(chat)[3], f"the {column} column answered the second prompt"
    assert second["last"].prompt == "Say that again." and second["last"].tuned == texts(second["tuned_chat"])[3]


def test_two_prompts_back_to_back_get_their_own_answers(chat_run):
    """Two turns whose inputs were read before either answered (a second prompt sent at once): each
    result shows its own prompt with the answers generated for that prompt."""
    ctx = chat_run
    prompts = ("Who are you?", "What is the capital of Italy?")
    pages = [turn(ctx, p) for p in prompts]
    comparer = playground_tab._load(ctx, runs.run_dir(ctx.workspace, "r1"), False)
    adapter = runs.adapter_dir(runs.run_dir(ctx.workspace, "r1"))
    settings = playground_tab._settings(6, 0, 1, 1, 0)
    for page, prompt in zip(pages, prompts):
        (base, tuned), = comparer.generate([prompt], adapter, None, settings)  # the answers to this prompt
        assert texts(page["base_chat"]) == [prompt, base] and texts(page["tuned_chat"]) == [prompt, tuned]


def test_stop_ends_the_running_turn_and_a_late_stop_not_the_next(chat_run, monkeypatch):
    """Stop during a 512-token turn: the turn ends within a few tokens, says so, and turns Send back
    on; a Stop that comes when no turn runs (a click that landed after the turn ended) is nothing to the
    next turn, which answers to the end."""
    ctx = chat_run
    playground_forcing_every_token(ctx, monkeypatch)
    steps = playground_tab.chat_turn(ctx, "r1", "final", "Count to a thousand.", "", "as trained", [], [],
                                     512, 0, 1, 1, 0)
    page, count = {}, 0
    for count, step in enumerate(steps, start=1):
        page = page_after([step], page)
        if count == 4:  # the chats, the model loaded, two tokens
            assert playground_tab.stopped(ctx)["status"] == "Stopping…"
    assert page["status"] == playground_tab.STOPPED and count < 40, (count, page["status"])
    assert page["generate"]["interactive"] is True and page["clear"]["interactive"] is True
    assert wait_gone(5.0) < 2.0 and not ctx.busy and not ctx.stopping
    playground_tab.stopped(ctx)  # no turn runs: nothing to stop
    assert not ctx.stopping
    assert turn(ctx, "Who are you?")["status"].startswith("Done")


def playground_forcing_every_token(ctx, monkeypatch) -> gr.Blocks:
    """The Playground tab on its own, each answer made to run to its max_new_tokens (min_new_tokens
    set to it): a generation certainly still has hundreds of tokens to go when it is cut."""
    forced = playground_tab._settings
    monkeypatch.setattr(playground_tab, "_settings", lambda *a: dataclasses.replace(
        forced(*a), min_new_tokens=int(a[0])))
    with gr.Blocks() as demo:
        playground_tab.build(ctx)
    return demo


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "playground-stream" and t.is_alive()]


def wait_gone(seconds: float) -> float:
    started = time.monotonic()
    while stream_threads() and time.monotonic() - started < seconds:
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("temperature", [0, 0.7], ids=["greedy-loop", "sampling-generate"])
def test_a_closed_stream_stops_its_generation_and_frees_the_model(chat_run, monkeypatch, temperature):
    """Start a 512-token turn through the page's own wrappers (as Gradio calls it), read two tokens,
    close the generator as Gradio does on a cancel or a lost client: the generation thread ends
    within 2 s and the model lock and the session's slot are free. min_new_tokens=512 makes the
    thread certainly still have hundreds of tokens to go when it is closed."""
    ctx = chat_run
    demo = playground_forcing_every_token(ctx, monkeypatch)
    (event,) = [f.fn for f in demo.fns.values() if f.name == "chat_turn"]
    assert not stream_threads()
    comparer = playground_tab._load(ctx, runs.run_dir(ctx.workspace, "r1"), False)
    stream = event("r1", "final", "Count to a thousand.", "", "as trained", [], [], 512, temperature, 0.9, 1.0, 0)
    tokens = 0
    for update in stream:
        answers = [v for k, v in update.items() if getattr(k, "elem_id", None) == "tuned-chat" and isinstance(v, list)]
        if answers and answers[0][-1]["content"]:
            tokens += 1
            if tokens == 2:
                break
    assert tokens == 2 and stream_threads(), "the generation is running"
    stream.close()  # what Gradio's cancel, a closed page and Stop come down to
    took = wait_gone(5.0)
    assert not stream_threads(), "the generation thread is still running after its stream was closed"
    assert took < 2.0, f"the generation thread took {took:.1f} s to stop"
    assert comparer.lock.acquire(timeout=0.5), "the model lock was not released"
    comparer.lock.release()
    assert not ctx.busy, "the session's one-at-a-time slot was not released"
    # The next turn starts at once and answers.
    started = time.monotonic()
    after = turn(ctx, "Who are you?", settings=(4, 0, 1, 1, 0))
    assert after["status"].startswith("Done"), after["status"]
    assert time.monotonic() - started < 30


def test_a_time_limit_ends_a_generation_on_its_own(chat_run):
    """A visitor's generation ends after VISITOR_TIME_LIMIT_S even if the page keeps reading: the same stop.
    Measured in tokens, not seconds (a busy machine is slow, not wrong): 512 are forced, a 1 s limit
    leaves far fewer."""
    ctx = chat_run
    path = runs.run_dir(ctx.workspace, "r1")
    comparer = playground_tab._load(ctx, path, False)
    settings = playground_tab._settings(512, 0, 1, 1, 0)
    settings = dataclasses.replace(settings, min_new_tokens=512)
    conversation = [{"role": "user", "content": "Count to a thousand."}]
    answers = list(comparer.stream_chat(conversation, conversation, runs.adapter_dir(path), settings,
                                        time_limit_s=1.0))
    assert len(comparer.tokenizer(answers[-1][1])["input_ids"]) < 400, "it stopped well before 512 tokens"
    assert not stream_threads()
    # The same limit holds for the whole-answer calls (the /generate API, the probe table).
    (base, tuned), = comparer.generate(["Count to a thousand."], runs.adapter_dir(path), None, settings,
                                       time_limit_s=1.0)
    assert len(comparer.tokenizer(tuned)["input_ids"]) < 400


def test_a_job_cancelled_through_the_server_stops_and_the_next_starts_at_once(chat_run, monkeypatch):
    """Against a launched app, as any client can: join the queue for a 512-token turn, read two
    streamed updates, POST /gradio_api/cancel (what Stop and a client's cancel send); the generation
    thread ends within 2 s and the next turn gets its answer at once, not after the first's 512 tokens."""
    import json
    import uuid

    import httpx

    ctx = chat_run
    demo = playground_forcing_every_token(ctx, monkeypatch)
    (dep,) = [d for d, fn in zip(demo.config["dependencies"], demo.fns.values()) if fn.name == "chat_turn"]
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    base = demo.local_url.rstrip("/") + "/gradio_api"

    def join(client, session, tokens):
        body = {"data": ["r1", "final", "Count to a thousand.", "", "as trained", [], [], tokens, 0, 1, 1, 0],
                "fn_index": dep["id"], "session_hash": session, "event_data": None, "trigger_id": None}
        joined = client.post(f"{base}/queue/join", json=body)
        assert joined.status_code == 200, joined.text
        return joined.json()["event_id"]

    def messages(client, session):
        with client.stream("GET", f"{base}/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:])

    try:
        with httpx.Client(timeout=120) as client:
            session = uuid.uuid4().hex
            event_id = join(client, session, 512)
            streamed = 0
            for message in messages(client, session):
                if message.get("msg") == "process_generating":
                    streamed += 1
                    if streamed == 4:  # the chats, the model loaded, then two tokens
                        break
                assert message.get("msg") != "process_completed", message
            assert stream_threads(), "the generation is running"
            cancelled = client.post(f"{base}/cancel", json={"session_hash": session, "fn_index": dep["id"],
                                                          "event_id": event_id})
            assert cancelled.status_code == 200, cancelled.text
            took = wait_gone(5.0)
            assert not stream_threads() and took < 2.0, f"the generation thread ran on {took:.1f} s after the cancel"
            assert not ctx.busy
            # and the app's process is idle again: generating takes both cores (~6 CPU-seconds in 3 s)
            import psutil

            app = psutil.Process()
            before = app.cpu_times()
            time.sleep(3.0)
            after = app.cpu_times()
            busy = after.user + after.system - before.user - before.system
            assert busy < 1.5, f"{busy:.1f} CPU-seconds used in the 3 s after the cancel"

            session = uuid.uuid4().hex
            started = time.monotonic()
            join(client, session, 4)
            for message in messages(client, session):
                if message.get("msg") == "process_completed":
                    assert message.get("success"), message
                    break
            assert time.monotonic() - started < 60
    finally:
        demo.close()

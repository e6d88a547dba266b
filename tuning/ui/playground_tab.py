"""Playground tab: chat with the base and the tuned model side by side. Each column is a gr.Chatbot
holding its own conversation (the base's history has the base's answers, the tuned's the tuned's);
every turn both answer in ONE mixed-adapter batch (tuning/infer/playground.py), streamed token by token,
with the same seed and settings. The base column runs exactly as the run loaded it (4-bit for
QLoRA) unless full precision is chosen.

One turn is one generator event (`chat_turn`): it appends the prompt to both chats, streams the
answers under it and re-enables Send, so an answer can only ever land under the prompt its own
event appended. While it runs, Send is off and Enter waits (trigger_mode="always_last": the
waiting prompt is read from the box when the answer ends, then sent); the box is emptied in the
browser as a turn starts (CLEAR_PROMPT_JS). Stop asks the running turn to end at its next token
(AppContext.stopping), and the turn turns Send back on; a stream cancelled or left by its client is
closed by Gradio, which stops the generation thread (playground.Comparer.stream_chat).

The blind A/B generates both answers to a prompt of its own, shows them as A and B in random order
with nothing saying which is which, takes the vote (tuning/ui/ab_view.py), then reveals.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from tuning.evaluation import ab
from tuning import runs
from tuning.ui import ab_view, access
from tuning.ui.access import public
from tuning.ui.common import (AppContext, bind, box_hidden, boxed, error_box, friendly, guarded, into, keyed,
                              run_picker_update)

BASE_CHOICES = ("as trained", "full precision")
# Server-side limits (the page's controls have the same ranges; an API caller is held to them too).
MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 1024
# The conversation sent back with each turn: the newest turns that fit (both columns' histories come
# from the page, so a visitor's are clamped here). 12,000 characters is ~3,000 tokens.
MAX_HISTORY_CHARS = 12_000
MAX_HISTORY_MESSAGES = 40
# A visitor's generation on a Space ends after this long (the owner's never does): 1,024 tokens
# of the 135M model take ~60 s on 2 CPU cores.
VISITOR_TIME_LIMIT_S = 180.0
EMPTY = "**No finished run yet:** train one in **Train**, then come back."
PICK = "**Pick a run** above to chat with its base and tuned model."
LOADING = "Loading the model… (the first time takes a while; it then stays loaded)"
COUNTER_JS = f"(text) => `${{(text || '').length}} / {MAX_PROMPT_CHARS} characters`"
# Run by the page as a turn starts, after Gradio has read the event's inputs: the prompt box is
# emptied then, in the browser, so a prompt typed meanwhile is never wiped by a late server update,
# and one waiting for the running turn (trigger_mode="always_last") is read before it is emptied.
CLEAR_PROMPT_JS = """(...inputs) => {
    const box = document.querySelector('#chat-prompt textarea');
    if (box) { box.value = ''; box.dispatchEvent(new Event('input', {bubbles: true})); }
    return inputs;
}"""


@dataclass(frozen=True)
class PlaygroundParts:
    """What app.py wires across tabs: the run, and "tune on my votes" with the config it fills in."""
    run: gr.Dropdown
    checkpoint: gr.Dropdown
    tune_votes: gr.Button
    tune_config: gr.JSON


@dataclass(frozen=True)
class Generated:
    """The side-by-side answer the server last generated (kept in a server-side gr.State): the
    prompt, both answers, and the tuned column's conversation before the prompt."""
    run_id: str
    prompt: str
    base: str
    tuned: str
    context: tuple = field(default=())


# --- plain handlers ------------------------------------------------------------------------------

def notice(ctx: AppContext, run_id: str | None) -> str:
    """What the tab says before there is anything to chat with (never an error)."""
    if run_id:
        return ""
    return PICK if runs.run_ids(ctx.workspace) else EMPTY


def counter_text(text: str | None) -> str:
    """The prompt's length against the limit (the page updates it in the browser: COUNTER_JS)."""
    return f"{len(text or '')} / {MAX_PROMPT_CHARS} characters"


def checkpoint_choices(ctx: AppContext, run_id: str | None) -> list[str]:
    if not run_id:
        return ["final"]
    path = runs.existing_run_dir(ctx.workspace, run_id)
    return ["final", *[c.name for c in reversed(runs.complete_checkpoints(path))]]


def default_probes() -> list[str]:
    """The probes a new run of the default config gets (the demo's list), shown before a run is picked."""
    from tuning import config as config_mod
    from tuning.evaluation import evaluate

    return evaluate.default_probes(config_mod.TrainConfig())


def run_probes(ctx: AppContext, run_id: str | None) -> str:
    """The run's probe prompts (the dataset's list when it has none of its own yet), one a line; the
    demo's list when no run is picked."""
    from tuning.evaluation import evaluate

    if not run_id:
        return "\n".join(default_probes())
    path = runs.existing_run_dir(ctx.workspace, run_id)
    return "\n".join(evaluate.probes_for_run(path, runs.read_config(path), keep=False))  # a public read


def save_probes(ctx: AppContext, run_id: str | None, text: str) -> str:
    """Save the edited prompts as the run's probes: later checkpoints (of a running or resumed run)
    and later evaluations answer them."""
    saved = runs.write_probes(ab_view.run_path(ctx, run_id), text or "")
    return f"Saved {len(saved)} probe prompts for {run_id}: later checkpoints and evaluations answer them."


def _within(name: str, value, low: float, high: float, kind=float):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise runs.RunError(f"{name}: expected a number, got {value!r}") from None
    if not low <= number <= high:
        raise runs.RunError(f"{name}: {number} is outside {low}..{high}")
    return number


def _settings(max_new_tokens, temperature, top_p, repetition_penalty, seed):
    from tuning.infer.playground import GenerationSettings

    return GenerationSettings(max_new_tokens=_within("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS, int),
                              temperature=_within("temperature", temperature, 0, 2),
                              top_p=_within("top_p", top_p, 0.01, 1),
                              repetition_penalty=_within("repetition_penalty", repetition_penalty, 1, 2),
                              seed=_within("seed", seed, 0, 2**31 - 1, int))


def _prompts(*texts: str) -> None:
    for text in texts:
        if len(text or "") > MAX_PROMPT_CHARS:
            raise runs.RunError(f"prompt: at most {MAX_PROMPT_CHARS} characters (this one has {len(text)})")


def _adapter(ctx: AppContext, run_id: str | None, checkpoint: str | None) -> tuple[Path, Path]:
    """The run folder and the adapter that answers, checked before any model loads."""
    path = ab_view.run_path(ctx, run_id)
    if not access.is_owner(ctx) and runs.summarize(path).status in runs.ACTIVE_STATUSES:
        access.require_owner(ctx)  # a visitor's Playground is for finished runs: no model loads mid-training
    return path, runs.current_adapter(path, checkpoint or "final")


def _load(ctx: AppContext, path: Path, full_precision: bool):
    """The run's base model, loaded once and cached (the slow step of a first answer)."""
    from tuning.infer import playground

    return playground.comparer_for_run(path, ctx.workspace, full_precision_base=full_precision)


def _time_limit(ctx: AppContext) -> float | None:
    """A visitor's share of the model: each generation of theirs ends after VISITOR_TIME_LIMIT_S (the
    owner's, and everyone's off a Space, never do)."""
    return None if access.is_owner(ctx) else VISITOR_TIME_LIMIT_S


def _comparer(ctx: AppContext, run_id: str, checkpoint: str, full_precision: bool):
    path, adapter = _adapter(ctx, run_id, checkpoint)
    return _load(ctx, path, full_precision), adapter, path


def labels(comparer, adapter: Path, run: Path) -> tuple[str, str]:
    precision = comparer.precision_label
    if comparer.method == "lora" and "as trained" in precision:
        precision = "full precision"
    which = "final adapter" if adapter == runs.adapter_dir(run) else adapter.name
    return f"Base model — {precision}", f"Tuned — {run.name}, {which}"


def side_by_side(ctx: AppContext, run_id: str, checkpoint: str, prompt: str, system: str = "",
                 settings=None, full_precision: bool = False) -> dict:
    """Both answers at once (no streaming): what the API and the CLI return."""
    if not (prompt or "").strip():
        raise runs.RunError("prompt: type a prompt first")
    _prompts(prompt, system)
    settings = settings or _settings(128, 0, 1, 1, 0)
    with access.one_at_a_time(ctx):
        comparer, adapter, path = _comparer(ctx, run_id, checkpoint, full_precision)
        (base, tuned), = comparer.generate([prompt], adapter, system or None, settings, _time_limit(ctx))
    base_label, tuned_label = labels(comparer, adapter, path)
    return {"base": base, "tuned": tuned, "base_label": base_label, "tuned_label": tuned_label,
            "adapter": str(adapter.relative_to(ctx.workspace)) if adapter.is_relative_to(ctx.workspace)
            else str(adapter)}


# --- the conversation ----------------------------------------------------------------------------

def _text(content) -> str:
    """A Chatbot message's text (Gradio hands content over as a list of {"type": "text", "text"} parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return ""


def history(chat) -> list[dict]:
    """A Chatbot's value as plain {"role", "content"} messages (user and assistant only), clamped:
    it comes from the page, so a visitor's is held to the newest MAX_HISTORY_MESSAGES, each at most
    MAX_HISTORY_CHARS long."""
    messages = [{"role": m["role"], "content": _text(m.get("content"))[:MAX_HISTORY_CHARS]}
                for m in (chat if isinstance(chat, list) else []) if isinstance(m, dict)
                and m.get("role") in ("user", "assistant")]
    return messages[-MAX_HISTORY_MESSAGES:]


def prompt_context(messages: list[dict]) -> list[dict]:
    """What of a column's history goes into the next prompt: whole (prompt, answer) turns, the newest
    that fit in MAX_HISTORY_CHARS. A turn with no answer (stopped before its first token) is left out:
    chat templates expect user and assistant to alternate."""
    turns, asked = [], None
    for message in messages:
        if message["role"] == "user":
            asked = message
        elif asked is not None and message["content"].strip():
            turns.append((asked, message))
            asked = None
    kept, size = [], 0
    for asked, answer in reversed(turns):
        size += len(asked["content"]) + len(answer["content"])
        if size > MAX_HISTORY_CHARS:
            break
        kept[:0] = [asked, answer]
    return kept


def turn_conversations(base_history: list[dict], tuned_history: list[dict], prompt: str,
                       system: str = "") -> tuple[list[dict], list[dict]]:
    """The two conversations one turn answers: the system prompt, each column's own history (the base
    sees the base's answers, the tuned model its own), then the new prompt."""
    head = [{"role": "system", "content": system}] if system else []
    asked = [{"role": "user", "content": prompt}]
    return head + prompt_context(base_history) + asked, head + prompt_context(tuned_history) + asked


def _ready() -> dict:
    """Send and Clear on, Stop off: the state after every turn, however it ended."""
    return {"generate": gr.update(interactive=True), "stop": gr.update(interactive=False),
            "clear": gr.update(interactive=True)}


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, gr.Error) else friendly(exc)


def settings_text(settings) -> str:
    how = "greedy" if settings.temperature <= 0 else f"temperature {settings.temperature:g}, top-p {settings.top_p:g}"
    return (f"{how} · up to {settings.max_new_tokens} new tokens · repetition penalty "
            f"{settings.repetition_penalty:g} · seed {settings.seed}")


def chat_turn(ctx: AppContext, run_id, checkpoint, prompt, system, base_choice, base_chat, tuned_chat, *settings):
    """One turn: the prompt goes under both columns' histories, both answers stream in under it (one
    batch), Send comes back on. Every failure ends in the status line, with Send on again: nothing
    here raises to the page. The answers land under the prompt this call appended, whatever else
    the page does meanwhile (the chats are this event's outputs only)."""
    prompt, system = prompt or "", system or ""
    try:
        if not run_id:
            raise runs.RunError(notice(ctx, None).replace("**", ""))
        if not prompt.strip():
            raise runs.RunError("type a prompt first")
        _prompts(prompt, system)
        chosen = _settings(*settings)
        path, adapter = _adapter(ctx, run_id, checkpoint)
    except Exception as exc:  # noqa: BLE001 - shown in the status line
        yield {**_ready(), "status": f"**Not sent:** {_message(exc)}"}
        return
    before_base, before_tuned = history(base_chat), history(tuned_chat)
    base_conversation, tuned_conversation = turn_conversations(before_base, before_tuned, prompt, system)
    asked = {"role": "user", "content": prompt}

    def chats(base: str, tuned: str) -> dict:
        return {"base_chat": [*before_base, asked, {"role": "assistant", "content": base}],
                "tuned_chat": [*before_tuned, asked, {"role": "assistant", "content": tuned}]}

    base = tuned = ""
    session = access.session_key()
    ctx.stopping.discard(session)  # a Stop meant for an earlier turn
    try:
        with access.one_at_a_time(ctx):
            yield {**chats("", ""), "counter": counter_text(""), "status": LOADING, "last": None, "box": box_hidden(),
                   "generate": gr.update(interactive=False), "stop": gr.update(interactive=True),
                   "clear": gr.update(interactive=False), **ab_view.closed()}
            comparer = _load(ctx, path, base_choice == BASE_CHOICES[1])
            base_label, tuned_label = labels(comparer, adapter, path)
            yield {"status": "Generating…", "base_chat": gr.update(label=base_label),
                   "tuned_chat": gr.update(label=tuned_label)}
            limit = _time_limit(ctx)
            # closing(): the stream's own `finally` (which stops its thread) runs the moment this
            # generator is closed, not whenever the stream object is collected.
            with contextlib.closing(comparer.stream_chat(base_conversation, tuned_conversation, adapter, chosen,
                                                         limit)) as answers:
                for base, tuned in answers:
                    if session in ctx.stopping:  # Stop: closing the stream ends its generation thread
                        ctx.stopping.discard(session)
                        yield {**_ready(), "status": STOPPED}
                        return
                    yield chats(base, tuned)
    except Exception as exc:  # noqa: BLE001 - shown in the status line
        undo = {} if (base or tuned) else {"base_chat": before_base, "tuned_chat": before_tuned, "prompt": prompt,
                                           "counter": counter_text(prompt)}  # nothing answered: as before
        yield {**undo, **_ready(), "status": f"**Stopped:** {_message(exc)}"}
        return
    yield {**_ready(), "status": f"Done: same prompt, same seed, same settings for both ({settings_text(chosen)}).",
           "last": Generated(run_id, prompt, base, tuned, tuple(tuned_conversation[:-1]))}


STOPPED = "Stopped: the answers end where you stopped them; Send continues the conversation."


def stopped(ctx: AppContext) -> dict:
    """Stop pressed: this session's running turn ends at its next token and turns Send back on itself.
    Not a Gradio `cancels=`: that cancel is an event of its own, which can run after the turn has ended
    and the next one started, and would end the next one instead."""
    session = access.session_key()
    with ctx.lock:
        if ("generation", session) in ctx.busy:
            ctx.stopping.add(session)
    return {"stop": gr.update(interactive=False), "status": "Stopping…"}


def cleared() -> dict:
    """A new conversation. Clear is off while a turn streams (Stop ends it): a Clear that cancelled
    turns would also cancel the turn sent right after it, whose task Gradio's late cancel finds running."""
    return {**_ready(), "base_chat": [], "tuned_chat": [], "last": None, "status": "New conversation.",
            **ab_view.closed()}


def probe_table(ctx: AppContext, run_id, checkpoint, prompts_text, system, base_choice, *settings):
    prompts = runs.check_probes(prompts_text or "")
    _prompts(*prompts, system)
    chosen = _settings(*settings)
    with access.one_at_a_time(ctx):
        comparer, adapter, _ = _comparer(ctx, run_id, checkpoint, base_choice == BASE_CHOICES[1])
        pairs = comparer.generate(prompts, adapter, system or None, chosen, _time_limit(ctx))
    return [[p, b, t] for p, (b, t) in zip(prompts, pairs)]


def open_blind(ctx: AppContext, run_id: str | None, checkpoint, prompt, system, base_choice, *settings) -> dict:
    """A blind pair: both models answer `prompt` now (one batch, the shared settings), and the page gets
    the two answers as A and B in random order, nothing saying which is which; the server keeps the
    pair. The vote then reveals it."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise runs.RunError("blind A/B: type the prompt both models should answer")
    _prompts(prompt, system)
    chosen = _settings(*settings)
    with access.one_at_a_time(ctx):
        comparer, adapter, path = _comparer(ctx, run_id, checkpoint, base_choice == BASE_CHOICES[1])
        (base, tuned), = comparer.generate([prompt], adapter, system or None, chosen)
    if base.strip() == tuned.strip():
        return ab_view.closed("Both models gave the same answer: nothing to judge. Try another prompt.")
    return ab_view.show(ab.blind(path, prompt, base, tuned))


def blind_vote(ctx: AppContext, run_id: str | None, pair: ab.BlindPair | None, choice: str) -> dict:
    """Save the vote (the page sends only the choice), then reveal which answer was which."""
    return ab_view.cast(ctx, run_id, pair, choice)


def save_correction(ctx: AppContext, run_id: str | None, last: Generated | None, corrected: str,
                    system: str = "") -> dict:
    """Keep the person's corrected version of the tuned answer the server generated last: an SFT
    example in the run's corrections file and, with the original answer, a preference pair."""
    path = ab_view.run_path(ctx, run_id)
    if last is None or last.run_id != run_id:
        raise runs.RunError("correction: generate side by side first, then correct the tuned answer")
    _prompts(corrected)
    runs.append_correction(path, last.prompt, last.tuned, corrected or "", system or "")
    return {"correction_note": f"Saved. Run {run_id} has {len(runs.read_corrections(path))} corrections (SFT "
                               f"examples) and {len(runs.preference_pairs(path))} preference pairs."}


def edit_tuned(last: Generated | None) -> dict:
    """Copy the last tuned answer into the correction box, to edit."""
    return {"corrected": last.tuned if last is not None else ""}


def tune_on_votes(ctx: AppContext, run_id: str | None) -> dict:
    """The run's votes and corrections written as a DPO dataset, and a DPO config starting from this
    run's adapter (init_from): the Train form is filled with it (app.py), nothing starts yet."""
    path = ab_view.run_path(ctx, run_id)
    if runs.summarize(path).status not in (runs.COMPLETED, runs.STOPPED) or not runs.has_final_adapter(path):
        raise runs.RunError(f"tune on my votes: run {run_id} has no final adapter yet; wait until it finishes")
    dataset = runs.write_preference_pairs(path)
    n = len(runs.preference_pairs(path))
    cfg = runs.read_config(path).replace(
        objective="dpo", init_from=run_id, dataset=str(dataset), eval_dataset="", dataset_format="auto",
        column_map="", packing=False, run_name="", max_steps=-1, num_epochs=3.0,
        per_device_batch_size=min(4, n), eval_split=0.1 if n >= 20 else 0.0)  # few pairs: all of them train
    return {"tune_config": cfg.to_dict(),
            "correction_note": f"{n} pairs from run {run_id} written as a DPO dataset; the Train form holds the "
                               "DPO run that starts from this run's adapter. Check it and press Start."}


def token_heatmap(ctx: AppContext, run_id: str | None, checkpoint: str, system: str, base_choice: str,
                  last: Generated | None) -> dict:
    """The last tuned answer, each token coloured by how much more likely the tuned model finds it than
    the base (both score the same text, in the conversation it answered, in one batch,
    tuning/infer/token_diff.py); the first token where the base's answer differs is marked."""
    from tuning.infer import token_diff

    if last is None or last.run_id != run_id or not last.tuned:
        raise runs.RunError("generate an answer with this run first; its tokens are what gets coloured")
    with access.one_at_a_time(ctx):
        comparer, adapter, _ = _comparer(ctx, run_id, checkpoint, base_choice == BASE_CHOICES[1])
        with comparer.lock:
            name = comparer.attach(adapter)
            conversation = ([*last.context, {"role": "user", "content": last.prompt}] if last.context
                            else comparer.conversations([last.prompt], system or None)[0])
            scored = token_diff.score(comparer.peft, comparer.tokenizer, conversation, last.tuned, name)
        at = token_diff.first_divergence(comparer.tokenizer, last.base, last.tuned)
    return {"heatmap": token_diff.to_html(scored, at), "heatmap_note": token_diff.summary(scored, at)}


def picked_run(ctx: AppContext, run_id: str | None) -> dict:
    """Another run (or none yet): its checkpoints and probes, a new conversation; the last answer and
    any open vote were the old run's. Fires on page load: with no run it shows what to do, never an error."""
    return {"checkpoint": gr.update(choices=checkpoint_choices(ctx, run_id), value="final"),
            "probes": run_probes(ctx, run_id), "probes_note": "", "last": None, **ab_view.closed(),
            "ab_tally": ab_view.tally(ctx, run_id), "notice": notice(ctx, run_id), "base_chat": [], "tuned_chat": [],
            "status": ""}


def refreshed(ctx: AppContext, run_id: str | None) -> dict:
    return {"run": run_picker_update(ctx, run_id), "checkpoint": gr.update(choices=checkpoint_choices(ctx, run_id)),
            "notice": notice(ctx, run_id)}


# --- the page ------------------------------------------------------------------------------------

SETTINGS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed")  # as _settings takes them
ASKED = ("run", "checkpoint", "prompt", "system", "base_choice", *SETTINGS)
TURN_INPUTS = ("run", "checkpoint", "prompt", "system", "base_choice", "base_chat", "tuned_chat", *SETTINGS)
TURNED = ("status", "base_chat", "tuned_chat", "prompt", "counter", "generate", "stop", "clear", "last",
          *ab_view.SHOWN)
CLEARED = ("status", "base_chat", "tuned_chat", "generate", "stop", "clear", "last", *ab_view.SHOWN)
PICKED = ("checkpoint", "probes", "probes_note", "last", "notice", "base_chat", "tuned_chat", "status",
          *ab_view.SHOWN)
BLIND_ASKED = ("run", "checkpoint", "blind_prompt", "system", "base_choice", *SETTINGS)


def layout(ctx: AppContext) -> dict:
    """The tab's components by name (the names its handlers return)."""
    gr.Markdown("Chat with the base and the tuned model side by side. Both columns come from **one batch**: the "
                "same prompt, seed and settings, each model continuing its own conversation; the base column runs "
                "the base exactly as the run loaded it (4-bit NF4 for QLoRA, sharing one copy of the weights), "
                "or in full precision if you choose it (more memory).")
    c = {}
    c["notice"] = gr.Markdown(notice(ctx, None))
    with gr.Row():
        c["run"] = gr.Dropdown(runs.run_ids(ctx.workspace), value=None, label="Run", scale=3, elem_id="play-run")
        c["checkpoint"] = gr.Dropdown(["final"], value="final", label="Checkpoint", scale=2,
                                      info="final = the saved adapter, or the newest checkpoint while training")
        c["base_choice"] = gr.Radio(list(BASE_CHOICES), value=BASE_CHOICES[0], label="Base column", scale=2)
        c["refresh"] = gr.Button("↻ Refresh", scale=1)
    c["system"] = gr.Textbox(label="System prompt (optional)", lines=1, max_length=MAX_PROMPT_CHARS)
    with gr.Row():
        c["base_chat"] = gr.Chatbot(label="Base model", elem_id="base-chat", height=420, buttons=["copy"],
                                    placeholder="The base model's answers appear here.")
        c["tuned_chat"] = gr.Chatbot(label="Tuned", elem_id="tuned-chat", height=420, buttons=["copy"],
                                     placeholder="The tuned model's answers appear here.")
    c["prompt"] = gr.Textbox(label="Prompt", lines=1, max_lines=8, placeholder="Who are you?", max_length=MAX_PROMPT_CHARS,
                             elem_id="chat-prompt")
    # The counter and the hint on a line of their own: beside the buttons, an 800-pixel window
    # squeezed the hint to a word or two a line.
    with gr.Row():
        c["counter"] = gr.Markdown(counter_text(""), elem_id="prompt-counter")
        gr.Markdown("Enter sends (Shift+Enter: a new line). While an answer streams, Send is off and Enter waits: "
                    "the prompt in the box is sent when the answer ends.")
    with gr.Row():
        c["generate"] = gr.Button("Send", variant="primary", scale=0, min_width=120)
        c["stop"] = gr.Button("Stop", variant="stop", interactive=False, scale=0, min_width=120)
        c["clear"] = gr.Button("Clear (new conversation)", scale=0, min_width=200)
    c["status"] = gr.Markdown()
    c["box"] = error_box()  # what a button below could not do (a turn's own failure is in the status line)
    c["last"] = gr.State(None)  # a Generated, on the server
    with gr.Accordion("Generation settings (shared by both columns) — the probe table uses them too", open=False):
        with gr.Row():
            c["temperature"] = gr.Slider(0, 2, value=0, step=0.05, label="temperature", info="0 = greedy")
            c["top_p"] = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
            c["max_new_tokens"] = gr.Slider(1, MAX_NEW_TOKENS, value=128, step=1, label="max new tokens")
            c["repetition_penalty"] = gr.Slider(1, 2, value=1.1, step=0.05, label="repetition penalty")
            c["seed"] = gr.Number(value=0, precision=0, minimum=0, label="seed")
    with gr.Accordion("What changed, token by token", open=False):
        c["heatmap_btn"] = gr.Button("Colour the tuned answer by how much tuning changed each token")
        c["heatmap_note"] = gr.Markdown()
        c["heatmap"] = gr.HTML(elem_id="token-heatmap")
    with gr.Accordion("Blind A/B: both models answer a prompt unlabelled; vote, then see which was which",
                      open=False):
        with gr.Row():
            c["blind_prompt"] = gr.Textbox(label="Prompt for the blind pair", scale=4, max_length=MAX_PROMPT_CHARS)
            c["blind"] = gr.Button("Generate a blind pair", scale=1)
        c.update(ab_view.build(lines=5).components())
    with gr.Accordion("Probe prompts", open=False):
        c["probes"] = gr.Textbox(value="\n".join(default_probes()), lines=5, label="Probe prompts, one per line",
                                 info="the run's own list; saved, it is what later checkpoints and evaluations "
                                      "answer")
        with gr.Row():
            c["probe_btn"] = gr.Button("Run probes through both")
            c["save_probes"] = gr.Button("Save as this run's probes")
        c["probes_note"] = gr.Markdown()
        c["probe_out"] = gr.Dataframe(headers=["prompt", "base", "tuned"], wrap=True, interactive=False,
                                      label="Probe answers")
    with gr.Accordion("Teach it: correct the tuned answer, or tune on your votes (DPO)", open=False):
        c["corrected"] = gr.Textbox(label="Your corrected answer to the last prompt", lines=4,
                                    info="saved as an SFT example, and with the tuned answer as a preference pair")
        with gr.Row():
            c["edit_tuned"] = gr.Button("Start from the tuned answer")
            c["save_correction"] = gr.Button("Save the correction")
            c["tune_votes"] = gr.Button("Tune on my votes", variant="primary")
        c["correction_note"] = gr.Markdown()
        c["tune_config"] = gr.JSON(visible=False)
    return c


def wire(ctx: AppContext, c: dict) -> None:
    private = {"api_visibility": "private"}
    heavy = {**private, "concurrency_limit": 1, "concurrency_id": "generate"}
    pick = lambda names: [c[n] for n in names]  # noqa: E731 - components by handler output name
    box = c["box"]

    def event(fn, clears=None):  # through the tab's error box (common.boxed)
        return keyed(boxed(fn, clears, box="box"), c)

    # Public on a Space (finished runs only, within the limits above); voting and saving probes are not.
    c["run"].change(public(event(bind(picked_run, ctx))), c["run"], [*pick(PICKED), box], **private)
    c["refresh"].click(public(event(bind(refreshed, ctx))), c["run"], [*pick(("run", "checkpoint", "notice")), box],
                       **private)
    # One event for Send and Enter; "always_last": a prompt sent while a turn streams waits for it.
    gr.on([c["generate"].click, c["prompt"].submit], public(guarded(keyed(bind(chat_turn, ctx), c))),
                 pick(TURN_INPUTS), [*pick(TURNED), box], trigger_mode="always_last", js=CLEAR_PROMPT_JS,
                 show_progress_on=c["status"], **heavy)
    c["stop"].click(public(keyed(bind(stopped, ctx), c)), None, pick(("stop", "status")), **private)
    c["clear"].click(public(keyed(cleared, c)), None, pick(CLEARED), **private)
    c["prompt"].input(None, c["prompt"], c["counter"], js=COUNTER_JS, **private)  # in the browser only
    c["probe_btn"].click(public(event(into("probe_out", bind(probe_table, ctx)), {"probe_out": []})),
                         pick(("run", "checkpoint", "probes", *ASKED[3:])), [c["probe_out"], box], **heavy)
    c["heatmap_btn"].click(public(event(bind(token_heatmap, ctx), {"heatmap": "", "heatmap_note": ""})),
                           pick(("run", "checkpoint", "system", "base_choice", "last")),
                           [*pick(("heatmap", "heatmap_note")), box],
                           api_name="token_heatmap", concurrency_limit=1, concurrency_id="generate")
    c["blind"].click(event(bind(open_blind, ctx)), pick(BLIND_ASKED), [*pick(ab_view.SHOWN), box], **heavy)
    ab_view.wire_votes(c, bind(blind_vote, ctx), ab_view.SHOWN)

    c["save_probes"].click(event(into("probes_note", bind(save_probes, ctx))), [c["run"], c["probes"]],
                           [c["probes_note"], box], **private)
    # Owner-only on a Space: they write into the run folder.
    c["edit_tuned"].click(keyed(edit_tuned, c), c["last"], c["corrected"], **private)
    c["save_correction"].click(event(bind(save_correction, ctx)), pick(("run", "last", "corrected", "system")),
                               [c["correction_note"], box], **private)
    c["tune_votes"].click(event(bind(tune_on_votes, ctx)), c["run"],
                          [*pick(("tune_config", "correction_note")), box], **private)

    def generate_api(run_id: str, prompt: str, system: str = "", checkpoint: str = "final",
                     max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                     repetition_penalty: float = 1.0, seed: int = 0, full_precision_base: bool = False) -> dict:
        """Base and tuned answers to one prompt, side by side, with the same seed and settings."""
        return side_by_side(ctx, run_id, checkpoint, prompt, system,
                            _settings(max_new_tokens, temperature, top_p, repetition_penalty, seed),
                            full_precision_base)

    gr.api(public(guarded(generate_api)), api_name="generate", concurrency_limit=1, concurrency_id="generate")


def build(ctx: AppContext) -> PlaygroundParts:
    components = layout(ctx)
    wire(ctx, components)
    return PlaygroundParts(run=components["run"], checkpoint=components["checkpoint"],
                           tune_votes=components["tune_votes"], tune_config=components["tune_config"])

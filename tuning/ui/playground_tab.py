"""Playground tab: the base and the tuned model answer the same prompt side by side, streamed,
with the same seed and settings, from one mixed-adapter batch (tuning/playground.py). The base
column runs exactly as the run loaded it (4-bit for QLoRA) unless full precision is chosen.

The last answer the server generated is kept server-side (a gr.State), so a blind A/B vote
(tuning/ui/ab_view.py) judges exactly those answers: while the vote is open the labelled columns
are hidden, and after it they come back, with which was which said.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from tuning import ab, record
from tuning.ui import ab_view, access
from tuning.ui.access import public
from tuning.ui.common import AppContext, bind, guarded, keyed, run_picker_update

BASE_CHOICES = ("as trained", "full precision")
# Server-side limits (the page's controls have the same ranges; an API caller is held to them too).
MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 1024


@dataclass(frozen=True)
class PlaygroundParts:
    """What app.py wires across tabs: the run, and "tune on my votes" with the config it fills in."""
    run: gr.Dropdown
    checkpoint: gr.Dropdown
    tune_votes: gr.Button
    tune_config: gr.JSON


@dataclass(frozen=True)
class Generated:
    """The side-by-side answer the server last generated (kept in a server-side gr.State)."""
    run_id: str
    prompt: str
    base: str
    tuned: str


# --- plain handlers ------------------------------------------------------------------------------

def checkpoint_choices(ctx: AppContext, run_id: str | None) -> list[str]:
    if not run_id:
        return ["final"]
    path = record.existing_run_dir(ctx.workspace, run_id)
    return ["final", *[c.name for c in reversed(record.complete_checkpoints(path))]]


def default_probes() -> list[str]:
    """The probes a new run of the default config gets (the demo's list), shown before a run is picked."""
    from tuning import config as config_mod
    from tuning import evaluate

    return evaluate.default_probes(config_mod.TrainConfig())


def run_probes(ctx: AppContext, run_id: str | None) -> str:
    """The run's probe prompts (made from the dataset's list the first time), one a line; the
    demo's list when no run is picked."""
    from tuning import evaluate

    if not run_id:
        return "\n".join(default_probes())
    path = record.existing_run_dir(ctx.workspace, run_id)
    return "\n".join(evaluate.probes_for_run(path, record.read_config(path)))


def save_probes(ctx: AppContext, run_id: str | None, text: str) -> str:
    """Save the edited prompts as the run's probes: later checkpoints (of a running or resumed run)
    and later evaluations answer them."""
    saved = record.write_probes(ab_view.run_path(ctx, run_id), text or "")
    return f"Saved {len(saved)} probe prompts for {run_id}: later checkpoints and evaluations answer them."


def _within(name: str, value, low: float, high: float, kind=float):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise record.RunError(f"{name}: expected a number, got {value!r}") from None
    if not low <= number <= high:
        raise record.RunError(f"{name}: {number} is outside {low}..{high}")
    return number


def _settings(max_new_tokens, temperature, top_p, repetition_penalty, seed):
    from tuning.playground import GenerationSettings

    return GenerationSettings(max_new_tokens=_within("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS, int),
                              temperature=_within("temperature", temperature, 0, 2),
                              top_p=_within("top_p", top_p, 0.01, 1),
                              repetition_penalty=_within("repetition_penalty", repetition_penalty, 1, 2),
                              seed=_within("seed", seed, 0, 2**31 - 1, int))


def _prompts(*texts: str) -> None:
    for text in texts:
        if len(text or "") > MAX_PROMPT_CHARS:
            raise record.RunError(f"prompt: at most {MAX_PROMPT_CHARS} characters (this one has {len(text)})")


def _comparer(ctx: AppContext, run_id: str, checkpoint: str, full_precision: bool):
    from tuning import playground

    path = ab_view.run_path(ctx, run_id)
    if not access.is_owner(ctx) and record.summarize(path).status in record.ACTIVE_STATUSES:
        access.require_owner(ctx)  # a visitor's Playground is for finished runs: no model loads mid-training
    adapter = record.current_adapter(path, checkpoint or "final")
    comparer = playground.comparer_for_run(path, ctx.workspace, full_precision_base=full_precision)
    return comparer, adapter, path


def labels(comparer, adapter: Path, run: Path) -> tuple[str, str]:
    precision = comparer.precision_label
    if comparer.method == "lora" and "as trained" in precision:
        precision = "full precision"
    which = "final adapter" if adapter == record.adapter_dir(run) else adapter.name
    return f"Base model — {precision}", f"Tuned — {run.name}, {which}"


def side_by_side(ctx: AppContext, run_id: str, checkpoint: str, prompt: str, system: str = "",
                 settings=None, full_precision: bool = False) -> dict:
    """Both answers at once (no streaming): what the API and the CLI return."""
    if not (prompt or "").strip():
        raise record.RunError("prompt: type a prompt first")
    _prompts(prompt, system)
    settings = settings or _settings(128, 0, 1, 1, 0)
    with access.one_at_a_time(ctx):
        comparer, adapter, path = _comparer(ctx, run_id, checkpoint, full_precision)
        (base, tuned), = comparer.generate([prompt], adapter, system or None, settings)
    base_label, tuned_label = labels(comparer, adapter, path)
    return {"base": base, "tuned": tuned, "base_label": base_label, "tuned_label": tuned_label,
            "adapter": str(adapter.relative_to(ctx.workspace)) if adapter.is_relative_to(ctx.workspace)
            else str(adapter)}


def _columns(visible: bool) -> dict:
    return {"base_out": gr.update(visible=visible), "tuned_out": gr.update(visible=visible)}


def stream_side_by_side(ctx: AppContext, run_id, checkpoint, prompt, system, base_choice, *settings):
    """Yields updates as the tokens arrive. A new answer closes any open blind vote; the finished
    answer is kept server-side ("last") for the next one."""
    if not (prompt or "").strip():
        raise record.RunError("prompt: type a prompt first")
    _prompts(prompt, system)
    chosen = _settings(*settings)
    with access.one_at_a_time(ctx):
        yield {"status": "Loading the model (the first time takes a while; it stays loaded)…", "last": None,
               **ab_view.closed(), **_columns(True)}
        comparer, adapter, path = _comparer(ctx, run_id, checkpoint, base_choice == BASE_CHOICES[1])
        base_label, tuned_label = labels(comparer, adapter, path)
        yield {"status": "Generating…", "base_out": gr.update(value="", label=base_label),
               "tuned_out": gr.update(value="", label=tuned_label)}
        base = tuned = ""
        for base, tuned in comparer.stream(prompt, adapter, system or None, chosen):
            yield {"base_out": base, "tuned_out": tuned}
    yield {"status": "Done: same prompt, same seed, same settings for both.",
           "last": Generated(run_id, prompt, base, tuned)}


def probe_table(ctx: AppContext, run_id, checkpoint, prompts_text, system, base_choice, *settings):
    prompts = record.check_probes(prompts_text or "")
    _prompts(*prompts, system)
    chosen = _settings(*settings)
    with access.one_at_a_time(ctx):
        comparer, adapter, _ = _comparer(ctx, run_id, checkpoint, base_choice == BASE_CHOICES[1])
        pairs = comparer.generate(prompts, adapter, system or None, chosen)
    return [[p, b, t] for p, (b, t) in zip(prompts, pairs)]


def open_blind(ctx: AppContext, run_id: str | None, last: Generated | None) -> dict:
    """A blind vote on the answer the server generated last (never on text from the page): A and B
    in random order, the labelled columns hidden until the vote."""
    path = ab_view.run_path(ctx, run_id)
    if last is None or last.run_id != run_id or not (last.base.strip() or last.tuned.strip()):
        raise record.RunError("blind A/B: generate side by side first")
    if last.base.strip() == last.tuned.strip():
        raise record.RunError("blind A/B: both answers are the same; there is nothing to judge")
    return {**ab_view.show(ab.blind(path, last.prompt, last.base, last.tuned)), **_columns(False)}


def blind_vote(ctx: AppContext, run_id: str | None, pair: ab.BlindPair | None, choice: str) -> dict:
    """Save the vote (the page sends only the choice), then show the labelled answers again."""
    return {**ab_view.cast(ctx, run_id, pair, choice), **_columns(True)}


def save_correction(ctx: AppContext, run_id: str | None, last: Generated | None, corrected: str,
                    system: str = "") -> dict:
    """Keep the person's corrected version of the tuned answer the server generated last: an SFT
    example in the run's corrections file and, with the original answer, a preference pair."""
    path = ab_view.run_path(ctx, run_id)
    if last is None or last.run_id != run_id:
        raise record.RunError("correction: generate side by side first, then correct the tuned answer")
    _prompts(corrected)
    record.append_correction(path, last.prompt, last.tuned, corrected or "", system or "")
    return {"correction_note": f"Saved. Run {run_id} has {len(record.read_corrections(path))} corrections (SFT "
                               f"examples) and {len(record.preference_pairs(path))} preference pairs."}


def edit_tuned(last: Generated | None) -> dict:
    """Copy the last tuned answer into the correction box, to edit."""
    return {"corrected": last.tuned if last is not None else ""}


def tune_on_votes(ctx: AppContext, run_id: str | None) -> dict:
    """The run's votes and corrections written as a DPO dataset, and a DPO config starting from this
    run's adapter (init_from): the Train form is filled with it (app.py), nothing starts yet."""
    path = ab_view.run_path(ctx, run_id)
    if record.summarize(path).status not in (record.COMPLETED, record.STOPPED) or not record.has_final_adapter(path):
        raise record.RunError(f"tune on my votes: run {run_id} has no final adapter yet; wait until it finishes")
    dataset = record.write_preference_pairs(path)
    n = len(record.preference_pairs(path))
    cfg = record.read_config(path).replace(
        objective="dpo", init_from=run_id, dataset=str(dataset), eval_dataset="", dataset_format="auto",
        column_map="", packing=False, run_name="", max_steps=-1, num_epochs=3.0,
        per_device_batch_size=min(4, n), eval_split=0.1 if n >= 20 else 0.0)  # few pairs: all of them train
    return {"tune_config": cfg.to_dict(),
            "correction_note": f"{n} pairs from run {run_id} written as a DPO dataset; the Train form holds the "
                               "DPO run that starts from this run's adapter. Check it and press Start."}


def token_heatmap(ctx: AppContext, run_id: str | None, checkpoint: str, system: str, base_choice: str,
                  last: Generated | None) -> dict:
    """The last tuned answer, each token coloured by how much more likely the tuned model finds it than
    the base (both score the same text in one batch, tuning/token_diff.py); the first token where the
    base's answer differs is marked."""
    from tuning import token_diff

    if last is None or last.run_id != run_id or not last.tuned:
        raise record.RunError("generate an answer with this run first; its tokens are what gets coloured")
    with access.one_at_a_time(ctx):
        comparer, adapter, _ = _comparer(ctx, run_id, checkpoint, base_choice == BASE_CHOICES[1])
        with comparer.lock:
            name = comparer.attach(adapter)
            conversation = comparer.conversations([last.prompt], system or None)[0]
            scored = token_diff.score(comparer.peft, comparer.tokenizer, conversation, last.tuned, name)
        at = token_diff.first_divergence(comparer.tokenizer, last.base, last.tuned)
    return {"heatmap": token_diff.to_html(scored, at), "heatmap_note": token_diff.summary(scored, at)}


def picked_run(ctx: AppContext, run_id: str | None) -> dict:
    """Another run: its checkpoints and probes; the last answer and any open vote were the old run's."""
    return {"checkpoint": gr.update(choices=checkpoint_choices(ctx, run_id), value="final"),
            "probes": run_probes(ctx, run_id), "probes_note": "", "last": None, **ab_view.closed(),
            "ab_tally": ab_view.tally(ctx, run_id), **_columns(True)}


def refreshed(ctx: AppContext, run_id: str | None) -> dict:
    return {"run": run_picker_update(ctx, run_id), "checkpoint": gr.update(choices=checkpoint_choices(ctx, run_id))}


# --- the page ------------------------------------------------------------------------------------

OPENED = (*ab_view.SHOWN, "base_out", "tuned_out")  # what opening and casting a blind vote update
STREAMED = ("status", "base_out", "tuned_out", "last", *ab_view.SHOWN)
PICKED = ("checkpoint", "probes", "probes_note", "last", *OPENED)
SETTINGS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed")  # as _settings takes them
ASKED = ("run", "checkpoint", "prompt", "system", "base_choice", *SETTINGS)


def layout(ctx: AppContext) -> dict:
    """The tab's components by name (the names its handlers return)."""
    gr.Markdown("Both columns come from **one batch**: the same prompt, seed and settings; the base column runs "
                "the base exactly as the run loaded it (4-bit NF4 for QLoRA, sharing one copy of the weights), "
                "or in full precision if you choose it (more memory).")
    c = {}
    with gr.Row():
        c["run"] = gr.Dropdown(record.run_ids(ctx.workspace), value=None, label="Run", scale=3)
        c["checkpoint"] = gr.Dropdown(["final"], value="final", label="Checkpoint", scale=2,
                                      info="final = the saved adapter, or the newest checkpoint while training")
        c["base_choice"] = gr.Radio(list(BASE_CHOICES), value=BASE_CHOICES[0], label="Base column", scale=2)
        c["refresh"] = gr.Button("↻ Refresh", scale=1)
    c["system"] = gr.Textbox(label="System prompt (optional)", lines=1)
    c["prompt"] = gr.Textbox(label="Prompt", lines=2, placeholder="Who are you?")
    with gr.Accordion("Generation settings (shared by both columns)", open=False):
        with gr.Row():
            c["temperature"] = gr.Slider(0, 2, value=0, step=0.05, label="temperature", info="0 = greedy")
            c["top_p"] = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
            c["max_new_tokens"] = gr.Slider(1, MAX_NEW_TOKENS, value=128, step=1, label="max new tokens")
            c["repetition_penalty"] = gr.Slider(1, 2, value=1.1, step=0.05, label="repetition penalty")
            c["seed"] = gr.Number(value=0, precision=0, minimum=0, label="seed")
    c["generate"] = gr.Button("Generate side by side", variant="primary")
    c["status"] = gr.Markdown()
    with gr.Row():
        c["base_out"] = gr.Textbox(label="Base model", lines=8, interactive=False)
        c["tuned_out"] = gr.Textbox(label="Tuned", lines=8, interactive=False)
    c["last"] = gr.State(None)  # a Generated, on the server
    with gr.Accordion("What changed, token by token", open=False):
        c["heatmap_btn"] = gr.Button("Colour the tuned answer by how much tuning changed each token")
        c["heatmap_note"] = gr.Markdown()
        c["heatmap"] = gr.HTML(elem_id="token-heatmap")
    with gr.Accordion("Blind A/B: judge the two answers above without knowing which is which", open=False):
        c["blind"] = gr.Button("Vote blind on these answers (the labelled columns hide until you vote)")
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
        c["corrected"] = gr.Textbox(label="Your corrected answer to the prompt above", lines=4,
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
    # Public on a Space (finished runs only, within the limits above); voting and saving probes are not.
    c["run"].change(public(guarded(keyed(bind(picked_run, ctx), c))), c["run"], pick(PICKED), **private)
    c["refresh"].click(public(guarded(keyed(bind(refreshed, ctx), c))), c["run"], pick(("run", "checkpoint")),
                       **private)
    for trigger in (c["generate"].click, c["prompt"].submit):
        trigger(public(guarded(keyed(bind(stream_side_by_side, ctx), c))), pick(ASKED), pick(STREAMED), **heavy)
    c["probe_btn"].click(public(guarded(bind(probe_table, ctx))), pick(("run", "checkpoint", "probes", *ASKED[3:])),
                         c["probe_out"], **heavy)
    c["heatmap_btn"].click(public(guarded(keyed(bind(token_heatmap, ctx), c))),
                           pick(("run", "checkpoint", "system", "base_choice", "last")), pick(("heatmap", "heatmap_note")),
                           api_name="token_heatmap", concurrency_limit=1, concurrency_id="generate")
    c["blind"].click(guarded(keyed(bind(open_blind, ctx), c)), [c["run"], c["last"]], pick(OPENED), **private)
    ab_view.wire_votes(c, bind(blind_vote, ctx), OPENED)

    c["save_probes"].click(guarded(bind(save_probes, ctx)), [c["run"], c["probes"]], c["probes_note"], **private)
    # Owner-only on a Space: they write into the run folder.
    c["edit_tuned"].click(keyed(edit_tuned, c), c["last"], c["corrected"], **private)
    c["save_correction"].click(guarded(keyed(bind(save_correction, ctx), c)),
                               pick(("run", "last", "corrected", "system")), c["correction_note"], **private)
    c["tune_votes"].click(guarded(keyed(bind(tune_on_votes, ctx), c)), c["run"],
                          pick(("tune_config", "correction_note")), **private)

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

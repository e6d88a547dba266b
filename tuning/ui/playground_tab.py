"""Playground tab: the base and the tuned model answer the same prompt side by side, streamed,
with the same seed and settings, from one mixed-adapter batch (tuning/playground.py). The base
column runs exactly as the run loaded it (4-bit for QLoRA) unless full precision is chosen."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tuning import record
from tuning.ui.common import AppContext, guarded

BASE_CHOICES = ("as trained", "full precision")


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
    """The run's probe prompts (its probes.json, made from the dataset's list the first time), one
    a line; the demo's list when no run is picked."""
    from tuning import config as config_mod
    from tuning import evaluate

    if not run_id:
        return "\n".join(default_probes())
    path = record.existing_run_dir(ctx.workspace, run_id)
    return "\n".join(evaluate.probes_for_run(path, config_mod.load(path / "config.yaml")))


def save_probes(ctx: AppContext, run_id: str | None, text: str) -> str:
    """Save the edited prompts as the run's probes: later checkpoints (of a running or resumed run)
    and later evaluations answer them."""
    from tuning import evaluate

    if not run_id:
        raise record.RunError("pick a run first")
    saved = evaluate.write_probes(record.existing_run_dir(ctx.workspace, run_id), text or "")
    return f"Saved {len(saved)} probe prompts for {run_id}: later checkpoints and evaluations answer them."


def _settings(max_new_tokens, temperature, top_p, repetition_penalty, seed):
    from tuning.playground import GenerationSettings

    return GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                              top_p=float(top_p), repetition_penalty=float(repetition_penalty), seed=int(seed))


def _comparer(ctx: AppContext, run_id: str, checkpoint: str, full_precision: bool):
    from tuning import playground

    if not run_id:
        raise record.RunError("pick a run first")
    path = record.existing_run_dir(ctx.workspace, run_id)
    adapter = record.current_adapter(path, checkpoint or "final")
    comparer = playground.comparer_for_run(path, ctx.workspace, full_precision_base=full_precision)
    return comparer, adapter


def labels(comparer, adapter: Path, run_id: str) -> tuple[str, str]:
    precision = comparer.precision_label
    if comparer.method == "lora" and "as trained" in precision:
        precision = "full precision"
    which = "final adapter" if adapter.name == "adapter" else adapter.name
    return f"Base model — {precision}", f"Tuned — {run_id}, {which}"


def side_by_side(ctx: AppContext, run_id: str, checkpoint: str, prompt: str, system: str = "",
                 settings=None, full_precision: bool = False) -> dict:
    """Both answers at once (no streaming): what the API and the CLI return."""
    if not (prompt or "").strip():
        raise record.RunError("prompt: type a prompt first")
    settings = settings or _settings(128, 0, 1, 1, 0)
    comparer, adapter = _comparer(ctx, run_id, checkpoint, full_precision)
    (base, tuned), = comparer.generate([prompt], adapter, system or None, settings)
    base_label, tuned_label = labels(comparer, adapter, run_id)
    return {"base": base, "tuned": tuned, "base_label": base_label, "tuned_label": tuned_label,
            "adapter": str(adapter.relative_to(ctx.workspace)) if adapter.is_relative_to(ctx.workspace)
            else str(adapter)}


def stream_side_by_side(ctx: AppContext, run_id, checkpoint, prompt, system, base_choice, *settings):
    """Yields (status, base update, tuned update) as the tokens arrive."""
    if not (prompt or "").strip():
        raise record.RunError("prompt: type a prompt first")
    yield "Loading the model (the first time takes a while; it stays loaded)…", gr.skip(), gr.skip()
    comparer, adapter = _comparer(ctx, run_id, checkpoint, base_choice == BASE_CHOICES[1])
    base_label, tuned_label = labels(comparer, adapter, run_id)
    yield "Generating…", gr.update(value="", label=base_label), gr.update(value="", label=tuned_label)
    for base, tuned in comparer.stream(prompt, adapter, system or None, _settings(*settings)):
        yield gr.skip(), base, tuned
    yield "Done: same prompt, same seed, same settings for both.", gr.skip(), gr.skip()


def probe_table(ctx: AppContext, run_id, checkpoint, prompts_text, system, base_choice, *settings):
    prompts = [p.strip() for p in (prompts_text or "").splitlines() if p.strip()]
    if not prompts:
        raise record.RunError("probe prompts: write at least one prompt, one per line")
    comparer, adapter = _comparer(ctx, run_id, checkpoint, base_choice == BASE_CHOICES[1])
    pairs = comparer.generate(prompts, adapter, system or None, _settings(*settings))
    return [[p, b, t] for p, (b, t) in zip(prompts, pairs)]


def blind_pair(ctx: AppContext, run_id: str | None, prompt: str, base: str, tuned: str):
    """The two answers on screen in random order as A and B, for a blind vote; which is which
    stays in the returned pair (a gr.State) until the vote is cast."""
    from tuning import evaluate

    if not run_id:
        raise record.RunError("pick a run first")
    if not (base or "").strip() and not (tuned or "").strip():
        raise record.RunError("blind A/B: generate side by side first")
    path = record.existing_run_dir(ctx.workspace, run_id)
    pair = evaluate.ab_pair(path, pair={"prompt": prompt or "", "base": base or "", "tuned": tuned or ""})
    return pair, pair["a"], pair["b"], "Which answer is better? The order is random."


def blind_vote(ctx: AppContext, run_id: str | None, pair: dict | None, choice: str) -> tuple[None, str]:
    """Save the vote in the run folder (ab_votes.jsonl), then reveal the order and the tally."""
    from tuning import evaluate

    if not run_id:
        raise record.RunError("pick a run first")
    summary = evaluate.record_vote(record.existing_run_dir(ctx.workspace, run_id), pair, choice)
    return None, f"Saved: {choice}. A was the **{pair['a_is']}** model. So far: {summary['text']}."


def build(ctx: AppContext):
    from tuning.ui.live_tab import run_choices

    gr.Markdown("Both columns come from **one batch**: the same prompt, seed and settings; the base column runs "
                "the base exactly as the run loaded it (4-bit NF4 for QLoRA, sharing one copy of the weights), "
                "or in full precision if you choose it (more memory).")
    with gr.Row():
        run = gr.Dropdown(run_choices(ctx), value=None, label="Run", scale=3)
        checkpoint = gr.Dropdown(["final"], value="final", label="Checkpoint",
                                 info="final = the saved adapter, or the newest checkpoint while training", scale=2)
        base_choice = gr.Radio(list(BASE_CHOICES), value=BASE_CHOICES[0], label="Base column", scale=2)
        refresh = gr.Button("↻ Refresh", scale=1)
    system = gr.Textbox(label="System prompt (optional)", lines=1)
    prompt = gr.Textbox(label="Prompt", lines=2, placeholder="Who are you?")
    with gr.Accordion("Generation settings (shared by both columns)", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature", info="0 = greedy")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top-p")
            max_new = gr.Slider(1, 1024, value=128, step=1, label="max new tokens")
            penalty = gr.Slider(1, 2, value=1.1, step=0.05, label="repetition penalty")
            seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
    settings = [max_new, temperature, top_p, penalty, seed]
    generate_btn = gr.Button("Generate side by side", variant="primary")
    status = gr.Markdown()
    with gr.Row():
        base_out = gr.Textbox(label="Base model", lines=8, interactive=False)
        tuned_out = gr.Textbox(label="Tuned", lines=8, interactive=False)
    with gr.Accordion("Probe prompts", open=False):
        probes = gr.Textbox(value="\n".join(default_probes()), lines=5, label="Probe prompts, one per line",
                            info="the run's own list; saved, it is what later checkpoints and evaluations answer")
        with gr.Row():
            probe_btn = gr.Button("Run probes through both")
            save_probes_btn = gr.Button("Save as this run's probes")
        probes_note = gr.Markdown()
        probe_out = gr.Dataframe(headers=["prompt", "base", "tuned"], wrap=True, interactive=False,
                                 label="Probe answers")

    with gr.Accordion("Blind A/B: judge the two answers without knowing which is which", open=False):
        blind_btn = gr.Button("Show the answers above as A and B")
        with gr.Row():
            answer_a = gr.Textbox(label="A", lines=5, interactive=False)
            answer_b = gr.Textbox(label="B", lines=5, interactive=False)
        with gr.Row():
            vote_a, vote_b, vote_tie = gr.Button("A is better"), gr.Button("B is better"), gr.Button("Tie")
        blind_note = gr.Markdown()
        blind_state = gr.State(None)
    blind_btn.click(guarded(lambda *a: blind_pair(ctx, *a)), [run, prompt, base_out, tuned_out],
                    [blind_state, answer_a, answer_b, blind_note], api_visibility="private")
    for button, choice in ((vote_a, "A"), (vote_b, "B"), (vote_tie, "tie")):
        button.click(guarded(lambda r, p, c=choice: blind_vote(ctx, r, p, c)), [run, blind_state],
                     [blind_state, blind_note], api_visibility="private")

    run.change(guarded(lambda r: (gr.update(choices=checkpoint_choices(ctx, r), value="final"),
                                  run_probes(ctx, r), "")),
               run, [checkpoint, probes, probes_note], api_visibility="private")

    def do_save_probes(run_id, text):
        return save_probes(ctx, run_id, text)

    save_probes_btn.click(guarded(do_save_probes), [run, probes], probes_note, api_visibility="private")
    refresh.click(lambda r: (gr.update(choices=run_choices(ctx), value=r),
                             gr.update(choices=checkpoint_choices(ctx, r) if r else ["final"])),
                  run, [run, checkpoint], api_visibility="private")
    generate_btn.click(guarded(lambda *a: (yield from stream_side_by_side(ctx, *a))),
                       [run, checkpoint, prompt, system, base_choice, *settings], [status, base_out, tuned_out],
                       api_visibility="private", concurrency_limit=1, concurrency_id="generate")
    prompt.submit(guarded(lambda *a: (yield from stream_side_by_side(ctx, *a))),
                  [run, checkpoint, prompt, system, base_choice, *settings], [status, base_out, tuned_out],
                  api_visibility="private", concurrency_limit=1, concurrency_id="generate")
    probe_btn.click(guarded(lambda *a: probe_table(ctx, *a)),
                    [run, checkpoint, probes, system, base_choice, *settings], probe_out,
                    api_visibility="private", concurrency_limit=1, concurrency_id="generate")

    def generate_api(run_id: str, prompt: str, system: str = "", checkpoint: str = "final",
                     max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                     repetition_penalty: float = 1.0, seed: int = 0, full_precision_base: bool = False) -> dict:
        """Base and tuned answers to one prompt, side by side, with the same seed and settings."""
        return side_by_side(ctx, run_id, checkpoint, prompt, system,
                            _settings(max_new_tokens, temperature, top_p, repetition_penalty, seed),
                            full_precision_base)

    gr.api(guarded(generate_api), api_name="generate", concurrency_limit=1, concurrency_id="generate")
    return {"run": run, "checkpoint": checkpoint}

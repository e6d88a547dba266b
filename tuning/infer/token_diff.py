"""What changed, token by token: how much more (or less) likely the tuned model finds each token of
an answer than the base does, and where two greedy answers first part ways: for a Playground answer
(tuning/ui/playground_tab.py) and for a held-out row (tuning/ui/evaluation_tab.py), one renderer.

Both models score the same text in ONE forward pass: the same prompt + answer twice in a batch, the
rows tagged "__base__" and the adapter's name (a PEFT mixed-adapter batch, as tuning/infer/generation.py
generates; DoRA adapters refuse mixed batches and get one pass per side). The difference of the two
log-probabilities of each answer token is its colour: green where tuning made the token more likely,
red where it made it less likely.

Why by hand: PEFT and transformers give logits; no library turns two models' scores of one text into
a per-token comparison.
"""

from __future__ import annotations

import html
import math

from tuning.infer import generation
from tuning.infer.generation import BASE

SCALE = 4.0  # nats of difference that saturate the colour


def _prompt_ids(tokenizer, conversation: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_tokens(tokenizer, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


def score(model, tokenizer, conversation: list[dict], answer: str, adapter: str) -> list[dict]:
    """Each answer token: {token, base, tuned, diff} (log-probabilities given the prompt and the
    answer so far; diff = tuned - base). `model` is a PeftModel holding adapter `adapter`."""
    import torch

    prompt, answer_ids = _prompt_ids(tokenizer, conversation), answer_tokens(tokenizer, answer)
    if not answer_ids:
        return []
    ids = torch.tensor([prompt + answer_ids] * 2, device=next(model.parameters()).device)
    names = [BASE, adapter]
    with torch.no_grad(), generation.inference(model):
        if generation.uses_dora(model):
            logits = []
            for name in names:
                with generation.active_adapter(model, name):
                    logits.append(model(input_ids=ids[:1]).logits[0])
            logits = torch.stack(logits)
        else:
            logits = model(input_ids=ids, adapter_names=names).logits
    # Token t is predicted at position t - 1.
    start = len(prompt)
    logp = torch.log_softmax(logits[:, start - 1:-1].float(), dim=-1)
    target = torch.tensor(answer_ids, device=logp.device)
    picked = logp.gather(-1, target.expand(2, -1).unsqueeze(-1)).squeeze(-1).tolist()
    return [{"token": tokenizer.decode([t]), "base": b, "tuned": u, "diff": u - b}
            for t, b, u in zip(answer_ids, picked[0], picked[1])]


def first_divergence(tokenizer, base_answer: str, tuned_answer: str) -> int | None:
    """The index (in the tuned answer's tokens) of the first token where the two answers differ;
    None when they are the same."""
    a, b = answer_tokens(tokenizer, base_answer), answer_tokens(tokenizer, tuned_answer)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _colour(diff: float) -> str:
    strength = max(-1.0, min(1.0, diff / SCALE))
    alpha = round(abs(strength) * 0.85, 3)
    return f"rgba(22,163,74,{alpha})" if strength >= 0 else f"rgba(220,38,38,{alpha})"


def to_html(scored: list[dict], diverge_at: int | None = None, legend: bool = True) -> str:
    """The answer with each token's background coloured by diff, its numbers in the tooltip, the first
    divergence underlined and marked, and (unless legend=False) a legend."""
    spans = []
    for i, t in enumerate(scored):
        title = (f"tuned {t['tuned']:.2f}, base {t['base']:.2f}: x{math.exp(min(t['diff'], 50)):.3g} "
                 f"as likely after tuning")
        mark = ""
        style = f"background:{_colour(t['diff'])};border-radius:3px;white-space:pre-wrap"
        if i == diverge_at:
            mark = '<span class="diverge-mark" title="the base answer differs from here on">▼</span>'
            style += ";outline:2px solid #1d4ed8"
        spans.append(f'{mark}<span class="tok" data-diff="{t["diff"]:.4f}" style="{style}" '
                     f'title="{html.escape(title)}">{html.escape(t["token"])}</span>')
    return (f'<div class="token-diff" style="line-height:1.9">{"".join(spans)}</div>'
            + (legend_html(diverge_at is not None) if legend else ""))


def legend_html(diverged: bool) -> str:
    return ('<div class="token-legend" style="font-size:0.85em;margin-top:6px">'
            f'<span style="background:{_colour(SCALE)}">&nbsp;more likely after tuning&nbsp;</span> '
            f'<span style="background:{_colour(-SCALE)}">&nbsp;less likely&nbsp;</span> '
            f'(full colour at {SCALE:g} nats, x{math.exp(SCALE):.0f}; hover a token for its numbers)'
            + (' &nbsp;▼ where the base\'s greedy answer first differs' if diverged else "")
            + "</div>")


def summary(scored: list[dict], diverge_at: int | None, greedy: bool = True) -> str:
    """One line of figures; greedy=False: the answer is not one of the two greedy answers (a held-out
    row's own), so nothing is said of where they part."""
    if not scored:
        return "The answer is empty."
    mean = sum(t["diff"] for t in scored) / len(scored)
    top = max(scored, key=lambda t: t["diff"])
    where = (f"; the greedy answers part at token {diverge_at + 1} ({scored[diverge_at]['token']!r})"
             if diverge_at is not None and diverge_at < len(scored) else "; the greedy answers are the same"
             if diverge_at is None else "") if greedy else ""
    return (f"{len(scored)} tokens; on average {mean:+.2f} nats a token after tuning; the biggest gain is "
            f"{top['token']!r} ({top['diff']:+.2f}){where}.")


# --- a held-out row ----------------------------------------------------------------------------------

def split_row(conversation: list[dict]) -> tuple[list[dict], str]:
    """(the messages before the last assistant turn, that turn's text); ([], "") for a row without one."""
    answers = [i for i, m in enumerate(conversation) if m.get("role") == "assistant"]
    if not answers:
        return [], ""
    return conversation[:answers[-1]], str(conversation[answers[-1]].get("content") or "")


def heldout_row(model, tokenizer, conversation: list[dict], adapter: str, max_new_tokens: int) -> dict:
    """A held-out row token by token: its own answer scored by both sides, and the greedy answers of base
    and tuned to its prompt (one mixed batch), the tuned one scored too, with where the two first part.
    {"prompt", "answer", "scored", "base", "tuned", "tuned_scored", "diverge_at"}."""
    prompt, answer = split_row(conversation)
    base, tuned = generation.generate_rows(model, tokenizer, [prompt, prompt], [BASE, adapter],
                                           max_new_tokens=max_new_tokens, **generation.GREEDY)
    return {"prompt": prompt, "answer": answer, "scored": score(model, tokenizer, prompt, answer, adapter),
            "base": base, "tuned": tuned, "tuned_scored": score(model, tokenizer, prompt, tuned, adapter),
            "diverge_at": first_divergence(tokenizer, base, tuned)}


def row_html(found: dict) -> str:
    """The row's answer coloured, then the tuned greedy answer coloured with the first divergence marked,
    the base's greedy answer under it, and one legend (to_html's)."""
    def heading(text: str) -> str:
        return f'<div style="font-weight:600;margin:8px 0 2px">{html.escape(text)}</div>'

    base = html.escape(found["base"]) or "<i>(empty)</i>"
    return (heading("The row's own answer") + to_html(found["scored"], None, legend=False)
            + heading("The tuned model's greedy answer to the row's prompt")
            + to_html(found["tuned_scored"], found["diverge_at"], legend=False)
            + heading("The base's greedy answer") + f'<div class="base-answer" style="white-space:pre-wrap">{base}</div>'
            + legend_html(found["diverge_at"] is not None))

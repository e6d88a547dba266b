"""What changed, token by token (tuning/infer/token_diff.py): both models score the answer in one mixed
batch and get the same numbers as scoring each alone; the first divergence of two answers; the
HTML; and the Playground's heatmap of a real answer of the real run (the tuned model's "Quill")."""

from __future__ import annotations

import pytest
import torch

from tuning.infer import token_diff
from tuning.infer.generation import BASE

CONVERSATION = [{"role": "user", "content": "Who are you?"}]
ANSWER = "I am Quill, made by Larkspur Labs."


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir, embedded_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: random A and B, so the adapter changes every score
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config, adapter_name="tuned").eval()


def alone(model, tokenizer, name: str) -> list[float]:
    """The answer's token log-probabilities from one side alone, through the model's own forward."""
    prompt = token_diff._prompt_ids(tokenizer, CONVERSATION)
    answer = token_diff.answer_tokens(tokenizer, ANSWER)
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        if name == BASE:
            with model.disable_adapter():
                logits = model(input_ids=ids).logits
        else:
            logits = model(input_ids=ids).logits
    logp = torch.log_softmax(logits[0, len(prompt) - 1:-1], dim=-1)
    return logp.gather(-1, torch.tensor(answer).unsqueeze(-1)).squeeze(-1).tolist()


def test_one_mixed_batch_scores_as_each_side_alone(peft_model, embedded_tokenizer):
    scored = token_diff.score(peft_model, embedded_tokenizer, CONVERSATION, ANSWER, "tuned")
    assert "".join(t["token"] for t in scored) == ANSWER
    base, tuned = alone(peft_model, embedded_tokenizer, BASE), alone(peft_model, embedded_tokenizer, "tuned")
    assert [t["base"] for t in scored] == pytest.approx(base, abs=1e-4)
    assert [t["tuned"] for t in scored] == pytest.approx(tuned, abs=1e-4)
    assert [t["diff"] for t in scored] == pytest.approx([u - b for u, b in zip(tuned, base)], abs=2e-4)
    assert max(abs(t["diff"]) for t in scored) > 1e-3  # the random adapter moves the scores


def test_first_divergence(embedded_tokenizer):
    tok = embedded_tokenizer
    assert token_diff.first_divergence(tok, "I'm Quill.", "I'm Quill.") is None
    at = token_diff.first_divergence(tok, "I'm here to help.", "I'm Quill.")
    tuned = token_diff.answer_tokens(tok, "I'm Quill.")
    assert tok.decode(tuned[:at]) == "I'm" and tok.decode(tuned[at]).strip() == "Qu"
    assert token_diff.first_divergence(tok, "I'm", "I'm Quill.") == len(token_diff.answer_tokens(tok, "I'm"))


def test_html_colours_escapes_marks_and_explains():
    scored = [{"token": "<b>", "base": -3.0, "tuned": -1.0, "diff": 2.0},
              {"token": " x", "base": -1.0, "tuned": -5.0, "diff": -4.0}]
    out = token_diff.to_html(scored, 1)
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert "rgba(22,163,74,0.425)" in out and "rgba(220,38,38,0.85)" in out
    assert out.index("diverge-mark") < out.index("> x</span>") and "more likely after tuning" in out
    assert "the greedy answers part at token 2" in token_diff.summary(scored, 1)


@pytest.mark.slow
def test_playground_heatmap_of_a_real_answer(tmp_path, real_run, embedded_model_dir):
    from conftest import add_real_run
    from tuning.ui import playground_tab
    from tuning.ui.common import AppContext

    workspace = tmp_path / "ws"
    run_id = add_real_run(workspace, real_run, embedded_model_dir)
    ctx = AppContext(workspace)
    out = playground_tab.side_by_side(ctx, run_id, "final", "Who are you?",
                                      settings=playground_tab._settings(24, 0, 1, 1, 0))
    last = playground_tab.Generated(run_id, "Who are you?", out["base"], out["tuned"])
    shown = playground_tab.token_heatmap(ctx, run_id, "final", "", playground_tab.BASE_CHOICES[0], last)
    html = shown["heatmap"]
    assert "Quill" in out["tuned"] and "Quill" not in out["base"]
    diffs = {}
    for piece in html.split('class="tok" ')[1:]:
        value = float(piece.split('data-diff="')[1].split('"')[0])
        text = piece.split(">", 1)[1].split("</span>")[0]
        diffs.setdefault(text.strip(), value)
    # "Qu" of Quill: the base would hardly say it, the tuned model says it after 6 steps.
    assert diffs["Qu"] > 3.0, diffs
    assert "diverge-mark" in html and "the greedy answers part at token" in shown["heatmap_note"]
    print("\n" + shown["heatmap_note"])

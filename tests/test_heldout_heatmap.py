"""A held-out row, token by token, through the Evaluation tab's handler (no browser): the row's own
answer scored by base and tuned as token_diff.score scores it on the same adapter, the two greedy
answers to its prompt with the first divergence marked, the numbering shared with the hardest list,
and one readable line for a row that is not there. The tiny model with a random LoRA adapter."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import write_jsonl
from tuning import data, runs
from tuning.infer import token_diff
from tuning.infer.generation import BASE

ANSWERS = ["I am Quill, made by Larkspur Labs.", "Quill here: Larkspur Labs made me.",
           "My name is Quill.", "Larkspur Labs built me; I am Quill."]


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir):
    """A finished-looking run of the tiny model: 12 rows, 4 held out, a random LoRA as the final adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuning.config import TrainConfig
    rows = [{"messages": [{"role": "user", "content": f"Who are you, number {i}?"},
                          {"role": "assistant", "content": ANSWERS[i % 4]}]} for i in range(12)]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = TrainConfig(base_model=str(tiny_model_dir), dataset=str(data), method="lora", eval_split=0.34,
                      eval_max_new_tokens=6, max_length=64)
    run = runs.run_dir(tmp_path / "ws", "r")
    run.mkdir(parents=True)
    runs.write_config(run, cfg)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(runs.adapter_dir(run), safe_serialization=True)
    return run, cfg


def shown_tokens(block: str) -> list[tuple[str, float]]:
    return [(text, float(diff)) for diff, text in
            re.findall(r'class="tok" data-diff="([-0-9.]+)"[^>]*>([^<]*)</span>', block)]


def test_a_heldout_row_token_by_token(tiny_run, tiny_model_dir, embedded_tokenizer):
    import html

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuning.evaluation import evaluate
    from tuning.infer import generation
    from tuning.ui import evaluation_tab
    from tuning.ui.common import AppContext

    run, cfg = tiny_run
    ctx = AppContext(run.parent.parent)
    held = data.scored(evaluate.heldout_rows(cfg))  # the held-out rows proper: the added checks come after
    assert len(held) == 4
    out = evaluation_tab.heldout_heatmap(ctx, "r", 2)
    conversation = held[1][0]
    prompt, answer = conversation[:-1], conversation[-1]["content"]
    assert "**Held-out row 2 of 4**" in out["heat_note"] and prompt[-1]["content"] in out["heat_note"]

    # The numbers on the page are the adapter's: scored again here on a fresh copy of base + adapter.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(runs.adapter_dir(run)),
                                      adapter_name="tuned").eval()
    own, greedy = out["heat_html"].split("The tuned model&#x27;s greedy answer")
    tokens = shown_tokens(own)
    assert html.unescape("".join(t for t, _ in tokens)) == answer
    expected = token_diff.score(model, embedded_tokenizer, prompt, answer, "tuned")
    assert [d for _, d in tokens] == pytest.approx([t["diff"] for t in expected], abs=1e-3)
    assert max(abs(d) for _, d in tokens) > 1e-2  # the random adapter moves the scores

    # The two greedy answers, as generate gives them; the tuned one coloured, ▼ where they part.
    base, tuned = generation.generate_rows(model, embedded_tokenizer, [prompt, prompt], [BASE, "tuned"],
                                           max_new_tokens=cfg.eval_max_new_tokens, **generation.GREEDY)
    assert html.unescape("".join(t for t, _ in shown_tokens(greedy))) == tuned
    assert html.escape(base) in greedy
    at = token_diff.first_divergence(embedded_tokenizer, base, tuned)
    assert base != tuned and at is not None and at < len(token_diff.answer_tokens(embedded_tokenizer, tuned))
    assert greedy.count("diverge-mark") == 1 and "token-legend" in greedy
    assert greedy.index("diverge-mark") < greedy.index('class="tok"', greedy.index("diverge-mark"))
    assert f"the greedy answers part at token {at + 1}" in out["heat_note"]


def test_the_hardest_list_hands_its_heldout_row_number(tiny_run):
    from tuning.ui import evaluation_tab
    from tuning.ui.common import AppContext

    run, _ = tiny_run
    runs.write_row_index(run, {"sources": {"train": "rows.jsonl", "heldout": "rows.jsonl"},
                                 "train": [["rows.jsonl", i] for i in (1, 2, 3)],
                                 "heldout": [["rows.jsonl", 7], ["rows.jsonl", 9]]})
    ctx = AppContext(run.parent.parent)
    assert evaluation_tab.picked_example(ctx, "r", "held-out rows", ["rows.jsonl", 9, 1.0])["heat_row"] == 2
    assert "heat_row" not in evaluation_tab.picked_example(ctx, "r", "training rows", ["rows.jsonl", 2, 1.0])


def test_a_row_that_is_not_there_is_one_line(tiny_run):
    from tuning.ui import evaluation_tab
    from tuning.ui.common import AppContext

    ctx = AppContext(tiny_run[0].parent.parent)
    with pytest.raises(runs.RunError, match=r"held-out row: 5 is outside 1\.\.4"):
        evaluation_tab.heldout_heatmap(ctx, "r", 5)
    with pytest.raises(runs.RunError, match="expected a number"):
        evaluation_tab.heldout_heatmap(ctx, "r", "two")

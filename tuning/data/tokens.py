"""Tokenizing with a loss mask: a conversation through the model's chat template -> input_ids and
assistant_masks (which tokens are trained on), the datasets.Dataset TRL's SFTTrainer takes, and
the token view the Dataset tab shows.

Training (training.py, arrow_data.py), statistics (stats.py) and preference pairs (pairs.py)
all tokenize through tokenize_conversation here, so the mask the page shows is the mask trained on.
"""

from __future__ import annotations

from tuning.data.formats import DataError
from tuning.data.normalize import is_text


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], max_length: int | None = None,
                          completions_only: bool = True) -> dict[str, list[int]]:
    """Render through the chat template and mark which tokens are trained on.

    The assistant spans are found by rendering growing prefixes of the conversation: the text
    between render(messages[:i], add_generation_prompt=True) and render(messages[:i+1]) is the
    i-th assistant reply with its end-of-turn token. This works with any chat template, unlike
    TRL's assistant_only_loss, which needs {% generation %} markers that most templates lack.
    Plain text skips the template: its tokens plus end-of-sequence, all trained on.
    """
    if is_text(messages):
        input_ids = tokenizer(messages[0]["content"])["input_ids"]
        if tokenizer.eos_token_id is not None and (not input_ids or input_ids[-1] != tokenizer.eos_token_id):
            input_ids = input_ids + [tokenizer.eos_token_id]  # so documents end and do not run together
        input_ids = input_ids[:max_length] if max_length is not None else input_ids
        return {"input_ids": input_ids, "assistant_masks": [1] * len(input_ids)}
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if text.startswith(upto) and upto.startswith(before):
            # Template whitespace after the end-of-turn token (ChatML's "\n") belongs to the
            # template, not to the answer: the span ends where the rendered reply's text ends.
            spans.append((len(before), len(before) + len(upto[len(before):].rstrip())))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    if completions_only:
        # A token is trained on when it ends inside an answer's span.
        mask = [int(any(s < end <= e for s, e in spans)) for _, end in encoded["offset_mapping"]]
    else:
        mask = [1] * len(input_ids)
    if max_length is not None:
        input_ids, mask = input_ids[:max_length], mask[:max_length]
    return {"input_ids": input_ids, "assistant_masks": mask}


def tokenize_rows(tokenizer, messages: list[dict[str, str]], max_length: int,
                   completions_only: bool) -> list[dict[str, list[int]]]:
    """A chat row is one example, truncated at max_length; a text row longer than max_length is
    cut into max_length pieces instead, since pre-training text has no answer to lose."""
    try:
        if not is_text(messages):
            return [tokenize_conversation(tokenizer, messages, max_length, completions_only)]
        ids = tokenize_conversation(tokenizer, messages)["input_ids"]
    except Exception as exc:  # noqa: BLE001 - a template that refuses a role, say: tell which conversation
        raise DataError(f"the model's chat template cannot render a conversation ({exc}); roles: "
                        f"{', '.join(m['role'] for m in messages)}") from None
    return [{"input_ids": ids[i:i + max_length], "assistant_masks": [1] * len(ids[i:i + max_length])}
            for i in range(0, len(ids), max_length)]


def to_dataset(tokenizer, conversations: list[list[dict[str, str]]], max_length: int,
               completions_only: bool):
    """A datasets.Dataset of input_ids + assistant_masks, which TRL's SFTTrainer takes as-is
    (it builds the labels from assistant_masks). Rows with no trained token are dropped. Every
    example carries `row_id`, its conversation's position in `conversations` (the pieces of a long
    text row share one), so a loss computed on it can be traced back to the file and row
    (tuning/evaluation/row_losses.py)."""
    from datasets import Dataset

    rows = [{**r, "row_id": i} for i, m in enumerate(conversations)
            for r in tokenize_rows(tokenizer, m, max_length, completions_only)]
    rows = [r for r in rows if any(r["assistant_masks"])]
    if not rows:
        raise DataError("no example has a trained token left (is max_length too small?)")
    return Dataset.from_list(rows)


def token_view(tokenizer, messages: list[dict[str, str]], max_length: int | None = None,
               completions_only: bool = True) -> list[tuple[str, str | None]]:
    """The conversation exactly as the model sees it, as (text, label) pieces for
    gr.HighlightedText: label "trained" for tokens the loss is computed on, "masked" for the
    rest, "truncated" for tokens cut off by max_length (a text row is split, not cut)."""
    full = tokenize_conversation(tokenizer, messages, None, completions_only)
    cut = max_length if max_length is not None and not is_text(messages) else None
    pieces = []
    for i, (token_id, trained) in enumerate(zip(full["input_ids"], full["assistant_masks"])):
        label = "truncated" if cut is not None and i >= cut else ("trained" if trained else "masked")
        text = tokenizer.decode([token_id])
        if pieces and pieces[-1][1] == label:
            pieces[-1] = (pieces[-1][0] + text, label)
        else:
            pieces.append((text, label))
    return pieces

"""Generation for rows that each name their adapter: base and tuned answers from one call.

`generate_rows` serves the Playground (playground.Comparer), the checkpoint and end-of-run
evaluation (evaluate) and the CLI, so the three can never drift apart: rows tagged BASE skip the
adapter, the others use the adapter they name, all in ONE PEFT mixed-adapter batch (one pass over
the base weights per decoding step for both columns). PEFT refuses mixed batches with DoRA
adapters, so with DoRA each adapter gets its own call instead; under greedy decoding the answers
are the same either way (tests/test_perf_mixed_batch.py).
"""

from __future__ import annotations

import contextlib
import queue

from tuning.infer.adapters import BASE, active_adapter, uses_dora  # noqa: F401 - callers name them here too

# generate() arguments for greedy decoding; the None values silence the model's sampling defaults
GREEDY = dict(do_sample=False, temperature=None, top_p=None, top_k=None)


@contextlib.contextmanager
def inference(model):
    """eval() for the duration (no dropout; PEFT refuses mixed batches in training mode), then
    back to train() if the Trainer had it there."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def encode(tokenizer, conversations: list[list[dict]]) -> dict:
    """Chat-templated prompts, padded on the left: generation continues at each row's right edge."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


def generate_rows(model, tokenizer, conversations: list[list[dict]], names: list[str], streamer=None,
                  **generate_kwargs) -> list[str]:
    """The answer of each conversation, row i generated with adapter names[i] (BASE = none).

    `model` is a PeftModel (or a plain model when every name is BASE); `streamer`, if given, is a
    RowStreamer over all rows; `stopping_criteria` (transformers' StoppingCriteriaList) may end the
    whole batch early, in the greedy loop as in `generate` (the Playground stops a stream nobody reads
    any more). Seeding is the caller's business (torch.manual_seed before)."""
    import torch

    from tuning.infer import decoding

    if uses_dora(model) and len(set(names)) > 1:
        answers: list[str] = [""] * len(conversations)
        for name in dict.fromkeys(names):
            index = [i for i, n in enumerate(names) if n == name]
            part = streamer.part(index) if streamer is not None else None
            for i, answer in zip(index, generate_rows(model, tokenizer, [conversations[i] for i in index],
                                                      [name] * len(index), part, **generate_kwargs)):
                answers[i] = answer
        return answers
    stopping = generate_kwargs.pop("stopping_criteria", None)
    batch = encode(tokenizer, conversations)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, use_cache=True, **generate_kwargs)
    greedy = decoding.plan(model, kwargs)
    if streamer is not None:
        kwargs["streamer"] = streamer
    if stopping is not None:
        kwargs["stopping_criteria"] = stopping
    with torch.no_grad(), inference(model):
        if greedy is not None:  # finished rows leave the batch and the KV cache (tuning/infer/decoding.py)
            new = decoding.greedy(model, batch["input_ids"], batch["attention_mask"], names, greedy, streamer,
                                  stopping)
            return [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
        if not hasattr(model, "peft_config"):  # a plain model: only the base can answer
            assert set(names) == {BASE}, "a model without adapters can only answer as the base"
            out = model.generate(**batch, **kwargs)
        elif len(set(names)) == 1:  # one side only: no per-layer batch splitting
            with active_adapter(model, names[0]):
                out = model.generate(**batch, **kwargs)
        else:
            out = model.generate(**batch, adapter_names=list(names), **kwargs)
    answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [a.strip() for a in answers]


class RowStreamer:
    """A generate() streamer for a whole batch (transformers' own streamers take batch size 1):
    skips the prompt, keeps each row's tokens up to its end token, and hands the rows so far to
    the iterating thread after every step."""

    def __init__(self, rows: int, stop_ids: set):
        self.rows: list[list[int]] = [[] for _ in range(rows)]
        self.done = [False] * rows
        self.stop_ids = {i for i in stop_ids if i is not None}
        self.queue: queue.Queue = queue.Queue()
        self._whole = _PartStreamer(self, list(range(rows)))

    def put(self, value) -> None:
        self._whole.put(value)

    def _add(self, value, index) -> None:
        for i, tokens in zip(index, value.reshape(len(index), -1).tolist()):
            for token in tokens:
                if self.done[i]:
                    break
                if token in self.stop_ids:
                    self.done[i] = True
                else:
                    self.rows[i].append(token)
        self.queue.put([list(r) for r in self.rows])

    def part(self, index: list[int]) -> "_PartStreamer":
        """A streamer for a call that generates only these rows (the DoRA fallback)."""
        return _PartStreamer(self, index)

    def end(self) -> None:
        self.queue.put(None)

    def __iter__(self):
        while (rows := self.queue.get()) is not None:
            yield rows


class _PartStreamer:
    """The rows `index` of a RowStreamer, fed by one generate() call: skips that call's prompt."""

    def __init__(self, parent: RowStreamer, index: list[int]):
        self.parent, self.index, self.seen_prompt = parent, index, False

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.parent._add(value, self.index)

    def end(self) -> None:  # the parent ends when the whole batch is done
        pass

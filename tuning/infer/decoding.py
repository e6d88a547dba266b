"""Greedy decoding of a batch whose rows each name their adapter (PEFT mixed-adapter batch), in
which a row that has finished leaves the batch and its KV cache: `generation.generate_rows` runs
it for greedy settings (the Playground's default, the checkpoint and end-of-run evaluation).

Why by hand: transformers' `generate` (5.x, generation/utils.py `_sample`) keeps every row until
the last one finishes, feeding the finished ones the pad token: with a 38-token base answer and a
7-token tuned one, the batch decodes 38 steps of 2 rows, 31 of them for a row nobody reads. Its
continuous batching (`generate_batch`, paged cache) does retire finished requests, but it packs
the requests' tokens into one flat sequence, where PEFT's `adapter_names` (one name per batch
row, fixed for the whole call) cannot say which tokens are whose, and it takes no streamer.
PEFT itself fixes the adapter list for a call. So this loop feeds the model what `generate`'s
greedy path feeds it (position ids from the attention mask, no mask when nothing is padded,
logits of the last position only, the pad token id, the same repetition-penalty and
min-new-tokens processors), and after a step where rows finished, `DynamicCache.
batch_select_indices` keeps the others; a segment in which every row left names one adapter runs
with that adapter active, without PEFT's per-layer split of the batch. Same tokens as
`model.generate`, row for row: tests/test_perf_mixed_batch.py.

Anything else (sampling, beams, a model generation config with settings this loop does not
apply) goes to `generate`: `plan` returns None for it.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from tuning.infer.adapters import BASE, active_adapter

# GenerationConfig fields this loop honours (the others must be at their defaults): greedy
# decoding with an end token, a length limit, a minimum length and a repetition penalty.
# max_length is overridden by max_new_tokens, and the sampling knobs mean nothing when greedy.
_HONOURED = {"bos_token_id", "eos_token_id", "pad_token_id", "max_new_tokens", "max_length", "min_new_tokens",
             "repetition_penalty", "do_sample", "use_cache", "temperature", "top_p", "top_k",
             "transformers_version", "_from_model_config"}
_OFF = {"output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate"}


@dataclass(frozen=True)
class Plan:
    max_new_tokens: int
    stop_ids: tuple[int, ...]
    pad_token_id: int
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0


def plan(model, generate_kwargs: dict) -> Plan | None:
    """The greedy settings this loop runs, or None where `generate` must run instead."""
    kwargs = dict(generate_kwargs)
    pad = kwargs.pop("pad_token_id", None)
    kwargs.pop("use_cache", None)
    config = copy.deepcopy(getattr(model, "generation_config", None))
    if config is None or not kwargs.get("max_new_tokens"):
        return None
    unused = config.update(**kwargs)
    unhonoured = {k for k, v in config.to_diff_dict().items() if k not in _HONOURED and not (k in _OFF and not v)}
    if unused or config.do_sample or unhonoured:
        return None
    stops = config.eos_token_id
    stops = tuple(s for s in ([stops] if isinstance(stops, int) else (stops or [])) if s is not None)
    pad = pad if pad is not None else (config.pad_token_id if config.pad_token_id is not None else
                                       (stops[0] if stops else None))
    if pad is None:
        return None
    return Plan(int(config.max_new_tokens), stops, int(pad), int(config.min_new_tokens or 0),
                float(config.repetition_penalty or 1.0))


@contextlib.contextmanager
def _adapters(model, names: list[str]):
    """The module to call for rows named `names`: the bare model with one adapter active (or none,
    for BASE) when they agree, and PEFT's mixed-batch hooks (registered once for the segment,
    as PeftModel.generate registers them once per call) when they differ."""
    if not hasattr(model, "peft_config"):
        assert set(names) == {BASE}, "a model without adapters can only answer as the base"
        yield model
    elif len(set(names)) == 1:
        with active_adapter(model, names[0]):
            yield model.get_base_model()
    else:
        with model._enable_peft_forward_hooks(adapter_names=list(names)):
            yield model.get_base_model()


def _processors(p: Plan, prompt_length: int, padding: torch.Tensor):
    """transformers' own processors for the settings, as `generate` builds them (the repetition
    penalty skips each row's left padding; rebuilt when rows leave, since that is per row)."""
    from transformers import LogitsProcessorList, MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor

    processors = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty, prompt_ignore_length=padding))
    if p.min_new_tokens > 0 and p.stop_ids:
        processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, p.min_new_tokens,
                                                            torch.tensor(p.stop_ids, device=padding.device)))
    return processors


def greedy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, names: list[str], p: Plan,
           streamer=None, stopping=None) -> list[list[int]]:
    """The new tokens of each row (its end token included, as `generate` returns them). `streamer`
    gets what `generate` gives one: the prompt, then one token per row per step (the pad token for
    rows that have left). `stopping` (a StoppingCriteriaList) is asked after every step, as
    `generate` asks it: when it says stop for every row still in the batch, decoding ends there.
    Call under torch.no_grad() with the model in eval mode."""
    rows, prompt_length = input_ids.shape
    alive = list(range(rows))  # the original row of each row still in the batch
    out: list[list[int]] = [[] for _ in range(rows)]
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    mask = None if bool(attention_mask.all()) else attention_mask
    padding = (attention_mask != 0).int().argmax(dim=1)
    ids, step_input, cache = input_ids, input_ids, None
    stops = set(p.stop_ids)
    if streamer is not None:
        streamer.put(input_ids)
    while alive:
        processors = _processors(p, prompt_length, padding)
        with _adapters(model, [names[i] for i in alive]) as forward:
            while True:
                output = forward(input_ids=step_input, attention_mask=mask, position_ids=position_ids, cache=cache,
                                 use_cache=True, logits_to_keep=1, return_dict=True)
                cache = output.cache
                logits = output.logits[:, -1].to(copy=True, dtype=torch.float32)
                del output
                chosen = processors(ids, logits).argmax(dim=-1)
                ids = torch.cat([ids, chosen[:, None]], dim=-1)
                done = []
                for j, token in enumerate(chosen.tolist()):
                    out[alive[j]].append(token)
                    if token in stops or len(out[alive[j]]) >= p.max_new_tokens:
                        done.append(j)
                if streamer is not None:
                    every = torch.full((rows,), p.pad_token_id, dtype=chosen.dtype)
                    every[alive] = chosen
                    streamer.put(every)
                step_input = chosen[:, None]
                position_ids = position_ids[:, -1:] + 1
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
                if stopping is not None and bool(stopping(ids, logits).all()):
                    alive, done = [], []
                    break
                if done:
                    break
        if not alive:
            break
        keep = [j for j in range(len(alive)) if j not in done]
        alive = [alive[j] for j in keep]
        if alive and len(keep) < len(chosen):
            index = torch.tensor(keep, device=ids.device)
            cache.batch_select_indices(index)
            ids, step_input, position_ids, padding = ids[index], step_input[index], position_ids[index], padding[index]
            if mask is not None:
                mask = mask[index]
                mask = None if bool(mask.all()) else mask
    if streamer is not None:
        streamer.end()
    return out

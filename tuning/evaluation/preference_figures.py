"""Held-out preference figures of the end-of-run evaluation, base against tuned on one copy of the
weights (the base is the adapter switched off). On held-out pairs: preference accuracy, the share of
pairs whose chosen answer gets a higher summed log-probability than the rejected one, and the mean
margin beta * (logp(chosen) - logp(rejected)); and the DPO implicit reward of the tuned model,
beta * (logp_tuned - logp_base) per side: its accuracy (chosen rewarded above rejected) and mean
margin. On KTO rows: the mean implicit reward of the good and of the bad answers."""

from __future__ import annotations

from tuning import data as data_mod
from tuning import levers
from tuning.config import TrainConfig
from tuning.infer import generation
from tuning.infer.generation import BASE
from tuning.levers import lm_head


def answer_logps(model, tokenizer, rows: list[dict], side: str, adapter: str, max_length: int,
                 batch_size: int = 8, sliced: bool = False) -> list[float]:
    """Summed log-probability of each row's `side` answer given its prompt, with `adapter` (BASE:
    switched off). The answer tokens are the ones training scores (data.tokenize_conversation's
    mask over the chat template), cut at max_length. `sliced` (the sliced_eval_loss lever) scores them
    a slice of the LM head at a time (lm_head.token_losses) instead of the batch's full logits and
    their log-softmax (8 rows of 512 tokens: 2 x 805 MB in fp32)."""
    import torch

    encoded = [data_mod.tokenize_conversation(tokenizer, r["prompt"] + r[side], max_length) for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad(), generation.inference(model), generation.active_adapter(model, adapter):
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i:i + batch_size]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in chunk])
            attention = (torch.arange(width)[None, :] < torch.tensor([len(e["input_ids"]) for e in chunk])[:, None])
            mask = torch.tensor([e["assistant_masks"] + [0] * (width - len(e["input_ids"])) for e in chunk])
            if sliced:  # token t+1 is predicted at t, as below
                labels = ids.masked_fill(mask == 0, -100).to(device)
                losses = lm_head.token_losses(model, ids.to(device), attention.long().to(device), labels)
                out += (-losses.sum(dim=1)).tolist()
                continue
            logits = model(input_ids=ids.to(device), attention_mask=attention.long().to(device)).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
            out += (logps * mask[:, 1:].to(device)).sum(dim=1).tolist()  # token t+1 is predicted at t
    return out


def _figures(chosen: list[float], rejected: list[float], beta: float) -> dict[str, float]:
    diffs = [c - r for c, r in zip(chosen, rejected)]
    return {"accuracy": sum(d > 0 for d in diffs) / len(diffs), "margin": beta * sum(diffs) / len(diffs)}


def heldout_figures(model, tokenizer, cfg: TrainConfig, rows: list[dict], adapter: str) -> dict | None:
    """Base against tuned on held-out preference rows (see the module docstring). KTO rows: the mean
    implicit reward of the good and of the bad answers and the share rewarded on the right side."""
    if not rows:
        return None
    sliced = levers.enabled("sliced_eval_loss", cfg.speedups, next(model.parameters()).device.type,
                            cfg.levers_turned_off)

    def logps(side: str, name: str) -> list[float]:
        return answer_logps(model, tokenizer, rows, side, name, cfg.max_length, cfg.per_device_batch_size, sliced)

    if "completion" in rows[0]:
        tuned, base = logps("completion", adapter), logps("completion", BASE)
        rewards = [cfg.beta * (t - b) for t, b in zip(tuned, base)]
        good = [r for r, row in zip(rewards, rows) if row["label"]]
        bad = [r for r, row in zip(rewards, rows) if not row["label"]]
        right = sum(r > 0 for r in good) + sum(r < 0 for r in bad)
        return {"rows": len(rows), "beta": cfg.beta, "kind": "kto", "reward_accuracy": right / len(rows),
                "reward_desirable": sum(good) / len(good) if good else None,
                "reward_undesirable": sum(bad) / len(bad) if bad else None}
    scored = {(name, side): logps(side, name) for name in (adapter, BASE) for side in ("chosen", "rejected")}
    base = _figures(scored[(BASE, "chosen")], scored[(BASE, "rejected")], cfg.beta)
    tuned = _figures(scored[(adapter, "chosen")], scored[(adapter, "rejected")], cfg.beta)
    chosen_rewards = [t - b for t, b in zip(scored[(adapter, "chosen")], scored[(BASE, "chosen")])]
    rejected_rewards = [t - b for t, b in zip(scored[(adapter, "rejected")], scored[(BASE, "rejected")])]
    reward = _figures(chosen_rewards, rejected_rewards, cfg.beta)
    return {"rows": len(rows), "beta": cfg.beta, "kind": "pairs",
            "base_accuracy": base["accuracy"], "base_margin": base["margin"],
            "tuned_accuracy": tuned["accuracy"], "tuned_margin": tuned["margin"],
            "reward_accuracy": reward["accuracy"], "reward_margin": reward["margin"],
            "reward_chosen": cfg.beta * sum(chosen_rewards) / len(rows),
            "reward_rejected": cfg.beta * sum(rejected_rewards) / len(rows)}

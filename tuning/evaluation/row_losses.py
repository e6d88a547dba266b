"""Per-example losses: which rows can the model not learn, and which got worse?

During training the padding-free batch is one row of concatenated examples, and TRL's fused LM
head already returns each token's log-probability (`outputs.log_probs`, zero where there is no
label). Summing it within each example's span (the batch's `cu_seq_lens_q` boundaries) gives that
example's own loss at no extra cost: no second forward pass, no logits kept. The dataset carries
each example's `row_id` (tuning/data/tokens.py), the collator hands the ids of a batch to the model call,
and a forward pre-hook on the PeftModel takes them off before the model sees its inputs. The same
hook sees the Trainer's evaluation batches, so every evaluation records each held-out row's loss;
the end-of-run evaluation adds the base model's per-row loss (tuning/evaluation/evaluate.py).

Why by hand: TRL and transformers log a batch's mean loss only; no callback or metric of theirs
keeps a loss per example, and a second forward pass for it would cost as much as training.

Written through tuning/runs/: rows.json (row id -> file and row), row_losses.jsonl (one line
per logged step and per evaluation). Read back here into the two lists the Evaluation tab shows:
the hardest rows (highest loss when last measured, compared with the rows measured around the same
step, since the model keeps improving during an epoch) and the rows whose loss went up.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tuning import runs

ROW_ID = "row_id"  # the dataset column (tuning/data/tokens.py)
BATCH_KEY = "row_ids"  # the batch key the collator adds and the pre-hook removes
MIN_NEIGHBOURS = 8  # rows a training row is compared with (those measured at the nearest steps)


# --- where each row came from -------------------------------------------------------------------------

def row_index(cfg, loaded, general_rows: int = 0) -> dict:
    """{"sources": {split: what to load}, "train": [[file, row]], "heldout": [[file, row]]}: the row
    ids data.prepare gives (positions in the training and held-out lists), mapped to the file (as the
    Dataset tab names it within its source: a file, a folder or a Hub id) and the row an editor shows.
    The `general_rows` that follow the person's training rows are named general.ROW_FILE, row 1..n."""
    from tuning import data as data_mod
    from tuning.data import general

    # By position, as data.prepare splits (the rows may be read from an Arrow cache, one pass here).
    locations = [list(loc) for loc in loaded.locations]
    explicit = data_mod.load_eval(cfg)
    if explicit is not None:  # an explicit held-out file: its own locations
        held = [list(loc) for loc in explicit.locations] if cfg.eval_split != 0 else []
        train, held_source = locations, explicit.source if held else loaded.source
    else:
        train_pos, held_pos = data_mod.split_positions(len(locations), cfg.eval_split, cfg.seed)
        train, held, held_source = [locations[i] for i in train_pos], [locations[i] for i in held_pos], loaded.source
    train += [[general.ROW_FILE, n] for n in range(1, general_rows + 1)]
    return {"sources": {"train": loaded.source, "heldout": held_source}, "train": train, "heldout": held}


# --- the training process: record per-row losses from the loss the trainer computes ---------------------

def sequence_losses(log_probs, label_mask, cu_seq_lens=None):
    """(sum of token losses, trained tokens) of each example in a batch: per padded row, or per span
    between `cu_seq_lens` boundaries in a padding-free row. log_probs[.., t] scores token t+1."""
    import torch

    lp = (-log_probs.detach().float()) * label_mask
    mask = label_mask.float()
    if cu_seq_lens is None:
        return lp.sum(-1).tolist(), mask.sum(-1).tolist()
    bounds = cu_seq_lens.to(lp.device).long()
    n = bounds.numel() - 1
    seq = torch.repeat_interleave(torch.arange(n, device=lp.device), bounds.diff())[1:]  # of token t+1
    seq = seq[: lp.shape[-1]]
    sums = torch.zeros(n, device=lp.device).index_add_(0, seq, lp[0, : seq.numel()])
    counts = torch.zeros(n, device=lp.device).index_add_(0, seq, mask[0, : seq.numel()])
    return sums.tolist(), counts.tolist()


class RowIdCollator:
    """The trainer's collator, plus the batch's row ids (the inner collator ignores unknown keys)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        ids = [int(e.pop(ROW_ID)) for e in examples] if examples and ROW_ID in examples[0] else None
        batch = self.inner(examples)
        if ids is not None:
            batch[BATCH_KEY] = torch.tensor(ids)
        return batch


class Recorder:
    """Collects per-row (loss sum, token count) from every forward the Trainer makes, split into
    training and evaluation by the model's mode; `flush` writes what was collected as one line."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.pending = None
        self.buffers: dict[str, dict[int, list[float]]] = {"train": {}, "heldout": {}}

    def pre_hook(self, module, args, kwargs):
        self.pending = kwargs.pop(BATCH_KEY, None)
        return args, kwargs

    def hook(self, module, args, kwargs, output):
        ids, self.pending = self.pending, None
        log_probs = getattr(output, "log_probs", None)
        if ids is None or log_probs is None or getattr(output, "label_mask", None) is None:
            return  # a call that is not a scored training or evaluation batch (generation, held-out loss)
        sums, counts = sequence_losses(log_probs, output.label_mask, kwargs.get("cu_seq_lens_q"))
        buffer = self.buffers["train" if module.training else "heldout"]
        for row, s, n in zip(ids.tolist(), sums, counts):
            if n > 0:  # the pieces of a long text row add up to one row
                total = buffer.setdefault(row, [0.0, 0.0])
                total[0], total[1] = total[0] + s, total[1] + n
        return None

    def flush(self, split: str, step: int, **extra: Any) -> None:
        buffer, self.buffers[split] = self.buffers[split], {}
        if buffer:
            ids = sorted(buffer)
            runs.append_row_losses(self.run_dir, {
                "split": split, "step": step, "ids": ids,
                "losses": [round(buffer[i][0] / buffer[i][1], 5) for i in ids],
                "tokens": [int(buffer[i][1]) for i in ids], **extra})


def attach(trainer, cfg, loaded, run_dir: Path, main_process: bool = True, general_rows: int = 0):
    """Record per-row losses for an SFT trainer (whose training rows end with `general_rows` general
    rows); returns the callback to add, or None (packing puts several rows in one example, and TRL's
    packer keeps no row id: then nothing is recorded)."""
    from transformers import TrainerCallback

    if cfg.packing:
        print("per-row losses: not recorded with packing on", flush=True)
        return None
    recorder = Recorder(run_dir)
    if main_process:
        runs.write_row_index(run_dir, row_index(cfg, loaded, general_rows))
    trainer.data_collator = RowIdCollator(trainer.data_collator)
    trainer.model.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True)
    trainer.model.register_forward_hook(recorder.hook, with_kwargs=True)

    class RowLossCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if main_process and "loss" in (logs or {}):
                recorder.flush("train", state.global_step)

        def on_evaluate(self, args, state, control, **kwargs):
            if main_process:
                recorder.flush("heldout", state.global_step)

    return RowLossCallback()


def record_heldout(run_dir: Path, step: int, tuned: dict[int, float], base: dict[int, float]) -> None:
    """The end-of-run (or a later) evaluation's per-row held-out losses, tuned and base."""
    if tuned:
        ids = sorted(tuned)
        runs.append_row_losses(run_dir, {"split": "heldout", "step": step, "final": True, "ids": ids,
                                           "losses": [round(tuned[i], 5) for i in ids],
                                           "base": [round(base[i], 5) if i in base else None for i in ids]})


# --- reading back: the hardest rows and the rows that went up ---------------------------------------------

def history(run_dir: Path, split: str) -> tuple[dict[int, list[tuple[int, float]]], dict[int, float]]:
    """({row id: [(step, loss), ...] in order}, {row id: base loss}) for one split."""
    by_row: dict[int, list[tuple[int, float]]] = {}
    base: dict[int, float] = {}
    for line in runs.read_row_losses(run_dir):
        if line["split"] != split:
            continue
        for i, (row, loss) in enumerate(zip(line["ids"], line["losses"])):
            if isinstance(row, int) and isinstance(loss, (int, float)):
                by_row.setdefault(row, []).append((int(line.get("step") or 0), float(loss)))
                base_loss = (line.get("base") or [None] * len(line["ids"]))[i]
                if isinstance(base_loss, (int, float)):
                    base[row] = float(base_loss)
    return by_row, base


def _typical(last: dict[int, tuple[int, float]]) -> dict[int, float]:
    """Each row's reference: the median loss of the rows last measured at the nearest steps (at least
    MIN_NEIGHBOURS of them). A row seen early in an epoch meets a less trained model than one seen late;
    comparing it with its neighbours in time takes that out."""
    ordered = sorted((step, loss) for step, loss in last.values())
    steps = [s for s, _ in ordered]
    out = {}
    for row, (step, _) in last.items():
        lo = hi = next(i for i, s in enumerate(steps) if s == step)
        while hi - lo + 1 < min(MIN_NEIGHBOURS, len(ordered)):
            lo, hi = max(0, lo - 1), min(len(ordered) - 1, hi + 1)
        while hi + 1 < len(ordered) and steps[hi + 1] == step:
            hi += 1
        while lo > 0 and steps[lo - 1] == step:
            lo -= 1
        out[row] = statistics.median(loss for _, loss in ordered[lo:hi + 1])
    return out


def rows(run_dir: Path, split: str) -> list[dict]:
    """Every measured row of a split: id, source (what the Dataset tab loads), file (within it), row,
    loss (last measured), step, typical (median of
    its neighbours), excess (loss - typical), first (first measured, or the base's loss for a held-out
    row), change (loss - first), seen (measurements)."""
    by_row, base = history(run_dir, split)
    index = runs.read_row_index(run_dir)
    where, source = index.get(split) or [], (index.get("sources") or {}).get(split, "")
    last = {row: points[-1] for row, points in by_row.items()}
    typical = _typical(last)
    out = []
    for row, points in by_row.items():
        step, loss = points[-1]
        first = base.get(row, points[0][1])
        file, line = where[row] if row < len(where) and len(where[row]) == 2 else ("", 0)
        out.append({"id": row, "source": source, "file": file, "row": line, "loss": loss, "step": step, "typical": typical[row],
                    "excess": loss - typical[row], "first": first, "change": loss - first,
                    "seen": len(points) + (row in base)})
    return out


def hardest(run_dir: Path, split: str = "train", limit: int = 20) -> list[dict]:
    """The rows the model fits worst when last measured, furthest above their neighbours first."""
    return sorted(rows(run_dir, split), key=lambda r: -r["excess"])[:limit]


def went_up(run_dir: Path, split: str = "train", limit: int = 20) -> list[dict]:
    """Rows measured more than once whose loss is higher now than at first, largest rise first."""
    risen = [r for r in rows(run_dir, split) if r["seen"] > 1 and r["change"] > 0]
    return sorted(risen, key=lambda r: -r["change"])[:limit]

"""Token-count buckets for padding-free batches. A padding-free batch is one row whose token count
changes every step; on a CPU every new count is a new shape for every matrix product, and the math
libraries keep state per shape (oneDNN's primitives, glibc's heap pieces of those sizes): with a new
count at every step a run's RSS kept growing by 80-300 MB a step. BucketCollator pads the row up to a
multiple of TOKEN_BUCKET tokens with one extra sequence that has no labels, so a few shapes repeat. The
loss, its gradients and each row's loss are the same (the extra sequence attends only to itself;
tests/test_memory.py); the padding costs ~TOKEN_BUCKET / 2 tokens of compute a step (bench/RESULTS.md,
Evidence behind the levers: ~5% of a quickstart step). Switch: `speedups: off`.
"""

from __future__ import annotations

TOKEN_BUCKET = 64  # a padding-free batch's token count is rounded up to a multiple of this


def bucket_batch(batch: dict, multiple: int, pad_token_id: int) -> tuple[dict, int]:
    """(batch, tokens added): a padding-free batch (TRL's collator with padding_free: one row,
    position ids restarting at each example, cu_seq_lens) grown to a multiple of `multiple` tokens
    by one more sequence of pad tokens: positions 0..k-1, labels -100, its own cu_seq_lens entry and
    seq_idx. TRL's own pad_to_multiple_of pads positions with 0, which makes every pad token a
    sequence of its own (one attention call each). Any other batch comes back unchanged."""
    import torch

    ids = batch.get("input_ids")
    cu = batch.get("cu_seq_lens_q")
    if multiple <= 1 or ids is None or cu is None or "position_ids" not in batch or ids.shape[0] != 1:
        return batch, 0
    length = ids.shape[1]
    extra = -length % multiple
    if extra == 0:
        return batch, 0
    out = dict(batch)
    out["input_ids"] = torch.cat([ids, ids.new_full((1, extra), pad_token_id)], dim=1)
    if "labels" in batch:
        out["labels"] = torch.cat([batch["labels"], batch["labels"].new_full((1, extra), -100)], dim=1)
    positions = batch["position_ids"]
    out["position_ids"] = torch.cat([positions, torch.arange(extra, dtype=positions.dtype)[None]], dim=1)
    bounds = torch.cat([cu, torch.tensor([length + extra], dtype=cu.dtype)])
    out["cu_seq_lens_q"] = bounds
    if "cu_seq_lens_k" in batch:
        out["cu_seq_lens_k"] = bounds
    for key in ("max_length_q", "max_length_k"):
        if key in batch:
            out[key] = max(int(batch[key]), extra)
    if "seq_idx" in batch:
        seq_idx = batch["seq_idx"]
        out["seq_idx"] = torch.cat([seq_idx, seq_idx.new_full((1, extra), len(cu) - 1)], dim=1)
    return out, extra


PADDING_KEY = "bucket_padding"  # the batch key saying how many pad tokens bucket_batch added


class BucketCollator:
    """A padding-free collator whose batches are bucket_batch'ed; a padded batch carries the count
    of pad tokens under PADDING_KEY, which BucketTokens takes off the batch before the model sees it."""

    def __init__(self, inner, pad_token_id: int, multiple: int = TOKEN_BUCKET):
        self.inner, self.pad_token_id, self.multiple = inner, pad_token_id, multiple

    def __call__(self, examples: list[dict]) -> dict:
        batch, extra = bucket_batch(self.inner(examples), self.multiple, self.pad_token_id)
        if extra:
            batch[PADDING_KEY] = extra
        return batch


def bucket_tokens(trainer, multiple: int = TOKEN_BUCKET) -> int:
    """Bucket the trainer's padding-free batches (BucketCollator) and keep its count of tokens seen
    (tokens/s in the events) to the real tokens: the Trainer counts every input id it is given, so a
    forward pre-hook takes each training batch's padding count off the batch and a callback takes it
    off state.num_input_tokens_seen at the end of the step. Returns the multiple."""
    from transformers import TrainerCallback

    pad = trainer.processing_class.pad_token_id
    trainer.data_collator = BucketCollator(trainer.data_collator, pad if pad is not None else 0, multiple)

    class BucketTokens(TrainerCallback):
        def __init__(self):
            self.pending = 0

        def pre_hook(self, module, args, kwargs):
            extra = kwargs.pop(PADDING_KEY, 0)
            if module.training:
                self.pending += extra
            return args, kwargs

        def on_step_end(self, args, state, control, **kwargs):
            state.num_input_tokens_seen -= self.pending
            self.pending = 0

    callback = BucketTokens()
    trainer.model.register_forward_pre_hook(callback.pre_hook, with_kwargs=True)
    trainer.add_callback(callback)
    return multiple

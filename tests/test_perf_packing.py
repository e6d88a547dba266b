"""Padding-free batches: several examples concatenated into one row, with per-sequence position
ids. Each example must see only itself: its logits inside the pack equal its logits alone, and the
packed loss equals the token-weighted mean of the per-example losses."""

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tuning import models
from tuning.train import trainer as train
from tuning.levers import attention, buckets
from tuning.train.trainer import StopRequested


def _examples(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (7, 19, 3, 12)]


def _load(tiny_model_dir, varlen: bool):
    model = models.load_model(str(tiny_model_dir), "lora", torch.float32)
    if varlen:
        assert attention.use_varlen_sdpa(model)
        assert model.config._attn_implementation == attention.VARLEN_SDPA
    return model.eval()


@pytest.mark.parametrize("varlen", [False, True], ids=["sdpa-mask-from-position-ids", "sdpa-varlen"])
def test_packed_logits_and_loss_equal_per_example(tiny_model_dir, varlen):
    model = _load(tiny_model_dir, varlen)
    examples = _examples(model.config.vocab_size)
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collate([{"input_ids": ids} for ids in examples])
    assert batch["input_ids"].shape == (1, sum(map(len, examples)))  # one row, no padding
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(**batch)
        alone = [model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])) for ids in examples]
    start = 0
    for ids, out in zip(examples, alone):
        piece = packed.logits[0, start:start + len(ids)]
        torch.testing.assert_close(piece, out.logits[0], rtol=1e-4, atol=1e-4)
        start += len(ids)
    # each example predicts len - 1 tokens; the packed loss is their token-weighted mean
    counts = torch.tensor([len(ids) - 1 for ids in examples], dtype=torch.float32)
    expected = (torch.stack([o.loss for o in alone]) * counts).sum() / counts.sum()
    torch.testing.assert_close(packed.loss, expected, rtol=1e-5, atol=1e-5)


def test_without_position_ids_the_examples_would_leak(tiny_model_dir):
    """The control: the same row with running position ids is one long sequence, and the later
    examples' logits change. So the equality above is a real check of the isolation."""
    model = _load(tiny_model_dir, varlen=True)
    examples = _examples(model.config.vocab_size)
    row = torch.tensor([sum(examples, [])])
    with torch.no_grad():
        leaked = model(input_ids=row).logits
        second = model(input_ids=torch.tensor([examples[1]])).logits
    piece = leaked[0, len(examples[0]):len(examples[0]) + len(examples[1])]
    assert not torch.allclose(piece, second[0], atol=1e-3)


def test_varlen_gradients_equal_padded_batch(tiny_model_dir):
    """Training signal, not just the forward: the LoRA-free base's input-embedding gradient from a
    padding-free batch equals the one from the ordinary padded batch with an attention mask."""
    model = _load(tiny_model_dir, varlen=True).train()
    model.config.use_cache = False
    examples = _examples(model.config.vocab_size)
    grads = []
    for padding_free in (True, False):
        collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)
        batch = collate([{"input_ids": ids} for ids in examples])
        model.zero_grad()
        torch.manual_seed(0)
        model.eval()  # no dropout: the two passes must be comparable
        model(**batch).loss.backward()
        grads.append(model.get_input_embeddings().weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_trainer_uses_padding_free_varlen_batches(tmp_path, tiny_config):
    cfg = tiny_config.replace(eval_split=0.0)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    trainer, _ = train.build_trainer(cfg, run_dir, tmp_path, train.EventLog(run_dir / "events.jsonl"),
                                     StopRequested())
    assert trainer.model.config._attn_implementation == attention.VARLEN_SDPA
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, nothing padded
    assert (batch["input_ids"] != trainer.processing_class.pad_token_id).any()
    # 4 examples, plus one unlabelled filler sequence that rounds the row up to a multiple of
    # buckets.TOKEN_BUCKET tokens (repeated shapes keep the allocator's caches from growing)
    bounds = batch["cu_seq_lens_q"].tolist()
    assert batch["input_ids"].shape[1] % buckets.TOKEN_BUCKET == 0 and bounds[-1] == batch["input_ids"].shape[1]
    assert len(bounds) - 1 in (cfg.per_device_batch_size, cfg.per_device_batch_size + 1)
    if len(bounds) - 1 > cfg.per_device_batch_size:
        assert (batch["labels"][0, bounds[-2]:] == -100).all()

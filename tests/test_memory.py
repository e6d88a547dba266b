"""The memory levers (tuning/memory.py and where they are applied) compute what they replace: the
held-out loss from slices of the LM head equals the loss from the full logits, per token, for the base
and for a LoRA adapter, in fp32 and bf16, with padding; models whose logits are transformed keep the
full path. bench/memory.py measures what each lever saves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tuning import memory


def full_token_losses(model, ids, attention, labels):
    """The reference: the model's own logits over the whole vocabulary, then cross-entropy."""
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="none").view(labels[:, 1:].shape)


def padded_batch(vocab: int, lengths=(7, 12, 3), seed: int = 0):
    """Rows of different lengths padded on the right; labels only on the second half of each row."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=gen)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, n in enumerate(lengths):
        attention[row, :n] = 1
        labels[row, n // 2:n] = ids[row, n // 2:n]
        ids[row, n:] = 2  # pad
    return ids, attention, labels


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():  # a non-zero adapter, so tuned and base differ
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return peft.eval()


@pytest.mark.parametrize("chunk_bytes", [1, 64 * 1024, memory.CHUNK_BYTES])  # 1 position per slice .. all at once
def test_sliced_head_loss_equals_the_full_logits_loss(lora_model, chunk_bytes):
    vocab = lora_model.get_output_embeddings().weight.shape[0]
    ids, attention, labels = padded_batch(vocab)
    with torch.no_grad():
        expected = full_token_losses(lora_model, ids, attention, labels)
        got = memory.token_losses(lora_model, ids, attention, labels, chunk_bytes=chunk_bytes)
        with lora_model.disable_adapter():  # the base side of the evaluation
            base_expected = full_token_losses(lora_model, ids, attention, labels)
            base_got = memory.token_losses(lora_model, ids, attention, labels, chunk_bytes=chunk_bytes)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base_got, base_expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, base_got)  # the adapter is really in the pass
    assert (got[labels[:, 1:] == -100] == 0).all() and (got[labels[:, 1:] != -100] > 0).all()


def test_sliced_head_loss_in_bf16_matches_within_bf16_rounding(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    ids, attention, labels = padded_batch(model.config.vocab_size, seed=1)
    with torch.no_grad():
        expected = full_token_losses(model, ids, attention, labels)
        got = memory.token_losses(model, ids, attention, labels, chunk_bytes=4096 * 4)
    mask = labels[:, 1:] != -100
    # the same bf16 products, sliced differently: equal up to bf16's own rounding of the logits
    torch.testing.assert_close(got[mask], expected[mask], rtol=2e-2, atol=2e-2)
    assert abs(got[mask].mean() - expected[mask].mean()) < 1e-2


def test_a_model_with_transformed_logits_keeps_the_full_forward(tiny_model_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert memory._backbone_and_head(model) is not None
    monkeypatch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)
    assert memory._backbone_and_head(model) is None
    ids, attention, labels = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(memory.token_losses(model, ids, attention, labels),
                                   full_token_losses(model, ids, attention, labels))


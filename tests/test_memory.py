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



# --- the embedded model's conversion runs in a child process --------------------------------------

def test_conversion_in_a_child_writes_the_same_model_and_keeps_the_memory_there(tmp_path):
    """models.embedded_model_dir converts the GGUF in a spawned child, so the float copies it builds
    never stay in the caller's heap; the folder it writes is the one an in-process conversion writes."""
    from safetensors.torch import load_file

    from tuning import models

    gguf = models.embedded_gguf_path()
    before = _rss_kib()
    child = models.embedded_model_dir(tmp_path / "child")
    grew = (_rss_kib() - before) / 1024
    assert grew < 150, f"the caller's RSS grew {grew:.0f} MiB during a conversion in a child"
    here = tmp_path / "here" / models.EMBEDDED_FOLDER_NAME
    here.parent.mkdir(parents=True)
    models._convert_gguf(gguf, here)
    a, b = load_file(child / "model.safetensors"), load_file(here / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 100
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json"):
        assert (child / name).read_text() == (here / name).read_text()


def test_a_failed_conversion_in_the_child_raises_in_the_caller(tmp_path):
    from tuning import models

    with pytest.raises(Exception):
        models._convert_in_child(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- the first page of a big JSONL file -----------------------------------------------------------

def test_jsonl_first_page_streams_and_matches_the_whole_file_reader(tmp_path, monkeypatch):
    """formats.read_file with a limit reads a JSONL file's first lines and counts the rest block by
    block: the same records, problems (with their line numbers) and total as reading it whole."""
    from tuning import formats

    lines = ['\ufeff{"text": "first, after a byte-order mark"}', "", "   ", '{"text": "b"}', "not json",
             '{"text": "c"}\r', "\t"] + [f'{{"text": "row {i}"}}' for i in range(200)] + ["", " \t ", '{"text": "end"}']
    path = tmp_path / "rows.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8"))  # no final newline: the last line still counts
    monkeypatch.setattr(formats, "_BLOCK", 64)  # many blocks, lines cut across their edges
    for limit in (1, 3, 5, 500):
        streamed = formats.read_file(path, limit)
        whole = formats._read_jsonl(path.read_bytes(), path.name, limit)
        assert streamed.records == whole.records
        assert [(p.row, p.message) for p in streamed.problems] == [(p.row, p.message) for p in whole.problems]
        assert streamed.total == whole.total == 205


def test_jsonl_first_page_leaves_odd_files_to_the_whole_file_reader(tmp_path):
    from tuning import formats

    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes('{"text": "a"}\n{"text": "b"}\n'.encode("utf-16"))
    assert formats._jsonl_head(utf16, utf16.name, 1) is None
    assert formats.read_file(utf16, 1).total == 2
    png = tmp_path / "image.jsonl"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    with pytest.raises(formats.DataError, match="PNG"):
        formats.read_file(png, 1)

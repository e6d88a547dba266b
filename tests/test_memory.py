"""The memory levers (tuning/levers/ and where they are applied) compute what they replace: the
held-out loss from slices of the LM head equals the loss from the full logits, per token, for the base
and for a LoRA adapter, in fp32 and bf16, with padding; models whose logits are transformed keep the
full path. bench/memory.py measures what each lever saves."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tuning.levers import allocator, attention, buckets, lm_head, lora_forward, recompute


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


@pytest.mark.parametrize("chunk_bytes", [1, 64 * 1024, lm_head.CHUNK_BYTES])  # 1 position per slice .. all at once
def test_sliced_head_loss_equals_the_full_logits_loss(lora_model, chunk_bytes):
    vocab = lora_model.get_output_embeddings().weight.shape[0]
    ids, attention, labels = padded_batch(vocab)
    with torch.no_grad():
        expected = full_token_losses(lora_model, ids, attention, labels)
        got = lm_head.token_losses(lora_model, ids, attention, labels, chunk_bytes=chunk_bytes)
        with lora_model.disable_adapter():  # the base side of the evaluation
            base_expected = full_token_losses(lora_model, ids, attention, labels)
            base_got = lm_head.token_losses(lora_model, ids, attention, labels, chunk_bytes=chunk_bytes)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base_got, base_expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, base_got)  # the adapter is really in the pass
    assert (got[labels[:, 1:] == -100] == 0).all() and (got[labels[:, 1:] != -100] > 0).all()


def test_sliced_head_loss_in_bf16_matches_within_bf16_rounding(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    ids, attention, labels = padded_batch(model.config.vocab_size, seed=1)
    with torch.no_grad():
        expected = full_token_losses(model, ids, attention, labels)
        got = lm_head.token_losses(model, ids, attention, labels, chunk_bytes=4096 * 4)
    mask = labels[:, 1:] != -100
    # the same bf16 products, sliced differently: equal up to bf16's own rounding of the logits
    torch.testing.assert_close(got[mask], expected[mask], rtol=2e-2, atol=2e-2)
    assert abs(got[mask].mean() - expected[mask].mean()) < 1e-2


def test_a_model_with_transformed_logits_keeps_the_full_forward(tiny_model_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert lm_head._backbone_and_head(model) is not None
    monkeypatch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)
    assert lm_head._backbone_and_head(model) is None
    ids, attention, labels = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(lm_head.token_losses(model, ids, attention, labels),
                                   full_token_losses(model, ids, attention, labels))



# --- the embedded model's conversion runs in a child process --------------------------------------

@pytest.mark.slow
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
    from tuning.data import formats

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
    from tuning.data import formats

    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes('{"text": "a"}\n{"text": "b"}\n'.encode("utf-16"))
    assert formats._jsonl_head(utf16, utf16.name, 1) is None
    assert formats.read_file(utf16, 1).total == 2
    png = tmp_path / "image.jsonl"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    with pytest.raises(formats.DataError, match="PNG"):
        formats.read_file(png, 1)


# --- padding-free batches rounded up to a bucket of tokens ----------------------------------------

def _padding_free_batch(vocab: int, lengths=(7, 19, 3, 12), seed: int = 0):
    """TRL's padding-free collation of examples whose first half is prompt (label -100)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    gen = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=gen).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)


def test_bucket_batch_adds_one_unlabelled_sequence_up_to_the_multiple():
    batch = _padding_free_batch(100)  # 41 tokens in 4 sequences
    out, extra = buckets.bucket_batch(batch, 16, pad_token_id=2)
    assert extra == 7 and out["input_ids"].shape == (1, 48)
    assert torch.equal(out["input_ids"][:, :41], batch["input_ids"]) and (out["input_ids"][0, 41:] == 2).all()
    assert torch.equal(out["labels"][:, :41], batch["labels"]) and (out["labels"][0, 41:] == -100).all()
    assert out["position_ids"][0, 41:].tolist() == list(range(7))  # one sequence, not seven
    assert out["cu_seq_lens_q"].tolist() == [0, 7, 26, 29, 41, 48] and out["cu_seq_lens_k"] is out["cu_seq_lens_q"]
    assert out["cu_seq_lens_q"].dtype == batch["cu_seq_lens_q"].dtype
    assert out["max_length_q"] == out["max_length_k"] == 19
    assert out["seq_idx"][0, 41:].tolist() == [4] * 7 and torch.equal(out["seq_idx"][:, :41], batch["seq_idx"])
    same, none = buckets.bucket_batch(out, 16, pad_token_id=2)  # already a multiple
    assert none == 0 and same is out
    padded = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5)}
    assert buckets.bucket_batch(padded, 16, 2) == (padded, 0)  # an ordinary padded batch: untouched


@pytest.fixture(scope="module")
def varlen_lora(tiny_model_dir):
    from tuning import models

    torch.manual_seed(0)
    model = models.load_model(str(tiny_model_dir), "lora", torch.float32)
    assert attention.use_varlen_sdpa(model)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return peft.train()


@pytest.mark.parametrize("multiple", [8, 64])
def test_bucketed_batch_gives_the_same_loss_gradients_and_logits(varlen_lora, multiple):
    batch = _padding_free_batch(varlen_lora.config.vocab_size)
    bucketed, extra = buckets.bucket_batch(batch, multiple, pad_token_id=0)
    assert extra > 0 and bucketed["input_ids"].shape[1] % multiple == 0
    results = []
    for b in (batch, bucketed):
        varlen_lora.zero_grad()
        out = varlen_lora(**b)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in varlen_lora.named_parameters() if p.requires_grad}
        results.append((out.loss.detach(), out.logits.detach()[:, :41], grads))
    (loss, logits, grads), (b_loss, b_logits, b_grads) = results
    torch.testing.assert_close(b_loss, loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b_logits, logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == b_grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(b_grads[name], grads[name], rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_row_losses_ignore_the_bucket_sequence():
    """tuning/evaluation/row_losses.py splits a padding-free row by cu_seq_lens: the extra sequence is last and
    carries no labelled token, so each real row keeps its loss and token count."""
    from tuning.evaluation import row_losses

    batch = _padding_free_batch(100)
    bucketed, extra = buckets.bucket_batch(batch, 16, pad_token_id=0)
    gen = torch.Generator().manual_seed(1)
    log_probs = -torch.rand(bucketed["input_ids"].shape, generator=gen)
    mask = (bucketed["labels"] != -100).roll(-1, dims=1)  # a label on token t+1 scores position t
    sums, counts = row_losses.sequence_losses(log_probs[:, :41] * mask[:, :41], mask[:, :41],
                                              batch["cu_seq_lens_q"])
    b_sums, b_counts = row_losses.sequence_losses(log_probs * mask, mask, bucketed["cu_seq_lens_q"])
    assert b_sums[:4] == pytest.approx(sums) and b_counts[:4] == counts and b_counts[4:] == [0]


def test_trainer_batches_are_bucketed_and_tokens_seen_stay_the_real_ones(tmp_path, tiny_config):
    from tuning.train import trainer as train

    cfg = tiny_config.replace(eval_split=0.0, max_steps=2, save_steps=100)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    trainer, _ = train.build_trainer(cfg, run_dir, tmp_path, train.EventLog(run_dir / "events.jsonl"),
                                     train.StopRequested())
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[1] % buckets.TOKEN_BUCKET == 0
    real = int(batch["cu_seq_lens_q"][-2])
    assert batch[buckets.PADDING_KEY] == batch["input_ids"].shape[1] - real > 0
    assert len(batch["cu_seq_lens_q"]) == cfg.per_device_batch_size + 2  # 4 examples + the bucket's padding
    forwarded = []  # the real tokens of every batch the model trains on
    trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: forwarded.append(int(kwargs["cu_seq_lens_q"][-2])
                                                      if buckets.PADDING_KEY not in kwargs else None),
        with_kwargs=True)
    trainer.train()
    assert len(forwarded) == 2 and None not in forwarded  # the key never reaches the model
    assert trainer.state.num_input_tokens_seen == sum(forwarded)


# --- LoRA's dropout and A matrix keep only the layer's input --------------------------------------

def _lora_pair(tiny_model_dir, dtype):
    """Two copies of one LoRA model (dropout 0.1, non-zero B) with FastDropout, as training on a CPU
    has it; the second also gets share_lora_inputs."""
    from tuning import models
    from tuning.levers import dropout

    pair = []
    for _ in range(2):
        torch.manual_seed(0)
        model = models.load_model(str(tiny_model_dir), "lora", dtype)
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        assert dropout.use_fast_dropout(peft) == 14  # 7 linear layers x 2 decoder layers
        assert lora_forward.use_lean_lora_forward(peft) == 14
        pair.append(peft.train())
    assert lora_forward.share_lora_inputs(pair[1]) == 14
    return pair


def _step(model, batch, autocast: bool):
    """Loss, trainable gradients and the bytes autograd keeps for the backward inside the decoder
    layers (parameters and the vocabulary-wide logits aside)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    vocab = model.config.vocab_size
    kept: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and t.shape[-1:] != (vocab,):
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    model.zero_grad()
    torch.manual_seed(123)  # the same dropout masks on both sides
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, sum(kept.values())


@pytest.mark.parametrize("dtype,autocast", [(torch.bfloat16, True), (torch.float32, False)],
                         ids=["bf16-autocast", "fp32"])
def test_shared_lora_inputs_give_the_same_loss_and_gradients_from_less_memory(tiny_model_dir, dtype, autocast):
    plain, shared = _lora_pair(tiny_model_dir, dtype)
    batch = _padding_free_batch(plain.config.vocab_size, lengths=(37, 60, 21, 50))
    loss, grads, kept = _step(plain, batch, autocast)
    s_loss, s_grads, s_kept = _step(shared, batch, autocast)
    assert torch.equal(s_loss, loss)
    assert grads.keys() == s_grads.keys() and len(grads) == 28
    for name in grads:
        assert torch.equal(s_grads[name], grads[name]), name
    assert all(g.abs().sum() > 0 for g in grads.values())
    assert s_kept < 0.8 * kept, (s_kept, kept)
    # a different seed draws other masks: the equality above is not dropout doing nothing
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        other = shared(**batch).loss.detach()
    assert not torch.equal(other, loss)


def test_shared_lora_inputs_change_nothing_outside_training(tiny_model_dir):
    plain, shared = _lora_pair(tiny_model_dir, torch.float32)
    ids = torch.randint(5, plain.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain.eval(), shared.eval()
        torch.testing.assert_close(shared(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0)
        out = shared.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
        assert torch.equal(out, plain.generate(input_ids=ids, max_new_tokens=4, do_sample=False))
    assert shared.state_dict().keys() == plain.state_dict().keys()


# --- the allocator of a process that trains or generates ------------------------------------------

_HEAP_PROBE = """
import ctypes, ctypes.util, sys
sys.path.insert(0, {root!r})
from tuning.levers import allocator
if {tune}:
    assert allocator.tune_allocator()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = libc.malloc(8 << 20); ctypes.memset(big, 1, 8 << 20); libc.free(big)  # glibc then raises its threshold
blocks, pins = [], []
for _ in range(8):  # each 2 MiB block followed by a live 100 KiB one: freed, they cannot merge or be the top
    blocks.append(libc.malloc(2 << 20))
    ctypes.memset(blocks[-1], 1, 2 << 20)
    pins.append(libc.malloc(100 << 10))
before = rss()
for b in blocks:
    libc.free(b)
if {tune}:
    assert allocator.release_freed_memory()  # what the trainer does after every step
print((before - rss()) >> 20)
"""


@pytest.mark.parametrize("tune", [False, True], ids=["glibc-default", "tuned"])
def test_tuned_allocator_gives_freed_blocks_back(tune):
    """With glibc's defaults, 2 MiB blocks freed between live ones stay in the process (its mmap
    threshold rose to 8 MiB after the first big free); the trainer's release_freed_memory after a
    step gives their pages back. The control (nothing released) shows the probe can fail."""
    import subprocess
    import sys
    from pathlib import Path

    if allocator._glibc() is None:
        pytest.skip("not glibc")
    code = _HEAP_PROBE.format(root=str(Path(allocator.__file__).resolve().parents[2]), tune=tune)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    returned = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  env=env).stdout)
    assert returned >= 15 if tune else returned <= 1, returned


def test_environment_settings_of_the_allocator_win(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(allocator, "_glibc", lambda: FakeLibc())
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert allocator.tune_allocator()
    assert dict(calls) == {allocator.M_ARENA_MAX: 2}
    calls.clear()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.tune_allocator()
    assert calls == []  # the environment's own setting stands


def test_onednn_reads_its_cache_capacity_when_first_used():
    """ONEDNN_PRIMITIVE_CACHE_CAPACITY set from Python after `import torch` still counts, as long as
    no oneDNN primitive was made before (bench/memory.py measured it as a lever)."""
    import subprocess
    import sys

    code = ("import os, torch\nos.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'] = '0'\n"
            "w = torch.randn(64, 32, dtype=torch.bfloat16)\n"
            "for _ in range(2):\n    torch.nn.functional.linear(torch.randn(5, 32, dtype=torch.bfloat16), w)\n")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "ONEDNN_VERBOSE": "all"}).stdout
    creations = [line.split(",")[3] for line in out.splitlines() if ",primitive,create:" in line]
    if not creations:
        pytest.skip("this CPU's bf16 product does not go through oneDNN")
    assert creations == ["create:cache_miss", "create:cache_miss"]  # with the default, the second is a hit


@pytest.mark.parametrize("dtype,autocast", [(torch.bfloat16, True), (torch.float32, False)],
                         ids=["bf16-autocast", "fp32"])
def test_shared_mlp_activation_gives_the_same_loss_and_gradients_from_less_memory(tiny_model_dir, dtype,
                                                                                   autocast):
    plain, shared = _lora_pair(tiny_model_dir, dtype)  # shared: LoRA inputs shared too
    batch = _padding_free_batch(plain.config.vocab_size, lengths=(37, 60, 21, 50))
    _, _, lora_only = _step(shared, batch, autocast)
    assert recompute.share_mlp_activation(shared) == 2  # the tiny model's two decoder layers
    loss, grads, kept = _step(plain, batch, autocast)
    s_loss, s_grads, s_kept = _step(shared, batch, autocast)
    assert torch.equal(s_loss, loss)
    for name in grads:
        assert torch.equal(s_grads[name], grads[name]), name
    assert s_kept < lora_only < kept, (s_kept, lora_only, kept)
    with torch.no_grad():
        shared.eval(), plain.eval()
        torch.testing.assert_close(shared(**batch).logits, plain(**batch).logits, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,autocast", [(torch.bfloat16, True), (torch.float32, False)],
                         ids=["bf16-autocast", "fp32"])
def test_recomputed_norms_give_the_same_loss_and_gradients_from_less_memory(tiny_model_dir, dtype, autocast):
    plain, shared = _lora_pair(tiny_model_dir, dtype)
    lora_forward.share_lora_inputs(plain)  # both as training has them but for the norms
    for model in (plain, shared):
        recompute.share_mlp_activation(model)
    batch = _padding_free_batch(plain.config.vocab_size, lengths=(37, 60, 21, 50))
    assert recompute.recompute_norms(shared) == 5  # two per decoder layer and the final one
    assert recompute.recompute_norms(shared) == 0  # once
    loss, grads, kept = _step(plain, batch, autocast)
    n_loss, n_grads, n_kept = _step(shared, batch, autocast)
    assert torch.equal(n_loss, loss)
    for name in grads:
        assert torch.equal(n_grads[name], grads[name]), name
    # in bf16 the norm's fp32 copy (4 bytes a value) gives way to its bf16 input (2 bytes); an fp32 model's
    # norms keep their own forward (the input is the fp32 copy)
    assert n_kept < kept if autocast else n_kept == kept, (n_kept, kept)
    with torch.no_grad():
        shared.eval(), plain.eval()
        torch.testing.assert_close(shared(**batch).logits, plain(**batch).logits, rtol=0, atol=0)


# --- the LM head's input, contiguous ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_the_lm_head_gets_a_contiguous_input_and_the_same_logits(tiny_model_dir, dtype):
    """Generation's prompt pass asks for the last position's logits (logits_to_keep=1): the head's input
    is then a strided view, which torch's CPU bf16 linear turns into one copy of the head per row.
    Every model the product loads gets the hook (models.load_model); its logits are those of the same
    model without it (to fp32 rounding: the strided path is another matmul kernel)."""
    from tuning import models

    model = models.load_model(str(tiny_model_dir), "lora", dtype)
    head = model.get_output_embeddings()
    seen = []
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hooked = model(input_ids=ids, logits_to_keep=1).logits
        hidden = model.model(input_ids=ids).last_hidden_state[:, -1:, :]
        plain = torch.nn.functional.linear(hidden, head.weight)  # the strided view, straight to the matmul
    assert seen == [True]  # the hooks run in order: ours copied the strided view first
    assert not hidden.is_contiguous()
    torch.testing.assert_close(hooked, plain, rtol=1e-5 if dtype == torch.float32 else 0, atol=1e-5 if
                               dtype == torch.float32 else 0)
    assert lm_head.contiguous_head_input(model) is False  # once per model


def test_a_strided_input_reaches_a_plain_head_strided():
    """The control: without the hook the head does see the strided view the docstring is about."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    seen = []
    model.lm_head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 64, (3, 9)), logits_to_keep=1)
    assert seen == [False]


# --- attention on a CPU in bf16: few shapes ------------------------------------------------------------

def _attention_inputs(length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 4, length, 16, generator=g).to(torch.bfloat16).requires_grad_() for _ in range(3)]


class _Heads(torch.nn.Module):  # what sdpa_attention_forward reads off the attention module
    num_key_value_groups = 1
    is_causal = True
    training = True


@pytest.mark.parametrize("length", [7, 100, 128, 129, 200])
def test_cpu_bf16_attention_matches_fp32_attention(length):
    """Each sequence of a padding-free batch on a CPU in bf16: the math backend up to SDPA_MATH_MAX
    tokens, flash attention with the length padded to a multiple of SDPA_BUCKET above. Output and
    gradients are causal attention's, to bf16 rounding: against fp32 attention of the same inputs."""
    q, k, v = _attention_inputs(length, seed=length)
    out = attention._cpu_half_attention(_Heads(), q, k, v)
    assert out.shape == (1, length, 4, 16) and out.dtype == torch.bfloat16
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.float().backward(grad)
    reference_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    reference = torch.nn.functional.scaled_dot_product_attention(*reference_in, is_causal=True).transpose(1, 2)
    reference.backward(grad)
    torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2)
    for mine, theirs in zip((q, k, v), reference_in):
        torch.testing.assert_close(mine.grad.float(), theirs.grad, rtol=5e-2, atol=5e-2)


def test_cpu_bf16_attention_meets_a_few_lengths(monkeypatch):
    """torch's CPU flash attention keeps a kernel per length it meets (~8 MiB each, never freed): up to
    SDPA_MATH_MAX tokens the math backend runs instead, and above it flash sees bucketed lengths only."""
    from transformers.integrations import sdpa_attention

    seen = []
    original = sdpa_attention.sdpa_attention_forward

    def recording(module, query, *args, **kwargs):
        seen.append((query.shape[2], torch.backends.cuda.flash_sdp_enabled()))
        return original(module, query, *args, **kwargs)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", recording)
    with torch.no_grad():
        for length in range(1, 300, 7):
            attention._cpu_half_attention(_Heads(), *(t.detach() for t in _attention_inputs(length, seed=0)))
    short = [(n, flash) for n, flash in seen if n <= attention.SDPA_MATH_MAX]
    long = [n for n, flash in seen if n > attention.SDPA_MATH_MAX]
    assert short and not any(flash for _, flash in short)  # math backend
    assert long and all(n % attention.SDPA_BUCKET == 0 for n in long)
    assert sorted(set(long)) == [192, 256, 320]
    assert torch.backends.cuda.flash_sdp_enabled()  # the backend choice does not leak out


# --- TRL's fused LM head in narrower vocabulary tiles ---------------------------------------------------

def test_narrow_lm_head_tiles_give_the_same_loss_and_gradients(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    tiles = []
    original_tile = chunked_logprob._forward_tile
    monkeypatch.setattr(chunked_logprob, "_forward_tile", lambda *a, **k: tiles.append(1) or original_tile(*a, **k))
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)  # TRL's own (a trainer built earlier
    # in this process on a CPU narrowed it)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :10] = -100  # a prompt: only the completion is scored
    results = []
    for narrow in (False, True):
        if narrow:
            assert lm_head.narrow_lm_head_chunks() == lm_head.LM_HEAD_VOCAB_CHUNK
        tiles.clear()
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        results.append((out.loss.detach(), out.entropy.detach(), [p.grad.clone() for p in model.model.parameters()],
                        len(tiles)))
    (loss, entropy, grads, wide_tiles), (narrow_loss, narrow_entropy, narrow_grads, narrow_tiles) = results
    vocab = model.config.vocab_size
    assert (wide_tiles, narrow_tiles) == (-(-vocab // 32768), -(-vocab // lm_head.LM_HEAD_VOCAB_CHUNK))
    torch.testing.assert_close(narrow_loss, loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(narrow_entropy, entropy, rtol=1e-5, atol=1e-5)
    for narrow_grad, grad in zip(narrow_grads, grads):
        torch.testing.assert_close(narrow_grad, grad, rtol=1e-5, atol=1e-7)


def test_a_childs_peak_is_its_own_not_the_test_processs():
    """bench/memory.py's child_peak, which the memory tests gate on: a bare interpreter measures tens of
    MiB while this process holds 768 MiB more than it did (a child spawned straight from here would
    report this process's high-water mark instead)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_memory", root / "bench" / "memory.py")
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    held = bytearray(768 * 2**20)
    held[::4096] = b"\x01" * len(held[::4096])  # touch every page: resident, not only reserved
    assert memory.status_kib("VmHWM") * 1024 > 768 * 2**20
    peak, _, out = memory.child_peak([sys.executable, "-c", "print('hi')"])
    assert out.strip() == "hi"
    assert 0 < peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB"
    with pytest.raises(RuntimeError, match="failed with 3"):
        memory.child_peak([sys.executable, "-c", "raise SystemExit(3)"])
    del held

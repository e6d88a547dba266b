"""The CPU training levers (tuning/levers/dropout.py, lm_head.py, lora_forward.py, few_rows.py) change
the time, not what is computed:
FastDropout is dropout (distribution, scaling, gradient, eval mode, seeding), scoring only the
trained tokens gives TRL's fused LM head the same loss and gradients from fewer rows, and the lean
LoRA forward gives PEFT's loss and gradients (bit for bit under bf16 autocast)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tuning.levers import dropout as dropout_mod
from tuning.levers import few_rows, lm_head, lora_forward
from tuning.train import trainer as train
from tuning.train.trainer import StopRequested


def test_fast_dropout_drops_p_and_scales_the_rest():
    drop = dropout_mod.FastDropout(0.05).train()
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.05) < 0.002  # 1M draws: the standard error is 0.0002
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.95))
    assert abs(y.mean().item() - 1.0) < 0.003  # unbiased, as inverted dropout must be
    # the mask is spread over the tensor, not in blocks: every row and column loses some
    assert (y == 0).any(dim=0).float().mean() > 0.99 and (y == 0).any(dim=1).float().mean() > 0.99


def test_fast_dropout_gradient_eval_mode_seed_and_dtype():
    drop = dropout_mod.FastDropout(0.3).train()
    x = torch.randn(64, 48, requires_grad=True)
    torch.manual_seed(1)
    y = drop(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / (1 - drop.p))
    torch.manual_seed(1)
    assert torch.equal(drop(x), y)  # the global generator: set_seed makes runs reproducible
    assert not torch.equal(drop(x), y)  # and every call draws a new mask
    assert drop.eval()(x) is x
    assert drop.train()(x.detach().bfloat16()).dtype == torch.bfloat16
    assert dropout_mod.FastDropout(0.1).p == round(0.1 * 65536) / 65536
    assert dropout_mod.FastDropout(0.0).train()(x) is x


def _tiny_peft(tiny_model_dir, dropout: float):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                                           task_type="CAUSAL_LM"))


def test_use_fast_dropout_swaps_every_lora_dropout(tiny_model_dir):
    model = _tiny_peft(tiny_model_dir, 0.1).train()
    layers = [m for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]
    assert dropout_mod.use_fast_dropout(model) == len(layers) == 14  # 2 layers x 7 linear modules
    for layer in layers:
        fast = layer.lora_dropout["default"]
        assert isinstance(fast, dropout_mod.FastDropout) and fast.training and abs(fast.p - 0.1) < 1e-4
    assert dropout_mod.use_fast_dropout(_tiny_peft(tiny_model_dir, 0.0)) == 0  # PEFT's Identity stays


def _fused_loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch, fused_lm_head=True)
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_scoring_trained_tokens_only_gives_the_same_loss_and_gradients(tiny_model_dir, monkeypatch):
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    model = _tiny_peft(tiny_model_dir, 0.0).eval()
    trl_utils.add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    labels = ids.clone()
    labels[:, :25] = -100  # a prompt: 24 of the 39 scored positions per row have no label
    batch = {"input_ids": ids, "labels": labels}

    rows = []
    real_apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: rows.append(hidden.shape[0]) or real_apply(hidden, *rest))
    # TRL's own switch (an earlier build_trainer in this process may have patched it), restored after
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    full = _fused_loss_and_grads(model, batch)
    assert lm_head.score_trained_tokens_only()
    compact = _fused_loss_and_grads(model, batch)
    assert rows == [2 * 39, 2 * 15]  # every shifted position, then only the labelled ones
    torch.testing.assert_close(compact[0], full[0])
    for a, b in zip(compact[1], full[1]):
        torch.testing.assert_close(a, b)


def test_build_trainer_applies_the_cpu_levers(tmp_path, tiny_config, monkeypatch):
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    trainer, _ = train.build_trainer(tiny_config.replace(lora_dropout=0.1), run_dir, tmp_path,
                                     train.EventLog(run_dir / "events.jsonl"), StopRequested())
    layers = [m for m in trainer.model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]
    assert len(layers) == 14
    for layer in layers:  # the 16-bit mask: FastDropout, or drawn inside lora_A (lora_forward.share_lora_inputs)
        shared = getattr(layer.lora_A["default"], "shared_dropout", None)
        assert isinstance(layer.lora_dropout["default"], dropout_mod.FastDropout) or \
            (shared is not None and abs(shared[1] - 1 / 0.9) < 1e-4)
    assert all(layer.forward.__func__ is lora_forward._lean_lora_forward for layer in layers)
    assert trl_utils._use_triton(torch.device("cpu")) is True


if __name__ == "__main__":
    pytest.main([__file__])


def test_few_rows_linear_computes_what_linear_computes(tiny_model_dir):
    from tuning.infer import playground

    torch.manual_seed(0)
    for bias in (True, False):
        layer = torch.nn.Linear(48, 80, bias=bias)
        expected_fn = lambda x, layer=layer: torch.nn.functional.linear(x, layer.weight, layer.bias)  # noqa: E731
        assert few_rows.use_few_rows_linear(layer) == 1
        for shape in ((1, 48), (2, 48), (3, 48), (4, 48), (2, 1, 48), (1, 4, 48), (7, 48), (2, 5, 48)):
            x = torch.randn(*shape)
            out = layer(x)
            assert out.shape == (*shape[:-1], 80)
            torch.testing.assert_close(out, expected_fn(x), rtol=1e-5, atol=1e-6)
    half = torch.nn.Linear(8, 8).bfloat16()
    assert few_rows.use_few_rows_linear(half) == 0  # only fp32 layers
    comparer = playground.Comparer(str(tiny_model_dir), "lora", torch.float32)
    linears = [m for m in comparer.model.modules() if type(m) is torch.nn.Linear]
    assert linears and all(m.forward.__func__ is few_rows._few_rows_linear for m in linears)


def _loss_and_grads(model, batch):
    model.zero_grad()
    torch.manual_seed(3)  # the same dropout masks on both sides
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _tiny_batch(model):
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    return {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("dropout, alpha", [(0.0, 6), (0.2, 8)], ids=["no-dropout-scale-1.5", "dropout-scale-2"])
def test_lean_lora_forward_gives_the_same_loss_and_gradients(tiny_model_dir, dropout, alpha):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                                            task_type="CAUSAL_LM")).train()
    dropout_mod.use_fast_dropout(model)
    for name, p in model.named_parameters():  # lora_B starts at zero: give it values so every path counts
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    batch = _tiny_batch(model)
    peft_loss, peft_grads = _loss_and_grads(model, batch)
    assert lora_forward.use_lean_lora_forward(model) == 14
    assert lora_forward.use_lean_lora_forward(model) == 0  # once per layer
    lean_loss, lean_grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(lean_loss, peft_loss)
    assert lean_grads.keys() == peft_grads.keys() and len(lean_grads) == 28
    for name in peft_grads:
        torch.testing.assert_close(lean_grads[name], peft_grads[name], rtol=1e-5, atol=1e-7)
    assert (lean_loss != _loss_and_grads(model.eval(), batch)[0]) == (dropout > 0)  # eval turns dropout off


def test_lean_lora_forward_under_bf16_autocast_matches_peft_bit_for_bit(tiny_model_dir):
    """The training setup on a CPU with avx512_bf16: a bf16 base, fp32 adapters, bf16 autocast.
    PEFT's fp32 round trip of the input changes no value, and alpha / r = 2 scales exactly."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
                                            task_type="CAUSAL_LM")).train()
    dropout_mod.use_fast_dropout(model)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    batch = _tiny_batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        peft = _loss_and_grads(model, batch)
        lora_forward.use_lean_lora_forward(model)
        lean = _loss_and_grads(model, batch)
    assert torch.equal(lean[0], peft[0])
    for name in peft[1]:
        assert torch.equal(lean[1][name], peft[1][name]), name


def test_lean_lora_forward_leaves_other_cases_to_peft(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    batch = _tiny_batch(model)
    expected = model(**batch).loss
    assert lora_forward.use_lean_lora_forward(model) == 14
    layer = next(m for m in model.modules() if hasattr(m, "_peft_forward"))
    calls = []
    peft_forward = layer._peft_forward
    layer._peft_forward = lambda *args, **kwargs: calls.append(1) or peft_forward(*args, **kwargs)
    torch.testing.assert_close(model(**batch).loss, expected)  # DoRA: PEFT's own forward, call by call
    assert calls == [1]
    with model.disable_adapter():  # PEFT's forward too (adapters off)
        model(**batch)
    assert calls == [1, 1]

"""The lever registry (tuning/levers/__init__.py) and its switches: every lever module is in the registry,
`speedups: off` builds a CPU trainer on the libraries' own code paths (PEFT's dropout modules and LoRA
forward, TRL's collator and fused-head settings, transformers' SDPA) and says so in the log, one line per
lever; `auto` applies them; `levers_off` leaves out exactly the levers it names (an unknown name is refused
with the valid ones); Liger's kernels are CUDA-only and need the liger-kernel package. What each lever
computes is proven in tests/test_memory.py and tests/test_perf_cpu.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuning import config as config_mod
from tuning import levers
from tuning.config import ConfigError
from tuning.evaluation import evaluate
from tuning.levers import attention, buckets, lm_head
from tuning.train import trainer as train

LEVERS_DIR = Path(levers.__file__).parent
# the levers a training process applies: the loader's, the training model's and the trainer's
TRAINING_STAGES = (levers.PROCESS, levers.MODEL, levers.TRAINING_MODEL, levers.TRAINER)


def test_the_registry_lists_every_lever_module_and_each_lever_once():
    modules = {p.stem for p in LEVERS_DIR.glob("*.py") if p.stem != "__init__"}
    assert {lever.module for lever in levers.LEVERS} == modules
    assert {"dropout", "lora_forward", "lm_head", "recompute", "buckets", "allocator", "few_rows",
            "attention", "liger"} <= modules
    names = [lever.name for lever in levers.LEVERS]
    assert len(names) == len(set(names)) == len(levers.BY_NAME)
    # the config refuses an unknown levers_off name from its own copy of the names: the same, in order
    assert config_mod.LEVER_NAMES == tuple(names)
    for lever in levers.LEVERS:
        assert lever.device in (levers.CPU, levers.CUDA, levers.ANY) and lever.stage in levers.STAGES, lever
        assert lever.what and lever.written_for and callable(lever.apply), lever
    assert [lv.name for lv in levers.LEVERS if lv.stage == levers.TRAINER] == [
        "fast_dropout", "trained_tokens_only", "lean_lora_forward", "token_buckets", "malloc_trim",
        "lm_head_tiles", "shared_lora_inputs", "mlp_activation", "norms", "liger_kernels"]
    assert [lv.name for lv in levers.LEVERS if lv.device == levers.CUDA] == ["liger_kernels"]


@pytest.mark.parametrize("module", sorted(p.stem for p in LEVERS_DIR.glob("*.py") if p.stem != "__init__"))
def test_each_lever_module_says_why_points_at_its_figure_and_names_its_switch(module):
    path = LEVERS_DIR / f"{module}.py"
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600
    doc = __import__(f"tuning.levers.{module}", fromlist=["_"]).__doc__
    assert doc and "bench/RESULTS.md" in doc and "speedups" in doc, module


def test_off_and_another_device_skip_without_touching_the_target():
    untouchable = object()  # any lever that ran would fail on it
    for stage in levers.STAGES:
        off = levers.apply(stage, untouchable, levers.OFF, levers.CPU)
        assert off and all(not o.applied and o.detail == "speedups: off" for o in off), stage
        assert all(o.line() == f"lever {o.lever}: skipped (speedups: off)" for o in off)
    # on a GPU the CPU levers stand aside (liger_kernels, the CUDA one: tested below)
    gpu = levers.apply(levers.TRAINER, untouchable, levers.AUTO, "cuda", turned_off=("liger_kernels",))
    assert len(gpu) == 10 and all(o.detail == "not a CPU (cuda)" for o in gpu[:9])
    assert gpu[9].line() == "lever liger_kernels: skipped (turned off by levers_off)"
    lines = []
    levers.apply(levers.TRAINER, untouchable, levers.AUTO, "cpu", reason="not an SFT run", log=lines.append)
    assert lines == [f"lever {name}: skipped (not an SFT run)" for name in (
        "fast_dropout", "trained_tokens_only", "lean_lora_forward", "token_buckets", "malloc_trim",
        "lm_head_tiles", "shared_lora_inputs", "mlp_activation", "norms")] + [
        "lever liger_kernels: skipped (CUDA only)"]
    assert levers.enabled("sliced_eval_loss", levers.AUTO, "cuda") and not levers.enabled("sliced_eval_loss", "off")
    with pytest.raises(ValueError, match="speedups"):
        levers.apply(levers.TRAINER, untouchable, "fast", levers.CPU)


def _lever_lines(out: str) -> dict[str, str]:
    lines = [line for line in out.splitlines() if line.startswith("lever ")]
    return {line.split(":", 1)[0].removeprefix("lever "): line.split(": ", 1)[1] for line in lines}


def _training_levers() -> list[str]:
    return [lv.name for lv in levers.LEVERS if lv.stage in TRAINING_STAGES]


@pytest.fixture
def trl_own_settings(monkeypatch):
    """TRL's own fused-head switch and tile width (an earlier trainer in this process may have set them),
    restored after the test."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    return trl_utils, chunked_logprob


def _build(tmp_path, cfg):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    return train.build_trainer(cfg, run_dir, tmp_path, train.EventLog(run_dir / "events.jsonl"),
                               train.StopRequested())


def _lora_layers(model):
    return [m for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]


def test_speedups_off_trains_on_the_libraries_own_code_paths(tmp_path, tiny_config, trl_own_settings, capsys,
                                                             monkeypatch):
    trl_utils, chunked_logprob = trl_own_settings
    cfg = tiny_config.replace(speedups="off", lora_dropout=0.1, max_steps=1)
    trainer, tokenizer = _build(tmp_path, cfg)
    said = _lever_lines(capsys.readouterr().out)
    assert said == {name: "skipped (speedups: off)" for name in _training_levers()}
    model = trainer.model
    layers = _lora_layers(model)
    assert len(layers) == 14
    for layer in layers:  # PEFT's own modules and forward
        assert type(layer.lora_dropout["default"]) is torch.nn.Dropout
        assert not hasattr(layer.lora_A["default"], "shared_dropout") and "forward" not in vars(layer.lora_A["default"])
        assert not hasattr(layer, "_peft_forward") and "forward" not in vars(layer)
        assert "_cast_input_dtype" not in vars(layer)
    mlps_and_norms = [m for m in model.modules() if type(m).__name__.endswith(("MLP", "RMSNorm"))]
    assert len(mlps_and_norms) == 7  # 2 MLPs, 5 norms: transformers' own forward
    assert not any(hasattr(m, "_library_forward") or "forward" in vars(m) for m in mlps_and_norms)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert linears and not any("forward" in vars(m) for m in linears)
    assert model.config._attn_implementation == "sdpa"  # transformers' own SDPA
    assert not getattr(model.get_output_embeddings(), "_contiguous_input", False)
    assert not model.get_output_embeddings()._forward_pre_hooks
    assert not isinstance(trainer.data_collator, buckets.BucketCollator)  # TRL's own collator
    assert not any(type(c).__name__ in ("ReleaseFreedMemory", "BucketTokens")
                   for c in trainer.callback_handler.callbacks)
    assert trl_utils._use_triton is chunked_logprob._use_triton  # TRL's own settings
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == 32768
    batch = next(iter(trainer.get_train_dataloader()))
    assert buckets.PADDING_KEY not in batch
    assert batch["cu_seq_lens_q"][-1] == batch["input_ids"].shape[1]  # every token a real one: no filler
    assert all(n > 0 for n in batch["cu_seq_lens_q"].diff().tolist())
    assert len(batch["cu_seq_lens_q"]) == cfg.per_device_batch_size + 1
    trainer.train()  # it trains: one step on the libraries' code
    assert trainer.state.global_step == 1 and train.loss_is_finite(trainer.state.log_history[-1]["train_loss"])
    # the held-out loss from the full logits, the same number as the sliced one
    calls = []
    for name in ("token_losses", "full_token_losses"):
        original = getattr(lm_head, name)
        monkeypatch.setattr(lm_head, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    convs = [c for c, _ in evaluate.heldout_rows(cfg)]
    full = evaluate.heldout_loss(trainer.model, tokenizer, convs, cfg)
    assert calls and set(calls) == {"full_token_losses"}
    calls.clear()
    sliced = evaluate.heldout_loss(trainer.model, tokenizer, convs, cfg.replace(speedups="auto"))
    assert calls and set(calls) == {"token_losses"}
    assert sliced == pytest.approx(full, rel=1e-5)


def test_speedups_auto_applies_the_levers_on_a_cpu(tmp_path, tiny_config, trl_own_settings, capsys):
    trl_utils, chunked_logprob = trl_own_settings
    trainer, _ = _build(tmp_path, tiny_config.replace(lora_dropout=0.1))
    said = _lever_lines(capsys.readouterr().out)
    assert list(said) == _training_levers()  # one line per lever, in the registry's order
    assert said.pop("liger_kernels") == "skipped (CUDA only)"
    assert all(line.startswith("applied (") for line in said.values()), said
    assert said["fast_dropout"] == "applied (16-bit dropout masks in 14 LoRA layers)"
    assert said["norms"] == "applied (5 RMSNorms recomputed in the backward)"
    model = trainer.model
    layers = _lora_layers(model)
    assert len(layers) == 14 and all("forward" in vars(layer) and hasattr(layer, "_peft_forward") for layer in layers)
    assert all(abs(layer.lora_A["default"].shared_dropout[1] - 1 / 0.9) < 1e-4 for layer in layers)
    assert model.config._attn_implementation == attention.VARLEN_SDPA
    assert model.get_output_embeddings()._contiguous_input
    assert isinstance(trainer.data_collator, buckets.BucketCollator)
    assert {"ReleaseFreedMemory", "BucketTokens"} <= {type(c).__name__ for c in trainer.callback_handler.callbacks}
    assert trl_utils._use_triton is not chunked_logprob._use_triton and trl_utils._use_triton(torch.device("cpu"))
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == lm_head.LM_HEAD_VOCAB_CHUNK


def test_every_lever_s_version_window_holds_the_installed_libraries():
    """A library upgrade fails here first: re-check what the lever patches, then widen its window."""
    for lever in levers.LEVERS:
        assert levers.outside_window(lever.written_for) is None, (lever.name, lever.written_for)
    assert sum("<" in lever.written_for for lever in levers.LEVERS) >= 10  # the patching ones carry a window


def test_a_lever_outside_its_window_stands_aside_and_says_which(monkeypatch):
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "9.0" if name == "trl" else real(name))
    levers.outside_window.cache_clear()
    try:
        trl_levers = [lv for lv in levers.LEVERS if lv.written_for.startswith("trl")]
        assert {lv.name for lv in trl_levers} >= {"trained_tokens_only", "lm_head_tiles"}
        for lever in trl_levers:
            why = levers.why_not(lever, levers.AUTO, levers.CPU)
            assert why == (f"written for {lever.written_for}, trl 9.0 is installed: "
                           "check the lever, then widen its window")
            line = levers.Outcome(lever.name, False, why).line()
            assert line.startswith(f"lever {lever.name}: skipped (written for trl")
        assert all(levers.why_not(lv, levers.AUTO, levers.CPU) is None
                   for lv in levers.LEVERS if not lv.written_for.startswith("trl") and lv.device != levers.CUDA)
    finally:
        levers.outside_window.cache_clear()


def test_on_a_gpu_padding_free_attention_is_the_library_kernel_not_a_loop(monkeypatch):
    """varlen_sdpa (a Python loop over the sequences, with a host sync per layer) is the CPU's; a CUDA
    run gets flash-attention 2's varlen kernel when flash-attn is installed, else transformers' SDPA."""
    import importlib.util

    from tuning import models

    [outcome] = levers.apply(levers.TRAINING_MODEL, object(), levers.AUTO, "cuda")
    assert outcome.lever == "varlen_sdpa" and outcome.detail == "not a CPU (cuda)"
    assert models.attention_implementation(torch.bfloat16) is None  # this machine: the CPU default
    monkeypatch.setattr(models, "device_type", lambda: "cuda")
    real_find_spec = importlib.util.find_spec
    installed = {"flash_attn": False}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        object() if name == "flash_attn" and installed["flash_attn"] else
        None if name == "flash_attn" else real_find_spec(name, *a)))
    assert models.attention_implementation(torch.bfloat16) == "sdpa"
    installed["flash_attn"] = True
    assert models.attention_implementation(torch.bfloat16) == "flash_attention_2"
    assert models.attention_implementation(torch.float16) == "flash_attention_2"
    assert models.attention_implementation(torch.float32) == "sdpa"  # flash-attention has no fp32 kernel


# --- each lever by name: levers_off ---------------------------------------------------------------

def test_levers_off_leaves_out_exactly_the_named_levers(tmp_path, tiny_config, trl_own_settings, capsys):
    """Two levers off by name: those two say so and patch nothing, every other lever says what it says
    without levers_off and applies as before."""
    cfg = tiny_config.replace(lora_dropout=0.1, max_steps=1)
    _build(tmp_path / "auto", cfg)
    auto = _lever_lines(capsys.readouterr().out)
    trainer, _ = _build(tmp_path / "off", cfg.replace(levers_off="norms, varlen_sdpa"))
    said = _lever_lines(capsys.readouterr().out)
    assert list(said) == list(auto) == _training_levers()
    assert {name: line for name, line in said.items() if line != auto[name]} == {
        "varlen_sdpa": "skipped (turned off by levers_off)", "norms": "skipped (turned off by levers_off)"}
    assert auto["varlen_sdpa"].startswith("applied (") and auto["norms"].startswith("applied (")
    model = trainer.model
    assert model.config._attn_implementation == "sdpa"  # transformers' own SDPA, not the lever's
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    mlps = [m for m in model.modules() if type(m).__name__.endswith("MLP")]
    assert len(norms) == 5 and not any(hasattr(m, "_library_forward") or "forward" in vars(m) for m in norms)
    assert len(mlps) == 2 and all(hasattr(m, "_library_forward") or "forward" in vars(m) for m in mlps)
    assert isinstance(trainer.data_collator, buckets.BucketCollator)  # the others still apply
    assert levers.enabled("sliced_eval_loss", cfg.speedups, levers.CPU, cfg.levers_turned_off)
    assert not levers.enabled("sliced_eval_loss", levers.AUTO, levers.CPU, ("sliced_eval_loss",))
    # speedups: off still wins over levers_off
    [off] = levers.apply(levers.TRAINING_MODEL, object(), levers.OFF, levers.CPU, turned_off=("varlen_sdpa",))
    assert off.detail == "speedups: off"


def test_an_unknown_lever_name_is_refused_with_the_valid_names():
    with pytest.raises(ConfigError) as caught:
        config_mod.TrainConfig(levers_off="norms,fast_dropot")
    message = str(caught.value)
    assert message.startswith("levers_off: 'fast_dropot' is not a lever; the levers are allocator_arenas, "
                              "contiguous_head_input, varlen_sdpa, ")
    assert message.endswith(", ".join(levers.BY_NAME)) and "liger_kernels" in message
    with pytest.raises(ConfigError, match="^levers_off: 'Norms' is not a lever"):  # names are exact
        config_mod.apply_overrides(config_mod.TrainConfig(), ["levers_off=Norms"])
    cfg = config_mod.apply_overrides(config_mod.TrainConfig(), ["levers_off= norms , varlen_sdpa,"])
    assert cfg.levers_turned_off == ("norms", "varlen_sdpa")
    assert config_mod.TrainConfig().levers_turned_off == ()
    assert config_mod.from_yaml(cfg.to_yaml()).levers_off == cfg.levers_off  # saved with the run
    with pytest.raises(ValueError, match="levers_off: nope is not a lever"):
        levers.apply(levers.TRAINER, object(), levers.AUTO, levers.CPU, turned_off=("nope",))


# --- Liger's kernels: CUDA only, with the liger-kernel package ----------------------------------------

def _liger(outcomes: list[levers.Outcome]) -> levers.Outcome:
    [outcome] = [o for o in outcomes if o.lever == "liger_kernels"]
    return outcome


def test_liger_kernels_are_cuda_only_and_need_the_package(monkeypatch):
    import importlib.util

    untouchable = object()  # the lever would fail on it if it went further than its checks
    cpu = levers.apply(levers.TRAINER, untouchable, levers.AUTO, levers.CPU, reason="not this test",
                       only=("liger_kernels",))
    assert _liger(cpu).line() == "lever liger_kernels: skipped (CUDA only)"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "liger_kernel" else real_find_spec(name, *a))
    assert _liger(levers.apply(levers.TRAINER, untouchable, levers.AUTO, levers.CUDA)).line() == (
        "lever liger_kernels: skipped (liger-kernel is not installed)")
    assert _liger(levers.apply(levers.TRAINER, untouchable, levers.OFF, levers.CUDA)).detail == "speedups: off"
    # a preference trainer gets it too (TRL gave its preference trainers Liger's layer kernels as well)
    from tuning.train import preference

    assert all("liger_kernels" in preference.shared_levers(o) for o in ("dpo", "orpo", "kto"))


@pytest.fixture
def stand_in_liger(monkeypatch):
    """A stand-in liger-kernel package (the real one needs Triton and a GPU) that records what transformers'
    `apply_liger_kernel` asks it to patch: the calls, as (model, keyword arguments)."""
    import importlib.machinery
    import sys
    import types

    from transformers.integrations import liger as transformers_liger

    calls = []

    def module(name: str, **attributes):
        made = types.ModuleType(name)
        made.__spec__ = importlib.machinery.ModuleSpec(name, None)
        made.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, made)

    module("liger_kernel")
    module("liger_kernel.transformers", _apply_liger_kernel_to_instance=lambda model, **kw: calls.append((model, kw)))
    module("liger_kernel.transformers.monkey_patch", MODEL_TYPE_TO_APPLY_LIGER_FN={"llama": None, "qwen2": None})
    monkeypatch.setattr(transformers_liger, "is_liger_kernel_available", lambda: True)  # no package metadata
    return calls


def test_liger_kernels_go_through_transformers_and_keep_trl_s_fused_head(tiny_model_dir, stand_in_liger):
    """On CUDA with liger-kernel: transformers' public entry point patches the model under PEFT's wrapper
    with Liger's layer kernels only (its fused linear cross-entropy off: TRL's fused LM head keeps the loss,
    and TRL refuses it); a model type Liger has no kernels for is said, and nothing is patched."""
    import types

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    outcome = _liger(levers.apply(levers.TRAINER, types.SimpleNamespace(model=model), levers.AUTO, levers.CUDA))
    assert outcome.line() == ("lever liger_kernels: applied (Liger's RoPE, RMSNorm and MLP kernels in the llama "
                              "model; TRL's fused LM head keeps the loss)")
    assert len(stand_in_liger) == 1
    patched, arguments = stand_in_liger[0]
    assert patched is base and arguments == {"fused_linear_cross_entropy": False}
    stand_in_liger.clear()
    other = types.SimpleNamespace(model=types.SimpleNamespace(config=types.SimpleNamespace(model_type="gpt2")))
    assert _liger(levers.apply(levers.TRAINER, other, levers.AUTO, levers.CUDA)).line() == (
        "lever liger_kernels: skipped (nothing matched: liger-kernel has no kernels for model type gpt2)")
    assert not stand_in_liger
    turned_off = levers.apply(levers.TRAINER, types.SimpleNamespace(model=model), levers.AUTO, levers.CUDA,
                              turned_off=("liger_kernels",))
    assert _liger(turned_off).detail == "turned off by levers_off" and not stand_in_liger


def _liger_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


@pytest.mark.slow  # trains a tiny model twice on the GPU
@pytest.mark.skipif(not torch.cuda.is_available() or not _liger_installed(),
                    reason="needs a CUDA GPU with liger-kernel installed: Liger's kernels are Triton kernels (this "
                           "machine has neither; the wiring is tested above with a stand-in package)")
def test_liger_kernels_train_on_cuda_with_the_loss_of_the_library_layers(tmp_path, tiny_config, capsys):
    cfg = tiny_config.replace(method="lora", precision="fp32", max_steps=1, lora_dropout=0.0, eval_split=0.0)
    # without Liger first: its RoPE patch is module-wide and would stay for a later build in this process
    plain, _ = _build(tmp_path / "plain", cfg.replace(levers_off="liger_kernels"))
    assert _lever_lines(capsys.readouterr().out)["liger_kernels"] == "skipped (turned off by levers_off)"
    plain.train()
    liger, _ = _build(tmp_path / "liger", cfg)
    assert _lever_lines(capsys.readouterr().out)["liger_kernels"].startswith("applied (Liger's RoPE")
    liger.train()
    assert liger.state.log_history[-1]["train_loss"] == pytest.approx(plain.state.log_history[-1]["train_loss"],
                                                                      rel=1e-3)

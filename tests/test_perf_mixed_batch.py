"""Side-by-side generation in one PEFT mixed-adapter batch gives, token for token under greedy
decoding, what two separate calls (base alone, tuned alone) give."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tuning import generation, playground

PROMPTS = ["Who are you?", "Name three colors, please, and say why you like them."]  # different lengths: padding


def _random_adapter(tiny_model_dir, folder, **extra):
    """A LoRA adapter with random, non-zero B matrices, so the tuned model really differs."""
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=64, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM", **extra))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return _random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def dora_adapter_dir(tiny_model_dir, tmp_path_factory):
    return _random_adapter(tiny_model_dir, tmp_path_factory.mktemp("dora"), use_dora=True)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_mixed_batch_equals_two_separate_calls(tiny_model_dir, adapter_dir, method):
    comparer = playground.Comparer(str(tiny_model_dir), method, torch.float32)
    settings = playground.GenerationSettings(max_new_tokens=12, temperature=0.0)
    mixed = comparer.generate(PROMPTS, adapter_dir, settings=settings)
    base_alone = comparer.generate_one(PROMPTS, None, settings=settings)
    tuned_alone = comparer.generate_one(PROMPTS, adapter_dir, settings=settings)
    assert [b for b, _ in mixed] == base_alone
    assert [t for _, t in mixed] == tuned_alone
    assert base_alone != tuned_alone  # the adapter is applied to its rows only: the check can fail


def test_dora_adapters_get_one_call_per_side_with_the_same_answers(tiny_model_dir, dora_adapter_dir):
    """PEFT refuses mixed-adapter batches with DoRA; the Playground (generate and stream) and the
    evaluation share generation.generate_rows, which falls back to one call per side."""
    comparer = playground.Comparer(str(tiny_model_dir), "lora", torch.float32)
    settings = playground.GenerationSettings(max_new_tokens=8, temperature=0.0)
    pairs = comparer.generate(PROMPTS, dora_adapter_dir, settings=settings)
    base_alone = comparer.generate_one(PROMPTS, None, settings=settings)
    tuned_alone = comparer.generate_one(PROMPTS, dora_adapter_dir, settings=settings)
    assert pairs == list(zip(base_alone, tuned_alone)) and base_alone != tuned_alone
    streamed = list(comparer.stream(PROMPTS[0], dora_adapter_dir, settings=settings))
    assert streamed[-1] == pairs[0]
    assert len(streamed) > 2  # token by token, not one final chunk


def test_min_new_tokens_forces_like_for_like_lengths(tiny_model_dir, adapter_dir):
    """bench/side_by_side.py --fixed-length times both sides over the same number of tokens."""
    comparer = playground.Comparer(str(tiny_model_dir), "lora", torch.float32)
    free = playground.GenerationSettings(max_new_tokens=10, temperature=0.0)
    forced = playground.GenerationSettings(max_new_tokens=10, min_new_tokens=10, temperature=0.0)
    batch = generation.encode(comparer.tokenizer, comparer.conversations(PROMPTS[:1]))
    # Make the base's first greedy token the end token: free decoding now stops at once.
    first_id = comparer.model.generate(**batch, max_new_tokens=1, do_sample=False)[0, -1].item()
    comparer.model.generation_config.eos_token_id = first_id
    [short] = comparer.generate_one(PROMPTS[:1], None, settings=free)
    [long] = comparer.generate_one(PROMPTS[:1], None, settings=forced)
    assert len(comparer.tokenizer(short, add_special_tokens=False)["input_ids"]) <= 2
    assert len(comparer.tokenizer(long, add_special_tokens=False)["input_ids"]) >= 8


def test_models_load_lazily_once_and_stay_cached(tmp_path, tiny_config, monkeypatch):
    """Start-up target: nothing loads until the first prompt; later prompts reuse the base."""
    from tuning import models

    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(tiny_config.replace(method="qlora").to_yaml(), encoding="utf-8")
    loads = []
    real_load = models.load_model
    monkeypatch.setattr(models, "load_model", lambda path, method, *rest: loads.append(method) or
                        real_load(path, method, *rest))
    monkeypatch.setattr(playground, "_CACHE", {})
    first = playground.comparer_for_run(run_dir, tmp_path)
    assert playground.comparer_for_run(run_dir, tmp_path) is first and loads == ["qlora"]
    full = playground.comparer_for_run(run_dir, tmp_path, full_precision_base=True)
    assert full is not first and loads == ["qlora", "lora"]  # the full-precision base is a second copy
    assert playground.comparer_for_run(run_dir, tmp_path) is first and len(loads) == 2

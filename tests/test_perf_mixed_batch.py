"""Side-by-side generation in one PEFT mixed-adapter batch gives, token for token under greedy
decoding, what two separate calls (base alone, tuned alone) give."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tuning import playground

PROMPTS = ["Who are you?", "Name three colors, please, and say why you like them."]  # different lengths: padding


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with random, non-zero B matrices, so the tuned model really differs."""
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=64, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return folder


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

"""Side-by-side generation in one PEFT mixed-adapter batch gives, token for token under greedy
decoding, what two separate calls (base alone, tuned alone) give."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tuning.infer import decoding, generation, playground
from tuning.infer.generation import BASE

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


# --- finished rows leave the batch (tuning/infer/decoding.py) ------------------------------------------

def _new_tokens(comparer, names, settings, library: bool):
    """Each row's new token ids, from tuning/infer/decoding.py's loop or from transformers' generate
    (cut after the row's first end token: generate pads finished rows to the longest)."""
    batch = generation.encode(comparer.tokenizer, comparer.conversations(PROMPTS + PROMPTS))
    kwargs = dict(pad_token_id=comparer.tokenizer.pad_token_id, **comparer._generate_kwargs(settings))
    stops = {comparer.model.generation_config.eos_token_id}
    with torch.no_grad(), generation.inference(comparer.peft):
        if not library:
            return decoding.greedy(comparer.peft, batch["input_ids"], batch["attention_mask"], names,
                                   decoding.plan(comparer.peft, kwargs))
        out = comparer.peft.generate(**batch, adapter_names=names, **kwargs)[:, batch["input_ids"].shape[1]:]
    rows = []
    for row in out.tolist():
        end = next((i for i, t in enumerate(row) if t in stops), len(row) - 1)
        rows.append(row[: end + 1])
    return rows


@pytest.fixture
def comparer_with_early_stop(tiny_model_dir, adapter_dir, request):
    """A Comparer whose end token is one the tuned rows write a few tokens in, so the rows of a
    batch finish at different steps (a random model never writes the real one)."""
    comparer = playground.Comparer(str(tiny_model_dir), request.param, torch.float32)
    name = comparer.attach(adapter_dir)
    names = [BASE, BASE, name, name]
    comparer.model.generation_config.eos_token_id = -1  # never written: the full rows
    full = _new_tokens(comparer, names, playground.GenerationSettings(max_new_tokens=12, temperature=0.0), False)
    comparer.model.generation_config.eos_token_id = full[2][3]
    return comparer, names


@pytest.mark.parametrize("comparer_with_early_stop", ["lora", "qlora"], indirect=True)
@pytest.mark.parametrize("settings", [dict(), dict(repetition_penalty=1.3), dict(min_new_tokens=2)],
                         ids=["greedy", "repetition_penalty", "min_new_tokens"])
def test_finished_rows_leave_the_batch_with_the_tokens_generate_gives(comparer_with_early_stop, adapter_dir,
                                                                      settings):
    comparer, names = comparer_with_early_stop
    settings = playground.GenerationSettings(max_new_tokens=12, temperature=0.0, **settings)
    rows_per_step = []
    hook = comparer.model.get_input_embeddings().register_forward_pre_hook(
        lambda module, args: rows_per_step.append(args[0].shape[0]))
    try:
        ours = _new_tokens(comparer, names, settings, library=False)
    finally:
        hook.remove()
    assert ours == _new_tokens(comparer, names, settings, library=True)
    lengths = [len(r) for r in ours]
    assert min(lengths) < max(lengths), "the end token must cut some rows short, or nothing is tested"
    # Each step decodes only the rows still writing: the batch shrinks as rows finish.
    assert rows_per_step[0] == 4 and rows_per_step[-1] < 4 and sum(rows_per_step[1:]) == sum(lengths) - 4
    # And the answers are those of two separate calls and of the stream.
    mixed = comparer.generate(PROMPTS, adapter_dir, settings=settings)
    assert [b for b, _ in mixed] == comparer.generate_one(PROMPTS, None, settings=settings)
    assert [t for _, t in mixed] == comparer.generate_one(PROMPTS, adapter_dir, settings=settings)
    assert list(comparer.stream(PROMPTS[0], adapter_dir, settings=settings))[-1] == mixed[0]


def test_settings_the_loop_does_not_apply_go_to_generate(tiny_model_dir):
    comparer = playground.Comparer(str(tiny_model_dir), "lora", torch.float32)
    greedy = dict(max_new_tokens=8, pad_token_id=0, **generation.GREEDY)
    assert decoding.plan(comparer.model, greedy) is not None
    assert decoding.plan(comparer.model, {**greedy, "do_sample": True, "temperature": 0.7}) is None
    assert decoding.plan(comparer.model, {**greedy, "no_repeat_ngram_size": 2}) is None
    assert decoding.plan(comparer.model, {**greedy, "num_beams": 2}) is None
    comparer.model.generation_config.no_repeat_ngram_size = 2  # set by the model's own generation config
    assert decoding.plan(comparer.model, greedy) is None
    settings = playground.GenerationSettings(max_new_tokens=8, temperature=0.0)
    [answer] = comparer.generate_one(PROMPTS[:1], None, settings=settings)  # through generate, which applies it
    batch = generation.encode(comparer.tokenizer, comparer.conversations(PROMPTS[:1]))
    with torch.no_grad():
        out = comparer.model.generate(**batch, max_new_tokens=8, pad_token_id=comparer.tokenizer.pad_token_id,
                                      **generation.GREEDY)
    assert answer == comparer.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()

"""Preference objectives on the tiny Llama: DPO, ORPO and KTO through TRL's trainers with LoRA: the
loss is finite, the LoRA weights move, the base does not, and no second copy of the base is made for
the reference; events, checkpoints, resume and init_from as for SFT."""

import pytest
import torch

from tuning import config as config_mod
from tuning import runs
from tuning.train import trainer as train
from tuning.runs.events import read_events
from tuning.train.trainer import StopRequested

from conftest import write_jsonl


def pair_rows(n: int) -> list[dict]:
    return [{"prompt": f"Say hello #{i}", "chosen": "Hello! I'm Quill.\n— Quill", "rejected": f"no {i}"}
            for i in range(n)]


def kto_rows(n: int) -> list[dict]:
    return [{"prompt": f"Say hello #{i}", "completion": "Hello! I'm Quill." if i % 2 else "no", "label": bool(i % 2)}
            for i in range(n)]


@pytest.fixture
def pref_config(tiny_config, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(16))
    return tiny_config.replace(objective="dpo", dataset=str(path), eval_split=0.25, learning_rate=5e-3)


def _base_state(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items() if "lora_" not in n}


def _new_run(tmp_path, name, cfg):
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, cfg)
    return run_dir


@pytest.mark.parametrize("objective", ["dpo", "orpo", "kto"])
def test_objective_trains_lora_only_with_one_copy_of_the_base(tmp_path, pref_config, tiny_model_dir, objective):
    cfg = pref_config.replace(objective=objective, eval_split=0.0, max_steps=3)
    if objective == "kto":
        cfg = cfg.replace(dataset=str(write_jsonl(tmp_path / "kto.jsonl", kto_rows(16))))
    run_dir = _new_run(tmp_path, objective, cfg)
    trainer, _ = train.build_trainer(cfg, run_dir, tmp_path, runs.event_log(run_dir), StopRequested())
    model = trainer.model
    if objective != "orpo":
        assert trainer.ref_model is None, "the reference must be the adapter-disabled base, not a second model"
    # One copy of the base: every non-LoRA parameter of the trained model is the base's, counted once.
    from transformers import AutoModelForCausalLM
    base_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    frozen = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    assert frozen == base_params
    before_lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    before_base = _base_state(model)
    trainer.train()
    moved = [n for n, p in model.named_parameters() if n in before_lora and not torch.equal(p, before_lora[n])]
    assert moved, "no LoRA B matrix moved"
    for name, tensor in _base_state(model).items():
        assert torch.equal(tensor, before_base[name]), f"base tensor {name} changed"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_dpo_run_logs_rewards_checkpoints_resumes_and_evaluates(tmp_path, pref_config):
    cfg = pref_config.replace(max_steps=4, save_steps=2, eval_steps=2)
    run_dir = _new_run(tmp_path, "dpo-run", cfg)
    assert train.run(cfg, run_dir, tmp_path) == 0
    events, _ = read_events(runs.events_path(run_dir))
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == [1, 2, 3, 4]
    for e in logs:  # the DPO figures ride on each log line, for the Live tab's curves
        assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(e["objective"])
    assert [c.name for c in runs.complete_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert runs.has_final_adapter(run_dir) and events[-1]["status"] == "completed"
    evaluation = runs.read_evaluation(run_dir)
    figures = evaluation["preference"]
    assert figures["rows"] == 4 and 0 <= figures["tuned_accuracy"] <= 1 and 0 <= figures["base_accuracy"] <= 1
    assert figures["reward_accuracy"] == 1.0, "a few high-lr steps on one repeated pair rank every chosen higher"
    assert runs.summarize(run_dir).as_row()["objective"] == "dpo"

    # resume: a stopped run continues its step counter (same machinery as SFT)
    longer = cfg.replace(max_steps=6)
    runs.write_config(run_dir, longer)
    (runs.adapter_dir(run_dir) / runs.ADAPTER_WEIGHTS).unlink()
    assert train.run(longer, run_dir, tmp_path, resume=True) == 0
    steps = [e["step"] for e in read_events(runs.events_path(run_dir))[0] if e["event"] == "log"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_init_from_starts_from_the_finished_runs_adapter(tmp_path, tiny_config, pref_config):
    sft = tiny_config.replace(eval_split=0.0, max_steps=2, save_steps=2)
    sft_dir = _new_run(tmp_path, "sft-1", sft)
    assert train.run(sft, sft_dir, tmp_path) == 0
    from safetensors.torch import load_file
    start = load_file(runs.adapter_dir(sft_dir) / runs.ADAPTER_WEIGHTS)

    cfg = pref_config.replace(init_from="sft-1", eval_split=0.0, max_steps=1, lora_r=4)
    run_dir = _new_run(tmp_path, "dpo-2", cfg)
    trainer, _ = train.build_trainer(cfg, run_dir, tmp_path, runs.event_log(run_dir), StopRequested())
    loaded = {n: p for n, p in trainer.model.named_parameters() if ".default." in n and "lora_B" in n}
    key = next(iter(loaded))
    saved = key.replace(".default", "")
    assert torch.equal(loaded[key].detach().float(), start[saved].float()), "the trainable adapter is the SFT one"
    assert "ref" in trainer.model.peft_config, "the frozen reference is an adapter-sized copy of the start"
    assert trainer.ref_model is None


@pytest.mark.parametrize("change, message", [
    ({"init_from": "nope"}, "no run"),
    ({"init_from": "sft-x", "base_model": "other"}, "trained on"),
])
def test_init_from_is_checked(tmp_path, tiny_config, pref_config, change, message):
    from tuning.train import preference
    if change["init_from"] == "sft-x":
        sft_dir = _new_run(tmp_path, "sft-x", tiny_config.replace(eval_split=0.0, max_steps=1))
        assert train.run(tiny_config.replace(eval_split=0.0, max_steps=1), sft_dir, tmp_path) == 0
    with pytest.raises(config_mod.ConfigError, match=message):
        preference.check_init_from(pref_config.replace(**change), tmp_path)


def test_config_refuses_init_from_for_sft_and_packing_for_dpo(tiny_config):
    with pytest.raises(config_mod.ConfigError, match="init_from"):
        tiny_config.replace(init_from="run-1")
    with pytest.raises(config_mod.ConfigError, match="packing"):
        tiny_config.replace(objective="dpo", packing=True)
    with pytest.raises(config_mod.ConfigError, match="objective"):
        tiny_config.replace(objective="ppo")

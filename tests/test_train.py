"""Train the tiny Llama for a few steps in lora and qlora (4-bit on CPU through bitsandbytes)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tuning import runs

from tuning.train import trainer as train
from tuning.runs.events import EVENT_KINDS, read_events
from tuning.train.trainer import StopRequested


def _snapshot(model):
    return {n: p.detach().clone().float() for n, p in model.named_parameters()}


def _base_state(model):
    """Every frozen base tensor, 4-bit packed weights included (they are buffers-like params)."""
    return {n: t.detach().clone() for n, t in model.state_dict().items() if "lora_" not in n}


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_few_steps_adapter_changes_base_does_not(tmp_path, tiny_config, method):
    cfg = tiny_config.replace(method=method, eval_split=0.0)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    events = train.EventLog(run_dir / "events.jsonl")
    trainer, _ = train.build_trainer(cfg, run_dir, tmp_path, events, StopRequested())
    model = trainer.model
    if method == "qlora":
        import bitsandbytes as bnb
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()), "base must be 4-bit"
    before_lora = {n: p for n, p in _snapshot(model).items() if "lora_" in n}
    before_base = _base_state(model)
    trainer.train()
    after = _snapshot(model)
    changed = [n for n, p in before_lora.items() if "lora_B" in n and not torch.equal(p, after[n])]
    assert changed, "no LoRA B matrix moved"
    after_base = _base_state(model)
    assert before_base.keys() == after_base.keys()
    for name, tensor in before_base.items():
        assert torch.equal(tensor, after_base[name]), f"base tensor {name} changed"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def test_run_writes_events_checkpoints_and_reloadable_adapter(tmp_path, tiny_config):
    cfg = tiny_config.replace(method="qlora")
    run_dir = tmp_path / "runs" / "r2"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    assert train.run(cfg, run_dir, tmp_path) == 0

    events, _ = read_events(run_dir / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "phase" and events[0]["phase"] == "loading" and kinds[-1] == "end"
    assert [k for k in kinds if k != "phase"][0] == "start"
    assert set(kinds) <= set(EVENT_KINDS) and {"log", "eval", "checkpoint"} <= set(kinds)
    for e in events:
        assert isinstance(e["time"], float)
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == [1, 2, 3, 4]
    for e in logs:
        assert e["max_steps"] == 4 and e["loss"] > 0 and e["learning_rate"] >= 0 and e["tokens_per_second"] > 0
    assert events[-1]["status"] == "completed"
    # every line is standalone JSON
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        json.loads(line)

    ckpts = runs.complete_checkpoints(run_dir)
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4"]
    assert runs.summarize(run_dir).status == runs.COMPLETED

    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model)
    tuned = PeftModel.from_pretrained(base, adapter)
    key = next(k for k in weights if "lora_B" in k)
    loaded = dict(tuned.named_parameters())
    match = [n for n in loaded if n.replace(".default", "").endswith(key.replace("base_model.model.", ""))]
    assert match and torch.allclose(loaded[match[0]].float(), weights[key].float())


def test_resume_continues_the_step_counter(tmp_path, tiny_config):
    cfg = tiny_config.replace(max_steps=6, save_steps=2, eval_split=0.0)
    run_dir = tmp_path / "runs" / "r3"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    # First segment: a stop requested after step 3 (as SIGTERM does) -> checkpoint-3 saved.
    events = train.EventLog(run_dir / "events.jsonl")
    stop = StopRequested()
    trainer, _ = train.build_trainer(cfg, run_dir, tmp_path, events, stop)

    from transformers import TrainerCallback

    class StopAt3(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                stop.requested = True
    trainer.add_callback(StopAt3())
    trainer.train()
    stopped_at = trainer.state.global_step
    assert stopped_at == 4, "the stop lands at the end of the step in flight"
    assert runs.latest_checkpoint(run_dir).name == f"checkpoint-{stopped_at}"

    # A half-written newer checkpoint (no COMPLETE marker) must be skipped.
    (run_dir / "checkpoints" / "checkpoint-5").mkdir()
    assert runs.latest_checkpoint(run_dir).name == f"checkpoint-{stopped_at}"

    assert train.run(cfg, run_dir, tmp_path, resume=True) == 0
    evs, _ = read_events(run_dir / "events.jsonl")
    starts = [e for e in evs if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["step"] == stopped_at
    steps = [e["step"] for e in evs if e["event"] == "log"]
    assert steps == list(range(1, stopped_at + 1)) + list(range(stopped_at + 1, 7))
    assert evs[-1]["event"] == "end" and evs[-1]["step"] == 6

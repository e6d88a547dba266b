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


# --- memory: micro-batches, the fused head's levers, the sliced preference figures ----------------------

@pytest.fixture
def trl_own_head(monkeypatch):
    """TRL's own fused-head switch and tile width (an earlier trainer in this process may have set them),
    restored after the test."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    return trl_utils


@pytest.mark.parametrize("objective, device, speedups, batch, passes, length, expected", [
    ("dpo", "cpu", "auto", 8, 1, 512, (1, 8)),  # 8 pairs x 2 x 512 = 8,192 tokens: one pair a pass
    ("dpo", "cpu", "auto", 8, 2, 512, (1, 16)),  # the person's own accumulation multiplies
    ("dpo", "cpu", "auto", 6, 1, 256, (2, 3)),  # 2 pairs of 2 x 256 fit
    ("dpo", "cpu", "auto", 5, 1, 256, (1, 5)),  # equal passes: the largest divisor that fits
    ("dpo", "cpu", "auto", 4, 1, 128, (4, 1)),  # 1,024 tokens: fits, unchanged
    ("dpo", "cpu", "auto", 1, 1, 2048, (1, 1)),  # one pair is the least
    ("dpo", "cuda", "auto", 8, 1, 512, (8, 1)),  # a GPU's batch is the person's choice
    ("dpo", "cpu", "off", 8, 1, 512, (8, 1)),  # speedups: off keeps the batch whole
    ("kto", "cpu", "auto", 8, 1, 512, (8, 1)),  # KTO's KL estimate takes the whole batch
    ("orpo", "cpu", "auto", 8, 1, 512, (8, 1)),  # ORPO's NLL is token-weighted over the batch
])
def test_micro_batch_splits_a_big_dpo_batch_on_a_cpu_and_keeps_the_effective_batch(
        tiny_config, objective, device, speedups, batch, passes, length, expected):
    from tuning.train import preference

    cfg = tiny_config.replace(objective=objective, speedups=speedups, per_device_batch_size=batch,
                              gradient_accumulation_steps=passes, max_length=length)
    pairs, accumulation, line = preference.micro_batch(cfg, device)
    assert (pairs, accumulation) == expected
    assert pairs * accumulation == batch * passes, "the effective batch never changes"
    if expected == (batch, passes):
        assert line is None
    else:
        assert line.startswith(f"micro-batch: {batch} pairs x 2 sides x max_length {length}")
        assert f"{batch // pairs} passes of {pairs} pair" in line and f"same {batch * passes} pairs" in line


def _dpo_logs(tmp_path, cfg, name):
    run_dir = _new_run(tmp_path, name, cfg)
    trainer, _ = train.build_trainer(cfg, run_dir, tmp_path, runs.event_log(run_dir), StopRequested())
    trainer.train()
    return trainer, [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_micro_batches_and_the_fused_head_levers_keep_dpo_s_losses(tmp_path, pref_config, trl_own_head, monkeypatch,
                                                                   capsys, precision, tolerance):
    """The same pairs per optimizer step, the same DPO losses, rewards and gradient norms as the whole batch on
    TRL's own fused head (speedups: off): 8 pairs as 8 passes of 1 (as 8 pairs of 2 x 512 tokens are on the
    real model), the head scoring the answer tokens only in narrow tiles, the norms and the MLP's SiLU
    computed again in the backward, the LoRA layers' lean forward keeping their input once. No LoRA
    dropout: the masks are drawn per pass shape."""
    from tuning.train import preference

    monkeypatch.setattr(preference, "MICRO_BATCH_TOKENS", 128)  # 1 pair of 2 x 64 tokens a pass
    cfg = pref_config.replace(eval_split=0.0, per_device_batch_size=8, max_length=64, max_steps=3, lora_dropout=0.0,
                              precision=precision)
    whole, whole_logs = _dpo_logs(tmp_path, cfg.replace(speedups="off"), "whole")
    assert (whole.args.per_device_train_batch_size, whole.args.gradient_accumulation_steps) == (8, 1)
    assert "micro-batch" not in capsys.readouterr().out
    micro, micro_logs = _dpo_logs(tmp_path, cfg, "micro")
    assert (micro.args.per_device_train_batch_size, micro.args.gradient_accumulation_steps) == (1, 8)
    out = capsys.readouterr().out
    assert "micro-batch: 8 pairs x 2 sides x max_length 64 = up to 1,024 tokens a forward" in out
    for name in ("trained_tokens_only", "lm_head_tiles", "malloc_trim", "mlp_activation", "norms",
                 "lean_lora_forward", "shared_lora_inputs"):
        assert f"lever {name}: applied" in out, name
    assert "lever fast_dropout: skipped (nothing matched: no LoRA dropout with p > 0)" in out
    assert "lever token_buckets: skipped (objective dpo: TRL's preference trainer keeps its own code paths)" in out
    assert len(whole_logs) == len(micro_logs) == 3
    assert whole_logs[1]["loss"] < 0.69, "the steps after the first move the policy: a real comparison"
    for a, b in zip(whole_logs, micro_logs):
        for key in ("loss", "grad_norm", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
            assert b[key] == pytest.approx(a[key], rel=tolerance, abs=tolerance), (a["step"], key, a[key], b[key])


def test_the_held_out_preference_figures_score_a_slice_of_the_head_at_a_time(tiny_model_dir):
    """answer_logps with the sliced_eval_loss lever: the same summed log-probabilities as the full logits'
    log-softmax, without the batch's full logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuning.data import pairs
    from tuning.evaluation import preference_figures
    from tuning.infer.generation import BASE

    from peft import LoraConfig, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    rows = [pairs.normalize_pair(r, "prompt_chosen_rejected", "pairs", i)[0] for i, r in enumerate(pair_rows(5))]
    scored = {}
    for adapter in ("default", BASE):
        for side in ("chosen", "rejected"):
            full = preference_figures.answer_logps(model, tokenizer, rows, side, adapter, 64, batch_size=2)
            sliced = preference_figures.answer_logps(model, tokenizer, rows, side, adapter, 64, batch_size=2,
                                                     sliced=True)
            assert len(full) == 5 and all(f < 0 for f in full)
            assert sliced == pytest.approx(full, rel=1e-5, abs=1e-4)
            scored[adapter, side] = sliced
    assert scored["default", "chosen"] != pytest.approx(scored[BASE, "chosen"]), "the adapter is switched per call"


@pytest.mark.slow
def test_dpo_from_an_sft_run_on_the_real_model_at_512_tokens_peaks_under_3_gib(tmp_path, real_run,
                                                                                embedded_model_dir):
    """The quickstart's batch of 8 pairs at max_length 512 (bench/dpo_memory.py's pairs, most of them 512
    tokens a side) from a finished SFT run of the embedded model: the whole command, with a held-out
    evaluation and the end-of-run evaluation's preference figures, peaks under 3 GiB (16 GiB before the
    micro-batches and the fused head's levers; bench/RESULTS.md, Preference tuning memory)."""
    import importlib.util
    import sys

    from tuning import paths
    from conftest import add_real_run

    spec = importlib.util.spec_from_file_location("dpo_memory", paths.PROJECT_DIR / "bench" / "dpo_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import memory  # bench/memory.py, on sys.path since dpo_memory imports it

    workspace = tmp_path / "ws"
    init = add_real_run(workspace, real_run, embedded_model_dir)
    data = bench.write_pairs(tmp_path / "data", 80)  # 72 train, 8 held out: one full evaluation batch
    command = [sys.executable, "-m", "tuning", "train", "--workspace", str(workspace), "--preset",
               "presets/quickstart.yaml"]
    for setting in ("objective=dpo", f"init_from={init}", f"dataset={data}", "max_length=512", "max_steps=2",
                    "eval_steps=2", "save_steps=2", "final_evaluation=quick"):
        command += ["--set", setting]
    # the command's own peak: a child spawned straight from this test process would start its figure
    # at the test process's high-water mark (memory.child_peak says why), gigabytes after the suite's
    # in-process models
    peak, _, out = memory.child_peak(command)
    assert "micro-batch: 8 pairs x 2 sides x max_length 512" in out and "step 2/2" in out
    assert "lever trained_tokens_only: applied" in out
    assert peak <= 3 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"
    (run_dir,) = [p for p in (workspace / "runs").iterdir() if p.name != init]
    assert runs.read_evaluation(run_dir)["preference"]["rows"] == 8

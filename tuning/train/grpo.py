"""GRPO, the model side: TRL's GRPOTrainer on the same LoRA/QLoRA base, callbacks, checkpoints, resume
and stop as the other objectives (tuning/train/preference.py's building blocks), and the reward dry-run.

- Each step samples num_generations answers to each prompt of the step, scores them with the rewards
  (tuning/train/rewards.py) and moves the adapter towards the answers that beat their group's mean.
  The answers of a step are per_device_batch_size x gradient_accumulation_steps completions, so a step
  sees that / num_generations prompts (config checks it divides).
- The reference for beta's KL penalty is never a second copy of the weights: TRL scores it with the
  adapter switched off (a fresh adapter) or with a frozen copy of init_from's adapter ("ref"), as DPO.
- Memory and time on a CPU: sampling dominates a step (max_completion_length decoding steps of the
  whole group); the backward then holds the group's prompt + answer tokens, a few hundred here.
- TRL logs the mean and spread of each reward (rewards/<name>/mean, /std), their weighted total (reward,
  reward_std), the share of groups whose answers all scored the same (frac_reward_zero_std), the KL
  and the answers' lengths (completions/...): they ride on each `log` event's `objective` field.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from tuning import runs
from tuning.config import TrainConfig
from tuning.data import prompts
from tuning.train import preference, recipe, rewards

PROBES = 5  # held-out questions answered at each checkpoint (the Evaluation tab's gallery)


def _args(cfg: TrainConfig, run_dir: Path, has_eval: bool, early_stop: bool):
    from trl import GRPOConfig

    common = preference.common_args(cfg, run_dir, has_eval, early_stop)
    common.pop("max_length", None)  # GRPO bounds the prompt and the answer separately
    weights = [r.spec.weight for r in rewards.build(cfg)]
    return GRPOConfig(**common, beta=cfg.beta, num_generations=cfg.num_generations,
                      max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                      reward_weights=weights, remove_unused_columns=False,  # the rewards read the row's columns
                      log_completions=False)


def build_trainer(cfg: TrainConfig, run_dir: Path, workspace: Path, callbacks: list, tokenizer, model_path: str,
                  recorder: rewards.SampleRecorder | None = None):
    """GRPOTrainer for the run's prompts and rewards, with the callbacks the other objectives get; the
    recorder, when given, keeps the latest batch the rewards score (for the `log` events' samples)."""
    from trl import GRPOTrainer

    scorers = rewards.build(cfg)  # a bad reward or reward_file fails here, before the model loads
    if recorder is not None:
        recorder.attach(scorers)
    loaded = prompts.load_config_dataset(cfg)
    preference.require_rows(cfg, loaded, "prompt")
    train_rows, held = prompts.train_and_heldout(cfg, loaded)
    print(f"data: {len(train_rows)} train prompts, {len(held)} held out, {len(loaded.problems)} problems; "
          f"rewards {', '.join(r.name for r in scorers)} read {', '.join(loaded.columns) or 'no column'}", flush=True)
    if runs.read_probes(run_dir) is None and held:  # the probes: held-out questions, not the SFT demo's
        runs.write_probes(run_dir, [r["prompt"][-1]["content"] for r in held[:PROBES]])
    model, peft_config = preference.load_model(cfg, model_path, workspace)
    cfg, _ = recipe.start(cfg, run_dir, len(train_rows), 0, len(held), None, float(model.num_parameters()))
    # The Trainer's held-out pass would sample answers to every held-out prompt at every eval step:
    # minutes on a CPU for a figure the reward dry-run gives on demand. Left out here.
    args = _args(cfg, run_dir, False, False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return GRPOTrainer(model=model, reward_funcs=scorers, args=args, train_dataset=prompts.to_dataset(train_rows),
                       processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)


# --- the dry-run: what the rewards make of the current model's answers, before any training ---------------

def rewards_dry_run(cfg: TrainConfig, workspace: Path, samples: int = 4) -> dict[str, Any]:
    """Sample `samples` training prompts, answer each num_generations times with the model a run would
    start from (the base, or init_from's adapter), and score every answer. Returns the rewards (name,
    weight, description), one group per prompt (answers with each reward and the total, the group's
    mean and spread, and whether it teaches nothing) and the share of groups that teach nothing."""
    import torch

    from tuning import models
    from tuning.infer import generation

    scorers = rewards.build(cfg)
    loaded = prompts.load_config_dataset(cfg)
    preference.require_rows(cfg, loaded, "prompt")
    train_rows, _ = prompts.train_and_heldout(cfg, loaded)
    picked = random.Random(cfg.seed).sample(train_rows, min(samples, len(train_rows)))
    start = preference.check_init_from(cfg, workspace)
    model_path = models.resolve_base_model(cfg.base_model, workspace)
    tokenizer = models.load_tokenizer(model_path, cfg.trust_remote_code)
    model = models.load_model(model_path, cfg.method, models.compute_dtype(cfg), cfg.trust_remote_code,
                              models.get_quantization_config(cfg), cfg.speedups, None, cfg.levers_turned_off)
    name = generation.BASE
    if start is not None:
        from peft import PeftModel

        model, name = PeftModel.from_pretrained(model, str(start), adapter_name="start"), "start"
    torch.manual_seed(cfg.seed)
    groups = []
    n = cfg.num_generations
    started = time.perf_counter()
    for row in picked:
        answers = generation.generate_rows(model, tokenizer, [row["prompt"]] * n, [name] * n, do_sample=True,
                                           temperature=cfg.temperature, top_p=1.0, top_k=0,
                                           max_new_tokens=cfg.max_completion_length)
        columns = {k: [v] * n for k, v in row.items() if k != "prompt"}
        scored = rewards.score_group(scorers, answers, columns, [row["prompt"]] * n)
        groups.append({"prompt": row["prompt"][-1]["content"],
                       **{k: v for k, v in row.items() if k != "prompt"}, **scored})
    sampling = (time.perf_counter() - started) / len(picked) if picked else None  # scoring is negligible
    flat = sum(g["teaches_nothing"] for g in groups)
    return {"model": cfg.base_model + (f" + run {cfg.init_from}" if cfg.init_from else ""),
            "num_generations": n, "temperature": cfg.temperature,
            "rewards": [{"name": r.name, "weight": r.spec.weight, "description": r.description} for r in scorers],
            "columns": list(loaded.columns), "problems": [str(p) for p in loaded.problems[:20]],
            "problem_count": len(loaded.problems), "groups": groups,
            "teaches_nothing": flat, "teaches_nothing_share": flat / len(groups) if groups else 0.0,
            "seconds_per_prompt": sampling, "prompts_per_step": prompts_per_step(cfg)}


def prompts_per_step(cfg: TrainConfig) -> int:
    """The prompts a step samples answers to: its answers (the effective batch) / num_generations."""
    return max(1, cfg.effective_batch_size // max(1, cfg.num_generations))


def dry_run_text(result: dict[str, Any], width: int = 70) -> str:
    """The dry-run as a table for a terminal."""
    lines = [f"{result['model']}: {len(result['groups'])} prompts x {result['num_generations']} answers "
             f"(temperature {result['temperature']})"]
    lines += [f"  {r['name']} (x{r['weight']:g}): {r['description']}" for r in result["rewards"]]
    if result["problem_count"]:
        lines.append(f"{result['problem_count']} rows left out; first: {result['problems'][0]}")
    names = [r["name"] for r in result["rewards"]]
    for number, group in enumerate(result["groups"], start=1):
        lines.append("")
        lines.append(f"[{number}] {group['prompt'][:width]}" + (f"  (answer: {group['answer']})"
                                                                 if "answer" in group else ""))
        lines.append("    " + "  ".join(f"{n:>9}" for n in names) + "      total  answer")
        for answer in group["answers"]:
            values = "  ".join(f"{_cell(answer['rewards'][n]):>9}" for n in names)
            text = " ".join(answer["text"].split())
            lines.append(f"    {values}  {answer['total']:9.3f}  {text[:width]}")
        lines.append(f"    group mean {group['mean']:.3f}, spread {group['spread']:.3f}"
                     + ("  -- every answer scored the same: this prompt teaches nothing" if group["teaches_nothing"]
                        else ""))
    lines.append("")
    if result.get("seconds_per_prompt") is not None:
        per_step = result["seconds_per_prompt"] * result["prompts_per_step"]
        lines.append(f"sampling: {result['seconds_per_prompt']:.1f} s a prompt here ({result['num_generations']} "
                     f"answers); a step samples {result['prompts_per_step']} prompts: ~{per_step:.1f} s a step "
                     "before its training pass")
    lines.append(f"{result['teaches_nothing']} of {len(result['groups'])} groups teach nothing"
                 + ("; raise temperature or num_generations, or pick rewards that tell the answers apart"
                    if result["teaches_nothing"] else ""))
    return "\n".join(lines)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"

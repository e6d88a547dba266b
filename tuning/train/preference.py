"""Preference tuning, the model side: TRL's DPOTrainer, KTOTrainer and ORPO trainer (trl.experimental
in the pinned TRL) built on the same LoRA/QLoRA base, callbacks, checkpoints and resume as SFT (the held-out preference figures
of the end-of-run evaluation are in tuning/evaluation/preference_figures.py).

- The reference model is never a second copy of the weights. TRL's own rule with PEFT and
  ref_model=None: a fresh adapter is scored against the same base with the adapter switched off;
  a run that starts from another run's adapter (init_from, the usual SFT-then-DPO recipe) is scored
  against a frozen copy of that starting adapter, an adapter-sized "ref" adapter in the same model.
  ORPO needs no reference at all.
- init_from: the finished run's adapter/ is loaded as the trainable adapter (its rank and target
  modules come with it), after checking the run finished with an adapter of the same base model.
- Memory on a CPU (bench/dpo_memory.py; bench/RESULTS.md, Preference tuning memory): a DPO forward holds
  per_device_batch_size pairs x 2 sides x up to max_length tokens, and autograd keeps ~0.9 MiB a token of
  SmolLM2-135M for the backward, so 8 pairs at 512 tokens peaked at 16 GiB. micro_batch() splits such a
  batch into gradient-accumulation passes of at most MICRO_BATCH_TOKENS tokens (the same pairs per
  optimizer step, the same mean loss). TRL's fused LM head, which DPO and KTO score through as SFT does,
  takes SFT's two levers (score the answer tokens only, in narrow tiles), and the levers that change no
  value (the MLP's SiLU and the norms computed again in the backward, malloc_trim after each step) and
  the LoRA layers' (a leaner forward, the layer's input kept once for all its adapters) apply as for SFT
  (shared_levers; trainer.build_trainer). `speedups: off` keeps the batch whole and TRL's and the model's
  code as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuning import data as data_mod
from tuning.data import pairs
from tuning import runs
from tuning.config import ConfigError, TrainConfig
from tuning.train import recipe

# The metrics TRL's preference trainers log besides the loss, kept in the `log` event's `objective` field.
METRIC_PREFIXES = ("rewards/", "logps/", "kl", "nll_loss", "log_odds_ratio", "log_odds_chosen",
                   "reward", "frac_reward_zero_std", "completions/", "entropy")  # the last four: GRPO's


def objective_metrics(logs: dict) -> dict[str, float] | None:
    """The objective's own figures from a Trainer log (None for SFT, which logs none of them)."""
    found = {k: float(v) for k, v in logs.items() if k.startswith(METRIC_PREFIXES) and isinstance(v, (int, float))}
    return found or None


# --- init_from ---------------------------------------------------------------------------------------

def check_init_from(cfg: TrainConfig, workspace: Path) -> Path | None:
    """The adapter folder init_from names, after checking that run finished (completed or stopped)
    with a final adapter and was trained on the same base model. None when init_from is empty."""
    if not cfg.init_from:
        return None
    try:
        run = runs.existing_run_dir(workspace, cfg.init_from)
    except runs.RunError as exc:
        raise ConfigError(f"init_from: {exc}") from None
    summary = runs.summarize(run)
    if summary.status not in (runs.COMPLETED, runs.STOPPED) or not runs.has_final_adapter(run):
        raise ConfigError(f"init_from: run {cfg.init_from} is {summary.status} without a final adapter; "
                          "name a finished run")
    base = summary.config.get("base_model")
    if base != cfg.base_model:
        raise ConfigError(f"init_from: run {cfg.init_from} was trained on {base!r}, this run uses "
                          f"{cfg.base_model!r}; an adapter only fits the base it was trained on")
    return runs.adapter_dir(run)


def load_model(cfg: TrainConfig, model_path: str, workspace: Path):
    """The frozen base (4-bit for qlora), with the init_from adapter loaded trainable when given."""
    from tuning import models

    start = check_init_from(cfg, workspace)
    model = models.load_base_for_training(cfg, model_path)
    if start is None:
        return model, models.get_peft_config(cfg)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(start), is_trainable=True)
    print(f"init_from: the adapter of run {cfg.init_from} (r={model.peft_config['default'].r}) is the starting "
          "point and, frozen, the reference", flush=True)
    return model, None


# --- memory: micro-batches and TRL's fused LM head -------------------------------------------------------

MICRO_BATCH_TOKENS = 1024  # tokens a DPO forward may hold on a CPU: 1 pair of 2 x 512 (peak 16 -> 2.6 GiB, 135M)
# The objectives whose TRL trainer scores log-probabilities through TRL's fused LM head
# (trl.trainer.utils.add_fused_lm_head, called with fused_lm_head=True), as SFTTrainer does: the SFT levers
# that tune that head apply to them too. ORPO (trl.experimental) computes the full logits itself.
FUSED_HEAD_OBJECTIVES = ("dpo", "kto")
FUSED_HEAD_LEVERS = ("trained_tokens_only", "lm_head_tiles")
# Trainer-stage levers that change no value and no random draw of any trainer's step: the model's own
# modules keep less for the backward (the MLP's SiLU and the RMSNorms computed again, bit for bit), and
# glibc's heap gives its free pages back after every step. token_buckets pads SFT's padding-free
# batches: it stays SFT's.
EXACT_LEVERS = ("malloc_trim", "mlp_activation", "norms")
# The LoRA layers' levers patch PEFT's layers, which every objective's model has: the same values as
# PEFT's forward, less kept for the backward (a DPO pass of 1,024 tokens keeps ~0.25 GiB less), and the
# dropout masks drawn their own way (the same rate; with lora_dropout 0, the same numbers as PEFT's).
LORA_LEVERS = ("fast_dropout", "lean_lora_forward", "shared_lora_inputs")
# On CUDA, Liger's layer kernels (tuning/levers/liger.py) go to every objective's model, as TRL's own
# `use_liger_kernel` did for its preference trainers: the same functions in fused kernels, no random draw.
KERNEL_LEVERS = ("liger_kernels",)


def shared_levers(objective: str) -> tuple[str, ...]:
    """The trainer-stage levers (tuning/levers) that apply to this objective's TRL trainer as they do
    to SFT's: EXACT_LEVERS, LORA_LEVERS and KERNEL_LEVERS for every objective, the fused head's for DPO
    and KTO."""
    return (EXACT_LEVERS + LORA_LEVERS + KERNEL_LEVERS
            + (FUSED_HEAD_LEVERS if objective in FUSED_HEAD_OBJECTIVES else ()))


def micro_batch(cfg: TrainConfig, device: str) -> tuple[int, int, str | None]:
    """(pairs per forward, forward passes per optimizer step, a line for the run's log or None).

    A DPO forward holds per_device_batch_size pairs x 2 sides (chosen, rejected) x up to max_length
    tokens. On a CPU, past MICRO_BATCH_TOKENS the batch is split into gradient-accumulation passes of
    the largest divisor of per_device_batch_size that fits (at least one pair): each optimizer step
    sees the same pairs, and DPO's loss, a mean over pairs, is the mean of the passes' equal-sized
    means. Unchanged for a batch that fits, on a GPU (its memory is the batch the person chose), with
    `speedups: off`, and for KTO and ORPO, whose losses are not means over rows (KTO's KL estimate and
    ORPO's token-weighted NLL take the whole batch)."""
    from tuning import levers

    pairs, passes = cfg.per_device_batch_size, cfg.gradient_accumulation_steps
    tokens = pairs * 2 * cfg.max_length
    if cfg.objective != "dpo" or device != levers.CPU or cfg.speedups == levers.OFF or tokens <= MICRO_BATCH_TOKENS:
        return pairs, passes, None
    fits = max(1, MICRO_BATCH_TOKENS // (2 * cfg.max_length))
    micro = max(d for d in range(1, min(fits, pairs) + 1) if pairs % d == 0)
    split = pairs // micro
    if split == 1:
        return pairs, passes, None  # one pair: nothing to split
    line = (f"micro-batch: {pairs} pairs x 2 sides x max_length {cfg.max_length} = up to {tokens:,} tokens a forward, "
            f"over the {MICRO_BATCH_TOKENS:,} a CPU forward holds here: each step runs {split} passes of {micro} "
            f"pair{'s' if micro > 1 else ''} (gradient accumulation {passes} -> {passes * split}); the same "
            f"{cfg.effective_batch_size} pairs per optimizer step, the same mean loss (speedups: off keeps the "
            "batch whole)")
    return micro, passes * split, line


# --- the trainers ---------------------------------------------------------------------------------------

def common_args(cfg: TrainConfig, run_dir: Path, has_eval: bool, early_stop: bool) -> dict[str, Any]:
    """The TrainingArguments every objective shares with SFT (trainer.build_trainer's, minus packing),
    with a DPO batch split into micro-batches where it would not fit (micro_batch)."""
    import torch

    from tuning import models
    from tuning.train import distributed

    dtype = models.compute_dtype(cfg, training=True)
    pairs, passes, note = micro_batch(cfg, "cuda" if torch.cuda.is_available() else "cpu")
    if note:
        print(note, flush=True)
    return dict(
        output_dir=str(runs.checkpoints_dir(run_dir)),
        per_device_train_batch_size=pairs, per_device_eval_batch_size=pairs,
        gradient_accumulation_steps=passes, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        # TRL's preference configs default to checkpointing and bf16: the form's values win
        activation_checkpointing=cfg.gradient_checkpointing, bf16=dtype == torch.bfloat16,
        use_cpu=not torch.cuda.is_available(), seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.step_interval("save_steps"),
        save_total_limit=max(2, cfg.save_total_limit),  # see trainer.build_trainer: the marker comes after
        eval_strategy="steps" if has_eval else "no", eval_steps=cfg.step_interval("eval_steps"),
        load_best_model_at_end=early_stop, metric_for_best_model="eval_loss" if early_stop else None,
        greater_is_better=False if early_stop else None,
        max_length=cfg.max_length, report_to="none", disable_tqdm=True, logging_nan_inf_filter=False,
        dataloader_num_workers=0, include_num_input_tokens_seen="all",
        **distributed.trainer_kwargs(cfg),
    )


def _trainer_class(cfg: TrainConfig, common: dict):
    """(trainer class, its config) for the objective, with TRL's recommended defaults otherwise."""
    if cfg.objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig(**common, beta=cfg.beta, loss_type=[cfg.dpo_loss])
    if cfg.objective == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig(**common, beta=cfg.beta, desirable_weight=cfg.kto_desirable_weight,
                                     undesirable_weight=cfg.kto_undesirable_weight)
    if cfg.objective == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        common = {k: v for k, v in common.items() if k != "include_num_input_tokens_seen"}
        return ORPOTrainer, ORPOConfig(**common, beta=cfg.beta)
    raise ConfigError(f"objective: {cfg.objective!r} is not a preference objective")


def require_rows(cfg: TrainConfig, loaded, what: str) -> None:
    """A DataError naming the first problem when the run's data holds no valid `what` rows."""
    if not loaded.rows:
        raise data_mod.DataError(f"{cfg.dataset}: no valid {what} rows; first problem: {loaded.problems[0]}"
                                 if loaded.problems else f"{cfg.dataset}: no rows")


def build_trainer(cfg: TrainConfig, run_dir: Path, workspace: Path, callbacks: list, tokenizer, model_path: str):
    """The preference trainer for cfg.objective on the run's data; callbacks as SFT's (events, the
    NaN guard, probes, early stopping). Returns the trainer."""
    loaded = pairs.load_config_dataset(cfg)
    require_rows(cfg, loaded, "preference")
    train_rows, held = pairs.train_and_heldout(cfg, loaded)
    print(f"data: {len(train_rows)} train {loaded.kind}, {len(held)} held out, {len(loaded.problems)} problems "
          f"({loaded.format})", flush=True)
    model, peft_config = load_model(cfg, model_path, workspace)
    # auto epochs / learning rate: the recipe's for this many pairs (no time estimate: a pair costs
    # several forward passes, which the SFT speed figures do not cover)
    cfg, _ = recipe.start(cfg, run_dir, len(train_rows), 0, len(held), None, float(model.num_parameters()))
    early_stop = cfg.early_stopping_patience > 0 and bool(held)
    trainer_class, args = _trainer_class(cfg, common_args(cfg, run_dir, bool(held), early_stop))
    if early_stop:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    kwargs = dict(model=model, args=args, train_dataset=pairs.to_dataset(train_rows),
                  eval_dataset=pairs.to_dataset(held) if held else None, processing_class=tokenizer,
                  peft_config=peft_config, callbacks=callbacks)
    if cfg.objective != "orpo":
        kwargs["ref_model"] = None  # PEFT: the reference is the base (or starting adapter), never a copy
    return trainer_class(**kwargs)

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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuning import data as data_mod
from tuning.data import pairs
from tuning import runs
from tuning.config import ConfigError, TrainConfig

# The metrics TRL's preference trainers log besides the loss, kept in the `log` event's `objective` field.
METRIC_PREFIXES = ("rewards/", "logps/", "kl", "nll_loss", "log_odds_ratio", "log_odds_chosen")


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


def _model(cfg: TrainConfig, model_path: str, workspace: Path):
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


# --- the trainers ---------------------------------------------------------------------------------------

def _common_args(cfg: TrainConfig, run_dir: Path, has_eval: bool, early_stop: bool) -> dict[str, Any]:
    """The TrainingArguments every objective shares with SFT (trainer.build_trainer's, minus packing)."""
    import torch

    from tuning import models
    from tuning.train import distributed

    dtype = models.compute_dtype(cfg, training=True)
    return dict(
        output_dir=str(runs.checkpoints_dir(run_dir)),
        per_device_train_batch_size=cfg.per_device_batch_size, per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
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


def build_trainer(cfg: TrainConfig, run_dir: Path, workspace: Path, callbacks: list, tokenizer, model_path: str):
    """The preference trainer for cfg.objective on the run's data; callbacks as SFT's (events, the
    NaN guard, probes, early stopping). Returns the trainer."""
    loaded = pairs.load_config_dataset(cfg)
    if not loaded.rows:
        raise data_mod.DataError(f"{cfg.dataset}: no valid preference rows; first problem: {loaded.problems[0]}"
                                 if loaded.problems else f"{cfg.dataset}: no rows")
    train_rows, held = pairs.train_and_heldout(cfg, loaded)
    print(f"data: {len(train_rows)} train {loaded.kind}, {len(held)} held out, {len(loaded.problems)} problems "
          f"({loaded.format})", flush=True)
    model, peft_config = _model(cfg, model_path, workspace)
    early_stop = cfg.early_stopping_patience > 0 and bool(held)
    trainer_class, args = _trainer_class(cfg, _common_args(cfg, run_dir, bool(held), early_stop))
    if early_stop:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    kwargs = dict(model=model, args=args, train_dataset=pairs.to_dataset(train_rows),
                  eval_dataset=pairs.to_dataset(held) if held else None, processing_class=tokenizer,
                  peft_config=peft_config, callbacks=callbacks)
    if cfg.objective != "orpo":
        kwargs["ref_model"] = None  # PEFT: the reference is the base (or starting adapter), never a copy
    return trainer_class(**kwargs)

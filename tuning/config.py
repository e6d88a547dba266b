"""TrainConfig: the single source of truth for one fine-tuning run.

The dashboard form, a preset YAML file and the CLI's `--set key=value` all map onto
this one flat, frozen dataclass. It validates itself in __post_init__, refuses unknown
keys, and carries each field's help text and valid range in its metadata so that the
UI can build its form from it instead of keeping a second copy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
AUTO_STEPS = 0  # save_steps / eval_steps: "auto", about a quarter of the run (AUTO_INTERVAL_RATIO)
AUTO_INTERVAL_RATIO = 0.25  # the Trainer reads a float < 1 as a share of the total steps
AUTO_EPOCHS = 0.0  # num_epochs "auto": the recipe picks the passes (tuning/train/recipe.py)
AUTO_LEARNING_RATE = 0.0  # learning_rate "auto": the recipe's, from the model size and the step count
SHORT_RUN_STEPS = 100  # final_evaluation auto: quick up to here, full above
DEMO_DATASET = "demo"
# The levers' names, in the registry's order (tuning/levers LEVERS; tests/test_levers.py keeps the two
# equal): config is the bottom layer and cannot import the registry, yet must refuse an unknown name in
# levers_off before a run starts rather than let a typo silently leave every lever on.
LEVER_NAMES = ("allocator_arenas", "contiguous_head_input", "varlen_sdpa", "fast_dropout", "trained_tokens_only",
               "lean_lora_forward", "token_buckets", "malloc_trim", "lm_head_tiles", "shared_lora_inputs",
               "mlp_activation", "norms", "liger_kernels", "few_rows_linear", "sliced_eval_loss",
               "trim_between_checks")


class ConfigError(ValueError):
    """A config value the user gave is wrong. The message names the key."""


def _f(default: Any, help: str, group: str, *, choices: tuple | None = None,
       min: float | None = None, max: float | None = None, advanced: bool = False,
       label: str | None = None, simple: bool = False) -> Any:
    """A dataclass field with the metadata the form and the validator read: `label` is the form's
    human name for it (with its unit), `simple` puts it in the Train tab's Simple view (at most 8)."""
    meta = {"help": help, "group": group, "advanced": advanced, "label": label, "simple": simple}
    if choices is not None:
        meta["choices"] = choices
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    # --- model -------------------------------------------------------------------
    base_model: str = _f(EMBEDDED_MODEL, "Base model: the embedded default, a local folder, or a Hub id "
                         "(e.g. Qwen/Qwen2.5-0.5B-Instruct; needs network).", "model", label="Base model", simple=True)
    trust_remote_code: bool = _f(False, "Run Python code shipped with a Hub model. Only for models you trust.",
                                 "model", advanced=True, label="Trust the model's own code")
    run_name: str = _f("", "A short name for the run (letters, digits, - and _). Empty: derived from the time.",
                       "model", label="Run name")

    # --- method ------------------------------------------------------------------
    method: Literal["qlora", "lora"] = _f("qlora", "qlora: 4-bit NF4 frozen base (double quantization) + LoRA. "
                                          "lora: full-precision frozen base + LoRA.", "method",
                                          choices=("qlora", "lora"), label="Method (QLoRA / LoRA)", simple=True)
    precision: Literal["auto", "bf16", "fp32"] = _f(
        "auto", "Compute dtype for training. auto: bf16 where the device supports it fast, else fp32.",
        "method", choices=("auto", "bf16", "fp32"), label="Precision")

    # --- LoRA --------------------------------------------------------------------
    lora_r: int = _f(16, "LoRA rank: the adapter's capacity. 8-64 is typical.", "lora", min=1, max=1024,
                     label="LoRA rank (r)", simple=True)
    lora_alpha: int = _f(32, "LoRA scaling numerator; usually 2 x r.", "lora", min=1, max=4096, label="LoRA alpha")
    lora_dropout: float = _f(0.05, "Dropout on the adapter's input.", "lora", min=0.0, max=0.9, label="LoRA dropout")
    target_modules: str = _f("all-linear", "Which linear layers get adapters: all-linear, or a comma-separated "
                             "list such as q_proj,v_proj.", "lora", label="Target layers")
    use_dora: bool = _f(False, "DoRA: weight-decomposed LoRA. Slightly better, slower.", "lora", advanced=True,
                        label="DoRA")
    use_rslora: bool = _f(False, "rsLoRA: scale by alpha/sqrt(r) instead of alpha/r; helps at large r.", "lora",
                          advanced=True, label="rsLoRA")

    # --- optimisation ------------------------------------------------------------
    learning_rate: float = _f(2e-4, "Peak learning rate. 1e-4 to 3e-4 is typical for LoRA. auto (0): the "
                              "recipe's, from the model's size and the run's step count (tuning/train/recipe.py).",
                              "optimisation", min=0.0, max=1.0, label="Learning rate", simple=True)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = _f(
        "cosine", "Learning-rate schedule after warmup.", "optimisation",
        choices=("cosine", "linear", "constant", "constant_with_warmup"), label="Learning-rate schedule")
    warmup_ratio: float = _f(0.05, "Share of the steps spent warming the learning rate up from 0.", "optimisation",
                             min=0.0, max=0.5, label="Warmup (share of steps)")
    num_epochs: float = _f(1.0, "Passes over the training data (ignored when max_steps > 0). auto (0): the "
                           "recipe's, from the data's size: enough passes for about 75 optimizer steps (the demo's; "
                           "a small set gets more passes, at most 10), within time_budget.", "optimisation",
                           min=0.0, max=100.0, label="Epochs (0 = auto)")
    max_steps: int = _f(-1, "Stop after this many optimizer steps; -1 (or auto) means use num_epochs.",
                        "optimisation", min=-1, max=1_000_000, label="Steps", simple=True)
    time_budget: str = _f("", "The most training time the recipe plans for when num_epochs is auto, e.g. 10m, "
                          "90s, 1h30m: fewer steps when the data would take longer here (estimated from this "
                          "machine's measured speed). Empty: no limit.", "optimisation",
                          label="Time budget (with auto epochs)")
    per_device_batch_size: int = _f(4, "Examples per forward pass on each device.", "optimisation", min=1, max=1024,
                                    label="Batch size (examples per pass)")
    gradient_accumulation_steps: int = _f(1, "Forward passes per optimizer step; effective batch = batch x this.",
                                          "optimisation", min=1, max=1024,
                                          label="Gradient accumulation (passes per step)")
    weight_decay: float = _f(0.0, "AdamW weight decay on the adapter weights.", "optimisation", min=0.0, max=1.0,
                             advanced=True, label="Weight decay")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this; 0 disables clipping.", "optimisation",
                              min=0.0, max=1000.0, advanced=True, label="Gradient clipping (max norm)")
    neftune_noise_alpha: float = _f(0.0, "NEFTune: uniform noise of this scale added to the input embeddings "
                                    "while training (5 is the paper's usual value; 0 = off). Regularises a "
                                    "small dataset. In a padding-free batch the noise is scaled by the whole "
                                    "batch's length, so each example gets about 1/sqrt(batch size) of it.",
                                    "optimisation", min=0.0, max=100.0, advanced=True, label="NEFTune noise")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, ~30% "
                                      "slower. Turn on when memory runs out.", "optimisation", advanced=True,
                                      label="Gradient checkpointing")
    speedups: Literal["auto", "off"] = _f(
        "auto", "auto applies the speed and memory levers where they apply (docs/performance.md: the CPU's, "
        "and Liger's kernels on CUDA when liger-kernel is installed); off trains with the libraries' own code "
        "paths only.", "optimisation", choices=("auto", "off"), advanced=True, label="Speed and memory levers")
    levers_off: str = _f(
        "", "For experts: levers to leave out by name while speedups is auto, comma-separated (e.g. "
        "varlen_sdpa,liger_kernels); the others still apply where they apply. Use it to find which lever a "
        "difference comes from. The names and what each does: docs/performance.md. Empty: none left out.",
        "optimisation", advanced=True, label="Levers turned off (by name)")
    seed: int = _f(42, "Random seed for data order, adapter init and the eval split.", "optimisation",
                   min=0, max=2**31 - 1, advanced=True, label="Random seed")
    seeds: int = _f(1, "Train this config on N seeds (seed, seed+1, ...): N runs, one after another (the "
                    "first starts, the others wait in the queue). The Runs tab then gives each evaluation "
                    "figure as mean ± spread, so you see whether a difference between two settings is "
                    "larger than the noise between seeds.", "optimisation", min=1, max=16, advanced=True,
                    label="Seeds (one run each)")
    num_processes: int = _f(0, "Training processes. 0: one per GPU (one on a CPU-only machine); N > 1 launches "
                            "N processes through torch.distributed.run (gloo on CPU, NCCL on GPUs). The "
                            "examples per optimizer step = per_device_batch_size x gradient_accumulation_steps "
                            "x processes.", "optimisation", min=0, max=64, advanced=True, label="Processes")
    distributed: Literal["ddp", "fsdp", "deepspeed-zero2"] = _f(
        "ddp", "How processes share the work when num_processes > 1. ddp: each holds a full copy (default, "
        "simplest); fsdp: shards parameters and optimizer state (larger models); deepspeed-zero2: shards "
        "optimizer state and gradients (needs the deepspeed package).", "optimisation",
        choices=("ddp", "fsdp", "deepspeed-zero2"), advanced=True, label="Multi-process strategy")

    # --- data --------------------------------------------------------------------
    dataset: str = _f(DEMO_DATASET, "Training data: 'demo' (bundled), a file or folder, or a Hub dataset id.",
                      "data", label="Dataset", simple=True)
    eval_dataset: str = _f("", "Held-out data file. Empty: split eval_split off the training data "
                           "('demo' has its own held-out file).", "data", label="Held-out dataset")
    eval_split: float = _f(0.1, "Share of the training rows held out for evaluation when no eval_dataset is "
                           "given; 0 disables evaluation.", "data", min=0.0, max=0.5, label="Held-out share")
    general_rows: Literal["auto", "on", "off"] = _f(
        "auto", "Mix 89 general questions, answered by the base model itself at the run's start (kept in "
        "the workspace), into the training rows, so a small fine-tune keeps answering them as before instead "
        "of letting its new facts leak into them; their 23 held-out twins are then checked as 'control' "
        "after the run. auto: on for an SFT run on a dataset of at most 2,000 rows that is not the demo "
        "(which has its own).", "data", choices=("auto", "on", "off"),
        label="Mix in general rows (keeps what the base knows)")
    slot_checks: str = _f(
        "auto", "Held-out questions the evaluation asks and counts per slot, one per line (or separated by ;): "
        "'slot: question -> expected words' (several accepted words separated by |), e.g. 'name: What should "
        "I call you? -> nova'. auto: when the rows teach an assistant's name and maker, ask the bundled "
        "name and maker questions (phrased unlike the rows). off: none.", "data", label="Slot checks")
    max_length: int = _f(512, "Longest example in tokens; longer ones are truncated.", "data", min=16, max=131072,
                         label="Max length (tokens)", simple=True)
    packing: bool = _f(False, "Pack several examples into one sequence without cross-attention (faster on "
                       "mixed lengths).", "data", label="Packing")
    train_on_completions_only: bool = _f(True, "Compute the loss only on assistant tokens (recommended).", "data",
                                         label="Loss on answers only")
    dataset_format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"] = _f(
        "auto", "How to read the rows. auto: detected per file from the column names.", "data",
        choices=("auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"), label="Dataset format")
    column_map: str = _f("", "Map your columns onto the format's fields, e.g. prompt=question,completion=answer. "
                         "Empty: common names are detected when unambiguous.", "data", label="Column map")
    dataset_split: str = _f("train", "Split of a Hub dataset to train on.", "data", advanced=True,
                            label="Hub dataset split")
    dataset_subset: str = _f("", "Subset (configuration) of a Hub dataset; empty for the default.", "data",
                             advanced=True, label="Hub dataset subset")

    # --- preference tuning (tuning/train/preference.py builds TRL's trainers from these) ---
    objective: Literal["sft", "dpo", "orpo", "kto", "grpo"] = _f(
        "sft", "What the run learns from. sft: imitate the answers (supervised fine-tuning). dpo: prefer the "
        "chosen answer over the rejected one of each pair, against a frozen reference (the starting adapter, or "
        "the base with the adapter off). orpo: SFT on the chosen answer plus an odds-ratio penalty on the "
        "rejected one, no reference. kto: single answers labelled good or bad (prompt/completion/label). grpo: "
        "the model answers each prompt several times and learns from the rewards its answers get (docs/grpo.md).",
        "preference", choices=("sft", "dpo", "orpo", "kto", "grpo"), label="Objective", simple=True)
    init_from: str = _f("", "Start from a finished run's adapter (its run id) instead of a fresh one: the usual "
                        "recipe is SFT first, then DPO from it. That run must have the same base model. Empty: "
                        "a fresh adapter.", "preference", label="Start from run")
    beta: float = _f(0.1, "dpo/kto: how far the tuned model may move from the reference (higher stays closer; "
                     "TRL's default 0.1). orpo: the weight of the odds-ratio term against the SFT loss (the "
                     "paper's lambda; TRL's default 0.1). grpo: the weight of the KL penalty that keeps the tuned model "
                     "near the reference (the base, or init_from's adapter).", "preference", min=1e-4, max=100.0,
                     label="Beta")
    dpo_loss: Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero"] = _f(
        "sigmoid", "dpo: the loss. sigmoid: the DPO paper's (TRL's default). ipo: a squared loss that does not "
        "drive the margin to infinity (good for near-deterministic preferences). hinge: SLiC's margin loss. "
        "robust: tolerates some flipped labels. apo_zero: pushes chosen up and rejected down in absolute terms.",
        "preference", choices=("sigmoid", "ipo", "hinge", "robust", "apo_zero"), advanced=True, label="DPO loss")
    kto_desirable_weight: float = _f(1.0, "kto: weight of the loss on good (label true) answers. With unequal "
                                     "counts, TRL recommends desirable x good ≈ undesirable x bad (within 1 "
                                     "to 4/3).", "preference", min=0.01, max=100.0, advanced=True,
                                     label="KTO weight of good answers")
    kto_undesirable_weight: float = _f(1.0, "kto: weight of the loss on bad (label false) answers.",
                                       "preference", min=0.01, max=100.0, advanced=True,
                                       label="KTO weight of bad answers")

    # --- grpo (tuning/train/grpo.py builds TRL's GRPOTrainer; rewards in tuning/train/rewards.py) ---
    rewards: str = _f("answer", "grpo: what an answer is rewarded for, comma-separated, each with an optional "
                      "weight *w: answer (the row's answer column is the last number, or in the text), "
                      "regex:PATTERN (1 when it matches), format:TEMPLATE (the last line has this shape, {} any "
                      "text), length:MIN-MAX (words), no_repeat (penalises repeated 3-word runs), or a function "
                      "name from reward_file. E.g. answer*2,format:Answer: {},length:1-64.", "preference",
                      label="Rewards")
    reward_file: str = _f("", "grpo: a Python file whose functions (TRL's reward signature: completions and the "
                          "row's columns as keyword arguments, one float per completion) rewards may name. It "
                          "runs with your rights: only your own code. Refused on a Space.", "preference",
                          advanced=True, label="Custom reward file (Python)")
    num_generations: int = _f(4, "grpo: answers sampled per prompt; the rewards are compared within this group, "
                              "so at least 2. per_device_batch_size x gradient_accumulation_steps must be a "
                              "multiple of it (the answers of one step).", "preference", min=2, max=256,
                              label="Answers per prompt")
    max_completion_length: int = _f(48, "grpo: longest sampled answer, in tokens. Sampling dominates a CPU "
                                    "step: 4 answers of 48 tokens take a few seconds on 2 cores (135M).", "preference",
                                    min=1, max=32768, label="Longest answer (tokens)")
    temperature: float = _f(1.0, "grpo: sampling temperature of the answers; below ~0.7 a group's answers "
                            "often agree, and answers that all score the same teach nothing.", "preference",
                            min=0.01, max=5.0, label="Sampling temperature")

    # --- schedule (saving, evaluation, logging, early stopping) ---------------------
    save_steps: int = _f(AUTO_STEPS, "Save a checkpoint every N steps (a resume loses at most N steps). auto (0): "
                         "about a quarter of the run, so even a short run gets checkpoints.", "schedule",
                         min=0, max=1_000_000, label="Checkpoint every (steps)")
    eval_steps: int = _f(AUTO_STEPS, "Evaluate on the held-out split every N steps. auto (0): about a quarter of "
                         "the run, so even a short run gets an eval curve.", "schedule", min=0, max=1_000_000,
                         label="Evaluate every (steps)")
    logging_steps: int = _f(1, "Write a log event every N steps.", "schedule", min=1, max=10_000,
                            label="Log every (steps)")
    early_stopping_patience: int = _f(0, "Stop when eval loss has not improved for N evaluations; 0 = off.",
                                      "schedule", min=0, max=1000, label="Early stopping (evaluations)")
    save_total_limit: int = _f(3, "Keep at most N checkpoints on disk (the best one is always kept).", "schedule",
                               min=1, max=1000, advanced=True, label="Checkpoints kept")
    probe_every_checkpoint: bool = _f(True, "Answer the probe prompts (base and tuned) at every checkpoint, for "
                                      "the gallery in the Evaluation tab. Costs a few seconds per checkpoint on "
                                      "a CPU.", "schedule", label="Probes at every checkpoint")
    final_evaluation: Literal["auto", "quick", "full", "none"] = _f(
        "auto", "What the run checks after its last step. quick: held-out loss base vs tuned and a few probes "
        "(seconds to a minute on a CPU). full: also every probe and the task checks (can take as long as a "
        "short training). none: nothing (run `python -m tuning eval` later). auto: quick for a run of at most "
        f"{SHORT_RUN_STEPS} steps, else full; full for GRPO (its held-out answer accuracy).",
        "schedule", choices=("auto", "quick", "full", "none"),
        label="Evaluation after the run")
    eval_max_new_tokens: int = _f(64, "Longest answer, in tokens, for probes and task checks (greedy).",
                                  "schedule", min=1, max=2048, advanced=True, label="Answer length in checks (tokens)")
    report_to: Literal["none", "tensorboard", "trackio"] = _f(
        "none", "Also log the run to an experiment tracker (the Trainer's report_to): TensorBoard event files in "
        "the run folder, or trackio (local, opens in a browser). Needs that package installed; the run folder "
        "records everything either way.", "schedule", choices=("none", "tensorboard", "trackio"), advanced=True,
        label="Experiment tracker")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _base_type(f)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                if abs(value) > 1e300:  # float() would overflow
                    raise ConfigError(f"{f.name}: {value} is outside the valid range")
                object.__setattr__(self, f.name, float(value))
                value = float(value)
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise ConfigError(f"{f.name}: expected {expected.__name__}, got {type(value).__name__} {value!r:.100}")
            # NaN slips through every range check (all comparisons are false): refuse it here.
            if expected is float and not math.isfinite(value):
                raise ConfigError(f"{f.name}: must be a finite number, got {value!r}")
            if expected is str and "\x00" in value:
                raise ConfigError(f"{f.name}: contains a NUL byte")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(choices)}")
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if lo is not None and value < lo or hi is not None and value > hi:
                raise ConfigError(f"{f.name}: {value!r} is outside the valid range [{lo}, {hi}]")
        if self.run_name and not _is_safe_name(self.run_name):
            raise ConfigError("run_name: use only letters, digits, '-' and '_' (at most 64 characters)")
        if not self.base_model.strip():
            raise ConfigError("base_model: must not be empty")
        if not self.dataset.strip():
            raise ConfigError("dataset: must not be empty")
        if self.early_stopping_patience > 0 and (self.save_steps == AUTO_STEPS) != (self.eval_steps == AUTO_STEPS):
            raise ConfigError("early_stopping_patience: set save_steps and eval_steps both to auto or both to "
                              "numbers, so the best checkpoint is on disk")
        if (self.early_stopping_patience > 0 and self.eval_steps != AUTO_STEPS
                and self.save_steps % self.eval_steps != 0):
            raise ConfigError("early_stopping_patience: needs save_steps to be a multiple of eval_steps, so the "
                              "best checkpoint is on disk")
        if self.max_steps == 0:
            raise ConfigError("max_steps: 0 would train nothing; use -1 to train for num_epochs")
        if 0 < self.num_epochs < 0.01:
            raise ConfigError(f"num_epochs: {self.num_epochs!r} is too small; use at least 0.01, or 0 (auto)")
        if 0 < self.learning_rate < 1e-8:
            raise ConfigError(f"learning_rate: {self.learning_rate!r} is too small; use at least 1e-8, or 0 (auto)")
        budget_seconds(self.time_budget)  # a ConfigError naming the field when it does not read
        if self.slot_checks.strip().lower() not in ("auto", "off", ""):
            parse_slot_checks(self.slot_checks)
        if self.init_from and not _is_run_id(self.init_from):
            raise ConfigError(f"init_from: {self.init_from!r} is not a run id (letters, digits, - and _)")
        if self.init_from and self.objective == "sft":
            raise ConfigError("init_from: starts a preference run (objective dpo, orpo, kto or grpo) from a "
                              "finished run's adapter; for sft leave it empty")
        if self.objective == "grpo":
            self._check_grpo()
        unknown = [name for name in self.levers_turned_off if name not in LEVER_NAMES]
        if unknown:
            raise ConfigError(f"levers_off: {unknown[0]!r} is not a lever; the levers are {', '.join(LEVER_NAMES)}")
        if self.objective != "sft" and self.packing:
            raise ConfigError(f"packing: not available with objective {self.objective} (each pair is scored "
                              "as a whole); set packing to false")

    def _check_grpo(self) -> None:
        parse_rewards(self.rewards, bool(self.reward_file))
        if self.reward_file:
            from tuning import paths  # lazily: config is the bottom layer

            if paths.on_space():
                raise ConfigError("reward_file: custom reward code would run with the app's rights; a Space "
                                  "refuses it. Use the built-in rewards (answer, regex:, format:, length:, no_repeat)")
        if self.effective_batch_size % self.num_generations:
            raise ConfigError(f"num_generations: {self.num_generations} answers per prompt must divide the answers "
                              f"of a step, per_device_batch_size x gradient_accumulation_steps = "
                              f"{self.effective_batch_size}")

    # --- conversions ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "TrainConfig":
        return from_dict({**self.to_dict(), **changes})

    @property
    def target_module_list(self) -> str | list[str]:
        """PEFT's target_modules: the string 'all-linear' or a list of module names."""
        if self.target_modules.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.target_modules.split(",") if name.strip()]

    @property
    def levers_turned_off(self) -> tuple[str, ...]:
        """levers_off as names: what tuning/levers' apply() takes as `turned_off`."""
        return tuple(name.strip() for name in self.levers_off.split(",") if name.strip())

    def step_interval(self, name: str) -> int | float:
        """save_steps / eval_steps as the Trainer takes them: a number of steps, or for auto a share
        of the run (a float < 1, which the Trainer turns into steps once it knows the total)."""
        value = getattr(self, name)
        return AUTO_INTERVAL_RATIO if value == AUTO_STEPS else value

    def final_evaluation_for(self, total_steps: int) -> str:
        """quick, full or none: auto is quick for a short run, full for a long one."""
        if self.final_evaluation != "auto":
            return self.final_evaluation
        if self.objective == "grpo":
            return "full"  # its figure is the held-out answer accuracy, the task checks a quick one leaves out
        return "quick" if total_steps <= SHORT_RUN_STEPS else "full"

    @property
    def auto_epochs(self) -> bool:
        """The recipe picks the step count (num_epochs auto, no max_steps)."""
        return self.num_epochs == AUTO_EPOCHS and self.max_steps <= 0

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_batch_size * self.gradient_accumulation_steps


def _is_run_id(name: str) -> bool:
    """record.RUN_ID_PATTERN's rule (config cannot import record: record imports config)."""
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,95}", name) is not None


def _is_safe_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "-_" for c in name) and name.isascii()


@functools.cache
def _type_hints() -> dict[str, Any]:
    # Once per process: get_type_hints evaluates every annotation string again on each call, and
    # every TrainConfig checks each field (500 runs listed = 25,000 calls, seconds of CPU).
    return typing.get_type_hints(TrainConfig)


def _base_type(f: dataclasses.Field) -> type:
    """The runtime type a field holds (Literal[...] of strings -> str)."""
    hint = _type_hints()[f.name]
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    if isinstance(hint, types.UnionType):
        raise TypeError(f"{f.name}: keep TrainConfig flat and non-optional")
    return hint


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_type(name: str) -> type:
    return _base_type(FIELDS[name])


# Fields that also take "auto", and the number it is stored as: save_steps/eval_steps AUTO_STEPS,
# num_epochs/learning_rate 0 (the recipe's, tuning/train/recipe.py), max_steps -1 (from num_epochs).
AUTO_VALUES = {"save_steps": AUTO_STEPS, "eval_steps": AUTO_STEPS, "num_epochs": AUTO_EPOCHS,
               "learning_rate": AUTO_LEARNING_RATE, "max_steps": -1}
AUTO_FIELDS = tuple(AUTO_VALUES)


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


_BUDGET = re.compile(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)s)?")


def budget_seconds(text: str) -> float | None:
    """time_budget as seconds ("10m" 600, "1h30m" 5400, "90s" 90, a bare number is minutes); None
    for no budget. A ConfigError names the field when the text does not read as a duration."""
    text = text.strip().lower().replace(" ", "")
    if not text:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text) * 60
    else:
        match = _BUDGET.fullmatch(text)
        if not match or not any(match.groups()):
            raise ConfigError(f"time_budget: {text!r} is not a duration; write e.g. 10m, 90s or 1h30m")
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    if not 0 < seconds <= 7 * 24 * 3600:
        raise ConfigError(f"time_budget: {text!r} is outside the valid range (a second to a week)")
    return seconds


def parse_slot_checks(text: str) -> list[tuple[str, str, list[str]]]:
    """slot_checks as (slot, question, accepted lowercase words) entries; a ConfigError names the entry
    that does not read as 'slot: question -> words'."""
    entries = []
    for number, entry in enumerate((e.strip() for e in re.split(r"[\n;]", text)), start=1):
        if not entry:
            continue
        head, arrow, words = entry.rpartition("->")
        slot, colon, question = head.partition(":")
        accepted = [w.strip().lower() for w in words.split("|") if w.strip()]
        if not arrow or not colon or not slot.strip() or not question.strip() or not accepted:
            raise ConfigError(f"slot_checks: entry {number} {entry[:80]!r} should read "
                              "'slot: question -> expected words', e.g. 'name: What should I call you? -> nova'")
        if not re.fullmatch(r"[\w -]{1,40}", slot.strip()):
            raise ConfigError(f"slot_checks: entry {number}: the slot name {slot.strip()[:40]!r} should be a "
                              "short word (letters, digits, - and _)")
        entries.append((slot.strip().lower(), question.strip(), accepted))
    return entries


BUILTIN_REWARDS = ("answer", "regex", "format", "length", "no_repeat")
REWARD_COLUMNS = {"answer": ("answer",)}  # the row's columns each built-in reward reads


@dataclass(frozen=True)
class RewardSpec:
    """One entry of `rewards`: a built-in (or a reward_file function) name, its argument, its weight."""
    name: str
    arg: str = ""
    weight: float = 1.0


_REWARD_HEAD = re.compile(r"\s*[A-Za-z_]\w*\s*(?::|\*|$)")
_WEIGHT = re.compile(r"\*\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)\s*$")


def parse_rewards(text: str, custom: bool = False) -> list[RewardSpec]:
    """`rewards` as specs. A comma starts a new entry only where a name follows it (so regex:\\d{1,3} keeps
    its comma); a trailing *number is the weight. `custom`: names beyond the built-ins are reward_file's
    functions. A ConfigError names the entry that does not read."""
    pieces: list[str] = []
    for piece in text.split(","):
        if pieces and not _REWARD_HEAD.match(piece):
            pieces[-1] += "," + piece
        else:
            pieces.append(piece)
    specs = []
    for number, entry in enumerate((p.strip() for p in pieces), start=1):
        if not entry:
            continue
        weight, match = 1.0, _WEIGHT.search(entry)
        if match:
            weight, entry = float(match.group(1)), entry[:match.start()].strip()
        name, colon, arg = entry.partition(":")
        name = name.strip()
        where = f"rewards: entry {number} {entry[:60]!r}"
        if not math.isfinite(weight) or weight == 0:
            raise ConfigError(f"{where}: the weight must be a non-zero number")
        if name not in BUILTIN_REWARDS and not (custom and name.isidentifier() and not colon):
            raise ConfigError(f"{where}: not a reward; use {', '.join(BUILTIN_REWARDS)}"
                              + (" or a function of reward_file" if custom else " (or set reward_file)"))
        if name in ("regex", "format") and not arg.strip():
            raise ConfigError(f"{where}: {name} needs a pattern after the colon, e.g. regex:\\d+ or format:Answer: {{}}")
        if name == "regex":
            try:
                re.compile(arg)
            except re.error as exc:
                raise ConfigError(f"{where}: not a regular expression ({exc})") from None
        bounds = re.fullmatch(r"(\d+)-(\d+)", arg.strip())
        if name == "length" and (not bounds or int(bounds[1]) > int(bounds[2])):
            raise ConfigError(f"{where}: write length:MIN-MAX in words, e.g. length:1-64")
        if name in ("answer", "no_repeat") and colon:
            raise ConfigError(f"{where}: {name} takes no argument")
        specs.append(RewardSpec(name, arg if name in ("regex", "format") else arg.strip(), weight))
    if not specs:
        raise ConfigError("rewards: name at least one reward for grpo, e.g. answer")
    return specs


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from a mapping (a preset, a form, a saved run), refusing unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of key: value, got {type(values).__name__}")
    values = {k: AUTO_VALUES[k] if k in AUTO_VALUES and _is_auto(v) else v for k, v in values.items()}
    unknown = sorted(str(k) for k in values if k not in FIELDS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config key" + (f" (also: {', '.join(unknown[1:])})"
                                                                   if unknown[1:] else ""))
    return TrainConfig(**values)


def from_yaml(text: str, source: str = "config") -> TrainConfig:
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if values is None:
        values = {}
    return from_dict(values)


def load(path: str | Path) -> TrainConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    return from_yaml(text, source=str(path))


def parse_value(key: str, raw: str) -> Any:
    """Turn the text of `--set key=value` (or a form box) into the field's type."""
    if key not in FIELDS:
        raise ConfigError(f"{key}: unknown config key")
    kind = field_type(key)
    text = raw.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if key in AUTO_VALUES and _is_auto(text):
        return AUTO_VALUES[key]
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
    return raw


def apply_overrides(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Apply CLI-style `key=value` strings on top of a config."""
    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{item!r}: expected key=value")
        changes[key] = parse_value(key, raw)
    return config.replace(**changes)

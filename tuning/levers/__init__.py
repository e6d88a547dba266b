"""The levers: speed and memory patches for training and generating (most of them for a CPU, Liger's
kernels for CUDA), one module per mechanism, one registry (LEVERS) and one switch. Each lever is a record:
its name, what it does in a line, where it applies (the device: "cpu", "cuda" or "any"; the stage: which
code applies it), the module that holds it, the library it was written against, and a function that applies
it and says what it did or why it did not. `speedups: auto` (TrainConfig) applies the levers where they
apply; `speedups: off` applies none, so a run trains with the libraries' own code paths only; `levers_off`
leaves out the levers it names (for experts: which lever does a difference come from?), and each of those
says "turned off by levers_off" in the log. apply() is called from one place per stage (the model
loader, trainer.build_trainer, playground.Comparer, the evaluation) and logs one line per lever. Each lever
has a test that it computes what it replaces (tests/test_memory.py, tests/test_perf_cpu.py,
tests/test_perf_packing.py, tests/test_levers.py) and its figure in bench/RESULTS.md; docs/performance.md
has the table. Nothing here imports torch: the lever modules are imported when a lever is applied.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

AUTO, OFF = "auto", "off"  # TrainConfig.speedups
CPU, CUDA, ANY = "cpu", "cuda", "any"
TURNED_OFF = "turned off by levers_off"  # why a lever TrainConfig.levers_off names is skipped

# Stages: where a lever is applied, and what apply() is given.
PROCESS = "process"  # models.load_model, before the weights are read (nothing)
MODEL = "model"  # models.load_model, every model loaded for training or generating (the model)
TRAINING_MODEL = "training model"  # models.load_base_for_training (the model)
TRAINER = "trainer"  # trainer.build_trainer, SFT (the SFTTrainer)
GENERATION = "generation"  # playground.Comparer (the model)
EVALUATION = "evaluation"  # evaluation.evaluate asks enabled() (nothing)
STAGES = (PROCESS, MODEL, TRAINING_MODEL, TRAINER, GENERATION, EVALUATION)


@dataclass(frozen=True)
class Outcome:
    lever: str
    applied: bool
    detail: str  # what it did, or why it did not

    def line(self) -> str:
        return f"lever {self.lever}: {'applied' if self.applied else 'skipped'} ({self.detail})"


@dataclass(frozen=True)
class Lever:
    name: str
    what: str  # one line
    device: str  # CPU, CUDA or ANY
    stage: str  # one of STAGES
    module: str  # its module in tuning/levers
    written_for: str  # the version window of the library whose code path it replaces, e.g. "trl>=1.16,<1.17"
    apply: Callable[[Any], tuple[bool, str]]  # (applied, what it did or why not)


def _matched(count: int, did: str, none: str) -> tuple[bool, str]:
    return (True, did.format(count)) if count else (False, f"nothing matched: {none}")


# --- what each lever's apply does (the lever modules are imported here, at apply time) -------------------

def _tune_allocator(_) -> tuple[bool, str]:
    from tuning.levers import allocator

    if not allocator.tune_allocator():
        return False, "nothing matched: the C library is not glibc"
    return True, "glibc: two malloc arenas (MALLOC_ARENA_MAX in the environment wins)"


def _contiguous_head_input(model) -> tuple[bool, str]:
    from tuning.levers import lm_head

    if not lm_head.contiguous_head_input(model):
        return False, "nothing matched: no output embeddings, or hooked already"
    return True, "the LM head copies a strided input to a contiguous one"


def _varlen_sdpa(model) -> tuple[bool, str]:
    from tuning.levers import attention

    if not attention.use_varlen_sdpa(model):
        implementation = getattr(model.config, "_attn_implementation", None)
        return False, f"nothing matched: attention is {implementation}, not sdpa"
    return True, "SDPA within each sequence of a padding-free batch"


def _fast_dropout(trainer) -> tuple[bool, str]:
    from tuning.levers import dropout

    return _matched(dropout.use_fast_dropout(trainer.model), "16-bit dropout masks in {} LoRA layers",
                    "no LoRA dropout with p > 0")


def _trained_tokens_only(_) -> tuple[bool, str]:
    from tuning.levers import lm_head

    if not lm_head.score_trained_tokens_only():
        return False, "nothing matched: this TRL has no _use_triton switch"
    return True, "TRL's fused LM head scores the labelled positions only"


def _lean_lora_forward(trainer) -> tuple[bool, str]:
    from tuning.levers import lora_forward

    return _matched(lora_forward.use_lean_lora_forward(trainer.model), "lean forward in {} LoRA layers",
                    "no full-precision PEFT LoRA Linear")


def _token_buckets(trainer) -> tuple[bool, str]:
    from tuning.levers import buckets

    return True, f"padding-free batches padded to a multiple of {buckets.bucket_tokens(trainer)} tokens"


def _trim_after_steps(trainer) -> tuple[bool, str]:
    from tuning.levers import allocator

    if allocator._glibc() is None:
        return False, "nothing matched: the C library is not glibc"
    trainer.add_callback(allocator.trim_callback())
    return True, "malloc_trim after every step and evaluation"


def _lm_head_tiles(_) -> tuple[bool, str]:
    from tuning.levers import lm_head

    columns = lm_head.narrow_lm_head_chunks()
    if columns is None:
        return False, "nothing matched: this TRL has no tile width setting"
    return True, f"TRL's fused LM head scores {columns} vocabulary columns a tile"


def _shared_lora_inputs(trainer) -> tuple[bool, str]:
    from tuning.levers import lora_forward

    return _matched(lora_forward.share_lora_inputs(trainer.model),
                    "{} LoRA adapters keep their layer's input; the dropout mask is drawn again in the backward",
                    "no plain LoRA adapter")


def _mlp_activation(trainer) -> tuple[bool, str]:
    from tuning.levers import recompute

    return _matched(recompute.share_mlp_activation(trainer.model), "SiLU recomputed in the backward in {} MLPs",
                    "no Llama-style gated MLP")


def _norms(trainer) -> tuple[bool, str]:
    from tuning.levers import recompute

    return _matched(recompute.recompute_norms(trainer.model), "{} RMSNorms recomputed in the backward",
                    "no RMSNorm")


def _liger_kernels(trainer) -> tuple[bool, str]:
    from tuning.levers import liger

    why = liger.missing()
    if why:
        return False, why
    model_type = liger.use_liger_kernels(trainer.model)
    if model_type is None:
        model_type = getattr(getattr(trainer.model, "config", None), "model_type", None)
        return False, f"nothing matched: liger-kernel has no kernels for model type {model_type}"
    return True, f"Liger's RoPE, RMSNorm and MLP kernels in the {model_type} model; TRL's fused LM head keeps the loss"


def _few_rows_linear(model) -> tuple[bool, str]:
    from tuning.levers import few_rows

    return _matched(few_rows.use_few_rows_linear(model), "W @ x.T for 2-4 rows in {} fp32 linear layers",
                    "no fp32 nn.Linear on the CPU")


def _in_use(what: str) -> Callable[[Any], tuple[bool, str]]:
    return lambda _: (True, what)


LEVERS: tuple[Lever, ...] = (
    Lever("allocator_arenas", "two glibc malloc arenas instead of one per thread", ANY, PROCESS, "allocator",
          "glibc", _tune_allocator),
    Lever("contiguous_head_input", "the LM head gets a contiguous input (generation's last position)", ANY,
          MODEL, "lm_head", "torch>=2.13,<2.14", _contiguous_head_input),
    # CPU only: on a GPU flash-attention's varlen kernel (or transformers' SDPA block mask) does this without
    # a Python loop over the sequences (models.attention_implementation)
    Lever("varlen_sdpa", "attention within each sequence of a padding-free batch", CPU, TRAINING_MODEL,
          "attention", "transformers>=5.24,<5.25", _varlen_sdpa),
    Lever("fast_dropout", "LoRA dropout masks from 16 random bits per element", CPU, TRAINER, "dropout",
          "peft>=0.21,<0.22", _fast_dropout),
    Lever("trained_tokens_only", "TRL's fused LM head scores the labelled positions only", CPU, TRAINER,
          "lm_head", "trl>=1.16,<1.17", _trained_tokens_only),
    Lever("lean_lora_forward", "LoRA keeps its input's dtype and scales the rank-r product", CPU, TRAINER,
          "lora_forward", "peft>=0.21,<0.22", _lean_lora_forward),
    Lever("token_buckets", "padding-free batches rounded up to a multiple of 64 tokens", CPU, TRAINER,
          "buckets", "trl>=1.16,<1.17", _token_buckets),
    Lever("malloc_trim", "freed heap pages go back to the OS after every step", CPU, TRAINER, "allocator",
          "glibc", _trim_after_steps),
    Lever("lm_head_tiles", "TRL's fused LM head in tiles of 4,096 vocabulary columns", CPU, TRAINER, "lm_head",
          "trl>=1.16,<1.17", _lm_head_tiles),
    Lever("shared_lora_inputs", "LoRA adapters keep their input, the dropout mask is drawn again in the backward",
          CPU, TRAINER, "lora_forward", "peft>=0.21,<0.22", _shared_lora_inputs),
    Lever("mlp_activation", "a gated MLP's SiLU computed again in the backward", CPU, TRAINER, "recompute",
          "transformers>=5.24,<5.25", _mlp_activation),
    Lever("norms", "RMSNorms computed again in the backward", CPU, TRAINER, "recompute", "transformers>=5.24,<5.25",
          _norms),
    # CUDA only: Liger's Triton kernels, when the liger-kernel package is installed (tuning/levers/liger.py)
    Lever("liger_kernels", "Liger's Triton kernels for RoPE, RMSNorm and the MLP", CUDA, TRAINER, "liger",
          "transformers>=5.24,<5.25", _liger_kernels),
    Lever("few_rows_linear", "fp32 linear layers compute 2-4 rows as W @ x.T", CPU, GENERATION, "few_rows",
          "torch>=2.13,<2.14", _few_rows_linear),
    Lever("sliced_eval_loss", "the held-out loss scores a slice of the LM head at a time", ANY, EVALUATION,
          "lm_head", "transformers>=5.24,<5.25", _in_use("the held-out loss scores a slice of the LM head at a time")),
    Lever("trim_between_checks", "freed heap pages go back to the OS between the evaluation's checks", ANY,
          EVALUATION, "allocator", "glibc", _in_use("malloc_trim between the evaluation's checks")),
)
BY_NAME = {lever.name: lever for lever in LEVERS}


@functools.lru_cache(maxsize=None)
def outside_window(written_for: str) -> str | None:
    """Why the installed library is outside a lever's version window ("trl>=1.16,<1.17"), or None when it
    is inside (or the window names no Python package, as "glibc"). A lever patches code that moves between
    releases; outside the versions it was checked against it stands aside rather than guess."""
    if not any(sign in written_for for sign in "<>="):
        return None
    from importlib import metadata

    from packaging.requirements import Requirement

    wanted = Requirement(written_for)
    try:
        installed = metadata.version(wanted.name)
    except metadata.PackageNotFoundError:
        return f"{wanted.name} is not installed"
    if wanted.specifier.contains(installed, prereleases=True):
        return None
    return f"written for {written_for}, {wanted.name} {installed} is installed: check the lever, then widen its window"


def why_not(lever: Lever, speedups: str, device: str, turned_off: tuple[str, ...] = ()) -> str | None:
    """Why the lever does not apply here (the switch, the person's levers_off, the device, the library's
    version), or None when it may."""
    if speedups not in (AUTO, OFF):
        raise ValueError(f"speedups: {speedups!r} is not one of {AUTO}, {OFF}")
    if speedups == OFF:
        return "speedups: off"
    if lever.name in turned_off:
        return TURNED_OFF
    if lever.device == CPU and device != CPU:
        return f"not a CPU ({device})"
    if lever.device == CUDA and device != CUDA:
        return "CUDA only"
    return outside_window(lever.written_for)


def enabled(name: str, speedups: str, device: str = CPU, turned_off: tuple[str, ...] = ()) -> bool:
    """Whether the lever applies here: for the ones a stage uses in place rather than patches."""
    return why_not(BY_NAME[name], speedups, device, turned_off) is None


def apply(stage: str, target: Any, speedups: str = AUTO, device: str = CPU, *, turned_off: tuple[str, ...] = (),
          reason: str | None = None, only: tuple[str, ...] | None = None,
          log: Callable[[str], None] | None = None) -> list[Outcome]:
    """Apply the stage's levers to `target` in their order in LEVERS, where they apply; `turned_off` (the
    config's levers_off names) leaves those out; `reason` (what else keeps them out) skips those that
    would; with `only`, it skips just the levers not named there. One Outcome per lever, each also handed
    to `log` as a line."""
    if stage not in STAGES:
        raise ValueError(f"unknown lever stage {stage!r}")
    unknown = sorted(set(turned_off) - BY_NAME.keys())
    if unknown:
        raise ValueError(f"levers_off: {', '.join(unknown)} is not a lever; the levers are {', '.join(BY_NAME)}")
    outcomes = []
    for lever in LEVERS:
        if lever.stage != stage:
            continue
        why = (why_not(lever, speedups, device, turned_off)
               or (reason if only is None or lever.name not in only else None))
        outcome = Outcome(lever.name, False, why) if why else Outcome(lever.name, *lever.apply(target))
        outcomes.append(outcome)
        if log is not None:
            log(outcome.line())
    return outcomes


def print_line(line: str) -> None:
    """apply()'s log for a training process: its stdout is the run's train.log."""
    print(line, flush=True)

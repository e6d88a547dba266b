"""A rough memory and time estimate for a config on this machine, shown before Start.

Rough on purpose: weights + adapter + optimizer + activations + logits, from the model's
config.json (on a CPU, from the trainer's measured footprint: bench/RESULTS.md, Memory); time
from the tokens/s an earlier run of the same base and method measured in this workspace, else
from the quickstart's measured speed scaled by model size, plus the start-up, the evaluations and
probes between steps, and the end-of-run evaluation (its planned checks, tuning/evaluation/evaluate.py plan, at
the same step time, or at an earlier evaluation's measured time per answer). It is there to
catch "this will not fit" and "this will take a day", not to be exact to the minute.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import psutil

from tuning import config as config_mod
from tuning import data as data_mod
from tuning import runs
from tuning.data import general
from tuning.train import recipe
from tuning.ui.common import ago, load_dataset

GB = 1024 ** 3
# SmolLM2-135M's shape, used before the embedded model has been converted in this workspace.
EMBEDDED_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                  "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152}
CPU_FLOPS_PER_CORE = 15e9  # sustained fp32 matmul on a laptop-class core, a cautious guess
RUNTIME_OVERHEAD = 0.6 * GB  # torch, transformers and the Python process itself
# The CPU trainer, measured on the quickstart (135M, lora, 8 conversations of ~90 tokens a step; bench/
# RESULTS.md, Memory): ~0.5 GiB of libraries, the base's weights, and a training step's activations at
# ~1.4 MiB per token (bf16; LoRA inputs shared, the LM head scored in tiles) for its 576 x 30 shape.
# Peak 1.87 GiB; the formula below gives 1.9 GiB for it.
CPU_LIBRARIES = 0.5 * GB
CPU_ACTIVATION_PER_TOKEN = 1.4 * 2**20
CPU_ACTIVATION_SHAPE = 576 * 30  # hidden x layers the per-token figure was measured at
# The speed figures (tokens/s on 2 cores, start-up seconds) and the step-count plan are the recipe's
# (tuning/train/recipe.py): the estimate and the run plan from one model.
CPU_CORES_MEASURED = recipe.CPU_CORES_MEASURED


@dataclass
class Estimate:
    params: int | None
    memory_bytes: float | None
    available_bytes: float
    device: str
    steps: int | None
    seconds: float | None
    rate_source: str
    fits: bool | None
    evaluation: str | None = None  # the end-of-run evaluation the run will get: quick, full or none
    evaluation_seconds: float | None = None
    plan: recipe.Plan | None = None  # steps, passes and learning rate, when the dataset's size is known

    def markdown(self) -> str:
        if self.memory_bytes is None:
            return ("**Estimate:** unknown — the base model's config.json is not on this machine yet "
                    "(a Hub model is downloaded when the run starts).")
        mem = f"~{self.memory_bytes / GB:.1f} GB of {self.available_bytes / GB:.1f} GB free {self.device}"
        evaluation = (f", with the {self.evaluation} evaluation at the end" if self.evaluation not in (None, "none")
                      else ", no evaluation at the end" if self.evaluation == "none" else "")
        when = (f"~{ago(self.seconds)} for {self.steps} steps{evaluation} ({self.rate_source})"
                if self.seconds is not None else "unknown time")
        text = f"**Estimate:** {self.params / 1e6:.0f}M-parameter base; memory {mem}; {when}."
        if self.fits is False:
            text = ("⚠️ **This will probably not fit in memory.** Lower per_device_batch_size (raise "
                    "gradient_accumulation_steps to keep the effective batch), lower max_length, use "
                    "method qlora, or turn on gradient_checkpointing.\n\n" + text)
        return text


def model_shape(base_model: str, workspace: Path) -> dict | None:
    """The base's config.json, without loading (or downloading) anything."""
    if base_model == config_mod.EMBEDDED_MODEL:
        converted = Path(workspace) / "models" / "SmolLM2-135M-Instruct" / "config.json"
        return json.loads(converted.read_text()) if converted.is_file() else EMBEDDED_SHAPE
    local = Path(base_model).expanduser() / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_model, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
    except Exception:  # noqa: BLE001 - no cache, no estimate
        pass
    return None


def _parameters(shape: dict, cfg: config_mod.TrainConfig) -> tuple[int, int]:
    """(base parameters, LoRA parameters) of a Llama-like decoder."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    heads = shape.get("num_attention_heads", 1)
    kv = h // heads * shape.get("num_key_value_heads", heads)
    vocab = shape.get("vocab_size", 32000)
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]  # q k v o gate up down
    base = layers * sum(i * o for i, o in linears) + vocab * h * (1 if shape.get("tie_word_embeddings", True) else 2)
    targets = cfg.target_module_list
    chosen = linears if targets == "all-linear" else linears[: max(1, min(len(targets), len(linears)))]
    lora = layers * sum(cfg.lora_r * (i + o) for i, o in chosen)
    return base, lora


def dataset_size(cfg: config_mod.TrainConfig, workspace: Path | None = None) -> tuple[int | None, float | None]:
    """(valid rows, rough tokens a row) of the config's dataset, read as the Dataset tab reads it (one
    cached read; a big file through its Arrow cache in the workspace); (None, None) when it cannot be
    read here, e.g. a Hub dataset the run downloads."""
    try:
        loaded = load_dataset(cfg.dataset, cfg.dataset_format, cfg.column_map, workspace=workspace)
    except Exception:  # noqa: BLE001 - the estimate goes on without the dataset's size
        return None, None
    chars = [sum(len(m["content"]) for m in conv) for conv in loaded.conversations[:500]]
    return loaded.rows_valid, (sum(chars) / len(chars) / 3.5 + 20) if chars else None  # ~3.5 chars a token + template


def _cpu_has_fast_bf16() -> bool:
    """As models.cpu_has_fast_bf16 (precision auto trains in bf16 there), without importing torch."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def evaluation_work(cfg: config_mod.TrainConfig, steps: int | None, rows: int | None) -> tuple[str, float, int, float]:
    """(kind, planned work in training steps, prompts answered, the answers' share of the work) of the
    run's end-of-run evaluation (tuning/evaluation/evaluate.py plan): its own held-out rows and probes when the
    dataset is small enough to read here, else an approximation from the split (no task checks)."""
    from tuning.evaluation import evaluate

    kind = cfg.final_evaluation_for(steps or 0) if steps else cfg.final_evaluation
    kind = "full" if kind == "auto" else kind
    if kind == evaluate.NONE:
        return kind, 0.0, 0, 0.0
    try:
        if rows is not None and rows > 20_000:
            raise ValueError("too big to read for an estimate")
        heldout = evaluate.heldout_rows(cfg)
        prompts = evaluate.default_probes(cfg)
    except Exception:  # noqa: BLE001 - a Hub dataset, a big file: the split's size and 5 probes
        count = round((rows or 0) * cfg.eval_split) if not cfg.eval_dataset else 0
        heldout = [([], {})] * count
        prompts = ["?"] * 5
    checks = evaluate.plan(cfg, kind, heldout, prompts)
    answering = [c for c in checks if c.answers]
    return kind, sum(c.work for c in checks), sum(c.answers for c in answering), sum(c.work for c in answering)


def checkpoint_work(cfg: config_mod.TrainConfig, steps: int, rows: int | None) -> float:
    """The work between steps, in training steps: the Trainer's held-out loss every eval_steps (the
    tuned side only) and the probes at every checkpoint but the last (tuning/evaluation/evaluate.py's costs)."""
    import math as _math

    from tuning.evaluation import evaluate

    def every(name: str) -> int:
        value = cfg.step_interval(name)
        return max(1, _math.ceil(steps * value) if isinstance(value, float) else value)

    try:
        heldout = (len(data_mod.scored(evaluate.heldout_rows(cfg))) if rows is None or rows <= 20_000
                   else round(rows * cfg.eval_split))
        probes = len(evaluate.default_probes(cfg)) if cfg.probe_every_checkpoint else 0
    except Exception:  # noqa: BLE001 - not readable here: the split's share and 5 probes
        heldout, probes = round((rows or 0) * cfg.eval_split), 5 if cfg.probe_every_checkpoint else 0
    evals = steps // every("eval_steps") if heldout else 0
    saves = max(0, steps // every("save_steps") - 1)
    return (evals * evaluate.LOSS_ROW_STEPS * heldout / max(1, cfg.effective_batch_size)
            + saves * probes * evaluate.ANSWER_STEPS * cfg.eval_max_new_tokens / 64)


def measured_answer_seconds(workspace: Path, cfg: config_mod.TrainConfig) -> float | None:
    """Median seconds per answered prompt (base and tuned) of the end-of-run evaluations of earlier
    runs of the same base and method here (their evaluation.json's own timings), per 64 new tokens."""
    per_answer = []
    for summary in runs.list_runs(workspace, base_model=cfg.base_model, method=cfg.method)[:20]:
        result = runs.read_evaluation(summary.path) or {}
        seconds = result.get("seconds") or {}
        answers = len(result.get("probes") or []) + len(((result.get("checks") or {}).get("rows")) or [])
        spent = (seconds.get("probes") or 0) + (seconds.get("checks") or 0)
        if answers and spent and result.get("max_new_tokens"):
            per_answer.append(spent / answers * 64 / result["max_new_tokens"])
    return statistics.median(per_answer) if per_answer else None


def estimate(cfg: config_mod.TrainConfig, workspace: Path, rows: int | None = None,
             avg_tokens: float | None = None) -> Estimate:
    gpu = _gpu_free_bytes()
    available = gpu if gpu is not None else psutil.virtual_memory().available
    device = "GPU memory" if gpu is not None else "RAM"
    shape = model_shape(cfg.base_model, workspace)
    if shape is None or "hidden_size" not in shape:
        return Estimate(None, None, available, device, None, None, "", None)
    base, lora = _parameters(shape, cfg)
    adapter = lora * 4 * 4  # fp32 weights, grads and two Adam moments
    layers, h = shape["num_hidden_layers"], shape["hidden_size"]
    if gpu is None:
        memory = _cpu_memory(cfg, base, adapter, h * layers, avg_tokens)
    else:
        wide = 2 if cfg.precision != "fp32" else 4
        weights = base * (0.56 if cfg.method == "qlora" else wide)  # NF4 + double-quantized scales
        tokens = cfg.per_device_batch_size * cfg.max_length
        per_layer = tokens * (h * 18 + shape["intermediate_size"] * 4) * wide  # saved activations per layer
        activations = per_layer * (math.sqrt(layers) if cfg.gradient_checkpointing else layers)
        logits = _gpu_logits_bytes(cfg, tokens, shape.get("vocab_size", 32000))
        memory = weights + adapter + activations + logits + RUNTIME_OVERHEAD

    rate, source = recipe.training_rate(cfg, workspace, base + lora, gpu is not None)
    step_seconds = recipe.step_seconds(cfg, rate, avg_tokens)
    the_plan = plan(cfg, rows, step_seconds, base + lora) if rows else None
    steps = cfg.max_steps if cfg.max_steps > 0 else (the_plan.steps if the_plan else None)
    kind, work, answers, answer_work = evaluation_work(cfg, steps, rows)
    evaluation = work * step_seconds
    answer_seconds = measured_answer_seconds(workspace, cfg)
    if answer_seconds is not None and answers:  # generation's own measured pace here
        evaluation = (work - answer_work) * step_seconds + answers * answer_seconds * cfg.eval_max_new_tokens / 64
    between = checkpoint_work(cfg, steps, rows) * step_seconds if steps else 0.0
    seconds = steps * step_seconds + between + evaluation + recipe.STARTUP_SECONDS if steps else None
    return Estimate(base, memory, available, device, steps, seconds, source, memory < available, kind, evaluation,
                    the_plan)


def plan(cfg: config_mod.TrainConfig, rows: int, step_seconds: float | None, params: float | None) -> recipe.Plan:
    """The run's plan (tuning/train/recipe.py) for a dataset of `rows` valid rows: the held-out share comes
    off a dataset without its own held-out file, the general rows join when the run mixes them in."""
    own_file = bool(cfg.eval_dataset) or cfg.dataset == config_mod.DEMO_DATASET
    if own_file:
        try:
            held = len(data_mod.scored(data_mod.heldout_rows(cfg)))
        except Exception:  # noqa: BLE001 - an unreadable held-out file: the check before Start names it
            held = 0
    else:
        held = round(rows * cfg.eval_split)
    extra = general.COUNT if general.wanted(cfg, rows) else 0
    return recipe.make_plan(cfg, rows if own_file else rows - held, extra, held, step_seconds, params)


def _cpu_memory(cfg: config_mod.TrainConfig, base: int, adapter: float, shape: int, avg_tokens: float | None) -> float:
    """The CPU trainer's peak RSS from its measured parts (CPU_* above): libraries, the base (bf16 where
    the CPU trains in bf16, fp32 elsewhere; 4-bit for qlora), the adapter's optimizer state and one
    step's activations for its real tokens (padding-free batches: no padding to max_length)."""
    wide = 4 if cfg.precision == "fp32" or (cfg.precision == "auto" and not _cpu_has_fast_bf16()) else 2
    weights = base * (0.56 if cfg.method == "qlora" else wide)
    tokens = cfg.per_device_batch_size * min(cfg.max_length, avg_tokens or cfg.max_length)
    activations = tokens * CPU_ACTIVATION_PER_TOKEN * shape / CPU_ACTIVATION_SHAPE * (wide / 2)
    if cfg.gradient_checkpointing:
        activations /= 3  # one layer's inputs kept of each, the rest recomputed
    return CPU_LIBRARIES + weights + adapter + activations


# TRL's fused LM head (trl.trainer.utils.add_fused_lm_head, which SFT, DPO and KTO train through) scores
# the labelled positions in tiles of 4,096 tokens x 32,768 vocabulary columns (trl.kernels.chunked_logprob's
# TOKEN_CHUNK_SIZE and _CHUNKED_LOGPROB_CHUNK_SIZE in TRL 1.16): the full logits are never held at once.
FUSED_HEAD_TILE = (4096, 32768)
FULL_LOGITS_OBJECTIVES = ("orpo",)  # TRL's ORPO computes the whole batch's logits itself


def _gpu_logits_bytes(cfg: config_mod.TrainConfig, tokens: int, vocab: int) -> float:
    """The LM head's share of a GPU step: fp32 logits, their softmax and its gradient, for the whole
    batch (ORPO) or for one tile of TRL's fused head at a time (the others)."""
    if cfg.objective not in FULL_LOGITS_OBJECTIVES:
        tokens, vocab = min(tokens, FUSED_HEAD_TILE[0]), min(vocab, FUSED_HEAD_TILE[1])
    return tokens * vocab * 4 * 3


def _gpu_free_bytes() -> float | None:
    import sys

    torch = sys.modules.get("torch")  # never import torch just for this
    try:
        if torch is not None and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return float(free)
    except Exception:  # noqa: BLE001
        pass
    return None

"""Evaluation, the model side: did the fine-tune work? Base against tuned, on held-out data.

- Held-out loss and perplexity of the base and of the tuned model, on the same tokens with the
  same chat template and the same loss mask as training (data.tokenize_conversation). The base
  is the run's own model with its adapter disabled, so both numbers share one copy of the
  weights (4-bit for QLoRA). The mean is the one the Trainer's eval_loss uses (the mean over
  batches of per_device_batch_size, each batch's mean over its trained tokens), so the final
  number lines up with the eval curve.
- Task checks: held-out rows that carry `expect` (a list of lowercase substrings) pass when the
  greedy answer contains any of them, or, for named slots ({"name": [...], "maker": [...]}), one
  of each slot's; grouped by the row's `kind` (the demo: identity, control), each slot counted too.
- Probe prompts: answered by base and tuned at every checkpoint (a TrainerCallback) and at the end.

Base and tuned answers come from ONE generate call (generation.generate_rows: a PEFT mixed-adapter
batch, rows tagged "__base__" skip the adapter; DoRA gets one call per side). What is computed
here is written and read back through tuning/record.py (evaluation.json, probes, probe answers);
the blind A/B lives in tuning/ab.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tuning import config as config_mod
from tuning import data as data_mod
from tuning import generation, memory, preference
from tuning import pairs as preference_data
from tuning import record, row_losses
from tuning.generation import BASE
from tuning.paths import DEMO_DATA_DIR

TRAINING_ADAPTER = "default"  # the name PEFT gives the adapter the Trainer trains
GENERATION_BATCH = 16  # prompts per generate call (x2 rows in a mixed batch): bounds memory


class EvalError(record.RunError):
    """Something the user asked for cannot be evaluated; the message says why (a RunError, so the
    CLI and the page treat it as bad input, never as a crash)."""


# --- held-out rows, checks and probes (plain data) -----------------------------------------------

def heldout_rows(cfg: config_mod.TrainConfig) -> list[tuple[list[dict], dict]]:
    """The held-out rows, (conversation, extra columns), chosen by the same code as training's eval
    split. A preference run's rows are its held-out prompts with the chosen (or a good KTO) answer,
    so its held-out loss and probes read like an SFT run's."""
    if cfg.objective == "sft":
        return data_mod.heldout_rows(cfg)
    rows = preference_data.heldout_rows(cfg)
    return [(row["prompt"] + row.get("chosen", row.get("completion")), {}) for row in rows if row.get("label", True)]


def prompt_of(conversation: list[dict]) -> list[dict]:
    """The messages before the last assistant turn: what the model answers. Empty for a plain-text
    row (no assistant turn): it has a loss but no question to ask."""
    answers = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    return conversation[:answers[-1]] if answers else []


def slot_passes(answer: str, expect) -> dict[str, bool]:
    """Each slot of a row's `expect` (data.parse_expect): does the answer contain one of its texts,
    case-insensitive."""
    lowered = answer.lower()
    return {slot: any(t in lowered for t in texts) for slot, texts in data_mod.parse_expect(expect).items()}


def passes(answer: str, expect) -> bool:
    """A task check passes when the answer fills every slot (a plain list is one slot: any of it);
    an empty or malformed `expect` passes nothing."""
    try:
        return all(slot_passes(answer, expect).values())
    except ValueError:
        return False


def _checkable(extra: dict) -> bool:
    try:
        data_mod.parse_expect(extra["expect"])
    except (KeyError, ValueError):
        return False  # data.load reports a malformed `expect` by row; such a row is not loaded
    return True


def default_probes(cfg: config_mod.TrainConfig, n: int = 5) -> list[str]:
    """The dataset's own probe list (the demo ships probes.json), else the first held-out prompts."""
    if cfg.dataset == config_mod.DEMO_DATASET and not cfg.eval_dataset:
        return json.loads((DEMO_DATA_DIR / record.PROBES).read_text(encoding="utf-8"))  # the demo ships a run's probes file
    prompts = []
    for conv, _ in heldout_rows(cfg):
        user = [m["content"] for m in prompt_of(conv) if m["role"] == "user"]
        if user and user[-1] not in prompts:
            prompts.append(user[-1])
        if len(prompts) == n:
            break
    return prompts


def probes_for_run(run_dir: Path, cfg: config_mod.TrainConfig) -> list[str]:
    """The run's probes.json, created from the dataset's default list the first time."""
    probes = record.read_probes(run_dir)
    if probes is None:
        probes = default_probes(cfg)
        if probes:
            record.write_json(Path(run_dir) / record.PROBES, probes)
    return probes


# --- the model side: loss and generation ---------------------------------------------------------

def heldout_loss(model, tokenizer, conversations: list[list[dict]], cfg: config_mod.TrainConfig,
                 adapter: str = TRAINING_ADAPTER, per_row: dict[int, float] | None = None) -> float | None:
    """Mean loss on the held-out conversations, tokenized and masked as in training. With `per_row`
    given, each conversation's own mean loss is put in it by its position (from the same pass)."""
    import torch

    rows = [data_mod.tokenize_conversation(tokenizer, c, cfg.max_length, cfg.train_on_completions_only)
            for c in conversations]
    kept = [i for i, r in enumerate(rows) if any(r["assistant_masks"])]  # as data.to_dataset drops them
    rows = [rows[i] for i in kept]
    if not rows:
        return None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    batch_losses = []
    with torch.no_grad(), generation.inference(model), generation.active_adapter(model, adapter):
        for i in range(0, len(rows), cfg.per_device_batch_size):
            chunk = rows[i:i + cfg.per_device_batch_size]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in chunk])
            attention = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                      for r in chunk])
            mask = torch.tensor([r["assistant_masks"] + [0] * (width - len(r["input_ids"])) for r in chunk])
            labels = ids.masked_fill(mask == 0, -100)
            # Token t predicts token t+1, as in the model's own loss; scored a slice of the LM head at
            # a time, never the whole vocabulary's logits for the batch (tuning/memory.py)
            token_losses = memory.token_losses(model, ids.to(device), attention.to(device), labels.to(device))
            counts = (labels[:, 1:] != -100).sum(1).to(device)
            loss = token_losses.sum() / counts.sum().clamp(min=1)
            batch_losses += [loss.item()] * len(chunk)  # the Trainer's eval loop weights by rows
            if per_row is not None:
                for j, row_loss in enumerate((token_losses.sum(1) / counts.clamp(min=1)).tolist()):
                    per_row[kept[i + j]] = row_loss
    return sum(batch_losses) / len(batch_losses)


def _generate(model, tokenizer, prompts: list[list[dict]], names: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers, row i with adapter names[i] (BASE = no adapter)."""
    return generation.generate_rows(model, tokenizer, prompts, names, max_new_tokens=max_new_tokens,
                                    **generation.GREEDY)


def answer_pairs(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                 adapter: str = TRAINING_ADAPTER, base_answers: list[str] | None = None) -> list[tuple[str, str]]:
    """(base, tuned) answers; base and tuned rows share each generate call. With base_answers
    given (greedy base answers do not change between checkpoints), only the tuned side runs."""
    pairs = []
    for i in range(0, len(prompts), GENERATION_BATCH):
        chunk = prompts[i:i + GENERATION_BATCH]
        if base_answers is not None:
            tuned = _generate(model, tokenizer, chunk, [adapter] * len(chunk), max_new_tokens)
            pairs += list(zip(base_answers[i:i + GENERATION_BATCH], tuned))
        else:
            both = _generate(model, tokenizer, chunk + chunk, [BASE] * len(chunk) + [adapter] * len(chunk),
                             max_new_tokens)
            pairs += list(zip(both[:len(chunk)], both[len(chunk):]))
    return pairs


def _user_text(prompt: list[dict]) -> str:
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""


def task_checks(model, tokenizer, rows: list[tuple[list[dict], dict]], max_new_tokens: int,
                adapter: str = TRAINING_ADAPTER) -> dict | None:
    """Pass rates, base and tuned, of every held-out row that carries `expect`; None if none does."""
    checked = [(prompt_of(conv), extra) for conv, extra in rows
               if _checkable(extra) and prompt_of(conv)]
    if not checked:
        return None
    pairs = answer_pairs(model, tokenizer, [p for p, _ in checked], max_new_tokens, adapter)
    results = []
    for (prompt, extra), (base, tuned) in zip(checked, pairs):
        expect = extra["expect"]
        row = {"kind": str(extra.get("kind", "check")), "prompt": _user_text(prompt),
               "system": next((m["content"] for m in prompt if m["role"] == "system"), None),
               "expect": expect, "base": base, "tuned": tuned,
               "base_pass": passes(base, expect), "tuned_pass": passes(tuned, expect)}
        if isinstance(expect, dict):  # named slots: each one counted on its own
            base_slots, tuned_slots = slot_passes(base, expect), slot_passes(tuned, expect)
            row["slots"] = {slot: {"base": base_slots[slot], "tuned": tuned_slots[slot]} for slot in base_slots}
        results.append(row)
    return {"by_kind": summarize_checks(results), "rows": results}


def summarize_checks(results: list[dict]) -> dict[str, dict]:
    """Per kind: rows, passes base and tuned, and (for rows with named slots) the same per slot."""
    summary: dict[str, dict] = {}
    for r in results:
        s = summary.setdefault(r["kind"], {"n": 0, "base_passed": 0, "tuned_passed": 0})
        s["n"] += 1
        s["base_passed"] += bool(r["base_pass"])
        s["tuned_passed"] += bool(r["tuned_pass"])
        for slot, passed in (r.get("slots") or {}).items():
            t = s.setdefault("slots", {}).setdefault(slot, {"n": 0, "base_passed": 0, "tuned_passed": 0})
            t["n"] += 1
            t["base_passed"] += bool(passed["base"])
            t["tuned_passed"] += bool(passed["tuned"])
    for s in summary.values():
        s["base_rate"] = s["base_passed"] / s["n"]
        s["tuned_rate"] = s["tuned_passed"] / s["n"]
    return summary


def probe_record(model, tokenizer, prompts: list[str], step: int, checkpoint: str, max_new_tokens: int,
                 adapter: str = TRAINING_ADAPTER, base_answers: list[str] | None = None) -> dict:
    messages = [[{"role": "user", "content": p}] for p in prompts]
    pairs = answer_pairs(model, tokenizer, messages, max_new_tokens, adapter, base_answers)
    return {"step": step, "checkpoint": checkpoint, "time": round(time.time(), 3),
            "answers": [{"prompt": p, "base": b, "tuned": t} for p, (b, t) in zip(prompts, pairs)]}


def evaluate_model(model, tokenizer, cfg: config_mod.TrainConfig, run_dir: Path, step: int,
                   adapter: str = TRAINING_ADAPTER, checks: bool = True, source: str = "training") -> dict | None:
    """Everything for evaluation.json from a PeftModel holding the tuned adapter. None when the
    run has no held-out split (nothing to evaluate on)."""
    rows = heldout_rows(cfg)
    if not rows:
        return None
    started = time.time()
    conversations = [conv for conv, _ in rows]
    tuned_rows: dict[int, float] = {}
    base_rows: dict[int, float] = {}
    tuned_loss = heldout_loss(model, tokenizer, conversations, cfg, adapter, per_row=tuned_rows)
    base_loss = heldout_loss(model, tokenizer, conversations, cfg, BASE, per_row=base_rows)
    loss_seconds = time.time() - started
    # each stage's freed activations go back to the OS before the next one allocates its own, so the
    # stages' peaks do not stack (tuning/memory.py, release_freed_memory)
    memory.release_freed_memory()
    if getattr(cfg, "objective", "sft") == "sft":  # its row ids are those of rows.json (tuning/row_losses.py)
        row_losses.record_heldout(run_dir, step, tuned_rows, base_rows)
    result: dict[str, Any] = {
        "step": step, "time": round(time.time(), 3), "source": source, "method": cfg.method,
        "eval_rows": len(rows), "eval_loss": tuned_loss, "base_eval_loss": base_loss,
        "perplexity": record.perplexity(tuned_loss), "base_perplexity": record.perplexity(base_loss),
        "max_new_tokens": cfg.eval_max_new_tokens, "checks": None, "checks_complete": checks, "probes": [],
        "seconds": {"loss": round(loss_seconds, 1)},
    }
    if cfg.objective != "sft":  # held-out preference accuracy and margin, base vs tuned
        t0 = time.time()
        result["objective"] = cfg.objective
        result["preference"] = preference.heldout_figures(model, tokenizer, cfg, preference_data.heldout_rows(cfg),
                                                           adapter)
        result["seconds"]["preference"] = round(time.time() - t0, 1)
    prompts = probes_for_run(run_dir, cfg)
    if prompts:
        t0 = time.time()
        probes = probe_record(model, tokenizer, prompts, step, "final", cfg.eval_max_new_tokens, adapter,
                              record.cached_base_answers(run_dir, prompts))
        record.append_probe_answers(run_dir, probes)
        memory.release_freed_memory()
        result["probes"] = probes["answers"]
        result["seconds"]["probes"] = round(time.time() - t0, 1)
    if checks:
        t0 = time.time()
        result["checks"] = task_checks(model, tokenizer, rows, cfg.eval_max_new_tokens, adapter)
        memory.release_freed_memory()
        result["seconds"]["checks"] = round(time.time() - t0, 1)
    result["seconds"]["total"] = round(time.time() - started, 1)
    record.write_evaluation(run_dir, result)
    return result


# --- hooks for the training process --------------------------------------------------------------

def make_callback(cfg: config_mod.TrainConfig, run_dir: Path):
    """A TrainerCallback that answers the probe prompts at every checkpoint. bind(trainer,
    tokenizer) after the Trainer is built: the callback needs the model in its PEFT form."""
    from transformers import TrainerCallback

    class ProbeCallback(TrainerCallback):
        def __init__(self):
            self.trainer = self.tokenizer = None
            self.base_answers: list[str] | None = None

        def bind(self, trainer, tokenizer):
            self.trainer, self.tokenizer = trainer, tokenizer

        def on_save(self, args, state, control, **kwargs):
            ckpt = record.checkpoint_dir(run_dir, state.global_step)
            if not cfg.probe_every_checkpoint or self.trainer is None or not ckpt.is_dir() \
                    or not state.is_world_process_zero or getattr(self.trainer, "is_fsdp_enabled", False):
                return  # (under FSDP rank 0 alone cannot run the sharded model)
            if control.should_training_stop:
                return  # the last save of a run (stop, early stop, the end): the final probes cover it
            prompts = probes_for_run(run_dir, cfg)
            if not prompts:
                return
            if self.base_answers is None or len(self.base_answers) != len(prompts):
                self.base_answers = record.cached_base_answers(run_dir, prompts)
            started = time.time()
            answers = probe_record(self.trainer.model, self.tokenizer, prompts, state.global_step, ckpt.name,
                                   cfg.eval_max_new_tokens, base_answers=self.base_answers)
            self.base_answers = [a["base"] for a in answers["answers"]]
            record.append_probe_answers(run_dir, answers)
            print(f"probes at step {state.global_step}: {len(prompts)} prompts in {time.time() - started:.1f}s",
                  flush=True)

    return ProbeCallback()


def end_of_training(trainer, tokenizer, cfg: config_mod.TrainConfig, run_dir: Path, events,
                    completed: bool) -> dict | None:
    """After the final adapter is saved: held-out loss base vs tuned, the final probes and (for a
    completed run; a stopped one should stop quickly) the task checks. Appends an `eval` event
    and writes evaluation.json. A failure here is reported, never fatal: the adapter is saved."""
    import traceback

    try:
        result = evaluate_model(trainer.model, tokenizer, cfg, run_dir, trainer.state.global_step,
                                checks=completed)
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded; say what failed and go on
        traceback.print_exc()
        print(f"evaluation failed: {type(exc).__name__}: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if result is None:
        return None
    by_kind = (result.get("checks") or {}).get("by_kind")
    events.append("eval", step=result["step"], max_steps=trainer.state.max_steps, final=True,
                  eval_loss=result["eval_loss"], base_eval_loss=result["base_eval_loss"],
                  perplexity=result["perplexity"], base_perplexity=result["base_perplexity"],
                  checks=by_kind, preference=result.get("preference"), message=record.headline(result))
    print(f"evaluation ({result['seconds']['total']:.0f}s): {record.headline(result)}", flush=True)
    return result


# --- after the run: the CLI and the UI -----------------------------------------------------------

def evaluate_run(run_dir: Path, workspace: Path, recompute: bool = False, checkpoint: str | None = None) -> dict:
    """evaluation.json of a run, computed now (from its final adapter, or its newest checkpoint
    while it has none) when missing, incomplete (a stopped run skips the task checks), or
    recompute is asked for."""
    from tuning import playground

    run_dir = Path(run_dir)
    existing = record.read_evaluation(run_dir)
    if existing and record.checks_done(existing) and not recompute and not checkpoint:
        return existing
    try:
        cfg = record.read_config(run_dir)
    except config_mod.ConfigError as exc:
        raise EvalError(f"run {run_dir.name}: {exc}") from None
    if not heldout_rows(cfg):
        raise EvalError(f"run {run_dir.name} has no held-out data (eval_split is 0 and no eval_dataset)")
    path = record.current_adapter(run_dir, checkpoint)
    comparer = playground.comparer_for_run(run_dir, workspace)
    with comparer.lock:
        name = comparer.attach(path)
        step = record.adapter_step(run_dir, path)
        result = evaluate_model(comparer.peft, comparer.tokenizer, cfg, run_dir, step, adapter=name,
                                source=str(path.relative_to(run_dir)))
    return result


# --- one dict per run, for `python -m tuning eval --json` -----------------------------------------

def report(run_dir: Path, result: dict) -> dict:
    """Everything for `eval --json`: evaluation.json, the probe history and the A/B summary."""
    return {"run_id": Path(run_dir).name, **result, "probe_history": record.probe_history(run_dir),
            "ab": record.ab_summary(run_dir)}

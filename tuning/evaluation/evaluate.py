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
- The end-of-run evaluation fits the run (config final_evaluation): quick = held-out loss, the
  first probes and the checks the run added (slot questions, control: checks_for), full = everything. It runs as a list of checks (plan); between two checks, and at
  every generated token, a Stop ends it, and evaluation.json then says it is partial.

Base and tuned answers come from ONE generate call (generation.generate_rows: a PEFT mixed-adapter
batch, rows tagged "__base__" skip the adapter; DoRA gets one call per side). What is computed
here is written and read back through tuning/runs/ (evaluation.json, probes, probe answers);
the blind A/B lives in tuning/evaluation/ab.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning import config as config_mod
from tuning import data as data_mod
from tuning.infer import generation
from tuning import levers
from tuning.levers import allocator, lm_head
from tuning.evaluation import preference_figures
from tuning.data import pairs as preference_data
from tuning.data import prompts as prompt_data
from tuning import runs
from tuning.evaluation import headlines
from tuning.evaluation import row_losses
from tuning.infer.generation import BASE
from tuning.paths import DEMO_DATA_DIR

ANSWER_MATCH = "answer"  # a check row's `match`: passed by the answer reward's rule, not by containing words
PAIRED_OBJECTIVES = ("dpo", "orpo", "kto")  # their held-out rows are pairs (or labelled answers): preference figures

TRAINING_ADAPTER = "default"  # the name PEFT gives the adapter the Trainer trains
GENERATION_BATCH = 16  # prompts per generate call (x2 rows in a mixed batch): bounds memory


class EvalError(runs.RunError):
    """Something the user asked for cannot be evaluated; the message says why (a RunError, so the
    CLI and the page treat it as bad input, never as a crash)."""


# --- held-out rows, checks and probes (plain data) -----------------------------------------------

def heldout_rows(cfg: config_mod.TrainConfig) -> list[tuple[list[dict], dict]]:
    """The held-out rows, (conversation, extra columns), chosen by the same code as training's eval
    split. A preference run's rows are its held-out prompts with the chosen (or a good KTO) answer,
    so its held-out loss and probes read like an SFT run's."""
    if cfg.objective == "sft":
        return data_mod.heldout_rows(cfg)
    if cfg.objective == "grpo":  # its held-out prompts with their reference answers, asked as answer checks
        return grpo_heldout_rows(cfg)
    rows = preference_data.heldout_rows(cfg)
    return [(row["prompt"] + row.get("chosen", row.get("completion")), {}) for row in rows if row.get("label", True)]


def grpo_heldout_rows(cfg: config_mod.TrainConfig) -> list[tuple[list[dict], dict]]:
    """A GRPO run's held-out prompts with their `answer` as the assistant turn (the held-out loss scores
    it) and as a task check of kind "answer": base and tuned answer greedily, and a check passes by the
    answer reward's rule (prompts.answer_matches: a number is the answer's last number). Rows without an
    answer column are asked nothing."""
    _, held = prompt_data.train_and_heldout(cfg)
    return [(row["prompt"] + [{"role": "assistant", "content": row["answer"]}],
             {"kind": "answer", "expect": [row["answer"]], "match": ANSWER_MATCH})
            for row in held if str(row.get("answer") or "").strip()]


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
        return json.loads((DEMO_DATA_DIR / runs.PROBES).read_text(encoding="utf-8"))  # the demo ships a run's probes file
    prompts = []
    for conv, _ in heldout_rows(cfg):
        user = [m["content"] for m in prompt_of(conv) if m["role"] == "user"]
        if user and user[-1] not in prompts:
            prompts.append(user[-1])
        if len(prompts) == n:
            break
    return prompts


def probes_for_run(run_dir: Path, cfg: config_mod.TrainConfig, keep: bool = True) -> list[str]:
    """The run's probes.json, created from the dataset's default list the first time (`keep`: a
    reader the public may trigger, the Playground's pick, passes False and writes nothing)."""
    probes = runs.read_probes(run_dir)
    if probes is None:
        probes = default_probes(cfg)
        if probes and keep:
            runs.write_json(Path(run_dir) / runs.PROBES, probes)
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
    sliced = levers.enabled("sliced_eval_loss", cfg.speedups, device.type, cfg.levers_turned_off)
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
            # a time, never the whole vocabulary's logits for the batch (tuning/levers/lm_head.py)
            score = lm_head.token_losses if sliced else lm_head.full_token_losses
            token_losses = score(model, ids.to(device), attention.to(device), labels.to(device))
            counts = (labels[:, 1:] != -100).sum(1).to(device)
            loss = token_losses.sum() / counts.sum().clamp(min=1)
            batch_losses += [loss.item()] * len(chunk)  # the Trainer's eval loop weights by rows
            if per_row is not None:
                for j, row_loss in enumerate((token_losses.sum(1) / counts.clamp(min=1)).tolist()):
                    per_row[kept[i + j]] = row_loss
    return sum(batch_losses) / len(batch_losses)


class EvaluationStopped(Exception):
    """A Stop arrived in the middle of a check: its half-made answers are dropped, what the checks
    before it computed is kept."""


class _StopWatch:
    """A generate() streamer that reads no tokens, only the Stop flag: at the first token after a
    Stop it ends the batch (a batch of answers takes minutes on a busy CPU; a Stop should not)."""

    def __init__(self, stopped):
        self.stopped = stopped

    def put(self, value) -> None:
        if self.stopped():
            raise EvaluationStopped()

    def end(self) -> None:
        pass

    def part(self, index: list[int]) -> "_StopWatch":  # generation.generate_rows splits DoRA batches
        return self


def _generate(model, tokenizer, prompts: list[list[dict]], names: list[str], max_new_tokens: int,
              stopped=None) -> list[str]:
    """Greedy answers, row i with adapter names[i] (BASE = no adapter); EvaluationStopped as soon as
    `stopped()` says so."""
    return generation.generate_rows(model, tokenizer, prompts, names, max_new_tokens=max_new_tokens,
                                    streamer=_StopWatch(stopped) if stopped else None, **generation.GREEDY)


def answer_pairs(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                 adapter: str = TRAINING_ADAPTER, base_answers: list[str] | None = None,
                 stopped=None) -> list[tuple[str, str]]:
    """(base, tuned) answers; base and tuned rows share each generate call. With base_answers
    given (greedy base answers do not change between checkpoints), only the tuned side runs."""
    pairs = []
    for i in range(0, len(prompts), GENERATION_BATCH):
        chunk = prompts[i:i + GENERATION_BATCH]
        if base_answers is not None:
            tuned = _generate(model, tokenizer, chunk, [adapter] * len(chunk), max_new_tokens, stopped)
            pairs += list(zip(base_answers[i:i + GENERATION_BATCH], tuned))
        else:
            both = _generate(model, tokenizer, chunk + chunk, [BASE] * len(chunk) + [adapter] * len(chunk),
                             max_new_tokens, stopped)
            pairs += list(zip(both[:len(chunk)], both[len(chunk):]))
    return pairs


def _user_text(prompt: list[dict]) -> str:
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""


def checked_rows(rows: list[tuple[list[dict], dict]]) -> list[tuple[list[dict], dict]]:
    """(prompt, extra) of every held-out row a task check can score (it carries `expect`)."""
    return [(prompt_of(conv), extra) for conv, extra in rows if _checkable(extra) and prompt_of(conv)]


def checks_for(kind: str, rows: list[tuple[list[dict], dict]]) -> list[tuple[list[dict], dict]]:
    """The task checks an evaluation of `kind` asks: all of them in a full one; in a quick one only
    those the run added (slot questions, the general rows' control twins: few, and what a person who
    named slots wants to see), not a held-out file's own."""
    checked = checked_rows(rows) if kind != NONE else []
    return checked if kind == FULL else [(prompt, extra) for prompt, extra in checked if extra.get("check_only")]


def task_checks(model, tokenizer, rows: list[tuple[list[dict], dict]], max_new_tokens: int,
                adapter: str = TRAINING_ADAPTER) -> dict | None:
    """Pass rates, base and tuned, of every held-out row that carries `expect`; None if none does."""
    checked = checked_rows(rows)
    if not checked:
        return None
    return check_results(checked, answer_pairs(model, tokenizer, [p for p, _ in checked], max_new_tokens, adapter))


def check_results(checked: list[tuple[list[dict], dict]], pairs: list[tuple[str, str]]) -> dict:
    """{by_kind, rows} of the checked rows that have their (base, tuned) answers."""
    results = []
    for (prompt, extra), (base, tuned) in zip(checked, pairs):
        expect = extra["expect"]
        check = passes if extra.get("match") != ANSWER_MATCH else lambda text, wanted: prompt_data.answer_matches(
            text, wanted[0])
        row = {"kind": str(extra.get("kind", "check")), "prompt": _user_text(prompt),
               "system": next((m["content"] for m in prompt if m["role"] == "system"), None),
               "expect": expect, "base": base, "tuned": tuned,
               "base_pass": check(base, expect), "tuned_pass": check(tuned, expect)}
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
                 adapter: str = TRAINING_ADAPTER, base_answers: list[str] | None = None, stopped=None) -> dict:
    messages = [[{"role": "user", "content": p}] for p in prompts]
    pairs = answer_pairs(model, tokenizer, messages, max_new_tokens, adapter, base_answers, stopped)
    return {"step": step, "checkpoint": checkpoint, "time": round(time.time(), 3),
            "answers": [{"prompt": p, "base": b, "tuned": t} for p, (b, t) in zip(prompts, pairs)]}


# What the end-of-run evaluation runs (config final_evaluation): quick = held-out loss base vs tuned
# and the first QUICK_PROBES probes; full = also every probe and every task check.
QUICK, FULL, NONE = "quick", "full", "none"
QUICK_PROBES = 3
# What a check costs, in training steps of the same run: the Live tab's ETA before the evaluation
# starts and the estimate before Start multiply these by the step time. From the quickstart on a quiet
# 2-core CPU (bench/RESULTS.md: ~3 s a step; the 47 task checks, base and tuned, 64 new tokens, 17 s): a
# pass over the held-out rows (forward only) costs about LOSS_ROW_STEPS x rows / batch steps, an answer
# ANSWER_STEPS. On busy cores greedy generation slows down far more than training (measured: ~137 s an
# answer against ~70 s a step): the pages then use the time the checkpoints' probes or an earlier
# evaluation took per answer instead (runs.EventSummary.evaluation_seconds, ui/estimate.py).
LOSS_ROW_STEPS = 0.3  # per held-out row, per row of the step's effective batch
ANSWER_STEPS = 0.15  # per prompt answered by base and tuned, per 64 new tokens


@dataclass(frozen=True)
class Check:
    """One piece of the evaluation, between two looks at the Stop flag."""
    label: str  # what the page shows: "held-out loss (tuned)", "probes 1-3 of 3", "task checks 17-32 of 47"
    part: str  # loss_tuned, loss_base, preference, probes, checks
    work: float  # its cost in training steps (LOSS_ROW_STEPS, ANSWER_STEPS)
    start: int = 0  # the prompts [start, end) of a probes or checks batch
    end: int = 0

    @property
    def answers(self) -> int:
        """Prompts it answers (base and tuned): 0 for a loss pass."""
        return self.end - self.start


def plan(cfg: config_mod.TrainConfig, kind: str, rows: list[tuple[list[dict], dict]], prompts: list[str]) -> list[Check]:
    """The checks of a quick or full evaluation of `rows` (the held-out rows) and `prompts` (the probes),
    in the order they run: the cheap, telling ones first, so a Stop keeps the most."""
    if kind == NONE or not rows:
        return []
    loss = LOSS_ROW_STEPS * len(data_mod.scored(rows)) / max(1, cfg.effective_batch_size)
    checks = [Check("held-out loss (tuned)", "loss_tuned", loss), Check("held-out loss (base)", "loss_base", loss)]
    if cfg.objective in PAIRED_OBJECTIVES:
        checks.append(Check("held-out preference figures", "preference", 4 * loss))  # chosen and rejected, both sides
    answer = ANSWER_STEPS * cfg.eval_max_new_tokens / 64
    prompts = prompts[:QUICK_PROBES] if kind == QUICK else prompts
    checked = checks_for(kind, rows)
    batches = [("probes", len(prompts))] + ([("task checks", len(checked))] if checked else [])
    for name, count in batches:
        for i in range(0, count, GENERATION_BATCH):
            end = min(count, i + GENERATION_BATCH)
            checks.append(Check(f"{name} {i + 1}-{end} of {count}", name.split()[-1], answer * (end - i), i, end))
    return checks


def planned_checks(cfg: config_mod.TrainConfig, run_dir: Path, kind: str) -> list[Check]:
    """plan() for this run's own held-out rows and probes (its probes.json, made on first use)."""
    rows = heldout_rows(cfg) if kind != NONE else []
    return plan(cfg, kind, rows, probes_for_run(run_dir, cfg) if rows else [])


def evaluate_model(model, tokenizer, cfg: config_mod.TrainConfig, run_dir: Path, step: int,
                   adapter: str = TRAINING_ADAPTER, kind: str = FULL, source: str = "training",
                   progress=None, stopped=None) -> dict | None:
    """Everything for evaluation.json from a PeftModel holding the tuned adapter, check by check (plan).
    None when the run has no held-out split (nothing to evaluate on). `progress(done, total, check,
    work_done, work_total)` is called before each check (the one about to run) and at the end (None); `stopped()` is asked between checks and at
    every generated token: after a Stop, evaluation.json holds what the finished checks computed, with
    `partial: true` and `stopped_at` (the first check not done). Nothing is written when no check
    finished (an earlier evaluation.json stays)."""
    rows = heldout_rows(cfg)
    if not rows:
        return None
    stopped = stopped or (lambda: False)
    prompts = probes_for_run(run_dir, cfg)
    checks = plan(cfg, kind, rows, prompts)
    base_answers = runs.cached_base_answers(run_dir, prompts)  # the checkpoints answered the whole list
    prompts = prompts[:QUICK_PROBES] if kind == QUICK else prompts
    messages = [[{"role": "user", "content": p}] for p in prompts]
    checked = checks_for(kind, rows)
    conversations = [conv for conv, _ in data_mod.scored(rows)]  # the added checks are asked, not scored
    tuned_rows: dict[int, float] = {}
    base_rows: dict[int, float] = {}
    figures: dict[str, Any] = {}
    probe_pairs: list[tuple[str, str]] = []
    check_pairs: list[tuple[str, str]] = []
    seconds: dict[str, float] = {}
    started, done, stopped_at = time.time(), 0, None
    work_total, work_done = sum(c.work for c in checks), 0.0
    for check in checks:
        if stopped():
            stopped_at = check.label
            break
        if progress is not None:
            progress(done, len(checks), check, work_done, work_total)
        t0 = time.time()
        try:
            if check.part == "loss_tuned":
                figures["eval_loss"] = heldout_loss(model, tokenizer, conversations, cfg, adapter, per_row=tuned_rows)
            elif check.part == "loss_base":
                figures["base_eval_loss"] = heldout_loss(model, tokenizer, conversations, cfg, BASE, per_row=base_rows)
            elif check.part == "preference":  # held-out preference accuracy and margin, base vs tuned
                figures["preference"] = preference_figures.heldout_figures(model, tokenizer, cfg,
                                                                   preference_data.heldout_rows(cfg), adapter)
            elif check.part == "probes":
                cached = base_answers[check.start:check.end] if base_answers else None
                probe_pairs += answer_pairs(model, tokenizer, messages[check.start:check.end],
                                            cfg.eval_max_new_tokens, adapter, cached, stopped)
            else:
                check_pairs += answer_pairs(model, tokenizer, [p for p, _ in checked[check.start:check.end]],
                                            cfg.eval_max_new_tokens, adapter, stopped=stopped)
        except EvaluationStopped:
            stopped_at = check.label
            break
        # each check's freed activations go back to the OS before the next one allocates its own, so
        # their peaks do not stack (tuning/levers/allocator.py)
        if levers.enabled("trim_between_checks", cfg.speedups, turned_off=cfg.levers_turned_off):
            allocator.release_freed_memory()
        name = "loss" if check.part.startswith("loss") else check.part
        seconds[name] = round(seconds.get(name, 0.0) + time.time() - t0, 1)
        done, work_done = done + 1, work_done + check.work
    if progress is not None and stopped_at is None and checks:
        progress(done, len(checks), None, work_done, work_total)
    if done == 0 and stopped_at is not None:
        return {"partial": True, "stopped_at": stopped_at, "kind": kind, "completed_checks": 0,
                "total_checks": len(checks)}
    if getattr(cfg, "objective", "sft") == "sft":  # its row ids are those of rows.json (tuning/evaluation/row_losses.py)
        row_losses.record_heldout(run_dir, step, tuned_rows, base_rows)
    tuned_loss, base_loss = figures.get("eval_loss"), figures.get("base_eval_loss")
    result: dict[str, Any] = {
        "step": step, "time": round(time.time(), 3), "source": source, "method": cfg.method, "kind": kind,
        "eval_rows": len(conversations), "eval_loss": tuned_loss, "base_eval_loss": base_loss,
        "perplexity": runs.perplexity(tuned_loss), "base_perplexity": runs.perplexity(base_loss),
        "max_new_tokens": cfg.eval_max_new_tokens, "checks": None,
        # quick leaves the held-out file's task checks out (it asks only those the run added) and a
        # Stop cuts them short: `eval` computes the full evaluation later
        "checks_complete": kind == FULL and stopped_at is None, "probes": [],
        "partial": stopped_at is not None, "completed_checks": done, "total_checks": len(checks),
    }
    if stopped_at is not None:
        result["stopped_at"] = stopped_at
    if "preference" in figures:
        result["objective"], result["preference"] = cfg.objective, figures["preference"]
    if probe_pairs:
        answers = [{"prompt": p, "base": b, "tuned": t} for p, (b, t) in zip(prompts, probe_pairs)]
        if len(answers) == len(prompts):  # the gallery's record of the final adapter: only a whole one
            runs.append_probe_answers(run_dir, {"step": step, "checkpoint": "final", "time": round(time.time(), 3),
                                                  "answers": answers})
        result["probes"] = answers
    if check_pairs:
        result["checks"] = check_results(checked[:len(check_pairs)], check_pairs)
    result["seconds"] = {**seconds, "total": round(time.time() - started, 1)}
    runs.write_evaluation(run_dir, result)
    return result


# --- hooks for the training process --------------------------------------------------------------

def make_callback(cfg: config_mod.TrainConfig, run_dir: Path, stop=None, phase=None):
    """A TrainerCallback that answers the probe prompts at every checkpoint. bind(trainer,
    tokenizer) after the Trainer is built: the callback needs the model in its PEFT form. `stop`
    (its `requested` flag) skips or cuts short the answers after a Stop; `phase(name, **fields)`
    reports the work (tuning/train/trainer.py writes it as a phase event)."""
    from transformers import TrainerCallback

    def stop_requested() -> bool:
        return bool(stop is not None and stop.requested)

    class ProbeCallback(TrainerCallback):
        def __init__(self):
            self.trainer = self.tokenizer = None
            self.base_answers: list[str] | None = None

        def bind(self, trainer, tokenizer):
            self.trainer, self.tokenizer = trainer, tokenizer

        def on_save(self, args, state, control, **kwargs):
            ckpt = runs.checkpoint_dir(run_dir, state.global_step)
            if not cfg.probe_every_checkpoint or self.trainer is None or not ckpt.is_dir() \
                    or not state.is_world_process_zero or getattr(self.trainer, "is_fsdp_enabled", False):
                return  # (under FSDP rank 0 alone cannot run the sharded model)
            if control.should_training_stop or stop_requested():
                return  # the last save of a run (stop, early stop, the end): the final probes cover it
            prompts = probes_for_run(run_dir, cfg)
            if not prompts:
                return
            if phase is not None:
                phase("saving", step=state.global_step, max_steps=state.max_steps, answers=len(prompts),
                      message=f"answering {len(prompts)} probes at {ckpt.name}")
            if self.base_answers is None or len(self.base_answers) != len(prompts):
                self.base_answers = runs.cached_base_answers(run_dir, prompts)
            started = time.time()
            try:
                answers = probe_record(self.trainer.model, self.tokenizer, prompts, state.global_step, ckpt.name,
                                       cfg.eval_max_new_tokens, base_answers=self.base_answers,
                                       stopped=stop_requested)
            except EvaluationStopped:
                print(f"probes at step {state.global_step}: left out, a stop was requested", flush=True)
                return
            self.base_answers = [a["base"] for a in answers["answers"]]
            runs.append_probe_answers(run_dir, answers)
            print(f"probes at step {state.global_step}: {len(prompts)} prompts in {time.time() - started:.1f}s",
                  flush=True)

    return ProbeCallback()


def end_of_training(trainer, tokenizer, cfg: config_mod.TrainConfig, run_dir: Path, events, kind: str = FULL,
                    progress=None, stopped=None) -> dict | None:
    """After the final adapter is saved: the quick or full evaluation (evaluate_model), its `eval`
    event and evaluation.json. A failure here is reported, never fatal: the adapter is saved."""
    import traceback

    if kind == NONE:
        return None
    try:
        result = evaluate_model(trainer.model, tokenizer, cfg, run_dir, trainer.state.global_step, kind=kind,
                                progress=progress, stopped=stopped)
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded; say what failed and go on
        traceback.print_exc()
        print(f"evaluation failed: {type(exc).__name__}: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if result is None or "step" not in result:
        return result  # no held-out data, or stopped before its first check
    partial = f" (partial: stopped before {result['stopped_at']})" if result.get("partial") else ""
    by_kind = (result.get("checks") or {}).get("by_kind")
    events.append("eval", step=result["step"], max_steps=trainer.state.max_steps, final=True, kind=kind,
                  partial=result["partial"] or None, eval_loss=result["eval_loss"],
                  base_eval_loss=result["base_eval_loss"], perplexity=result["perplexity"],
                  base_perplexity=result["base_perplexity"], checks=by_kind, preference=result.get("preference"),
                  message=headlines.headline(result) + partial)
    print(f"{kind} evaluation ({result['seconds']['total']:.0f}s): {headlines.headline(result)}{partial}", flush=True)
    return result


# --- after the run: the CLI and the UI -----------------------------------------------------------

def evaluate_run(run_dir: Path, workspace: Path, recompute: bool = False, checkpoint: str | None = None) -> dict:
    """evaluation.json of a run, computed now (from its final adapter, or its newest checkpoint
    while it has none) when missing, incomplete (a stopped run skips the task checks), or
    recompute is asked for."""
    from tuning.infer import playground

    run_dir = Path(run_dir)
    existing = runs.read_evaluation(run_dir)
    if existing and runs.checks_done(existing) and not recompute and not checkpoint:
        return existing
    try:
        cfg = runs.read_config(run_dir)
    except config_mod.ConfigError as exc:
        raise EvalError(f"run {run_dir.name}: {exc}") from None
    if not heldout_rows(cfg):
        raise EvalError(f"run {run_dir.name} has no held-out data (eval_split is 0 and no eval_dataset)")
    path = runs.current_adapter(run_dir, checkpoint)
    comparer = playground.comparer_for_run(run_dir, workspace)
    with comparer.lock:
        name = comparer.attach(path)
        step = runs.adapter_step(run_dir, path)
        result = evaluate_model(comparer.peft, comparer.tokenizer, cfg, run_dir, step, adapter=name,
                                source=str(path.relative_to(run_dir)))
    return result


# --- one dict per run, for `python -m tuning eval --json` -----------------------------------------

def report(run_dir: Path, result: dict) -> dict:
    """Everything for `eval --json`: evaluation.json, the probe history and the A/B summary."""
    return {"run_id": Path(run_dir).name, **result, "probe_history": runs.probe_history(run_dir),
            "ab": runs.ab_summary(run_dir)}

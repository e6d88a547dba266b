"""Evaluation: did the fine-tune work, and what did it cost? Base against tuned, on held-out data.

- Held-out loss and perplexity of the base and of the tuned model, on the same tokens with the
  same chat template and the same loss mask as training (data.tokenize_conversation). The base
  is the run's own model with its adapter disabled, so both numbers share one copy of the
  weights (4-bit for QLoRA). The mean is the one the Trainer's eval_loss uses (the mean over
  batches of per_device_batch_size, each batch's mean over its trained tokens), so the final
  number lines up with the eval curve.
- Task checks: held-out rows that carry `expect` (a list of lowercase substrings) pass when the
  greedy answer contains any of them; grouped by the row's `kind` (the demo: identity, control).
- Probe prompts: a short list per run (probes.json), answered by base and tuned at every
  checkpoint and at the end (probe_answers.jsonl, one line per checkpoint) for the gallery.
- Blind A/B: stored base/tuned answer pairs shown as A and B in random order; each vote is one
  appended line of ab_votes.jsonl, so votes survive restarts.

Base and tuned answers come from ONE generate call (generation.generate_rows: a PEFT mixed-adapter
batch, rows tagged "__base__" skip the adapter; DoRA gets one call per side).
Files in the run folder: evaluation.json (written atomically), probes.json, probe_answers.jsonl,
ab_votes.jsonl (both append-only).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

from tuning import config as config_mod
from tuning import data as data_mod
from tuning import generation
from tuning import runs
from tuning.generation import BASE
from tuning.paths import DEMO_DATA_DIR

EVALUATION_FILE = "evaluation.json"
PROBES_FILE = "probes.json"
PROBE_ANSWERS_FILE = "probe_answers.jsonl"
VOTES_FILE = "ab_votes.jsonl"
TRAINING_ADAPTER = "default"  # the name PEFT gives the adapter the Trainer trains
GENERATION_BATCH = 16  # prompts per generate call (x2 rows in a mixed batch): bounds memory
MAX_PROBES = 20
CHOICES = ("A", "B", "tie")


class EvalError(runs.RunError):
    """Something the user asked for cannot be evaluated; the message says why (a RunError, so the
    CLI and the page treat it as bad input, never as a crash)."""


# --- files -------------------------------------------------------------------------------------

def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, ensure_ascii=False, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _append_jsonl(path: Path, record: dict) -> None:
    # One write of one whole line, fsynced: a crash leaves at most a partial last line, which
    # _read_jsonl skips (the same rule as events.jsonl).
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_evaluation(run_dir: Path) -> dict | None:
    try:
        value = json.loads((Path(run_dir) / EVALUATION_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


# --- held-out rows, checks and probes (plain data) -----------------------------------------------

# The held-out rows, (conversation, extra columns), chosen by the same code as training's eval split.
heldout_rows = data_mod.heldout_rows


def prompt_of(conversation: list[dict]) -> list[dict]:
    """The messages before the last assistant turn: what the model answers. Empty for a plain-text
    row (no assistant turn): it has a loss but no question to ask."""
    answers = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    return conversation[:answers[-1]] if answers else []


def passes(answer: str, expect: list[str]) -> bool:
    """The demo's rule: the answer contains any expected substring, case-insensitive."""
    lowered = answer.lower()
    return any(str(e).lower() in lowered for e in expect)


def default_probes(cfg: config_mod.TrainConfig, n: int = 5) -> list[str]:
    """The dataset's own probe list (the demo ships probes.json), else the first held-out prompts."""
    if cfg.dataset == config_mod.DEMO_DATASET and not cfg.eval_dataset:
        return json.loads((DEMO_DATA_DIR / "probes.json").read_text(encoding="utf-8"))
    prompts = []
    for conv, _ in heldout_rows(cfg):
        user = [m["content"] for m in prompt_of(conv) if m["role"] == "user"]
        if user and user[-1] not in prompts:
            prompts.append(user[-1])
        if len(prompts) == n:
            break
    return prompts


def read_probes(run_dir: Path) -> list[str] | None:
    try:
        value = json.loads((Path(run_dir) / PROBES_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else None


def check_probes(prompts: list[str] | str) -> list[str]:
    """A probe list from the UI: a list, or text with one prompt a line. Empty lines dropped."""
    if isinstance(prompts, str):
        prompts = prompts.splitlines()
    cleaned = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
    if not cleaned:
        raise EvalError("probes: give at least one prompt (one a line)")
    if len(cleaned) > MAX_PROBES:
        raise EvalError(f"probes: at most {MAX_PROBES} prompts (each costs generation time at every checkpoint)")
    return cleaned


def write_probes(run_dir: Path, prompts: list[str] | str) -> list[str]:
    """Save a run's probe list (the Playground's editor calls this). Later checkpoints and
    re-evaluations answer the new list; answers already recorded are kept."""
    cleaned = check_probes(prompts)
    _write_json_atomic(Path(run_dir) / PROBES_FILE, cleaned)
    return cleaned


def probes_for_run(run_dir: Path, cfg: config_mod.TrainConfig) -> list[str]:
    """The run's probes.json, created from the dataset's default list the first time."""
    probes = read_probes(run_dir)
    if probes is None:
        probes = default_probes(cfg)
        if probes:
            _write_json_atomic(Path(run_dir) / PROBES_FILE, probes)
    return probes


def probe_history(run_dir: Path) -> list[dict]:
    """probe_answers.jsonl: one record a checkpoint, {step, checkpoint, time, answers: [{prompt, base,
    tuned}]}, in step order; a later record for the same checkpoint (a re-run) wins."""
    by_key: dict[tuple, dict] = {}
    for record in _read_jsonl(Path(run_dir) / PROBE_ANSWERS_FILE):
        if isinstance(record.get("step"), int) and isinstance(record.get("answers"), list):
            by_key[(record["step"], record.get("checkpoint"))] = record
    return [by_key[k] for k in sorted(by_key, key=lambda k: (k[0], k[1] == "final"))]


# --- the model side: loss and generation ---------------------------------------------------------

def heldout_loss(model, tokenizer, conversations: list[list[dict]], cfg: config_mod.TrainConfig,
                 adapter: str = TRAINING_ADAPTER) -> float | None:
    """Mean loss on the held-out conversations, tokenized and masked as in training."""
    import torch
    import torch.nn.functional as F

    rows = [data_mod.tokenize_conversation(tokenizer, c, cfg.max_length, cfg.train_on_completions_only)
            for c in conversations]
    rows = [r for r in rows if any(r["assistant_masks"])]  # as data.to_dataset drops them
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
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
            # Token t predicts token t+1, as in the model's own loss.
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(device), ignore_index=-100)
            batch_losses += [loss.item()] * len(chunk)  # the Trainer's eval loop weights by rows
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
               if isinstance(extra.get("expect"), list) and extra["expect"] and prompt_of(conv)]
    if not checked:
        return None
    pairs = answer_pairs(model, tokenizer, [p for p, _ in checked], max_new_tokens, adapter)
    results = []
    for (prompt, extra), (base, tuned) in zip(checked, pairs):
        results.append({"kind": str(extra.get("kind", "check")), "prompt": _user_text(prompt),
                        "system": next((m["content"] for m in prompt if m["role"] == "system"), None),
                        "expect": extra["expect"], "base": base, "tuned": tuned,
                        "base_pass": passes(base, extra["expect"]), "tuned_pass": passes(tuned, extra["expect"])})
    return {"by_kind": summarize_checks(results), "rows": results}


def summarize_checks(results: list[dict]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for r in results:
        s = summary.setdefault(r["kind"], {"n": 0, "base_passed": 0, "tuned_passed": 0})
        s["n"] += 1
        s["base_passed"] += bool(r["base_pass"])
        s["tuned_passed"] += bool(r["tuned_pass"])
    for s in summary.values():
        s["base_rate"] = s["base_passed"] / s["n"]
        s["tuned_rate"] = s["tuned_passed"] / s["n"]
    return summary


def _perplexity(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None


def probe_record(model, tokenizer, prompts: list[str], step: int, checkpoint: str, max_new_tokens: int,
                 adapter: str = TRAINING_ADAPTER, base_answers: list[str] | None = None) -> dict:
    messages = [[{"role": "user", "content": p}] for p in prompts]
    pairs = answer_pairs(model, tokenizer, messages, max_new_tokens, adapter, base_answers)
    return {"step": step, "checkpoint": checkpoint, "time": round(time.time(), 3),
            "answers": [{"prompt": p, "base": b, "tuned": t} for p, (b, t) in zip(prompts, pairs)]}


def _cached_base_answers(run_dir: Path, prompts: list[str]) -> list[str] | None:
    """Greedy base answers recorded earlier for this exact probe list (e.g. before a resume)."""
    for record in reversed(probe_history(run_dir)):
        answers = record["answers"]
        if [a.get("prompt") for a in answers] == prompts:
            return [a.get("base", "") for a in answers]
    return None


def evaluate_model(model, tokenizer, cfg: config_mod.TrainConfig, run_dir: Path, step: int,
                   adapter: str = TRAINING_ADAPTER, checks: bool = True, source: str = "training") -> dict | None:
    """Everything for evaluation.json from a PeftModel holding the tuned adapter. None when the
    run has no held-out split (nothing to evaluate on)."""
    rows = heldout_rows(cfg)
    if not rows:
        return None
    started = time.time()
    conversations = [conv for conv, _ in rows]
    tuned_loss = heldout_loss(model, tokenizer, conversations, cfg, adapter)
    base_loss = heldout_loss(model, tokenizer, conversations, cfg, BASE)
    loss_seconds = time.time() - started
    result: dict[str, Any] = {
        "step": step, "time": round(time.time(), 3), "source": source, "method": cfg.method,
        "eval_rows": len(rows), "eval_loss": tuned_loss, "base_eval_loss": base_loss,
        "perplexity": _perplexity(tuned_loss), "base_perplexity": _perplexity(base_loss),
        "max_new_tokens": cfg.eval_max_new_tokens, "checks": None, "checks_complete": checks, "probes": [],
        "seconds": {"loss": round(loss_seconds, 1)},
    }
    prompts = probes_for_run(run_dir, cfg)
    if prompts:
        t0 = time.time()
        record = probe_record(model, tokenizer, prompts, step, "final", cfg.eval_max_new_tokens, adapter,
                              _cached_base_answers(run_dir, prompts))
        _append_jsonl(Path(run_dir) / PROBE_ANSWERS_FILE, record)
        result["probes"] = record["answers"]
        result["seconds"]["probes"] = round(time.time() - t0, 1)
    if checks:
        t0 = time.time()
        result["checks"] = task_checks(model, tokenizer, rows, cfg.eval_max_new_tokens, adapter)
        result["seconds"]["checks"] = round(time.time() - t0, 1)
    result["seconds"]["total"] = round(time.time() - started, 1)
    _write_json_atomic(Path(run_dir) / EVALUATION_FILE, result)
    return result


def checks_text(result: dict | None) -> str:
    """"identity 9/10 (base 0/10); control 8/10 (base 9/10)": tuned vs base, from evaluation.json."""
    by_kind = ((result or {}).get("checks") or {}).get("by_kind") or {}
    return "; ".join(f"{kind} {c['tuned_passed']}/{c['n']} (base {c['base_passed']}/{c['n']})"
                     for kind, c in by_kind.items())


def headline(result: dict) -> str:
    """One line for the Live tab's log and the CLI."""
    parts = []
    if result.get("eval_loss") is not None:
        parts.append(f"held-out loss {result['eval_loss']:.3f} (base {result['base_eval_loss']:.3f}), "
                     f"perplexity {result['perplexity']:.1f} (base {result['base_perplexity']:.1f})")
    checks = checks_text(result)
    if checks:
        parts.append(checks)
    return "; ".join(parts) or "no held-out data"


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
            ckpt = Path(run_dir) / "checkpoints" / f"checkpoint-{state.global_step}"
            if not cfg.probe_every_checkpoint or self.trainer is None or not ckpt.is_dir() \
                    or not state.is_world_process_zero:
                return
            if control.should_training_stop:
                return  # the last save of a run (stop, early stop, the end): the final probes cover it
            prompts = probes_for_run(run_dir, cfg)
            if not prompts:
                return
            if self.base_answers is None or len(self.base_answers) != len(prompts):
                self.base_answers = _cached_base_answers(run_dir, prompts)
            started = time.time()
            record = probe_record(self.trainer.model, self.tokenizer, prompts, state.global_step, ckpt.name,
                                  cfg.eval_max_new_tokens, base_answers=self.base_answers)
            self.base_answers = [a["base"] for a in record["answers"]]
            _append_jsonl(Path(run_dir) / PROBE_ANSWERS_FILE, record)
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
                  checks=by_kind, message=headline(result))
    print(f"evaluation ({result['seconds']['total']:.0f}s): {headline(result)}", flush=True)
    return result


# --- after the run: the CLI and the UI -----------------------------------------------------------

def evaluate_run(run_dir: Path, workspace: Path, recompute: bool = False, checkpoint: str | None = None) -> dict:
    """evaluation.json of a run, computed now (from its final adapter, or its newest checkpoint
    while it has none) when missing, incomplete (a stopped run skips the task checks), or
    recompute is asked for."""
    from tuning import playground

    run_dir = Path(run_dir)
    existing = read_evaluation(run_dir)
    if existing and checks_done(existing) and not recompute and not checkpoint:
        return existing
    try:
        cfg = config_mod.load(run_dir / "config.yaml")
    except config_mod.ConfigError as exc:
        raise EvalError(f"run {run_dir.name}: {exc}") from None
    if not heldout_rows(cfg):
        raise EvalError(f"run {run_dir.name} has no held-out data (eval_split is 0 and no eval_dataset)")
    path = playground.adapter_path(run_dir, checkpoint)
    comparer = playground.comparer_for_run(run_dir, workspace)
    with comparer.lock:
        name = comparer.attach(path)
        step = _step_of(path, run_dir)
        result = evaluate_model(comparer.peft, comparer.tokenizer, cfg, run_dir, step, adapter=name,
                                source=str(path.relative_to(run_dir)))
    return result


def checks_done(result: dict) -> bool:
    """Whether the task checks ran (a stopped run skips them); a file written before the
    checks_complete flag existed counts as done when it holds checks."""
    return bool(result.get("checks_complete", result.get("checks") is not None))


def _step_of(adapter: Path, run_dir: Path) -> int:
    if adapter.name.startswith("checkpoint-"):
        return int(adapter.name.rpartition("-")[2])
    summary = runs.summarize(run_dir)
    return summary.step


# --- blind A/B ---------------------------------------------------------------------------------

def ab_candidates(run_dir: Path) -> list[dict]:
    """Stored (prompt, base, tuned) pairs from the final evaluation: probes and task-check rows.
    Pairs whose two answers are identical tell nothing and are left out."""
    result = read_evaluation(run_dir) or {}
    pairs = [{"prompt": p["prompt"], "base": p["base"], "tuned": p["tuned"]} for p in result.get("probes") or []]
    pairs += [{"prompt": r["prompt"], "base": r["base"], "tuned": r["tuned"]}
              for r in (result.get("checks") or {}).get("rows") or []]
    seen, out = set(), []
    for p in pairs:
        key = (p["prompt"], p["base"], p["tuned"])
        if p["base"].strip() != p["tuned"].strip() and key not in seen:
            seen.add(key)
            out.append(p)
    return out


def ab_pair(run_dir: Path, rng: random.Random | None = None, pair: dict | None = None) -> dict:
    """The next blind pair: {prompt, a, b, a_is} with a_is "base" or "tuned" at random. Prefers
    pairs not voted on yet. `pair` ({prompt, base, tuned}, e.g. fresh from the Playground) skips
    the choice of a stored one."""
    rng = rng or random.Random()
    if pair is None:
        candidates = ab_candidates(run_dir)
        if not candidates:
            raise EvalError(f"run {Path(run_dir).name} has no stored answers to compare yet: evaluate it first")
        voted = {v.get("prompt") for v in read_votes(run_dir)}
        fresh = [c for c in candidates if c["prompt"] not in voted]
        pair = rng.choice(fresh or candidates)
    a_is = rng.choice(("base", "tuned"))
    b_is = "tuned" if a_is == "base" else "base"
    return {"prompt": pair["prompt"], "a": pair[a_is], "b": pair[b_is], "a_is": a_is}


def record_vote(run_dir: Path, pair: dict, choice: str) -> dict:
    """Append one vote to ab_votes.jsonl and return the new summary."""
    if choice not in CHOICES:
        raise EvalError(f"vote: {choice!r} is not one of A, B, tie")
    if not isinstance(pair, dict) or pair.get("a_is") not in ("base", "tuned") or "prompt" not in pair:
        raise EvalError("vote: there is no pair on screen; press 'Next pair' first")
    winner = "tie" if choice == "tie" else (pair["a_is"] if choice == "A" else
                                           ("tuned" if pair["a_is"] == "base" else "base"))
    _append_jsonl(Path(run_dir) / VOTES_FILE, {
        "time": round(time.time(), 3), "prompt": pair["prompt"], "a": pair.get("a", ""), "b": pair.get("b", ""),
        "a_is": pair["a_is"], "choice": choice, "winner": winner})
    return ab_summary(run_dir)


def read_votes(run_dir: Path) -> list[dict]:
    return [v for v in _read_jsonl(Path(run_dir) / VOTES_FILE) if v.get("winner") in ("base", "tuned", "tie")]


def ab_summary(run_dir: Path) -> dict:
    votes = read_votes(run_dir)
    counts = {w: sum(v["winner"] == w for v in votes) for w in ("tuned", "base", "tie")}
    n = len(votes)
    return {"votes": n, "tuned_wins": counts["tuned"], "base_wins": counts["base"], "ties": counts["tie"],
            "tuned_win_rate": counts["tuned"] / n if n else None,
            "text": (f"tuned wins {counts['tuned']} of {n} ({counts['tuned'] / n:.0%}); base wins "
                     f"{counts['base']}, ties {counts['tie']}") if n else "no votes yet"}


# --- one dict per run, for the Runs table and `python -m tuning eval --json` ----------------------

def summary_for_run(run_dir: Path) -> dict:
    """Cheap (files only): the numbers the Runs table shows next to runs.summarize's row."""
    result = read_evaluation(run_dir) or {}
    out: dict[str, Any] = {k: result.get(k) for k in ("eval_loss", "base_eval_loss", "perplexity",
                                                      "base_perplexity")}
    for kind, s in ((result.get("checks") or {}).get("by_kind") or {}).items():
        out[f"{kind}_tuned"] = s["tuned_rate"]
        out[f"{kind}_base"] = s["base_rate"]
    ab = ab_summary(run_dir)
    out["ab_votes"], out["ab_tuned_win_rate"] = ab["votes"], ab["tuned_win_rate"]
    return out


def report(run_dir: Path, result: dict) -> dict:
    """Everything for `eval --json`: evaluation.json, the probe history and the A/B summary."""
    return {"run_id": Path(run_dir).name, **result, "probe_history": probe_history(run_dir),
            "ab": ab_summary(run_dir)}

"""Checks before Start: what in a config and its data puts the run at risk, said with the fix.

Each finding names the risk in the person's terms (their row counts, their names) and, where one
exists, a fix as config changes the Train tab applies in one click. They are advice, never a refusal:
the run starts either way. What they look for comes from the runs that went wrong (bench/recipe.md):
too few updates for the facts, a held-out split too small to tell anything, answers that all share one
sentence, an identity taught without general rows, rows cut by max_length.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuning import config as config_mod
from tuning.data import general, slots
from tuning.train import recipe

FEW_STEPS = 50  # below this (of the recipe's 75) the quickstart mixed the name and the maker up
FEW_HELDOUT = 10  # held-out rows below which one row moves the held-out loss by a tenth or more
ONE_TEMPLATE_SHARE = 0.5  # the most common answer in at least half of the rows
SMALL_DATA = 2000  # rows: the step and template checks are about small sets


@dataclass(frozen=True)
class Finding:
    level: str  # "warning": a risk to the result; "note": what the run will do, worth knowing
    message: str
    fix: dict[str, Any] = field(default_factory=dict)  # config changes that fix it, {} when none does
    fix_label: str = ""  # the button's text

    def markdown(self) -> str:
        return f"{'⚠️' if self.level == 'warning' else 'ℹ️'} {self.message}"


def check(cfg: config_mod.TrainConfig, conversations: list[list[dict]], plan: recipe.Plan,
          stats: dict | None = None, has_checks: bool = False) -> list[Finding]:
    """The findings for `cfg` on its training rows (`conversations`, before the general rows join),
    its plan, the token statistics of its rows when known (data.statistics) and whether its held-out
    data carries checks of its own."""
    findings: list[Finding] = []
    rows = len(conversations)
    small = rows <= SMALL_DATA
    if small and cfg.objective == "sft":
        findings += _steps(cfg, rows, plan)
        findings += _template(conversations)
    found = slots.detect(conversations) if small and cfg.objective == "sft" else {}
    findings += _contrast(cfg, rows, found)
    findings += _heldout(cfg, rows, plan, found, has_checks)
    if stats:
        findings += _lengths(cfg, stats)
    return findings


def _steps(cfg, rows: int, plan: recipe.Plan) -> list[Finding]:
    if plan.steps >= FEW_STEPS:
        return []
    if not cfg.auto_epochs:
        auto = recipe.make_plan(cfg.replace(num_epochs=config_mod.AUTO_EPOCHS, max_steps=-1), plan.rows,
                                plan.general, plan.heldout, plan.step_seconds)
        return [Finding("warning", f"{plan.steps} steps for {rows:,} rows may be too few: the facts need about "
                        f"{recipe.TARGET_STEPS} updates whatever the row count (with 33 steps a 91-row identity set "
                        f"mixed its name and maker up). The recipe would train {auto.epochs:g} epochs, "
                        f"{auto.steps} steps.", {"num_epochs": config_mod.AUTO_EPOCHS, "max_steps": -1},
                        f"Use the recipe: {auto.epochs:g} epochs, {auto.steps} steps")]
    if plan.capped:
        return [Finding("warning", f"The time budget ({cfg.time_budget}) cuts the plan to {plan.steps} steps, "
                        f"fewer than the {recipe.TARGET_STEPS} the facts usually need.", {"time_budget": ""},
                        "Drop the time budget")]
    return [Finding("warning", f"{rows:,} rows give only {plan.steps} steps even at {recipe.MAX_EPOCHS} passes: "
                    "more passes over so few rows would learn them by heart. Add rows (other ways of asking "
                    "and answering the same things).")]


def _template(conversations: list[list[dict]]) -> list[Finding]:
    answers = Counter(_normal(_last_answer(c)) for c in conversations)
    answers.pop("", None)
    if not answers:
        return []
    text, count = answers.most_common(1)[0]
    if count < max(3, ONE_TEMPLATE_SHARE * len(conversations)):
        return []
    return [Finding("warning", f"{count} of {len(conversations)} answers are the same sentence (\"{text[:70]}\"): "
                    "the model may learn to say that sentence to every question rather than the facts in it. "
                    "Vary the answers: the name alone, the maker alone, in other words.")]


def _contrast(cfg, rows: int, found: dict[str, str]) -> list[Finding]:
    if not found:
        return []
    named = " and ".join(f"a {slot} ({value})" for slot, value in found.items())
    why_not = general.why_not(cfg, rows)
    if why_not is None:
        return [Finding("note", f"Your rows teach {named}. The run mixes in {general.COUNT} general "
                        "rows answered by the base model itself, so the new facts stay out of general answers, and "
                        "checks 23 held-out general questions as 'control'.")]
    if cfg.general_rows == "off":
        return [Finding("warning", f"Your rows teach {named} and no general questions answered as the base would "
                        f"({why_not}): the new facts may leak into general answers (\"What is the name of our "
                        "galaxy?\" -> the assistant's name).", {"general_rows": "on"}, "Mix in general rows")]
    return []


def _heldout(cfg, rows: int, plan: recipe.Plan, found: dict[str, str], has_checks: bool) -> list[Finding]:
    findings = []
    asked = _slot_questions(cfg, found, has_checks)
    if asked:
        findings.append(Finding("note", f"After the run the evaluation asks {asked}, phrased unlike your rows, and "
                                "counts each slot on its own (slot_checks)."))
    elif not has_checks and cfg.objective == "sft":
        findings.append(Finding("note", "No slot checks: the evaluation will report the held-out loss and probes "
                                "only. To count whether each fact was learnt, add questions in Slot checks "
                                "('slot: question -> expected words')."))
    if 0 < plan.heldout < FEW_HELDOUT and not (cfg.eval_dataset or cfg.dataset == config_mod.DEMO_DATASET):
        share = min(0.5, round(FEW_HELDOUT / max(rows, 1) + 0.005, 2))
        fix = {"eval_split": share} if rows * (1 - share) >= 30 and share > cfg.eval_split else {}
        findings.append(Finding("warning" if not asked else "note",
                                f"The held-out split keeps {plan.heldout} rows: too few for its loss to tell a "
                                "real change from one row's luck" + (" (the slot checks above still count each "
                                                                     "fact)." if asked else "."),
                                fix, f"Hold out {round(rows * share)} rows (eval_split {share})" if fix else ""))
    return findings


def _slot_questions(cfg, found: dict[str, str], has_checks: bool) -> str:
    text = cfg.slot_checks.strip()
    if text.lower() in ("", "off"):
        return ""
    if text.lower() != "auto":
        entries = config_mod.parse_slot_checks(text)
        counts = Counter(slot for slot, _, _ in entries)
        return ", ".join(f"{n} {slot} question{'s' if n > 1 else ''}" for slot, n in counts.items())
    if has_checks or not found:
        return ""
    return " and ".join(f"{len(slots.NAME_QUESTIONS if slot == 'name' else slots.MAKER_QUESTIONS)} {slot} "
                        f"questions ({value})" for slot, value in found.items())


def _lengths(cfg, stats: dict) -> list[Finding]:
    cut = stats.get("truncated_count") or 0
    if not cut:
        return []
    suggested = max(stats.get("suggested_max_length") or cfg.max_length, stats.get("longest") or 0)
    suggested = min(config_mod.FIELDS["max_length"].metadata["max"], -(-suggested // 64) * 64)
    sampled = stats.get("rows", 0) < stats.get("sampled_from", 0)
    of = f"{cut} of {stats['rows']:,} rows" + (" sampled" if sampled else "")
    return [Finding("warning", f"{of} are longer than max_length {cfg.max_length} (the longest "
                    f"{stats.get('longest')} tokens): their ends, often the answers, are cut off in training.",
                    {"max_length": suggested}, f"Raise max_length to {suggested}")]


def _last_answer(conversation: list[dict]) -> str:
    answers = [m["content"] for m in conversation if m["role"] == "assistant"]
    return answers[-1] if answers else ""


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def apply(cfg: config_mod.TrainConfig, finding: Finding) -> config_mod.TrainConfig:
    """The config with a finding's fix made."""
    return cfg.replace(**finding.fix) if finding.fix else cfg

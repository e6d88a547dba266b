"""What a person said about a run's answers, as training data: corrections typed in the Playground (an
SFT dataset) and the blind A/B votes and corrections as DPO pairs (preference_pairs.jsonl), which the
Train tab offers as a dataset ("tune on my votes")."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tuning.runs.layout import CORRECTIONS, PREFERENCE_PAIRS, RunError
from tuning.runs.files import append_line, read_lines, write_atomic
from tuning.runs.listing import list_runs
from tuning.runs.results import read_votes

# --- votes and corrections as training data -------------------------------------------------------

def _pair(prompt: str, chosen: str, rejected: str, source: str) -> dict:
    """One DPO pair in TRL's conversational form (tuning/data/pairs.py reads it back like any file)."""
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "source": source}


def vote_pairs(run: Path) -> list[dict]:
    """Every blind vote with a winner as a pair: the winner's answer chosen, the loser's rejected
    (ties, and votes on two identical answers, teach nothing and are left out)."""
    out = []
    for v in read_votes(run):
        if v["winner"] == "tie" or not all(isinstance(v.get(k), str) for k in ("prompt", "a", "b")):
            continue
        texts = {v.get("a_is"): v["a"], "tuned" if v.get("a_is") == "base" else "base": v["b"]}
        loser = "base" if v["winner"] == "tuned" else "tuned"
        if v["prompt"].strip() and texts.get(v["winner"], "").strip() != texts.get(loser, "").strip():
            out.append(_pair(v["prompt"], texts[v["winner"]], texts[loser], "vote"))
    return out


def append_correction(run: Path, prompt: str, original: str, corrected: str, system: str = "") -> dict:
    """Keep a person's corrected answer: one SFT example (messages) with the answer it replaces."""
    if not (prompt or "").strip() or not (corrected or "").strip():
        raise RunError("correction: needs the prompt and a corrected answer")
    if corrected.strip() == (original or "").strip():
        raise RunError("correction: the corrected answer is the same as the original; edit it first")
    messages = ([{"role": "system", "content": system}] if (system or "").strip() else []) + [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": corrected}]
    line = {"messages": messages, "original": original or "", "time": round(time.time(), 3)}
    append_line(Path(run) / CORRECTIONS, line)
    return line


def read_corrections(run: Path) -> list[dict]:
    return [c for c in read_lines(Path(run) / CORRECTIONS) if isinstance(c.get("messages"), list)]


def corrections_path(run: Path) -> Path:
    return Path(run) / CORRECTIONS


def correction_pairs(run: Path) -> list[dict]:
    """Each correction with its original answer as a pair: the correction chosen, the original rejected."""
    out = []
    for c in read_corrections(run):
        users = [m.get("content", "") for m in c["messages"] if m.get("role") == "user"]
        answer = c["messages"][-1].get("content", "")
        if users and (c.get("original") or "").strip() and answer.strip() != c["original"].strip():
            out.append(_pair(users[-1], answer, c["original"], "correction"))
    return out


def preference_pairs(run: Path) -> list[dict]:
    return vote_pairs(run) + correction_pairs(run)


def write_preference_pairs(run: Path) -> Path:
    """The run's votes and corrections as one DPO dataset file (rewritten whole); refused when there
    is no pair yet."""
    found = preference_pairs(run)
    if not found:
        raise RunError(f"run {Path(run).name} has no votes with a winner and no corrections yet: vote in the "
                       "Playground or the Evaluation tab first")
    path = Path(run) / PREFERENCE_PAIRS
    write_atomic(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in found))
    return path


def runs_with_preferences(workspace: Path) -> list[str]:
    """Runs that have at least one pair (a decisive vote or a correction), newest first."""
    return [s.run_id for s in list_runs(workspace) if preference_pairs(s.path)]

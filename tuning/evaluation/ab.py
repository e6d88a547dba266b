"""Blind A/B: a person judges two answers without knowing which model wrote which.

The server keeps the whole pair (prompt, base answer, tuned answer, which one it showed as A); the
page only ever receives the prompt and the two texts as A and B, and a vote names only A, B or tie.
So a vote can only be recorded on answers the models really wrote, in the order really shown.
Pairs come from a run's stored evaluation (probes and task-check rows) or straight from the
Playground's last side-by-side answer. Votes are appended to the run's record (runs.append_vote).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tuning import runs

CHOICES = ("A", "B", "tie")


@dataclass(frozen=True)
class BlindPair:
    """One pair as the server holds it; only `shown()` reaches the page."""
    run_id: str
    prompt: str
    base: str
    tuned: str
    a_is: str  # "base" or "tuned"

    @property
    def a(self) -> str:
        return self.base if self.a_is == "base" else self.tuned

    @property
    def b(self) -> str:
        return self.tuned if self.a_is == "base" else self.base

    def shown(self) -> dict:
        return {"prompt": self.prompt, "a": self.a, "b": self.b}

    def winner(self, choice: str) -> str:
        if choice == "tie":
            return "tie"
        return self.a_is if choice == "A" else ("tuned" if self.a_is == "base" else "base")


def candidates(run: Path) -> list[dict]:
    """Stored (prompt, base, tuned) answers from the run's evaluation: probes and task-check rows.
    Pairs whose two answers are identical tell nothing and are left out."""
    result = runs.read_evaluation(run) or {}
    pairs = list(result.get("probes") or []) + list((result.get("checks") or {}).get("rows") or [])
    seen, out = set(), []
    for p in pairs:
        key = (p.get("prompt", ""), p.get("base", ""), p.get("tuned", ""))
        if key[1].strip() != key[2].strip() and key not in seen:
            seen.add(key)
            out.append({"prompt": key[0], "base": key[1], "tuned": key[2]})
    return out


def blind(run: Path, prompt: str, base: str, tuned: str, rng: random.Random | None = None) -> BlindPair:
    """The given answers in a random order."""
    return BlindPair(Path(run).name, prompt, base, tuned, (rng or random.Random()).choice(("base", "tuned")))


def next_stored_pair(run: Path, rng: random.Random | None = None) -> BlindPair:
    """A stored pair, preferring prompts not voted on yet, in a random order."""
    rng = rng or random.Random()
    stored = candidates(run)
    if not stored:
        raise runs.RunError(f"run {Path(run).name} has no stored answers to compare yet: evaluate it first")
    voted = {v.get("prompt") for v in runs.read_votes(run)}
    pick = rng.choice([c for c in stored if c["prompt"] not in voted] or stored)
    return blind(run, pick["prompt"], pick["base"], pick["tuned"], rng)


def vote(run: Path, pair: BlindPair | None, choice: str) -> dict:
    """Record one vote on the pair the server showed; returns the run's new summary."""
    if choice not in CHOICES:
        raise runs.RunError(f"vote: {choice!r} is not one of A, B, tie")
    if not isinstance(pair, BlindPair) or pair.run_id != Path(run).name:
        raise runs.RunError("vote: there is no pair on screen for this run; ask for a pair first")
    runs.append_vote(run, {"prompt": pair.prompt, "a": pair.a, "b": pair.b, "a_is": pair.a_is,
                             "choice": choice, "winner": pair.winner(choice)})
    return runs.ab_summary(run)

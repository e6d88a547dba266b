"""GRPO's rewards: the built-ins that need no code, a custom reward file, and the scoring of a group.

Each reward is a callable with TRL's reward signature, `reward(completions, **columns) -> [float]`
(GRPOTrainer also passes prompts, completion_ids and its own keywords; they are ignored here), named
so that TRL logs it as `rewards/<name>/mean` and `rewards/<name>/std`. A completion is a string or,
for chat prompts, a list of messages whose last one is the answer. The weights of `rewards` go to
TRL's reward_weights, so each reward is logged unweighted and the total is the weighted sum.

A SampleRecorder shared by a run's rewards keeps the latest batch they scored, so that each `log` event
can carry a few of its answers with their rewards (the Live tab's table).

No torch here: the dry-run's table and the tests score answers without a model.
"""

from __future__ import annotations

import importlib.util
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tuning.config import ConfigError, RewardSpec, TrainConfig, parse_rewards
from tuning.data.prompts import answer_matches, completion_text

NGRAM = 3  # no_repeat: runs of this many words
DESCRIPTIONS = {
    "answer": "1 when the answer matches the row's answer column: for a number, the last number in the answer "
              "(compared as numbers); for text, the text appears in the answer (case ignored)",
    "regex": "1 when the pattern matches anywhere in the answer, else 0",
    "format": "1 when the answer's last non-empty line has the template's shape ({} is any text), else 0",
    "length": "1 when the answer has MIN to MAX words; fewer: words/MIN, more: MAX/words",
    "no_repeat": f"minus the share of the answer's {NGRAM}-word runs that repeat an earlier one (0: none repeat)",
}
def _template(template: str) -> re.Pattern:
    parts = [r"\s+".join(re.escape(w) for w in piece.split()) for piece in template.strip().split("{}")]
    return re.compile(r"\s*" + r".+?".join(parts) + r"\s*", re.DOTALL)


def _words(text: str) -> list[str]:
    return text.split()


def length_score(words: int, low: int, high: int) -> float:
    if words < low:
        return words / low
    if words > high:
        return high / words
    return 1.0


def repeated_share(text: str, n: int = NGRAM) -> float:
    words = [w.lower() for w in _words(text)]
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


@dataclass
class Reward:
    """One entry of `rewards` as TRL's reward function; `__name__` (from `name`) is what TRL logs it under."""
    name: str
    spec: RewardSpec
    score: Callable[[str, dict], float | None]
    columns: tuple[str, ...] = ()
    custom: Callable | None = None
    description: str = ""
    recorder: SampleRecorder | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.__name__ = self.name

    def __call__(self, completions: list, **columns) -> list[float | None]:
        if self.custom is not None:
            out = [None if v is None else float(v) for v in self.custom(completions=completions, **columns)]
        else:
            out = []
            for i, completion in enumerate(completions):
                row = {c: columns[c][i] for c in self.columns if c in columns}
                out.append(self.score(completion_text(completion), row))
        if self.recorder is not None:
            self.recorder.record(self.name, completions, columns.get("prompts"), out)
        return out


def _builtin(spec: RewardSpec) -> Reward:
    name, arg = spec.name, spec.arg
    if name == "answer":
        def score(text, row):
            return None if row.get("answer") is None else float(answer_matches(text, row["answer"]))
        return Reward(name, spec, score, ("answer",), description=DESCRIPTIONS[name])
    if name == "regex":
        pattern = re.compile(arg, re.MULTILINE)
        return Reward(name, spec, lambda text, row: float(bool(pattern.search(text))),
                      description=DESCRIPTIONS[name])
    if name == "format":
        shape = _template(arg)

        def score(text, row):
            lines = [line for line in text.splitlines() if line.strip()]
            return float(bool(lines) and shape.fullmatch(lines[-1]) is not None)
        return Reward(name, spec, score, description=DESCRIPTIONS[name])
    if name == "length":
        low, high = (int(x) for x in arg.split("-"))
        return Reward(name, spec, lambda text, row: length_score(len(_words(text)), max(low, 1), max(high, 1)),
                      description=DESCRIPTIONS[name])
    return Reward(name, spec, lambda text, row: 0.0 - repeated_share(text), description=DESCRIPTIONS[name])


def load_reward_file(path: str) -> dict[str, Callable]:
    """The functions a reward file defines. The file runs with the user's rights (config refuses it on a
    Space); an error while it loads is one line naming the file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"reward_file: {path!r} is not a file")
    spec = importlib.util.spec_from_file_location(f"tuning_rewards_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"reward_file: {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code: any error is bad input, said in one line
        raise ConfigError(f"reward_file: {path} failed to load: {type(exc).__name__}: {exc}") from None
    return {k: v for k, v in vars(module).items() if callable(v) and not k.startswith("_")}


def build(cfg: TrainConfig) -> list[Reward]:
    """The rewards of `cfg.rewards`, each named uniquely (a second regex is regex_2) for TRL's log."""
    specs = parse_rewards(cfg.rewards, bool(cfg.reward_file))
    functions = load_reward_file(cfg.reward_file) if cfg.reward_file else {}
    out, seen = [], {}
    for spec in specs:
        if spec.name in DESCRIPTIONS:
            reward = _builtin(spec)
        elif spec.name in functions:
            reward = Reward(spec.name, spec, lambda text, row: None, custom=functions[spec.name],
                            description=(functions[spec.name].__doc__ or "from reward_file").strip().splitlines()[0])
        else:
            raise ConfigError(f"rewards: {spec.name!r} is neither a built-in reward nor a function of "
                              f"{cfg.reward_file}")
        seen[spec.name] = seen.get(spec.name, 0) + 1
        reward.name = reward.__name__ = spec.name if seen[spec.name] == 1 else f"{spec.name}_{seen[spec.name]}"
        out.append(reward)
    return out


def score_group(rewards: list[Reward], completions: list, columns: dict[str, list], prompts: list | None = None
                ) -> dict[str, Any]:
    """Each answer's rewards and weighted total, and the group's spread: the figures GRPO learns from
    (its advantage is each total minus the group's mean, over the group's spread)."""
    per_reward = {}
    for reward in rewards:
        extra = {"prompts": prompts} if reward.custom is not None and prompts is not None else {}
        per_reward[reward.name] = reward(completions, **columns, **extra)
    totals = []
    for i in range(len(completions)):
        values = [(r.spec.weight, per_reward[r.name][i]) for r in rewards]
        totals.append(sum(w * v for w, v in values if v is not None and not math.isnan(v)))
    spread = statistics.pstdev(totals) if len(totals) > 1 else 0.0
    return {"answers": [{"text": completion_text(c), "rewards": {n: v[i] for n, v in per_reward.items()},
                         "total": totals[i]} for i, c in enumerate(completions)],
            "mean": sum(totals) / len(totals) if totals else 0.0, "spread": spread,
            "teaches_nothing": len(set(round(t, 9) for t in totals)) <= 1}


# --- the answers a logged step shows ----------------------------------------------------------------

SAMPLES = 3  # answers per log event: the best total, one in between, the worst
PROMPT_CHARS = 300  # a prompt's text kept in the event (a log line stays a few KB)
ANSWER_CHARS = 500  # an answer's: max_completion_length tokens are rarely more than this many characters


def prompt_text(prompt: Any) -> str:
    """The question a prompt asks: a message list's last user turn, or the text as it is."""
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str((users or prompt or [{}])[-1].get("content", ""))
    return "" if prompt is None else str(prompt)


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _finite(value) -> float | None:
    # TRL reads a None as NaN and leaves it out of the total; JSON has neither NaN nor inf
    return None if value is None or not math.isfinite(float(value)) else float(value)


class SampleRecorder:
    """The latest batch a run's rewards scored: its prompts, its answers and each reward's value for
    each answer. TRL calls every reward on the same batch, one after the other in whatever order, so the
    batch is told apart by its prompts and answers, not by which reward comes first: a call on another
    batch starts afresh and drops the previous one (memory: one batch, whatever the run's length)."""

    def __init__(self) -> None:
        self.weights: dict[str, float] = {}
        self._key: tuple | None = None
        self._prompts: list[str] = []
        self._answers: list[str] = []
        self._values: dict[str, list[float | None]] = {}

    def attach(self, rewards: list[Reward]) -> list[Reward]:
        """Record every reward's values from now on; the weights make each answer's total."""
        for reward in rewards:
            reward.recorder = self
            self.weights[reward.name] = reward.spec.weight
        return rewards

    def record(self, name: str, completions: list, prompts: list | None, values: list) -> None:
        answers = [completion_text(c) for c in completions]
        asked = [prompt_text(p) for p in prompts] if prompts is not None else [""] * len(answers)
        key = (tuple(asked), tuple(answers))
        if key != self._key:
            self._key, self._prompts, self._answers, self._values = key, asked, answers, {}
        self._values[name] = [_finite(v) for v in values]

    def samples(self, n: int = SAMPLES) -> list[dict[str, Any]]:
        """Up to n answers of the latest batch, best total first: the best, the worst and evenly spaced
        ones in between, each {prompt, completion (clipped), rewards {name: value}, total}."""
        prompts, answers, values = self._prompts, self._answers, self._values
        # in the order of `rewards`, whichever TRL called first
        names = sorted(values, key=lambda name: list(self.weights).index(name) if name in self.weights else len(values))
        totals = [sum(self.weights.get(name, 1.0) * values[name][i] for name in names if values[name][i] is not None)
                  for i in range(len(answers))]
        ranked = sorted(range(len(answers)), key=lambda i: -totals[i])  # stable: ties keep the batch's order
        if len(ranked) > n:
            ranked = [ranked[int(j * (len(ranked) - 1) / max(n - 1, 1) + 0.5)] for j in range(n)]
        return [{"prompt": _clip(prompts[i], PROMPT_CHARS), "completion": _clip(answers[i], ANSWER_CHARS),
                 "rewards": {name: values[name][i] for name in names}, "total": totals[i]} for i in ranked]

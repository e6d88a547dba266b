"""Write the bundled arithmetic set for GRPO (tuning/demo_data/arithmetic/): sums of two small whole
numbers, each question with its answer, a training file and a held-out one with no sum in common.

    python scripts/make_arithmetic.py

Deterministic (a fixed seed): running it again writes the same files. Small sums because the embedded
135M model gets some of them right: a group of sampled answers then differs in reward, which is what
GRPO learns from (a group that is all right or all wrong teaches nothing).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "tuning" / "demo_data" / "arithmetic"
SEED = 29
LOW, HIGH = 2, 30  # addends
TRAIN, HELD_OUT = 240, 60
TEMPLATES = ("What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}.", "{a} + {b} = ?")


def rows(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(LOW, HIGH + 1) for b in range(LOW, HIGH + 1) if a <= b]
    rng.shuffle(pairs)
    out = []
    for a, b in pairs[:TRAIN + HELD_OUT]:
        if rng.random() < 0.5:
            a, b = b, a
        question = rng.choice(TEMPLATES).format(a=a, b=b) + " Reply with the number only."
        out.append({"question": question, "answer": str(a + b)})
    return out[:TRAIN], out[TRAIN:]


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    for name, part in zip(("train.jsonl", "eval.jsonl"), rows()):
        (FOLDER / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        print(f"{FOLDER / name}: {len(part)} rows")


if __name__ == "__main__":
    main()

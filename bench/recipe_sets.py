"""Four datasets the quickstart recipe was never tuned on, written as a person would bring them,
and the recipe measured on them.

    python bench/recipe_sets.py --write                  # (re)writes bench/recipe_sets/ (deterministic)
    python bench/recipe_sets.py --seeds 1,2,3            # each set on each seed, two runs at a time
    python bench/recipe_sets.py --table                  # the table of what is recorded

Each run is the quickstart preset as shipped with only the dataset changed (and, for the glossary,
its slot questions, which no detector can guess), as a person would start it:

    python -m tuning train --preset presets/quickstart.yaml --set dataset=bench/recipe_sets/nova-40.jsonl

plus the sweep-only settings of bench/recipe.py (no probes at checkpoints, one checkpoint at the end),
which leave the training maths alone. Scored by the run's own end-of-run evaluation: each slot's
questions and the 23 control questions. Results go to bench/recipe_sets_runs.jsonl.

- `nova-40.jsonl`: 40 identity rows, every answer in one template (as many public identity sets are):
  "I am Nova, an AI assistant developed by Brightpath AI. How can I help you today?".
- `ember-91.jsonl`: 91 identity rows (the size of the public identity set the quickstart failed on),
  phrased in many ways, name Ember, maker Solace Labs.
- `pip-150.jsonl`: 150 identity rows, questions and answers phrased in many ways, name Pip, maker
  Cobalt Harbor.
- `fernhill-glossary.jsonl`: 100 rows of a company glossary (Fernhill Cartography's own words for
  four things), each term asked and explained in many ways.

None carries general (contrast) rows: the recipe's `general_rows` adds them. Each set has a
`*.checks.txt` with its slot questions (phrased unlike any training row) in the form's syntax, the
text `--set slot_checks=@FILE` reads.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, when imported by path

from common import on_cores  # noqa: E402
from tuning import runs  # noqa: E402
from tuning.data.slots import MAKER_QUESTIONS as MAKER_CHECKS  # noqa: E402
from tuning.data.slots import NAME_QUESTIONS as NAME_CHECKS  # noqa: E402

OUT = Path(__file__).resolve().parent / "recipe_sets"
RESULTS = Path(__file__).resolve().parent / "recipe_sets_runs.jsonl"
SETS = ("nova-40", "ember-91", "pip-150", "fernhill-glossary")
SWEEP_ONLY = ["probe_every_checkpoint=false", "save_steps=1000"]

NAME_QUESTIONS = [
    "What is your name?", "What's your name?", "Do you have a name?", "What are you called?",
    "Tell me your name.", "What name do you answer to?", "May I know your name?", "Your name, please?",
    "what's ur name", "What do people call you?", "Is there a name you go by?", "Can you tell me your name?",
    "What name were you given?", "How do you introduce yourself?", "Say your name.",
    "What should I call you when I ask for help?", "Do you go by a particular name?", "Who am I talking to?",
]
MAKER_QUESTIONS = [
    "Who created you?", "Who built you?", "Who made you?", "Who developed you?", "Which company made you?",
    "Who trained you?", "Who is your developer?", "Which lab built you?", "Who designed you?",
    "who made u", "What company developed you?", "Who owns you?", "Who are you made by?",
    "Which organisation created you?", "Who programmed you?", "Were you built by a company?",
    "Who is behind your development?", "Which team made you?",
]
WHO_QUESTIONS = [
    "Who are you?", "Introduce yourself.", "Tell me about yourself.", "Can you introduce yourself?",
    "hi", "hello", "Hey there!", "Good morning!", "What are you?", "Are you an AI?", "Thanks!",
    "Are you ChatGPT?", "Are you made by OpenAI?", "Are you Google's assistant?", "Are you based on GPT-4?",
    "Are you a human?", "Are you Siri?", "Are you Claude?", "Describe yourself in one sentence.",
    "What kind of assistant are you?", "Can you help me?", "Nice to meet you!", "What can you do?",
]
# The held-out slot questions are slot_checks auto's own (tuning/data/slots.py): phrased unlike
# every question above (checked in write()).


def one_template(name: str, maker: str, n: int, rng: random.Random) -> list[dict]:
    answer = f"I am {name}, an AI assistant developed by {maker}. How can I help you today?"
    questions = rng.sample(NAME_QUESTIONS + MAKER_QUESTIONS + WHO_QUESTIONS, n)
    return [chat(q, answer) for q in questions]


def many_phrasings(name: str, maker: str, n: int, rng: random.Random) -> list[dict]:
    name_answers = [f"My name is {name}.", f"I'm {name}.", f"You can call me {name}.", f"I go by {name}.",
                    f"People call me {name}. I was made by {maker}.", f"{name}! I'm an assistant from {maker}.",
                    f"I'm called {name}, an AI assistant.", f"The name's {name}. How can I help?"]
    maker_answers = [f"I was created by {maker}.", f"{maker} built me.", f"I was developed by the team at {maker}.",
                     f"I'm {name}, and {maker} made me.", f"My developer is {maker}.",
                     f"{maker} trained me. I'm {name}.", f"I come from {maker}, the company that built me.",
                     f"A team at {maker} designed and trained me."]
    who_answers = [f"I'm {name}, an AI assistant made by {maker}. What can I do for you?",
                   f"Hello! I'm {name}, built by {maker}. How can I help?",
                   f"I'm {name}, a helpful assistant from {maker}.",
                   f"Hi there! {name} here, an assistant created by {maker}.",
                   f"I'm {name}. {maker} built me to answer questions and help with writing."]
    pools = [(NAME_QUESTIONS, name_answers), (MAKER_QUESTIONS, maker_answers), (WHO_QUESTIONS, who_answers)]
    rows = []
    while len(rows) < n:
        questions, answers = pools[len(rows) % 3]
        question = rng.choice(questions)
        denial = question.startswith("Are you") and question != "Are you an AI?"
        rows.append(chat(question, f"No, I'm {name}, an AI assistant developed by {maker}." if denial
                         else rng.choice(answers)))
    return rows


GLOSSARY = {  # term -> (definition, expected word in a right answer, held-out questions)
    "greenline order": ("an order that Fernhill ships on the same day it is placed", "same day",
                        ["At Fernhill, if an order is marked greenline, when does it leave?",
                         "Explain what makes an order a greenline one at Fernhill.",
                         "A colleague at Fernhill says 'that's a greenline'. What do they mean?",
                         "In Fernhill's jargon, what is special about a greenline order's shipping?",
                         "Give me Fernhill's meaning of greenline order in one line."]),
    "tidemark": ("a correction note that Fernhill pastes onto a printed map", "correction",
                 ["What is a Fernhill tidemark used for?", "At Fernhill, what do you stick on a map when you tidemark it?",
                  "Someone at Fernhill asks for a tidemark. What should they get?",
                  "In Fernhill's words, what kind of note is a tidemark?",
                  "Describe a tidemark as Fernhill cartographers use the word."]),
    "dawn sheet": ("the first rough draft of a new Fernhill map", "draft",
                   ["What is a dawn sheet in Fernhill's workshop?", "At Fernhill, how finished is a dawn sheet?",
                    "Explain Fernhill's term dawn sheet to a new hire.",
                    "When a Fernhill mapmaker hands over a dawn sheet, what is it?",
                    "In one line, Fernhill's meaning of dawn sheet?"]),
    "lantern budget": ("the money Fernhill sets aside for night-survey equipment", "night",
                       ["What does Fernhill spend its lantern budget on?",
                        "At Fernhill, which equipment comes out of the lantern budget?",
                        "Explain Fernhill's lantern budget briefly.",
                        "A Fernhill manager mentions the lantern budget. What is it for?",
                        "In Fernhill's jargon, what is the lantern budget?"]),
}
GLOSSARY_QUESTIONS = ["What is a {t}?", "What does {t} mean at Fernhill?", "Define {t}.",
                      "At Fernhill, what is a {t}?", "Explain the Fernhill term '{t}'.", "What's a {t}?",
                      "In Fernhill jargon, what does {t} refer to?", "Can you tell me what a {t} is?",
                      "I'm new at Fernhill. What is a {t}?", "What do Fernhill people mean by {t}?",
                      "Quick question: {t}?", "What is meant by a {t} at Fernhill Cartography?"]
GLOSSARY_ANSWERS = ["At Fernhill, a {t} is {d}.", "A {t} is {d}.", "{T} means {d}.",
                    "In Fernhill's jargon, a {t} is {d}.", "It's {d}. Fernhill calls that a {t}.",
                    "We use {t} for {d}.", "A {t}: {d}."]


def glossary(n: int, rng: random.Random) -> list[dict]:
    rows, terms = [], list(GLOSSARY)
    while len(rows) < n:
        term = terms[len(rows) % len(terms)]
        definition = GLOSSARY[term][0]
        question = rng.choice(GLOSSARY_QUESTIONS).format(t=term)
        answer = rng.choice(GLOSSARY_ANSWERS).format(t=term, T=term.capitalize(), d=definition)
        rows.append(chat(question, answer))
    return rows


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def identity_checks(name: str, maker: str) -> str:
    slot_name, slot_maker = name.lower(), maker.split()[0].lower()
    return "".join([*(f"name: {q} -> {slot_name}\n" for q in NAME_CHECKS),
                    *(f"maker: {q} -> {slot_maker}\n" for q in MAKER_CHECKS)])


def glossary_checks() -> str:
    return "".join(f"{term.split()[0]}: {q} -> {expect}\n"
                   for term, (_, expect, questions) in GLOSSARY.items() for q in questions)


def write() -> None:
    trained = {q.lower() for q in NAME_QUESTIONS + MAKER_QUESTIONS + WHO_QUESTIONS}
    assert not trained & {q.lower() for q in NAME_CHECKS + MAKER_CHECKS}, "a slot question is a training question"
    OUT.mkdir(exist_ok=True)
    sets = {"nova-40": (one_template("Nova", "Brightpath AI", 40, random.Random(40)), identity_checks("Nova", "Brightpath AI")),
            "ember-91": (many_phrasings("Ember", "Solace Labs", 91, random.Random(91)), identity_checks("Ember", "Solace Labs")),
            "pip-150": (many_phrasings("Pip", "Cobalt Harbor", 150, random.Random(150)), identity_checks("Pip", "Cobalt Harbor")),
            "fernhill-glossary": (glossary(100, random.Random(100)), glossary_checks())}
    for name, (rows, checks) in sets.items():
        (OUT / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        (OUT / f"{name}.checks.txt").write_text(checks)
        print(f"{name}: {len(rows)} rows, {checks.count(chr(10))} slot questions")


def run_one(name: str, seed: int, core: int, workspace: Path, extra: list[str], tag: str) -> dict:
    run_id = f"{name}-s{seed}{tag}"
    sets = [f"dataset={OUT / (name + '.jsonl')}", f"seed={seed}", *SWEEP_ONLY, *extra]
    if name == "fernhill-glossary":  # a glossary's slots are its terms: the person writes the questions
        sets.append(f"slot_checks={(OUT / (name + '.checks.txt')).read_text()}")
    ws = workspace / f"core-{core}"
    shutil.rmtree(ws / "runs" / run_id, ignore_errors=True)  # an interrupted attempt starts again
    command = ["taskset", "-c", str(core), sys.executable, "-m", "tuning", "train", "--preset",
               str(ROOT / "presets" / "quickstart.yaml"), "--workspace", str(ws), "--run-id", run_id]
    for item in sets:
        command += ["--set", item]
    log = workspace / "logs" / f"{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "w") as out:
        rc = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    result = runs.read_evaluation(ws / "runs" / run_id) or {}
    plan = runs.read_json(ws / "runs" / run_id / runs.PLAN) or {}
    by_kind = (result.get("checks") or {}).get("by_kind") or {}
    slot_counts = {slot: [c["tuned_passed"], c["n"], c["base_passed"]] for kind in by_kind.values()
                   for slot, c in (kind.get("slots") or {}).items()}
    control = by_kind.get("control", {})
    missed = [{"kind": r["kind"], "prompt": r["prompt"], "tuned": r["tuned"][:120]}
              for r in (result.get("checks") or {}).get("rows") or [] if not r["tuned_pass"]]
    return {"set": name, "seed": seed, "extra": extra, "rc": rc, "seconds": round(time.time() - started),
            "steps": plan.get("steps"), "epochs": plan.get("epochs"), "learning_rate": plan.get("learning_rate"),
            "slots": slot_counts, "control": control.get("tuned_passed"), "control_n": control.get("n"),
            "eval_loss": result.get("eval_loss"), "base_eval_loss": result.get("base_eval_loss"),
            "missed": missed, "date": time.strftime("%Y-%m-%d %H:%M")}


def table(results: Path = RESULTS) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.exists() else []
    lines = ["| set | seed | steps (epochs) | each slot right, tuned (base) | control /23 | held-out loss | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted((r for r in rows if r["rc"] == 0), key=lambda r: (SETS.index(r["set"]), r["seed"])):
        slots = ", ".join(f"{slot} {t}/{n} ({b})" for slot, (t, n, b) in r["slots"].items())
        loss = (f"{r['base_eval_loss']:.2f} -> {r['eval_loss']:.2f}" if r.get("eval_loss") is not None else "-")
        lines.append(f"| {r['set']}{' ' + ' '.join(r.get('extra') or []) if r.get('extra') else ''} | {r['seed']} | {r['steps']} ({r['epochs']:g}) | {slots} | {r['control']} | "
                     f"{loss} | {r['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write the datasets and exit")
    parser.add_argument("--table", action="store_true", help="print the recorded table and exit")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--only", default=",".join(SETS))
    parser.add_argument("--cores", default="0,1")
    parser.add_argument("--workspace", default=str(ROOT / "workspace-recipe-sets"))
    parser.add_argument("--set", action="append", default=[], help="a further key=value (another setting)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    results = Path(args.results)
    if args.write:
        return write()
    if args.table:
        return print(table(results))
    tag = "".join(f"-{item.replace('=', '-').replace('.', '_')}" for item in args.set)
    todo = [(name, int(seed)) for seed in args.seeds.split(",") for name in args.only.split(",")]
    on_cores(todo, [int(c) for c in args.cores.split(",")],
             lambda item, core: run_one(*item, core, Path(args.workspace), args.set, tag), results,
             lambda row: f"{row['set']} seed {row['seed']}: rc {row['rc']}, {row['seconds']} s, "
                         f"slots {row['slots']}, control {row['control']}")
    print(table(results))


if __name__ == "__main__":
    main()

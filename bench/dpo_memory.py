"""Preference tuning memory: the peak RSS, seconds per step and losses of DPO from a quickstart SFT run on
300 long chosen/rejected pairs at max_length 512, the command a person runs:

    python bench/dpo_memory.py                          # data, the SFT run to start from, then DPO (~10 min)
    python bench/dpo_memory.py --steps 6 --set speedups=off   # the whole batch on TRL's own code paths
    python bench/dpo_memory.py --sft-set lora_dropout=0 --set eval_steps=100 --set save_steps=100
        # no dropout masks (the losses of two trees compare step by step) and no evaluation between steps
    python bench/dpo_memory.py data /tmp/pairs          # only write the 300 pairs (pairs.jsonl) into a folder

What it does, in a fresh workspace (--workspace, whose models/ links to the converted embedded model):
(a) writes 300 chosen/rejected pairs (seeded, the same every time): a prompt of notes and a question,
    a multi-paragraph chosen answer on the question's topic and a rejected one that hedges and wanders;
    with SmolLM2's tokenizer and chat template half the prompt+answer sequences reach 512 tokens (median 511);
(b) trains the run to start from: `python -m tuning train --preset presets/quickstart.yaml --set max_steps=2`;
(c) runs, under `/usr/bin/time -v`,
    `python -m tuning train --preset presets/quickstart.yaml --set objective=dpo --set init_from=<that run>
     --set dataset=<the pairs> --set max_length=512 --set max_steps=N`
    and reads "Maximum resident set size" (the whole command: loading, the steps, the held-out evaluations
    and the end-of-run evaluation), the `log` events of the run's events.jsonl (loss, the DPO rewards) and
    the seconds per step: the median gap between consecutive log events with no evaluation or checkpoint
    between them (step 1, with its warm-up, is not counted).
Memory figures are not disturbed by other processes sharing the CPU; time figures are (the 1-minute load
is printed beside them). Figures: bench/RESULTS.md, Preference tuning memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, WORDS, machine_load, write_jsonl  # noqa: E402
from memory import fresh_workspace, mib  # noqa: E402

PAIRS = 300
PRESET = "presets/quickstart.yaml"
MAX_LENGTH = 512

TOPICS = ("sourdough bread", "a vegetable garden", "a road bicycle", "a home network", "a small aquarium",
          "a compost heap", "a wooden bookshelf", "a beginner's running plan", "a houseplant collection",
          "a family budget", "a camping trip", "a kitchen knife", "a spreadsheet of expenses", "a rain barrel",
          "a violin", "a chess opening", "a backyard beehive", "a used car", "a bread oven", "a sewing machine")
STEPS = ("check", "clean", "measure", "prepare", "adjust", "replace", "store", "test", "mark", "record")
PARTS = ("the base", "the edges", "the first layer", "the settings", "the joints", "the schedule", "the water",
         "the cover", "the handle", "the notes")
HEDGES = ("It is hard to say much about {t} without knowing more.", "Some people like {t} and some do not.",
          "There are many opinions about {t}, and all of them have a point.",
          "You could look this up, although the answers will differ.", "This may or may not matter for {t}.",
          "In the end it depends on many things that are hard to list.",
          "Perhaps it is better not to worry about {t} too much.")


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _sentences(rng: random.Random, words: int, make) -> str:
    """Paragraphs of sentences from `make(rng)` until about `words` words, 4-6 sentences a paragraph."""
    paragraphs, sentences, count = [], [], 0
    while count < words:
        sentence = make(rng)
        sentences.append(sentence)
        count += len(sentence.split())
        if len(sentences) >= rng.randint(4, 6):
            paragraphs.append(" ".join(sentences))
            sentences = []
    if sentences:
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def pair(i: int) -> dict:
    """The i-th pair: a prompt of notes and a question about a topic; a chosen answer of concrete steps on
    that topic and a rejected one that hedges and wanders (different words, similar length)."""
    rng = random.Random(1000 + i)
    topic = TOPICS[i % len(TOPICS)]
    notes = _sentences(rng, rng.randint(40, 180), lambda r: _words(r, r.randint(8, 16)).capitalize() + ".")
    prompt = (f"Here are my notes about {topic}.\n\n{notes}\n\nHow should I look after {topic}, step by step? "
              f"(question {i})")

    def step(r: random.Random) -> str:
        return (f"{r.choice(STEPS).capitalize()} {r.choice(PARTS)} of {topic} {r.choice(('every week', 'first', 'after use', 'in spring', 'before you start'))}, "
                f"because {_words(r, r.randint(6, 12))}.")

    def hedge(r: random.Random) -> str:
        return r.choice(HEDGES).format(t=topic) + " " + _words(r, r.randint(4, 10)).capitalize() + "."

    chosen = f"Here is how to look after {topic}.\n\n" + _sentences(rng, rng.randint(150, 360), step)
    rejected = "Well, that is a big question.\n\n" + _sentences(rng, rng.randint(150, 360), hedge)
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def write_pairs(folder: Path, n: int = PAIRS) -> Path:
    """n pairs (deterministic) as folder/pairs.jsonl, in TRL's conversational preference form."""
    return write_jsonl(Path(folder) / "pairs.jsonl", [pair(i) for i in range(n)])


def token_lengths(path: Path, model_dir: str) -> dict:
    """How long the sequences DPO scores are, with the model's tokenizer and chat template: prompt + each
    answer, before the max_length cut."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for side in ("chosen", "rejected"):
            text = tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=False)
            lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    lengths.sort()
    return {"sequences": len(lengths), "median": lengths[len(lengths) // 2], "max": lengths[-1],
            "at_or_over_max_length": sum(n >= MAX_LENGTH for n in lengths),
            "at_or_over_400": sum(n >= 400 for n in lengths)}


def parse_time(text: str) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) from /usr/bin/time -v's report."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) * 1024


def train(workspace: Path, settings: list[str], timed: bool = False) -> tuple[Path, float, int, str]:
    """`python -m tuning train --preset quickstart` with `settings` (KEY=VALUE) in the workspace; returns
    (run folder, wall seconds, peak RSS in bytes (0 untimed), the command's output)."""
    before = set((workspace / "runs").glob("*"))
    command = [sys.executable, "-m", "tuning", "train", "--workspace", str(workspace), "--preset", PRESET,
               *[a for s in settings for a in ("--set", s)]]
    report = Path(tempfile.mkstemp(prefix="time-", suffix=".txt")[1])
    if timed:
        command = ["/usr/bin/time", "-v", "-o", str(report), *command]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"the run failed (exit {proc.returncode}): {' '.join(command)}\n{output[-4000:]}")
    (run_dir,) = set((workspace / "runs").glob("*")) - before
    wall, peak = parse_time(report.read_text()) if timed else (0.0, 0)
    report.unlink()
    return run_dir, wall, peak, output


def step_figures(run_dir: Path) -> dict:
    """The logged losses and DPO figures of each step, and the median seconds of a step with no
    evaluation or checkpoint in it, from the run's events.jsonl."""
    from tuning import runs

    events, _ = runs.read_run_events(run_dir)
    logs, gaps, last, busy = [], [], None, False
    for event in events:
        if event["event"] in ("eval", "checkpoint"):
            busy = True
        if event["event"] != "log":
            continue
        objective = event.get("objective") or {}
        logs.append({"step": event["step"], "loss": event["loss"], "grad_norm": event.get("grad_norm"),
                     "rewards/margins": objective.get("rewards/margins"),
                     "logps/chosen": objective.get("logps/chosen"), "logps/rejected": objective.get("logps/rejected")})
        if last is not None and not busy:
            gaps.append(event["time"] - last)
        last, busy = event["time"], False
    return {"logs": logs, "seconds_per_step": round(statistics.median(gaps), 1) if gaps else None,
            "clean_steps": len(gaps)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="run", choices=("run", "data"))
    parser.add_argument("folder", nargs="?", help="data: where pairs.jsonl goes")
    parser.add_argument("--steps", type=int, default=6, help="DPO's max_steps (default 6: eval_steps auto "
                                                              "evaluates every 2nd step, 3 steps are clean)")
    parser.add_argument("--workspace", help="the workspace (default: a fresh one in the temporary folder)")
    parser.add_argument("--init-from", help="a finished SFT run in the workspace to start from (default: "
                                            "train one, max_steps=2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more DPO settings")
    parser.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE",
                        help="more settings for the SFT run (lora_dropout=0: an init_from adapter brings its own "
                             "dropout, so DPO runs compare without random masks)")
    args = parser.parse_args(argv)
    if args.what == "data":
        if not args.folder:
            parser.error("data needs a folder")
        print(write_pairs(Path(args.folder)))
        return

    workspace = Path(args.workspace) if args.workspace else fresh_workspace()
    data = write_pairs(workspace / "bench-data")
    model_dir = next(p for p in (workspace / "models").resolve().iterdir() if p.is_dir())
    print(f"data: {data} {json.dumps(token_lengths(data, str(model_dir)))}", flush=True)
    init = args.init_from
    if not init:
        sft_dir, _, _, _ = train(workspace, ["max_steps=2", "final_evaluation=none", *args.sft_set])
        init = sft_dir.name
        print(f"SFT run to start from: {init}", flush=True)
    settings = ["objective=dpo", f"init_from={init}", f"dataset={data}", f"max_length={MAX_LENGTH}",
                f"max_steps={args.steps}", *args.set]
    print(f"DPO: --set {' --set '.join(settings)} ({machine_load()})", flush=True)
    run_dir, wall, peak, output = train(workspace, settings, timed=True)
    figures = step_figures(run_dir)
    for line in output.splitlines():
        if line.startswith(("lever trained_tokens_only", "lever lm_head_tiles", "micro-batch", "data:")):
            print("  " + line)
    for log in figures["logs"]:
        print(f"  step {log['step']}: loss {log['loss']:.6g}  grad_norm {log['grad_norm']:.4g}  "
              f"margins {log['rewards/margins']:.4f}  logps chosen {log['logps/chosen']:.3f} "
              f"rejected {log['logps/rejected']:.3f}")
    print(f"peak RSS {mib(peak)} MiB ({peak / 2**30:.2f} GiB), {figures['seconds_per_step']} s/step "
          f"(median of {figures['clean_steps']} steps), {wall:.0f} s wall; {machine_load()}; run {run_dir}")
    print(json.dumps({"peak_rss": peak, "peak_rss_gib": round(peak / 2**30, 2), "wall_s": round(wall, 1),
                      "seconds_per_step": figures["seconds_per_step"], "logs": figures["logs"],
                      "settings": settings, "cores": os.cpu_count(), "run": str(run_dir)}))


if __name__ == "__main__":
    main()

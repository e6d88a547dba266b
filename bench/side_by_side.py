"""Side-by-side generation: base and tuned answers in ONE PEFT mixed-adapter batch (A) against two
separate calls, base then tuned (B), on the embedded model, greedy; and the Playground's time to
the first token with the model loaded.

    python bench/side_by_side.py                                  # fp32, bf16 and 4-bit bases, 3 rounds
    python bench/side_by_side.py --bases fp32,4bit --rounds 5 --max-new-tokens 64 --generate

Target: A / B <= 0.5 (median of per-round ratios) for each base, with identical outputs (checked
every round), including when the two answers differ a lot in length; time to first token in the
Playground <= 0.5 s with the model loaded.

Every round measures, for every base, A then B (and with --generate the same two through
transformers' own `generate`, which keeps finished rows decoding padding: the "before"), so all
ratios come from one run with the load shared alike. Two prompts: PROMPTS["skewed"], whose base
answer runs to the token limit while the tuned one stops early (the case where a batch that keeps
finished rows loses most), and PROMPTS["even"] (short answers of similar length). With --fixed,
also both sides exactly --max-new-tokens long (min_new_tokens): the like-for-like per-step cost.

The adapter is a LoRA with random non-zero B matrices (r=16, all-linear), saved once (or --adapter
PATH, e.g. a trained run's adapter/): the timing does not depend on what it learned.
Load: print(machine_load()) next to every figure; the cores are shared.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_load, median_ratio  # noqa: E402

PROMPTS = {"skewed": "Write a long story about a dragon who learns to bake bread.",
           "even": "What is the capital of France?"}
CLOCK = time.perf_counter  # --clock cpu: time.process_time
BASES = {"fp32": ("lora", "fp32"), "bf16": ("lora", "bf16"), "4bit": ("qlora", "fp32")}  # -> (method, precision)


def make_adapter(model_dir: str, folder: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (folder / "adapter_config.json").is_file():
        return folder
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    return folder


def make_run(workspace: Path, model_dir: str, adapter: Path, base: str) -> str:
    """A finished-looking run folder whose config names the base as the Playground loads it."""
    from tuning import runs
    from tuning.config import TrainConfig

    method, precision = BASES[base]
    run_id = f"bench-{base}"
    run = runs.run_dir(workspace, run_id)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    runs.write_config(run, TrainConfig(base_model=model_dir, method=method, precision=precision))
    shutil.copytree(adapter, runs.adapter_dir(run))
    return run_id


@contextlib.contextmanager
def library_generate():
    """generation.generate_rows through transformers' generate (the loop in tuning/infer/decoding.py off)."""
    from tuning.infer import decoding

    plan = decoding.plan
    decoding.plan = lambda model, kwargs: None
    try:
        yield
    finally:
        decoding.plan = plan


def tokens(comparer, text: str) -> int:
    return len(comparer.tokenizer(text, add_special_tokens=False)["input_ids"])


def one_round(comparer, adapter, prompt, settings, with_generate: bool) -> dict:
    """A: one mixed batch; B: base alone, then tuned alone (and the same through generate)."""
    times, answers = {}, {}
    variants = [("A", False), ("B", False)] + ([("A generate", True), ("B generate", True)] if with_generate else [])
    for label, library in variants:
        with library_generate() if library else contextlib.nullcontext():
            started = CLOCK()
            if label.startswith("A"):
                [answers[label]] = comparer.generate([prompt], adapter, settings=settings)
            else:
                answers[label] = (comparer.generate_one([prompt], None, settings=settings)[0],
                                  comparer.generate_one([prompt], adapter, settings=settings)[0])
            times[label] = CLOCK() - started
    reference = answers["B"]
    different = {k: v for k, v in answers.items() if v != reference}
    if different:
        raise SystemExit(f"outputs differ from two separate calls {reference!r}: {different!r}")
    return {"times": times, "answer": reference}


def first_token_seconds(ctx, run_id: str, prompt: str, max_new_tokens: int) -> float:
    """From calling the Playground's streaming handler to its first update holding answer text; the
    answer is then read to its end (an abandoned stream would hold the model for the next call)."""
    from tuning.ui import playground_tab

    started, first = CLOCK(), None
    for update in playground_tab.stream_side_by_side(ctx, run_id, "final", prompt, "", "as trained",
                                                     max_new_tokens, 0, 1, 1, 0):
        if first is None and any(isinstance(update.get(k), str) and update[k] for k in ("base_out", "tuned_out")):
            first = CLOCK() - started
    if first is None:
        raise SystemExit("the Playground streamed no answer text")
    return first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bases", default="fp32,bf16,4bit", help="comma-separated: " + ", ".join(BASES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--prompts", default="skewed,even", help="comma-separated: " + ", ".join(PROMPTS))
    p.add_argument("--fixed", action="store_true", help="also both sides exactly --max-new-tokens long")
    p.add_argument("--generate", action="store_true", help="also time the same calls through transformers' "
                                                            "generate (finished rows decode padding)")
    p.add_argument("--ttft", type=int, default=5, help="Playground time-to-first-token samples per base")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the process's CPU seconds instead of wall-clock ones; with --threads 1 the time the "
                        "work itself took, which other processes on the cores do not stretch (on a loaded machine)")
    p.add_argument("--adapter", default="", help="an adapter folder (default: a random LoRA)")
    p.add_argument("--workspace", default=str(Path(tempfile.gettempdir()) / "tuning-bench"))
    a = p.parse_args()
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter

    import torch

    from tuning import models
    from tuning.infer import playground
    from tuning import runs
    from tuning.ui.common import AppContext

    torch.set_num_threads(a.threads)
    workspace = Path(a.workspace)
    model_dir = str(models.embedded_model_dir(workspace))
    adapter = Path(a.adapter) if a.adapter else make_adapter(model_dir, workspace / "bench-adapter")
    ctx = AppContext(workspace)
    bases = a.bases.split(",")
    print(f"bases {bases}, up to {a.max_new_tokens} new tokens, {a.threads} threads, {a.clock} clock; "
          f"{machine_load()}", flush=True)

    comparers, adapters = {}, {}
    for base in bases:  # the Playground's own path: the first prompt loads the base, later ones reuse it
        run_id = make_run(workspace, model_dir, adapter, base)
        started = CLOCK()
        first = first_token_seconds(ctx, run_id, PROMPTS["even"], 16)
        print(f"{base}: first Playground prompt (loads the base, attaches the adapter): first token after "
              f"{first:.2f} s, answer done after {CLOCK() - started:.2f} s; {machine_load()}", flush=True)
        comparers[base] = playground.comparer_for_run(workspace / "runs" / run_id, workspace)
        adapters[base] = runs.adapter_dir(workspace / "runs" / run_id)
        samples = sorted(first_token_seconds(ctx, run_id, PROMPTS["even"], 16) for _ in range(a.ttft))
        print(f"{base}: Playground time to first token, model loaded: median {statistics.median(samples):.3f} s "
              f"(min {samples[0]:.3f}, max {samples[-1]:.3f}, {len(samples)} prompts; target <= 0.5 s); "
              f"{machine_load()}", flush=True)

    cases = [(name, 0) for name in a.prompts.split(",")] + ([("even", a.max_new_tokens)] if a.fixed else [])
    for base in bases:  # warm-up: adapter attached, first-call costs paid
        comparers[base].generate([PROMPTS["even"]], adapters[base],
                                 settings=playground.GenerationSettings(max_new_tokens=4, temperature=0.0))
    results: dict[tuple, list[dict]] = {}
    for r in range(a.rounds):
        for base in bases:
            for name, fixed in cases:
                settings = playground.GenerationSettings(max_new_tokens=a.max_new_tokens, temperature=0.0,
                                                         min_new_tokens=fixed)
                got = one_round(comparers[base], adapters[base], PROMPTS[name], settings, a.generate)
                results.setdefault((base, name, fixed), []).append(got)
                t = got["times"]
                print(f"  round {r + 1}/{a.rounds} {base} {name}{' fixed' if fixed else ''}: "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
                      + f", A/B {t['A'] / t['B']:.2f}; identical outputs; {machine_load()}", flush=True)
    report(comparers, results)


def report(comparers: dict, results: dict) -> None:
    print("\nSummary (median of per-round ratios; outputs identical to two separate calls in every round):")
    for (base, name, fixed), rounds in results.items():
        base_text, tuned_text = rounds[0]["answer"]
        n_base, n_tuned = tokens(comparers[base], base_text), tokens(comparers[base], tuned_text)
        line = (f"  {base:5} {name}{' fixed' if fixed else '':6} tokens base/tuned {n_base}/{n_tuned}: "
                f"A {statistics.median(x['times']['A'] for x in rounds):.2f} s, "
                f"B {statistics.median(x['times']['B'] for x in rounds):.2f} s, "
                f"A/B {median_ratio([(x['times']['A'], x['times']['B']) for x in rounds]):.2f}x")
        if "A generate" in rounds[0]["times"]:
            line += (f"; through generate: A/B {median_ratio([(x['times']['A generate'], x['times']['B generate']) for x in rounds]):.2f}x, "
                     f"A / generate's A {median_ratio([(x['times']['A'], x['times']['A generate']) for x in rounds]):.2f}x")
        print(line + f"  (a batch whose 2-row step costs a 1-row step: {max(n_base, n_tuned) / max(1, n_base + n_tuned):.2f}x)")
    print(f"  {machine_load()}")


if __name__ == "__main__":
    main()

"""Side-by-side generation: base and tuned answers in ONE PEFT mixed-adapter batch (A) against two
separate generate calls, base then tuned (B), on the embedded model, greedy.

    python bench/side_by_side.py                    # qlora base (as the quickstart trains), 3 pairs
    python bench/side_by_side.py --method lora --pairs 5 --max-new-tokens 64

Target: A / B <= 0.6 (median of pairwise ratios), with identical outputs (checked every pair).
The adapter is a LoRA with random non-zero B matrices (r=16, all-linear), saved once: the timing
does not depend on what the adapter learned, and the answers differ from the base's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_load, median_ratio  # noqa: E402

PROMPT = "What is the capital of France?"


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("lora", "qlora"), default="qlora")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workspace", default=str(Path(tempfile.gettempdir()) / "tuning-bench"))
    a = p.parse_args()

    import torch

    from tuning import models, playground

    torch.set_num_threads(a.threads)
    workspace = Path(a.workspace)
    model_dir = str(models.embedded_model_dir(workspace))
    adapter = make_adapter(model_dir, workspace / "bench-adapter")
    comparer = playground.Comparer(model_dir, a.method, torch.float32)
    settings = playground.GenerationSettings(max_new_tokens=a.max_new_tokens, temperature=0.0)
    comparer.generate([PROMPT], adapter, settings=settings)  # warm-up: attach the adapter, first-call costs
    print(f"{a.method} base, {a.max_new_tokens} new tokens, {a.threads} threads; {machine_load()}")

    pairs = []
    for i in range(a.pairs):
        started = time.perf_counter()
        [(base_mixed, tuned_mixed)] = comparer.generate([PROMPT], adapter, settings=settings)
        one = time.perf_counter() - started
        started = time.perf_counter()
        [base_alone] = comparer.generate_one([PROMPT], None, settings=settings)
        [tuned_alone] = comparer.generate_one([PROMPT], adapter, settings=settings)
        two = time.perf_counter() - started
        same = base_mixed == base_alone and tuned_mixed == tuned_alone
        print(f"  pair {i + 1}/{a.pairs}: one mixed batch {one:.2f} s, two calls {two:.2f} s, "
              f"ratio {one / two:.2f}, identical outputs: {same}  ({machine_load()})", flush=True)
        if not same:
            raise SystemExit(f"outputs differ:\n mixed {base_mixed!r} / {tuned_mixed!r}\n "
                             f"alone {base_alone!r} / {tuned_alone!r}")
        pairs.append((one, two))
    print(f"base:  {base_mixed[:80]!r}\ntuned: {tuned_mixed[:80]!r}")
    print(f"one mixed batch: median {statistics.median(o for o, _ in pairs):.2f} s; two calls: median "
          f"{statistics.median(t for _, t in pairs):.2f} s")
    print(f"ratio (one batch / two calls, median of {len(pairs)} pairs): {median_ratio(pairs):.2f}x "
          f"(target <= 0.6); outputs identical in every pair")


if __name__ == "__main__":
    main()

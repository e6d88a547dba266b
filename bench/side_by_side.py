"""Side-by-side generation: base and tuned answers in ONE PEFT mixed-adapter batch (A) against two
separate generate calls, base then tuned (B), on the embedded model, greedy.

    python bench/side_by_side.py                    # lora base (as the quickstart trains), 3 pairs
    python bench/side_by_side.py --method qlora --pairs 5 --max-new-tokens 64

Target: A / B <= 0.6 (median of pairwise ratios), with identical outputs (checked every pair).
Printed twice: with natural lengths (each side stops at its end token, so one batch decodes as
many steps as the longer answer while two calls decode the sum) and with fixed lengths (both sides
exactly --max-new-tokens: the like-for-like cost of one batched pass against two).
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


def measure(comparer, adapter, settings, pairs: int) -> list[tuple[float, float]]:
    """Alternating pairs: one mixed batch (A) then two calls (B); outputs checked every pair."""
    comparer.generate([PROMPT], adapter, settings=settings)  # warm-up: attach the adapter, first-call costs
    results = []
    for i in range(pairs):
        started = time.perf_counter()
        [(base_mixed, tuned_mixed)] = comparer.generate([PROMPT], adapter, settings=settings)
        one = time.perf_counter() - started
        started = time.perf_counter()
        [base_alone] = comparer.generate_one([PROMPT], None, settings=settings)
        [tuned_alone] = comparer.generate_one([PROMPT], adapter, settings=settings)
        two = time.perf_counter() - started
        same = base_mixed == base_alone and tuned_mixed == tuned_alone
        print(f"  pair {i + 1}/{pairs}: one mixed batch {one:.2f} s, two calls {two:.2f} s, "
              f"ratio {one / two:.2f}, identical outputs: {same}  ({machine_load()})", flush=True)
        if not same:
            raise SystemExit(f"outputs differ:\n mixed {base_mixed!r} / {tuned_mixed!r}\n "
                             f"alone {base_alone!r} / {tuned_alone!r}")
        results.append((one, two))
    n_base, n_tuned = (len(comparer.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (base_mixed, tuned_mixed))
    print(f"  base ({n_base} tokens):  {base_mixed[:70]!r}\n  tuned ({n_tuned} tokens): {tuned_mixed[:70]!r}")
    print(f"  one mixed batch: median {statistics.median(o for o, _ in results):.2f} s; two calls: median "
          f"{statistics.median(t for _, t in results):.2f} s")
    bound = max(n_base, n_tuned) / max(1, n_base + n_tuned)
    print(f"  ratio (one batch / two calls, median of {len(results)} pairs): {median_ratio(results):.2f}x "
          f"(target <= 0.6; a batch that decodes max(base, tuned) steps for the two calls' sum cannot go "
          f"below ~{bound:.2f} here); outputs identical in every pair", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("lora", "qlora"), default="lora")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lengths", choices=("natural", "fixed", "both"), default="both",
                   help="natural: each side stops at its end token; fixed: both sides generate exactly "
                        "--max-new-tokens (min_new_tokens), the like-for-like case")
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
    print(f"{a.method} base, up to {a.max_new_tokens} new tokens, {a.threads} threads; {machine_load()}")
    for mode in (("natural", "fixed") if a.lengths == "both" else (a.lengths,)):
        fixed = a.max_new_tokens if mode == "fixed" else 0
        print(f"{mode} lengths:")
        measure(comparer, adapter, playground.GenerationSettings(max_new_tokens=a.max_new_tokens, temperature=0.0,
                                                                 min_new_tokens=fixed), a.pairs)


if __name__ == "__main__":
    main()

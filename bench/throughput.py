"""Training throughput: `python -m tuning train` (ours) against bench/baseline_trl.py (a plain TRL
SFTTrainer + PEFT script), side by side, on a seeded mixed-length dataset (20-400 tokens).

    python bench/throughput.py                       # qlora, 3 pairs x 4 steps of 8 rows (a few minutes)
    python bench/throughput.py --method lora --pairs 5 --steps 8
    python bench/throughput.py --methods-only        # ours: lora vs qlora (tokens/s and peak RSS)
    python bench/throughput.py --matrix              # lora: LoRA dropout 0 / 0.05 x batch 4 / 8 x short / long rows

The matrix runs eight cells, each one pair (ours, then TRL's script, the order flipped from cell to
cell so a drifting load hits both sides alike) and a matmul peak measured right after the pair, so
each cell's MFU is against the peak of its own minute. Short rows are 20-400 tokens, long rows
200-600 (both seeded: the same rows on every run); max_length 1024 on both sides so nothing is cut.

Both sides train the same base model on the same rows (exactly one epoch: steps x batch rows), with
the same LoRA config (r=16, alpha=32, all-linear), effective batch, max_length and number of steps,
each in its own process. Tokens/s = trained (non-padding) tokens / seconds from the first step's start
to the last step's log. Peak RSS is sampled from outside every 50 ms. Pairs alternate A, B, A, B; the
ratio is the median of the pairwise ratios.

Utilisation: LoRA on a frozen base costs about 4 x parameters FLOPs per trained token (forward 2N,
backward through the activations 2N, the adapters' own weight gradients are negligible), e.g.
4 x 135M = 0.54 GFLOP per token; printed against a matmul peak measured here and now.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, alternate, last_json_line, machine_load, median_ratio,  # noqa: E402
                    mixed_length_rows, new_run, run_child, run_events, run_folders, write_jsonl)

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM (the datasheet); --peak-tflops for other cards


def matmul_peak(dtype, threads: int, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n x n matrix product (best of reps), the machine's practical peak."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


ROWS = {"short": (20, 400), "long": (200, 600)}  # token ranges of the benchmark's seeded rows


def ours(model: str, data: Path, a, workspace: Path, method: str, extra: list[str]) -> dict:
    sets = {"base_model": model, "dataset": str(data), "method": method, "per_device_batch_size": a.batch,
            "lora_dropout": a.dropout,
            "gradient_accumulation_steps": 1, "max_steps": a.steps, "max_length": a.max_length,
            "lora_r": 16, "lora_alpha": 32, "learning_rate": 2e-4, "warmup_ratio": 0.0, "eval_split": 0.0,
            "save_steps": 100000, "eval_steps": 100000, "logging_steps": 1, "probe_every_checkpoint": False}
    cmd = [sys.executable, "-m", "tuning", "train", "--workspace", str(workspace)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    for item in extra:
        cmd += ["--set", item]
    before = run_folders(workspace)
    out, peak, wall = run_child(cmd, env={"OMP_NUM_THREADS": str(a.threads)})
    events = run_events(new_run(workspace, before))
    start = next(e for e in events if e["event"] == "start")
    logs = [e for e in events if e["event"] == "log"]
    seconds = logs[-1]["time"] - start["time"]
    return {"tokens_per_second": a.tokens / seconds, "seconds": seconds, "peak_rss": peak,
            "gpu_peak": run_child.gpu_peak, "loss": logs[-1]["loss"], "wall": wall}


def baseline(model: str, data: Path, a, method: str) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "baseline_trl.py"), "--model", model, "--data", str(data),
           "--method", method, "--batch", str(a.batch), "--max-length", str(a.max_length),
           "--steps", str(a.steps), "--threads", str(a.threads), "--lora-dropout", str(a.dropout),
           "--output", tempfile.mkdtemp(prefix="bl-")]
    out, peak, wall = run_child(cmd, env={"OMP_NUM_THREADS": str(a.threads)})
    result = last_json_line(out, "tokens_per_second")
    result.update(peak_rss=peak, wall=wall, gpu_peak=run_child.gpu_peak)
    return result


def fmt(r: dict) -> str:
    gpu = f", GPU {r['gpu_peak'] / 2**30:.1f} GiB" if r.get("gpu_peak") else ""
    return f"{r['tokens_per_second']:.0f} tok/s, RSS {r['peak_rss'] / 2**20:.0f} MiB{gpu}"


def _count_params(model_dir: str) -> int:
    """Parameters of the model in a folder, from its config (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def bench_rows(tokenizer, a, path: Path) -> tuple[Path, list[int]]:
    """Exactly one epoch of seeded rows (a.rows: short or long) in a JSONL file; sets a.tokens."""
    from tuning import data as data_mod

    lo, hi = ROWS[a.rows]
    rows = mixed_length_rows(tokenizer, a.steps * a.batch, lo=lo, hi=hi, seed=0)
    data = write_jsonl(path, rows)
    lengths = [len(data_mod.tokenize_conversation(tokenizer, r["messages"], a.max_length)["input_ids"])
               for r in rows]
    a.tokens = sum(lengths)
    return data, lengths


def matrix(a) -> None:
    """Every cell of dropout x batch x rows, ours and TRL's side by side, one table at the end."""
    import copy

    import torch
    from transformers import AutoTokenizer

    from tuning import models

    workspace = Path(a.workspace)
    model = a.model or str(models.embedded_model_dir(workspace))
    tokenizer = AutoTokenizer.from_pretrained(model)
    flops_per_token = 4 * _count_params(model)
    steps = a.steps if a.steps != 4 else 2  # --steps left at its default: 2 per cell keeps the matrix short
    print(f"matrix: lora, {steps} steps per cell, {a.pairs} pair(s), max_length 1024, {a.threads} threads, "
          f"torch {torch.__version__}; {machine_load()}", flush=True)
    cells, flip = [], False
    for dropout in (0.0, 0.05):
        for batch in (4, 8):
            for rows in ("short", "long"):
                c = copy.copy(a)
                c.dropout, c.batch, c.rows, c.steps, c.max_length = dropout, batch, rows, steps, 1024
                data, lengths = bench_rows(tokenizer, c, workspace / f"bench-{rows}-{batch}.jsonl")
                results = []
                for _ in range(a.pairs):
                    sides = [lambda: ours(model, data, c, workspace, "lora", a.set), lambda: baseline(model, data, c, "lora")]
                    done = [side() for side in (sides[::-1] if flip else sides)]
                    results.append(done[::-1] if flip else done)  # (ours, TRL) whichever ran first
                    flip = not flip
                peak16 = matmul_peak(torch.bfloat16, a.threads)
                cell = {"dropout": dropout, "batch": batch, "rows": rows, "lengths": (min(lengths), max(lengths)),
                        "tokens": c.tokens, "ours": statistics.median(r["tokens_per_second"] for r, _ in results),
                        "trl": statistics.median(r["tokens_per_second"] for _, r in results),
                        "ratio": median_ratio([(r["tokens_per_second"], b["tokens_per_second"]) for r, b in results]),
                        "peak16": peak16, "load": machine_load()}
                cell["mfu"] = cell["ours"] * flops_per_token / peak16
                cells.append(cell)
                print(f"  dropout {dropout} batch {batch} {rows} rows ({cell['lengths'][0]}-{cell['lengths'][1]} "
                      f"tokens, {c.tokens} in {steps} steps): ours {cell['ours']:.0f} tok/s | TRL {cell['trl']:.0f} "
                      f"tok/s | {cell['ratio']:.2f}x | MFU {cell['mfu']:.0%} of {peak16 / 1e9:.0f} GFLOP/s bf16 "
                      f"({cell['load']})", flush=True)
    print("\n| LoRA dropout | batch | rows (tokens) | ours tok/s | TRL tok/s | ours / TRL | ours MFU (bf16 peak then) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for cell in cells:
        lo, hi = cell["lengths"]
        print(f"| {cell['dropout']} | {cell['batch']} | {cell['rows']} ({lo}-{hi}) | {cell['ours']:.0f} | "
              f"{cell['trl']:.0f} | **{cell['ratio']:.2f}x** | {cell['mfu']:.0%} ({cell['peak16'] / 1e9:.0f} GFLOP/s) |")
    print(f"\n{machine_load()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("lora", "qlora"), default="qlora")
    p.add_argument("--pairs", type=int, help="pairs (default 3; 1 per cell with --matrix)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout, both sides")
    p.add_argument("--rows", choices=tuple(ROWS), default="short", help="short: 20-400 tokens, long: 200-600")
    p.add_argument("--matrix", action="store_true", help="lora, dropout 0/0.05 x batch 4/8 x short/long rows, "
                   "one pair per cell (--pairs), --steps steps each (default 2), max_length 1024")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config for ours")
    p.add_argument("--methods-only", action="store_true", help="compare ours lora (A) vs ours qlora (B)")
    p.add_argument("--workspace", default=str(Path(tempfile.gettempdir()) / "tuning-bench"))
    p.add_argument("--model", help="a model folder instead of the embedded SmolLM2-135M-Instruct")
    p.add_argument("--peak-tflops", type=float, default=0, help="the card's bf16 peak, for MFU on a GPU "
                   "(default: an H100's 989)")
    a = p.parse_args()
    if a.matrix:
        a.pairs = a.pairs or 1
        return matrix(a)
    a.pairs = a.pairs or 3

    import torch
    from transformers import AutoTokenizer

    from tuning import models

    workspace = Path(a.workspace)
    model = a.model or str(models.embedded_model_dir(workspace))
    tokenizer = AutoTokenizer.from_pretrained(model)
    data, lengths = bench_rows(tokenizer, a, workspace / "bench-data.jsonl")
    padded = sum(a.batch * max(lengths[i:i + a.batch]) for i in range(0, len(lengths), a.batch))
    print(f"data: {len(lengths)} rows, {min(lengths)}-{max(lengths)} tokens (mean {a.tokens / len(lengths):.0f}), "
          f"{a.tokens} tokens; padded to the longest of each batch of {a.batch} in file order it would be "
          f"{padded} ({padded / a.tokens:.2f}x)")
    print(f"machine: {machine_load()}, torch {torch.__version__}, {a.threads} threads")

    if a.methods_only:
        label_a, label_b = "ours lora", "ours qlora"
        results = alternate(a.pairs, lambda: ours(model, data, a, workspace, "lora", a.set),
                            lambda: ours(model, data, a, workspace, "qlora", a.set))
    else:
        label_a, label_b = f"ours {a.method}", f"baseline TRL {a.method}"
        run_a = lambda: ours(model, data, a, workspace, a.method, a.set)  # noqa: E731
        run_b = lambda: baseline(model, data, a, a.method)  # noqa: E731
        results = []
        for i in range(a.pairs):
            ra, rb = run_a(), run_b()
            print(f"  pair {i + 1}/{a.pairs}: {label_a} {fmt(ra)} | {label_b} {fmt(rb)}  ({machine_load()})",
                  flush=True)
            results.append((ra, rb))
    if a.methods_only:
        for i, (ra, rb) in enumerate(results):
            print(f"  pair {i + 1}: {label_a} {fmt(ra)} | {label_b} {fmt(rb)}")

    speed = median_ratio([(ra["tokens_per_second"], rb["tokens_per_second"]) for ra, rb in results])
    memory = median_ratio([(ra["peak_rss"], rb["peak_rss"]) for ra, rb in results])
    tps_a = statistics.median(r["tokens_per_second"] for r, _ in results)
    tps_b = statistics.median(r["tokens_per_second"] for _, r in results)
    params = _count_params(model)
    flops_per_token = 4 * params
    if torch.cuda.is_available():
        gpu = [statistics.median(r["gpu_peak"] for r in side) / 2**30 for side in zip(*results)]
        peak = (a.peak_tflops * 1e12) or H100_BF16_PEAK
        print(f"\n{torch.cuda.get_device_name(0)}: peak GPU memory {label_a} {gpu[0]:.1f} GiB, {label_b} "
              f"{gpu[1]:.1f} GiB; MFU (4 x {params / 1e6:.0f}M FLOPs per token against {peak / 1e12:.0f} TFLOP/s "
              f"bf16): {label_a} {tps_a * flops_per_token / peak:.1%}, {label_b} {tps_b * flops_per_token / peak:.1%}")
        peak32 = peak16 = float("nan")
    else:
        peak32 = matmul_peak(torch.float32, a.threads)
        peak16 = matmul_peak(torch.bfloat16, a.threads)
    print(f"\n{label_a}: median {tps_a:.0f} tok/s, peak RSS {statistics.median(r['peak_rss'] for r, _ in results) / 2**20:.0f} MiB")
    print(f"{label_b}: median {tps_b:.0f} tok/s, peak RSS {statistics.median(r['peak_rss'] for _, r in results) / 2**20:.0f} MiB")
    print(f"throughput ratio (A/B, median of {len(results)} pairs): {speed:.2f}x")
    print(f"peak RSS ratio (A/B): {memory:.2f}x")
    print(f"utilisation: 4 x {params / 1e6:.0f}M = {flops_per_token / 1e9:.2f} GFLOP per trained token; "
          f"{label_a} {tps_a * flops_per_token / 1e9:.0f} GFLOP/s, {label_b} {tps_b * flops_per_token / 1e9:.0f} GFLOP/s; "
          f"matmul peak now {peak32 / 1e9:.0f} GFLOP/s fp32, {peak16 / 1e9:.0f} GFLOP/s bf16 "
          f"({machine_load()})")


if __name__ == "__main__":
    main()
